"""Progress and result events, and their two renderers (rich on a TTY, JSON lines for scripts).

The engine reports everything it does as events; it never prints. Every event is a msgspec
Struct tagged by ``type`` (``progress``, ``host_done``, ``error``, ``summary``) so ``--json``
output is one self-describing JSON object per line, as restic and borg do it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

import msgspec

from .errors import RemoteSyncError


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
    host: str
    phase: str  # "listing", "fetching", "done"
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type"):
    host: str | None
    path: str | None
    kind: str
    message: str
    hint: str

    @classmethod
    def from_exception(cls, exc: RemoteSyncError) -> ErrorEvent:
        return cls(host=exc.host, path=exc.path, kind=exc.kind, message=exc.message, hint=exc.hint)


class HostDone(msgspec.Struct, tag="host_done", tag_field="type"):
    host: str
    status: str  # "ok", "partial" (some files failed), "failed", "cancelled"
    files: FileCounts
    bytes: int
    versions_kept: int = 0
    seconds: float = 0.0
    error: str | None = None


class Summary(msgspec.Struct, tag="summary", tag_field="type"):
    hosts: list[HostDone]
    files: FileCounts
    bytes: int
    hosts_ok: int
    hosts_failed: int
    exit_code: int
    dry_run: bool
    seconds: float


Event = Progress | ErrorEvent | HostDone | Summary
Emit = Callable[[Event], None]

_encoder = msgspec.json.Encoder()


def json_lines_renderer(out: IO[bytes] | None = None) -> Emit:
    """Write each event as one JSON line (stdout by default), flushed at once."""
    stream = out if out is not None else sys.stdout.buffer

    def emit(event: Event) -> None:
        stream.write(_encoder.encode(event) + b"\n")
        stream.flush()

    return emit


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
