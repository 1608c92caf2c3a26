"""A host's sync round, and the fleet's rounds.

What it owns: the order of a round (recover, list, plan, fetch, commit, mark deletions), the
one remote command per host it costs (it lists, then fetches the ranges the plan sends it on
stdin; a second only when a rewrite is discovered mid-fetch), turning frame events into writer
calls (a transcript larger than :data:`PIECE_BYTES` in pieces, each committed), batching
commits, running hosts concurrently under a bound, and reporting every step as an event. One
host failing never stops the others; its error is in its ``host_done`` event and
the summary. A dry run reports the plan; its command fetches only the overlaps of files back
on a deleted one's inode, whose action (grown or new) a real run finds only by reading.

Flushes do not stall the stream: a full batch goes to a thread that makes it durable while the
stream fills the next one (at most one flush in flight per host); its checkpoints and index
rows are committed once the thread is done *and* the batch's index results are in. A round
with many transcript bytes to index hands the decoding to an index worker process
(:mod:`remote_sync.index.worker`), one per run, shared by the hosts; small rounds index
in-process, which is cheaper than starting a process.

Nothing holds the event loop for long (an app that syncs keeps its UI or server going): the
steps that grow with the mirror run in worker threads (recovery, parsing the listing, reading
the checkpoints and planning, making the fetch's requests, every write to the state, in turn
through :class:`StateWrites`, a piece's checkpoint, which may read and copy up to a piece,
and the copy of a renamed transcript's mirrored bytes its append starts from), and handling
a chunk's frames lets the other tasks run every :data:`YIELD_SECONDS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import anyio
import anyio.abc
import anyio.lowlevel

if TYPE_CHECKING:
    import asyncssh

from ..cancel import CancelRegistry, CancelToken, registry_or_default
from ..errors import (
    ConfigError,
    DestinationError,
    MirrorError,
    PermissionDeniedError,
    ProtocolError,
    ReadFailedError,
    RemoteCommandError,
    RemoteSyncError,
    TooMuchOutputError,
    TransferCancelledError,
    path_text,
)
from ..events import (
    Emit,
    ErrorEvent,
    FileCounts,
    HostDone,
    Planned,
    Progress,
    Summary,
    WarningEvent,
)
from ..formats import FORMATS, get_format
from ..formats.readers import get_reader
from ..index.facts import FormatReader, SessionFacts
from ..index.store import IndexRows, decode_facts, load_facts_of
from ..index.update import (
    FileIndexer,
    IndexUpdate,
    continuable,
    continuable_facts,
    index_local_file,
    index_range,
    indexer_for,
)
from ..index.worker import IndexJob, IndexWorker, IndexWorkerError
from ..inventory import Host, normal_root
from ..ssh.pool import JumpsRead, PoolSettings, SSHPool
from ..ssh.remote import CONCURRENCY, IDLE_TIMEOUT
from ..ssh.stream import RemoteStream, exec_streaming
from .digests import Algorithm, Digest, Hasher
from .plan import MIN_PIECE_BYTES, Category, Plan, Transfer, make_plan
from .remote_ops import (
    BATCH_BYTES,
    EXIT_ROOT_UNUSABLE,
    HEAD_BYTES,
    PROBE_TOOLS,
    Begin,
    Changed,
    Data,
    Denied,
    End,
    Failed,
    FetchRequest,
    FrameParser,
    Gone,
    HeadDigest,
    ListingParser,
    RemoteFile,
    Short,
    fetch_argv,
    fetch_stdin,
    listing_end_marker,
    listing_errors,
    new_marker,
    round_argv,
    round_fetch_stdin,
)
from .root_probe import probed_root_error
from .state import (
    CONTROL_DIR,
    FINGERPRINT_BYTES,
    CleanClose,
    FileState,
    MirrorState,
    VersionNumbers,
    copy_state,
    fingerprint_of,
    mirrored_path,
    refuse_nested,
)
from .writer import (
    AppendWriter,
    CommitBatch,
    Overlap,
    Pending,
    RewriteDetected,
    SeededWriter,
    WholeWriter,
    discard,
    give_up,
    make_durable,
    only_this_file,
    rfind_newline,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

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
#: The event loop's other tasks (an app's UI, its server) get to run after this long of
#: handling the frames of one chunk of a fetch.
YIELD_SECONDS = 0.005
#: A follow-up fetches whole a file that changed since the listing, so its size then is not
#: known: it asks for the listed size and as much again, or this much more if that is more,
#: and a byte past it (``detect_growth``). A file longer than that by then grows faster than
#: a round can follow: it is "changed again", fetched by the next run. Asking for a bounded
#: length keeps the follow-up within a byte budget, as the round's fetch is: a host cannot
#: stream bytes without end into a file of the mirror.
FOLLOW_UP_GROWTH = BATCH_BYTES
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
        self.inflight: _Flush | None = None  # at most one batch being made durable
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
        # (_as_whole, _follow_up_requests).
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
            return round_argv(
                source.root, source.start_points, per_batch=self.flush_files, tools=asked
            )

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
                    self._fail(t.remote.path, "changed again while being fetched; retry next run")
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
        owners, requests, stdin = await in_thread(_requests_of, transfers, self.piece_bytes)
        stream.send(stdin, end=True)
        if not transfers:
            await _drain_stream(stream, self.name)
            return [], []
        parser = FrameParser(self.name, marker.encode(), requests)
        handler = _FrameHandler(self, owners, requests, follow_up=False)
        await self._consume(stream, parser, handler, first)
        return handler.again, handler.recheck

    async def _fetch_again(self, transfers: Sequence[Transfer]) -> list[Transfer]:
        """Fetch ``transfers`` with a command of their own: whole ones to their end (up to
        :func:`_follow_up_length`), appends as planned, each with its head checked, a
        transcript longer than a piece in pieces (see :func:`_follow_up_requests`); returns
        those that changed again while being read (or, for an append, were found rewritten,
        or a whole one grew past what was asked)."""
        if not transfers:
            return []
        pieces = self.piece_bytes
        owners, requests = _owned(transfers, lambda t: _follow_up_requests(t, pieces))
        marker = new_marker()
        parser = FrameParser(self.name, marker.encode(), requests)
        handler = _FrameHandler(self, owners, requests, follow_up=True)

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
        self, stream: RemoteStream, parser: FrameParser, handler: _FrameHandler, first: bytes
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
        # _follow_up_requests), not for every piece of the listed size, read past after the
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
        self.inflight = _Flush(self.state, items, self.version_numbers)

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
                await in_thread(_cut_back, self.state, left)

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
                await in_thread(_cut_back, self.state, flush.items)
                raise

    async def _collect(self, flush: _Flush) -> None:
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
        await self.writes.run(lambda state: _commit(state, items))
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

    def _progress_within_file(self) -> None:
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

    def _fail(
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
                self._fail(
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
        # The transcripts the writers index (see _FrameHandler._open).
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
        it would find unchanged (:func:`_overlap_request`).

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
        requests = [_overlap_request(plan.transfers[n]) for n in returning]
        stream.send(round_fetch_stdin(requests), end=True)
        if not requests:
            await _drain_stream(stream, self.name)
            return
        parser = FrameParser(self.name, marker.encode(), requests)
        transfers = [plan.transfers[n] for n in returning]
        reads = [
            _OverlapRead(keep=_overlap_length(t), line_after=not t.verify_head) for t in transfers
        ]
        if first:
            _take_reads(reads, parser.feed(first))
        async for chunk in stream:
            _take_reads(reads, parser.feed(chunk))
            del chunk
        _take_reads(reads, parser.close())
        dest = self.options.dest
        verdicts = await in_thread(
            lambda: [
                _same_file_back(t, read, mirrored_path(dest, self.name, t.remote.path))
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


def _follow_up_length(t: Transfer) -> int:
    """The bytes a follow-up asks for of a file it fetches whole, from its listed size (see
    :data:`FOLLOW_UP_GROWTH`)."""
    return t.remote.size + max(t.remote.size, FOLLOW_UP_GROWTH)


def _follow_up_requests(t: Transfer, piece_bytes: int) -> list[FetchRequest]:
    """The requests of ``t`` in a follow-up (see :meth:`HostSync._fetch_again`).

    The file changed since the listing: its listed size says nothing of how long the read
    is, so every transcript is checked. A file copied whole is read to its end and taken as
    read: the host's digest of the whole file would also cover what was appended after the
    read, so a file that keeps growing could never agree. The end is bounded all the same
    (:func:`_follow_up_length`), so that the fetch has a budget.

    A transcript longer than a piece when listed comes in pieces, as in the round: each
    piece of the transfer's length, its listed size or the end a short read found it at
    (see :meth:`HostSync._as_whole`), the last one a whole piece long, which brings the
    growth since then that fits in it (one piece, when that end is in the first). What grew
    past it is fetched by the next round, as an append: the lines so far are a copy, and no
    piece is longer than a piece, so that a dropped connection loses one at most. One that
    is shorter by now ends in the piece its end falls in (a Short there is its end, as a
    follow-up's Short is); the pieces after it are read past. An append is cut as the
    round cuts it."""
    path = t.remote.path
    if t.mode != "whole":
        if t.pieced(piece_bytes):
            return t.requests(piece_bytes)  # each with its head checked
        return [FetchRequest(path, t.start, t.length, check=True)]
    listed = dataclasses.replace(t, length=t.remote.size)
    if not listed.pieced(piece_bytes):
        length = _follow_up_length(t)
        return [FetchRequest(path, 0, length, detect_growth=True, check=t.kind == "append")]
    if t.pieced(piece_bytes):
        pieces = t.requests(piece_bytes)
    else:  # it ends in the first piece (t.request() would be the round's request of it)
        pieces = [FetchRequest(path, 0, piece_bytes, check=True)]
    pieces[-1] = dataclasses.replace(pieces[-1], length=piece_bytes)
    return pieces


def _requests_of(
    transfers: Sequence[Transfer], piece_bytes: int
) -> tuple[list[Transfer], list[FetchRequest], bytes]:
    """The fetch requests of ``transfers`` (a transfer fetched in pieces has one per piece,
    one after another), the transfer of each, and what the round's stdin goes on with after
    its marker line to send them (:func:`round_fetch_stdin`)."""
    owners, requests = _owned(transfers, lambda t: t.requests(piece_bytes))
    return owners, requests, round_fetch_stdin(requests)


def _owned(
    transfers: Sequence[Transfer], requests_of: Callable[[Transfer], list[FetchRequest]]
) -> tuple[list[Transfer], list[FetchRequest]]:
    """The requests ``requests_of`` makes of each of ``transfers``, one after another, and
    the transfer of each (one per piece for a transfer fetched in pieces)."""
    owners: list[Transfer] = []
    requests: list[FetchRequest] = []
    for t in transfers:
        asked = requests_of(t)
        owners += [t] * len(asked)
        requests += asked
    return owners, requests


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


class _FrameHandler:
    """Frame events of one fetch stream → writer calls for the file each belongs to.

    A checked file (see :attr:`FetchRequest.check`) is finished but *held* until the host's
    digest of its head after the read: a head that changed under the read means the copy may
    be the old head with the new tail, so it is dropped and the file fetched whole again. A
    rewrite that keeps the first KiB as it was is not seen this way. A file copied whole with
    :attr:`FetchRequest.check_whole` is held the same way until the host's digest of the whole
    file agrees with the same digest of the bytes received. An append with
    :attr:`FetchRequest.check_batched` is held until its batch's digest, apart from the
    others: that one comes after the batch's last item, theirs right after their read.

    A transcript fetched in pieces (consecutive requests of one transfer, see
    :data:`PIECE_BYTES`) keeps its writer from piece to piece (:class:`_Pieces`). Each piece
    but the last, once the host's digest of the head after its read agrees, becomes a
    checkpoint of the lines so far, committed before the next piece's is handed over; each
    piece after the first checks its overlap with the bytes of the one before. Anything
    else (a digest or overlap that differs, a short read) gives the rest of the file up as
    it would give up a file, the pieces committed kept. In the follow-up, whose pieces are
    cut by a listed size the file may no longer have, a piece whose read comes short is the
    file's last, and the pieces after it are read past (:meth:`_read_past`).
    """

    def __init__(
        self,
        sync: HostSync,
        transfers: Sequence[Transfer],
        requests: Sequence[FetchRequest],
        *,
        follow_up: bool,
    ) -> None:
        self.sync = sync
        self.transfers = transfers
        self.requests = requests
        self.follow_up = follow_up
        self.writer: AppendWriter | WholeWriter | None = None
        self.index = -1
        self.again: list[Transfer] = []
        # Appends whose batch's head digest did not agree: read again one by one, checked.
        self.recheck: list[Transfer] = []
        # Finished checked files since the last digest, and the digests of their heads in order.
        self.held = _Held()
        # The same for appends checked at their batch's end (check_batched).
        self.held_in_batch = _Held()
        # The digests of the bytes of the file being read, when the host hashes it whole.
        self.whole: Hasher | None = None
        # The host's hashing tool, once a digest has named it: later bytes are hashed once.
        self.tool: Algorithm | None = None
        # The file being fetched in pieces, from its first piece's Begin to its last's commit.
        self.pieces: _Pieces | None = None
        # The follow-up's piece whose read came Short: its file's last (see _last_piece).
        self.ended = -1

    async def handle_all(self, events: Iterable[object]) -> None:
        # A chunk of small files is hundreds of files to create, write and finish (the
        # creation alone may take milliseconds): the other tasks of the event loop run
        # between them every YIELD_SECONDS. Not a place to be cancelled (the stream's next
        # read is), so that no event list is left halfway through.
        since = time.monotonic()
        for event in events:
            await self.handle(event)
            if time.monotonic() - since >= YIELD_SECONDS:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                since = time.monotonic()

    async def handle(self, event: object) -> None:
        sync = self.sync
        if isinstance(event, Data):
            if self.whole is not None:
                self.whole.update(event.data)
            if self.writer is not None:
                try:
                    self.writer.write(event.data)
                except RewriteDetected:
                    self._rewrite()
                sync.result.bytes += len(event.data)
                sync._progress_within_file()
            return
        if isinstance(event, HeadDigest):
            await self._digest(event)
            return
        index: int = event.index  # type: ignore[attr-defined]
        t = self.transfers[index]
        request = self.requests[index]
        if isinstance(event, Short) and not request.archive:
            # The file ended there (at most: a read past its end says only that it ends
            # before). Not a tar entry's: tar's copy may come short for other reasons.
            end = request.start + event.received
            ends = sync.ends
            ends[t.remote.path] = min(end, ends.get(t.remote.path, end))
        if self._read_past(index):
            self.index, self.writer, self.whole = index, None, None
            return
        if isinstance(event, Begin):
            self.index = event.index
            checked_whole = self.requests[event.index].check_whole
            self.whole = Hasher(self.tool) if checked_whole else None
            if self._piece_after(event.index):
                self._resume(t)
                return
            try:
                self.writer = await self._open(t)
                if not self._last_piece(event.index):
                    self.pieces = _Pieces(t, self.writer)
            except RewriteDetected:  # the mirrored copy is not what its checkpoint says
                self._again(t)
            except MirrorError as exc:
                if not only_this_file(exc):
                    raise  # disk full, too many open files...: every file would fail
                # This mirrored file cannot be opened (its permissions, a directory in its
                # place): it fails, its bytes are read past, and the other files go on.
                self.writer = None
                sync._fail(t.remote.path, exc.message, "mirror", exc.hint)
        elif isinstance(event, End) or (isinstance(event, Short) and self.follow_up):
            writer = self.writer
            if writer is None:
                return
            if isinstance(event, Short):
                # A follow-up's read ends at the file's end, whichever piece it falls in
                # (see _follow_up_requests): the pieces after it are read past.
                self.ended = event.index
            if not self._last_piece(event.index):
                self.writer = None
                return  # the file goes on: its lines are taken once the digest after agrees
            try:
                pending = writer.finish()
            except RewriteDetected:
                self._drop()
                self._again(t)
                return
            # Only now: a finish that raised left the writer here, so that the abort that
            # follows (the host's round fails) aborts it: its temp file removed, an append
            # cut back to its checkpoint, its file closed.
            self.writer = None
            # Where the read ended: the listed size in the round, whose reads end there. A
            # follow-up's read ends where the file did (Short), or at the end of its last
            # piece, the file maybe longer: a row that kept the listed size (and mtime) took
            # the file back as listed for one it had mirrored whole (plan._decide).
            received = event.received if isinstance(event, Short) else request.length
            pending.row.remote_size = request.start + received
            whole, self.whole = self.whole, None
            if whole is not None:
                # Only a range's digest can be due: the held list is empty, and this file's
                # digest is that of all its bytes.
                self.held.files.append((event.index, pending))
                self.held.heads = whole
                return
            # Fewer bytes than a head (a follow-up's read of a small file) came in one read:
            # nothing to check, and the host's head may have grown since.
            if len(writer.head) >= HEAD_BYTES and (request.check or request.check_batched):
                held = self.held_in_batch if request.check_batched else self.held
                held.files.append((event.index, pending))
                held.heads.update(writer.head[:HEAD_BYTES])
                return
            await self._finished(event.index, pending)
        elif isinstance(event, (Short, Changed)):
            self._drop()
            self._again(t)  # it shrank or grew while we read it: fetch it whole again
        elif isinstance(event, Failed):
            self._drop()
            failed = ReadFailedError("reading the file on the host failed midway")
            sync._fail(t.remote.path, failed.message, failed.kind, failed.hint)
        elif isinstance(event, Gone):
            # Vanished since the listing: the next round records the deletion (of what its
            # pieces committed, if it was fetched in pieces).
            self._drop_pieces_of(t)
        elif isinstance(event, Denied):
            self._drop_pieces_of(t)
            denied = PermissionDeniedError("permission denied on the host")
            sync._fail(t.remote.path, denied.message, denied.kind, denied.hint)

    def _piece_after(self, index: int) -> bool:
        """Is request ``index`` a piece of a file after its first?"""
        return index > 0 and self.transfers[index - 1] is self.transfers[index]

    def _read_past(self, index: int) -> bool:
        """Is request ``index`` a piece of a file done with before it: given up in an earlier
        piece (failed and counted so, or to be fetched whole by the follow-up, or gone), or,
        in a follow-up, after the piece its file ended in? Read past, whatever it says: a
        failure or a short read of it would count the file failed a second time, or fetch
        again a file already counted failed."""
        if not self._piece_after(index):
            return False
        ended = self.ended
        if 0 <= ended < index and self.transfers[ended] is self.transfers[index]:
            return True
        # A file that goes on has its pieces from its first piece's Begin to its last's
        # commit; none, or another file's, means it was given up since.
        return self.pieces is None or self.pieces.transfer is not self.transfers[index]

    def _last_piece(self, index: int) -> bool:
        """Is request ``index`` the last (or only) one of its file, or the follow-up's piece
        its file ended in?"""
        after = index + 1
        return (
            after == len(self.transfers)
            or self.transfers[after] is not self.transfers[index]
            or index == self.ended
        )

    def _resume(self, t: Transfer) -> None:
        """The Begin of a piece after a file's first, which goes on (see :meth:`_read_past`):
        its writer goes on, checking the overlap."""
        pieces = self.pieces
        assert pieces is not None
        self.writer = None
        try:
            pieces.writer.resume(self.requests[self.index].start)
        except RewriteDetected:
            self._drop_pieces()
            self._again(t)
            return
        self.writer = pieces.writer

    async def _piece_checked(self, event: HeadDigest) -> None:
        """The host's digest of the head after a piece of a file that goes on: when it
        agrees, the lines so far are committed (after the piece before them); else the file
        is fetched whole, its pieces committed so far kept (a rewrite keeps them as a
        version)."""
        pieces = self.pieces
        index = event.indices[0]
        if pieces is None or pieces.transfer is not self.transfers[index]:
            return  # given up in this piece (it failed, or its overlap differed)
        writer, t = pieces.writer, pieces.transfer
        heads = Hasher(self.tool)
        heads.update(writer.head[:HEAD_BYTES])
        if event.digest is not None and not heads.agrees(event.digest):
            log.info(
                "%s: %s: it changed while it was read in pieces; fetching it whole",
                self.sync.name,
                path_text(t.remote.path),
            )
            self._drop_pieces()
            self._again(t)
            return
        try:
            pending = await _checkpoint(writer)
        except RewriteDetected:
            self._drop_pieces()
            self._again(t)
            return
        except MirrorError as exc:
            if not only_this_file(exc):
                raise  # disk full, an I/O error...: every file would fail
            # The copy in its place cannot be read (a directory there, its permissions): the
            # file fails as one whose open failed, its later pieces read past (_read_past).
            self._drop_pieces()
            self.sync._fail(t.remote.path, exc.message, "mirror", exc.hint)
            return
        if pending is None:
            return  # no line ended in this piece: the next one goes on with it
        request = self.requests[index]
        # Not the listed size: the next round must not take the rest for fetched (plan._decide).
        pending.row.remote_size = request.start + request.length
        await self._finished(index, pending)

    async def _finished(self, index: int, pending: Pending) -> None:
        """Hand a file that arrived, or a piece of one, to the commit."""
        pieces = self.pieces
        if pieces is None or pieces.transfer is not self.transfers[index]:
            await self.sync.finished(pending)
            return
        try:
            placed = pieces.last is None or await self.sync.piece_committed(pieces.last)
        except BaseException:
            self._give_up(index, pending)  # a flush failed: the host's round ends
            raise
        if not placed:
            # The piece before could not be put in place (its error is said, the file
            # counted failed): the rest of the file would be appended to nothing.
            self._give_up(index, pending)
            return
        if pieces.last is not None:
            pieces.writer.confirm(pieces.last, pending)
        if pending.piece:
            pieces.last = pending
            pieces.first = pieces.first or pending
        else:
            self.pieces = None  # the last piece: the file is done
            first = pieces.first
            if first is not None:
                # Counted as its first commit found it (new, rewritten...; its flush put the
                # file in place), or grown since.
                grew = pending.row.size > first.row.size
                unchanged = first.category == "unchanged"
                pending.category = "grown" if grew and unchanged else first.category
        await self.sync.finished(pending)
        if pending.piece and pending.temp is not None:
            await self._put_in_place(pieces, pending)

    async def _put_in_place(self, pieces: _Pieces, piece: Pending) -> None:
        """Wait for the commit of ``piece``, the one that puts its file in place, before
        anything more of the file is written there (see WholeWriter.checkpoint): until
        then the file in place holds its synced lines only, what recovery claims of a file
        found renamed before its commit. Once per file, for one piece's sync.

        Kept rather than streaming on meanwhile: the next piece would have to be written
        somewhere other than the file in place (the file its bytes past the lines were moved
        to), then copied there after the commit: up to a piece more read and written per
        file, to save one sync of at most a piece, during which the host's next bytes still
        fill the channel's window. Not measured on a large file."""
        try:
            placed = await self.sync.piece_committed(piece)
        except BaseException:
            self._abandon(pieces)
            raise
        if not placed:
            self._abandon(pieces)
            return
        # Its bytes past the lines go back: up to a piece (a line that long) copied, in a
        # worker thread as the checkpoint's (see _checkpoint). A cancel that comes once it is
        # done finds the piece confirmed, and the give-up cuts back to it.
        await in_thread(pieces.writer.confirm, piece, None)
        pieces.last = None

    async def _open(self, t: Transfer) -> AppendWriter | WholeWriter:
        state = self.sync.state
        r = t.remote
        row = FileState(
            host=self.sync.name,
            path=r.path,
            kind=t.kind,
            size=0,
            remote_size=r.size,
            mtime=r.mtime,
            dev=r.dev,
            ino=r.ino,
            fingerprint=b"",
            version=t.row.version if t.row else 0,
            first_seen=t.row.first_seen if t.row else 0.0,
        )
        request = self.requests[self.index]
        if t.seed is not None:
            # A renamed file: an append to a copy of its old name's mirrored bytes. Its
            # session is indexed from the mirror at the round's end, as a new one. The copy
            # is made in a worker thread: it may be a whole session of hundreds of MB, which
            # on the event loop would hold every other host's stream for as long.
            seed = t.seed
            row.size = seed.size
            row.fingerprint = seed.fingerprint
            keep_head = request.check or request.check_batched
            return await _made_in_thread(
                lambda: SeededWriter(state, seed, t.start, row, keep_head=keep_head), self._abort
            )
        reader = self.sync.reader
        indexed = t.kind == "append" and reader is not None and reader.is_transcript(r.path)
        worker = self.sync.worker
        if worker is not None and worker.dead is not None:
            worker = None  # it failed earlier in the run: index the rest in-process
        if not self._last_piece(self.index):
            worker = None  # fetched in pieces: each piece commits its facts (FileIndexer)
        writer: AppendWriter | WholeWriter
        if t.mode == "append":
            assert t.row is not None
            row.size = t.row.size
            row.fingerprint = t.row.fingerprint
            indexer = None
            if indexed and reader is not None and worker is None:
                start = t.row.size
                facts = self.sync.continuable_facts_of(r.path, start) if start else None
                indexer = indexer_for(reader, self.sync.name, r.path, start=start, facts=facts)
            check = request.check or request.check_batched
            writer = AppendWriter(state, t.row, t.start, row, indexer, keep_head=check)
        else:
            whole_indexer = (
                FileIndexer(reader, self.sync.name, r.path)
                if indexed and reader is not None and worker is None
                else None
            )
            writer = WholeWriter(
                state,
                row,
                lines_only=t.kind == "append",
                category=t.category,
                back=t.back,
                indexer=whole_indexer,
            )
        if indexed and reader is not None and worker is not None:
            start = row.size if t.mode == "append" else 0
            facts = self.sync.continuable_facts_of(r.path, start) if start else None
            if start > 0 and facts is None:
                return writer  # no facts to continue: indexed at the round's end (indexer_for)
            writer.job = worker.job(
                fd=writer.handle.fileno(),
                host=self.sync.name,
                path=r.path,
                fmt=reader.name,
                start=start,
                facts=facts,
                # No stored facts: a whole fetch (or an append to an empty file), whose marks
                # start afresh.
                fresh=facts is None,
            )
        return writer

    async def _digest(self, event: HeadDigest) -> None:
        """Commit the held files if their heads are as the host hashed them after the read."""
        batch = self.requests[event.indices[0]].check_batched
        if event.digest is not None:
            self.tool = event.digest.algorithm
        if self._read_past(event.indices[0]):
            return
        if not self._last_piece(event.indices[0]):
            await self._piece_checked(event)
            return
        if batch:
            group, self.held_in_batch = self.held_in_batch, _Held(heads=Hasher(self.tool))
        else:
            group, self.held = self.held, _Held(heads=Hasher(self.tool))
        held, heads = group.files, group.heads
        # A checked file that did not end (shrank, failed...) is in the host's digest but not
        # in ours: the others cannot be told apart from it, and are fetched again too.
        complete = [index for index, _ in held] == list(event.indices)
        if event.digest is None or (complete and heads.agrees(event.digest)):
            for n, (index, pending) in enumerate(held):
                t = self.transfers[index]
                if event.digest is None and t.verify_head:
                    # The host cannot hash (neither md5sum nor cksum), and a file of its old
                    # size with another mtime had only its head left to show a rewrite in
                    # place: it is fetched whole and compared instead.
                    self._give_up(index, pending)
                    self._again(t)
                    continue
                try:
                    await self._finished(index, pending)
                except BaseException:
                    self.held.files += held[n + 1 :]  # a flush failed: abort() gives these up
                    raise
            return
        held = await self._commit_replaced(held, event)
        if batch:
            # Which of the batch's appends has another head (or whether the one that did not
            # end had) is not known: each is read again as planned, with a head check of its
            # own, and only one found rewritten is then fetched whole.
            why = "its batch's heads were rewritten or could not be compared; checking it alone"
        elif complete:
            why = "it changed while it was read; fetching it whole"
        else:
            why = "its batch's heads could not be compared (an entry of it did not end); "
            why += "fetching it whole"
        for index, pending in held:
            t = self.transfers[index]
            log.info("%s: %s: %s", self.sync.name, path_text(t.remote.path), why)
            self._give_up(index, pending)
            if batch:
                self.recheck.append(t)
            else:
                self._again(t)

    async def _commit_replaced(
        self, held: list[tuple[int, Pending]], event: HeadDigest
    ) -> list[tuple[int, Pending]]:
        """Commit the held files whose name the host found on another file than the one
        listed, and return the others.

        The host hashed those heads by name after the reads. A transcript compacted meanwhile
        (a new file renamed over it) has another head there, but its bytes came from the
        file listed, opened before the rename, or from the new file when the rename came
        first, which its overlap with the mirrored tail then vouched for. Dropping such a
        read would lose the lines compaction removed: committed, the next round finds the
        new inode, keeps this copy as a version and fetches the new file whole. A file whose
        head had to be verified (its size unchanged, another mtime) is not committed so."""
        inodes = event.inodes
        if inodes is None:
            return held
        now = dict(zip(event.indices, inodes, strict=True))
        kept: list[tuple[int, Pending]] = []
        for n, (index, pending) in enumerate(held):
            t = self.transfers[index]
            if index not in now or now[index] == t.remote.ino or t.verify_head:
                kept.append((index, pending))
                continue
            log.info(
                "%s: %s: replaced on the host since it was listed; committed as it was read",
                self.sync.name,
                path_text(t.remote.path),
            )
            try:
                await self.sync.finished(pending)
            except BaseException:
                self.held.files += kept + held[n + 1 :]  # abort() gives these up
                raise
        return kept

    def _give_up(self, index: int, pending: Pending) -> None:
        self.sync.result.gave_up = True
        t = self.transfers[index]
        pieces = self.pieces
        if pieces is not None and pieces.transfer is t:
            # A piece of a file fetched in pieces, not handed over: the piece before it
            # failed, or its commit could not be waited for. The file is given up, cut back
            # to its checkpoint (its temp file removed if none was).
            self._withdraw(pieces)
            if pending.piece:
                give_up(pending, None)
                self._abort(pieces.writer)
            else:  # the last piece: its descriptor is the writer's
                give_up(pending, pieces.writer.committed)
            return
        give_up(pending, t.row.size if t.mode == "append" and t.row is not None else None)

    def _withdraw(self, pieces: _Pieces) -> None:
        """No more of ``pieces``' file comes: when the piece handed over last will never be
        committed (its flush is over and failed), the writer cuts back to what is committed,
        not to that piece; while its flush runs, that flush decides (see
        :meth:`_left_to_its_flush`)."""
        self.sync.result.gave_up = True
        self.pieces = None
        if pieces.last is not None and self.sync.never_committed(pieces.last):
            pieces.writer.withdrawn()
        else:
            self._left_to_its_flush(pieces)

    @staticmethod
    def _left_to_its_flush(pieces: _Pieces) -> None:
        """``pieces``' file is given up while the flush of its last piece handed over runs:
        the writer's abort cuts back to that piece's end, which the flush may yet commit.
        Should it not, the file is cut back to the checkpoint before the piece as soon as
        that is known (``_cut_back``); without this it stayed longer until the next open's
        recovery. A piece that puts its file in place is left to its flush alone: nothing
        more of the file was written past its lines (see ``WholeWriter.checkpoint``)."""
        last = pieces.last
        if last is not None and not last.committed and last.temp is None:
            last.cut_back = pieces.writer.confirmed

    def _abandon(self, pieces: _Pieces) -> None:
        """Give the file up after a piece of it that was handed over was not committed."""
        self._withdraw(pieces)
        if self.writer is pieces.writer:
            self.writer = None
        self._abort(pieces.writer)

    def _abort(self, writer: AppendWriter | WholeWriter) -> None:
        """``writer.abort()`` in a path that already fails, or fails its file: its error must
        not hide that one (what abort leaves past the checkpoint, recovery cuts back)."""
        self.sync.result.gave_up = True
        try:
            writer.abort()
        except OSError as exc:
            log.warning("%s: could not clean up a partial fetch: %s", self.sync.name, exc)

    def _rewrite(self) -> None:
        self._drop()
        self._again(self.transfers[self.index])

    def _again(self, t: Transfer) -> None:
        """Fetch ``t`` whole in the follow-up (once: a rewrite seen mid-file ends Short too)."""
        if not any(other is t for other in self.again):
            self.again.append(t)

    def _drop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            self.sync.result.gave_up = True
            pieces = self.pieces
            if pieces is not None and pieces.writer is writer:
                self.pieces = None  # its file fails or is fetched again: no piece comes
                self._left_to_its_flush(pieces)
            writer.abort()

    def _drop_pieces_of(self, t: Transfer) -> None:
        if self.pieces is not None and self.pieces.transfer is t:
            self._drop_pieces()

    def _drop_pieces(self) -> None:
        """Give the file being fetched in pieces up, between two of them: cut back to its
        last piece handed to the commit (which stays: its digest agreed)."""
        pieces, self.pieces = self.pieces, None
        if pieces is not None:
            self.sync.result.gave_up = True
            if self.writer is pieces.writer:
                self.writer = None
            self._left_to_its_flush(pieces)
            self._abort(pieces.writer)

    def abort_naming(self, exc: RemoteSyncError) -> None:
        """:meth:`abort`, and name in ``exc`` the file it interrupted (when it names none)."""
        if exc.path is None and self.writer is not None:
            exc.path = path_text(self.transfers[self.index].remote.path)
        self.abort()

    def abort(self) -> None:
        held = self.held.files + self.held_in_batch.files
        self.held, self.held_in_batch = _Held(), _Held()
        for index, pending in held:
            self._give_up(index, pending)
        try:
            self._drop()
            self._drop_pieces()
        except OSError as exc:  # the abort must not hide the error that caused it
            log.warning("%s: could not clean up a partial fetch: %s", self.sync.name, exc)


def _cut_back(state: MirrorState, items: list[Pending]) -> None:
    """Cut the file of each piece of ``items`` not committed and given up meanwhile (see
    :attr:`Pending.cut_back`) back to the checkpoint before it (in a worker thread). Its
    descriptor may be closed by now (a flush syncs and closes it): the file is opened again
    by its path, which no other writer renames anything onto (a flush after this one would,
    and none starts before this one is collected). Only ever shorter; a failure is logged,
    and the next open's recovery cuts back all the same."""
    for item in items:
        if item.cut_back is None or item.committed:
            continue
        row = item.row
        try:
            with open(state.local_path(row.host, row.path), "r+b") as file:
                if os.fstat(file.fileno()).st_size > item.cut_back:
                    file.truncate(item.cut_back)
        except OSError as exc:
            log.warning(
                "%s: %s: could not cut the file back to its checkpoint (the next run does): %s",
                row.host,
                path_text(row.path),
                exc,
            )


async def _checkpoint(writer: AppendWriter | WholeWriter) -> Pending | None:
    """``writer.checkpoint()`` in a worker thread: a rewrite's piece is compared with a longer
    mirrored copy, and the piece that puts a file in place copies its bytes past the lines
    aside, each up to a piece (64 MiB) read and written, which on the event loop would hold
    every other host's stream for as long. Nothing else touches the writer meanwhile: its
    handler waits here, and the host's stream with it.

    A cancel raised once the thread is done (``in_thread`` waits for it) takes back the
    checkpoint it made, never handed to the batch: its descriptor closed, the temp file it
    would have put in place removed, and the writer's checkpoint back to what it was, the
    piece handed over last, which the give-up that follows cuts back to. Not to the piece
    confirmed before that one: the flush the round's end waits for may commit the piece
    handed over last, and the file would then be shorter than its checkpoint."""
    before = writer.committed

    def take_back(pending: Pending | None) -> None:
        if pending is not None:
            discard([pending])
            writer.taken_back(before)

    return await _made_in_thread(writer.checkpoint, take_back)


async def _made_in_thread(make: Callable[[], T], undo: Callable[[T], None]) -> T:
    """``make()`` in a worker thread (:func:`in_thread`). A cancel raised once the thread is
    done finds what it made for a task that goes no further: ``undo`` it (descriptors
    closed, temp files removed) before the cancel goes on."""
    made: list[T] = []
    try:
        await in_thread(lambda: made.append(make()))
    except BaseException:
        if made:
            undo(made[0])
        raise
    return made[0]


@dataclass
class _Pieces:
    """A file fetched in pieces: its writer, kept from piece to piece, and the pieces of it
    handed to the commit (the first is the one that put it in place, the last the one the
    next piece waits for)."""

    transfer: Transfer
    writer: AppendWriter | WholeWriter
    first: Pending | None = None
    last: Pending | None = None


@dataclass
class _Held:
    """Finished checked files awaiting one digest, and the digests of their heads in order."""

    files: list[tuple[int, Pending]] = field(default_factory=list)
    heads: Hasher = field(default_factory=Hasher)


def _overlap_request(t: Transfer) -> FetchRequest:
    """A dry run's read of a returning file's overlap, its head hashed on the host after it
    (when the mirror holds a whole head to compare it with). A file of its old size (the
    plan verifies its head) is read to its listed end: past the mirrored lines there is at
    most the partial last line of the last round, which a real run appends only if it now
    ends. A file that grew more is read no further than the overlap: it is taken to grow."""
    assert t.row is not None
    length = t.length if t.verify_head else _overlap_length(t)
    return FetchRequest(t.remote.path, t.start, length, check=t.row.size >= HEAD_BYTES)


def _overlap_length(t: Transfer) -> int:
    """How many of the bytes an append of ``t`` reads the mirror holds already."""
    assert t.row is not None
    return t.row.size - t.start


@dataclass
class _OverlapRead:
    """What a dry run's read of a returning file found: its overlap (the first ``keep``
    bytes), and whether a line end came after it. The bytes after the overlap are not kept:
    a partial last line may be long."""

    keep: int
    data: bytearray = field(default_factory=bytearray)
    #: A line end after the overlap (a real run appends a line: the file grows in the
    #: mirror); taken as read for a file that grew past its last partial line.
    line_after: bool = False
    ended: type[object] | None = None  # End, Short, Gone...
    digest: Digest | None = None  # the host's digest of its head after the read


def _take_reads(reads: list[_OverlapRead], events: Iterable[object]) -> None:
    for event in events:
        if isinstance(event, HeadDigest):
            reads[event.indices[0]].digest = event.digest
        elif isinstance(event, Data):
            read = reads[event.index]
            chunk = event.data
            room = read.keep - len(read.data)
            if room > 0:
                read.data += chunk[:room]
                chunk = chunk[room:]
            read.line_after = read.line_after or rfind_newline(memoryview(chunk)) >= 0
        elif isinstance(event, (End, Short, Changed, Failed, Gone, Denied)):
            reads[event.index].ended = type(event)


def _same_file_back(t: Transfer, read: _OverlapRead, local: Path) -> bool:
    """Would a real run append to ``t`` (a file back on a deleted one's inode), as the plan
    does, rather than fetch it whole as new? It checks the same things (see
    :class:`_FrameHandler`): the overlap as the mirror holds it, and when the overlap does
    not reach the file's start, the head the host hashes against the mirror's (where the
    host cannot hash, an append's head goes unchecked, but a file of its old size is fetched
    whole). A file unreadable or failing since the listing is left as planned: the real run
    would report it so (one gone since is dropped from the dry run's list by the caller)."""
    row = t.row
    assert row is not None
    if read.ended in (Gone, Denied, Failed):
        return True
    if read.ended is not End:
        return False  # it shrank since the listing: a real run fetches it whole
    try:
        with open(local, "rb") as mirrored:
            overlap = Overlap.read(mirrored, row.size, t.start, head=True)
        overlap.take(memoryview(read.data))
    except (OSError, RewriteDetected):
        return False  # nothing (or not this) to append to: a real run fetches it whole
    if not overlap.whole:
        return False
    if row.size < HEAD_BYTES:
        return True  # the overlap was all of it
    if read.digest is None:
        return not t.verify_head
    hasher = Hasher()
    hasher.update(overlap.head)
    return hasher.agrees(read.digest)


def _commit(state: MirrorState, items: list[Pending]) -> None:
    """Commit durable items' checkpoints and index rows in one transaction."""
    db = state.db

    def write_index() -> None:
        rows = IndexRows()
        for item in items:
            if item.index is None:
                # No facts for these bytes (a --no-index run, a session the index could not
                # continue, a file that is no transcript): a row describing older bytes would
                # be wrong. The next indexed round's end makes it again from the mirror
                # (_index_the_unindexed).
                rows.delete(item.row.host, item.row.path)
            elif item.row.size == 0:
                # Not one whole line yet (or any more): no session, as a rebuild of the mirror
                # has none for an empty file.
                rows.delete(item.row.host, item.row.path)
            else:
                item.index.put_into(rows)
        rows.write(db)

    # A version's keep time is this commit's: the copy was moved aside by the flush just made
    # durable, and the state counts it from now on.
    kept = [(item.row.host, item.row.path, item.row.version) for item in items if item.versioned]
    state.commit((item.row for item in items), also=write_index, kept=kept)


class StateWrites:
    """The run's writes to the state database, each in a worker thread, one at a time.

    A flush's commit holds a thousand files' checkpoints and index rows: tens of
    milliseconds, and more while the disk is busy with the next batch's syncs. Made on the
    event loop's thread, it froze every other task of an app that syncs that long. Here every
    write (recovery, checkpoints, index rows, hosts) runs in a worker thread on a connection
    of its own, the writes of all hosts in turn (SQLite has one writer at a time: none waits
    for its lock on the loop's thread). The state's own connection stays on the loop's
    thread, where it only reads, and sees what is committed.

    It also lends the hosts' reads made in worker threads (a plan's checkpoints, the files
    the index lacks) connections of their own (:meth:`reading`), opened once for the run and
    kept, not once per read: an open (:meth:`~.state.MirrorState.for_thread`) and its first
    statement's reading of the schema cost some 0.11 ms, two per host a round.
    """

    def __init__(self, state: MirrorState) -> None:
        self.state = state
        self.lock = anyio.Lock()
        self.writer: MirrorState | None = None  # opened by the first write
        #: Connections opened for reads and not in use; as many as reads ran at once.
        self._readers: list[MirrorState] = []
        self._readers_lock = threading.Lock()
        self._keep_readers = True  # until close
        self.closed = False

    async def run(self, write: Callable[[MirrorState], T]) -> T:
        """``write(state)`` in a worker thread, after the writes asked for before it. Once
        asked for, a write is made: a cancellation comes after it."""
        with anyio.CancelScope(shield=True):
            async with self.lock:
                done = await in_thread(self._write, write)
        return done

    def _write(self, write: Callable[[MirrorState], T]) -> T:
        if self.writer is None:
            self.writer = self.state.for_thread()
        return write(self.writer)

    @contextlib.contextmanager
    def reading(self) -> Iterator[MirrorState]:
        """A connection of its own for a read in a worker thread, given back after it.

        Such a connection holds no transaction between reads (a read reads each of its
        statements to its end, which ends it), so every read sees what is committed, as one
        just opened would; the files it reads are those the state's open looked at
        (for_thread), as the writes' connection's. One a read failed on is closed, not given
        back: it might still hold a statement, and with it an old snapshot."""
        with self._readers_lock:
            reader = self._readers.pop() if self._readers else None
        if reader is None:
            reader = self.state.for_thread()
        try:
            yield reader
        except BaseException:
            reader.close()
            raise
        with self._readers_lock:
            if self._keep_readers:
                self._readers.append(reader)
                return
        reader.close()  # the run's state closed meanwhile: not kept for a read to come

    def close(self) -> None:
        """Close the reads' and the writes' connections, then the state (once)."""
        if self.closed:
            return
        with self._readers_lock:
            readers, self._readers = self._readers, []
            self._keep_readers = False
        for reader in readers:
            reader.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.state.close()
        self.closed = True


@contextlib.asynccontextmanager
async def _opened(state: MirrorState) -> AsyncIterator[StateWrites]:
    """``state`` opened, and its writes; all closed at the end. In worker threads: opening
    may upgrade the schema, and the last connection's close copies the WAL into the database
    and syncs it (up to some 4 MB)."""
    writes = StateWrites(state)
    try:
        await in_thread(state.open)
        yield writes
    finally:
        try:
            with anyio.CancelScope(shield=True):
                await in_thread(writes.close)
        finally:
            writes.close()  # what is still open: asyncio cancelled the task before the thread


async def in_thread(work: Callable[[*Args], T], *args: *Args) -> T:
    """``work(*args)`` in a worker thread, awaited to its end whatever cancels the task.

    anyio's wait for a thread holds off anyio's cancellations but not asyncio's own
    ``Task.cancel()`` (an app cancelling the task that syncs, ``asyncio.wait_for``'s
    timeout): that would leave the thread running while the caller unwinds and closes the
    state (and releases the destination's lock) under it. A task group is left only once its
    tasks are done, so such a cancel is raised when the thread has finished. What ``work``
    raises is raised as it is (not in the group's ExceptionGroup).
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            outcome.append(await anyio.to_thread.run_sync(lambda: work(*args)))
        except Exception as exc:
            failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    if failure:
        raise failure[0]
    return outcome[0]


@dataclass
class SyncMemory:
    """What a process that syncs one destination again and again (the agent) keeps between
    its syncs: what its last sync left clean (:class:`~.state.CleanClose`), whose hosts the
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
        writes = await stack.enter_async_context(_opened(state))
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
        # A JSON string is a TOML basic string too, a root's quotes and backslashes escaped.
        entry = f"format = {json.dumps(fmt)} and root = {json.dumps(root, ensure_ascii=False)}"
        again = f"set {entry} in its inventory entry to sync that source again"
        apart = "or give this one another host name, or sync it into another destination"
    return f"{again}; {apart}"


class _Flush:
    """One batch being made durable in a thread of its own."""

    def __init__(self, state: MirrorState, items: list[Pending], numbers: VersionNumbers) -> None:
        self.items = items
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.failed: list[tuple[Pending, MirrorError]] = []
        token = anyio.lowlevel.current_token()

        def run() -> None:
            try:
                durable = make_durable(state, items, numbers)
                self.items, self.failed = durable.done, durable.failed
            except BaseException as exc:  # handed to the event loop, raised there
                self.error = exc
            finally:
                # RuntimeError: the event loop is gone, nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run_sync(self.done.set, token=token)

        threading.Thread(target=run, name="remote-sync-flush", daemon=True).start()

    def ready(self) -> bool:
        """Durable, and every index result of the batch is in (waiting would not block)."""
        if not self.done.is_set():
            return False
        return all(item.job is None or item.job.done.is_set() for item in self.items)

    async def wait(self) -> tuple[list[Pending], list[tuple[Pending, MirrorError]]]:
        """The items made durable and those that could not be put in place."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.items, self.failed


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


__all__ = ["HostRound", "HostSync", "MirrorError", "SyncOptions", "sync_fleet"]
