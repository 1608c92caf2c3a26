"""The session reading behind the library API's listings and shows (:mod:`remote_sync.api`):
from the hosts over SSH, and from a mirror's index and files, reported through ``emit`` as a
sync reports its hosts.

What it owns: a remote listing (:func:`remote_sessions`: up to ``concurrency`` hosts read at
once, each in a task of its own under a task of the listing's own, so that no cancel scope
is held across a yield in the caller's task; their rows filtered as the index's and passed
through an unbuffered stream, so a slow caller slows the hosts down; a host that fails
reported and skipped), a mirror's listing (:func:`local_batches`: the index read one batch
per worker-thread call, its query aborted through SQLite's progress handler when a cancel
leaves the thread, reported under the host :data:`MIRROR_HOST`), a show from a host
(:func:`read_remote`) or from a mirror (:func:`read_mirrored`), and how a host's read that
stopped is reported (:func:`report_end`). The remote reads make ``sync``'s pre-flight of
each host first and open their own pool, with channel windows sized for them unless the
caller chose one. The readers (:mod:`remote_sync.index.remote` and
:mod:`remote_sync.index.remote_show` from hosts, :mod:`remote_sync.index.show` from a mirror)
are imported on first use, off the event loop
(:func:`~remote_sync.offloop.import_off_the_loop`); the arguments are checked by the caller
(:mod:`remote_sync.apicall`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from pathlib import Path
from sys import maxsize
from typing import TYPE_CHECKING, TypeVar

import anyio

from .apicall import READ_CANCELLED_HINT
from .errors import ListingIncompleteError, RemoteSyncError, TransferCancelledError
from .events import Emit, ErrorEvent, Progress, WarningEvent
from .index.query import (
    DEFAULT_SORT,
    SessionRow,
    query_sessions,
    row_filter,
    select_rows,
    unreadable_index,
)
from .index.store import INT64_MAX
from .mirror.state_reader import StateReader
from .offloop import import_off_the_loop, in_thread
from .ssh.pool import PoolSettings

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from anyio.streams.memory import MemoryObjectSendStream

    from .api import SessionFilters
    from .cancel import CancelToken
    from .index.facts import ShowResult
    from .inventory import Host
    from .ssh.pool import SSHPool


#: The host a mirror's listing names in its events (progress, and the error of a cancel): none
#: in particular, as the index holds every host's rows.
MIRROR_HOST = ""

#: What the reads import on first use (start-up time), each in :func:`import_off_the_loop`.
_REMOTE_READERS = "remote_sync.index.remote"
_REMOTE_SHOW = "remote_sync.index.remote_show"
_MIRROR_READER = "remote_sync.index.show"


async def read_remote(
    host: Host,
    session: str,
    head: int | None,
    tail: int | None,
    page: int | None,
    page_size: int,
    idle_timeout: float | None,
    pool: PoolSettings | None,
    emit: Emit,
    token: CancelToken,
) -> ShowResult:
    """The messages chosen, fetched from ``host``: only the bytes shown, in one command."""
    await import_off_the_loop(_REMOTE_SHOW)
    token.raise_if_cancelled(host=host.name)
    from .index.remote_show import SHOW_WINDOW, read_remote_session
    from .ssh.pool import SSHPool

    async with SSHPool(_pool_for(pool, SHOW_WINDOW)) as connections:
        await _preflight(connections, host, emit, token)
        return await read_remote_session(
            connections,
            host,
            session,
            head=_bounded(head),
            tail=_bounded(tail),
            page=page,
            page_size=_bounded(page_size),
            token=token,
            idle_timeout=idle_timeout,
        )


async def _preflight(pool: SSHPool, host: Host, emit: Emit, token: CancelToken) -> None:
    """The pre-flight ``sync`` makes of a host (:meth:`SSHPool.preflight
    <remote_sync.ssh.pool.SSHPool.preflight>`), for a remote listing or show before its
    command: a configuration error its connection would stop on is raised (the same one),
    and what its ssh_config asks for that the connection leaves out is said once, as the
    sync says it (a warning event of kind ``ssh_config``). In a worker thread, as the
    sync's: it reads files and may run a ``Match exec`` command. The lookup it makes is the
    one the connection then uses, not made twice."""
    problem = await in_thread(
        token, partial(pool.preflight, host.endpoint, host.name), host=host.name
    )
    if problem is not None:
        raise problem
    for said in pool.config_warnings(host.endpoint):
        emit(WarningEvent.from_config(host.name, said))


async def read_mirrored(
    dest: Path,
    host: str,
    session: str,
    head: int | None,
    tail: int | None,
    page: int | None,
    page_size: int,
    token: CancelToken,
) -> ShowResult:
    """The messages chosen, read from the mirror at ``dest`` in a worker thread."""
    await import_off_the_loop(_MIRROR_READER)
    from .index.show import show_session as show_mirrored

    read = partial(
        show_mirrored, dest, host, session, head=head, tail=tail, page=page, page_size=page_size
    )
    _row, result = await in_thread(token, read, host=host)
    return result


_DEFAULT_POOL = PoolSettings()


def _pool_for(pool: PoolSettings | None, window: int) -> PoolSettings:
    """The caller's pool settings (None: the defaults) for a remote listing or show: with the
    call's own ``window`` unless the caller chose one (a window other than the default)."""
    pool = pool if pool is not None else _DEFAULT_POOL
    if pool.window == _DEFAULT_POOL.window:
        pool = replace(pool, window=window)
    return pool


