"""The one exception hierarchy of remote-sync.

Every error the engine raises on purpose is a :class:`RemoteSyncError`. Each carries the host
and the path it concerns (when there is one) and a hint that tells the user what to do next, so
a message printed alone is enough to act on. The CLI maps the classes to exit codes:
:class:`ConfigError` is a usage/configuration error (exit 2; a library call's bad argument is
its subclass :class:`ArgumentError`, also a ValueError), :class:`TransferCancelledError`
is a cancellation (exit 130), :class:`LockedError` another run holding the destination (exit
75), everything else is a failure of that host or file (exit 1).

Also how what a host holds is said: :func:`path_text` and :func:`path_bytes` for paths,
:func:`showable` for a terminal (and, through it, for the log lines the commands print on
stderr: :mod:`remote_sync.logformat`). No logging imported here: the client of the agent
loads this module, and under ``--json`` logs only when a sink fails.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Sequence


class RemoteSyncError(Exception):
    """Base class: a message plus the host, path and hint it concerns."""

    default_hint: str = ""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.path = path
        self.hint = hint if hint is not None else self.default_hint

    @property
    def kind(self) -> str:
        """A short stable name for scripts (``--json`` events carry it)."""
        return _KIND_BY_CLASS.get(type(self).__name__, "error")

    def __str__(self) -> str:
        # A hostile path (newlines, control bytes) on one line, escaped as listings show it.
        path = None if self.path is None else showable(self.path)
        where = ": ".join(part for part in (self.host, path) if part)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} ({self.hint})" if self.hint else text


# -- the shown form of names ----------------------------------------------------------------
#
# Hosts name their files with any bytes. A name is shown as text in which ``\xNN`` is one
# byte (one that is not UTF-8, or a control character) and ``\uNNNN`` one character (a C1
# or bidirectional control), as Python's ``backslashreplace`` writes them. A backslash that
# would read as the start of such an escape is written as one itself, ``\x5c``, as rsync
# writes a ``\#`` as ``\#134``: any other backslash stays as it is, so a name holding one
# shows as typed, and every shown name reads back to its bytes (:func:`path_bytes`).

# The patterns are compiled when first used, not at import (each is a tenth of a millisecond
# or more): the client of the agent imports this module and most of its runs use none.


@functools.cache
def _like_an_escape() -> re.Pattern[bytes]:
    # A backslash followed by what reads as an escape: shown as ``\x5c`` (see above).
    return re.compile(rb"\\(?=x[0-9a-f]{2}|u[0-9a-f]{4})")


@functools.cache
def _escape() -> re.Pattern[bytes]:
    return re.compile(rb"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4}))")


def path_text(path: bytes) -> str:
    """A remote path (any bytes) as text for messages, events and listings: bytes that are
    not UTF-8 appear as ``\\xNN`` escapes, and a backslash that would read as one as
    ``\\x5c``, so the text names the file exactly (:func:`path_bytes` reads it back) and
    always encodes."""
    if b"\\" in path:
        path = _like_an_escape().sub(rb"\\x5c", path)
    return path.decode("utf-8", "backslashreplace")


def path_bytes(text: str) -> bytes:
    """The bytes a path shown as ``text`` names (by :func:`path_text`, and on a terminal by
    :func:`showable`): its ``\\xNN`` and ``\\uNNNN`` escapes undone. A name typed as it is
    reads the same unless it holds such escapes; callers that accept both try this first."""
    data = text.encode("utf-8", "surrogateescape")
    if b"\\" not in data:
        return data
    return _escape().sub(_unescape, data)


def _unescape(match: re.Match[bytes]) -> bytes:
    if match[1] is not None:
        return bytes([int(match[1], 16)])
    code = int(match[2], 16)
    # A surrogate has no UTF-8 form (no file name holds one): left as typed.
    return match[0] if 0xD800 <= code <= 0xDFFF else chr(code).encode()


def escape_surrogate(match: re.Match[str]) -> str:
    """The escape of a lone surrogate: ``\\xNN`` for an undecodable byte that
    ``surrogateescape`` kept, ``\\uNNNN`` for any other."""
    code = ord(match[0])
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


# Control characters (escape sequences, carriage returns, C1 codes), bidirectional overrides and
# isolates (U+202A-202E, U+2066-2069; printed raw, they reorder what follows them on screen, so
# a name or a message could show another text) and lone surrogates (undecodable bytes).
@functools.cache
def _unshowable(lines: bool) -> re.Pattern[str]:
    if lines:  # newlines and tabs kept
        return re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
    return re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def showable(text: str, *, lines: bool = False) -> str:
    """``text`` safe to print on a terminal: control characters and undecodable bytes as
    ``\\xNN``, C1 and bidirectional controls as ``\\uNNNN`` (so a shown path reads back with
    :func:`path_bytes`: ``\\x85`` is the byte 0x85, ``\\u0085`` the character). ``lines``
    keeps newlines and tabs; otherwise they are escaped too. Hosts name files and write
    transcripts: what they hold is hostile, and an escape sequence printed raw could retitle,
    clear or drive the terminal."""
    pattern = _unshowable(lines)
    return pattern.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match[0])
    if 0xD800 <= code <= 0xDFFF:
        return escape_surrogate(match)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def close_matches(word: str, candidates: Sequence[str], n: int) -> list[str]:
    """The at most ``n`` of ``candidates`` closest to ``word`` (difflib's), for the "did you
    mean" of a mistyped name. difflib is imported here, when a name is mistyped, not with the
    modules that word such errors: a sync's process never needs it (0.2 MB of RSS)."""
    import difflib

    return difflib.get_close_matches(word, candidates, n=n)


class ConfigError(RemoteSyncError):
    """The command line, an inventory or an ssh_config is wrong: nothing was attempted."""

    default_hint = "fix the configuration and run again"


class ArgumentError(ConfigError, ValueError):
    """A library call was given an argument it cannot take: a value out of range, a
    combination that cannot be what was meant (``hosts`` without ``remote=True``, a host's
    name without ``dest``), or no hosts. A :class:`ConfigError` like every usage error, and
    also a :class:`ValueError`, as Python's own functions raise for a bad argument: some of
    these were plain ValueErrors before they joined this hierarchy, and a caller catching
    ValueError still catches them. Only these: a ConfigError in general is not a ValueError,
    as the code that reads ssh_configs and keys catches asyncssh's ValueErrors around code
    that raises ConfigErrors of its own, which must pass through."""


class SSHError(RemoteSyncError):
    """Something between us and a host failed."""


class HostUnreachableError(SSHError):
    """TCP connect, DNS, proxy or handshake failed, or timed out."""

    default_hint = (
        "check that the host is up, the address and port are right and the network reaches it"
    )


class AuthenticationError(SSHError):
    """The server refused every key and method we offered."""

    default_hint = (
        "check the user name, the identity file or ssh-agent, and the server's authorized_keys"
    )


class HostKeyError(SSHError):
    """The server's host key is unknown or does not match known_hosts."""

    default_hint = (
        "verify the host's key out of band and update known_hosts "
        "(ssh-keygen -R HOST, then connect once with ssh); checks are never skipped"
    )


class ChannelRefusedError(SSHError):
    """The server refused to open a session channel (MaxSessions, policy)."""

    default_hint = "lower the per-host channel cap or raise MaxSessions in the server's sshd_config"


class ConnectionLostError(SSHError):
    """An established connection dropped while an operation was using it."""

    default_hint = (
        "the host went away midway; run again: what was committed is kept, a file cut "
        "midway is fetched again"
    )


class IdleTimeoutError(SSHError):
    """A remote command produced no output for longer than the idle timeout."""

    default_hint = (
        "the host or link stalled; if the host is only slow (a long walk of a large tree, a "
        "busy disk), raise --timeout (idle_timeout in the library; 0 or None: no limit)"
    )


class ListingIncompleteError(SSHError):
    """A host's listing missed part of its tree: find could not read a directory (its
    :attr:`path`, relative to the root), or a file could not be read, so what is there was
    not seen. The rest of the listing stands."""

    default_hint = "let the login user read the host's files; the rest was read"

    #: The same listing's other errors (a directory each): one exception is raised, and its
    #: catcher reports it and these, each on its own (set on the instance by the listing).
    also: tuple[RemoteSyncError, ...] = ()


class PermissionDeniedError(ListingIncompleteError):
    """The host would not let the login user read a file (its :attr:`path`): a sync fails the
    file, a remote listing leaves its session out. Either way the same kind names it."""

    default_hint = "let the login user read the file on the host (or exclude it), then run again"


class ReadFailedError(ListingIncompleteError):
    """Reading a file (its :attr:`path`) on the host failed midway (an I/O error there)."""

    default_hint = "check the host's disk and its log (an I/O error?); a rerun retries"


class RemoteCommandError(SSHError):
    """A remote command exited non-zero or was killed by a signal."""

    default_hint = "see the remote stderr above; the command ran but failed on the host"

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        path: str | None = None,
        hint: str | None = None,
        exit_status: int | None = None,
        exit_signal: str | None = None,
        stderr_tail: bytes = b"",
    ) -> None:
        super().__init__(message, host=host, path=path, hint=hint)
        self.exit_status = exit_status
        self.exit_signal = exit_signal
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        base = super().__str__()
        tail = self.stderr_tail.decode("utf-8", "replace").strip()
        return f"{base}\n  remote stderr: {tail}" if tail else base

    def restated(
        self, message: str, *, host: str | None, hint: str | None = None
    ) -> RemoteCommandError:
        """The same failure said the way the caller knows it (its exit status and stderr
        kept), to be raised ``from`` this one."""
        return RemoteCommandError(
            message,
            host=host,
            hint=hint,
            exit_status=self.exit_status,
            stderr_tail=self.stderr_tail,
        )


