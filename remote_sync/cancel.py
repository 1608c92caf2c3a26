"""Cancellation tokens and the registry that finds them by transfer id.

A :class:`CancelToken` is the handle one transfer (or one whole sync) listens to. Cancelling it
cancels every anyio :class:`~anyio.CancelScope` bound to it, so the work stops at its next
checkpoint wherever it is, and the code that bound the scope turns that into a
:class:`~remote_sync.errors.TransferCancelledError`. Tokens form a tree: cancelling a sync's
token cancels every transfer under it.

The :class:`CancelRegistry` maps ids to the tokens of transfers that are running *now*: an entry
is added when the transfer starts and removed when it ends, however it ends, so the registry never
grows past the number of live transfers. A call of the library API registers its transfer at the
call, before its coroutine or async generator runs (:meth:`CancelRegistry.reserve`), so that a
cancel sent between the call and the first await is kept by the token; that entry goes when the
work ends, or when it is closed or dropped without having run. A token's methods, and the
registry's :meth:`~CancelRegistry.cancel` of a transfer, must be called from the thread of the
event loop that runs that transfer (a signal handler or another thread goes through
``loop.call_soon_threadsafe``); the registry's own bookkeeping is locked, so that programs that
run an event loop per thread can share one registry (the process-wide
:data:`default_registry` is shared that way by every call that is given none).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import AsyncGeneratorType, CoroutineType
from typing import Any, TypeVar

import anyio
from msgspec import Struct

from .errors import ArgumentError, TransferCancelledError

_ids = itertools.count(1)

#: What a reservation waits for: the coroutine or async generator an API call returned.
_W = TypeVar("_W")


class CancelToken:
    """A cancellation handle: cancelled once, forever; bound scopes are cancelled with it."""

    def __init__(self, transfer_id: str, parent: CancelToken | None = None) -> None:
        self.id = transfer_id
        self.reason = ""
        self._cancelled = False
        self._scopes: set[anyio.CancelScope] = set()
        self._callbacks: list[Callable[[], None]] = []
        self._children: set[CancelToken] = set()
        self._parent: CancelToken | None = None
        if parent is not None:
            self._attach(parent)

    def _attach(self, parent: CancelToken) -> None:
        """Become a child of ``parent`` (cancelled at once if it already is)."""
        self._parent = parent
        parent._children.add(self)
        if parent.cancelled:
            self.cancel(parent.reason)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel this token, its bound scopes and its children. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self.reason = reason
        for scope in list(self._scopes):
            scope.cancel()
        for callback in list(self._callbacks):
            callback()
        for child in list(self._children):
            child.cancel(reason)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (at once if already); returns its unhook function."""
        if self._cancelled:
            callback()
            return lambda: None
        self._callbacks.append(callback)

        def unhook() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unhook

    @contextmanager
    def bind(self, scope: anyio.CancelScope) -> Iterator[anyio.CancelScope]:
        """While inside, cancelling this token cancels ``scope``."""
        self._scopes.add(scope)
        if self._cancelled:
            scope.cancel()
        try:
            yield scope
        finally:
            self._scopes.discard(scope)

    @contextmanager
    def scope(self, *, host: str | None = None, path: str | None = None) -> Iterator[None]:
        """Run a block that this token can stop; a stop raises :class:`TransferCancelledError`."""
        with anyio.CancelScope() as cancel_scope, self.bind(cancel_scope):
            yield
        if cancel_scope.cancelled_caught or self._cancelled:
            raise TransferCancelledError(self.reason or "cancelled", host=host, path=path)

    def raise_if_cancelled(self, *, host: str | None = None, path: str | None = None) -> None:
        if self._cancelled:
            raise TransferCancelledError(self.reason or "cancelled", host=host, path=path)

    def detach(self) -> None:
        """Forget the parent link (done when the transfer ends) so parents do not keep children."""
        if self._parent is not None:
            self._parent._children.discard(self)
            self._parent = None


class _Entry(Struct):
    """A registered transfer: its token, and while it is only reserved (not yet running) the
    coroutine or async generator that will run it, weakly (a call never awaited must not be
    kept alive by the registry)."""

    token: CancelToken
    owner: weakref.ref[Any] | None = None

    def running_for(self) -> bool:
        """Reserved, and its owner is executing now: whatever registers at this moment does so
        on its behalf (the owner's own body, or a call it makes or awaits)."""
        owner = self.owner() if self.owner is not None else None
        if isinstance(owner, CoroutineType):
            return owner.cr_running
        if isinstance(owner, AsyncGeneratorType):
            return owner.ag_running
        return False

    def stale(self) -> bool:
        """Reserved by work that can no longer run: dropped, or closed (or thrown into) before
        it started; its frame is gone then."""
        if self.owner is None:
            return False
        owner = self.owner()
        if isinstance(owner, CoroutineType):
            return owner.cr_frame is None
        if isinstance(owner, AsyncGeneratorType):
            return owner.ag_frame is None
        return True  # garbage-collected


