"""The sync agent's control socket and its protocol, shared by the agent and its clients.

What it owns: where the socket is (``DIR/.remote-sync/agent.sock``) and how to reach a path
longer than ``AF_UNIX`` allows, the request a client sends (:class:`SyncRequest`, and
:class:`CancelRequest`), the peer's uid (``SO_PEERCRED``), and the client's side of a
connection (:func:`connect`, :class:`AgentLink`); and the agent's defaults, which the CLI
and the library take without importing the agent. Standard library and msgspec only: a
``remote-sync sync`` that goes through the agent never imports asyncssh, anyio or the engine,
which is most of what the agent saves it.

The protocol is JSON lines over the socket (one object per line, UTF-8):

* client → agent, first (within 10 seconds of connecting, or the agent closes the
  connection): ``{"type":"sync","version":1,"inventory":<absolute path>,
  "hosts":[names],"tags":[...],"dry_run":bool,"index":bool,"concurrency":int,
  "idle_timeout":float|null,"compress":bool|null}``, what ``sync`` was asked (``hosts`` and
  ``tags`` as typed: the agent picks them from its inventory; ``idle_timeout`` null is no
  limit; ``compress`` null leaves it to each host's inventory entry);
* client → agent, later: ``{"type":"cancel"}`` cancels that sync, as Ctrl-C cancels a run of
  its own; a client that closes the connection (or dies) cancels it too;
* agent → client: the events ``sync --json`` prints, one per line (``progress``,
  ``warning``, ``error``, ``host_done``, ``summary``, ``planned``), then the agent closes the
  connection. A sync that could not start ends with one ``error`` line and no summary (kind
  ``locked`` when another sync holds the mirror, the agent's own included). A request the
  agent will not serve (another inventory file, a host its inventory does not have, another
  protocol version, an agent stopping, or one busy with as many requests as it serves at
  once, a connection yet to send its request counted) gets one ``error`` line of kind
  ``agent_refused``: the client then runs the sync itself. A client that leaves its events
  unread loses the progress lines past 64 KiB unread; past 32 MiB it is taken for gone, its
  sync cancelled.

Only peers with the agent's own uid are served, and a client talks only to an agent of its
own uid. The socket is created mode 0600 (under umask 077). Its path may be longer than the
108 bytes ``sockaddr_un`` holds (a deep ``--dest``): both sides then reach it through a
descriptor of its directory, as ``/proc/self/fd/N/agent.sock`` (Linux).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import msgspec

from .errors import AgentError, AgentRefusedError
from .events import Event, decode_event, one_line
from .ssh.remote import CONCURRENCY, IDLE_TIMEOUT

#: The default ``--persist``: a connection nobody used for 10 minutes is closed.
PERSIST = 600.0
#: The default ``--stop-timeout``: how long a stop waits for the syncs it cancelled to wind
#: down before it cuts them off (below the 60 s systemd waits for the service to stop).
STOP_TIMEOUT = 30.0
#: Seconds a cut-off may take (connections closed, the socket removed) before the command
#: leaves at once: work in a worker thread (an ssh_config's ``Match exec`` command) cannot
#: be cut off.
CUT_OFF_GRACE = 10.0
#: The protocol's version; a request of another one is refused (and then run directly).
PROTOCOL_VERSION = 1
SOCKET_NAME = "agent.sock"
#: Held (flock) by the running agent, for as long as it runs: a second agent is refused
#: while the first lives, and the socket of one that died is known to be stale.
LOCK_NAME = "agent.lock"
#: The control directory of a mirror (``mirror.control.CONTROL_DIR``, not imported: that
#: package is the engine's side).
CONTROL_DIR = ".remote-sync"
#: The longest request line the agent reads (a request names hosts and tags, no more).
MAX_REQUEST = 1024 * 1024
#: ``sockaddr_un.sun_path`` is 108 bytes on Linux, its final NUL included.
_SUN_PATH_MAX = 107


class SyncRequest(
    msgspec.Struct, tag="sync", tag_field="type", kw_only=True, forbid_unknown_fields=True
):
    """What ``remote-sync sync`` asks the agent for (see the module's protocol). A field this
    agent does not know is refused, never dropped: a newer client's option would otherwise
    be left out of its sync without a word (refused, the client runs the sync itself)."""

    version: int = PROTOCOL_VERSION
    inventory: str
    hosts: list[str] = []
    tags: list[str] = []
    dry_run: bool = False
    index: bool = True
    concurrency: int = CONCURRENCY
    idle_timeout: float | None = IDLE_TIMEOUT
    compress: bool | None = None


class CancelRequest(msgspec.Struct, tag="cancel", tag_field="type"):
    """Cancel the sync this connection asked for."""


class _Versioned(msgspec.Struct):
    """A request's type and version, read before the rest (another version may differ)."""

    type: str = ""
    version: int = 0


def socket_path(dest: Path) -> Path:
    """Where the agent of the mirror ``dest`` listens."""
    return dest / CONTROL_DIR / SOCKET_NAME


def decode_request(line: bytes) -> SyncRequest:
    """The sync request on ``line``; an :class:`AgentRefusedError` saying why it is none."""
    try:
        head = msgspec.json.decode(line, type=_Versioned)
    except msgspec.DecodeError as exc:
        raise AgentRefusedError(f"the request is not a JSON object: {exc}") from None
    if head.type != "sync":
        raise AgentRefusedError(f"unknown request type {head.type!r}: the agent serves 'sync'")
    if head.version != PROTOCOL_VERSION:
        raise AgentRefusedError(
            f"the request speaks protocol version {head.version}, this agent "
            f"{PROTOCOL_VERSION}: the client and the agent are different releases",
            hint="restart the agent after an upgrade; meanwhile the sync runs in this process",
        )
    try:
        return msgspec.json.decode(line, type=SyncRequest)
    except msgspec.ValidationError as exc:
        raise AgentRefusedError(f"the request is not valid: {exc}") from None


def encode_line(message: SyncRequest | CancelRequest) -> bytes:
    """``message`` as its line of the protocol. U+0085, U+2028 and U+2029 (a host or tag as
    typed may hold them) are written escaped, as on every JSON line we write
    (:func:`~remote_sync.events.one_line`): the agent splits only at ``\n`` and decodes
    either form alike (an agent of an earlier release too), but other line splitters (a
    script reading a captured exchange) split at them."""
    return one_line(msgspec.json.encode(message)) + b"\n"


@contextlib.contextmanager
def address(path: Path) -> Iterator[str]:
    """An address for ``path`` that ``bind`` and ``connect`` take: the path itself when it
    fits in ``sockaddr_un``, else the same name under ``/proc/self/fd/N``, N a descriptor of
    its directory, open for as long as the block runs (a missing directory: OSError)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of the Unix socket ``sock`` (Linux's
    ``SO_PEERCRED``: its credentials when it connected, or listened)."""
    size = struct.calcsize("3i")
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    pid, uid, _gid = struct.unpack("3i", data)
    return int(pid), int(uid)


def connect(dest: Path) -> AgentLink | None:
    """A connection to the agent serving ``dest``, or None when none answers there: no
    socket, a stale one (ECONNREFUSED), one another uid listens on, a platform without
    ``SO_PEERCRED``. Never an error: without an agent the sync runs in this process."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # A live agent accepts at once; a bound socket nobody accepts on must not hang us.
        sock.settimeout(5.0)
        with address(socket_path(dest)) as where:
            sock.connect(where)
        if peer_credentials(sock)[1] != os.getuid():
            sock.close()
            return None
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return AgentLink(sock, socket_path(dest))


class AgentLink:
    """The client's end of one connection to the agent: send the request, read the events,
    send a cancel."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self._reader = sock.makefile("rb")

    def __enter__(self) -> AgentLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def send(self, request: SyncRequest) -> None:
        self.sock.sendall(encode_line(request))

    def cancel(self) -> None:
        """Ask the agent to cancel this connection's sync (it may have ended: no error)."""
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_line(CancelRequest()))

    def events(self) -> Iterator[Event]:
        """The events the agent sends, until it closes the connection."""
        while True:
            try:
                line = self._reader.readline()
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                    return  # the agent went away: the caller says so
                raise AgentError(
                    f"cannot read from the agent: {exc.strerror or exc}", path=str(self.path)
                ) from exc
            if not line:
                return
            if not line.endswith(b"\n"):
                return  # cut mid-line: the agent died writing it
            try:
                yield decode_event(line)
            except (msgspec.DecodeError, ValueError):
                raise AgentError(
                    f"the agent sent a line that is no event: {_shown(line)}", path=str(self.path)
                ) from None


def _shown(line: bytes) -> str:
    return json.dumps(line[:200].decode("utf-8", "replace"))
