"""The async library API: the same engine as the CLI, for programs and UIs.

What it owns: the public entry points. ``sync`` mirrors hosts; ``list_sessions`` returns every
session at once (from a mirror's index, or straight from hosts with ``remote=True``);
``stream_sessions`` yields them in batches as they are decoded, for UIs that render
progressively; ``show_session`` returns a session's messages (from a mirror with ``dest``, or
straight from its host), and ``read_session`` the same with where they are and what reading
them cost; ``session_stats`` sums a mirror's sessions per host, agent, format, model or day;
``list_versions`` lists the earlier copies a mirror kept of rewritten files, and
``prune_versions`` removes those no keep rule keeps; ``check_mirror`` checks that a mirror
holds what its state says; ``serve_agent`` runs the sync agent until cancelled. These are the
CLI's ``sync``, ``sessions list / show / stats``, ``versions list / prune``, ``check`` and
``agent``, with the same options as keyword arguments (a misspelt one is a TypeError at the
call, as for a plain ``async def``); the filters they share are defined once, as
:class:`SessionFilters` and :class:`ListingOptions`, and spelt out as keywords in each
signature. The remote calls open their own connection pool, with channel windows sized for them
(a listing decodes more slowly than a window refills; a show stops reading early); the reads of
a mirror (a listing, one batch per call; a show; the stats) run in a worker thread, so the
event loop goes on. Every call is cancellable through a
:class:`~remote_sync.cancel.CancelRegistry` (pass ``transfer_id`` and cancel it there): the
transfer is registered at the call, so a cancel sent before the coroutine is awaited or the
generator iterated is kept, and the run starts cancelled; a call never run leaves no entry once
it is closed or dropped, and a ``transfer_id`` already registered is an :class:`ArgumentError`
(a ValueError too) at the call. All but ``session_stats``, ``list_versions`` (one query each),
``prune_versions`` and ``check_mirror`` report progress through ``emit``.

Each entry point builds its options and hands over: to the engine, the agent, a mirror's own
modules, or the readers of listings and shows (:mod:`remote_sync.sessionread`). What every
call does before any work (its keywords bound, its transfer registered, the arguments the calls
share checked) is :mod:`remote_sync.apicall`'s, and the waits kept off the event loop
:mod:`remote_sync.offloop`'s.

``emit`` is called from inside the engine's tasks: an exception it raises is logged and the
event dropped (see :func:`~remote_sync.events.guarded`); it never aborts the work.

Every name a signature here uses is importable at run time, so ``typing.get_type_hints``
works on each function; none of them pulls in the engine or the readers of a show, which
stay imported lazily (start-up time).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from sys import float_info
from typing import Any, TypedDict, Unpack, cast

import anyio

from .agent_link import PERSIST, STOP_TIMEOUT
from .apicall import (
    READ_CANCELLED_HINT,
    checked_tuning,
    keywords_of,
    listing_source,
    reaching_hosts,
    registered_at_call,
    registered_read,
    require_asyncio,
    with_arguments_of,
)
from .cancel import CancelRegistry, CancelToken, registry_or_default
from .errors import ArgumentError, RemoteSyncError, TransferCancelledError
from .events import Emit, Progress, Summary, guarded
from .index.facts import Message, ShowResult
from .index.query import SessionRow, Since, StatsKey, StatsRow, check_batch_size
from .index.query import session_stats as query_stats
from .inventory import Host
from .mirror.check import CheckReport, Problem
from .mirror.check import check_mirror as check_the_mirror
from .mirror.state_reader import read_state
from .mirror.versions import PruneResult, VersionRow
from .mirror.versions import list_versions as list_kept_versions
from .mirror.versions import prune_versions as prune_kept_versions
from .offloop import import_off_the_loop, in_thread
from .sessionread import MIRROR_HOST as MIRROR_HOST
from .sessionread import local_batches, read_mirrored, read_remote, remote_sessions, report_end
from .ssh.pool import PoolSettings
from .ssh.remote import CONCURRENCY, IDLE_TIMEOUT, in_range

__all__ = [
    "ListingOptions",
    "SessionFilters",
    "check_mirror",
    "list_sessions",
    "list_versions",
    "prune_versions",
    "read_session",
    "serve_agent",
    "session_stats",
    "show_session",
    "stream_sessions",
    "sync",
]


class SessionFilters(TypedDict, total=False):
    """Which sessions: the filters of ``sessions list`` and ``sessions stats``, the keywords
    that :func:`stream_sessions`, :func:`list_sessions` and :func:`session_stats` share
    (defined here once; each spelt out as a keyword in their signatures). One left out, or
    None, filters nothing. They mean the same over a mirror's index and straight from hosts
    (:func:`~remote_sync.index.query.query_sessions`), and a bad one raises
    :class:`~remote_sync.errors.ConfigError` before anything is read or any host contacted.
    """

    #: Only this host's sessions (from hosts: the others are not even contacted).
    host: str | None
    #: Only sessions of this session format (the inventory's ``format``).
    format: str | None
    #: Only this agent's sessions.
    agent: str | None
    #: Only sessions active at or after this: an ISO date or datetime (naive: UTC), or an age
    #: such as ``7d``, ``12h``, ``2w``.
    since: Since | None
    #: Only sessions of this class: ``empty``, ``low`` or ``valuable``.
    klass: str | None
    #: Only sessions in this state (``live``, ``archived``, ``deleted``, ``rewritten``,
    #: ``renamed``); without it, renamed sessions are left out (they count under their new
    #: name).
    state: str | None
    #: When the class is judged and ages are counted from (default: the current time).
    now: datetime | None


class ListingOptions(SessionFilters, total=False):
    """A listing's filters, its order and its length: the keywords of :func:`stream_sessions`
    and :func:`list_sessions` that ``sessions list`` has as options."""

    #: ``FIELD`` (ascending) or ``-FIELD`` (descending), FIELD one of
    #: :data:`~remote_sync.index.query.SORT_FIELDS`. Over the index the default is
    #: ``-last_ts``; from hosts, rows come in the order they arrive.
    sort: str | None
    #: At most this many sessions (by default the most recent); none below 0.
    limit: int | None


_FILTERS = frozenset(SessionFilters.__optional_keys__)


def _filters_of(options: ListingOptions) -> SessionFilters:
    """The filters among a listing's options (its sort and limit left out)."""
    return cast(SessionFilters, {k: v for k, v in options.items() if k in _FILTERS})


