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
Remote paths in events are :func:`remote_sync.errors.path_text`'s form, which
:func:`remote_sync.errors.path_bytes` reads back; renderers print them through
:func:`remote_sync.errors.showable`, which escapes what a terminal would take for a command.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Self

import msgspec

from .errors import RemoteSyncError, escape_surrogate

if TYPE_CHECKING:
    from .ssh.options import ConfigWarning

log = logging.getLogger(__name__)


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
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_safe(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes kept by ``surrogateescape``) written as
    backslash escapes (``\\xff``, as ``backslashreplace`` shows them), so it encodes as UTF-8."""
    if text.isascii():
        return text
    return _SURROGATE.sub(escape_surrogate, text)


def encode_event(event: Event) -> bytes:
    """``event`` as one JSON object (no newline, nor anything a line splitter takes for one:
    see :func:`one_line`); never fails on a string's contents."""
    try:
        data = _encoder.encode(event)
    except UnicodeEncodeError:
        # Rare (a surrogate-escaped name), so only then pay for a copy of the event.
        data = _encoder.encode(_json_safe_value(msgspec.to_builtins(event)))
    return one_line(data)


def one_line(data: bytes) -> bytes:
    """JSON ``data`` (UTF-8) with U+0085, U+2028 and U+2029 written as ``\\uNNNN``: valid in
    JSON strings, but line splitters take them for line ends (Python's ``str.splitlines``
    all three, JavaScript's the last two), and a host's file name or message text may hold
    them. (JSON itself escapes every character below U+0020.)"""
    if b"\xc2\x85" in data:
        data = data.replace(b"\xc2\x85", b"\\u0085")
    if b"\xe2\x80" in data:
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return data


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
    stream = out if out is not None else sys.stdout.buffer
    closed = False

    def emit(event: Event) -> None:
        nonlocal closed
        if closed:
            return
        try:
            stream.write(encode_event(event) + b"\n")
            stream.flush()
        except BrokenPipeError:
            closed = True
            if out is None:
                stdout_to_devnull()

    return emit


def stdout_to_devnull() -> None:
    """Point file descriptor 1 at /dev/null (Python's recipe for a closed pipe, see the
    ``signal`` module's note on SIGPIPE), so pending and later writes to stdout go nowhere."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced or closed stdout: nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def guarded(emit: Emit) -> Emit:
    """``emit`` that never raises: what a sink raises is logged, the event dropped.

    The engine calls ``emit`` inside every host's task, so an exception from a sink (a bug in a
    caller's callback, a terminal gone away) would abort the whole run and lose its data. The
    run's data and state matter more than its report. ``SystemExit`` is caught too: rich's
    default reaction to a closed pipe is to raise it. Later events are still passed on.
    """
    failed = False

    def call(event: Event) -> None:
        nonlocal failed
        try:
            emit(event)
        except (Exception, SystemExit) as exc:
            level = logging.DEBUG if failed else logging.WARNING
            log.log(
                level, "cannot report an event (%s: %s); the run goes on", type(exc).__name__, exc
            )
            failed = True

    return call


class ThrottledProgress:
    """Pass progress events on at most every ``interval`` seconds per host (others at once)."""

    def __init__(self, emit: Emit, interval: float = 0.5) -> None:
        self.emit = emit
        self.interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress) and event.phase == "fetching":
            now = time.monotonic()
            if now - self._last.get(event.host, 0.0) < self.interval:
                return
            self._last[event.host] = now
        self.emit(event)


def decode_event(line: bytes | str) -> Any:
    """Parse one JSON line back into its event Struct (for scripts and tests)."""
    return msgspec.json.decode(line, type=Event)
