"""Incremental JSONL decoding: byte chunks in, records with absolute offsets out.

This module owns the framing and decoding of newline-delimited JSON transcripts as they are
pulled from a host: :class:`JsonlDecoder` is fed arbitrary byte chunks and returns one
:class:`Record` per complete line (its absolute byte offset, its length and the decoded value)
or one :class:`LineError` per line that cannot be decoded, and it tracks
:attr:`JsonlDecoder.committed_offset`, the point up to which a checkpoint may advance.
:func:`decode_all` is the whole-buffer convenience. :meth:`JsonlDecoder.feed_values` is the
same decoding for callers that only fold the values (the session index): no object per line,
the values of a run of well-formed lines decoded by msgspec in one call, offsets on demand
(:class:`FedLines`).

Rules, all of which depend only on a line's own bytes (never on how the stream was chunked):

* A line ends at ``b"\\n"``. ``length`` always includes that newline; a ``b"\\r"`` before it is
  part of the line and JSON whitespace, so CRLF files decode like LF files.
* The partial line after the last newline is held, never emitted and never lost, until its
  newline arrives.
* Blank and whitespace-only lines (JSON whitespace: space, tab, ``\\r``) yield nothing, but
  offsets account for them and they are committed.
* A UTF-8 byte order mark (``EF BB BF``) at offset 0 of the file is not part of the first
  line's JSON: Windows editors and PowerShell's ``Out-File`` write one, and JSON parsers that
  read files as text (Python's ``utf-8-sig``, .NET, Node's ``strip-bom``) skip it. It still
  counts in offsets and lengths (the mirror keeps it), and anywhere else it is a byte like any
  other (a line starting with one is malformed). The line at offset 0 is always decoded alone,
  from the whole line, so where the chunks split the mark makes no difference.
* A line that is not valid UTF-8 or not valid JSON yields a :class:`LineError` and decoding
  continues with the next line. So does one that does not match the requested type, unless
  it does once the fields of the wrong shape are left out (:mod:`.salvage`).
* A line whose bytes, not counting its ``b"\\n"``, number more than ``max_line_bytes`` yields a
  :class:`LineError` and is never buffered whole: as soon as the held partial line grows past
  the limit its bytes are dropped and the decoder skips to the next newline, keeping only a
  count.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Generic, TypeVar, overload

import msgspec

from .salvage import Salvage

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "FedLines",
    "JsonlDecoder",
    "LineError",
    "Record",
    "decode_all",
]

T = TypeVar("T")

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
"""Lines longer than this (64 MiB, newline not counted) are reported, not decoded."""

_NL = b"\n"
_JSON_WS = b" \t\r"
_BOM = b"\xef\xbb\xbf"

# Types whose msgspec decoding reads every string in the document (and so rejects invalid
# UTF-8 by itself). For any other type (a Struct skips unknown fields unread, ``Raw`` skips
# everything) the decoder checks UTF-8 itself.
_SELF_VALIDATING: frozenset[object] = frozenset({dict[str, Any], dict, Any, list[Any], list})

#: About how many bytes are validated as UTF-8 per call. Validating means decoding, and the
#: text takes up to four bytes per byte (one emoji makes a whole window's text UCS-4): a
#: 256 KiB chunk in one call made a 1 MiB string per chunk, large enough for the C heap to
#: keep. In steps of 32 KiB it is as fast (cache-warm) and the strings stay small.
_UTF8_WINDOW = 32 * 1024

_SHAPE_MISMATCH = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")


class Record(msgspec.Struct, Generic[T], gc=False):
    """One decoded line."""

    offset: int
    """Absolute byte offset of the line's first byte."""
    length: int
    """Bytes of the line, including its trailing ``b"\\n"``."""
    value: T
    """The decoded JSON value."""


class LineError(msgspec.Struct, gc=False):
    """One line that could not be decoded; the decoder carried on past it."""

    offset: int
    """Absolute byte offset of the line's first byte."""
    length: int
    """Bytes of the line, including its trailing ``b"\\n"``."""
    reason: str
    """What was wrong, e.g. ``"invalid UTF-8"`` or ``"expected object, got array"``."""


