"""Tests for bench/delay_relay.py, the latency-emulating ProxyCommand relay.

The relay runs as a real subprocess against small TCP servers on 127.0.0.1.
Timing assertions are one-sided wherever possible (a delay is at least X) and
very generous where they are not (a bulk transfer is not serialised), because
test machines are noisy.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parent.parent / "bench" / "delay_relay.py"
MiB = 1024 * 1024
DELAY_MS = 25
TIMEOUT = 30.0  # per subprocess / socket operation; only hit if something hangs

Handler = Callable[[socket.socket], None]


class OneShotServer:
    """Accepts a single connection on 127.0.0.1 and runs *handler* on it in a thread."""

    def __init__(self, handler: Handler) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.port: int = self._listener.getsockname()[1]
        self._handler = handler
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                self._handler(conn)
        except BaseException as exc:
            self.error = exc
        finally:
            self._listener.close()

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "server thread hung"
        if self.error is not None:
            raise self.error


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], OneShotServer]]:
    servers: list[OneShotServer] = []

    def start(handler: Handler) -> OneShotServer:
        server = OneShotServer(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.join()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(256 * 1024):
        conn.sendall(data)


def relay_cmd(port: int, *extra: str, delay_ms: float = DELAY_MS) -> list[str]:
    return [
        sys.executable,
        str(RELAY),
        "--delay-ms",
        str(delay_ms),
        *extra,
        "127.0.0.1",
        str(port),
    ]


def start_relay(port: int, *extra: str, delay_ms: float = DELAY_MS) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        relay_cmd(port, *extra, delay_ms=delay_ms),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def read_exactly(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        part = os.read(fd, n)
        assert part, "unexpected EOF"
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def test_round_trip_takes_twice_the_one_way_delay(
    serve: Callable[[Handler], OneShotServer],
) -> None:
    server = serve(echo)
    proc = start_relay(server.port)
    assert proc.stdin is not None and proc.stdout is not None
    inp, out = proc.stdin.fileno(), proc.stdout.fileno()

    # The first exchange also pays for interpreter start-up and the emulated handshake.
    os.write(inp, b"warm-up\n")
    assert read_exactly(out, 8) == b"warm-up\n"

    rtts = []
    for i in range(3):
        msg = f"ping {i}\n".encode()
        start = time.monotonic()
        os.write(inp, msg)
        assert read_exactly(out, len(msg)) == msg
        rtts.append(time.monotonic() - start)
    # Each direction holds data for at least DELAY_MS, measured from when it was read.
    assert min(rtts) >= 2 * DELAY_MS / 1000 * 0.98, rtts
    assert max(rtts) < 1.0, rtts  # sanity: no gross extra latency

    # Half-close: our EOF reaches the server after the delay, its EOF comes back.
    start = time.monotonic()
    proc.stdin.close()
    assert proc.stdout.read() == b""
    assert time.monotonic() - start >= 2 * DELAY_MS / 1000 * 0.98
    assert proc.wait(TIMEOUT) == 0
    proc.stdout.close()
    assert proc.stderr is not None
    assert proc.stderr.read() == b""  # silent: asyncssh would read stderr as SSH data
    proc.stderr.close()


def test_zero_delay_is_a_plain_relay(serve: Callable[[Handler], OneShotServer]) -> None:
    server = serve(echo)
    proc = start_relay(server.port, delay_ms=0)
    out, err = proc.communicate(b"hello\n" * 1000, timeout=TIMEOUT)
    assert out == b"hello\n" * 1000
    assert proc.returncode == 0, err


def test_bulk_upload_is_pipelined_not_throttled(
    serve: Callable[[Handler], OneShotServer],
) -> None:
    """64 MiB upstream with 25 ms delay: intact, and nowhere near stop-and-wait speed."""
    payload = os.urandom(64 * MiB)

    def sink(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        total = 0
        while data := conn.recv(1 * MiB):
            digest.update(data)
            total += len(data)
        # Only reachable if the relay propagated stdin EOF as a half-close.
        conn.sendall(f"{total} {digest.hexdigest()}\n".encode())

    server = serve(sink)
    start = time.monotonic()
    proc = start_relay(server.port)
    out, err = proc.communicate(payload, timeout=TIMEOUT)
    elapsed = time.monotonic() - start

    assert proc.returncode == 0, err
    assert out == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    # A relay that waited out the delay per chunk would need >= 256 x 25 ms = 6.4 s
    # even with 256 KiB chunks; pipelined it takes well under a second on loopback.
    assert elapsed < 5.0, f"64 MiB took {elapsed:.2f} s through the relay"


def test_bulk_download_is_intact_and_ends_with_eof(
    serve: Callable[[Handler], OneShotServer],
) -> None:
    payload = os.urandom(64 * MiB)

    def source(conn: socket.socket) -> None:
        conn.sendall(payload)

    server = serve(source)
    start = time.monotonic()
    proc = start_relay(server.port)
    assert proc.stdin is not None and proc.stdout is not None
    # Keep stdin open while downloading: the server's EOF alone must end our stdout.
    received = proc.stdout.read()
    elapsed = time.monotonic() - start
    proc.stdin.close()
    assert proc.wait(TIMEOUT) == 0
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()

    assert len(received) == len(payload)
    assert received == payload
    assert elapsed < 5.0, f"64 MiB took {elapsed:.2f} s through the relay"


def test_inflight_cap_limits_throughput(serve: Callable[[Handler], OneShotServer]) -> None:
    """With 1 MiB in flight and 25 ms delay, at most ~1 MiB moves per 25 ms."""
    payload = os.urandom(16 * MiB)

    def sink(conn: socket.socket) -> None:
        total = 0
        while data := conn.recv(1 * MiB):
            total += len(data)
        conn.sendall(f"{total}\n".encode())

    server = serve(sink)
    proc = start_relay(server.port, "--max-inflight-mb", "1", "--chunk-kb", "64")
    start = time.monotonic()
    out, err = proc.communicate(payload, timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, err
    assert out == f"{len(payload)}\n".encode()
    # 16 MiB / (1 MiB per 25 ms) = 0.4 s at the very least, plus handshake and EOF delays.
    assert elapsed >= 0.35, elapsed


def test_socketpair_as_stdin_and_stdout(serve: Callable[[Handler], OneShotServer]) -> None:
    """One socket as both stdin and stdout: the server's EOF must reach us while the
    relay still reads stdin (closing fd 1 alone would not end a shared socket)."""

    def greet_and_hang_up(conn: socket.socket) -> None:
        conn.sendall(b"hello over a socketpair\n")

    server = serve(greet_and_hang_up)
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            proc = subprocess.Popen(
                relay_cmd(server.port, delay_ms=5), stdin=theirs.fileno(), stdout=theirs.fileno()
            )
        ours.settimeout(TIMEOUT)
        received = b""
        while data := ours.recv(65536):  # our write side stays open meanwhile
            received += data
        assert received == b"hello over a socketpair\n"
        assert proc.poll() is None  # upstream is still open, so the relay still runs
        ours.shutdown(socket.SHUT_WR)
        assert proc.wait(TIMEOUT) == 0


def test_connect_failure_exits_with_255() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # Nothing listens on *port* any more.
    proc = subprocess.run(
        relay_cmd(port, delay_ms=0), input=b"", capture_output=True, timeout=TIMEOUT
    )
    assert proc.returncode == 255
    assert b"connect to 127.0.0.1" in proc.stderr
    assert proc.stdout == b""