def _cancelled_on(token: CancelToken, host: str) -> TransferCancelledError:
    """What a listing's ``host`` reports when the cancel of ``token`` stopped it: that cancel
    under the host's name (the one raised names no host: it stops every host)."""
    return TransferCancelledError(token.reason or "cancelled", host=host, hint=READ_CANCELLED_HINT)


def report_end(emit: Emit, host: str, error: RemoteSyncError, done: int) -> None:
    """A host's read that stopped on ``error`` (a failure, or a cancel through the registry)
    reported as ``sync`` reports a host's round that did: its error, then its ``done``."""
    emit(ErrorEvent.from_exception(error))
    emit(Progress(host, "done", done, done, 0, 0))


_Count = TypeVar("_Count", int, int | None)


def _bounded(count: _Count) -> _Count:
    """A message count no session reaches stands for "all": at most 2**63 - 1, so that it
    fits the C integers (a deque's length) the reading uses. What is no whole number is left
    as it is, for the reader's check of the selection to refuse (a ConfigError saying so)."""
    if isinstance(count, bool) or not isinstance(count, int):
        return count
    return min(count, INT64_MAX)


async def remote_sessions(
    hosts: Sequence[Host],
    batch_size: int,
    emit: Emit,
    token: CancelToken,
    failures: list[RemoteSyncError],
    filters: SessionFilters,
    sort: str | None,
    limit: int | None,
    idle_timeout: float | None,
    concurrency: int,
    pool: PoolSettings | None,
) -> AsyncGenerator[list[SessionRow], None]:
    """Each host's sessions, filtered like the index's (``filters``, then ``sort`` and
    ``limit``: the listing's options); failed hosts reported and skipped.

    Up to ``concurrency`` hosts are read at once, each in its own task. Their batches come
    here through an unbuffered stream, so a host whose rows the caller has not taken yet waits
    (and its SSH window fills, stopping its remote command) instead of piling rows up. The
    failures are appended to ``failures`` in the order of ``hosts``, once the listing ends.
    """
    # One "now" for every batch: a relative `since` (7d) must not move while hosts are read.
    now = filters["now"] = filters.get("now") or datetime.now(UTC)
    # Validates every value (a ConfigError) before connecting.
    select_rows([], sort=sort or DEFAULT_SORT, limit=limit, **filters)
    await import_off_the_loop(_REMOTE_READERS)
    from .index.remote import LIST_WINDOW

    token.raise_if_cancelled()
    ordered = sort is not None or limit is not None
    wanted = filters.get("host")
    # None of another host's rows could match `host`: those are not even connected to.
    asked = [host for host in hosts if wanted is None or host.name == wanted]
    kept: list[SessionRow] = []
    settings = _pool_for(pool, LIST_WINDOW)
    # The filters' values (since's instant, ...) worked out once for every host's batches.
    keep = row_filter(**filters)
    reader = _HostReader(batch_size, emit, token, now, keep, idle_timeout, settings)
    send, receive = anyio.create_memory_object_stream[list[SessionRow] | Exception](0)
    # The hosts are read in a task of their own, not in the caller's: none of their cancel
    # scopes (the host tasks', the pool's) is held across this generator's yields. A caller
    # that leaves its loop without closing the generator is then not cancelled by the
    # generator's cleanup, which runs in whichever task closes it (PEP 789). The task lives
    # within the generator: it is cancelled and awaited when the generator ends, however.
    reading = asyncio.get_running_loop().create_task(
        reader.read_all(asked, concurrency, send), name="remote-sync remote listing"
    )
    try:
        async for rows in receive:
            if isinstance(rows, Exception):
                # A cancel stops the listing, not the host whose task said so first.
                token.raise_if_cancelled()
                raise rows  # a bug: every host stops
            token.raise_if_cancelled()  # the rows of a chunk read before it
            if ordered:
                kept.extend(rows)
            else:
                yield rows
    finally:
        await _stopped(reading)
        send.close()  # when the task was cancelled before it began
        receive.close()
        failures.extend(error for index in sorted(reader.failed) for error in reader.failed[index])
    token.raise_if_cancelled()
    if ordered:
        chosen = select_rows(kept, sort=sort or DEFAULT_SORT, limit=limit, now=now)
        for start in range(0, len(chosen), batch_size):
            token.raise_if_cancelled()
            yield chosen[start : start + batch_size]