class FedLines(Generic[T]):
    """What one :meth:`JsonlDecoder.feed_values` call completed.

    ``values`` are the decoded values of its good lines, in order, and ``offsets`` the
    absolute offsets of their lines; ``malformed`` counts the lines that
    :meth:`JsonlDecoder.feed` would report as :class:`LineError`; ``lines`` counts every line
    completed (blank ones too: the newlines consumed).
    """

    __slots__ = ("lines", "malformed", "offsets", "values")

    def __init__(self) -> None:
        self.values: list[T] = []
        self.offsets: list[int] = []
        self.malformed = 0
        self.lines = 0


class JsonlDecoder(Generic[T]):
    """Decode a JSONL byte stream fed in arbitrary chunks.

    ``type`` is what each line decodes to: by default ``dict[str, Any]`` (any JSON object), or
    a msgspec Struct (unknown fields are ignored unless the Struct forbids them). One
    ``msgspec.json.Decoder`` is built per decoder and reused for every line.

    ``start_offset`` is the absolute file offset of the first byte that will be fed, so that
    offsets stay absolute when decoding resumes mid-file; it must be the start of a line.

    Invariant: ``committed_offset + pending_bytes == start_offset + total bytes fed``.
    """

    __slots__ = (
        "_committed",
        "_decode",
        "_decode_many",
        "_max",
        "_parts",
        "_pending_len",
        "_salvage",
        "_skipping",
        "_too_long_prefix",
        "_utf8_checked_by_msgspec",
    )

    @overload
    def __init__(
        self: JsonlDecoder[dict[str, Any]],
        *,
        max_line_bytes: int = ...,
        start_offset: int = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        type: type[T],
        *,
        max_line_bytes: int = ...,
        start_offset: int = ...,
    ) -> None: ...

    def __init__(
        self,
        type: Any = dict[str, Any],
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        start_offset: int = 0,
    ) -> None:
        if max_line_bytes < 0:
            raise ValueError(f"max_line_bytes must be >= 0, got {max_line_bytes}")
        if start_offset < 0:
            raise ValueError(f"start_offset must be >= 0, got {start_offset}")
        decoder = msgspec.json.Decoder(type)
        self._decode = decoder.decode
        self._decode_many = decoder.decode_lines
        self._utf8_checked_by_msgspec = _is_self_validating(type)
        # A type that takes any JSON object has no fields to be of the wrong shape.
        self._salvage = None if self._utf8_checked_by_msgspec else Salvage(type)
        self._max = max_line_bytes
        self._too_long_prefix = f"line longer than {max_line_bytes} bytes ("
        self._committed = start_offset
        # The held partial line: a list of its pieces, joined only when its newline arrives
        # (or when pending() asks), so a line fed in many small chunks costs O(n), not O(n^2).
        self._parts: list[bytes] = []
        # Bytes of the partial line so far: held in _parts, or counted only while skipping.
        self._pending_len = 0
        self._skipping = False

    @property
    def committed_offset(self) -> int:
        """Absolute offset just past the last complete line: where a checkpoint may advance to."""
        return self._committed

    @property
    def pending_bytes(self) -> int:
        """Bytes fed since :attr:`committed_offset`: the partial trailing line.

        While an over-long line is being skipped this counts the skipped bytes too (they are
        fed but not committed), although :meth:`pending` returns nothing for them.
        """
        return self._pending_len

    @property
    def skipping(self) -> bool:
        """True while the partial line has outgrown ``max_line_bytes`` and is being dropped."""
        return self._skipping

    def pending(self) -> bytes:
        """The held partial trailing line (empty while skipping an over-long line)."""
        parts = self._parts
        if not parts:
            return b""
        if len(parts) > 1:
            parts[:] = [b"".join(parts)]
        return parts[0]

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Record[T] | LineError]:
        """Consume ``chunk`` and return the records and errors of the lines it completes."""
        data = chunk if type(chunk) is bytes else bytes(chunk)
        size = len(data)
        out: list[Record[T] | LineError] = []
        if not size:
            return out
        pos = 0
        # A partial line (held or being skipped) is waiting, or this is the file's first line,
        # which goes through _finish_pending, the one place that knows its byte order mark.
        if self._pending_len or not self._committed:
            nl = data.find(_NL)
            if nl < 0:
                self._grow_pending(data)
                return out
            self._finish_pending(data, nl, out)
            pos = nl + 1
        last = data.rfind(_NL, pos)
        if last >= 0:
            self._decode_lines(data, pos, last, out)
            pos = last + 1
        if pos < size:
            self._grow_pending(data[pos:] if pos else data)
        return out

    def _repair(self, line: bytes, exc: Exception) -> tuple[Any] | None:
        """``(value,)`` of a line that failed to decode as ``exc`` says, read after all: its
        lone surrogate escapes as U+FFFD (see :func:`_without_lone_surrogates`), its fields of
        the wrong shape left out (see :mod:`remote_sync.decode.salvage`); else None."""
        fixed = _without_lone_surrogates(line)
        if fixed is not None:
            try:
                return (self._decode(fixed),)
            except Exception as again:
                line, exc = fixed, again
        if self._salvage is None or not isinstance(exc, msgspec.ValidationError):
            return None
        return self._salvage(line)

    def _grow_pending(self, piece: bytes) -> None:
        """Add a newline-free piece to the partial line, switching to skipping past the limit."""
        self._pending_len += len(piece)
        if self._skipping:
            return
        if self._pending_len > self._max:
            self._parts.clear()
            self._skipping = True
        else:
            self._parts.append(piece)

    def _finish_pending(self, data: bytes, nl: int, out: list[Record[T] | LineError]) -> None:
        """The newline of the partial line is at ``data[nl]``: emit that line."""
        offset = self._committed
        content = self._pending_len + nl
        length = content + 1
        if self._skipping or content > self._max:
            out.append(LineError(offset, length, f"{self._too_long_prefix}{length} bytes)"))
        else:
            parts = self._parts
            parts.append(data[:nl])
            line = b"".join(parts)
            # Let the pieces go before the line is checked and decoded: a line of hundreds of
            # KiB (a tool's output) would otherwise be held twice while msgspec reads it.
            parts.clear()
            if not offset and line.startswith(_BOM):  # the file's byte order mark
                line = line[3:]
            if not self._utf8_checked_by_msgspec and not _is_utf8(line):
                out.append(LineError(offset, length, "invalid UTF-8"))
            else:
                try:
                    out.append(Record(offset, length, self._decode(line)))
                except Exception as exc:
                    repaired = self._repair(line, exc)
                    if repaired is not None:
                        out.append(Record(offset, length, repaired[0]))
                    else:
                        error = _line_error(line, offset, length, exc)
                        if error is not None:
                            out.append(error)
        self._parts.clear()
        self._pending_len = 0
        self._skipping = False
        self._committed = offset + length

    def _bad_utf8(self, data: bytes, pos: int, last: int, base: int) -> set[int] | None:
        """The absolute offsets of the lines of ``data[pos : last + 1]`` that are not valid
        UTF-8 (``data[0]`` at ``base``), or None when there is nothing to check: all ASCII, or
        msgspec checks it while decoding."""
        if self._utf8_checked_by_msgspec or data.isascii():
            return None
        return _invalid_utf8_starts(data, pos, last + 1, base, self._max)

    def _decode_lines(
        self, data: bytes, pos: int, last: int, out: list[Record[T] | LineError]
    ) -> None:
        """Decode the whole lines of ``data[pos : last + 1]`` (``data[last]`` is a newline);
        ``data[pos]`` is at the committed offset."""
        base = self._committed - pos  # absolute offset of data[0]
        max_bytes = self._max
        view = memoryview(data)  # lines are decoded from zero-copy slices
        bad_utf8 = self._bad_utf8(data, pos, last, base)
        decode = self._decode
        find = data.find
        append = out.append
        while pos <= last:
            nl = find(_NL, pos)
            length = nl - pos + 1
            if length > max_bytes + 1:
                append(LineError(base + pos, length, f"{self._too_long_prefix}{length} bytes)"))
            elif bad_utf8 and base + pos in bad_utf8:
                append(LineError(base + pos, length, "invalid UTF-8"))
            else:
                try:
                    append(Record(base + pos, length, decode(view[pos:nl])))
                except Exception as exc:
                    repaired = self._repair(data[pos:nl], exc)
                    if repaired is not None:
                        append(Record(base + pos, length, repaired[0]))
                    else:
                        error = _line_error(data[pos:nl], base + pos, length, exc)
                        if error is not None:
                            append(error)
            pos = nl + 1
        self._committed = base + pos

    def feed_values(self, chunk: bytes | bytearray | memoryview) -> FedLines[T]:
        """Consume ``chunk`` like :meth:`feed`, returning only what folding needs.

        Same lines, values and offsets, and as many malformed lines as :meth:`feed` would
        return for the same chunk (whatever the chunking), but no :class:`Record` or
        :class:`LineError` is made, and a run of lines that :meth:`_values_in_one_call`
        proves well-formed is decoded by one msgspec call instead of one call per line.
        """
        data = chunk if type(chunk) is bytes else bytes(chunk)
        size = len(data)
        out: FedLines[T] = FedLines()
        if not size:
            return out
        pos = 0
        if self._pending_len or not self._committed:  # as in feed: a partial or the first line
            nl = data.find(_NL)
            if nl < 0:
                self._grow_pending(data)
                return out
            items: list[Record[T] | LineError] = []
            self._finish_pending(data, nl, items)  # one line: its objects cost nothing
            out.lines = 1
            for item in items:
                if isinstance(item, LineError):
                    out.malformed += 1
                else:
                    out.values.append(item.value)
                    out.offsets.append(item.offset)
            pos = nl + 1
        last = data.rfind(_NL, pos)
        if last >= 0:
            if not self._values_in_one_call(data, pos, last, out):
                self._values_by_line(data, pos, last, out)
            pos = last + 1
        if pos < size:
            self._grow_pending(data[pos:] if pos else data)
        return out

    def _values_in_one_call(self, data: bytes, pos: int, last: int, out: FedLines[T]) -> bool:
        """Decode the whole lines of ``data[pos : last + 1]`` (``data[last]`` is a newline)
        with one ``decode_lines`` call, if that provably equals decoding each line alone;
        False (``out`` untouched) when it does not or cannot be proved: the caller then
        decodes line by line.

        ``decode_lines`` reads JSON values separated by any JSON whitespace: it accepts two
        values on one line and one value over several lines, and skips blank lines. It equals
        the per-line rules here when:

        * no line is over the limit, and the run is valid UTF-8 (checked here for types that
          skip fields unread: msgspec does not check those);
        * every line starts with ``{`` and ends with ``}`` (or ``}\r``) before its newline.
          msgspec rejects a raw control character in any string, skipped ones included, so
          every newline of a run it decodes lies between two tokens, here a ``}`` and a ``{``,
          and JSON allows no ``{`` right after a ``}`` inside one value: every newline ends a
          value, so no value spans lines and each line holds one or more whole values;
        * it returns exactly as many values as there are lines: one per line, each the value
          of its line alone (the same decoder parses the same bytes; only the whitespace
          around them differs).

        Anything else (an error anywhere, a blank or padded line) takes the per-line path,
        which gives the same results, only slower. Walking the lines costs little next to
        decoding them: ``find`` jumps to each newline.
        """
        base = self._committed - pos  # absolute offset of data[0]
        end = last + 1
        max_bytes = self._max
        offsets: list[int] = []
        add = offsets.append
        find = data.find
        start = pos
        while pos < end:
            nl = find(_NL, pos)
            close = nl - 1 if data[nl - 1] != 0x0D else nl - 2  # before a CRLF's \r
            # b"{" ... b"}" within the limit (a line shorter than b"{}" fails: its close is
            # before its start, or is its b"{")
            if data[pos] != 0x7B or close <= pos or data[close] != 0x7D or nl - pos > max_bytes:
                return False
            add(base + pos)
            pos = nl + 1
        view = memoryview(data)[start:end]
        if not self._utf8_checked_by_msgspec and not data.isascii() and not _is_utf8_run(view):
            return False
        try:
            values: list[T] = self._decode_many(view)
        except Exception:
            return False
        if len(values) != len(offsets):
            return False
        out.values.extend(values)
        out.offsets.extend(offsets)
        out.lines += len(offsets)
        self._committed = base + end
        return True

    def _values_by_line(self, data: bytes, pos: int, last: int, out: FedLines[T]) -> None:
        """:meth:`_decode_lines` without the objects: values, offsets and a malformed count."""
        base = self._committed - pos  # absolute offset of data[0]
        max_bytes = self._max
        view = memoryview(data)
        bad_utf8 = self._bad_utf8(data, pos, last, base)
        decode = self._decode
        find = data.find
        values = out.values
        offsets = out.offsets
        malformed = 0
        lines = 0
        while pos <= last:
            lines += 1
            nl = find(_NL, pos)
            if nl - pos > max_bytes or (bad_utf8 and base + pos in bad_utf8):
                malformed += 1
            else:
                try:
                    value = decode(view[pos:nl])
                except Exception as exc:
                    repaired = self._repair(data[pos:nl], exc)
                    if repaired is not None:
                        values.append(repaired[0])
                        offsets.append(base + pos)
                    elif data[pos:nl].strip(_JSON_WS):  # a blank line is no error
                        malformed += 1
                else:
                    values.append(value)
                    offsets.append(base + pos)
            pos = nl + 1
        out.malformed += malformed
        out.lines += lines
        self._committed = base + pos


