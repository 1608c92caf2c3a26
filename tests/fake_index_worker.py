"""A misbehaving index worker for tests: ``exit`` quits at once, ``wrong`` answers nonsense,
``hang`` never answers."""

from __future__ import annotations

import socket
import sys

import msgspec

from remote_sync.index.facts import SessionFacts
from remote_sync.index.worker import Done, Finish, Open, ToWorker


def main() -> int:
    mode, fd = sys.argv[1], int(sys.argv[2])
    if mode == "exit":
        return 3
    sock = socket.socket(fileno=fd)
    decoder = msgspec.msgpack.Decoder(ToWorker)
    while True:
        data, _fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 1)
        if not data:
            return 0
        msg = decoder.decode(data)
        if isinstance(msg, Open):
            continue
        if isinstance(msg, Finish) and mode == "wrong":
            facts = msgspec.json.encode(SessionFacts(session_id="lie", bytes=1))
            sock.sendall(msgspec.msgpack.encode(Done(msg.job, msg.end + 1, facts, [])))


if __name__ == "__main__":
    sys.exit(main())
