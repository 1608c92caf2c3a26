"""A host's sync round.

What it owns: the order of a round (list, plan, fetch, commit, mark deletions; the fleet's
run recovers the state before it), the one remote command per host it costs (it lists, then
fetches the ranges the plan sends it on stdin; a second only when a rewrite is discovered
mid-fetch), batching commits (a transcript larger than :data:`PIECE_BYTES` comes in pieces,
each committed), and reporting every step as an event. A round's failure is its host's
alone: its error is in its ``host_done`` event. A dry run reports the plan; its command
fetches only the overlaps of files back on a deleted one's inode, whose action (grown or new)
a real run finds only by reading (:mod:`.returning`).

Flushes do not stall the stream: a full batch goes to a thread that makes it durable while the
stream fills the next one (at most one flush in flight per host); its checkpoints and index
rows are committed once the thread is done *and* the batch's index results are in. A round
with many transcript bytes to index hands the decoding to an index worker process
(:mod:`remote_sync.index.worker`), one per run, shared by the hosts; small rounds index
in-process, which is cheaper than starting a process.

Nothing holds the event loop for long (an app that syncs keeps its UI or server going): the
steps that grow with the mirror run in worker threads (parsing the listing, reading the
checkpoints and planning, making the fetch's requests, every write to the state, in turn
through :class:`~.commits.StateWrites`).

The rest of a run, each part in a module of its own: the fleet's run, its hosts' rounds run
concurrently (:mod:`.fleet`); a fetch's frame events turned into writer calls
(:mod:`.frames`); the requests of a round's fetch and of its follow-up
(:mod:`.fetch_requests`); a dry run's reads of returning files (:mod:`.returning`); the writes
to the state, a batch's flush and its commit, off the event loop (:mod:`.commits`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..cancel import CancelToken
from ..errors import (
    ConfigError,
    MirrorError,
    ProtocolError,
    RemoteCommandError,
    RemoteSyncError,
    TooMuchOutputError,
    TransferCancelledError,
    path_text,
)
from ..events import Emit, ErrorEvent, FileCounts, HostDone, Planned, Progress, WarningEvent
from ..formats import FORMATS, get_format
from ..formats.readers import get_reader
from ..index.facts import FormatReader, SessionFacts
from ..index.store import IndexRows, decode_facts, load_facts_of
from ..index.update import (
    IndexUpdate,
    continuable,
    continuable_facts,
    index_local_file,
    index_range,
)
from ..inventory import Host
from ..ssh.pool import PoolSettings, SSHPool
from ..ssh.remote import CONCURRENCY, IDLE_TIMEOUT
from ..ssh.stream import RemoteStream, exec_streaming
from .commits import Flush, StateWrites, commit, cut_back, in_thread
from .destination import mirrored_path
from .durable import CommitBatch, Pending, discard
from .fetch_events import End, Gone
from .fetch_frames import FrameParser
from .fetch_requests import follow_up_requests, owned, requests_of
from .fetch_script import BATCH_BYTES, fetch_argv, fetch_stdin, round_fetch_stdin
from .frames import FrameHandler
from .listing import ListingParser, RemoteFile, listing_errors
from .plan import MIN_PIECE_BYTES, Category, Plan, Transfer, make_plan
from .remote_ops import PROBE_TOOLS, listing_end_marker, new_marker, round_argv
from .remote_sh import EXIT_ROOT_UNUSABLE
from .returning import OverlapRead, overlap_length, overlap_request, same_file_back, take_reads
from .root_probe import probed_root_error
from .state import FINGERPRINT_BYTES, FileState, MirrorState, fingerprint_of
from .version_names import VersionNumbers

if TYPE_CHECKING:
    import asyncssh

    from ..index.worker import IndexJob, IndexWorker
    from .fleet import IndexWorkers

log = logging.getLogger(__name__)


#: Flush (fsync + commit) after this many bytes or files, or this many seconds. The bytes are
#: a fetch batch's bound: a kill of the client and a dropped connection lose as much at most.
FLUSH_BYTES = BATCH_BYTES
#: A transcript's range longer than this is fetched in pieces of at most this many bytes
#: (:meth:`Transfer.requests`), each committed at its last line end once the host's digest of
#: the file's head after its read agrees: a connection dropped in a 1 GiB first sync, or in a
#: 500 MB append after a long outage, loses one piece at most, and the rerun fetches the
#: rest. As a fetch batch: what a drop or a kill of the client may lose of one file. The
#: environment variable REMOTE_SYNC_PIECE_BYTES overrides it (tests of a CLI process).
PIECE_BYTES = BATCH_BYTES
FLUSH_FILES = 1000
#: Appends to transcripts per round whose stored facts are read with the plan (see
#: ``HostSync._plan``); the rest read theirs as they open. Their encoded facts are held until
#: then, a few hundred bytes each.
FACTS_AHEAD = 256
#: The pool's note (SSHPool.set_note, note_of) of what a round learned of a host's tools
#: (round_argv).
_TOOLS_NOTE = "round-tools"
FLUSH_SECONDS = 2.0
#: Progress events while one file streams in: at most this often per host.
PROGRESS_SECONDS = 0.25
#: A round with more transcript bytes than this to index uses the index worker process, on a
#: machine with at least WORKER_MIN_CPUS processors (the worker needs a core of its own).
#: Starting one costs 0.1-0.15 s (interpreter, imports) and every file a few messages, while
#: in-process decoding runs at 400-550 MB/s. Measured on 2 cores shared with the benchmark's
#: sshd servers, the worker lost everywhere but on one 128 MiB session: a 96 MB tree took
#: 1.35x its unindexed time with the worker against 1.17x in-process, a 1 GiB session 2.2x.
#: The environment variable REMOTE_SYNC_INDEX_WORKER_MIN_BYTES overrides the threshold and
#: the processor count (tests set 0 to force the worker).
WORKER_MIN_BYTES = 64 * 1024 * 1024
WORKER_MIN_CPUS = 3


def piece_bytes() -> int:
    """The largest piece of a transcript's range (see :data:`PIECE_BYTES`): the environment's
    REMOTE_SYNC_PIECE_BYTES if set (a ConfigError unless a whole number of at least
    :data:`MIN_PIECE_BYTES`, which a piece needs for its overlap and head)."""
    value = os.environ.get("REMOTE_SYNC_PIECE_BYTES")
    if not value:
        return PIECE_BYTES
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < MIN_PIECE_BYTES:
        raise ConfigError(
            f"REMOTE_SYNC_PIECE_BYTES is {value!r}, not a whole number of bytes of at least "
            f"{MIN_PIECE_BYTES}",
            hint=f"set it to {MIN_PIECE_BYTES} or more, or unset it (64 MiB pieces)",
        )
    return size


def worker_min_bytes() -> int | None:
    """Bytes to index above which a round uses the worker; None: never on this machine."""
    value = os.environ.get("REMOTE_SYNC_INDEX_WORKER_MIN_BYTES")
    if value:
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return WORKER_MIN_BYTES if cpus >= WORKER_MIN_CPUS else None


@dataclass
class SyncOptions:
    dest: Path
    concurrency: int = CONCURRENCY
    dry_run: bool = False
    #: Seconds a remote command may stay silent before its host fails (None: no limit).
    idle_timeout: float | None = IDLE_TIMEOUT
    pool: PoolSettings = field(default_factory=PoolSettings)
    #: Keep the session index current from the fetched bytes (off: mirror only).
    index: bool = True


@dataclass
class HostRound:
    """What one host's round did (becomes its ``host_done`` event)."""

    host: str
    files: FileCounts = field(default_factory=FileCounts)
    bytes: int = 0
    versions_kept: int = 0
    error: RemoteSyncError | None = None
    started: float = field(default_factory=time.monotonic)
    done: HostDone | None = None
    #: Something was given up or cut short (a writer aborted, a fetched file dropped): it
    #: may have left bytes past a checkpoint for recovery, even in a round that went well.
    gave_up: bool = False

    @property
    def clean(self) -> bool:
        """Every file of the host as its checkpoint says, without recovery (see SyncMemory)."""
        return self.error is None and not self.files.failed and not self.gave_up

    @property
    def status(self) -> str:
        if isinstance(self.error, TransferCancelledError):
            return "cancelled"
        if self.error is not None:
            return "failed"
        return "partial" if self.files.failed else "ok"

    def event(self) -> HostDone:
        """The round's ``host_done``, made once: the summary repeats it as it was sent (its
        seconds are the host's own, not the time until the summary)."""
        if self.done is None:
            self.done = HostDone(
                host=self.host,
                status=self.status,
                files=self.files,
                bytes=self.bytes,
                versions_kept=self.versions_kept,
                seconds=round(time.monotonic() - self.started, 3),
                error=str(self.error) if self.error else None,
            )
        return self.done