class TransferCancelledError(RemoteSyncError):
    """The transfer was cancelled through the cancellation registry (or Ctrl-C)."""

    default_hint = (
        "cancelled on request; run again: what was committed is kept, a file cut midway "
        "is fetched again"
    )


class MirrorError(RemoteSyncError):
    """The local mirror could not be written (disk full, permissions, corrupt layout)."""

    default_hint = "free space or fix permissions on the destination, then run again"


#: Why no sync fetches a mirrored file again, by the state the mirror has of it on the host.
GONE = {
    "deleted": "the host deleted it",
    "renamed": "the host renamed it, and its new name is mirrored apart",
}


def refetch_hint(host: str, dest: object, state: str = "live") -> str:
    """The hint for a mirrored file gone from the mirror (removed by hand or by a cleanup),
    by its ``state`` on the host: the file's, as the state's ``files`` table has it (a
    session's state counts an agent's tombstone, which the host still has, as deleted). A
    sync's recovery finds it missing and records the loss (nothing committed, in doubt) and
    drops it from the index; while the host has the file that sync fetches it whole again. A
    file the host deleted or renamed away no sync fetches: only a backup of the mirror has it,
    and the recorded loss is what ends ``check`` counting it as damage. A rebuild does not get
    it back (its checkpoint still claims its bytes, so every rebuild reports it again)."""
    # Quoted: the command is there to be copied, and a name or a folder may hold a space.
    command = f"remote-sync sync {shlex.quote(host)} --dest {shlex.quote(str(dest))}"
    sync = f"`{command}` (with your inventory)"
    gone = GONE.get(state)
    if gone is None:
        return (
            f"run {sync}: it fetches the file again while the host still has it, and "
            "otherwise drops it from the index"
        )
    return (
        f"put the copy back from a backup of the mirror if there is one (no sync fetches it "
        f"again: {gone}), or run {sync}: it records the loss in the state and the index"
    )


