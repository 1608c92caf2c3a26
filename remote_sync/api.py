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

``emit`` is called from inside the engine's tasks: an exception it raises is logged and the
event dropped (see :func:`~remote_sync.events.guarded`); it never aborts the work.

Every name a signature here uses is importable at run time, so ``typing.get_type_hints``
works on each function; none of them pulls in the engine or the readers of a show, which
stay imported lazily (start-up time).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sqlite3
import threading
import typing
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial, wraps
from itertools import islice
from pathlib import Path
from sys import float_info, maxsize
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypedDict, TypeVar, Unpack, cast

import anyio

from .agent_link import PERSIST, STOP_TIMEOUT
from .cancel import CancelRegistry, CancelToken, registry_or_default
from .errors import (
    ArgumentError,
    ConfigError,
    ListingIncompleteError,
    RemoteSyncError,
    TransferCancelledError,
)
from .events import Emit, ErrorEvent, Progress, Summary, WarningEvent, guarded
from .index.facts import Message, ShowResult
from .index.query import (
    DEFAULT_SORT,
    SessionRow,
    Since,
    StatsKey,
    StatsRow,
    check_batch_size,
    filter_rows,
    query_sessions,
    select_rows,
    unreadable_index,
)
from .index.query import session_stats as query_stats
from .index.store import INT64_MAX
from .inventory import Host
from .mirror.check import CheckReport, Problem
from .mirror.check import check_mirror as check_the_mirror
from .mirror.state import StateReader, read_state
from .mirror.versions import PruneResult, VersionRow
from .mirror.versions import list_versions as list_kept_versions
from .mirror.versions import prune_versions as prune_kept_versions
from .ssh.pool import PoolSettings
from .ssh.remote import CONCURRENCY, IDLE_TIMEOUT, checked_idle_timeout, in_range

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from anyio.streams.memory import MemoryObjectSendStream

    from .ssh.pool import SSHPool

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

#: The host a mirror's listing names in its events (progress, and the error of a cancel): none
#: in particular, as the index holds every host's rows.
MIRROR_HOST = ""

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., object])


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


def _resolved(function: Callable[..., object]) -> inspect.Signature:
    """``function``'s signature with its annotations evaluated (this module's are strings)."""
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    return signature.replace(
        parameters=[p.replace(annotation=hints[p.name]) for p in signature.parameters.values()],
        return_annotation=hints["return"],
    )


def _checked_at_call(function: _F, signature: inspect.Signature) -> _F:
    """``function`` behind a plain function that binds the arguments to ``signature`` first:
    a misspelt keyword is a TypeError at the call, as for any ``async def`` with named
    parameters, not once the coroutine is awaited or the generator iterated (and never a
    keyword taken without a word by a ``**kwargs``). ``signature`` is also what
    ``inspect.signature``, ``help`` and ``typing.get_type_hints`` see. The call registers the
    transfer (:meth:`~remote_sync.cancel.CancelRegistry.reserve`)."""

    @wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{function.__name__}() {exc}") from None
        # The transfer is registered now, not once the coroutine is awaited or the generator
        # iterated: a UI cancels through the registry right after the call (a "stop" before
        # the first batch), and that cancel must not find nothing. The body is given the id
        # (made up here when none was passed), and its own `registry.register` of that id
        # adopts this entry; a duplicate id fails here, at the call.
        registry = bound.arguments.get("registry")
        if registry is not None and not isinstance(registry, CancelRegistry):
            # Refused here, at the call: taken as it was, it failed on its first missing
            # attribute (an AttributeError naming `reserve`, not the argument).
            raise ArgumentError(
                f"registry must be a CancelRegistry or None, not {type(registry).__name__}",
                hint="pass remote_sync.cancel.CancelRegistry() (one per program is enough), "
                "or None for the default registry",
            )

        def create(transfer_id: str) -> Any:
            bound.arguments["transfer_id"] = transfer_id
            return function(*bound.args, **bound.kwargs)

        return registry_or_default(registry).reserve(bound.arguments.get("transfer_id"), create)

    checked.__signature__ = signature  # type: ignore[attr-defined]
    checked.__annotations__ = {
        **{name: p.annotation for name, p in signature.parameters.items()},
        "return": signature.return_annotation,
    }
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None and inspect.iscoroutinefunction(function):
        mark(checked)  # still a coroutine function for inspect (frameworks ask it)
    return cast(_F, checked)