class HostSync:
    """One host's round against one mirror."""

    def __init__(
        self,
        host: Host,
        pool: SSHPool,
        state: MirrorState,
        writes: StateWrites,
        options: SyncOptions,
        emit: Emit,
        token: CancelToken,
        workers: IndexWorkers | None = None,
        flush_files: int = FLUSH_FILES,
        *,
        pieces: int,
        keeps_tools: bool = False,
    ) -> None:
        self.host = host
        # The pool outlives the run (the agent's): the round probes the host's tools at once
        # and reports them, for the next round over the same connection (_note_tools).
        self.keeps_tools = keeps_tools
        # The state's connection is read on the event loop's thread; every write of the
        # round goes through ``writes`` (a worker thread, one write at a time).
        self.writes = writes
        self.flush_files = flush_files  # a batch holds each of its files open until its flush
        self.piece_bytes = pieces  # the run's piece_bytes(), the same for all its rounds
        self.name = host.name
        self.pool = pool
        self.state = state
        self.options = options
        self.emit = emit
        self.token = token
        self.result = HostRound(host.name)
        self.batch = CommitBatch(state)
        self.last_flush = time.monotonic()
        self.last_progress = self.last_flush
        self.bytes_total = 0
        self.files_total = 0
        self.files_done = 0
        self.reader: FormatReader | None = get_reader(host.source.format) if options.index else None
        self.workers = workers
        self.worker: IndexWorker | None = None  # this round's index worker, if it uses one
        self.inflight: Flush | None = None  # at most one batch being made durable
        self.version_numbers = VersionNumbers()  # each versions folder listed once a round
        self.new_rows: list[FileState] = []  # files new to the mirror, committed this round
        # The files this round means to fetch, and those it has committed or failed: when the
        # round fails midway, the rest count as failed too (they were left behind).
        self.planned: list[bytes] = []
        self.settled: set[bytes] = set()
        self.moved_store = False  # the listing showed the format's store moved (warned)
        # What the round's end line said of the host's tools, the connection it came over,
        # and whether the round went well enough to believe it next time (see _note_tools).
        self.tools = ""
        self.tools_conn: asyncssh.SSHClientConnection | None = None
        self.tools_clean = False
        # The end a read that came short found a file at, by path (the least of them): it
        # shrank since the listing, and a follow-up of it in pieces stops at this end
        # (_as_whole, follow_up_requests).
        self.ends: dict[bytes, int] = {}
        # The stored facts of the plan's first appends to transcripts, still encoded, read
        # with the plan in one statement (None: the index has none); taken out as each file
        # opens (continuable_facts_of).
        self.facts_ahead: dict[bytes, bytes | None] = {}

    async def run(self) -> HostRound:
        try:
            await self._round()
        except RemoteSyncError as raised:
            exc = self.host.explain(raised)
            self.result.error = exc
            if not isinstance(exc, TransferCancelledError):
                self._count_left_behind()
            self.emit(ErrorEvent.from_exception(exc))
        except Exception as exc:
            # A bug must not take the other hosts down with it: this host fails, loudly, and
            # its committed state is consistent (commits happen only after durable bytes).
            log.exception("%s: internal error", self.name)
            error = RemoteSyncError(
                f"internal error: {type(exc).__name__}: {exc}",
                host=self.name,
                hint="please report this with the log; a rerun resumes from the checkpoints",
            )
            self.result.error = error
            self._count_left_behind()
            self.emit(ErrorEvent.from_exception(error))
        self._note_tools()
        self.emit(
            Progress(
                self.name,
                "done",
                self.files_done,
                self.files_total,
                # A dry run's result counts what would move; its progress moved nothing.
                0 if self.options.dry_run else self.result.bytes,
                self.bytes_total,
            )
        )
        return self.result

    def _note_tools(self) -> None:
        """Keep what this round learned of the host's tools for the next round over the same
        connection, which then probes none of them (three processes a round), or forget it.
        Kept only after a round that went well: a wrong answer shows as a failed read, an
        incomplete listing or heads that did not match, and the next round probes again."""
        conn = self.tools_conn
        if conn is None or not self.keeps_tools:
            return  # a pool of the run's own: its connections end with it, nothing told
        clean = self.tools_clean and self.result.error is None and not self.result.files.failed
        self.pool.set_note(conn, _TOOLS_NOTE, self.tools if clean and self.tools else None)

    async def _round(self) -> None:
        self.emit(Progress(self.name, "listing", 0, 0, 0, 0))
        source = self.host.source
        if not self.options.dry_run:
            address = self.host.endpoint.label
            await self.writes.run(
                lambda state: state.set_host(self.name, source.format, source.root, address)
            )
        # One command lists and then fetches what the plan asks for (see round_argv). The
        # marker goes on stdin, never on a command line other users could read in `ps`.
        marker = new_marker()
        again: list[Transfer] = []
        recheck: list[Transfer] = []
        stream: RemoteStream | None = None
        complete = True

        def argv(conn: asyncssh.SSHClientConnection) -> list[str]:
            # Told what was learned over the connection it runs on, read as its channel
            # opens: a pooled connection found lost then is replaced by a new one, which has
            # learned nothing, and the round probes (the host behind it may have changed).
            told = self.pool.note_of(conn, _TOOLS_NOTE) or ""
            asked = told or (PROBE_TOOLS if self.keeps_tools else "")
            return round_argv(source.root, source.start_points, tools=asked)

        try:
            async with exec_streaming(
                self.pool,
                self.host.endpoint,
                argv,
                host=self.name,
                stdin=fetch_stdin([], marker),
                keep_stdin_open=True,
                stderr_boundary=listing_end_marker(marker),
                idle_timeout=self.options.idle_timeout,
                token=self.token,
            ) as stream:
                # Known before the listing is read: a round that fails from here on forgets
                # what it was told (_note_tools).
                self.tools_conn = stream.connection
                listing, listed = await self._list(stream)
                assert listed.end is not None
                complete = not listed.end[1]
                self.tools = listed.tools
                plan = await in_thread(self._plan, listing, complete)
                if not listing and complete and not self.moved_store:
                    self._nothing_to_mirror()
                if self.options.dry_run:  # it may change the plan: before its totals
                    await self._probe_returning(stream, marker, plan, listed.rest)
                self.result.files.unchanged = len(plan.unchanged)
                self.files_total = len(plan.transfers)
                self.bytes_total = plan.bytes
                self.emit(Progress(self.name, "fetching", 0, self.files_total, 0, self.bytes_total))
                if self.options.dry_run:
                    self._count_dry_run(plan)
                else:
                    self.planned = [t.remote.path for t in plan.transfers]
                    await self._pick_worker(plan)
                    again, recheck = await self._fetch_on(
                        stream, marker, plan.transfers, listed.rest
                    )
            if self.options.dry_run:
                return
            if again or recheck:
                # Rewrites found mid-fetch (overlap mismatch, a file that shrank while read):
                # one more command fetches them whole, so the mirror is current after this run.
                # Appends whose batch's heads did not agree come again as they were, each
                # with a head check of its own: only one found rewritten is then fetched
                # whole (one command more), not every append of its batch.
                still = await self._fetch_again([self._as_whole(t) for t in again] + recheck)
                rewritten = [self._as_whole(t) for t in still if t.mode == "append"]
                still = [t for t in still if t.mode != "append"]
                still += await self._fetch_again(rewritten)
                for t in still:
                    self.fail(t.remote.path, "changed again while being fetched; retry next run")
            else:
                self.tools_clean = complete
        finally:
            if not complete:  # reported even when the fetch then failed
                assert stream is not None
                self._listing_incomplete(stream.stderr_before)
            with anyio.CancelScope(shield=True):
                await self._drain()
        await self._mark_deleted(plan.deleted)
        await self._revive(plan.revived)
        await self._index_the_unindexed()

    def _plan(self, listing: list[RemoteFile], complete: bool) -> Plan:
        """The round's plan from its listing and the host's checkpoints (in a worker thread:
        reading 20,000 rows and comparing them with the listing takes a fifth of a second),
        and the stored facts of its first ``FACTS_AHEAD`` appends to transcripts, read in the
        same thread into ``facts_ahead``."""
        source = self.host.source
        with self.writes.reading() as state:
            rows = state.host_files(self.name)
            plan = make_plan(
                listing,
                rows,
                is_append_only=source.is_append_only,
                is_included=source.is_included,
                listing_complete=complete,
            )
            reader = self.reader
            if reader is not None and not self.options.dry_run:
                # Each append's writer continues its session's stored facts: read here for
                # the first FACTS_AHEAD, in a statement or two, where one each on the event
                # loop's thread cost some 60 us a file.
                paths = [
                    t.remote.path
                    for t in plan.transfers
                    if t.mode == "append"  # a kind "append" with a row; never a seeded one
                    and t.row is not None
                    and t.row.size > 0
                    and reader.is_transcript(t.remote.path)
                ][:FACTS_AHEAD]
                if paths:
                    self.facts_ahead = load_facts_of(state.db, self.name, paths)
        return plan

    def continuable_facts_of(self, path: bytes, start: int) -> SessionFacts | None:
        """The stored facts of exactly the ``start`` committed bytes of ``path``'s session
        (see :func:`continuable_facts`): read with the plan, for a file's first open in the
        round, else now. Nothing of the file was committed between (its own commits come
        after its open); a second open (a recheck, a follow-up) reads them anew."""
        if path in self.facts_ahead:
            blob = self.facts_ahead.pop(path)
            return continuable(decode_facts(blob) if blob is not None else None, start)
        return continuable_facts(self.state.db, self.name, path, start)

    async def _list(self, stream: RemoteStream) -> tuple[list[RemoteFile], ListingParser]:
        """Read the round's listing up to its end line (the parser has it, and what followed)."""
        source = self.host.source
        parser = ListingParser(self.name, trailer=True)
        files: list[RemoteFile] = []
        moved: bytes | None = None
        try:
            async for chunk in stream:
                # In a worker thread: a chunk of a compressed listing holds some 13,000
                # records, a tenth of a second of parsing.
                found = await in_thread(self._take_listed, parser, chunk, files)
                moved = moved or found  # the first one is reported
                del chunk  # not held while the stream waits for more
                if parser.end is not None:
                    break
            else:
                parser.close()  # the command ended without the listing's end line
        except RemoteCommandError as exc:
            if exc.exit_status == EXIT_ROOT_UNUSABLE:
                # Names the other agents' roots the host has: one more command, only here.
                raise await probed_root_error(
                    self.pool,
                    self.host,
                    exc,
                    idle_timeout=self.options.idle_timeout,
                    token=self.token,
                ) from exc
            raise
        except TooMuchOutputError:
            raise  # the command is still sending: stopped, not read to its end
        except ProtocolError as exc:
            # Broken listing bytes are often the trace of a command that failed (gzip killed
            # midway): its exit status and messages say more. Without a failure, the bytes.
            stream.send(b"", end=True)
            try:
                await _drain_stream(stream, self.name)
            except RemoteCommandError as failed:
                raise failed from exc
            except RemoteSyncError:
                pass
            raise
        assert parser.end is not None
        if parser.end[0] != 0:
            try:
                await _drain_stream(
                    stream, self.name
                )  # the command exits with the listing's status
            except RemoteCommandError as exc:
                raise exc.restated(
                    f"the listing failed (status {parser.end[0]})", host=self.name
                ) from exc
            raise ProtocolError(
                f"the listing failed with status {parser.end[0]}, the command did not",
                host=self.name,
            )
        if moved is not None:
            self.moved_store = True
            spec = get_format(source.format)
            self.emit(
                WarningEvent(
                    self.name, path_text(moved), "moved_store", spec.moved_note, spec.moved_hint
                )
            )
        return files, parser

    def _nothing_to_mirror(self) -> None:
        """A root with no file to mirror, of a host the mirror holds nothing of, is no failure
        (an agent with no sessions yet: the next sync picks them up, as rsync copies an empty
        directory and exits 0), but a root or format given wrong looks the same: say what was
        looked for, and where the agent's files may be instead."""
        source = self.host.source
        if self.state.holds_files(self.name):
            return  # synced before: its files were deleted since, which the plan records
        hint = "an agent with no sessions yet is fine: the next sync picks them up"
        owners = [
            spec.name
            for spec in FORMATS.values()
            if spec.default_root == source.root and spec.name != source.format
        ]
        if owners:  # --root ~/.claude without --format
            fix = f"--format {owners[0]}" if self.host.adhoc else f'format = "{owners[0]}"'
            hint = f"{source.root} is {owners[0]}'s directory, read as {source.format}: give {fix}"
        elif self.host.adhoc:
            hint = f"if the agent keeps its sessions elsewhere, give --root and --format; {hint}"
        self.emit(
            WarningEvent(
                self.name,
                None,
                "nothing_to_mirror",
                f"no file under {source.root!r} matches format {source.format!r} "
                f"({', '.join(source.include)}): nothing to mirror",
                hint,
            )
        )

    def _take_listed(
        self, parser: ListingParser, chunk: bytes, files: list[RemoteFile]
    ) -> bytes | None:
        """Parse a chunk of the listing into ``files`` (those the source includes); returns
        the first path of it that shows the format's store moved, if any."""
        source = self.host.source
        moved: bytes | None = None
        for f in parser.feed(chunk):
            if source.is_included(f.path):
                files.append(f)
            elif moved is None and source.shows_moved_store(f.path):
                moved = f.path
        return moved

    def _listing_incomplete(self, messages: bytes | None) -> None:
        """find could not read part of the tree: the files there were not seen, so they are
        neither mirrored nor taken for deleted. Each path it could not read is an error
        naming it, and counts as one failed file: how many files are under it is not known
        (rsync counts none, and exits 23); one failed keeps the host "partial" and the run's
        exit 1. Any other message (a start point skipped) is one error more, as it came. The
        messages are None when the stderr boundary never came (the command was cut)."""
        for error in listing_errors(
            self.name,
            messages,
            "mirrored",
            "until then no deletion is recorded for this host",
            incomplete=True,
        ):
            self.result.files.failed += 1
            self.emit(ErrorEvent.from_exception(error))

    async def _pick_worker(self, plan: Plan) -> None:
        """Take an index worker for this round when it has many transcript bytes to index
        (a file fetched in pieces is indexed in-process: each piece commits its facts)."""
        threshold = worker_min_bytes()
        if self.reader is None or self.workers is None or threshold is None:
            return
        reader = self.reader
        pieces = self.piece_bytes
        to_index = sum(
            t.length
            for t in plan.transfers
            if t.kind == "append" and reader.is_transcript(t.remote.path) and not t.pieced(pieces)
        )
        if to_index > threshold:
            self.worker = await self.workers.get()

    async def _fetch_on(
        self, stream: RemoteStream, marker: str, transfers: Sequence[Transfer], first: bytes
    ) -> tuple[list[Transfer], list[Transfer]]:
        """Fetch ``transfers`` on the round's own command (``first``: frames already read);
        returns those that must be fetched whole, and the appends to check one by one."""
        # In a worker thread: the requests of 20,000 new files take tens of milliseconds.
        owners, requests, stdin = await in_thread(
            requests_of, transfers, self.piece_bytes, self.flush_files
        )
        stream.send(stdin, end=True)
        if not transfers:
            await _drain_stream(stream, self.name)
            return [], []
        parser = FrameParser(self.name, marker.encode(), requests)
        handler = FrameHandler(self, owners, requests, follow_up=False)
        await self._consume(stream, parser, handler, first)
        return handler.again, handler.recheck

    async def _fetch_again(self, transfers: Sequence[Transfer]) -> list[Transfer]:
        """Fetch ``transfers`` with a command of their own: whole ones to their end (up to
        :func:`~.fetch_requests._follow_up_length`), appends as planned, each with its head
        checked, a transcript longer than a piece in pieces (see :func:`follow_up_requests`);
        returns those that changed again while being read (or, for an append, were found
        rewritten, or a whole one grew past what was asked)."""
        if not transfers:
            return []
        pieces = self.piece_bytes
        owners, requests = owned(transfers, lambda t: follow_up_requests(t, pieces))
        marker = new_marker()
        parser = FrameParser(self.name, marker.encode(), requests)
        handler = FrameHandler(self, owners, requests, follow_up=True)

        def argv(conn: asyncssh.SSHClientConnection) -> list[str]:
            # What the round found of the host's dd and head, when it found them over this
            # very connection: the follow-up's batches then probe neither again. A new
            # connection (the round's was lost) may reach a host whose tools changed.
            tools = self.tools if conn is self.tools_conn else ""
            return fetch_argv(self.host.source.root, per_batch=self.flush_files, tools=tools)

        try:
            async with exec_streaming(
                self.pool,
                self.host.endpoint,
                argv,
                host=self.name,
                stdin=fetch_stdin(requests, marker),
                idle_timeout=self.options.idle_timeout,
                token=self.token,
            ) as stream:
                await self._consume(stream, parser, handler, b"")
        except RemoteCommandError as exc:
            if exc.exit_status == EXIT_ROOT_UNUSABLE:
                raise exc.restated(
                    f"the remote root {self.host.source.root!r} vanished during the fetch",
                    host=self.name,
                ) from exc
            raise
        return handler.again

    async def _consume(
        self, stream: RemoteStream, parser: FrameParser, handler: FrameHandler, first: bytes
    ) -> None:
        """Feed a fetch's frames (``first``, then the rest of ``stream``) to ``handler``."""
        try:
            if first:
                await handler.handle_all(parser.feed(first))
            # Once the last frame is in, only the exit status is awaited, not the close of
            # stdout, which a process left behind on the host may hold open.
            if parser.complete:
                stream.expect_end()
            async for chunk in stream:
                await handler.handle_all(parser.feed(chunk))
                if parser.complete:
                    stream.expect_end()
                # Not held while the stream waits for more: with eight hosts at once that
                # would be eight idle chunks (the events, gone with handle_all, view it too).
                del chunk
            await handler.handle_all(parser.close())
        except RemoteSyncError as exc:  # e.g. the connection lost midway
            handler.abort_naming(exc)
            raise
        except BaseException:
            handler.abort()
            raise

    def _as_whole(self, t: Transfer) -> Transfer:
        # A new file stays new (there is no old copy to count it a rewrite of), and so does a
        # file back where one was deleted that is not that one after all (see plan.make_plan).
        category: Category = "new" if t.category == "new" or t.back else "rewritten"
        # Its length is where the file is known to end: its listed size, or the end a read
        # that came short found it at. Its follow-up asks for pieces up to there (see
        # follow_up_requests), not for every piece of the listed size, read past after the
        # first came short. Only the pieces: the listed size, kept, is what decides whether
        # the file comes in pieces and how much it may have grown (_follow_up_length), so a
        # file cut short during the round and grown again since is not "changed again" for
        # growing back to what its listing allowed.
        end = min(t.remote.size, self.ends.get(t.remote.path, t.remote.size))
        return Transfer(t.remote, t.kind, "whole", category, 0, end, t.row)

    async def finished(self, pending: Pending) -> None:
        self.batch.add(pending)
        if not pending.piece:
            self.files_done += 1
        self._progress()
        if self.inflight is not None and self.inflight.ready():
            await self._complete()  # commit as soon as we can; it does not wait
        now = time.monotonic()
        if (
            # A piece: its file's next one waits for its commit (see piece_committed), which
            # is then made while that next one streams in, not while the stream stalls.
            pending.piece
            or self.batch.bytes >= FLUSH_BYTES
            or len(self.batch.items) >= self.flush_files
            or now - self.last_flush >= FLUSH_SECONDS
        ):
            await self._start_flush()

    async def _start_flush(self) -> None:
        """Hand the batch to a flush thread; the stream goes on meanwhile."""
        self.last_flush = time.monotonic()
        if not self.batch.items:
            return
        if self.inflight is not None:
            await self._complete()  # one flush in flight per host: its fsyncs bound our pace
        items = self.batch.take()
        # Files this flush will rename into place are recorded in doubt first (a new file
        # gets a placeholder row): a run killed after the renames and before the commit then
        # finds a row for each, which recovery never cuts back to and makes follow the file
        # on disk, and which the next round fetches whole.
        try:
            rows = [item.row for item in items if item.temp is not None]
            if rows:  # none in a batch of appends: no trip to the writes' thread
                await self.writes.run(lambda state: state.mark_in_doubt(rows))
        except BaseException:
            self.result.gave_up = True
            discard(items)  # nothing of this batch was renamed: temp files and fds go
            raise
        self.inflight = Flush(self.state, items, self.version_numbers)

    async def _flush(self) -> None:
        """Make everything finished durable and committed, now."""
        await self._start_flush()
        if self.inflight is not None:
            await self._complete()

    async def _drain(self) -> None:
        """End of a round (whatever ended it): commit what is finished, or discard it."""
        try:
            if self.inflight is not None:
                await self._complete()
            await self._flush()
        finally:
            # Left only when a flush failed: the host's round is over, nothing more is tried.
            left = self.batch.take()
            if left:
                self.result.gave_up = True
            discard(left)
            if any(item.cut_back is not None for item in left):  # rare: no thread otherwise
                await in_thread(cut_back, self.state, left)

    async def _complete(self) -> None:
        """Wait for the flush in flight and its index results; commit them in one transaction."""
        flush = self.inflight
        assert flush is not None
        # Shielded: once bytes are durable, committing them is always right and quick, and a
        # cancellation must not leave the flush half-collected.
        with anyio.CancelScope(shield=True):
            try:
                await self._collect(flush)
            except BaseException:
                # Not committed: a piece of a file given up meanwhile goes back to the
                # checkpoint before it now, not at the next open's recovery. Every such piece
                # was appended in place, so it is among the items whatever failed.
                await in_thread(cut_back, self.state, flush.items)
                raise

    async def _collect(self, flush: Flush) -> None:
        """:meth:`_complete`'s wait and commit (shielded there)."""
        try:
            items, failed = await flush.wait()
        finally:
            self.inflight = None
        for item, error in failed:  # that file only; the rest of the batch goes on
            self.result.files.failed += 1
            self.settled.add(item.row.path)
            self.emit(ErrorEvent.from_exception(error))
        # A new file that never reached its place leaves no row behind (see mark_in_doubt).
        gone = [(item.row.host, item.row.path) for item, _ in failed]
        if gone:
            await self.writes.run(lambda state: state.forget_placeholders(gone))
        for item in items:
            if item.job is not None:
                item.index = await self._job_result(item, item.job)
        await self.writes.run(lambda state: commit(state, items))
        for item in items:
            item.committed = True
            self.result.versions_kept += item.versioned
            if item.piece:
                continue  # the file goes on: counted once, with its last piece
            counts = self.result.files
            setattr(counts, item.category, getattr(counts, item.category) + 1)
            self.settled.add(item.row.path)
            if item.category == "new":
                self.new_rows.append(item.row)

    async def piece_committed(self, piece: Pending) -> bool:
        """Wait until ``piece`` (a piece of a file, handed to :meth:`finished`) is committed;
        False when its flush could not put it in place (that error is said, and the file
        counted failed). The next piece of its file is handed over only then: a checkpoint
        of it would claim a file that never reached its place. Usually that flush has long
        been done: :meth:`finished` started it, and it ran while the next piece streamed in."""
        _not_in_the_batch(self.batch, piece)
        if self.inflight is not None:
            await self._complete()  # this piece's flush, or one after it
        # A piece committed is not settled (the file goes on); one that failed is.
        return piece.row.path not in self.settled

    def never_committed(self, piece: Pending) -> bool:
        """Whether ``piece`` (handed to :meth:`finished`) will never be committed: True when
        its flush is over and did not commit it; False once committed, or while its flush
        runs (its fate is that flush's)."""
        _not_in_the_batch(self.batch, piece)
        if self.inflight is not None and any(item is piece for item in self.inflight.items):
            return False  # (a failed item leaves that list)
        return not piece.committed

    async def _job_result(self, item: Pending, job: IndexJob) -> IndexUpdate:
        """The worker's facts for a durable item, or (if it failed) the same computed here.

        Runs shielded. A cancel stops the wait for the worker (a hung one would hold Ctrl-C for
        its whole timeout): the job is dropped and the item indexed here, a bounded amount of
        work on bytes already durable, so that the commit's index still covers them.
        """
        from ..index.worker import IndexWorkerError  # a sync with nothing to index has none

        unhook = self.token.on_cancel(job.drop)
        try:
            return await job.result()
        except IndexWorkerError as exc:
            log.info("%s: indexing %r in-process: %s", self.name, item.row.path, exc)
        finally:
            unhook()
        assert self.reader is not None
        reader, row = self.reader, item.row
        local = self.state.local_path(row.host, row.path)
        try:
            return await anyio.to_thread.run_sync(
                lambda: index_range(
                    reader,
                    row.host,
                    row.path,
                    local,
                    start=job.start,
                    end=row.size,
                    facts=job.starting_facts(),
                    fresh=job.fresh,
                )
            )
        except OSError as exc:
            raise MirrorError(
                f"cannot read the mirrored file to index it: {exc.strerror or exc}",
                host=row.host,
                path=path_text(row.path),
                hint="a rerun fetches and indexes it again",
            ) from exc

    def progress_within_file(self) -> None:
        """A progress event while a large file streams in, at most every PROGRESS_SECONDS (a
        bar that moves only when a file ends would stand still for a whole 1 GiB session)."""
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_SECONDS:
            self._progress()

    def _progress(self) -> None:
        self.last_progress = time.monotonic()
        self.emit(
            Progress(
                self.name,
                "fetching",
                self.files_done,
                self.files_total,
                self.result.bytes,
                self.bytes_total,
            )
        )

    def fail(
        self,
        path: bytes,
        message: str,
        kind: str = "file_failed",
        hint: str = "see the message; a rerun retries",
    ) -> None:
        self.result.files.failed += 1
        self.settled.add(path)
        self.emit(ErrorEvent(self.name, path_text(path), kind, message, hint))

    def _count_left_behind(self) -> None:
        """The round failed: every file it meant to fetch and did not commit counts as failed
        (the host's error says why; a rerun fetches them)."""
        self.result.files.failed += sum(1 for path in self.planned if path not in self.settled)

    async def _mark_deleted(self, rows: list[FileState]) -> None:
        """Files gone from the remote: ``deleted``, or ``renamed`` when a file new this round
        is the same one under another name (same device, inode and first KiB), such as an
        OpenClaw session archived as ``<id>.jsonl.reset.<time>``; the index then counts its
        conversation once, under the new name."""
        if not rows:
            return  # the usual round (new_rows may be 20,000 files of a first one)
        now = time.time()
        moved = {(row.dev, row.ino, row.fingerprint) for row in self.new_rows}
        by_inode = {(row.dev, row.ino): row for row in self.new_rows}
        for row in rows:
            same = (row.dev, row.ino, row.fingerprint) in moved or self._continued_by(
                row, by_inode.get((row.dev, row.ino))
            )
            row.state = "renamed" if same else "deleted"
            row.deleted_at = now
        await self.writes.run(lambda state: state.commit(rows))
        self.result.files.deleted = len(rows)

    def _continued_by(self, gone: FileState, new: FileState | None) -> bool:
        """Does ``new`` (a file new this round on the same device and inode) begin with the
        bytes mirrored of ``gone``? Their fingerprints cover different lengths when ``gone``
        was mirrored shorter than a KiB (a session renamed after its first prompt grew)."""
        if new is None or not 0 < gone.size < min(new.size, FINGERPRINT_BYTES):
            return False
        try:
            with open(self.state.local_path(self.name, new.path), "rb") as mirrored:
                head = mirrored.read(gone.size)
        except OSError:
            return False  # then it is counted as deleted, as before: nothing is lost
        return fingerprint_of(head) == gone.fingerprint

    async def _index_the_unindexed(self) -> None:
        """Index mirrored transcripts the index has no session for, from the mirror.

        They come from runs with ``--no-index`` (which drop the rows of the files they change):
        an indexed run leaves the index as ``index rebuild`` would make it. Usually there is
        none, and this is one query.
        """
        reader = self.reader
        if reader is None:
            return
        missing = await in_thread(self._unindexed_transcripts, reader)
        if not missing:
            return
        updates: list[IndexUpdate] = []
        for path, size in missing:
            local = self.state.local_path(self.name, path)
            try:
                update = await anyio.to_thread.run_sync(
                    index_local_file, reader, self.name, path, local, size
                )
            except OSError as exc:
                self.fail(
                    path,
                    f"cannot read the mirrored file to index it: {exc.strerror or exc}",
                    "mirror",
                    "check the destination's permissions, then run again",
                )
                continue
            update.fresh = True
            updates.append(update)

        def write_index(state: MirrorState) -> None:
            rows = IndexRows()
            for update in updates:
                update.put_into(rows)
            rows.write(state.db)

        await self.writes.run(lambda state: state.commit([], also=lambda: write_index(state)))

    def _unindexed_transcripts(self, reader: FormatReader) -> list[tuple[bytes, int]]:
        """Path and size of the host's mirrored transcripts the index has no session for (in
        a worker thread: the query looks at every file of the host)."""
        source = self.host.source
        with self.writes.reading() as state:
            found = state.unindexed_files(self.name)
        # The transcripts the writers index (see FrameHandler._open).
        return [
            (path, size)
            for path, size in found
            if reader.is_transcript(path) and source.is_append_only(path)
        ]

    async def _revive(self, rows: list[FileState]) -> None:
        if not rows:
            return
        for row in rows:
            row.state = "live"
            row.deleted_at = None
        await self.writes.run(lambda state: state.commit(rows))

    async def _probe_returning(
        self, stream: RemoteStream, marker: str, plan: Plan, first: bytes
    ) -> None:
        """A dry run's fetch on the round's command (``first``: frames already read): only
        the overlaps of the files back on the inode of one the host deleted, with their heads
        hashed on the host, to tell which of them a real run would take for new, and which
        it would find unchanged (:func:`overlap_request`).

        The plan appends to such a file; the real run finds out from its overlap and its head
        whether it is the deleted one back (grown) or another file on a reused inode, fetched
        whole as new. These reads change nothing: the overlaps are compared with the mirror's
        files, read only. A host with no such file is sent no request, as before: no process
        starts and no byte moves for this."""
        returning = [
            n
            for n, t in enumerate(plan.transfers)
            if t.back and t.mode == "append" and t.row is not None and t.start < t.row.size
        ]
        requests = [overlap_request(plan.transfers[n]) for n in returning]
        stream.send(round_fetch_stdin(requests, per_batch=self.flush_files), end=True)
        if not requests:
            await _drain_stream(stream, self.name)
            return
        parser = FrameParser(self.name, marker.encode(), requests)
        transfers = [plan.transfers[n] for n in returning]
        reads = [
            OverlapRead(keep=overlap_length(t), line_after=not t.verify_head) for t in transfers
        ]
        if first:
            take_reads(reads, parser.feed(first))
        async for chunk in stream:
            take_reads(reads, parser.feed(chunk))
            del chunk
        take_reads(reads, parser.close())
        dest = self.options.dest
        verdicts = await in_thread(
            lambda: [
                same_file_back(t, read, mirrored_path(dest, self.name, t.remote.path))
                for t, read in zip(transfers, reads, strict=True)
            ]
        )
        touched: set[int] = set()
        gone: set[int] = set()
        for n, t, same, read in zip(returning, transfers, verdicts, reads, strict=True):
            if read.ended is Gone:
                gone.add(n)  # a real run says nothing of it: the next round records it
            elif not same:
                plan.transfers[n] = dataclasses.replace(
                    t, mode="whole", category="new", start=0, length=t.remote.size
                )
            elif read.ended is End and not read.line_after:
                # Verified only: nothing after the mirrored lines, or a partial last line
                # that is still partial. The append commits no byte: it is unchanged.
                touched.add(n)
        if touched or gone:
            plan.unchanged += [plan.transfers[n].remote for n in sorted(touched)]
            plan.transfers = [
                t for n, t in enumerate(plan.transfers) if n not in touched and n not in gone
            ]

    def _count_dry_run(self, plan: Plan) -> None:
        """Report what a sync would move, file by file, and count it as the round's result."""
        counts = self.result.files
        for t in plan.transfers:
            setattr(counts, t.category, getattr(counts, t.category) + 1)
            self.emit(Planned(self.name, path_text(t.remote.path), t.category, t.length))
        for row in plan.deleted:
            self.emit(Planned(self.name, path_text(row.path), "deleted", 0))
        counts.deleted = len(plan.deleted)
        self.result.bytes = plan.bytes