def _is_self_validating(tp: object) -> bool:
    try:
        return tp in _SELF_VALIDATING
    except TypeError:  # an unhashable type expression
        return False


def _is_utf8(line: bytes) -> bool:
    """Is ``line`` valid UTF-8? Checked in steps (:func:`_is_utf8_run`): decoding a long
    line at once made its whole text, up to four bytes per byte (a 550 KiB tool output with
    one emoji in it was a 2.2 MB string), on the C heap at the line's decode."""
    return line.isascii() or _is_utf8_run(memoryview(line))


def _is_utf8_run(view: memoryview) -> bool:
    """Is ``view`` valid UTF-8? Checked ``_UTF8_WINDOW`` bytes at a time."""
    decode = codecs.utf_8_decode
    step = max(_UTF8_WINDOW, 4)  # a whole sequence fits: each step consumes something
    pos = 0
    end = len(view)
    try:
        while end - pos > step:
            # Not final: a sequence cut by the step is left for the next one.
            pos += decode(view[pos : pos + step], "strict", False)[1]
        decode(view[pos:], "strict", True)
    except UnicodeDecodeError:
        return False
    return True


def _invalid_utf8_starts(data: bytes, pos: int, end: int, base: int, max_bytes: int) -> set[int]:
    """Absolute offsets of the lines of ``data[pos:end]`` that are not valid UTF-8.

    ``data[pos]`` starts a line, ``data[end - 1]`` ends one and ``data[0]`` is at absolute
    offset ``base``. A newline never occurs inside a UTF-8 sequence, so lines are independent:
    validate up to the first bad byte, flag its line, resume at the next line. Validation runs
    over windows of whole lines (the decoded text it allocates stays small and cache-warm), and
    a line longer than a window is checked alone, a window at a time (:func:`_is_utf8_run`);
    lines over ``max_bytes`` are reported as too long anyway and are not read.
    """
    bad: set[int] = set()
    view = memoryview(data)
    while pos < end:
        stop = pos + _UTF8_WINDOW
        if stop >= end:
            stop = end
        else:
            nl = data.rfind(_NL, pos, stop)
            if nl < 0:  # one line longer than the window: checked alone, in steps
                stop = data.find(_NL, stop, end) + 1
                if stop - pos - 1 <= max_bytes and not _is_utf8_run(view[pos:stop]):
                    bad.add(base + pos)
                pos = stop
                continue
            else:
                stop = nl + 1
        try:
            codecs.utf_8_decode(view[pos:stop], "strict", True)
        except UnicodeDecodeError as exc:
            at = pos + exc.start
            nl = data.rfind(_NL, pos, at)
            bad.add(base + (nl + 1 if nl >= 0 else pos))
            pos = data.find(_NL, at, end) + 1
        else:
            pos = stop
    return bad


