"""The tar stream of an archive frame: whole files read by one ``tar`` per batch of requests.

What it owns: the subset of tar a fetch reads (ustar and GNU headers, GNU long names, the
``path`` and ``size`` of pax headers), matching entries to the requests the fetch script
deferred to the archive, and finding the frame's end marker wherever tar stopped.

Why tar: ``head -c`` once per file costs one process per file on the host (about 1 ms each
on a small machine: most of the remote CPU of a fleet's first mirror); one ``tar`` reads a
whole batch. Only whole fetches of line-committed (JSONL) files go this way; other whole
files keep ``head``, whose reads the fetch script checks.

Entries come in the order the file names were given to tar, each matched to the deferred
request of the same path. A deferred request that tar skipped (the file vanished or became
unreadable in between) and an entry that is not a plain regular file (a symlink swapped in, a
hard link to an earlier entry, a sparse file) end as :class:`Short` with no data: the engine
fetches those again with ``head`` and gets the real answer. An entry larger than requested
(the file grew since the listing) gives the requested bytes; a smaller one is :class:`Short`,
like a short ``head`` range.

tar's exit status and messages never reach us (its stderr is discarded: they are not tied to
an entry in any parseable way), so a failed read is recognized in the stream itself. GNU tar
does not stop when a read fails (EIO) or a file shrinks while it reads it: it pads the entry
with NUL bytes up to the size it announced and goes on. So an entry whose delivered bytes end
with a NUL is not trusted: it ends as :class:`Short` (with what was received), and the engine
fetches it again with ``head``, whose read errors the fetch script reports (a JSONL file never
ends with a NUL byte; one that does only costs that second fetch). BusyBox tar dies instead
(a cut, below).

A tar that stops midway (killed, or BusyBox's "short read" when a file shrinks or a read
fails) is followed at once by the end marker. The reader looks for the marker inside entries,
padding, headers and the trailer, so no byte after a cut is ever taken for file data; the
entry cut and the requests after it end as :class:`Short`. Anything else that is not tar is a
:class:`ProtocolError` naming the host.

What is not detected (with ``head`` neither): a file rewritten in place, at the same size,
while tar reads it (GNU tar's "file changed as we read it"); the engine's overlap check on the
next append catches a rewrite of bytes it committed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ProtocolError, path_text
from .fetch_events import Begin, Data, End, FrameEvent, Short, scan_region

if TYPE_CHECKING:
    from .fetch_frames import FetchRequest

__all__ = ["MAX_META", "ArchiveReader", "parse_header"]

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
#: Longest GNU long name or pax header read; a longer one makes its entry :class:`Short`.
MAX_META = 64 * 1024

#: Digits of a pax record's length or size: 20 hold any 64-bit number.
_MAX_DIGITS = 20

_REGULAR = frozenset(b"07\x00")  # "0", "7" (contiguous) and the pre-POSIX NUL
_LONG_NAME = ord("L")
_PAX = ord("x")
_META = frozenset(b"LKxg")  # long name, long link name, pax header, global pax header

_HEADER = 0  # a header block, or the end marker, is next
_REGION = 1  # inside an entry's data and padding
_TRAILER = 2  # after the end-of-archive block: zero blocks until the end marker


def _number(field: bytes) -> int | None:
    """A tar numeric field: octal digits (NUL/space padded), or GNU base-256 for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.rstrip(b"\x00 ").lstrip(b" ")
    if not digits:
        return 0
    if digits.strip(b"01234567"):
        return None
    return int(digits, 8)


def parse_header(block: bytes) -> tuple[bytes, int, int] | None:
    """(name, size, type) of a 512-byte header block, or None when it is not a valid header."""
    stored = _number(block[148:156])
    if stored is None:
        return None
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 0x20
    if stored != unsigned:
        # Some old tars summed signed bytes.
        high = bytes(range(0x80))
        over = len(block[:148].translate(None, high)) + len(block[156:].translate(None, high))
        signed = unsigned - 256 * over
        if stored != signed:
            return None
    size = _number(block[124:136])
    if size is None:
        return None
    name = block[:100].split(b"\x00", 1)[0]
    if block[257:263] == b"ustar\x00":  # POSIX ustar: a long name may be split at a "/"
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name, size, block[156]