async def _stopped(task: asyncio.Task[None]) -> None:
    """``task`` cancelled unless it is done, and finished, whichever task awaits it."""
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait([task])
    if not task.cancelled():
        # What it could not pass on (the listing stopped before taking it) is moot now.
        task.exception()


@dataclass(slots=True)
class _HostReader:
    """The hosts of a remote listing, read at once, each in a task of its own."""

    batch_size: int
    emit: Emit
    token: CancelToken
    now: datetime  # the filters' "now", at which the rows' class is judged too
    keep: Callable[[Iterable[SessionRow]], list[SessionRow]]  # the filters' test of a batch
    idle_timeout: float | None
    settings: PoolSettings
    failed: dict[int, list[RemoteSyncError]] = field(default_factory=dict)  # by place in `hosts`

    async def read_all(
        self,
        hosts: Sequence[Host],
        concurrency: int,
        send: MemoryObjectSendStream[list[SessionRow] | Exception],
    ) -> None:
        """Every host's filtered batches sent on ``send``, ``concurrency`` hosts at once;
        an error that stops the listing is sent on for it to raise."""
        from .ssh.pool import SSHPool

        with send:
            try:
                async with (
                    SSHPool(self.settings) as pool,
                    anyio.create_task_group() as tasks,
                ):
                    limiter = anyio.CapacityLimiter(concurrency)
                    for index, host in enumerate(hosts):
                        tasks.start_soon(self.run, pool, index, host, limiter, send.clone())
            except Exception as exc:  # the pool's own, say (the host tasks pass theirs on)
                await send.send(exc)

    async def run(
        self,
        pool: SSHPool,
        index: int,
        host: Host,
        limiter: CapacityLimiter,
        send: MemoryObjectSendStream[list[SessionRow] | Exception],
    ) -> None:
        """Read ``host`` once a place is free. A host that fails is reported and recorded;
        anything else that stops it (a cancel through the token, a bug) is sent on for the
        listing to raise, rather than cancelling the other hosts as an exception would."""
        with send:
            try:
                with self.token.scope(host=host.name):  # stops it waiting for a place too
                    async with limiter:
                        await self._read(pool, index, host, send)
            except Exception as exc:
                await send.send(exc)

    async def _read(
        self,
        pool: SSHPool,
        index: int,
        host: Host,
        send: MemoryObjectSendStream[list[SessionRow] | Exception],
    ) -> None:
        from .index.remote import stream_remote_sessions

        done = 0
        self.emit(Progress(host.name, "listing", 0, 0, 0, 0))
        try:
            await _preflight(pool, host, self.emit, self.token)
            # The rows' class is judged at the same "now" as the filters, as the index's is.
            batches = stream_remote_sessions(
                pool,
                host,
                batch_size=self.batch_size,
                token=self.token,
                now=self.now,
                idle_timeout=self.idle_timeout,
            )
            async with aclosing(batches):
                async for batch in batches:
                    done += len(batch)
                    self.emit(Progress(host.name, "fetching", done, 0, 0, 0))
                    if rows := self.keep(batch):
                        await send.send(rows)
        except BaseException as exc:
            if self.token.cancelled:
                # Stopped by the listing's cancel (here as a TransferCancelledError, or as
                # the cancellation of the token's scope around it): reported as a sync
                # reports a host it cancelled, so that no host is left "fetching".
                report_end(self.emit, host.name, _cancelled_on(self.token, host.name), done)
                raise
            if not isinstance(exc, RemoteSyncError) or isinstance(exc, TransferCancelledError):
                raise  # a bug, or the caller's own cancel: it knows
            exc = host.explain(exc)
            # A listing find could not read whole: an error per directory, as a sync says.
            errors = [exc, *exc.also] if isinstance(exc, ListingIncompleteError) else [exc]
            self.failed[index] = errors
            for error in errors[:-1]:
                self.emit(ErrorEvent.from_exception(error))
            report_end(self.emit, host.name, errors[-1], done)
            return
        self.emit(Progress(host.name, "done", done, done, 0, 0))


