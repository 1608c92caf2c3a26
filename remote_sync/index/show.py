"""Reading the messages of one mirrored session, touching only the bytes that are shown.

What it owns: :func:`read_messages` (the first N messages, the last N, or page K of a
transcript) and :func:`show_session` (the same for a session named by host and session id or
path in a mirror). A transcript may be a GiB; none of the three ways scans it whole:

* ``head``: decodes from the start until N messages are found.
* ``tail``: reads backwards from the end in blocks (:data:`TAIL_FIRST_BLOCK`, doubling up to
  :data:`TAIL_MAX_BLOCK`) until N messages are found; the start of the file is never read
  unless the session is that short.
* ``page`` K of ``page_size`` N: seeks to the index's mark at or before message (K-1)*N (a
  mark records the byte offset of every 256th message) and decodes forward from there.

Messages are numbered like the index counts them: a line is a message when the format's reader
turns it into a :class:`~remote_sync.index.facts.Message`. Shortening text for display is the
CLI's job, not this module's.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..decode.jsonl import DEFAULT_MAX_LINE_BYTES, JsonlDecoder, Record
from ..errors import ConfigError, MirrorError, refetch_hint
from ..mirror.state_reader import read_state
from .facts import FormatReader, Message, ShowResult
from .query import SessionRef, SessionRow, find_session
from .store import load_facts, mark_before

__all__ = [
    "HEAD_BLOCK",
    "TAIL_FIRST_BLOCK",
    "TAIL_MAX_BLOCK",
    "HeldLine",
    "MarkLookup",
    "ShowResult",
    "check_selection",
    "read_messages",
    "show_session",
]

#: Forward reads (head, page) start with this many bytes and double up to ``TAIL_MAX_BLOCK``.
HEAD_BLOCK = 64 * 1024
#: Backward reads (tail) start with this many bytes from the end and double each step.
TAIL_FIRST_BLOCK = 256 * 1024
TAIL_MAX_BLOCK = 16 * 1024 * 1024

#: ``message_no -> (mark's message number, its byte offset)`` for the last mark at or before
#: ``message_no``, or the marks themselves as sorted ``(message_no, offset)`` pairs.
MarkLookup = Callable[[int], tuple[int, int]] | Sequence[tuple[int, int]]


class HeldLine:
    """While a file is read backwards: the line cut by the current read's start, from there
    to its end, gathered as earlier blocks arrive until its start is found.

    A line longer than the decoder accepts (``max_line_bytes``) can be no message, so once it
    is that long its bytes are let go: a tail past a huge line holds at most that many bytes
    of it, and :meth:`take` gives nothing for it.
    """

    __slots__ = ("_parts", "_size", "max_line_bytes", "too_long")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._parts: list[bytes] = []  # the latest first
        self._size = 0
        self.too_long = False

    def prepend(self, data: bytes) -> None:
        """``data`` comes right before the bytes held."""
        if self.too_long or not data:
            return
        self._size += len(data)
        if self._size > self.max_line_bytes + 1:  # its newline is not counted
            self.too_long = True
            self._parts.clear()
        else:
            self._parts.append(data)

    def take(self) -> bytes:
        """The line held (now complete: its start was found), and hold nothing again."""
        line = b"".join(reversed(self._parts))
        self._parts.clear()
        self._size = 0
        self.too_long = False
        return line


def check_selection(head: int | None, tail: int | None, page: int | None, page_size: int) -> None:
    """At most one of ``head``, ``tail`` and ``page``, and each count a whole number of at
    least 1 (a library caller's ``True`` was taken for 1, and a ``"2"`` failed in a
    comparison's TypeError)."""
    chosen = [name for name, v in (("head", head), ("tail", tail), ("page", page)) if v is not None]
    if len(chosen) > 1:
        raise ConfigError(f"choose one of {' / '.join(chosen)}")
    for name, value in (("head", head), ("tail", tail), ("page", page), ("page size", page_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"the {name} must be a whole number, not {value!r}")
        if value is not None and value < 1:
            raise ConfigError(f"the {name} must be at least 1, got {value}")


def read_messages(
    path: Path,
    reader: FormatReader,
    *,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
    marks: MarkLookup | None = None,
    end: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ShowResult:
    """Messages of the transcript at ``path``: the first ``head``, the last ``tail``, or page
    ``page`` (1-based) of ``page_size``; with none of them, every message.

    ``end`` limits reading to the file's first ``end`` bytes (the mirror's checkpoint: bytes
    beyond it may be a sync's uncommitted write). ``marks`` (for ``page``) lets the read start
    near the page instead of at the first line. A line longer than ``max_line_bytes`` is no
    message (as when the index counted it), and no more of it than that is held in memory.
    """
    check_selection(head, tail, page, page_size)
    try:
        with open(path, "rb") as src:
            size = src.seek(0, 2)
            limit = size if end is None else min(end, size)
            if tail is not None:
                return _tail(src, reader, tail, limit, max_line_bytes)
            if page is not None:
                skip = (page - 1) * page_size
                start_no, offset = _mark(marks, skip)
                return _forward(
                    src, reader, limit, offset, start_no, skip, page_size, max_line_bytes
                )
            return _forward(src, reader, limit, 0, 0, 0, head, max_line_bytes)
    except OSError as exc:
        raise MirrorError(
            f"cannot read the mirrored session: {exc.strerror}", path=str(path)
        ) from exc


def _mark(marks: MarkLookup | None, message_no: int) -> tuple[int, int]:
    if marks is None:
        return 0, 0
    if callable(marks):
        return marks(message_no)
    at = bisect.bisect_right(marks, message_no, key=lambda mark: mark[0]) - 1
    return marks[at] if at >= 0 else (0, 0)


def _messages(records: list[Any], reader: FormatReader) -> list[Message]:
    out: list[Message] = []
    message = reader.message
    for item in records:
        if type(item) is Record:
            shown = message(item.value, item.offset)
            if shown is not None:
                out.append(shown)
    return out


def _forward(
    src: BinaryIO,
    reader: FormatReader,
    limit: int,
    offset: int,
    number: int,
    skip_to: int,
    count: int | None,
    max_line_bytes: int,
) -> ShowResult:
    """Decode from ``offset`` (message ``number`` starts there or later) on: skip to message
    ``skip_to``, then keep ``count`` messages (None: all)."""
    result = ShowResult(first=skip_to)
    decoder: JsonlDecoder[Any] = JsonlDecoder(
        reader.line_type, start_offset=offset, max_line_bytes=max_line_bytes
    )
    src.seek(offset)
    pos = offset
    block = HEAD_BLOCK
    out = result.messages
    while pos < limit:
        data = src.read(min(block, limit - pos))
        if not data:
            break
        pos += len(data)
        result.bytes_read += len(data)
        block = min(block * 2, TAIL_MAX_BLOCK)
        for shown in _messages(decoder.feed(data), reader):
            if number >= skip_to:
                out.append(shown)
            number += 1
        if count is not None and len(out) >= count:
            del out[count:]
            return result
    result.at_end = True
    return result


def _tail(
    src: BinaryIO, reader: FormatReader, count: int, limit: int, max_line_bytes: int
) -> ShowResult:
    """The last ``count`` messages before ``limit``, reading backwards block by block."""
    result = ShowResult(first=None)
    found: list[list[Message]] = []  # per block, the latest block first
    have = 0
    pos = limit  # everything from pos on is read
    cut = HeldLine(max_line_bytes)  # from pos to the first line start after it (a line cut)
    block = TAIL_FIRST_BLOCK
    while have < count and pos > 0:
        start = max(0, pos - block)
        src.seek(start)
        data = src.read(pos - start)
        result.bytes_read += len(data)
        if start > 0:
            # The first line may begin before `start`: keep it for the next block.
            nl = data.find(b"\n")
            if nl < 0:
                cut.prepend(data)
                pos, block = start, min(block * 2, TAIL_MAX_BLOCK)
                continue
            lead, lines, base = data[: nl + 1], data[nl + 1 :], start + nl + 1
        else:
            lead, lines, base = b"", data, 0
        # The cut line ends these lines (a line too long to be a message is left out: its
        # start then ends them unfinished, which the decoder never gives as a record).
        lines += cut.take()
        cut.prepend(lead)
        decoder: JsonlDecoder[Any] = JsonlDecoder(
            reader.line_type, start_offset=base, max_line_bytes=max_line_bytes
        )
        shown = _messages(decoder.feed(lines), reader)
        if shown:
            keep = shown[-(count - have) :]
            found.append(keep)
            have += len(keep)
        pos = start
        block = min(block * 2, TAIL_MAX_BLOCK)
    result.at_end = True
    for messages in reversed(found):
        result.messages.extend(messages)
    return result


def show_session(
    dest: str | Path,
    host: str,
    session: str,
    *,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
) -> tuple[SessionRow, ShowResult]:
    """Find ``session`` of ``host`` in the mirror at ``dest`` and read its messages.

    Returns the session's :class:`~remote_sync.index.query.SessionRow` and the
    :class:`ShowResult`; ``first`` is filled in for a tail too when the index's message count
    is current, and ``total`` from the index. Raises :class:`ConfigError` for no mirror, host
    or session (or several), and :class:`MirrorError` naming the host and the session's path
    when its mirrored file cannot be read. Never takes the mirror's lock.
    """
    from ..formats.readers import get_reader

    def read(db: sqlite3.Connection) -> tuple[SessionRef, int, ShowResult]:
        ref = find_session(db, host, session)
        reader = get_reader(ref.row.format)
        # Messages shown = counted + repeated (the same record again), as show numbers them.
        try:
            facts = load_facts(db, host, ref.raw_path)
        except sqlite3.OperationalError:  # an index from before the facts were kept apart
            facts = None
        total = ref.row.messages + (facts.repeated if facts is not None else 0)

        def lookup(message_no: int) -> tuple[int, int]:
            return mark_before(db, host, ref.raw_path, message_no)

        local = Path(os.fsdecode(os.path.join(os.fsencode(Path(dest) / host), ref.raw_path)))
        try:
            result = read_messages(
                local,
                reader,
                head=head,
                tail=tail,
                page=page,
                page_size=page_size,
                marks=lookup,
                end=ref.committed,
            )
        except MirrorError as exc:
            raise _unreadable(exc, dest, host, ref, local) from exc.__cause__
        return ref, total, result

    # The index and the file read together, again if a sync started meanwhile (the marks
    # that place a page are read from the index while the file is).
    ref, total, result = read_state(Path(dest), read, warn=True)
    result.total = total
    if result.first is None and ref.row.bytes == ref.committed:
        result.first = max(total - len(result.messages), 0)
    return ref.row, result


def _unreadable(
    exc: MirrorError, dest: str | Path, host: str, ref: SessionRef, local: Path
) -> MirrorError:
    """``exc`` (a mirrored session that could not be read) naming the host and the path as
    listings name them, with what gets the file back (only a backup, if the host deleted it):
    the default hint (free space, fix permissions) fits a failed write, not a file the index
    lists and the mirror lost."""
    if isinstance(exc.__cause__, (FileNotFoundError, NotADirectoryError)):
        # The file's state, not the session's: an agent's tombstone the host still has is a
        # deleted session, and a sync fetches its file again.
        hint = refetch_hint(host, dest, ref.file_state)
    else:
        hint = f"fix the permissions of {local}, then run again"
    return MirrorError(exc.message, host=host, path=ref.row.path, hint=hint)
