#!/usr/bin/env python3
"""Latency-emulating TCP relay, meant to be used as an SSH ``ProxyCommand``.

Why this exists
---------------
The benchmarks want to see how remote-sync behaves on a high round-trip-time
link (a fleet host on another continent), but the usual tool for that --
``tc qdisc ... netem delay`` -- needs CAP_NET_ADMIN and the sch_netem kernel
module, neither of which is available in CI containers.  This relay gets the
same effect in user space: it sits between the SSH client and the server and
holds every byte for a fixed one-way delay in each direction.

    python3 bench/delay_relay.py --delay-ms 25 HOST PORT

    ssh -o ProxyCommand="python3 bench/delay_relay.py --delay-ms 25 %h %p" ...
    asyncssh.connect(host, port, proxy_command=[sys.executable, RELAY,
                                                "--delay-ms", "25", host, str(port)])

With ``--delay-ms 25`` each direction is delayed by 25 ms, so a request and its
response see a 50 ms RTT.  The connection itself is also delayed by one RTT,
like a TCP three-way handshake.

The delay is a *pipeline*, not a throttle: a chunk read at time ``t`` is
written at ``t + delay`` while the reader keeps reading, so many chunks are in
flight at once, like a long fat pipe.  Throughput is therefore limited only by
the relay's own copying speed and by whatever window the protocol on top
uses -- on a real high-RTT link SSH's per-channel flow-control window is what
caps bulk throughput (window / RTT), and that is exactly what this lets us
observe.  ``--max-inflight-mb`` optionally caps the bytes held per
direction, which caps that direction at roughly ``cap / one-way delay``
(a bandwidth-delay-product limit); the default (256 MiB, i.e. > 5 GB/s at
25 ms) is meant not to restrict anything.

Design: two threads per direction.  The reader does large blocking reads
(up to ``--chunk-kb``, default 256 KiB) into recycled buffers, stamps each
chunk with ``time.monotonic()`` and appends it to a deque; the writer sleeps
until the oldest chunk is due, then writes every chunk that is due in one
``writev``/``sendmsg`` call.  There is no per-byte work in Python, and stdin
and stdout pipes are enlarged to 1 MiB so that reads and writes stay large.  EOF is
propagated as a half-close after the same delay: stdin EOF becomes
``shutdown(SHUT_WR)`` on the socket, socket EOF closes stdout (or shuts it
down for writing if stdout is a socket).  The process exits once both
directions have delivered their EOF, or at the first error.

Caveat for asyncssh: asyncssh starts the proxy command with ``stderr`` piped
and feeds whatever arrives there into the SSH byte stream as if it came from
the server.  The relay therefore stays silent on stderr unless something is
fatally wrong (or ``--stats`` is given, which is for stand-alone use only).

Stdlib only; loopback targets are the intended use.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import os
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence

MiB = 1024 * 1024
MAX_IOV = 512  # well below IOV_MAX (1024 on Linux)
MAX_BATCH_BYTES = 8 * MiB  # upper bound for one writev()/sendmsg()
PIPE_SIZE = 1 * MiB  # the default /proc/sys/fs/pipe-max-size

ReadIntoFn = Callable[[bytearray], int]
WriteFn = Callable[[list[memoryview]], int]


class PeerGone(Exception):
    """The other end went away (EPIPE / ECONNRESET): exit 1 without a message."""


def _fd_readinto(fd: int) -> ReadIntoFn:
    def readinto(buf: bytearray) -> int:
        while True:
            try:
                return os.readv(fd, [buf])
            except BlockingIOError:  # somebody handed us a non-blocking fd
                select.select([fd], [], [])

    return readinto


def _fd_writev(fd: int) -> WriteFn:
    def writev(bufs: list[memoryview]) -> int:
        while True:
            try:
                return os.writev(fd, bufs)
            except BlockingIOError:
                select.select([], [fd], [])

    return writev


def _sock_readinto(sock: socket.socket) -> ReadIntoFn:
    return sock.recv_into


def _sock_writev(sock: socket.socket) -> WriteFn:
    return sock.sendmsg


def _write_all(writev: WriteFn, bufs: list[memoryview]) -> None:
    """Write all of *bufs* with as few system calls as possible."""
    total = sum(len(b) for b in bufs)
    while True:
        n = writev(bufs)
        if n == total:  # the common case: everything went out at once
            return
        total -= n
        i = 0
        while n >= len(bufs[i]):
            n -= len(bufs[i])
            i += 1
        bufs = bufs[i:]
        bufs[0] = bufs[0][n:]


class Direction:
    """One direction of the relay: a delayed, ordered, bounded FIFO of chunks.

    Chunks live in recycled ``bytearray`` buffers: the reader fills a buffer
    with ``readinto``, the writer hands it back once written, so the steady
    state does no allocation (freshly allocated 256 KiB ``bytes`` objects cost
    page faults and were measurably slower).
    """

    def __init__(
        self,
        name: str,
        readinto: ReadIntoFn,
        writev: WriteFn,
        on_eof: Callable[[], None],
        delay: float,
        max_inflight: int,
        chunk_size: int,
    ) -> None:
        self.name = name
        self._readinto = readinto
        self._writev = writev
        self._on_eof = on_eof
        self._delay = delay
        self._max_inflight = max_inflight
        self._chunk_size = chunk_size
        # (read time, data, number of valid bytes); 0 bytes means EOF.  data is
        # either a pooled chunk-sized bytearray or, for small reads, a bytes copy.
        self._queue: collections.deque[tuple[float, bytes | bytearray, int]] = collections.deque()
        self._free: list[bytearray] = []  # list.pop()/append() are atomic under the GIL
        self._inflight = 0
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)
        self.bytes_relayed = 0

    def reader(self) -> None:
        readinto, queue, free = self._readinto, self._queue, self._free
        chunk_size = self._chunk_size
        small = chunk_size // 4
        while True:
            with self._not_full:
                while self._inflight >= self._max_inflight:
                    self._not_full.wait()
            buf = free.pop() if free else bytearray(chunk_size)
            n = readinto(buf)
            stamp = time.monotonic()
            data: bytes | bytearray = buf
            if n < small:
                # Do not pin a whole chunk buffer for a few bytes (think of a
                # stream of small SSH packets): copy them out, reuse the buffer.
                data = bytes(memoryview(buf)[:n])
                free.append(buf)
            with self._not_empty:
                queue.append((stamp, data, n))
                self._inflight += n
                self._not_empty.notify()
            if not n:
                return

    def writer(self) -> None:
        queue, free, delay = self._queue, self._free, self._delay
        while True:
            with self._not_empty:
                while not queue:
                    self._not_empty.wait()
                due = queue[0][0] + delay
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)

            pooled: list[bytearray] = []
            views: list[memoryview] = []
            nbytes = 0
            eof = False
            with self._not_empty:
                now = time.monotonic()
                # The head is due (we slept for it); take everything else that is due too.
                while queue and len(views) < MAX_IOV and nbytes < MAX_BATCH_BYTES:
                    stamp, data, n = queue[0]
                    if views and stamp + delay > now:
                        break
                    queue.popleft()
                    if not n:
                        eof = True
                        break
                    if isinstance(data, bytearray):
                        pooled.append(data)
                    views.append(memoryview(data)[:n])
                    nbytes += n

            if views:
                _write_all(self._writev, views)
                for v in views:
                    v.release()
                free.extend(pooled)
                self.bytes_relayed += nbytes
                with self._not_full:
                    self._inflight -= nbytes
                    self._not_full.notify()
            if eof:
                self._on_eof()
                return


class Relay:
    """Runs both directions and records how the process should end."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.exit_code = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._writers_left = 0

    def start(self, directions: Sequence[Direction]) -> None:
        self._writers_left = len(directions)
        for d in directions:
            for role, fn in (("reader", d.reader), ("writer", d.writer)):
                is_writer = role == "writer"
                t = threading.Thread(
                    target=self._guard,
                    args=(fn, is_writer),
                    name=f"{d.name}-{role}",
                    daemon=True,
                )
                t.start()

    def _guard(self, fn: Callable[[], None], is_writer: bool) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError, PeerGone):
            self._fail(None)  # one side hung up: end without noise on stderr
        except BaseException as exc:
            self._fail(f"{threading.current_thread().name}: {exc!r}")
        else:
            if is_writer:
                with self._lock:
                    self._writers_left -= 1
                    if self._writers_left == 0:
                        self.finished.set()

    def _fail(self, message: str | None) -> None:
        with self._lock:
            if not self.finished.is_set():
                self.exit_code = 1
                self.error = message
                self.finished.set()


