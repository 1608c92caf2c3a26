"""Indexing in a separate process, off the byte path of a sync.

What it owns: the index worker (``python -m remote_sync.index.worker FD``) and the parent's
side of it, :class:`IndexWorker` and :class:`IndexJob`. Decoding holds the GIL, so a thread
would not help: a process decodes on a free core while the parent receives and writes.

The parent sends nothing but offsets. When a writer opens a transcript it sends the job (host,
path, format, where the new bytes start and the stored facts they continue) together with a
copy of the file's descriptor (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` socket pair, one message
per datagram). The worker reads the file through that descriptor with ``pread``, so a rename of
the temp file or the writer closing its handle changes nothing, and the bytes come from the
page cache: the parent copies none of them. As the writer goes it says "lines up to offset N are
written" (every few MiB and at the end); at the end the worker answers with the session's facts
and page marks, which the engine commits with the file's checkpoint, exactly as the in-process
indexer's. The index therefore covers exactly the committed bytes: the writer only ever reports
line ends, the same ends it truncates the file to.

If the worker dies, hangs or answers something that does not add up (the wrong end offset, a
byte count that does not match), every job it had fails with :class:`IndexWorkerError` and the
engine indexes those files in-process from the durable mirror instead; later files of the run
are indexed in-process too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from .facts import SessionFacts
from .update import FileIndexer, IndexUpdate

log = logging.getLogger(__name__)

#: A worker that has jobs to answer and says nothing for this long is taken for hung.
IDLE_TIMEOUT = 60.0
#: Bytes read from the file per ``pread``.
READ_BLOCK = 1 << 20
_MAX_MESSAGE = 1 << 20
#: The parent's receive buffer: answers are a few KiB (facts and page marks).
_RECV_BYTES = 256 * 1024


class Open(msgspec.Struct, tag="open", array_like=True):
    job: int
    format: str
    host: str
    path: bytes
    start: int
    facts: bytes | None  # the stored facts (JSON) an append continues; None: a fresh session
    fresh: bool


class Written(msgspec.Struct, tag="written", array_like=True):
    job: int
    end: int  # bytes [.., end) are in the file and end at a line end


class Finish(msgspec.Struct, tag="finish", array_like=True):
    job: int
    end: int


class Drop(msgspec.Struct, tag="drop", array_like=True):
    job: int


class Done(msgspec.Struct, tag="done", array_like=True):
    job: int
    end: int
    facts: bytes
    marks: list[tuple[int, int]]


class Failed(msgspec.Struct, tag="failed", array_like=True):
    job: int
    message: str


ToWorker = Open | Written | Finish | Drop
FromWorker = Done | Failed

_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_facts_json = msgspec.json.Encoder()
_facts_from_json = msgspec.json.Decoder(SessionFacts)


class IndexWorkerError(Exception):
    """The worker could not index a job (it died, hung, or answered nonsense)."""


# -- the worker process ---------------------------------------------------------------------


class _WorkerJob:
    def __init__(self, msg: Open, fd: int) -> None:
        from ..formats.readers import get_reader

        facts = _facts_from_json.decode(msg.facts) if msg.facts is not None else None
        self.fd = fd
        self.indexer = FileIndexer(
            get_reader(msg.format), msg.host, msg.path, start=msg.start, facts=facts
        )
        self.indexer.update.fresh = msg.fresh
        self.pos = msg.start

    def advance(self, end: int) -> None:
        while self.pos < end:
            block = os.pread(self.fd, min(READ_BLOCK, end - self.pos), self.pos)
            if not block:
                raise IndexWorkerError(f"the file ends at {self.pos}, before {end}")
            self.pos += len(block)
            self.indexer.feed(block)

    def close(self) -> None:
        os.close(self.fd)


def serve(sock: socket.socket) -> None:
    """The worker's loop: jobs in, facts out, until the parent closes its end."""
    jobs: dict[int, _WorkerJob] = {}
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        except ConnectionResetError:
            return
        if not data:
            return  # the parent is done (or gone)
        msg = _to_worker.decode(data)
        if isinstance(msg, Open):
            jobs[msg.job] = _WorkerJob(msg, fds[0])
            continue
        for fd in fds:  # only Open carries one
            os.close(fd)
        job = jobs.get(msg.job)
        if job is None:
            continue  # failed earlier (already answered) or dropped
        reply: FromWorker | None = None
        try:
            if isinstance(msg, Written):
                job.advance(msg.end)
            elif isinstance(msg, Finish):
                job.advance(msg.end)
                decoder = job.indexer.decoder
                if decoder.committed_offset != msg.end or decoder.pending_bytes:
                    raise IndexWorkerError(
                        f"the lines end at {decoder.committed_offset}, not at {msg.end}"
                    )
                update = job.indexer.result()
                reply = Done(msg.job, msg.end, _facts_json.encode(update.facts), update.marks)
        except Exception as exc:  # one bad file must not stop the others
            reply = Failed(msg.job, f"{type(exc).__name__}: {exc}")
        if reply is not None or isinstance(msg, Drop):
            jobs.pop(msg.job).close()
        if reply is not None:
            sock.sendall(_encoder.encode(reply))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The parent starts us in a process group of our own, which a terminal's Ctrl-C does not
    # reach; a SIGINT sent to us all the same is ignored too. The parent turns Ctrl-C into a
    # cancellation and closes our socket, which is how we stop (no traceback on the terminal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent went away; it indexes in-process or is gone
    finally:
        sock.close()
    return 0


