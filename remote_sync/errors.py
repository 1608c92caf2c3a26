"""The one exception hierarchy of remote-sync.

Every error the engine raises on purpose is a :class:`RemoteSyncError`. Each carries the host
and the path it concerns (when there is one) and a hint that tells the user what to do next, so
a message printed alone is enough to act on. The CLI maps the classes to exit codes:
:class:`ConfigError` is a usage/configuration error (exit 2), :class:`TransferCancelledError`
is a cancellation (exit 130), everything else is a failure of that host or file (exit 1).
"""

from __future__ import annotations

import re


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
        where = ": ".join(part for part in (self.host, _printable(self.path)) if part)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text} ({self.hint})" if self.hint else text


def path_text(path: bytes) -> str:
    """A remote path (any bytes) as text for messages and events: bytes that are not UTF-8
    appear as ``\\xNN`` escapes, so the text names the file exactly and always encodes."""
    return path.decode("utf-8", "backslashreplace")


_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def path_bytes(text: str) -> bytes:
    """The bytes :func:`path_text` showed as ``text`` (its ``\\xNN`` escapes undone). A name
    that really holds such text reads differently; callers that must tell try both."""
    data = text.encode("utf-8", "surrogateescape")
    if b"\\x" not in data:
        return data
    return _ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), data)


def _printable(path: str | None) -> str | None:
    """Show a hostile path (newlines, control bytes) on one line without hiding what it is."""
    if path is None:
        return None
    if path.isprintable():
        return path
    return repr(path)


class ConfigError(RemoteSyncError):
    """The command line, an inventory or an ssh_config is wrong: nothing was attempted."""

    default_hint = "fix the configuration and run again"


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


class StateError(MirrorError):
    """The mirror's checkpoint database is unusable."""


class DestinationError(ConfigError):
    """The destination cannot be used at all (not a directory, not writable): nothing was
    attempted, so it is a usage error (exit 2), not a failed sync."""

    default_hint = "give dest (--dest) a directory this user can write (or a path to create)"


class LockedError(RemoteSyncError):
    """Another remote-sync run holds the destination's lock."""

    default_hint = "wait for the other run to finish, or stop it; nothing was touched"


class ProtocolError(RemoteSyncError):
    """The remote's output did not follow the framing we asked for (broken listing, stray bytes)."""

    default_hint = "the remote shell printed unexpected output; check its rc files for echo/stty"


_KIND_BY_CLASS = {
    "ConfigError": "config",
    "HostUnreachableError": "unreachable",
    "AuthenticationError": "auth_failed",
    "HostKeyError": "host_key",
    "ChannelRefusedError": "channel_refused",
    "ConnectionLostError": "connection_lost",
    "IdleTimeoutError": "idle_timeout",
    "RemoteCommandError": "remote_command_failed",
    "TransferCancelledError": "cancelled",
    "MirrorError": "mirror",
    "StateError": "state",
    "DestinationError": "destination",
    "LockedError": "locked",
    "ProtocolError": "protocol",
}
