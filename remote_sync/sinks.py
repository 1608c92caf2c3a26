"""What passing events on takes, whatever type the events have: no msgspec, no logging.

What it owns: a sink that never raises into its caller (:func:`guarded`), progress passed on
at most so often per host (:class:`Throttled`), lines written to stdout until its reader has
gone (:func:`line_writer`), stdout pointed at /dev/null then (:func:`stdout_to_devnull`), and
a JSON line's strings made safe to encode and to split (:func:`json_safe`, :func:`one_line`).
:mod:`remote_sync.events` builds its event sinks on these, for the event Structs; the client
of the agent (:mod:`remote_sync.cli.sync`) relays the agent's lines through the same ones,
without importing msgspec, whose import alone was a fifth of that client's start-up. Standard
library only at import time.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Generic, TypeVar

from .errors import escape_surrogate

if TYPE_CHECKING:
    import re

E = TypeVar("E")


def guarded(
    emit: Callable[[E], None], *, logging_setup: Callable[[], None] | None = None
) -> Callable[[E], None]:
    """``emit`` that never raises: what a sink raises is logged, the event dropped.

    The engine calls ``emit`` inside every host's task, so an exception from a sink (a bug in a
    caller's callback, a terminal gone away) would abort the whole run and lose its data. The
    run's data and state matter more than its report. ``SystemExit`` is caught too: rich's
    default reaction to a closed pipe is to raise it. Later events are still passed on.

    ``logging`` is imported at the first failure, not before (the client of the agent loads
    it for nothing otherwise); ``logging_setup``, when given, is called then, before the
    line is logged, by a caller that left the logging's set-up until it is needed.
    """
    failed = False

    def call(event: E) -> None:
        nonlocal failed
        try:
            emit(event)
        except (Exception, SystemExit) as exc:
            import logging

            if not failed and logging_setup is not None:
                logging_setup()
            level = logging.DEBUG if failed else logging.WARNING
            # The logger's name is the one the line always had (the sinks were events.py's).
            logging.getLogger("remote_sync.events").log(
                level, "cannot report an event (%s: %s); the run goes on", type(exc).__name__, exc
            )
            failed = True

    return call


class Throttled(Generic[E]):
    """Pass the progress of a host's fetching on at most every ``interval`` seconds per host,
    every other event at once. ``fetching_host`` says which events are such progress: the
    host's name, else None."""

    def __init__(
        self,
        emit: Callable[[E], None],
        fetching_host: Callable[[E], str | None],
        interval: float = 0.5,
    ) -> None:
        self.emit = emit
        self.interval = interval
        self._fetching_host = fetching_host
        self._last: dict[str, float] = {}

    def __call__(self, event: E) -> None:
        host = self._fetching_host(event)
        if host is not None:
            now = time.monotonic()
            if now - self._last.get(host, 0.0) < self.interval:
                return
            self._last[host] = now
        self.emit(event)


def line_writer(out: IO[bytes] | None = None) -> Callable[[bytes], None]:
    """Write each line given (its newline included) to ``out`` (stdout by default), flushed
    at once: :func:`remote_sync.events.json_lines_renderer`'s writes, and the client of the
    agent's of the lines it relays.

    When the reader goes away (``sync --json | head``) it stops writing, and stdout is
    pointed at /dev/null so that nothing else (a later flush, the interpreter's at exit) fails
    on it: a reader that has seen enough is not a failure of the sync, which goes on to the end.
    """
    stream = out if out is not None else sys.stdout.buffer
    closed = False

    def write(line: bytes) -> None:
        nonlocal closed
        if closed:
            return
        try:
            stream.write(line)
            stream.flush()
        except BrokenPipeError:
            closed = True
            if out is None:
                stdout_to_devnull()

    return write


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


def json_safe(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes kept by ``surrogateescape``) written as
    backslash escapes (``\\xff``, as ``backslashreplace`` shows them), so it encodes as UTF-8."""
    if text.isascii():
        return text
    return _surrogate().sub(escape_surrogate, text)


@functools.cache
def _surrogate() -> re.Pattern[str]:
    """Compiled when first needed: most runs never see a non-ASCII name."""
    import re

    return re.compile("[\ud800-\udfff]")


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