@registered_at_call
async def sync(
    hosts: Iterable[Host],
    dest: str | Path,
    *,
    concurrency: int = CONCURRENCY,
    dry_run: bool = False,
    idle_timeout: float | None = IDLE_TIMEOUT,
    pool: PoolSettings | None = None,
    index: bool = True,
    emit: Emit | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
) -> Summary:
    """Mirror ``hosts`` into ``dest`` (what ``remote-sync sync`` does).

    The options are :class:`~remote_sync.mirror.engine.SyncOptions`'s, with its defaults:
    ``concurrency`` hosts at once (``--concurrency``), ``dry_run`` (``--dry-run``: report what
    would move, write nothing), ``idle_timeout`` seconds a remote command may stay silent
    (``--timeout``; 0 or None: no limit), ``pool`` the SSH pool's tuning (None: the defaults) and
    ``index`` (off: ``--no-index``, mirror only). No ``hosts`` is a
    :class:`~remote_sync.errors.ConfigError`, as for the CLI, and the destination is not made;
    so is a ``pool`` that is not a :class:`~remote_sync.ssh.pool.PoolSettings` (which checks
    its own fields as it is made). A second sync of ``dest`` while one runs is a
    :class:`~remote_sync.errors.LockedError`, which says so when the first is in this process.

    A cancel through the registry does not raise, unlike a listing's or a show's (which
    have no summary to give, and raise :class:`~remote_sync.errors.TransferCancelledError`):
    each host it stopped reports an ``ErrorEvent`` of kind ``cancelled``, then ``done`` and
    a ``HostDone`` of status ``cancelled``, and is counted in the returned
    :class:`~remote_sync.events.Summary`'s ``hosts_failed`` (a host's ``status`` tells a
    cancelled one from a failed one), whose ``exit_code`` is 130, the CLI's on Ctrl-C. What
    was committed before the cancel stays, consistent with the state."""
    hosts, idle_timeout = reaching_hosts(
        "sync", hosts, concurrency=concurrency, idle_timeout=idle_timeout, pool=pool
    )
    # The token registered at the call (adopted here), before the engine is imported (in a
    # worker thread, while other tasks run): a cancel meanwhile is kept by the token, and the
    # engine's rounds are born cancelled. The engine's own registration (the token's child)
    # is private.
    with registry_or_default(registry).register(transfer_id) as token:
        await import_off_the_loop(_ENGINE)
        from .mirror.engine import SyncOptions
        from .mirror.fleet import sync_fleet

        options = SyncOptions(
            dest=Path(dest),
            concurrency=concurrency,
            dry_run=dry_run,
            idle_timeout=idle_timeout,
            pool=pool if pool is not None else PoolSettings(),
            index=index,
        )
        return await sync_fleet(
            hosts,
            options,
            guarded(emit) if emit is not None else _ignore,
            token=token,
            registry=CancelRegistry(),
        )


