#!/usr/bin/env python3
"""Byte-counting TCP relay, meant to be used as an SSH ``ProxyCommand``.

    python3 bench/count_relay.py --count-dir DIR HOST PORT

    ssh -o ProxyCommand="python3 bench/count_relay.py --count-dir DIR %h %p" ...
    # or a "ProxyCommand ..." line in the ssh_config that both OpenSSH and asyncssh read

It relays stdin/stdout to a TCP connection exactly like ``bench/delay_relay.py`` (it reuses
that relay's threads, with ``--delay-ms 0`` unless told otherwise) and counts the bytes in each
direction: ``up`` is what the SSH client sent (read from stdin), ``down`` what the server sent
(read from the socket). These are TCP payload bytes: the whole SSH stream, key exchange,
authentication, channel requests, padding and MACs included; TCP/IP headers are not.

The counts go to a FILE, never to stderr: asyncssh feeds a proxy command's stderr into the SSH
stream. Each relay process writes ``DIR/relay-<pid>.json`` (one connection, one file) and
rewrites it in place after every read, *before* forwarding the bytes read. Both SSH clients kill
their proxy command when they are done with it (OpenSSH sends SIGHUP, asyncssh closes the
subprocess transport, which kills it), so a count written only at exit would be lost; written
before forwarding, no byte the peer received can be missing from it. :func:`read_counts` sums
all the files of a directory.

Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import delay_relay  # this directory, put on sys.path just above

#: Every count file is one JSON object padded to this many bytes (rewritten in place).
RECORD_BYTES = 160


class Counter:
    """Byte counts of one relay process, kept current in ``DIR/relay-<pid>.json``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"relay-{os.getpid()}.json"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._lock = threading.Lock()
        self.counts = {"up": 0, "down": 0, "reads_up": 0, "reads_down": 0}
        self._store()

    def add(self, direction: str, nbytes: int) -> None:
        with self._lock:
            self.counts[direction] += nbytes
            self.counts[f"reads_{direction}"] += 1
            self._store()

    def _store(self) -> None:
        record = json.dumps(self.counts, separators=(",", ":")).encode()
        os.pwrite(self._fd, record.ljust(RECORD_BYTES - 1) + b"\n", 0)


def counting(
    readinto: delay_relay.ReadIntoFn, counter: Counter, direction: str
) -> delay_relay.ReadIntoFn:
    """Wrap a relay reader: count every read before the relay forwards it."""

    def read(buf: bytearray) -> int:
        n = readinto(buf)
        if n:
            counter.add(direction, n)
        return n

    return read


def read_counts(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Sum of the counts in ``directory``: up, down, total bytes and the connections seen."""
    total = {"up": 0, "down": 0, "connections": 0}
    for path in sorted(Path(directory).glob("relay-*.json")):
        text = path.read_text().strip()
        if not text:
            continue
        counts: dict[str, Any] = json.loads(text)
        total["up"] += int(counts["up"])
        total["down"] += int(counts["down"])
        total["connections"] += 1
    total["total"] = total["up"] + total["down"]
    return total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TCP relay for SSH ProxyCommand that counts bytes.")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count-dir", required=True, help="directory for relay-<pid>.json")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, default 0")
    args = p.parse_args(argv)
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    delay = args.delay_ms / 1000.0
    counter = Counter(Path(args.count_dir))
    sock = delay_relay.connect(args.host, args.port, delay, "count_relay")
    if sock is None:
        return 255
    for fd in (0, 1):
        delay_relay._grow_pipe(fd)
    chunk = 256 * 1024
    inflight = 256 * delay_relay.MiB
    upstream = delay_relay.Direction(
        "up",
        counting(delay_relay._fd_readinto(0), counter, "up"),
        delay_relay._sock_writev(sock),
        delay_relay._shutdown_socket(sock),
        delay,
        inflight,
        chunk,
    )
    downstream = delay_relay.Direction(
        "down",
        counting(delay_relay._sock_readinto(sock), counter, "down"),
        delay_relay._fd_writev(1),
        delay_relay._close_stdout,
        delay,
        inflight,
        chunk,
    )
    relay = delay_relay.relay_until_done([upstream, downstream])
    if relay.error:
        print(f"count_relay: {relay.error}", file=sys.stderr)
        sys.stderr.flush()
    return relay.exit_code


if __name__ == "__main__":
    # As delay_relay: reader threads may still block in read(); do not wait for them.
    os._exit(main())
