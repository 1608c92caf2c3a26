"""``python -m remote_sync.cli``: the command line as the console script runs it
(:func:`remote_sync.cli.entry`), without :mod:`remote_sync.__main__`'s guard of the load."""

from __future__ import annotations

from . import entry

if __name__ == "__main__":
    entry()
