"""Progress and result events, and their two renderers (rich on a TTY, JSON lines for scripts).

The engine reports everything it does as events; it never prints. Every event is a msgspec
Struct tagged by ``type`` (``progress``, ``host_done``, ``error``, ``warning``, ``summary``,
and with ``--dry-run`` ``planned``) so ``--json`` output is one self-describing JSON object
per line, as restic and borg do it.

Reporting must never cost a run its work: :func:`guarded` wraps a sink so that an exception it
raises is logged instead of reaching the engine's host tasks, and the JSON renderer stops
writing, without error, once its reader has gone away (``sync --json | head``). Strings in
events may come from hostile names (a host or path with bytes that are not UTF-8, kept as
surrogate escapes): :func:`json_safe` turns them into backslash escapes so every event encodes.
Those helpers are :mod:`remote_sync.sinks`' (no msgspec there, for the client of the agent,
which relays the agent's lines without these Structs), named here too.
Remote paths in events are :func:`remote_sync.errors.path_text`'s form, which
:func:`remote_sync.errors.path_bytes` reads back; renderers print them through
:func:`remote_sync.errors.showable`, which escapes what a terminal would take for a command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Self

import msgspec

from .errors import RemoteSyncError
from .sinks import Throttled, line_writer

# Named here too, as before they moved to sinks.py (callers import them from here).
from .sinks import guarded as guarded
from .sinks import json_safe as json_safe
from .sinks import one_line as one_line
from .sinks import stdout_to_devnull as stdout_to_devnull

if TYPE_CHECKING:
    from .ssh.options import ConfigWarning


class FileCounts(msgspec.Struct):
    """Files by what happened to them in one round."""

    new: int = 0
    grown: int = 0
    rewritten: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0

    def add(self, other: FileCounts) -> None:
        for field in self.__struct_fields__:
            setattr(self, field, getattr(self, field) + getattr(other, field))


class Progress(msgspec.Struct, tag="progress", tag_field="type"):
    """How far one host's work is: ``listing``, ``fetching`` (a sync's files, a listing's
    transcripts, a show's read), then ``done`` once it ended, after an :class:`ErrorEvent`
    when it failed or was cancelled through the registry (a caller that stops the work
    itself, by its own cancel scope or by closing a listing, gets no more events). ``host`` is
    the inventory name; a listing of a mirror's index names the host ``""`` (the index holds
    every host's rows), and so does the error event of its cancel."""

    host: str
    phase: str  # "listing", "fetching", "done"
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


class _Problem(msgspec.Struct):
    """What an error and a warning say alike: the host and path concerned (None: none in
    particular), a stable ``kind`` for scripts, the message and what to do."""

    host: str | None
    path: str | None
    kind: str
    message: str
    hint: str

    @classmethod
    def _json_safe(
        cls, host: str | None, path: str | None, kind: str, message: str, hint: str
    ) -> Self:
        """The event with its strings made :func:`json_safe` (a host or path named on the
        command line may hold bytes that are not UTF-8)."""
        return cls(
            host=None if host is None else json_safe(host),
            path=None if path is None else json_safe(path),
            kind=kind,
            message=json_safe(message),
            hint=json_safe(hint),
        )


class ErrorEvent(_Problem, tag="error", tag_field="type"):
    @classmethod
    def from_exception(cls, exc: RemoteSyncError) -> ErrorEvent:
        """The event for ``exc``, its strings made :func:`json_safe`."""
        return cls._json_safe(exc.host, exc.path, exc.kind, exc.message, exc.hint)


class WarningEvent(_Problem, tag="warning", tag_field="type"):
    """Something the user should know that fails nothing: the run's outcome stands."""

    @classmethod
    def from_config(cls, host: str, said: ConfigWarning) -> WarningEvent:
        """The event (kind ``ssh_config``) for what ``host``'s ssh_config asks for that its
        connection leaves out (:meth:`~remote_sync.ssh.pool.SSHPool.config_warnings`), as
        ``sync``, ``sessions list --remote`` and ``sessions show --remote`` say it once per
        host; its strings made :func:`json_safe`, as an error's are."""
        return cls._json_safe(host, said.path, "ssh_config", said.message, said.hint)


class HostDone(msgspec.Struct, tag="host_done", tag_field="type"):
    host: str
    status: str  # "ok", "partial" (some files failed), "failed", "cancelled"
    files: FileCounts
    bytes: int
    versions_kept: int = 0
    seconds: float = 0.0
    error: str | None = None


class Summary(msgspec.Struct, tag="summary", tag_field="type"):
    """The end of a sync. ``exit_code`` is the CLI's: 0 every host synced, 1 a host or a file
    failed, 2 every host failed on its configuration, 130 cancelled (through the registry,
    or Ctrl-C). ``hosts_failed`` counts the hosts that failed and those a cancel stopped;
    each one's :class:`HostDone` ``status`` (``failed`` or ``cancelled``) tells which."""

    hosts: list[HostDone]
    files: FileCounts
    bytes: int
    hosts_ok: int
    hosts_failed: int
    exit_code: int
    dry_run: bool
    seconds: float
    #: Hosts that synced but with some files failed (``hosts_ok`` leaves them out).
    hosts_partial: int = 0


class Planned(msgspec.Struct, tag="planned", tag_field="type"):
    """With ``--dry-run``: one file that a sync would move (like ``rsync -n``'s list)."""

    host: str
    path: str  # relative to the host's root, as errors.path_text shows it (\xNN: a byte)
    action: str  # "new", "grown", "rewritten" or "deleted" (marked, never removed)
    bytes: int  # bytes the fetch would ask for (0 for a deletion)


Event = Progress | ErrorEvent | WarningEvent | HostDone | Summary | Planned
Emit = Callable[[Event], None]

_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """``event`` as one JSON object (no newline, nor anything a line splitter takes for one:
    see :func:`one_line`); never fails on a string's contents."""
    try:
        data = _encoder.encode(event)
    except UnicodeEncodeError:
        # Rare (a surrogate-escaped name), so only then pay for a copy of the event.
        data = _encoder.encode(_json_safe_value(msgspec.to_builtins(event)))
    return one_line(data)


def _json_safe_value(value: Any) -> Any:
    if isinstance(value, str):
        return json_safe(value)
    if isinstance(value, dict):
        return {json_safe(k): _json_safe_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe_value(v) for v in value]
    return value


def json_lines_renderer(out: IO[bytes] | None = None) -> Emit:
    """Write each event as one JSON line (stdout by default), flushed at once.

    When the reader goes away (``sync --json | head``) the renderer stops writing, and stdout is
    pointed at /dev/null so that nothing else (a later flush, the interpreter's at exit) fails
    on it: a reader that has seen enough is not a failure of the sync, which goes on to the end.
    """
    write = line_writer(out)

    def emit(event: Event) -> None:
        write(encode_event(event) + b"\n")

    return emit


class ThrottledProgress(Throttled[Event]):
    """Pass progress events on at most every ``interval`` seconds per host (others at once)."""

    def __init__(self, emit: Emit, interval: float = 0.5) -> None:
        super().__init__(emit, _fetching_host, interval)


def _fetching_host(event: Event) -> str | None:
    if isinstance(event, Progress) and event.phase == "fetching":
        return event.host
    return None


def decode_event(line: bytes | str) -> Any:
    """Parse one JSON line back into its event Struct (for scripts and tests)."""
    return msgspec.json.decode(line, type=Event)