async def local_batches(
    dest: str | Path,
    batch_size: int,
    token: CancelToken,
    emit: Emit,
    filters: SessionFilters,
    sort: str | None,
    limit: int | None,
) -> AsyncGenerator[list[SessionRow], None]:
    """The index's rows in batches, reported as a remote listing reports a host, under the
    host :data:`MIRROR_HOST` (the index holds every host's rows): ``listing`` with the rows
    read so far before each batch, then ``done``; a listing stopped by a cancel through the
    registry (or failing) after its first batch reports its error, then ``done``. Each batch
    is read in a worker thread (:class:`_IndexReader`), so the event loop goes on meanwhile
    (a cancel taken while it reads ends the wait there, raising)."""
    reader = _IndexReader(Path(dest), batch_size, filters, sort, limit)
    done = 0
    try:
        while batch := await reader.next_batch(token):
            done += len(batch)
            emit(Progress(MIRROR_HOST, "listing", done, 0, 0, 0))
            # A cancel sent from `emit` itself (a UI's "stop" on this very event) stops the
            # listing here: this batch is not handed over, no further row is read.
            token.raise_if_cancelled()
            yield batch
        # A cancel taken after the last batch stops the listing too, as a remote one's does:
        # the registry said True, so it is not ignored.
        token.raise_if_cancelled()
    except RemoteSyncError as exc:
        if done:  # it reported `listing`: a UI following it is not left there
            stopped = _cancelled_on(token, MIRROR_HOST) if token.cancelled else exc
            report_end(emit, MIRROR_HOST, stopped, done)
        raise
    finally:
        reader.stop()
    emit(Progress(MIRROR_HOST, "done", done, done, 0, 0))


