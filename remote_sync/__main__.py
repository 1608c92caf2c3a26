"""``python -m remote_sync`` and the ``remote-sync`` script: the command line, loaded safely.

What it owns: :func:`run`, the console script's target. Loading the command line takes tens of
milliseconds of imports, and a Ctrl-C during them used to end in a traceback, a SIGTERM in
death by the signal (-15). Here either ends as any cancel before the work starts does: exit
130 and one line (an error event under ``--json``), with nothing started. SIGTERM is taken
as a Ctrl-C (:mod:`remote_sync.interrupt`) before anything else is imported, except for
``agent``, whose SIGTERM is its stop, and when it was ignored at the start.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from .interrupt import take_sigterm_while_loading


def run() -> NoReturn:
    take_sigterm_while_loading(sys.argv[1:])
    try:
        from .cli import entry
    except KeyboardInterrupt:
        _cancelled_while_loading()
    entry()


def _cancelled_while_loading() -> NoReturn:
    # The interrupted import left no half-made module behind (Python drops a module whose
    # import failed), so the command line loads again, to report the cancel as it reports
    # any other. A second Ctrl-C during that load ends the process as Python does.
    from .cli import report_cancelled_start, wants_json

    os._exit(report_cancelled_start(wants_json(sys.argv[1:])))


if __name__ == "__main__":
    run()