@registered_at_call
async def serve_agent(
    inventory: str | Path,
    dest: str | Path,
    *,
    every: float | None = None,
    persist: float = PERSIST,
    stop_timeout: float = STOP_TIMEOUT,
    emit: Emit | None = None,
    ready: Callable[[], None] | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
) -> None:
    """Run the sync agent of the mirror ``dest`` (what ``remote-sync agent`` does, see
    :mod:`remote_sync.agent`) until it is cancelled: it keeps each host's SSH connection
    open between syncs and serves ``remote-sync sync --dest`` of the hosts of ``inventory``
    over the socket ``dest/.remote-sync/agent.sock``.

    ``every``: also sync every inventory host on this period, in seconds (``--every``; None:
    only the syncs asked for), their events to ``emit`` (None: their errors and warnings
    logged); ``persist``: close a connection unused for this long (``--persist``; 0: keep it
    until the agent stops); ``stop_timeout``: how long a stop waits for the syncs it cancelled
    (``--stop-timeout``; 0: no limit); ``ready`` is called once the socket listens. A bad
    value is an :class:`ArgumentError` before anything is made; a destination inside another
    mirror is a :class:`~remote_sync.errors.ConfigError`, another agent serving ``dest`` a
    :class:`~remote_sync.errors.LockedError`.

    A cancel of ``transfer_id`` through the registry stops the agent as SIGTERM does: the
    syncs it runs are cancelled, and the call returns once they have wound down, the
    connections closed and the socket removed; those still running ``stop_timeout`` seconds
    later are cut off, and an :class:`~remote_sync.errors.AgentError` says so. The syncs it
    serves are registered in a registry of its own, not in ``registry``, so that its stop
    cancels none of the caller's other transfers. Cancelling the caller's scope stops it at
    once, its syncs cut off."""
    for name, value, least in (("persist", persist, 0.0), ("stop_timeout", stop_timeout, 0.0)):
        if not in_range(value, float, least, float_info.max):
            raise ArgumentError(
                f"{name} (--{name.replace('_', '-')}) must be 0 or a finite number of seconds, "
                f"not {value!r}",
                hint="pass a number of seconds, or 0 for no limit",
            )
    if every is not None and not (in_range(every, float, 0, float_info.max) and every > 0):
        raise ArgumentError(
            f"every (--every) must be None or a finite number of seconds above 0, not {every!r}",
            hint="pass the period of the scheduled syncs, or None for none",
        )
    for name, function in (("emit", emit), ("ready", ready)):
        if function is not None and not callable(function):
            raise ArgumentError(f"{name} must be a function or None, not {type(function).__name__}")
    if not isinstance(inventory, str | Path) or not isinstance(dest, str | Path):
        raise ArgumentError("inventory and dest must be paths (a str or a Path)")
    require_asyncio()
    with registry_or_default(registry).register(transfer_id) as token:
        await import_off_the_loop(_AGENT)
        from .agent import Agent

        agent = Agent(
            Path(inventory),
            Path(dest),
            every=every,
            persist=persist,
            stop_timeout=stop_timeout,
            scheduled=emit,
        )
        unhook = token.on_cancel(agent.stop)  # at once if cancelled already
        try:
            await agent.serve(ready)
        finally:
            unhook()


