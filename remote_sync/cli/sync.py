"""``remote-sync sync``: the hosts chosen, the sync run in this process or by the agent.

What it owns: the hosts a sync names (inventory, tags, ad-hoc hosts and their options), the
run here (:func:`run_sync`: the engine's rounds, a first Ctrl-C or SIGTERM cancelling them
and a second leaving at once), where its events go (JSON lines, or the live display and
recap of :mod:`remote_sync.render`) and a report lost on the way (exit 1); and the client of
the agent serving ``--dest`` (:func:`_sync_through_agent`), which shows the agent's events
and derives the exit code as a run here would, with no asyncssh and no engine imported (nor,
under ``--json``, msgspec or logging: it passes the agent's lines on as they came).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from ..errors import ConfigError, RemoteSyncError
from ..ssh.remote import check_concurrency
from . import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from .common import (
    exit_code,
    fail,
    given_dest,
    idle_timeout,
    interrupted,
    report,
    report_lost,
    say,
    setup_logging,
)
from .running import freeze_imports, heeded_signals, one_malloc_arena, signals_received

if TYPE_CHECKING:
    from ..agent_link import AgentEvent, AgentLink
    from ..events import Emit, Event
    from ..inventory import Host, Inventory
    from ..mirror.engine import SyncOptions

    #: The sink of the agent's events, as the client relays them.
    _AgentEmit = Callable[[AgentEvent], None]

E = TypeVar("E")


def _select_hosts(args: argparse.Namespace) -> list[Host]:
    from ..inventory import DEFAULT_FORMAT, AdhocOptions, Inventory, lists_no_hosts, load_inventory

    inventory = load_inventory(args.inventory) if args.inventory else Inventory(None, [])
    adhoc = AdhocOptions(
        format=args.format or DEFAULT_FORMAT,
        root=args.root,
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        identity_file=args.identity,
        host_key_policy="accept-new" if args.accept_new_host_keys else "strict",
    )
    hosts = inventory.select(args.hosts, args.tag, adhoc=adhoc)
    if not hosts:  # no names, no tags (a tag no host has is an error of its own)
        if args.inventory:
            raise lists_no_hosts(str(args.inventory))
        raise ConfigError(
            "no hosts to sync",
            hint="name a host ([user@]host[:port] or an ssh_config alias), or give --inventory",
        )
    _refuse_unused_adhoc_options(args, inventory, hosts)
    return list(hosts)


def _refuse_unused_adhoc_options(
    args: argparse.Namespace, inventory: Inventory, hosts: Sequence[Host]
) -> None:
    """Options for ad-hoc hosts, given when every host comes from the inventory, would be
    ignored without a word (``--format codex`` against an inventory's openclaw hosts)."""
    given = _given_adhoc_options(args)
    if given and all(inventory.get(host.name) is host for host in hosts):
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(given)} {verb} only to hosts that are not in the inventory, and every "
            "host to sync is in it",
            path=str(args.inventory),
            hint="set these per host (or in [defaults]) in the inventory, or leave them out",
        )


def _given_adhoc_options(args: argparse.Namespace) -> list[str]:
    """The options for ad-hoc hosts given on the command line, as typed (``--root``)."""
    return [
        option
        for option, value in (
            ("--format", args.format),
            ("--root", args.root),
            ("--ssh-config", args.ssh_config),
            ("--known-hosts", args.known_hosts),
            ("--identity", args.identity),
            ("--accept-new-host-keys", args.accept_new_host_keys),
        )
        if value
    ]