class CancelRegistry:
    """Live transfers by id. Entries exist exactly as long as their transfer (reserved ones
    from the call that will run it).

    The entries are guarded by a lock: one registry (the :data:`default_registry`) serves
    every event loop of the process, and loops in two threads registering at once broke a
    purge's walk of the entries ("dictionary changed size during iteration", out of an API
    call). A token is cancelled outside the lock: what a cancel runs (scopes, callbacks) may
    come back to the registry. The lock is reentrant: the garbage collector may close a
    dropped transfer's coroutine, whose end drops its entry, in the thread holding it."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()

    def _purge(self) -> None:
        """Forget reservations whose work was dropped or closed without running: they are
        no transfer. Done lazily, on every access, rather than from a finalizer (which would
        run at any point, on any thread). Called with the lock held."""
        for transfer_id in [t for t, entry in self._entries.items() if entry.stale()]:
            del self._entries[transfer_id]

    def _reserved_for_running(self, transfer_id: str | None) -> _Entry | None:
        """The reservation of ``transfer_id``, if the work it was made for is executing now."""
        entry = self._entries.get(transfer_id) if transfer_id is not None else None
        return entry if entry is not None and entry.running_for() else None

    def reserve(self, transfer_id: str | None, create: Callable[[str], _W]) -> _W:
        """Register a transfer now and return ``create(id)``, the coroutine or async generator
        that will run it under that id (``transfer_id``, or one made up here), whose own
        :meth:`register` of that id adopts this entry and its token: a cancel from now on is
        kept by the token, and the work is born cancelled. The entry is gone once the work
        ends, or once it is closed or garbage-collected without having run. A duplicate id
        raises :class:`~remote_sync.errors.ArgumentError` (a ValueError too) here, at the
        call. Called on behalf of reserved work that is executing (an API call made inside
        another, with its id), nothing more is reserved."""
        with self._lock:
            self._purge()
            adopted = self._reserved_for_running(transfer_id) is not None
            entry = None if adopted else self._add(transfer_id, None)
        if entry is None:
            assert transfer_id is not None
            return create(transfer_id)
        try:
            work = create(entry.token.id)
        except BaseException:
            self._drop(entry)
            raise
        entry.owner = weakref.ref(work)
        return work

    def _add(self, transfer_id: str | None, parent: CancelToken | None) -> _Entry:
        """A new entry for ``transfer_id`` (one made up for None). Called with the lock held."""
        transfer_id = transfer_id or f"transfer-{next(_ids)}"
        if transfer_id in self._entries:
            raise ArgumentError(
                f"a transfer with id {transfer_id!r} is already running",
                hint="give each call that runs at once an id of its own (or none, and one is "
                "made up), or cancel or await the one running first",
            )
        entry = _Entry(CancelToken(transfer_id, parent))
        self._entries[transfer_id] = entry
        return entry

    def _drop(self, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(entry.token.id) is entry:
                del self._entries[entry.token.id]
        entry.token.detach()

    @contextmanager
    def register(
        self, transfer_id: str | None = None, *, parent: CancelToken | None = None
    ) -> Iterator[CancelToken]:
        """Register a transfer for the duration of the ``with`` block and yield its token (the
        token reserved at the call, when the work executing now had one: :meth:`reserve`)."""
        with self._lock:
            self._purge()
            entry = self._reserved_for_running(transfer_id)
            if entry is not None:
                entry.owner = None  # running now: its end drops it
            else:
                entry = self._add(transfer_id, parent)
                parent = None  # attached as it was made
        if parent is not None:
            entry.token._attach(parent)
        try:
            yield entry.token
        finally:
            self._drop(entry)

    def cancel(self, transfer_id: str, reason: str = "cancelled") -> bool:
        """Cancel one transfer. Returns False when no such transfer is running."""
        with self._lock:
            self._purge()
            entry = self._entries.get(transfer_id)
        if entry is None:
            return False
        entry.token.cancel(reason)
        return True

    def cancel_all(self, reason: str = "cancelled") -> int:
        """Cancel every running transfer; returns how many were cancelled."""
        with self._lock:
            self._purge()
            entries = list(self._entries.values())
        for entry in entries:
            entry.token.cancel(reason)
        return len(entries)

    def active(self) -> list[str]:
        with self._lock:
            self._purge()
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._entries)

    def __contains__(self, transfer_id: object) -> bool:
        with self._lock:
            self._purge()
            return transfer_id in self._entries


#: The process-wide registry used when a caller does not pass its own.
default_registry = CancelRegistry()


def registry_or_default(registry: CancelRegistry | None) -> CancelRegistry:
    """Where a transfer given ``registry`` is registered: there, or in the
    :data:`default_registry` for None (what every call that takes a registry means by None)."""
    return registry if registry is not None else default_registry