@keywords_of(ListingOptions)
async def stream_sessions(
    *,
    dest: str | Path | None = None,
    hosts: Iterable[Host] = (),
    remote: bool = False,
    batch_size: int = 50,
    emit: Emit | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
    errors: list[RemoteSyncError] | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    concurrency: int = CONCURRENCY,
    pool: PoolSettings | None = None,
    **options: Unpack[ListingOptions],
) -> AsyncGenerator[list[SessionRow], None]:
    """Sessions in batches of ``batch_size`` as they are read.

    A caller that may stop before the end should close it: ``async with
    contextlib.aclosing(stream_sessions(...)) as batches:`` stops the hosts as the loop is
    left (as for any async generator that holds connections). A loop left without it is safe
    too (no cancel scope of the stream's is held in the caller's task across a yield), but
    the hosts then stop only when the stream is dropped and asyncio closes it.

    From the mirror at ``dest`` (its index), or with ``remote=True`` straight from ``hosts``
    over SSH, decoding each transcript as it streams (``dest`` with ``remote=True``, or no
    ``hosts``, is a :class:`~remote_sync.errors.ConfigError`, as for the CLI; so are
    ``hosts`` without ``remote=True``, and neither ``dest`` nor ``remote=True``). The
    filters are those of ``sessions list``, the keys of :class:`ListingOptions` given as
    keywords: ``host``, ``format``, ``agent``, ``since`` (an ISO date or datetime, or an age
    such as ``7d``), ``klass`` (``empty``, ``low``, ``valuable``), ``state``, ``sort``
    (``FIELD`` or ``-FIELD``), ``limit`` and ``now`` (when the class is judged and ages are
    counted from; default: the current time), and mean the same for both; bad ones raise
    :class:`~remote_sync.errors.ConfigError` before any host is contacted, and an unknown
    keyword is a TypeError at the call. Over the index ``sort`` defaults to ``-last_ts``.
    Remote rows are filtered batch by batch as they arrive
    (``host`` also skips the other hosts); with ``sort`` or ``limit`` they are sorted and cut
    once every host was read (as over the index, ``limit`` keeps the most recent unless
    ``sort`` says otherwise), then yielded.

    With ``remote=True`` up to ``concurrency`` hosts are read at once (as ``sync``'s), and
    each batch is yielded as its host sends it: a batch holds one host's rows, and batches of
    different hosts interleave (``concurrency=1`` reads the hosts one after another, in the
    order given). A host's rows wait for the caller to take them, so a slow caller slows the
    hosts down rather than filling memory. Each host reports ``listing``, ``fetching`` and
    ``done`` progress through ``emit``, and, before its command, what its ssh_config asks
    for that its connection leaves out (a :class:`~remote_sync.events.WarningEvent` of kind
    ``ssh_config`` each, once, as :func:`sync` reports it). From the mirror, the events
    name the host ``""`` (:data:`MIRROR_HOST`: the index holds every host's rows):
    ``listing`` with the rows read so far before each batch, then ``done``; a cancel sent
    from ``emit`` on a ``listing`` event keeps that event's batch back.

    A host that cannot be read does not cost the others their rows: its failure is reported
    through ``emit`` as an :class:`~remote_sync.events.ErrorEvent` (the ``--json`` error of
    ``sync``) at once, and the other hosts go on; a host whose listing find could not read
    whole reports one error of kind ``listing_incomplete`` per directory it could not read,
    naming it (as ``sync`` does), and one of kind ``permission_denied`` (or ``read_failed``)
    per session file the host would not open (or read whole), each one a failure of its own.
    Once every host was read, the first failure (in the order of ``hosts``) is raised, so a
    partial listing is never taken for a whole one; pass a list as ``errors`` to have the
    failures appended there instead (in the order of ``hosts``, when the listing ends). A
    cancellation stops every host at once; through
    the registry, each host it stopped reports it (an ``ErrorEvent`` of kind ``cancelled``,
    then ``done``: every host that reported ``listing`` ends with ``done``; from the mirror,
    the same under the host ``""``), and the
    :class:`~remote_sync.errors.TransferCancelledError` raised names no host (a listing
    raises it where :func:`sync` returns a summary with exit code 130). A host
    whose command sends nothing for ``idle_timeout`` seconds fails (0 or None: no limit; a
    listing of a mirror uses no ``idle_timeout``, ``concurrency`` or ``pool``, but refuses a
    bad one as a remote listing does), and so does one that sends more than a sync's
    listing may hold, or more of its files' bytes than their sizes and room for growth (a
    :class:`~remote_sync.errors.TooMuchOutputError`, kind ``too_much_output``: the rows it
    sent before are yielded).

    ``pool`` tunes the SSH connection pool of a remote listing as it does ``sync``'s (say a
    short ``connect_timeout``, so that a host that hangs in its handshake fails soon instead
    of holding the listing up); its ``window``, left at the default, is the listing's own
    smaller one (rows decode more slowly than a window refills).
    """
    check_batch_size(batch_size)
    mirror = listing_source(dest, hosts, remote)
    reached: tuple[Host, ...] = ()
    if mirror is None:  # the hosts' checks include the tuning's, as sync's do
        reached, idle_timeout = reaching_hosts(
            "list", hosts, concurrency=concurrency, idle_timeout=idle_timeout, pool=pool
        )
    else:
        checked_tuning(concurrency=concurrency, idle_timeout=idle_timeout, pool=pool)
    emit = guarded(emit) if emit is not None else _ignore
    failures: list[RemoteSyncError] = errors if errors is not None else []
    filters, sort, limit = _filters_of(options), options.get("sort"), options.get("limit")
    with registered_read(registry, transfer_id) as token:
        if mirror is None:
            batches = remote_sessions(
                reached,
                batch_size,
                emit,
                token,
                failures,
                filters,
                sort,
                limit,
                idle_timeout,
                concurrency,
                pool,
            )
        else:
            batches = local_batches(mirror, batch_size, token, emit, filters, sort, limit)
        # Closed with this generator (so the hosts stop as soon as it is closed), not left to
        # the garbage collector.
        async with aclosing(batches):
            async for batch in batches:
                yield batch
        if errors is None and failures:
            raise failures[0]


