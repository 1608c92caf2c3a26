"""``python -m remote_sync.cli``: the command line as the console script runs it, through the
same guard (:func:`remote_sync.__main__.run`): a Ctrl-C or SIGTERM from this module's first
step until :func:`remote_sync.cli.main` handles a cancel itself exits 130 with one line, where
it ended in a traceback (or, SIGTERM, in death by the signal).

This package's own import, which Python's ``-m`` (runpy) makes before this module runs
(most of the command line's load), is guarded the same way from its first import on:
``remote_sync.cli`` imports :mod:`remote_sync.__main__` first, which installs the guard when
imported while ``-m`` locates its module. Not guarded: the interpreter's start-up, runpy's
own steps and the imports of ``remote_sync`` and of that first module (about a
millisecond); a signal then ends the process as Python's default does.
"""

from __future__ import annotations

from ..__main__ import run

if __name__ == "__main__":
    run()
