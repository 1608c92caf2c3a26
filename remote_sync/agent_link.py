"""The sync agent's control socket and its protocol, shared by the agent and its clients.

What it owns: where the socket is (``DIR/.remote-sync/agent.sock``) and how to reach a path
longer than ``AF_UNIX`` allows, the request a client sends (:func:`sync_request`, written by
:func:`encode_line`; the agent reads it as :mod:`remote_sync.agent_protocol`'s
:class:`~remote_sync.agent_protocol.SyncRequest`), the peer's uid
(``SO_PEERCRED``), the client's side of a connection (:func:`connect`, :class:`AgentLink`)
and the events it reads, kept as the line each came in (:class:`AgentEvent`), each checked
for no more than what the client reads of it: UTF-8 JSON (no NaN or Infinity) of an object
whose ``type`` is an event's, a progress event's ``host`` and ``phase`` strings, an error's
``kind``, ``message`` and ``hint`` strings and ``host`` and ``path`` strings or null, a
summary's ``exit_code`` an exit status (0-255); the rest is passed on as it came (the agent,
this package's own process, writes them from :mod:`remote_sync.events`' Structs). And the
agent's defaults, which the CLI and the library take without importing the agent.
Standard library only: a ``remote-sync sync`` that goes through the agent never imports
asyncssh, anyio or the engine, which is most of what the agent saves it, and under
``--json`` no msgspec or logging either (a third of what was left of its start-up; the live
display decodes the events it shows, and logs).

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import AgentError, RemoteSyncError
from .sinks import json_safe, one_line

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


def socket_path(dest: Path) -> Path:
    """Where the agent of the mirror ``dest`` listens."""
    return dest / CONTROL_DIR / SOCKET_NAME


def sync_request(
    *,
    inventory: str,
    hosts: list[str],
    tags: list[str],
    dry_run: bool,
    index: bool,
    concurrency: int,
    idle_timeout: float | None,
    compress: bool | None,
) -> dict[str, Any]:
    """The request a client sends for a sync (see the module's protocol), as
    :func:`encode_line` writes it: a plain mapping, where the agent's
    :class:`~remote_sync.agent_protocol.SyncRequest` would import msgspec into the client."""
    return {
        "type": "sync",
        "version": PROTOCOL_VERSION,
        "inventory": inventory,
        "hosts": hosts,
        "tags": tags,
        "dry_run": dry_run,
        "index": index,
        "concurrency": concurrency,
        "idle_timeout": idle_timeout,
        "compress": compress,
    }


def encode_line(message: Mapping[str, Any]) -> bytes:
    """``message`` (a request's mapping: :func:`sync_request`) as its line of the protocol.
    A name that is not UTF-8 (a surrogate) is a UnicodeEncodeError. U+0085,
    U+2028 and U+2029 (a host or tag as typed may hold them) are written escaped, as on
    every JSON line we write (:func:`~remote_sync.sinks.one_line`): the agent splits only at
    ``\n`` and decodes either form alike (an agent of an earlier release too), but other
    line splitters (a script reading a captured exchange) split at them."""
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return one_line(data) + b"\n"


#: What the client sends to cancel its sync.
CANCEL_LINE = b'{"type":"cancel"}\n'


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

    def send(self, request: Mapping[str, Any]) -> None:
        self.sock.sendall(encode_line(request))

    def cancel(self) -> None:
        """Ask the agent to cancel this connection's sync (it may have ended: no error)."""
        with contextlib.suppress(OSError):
            self.sock.sendall(CANCEL_LINE)

    def lines(self, decode: Callable[[bytes], Any] | None = None) -> Iterator[AgentEvent]:
        """The events the agent sends, until it closes the connection, each kept as the line
        it came in (see :class:`AgentEvent`) once what the client reads of it is checked (see
        the module's docstring), and decoded by ``decode`` when one is given (the live
        display reads every field: :func:`remote_sync.events.decode_event`); a line that
        fails either is an :class:`AgentError`."""
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
            fields = _checked_event(line)
            decoded: Any = None
            if fields is not None and decode is not None:
                try:
                    decoded = decode(line)
                except ValueError:  # msgspec's errors are ValueErrors
                    fields = None
            if fields is None:
                raise AgentError(
                    f"the agent sent a line that is no event: {_shown(line)}", path=str(self.path)
                )
            yield AgentEvent(line, fields, decoded)


def _shown(line: bytes) -> str:
    return json.dumps(line[:200].decode("utf-8", "replace"))


class AgentEvent:
    """One event the agent sent: its ``line`` as it came (the agent's ``sync --json`` line,
    its newline included), which the command line passes on under ``--json`` as it is, and
    its ``fields`` as JSON reads them (``fields["type"]`` its kind), and what
    :meth:`AgentLink.lines`' ``decode`` made of it (None without one)."""

    __slots__ = ("decoded", "fields", "line")

    def __init__(self, line: bytes, fields: dict[str, Any], decoded: Any = None) -> None:
        self.line = line
        self.fields = fields
        self.decoded = decoded

    @classmethod
    def of_error(cls, exc: RemoteSyncError) -> AgentEvent:
        """The error event of ``exc``, this client's own (the agent gone, a line that is no
        event, a second Ctrl-C), as :meth:`remote_sync.events.ErrorEvent.from_exception`
        makes it and :func:`~remote_sync.events.encode_event` writes it, byte for byte."""
        fields: dict[str, Any] = {
            "type": "error",
            "host": None if exc.host is None else json_safe(exc.host),
            "path": None if exc.path is None else json_safe(exc.path),
            "kind": exc.kind,
            "message": json_safe(exc.message),
            "hint": json_safe(exc.hint),
        }
        data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        return cls(one_line(data) + b"\n", fields)


# -- what the client reads of the agent's lines ---------------------------------------------------
#
# The agent is this package's own process (the same uid, SO_PEERCRED; the same protocol
# version, checked before it answers), and it writes its events with msgspec from
# remote_sync.events' Structs. The client relays them as they came, so it checks only what
# it reads itself, that a line can neither crash it nor give it a wrong exit code: UTF-8
# JSON (the standard library's json, a tenth of msgspec's import; no NaN or Infinity) of an
# object whose "type" is a known event's, the fields it reads of its kind of the types it
# reads them as (a summary's exit code an exit status, 0 to 255). Anything else on the line
# is passed on as it came.

#: Each event's kind, and the fields the client reads of it (the sync's command line:
#: the throttle, the exit code, the error it says): name, type, and whether it may be null.
_READ: dict[str, tuple[tuple[str, type, bool], ...]] = {
    "progress": (("host", str, False), ("phase", str, False)),
    "error": (
        ("kind", str, False),
        ("message", str, False),
        ("hint", str, False),
        ("host", str, True),
        ("path", str, True),
    ),
    "summary": (("exit_code", int, False),),
    "warning": (),
    "host_done": (),
    "planned": (),
}


def _checked_event(line: bytes) -> dict[str, Any] | None:
    """The fields of the event on ``line``, or None when it is none the client can read
    (see above)."""
    try:
        fields = json.loads(line.decode(), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not UTF-8 (a ValueError too), not JSON, or nested
        return None  # deeper than json's recursion goes
    if type(fields) is not dict:
        return None
    kind = fields.get("type")
    read = _READ.get(kind) if type(kind) is str else None
    if read is None:
        return None
    for name, kind_of, nullable in read:
        if name not in fields:
            return None
        value = fields[name]
        # type(), not isinstance: a bool is no exit code.
        if type(value) is not kind_of and not (nullable and value is None):
            return None
    if kind == "summary" and not 0 <= fields["exit_code"] <= 255:
        return None  # no exit status: os._exit fails on it, or takes 256 for 0
    return fields


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