# A JSON string escape: a surrogate pair, a lone surrogate, or any other escape (taken whole,
# so that an escaped backslash before "u" is never read as the start of a \u escape).
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
    rb"|\\."
)


def _without_lone_surrogates(line: bytes) -> bytes | None:
    """``line`` with its lone surrogate escapes replaced by U+FFFD's, or None if it has none.

    JavaScript agents write one when they cut a string in the middle of a surrogate pair
    (``text.slice(0, n)`` of a long tool output ending in an emoji): JSON's grammar allows it
    and Python's json reads it, but msgspec refuses the whole line, and the index would lose
    that message. It is read as U+FFFD, the replacement character.
    """
    if b"\\u" not in line:
        return None
    replaced = False

    def lone_to_replacement(match: re.Match[bytes]) -> bytes:
        nonlocal replaced
        escape = match[0]
        if len(escape) == 6 and escape[2] in b"dD":
            replaced = True
            return b"\\ufffd"
        return escape

    fixed = _ESCAPE.sub(lone_to_replacement, line)
    return fixed if replaced else None


def _line_error(line: bytes, offset: int, length: int, exc: Exception) -> LineError | None:
    """The error for a line of ``length`` bytes (its newline and any byte order mark
    included) that failed to decode as ``line``, or None for a blank line (skipped)."""
    if not line.strip(_JSON_WS):
        return None
    if not _is_utf8(line):
        return LineError(offset, length, "invalid UTF-8")
    return LineError(offset, length, _reason(exc))


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError):
        message = str(exc)
        shape = _SHAPE_MISMATCH.fullmatch(message)
        if shape is not None:  # the top-level value is the wrong kind
            return f"expected {shape[1]}, got {shape[2]}"
        return f"schema mismatch: {message}"
    if isinstance(exc, msgspec.DecodeError):
        message = str(exc).removeprefix("JSON is malformed: ")
        if message == "Input data was truncated":
            message = "truncated"
        return f"invalid JSON: {message}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"cannot decode: {type(exc).__name__}: {exc}"


@overload
def decode_all(
    data: bytes | bytearray | memoryview,
    *,
    max_line_bytes: int = ...,
    start_offset: int = ...,
) -> tuple[list[Record[dict[str, Any]] | LineError], int]: ...


@overload
def decode_all(
    data: bytes | bytearray | memoryview,
    type: type[T],
    *,
    max_line_bytes: int = ...,
    start_offset: int = ...,
) -> tuple[list[Record[T] | LineError], int]: ...


def decode_all(
    data: bytes | bytearray | memoryview,
    type: Any = dict[str, Any],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    start_offset: int = 0,
) -> tuple[list[Any], int]:
    """Decode a whole buffer: its records and errors, and the committed offset.

    A partial last line (no trailing newline) is not decoded; the committed offset stops at
    its start, so a caller can resume there.
    """
    decoder: JsonlDecoder[Any] = JsonlDecoder(
        type, max_line_bytes=max_line_bytes, start_offset=start_offset
    )
    return decoder.feed(data), decoder.committed_offset
