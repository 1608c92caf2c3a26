"""SIGTERM taken as a Ctrl-C: the handler the command line uses, small enough to install first.

What it owns: :func:`take_as_ctrl_c`, the SIGTERM handler of every command but ``agent``
(whose SIGTERM is its stop), and :func:`take_sigterm_while_loading`, which the console
script's target (:mod:`remote_sync.__main__`) calls before it imports anything else, so
that a SIGTERM during the command line's imports or while its words are parsed (``timeout``
or systemd stopping a run that has just started) exits 130 as a Ctrl-C then does, instead of
killing the process (-15). :func:`remote_sync.cli.main` keeps the same handler for the
command's run and puts SIGTERM back to its default action after it. It imports only what
the interpreter has loaded at start-up and :mod:`signal` and :mod:`threading`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType


def take_as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Whatever a Ctrl-C does now: asyncio's runner cancels the main task (and raises
    KeyboardInterrupt once it has wound down); outside the loop, KeyboardInterrupt."""
    on_ctrl_c = signal.getsignal(signal.SIGINT)
    if not callable(on_ctrl_c):
        raise KeyboardInterrupt
    on_ctrl_c(signal.SIGINT, frame)


def heeded(sig: signal.Signals) -> bool:
    """Whether ``sig`` was not set to be ignored by whoever started this process. A shell
    starts a background job (``remote-sync sync ... &`` in a script) with SIGINT ignored, so
    that a Ctrl-C meant for the foreground leaves it running; as with any Unix tool (and
    Python's own KeyboardInterrupt), a handler must not undo that."""
    return signal.getsignal(sig) != signal.SIG_IGN


def names_the_agent(words: Sequence[str]) -> bool:
    """Whether the command line ``words`` runs ``agent``: its first word that is not an
    option (the options before the command, ``-v`` and ``--version``, take no value)."""
    command = next((word for word in words if not word.startswith("-")), None)
    return command == "agent"


def take_sigterm_while_loading(words: Sequence[str]) -> None:
    """Install :func:`take_as_ctrl_c` for SIGTERM, unless the command is ``agent`` (left to
    SIGTERM's default action until it serves: stopped, as systemd counts a service killed by
    SIGTERM) or SIGTERM was ignored when the process started (it stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers
    if names_the_agent(words) or not heeded(signal.SIGTERM):
        return
    signal.signal(signal.SIGTERM, take_as_ctrl_c)
