"""The fleet's run: every host's round into one mirror.

What it owns: :func:`sync_fleet`, which opens the destination's state (a copy of it for a
dry run, which writes nothing), refuses a host name the mirror holds for another source,
runs each host's pre-flight and the state's recovery, then the hosts' rounds
(:class:`~.engine.HostSync`) concurrently under a bound, and makes the summary and its exit
code. One host failing never stops the others; its error is in its ``host_done`` event and
the summary. Also: what a process that syncs one destination again and again keeps between
its syncs (:class:`SyncMemory`), how many files a host's batch may hold open
(:func:`files_per_flush`, the open-file limit raised first), and the run's index worker,
started when a first round needs it and shared by the hosts (:class:`IndexWorkers`).

Opening the state, its recovery, the pre-flight's reading of local files and the copy a dry
run works on run in worker threads (:func:`~.commits.in_thread`), not on the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from msgspec import Struct

from ..cancel import CancelRegistry, CancelToken, registry_or_default
from ..errors import ConfigError, DestinationError, TransferCancelledError
from ..events import Emit, ErrorEvent, FileCounts, Summary, WarningEvent
from ..inventory import Host, normal_root
from ..ssh.pool import JumpsRead, SSHPool
from .commits import in_thread, opened
from .control import CONTROL_DIR, CleanClose, refuse_nested
from .engine import FLUSH_FILES, HostRound, HostSync, SyncOptions, piece_bytes
from .state import MirrorState
from .state_reader import copy_state

if TYPE_CHECKING:
    from ..index.worker import IndexWorker

log = logging.getLogger(__name__)


class SyncMemory(Struct):
    """What a process that syncs one destination again and again (the agent) keeps between
    its syncs: what its last sync left clean (:class:`~.control.CleanClose`), whose hosts the
    next sync's recovery does not stat file by file when no other run has held the lock
    since (:meth:`~.state.MirrorState.clean_since`). A sync forgets it as it starts and
    remembers again, once it has closed the state, the hosts whose rounds ended clean (none
    when it was cancelled) with those it did not sync that were clean before."""

    last: CleanClose | None = None


async def sync_fleet(
    hosts: Sequence[Host],
    options: SyncOptions,
    emit: Emit,
    *,
    token: CancelToken | None = None,
    registry: CancelRegistry | None = None,
    transfer_id: str | None = None,
    pool: SSHPool | None = None,
    memory: SyncMemory | None = None,
) -> Summary:
    """Sync every host into ``options.dest``; returns the summary (also emitted).

    ``pool``: connections kept open by the caller between rounds (the agent's), entered by
    it, used here and left open; ``options.pool`` is then unused. A dry run ignores it and
    opens a pool of its own, as always: its pool must not record new host keys, and its
    connections are not worth keeping. Without one, the round opens and closes its own.
    Either way the round takes the destination's lock for itself, as a run of its own.

    ``memory``: kept by the caller between its syncs of this destination (the agent's); a
    dry run neither reads nor changes it."""
    started = time.monotonic()
    last: CleanClose | None = None
    if memory is not None and not options.dry_run:
        # Forgotten until this sync ends clean: a failure, a cancel or a crash in between
        # leaves the next sync a full recovery.
        last, memory.last = memory.last, None
    else:
        memory = None
    # Read once for every host's round; a bad REMOTE_SYNC_PIECE_BYTES is a usage error before
    # any host is asked.
    pieces = piece_bytes()
    registry = registry_or_default(registry)
    results: dict[str, HostRound] = {}
    owned: contextlib.AbstractAsyncContextManager[SSHPool]
    if pool is None or options.dry_run:
        pool_settings = options.pool
        if options.dry_run:
            pool_settings = dataclasses.replace(pool_settings, record_new_host_keys=False)
        connections = SSHPool(pool_settings)
        owned = connections
    else:
        connections = pool
        owned = contextlib.nullcontext(pool)
    async with contextlib.AsyncExitStack() as stack:
        # Registered first: a cancel that comes while the hosts' files are read or the state
        # is opened (in worker threads, while other tasks run) is not lost.
        tok = stack.enter_context(registry.register(transfer_id, parent=token))
        # In a worker thread: ssh_configs are parsed (a Match exec runs its command), keys
        # loaded; a jump host shared by the hosts once.
        jumps_read: JumpsRead = {}
        problems = await in_thread(
            lambda: [connections.preflight(h.endpoint, h.name, jumps_read) for h in hosts]
        )
        if hosts and all(problems):
            # Every host would stop on its local files (a file named that is not there or
            # cannot be read, an ssh_config that does not parse, a key that does not load),
            # as `ssh -F bad` does: report it as their rounds would, but leave the
            # destination untouched.
            rounds: list[HostRound] = []
            for host, problem in zip(hosts, problems, strict=True):
                assert problem is not None
                rounds.append(HostRound(host.name, error=problem))
                emit(ErrorEvent.from_exception(problem))
                emit(rounds[-1].event())
            if memory is not None:
                memory.last = last  # the state not opened, no file touched: as it was
            return _summary(rounds, options, started, cancelled=False, emit=emit)
        for host, problem in zip(hosts, problems, strict=True):
            # What the host's ssh_config asks for that its connection leaves out: said once
            # a run, before the host's work (its error, if it has one, says enough).
            for said in () if problem else connections.config_warnings(host.endpoint):
                emit(WarningEvent.from_config(host.name, said))
        state = await _state_for(options, stack)
        writes = await stack.enter_async_context(opened(state))
        _check_sources(state, hosts)
        clean = state.clean_since(last)
        if not options.dry_run:  # a dry run changes nothing, repairs included
            # A stat of every mirrored file: a quarter of a second at 20,000 files. Not of
            # the hosts this process's last sync left clean, if no run has opened the state
            # since (the agent's, 27 ms a round of a 4,080 files' fleet).
            names = [h.name for h in hosts if h.name not in clean]
            for note in await writes.run(lambda recovered: recovered.recover(names)):
                log.warning("recovery: %s", note)
        limiter = anyio.CapacityLimiter(max(1, options.concurrency))
        flush_files = files_per_flush(max(1, options.concurrency))
        async with owned, IndexWorkers() as workers:

            async def one(host: Host) -> None:
                async with limiter:
                    if tok.cancelled:
                        # Reported like a round that was cancelled: its error, then its
                        # host_done (scripts count one per host).
                        error = TransferCancelledError(
                            "cancelled before it started", host=host.name
                        )
                        results[host.name] = HostRound(host.name, error=error)
                        emit(ErrorEvent.from_exception(error))
                    else:
                        round_ = HostSync(
                            host,
                            connections,
                            state,
                            writes,
                            options,
                            emit,
                            tok,
                            workers,
                            flush_files,
                            pieces=pieces,
                            keeps_tools=connections is pool,
                        )
                        results[host.name] = await round_.run()
                emit(results[host.name].event())

            async with anyio.create_task_group() as tg:
                for host in hosts:
                    tg.start_soon(one, host)
    rounds = [results[h.name] for h in hosts if h.name in results]
    if memory is not None:
        # Per host: one that failed (a laptop asleep) leaves its files to the next sync's
        # recovery, not the others'. A cancelled sync trusts none of its hosts. The state is
        # closed (its lock released) by now, as the state recorded it.
        synced = {h.name for h in hosts}
        left_clean = set() if tok.cancelled else {r.host for r in rounds if r.clean}
        memory.last = state.closed_clean((clean | synced) - (synced - left_clean))
    return _summary(rounds, options, started, cancelled=tok.cancelled, emit=emit)


def files_per_flush(concurrency: int) -> int:
    """How many files a host's batch may hold open before it is flushed.

    Each finished file keeps its descriptor until its batch is durable, and a host has two
    batches at most (one flushing, one filling), plus the files of one fetch batch waiting
    for their head digest (at most as many: ``per_batch``). The soft limit on open files is
    first raised to the hard one (as Go programs do at start): the common soft limit of 1024
    is far below ``FLUSH_FILES`` per host. What the limit still allows is shared out between
    the hosts.
    """
    limit = _raise_open_file_limit()
    return max(8, min(FLUSH_FILES, (limit - OWN_DESCRIPTORS) // (3 * concurrency)))


#: Descriptors kept apart from the batches: connections, the state database, the index
#: worker's sockets, the interpreter's own.
OWN_DESCRIPTORS = 256


def _raise_open_file_limit() -> int:
    """The soft RLIMIT_NOFILE, raised to the hard limit (at most 65536) where it is lower."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open file limit: %s", exc)
    return 65536 if soft == resource.RLIM_INFINITY else soft


async def _state_for(options: SyncOptions, stack: contextlib.AsyncExitStack) -> MirrorState:
    """The destination's state. A dry run writes nothing, like ``rsync -n``: it works on a
    copy of the state in a temporary directory (an empty one for a destination not synced
    yet), so that neither the lock, nor a schema upgrade, nor anything else touches the
    destination."""
    dest = options.dest
    refuse_nested(dest)
    if not options.dry_run:
        return MirrorState(dest)
    if dest.exists() and not dest.is_dir():
        raise DestinationError("the destination is not a directory", path=str(dest))
    copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="remote-sync-dry-")))
    state_db = dest / CONTROL_DIR / "state.db"
    if state_db.exists():
        (copy / CONTROL_DIR).mkdir()
        # In a worker thread: tens of milliseconds for the state of a large mirror.
        await in_thread(copy_state, state_db, copy / CONTROL_DIR / "state.db")
    return MirrorState(copy)


