"""``remote-sync sessions list|show|stats``: the sessions of a mirror's index, or of the hosts.

What it owns: the three commands, read from the mirror's state without its lock (read again
when a sync starts during the read), or with ``--remote`` (list and show) from the hosts
through the library API (:mod:`remote_sync.api`, loaded only then); the options that apply
only with ``--remote`` refused without it; a ``--host`` the index has no session of said
after the output. What a person reads of them is :mod:`remote_sync.cli.human`'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, RemoteSyncError
from ..ssh.remote import CONCURRENCY, check_concurrency
from . import EXIT_FAILED, EXIT_USAGE
from .common import (
    dest_or_default,
    fail,
    guard_pipe,
    idle_timeout,
    say,
    setup_logging,
    write_error_events,
    write_json_lines,
)

if TYPE_CHECKING:
    import sqlite3

    from ..index.query import SessionRow, StatsRow
    from ..index.show import ShowResult
    from ..inventory import Host


def _remote_api(*names: str) -> Any:
    """The first of ``remote_sync.api``'s functions ``names`` that exists (or a ConfigError)."""
    import importlib

    try:
        api = importlib.import_module("remote_sync.api")
    except ImportError:
        api = None
    for name in names:
        function = getattr(api, name, None)
        if function is not None:
            return function
    raise ConfigError(
        "--remote is not available: remote_sync.api has no "
        + " or ".join(names)
        + " in this installation",
        hint="read the mirror instead (drop --remote)",
    )


def _resolve(result: Any) -> Any:
    """``result``, awaited first when it is a coroutine (the library API is async)."""
    if not hasattr(result, "__await__"):
        return result
    import anyio

    async def wait() -> Any:
        return await result

    return anyio.run(wait)


def _remote_hosts(args: argparse.Namespace, names: list[str]) -> list[Host]:
    from ..inventory import Inventory, load_inventory

    inventory = load_inventory(args.inventory) if args.inventory else Inventory(None, [])
    hosts = inventory.select(names, [])
    if not hosts:
        raise ConfigError("no hosts to ask", hint="pass --inventory FILE, or --host H")
    return list(hosts)


def _list_remote(
    args: argparse.Namespace, filters: dict[str, Any], failures: list[RemoteSyncError]
) -> tuple[list[SessionRow], int]:
    """The hosts' sessions, filtered and sorted by the library, and how many hosts were asked;
    a host that failed is appended to ``failures`` (and said on stderr), and the other hosts'
    rows are still returned."""
    function = _remote_api("stream_sessions")
    hosts = _remote_hosts(args, [args.host] if args.host else [])

    async def collect() -> list[SessionRow]:
        rows: list[SessionRow] = []
        async for batch in function(
            remote=True,
            hosts=hosts,
            errors=failures,
            emit=_warnings_out(args),
            idle_timeout=idle_timeout(args),
            concurrency=args.concurrency or CONCURRENCY,
            **filters,
        ):
            rows.extend(batch)
        return rows

    import anyio

    result: list[SessionRow] = anyio.run(collect)
    for exc in failures:
        say(exc)
    return result, len(hosts)


def _show_remote(args: argparse.Namespace, how: dict[str, Any]) -> tuple[Any, ShowResult]:
    """A session straight from its host: no index row (None), and the messages read."""
    function = _remote_api("read_session")
    (host,) = _remote_hosts(args, [args.host])
    result: ShowResult = _resolve(
        function(
            host, args.session, idle_timeout=idle_timeout(args), emit=_warnings_out(args), **how
        )
    )
    return None, result


def _warnings_out(args: argparse.Namespace) -> Callable[[Any], None]:
    """The ``emit`` of a remote listing or show: the hosts' warning events (what a host's
    ssh_config asks for that its connection leaves out) shown as ``sync`` shows them, as
    they come: with ``--json`` as event lines on stdout, else on stderr. Progress is not
    shown, and a host's error is said with the others once the command is done."""
    from ..events import WarningEvent, json_lines_renderer

    if args.json:
        write = json_lines_renderer()
    else:
        from ..render import PipeConsole, print_problem

        err = PipeConsole(stderr=True)

        def write(event: Any) -> None:
            print_problem(err, event)

    def emit(event: Any) -> None:
        if isinstance(event, WarningEvent):
            write(event)

    return emit


