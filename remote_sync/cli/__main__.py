"""``python -m remote_sync.cli``: the command line as the console script runs it, through the
same guard (:func:`remote_sync.__main__.run`): a Ctrl-C or SIGTERM from this module's first
step until :func:`remote_sync.cli.main` handles a cancel itself exits 130 with one line, where
it ended in a traceback (or, SIGTERM, in death by the signal).

Not guarded: this package's own import, which Python's ``-m`` (runpy) does before this module
runs, and which is most of the command line's load (``python -m remote_sync`` and the
``remote-sync`` script guard it); a signal then ends the process as Python's default does.
"""

from __future__ import annotations

from ..__main__ import run

if __name__ == "__main__":
    run()