@with_arguments_of(stream_sessions)
async def list_sessions(*args: Any, **kwargs: Any) -> list[SessionRow]:
    """Every session at once (eager); the arguments are those of :func:`stream_sessions`.

    With ``remote=True``, pass ``errors=[]`` to get the rows of every host that could be read
    when some could not (the failures are appended to that list); without it the first
    failure is raised after every host was read.
    """
    out: list[SessionRow] = []
    async for batch in stream_sessions(*args, **kwargs):
        out.extend(batch)
    return out


@registered_at_call
async def read_session(
    host: Host | str,
    session: str,
    *,
    dest: str | Path | None = None,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
    transfer_id: str | None = None,
    registry: CancelRegistry | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    pool: PoolSettings | None = None,
    emit: Emit | None = None,
) -> ShowResult:
    """A session's first ``head``, last ``tail`` or page ``page`` of ``page_size`` messages
    (page 1 when none is given), with where they are and what reading them cost: the
    :class:`~remote_sync.index.facts.ShowResult` (the number of the first message, the bytes
    read, whether the end of the session was reached, and from a mirror the messages the
    whole session shows). ``session`` is a session id, a unique prefix of one, or the file's
    path relative to the host's root (as listed).

    With ``dest``, from the mirror there (what ``sessions show HOST SESSION --dest DIR``
    reads; ``host`` is the host's name or its :class:`~remote_sync.inventory.Host`): only the
    bytes shown, in a worker thread, never taking the mirror's lock (``idle_timeout`` and
    ``pool`` unused, but a bad one refused as over SSH). Without it, straight from
    the :class:`~remote_sync.inventory.Host` over SSH (``sessions show --remote``; a name
    alone is a :class:`~remote_sync.errors.ConfigError` saying what to pass): only the
    bytes shown, in one remote command; the host fails if its command sends nothing for
    ``idle_timeout`` seconds (0 or None: no limit), or more than was asked (the file past
    its size and room for growth, a tail block past its length: a
    :class:`~remote_sync.errors.TooMuchOutputError`), and ``pool`` tunes its SSH
    connection as it does ``sync``'s (its ``window``, left at the default, is the show's
    own smaller one: a show stops reading early). ``emit`` gets a ``fetching`` progress
    event (over SSH, then the warnings of the host's ssh_config, as :func:`stream_sessions`
    gives them), then ``done`` with the messages and bytes read; when the read fails or is
    cancelled through the registry, an :class:`~remote_sync.events.ErrorEvent` and ``done``
    before the error is raised (a cancel: :class:`~remote_sync.errors.TransferCancelledError`,
    where :func:`sync` returns a summary with exit code 130).
    """
    name = host.name if isinstance(host, Host) else host
    if head is None and tail is None and page is None:
        page = 1
    emit = guarded(emit) if emit is not None else _ignore
    fetch: Callable[[CancelToken], Awaitable[ShowResult]]
    if dest is not None:
        checked_tuning(concurrency=1, idle_timeout=idle_timeout, pool=pool)
        fetch = partial(read_mirrored, Path(dest), name, session, head, tail, page, page_size)
    else:
        if isinstance(host, str):
            raise ArgumentError(
                f"nothing to read {session!r} from: host {host!r} is a name, and no dest was given",
                host=name,
                hint="pass dest (--dest), the mirror to read the session from, or the Host "
                "itself to read it over SSH (--remote)",
            )
        (host,), limit = reaching_hosts(
            "show", (host,), concurrency=1, idle_timeout=idle_timeout, pool=pool
        )
        fetch = partial(read_remote, host, session, head, tail, page, page_size, limit, pool, emit)
    with registered_read(registry, transfer_id) as token:  # a duplicate id: before any event
        emit(Progress(name, "fetching", 0, 0, 0, 0))
        try:
            result = await fetch(token)
        except RemoteSyncError as exc:
            if isinstance(exc, TransferCancelledError):
                exc.hint = READ_CANCELLED_HINT  # the event below says it too
            # Reported as a listing reports a host that fails or is cancelled: its error, then
            # its end, so that a caller that follows the events is not left "fetching".
            report_end(emit, name, host.explain(exc) if isinstance(host, Host) else exc, 0)
            raise
    shown, read = len(result.messages), result.bytes_read
    emit(Progress(name, "done", shown, shown, read, read))
    return result