def _check_sources(state: MirrorState, hosts: Sequence[Host]) -> None:
    """Refuse a host name this mirror already holds for another format or root.

    Its files would be taken for rewrites and deletions of the other source's (nothing would
    be lost, but two histories would mix under one name) and the index would read them with
    the wrong format. A host recorded without any file (a first sync that found no root
    there, run again with the right ``--format``) has no history to mix: it takes the new
    source.
    """
    known = state.hosts()
    for host in hosts:
        source = host.source
        if host.name not in known:
            continue
        fmt, root = known[host.name]
        # A mirror written before roots were normalized may hold "~/.openclaw/".
        root = normal_root(root)
        if (fmt, root) != (source.format, source.root) and state.holds_files(host.name):
            raise ConfigError(
                f"this mirror holds {host.name!r} as format {fmt!r} with root {root!r}, "
                f"not format {source.format!r} with root {source.root!r}",
                host=host.name,
                path=str(state.dest),
                hint=_same_source_hint(host, fmt, root),
            )


def _same_source_hint(host: Host, fmt: str, root: str) -> str:
    """What syncs the source a mirrored host name holds, or keeps another apart from it.

    The usual way here is a host dropped from the inventory and named again on the command
    line, where the format's default root is taken: "give this source another host name"
    alone did not say that naming the old format and root syncs it again.
    """
    if host.adhoc:
        again = f"add --format {fmt} --root {shlex.quote(root)} to sync that source again"
        apart = "or sync this one into another destination"
    else:
        import json  # for this hint alone: a sync's start-up need not load it

        # A JSON string is a TOML basic string too, a root's quotes and backslashes escaped.
        entry = f"format = {json.dumps(fmt)} and root = {json.dumps(root, ensure_ascii=False)}"
        again = f"set {entry} in its inventory entry to sync that source again"
        apart = "or give this one another host name, or sync it into another destination"
    return f"{again}; {apart}"