def run_sync(args: argparse.Namespace) -> int:
    through_agent = _sync_through_agent(args)
    if through_agent is not None:
        return through_agent
    # Only now: a sync followed through the agent logs nothing (logging is 3 ms of imports).
    setup_logging(args.verbose)
    one_malloc_arena()
    from ..ssh.fastimport import import_asyncssh

    import_asyncssh()
    import anyio

    from ..events import json_lines_renderer
    from ..mirror.engine import SyncOptions
    from ..ssh.pool import PoolSettings

    freeze_imports()

    error_out = json_lines_renderer() if args.json else None
    try:
        dest = given_dest(args.dest)
        check_concurrency(args.concurrency)
        hosts = _select_hosts(args)
    except ConfigError as exc:
        return fail(exc, args)
    options = SyncOptions(
        dest=dest,
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        pool=PoolSettings(compression=args.compress),
        index=not args.no_index,
        idle_timeout=idle_timeout(args),
    )
    try:
        with _sync_output(error_out, dest) as (emit, watch, stop_display):
            code: int = anyio.run(_sync_main, hosts, options, emit, stop_display)
        return _with_lost_output(code, watch)
    except RemoteSyncError as exc:
        return fail(exc, args)
    except KeyboardInterrupt:
        # Before the rounds' signal handler was installed (or after it was removed): the
        # rounds report their own cancels, with a summary.
        report(interrupted(), error_out)
        return EXIT_CANCELLED


def _say_cancelling(signum: int) -> None:
    """The line a first Ctrl-C or SIGTERM of a sync prints on stderr."""
    import signal

    # The signal that came, sent again: systemd stops a run with SIGTERM, and its journal
    # said "Ctrl-C again" to someone who pressed none.
    again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    with contextlib.suppress(OSError):  # a stderr on a full disk
        # A newline ends the line a terminal echoed ^C on; in a journal or a log it would
        # be an empty line.
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}cancelling ({again} again to abort at once)...", file=sys.stderr)


async def _sync_main(
    hosts: list[Host],
    options: SyncOptions,
    emit: Emit,
    stop_display: Callable[[], None] | None = None,
) -> int:
    import anyio

    from ..cancel import CancelRegistry
    from ..mirror.fleet import sync_fleet

    registry = CancelRegistry()
    heeded = heeded_signals()
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            if not heeded:
                return
            with signals_received(heeded) as signals:
                first = True
                async for signum in signals:
                    if not first:
                        _abort_at_once(_error_to(emit), stop_display)
                    first = False
                    _say_cancelling(signum)
                    registry.cancel_all("cancelled by signal")

        tg.start_soon(on_signals)
        # Raised after the task group closes, so callers see it unwrapped.
        error: RemoteSyncError | None = None
        try:
            summary = await sync_fleet(hosts, options, emit, registry=registry, transfer_id="sync")
        except RemoteSyncError as exc:
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return summary.exit_code


@contextlib.contextmanager
def _sync_output(
    json_out: Emit | None, dest: str | Path
) -> Iterator[tuple[Emit, _OutputWatch[Event], Callable[[], None] | None]]:
    """Where the events of a sync run here go: ``json_out`` (``--json``), else the live
    display of the mirror ``dest``, for as long as the block runs (a sync run by the agent
    shows its events through the same display, and under ``--json`` has sinks of the same
    kinds for the agent's lines: :func:`_follow_agent`). Yields the sink
    to give the events, the watch of its writes (:func:`_with_lost_output`), and what stops
    the display (None for JSON lines)."""
    from ..events import ThrottledProgress, guarded

    # guarded: a failing sink (a reader gone away, a renderer's bug) must not abort the
    # host tasks that call it; the mirror matters more than its report.
    if json_out is not None:
        watch = _OutputWatch(json_out)
        yield guarded(ThrottledProgress(watch)), watch, None
        return
    from ..render import RichRenderer

    with RichRenderer(dest=str(dest)) as renderer:
        watch = _OutputWatch(renderer)
        yield guarded(ThrottledProgress(watch, 0.1)), watch, renderer.progress.stop


