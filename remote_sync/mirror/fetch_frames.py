"""The fetch's requests, and the parse of the frames that answer them.

A :class:`FetchRequest` is one request, a byte range of a file or a whole file a batch's
``tar`` may send, which :func:`~remote_sync.mirror.fetch_script.fetch_stdin` writes as an item
on the fetch's stdin. :class:`FrameParser` reads the fetch's stdout, the frames the scripts of
:mod:`remote_sync.mirror.fetch_script` write (described there), and hands an archive frame to
:class:`~remote_sync.mirror.archive.ArchiveReader`. Like the scripts' module, this one does no
I/O.

Events (:mod:`remote_sync.mirror.fetch_events`), per request in order: :class:`Gone` or
:class:`Denied` alone; or :class:`Begin`, :class:`Data`..., then :class:`End` (exactly
``length`` bytes: the content), :class:`Short` (fewer: the file shrank, or tar's copy is not
to be trusted: fetch it whole again), :class:`Changed` (more: fetch it whole again) or
:class:`Failed` (the host could not read it: a file-level error). Data never goes beyond
``length`` bytes. After the last event of a checked range, or of an archive with checked
entries, comes :class:`HeadDigest`; after the last item of a batch with ``check_batched``
ranges that ended, one for those.

The output may hold at most :func:`fetch_budget` bytes: what the requests ask for, plus a
fixed room per request for its framing and tar's headers and padding, and once for files tar
finds grown. More is a :class:`TooMuchOutputError` (a tar that sends zero blocks without end,
an entry nobody asked for, a trickle that never ends).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from msgspec import Struct

from ..errors import ProtocolError, TooMuchOutputError, path_text
from .archive import ArchiveReader
from .digests import MAX_DIGEST_WORD, digest_of_word
from .fetch_events import (
    Begin,
    Changed,
    Data,
    Denied,
    End,
    Failed,
    FrameEvent,
    Gone,
    HeadDigest,
    Short,
    scan_region,
)
from .listing import LOW_63_BITS, path_problem

__all__ = [
    "FETCH_GROWTH_SLACK",
    "FETCH_ITEM_SLACK",
    "FetchRequest",
    "FrameParser",
    "check_marker",
    "fetch_budget",
]

#: Bytes a fetch's output may hold per request beyond those it asks for. What a request can
#: bring past its bytes: its frame lines (``B``, ``E`` or ``T``, 35 bytes each with the
#: 32-digit marker), a digest line (:data:`MAX_DIGEST_WORD` and 21 bytes per inode); as an
#: archive entry, tar's 512-byte header, a GNU long name or a pax header for a path over 100
#: bytes (a header and the path, at most PATH_MAX, 4 KiB, with tar's other pax records, in
#: 512-byte blocks: about 6 KiB), the padding of its data to a block (511), and its archive's
#: ``A`` and ``E`` lines, two end blocks and the padding to tar's record (10 KiB, GNU tar's
#: default), counted for every entry although an archive has them once. All that is under
#: 20 KiB; this is more than three times as much.
FETCH_ITEM_SLACK = 64 * 1024
#: Bytes a fetch's archives may bring past their entries' requests, once per fetch: tar reads
#: each file to the size it has when tar reaches it, so a transcript appended to since the
#: listing comes longer (the reader keeps the bytes asked for; the next round appends the
#: rest). Transcripts grow by kilobytes a minute; 64 MiB covers a round's worth many times.
FETCH_GROWTH_SLACK = 64 * 1024 * 1024


def fetch_budget(requests: Sequence[FetchRequest]) -> int:
    """The most bytes the output of a fetch of ``requests`` may hold (:class:`FrameParser`
    refuses more): every byte asked for (:attr:`FetchRequest.asked`, one more than the length
    with ``detect_growth``), :data:`FETCH_ITEM_SLACK` per request and, when some are archive
    requests, :data:`FETCH_GROWTH_SLACK` once. The exact bound plus room, never less: a host
    that sends more is not answering what was asked (endless zero blocks after a tar
    archive's end, an entry nobody asked for, frames past the last request)."""
    asked = sum(request.asked for request in requests)
    growth = FETCH_GROWTH_SLACK if any(request.archive for request in requests) else 0
    return asked + len(requests) * FETCH_ITEM_SLACK + growth


def check_marker(marker: bytes) -> None:
    if len(marker) < 16 or marker.strip(b"0123456789abcdef"):
        raise ValueError(f"a marker is at least 16 lowercase hex digits, not {marker!r}")


class FetchRequest(Struct, frozen=True):
    """Fetch ``length`` bytes of ``path`` (relative to the root) from offset ``start``."""

    path: bytes
    start: int
    length: int
    archive: bool = False
    """The host may answer with an entry of a tar stream instead of a ``head`` range: only for
    a whole (``start`` 0) line-committed file (see :mod:`remote_sync.mirror.archive`)."""
    detect_growth: bool = False
    """The range should reach the end of the file: the host reads one byte more, and a file
    longer than ``start + length`` ends as :class:`Changed` instead of a cut-off
    :class:`End`. For whole files that are not line-committed (a prefix of their new content
    is not a valid copy); not with ``archive``."""
    check: bool = False
    """After the read, the host sends the digest of the file's first
    :data:`~remote_sync.mirror.fetch_script.HEAD_BYTES` (:class:`HeadDigest`): a head that
    changed while the file was read tells a copy spliced from two contents. For line-committed
    files, whose head the client has in full."""
    check_whole: bool = False
    """After the read, the host sends the digest of the whole file (:class:`HeadDigest`), hashed
    from a descriptor opened with the reader's: it differs from the bytes read when the file
    was rewritten in place meanwhile. For files copied whole, whose every byte the client
    hashes; not with ``check`` or ``archive``."""
    check_batched: bool = False
    """Once the batch's reads are done, the host sends one digest of the first
    :data:`~remote_sync.mirror.fetch_script.HEAD_BYTES` of every such request of the batch that
    was read (:class:`HeadDigest`): an append fetches only the bytes after an overlap near the
    old end, and this is how a head rewritten in place since the last round (an agent saving
    the whole file anew with another first line, a tool redacting a secret to the same length)
    is seen. For appends whose overlap does not cover the head; not with another check or
    ``archive``."""

    @property
    def asked(self) -> int:
        """Bytes the host is asked for: one more than ``length`` with ``detect_growth``."""
        return self.length + 1 if self.detect_growth else self.length

    def __post_init__(self) -> None:
        # An empty whole file is asked for with 0 bytes: the extra byte of detect_growth
        # still tells whether it is empty.
        if self.start < 0 or self.length < 0 or (self.length == 0 and not self.detect_growth):
            raise ValueError(f"bad byte range start={self.start} length={self.length}")
        if self.archive and self.start:
            raise ValueError(f"an archive request starts at 0, not {self.start}")
        if self.archive and self.detect_growth:
            raise ValueError("an archive request cannot detect growth")
        if self.check_whole and (self.check or self.archive):
            raise ValueError("a whole-file check goes with neither a head check nor an archive")
        if self.check_batched and (self.check or self.check_whole or self.archive):
            raise ValueError("a batched head check goes with no other check and no archive")
        problem = path_problem(self.path)
        if problem is not None:
            raise ValueError(f"bad fetch path {self.path!r}: {problem}")


_INODE = re.compile(rb"[0-9]{1,20}")
_KINDS = b"GDBTA"


class FrameParser:
    """Incremental parser of a fetch's stdout into :data:`FrameEvent` s, one frame per request.

    Data is streamed: a range of any size passes through as views of the chunks fed, never
    buffered per file. Between chunks the parser holds only a possible split marker (fewer
    bytes than a marker line), so the last few bytes of a chunk may be emitted with the next.
    Anything that is not a marker line where one is expected is a :class:`ProtocolError`
    naming the host and the path of the request concerned. Output past :attr:`budget`
    (:func:`fetch_budget`, counted per chunk) is a :class:`TooMuchOutputError`: the idle
    timeout alone would let a host that keeps sending keep the fetch going for ever.
    """

    __slots__ = (
        "_archive",
        "_archive_checked",
        "_batch_checked",
        "_carry",
        "_closed",
        "_deferred",
        "_digest_for",
        "_digest_named",
        "_digest_prefix",
        "_end",
        "_end_len",
        "_ends",
        "_fed",
        "_head",
        "_head_len",
        "_in_data",
        "_index",
        "_length",
        "_received",
        "_remaining",
        "budget",
        "host",
        "marker",
        "requests",
    )

    def __init__(self, host: str, marker: bytes, requests: Sequence[FetchRequest]) -> None:
        check_marker(marker)
        self.host = host
        self.marker = marker
        self.requests = requests
        self.budget = fetch_budget(requests)
        self._fed = 0  # bytes fed so far: at most the budget
        self._head = marker + b" "
        self._head_len = len(marker) + 3
        self._end = marker + b" E\n"
        self._end_len = len(self._end)
        self._ends = (self._end, marker + b" X\n")  # the end lines of a range frame
        self._index = 0
        self._in_data = False
        self._deferred: list[int] = []  # requests answered by the next archive frame
        self._archive: ArchiveReader | None = None
        self._archive_checked: tuple[int, ...] = ()  # its checked entries: a digest follows it
        # check_batched ranges read since the last batch digest: the batch's digest covers them
        self._batch_checked: list[int] = []
        self._digest_for: tuple[int, ...] | None = None  # requests whose K line comes next
        # Whether that line hashes the files by name (an archive's, a batch's), and so ends
        # with the inode each name had then.
        self._digest_named = False
        self._digest_prefix = marker + b" K "
        self._remaining = 0  # bytes the current frame may still hold
        self._received = 0  # bytes of the current frame so far
        self._length = 0  # the current request's length: bytes beyond it are not Data
        self._carry = b""
        self._closed = False

    def feed(self, chunk: bytes) -> list[FrameEvent]:
        if self._closed:
            raise ValueError("feed() after close()")
        self._fed += len(chunk)
        if self._fed > self.budget:
            raise self._over_budget()
        buf = self._carry + chunk if self._carry else bytes(chunk)
        self._carry = b""
        size = len(buf)
        view = memoryview(buf)
        events: list[FrameEvent] = []
        pos = 0
        while pos < size:
            archive = self._archive
            if archive is not None:
                pos = archive.feed(buf, view, pos, events)
                if archive.carry:
                    self._carry, archive.carry = archive.carry, b""
                if archive.done:
                    self._archive = None
                    if self._archive_checked:
                        self._digest_for, self._archive_checked = self._archive_checked, ()
                        self._digest_named = True
            elif self._digest_for is not None:
                pos = self._digest(buf, pos, events)
            elif self._in_data:
                pos = self._data(buf, view, pos, events)
            else:
                pos = self._header(buf, pos, events)
        return events

    @property
    def complete(self) -> bool:
        """Every request is answered and no frame or digest line is open: any further output
        is not the fetch's."""
        return not (
            self._carry
            or self._in_data
            or self._archive is not None
            or self._digest_for is not None
            or self._batch_checked
            or self._deferred
            or self._index < len(self.requests)
        )

    def close(self) -> list[FrameEvent]:
        """End of output: unanswered requests or leftover bytes are a :class:`ProtocolError`."""
        self._closed = True
        archive = self._archive
        inside = self._carry or self._in_data or archive is not None
        inside = inside or self._digest_for is not None or bool(self._batch_checked)
        pending = archive.pending() if archive is not None else []
        pending += self._deferred
        pending += range(self._index, len(self.requests))
        if inside or pending:
            index = pending[0] if pending else len(self.requests) - 1
            raise ProtocolError(
                f"fetch output ended {'inside a frame' if inside else 'before its frame'}: "
                f"{len(pending)} of {len(self.requests)} requests unanswered",
                host=self.host,
                path=path_text(self.requests[index].path) if index >= 0 else None,
            )
        return []

    def _over_budget(self) -> TooMuchOutputError:
        archive = self._archive
        if archive is not None:
            reading = archive.pending()[:1]  # the entry being read, or the next one asked for
        else:
            reading = [self._index] if self._in_data else []
        path = path_text(self.requests[reading[0]].path) if reading else None
        return TooMuchOutputError(
            f"the fetch's output passed {self.budget} bytes, the most its "
            f"{len(self.requests)} requests can bring with their framing",
            host=self.host,
            path=path,
            hint="the host sent more than it was asked for: check its tar, dd and head (a "
            "wrapper, an alias, a broken build); what was committed is kept",
        )

    def _error(self, what: str, found: bytes) -> ProtocolError:
        index = min(self._index, len(self.requests) - 1)
        path = self.requests[index].path if index >= 0 else None
        about = f" (request {index}: {path!r})" if path is not None else ""
        return ProtocolError(
            f"{what}{about}; found {found[:80]!r}",
            host=self.host,
            path=path_text(path) if path is not None else None,
        )

    def _header(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        head = self._head
        avail = len(buf) - pos
        if self._batch_checked:
            # A batch with check_batched ranges that were read ends with their digest.
            digest = self._digest_prefix
            if buf.startswith(digest, pos):
                self._digest_for, self._batch_checked = tuple(self._batch_checked), []
                self._digest_named = True
                return pos  # read by _digest
            if avail < len(digest) and digest.startswith(buf[pos:]):
                self._carry = buf[pos:]
                return len(buf)
        if self._index >= len(self.requests) and not self._deferred:
            raise self._error("unexpected output after the last frame", buf[pos:])
        if avail < self._head_len:
            part = buf[pos:]
            ok = head.startswith(part) if avail <= len(head) else part.startswith(head)
            if not ok or (avail > len(head) and part[len(head)] not in _KINDS):
                raise self._error("expected a frame marker", part)
            self._carry = part
            return len(buf)
        end = pos + self._head_len
        kind = buf[end - 2]
        if not buf.startswith(head, pos) or buf[end - 1] != 0x0A or kind not in _KINDS:
            raise self._error("expected a frame marker", buf[pos:end])
        index = self._index
        if kind == 0x41:  # A: the tar stream answering the requests deferred to it
            if not self._deferred:
                raise self._error("an archive frame with no request deferred to it", buf[pos:end])
            self._archive = ArchiveReader(self.host, self._end, self.requests, self._deferred)
            self._archive_checked = tuple(i for i in self._deferred if self.requests[i].check)
            self._deferred = []
            return end
        if index >= len(self.requests):
            raise self._error("unexpected output after the last frame", buf[pos:end])
        if kind == 0x54:  # T: this request is answered by the batch's archive frame
            if not self.requests[index].archive:
                raise self._error("a range request deferred to an archive", buf[pos:end])
            self._deferred.append(index)
            self._index = index + 1
        elif kind == 0x42:  # B
            events.append(Begin(index))
            request = self.requests[index]
            self._in_data = True
            self._length = request.length
            self._remaining = request.asked
            self._received = 0
        else:
            events.append(Gone(index) if kind == 0x47 else Denied(index))
            self._index = index + 1
        return end

    def _data(self, buf: bytes, view: memoryview, pos: int, events: list[FrameEvent]) -> int:
        remaining = self._remaining
        index = self._index
        found, split = scan_region(buf, pos, remaining, self._ends)
        if found >= 0:
            self._deliver(view, pos, found, events)
            received = self._received
            length = self._length
            if buf[found + self._end_len - 2] == 0x58:  # X: the read failed on the host
                events.append(Failed(index))
            elif received > length:  # the byte past the listed end (detect_growth)
                events.append(Changed(index))
            elif received == length:
                events.append(End(index))
            else:
                events.append(Short(index, received))
            request = self.requests[index]
            if buf[found + self._end_len - 2] == 0x45:  # E: the read went well
                if request.check or request.check_whole:
                    self._digest_for = (index,)  # the host hashed the file after the read
                    self._digest_named = False
                elif request.check_batched:
                    self._batch_checked.append(index)  # hashed at the batch's end
            self._in_data = False
            self._index = index + 1
            return found + self._end_len
        limit = pos + remaining
        if split > limit:
            raise self._error("data longer than requested, or end marker missing", buf[limit:])
        if split > pos:
            self._deliver(view, pos, split, events)
            self._remaining = remaining - (split - pos)
        self._carry = buf[split:]
        return len(buf)

    def _digest(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        """The line ``<marker> K <digest | ->`` after a checked range or archive, or after a
        batch's appends; the last two end with the inode of each file's name (see
        :class:`HeadDigest`)."""
        indices = self._digest_for
        assert indices is not None
        named = self._digest_named
        prefix = self._digest_prefix
        # The digest word and the newline; then, by name, a space and up to 20 digits each.
        longest = len(prefix) + MAX_DIGEST_WORD + 1 + (21 * len(indices) if named else 0)
        newline = buf.find(b"\n", pos, pos + longest)
        if newline < 0:
            part = buf[pos:]
            if len(part) >= longest or not prefix.startswith(part[: len(prefix)]):
                raise self._digest_error(buf[pos:])
            self._carry = part
            return len(buf)
        if not buf.startswith(prefix, pos):
            raise self._digest_error(buf[pos:newline])
        value, *inode_words = buf[pos + len(prefix) : newline].split(b" ")
        try:
            digest = digest_of_word(value)  # None: the host has no tool to hash with
        except ValueError:
            raise self._digest_error(buf[pos:newline]) from None
        inodes: tuple[int | None, ...] | None = None
        if inode_words:
            if not named or not all(w == b"-" or _INODE.fullmatch(w) for w in inode_words):
                raise self._digest_error(buf[pos:newline])
            if len(inode_words) == len(indices):  # else stat lost count: as if it had none
                inodes = tuple(None if w == b"-" else int(w) & LOW_63_BITS for w in inode_words)
        events.append(HeadDigest(indices, digest, inodes))
        self._digest_for = None
        return newline + 1

    def _digest_error(self, found: bytes) -> ProtocolError:
        indices = self._digest_for or (0,)
        path = self.requests[indices[0]].path
        return ProtocolError(
            f"expected the head digest after request {indices[0]} ({path!r}); found {found[:80]!r}",
            host=self.host,
            path=path_text(path),
        )

    def _deliver(self, view: memoryview, pos: int, stop: int, events: list[FrameEvent]) -> None:
        """``view[pos:stop]`` is frame data: Data up to the request's length, never beyond."""
        received = self._received
        self._received = received + stop - pos
        stop = min(stop, pos + self._length - received)
        if stop > pos:
            events.append(Data(self._index, view[pos:stop]))