@with_arguments_of(read_session)
async def show_session(*args: Any, **kwargs: Any) -> list[Message]:
    """The messages of :func:`read_session` (same arguments), without what reading them
    cost."""
    result = await read_session(*args, **kwargs)
    return result.messages


@keywords_of(SessionFilters)
async def session_stats(
    *,
    dest: str | Path,
    by: StatsKey = "host",
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
    **filters: Unpack[SessionFilters],
) -> list[StatsRow]:
    """Totals per ``by`` (``host``, ``agent``, ``format``, ``model`` or ``day`` of the last
    activity) over the sessions of the mirror at ``dest`` that match the filters (the keys of
    :class:`SessionFilters`, as for :func:`stream_sessions`): what ``sessions stats`` prints, as
    :class:`~remote_sync.index.query.StatsRow` groups sorted by key, the group without one
    last. By model, a session that used several models counts in full for each. Read in a
    worker thread from the index, never taking the mirror's lock."""

    def stats() -> list[StatsRow]:
        return read_state(Path(dest), lambda db: query_stats(db, by, **filters), warn=True)

    with registered_read(registry, transfer_id) as token:
        return await in_thread(token, stats)


# -- kept versions ------------------------------------------------------------------------------


@registered_at_call
async def list_versions(
    *,
    dest: str | Path,
    host: str | None = None,
    files: Sequence[str] = (),
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
) -> list[VersionRow]:
    """The earlier copies kept of the mirror's rewritten files: what ``versions list`` prints,
    as :class:`~remote_sync.mirror.versions.VersionRow` s sorted by host, path and version.
    ``host``: only that host's; ``files``: only the files one of them names (a path as
    listed, or a session id or a prefix of one). Read in a worker thread, never taking the
    mirror's lock; a ``dest`` that is not a mirror is a
    :class:`~remote_sync.errors.ConfigError`. To copy one out,
    :func:`remote_sync.mirror.versions.restore_version` (``versions restore``)."""
    work = partial(list_kept_versions, dest, host=host, files=_file_names(files))
    with registered_read(registry, transfer_id) as token:
        return await in_thread(token, work)