class StateError(MirrorError):
    """The mirror's checkpoint database is unusable."""


class DestinationError(ConfigError):
    """The destination cannot be used at all (not a directory, not writable): nothing was
    attempted, so it is a usage error (exit 2), not a failed sync."""

    default_hint = "give dest (--dest) a directory this user can write (or a path to create)"


class OutputError(RemoteSyncError):
    """The command's own output could not be written (stdout on a full disk, an I/O error):
    what it did may be whole, but the report a script or a log reads is not. A reader that
    closed the pipe (``| head``) is not one: it has read what it wanted."""

    default_hint = "free space on the disk the output is redirected to (a log's), then run again"


class LockedError(RemoteSyncError):
    """Another remote-sync run holds the destination's lock."""

    default_hint = "wait for the other run to finish, or stop it; nothing was touched"


class AgentError(RemoteSyncError):
    """The sync agent (``remote-sync agent``) could not serve a sync it took: it went away
    mid-sync, or answered out of its protocol."""

    default_hint = (
        "run the sync again (it resumes from the last checkpoints), with --no-agent to run it "
        "in this process; the agent's log (its journal) says more"
    )


class AgentRefusedError(AgentError):
    """The agent cannot serve this request (another inventory, a host not in its own,
    another protocol version, an agent stopping or busy): the client runs the sync itself."""

    default_hint = "the sync runs in this process instead, as with --no-agent"


class ProtocolError(RemoteSyncError):
    """The remote's output did not follow the framing we asked for (broken listing, stray bytes)."""

    default_hint = "the remote shell printed unexpected output; check its rc files for echo/stty"


class TooMuchOutputError(ProtocolError):
    """A host sent more than the client bounds its command's output by: a fetch more bytes
    than its requests can produce (with their framing), a listing (a sync's, or that of
    ``sessions list --remote``) more files or bytes than a host's listing may hold, or a
    remote listing or show more of a file than its size and room for growth. Without this
    bound a host that keeps sending valid-looking output (or a tool that misbehaves) would
    keep its round alive for ever, the idle timeout never reached."""


_KIND_BY_CLASS = {
    "ConfigError": "config",
    "ArgumentError": "config",
    "HostUnreachableError": "unreachable",
    "AuthenticationError": "auth_failed",
    "HostKeyError": "host_key",
    "ChannelRefusedError": "channel_refused",
    "ConnectionLostError": "connection_lost",
    "IdleTimeoutError": "idle_timeout",
    "ListingIncompleteError": "listing_incomplete",
    "PermissionDeniedError": "permission_denied",
    "ReadFailedError": "read_failed",
    "RemoteCommandError": "remote_command_failed",
    "TransferCancelledError": "cancelled",
    "MirrorError": "mirror",
    "StateError": "state",
    "DestinationError": "destination",
    "LockedError": "locked",
    "AgentError": "agent",
    "AgentRefusedError": "agent_refused",
    "OutputError": "output",
    "ProtocolError": "protocol",
    "TooMuchOutputError": "too_much_output",
}
