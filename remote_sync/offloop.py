"""The library API's waits kept off the event loop, so that a UI's loop goes on while a call
reads or imports.

What it owns: :func:`in_thread` (a blocking read, of the index or a mirrored file, in a
worker thread that a cancel stops waiting for at once) and :func:`import_off_the_loop` (the
modules a call imports on first use, the engine or the readers of a show, imported lazily
for start-up time, and anyio's asyncio backend, imported the first time in a worker thread
instead of on the loop). Each caller names the modules it needs.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from .cancel import CancelToken

_R = TypeVar("_R")


async def in_thread(token: CancelToken, work: Callable[[], _R], *, host: str | None = None) -> _R:
    """``work()`` in a worker thread, so that a large index or file does not hold up the
    event loop. A cancel (of ``token``: :class:`~remote_sync.errors.TransferCancelledError`;
    or of the caller's scope) stops the wait at once; the thread then finishes its read alone
    (a read of the mirror is bounded, and closes what it opened)."""
    await import_off_the_loop()
    with token.scope(host=host):
        result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    return result


#: anyio imports its asyncio backend on its first call that needs one (a cancel scope, a
#: worker thread, an event): 20 ms, on the event loop, unless imported here first.
_ANYIO_BACKEND = "anyio._backends._asyncio"
#: The modules imported by an earlier call: no thread needed for them any more.
_imported: set[str] = set()


async def import_off_the_loop(*modules: str) -> None:
    """``modules`` and anyio's asyncio backend imported in a worker thread the first time, so
    that the event loop goes on meanwhile (the engine and asyncssh's users take a tenth of a
    second or more to import, a first sync would freeze a UI for that long). Awaited through
    asyncio's own executor: anyio's threads would import anyio's backend on the loop first.
    A module another thread is importing is waited for there, not on the loop (Python's
    import lock), so it is counted as imported only once a thread here has imported it.
    Under another backend (trio: a mirror's reads need no asyncio) nothing is done here, and
    the modules are imported where they are used."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    wanted = [name for name in (_ANYIO_BACKEND, *modules) if name not in _imported]
    if wanted:
        await loop.run_in_executor(None, _import_all, wanted)
        _imported.update(wanted)


def _import_all(modules: Sequence[str]) -> None:
    for name in modules:
        # Only a head start: the import where the module is used raises it, in context.
        with suppress(ImportError):
            importlib.import_module(name)
