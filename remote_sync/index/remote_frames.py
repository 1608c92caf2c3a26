"""The framed output of the ``--remote`` commands, and its incremental parser :class:`FrameStream`.

What it owns: what a frame is (:class:`Header`), how the output of both commands
(:mod:`remote_sync.index.remote_scripts`) is cut into frames and file bytes, and the bounds
on that output.

Output frames (``M`` is the marker, ``\\0`` a NUL byte)::

    M F <mtime> <size> <path>\\0  <bytes>  M E\\n  a file of the listing (M X\\n: read failed)
    M U <path>\\0                                 a file of the listing that is not readable;
                                                 show: the directory that cannot be searched
    M C <path>\\0                                 show: a candidate for the session named
    M G\\n  |  M D\\n                              show: the file is gone / not readable
    M S <size>\\n                                 show: the file's size, before its bytes
    M B\\n  <bytes>  M E\\n                         show: the file from its start
    M K <start>\\n  <bytes>  M E\\n                 show: the block from <start> to the previous

A host's output is bounded as a sync's is (:class:`FrameStream`, with the constants of
:mod:`remote_sync.mirror.listing` and :mod:`remote_sync.mirror.fetch_frames`): as many files
and header bytes as a sync's listing may hold, and of the files' bytes the sizes the host
gave in the headers plus room once for growth while read. Past a bound, a host's listing
ends with a :class:`TooMuchOutputError` after yielding the sessions it sent whole; a show
ends with it. The idle timeout alone would let a host that keeps sending go on for ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ProtocolError, TooMuchOutputError, path_text
from ..mirror import fetch_frames, listing
from ..mirror.listing import listing_too_much

__all__ = ["LISTING", "FrameStream", "Header"]

#: A path in a frame header longer than this without its NUL is a protocol error.
MAX_FRAME_PATH = 64 * 1024
#: Where hints send a caller to see a host's sessions, on the command line and in the library.
LISTING = "`remote-sync sessions list --remote` (the library's list_sessions(remote=True))"


def _relative(path: bytes) -> bytes:
    """A path as find printed it (``./a/b``) → relative to the root, checked."""
    rel = path[2:] if path.startswith(b"./") else path
    parts = rel.split(b"/")
    if not rel or rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise ValueError(f"unsafe path {path!r}")
    return rel


@dataclass(frozen=True, slots=True)
class Header:
    """A frame header: its kind (one of ``FUCGDBSKEX``), argument (a path or a number) and,
    for ``F``, the file's mtime (epoch seconds) and size."""

    kind: str
    arg: bytes = b""
    mtime: float | None = None
    size: int | None = None


_PATH_KINDS = b"FUC"
_NUMBER_KINDS = b"SK"
_BARE_KINDS = b"GDBEX"
_DATA_KINDS = b"FBK"
#: The mtime and size in an ``F`` header: what find's ``%T@`` or stat's ``%Y``, and ``%s``,
#: print (as the mirror's listing reads them).
_MTIME_SIZE = re.compile(rb"(-?[0-9]{1,20}(?:\.[0-9]{1,20})?) ([0-9]{1,20})")
#: The most digits of a number in an ``S`` or ``K`` header (a size or offset fits in 19).
_MAX_DIGITS = 20