def _keywords_of(options: type) -> Callable[[_F], _F]:
    """Spell the decorated function's ``**options: Unpack[...]`` out, for ``inspect``,
    ``help`` and ``typing.get_type_hints``, as one keyword-only parameter (default None) per
    key of the TypedDict ``options``; any other keyword is a TypeError at the call. mypy
    checks the keywords against the TypedDict itself."""

    def spell_out(function: _F) -> _F:
        signature = _resolved(function)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                parameters += [
                    inspect.Parameter(name, parameter.KEYWORD_ONLY, default=None, annotation=hint)
                    for name, hint in typing.get_type_hints(options).items()
                ]
            else:
                parameters.append(parameter)
        return _checked_at_call(function, signature.replace(parameters=parameters))

    return spell_out


def _with_arguments_of(
    model: Callable[_P, object],
) -> Callable[[Callable[..., Coroutine[Any, Any, _R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
    """Give the decorated coroutine function exactly ``model``'s parameters: for mypy (a
    misspelt keyword is an error at the call), and at run time (the same TypeError at the
    call as ``model`` raises, and what ``inspect.signature``, ``help`` and
    ``typing.get_type_hints`` see). The decorated function forwards its arguments to
    ``model``."""

    def retype(
        function: Callable[..., Coroutine[Any, Any, _R]],
    ) -> Callable[_P, Coroutine[Any, Any, _R]]:
        returns = typing.get_type_hints(function)["return"]
        signature = _resolved(model).replace(return_annotation=returns)
        return _checked_at_call(function, signature)

    return retype


def _registered_at_call(function: _F) -> _F:
    """``function`` (an entry point that is neither spelt out nor derived) registering its
    transfer at the call, as the others do (:func:`_checked_at_call`)."""
    return _checked_at_call(function, _resolved(function))


@_registered_at_call
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
    hosts, idle_timeout = _reaching_hosts(
        "sync", hosts, concurrency=concurrency, idle_timeout=idle_timeout, pool=pool
    )
    # The token registered at the call (adopted here), before the engine is imported (in a
    # worker thread, while other tasks run): a cancel meanwhile is kept by the token, and the
    # engine's rounds are born cancelled. The engine's own registration (the token's child)
    # is private.
    with registry_or_default(registry).register(transfer_id) as token:
        await _import_off_the_loop(_ENGINE)
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


@_registered_at_call
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
    mirror is a :class:`ConfigError`, another agent serving ``dest`` a
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
    _require_asyncio()
    with registry_or_default(registry).register(transfer_id) as token:
        await _import_off_the_loop(_AGENT)
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


@_keywords_of(ListingOptions)
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
    mirror = _listing_source(dest, hosts, remote)
    reached: tuple[Host, ...] = ()
    if mirror is None:  # the hosts' checks include the tuning's, as sync's do
        reached, idle_timeout = _reaching_hosts(
            "list", hosts, concurrency=concurrency, idle_timeout=idle_timeout, pool=pool
        )
    else:
        _checked_tuning(concurrency=concurrency, idle_timeout=idle_timeout, pool=pool)
    emit = guarded(emit) if emit is not None else _ignore
    failures: list[RemoteSyncError] = errors if errors is not None else []
    with _registered_read(registry, transfer_id) as token:
        if mirror is None:
            batches = _remote_sessions(
                reached, batch_size, emit, token, failures, options, idle_timeout, concurrency, pool
            )
        else:
            batches = _local_batches(mirror, batch_size, token, emit, options)
        # Closed with this generator (so the hosts stop as soon as it is closed), not left to
        # the garbage collector.
        async with aclosing(batches):
            async for batch in batches:
                yield batch
        if errors is None and failures:
            raise failures[0]


@_with_arguments_of(stream_sessions)
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


@_registered_at_call
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
        _checked_tuning(concurrency=1, idle_timeout=idle_timeout, pool=pool)
        fetch = partial(_read_mirrored, Path(dest), name, session, head, tail, page, page_size)
    else:
        if isinstance(host, str):
            raise ArgumentError(
                f"nothing to read {session!r} from: host {host!r} is a name, and no dest was given",
                host=name,
                hint="pass dest (--dest), the mirror to read the session from, or the Host "
                "itself to read it over SSH (--remote)",
            )
        (host,), limit = _reaching_hosts(
            "show", (host,), concurrency=1, idle_timeout=idle_timeout, pool=pool
        )
        fetch = partial(_read_remote, host, session, head, tail, page, page_size, limit, pool, emit)
    with _registered_read(registry, transfer_id) as token:  # a duplicate id: before any event
        emit(Progress(name, "fetching", 0, 0, 0, 0))
        try:
            result = await fetch(token)
        except RemoteSyncError as exc:
            if isinstance(exc, TransferCancelledError):
                exc.hint = READ_CANCELLED_HINT  # the event below says it too
            # Reported as a listing reports a host that fails or is cancelled: its error, then
            # its end, so that a caller that follows the events is not left "fetching".
            _report_end(emit, name, host.explain(exc) if isinstance(host, Host) else exc, 0)
            raise
    shown, read = len(result.messages), result.bytes_read
    emit(Progress(name, "done", shown, shown, read, read))
    return result


@_with_arguments_of(read_session)
async def show_session(*args: Any, **kwargs: Any) -> list[Message]:
    """The messages of :func:`read_session` (same arguments), without what reading them
    cost."""
    result = await read_session(*args, **kwargs)
    return result.messages


@_keywords_of(SessionFilters)
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

    with _registered_read(registry, transfer_id) as token:
        return await _in_thread(token, stats)


# -- kept versions ------------------------------------------------------------------------------


@_registered_at_call
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
    mirror's lock; a ``dest`` that is not a mirror is a :class:`ConfigError`. To copy one out,
    :func:`remote_sync.mirror.versions.restore_version` (``versions restore``)."""
    work = partial(list_kept_versions, dest, host=host, files=_file_names(files))
    with _registered_read(registry, transfer_id) as token:
        return await _in_thread(token, work)


@_registered_at_call
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
    least one is required, a :class:`ConfigError` otherwise, and nothing is removed (a rule
    of the wrong type, ``keep_last="3"``, is an :class:`ArgumentError`). ``host`` and
    ``files`` choose the files as for :func:`list_versions`. Takes the mirror's lock (a sync
    running is a :class:`LockedError`); ``dry_run`` only reads. A copy that cannot be
    removed (or looked at, or its directory opened) is left and the prune goes on with the
    others; at the end the first failure is raised, its hint saying how many others there
    were and how many versions went; pass a list as ``errors`` to have every failure
    appended there instead and get the result of what was removed, as the CLI reports it (a
    state that cannot be written stops the prune there, one failure more). Runs in a worker
    thread; a cancel through the registry stops it before its next file (what was removed
    stays removed) with a :class:`TransferCancelledError`, and a cancel of the caller's scope
    waits for it to end (a file system call cannot be stopped midway)."""
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
        await _import_off_the_loop()
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


@_registered_at_call
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
    ``host`` it has none of, is a :class:`ConfigError`. A cancel through the registry stops
    it before its next file (:class:`TransferCancelledError`)."""
    problems: list[Problem] = []
    with _registered_read(registry, transfer_id) as token:
        work = partial(
            check_the_mirror,
            dest,
            host=host,
            on_problem=problems.append,
            cancelled=lambda: token.cancelled,
        )
        summary = await _in_thread(token, work)
    return CheckReport(summary, problems)


async def _read_remote(
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
    await _import_off_the_loop(_REMOTE_SHOW)
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
    problem = await _in_thread(
        token, partial(pool.preflight, host.endpoint, host.name), host=host.name
    )
    if problem is not None:
        raise problem
    for said in pool.config_warnings(host.endpoint):
        emit(WarningEvent.from_config(host.name, said))


async def _read_mirrored(
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
    await _import_off_the_loop(_MIRROR_READER)
    from .index.show import show_session as show_mirrored

    read = partial(
        show_mirrored, dest, host, session, head=head, tail=tail, page=page, page_size=page_size
    )
    _row, result = await _in_thread(token, read, host=host)
    return result


async def _in_thread(token: CancelToken, work: Callable[[], _R], *, host: str | None = None) -> _R:
    """``work()`` in a worker thread, so that a large index or file does not hold up the
    event loop. A cancel (of ``token``: :class:`TransferCancelledError`; or of the caller's
    scope) stops the wait at once; the thread then finishes its read alone (a read of the
    mirror is bounded, and closes what it opened)."""
    await _import_off_the_loop()
    with token.scope(host=host):
        result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    return result


_DEFAULT_POOL = PoolSettings()


def _pool_for(pool: PoolSettings | None, window: int) -> PoolSettings:
    """The caller's pool settings (None: the defaults) for a remote listing or show: with the
    call's own ``window`` unless the caller chose one (a window other than the default)."""
    pool = pool if pool is not None else _DEFAULT_POOL
    if pool.window == _DEFAULT_POOL.window:
        pool = replace(pool, window=window)
    return pool


#: The hint of a read's cancel (a listing, a show, the stats, the versions), in the error
#: raised and in its event: the default one is a sync's ("what was committed is kept, a file
#: cut midway is fetched again"), which says nothing true of a read, and a UI shows it.
READ_CANCELLED_HINT = "cancelled on request; a read changes nothing, so it can simply be made again"


@contextmanager
def _registered_read(
    registry: CancelRegistry | None, transfer_id: str | None
) -> Iterator[CancelToken]:
    """A read's transfer registered (:meth:`CancelRegistry.register`) in ``registry``, None
    for the default one; a cancel that stops it raised with :data:`READ_CANCELLED_HINT`."""
    with registry_or_default(registry).register(transfer_id) as token:
        try:
            yield token
        except TransferCancelledError as exc:
            exc.hint = READ_CANCELLED_HINT
            raise


def _cancelled_on(token: CancelToken, host: str) -> TransferCancelledError:
    """What a listing's ``host`` reports when the cancel of ``token`` stopped it: that cancel
    under the host's name (the one raised names no host: it stops every host)."""
    return TransferCancelledError(token.reason or "cancelled", host=host, hint=READ_CANCELLED_HINT)


def _report_end(emit: Emit, host: str, error: RemoteSyncError, done: int) -> None:
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


async def _remote_sessions(
    hosts: Sequence[Host],
    batch_size: int,
    emit: Emit,
    token: CancelToken,
    failures: list[RemoteSyncError],
    options: ListingOptions,
    idle_timeout: float | None,
    concurrency: int,
    pool: PoolSettings | None,
) -> AsyncGenerator[list[SessionRow], None]:
    """Each host's sessions, filtered like the index's; failed hosts reported and skipped.

    Up to ``concurrency`` hosts are read at once, each in its own task. Their batches come
    here through an unbuffered stream, so a host whose rows the caller has not taken yet waits
    (and its SSH window fills, stopping its remote command) instead of piling rows up. The
    failures are appended to ``failures`` in the order of ``hosts``, once the listing ends.
    """
    filters = _filters_of(options)
    sort, limit = options.get("sort"), options.get("limit")
    if filters.get("now") is None:
        # One "now" for every batch: a relative `since` (7d) must not move while hosts are read.
        filters["now"] = datetime.now(UTC)
    # Validates every value (a ConfigError) before connecting.
    select_rows([], sort=sort or DEFAULT_SORT, limit=limit, **filters)
    await _import_off_the_loop(_REMOTE_READERS)
    from .index.remote import LIST_WINDOW

    token.raise_if_cancelled()
    ordered = sort is not None or limit is not None
    wanted = filters.get("host")
    # None of another host's rows could match `host`: those are not even connected to.
    asked = [host for host in hosts if wanted is None or host.name == wanted]
    kept: list[SessionRow] = []
    settings = _pool_for(pool, LIST_WINDOW)
    reader = _HostReader(batch_size, emit, token, filters, idle_timeout, settings)
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
        chosen = select_rows(kept, sort=sort or DEFAULT_SORT, limit=limit, now=filters.get("now"))
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
    filters: SessionFilters
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
                now=self.filters["now"],
                idle_timeout=self.idle_timeout,
            )
            async with aclosing(batches):
                async for batch in batches:
                    done += len(batch)
                    self.emit(Progress(host.name, "fetching", done, 0, 0, 0))
                    if rows := filter_rows(batch, **self.filters):
                        await send.send(rows)
        except BaseException as exc:
            if self.token.cancelled:
                # Stopped by the listing's cancel (here as a TransferCancelledError, or as
                # the cancellation of the token's scope around it): reported as a sync
                # reports a host it cancelled, so that no host is left "fetching".
                _report_end(self.emit, host.name, _cancelled_on(self.token, host.name), done)
                raise
            if not isinstance(exc, RemoteSyncError) or isinstance(exc, TransferCancelledError):
                raise  # a bug, or the caller's own cancel: it knows
            exc = host.explain(exc)
            # A listing find could not read whole: an error per directory, as a sync says.
            errors = [exc, *exc.also] if isinstance(exc, ListingIncompleteError) else [exc]
            self.failed[index] = errors
            for error in errors[:-1]:
                self.emit(ErrorEvent.from_exception(error))
            _report_end(self.emit, host.name, errors[-1], done)
            return
        self.emit(Progress(host.name, "done", done, done, 0, 0))


async def _local_batches(
    dest: str | Path,
    batch_size: int,
    token: CancelToken,
    emit: Emit,
    options: ListingOptions,
) -> AsyncGenerator[list[SessionRow], None]:
    """The index's rows in batches, reported as a remote listing reports a host, under the
    host :data:`MIRROR_HOST` (the index holds every host's rows): ``listing`` with the rows
    read so far before each batch, then ``done``; a listing stopped by a cancel through the
    registry (or failing) after its first batch reports its error, then ``done``. Each batch
    is read in a worker thread (:class:`_IndexReader`), so the event loop goes on meanwhile
    (a cancel taken while it reads ends the wait there, raising)."""
    reader = _IndexReader(Path(dest), batch_size, options)
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
            _report_end(emit, MIRROR_HOST, stopped, done)
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
    connection is the :class:`~remote_sync.mirror.state.StateReader`'s own, never a copy of
    it: a read again after a sync replaced it, and the close is the reader's, so no
    connection opened for a reread stays open until the garbage collector finds it."""

    #: SQLite instructions between two asks whether to abort (each takes the GIL: a few
    #: hundred in a query over 10,000 sessions, each answered in well under a millisecond).
    _STEPS = 10_000

    def __init__(self, dest: Path, batch_size: int, options: ListingOptions) -> None:
        self._dest = dest
        self._batch_size = min(batch_size, maxsize)
        self._options = options
        self._state: StateReader | None = None
        self._rows: Iterator[SessionRow] | None = None
        self._lock = threading.Lock()  # guards the two flags, and so who closes `_state`
        self._reading = False
        self._stopped = False

    async def next_batch(self, token: CancelToken) -> list[SessionRow]:
        """The next batch (empty at the end), read in a worker thread that a cancel (of
        ``token``: :class:`TransferCancelledError` naming no host; or of the caller's scope)
        stops waiting for at once."""
        return await _in_thread(token, self._read)

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
                options = self._options

                def first(db: sqlite3.Connection) -> tuple[Iterator[SessionRow], list[SessionRow]]:
                    db.set_progress_handler(self._stopping, self._STEPS)
                    rows = query_sessions(
                        db,
                        **_filters_of(options),
                        sort=options.get("sort") or DEFAULT_SORT,
                        limit=options.get("limit"),
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


#: What the calls import on first use (start-up time), each in :func:`_import_off_the_loop`.
_ENGINE = "remote_sync.mirror.fleet"
_AGENT = "remote_sync.agent"
_REMOTE_READERS = "remote_sync.index.remote"
_REMOTE_SHOW = "remote_sync.index.remote_show"
_MIRROR_READER = "remote_sync.index.show"
#: anyio imports its asyncio backend on its first call that needs one (a cancel scope, a
#: worker thread, an event): 20 ms, on the event loop, unless imported here first.
_ANYIO_BACKEND = "anyio._backends._asyncio"
#: The modules imported by an earlier call: no thread needed for them any more.
_imported: set[str] = set()


async def _import_off_the_loop(*modules: str) -> None:
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


def _listing_source(
    dest: str | Path | None, hosts: Iterable[Host], remote: bool
) -> str | Path | None:
    """The mirror a listing reads (``dest``), or None for one from the hosts, once its
    arguments are checked to say what was meant: an :class:`ArgumentError` for ``hosts``
    without ``remote=True`` (they would be ignored without a word: the CLI refuses
    ``--inventory`` without ``--remote``), for neither ``dest`` nor ``remote=True`` (nothing
    to list), and for ``dest`` with ``remote=True`` (that mirror would be ignored: the CLI
    refuses ``--dest`` with ``--remote``). What a remote listing's hosts must be is checked
    by :func:`_reaching_hosts`, as for every call that reaches hosts."""
    if remote:
        if dest is not None:
            raise ArgumentError(
                "dest (--dest) does not apply with remote=True (--remote): the hosts are read, "
                "not a mirror",
                hint="pass dest to read the mirror's index, or remote=True and hosts to ask the "
                "hosts over SSH",
            )
        return None
    if hosts:
        raise ArgumentError(
            "hosts (--inventory) apply only with remote=True (--remote): without it the "
            "mirror at dest is read",
            hint="pass remote=True to ask the hosts over SSH, or leave hosts out to read the "
            "mirror's index",
        )
    if dest is None:
        raise ArgumentError(
            "nothing to list: no dest (--dest) and no remote=True (--remote)",
            hint="pass dest, a mirror that sync has filled, or remote=True and hosts to ask "
            "the hosts over SSH",
        )
    return dest


#: What a call that reaches hosts says when given none: what it would have done, and what
#: its ``hosts`` are (a show is given its one Host, never none: it has no entry).
_NO_HOSTS = {
    "sync": (
        "no hosts to sync",
        "the Hosts to mirror (what the CLI's HOST arguments, --inventory FILE and --tag "
        "select); a program whose selection may be empty checks before calling",
    ),
    "list": (
        "no hosts to ask",
        "the Hosts to read over SSH (what the CLI's --inventory FILE or --host H selects)",
    ),
}
#: Where a program gets its Hosts, said when it passed something else.
_MAKE_HOSTS = (
    "make Hosts with remote_sync.inventory.load_inventory(path).hosts (or its .select) or "
    "remote_sync.inventory.adhoc_host(...)"
)


def _reaching_hosts(
    call: Literal["sync", "list", "show"],
    hosts: Iterable[Host],
    *,
    concurrency: int,
    idle_timeout: float | None,
    pool: PoolSettings | None,
) -> tuple[tuple[Host, ...], float | None]:
    """The checks of every call that reaches hosts over SSH (``call``: a sync, a remote
    listing, a show from a host), made here once so that each refuses what the others do, in
    the same words, before anything is touched or any host contacted. Each is an
    :class:`ArgumentError`:

    - ``hosts`` not a collection of :class:`Host` (a str is not: it was iterated as one host
      a letter; nor a lone Host), or one of them not a Host (failed later on its missing
      attributes);
    - no ``hosts``: a sync of none made the destination and reported success, a listing of
      none listed nothing, as if every host had no session (the CLI refuses a run that
      selects no host too, exit 2);
    - two hosts of one name, compared ignoring case as the inventory compares them: a name
      is the host's directory in the mirror and its rows in the state, so two sources under
      it would mix their histories (each taking the other's files for rewrites), and a
      listing would give a host's rows twice;
    - ``concurrency`` not a whole number of at least 1 (the engine took 0 as 1);
    - ``idle_timeout`` other than 0, None or a finite number of seconds
      (:func:`~remote_sync.ssh.remote.checked_idle_timeout`, the CLI's rule too);
    - ``pool`` neither None nor a :class:`PoolSettings` (which checks its own fields as it
      is made): a dict failed each host later, on its first missing attribute;

    and a :class:`ConfigError` unless asyncio runs (:func:`_require_asyncio`). Returns the
    hosts as a tuple (an iterator is read once, here, not used up by the checks and then
    found empty) and the idle timeout."""
    if isinstance(hosts, (str, bytes, Host)) or not isinstance(hosts, Iterable):
        raise ArgumentError(
            f"hosts must be a sequence of Host, not {type(hosts).__name__}",
            hint=f"pass a list of Hosts, even of one; {_MAKE_HOSTS}",
        )
    hosts = tuple(hosts)
    if not hosts:
        nothing, meant = _NO_HOSTS[call]
        raise ArgumentError(f"{nothing}: hosts is empty", hint=f"pass hosts, {meant}")
    first: dict[str, int] = {}
    for index, host in enumerate(hosts):
        if not isinstance(host, Host):
            where = "host" if call == "show" else f"hosts[{index}]"
            raise ArgumentError(
                f"{where} must be a Host, not {type(host).__name__}", hint=_MAKE_HOSTS
            )
        other = first.setdefault(host.name.casefold(), index)
        if other != index:
            raise ArgumentError(
                f"two hosts named {host.name!r}: hosts[{other}] and hosts[{index}] (names "
                "are compared ignoring case; each is a directory of the mirror)",
                host=host.name,
                hint="give each Host a name of its own, or pass it once",
            )
    idle_timeout = _checked_tuning(concurrency=concurrency, idle_timeout=idle_timeout, pool=pool)
    _require_asyncio()
    return hosts, idle_timeout


def _checked_tuning(
    *, concurrency: int, idle_timeout: float | None, pool: PoolSettings | None
) -> float | None:
    """The checks of the tuning a call that may reach hosts takes (its ``concurrency``,
    ``idle_timeout`` and ``pool``), listed under :func:`_reaching_hosts`. A listing or show of
    a mirror makes them too, though it uses none of them: a program passes its one set of
    settings to both kinds of call, and a bad value (a NaN timeout) must not be taken from
    it until the day it reads a host. Returns the idle timeout."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ArgumentError(
            f"concurrency must be a whole number of at least 1, not {concurrency!r}",
            hint="pass how many hosts may be read at once",
        )
    idle_timeout = checked_idle_timeout(idle_timeout)
    if pool is not None and not isinstance(pool, PoolSettings):
        raise ArgumentError(
            f"pool must be a PoolSettings or None, not {type(pool).__name__}",
            hint="pass remote_sync.ssh.pool.PoolSettings(...) with the settings to change, or "
            "None for the defaults",
        )
    return idle_timeout


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