def _not_in_the_batch(batch: CommitBatch, piece: Pending) -> None:
    """Assert that ``piece`` is in no flush to come: :meth:`HostSync.finished` starts a
    piece's flush before it returns (it takes the batch, the piece in it), and a piece whose
    ``finished`` raised is neither waited for nor given up one by one (the raise ends the
    round, whose end flushes or discards what the batch holds). So a piece waited for or
    given up is in the flush running, or in one collected, never left for a flush after."""
    assert not any(item is piece for item in batch.items), "a piece handed over is in the batch"


#: Bytes of output read past, at most, where none is expected: a fetch sent no request, a
#: listing that failed. A host that goes on sending there is stopped, not read for ever.
DRAIN_BYTES = 64 * 1024


async def _drain_stream(stream: RemoteStream, host: str) -> None:
    """Read a command's output to its end (raising its errors), keeping none of it, and at
    most :data:`DRAIN_BYTES` of it (more is a :class:`TooMuchOutputError`)."""
    stream.expect_end()  # nothing more is wanted of it but how it ended
    drained = 0
    async for chunk in stream:
        drained += len(chunk)
        if drained > DRAIN_BYTES:
            raise TooMuchOutputError(
                f"the host sent more than {DRAIN_BYTES} bytes where it was asked for none",
                host=host,
                hint="check the host's tools and its rc files; what was committed is kept",
            )


__all__ = ["HostRound", "HostSync", "SyncOptions"]