def _check_remote_flags(args: argparse.Namespace) -> None:
    if args.remote and args.dest is not None:
        # It would be ignored: the hosts are read, not that mirror ($REMOTE_SYNC_DEST, a
        # default, is not refused).
        raise ConfigError(
            "--dest does not apply with --remote: the hosts are read, not a mirror",
            hint="drop --dest to ask the hosts, or --remote to read the mirror",
        )
    if args.inventory and not args.remote:
        raise ConfigError("--inventory applies only with --remote")
    if args.timeout is not None and not args.remote:
        raise ConfigError("--timeout applies only with --remote")
    concurrency: int | None = getattr(args, "concurrency", None)  # list has it, show not
    if concurrency is not None:
        if not args.remote:
            raise ConfigError("--concurrency applies only with --remote")
        check_concurrency(concurrency)


def run_sessions_list(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        _check_remote_flags(args)
        filters = {**_filters(args), "sort": args.sort, "limit": args.limit}
        listed: Generator[SessionRow] | None = None
        failures: list[RemoteSyncError] = []
        unknown: RemoteSyncError | None = None
        hosts = 0
        if args.remote:
            rows: Iterable[SessionRow]
            rows, hosts = _list_remote(args, filters, failures)
        else:
            from ..index.query import query_sessions
            from ..mirror.state_reader import stream_state

            def query(db: sqlite3.Connection) -> Iterator[SessionRow]:
                # Whether --host names an indexed host, asked on the listing's connection
                # (one open of the state, not two) and again with it on a reread.
                nonlocal unknown
                unknown = _unknown_host(db, args.host)
                return query_sessions(db, **filters)

            # Read again (on a new connection) when a sync starts during the read: see
            # stream_state. The rows stay a stream, never all in memory.
            listed = stream_state(dest_or_default(args), query, warn=True)
            rows = listed
        try:
            if args.json:

                def rows_then_errors() -> int:
                    write_json_lines(rows)
                    # The hosts that failed, as `sync --json` reports them (after the rows).
                    return write_error_events(failures)

                code = guard_pipe(rows_then_errors)
            else:

                def table() -> int:
                    from .human import print_sessions

                    found = list(rows)  # read first: it says whether the host is unknown
                    quiet = bool(failures) or unknown is not None
                    return print_sessions(found, quiet=quiet)

                code = guard_pipe(table)
            if unknown is not None:
                say(unknown)
        finally:
            if listed is not None:
                listed.close()
        configuration = all(isinstance(exc, ConfigError) for exc in failures)
        if failures and configuration and len({exc.host for exc in failures}) == hosts:
            return EXIT_USAGE  # every host failed on its configuration, as in `sync`
        # Some hosts could not be read: the rows shown are not the whole fleet's.
        return EXIT_FAILED if failures else code
    except RemoteSyncError as exc:
        return fail(exc, args)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter options that ``sessions list`` and ``stats`` share, as the keywords the
    index's queries and the library take them by: one place to add a filter to both."""
    return {
        "host": args.host,
        "format": args.format,
        "agent": args.agent,
        "since": args.since,
        "klass": args.klass,
        "state": args.state,
    }


def _unknown_host(db: sqlite3.Connection, host: str | None) -> RemoteSyncError | None:
    """For a ``--host`` of ``sessions list`` or ``stats`` that the index has no session of,
    what to say after the (empty) output: a filter that matches nothing is no error (exit 0),
    but a mistyped name, or an inventory address where its hosts' names are meant, would
    otherwise look like a host without sessions. ``show`` refuses such a name."""
    if host is None:
        return None
    from ..index.query import unknown_host

    return unknown_host(db, host)


def run_sessions_show(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        _check_remote_flags(args)
        if args.page_size < 1:
            raise ConfigError("--page-size must be at least 1")
        head, tail, page = args.head, args.tail, args.page
        if head is None and tail is None and page is None:
            page = 1
        how = {"head": head, "tail": tail, "page": page, "page_size": args.page_size}
        if args.remote:
            row, result = _show_remote(args, how)
        else:
            from ..index.show import show_session

            row, result = show_session(dest_or_default(args), args.host, args.session, **how)
        if args.json:
            return guard_pipe(lambda: write_json_lines(result.messages))
        from .human import print_messages

        return guard_pipe(lambda: print_messages(row, result, page, args.page_size))
    except RemoteSyncError as exc:
        return fail(exc, args)


def run_sessions_stats(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        from ..index.query import session_stats
        from ..mirror.state_reader import read_state

        def read(db: sqlite3.Connection) -> tuple[list[StatsRow], RemoteSyncError | None]:
            groups = session_stats(db, args.by, **_filters(args))
            return groups, _unknown_host(db, args.host)

        groups, unknown = read_state(dest_or_default(args), read, warn=True)
        if args.json:
            code = guard_pipe(lambda: write_json_lines(groups))
        else:
            from .human import print_stats

            code = guard_pipe(lambda: print_stats(args.by, groups))
        if unknown is not None:
            say(unknown)
        return code
    except RemoteSyncError as exc:
        return fail(exc, args)
