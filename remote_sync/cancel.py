"""Cancellation tokens and the registry that finds them by transfer id.

A :class:`CancelToken` is the handle one transfer (or one whole sync) listens to. Cancelling it
cancels every anyio :class:`~anyio.CancelScope` bound to it, so the work stops at its next
checkpoint wherever it is, and the code that bound the scope turns that into a
:class:`~remote_sync.errors.TransferCancelledError`. Tokens form a tree: cancelling a sync's
token cancels every transfer under it.

The :class:`CancelRegistry` maps ids to the tokens of transfers that are running *now*: an entry
is added when the transfer starts and removed when it ends, however it ends, so the registry never
grows past the number of live transfers. All methods must be called from the event loop's thread
(a signal handler or another thread goes through ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio

from .errors import TransferCancelledError

_ids = itertools.count(1)


class CancelToken:
    """A cancellation handle: cancelled once, forever; bound scopes are cancelled with it."""

    def __init__(self, transfer_id: str, parent: CancelToken | None = None) -> None:
        self.id = transfer_id
        self.reason = ""
        self._cancelled = False
        self._scopes: set[anyio.CancelScope] = set()
        self._callbacks: list[Callable[[], None]] = []
        self._children: set[CancelToken] = set()
        self._parent = parent
        if parent is not None:
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


class CancelRegistry:
    """Live transfers by id. Entries exist exactly as long as their transfer."""

    def __init__(self) -> None:
        self._tokens: dict[str, CancelToken] = {}

    @contextmanager
    def register(
        self, transfer_id: str | None = None, *, parent: CancelToken | None = None
    ) -> Iterator[CancelToken]:
        """Register a transfer for the duration of the ``with`` block and yield its token."""
        transfer_id = transfer_id or f"transfer-{next(_ids)}"
        if transfer_id in self._tokens:
            raise ValueError(f"a transfer with id {transfer_id!r} is already running")
        token = CancelToken(transfer_id, parent)
        self._tokens[transfer_id] = token
        try:
            yield token
        finally:
            self._tokens.pop(transfer_id, None)
            token.detach()

    def cancel(self, transfer_id: str, reason: str = "cancelled") -> bool:
        """Cancel one transfer. Returns False when no such transfer is running."""
        token = self._tokens.get(transfer_id)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def cancel_all(self, reason: str = "cancelled") -> int:
        """Cancel every running transfer; returns how many were cancelled."""
        tokens = list(self._tokens.values())
        for token in tokens:
            token.cancel(reason)
        return len(tokens)

    def active(self) -> list[str]:
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, transfer_id: object) -> bool:
        return transfer_id in self._tokens


#: The process-wide registry used when a caller does not pass its own.
default_registry = CancelRegistry()