class _OutputWatch(Generic[E]):
    """A sync's event sink that remembers the first write of its report that failed (a full
    disk under the log it is redirected to, an I/O error). :func:`~remote_sync.events.guarded`
    keeps such a failure from costing the run its work, so without this the run exited 0 with
    its summary lost, and a script read a success it could not check. A reader that closed
    the pipe (``| head``) is no such failure: the sinks take that in silence themselves."""

    def __init__(self, emit: Callable[[E], None]) -> None:
        self.emit = emit
        self.lost: OSError | None = None

    def __call__(self, event: E) -> None:
        try:
            self.emit(event)
        except OSError as exc:
            if self.lost is None and not isinstance(exc, BrokenPipeError):
                self.lost = exc
            raise


def _error_to(emit: Emit) -> Callable[[RemoteSyncError], None]:
    """What gives ``emit`` the error event of an error."""
    from ..events import ErrorEvent

    return lambda exc: emit(ErrorEvent.from_exception(exc))


def _with_lost_output(code: int, watch: _OutputWatch[Any]) -> int:
    """The exit code of a sync whose report may have been lost: a success becomes a failure
    (exit 1), said on stderr; a failure, a cancel or the lock keep their own codes."""
    if watch.lost is None:
        return code
    say(report_lost(watch.lost, "the sync went on to its end, but its report is incomplete"))
    return EXIT_FAILED if code == EXIT_OK else code


def _abort_at_once(
    report: Callable[[RemoteSyncError], None], stop_display: Callable[[], None] | None
) -> NoReturn:
    """A second Ctrl-C: leave now, as a ``kill -9`` would, without waiting for the rounds to
    wind down (a commit in progress, a host that does not answer the cancel). The mirror is
    built to survive exactly that: the next run cuts back what no checkpoint covers.
    ``report`` gives the error event of its error to the run's sink."""
    from ..errors import TransferCancelledError

    report(
        TransferCancelledError(
            "aborted at once by a second signal",
            hint="run the sync again: it resumes from the last checkpoints",
        )
    )
    if stop_display is not None:
        stop_display()  # the terminal gets its cursor back
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_CANCELLED)


# -- sync through the agent ---------------------------------------------------------------------


def _sync_through_agent(args: argparse.Namespace) -> int | None:
    """The sync run by the agent serving ``--dest``, if one answers there and can serve it:
    its exit code, the events shown as a run here would show them. None: run it here (no
    agent, ``--no-agent``, an ad-hoc host or its options, or a request the agent refused,
    said on stderr). Only the standard library, and rich for the display: no asyncssh, no
    engine, and under ``--json`` no msgspec and no logging either (see :func:`_follow_agent`)."""
    if args.no_agent or not args.inventory or _given_adhoc_options(args):
        return None
    if not args.dest:
        return None  # the run here says what is wrong with it
    from .. import agent_link

    link = agent_link.connect(Path(args.dest))
    if link is None:
        return None
    request = agent_link.sync_request(
        inventory=os.path.abspath(args.inventory),
        hosts=list(args.hosts),
        tags=list(args.tag),
        dry_run=args.dry_run,
        index=not args.no_index,
        concurrency=args.concurrency,
        idle_timeout=idle_timeout(args),
        compress=True if args.compress else None,
    )
    with link:
        try:
            link.send(request)
        except OSError:
            return None  # gone between the connect and the request: as if none answered
        except UnicodeEncodeError:
            # A name that is not UTF-8 (an inventory path, a host or a tag given as bytes)
            # has no place in the JSON request: the run here takes it, and says it as it does.
            return None
        return _follow_agent(link, args)


