"""The process set up for the commands that run the engine here: ``sync`` and ``agent``.

What it owns: glibc's malloc held to one arena before the engine's threads start
(:func:`one_malloc_arena`), the imports moved out of the garbage collector's sight
(:func:`freeze_imports`), and the signals heeded (:func:`heeded_signals`) and received on the
event loop with their handlers put back after (:func:`signals_received`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal


def freeze_imports() -> None:
    """Move the objects of the modules imported so far out of the garbage collector's sight.

    A sync allocates many short-lived objects, so the collector runs often; without this each
    full pass walks the tens of thousands of objects asyncssh and its imports created, none of
    which will ever be garbage.
    """
    import gc

    gc.freeze()


#: mallopt's parameter for the most arenas glibc's malloc may make (``<malloc.h>``).
_M_ARENA_MAX = -8


def one_malloc_arena() -> None:
    """Limit glibc's malloc to one arena, before a sync of this process starts its threads.

    glibc gives each thread that allocates an arena of its own (up to eight per core): a
    sync's flush threads, its state writes' worker threads and asyncio's resolver threads
    each get one, and what they free stays there, out of reach of the main thread, where
    most allocations are made. With one arena the main thread reuses that memory: the
    benchmark's fleet (20 hosts, 8 at a time) peaked 1.5-2 MB lower (of about 65 MB), with
    no more CPU time; the threads hardly contend for the arena, as Python code allocates
    holding the GIL. The agent's syncs start the same threads, round after round: its
    command (:func:`remote_sync.cli.agent.run_agent`) does this too (its peak over a fleet's
    first mirror fell from 66.5 to 63.1 MB). Only the command line does this: the allocator
    is the process's, and a program that uses the library (``serve_agent`` included) tunes
    its own. A limit the user set (MALLOC_ARENA_MAX, or arena_max in GLIBC_TUNABLES) is left
    as it is; another C library, or a ``mallopt`` that refuses, leaves the defaults, which
    only costs the memory.
    """
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        glibc = "CS_GNU_LIBC_VERSION" in os.confstr_names and bool(
            os.confstr("CS_GNU_LIBC_VERSION")
        )
    except (ValueError, OSError):
        glibc = False
    if not glibc:
        return
    import ctypes  # already imported with asyncssh's loading (ssh/fastimport.py)

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


@contextlib.contextmanager
def signals_received(heeded: Sequence[signal.Signals]) -> Iterator[AsyncIterator[int]]:
    """anyio's receiver of the ``heeded`` signals, on the running event loop, and then the
    handlers they had before again. asyncio, removing its handlers, leaves SIGTERM to its
    default action (and SIGINT to Python's): a SIGTERM after a sync's rounds (its recap
    printed, the index worker stopped) killed the process unreported, where a Ctrl-C then
    exits 130."""
    import signal

    import anyio

    previous = {s: signal.getsignal(s) for s in heeded}
    try:
        with anyio.open_signal_receiver(*heeded) as signals:
            yield signals
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, not ours to put back
                signal.signal(s, handler)


def heeded_signals() -> list[signal.Signals]:
    """SIGINT and SIGTERM, less those this process was started with ignored (which stay
    ignored: see :func:`remote_sync.interrupt.heeded`)."""
    import signal

    from ..interrupt import heeded

    return [s for s in (signal.SIGINT, signal.SIGTERM) if heeded(s)]
