"""A dry run's reads of files back on a deleted one's inode.

What it owns: the request of such a file's overlap, its head hashed on the host after it
(:func:`overlap_request`), what is kept of its read (:class:`OverlapRead`, filled by
:func:`take_reads`), and whether a real run would append to it, as the plan does, or fetch it
whole as new (:func:`same_file_back`). These reads change nothing: the overlaps are compared
with the mirror's files, read only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from msgspec import Struct, field

from .digests import Digest, Hasher
from .fetch_events import Changed, Data, Denied, End, Failed, Gone, HeadDigest, Short
from .fetch_frames import FetchRequest
from .fetch_script import HEAD_BYTES
from .plan import Transfer
from .writer import Overlap, RewriteDetected, rfind_newline


def overlap_request(t: Transfer) -> FetchRequest:
    """A dry run's read of a returning file's overlap, its head hashed on the host after it
    (when the mirror holds a whole head to compare it with). A file of its old size (the
    plan verifies its head) is read to its listed end: past the mirrored lines there is at
    most the partial last line of the last round, which a real run appends only if it now
    ends. A file that grew more is read no further than the overlap: it is taken to grow."""
    assert t.row is not None
    length = t.length if t.verify_head else overlap_length(t)
    return FetchRequest(t.remote.path, t.start, length, check=t.row.size >= HEAD_BYTES)


def overlap_length(t: Transfer) -> int:
    """How many of the bytes an append of ``t`` reads the mirror holds already."""
    assert t.row is not None
    return t.row.size - t.start


class OverlapRead(Struct):
    """What a dry run's read of a returning file found: its overlap (the first ``keep``
    bytes), and whether a line end came after it. The bytes after the overlap are not kept:
    a partial last line may be long."""

    keep: int
    data: bytearray = field(default_factory=bytearray)
    #: A line end after the overlap (a real run appends a line: the file grows in the
    #: mirror); taken as read for a file that grew past its last partial line.
    line_after: bool = False
    ended: type[object] | None = None  # End, Short, Gone...
    digest: Digest | None = None  # the host's digest of its head after the read


def take_reads(reads: list[OverlapRead], events: Iterable[object]) -> None:
    for event in events:
        if isinstance(event, HeadDigest):
            reads[event.indices[0]].digest = event.digest
        elif isinstance(event, Data):
            read = reads[event.index]
            chunk = event.data
            room = read.keep - len(read.data)
            if room > 0:
                read.data += chunk[:room]
                chunk = chunk[room:]
            read.line_after = read.line_after or rfind_newline(memoryview(chunk)) >= 0
        elif isinstance(event, (End, Short, Changed, Failed, Gone, Denied)):
            reads[event.index].ended = type(event)


def same_file_back(t: Transfer, read: OverlapRead, local: Path) -> bool:
    """Would a real run append to ``t`` (a file back on a deleted one's inode), as the plan
    does, rather than fetch it whole as new? It checks the same things (see
    :class:`~.frames.FrameHandler`): the overlap as the mirror holds it, and when the overlap does
    not reach the file's start, the head the host hashes against the mirror's (where the
    host cannot hash, an append's head goes unchecked, but a file of its old size is fetched
    whole). A file unreadable or failing since the listing is left as planned: the real run
    would report it so (one gone since is dropped from the dry run's list by the caller)."""
    row = t.row
    assert row is not None
    if read.ended in (Gone, Denied, Failed):
        return True
    if read.ended is not End:
        return False  # it shrank since the listing: a real run fetches it whole
    try:
        with open(local, "rb") as mirrored:
            overlap = Overlap.read(mirrored, row.size, t.start, head=True)
        overlap.take(memoryview(read.data))
    except (OSError, RewriteDetected):
        return False  # nothing (or not this) to append to: a real run fetches it whole
    if not overlap.whole:
        return False
    if row.size < HEAD_BYTES:
        return True  # the overlap was all of it
    if read.digest is None:
        return not t.verify_head
    hasher = Hasher()
    hasher.update(overlap.head)
    return hasher.agrees(read.digest)