class _IndexReader:
    """A mirror listing's reads of the index, one batch per worker-thread call: the first
    opens the index and runs the query (its sort reads every matching row before the first
    comes out: 0.05-0.1 s over 10,000 sessions), each call builds one batch's rows,
    and no batch is built ahead of the caller (the query hands rows over 1,024 at a time), so
    memory stays at about a batch and a cancel between batches builds no further row.

    The connection is used by one thread at a time (opened with ``check_same_thread=False``
    by :func:`~remote_sync.index.query.open_index`). A cancel while a call is in its thread
    leaves that thread (the listing raises at once) and :meth:`stop` marks the reader
    stopped: SQLite asks :meth:`_stopping` every :data:`_STEPS` of its instructions and
    aborts the query, so the thread does not go on sorting an index nobody waits for; the
    thread then closes the connection itself. Otherwise :meth:`stop` closes it at once. The
    connection is the :class:`~remote_sync.mirror.state_reader.StateReader`'s own, never a copy of
    it: a read again after a sync replaced it, and the close is the reader's, so no
    connection opened for a reread stays open until the garbage collector finds it."""

    #: SQLite instructions between two asks whether to abort (each takes the GIL: a few
    #: hundred in a query over 10,000 sessions, each answered in well under a millisecond).
    _STEPS = 10_000

    def __init__(
        self,
        dest: Path,
        batch_size: int,
        filters: SessionFilters,
        sort: str | None,
        limit: int | None,
    ) -> None:
        self._dest = dest
        self._batch_size = min(batch_size, maxsize)
        self._filters, self._sort, self._limit = filters, sort, limit
        self._state: StateReader | None = None
        self._rows: Iterator[SessionRow] | None = None
        self._lock = threading.Lock()  # guards the two flags, and so who closes `_state`
        self._reading = False
        self._stopped = False

    async def next_batch(self, token: CancelToken) -> list[SessionRow]:
        """The next batch (empty at the end), read in a worker thread that a cancel (of
        ``token``: :class:`TransferCancelledError` naming no host; or of the caller's scope)
        stops waiting for at once."""
        return await in_thread(token, self._read)

    def _read(self) -> list[SessionRow]:
        """In a worker thread: the next batch, the index opened and queried first."""
        with self._lock:
            if self._stopped:  # cancelled after this call was made, before it ran
                return []
            self._reading = True
        try:
            if self._rows is None:
                # The query and its first batch read again on a new connection when a sync
                # started during them (see StateReader); a later batch's failure is raised,
                # as the rows before it were handed over.
                self._state = state = StateReader(self._dest, warn=True)

                def first(db: sqlite3.Connection) -> tuple[Iterator[SessionRow], list[SessionRow]]:
                    db.set_progress_handler(self._stopping, self._STEPS)
                    rows = query_sessions(
                        db,
                        **self._filters,
                        sort=self._sort or DEFAULT_SORT,
                        limit=self._limit,
                    )
                    return rows, list(islice(rows, self._batch_size))

                self._rows, batch = state.steady(first)
                return batch
            return list(islice(self._rows, self._batch_size))
        except sqlite3.Error as exc:
            # Said as read_state says it (api.session_stats), naming the mirror, not a
            # sqlite3 error outside the library's own; a query aborted by stop() is no
            # failure (the listing is over, its caller gone).
            if self._stopped:
                return []
            raise unreadable_index(self._dest, exc) from exc
        finally:
            with self._lock:
                self._reading = False
                if self._stopped:  # left by a cancel while it read: no one else closes
                    self._close()

    def _stopping(self) -> bool:
        """SQLite's question between instructions: abort the query (the listing is over)?"""
        return self._stopped

    def stop(self) -> None:
        """The listing is over: close the connection, or have the thread still reading (left
        by a cancel) abort its query and close it."""
        with self._lock:
            self._stopped = True
            if not self._reading:
                self._close()

    def _close(self) -> None:
        self._rows = None
        if self._state is not None:
            # The state's connection of the moment: after the last of its rereads it may be
            # one no read was given (the rereads gave up).
            self._state.close()
            self._state = None