class IndexWorkers:
    """The run's index worker, started when the first host needs it; closed with the run."""

    def __init__(self) -> None:
        self.worker: IndexWorker | None = None
        self.failed = False
        self.lock = anyio.Lock()
        self.tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> IndexWorkers:
        # Entered here, in the run's task: a task group must be left by the task that entered it.
        self.tg = anyio.create_task_group()
        await self.tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.worker is not None:
            await self.worker.aclose()
        if self.tg is not None:
            self.tg.cancel_scope.cancel()
            await self.tg.__aexit__(None, None, None)

    async def get(self) -> IndexWorker | None:
        """The worker, started on first use; None if it cannot start or has died."""
        async with self.lock:
            if self.worker is None and not self.failed and self.tg is not None:
                from ..index.worker import IndexWorker  # a sync with nothing to index has none

                started = IndexWorker()
                try:
                    started.start(self.tg)
                except OSError as exc:
                    log.warning("cannot start the index worker (%s); indexing in-process", exc)
                    self.failed = True
                else:
                    self.worker = started
        worker = self.worker
        return worker if worker is not None and worker.dead is None else None


def _summary(
    rounds: list[HostRound], options: SyncOptions, started: float, *, cancelled: bool, emit: Emit
) -> Summary:
    totals = FileCounts()
    for r in rounds:
        totals.add(r.files)
    failed = sum(1 for r in rounds if r.error is not None)
    partial = sum(1 for r in rounds if r.error is None and r.files.failed)
    if cancelled:
        code = 130
    elif rounds and all(isinstance(r.error, ConfigError) for r in rounds):
        # Every host failed on its configuration (a missing ssh_config or key file) before
        # anything was fetched: a configuration error, as ssh itself would exit on it.
        code = 2
    elif failed or totals.failed:
        code = 1
    else:
        code = 0
    summary = Summary(
        hosts=[r.event() for r in rounds],
        files=totals,
        bytes=sum(r.bytes for r in rounds),
        hosts_ok=len(rounds) - failed - partial,
        hosts_failed=failed,
        hosts_partial=partial,
        exit_code=code,
        dry_run=options.dry_run,
        seconds=round(time.monotonic() - started, 3),
    )
    emit(summary)
    return summary


__all__ = ["IndexWorkers", "SyncMemory", "files_per_flush", "sync_fleet"]
