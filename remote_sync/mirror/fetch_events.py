"""The events a fetch stream is parsed into, and the search for a frame's end marker.

Shared by the frame parser (:mod:`remote_sync.mirror.remote_ops`) and the archive reader
(:mod:`remote_sync.mirror.archive`): whichever way a file's bytes travel (a ``head`` range or
a tar entry), the engine sees the same events, in order, for one file at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Begin", "Data", "Denied", "End", "FrameEvent", "Gone", "Short", "scan_region"]


@dataclass(frozen=True, slots=True)
class Begin:
    """The file is readable; its bytes follow as :class:`Data` events."""

    index: int


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes of the file, in order (a view into the chunk fed: use or copy it at once)."""

    index: int
    data: bytes | memoryview

    def __repr__(self) -> str:
        return f"Data(index={self.index}, {len(self.data)} bytes: {bytes(self.data[:40])!r})"


@dataclass(frozen=True, slots=True)
class End:
    """The file delivered exactly the requested length."""

    index: int


@dataclass(frozen=True, slots=True)
class Short:
    """The frame ended after ``received`` < length bytes: discard this file's Data."""

    index: int
    received: int


@dataclass(frozen=True, slots=True)
class Gone:
    """The path is no longer a regular file (deleted, replaced, or reached via a symlink)."""

    index: int


@dataclass(frozen=True, slots=True)
class Denied:
    """The file exists but is not readable."""

    index: int


FrameEvent = Begin | Data | End | Short | Gone | Denied


def scan_region(buf: bytes, pos: int, remaining: int, marker: bytes) -> tuple[int, int]:
    """Look for ``marker`` among the ``remaining`` bytes of a region starting at ``buf[pos]``.

    Returns ``(found, split)``. ``found`` is the position of a marker starting inside the
    region or right after it (``pos <= found <= pos + remaining``), else -1. When -1, the bytes
    from ``pos`` up to ``split`` hold no such marker start, and ``buf[split:]`` (when ``split``
    is before the end of ``buf``) may be the beginning of one that the next chunk completes:
    the caller keeps it for then. ``split > pos + remaining`` means the region ends in ``buf``
    with no marker in or right after it.
    """
    size = len(buf)
    marker_len = len(marker)
    full_window = pos + remaining + marker_len
    found = buf.find(marker, pos, min(size, full_window))
    if found >= 0:
        return found, found
    limit = pos + remaining
    split = size
    first = marker[:1]
    probe = buf.find(first, max(pos, size - marker_len + 1), limit + 1)
    while probe >= 0:
        if marker.startswith(buf[probe:]):
            split = probe
            break
        probe = buf.find(first, probe + 1, limit + 1)
    return -1, split