# -- the parent's side ----------------------------------------------------------------------


class IndexJob:
    """The parent's handle on one transcript being indexed by the worker."""

    def __init__(
        self,
        worker: IndexWorker,
        number: int,
        host: str,
        path: bytes,
        fmt: str,
        start: int,
        facts: SessionFacts | None,
        fresh: bool,
    ) -> None:
        self.worker = worker
        self.number = number
        self.host = host
        self.path = path
        self.format = fmt
        self.start = start
        self.fresh = fresh
        # What the answer must add up to: the facts it continues, as they were.
        self.facts_before = _facts_json.encode(facts) if facts is not None else None
        self.bytes_before = facts.bytes if facts is not None else 0
        self.end: int | None = None
        self.done = anyio.Event()
        self.update: IndexUpdate | None = None
        self.error: str | None = None

    def written(self, end: int) -> None:
        """Lines up to ``end`` are in the file (flushed to the kernel)."""
        self.worker._send(Written(self.number, end))

    def finish(self, end: int) -> None:
        """The file's committed size will be ``end``: index up to there and answer."""
        self.end = end
        self.worker.unanswered.add(self.number)
        self.worker._send(Finish(self.number, end))

    def drop(self) -> None:
        """The file will not be committed: forget the job."""
        if not self.done.is_set():
            self._fail("dropped")
            self.worker._send(Drop(self.number))
        self.worker.jobs.pop(self.number, None)
        self.worker.unanswered.discard(self.number)

    async def result(self) -> IndexUpdate:
        """The session's facts up to ``end``; raises :class:`IndexWorkerError` if it failed."""
        await self.done.wait()
        if self.update is None:
            raise IndexWorkerError(self.error or "no answer")
        return self.update

    def starting_facts(self) -> SessionFacts | None:
        """A fresh copy of the facts this job continues (for indexing it in-process)."""
        return _facts_from_json.decode(self.facts_before) if self.facts_before else None

    def _answer(self, msg: FromWorker) -> None:
        if self.done.is_set():
            return
        if isinstance(msg, Failed):
            self._fail(msg.message)
            return
        facts = _facts_from_json.decode(msg.facts)
        expected = self.bytes_before + (msg.end - self.start)
        if msg.end != self.end or facts.bytes != expected:
            self._fail(
                f"answered for {msg.end} bytes ({facts.bytes} indexed), "
                f"expected {self.end} ({expected})"
            )
            return
        self.update = IndexUpdate(
            self.host, self.path, self.format, facts, list(msg.marks), fresh=self.fresh
        )
        self.done.set()

    def _fail(self, message: str) -> None:
        self.error = message
        self.done.set()