def _follow_agent(link: AgentLink, args: argparse.Namespace) -> int | None:
    """The agent's events shown as a run here shows its own: under ``--json`` each line
    passed on as the agent wrote it (the same bytes a run here writes), through sinks like
    those of a run here but for the agent's lines
    (:class:`~remote_sync.agent_link.AgentEvent`): with no event Structs, the client imports
    no msgspec, and logging is set up only if a sink fails, to say so. The live display
    reads every field of an event: there each line is decoded as it is read (a line that
    fails stops the sync as one that is no event does) and shown through a run here's own
    sinks (:func:`_sync_output`)."""
    if args.json:
        from ..sinks import Throttled, guarded, line_writer

        write = line_writer()
        watch: _OutputWatch[AgentEvent] = _OutputWatch(lambda event: write(event.line))

        def logging_setup() -> None:
            setup_logging(args.verbose)

        emit = guarded(Throttled(watch, _fetching_host, 0.5), logging_setup=logging_setup)
        code = _agent_events(link, emit, None, None)
        return None if code is None else _with_lost_output(code, watch)
    from ..events import decode_event

    setup_logging(args.verbose)  # beside rich's imports, logging's hardly count
    with _sync_output(None, args.dest) as (show, shown, stop_display):

        def show_agent_event(event: AgentEvent) -> None:
            # decoded as it was read, but for this client's own errors (AgentEvent.of_error)
            show(event.decoded if event.decoded is not None else decode_event(event.line))

        code = _agent_events(link, show_agent_event, decode_event, stop_display)
    return None if code is None else _with_lost_output(code, shown)


def _fetching_host(event: AgentEvent) -> str | None:
    """The host of an agent's progress event of a host's fetching (the ones throttled)."""
    fields = event.fields
    if fields["type"] == "progress" and fields["phase"] == "fetching":
        host: str = fields["host"]
        return host
    return None


def _agent_events(
    link: AgentLink,
    emit: _AgentEmit,
    decode: Callable[[bytes], Event] | None,
    stop_display: Callable[[], None] | None,
) -> int | None:
    """Pass the agent's events to ``emit`` until it closes, each decoded by ``decode`` first
    when one is given (the live display's; none under ``--json``); the exit code a run here
    would have had (from the summary, else from the error that stopped the sync), or None
    when the agent refused the request. An error is held until the next event: the last one, with
    no summary after it, stopped the sync, and is reported as a run here reports such an
    error (a refusal is not shown at all: the sync runs here instead)."""
    from ..agent_link import AgentEvent
    from ..errors import AgentError

    held: AgentEvent | None = None
    exit_code_of_summary: int | None = None
    with _cancel_on_signals(link, emit, stop_display):
        try:
            for event in link.lines(decode):
                if held is not None:
                    emit(held)
                    held = None
                kind = event.fields["type"]
                if kind == "error":
                    held = event
                    continue
                emit(event)
                if kind == "summary":
                    exit_code_of_summary = event.fields["exit_code"]
        except AgentError as exc:
            held = AgentEvent.of_error(exc)
    if exit_code_of_summary is not None:
        if held is not None:
            emit(held)
        return exit_code_of_summary
    if held is None:
        held = AgentEvent.of_error(
            AgentError("the agent ended the connection before the sync's end", path=str(link.path))
        )
    fields = held.fields
    error = RemoteSyncError(
        fields["message"], host=fields["host"], path=fields["path"], hint=fields["hint"]
    )
    if fields["kind"] == "agent_refused":
        say(RemoteSyncError(f"the agent cannot serve this sync: {error}"))
        return None
    if decode is None:  # under --json, as a run here prints it; the display shows none
        emit(held)
    say(error)
    return exit_code(fields["kind"])


@contextlib.contextmanager
def _cancel_on_signals(
    link: AgentLink, emit: _AgentEmit, stop_display: Callable[[], None] | None
) -> Iterator[None]:
    """A first Ctrl-C or SIGTERM sends the agent a cancel for this sync (whose events then
    end as a cancelled run's do); a second leaves at once, as in a run here (the agent
    cancels the sync of a client gone)."""
    import signal
    import threading

    from ..agent_link import AgentEvent

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heeded = heeded_signals()
    signals = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            _abort_at_once(lambda exc: emit(AgentEvent.of_error(exc)), stop_display)
        _say_cancelling(signum)
        link.cancel()

    previous = {s: signal.signal(s, on_signal) for s in heeded}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, not ours to put back
                signal.signal(s, handler)
