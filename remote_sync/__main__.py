"""``python -m remote_sync`` and the ``remote-sync`` script: the command line, loaded safely.

What it owns: :func:`run`, the console script's target. Loading the command line takes tens of
milliseconds of imports, and a Ctrl-C during them used to end in a traceback, a SIGTERM in
death by the signal (-15). Here either ends as any cancel before the work starts does: exit
130 and one line (an error event under ``--json``), with nothing started; so does one in the
few steps after the load, before :func:`remote_sync.cli.main` handles a cancel itself.
SIGTERM is taken as a Ctrl-C (:mod:`remote_sync.interrupt`) before anything else is
imported, except for ``agent``, whose SIGTERM is its stop, and when it was ignored at the
start. ``python -m remote_sync.cli`` runs :func:`run` too, after its package's import,
which runpy does first: that import is guarded from its second line on, as this module is
its first import and, imported while ``-m`` is still locating its module, installs the
same guard for it (:func:`_guard_the_package_import`).

What no code here can guard: the instants before :func:`run` is entered, the interpreter's
start-up and the console script's own ``from remote_sync.__main__ import run``, which
Python's entry point wrapper does, outside any ``try`` of ours (under ``python -m
remote_sync.cli``, runpy's own steps and its import of this package and of this module).
That import is kept to this package's ``__init__``, this module,
:mod:`remote_sync.interrupt` and :mod:`signal` (about a millisecond); a signal in it ends
the process as Python's default does (a traceback, or death by SIGTERM).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import NoReturn

from .interrupt import take_sigterm_while_loading


def run() -> NoReturn:
    try:
        take_sigterm_while_loading(sys.argv[1:])
        from .cli import entry

        # Called in here too: a cancel in its first steps, before main's own handling of
        # one begins, is reported as one during the load (main catches those after). So
        # is a Ctrl-C after main returned, in the exit's last flush: exit 130, not a
        # traceback (SIGTERM has its default action back by then).
        entry()
    except KeyboardInterrupt:
        _cancelled_while_loading()


def _guard_the_package_import() -> None:
    """:func:`run`'s guard for the import of :mod:`remote_sync.cli` that ``python -m
    remote_sync.cli`` makes before its ``__main__`` calls :func:`run`: SIGTERM taken as a
    Ctrl-C, and a Ctrl-C, which can only leave that import through runpy and the
    interpreter, reported as :func:`run` reports one (exit 130, one line) where the
    interpreter printed its traceback; any other exception as before."""
    take_sigterm_while_loading(sys.argv[1:])
    before = sys.excepthook

    def report(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            _cancelled_while_loading()
        before(kind, value, tb)

    sys.excepthook = report


def _cancelled_while_loading() -> NoReturn:
    # An interrupted import left no half-made module behind (Python drops a module whose
    # import failed), so the command line loads again, to report the cancel as it reports
    # any other. A second Ctrl-C during that load ends the process as Python does.
    from .cli import report_cancelled_start, wants_json

    os._exit(report_cancelled_start(wants_json(sys.argv[1:])))


def _locating_the_cli() -> bool:
    """Whether this import is made while ``python -m remote_sync.cli`` locates its module
    (argv[0] is "-m" until it is found), not while ``-m`` locates another program's, whose
    package may import the command line too and keeps its own handlers. The module's name is
    the interpreter's word just before the arguments: ``-m NAME``'s, or ``-mNAME``."""
    if sys.argv[:1] != ["-m"]:
        return False
    at = len(sys.orig_argv) - len(sys.argv)
    if at < 1:
        return False
    word = sys.orig_argv[at]
    name = word.partition("m")[2] if word.startswith("-") else word
    return name in ("remote_sync.cli", "remote_sync.cli.__main__")


if __name__ == "__main__":
    run()
elif _locating_the_cli():
    # Imported by remote_sync.cli, first, as runpy imports that package for ``-m
    # remote_sync.cli``.
    _guard_the_package_import()