class IndexWorker:
    """One worker process and the jobs it has; shared by the hosts of a run.

    Use :meth:`start` once (inside a task group that outlives the jobs), then :meth:`job` from
    the event loop's thread, and :meth:`aclose` at the end.
    """

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "remote_sync.index.worker"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.dead: str | None = None  # why it is unusable, once it is
        self.jobs: dict[int, IndexJob] = {}
        self.unanswered: set[int] = set()  # finished jobs whose answer has not come yet
        self.next_number = 0
        self.outbox: deque[tuple[bytes, int | None]] = deque()
        self.wake = anyio.Event()
        self.scopes: list[anyio.CancelScope] = []

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [*self.argv, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                # Not in the terminal's foreground group: a Ctrl-C there would reach the
                # worker while it starts, before it can ignore it, and print a traceback.
                process_group=0,
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        tg.start_soon(self._shielded, self._receive)
        tg.start_soon(self._shielded, self._send_loop)

    async def _shielded(self, loop: Callable[[], Awaitable[None]]) -> None:
        # Hosts wait for answers under a shield while a run is cancelled; the loops that bring
        # the answers must keep running until aclose() stops them.
        with anyio.CancelScope(shield=True) as scope:
            self.scopes.append(scope)
            await loop()

    def job(
        self,
        *,
        fd: int,
        host: str,
        path: bytes,
        fmt: str,
        start: int,
        facts: SessionFacts | None,
        fresh: bool,
    ) -> IndexJob:
        """A job for the file open as ``fd`` (the worker gets its own copy of it)."""
        number = self.next_number
        self.next_number += 1
        job = IndexJob(self, number, host, path, fmt, start, facts, fresh)
        self.jobs[number] = job
        if self.dead is not None:
            job._fail(self.dead)
            return job
        self._send(Open(number, fmt, host, path, start, job.facts_before, fresh), fd)
        return job

    # -- sending: never blocks the event loop; what does not fit waits in the outbox --------

    def _send(self, msg: ToWorker, fd: int | None = None) -> None:
        if self.dead is not None or self.sock is None:
            return
        data = _encoder.encode(msg)
        if not self.outbox:
            try:
                self._sendmsg(data, fd)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                self._die(f"the index worker is gone ({exc.strerror or exc})")
                return
        # The descriptor may be closed by its writer before the message leaves: keep a copy.
        self.outbox.append((data, os.dup(fd) if fd is not None else None))
        self.wake.set()

    def _sendmsg(self, data: bytes, fd: int | None) -> None:
        assert self.sock is not None
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    async def _send_loop(self) -> None:
        while self.dead is None:
            if not self.outbox:
                await self.wake.wait()
                self.wake = anyio.Event()
                continue
            data, fd = self.outbox[0]
            try:
                self._sendmsg(data, fd)
            except BlockingIOError:
                assert self.sock is not None
                await anyio.wait_writable(self.sock)
                continue
            except OSError as exc:
                self._die(f"the index worker is gone ({exc.strerror or exc})")
                return
            self.outbox.popleft()
            if fd is not None:
                os.close(fd)

    # -- receiving ------------------------------------------------------------------------

    async def _receive(self) -> None:
        sock = self.sock
        assert sock is not None
        while self.dead is None:
            # Only answers owed make silence suspicious: a file may stream for minutes.
            timeout = IDLE_TIMEOUT if self.unanswered else None
            with anyio.move_on_after(timeout) as scope:
                await anyio.wait_readable(sock)
            if scope.cancelled_caught:
                self._die(f"the index worker answered nothing for {IDLE_TIMEOUT:.0f} s")
                return
            while True:
                try:
                    data = sock.recv(_RECV_BYTES)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._die(f"the index worker is gone ({exc.strerror or exc})")
                    return
                if not data:
                    self._die(f"the index worker exited ({self._exit_status()})")
                    return
                try:
                    msg = _from_worker.decode(data)
                except msgspec.DecodeError as exc:
                    self._die(f"the index worker sent an unreadable answer ({exc})")
                    return
                job = self.jobs.pop(msg.job, None)
                self.unanswered.discard(msg.job)
                if job is not None:
                    job._answer(msg)

    def _exit_status(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        return "still running" if code is None else f"status {code}"

    def _die(self, reason: str) -> None:
        """Give up on the worker: every job it has fails; it is killed."""
        if self.dead is not None:
            return
        log.warning("%s; indexing in-process instead", reason)
        self._stop(reason, reason)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    async def aclose(self) -> None:
        """Let the worker exit (it sees the end of its input), then reap it."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        self._die_quietly()
        proc = self.proc
        if proc is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(proc.wait, 5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await anyio.to_thread.run_sync(proc.wait)
        for scope in self.scopes:
            scope.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _die_quietly(self) -> None:
        if self.dead is None:
            self._stop("closed", "the index worker was closed")

    def _stop(self, dead: str, why: str) -> None:
        """Take no more jobs (``dead`` says why): every job open fails with ``why``, and the
        descriptors still waiting to be sent are closed."""
        self.dead = dead
        for job in self.jobs.values():
            job._fail(why)
        self.jobs.clear()
        while self.outbox:
            _data, fd = self.outbox.popleft()
            if fd is not None:
                os.close(fd)
        self.wake.set()


if __name__ == "__main__":
    sys.exit(main())