class ArchiveReader:
    """One archive frame: its tar stream, the requests deferred to it, and its end marker.

    :meth:`feed` is called by the frame parser with its buffer; it returns how far it got, and
    leaves in :attr:`carry` the bytes it needs again with the next chunk (part of a block, or
    a possible split marker). :attr:`done` is set once the end marker has been read.
    """

    __slots__ = (
        "_deliver",
        "_ends",
        "_index",
        "_last",
        "_meta",
        "_meta_type",
        "_next_name",
        "_next_size",
        "_next_unusable",
        "_received",
        "_remaining",
        "_state",
        "carry",
        "deferred",
        "done",
        "end",
        "host",
        "requests",
    )

    def __init__(
        self, host: str, end: bytes, requests: Sequence[FetchRequest], deferred: Sequence[int]
    ) -> None:
        self.host = host
        self.end = end
        self._ends = (end,)
        self.requests = requests
        self.deferred: deque[int] = deque(deferred)
        self.carry = b""
        self.done = False
        self._state = _HEADER
        self._remaining = 0  # bytes left in the current entry's region (data and padding)
        self._deliver = 0  # of those, how many still go out as Data (or into _meta)
        self._index = -1  # the request the current entry answers, -1 when it is skipped
        self._received = 0
        self._last = -1  # the last byte delivered of the current entry, -1 before the first
        self._meta: bytearray | None = None  # the data of a long name or pax header
        self._meta_type = 0
        self._next_name: bytes | None = None  # the next entry's name, from _meta
        self._next_size: int | None = None
        self._next_unusable = False

    def feed(self, buf: bytes, view: memoryview, pos: int, events: list[FrameEvent]) -> int:
        size = len(buf)
        while pos < size and not self.done:
            if self._state == _REGION:
                pos = self._region(buf, view, pos, events)
            else:
                pos = self._block(buf, pos, events)
        return pos

    def pending(self) -> list[int]:
        """The requests not answered yet: the entry being read, then those still deferred."""
        current = [self._index] if self._index >= 0 else []
        return current + list(self.deferred)

    # -- blocks

    def _block(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        end = self.end
        if buf.startswith(end, pos):  # after the trailer, or tar stopped at a block boundary
            self._cut(events)
            return pos + len(end)
        size = len(buf)
        if size - pos < BLOCK:
            found = buf.find(end, pos)  # a cut inside what would be the next block
            if found >= 0:
                self._cut(events)
                return found + len(end)
            return self._keep(buf, pos)
        block = buf[pos : pos + BLOCK]
        if block == _ZERO_BLOCK:
            if self._state == _HEADER:  # the end of the archive: what tar skipped is Short
                self._unanswered(events)
                self._state = _TRAILER
            return pos + BLOCK
        if self._state == _HEADER:
            header = parse_header(block)
            if header is not None:
                self._start_entry(*header, events)
                return pos + BLOCK
            return self._resync(buf, pos, events, "a malformed tar header")
        return self._resync(buf, pos, events, "data after the end of the archive")

    def _resync(self, buf: bytes, pos: int, events: list[FrameEvent], what: str) -> int:
        """Not tar where a block should be: a cut (the end marker is inside), or an error."""
        need = pos + BLOCK + len(self.end) - 1
        found = buf.find(self.end, pos, need)
        if found >= 0:
            self._cut(events)
            return found + len(self.end)
        if len(buf) < need:
            return self._keep(buf, pos)
        path = self.requests[self.deferred[0]].path if self.deferred else None
        raise ProtocolError(
            f"{what} in the fetch output; found {buf[pos : pos + 80]!r}",
            host=self.host,
            path=path_text(path) if path is not None else None,
        )

    def _keep(self, buf: bytes, pos: int) -> int:
        self.carry = buf[pos:]
        return len(buf)

    # -- entries

    def _start_entry(self, name: bytes, size: int, kind: int, events: list[FrameEvent]) -> None:
        if kind not in _META and self._next_size is not None:
            size = self._next_size  # a pax size: the header's field may be too small for it
        self._remaining = size + (-size % BLOCK)
        self._index = -1
        self._deliver = 0
        if kind in _META:
            if kind in (_LONG_NAME, _PAX):
                if size <= MAX_META:
                    self._meta = bytearray()
                    self._meta_type = kind
                    self._deliver = size
                else:
                    self._next_unusable = True
        else:
            if self._next_name is not None:
                name = self._next_name
            usable = kind in _REGULAR and not self._next_unusable
            self._next_name = self._next_size = None
            self._next_unusable = False
            index = self._match(name, events)
            if index >= 0:
                if usable:
                    self._index = index
                    self._deliver = min(size, self.requests[index].length)
                    self._received = 0
                    self._last = -1
                    events.append(Begin(index))
                else:
                    events.append(Short(index, 0))
        if not self._remaining:
            self._end_entry(events)
        else:
            self._state = _REGION

    def _match(self, name: bytes, events: list[FrameEvent]) -> int:
        """The deferred request answered by entry ``name``; those before it were skipped."""
        if name.startswith(b"./"):
            name = name[2:]
        deferred = self.deferred
        for skipped, index in enumerate(deferred):
            if self.requests[index].path == name:
                for _ in range(skipped):
                    events.append(Short(deferred.popleft(), 0))
                deferred.popleft()
                return index
        return -1  # not asked for (tar should not add any): its bytes are skipped

    def _region(self, buf: bytes, view: memoryview, pos: int, events: list[FrameEvent]) -> int:
        remaining = self._remaining
        limit = pos + remaining
        found, split = scan_region(buf, pos, remaining, self._ends)
        if 0 <= found < limit:  # tar stopped inside this entry
            self._take(view, pos, found, events)
            self._cut(events)
            return found + len(self.end)
        stop = limit if found == limit or split >= limit else split
        self._take(view, pos, stop, events)
        self._remaining = remaining - (stop - pos)
        if self._remaining:
            return self._keep(buf, stop)
        self._state = _HEADER
        self._end_entry(events)
        return stop

    def _take(self, view: memoryview, start: int, stop: int, events: list[FrameEvent]) -> None:
        count = min(stop - start, self._deliver)
        if count <= 0:
            return
        self._deliver -= count
        if self._meta is not None:
            self._meta += view[start : start + count]
        elif self._index >= 0:
            events.append(Data(self._index, view[start : start + count]))
            self._received += count
            self._last = view[start + count - 1]

    def _end_entry(self, events: list[FrameEvent]) -> None:
        if self._meta is not None:
            meta, self._meta = bytes(self._meta), None
            if self._meta_type == _LONG_NAME:
                self._next_name = meta.split(b"\x00", 1)[0]
            else:
                self._read_pax(meta)
        elif self._index >= 0:
            index, received = self._index, self._received
            # A NUL last byte: GNU tar's padding after a failed or short read (see above).
            complete = received == self.requests[index].length and self._last != 0
            events.append(End(index) if complete else Short(index, received))
        self._index = -1

    def _read_pax(self, meta: bytes) -> None:
        """The ``path`` and ``size`` records of a pax header (``<len> <key>=<value>\\n``)."""
        pos = 0
        while pos < len(meta):
            space = meta.find(b" ", pos)
            digits = meta[pos:space] if space > pos else b""
            # A number longer than any record here is not one: int() refuses more than 4300
            # digits (an uncaught ValueError), and a lying tar may send them.
            length = int(digits) if digits.isdigit() and len(digits) <= _MAX_DIGITS else 0
            if length <= space - pos or pos + length > len(meta) or meta[pos + length - 1] != 0x0A:
                if meta[pos:].strip(b"\x00"):
                    self._next_unusable = True  # not pax as we know it: refetch with head
                return
            key, _, value = meta[space + 1 : pos + length - 1].partition(b"=")
            if key == b"path":
                self._next_name = value
            elif key == b"size":
                if not value.isdigit() or len(value) > _MAX_DIGITS:
                    self._next_unusable = True
                    return
                self._next_size = int(value)
            elif key.startswith(b"GNU.sparse."):
                self._next_unusable = True  # the data is a sparse map, not the file
            pos += length

    # -- the end

    def _unanswered(self, events: list[FrameEvent]) -> None:
        while self.deferred:
            events.append(Short(self.deferred.popleft(), 0))

    def _cut(self, events: list[FrameEvent]) -> None:
        """The end marker: the entry being read and every request still deferred are Short."""
        if self._index >= 0:
            events.append(Short(self._index, self._received))
            self._index = -1
        self._meta = None
        self._unanswered(events)
        self.done = True
