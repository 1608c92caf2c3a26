"""exec_streaming: run a remote command and consume its stdout as a bounded stream of chunks.

What it owns: one SSH channel from opening to closing, the queue of its stdout that the
consumer iterates in chunks, its exit status and a bounded tail of its stderr, the idle timeout,
and stopping the remote process when the consumer cancels or leaves early.

Backpressure: asyncssh hands us packets in a callback and we queue them; the SSH window is
re-opened only for what the consumer has taken (:mod:`.flow`), so the remote writer blocks once
``window`` bytes are unconsumed (the credit follows the pool's share for the channels open at
the moment, so ``window`` shrinks as other channels open and grows back, up to the pool's
``window``, as they close). The consumer takes chunks of up to ``chunk_size`` straight from that
queue, so memory per stream is bounded by about ``window + chunk_size`` whatever the output size
or the consumer's pace. Where asyncssh's internals differ, the queue pauses the channel at
``high_water`` bytes instead, which bounds a stream by about ``2 * window`` (see
``_Channel.take``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import asyncssh

from ..cancel import CancelRegistry, CancelToken, default_registry
from ..errors import (
    ConnectionLostError,
    IdleTimeoutError,
    RemoteCommandError,
    RemoteSyncError,
    TransferCancelledError,
)
from .endpoint import Endpoint
from .failures import classify
from .flow import ConsumerCredit
from .pool import SSHPool
from .remote import (
    IDLE_TIMEOUT,
    PID_MARKER,
    STDERR_TAIL_BYTES,
    kill_group_command,
    wrapped_command,
)

log = logging.getLogger(__name__)

#: A command's argv, or a function making it for the connection it will run on.
Argv = Sequence[str] | Callable[[asyncssh.SSHClientConnection], Sequence[str]]

#: Pauses before re-asking a server that refused a channel (about 3 s in all: under load sshd
#: took longer than 0.6 s to free the slots of sessions that had already closed).
REFUSAL_BACKOFF = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5)
#: OpenSSH answers "no more sessions" (MaxSessions) with OPEN_CONNECT_FAILED, "open failed".
_TRANSIENT_REFUSALS = (
    asyncssh.OPEN_CONNECT_FAILED,
    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
    asyncssh.OPEN_RESOURCE_SHORTAGE,
)
#: How long a signalled remote process gets to exit before the kill fallback is used.
SIGNAL_GRACE = 0.5
#: Upper bound on the remote clean-up after a cancel (it runs shielded).
CLEANUP_TIMEOUT = 5.0


class RemoteStream:
    """The consumer's side of one remote command: iterate it for stdout chunks.

    After the last chunk, iteration raises :class:`RemoteCommandError` if the command failed
    (when ``check`` is set), :class:`ConnectionLostError` or :class:`IdleTimeoutError` if the
    stream broke, or :class:`TransferCancelledError` if its token was cancelled.
    """

    def __init__(
        self,
        *,
        pool: SSHPool,
        host: str,
        path: str | None,
        token: CancelToken,
        check: bool,
        chunk_size: int,
        idle_timeout: float | None,
    ) -> None:
        self.host = host
        self.path = path
        self.token = token
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.remote_pid: int | None = None
        self.bytes_received = 0
        self.check = check
        self._chunk_size = chunk_size
        self._idle_timeout = idle_timeout or None  # 0 is no limit, as rsync's --timeout 0
        self._channel: _Channel | None = None  # set by exec_streaming once the channel exists
        self._pool = pool  # whose connection the channel is on (its lost())
        self._stdin: asyncssh.SSHClientChannel[bytes] | None = None  # while stdin stays open
        self._stdin_refused = False  # a write found the command gone: the rest is dropped
        self._boundary: bytes | None = None  # a stderr line awaited (set_stderr_boundary)
        self._before = bytearray()  # stderr while the boundary is awaited (a bounded tail)
        self._stderr_before: bytes | None = None
        self._stderr = bytearray()
        self._stderr_head = bytearray()  # until the pid line is complete
        self._failure: RemoteSyncError | None = None
        self._finished = False

    @property
    def transfer_id(self) -> str:
        return self.token.id

    @property
    def stderr_tail(self) -> bytes:
        if self._boundary is not None and self._before:  # still awaited: all of it so far
            return bytes(self._stderr + self._before)[-STDERR_TAIL_BYTES:]
        return bytes(self._stderr)

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> bytes:
        # The consumer takes straight from the channel's queue: a chunk exists only while the
        # consumer holds it, and the window re-opens as it takes (see :mod:`.flow`).
        channel = self._channel
        assert channel is not None
        if not self._finished and not channel.queue and not channel.over():
            with anyio.CancelScope() as scope, self.token.bind(scope):
                if not await channel.wait_for_data(self._idle_timeout):
                    self._failure = IdleTimeoutError(
                        f"no output for {self._idle_timeout:g} s", host=self.host, path=self.path
                    )
        if channel.queue and not self._finished and self._failure is None:
            if not self.token.cancelled:
                await anyio.lowlevel.checkpoint()  # let other transfers and a cancel through
            if not self.token.cancelled:
                chunk = channel.take(self._chunk_size)
                self.bytes_received += len(chunk)
                return chunk
        if channel.lost is not None and self._failure is None and not channel.queue:
            # The pool says it: for a connection made on a ProxyCommand, with what the
            # command said as it ended (waited for under a shield: it is being ended).
            # connection_made set conn (asyncssh calls it before connection_lost); were it
            # not set, a plain error.
            if channel.conn is not None:
                self._failure = await self._pool.lost(channel.conn, channel.lost, self.host)
            else:
                self._failure = classify(channel.lost, self.host)
            self._failure.path = self.path
        self._raise_outcome()
        raise StopAsyncIteration

    def send(self, data: bytes, *, end: bool = False) -> None:
        """Write ``data`` to the command's stdin (of a stream opened with ``keep_stdin_open``);
        ``end`` closes stdin after it. asyncssh buffers what the window does not take yet.

        A command that has already ended (it failed, the connection dropped, the transfer was
        cancelled) takes nothing: the data is dropped, and reading the stream on raises what
        really happened.
        """
        chan = self._stdin
        if chan is None:
            raise RuntimeError("stdin of this remote command is closed")
        if end:
            self._stdin = None
        if self._stdin_refused:
            return
        try:
            if data:
                chan.write(data)
            if end:
                chan.write_eof()
        except (BrokenPipeError, OSError, asyncssh.Error) as exc:
            # Later sends are dropped alike: the caller learns how the command ended by
            # reading the stream, not from a write that came too late.
            log.debug("%s: stdin not sent, the command has ended: %s", self.host, exc)
            self._stdin_refused = True

    def set_stderr_boundary(self, line: bytes) -> None:
        """Keep the stderr that comes before ``line`` apart, in :attr:`stderr_before`.

        For a command in two phases that marks the end of the first on stderr: its messages
        stay whole (up to the tail's size) whatever the second phase writes after them, and
        ``line`` itself is left out of every tail.
        """
        self._boundary = line
        self._before = bytearray()

    @property
    def connection(self) -> asyncssh.SSHClientConnection | None:
        """The connection the command runs on (None before its channel is open)."""
        return self._channel.conn if self._channel is not None else None

    @property
    def stderr_before(self) -> bytes | None:
        """The stderr before the boundary line, once it has come (see set_stderr_boundary)."""
        return self._stderr_before

    def expect_end(self) -> None:
        """The consumer has all the output it expects: once the command has exited with
        status 0, iteration ends without waiting for its stdout to close. A process it left
        behind (a daemon the login shell's rc file started) may hold stdout open for ever,
        and the stream would end only at the idle timeout, as a failure. A command that
        failed is still read to the close, so that its messages are whole."""
        assert self._channel is not None
        self._channel.end_at_exit = True
        self._channel.wake_at_exit()

    async def read_all(self) -> bytes:
        """Collect the whole output (for small outputs such as listings)."""
        return b"".join([chunk async for chunk in self])

    def _raise_outcome(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.token.cancelled:
            raise TransferCancelledError(
                self.token.reason or "cancelled", host=self.host, path=self.path
            )
        if self._failure is not None:
            raise self._failure
        if not self.check:
            return
        if self.exit_signal is not None:
            raise RemoteCommandError(
                f"remote command killed by signal {self.exit_signal}",
                host=self.host,
                path=self.path,
                exit_signal=self.exit_signal,
                stderr_tail=self.stderr_tail,
            )
        if self.exit_status is None:
            raise ConnectionLostError(
                "channel closed without an exit status", host=self.host, path=self.path
            )
        if self.exit_status != 0:
            raise RemoteCommandError(
                f"remote command exited with status {self.exit_status}",
                host=self.host,
                path=self.path,
                exit_status=self.exit_status,
                stderr_tail=self.stderr_tail,
            )

    def _add_stderr(self, data: bytes) -> None:
        if self.remote_pid is None and len(self._stderr_head) < 64:
            self._stderr_head += data
            newline = self._stderr_head.find(b"\n")
            if newline < 0 and len(self._stderr_head) < 64:
                return
            line = bytes(self._stderr_head[: max(newline, 0)])
            rest = bytes(self._stderr_head[newline + 1 :]) if newline >= 0 else b""
            self._stderr_head.clear()
            if line.startswith(PID_MARKER) and line[len(PID_MARKER) :].isdigit():
                self.remote_pid = int(line[len(PID_MARKER) :])
                data = rest
            else:
                self.remote_pid = 0  # no marker: a non-POSIX shell ate the wrapper
                data = line + b"\n" + rest if newline >= 0 else line
        boundary = self._boundary
        if boundary is not None:
            self._before += data
            found = self._before.find(boundary)
            if found < 0:
                # Keep a tail, plus enough to find a boundary split between two packets.
                excess = len(self._before) - STDERR_TAIL_BYTES - len(boundary)
                if excess > 0:
                    del self._before[:excess]
                return
            self._stderr_before = bytes(self._before[:found])[-STDERR_TAIL_BYTES:]
            data = self._stderr_before + self._before[found + len(boundary) :]
            self._boundary = None
            self._before = bytearray()
        self._stderr += data
        if len(self._stderr) > STDERR_TAIL_BYTES:
            del self._stderr[: len(self._stderr) - STDERR_TAIL_BYTES]


class _Channel(asyncssh.SSHClientSession[bytes]):
    """asyncssh callbacks → a byte queue; the window re-opens as the consumer takes from it.

    Where :class:`ConsumerCredit` cannot be installed, pause/resume around a high-water mark.
    """

    def __init__(
        self, stream: RemoteStream, high_water: int, share: Callable[[], int] | None = None
    ) -> None:
        self.stream = stream
        self.high_water = high_water
        self.share = share
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        #: The connection the channel is on (asyncssh forgets it once the channel closes).
        self.conn: asyncssh.SSHClientConnection | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.credit: ConsumerCredit | None = None
        self.paused = False
        self.resuming = False
        self.discard = False
        self.closed = anyio.Event()
        self.exited = anyio.Event()
        self.lost: Exception | None = None
        self._wakeup: anyio.Event | None = None
        #: Whether a successful exit ends the output (see RemoteStream.expect_end).
        self.end_at_exit = False

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan
        # A client channel's connection is a client connection (typed as any connection).
        self.conn = cast(asyncssh.SSHClientConnection, chan.get_connection())
        self.credit = ConsumerCredit.install(chan, self.data_received, self.share)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stream._add_stderr(data)
        elif not self.discard:
            self.queue.append(data)
            self.queued += len(data)
            if self.credit is None and self.queued >= self.high_water and not self.resuming:
                self._pause()
            self._wake()
            return
        if self.credit is not None:
            self.credit.settle(self.queued)  # stderr and discarded output: consumed on arrival

    def _pause(self) -> None:
        if not self.paused and self.chan is not None:
            self.paused = True
            self.chan.pause_reading()

    def exit_status_received(self, status: int) -> None:
        self.stream.exit_status = status
        self.exited.set()
        self.wake_at_exit()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.stream.exit_signal = signal
        self.exited.set()

    def over(self) -> bool:
        """No more output will be taken: the channel closed, or the command exited well
        once the consumer said it expects nothing more (RemoteStream.expect_end)."""
        if self.closed.is_set():
            return True
        return self.end_at_exit and self.exited.is_set() and self.stream.exit_status == 0

    def wake_at_exit(self) -> None:
        if self.over():
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.closed.set()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def take(self, limit: int) -> bytes:
        """Remove up to about ``limit`` queued bytes (whole packets) as one chunk."""
        parts = []
        size = 0
        while self.queue and (size == 0 or size + len(self.queue[0]) <= limit):
            part = self.queue.popleft()
            parts.append(part)
            size += len(part)
        self.queued -= size
        if self.credit is not None:
            self.credit.settle(self.queued)
        elif self.paused and self.queued < self.high_water // 2 and self.chan is not None:
            # asyncssh re-opens the whole window on the first packet it hands over after a
            # resume, however few we then take. Pausing again in mid-flush would leave the
            # rest in its buffer with the window already re-credited, and that buffer would
            # grow by a window per cycle. So take the whole flush, then pause: at most two
            # windows are ever held (its buffer after one flush plus one in flight).
            self.paused = False
            self.resuming = True
            try:
                self.chan.resume_reading()
            finally:
                self.resuming = False
            if self.queued >= self.high_water:
                self._pause()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def wait_for_data(self, idle_timeout: float | None) -> bool:
        """Wait until data is queued or the output is over (see :meth:`over`); False on idle
        timeout."""
        if self.queue or self.over():
            return True
        event = self._wakeup = anyio.Event()
        with anyio.move_on_after(idle_timeout):
            await event.wait()
            return True
        return bool(self.queue) or self.over()

    def stop_reading(self) -> None:
        """Drop anything further (used while a cancelled process winds down)."""
        self.discard = True
        self.queue.clear()
        self.queued = 0
        if self.credit is not None:
            self.credit.settle(0)
        if self.paused and self.chan is not None:
            self.paused = False
            self.chan.resume_reading()


async def _open_channel(
    pool: SSHPool,
    endpoint: Endpoint,
    conn: asyncssh.SSHClientConnection,
    host: str,
    argv: Argv,
    factory: Any,
) -> asyncssh.SSHClientChannel[bytes]:
    settings = pool.settings
    window = pool.channel_window(endpoint)
    # Quoted once: an open is tried again on a refusal, and on a new connection after a
    # lost one; only a command made for its connection is made again for each.
    command = argv if callable(argv) else wrapped_command(argv)

    async def create(on: asyncssh.SSHClientConnection) -> asyncssh.SSHClientChannel[bytes]:
        chan, _ = await on.create_session(
            factory,
            wrapped_command(command(on)) if callable(command) else command,
            encoding=None,
            window=window,
            max_pktsize=settings.max_pktsize,
        )
        return chan

    dropped: BaseException | None = None
    for delay in (*REFUSAL_BACKOFF, None):
        try:
            return await create(conn)
        except asyncssh.ChannelOpenError as exc:
            if _connection_gone(conn, exc):
                dropped = exc
                break
            if delay is None or exc.code not in _TRANSIENT_REFUSALS:
                raise classify(exc, host) from exc
            # sshd frees a session slot only once it has reaped the closed session's process,
            # so right after our channels close it may briefly still count them against
            # MaxSessions. Within our cap that refusal is transient: wait a little, try again.
            log.debug("%s: channel refused (%s); retrying in %.2f s", host, exc.reason, delay)
            await anyio.sleep(delay)
        except (asyncssh.Error, OSError) as exc:
            dropped = exc
            break
    # The shared connection died since it was last used: reopen it once and retry.
    log.info("%s: connection dropped (%s); reconnecting once", host, dropped)
    await pool.invalidate(endpoint)
    try:
        return await create(await pool.reconnect(endpoint, host=host))
    except (asyncssh.Error, OSError) as retry_exc:
        raise classify(retry_exc, host) from retry_exc


def _connection_gone(conn: asyncssh.SSHClientConnection, exc: asyncssh.ChannelOpenError) -> bool:
    # asyncssh fails pending channel opens with this reason when the connection closes under
    # them; that is a dead connection to reopen, not a refusal by the server.
    return conn.is_closed() or exc.reason == "SSH connection closed"


@asynccontextmanager
async def exec_streaming(
    pool: SSHPool,
    endpoint: Endpoint,
    argv: Argv,
    *,
    host: str | None = None,
    path: str | None = None,
    stdin: bytes | None = None,
    keep_stdin_open: bool = False,
    stderr_boundary: bytes | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    chunk_size: int = 256 * 1024,
    check: bool = True,
    token: CancelToken | None = None,
    transfer_id: str | None = None,
    registry: CancelRegistry | None = None,
) -> AsyncIterator[RemoteStream]:
    """Run ``argv`` on ``endpoint`` and yield a :class:`RemoteStream` of its stdout.

    ``argv`` may be a function of the connection the command is to run on, called when its
    channel opens (again on the new connection when the pooled one turns out lost): for a
    command that carries what was learned over one connection (:meth:`SSHPool.note_of`).

    ``host`` names the host in errors (the inventory name; defaults to the endpoint's label),
    ``path`` the file concerned if any. ``stdin`` is written to the command and closed, or
    with ``keep_stdin_open`` left open for :meth:`RemoteStream.send` (the command reads more
    once the consumer has seen some of its output). With ``stderr_boundary`` the stderr before
    that line is kept apart (:meth:`RemoteStream.set_stderr_boundary`).
    ``idle_timeout`` fails the stream after that many seconds *without any byte* (a slow
    consumer does not count: a paused stream is not idle); None waits for ever. The transfer
    is registered under ``transfer_id`` in ``registry`` (child of ``token``) for as long as
    the block runs: by default the process-wide one, or a private one for a child of
    ``token``. Leaving the block early, or cancelling, stops the remote process.
    """
    host = host or endpoint.label
    if registry is None:
        # A child of the caller's token is reached through it: kept out of the process-wide
        # registry, where another component's cancel_all() or a transfer id of its own would
        # reach it too.
        registry = CancelRegistry() if token is not None else default_registry
    with registry.register(transfer_id, parent=token) as own_token:
        own_token.raise_if_cancelled(host=host, path=path)
        stream = RemoteStream(
            pool=pool,
            host=host,
            path=path,
            token=own_token,
            check=check,
            chunk_size=chunk_size,
            idle_timeout=idle_timeout,
        )
        if stderr_boundary is not None:
            stream.set_stderr_boundary(stderr_boundary)
        channel = stream._channel = _Channel(
            stream,
            high_water=max(chunk_size, 64 * 1024) * 2,
            # The pool's share for the channels open at the moment, not only at the open.
            share=pool.channel_share(endpoint),
        )
        kill_pid: int | None = None
        # The consumer's exception is held until the remote side is stopped and the session
        # slot released, then raised as is.
        body_error: Exception | None = None
        async with pool.session(endpoint, host=host, token=own_token) as conn:
            chan = await _open_channel(pool, endpoint, conn, host, argv, lambda: channel)
            unhook = own_token.on_cancel(lambda: _signal(chan, "TERM"))
            try:
                # Through send(): a command that ends at once (a root that is not there) may
                # have closed its channel before this write on a loaded machine, and asyncssh
                # then raises BrokenPipeError; the stream reports how the command ended.
                stream._stdin = chan
                stream.send(stdin or b"", end=not keep_stdin_open)
                try:
                    yield stream
                except Exception as exc:
                    body_error = exc
                finally:
                    stream._stdin = None
                    with anyio.CancelScope(shield=True):
                        kill_pid = await _stop_channel(chan, channel, stream, conn)
            finally:
                unhook()
        if kill_pid:
            # The server ignored our signal (or the process ignores TERM): stop the group
            # over a fresh channel, after releasing ours so a full cap cannot deadlock.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                await _kill_remote(pool, endpoint, host, kill_pid)
        if body_error is not None:
            raise body_error


def _signal(chan: asyncssh.SSHClientChannel[bytes], name: str) -> None:
    try:
        chan.send_signal(name)
    except (asyncssh.Error, OSError, BrokenPipeError) as exc:
        log.debug("could not send signal %s: %s", name, exc)


async def _stop_channel(
    chan: asyncssh.SSHClientChannel[bytes],
    channel: _Channel,
    stream: RemoteStream,
    conn: asyncssh.SSHClientConnection,
) -> int | None:
    """Bring the channel down; returns the remote pid still to be killed, if any."""
    if channel.closed.is_set():
        return None
    # The consumer left before the command ended (cancel, early exit, error): signal it and
    # give it a moment to go, discarding output so it cannot block on a full window.
    channel.stop_reading()
    if not channel.exited.is_set():
        _signal(chan, "TERM")
        with anyio.move_on_after(SIGNAL_GRACE):
            await channel.exited.wait()
    chan.close()
    # After an idle timeout the link itself may be what stalled: a live one closes the
    # channel within the grace, a dead one never would. Waiting longer there, then asking
    # it for a kill, only made the host's failure come 10 s after its timeout: the
    # connection is cut instead (the host's sshd then ends the session's processes).
    stalled = isinstance(stream._failure, IdleTimeoutError)
    with anyio.move_on_after(SIGNAL_GRACE if stalled else CLEANUP_TIMEOUT):
        await channel.closed.wait()
    if channel.exited.is_set():
        return None
    if stalled and not channel.closed.is_set():
        conn.abort()
        return None
    return stream.remote_pid or None


async def _kill_remote(pool: SSHPool, endpoint: Endpoint, host: str, pid: int) -> None:
    try:
        async with pool.session(endpoint, host=host) as conn:
            await conn.run(kill_group_command(pid), check=False, encoding=None)
    except (RemoteSyncError, asyncssh.Error, OSError) as exc:
        log.warning("%s: could not stop remote process %d: %s", host, pid, exc)


async def run_command(
    pool: SSHPool,
    endpoint: Endpoint,
    argv: Sequence[str],
    **kwargs: Any,
) -> bytes:
    """Run a command with small output and return its stdout (errors as exec_streaming)."""
    async with exec_streaming(pool, endpoint, argv, **kwargs) as stream:
        return await stream.read_all()


__all__ = ["RemoteStream", "exec_streaming", "run_command"]