class FrameStream:
    """Incremental parser of the output of both commands: chunks in, frames out.

    ``feed`` returns :class:`Header` s and, between a data header and its end mark, the
    file's bytes as views of the chunk fed (use or copy them at once). Data is found by its
    end mark, the secret marker, so nothing is buffered per file: between chunks only a
    possible split marker or header is kept. Anything else where a header is expected is a
    :class:`ProtocolError` naming the host (and the file of the last header).

    The output is bounded as a sync's is (:mod:`remote_sync.mirror.listing`): at most
    ``MAX_LISTING_FILES`` path headers (``F``, ``U``, ``C``: the files found) and
    ``MAX_LISTING_BYTES`` bytes of headers, as a host's listing; file bytes at most the sizes
    the ``F`` and ``S`` headers gave, plus ``FETCH_GROWTH_SLACK`` once for files that grow
    while read (the bounds are read when the stream is made). A header's bytes are counted
    without its marker: a file's ``F`` header and end mark are then never longer than the
    record a sync's listing has for it (which has a device and an inode number more), so a
    host a sync lists is listed here too. Past one, ``feed`` returns the frames before it and
    :meth:`check` (and any later ``feed`` or ``close``) raises a
    :class:`TooMuchOutputError`, so that what came before it can still be used. ``outcome``
    is what becomes of a listing's output then, said in the error; None (a show's) says it
    in a show's words.
    """

    __slots__ = (
        "_carry",
        "_data",
        "_files",
        "_header_bytes",
        "_in_data",
        "_max_bytes",
        "_max_files",
        "_outcome",
        "_over",
        "_sizes",
        "_slack",
        "_token",
        "host",
        "path",
    )

    def __init__(self, host: str, marker: bytes, outcome: str | None = None) -> None:
        if len(marker) < 16 or marker.strip(b"0123456789abcdef"):
            raise ValueError(f"a marker is at least 16 lowercase hex digits, not {marker!r}")
        self.host = host
        #: The path of the last path header (for errors).
        self.path: bytes | None = None
        self._token = marker + b" "
        self._carry = b""
        self._in_data = False
        #: What becomes of a listing's output when it passes a bound (said in the error);
        #: None for a show's.
        self._outcome = outcome
        self._files = 0  # path headers so far
        self._header_bytes = 0
        self._max_files = listing.MAX_LISTING_FILES
        self._max_bytes = listing.MAX_LISTING_BYTES
        self._data = 0  # file bytes so far: at most _sizes + _slack
        self._sizes = 0  # the sizes the headers gave
        self._slack = fetch_frames.FETCH_GROWTH_SLACK
        self._over: TooMuchOutputError | None = None

    def check(self) -> None:
        """Raise the :class:`TooMuchOutputError` of a bound passed (call it once the frames
        ``feed`` returned are used)."""
        if self._over is not None:
            raise self._over

    def feed(self, chunk: bytes) -> list[Header | memoryview]:
        self.check()
        buf = self._carry + chunk if self._carry else chunk
        self._carry = b""
        out: list[Header | memoryview] = []
        view = memoryview(buf)
        size = len(buf)
        token = self._token
        tl = len(token)
        pos = 0
        while pos < size:
            if self._in_data:
                at = buf.find(token, pos)
                keep = self._split_token(buf, pos) if at < 0 else at
                if keep > pos:
                    self._data += keep - pos
                    if self._data > self._sizes + self._slack:
                        self._over = self._too_much_data()
                        return out
                    out.append(view[pos:keep])
                if at < 0:
                    self._carry = buf[keep:]
                    return out
                if size - at < tl + 2:
                    self._carry = buf[at:]
                    return out
                kind = buf[at + tl]
                if kind not in b"EX" or buf[at + tl + 1] != 0x0A:
                    raise self._error("a file's data holds the frame marker", buf[at : at + 80])
                out.append(Header(chr(kind)))
                self._in_data = False
                pos = at + tl + 2
                self._header_bytes += 2  # "E\n": the marker is not counted (see above)
                continue
            if size - pos < tl + 2:
                if not (token.startswith(buf[pos:]) or buf.startswith(token, pos)):
                    raise self._error("expected a frame header", buf[pos:])
                self._carry = buf[pos:]
                return out
            if not buf.startswith(token, pos):
                raise self._error("expected a frame header", buf[pos : pos + 80])
            kind = buf[pos + tl]
            start = pos + tl + 1
            if kind in _BARE_KINDS and kind not in b"EX":
                if buf[start] != 0x0A:
                    raise self._error("malformed frame header", buf[pos : pos + 80])
                header = Header(chr(kind))
                end = start
            elif kind in _PATH_KINDS or kind in _NUMBER_KINDS:
                stop = b"\x00" if kind in _PATH_KINDS else b"\n"
                end = buf.find(stop, start)
                if end < 0:
                    if size - start > MAX_FRAME_PATH:
                        raise self._error("frame header without its end", buf[pos : pos + 80])
                    self._carry = buf[pos:]
                    return out
                arg = buf[start + 1 : end]
                if buf[start] != 0x20 or (
                    kind in _NUMBER_KINDS and not (arg.isdigit() and len(arg) <= _MAX_DIGITS)
                ):
                    raise self._error("malformed frame header", buf[pos : pos + 80])
                header = self._arg_header(kind, arg, buf[pos : pos + 80])
            else:
                raise self._error("unknown frame", buf[pos : pos + 80])
            # Without the marker, 33 bytes a frame that a sync's record does not have: with
            # it, 256 MiB held some 890,000 files of 200-byte paths where a sync takes 1,000,000.
            self._header_bytes += end + 1 - pos - tl
            if header.kind in "FUC":
                self._files += 1
            if self._files > self._max_files:
                self._over = self._too_much(self._max_files, "files")
            elif self._header_bytes > self._max_bytes:
                self._over = self._too_much(self._max_bytes, "bytes of file headers")
            if self._over is not None:
                return out
            pos = end + 1
            out.append(header)
            self._in_data = kind in _DATA_KINDS
            if header.size is not None:  # the bytes of the file the header announces
                self._sizes += header.size
        return out

    def _arg_header(self, kind: int, arg: bytes, found: bytes) -> Header:
        """The header of kind ``kind`` with a path or number ``arg``, checked."""
        if kind == 0x53:  # S: "<size>"
            return Header("S", arg, size=int(arg))
        if kind not in _PATH_KINDS:
            return Header(chr(kind), arg)
        mtime = size = None
        if kind == 0x46:  # F: "<mtime> <size> <path>"
            match = _MTIME_SIZE.match(arg)
            if match is None or arg[match.end() : match.end() + 1] != b" ":
                raise self._error("malformed frame header", found)
            mtime, size = float(match[1]), int(match[2])
            arg = arg[match.end() + 1 :]
        try:
            arg = _relative(arg)
        except ValueError:
            raise self._error("unsafe path in a frame", arg[:200]) from None
        self.path = arg
        return Header(chr(kind), arg, mtime, size)

    def _too_much(self, bound: int, of: str) -> TooMuchOutputError:
        path = path_text(self.path) if self.path is not None else None
        if self._outcome is not None:
            return listing_too_much(self.host, f"{bound} {of}", self._outcome, path)
        # A show's files are the candidates for the session it names (a show by path has
        # one): a listing's words and hint would send the user to the include globs alone.
        what = f"{bound} candidate files" if of == "files" else f"{bound} {of} of candidates"
        return TooMuchOutputError(
            f"the host found more than {what} for the session, the most a show takes: "
            "nothing is shown",
            host=self.host,
            path=path,
            hint=f"give more of the session id, or the session's path as {LISTING} shows it; "
            "else give this host a narrower root or narrower include globs in the inventory",
        )

    def _too_much_data(self) -> TooMuchOutputError:
        return TooMuchOutputError(
            f"the host sent more than {self._sizes + self._slack} bytes of session files: the "
            f"{self._sizes} bytes the files held when found, and {self._slack} more for files "
            f"that grow while read; {self._outcome or 'nothing is shown'}",
            host=self.host,
            path=path_text(self.path) if self.path is not None else None,
            hint="a session file grew that much while it was read, or the host's cat, dd or "
            "head sends more than the file holds (a wrapper, an alias, a broken build): run "
            "the command again",
        )

    def close(self) -> None:
        """End of output: a frame left unfinished is a :class:`ProtocolError`, a bound
        passed the :class:`TooMuchOutputError` of :meth:`check`."""
        self.check()
        if self._carry or self._in_data:
            raise self._error("output ended inside a frame", self._carry[:80])

    def _split_token(self, buf: bytes, pos: int) -> int:
        """Where a possible start of the marker at the end of ``buf`` begins (else its end)."""
        token = self._token
        size = len(buf)
        at = max(pos, size - len(token) + 1)
        first = token[0]
        while True:
            at = buf.find(first, at)
            if at < 0:
                return size
            if token.startswith(buf[at:]):
                return at
            at += 1

    def _error(self, what: str, found: bytes) -> ProtocolError:
        path = path_text(self.path) if self.path is not None else None
        return ProtocolError(f"{what}; found {found[:80]!r}", host=self.host, path=path)