def _close_stdout() -> None:
    """Deliver EOF to whoever reads our stdout (pipe or socketpair)."""
    if stat.S_ISSOCK(os.fstat(1).st_mode):
        # A socketpair may be our stdin *and* stdout; closing fd 1 alone would
        # not send EOF while fd 0 still refers to the same socket.
        s = socket.socket(fileno=os.dup(1))
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            s.close()
    os.close(1)


def _grow_pipe(fd: int) -> None:
    """Enlarge a pipe on *fd* to 1 MiB (from 64 KiB): fewer, larger reads and writes."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is None or not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return
    with contextlib.suppress(OSError):  # EPERM above /proc/sys/fs/pipe-max-size
        fcntl.fcntl(fd, set_size, PIPE_SIZE)


def _shutdown_socket(sock: socket.socket) -> Callable[[], None]:
    def shutdown() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # e.g. ENOTCONN after the peer reset us
            raise PeerGone from exc

    return shutdown


def connect(host: str, port: int, delay: float, prog: str) -> socket.socket | None:
    """A TCP connection to ``host``:``port`` with Nagle off, made after the round trip a real
    connect costs (SYN out, SYN-ACK back) at a one-way ``delay``; None, said on stderr as
    ``prog``'s, if it fails."""
    if delay:
        time.sleep(2 * delay)
    try:
        sock = socket.create_connection((host, port))
    except OSError as exc:
        print(f"{prog}: connect to {host}:{port}: {exc}", file=sys.stderr)
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def relay_until_done(directions: Sequence[Direction]) -> Relay:
    """Relay ``directions`` until each has ended, or until Ctrl-C (exit code 130)."""
    relay = Relay()
    relay.start(directions)
    try:
        relay.finished.wait()
    except KeyboardInterrupt:
        relay.exit_code = 130
    return relay


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="TCP relay for SSH ProxyCommand that adds a fixed one-way delay "
        "in each direction without limiting throughput.",
    )
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="one-way delay per direction in ms (RTT = 2x this); default 0",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=float,
        default=256.0,
        help="cap on bytes in flight per direction, in MiB (emulates a "
        "bandwidth-delay product); default 256, i.e. effectively unlimited",
    )
    p.add_argument(
        "--chunk-kb", type=int, default=256, help="maximum read size in KiB; default 256"
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="print byte counts and duration to stderr at exit "
        "(not with asyncssh, which reads stderr as connection data)",
    )
    args = p.parse_args(argv)
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")
    if args.max_inflight_mb <= 0:
        p.error("--max-inflight-mb must be > 0")
    if args.chunk_kb <= 0:
        p.error("--chunk-kb must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    delay = args.delay_ms / 1000.0
    started = time.monotonic()
    sock = connect(args.host, args.port, delay, "delay_relay")
    if sock is None:
        return 255

    max_inflight = max(1, int(args.max_inflight_mb * MiB))
    chunk = args.chunk_kb * 1024
    for fd in (0, 1):
        _grow_pipe(fd)
    upstream = Direction(
        "up",
        _fd_readinto(0),
        _sock_writev(sock),
        _shutdown_socket(sock),
        delay,
        max_inflight,
        chunk,
    )
    downstream = Direction(
        "down", _sock_readinto(sock), _fd_writev(1), _close_stdout, delay, max_inflight, chunk
    )
    relay = relay_until_done([upstream, downstream])
    if relay.error:
        print(f"delay_relay: {relay.error}", file=sys.stderr)
    if args.stats:
        elapsed = time.monotonic() - started
        print(
            f"delay_relay: up {upstream.bytes_relayed} B, down {downstream.bytes_relayed} B, "
            f"{elapsed:.3f} s",
            file=sys.stderr,
        )
    sys.stderr.flush()
    return relay.exit_code


if __name__ == "__main__":
    # os._exit: reader threads may still be blocked in read(); do not wait for
    # them, and do not let interpreter shutdown touch the already closed fd 1.
    os._exit(main())
