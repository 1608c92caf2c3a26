"""The events a fetch stream is parsed into, and the search for a frame's end line.

Shared by the frame parser (:mod:`remote_sync.mirror.fetch_frames`) and the archive reader
(:mod:`remote_sync.mirror.archive`): whichever way a file's bytes travel (a ``head`` range or
a tar entry), the engine sees the same events, in order, for one file at a time: either one
of :class:`Gone` / :class:`Denied`, or :class:`Begin`, any :class:`Data`, then exactly one of
:class:`End`, :class:`Short`, :class:`Changed`, :class:`Failed`. Only after :class:`End` is the
file's Data the file's content; after the other three it must be discarded. A checked request
(or an archive with checked entries) is followed by :class:`HeadDigest`, and an :class:`End`
it covers is not the file's content until that digest agrees with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from .digests import Digest

__all__ = [
    "Begin",
    "Changed",
    "Data",
    "Denied",
    "End",
    "Failed",
    "FrameEvent",
    "Gone",
    "HeadDigest",
    "Short",
    "scan_region",
]


class Begin(Struct, frozen=True):
    """The file is readable; its bytes follow as :class:`Data` events."""

    index: int


class Data(Struct, frozen=True):
    """Bytes of the file, in order (a view into the chunk fed: use or copy it at once)."""

    index: int
    data: bytes | memoryview

    def __repr__(self) -> str:
        return f"Data(index={self.index}, {len(self.data)} bytes: {bytes(self.data[:40])!r})"


class End(Struct, frozen=True):
    """The file delivered exactly the requested length."""

    index: int


class Short(Struct, frozen=True):
    """The frame ended after ``received`` < length bytes: discard this file's Data.

    The file shrank since the listing (or, for a tar entry, tar's copy cannot be trusted): the
    engine fetches it again whole.
    """

    index: int
    received: int


class Changed(Struct, frozen=True):
    """The file is longer than listed (only for a request with ``detect_growth``): discard
    this file's Data and fetch it again whole; its listed size and mtime are stale."""

    index: int


class Failed(Struct, frozen=True):
    """Reading the file on the host failed midway (an I/O error): discard this file's Data.

    A file-level error of this round, not a change of the file: fetching it again at once
    would most likely fail the same way.
    """

    index: int


class Gone(Struct, frozen=True):
    """The path is no longer a regular file (deleted, replaced, or reached via a symlink)."""

    index: int


class Denied(Struct, frozen=True):
    """The file exists but is not readable."""

    index: int


class HeadDigest(Struct, frozen=True):
    """The digest of the first KiBs of the requests ``indices`` (one after another), read on
    the host after their bytes were: if it is not the digest of the heads the client received
    (or holds), a file was rewritten in place while it was read, and its copy may be spliced.
    After a request with ``check_whole``, the digest of that whole file instead.

    ``digest`` names its tool (md5, or POSIX cksum where the host has no ``md5sum``, see
    :mod:`remote_sync.mirror.digests`); None when the host could not hash (neither tool):
    nothing to check.

    A digest of files hashed by name (an archive's checked entries, a batch's appends) comes
    with ``inodes``: the inode each name had just after, in the same order (None for a name
    gone). One that is not the inode listed means the file was replaced since the listing (a
    compaction renamed over it): the bytes read came from the file listed (or from a
    replacement that agreed with its overlap) and the digest says nothing about them. None
    when the host could not tell (no ``stat -c``), and for a single file's digest, which is
    hashed from the descriptor it was read from.
    """

    indices: tuple[int, ...]
    digest: Digest | None
    inodes: tuple[int | None, ...] | None = None


FrameEvent = Begin | Data | End | Short | Changed | Failed | Gone | Denied | HeadDigest


def scan_region(buf: bytes, pos: int, remaining: int, ends: Sequence[bytes]) -> tuple[int, int]:
    """Look for an end line among the ``remaining`` bytes of a region starting at ``buf[pos]``.

    ``ends`` are the lines that may end the region, all of the same length and differing only
    in their last two bytes (``<marker> E\\n``, ``<marker> X\\n``).

    Returns ``(found, split)``. ``found`` is the position of an end line starting inside the
    region or right after it (``pos <= found <= pos + remaining``), else -1. When -1, the bytes
    from ``pos`` up to ``split`` hold no such line's start, and ``buf[split:]`` (when ``split``
    is before the end of ``buf``) may be the beginning of one that the next chunk completes:
    the caller keeps it for then. ``split > pos + remaining`` means the region ends in ``buf``
    with no end line in or right after it.
    """
    size = len(buf)
    line_len = len(ends[0])
    prefix = ends[0][:-2]
    prefix_len = len(prefix)
    limit = pos + remaining
    # Only a full prefix starting at or before the limit counts; one cut by the end of buf is
    # found by the probe below.
    stop = min(size, limit + prefix_len)
    start = pos
    while True:
        found = buf.find(prefix, start, stop)
        if found < 0:
            break
        line = buf[found : found + line_len]
        if line in ends:
            return found, found
        if len(line) < line_len and any(end.startswith(line) for end in ends):
            return -1, found  # the line's last bytes come with the next chunk
        start = found + 1  # a marker followed by something else: data
    split = size
    first = prefix[:1]
    probe = buf.find(first, max(pos, size - prefix_len + 1), limit + 1)
    while probe >= 0:
        if prefix.startswith(buf[probe:]):
            split = probe
            break
        probe = buf.find(first, probe + 1, limit + 1)
    return -1, split