@registered_at_call
async def prune_versions(
    *,
    dest: str | Path,
    host: str | None = None,
    files: Sequence[str] = (),
    keep_last: int | None = None,
    keep_within: str | timedelta | None = None,
    dry_run: bool = False,
    errors: list[RemoteSyncError] | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
) -> PruneResult:
    """Remove the kept versions no keep rule keeps: what ``versions prune`` does (see
    :func:`remote_sync.mirror.versions.prune_versions`). ``keep_last``: each file's N newest;
    ``keep_within``: those kept within that time of now (``7d``, ``12h``, or a timedelta); at
    least one is required, a :class:`~remote_sync.errors.ConfigError` otherwise, and nothing
    is removed (a rule of the wrong type, ``keep_last="3"``, is an :class:`ArgumentError`).
    ``host`` and ``files`` choose the files as for :func:`list_versions`. Takes the mirror's
    lock (a sync running is a :class:`~remote_sync.errors.LockedError`); ``dry_run`` only
    reads. A copy that cannot be removed (or looked at, or its directory opened) is left and
    the prune goes on with the others; at the end the first failure is raised, its hint
    saying how many others there were and how many versions went; pass a list as ``errors``
    to have every failure appended there instead and get the result of what was removed, as
    the CLI reports it (a state that cannot be written stops the prune there, one failure
    more). Runs in a worker thread; a cancel through the registry stops it before its next
    file (what was removed stays removed) with a :class:`TransferCancelledError`, and a
    cancel of the caller's scope waits for it to end (a file system call cannot be stopped
    midway)."""
    names = _file_names(files)
    with registry_or_default(registry).register(transfer_id) as token:
        work = partial(
            prune_kept_versions,
            dest,
            host=host,
            files=names,
            keep_last=keep_last,
            keep_within=keep_within,
            dry_run=dry_run,
            cancelled=lambda: token.cancelled,
            errors=errors,
        )
        await import_off_the_loop()
        if token.cancelled:
            raise TransferCancelledError(
                token.reason or "cancelled",
                path=str(dest),
                hint="cancelled on request before it began; nothing was removed",
            )
        # Not abandoned on a cancel, as a read is: the thread holds the mirror's lock and
        # removes files, so the call ends when it does.
        return await anyio.to_thread.run_sync(work)


def _file_names(files: Sequence[str]) -> tuple[str, ...]:
    """The ``files`` of :func:`list_versions` and :func:`prune_versions` as a tuple; one name
    passed alone (a str, which would be taken for its characters) is an ArgumentError."""
    if isinstance(files, str | bytes):
        raise ArgumentError(
            "files is a list of paths or session ids, not one", hint=f"pass files=[{files!r}]"
        )
    return tuple(files)


# -- the mirror's integrity ---------------------------------------------------------------------


@registered_at_call
async def check_mirror(
    *,
    dest: str | Path,
    host: str | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
) -> CheckReport:
    """Whether the mirror at ``dest`` holds what its state says: what ``check`` does (see
    :func:`remote_sync.mirror.check.check_mirror`), as a
    :class:`~remote_sync.mirror.check.CheckReport`: its ``summary`` (``intact`` when no damage
    was found) and its ``problems``, each a :class:`~remote_sync.mirror.check.Problem` of type
    ``damage`` or ``note``. ``host``: only that host's files. Read in a worker thread, never
    taking the mirror's lock nor asking a host; a ``dest`` that is not a mirror, or a
    ``host`` it has none of, is a :class:`~remote_sync.errors.ConfigError`. A cancel through
    the registry stops it before its next file (:class:`TransferCancelledError`)."""
    problems: list[Problem] = []
    with registered_read(registry, transfer_id) as token:
        work = partial(
            check_the_mirror,
            dest,
            host=host,
            on_problem=problems.append,
            cancelled=lambda: token.cancelled,
        )
        summary = await in_thread(token, work)
    return CheckReport(summary, problems)


#: What the calls import on first use (start-up time), each in :func:`import_off_the_loop`.
_ENGINE = "remote_sync.mirror.fleet"
_AGENT = "remote_sync.agent"


def _ignore(_: object) -> None:
    return None
