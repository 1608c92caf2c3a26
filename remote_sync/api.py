"""The async library API: the same engine as the CLI, for programs and UIs.

What it owns: the public entry points. ``sync`` mirrors hosts; ``list_sessions`` returns every
session at once (from a mirror's index, or straight from hosts with ``remote=True``);
``stream_sessions`` yields them in batches as they are decoded, for UIs that render
progressively; ``show_session`` returns a session's messages straight from its host, and
``read_session`` the same with where they are and what reading them cost. The remote calls
open their own connection pool, with channel windows sized for them (a listing decodes more
slowly than a window refills; a show stops reading early). Every call is cancellable through
a :class:`~remote_sync.cancel.CancelRegistry` (pass ``transfer_id`` and cancel it there) and
reports progress through ``emit``.

``emit`` is called from inside the engine's tasks: an exception it raises is logged and the
event dropped (see :func:`~remote_sync.events.guarded`); it never aborts the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from sys import maxsize
from typing import TYPE_CHECKING, Any

from .cancel import CancelRegistry, CancelToken, default_registry
from .errors import ConfigError, RemoteSyncError, TransferCancelledError
from .events import Emit, ErrorEvent, Progress, Summary, guarded
from .index.facts import Message
from .index.query import SessionRow, check_batch_size
from .index.store import INT64_MAX
from .inventory import Host
from .ssh.remote import IDLE_TIMEOUT

if TYPE_CHECKING:
    from .index.show import ShowResult

#: The largest count passed on (SQLite's and C's 64-bit integers; no session is longer).

__all__ = ["list_sessions", "read_session", "show_session", "stream_sessions", "sync"]


async def sync(
    hosts: Sequence[Host],
    dest: str | Path,
    *,
    emit: Emit | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
    **options: Any,
) -> Summary:
    """Mirror ``hosts`` into ``dest`` (what ``remote-sync sync`` does)."""
    from .mirror.engine import SyncOptions, sync_fleet

    _require_asyncio()

    return await sync_fleet(
        hosts,
        SyncOptions(dest=Path(dest), **options),
        guarded(emit) if emit is not None else _ignore,
        registry=registry,
        transfer_id=transfer_id,
    )


async def stream_sessions(
    *,
    dest: str | Path | None = None,
    hosts: Sequence[Host] = (),
    remote: bool = False,
    batch_size: int = 50,
    emit: Emit | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
    errors: list[RemoteSyncError] | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    **filters: Any,
) -> AsyncGenerator[list[SessionRow], None]:
    """Sessions in batches of ``batch_size`` as they are read.

    A caller that may stop before the end closes it in its own task: ``async with
    contextlib.aclosing(stream_sessions(...)) as batches:`` (as for any async generator that
    holds connections).

    From the mirror at ``dest`` (its index), or with ``remote=True`` straight from ``hosts``
    over SSH, decoding each transcript as it streams. ``filters`` are those of ``sessions
    list`` (:func:`~remote_sync.index.query.query_sessions`: ``host``, ``format``, ``agent``,
    ``since``, ``klass``, ``state``, ``sort``, ``limit``, ``now``) and mean the same for both;
    bad ones raise :class:`~remote_sync.errors.ConfigError` before any host is contacted.
    Remote rows are filtered batch by batch as they arrive (``host`` also skips the other
    hosts); with ``sort`` or ``limit`` they are sorted and cut once every host was read (as
    over the index, ``limit`` keeps the most recent unless ``sort`` says otherwise), then
    yielded.

    With ``remote=True`` a host that cannot be read does not cost the others their rows: its
    failure is reported through ``emit`` as an :class:`~remote_sync.events.ErrorEvent` (the
    ``--json`` error of ``sync``) and the listing goes on with the next host. Once every host
    was read, the first failure is raised, so a partial listing is never taken for a whole
    one; pass a list as ``errors`` to have the failures appended there instead. A
    cancellation stops everything at once. A host whose command sends nothing for
    ``idle_timeout`` seconds fails (None: no limit).
    """
    check_batch_size(batch_size)
    if remote:
        _require_asyncio()
    emit = guarded(emit) if emit is not None else _ignore
    registry = registry if registry is not None else default_registry
    failures: list[RemoteSyncError] = errors if errors is not None else []
    with registry.register(transfer_id) as token:
        if remote:
            batches = _remote_sessions(
                hosts, batch_size, emit, token, failures, filters, idle_timeout
            )
        else:
            batches = _local_batches(dest, batch_size, token, emit, filters)
        # Closed here, in the caller's task, when the caller stops early (aclosing): left to
        # the garbage collector, the connections' task groups would be exited in another task.
        async with aclosing(batches):
            async for batch in batches:
                yield batch
        if errors is None and failures:
            raise failures[0]


async def list_sessions(**kwargs: Any) -> list[SessionRow]:
    """Every session at once (eager); the arguments are those of :func:`stream_sessions`.

    With ``remote=True``, pass ``errors=[]`` to get the rows of every host that could be read
    when some could not (the failures are appended to that list); without it the first
    failure is raised after every host was read.
    """
    out: list[SessionRow] = []
    async for batch in stream_sessions(**kwargs):
        out.extend(batch)
    return out


async def show_session(
    host: Host,
    session: str,
    *,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
    transfer_id: str | None = None,
    registry: CancelRegistry | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    emit: Emit | None = None,
) -> list[Message]:
    """A session's first ``head``, last ``tail`` or page ``page`` of ``page_size`` messages
    (page 1 when none is given), fetched from the host: only the bytes shown, in one remote
    command. ``session`` is a session id or the file's path relative to the host's root. The
    host fails if its command sends nothing for ``idle_timeout`` seconds (None: no limit)."""
    result = await read_session(
        host,
        session,
        head=head,
        tail=tail,
        page=page,
        page_size=page_size,
        transfer_id=transfer_id,
        registry=registry,
        idle_timeout=idle_timeout,
        emit=emit,
    )
    return result.messages


async def read_session(
    host: Host,
    session: str,
    *,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
    transfer_id: str | None = None,
    registry: CancelRegistry | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    emit: Emit | None = None,
) -> ShowResult:
    """:func:`show_session` with the :class:`~remote_sync.index.show.ShowResult`: the number
    of the first message (for a tail only when the whole file was read), the bytes read, and
    whether the end of the session was reached. ``emit`` gets a ``fetching`` progress event,
    then ``done`` with the messages and bytes read."""
    from .index.remote import SHOW_WINDOW, read_remote_session
    from .ssh.pool import PoolSettings, SSHPool

    _require_asyncio()
    emit = guarded(emit) if emit is not None else _ignore
    registry = registry if registry is not None else default_registry
    emit(Progress(host.name, "fetching", 0, 0, 0, 0))
    with registry.register(transfer_id) as token:
        async with SSHPool(PoolSettings(window=SHOW_WINDOW)) as pool:
            result = await read_remote_session(
                pool,
                host,
                session,
                head=_bounded(head),
                tail=_bounded(tail),
                page=page,
                page_size=min(page_size, INT64_MAX),
                token=token,
                idle_timeout=idle_timeout,
            )
    shown, read = len(result.messages), result.bytes_read
    emit(Progress(host.name, "done", shown, shown, read, read))
    return result


def _bounded(count: int | None) -> int | None:
    """A message count no session reaches stands for "all": at most 2**63 - 1, so that it
    fits the C integers (a deque's length) the reading uses."""
    return None if count is None else min(count, INT64_MAX)


async def _remote_batches(
    pool: Any,
    host: Host,
    batch_size: int,
    token: CancelToken,
    idle_timeout: float | None,
    now: datetime,
) -> AsyncGenerator[list[SessionRow], None]:
    from .index.remote import stream_remote_sessions

    batches = stream_remote_sessions(
        pool, host, batch_size=batch_size, token=token, now=now, idle_timeout=idle_timeout
    )
    async with aclosing(batches):
        async for batch in batches:
            yield batch


async def _remote_sessions(
    hosts: Sequence[Host],
    batch_size: int,
    emit: Emit,
    token: CancelToken,
    failures: list[RemoteSyncError],
    filters: dict[str, Any],
    idle_timeout: float | None,
) -> AsyncGenerator[list[SessionRow], None]:
    """Each host's sessions, filtered like the index's; failed hosts reported and skipped."""
    from .index.query import DEFAULT_SORT, filter_rows, select_rows
    from .index.remote import LIST_WINDOW
    from .ssh.pool import PoolSettings, SSHPool

    filters = dict(filters)
    sort: str | None = filters.pop("sort", None)
    limit: int | None = filters.pop("limit", None)
    if filters.get("now") is None:
        # One "now" for every batch: a relative `since` (7d) must not move while hosts are read.
        filters["now"] = datetime.now(UTC)
    # Validates every argument (ConfigError, or TypeError for an unknown one) before connecting.
    select_rows([], sort=sort or DEFAULT_SORT, limit=limit, **filters)  # checks them, early
    ordered = sort is not None or limit is not None
    wanted = filters.get("host")
    kept: list[SessionRow] = []
    async with SSHPool(PoolSettings(window=LIST_WINDOW)) as pool:
        for host in hosts:
            if wanted is not None and host.name != wanted:
                continue  # none of its rows could match: do not even connect
            done = 0
            emit(Progress(host.name, "listing", 0, 0, 0, 0))
            try:
                # The rows' class is judged at the same "now" as the filters, as the index's is.
                batches = _remote_batches(
                    pool, host, batch_size, token, idle_timeout, filters["now"]
                )
                async with aclosing(batches):
                    async for batch in batches:
                        done += len(batch)
                        emit(Progress(host.name, "fetching", done, 0, 0, 0))
                        rows = filter_rows(batch, **filters)
                        if ordered:
                            kept.extend(rows)
                        elif rows:
                            token.raise_if_cancelled()  # the rows of a chunk read before it
                            yield rows
            except TransferCancelledError:
                raise
            except RemoteSyncError as exc:
                failures.append(exc)
                emit(ErrorEvent.from_exception(exc))
            emit(Progress(host.name, "done", done, done, 0, 0))
    if ordered:
        chosen = select_rows(kept, sort=sort or DEFAULT_SORT, limit=limit, now=filters.get("now"))
        for start in range(0, len(chosen), batch_size):
            token.raise_if_cancelled()
            yield chosen[start : start + batch_size]


async def _local_batches(
    dest: str | Path | None,
    batch_size: int,
    token: CancelToken,
    emit: Emit,
    filters: dict[str, Any],
) -> AsyncGenerator[list[SessionRow], None]:
    """The index's rows in batches. Progress events name no host (the index holds them all):
    ``listing`` with the rows read so far before each batch, then ``done``."""
    import anyio

    from .index.query import open_index, query_sessions

    if dest is None:
        raise ValueError("dest is required unless remote=True")
    db = open_index(Path(dest))
    done = 0
    try:
        rows = query_sessions(db, **filters)
        while batch := list(islice(rows, min(batch_size, maxsize))):
            token.raise_if_cancelled()
            done += len(batch)
            emit(Progress("", "listing", done, 0, 0, 0))
            yield batch
            await anyio.lowlevel.checkpoint()
    finally:
        db.close()
    emit(Progress("", "done", done, done, 0, 0))


def _require_asyncio() -> None:
    """SSH goes through asyncssh, which runs on asyncio only: anywhere else (trio), a clear
    error instead of one from deep inside it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "remote-sync reaches hosts through asyncssh, which runs on asyncio only: run "
            "this under asyncio (asyncio.run, or anyio.run(..., backend='asyncio'))"
        ) from None


def _ignore(_: object) -> None:
    return None
