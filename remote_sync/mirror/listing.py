"""The parse of a host's listing: its records into :class:`RemoteFile`, its messages into errors.

:class:`ListingParser` reads the stdout of a listing or of a round
(:func:`~remote_sync.mirror.remote_ops.listing_argv`,
:func:`~remote_sync.mirror.remote_ops.round_argv`, where the records and the round's end line
are described), plain or gzip-compressed, and holds every path to :func:`path_problem` (as a
fetch request's path is held; a record is taken with one match). A listing
of more than :data:`MAX_LISTING_FILES` records or :data:`MAX_LISTING_BYTES` bytes is refused
(:class:`TooMuchOutputError`, :func:`listing_too_much`, which ``sessions list --remote``
says too): the client holds it until it has planned.

What ``find`` wrote on stderr is read here too: :func:`unread_paths` finds each path it could
not read, and :func:`listing_errors` says them as errors, alike for a sync and for
``sessions list --remote``. Like the scripts' module, this one does no I/O.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from ..errors import ListingIncompleteError, ProtocolError, TooMuchOutputError, path_text
from ..ssh.remote import STDERR_TAIL_BYTES

__all__ = [
    "LISTING_BOUND_HINT",
    "LOW_63_BITS",
    "MAX_LISTING_BYTES",
    "MAX_LISTING_FILES",
    "MAX_LISTING_RECORD",
    "UNREAD_HINT",
    "ListingParser",
    "RemoteFile",
    "listing_errors",
    "listing_too_much",
    "path_problem",
    "unread_paths",
]

#: A listing record (stat line + path) longer than this without its terminator is an error.
#: Real records are at most about 4 KiB (PATH_MAX) plus a short stat line.
MAX_LISTING_RECORD = 64 * 1024
#: A listing of more files than this (every record find printed, included or not) is
#: refused (:class:`TooMuchOutputError`): the client holds the files it keeps until the plan
#: is made, about 0.3 KB each (a ``RemoteFile`` with a 75-byte path, measured with
#: tracemalloc; 0.45 KB at planning a first sync), so a million is some 300-450 MB of the
#: client's memory, and a thousand times the sessions of a busy agent host. Without a bound, a
#: host printing records without end would hold its round and grow that memory for ever.
MAX_LISTING_FILES = 1_000_000
#: A listing longer than this, compressed or inflated, is refused the same way: a million
#: records of 270 bytes (their paths of 200), or fewer with longer paths, whose bytes are held.
MAX_LISTING_BYTES = 256 * 1024 * 1024
#: What to do about a listing over those bounds: find lists every file under the start
#: points the include globs give (an exclude only drops what it printed).
LISTING_BOUND_HINT = (
    "give this host a narrower root or narrower include globs in the inventory (find walks "
    "every directory the include globs start from; an exclude does not shorten the walk)"
)


def listing_too_much(
    host: str, what: str, outcome: str, path: str | None = None
) -> TooMuchOutputError:
    """The error of a host's listing past :data:`MAX_LISTING_FILES` or
    :data:`MAX_LISTING_BYTES` (``what``: the bound passed, "1000000 files"), a sync's or a
    remote session listing's; ``outcome`` says what becomes of what was listed."""
    return TooMuchOutputError(
        f"the listing holds more than {what}, the most a host's listing may: {outcome}",
        host=host,
        path=path,
        hint=LISTING_BOUND_HINT,
    )


#: A compressed listing is inflated at most this many bytes at a time (a hostile host could
#: send a small stream that inflates to gigabytes).
_INFLATE_STEP = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


# What find writes on stderr about a path it could not read, in the C locale the listing sets:
# GNU find quotes the path and escapes it as C does ("find: './a b\\'c': Permission denied";
# a byte that is not printable ASCII as an octal escape), BusyBox find writes it raw. Either
# way it starts with "./" (every start point has that prefix) and the reason, a strerror(3)
# text, has no colon.
_FIND_MESSAGE = re.compile(rb"find: (?:'(\./(?:[^'\\]|\\.)*)'|(\./.*)): ([^:]+)", re.DOTALL)
_C_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)
_C_ESCAPES = {
    b"n": b"\n",
    b"t": b"\t",
    b"r": b"\r",
    b"a": b"\a",
    b"b": b"\b",
    b"f": b"\f",
    b"v": b"\v",
}


#: What to do about a directory the login user cannot read or search. Not "exclude it":
#: excludes filter the listing, find still walks there.
UNREAD_HINT = "let the login user read and search it on the host (chmod u+rx, or through its group)"


#: What a listing's messages say when their start was not kept.
_EARLIER_NOT_KEPT = (
    "find said more before these messages (not kept): other paths may not have been read"
)


def unread_paths(messages: bytes) -> tuple[list[tuple[bytes, str]], list[str]]:
    """The listing's ``messages`` (its stderr,
    :data:`~remote_sync.mirror.remote_sh.EXIT_ROOT_UNUSABLE` aside): each path ``find`` could
    not read, relative to the root, with its reason ("Permission denied"), and every other line
    as text, each once (a script may run find twice over the same tree). A name holding a
    newline splits a BusyBox message in two: both halves are then other lines. A path that
    vanished while find walked the tree (an agent's atomic save) is neither: it is gone, not
    hidden."""
    unread: dict[tuple[bytes, str], None] = {}
    other: dict[str, None] = {}
    if len(messages) >= STDERR_TAIL_BYTES:
        # Only the stream's last bytes were kept: the first line may be the end of a message
        # cut in two, and earlier ones are lost. Said, not parsed as a path.
        messages = messages.partition(b"\n")[2]
        other[_EARLIER_NOT_KEPT] = None
    for line in messages.split(b"\n"):  # not splitlines: a raw name may hold a \r
        found = _FIND_MESSAGE.fullmatch(line)
        if found is None:
            if line.strip():
                other[line.decode("utf-8", "backslashreplace").strip()] = None
            continue
        quoted, raw, reason = found.groups()
        if reason == b"No such file or directory":
            continue
        path = _C_ESCAPE.sub(_unescape_c, quoted) if quoted is not None else raw
        unread[path[2:] or b".", reason.decode("utf-8", "backslashreplace")] = None
    return list(unread), list(other)


def _unescape_c(match: re.Match[bytes]) -> bytes:
    code = match[1]
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    return _C_ESCAPES.get(code, code)  # \\, \', \" and \? stand for themselves


def listing_errors(
    host: str, messages: bytes | None, unseen: str, then: str, *, incomplete: bool = False
) -> list[ListingIncompleteError]:
    """Every error of a listing ``find`` could not make whole, said alike by a sync and by
    ``sessions list --remote``: one per path it could not read (:func:`unread_paths`),
    naming it and what was not done under it (``unseen``: "mirrored", "listed"); then one
    without a path for the other lines of ``messages``, or, when the caller knows the
    listing is ``incomplete`` and no path says where (``messages`` None: the command was
    cut before they came), one saying so. Each hint ends with ``then``."""
    unread, other = unread_paths(messages or b"")
    errors = [
        ListingIncompleteError(
            f"find could not read it ({reason}): nothing under it was {unseen}",
            host=host,
            path=path_text(path),
            hint=f"{UNREAD_HINT}; {then}",
        )
        for path, reason in unread
    ]
    if other or (incomplete and not unread):
        said = "; ".join(other) or "the listing reported errors (their messages were not kept)"
        errors.append(
            ListingIncompleteError(
                f"the listing is incomplete: {said}",
                host=host,
                hint=f"fix permissions (or the failing tool) on the host; {then}",
            )
        )
    return errors


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One regular file of a listing."""

    path: bytes
    """Relative to the root, normalized (no ``./`` prefix, no empty/``.``/``..`` parts)."""
    size: int
    mtime: float
    dev: int
    ino: int


#: The largest size a file can have (off_t), and what the state's SQLite integers hold.
_MAX_SIZE = 2**63 - 1
_U64 = 2**64 - 1
# A device or inode number is 64 bits unsigned (overlayfs and some NFS servers use the top
# ones); the state keeps signed 64-bit integers, negative inodes meaning "in doubt". So only
# the low 63 bits are kept, here and for the inodes after a digest, which are compared with
# these: two files differing in the top bit alone would be taken for one.
LOW_63_BITS = 2**63 - 1
_STAT = rb"([0-9]{1,20}) (-?[0-9]{1,20}(?:\.[0-9]{1,20})?) ([0-9]{1,20}) ([0-9]{1,20})"
# A whole well-formed record, its path (the 5th group) without the one "./" find puts first:
# one match a record where a search for its two ends, two slices and the stat line's match
# each cost as much (a round's listings are some 4,000 records, parsed every round).
_RECORD = re.compile(_STAT + rb"\n(?:\./)?([^\x00]*)\x00")


def path_problem(path: bytes) -> str | None:
    """Why ``path`` (already without its ``./``) is not a safe relative path, or None."""
    # At a glance first (every listed file every round, every fetch request): framed by
    # slashes, a path with no "//" has no empty part and is neither empty nor absolute, and
    # one with no "/." has no part that is "." or "..". Only the rest is split.
    framed = b"/" + path + b"/"
    if b"//" not in framed and b"/." not in framed and b"\x00" not in path:
        return None
    if not path:
        return "empty path"
    if b"\x00" in path:
        return "path contains a NUL byte"
    if path.startswith(b"/"):
        return "absolute path"
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            return "path with an empty, '.' or '..' component"
    return None


_END_LINE = re.compile(rb"L ([0-9]{1,3}) ([01])(?: ([prs][ny][ny]))?")


class ListingParser:
    """Incremental parser of a listing's stdout: chunks in, :class:`RemoteFile` records out.

    Holds at most one partial record between chunks (at most :data:`MAX_LISTING_RECORD`
    bytes). Every path is validated: the host controls this output, and a path that is empty,
    absolute or has an empty, ``.`` or ``..`` component is a :class:`ProtocolError`. A listing
    of more than :data:`MAX_LISTING_FILES` records, or more than :data:`MAX_LISTING_BYTES`
    bytes as it came or inflated, is a :class:`TooMuchOutputError` (the bounds are read when
    the parser is made).

    With ``trailer`` (a round's output, :func:`~remote_sync.mirror.remote_ops.round_argv`) the
    listing ends at its end line ``L <status> <warned> [<tools>]``: then :attr:`end` holds
    ``(status, warned)``, :attr:`tools` the tools word (see
    :func:`~remote_sync.mirror.remote_ops.round_argv`) and :attr:`rest` the bytes that came
    after it in the chunk (the fetch's frames); feed nothing more.
    """

    __slots__ = (
        "_closed",
        "_fed",
        "_gzip_done",
        "_inflate",
        "_max_bytes",
        "_max_files",
        "_pending",
        "_plain",
        "_sniff",
        "_started",
        "_trailer",
        "count",
        "end",
        "host",
        "rest",
        "tools",
    )

    def __init__(self, host: str, *, trailer: bool = False) -> None:
        self.host = host
        self.count = 0
        self.end: tuple[int, bool] | None = None
        #: What the round's end line said of the host's tools ("" when it said nothing).
        self.tools = ""
        self.rest = b""
        self._trailer = trailer
        self._started = False  # a record was read: what comes first is the listing's
        self._pending = b""
        self._closed = False
        # Bytes fed as they came, and as records (inflated): each within _max_bytes.
        self._fed = 0
        self._plain = 0
        self._max_files = MAX_LISTING_FILES
        self._max_bytes = MAX_LISTING_BYTES
        # The first bytes tell whether the listing is gzip-compressed: a plain record starts
        # with a digit, never with the gzip magic.
        self._sniff: bytes | None = b""
        self._inflate: zlib._Decompress | None = None
        self._gzip_done = False

    def feed(self, chunk: bytes) -> list[RemoteFile]:
        if self._closed or self.end is not None:
            raise ValueError("feed() after the end of the listing")
        # Compressed bytes that inflate to nothing (empty deflate blocks) are bytes too.
        self._fed += len(chunk)
        if self._fed > self._max_bytes:
            raise self._too_much(f"{self._max_bytes} bytes")
        if self._sniff is not None:
            head = self._sniff + bytes(chunk)
            if len(head) < len(_GZIP_MAGIC) and _GZIP_MAGIC.startswith(head):
                self._sniff = head
                return []
            self._sniff = None
            if head.startswith(_GZIP_MAGIC):
                self._inflate = zlib.decompressobj(wbits=31)
            chunk = head
        if self._inflate is None:
            return self._parse(chunk)
        out: list[RemoteFile] = []
        data = bytes(chunk)
        while data:
            try:
                plain = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                raise ProtocolError(f"corrupt compressed listing: {exc}", host=self.host) from exc
            data = self._inflate.unconsumed_tail
            out.extend(self._parse(plain))
            if not self._inflate.eof:
                continue
            # Every byte past the compressed stream is in unused_data; when the stream ended
            # in a call whose output was capped, CPython leaves them in unconsumed_tail too.
            after = self._inflate.unused_data
            if not self._trailer:
                if after:
                    raise ProtocolError(
                        "output after the end of the compressed listing", host=self.host
                    )
                break
            if self._pending:
                raise ProtocolError("the compressed listing ended inside a record", host=self.host)
            # Only the end line may follow the compressed records.
            self._inflate = None
            self._gzip_done = True
            out.extend(self._parse(after))
            break
        return out

    def _parse(self, chunk: bytes) -> list[RemoteFile]:
        self._plain += len(chunk)
        if self._plain > self._max_bytes:
            raise self._too_much(f"{self._max_bytes} bytes")
        buf = self._pending + chunk if self._pending else bytes(chunk)
        out: list[RemoteFile] = []
        pos = 0
        find = buf.find
        match = _RECORD.match
        # The record left over from the last chunk is whole only once its NUL has come: a
        # chunk without one is not matched with it again (which scanned a long record once
        # per chunk, quadratic in a path a host sends a few bytes at a time).
        whole = not self._pending or find(b"\x00", len(self._pending)) >= 0
        while True:
            # Only the end line may follow a compressed listing: no record is taken after it.
            if whole and not self._gzip_done:
                record = match(buf, pos)
                if record is not None:
                    out.append(self._record(record))
                    pos = record.end()
                    continue
            if self._trailer and self._inflate is None and buf[pos : pos + 1] == b"L":
                newline = find(b"\n", pos)
                if newline < 0:
                    break
                self._end_line(buf[pos:newline])
                self.rest = buf[newline + 1 :]
                self._pending = b""
                self._count(out)
                return out
            if self._gzip_done and pos < len(buf):
                raise ProtocolError(
                    f"output after the end of the compressed listing: {buf[pos : pos + 80]!r}",
                    host=self.host,
                )
            if not whole:
                break  # the record left over has no NUL yet: nothing more to take
            newline = find(b"\n", pos)
            if newline < 0:
                break
            end = find(b"\x00", newline + 1)
            if end < 0:
                break
            # A whole record _RECORD did not match: its stat line is malformed.
            raise self._malformed(buf[pos:newline], buf[newline + 1 : end])
        rest = buf[pos:]
        if len(rest) > MAX_LISTING_RECORD:
            raise ProtocolError(
                f"listing record longer than {MAX_LISTING_RECORD} bytes without terminator "
                f"(starts {rest[:80]!r})",
                host=self.host,
            )
        self._pending = rest
        self._count(out)
        return out

    def _count(self, records: list[RemoteFile]) -> None:
        # Once per chunk (at most an inflate step of records), not per record.
        self.count += len(records)
        if self.count > self._max_files:
            raise self._too_much(f"{self._max_files} files")

    def _too_much(self, what: str) -> TooMuchOutputError:
        return listing_too_much(
            self.host, what, "nothing is mirrored this round, and no file is recorded as deleted"
        )

    def _end_line(self, line: bytes) -> None:
        match = _END_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed end of the listing {line[:80]!r}", host=self.host)
        self.end = (int(match[1]), match[2] == b"1")
        self.tools = match[3].decode("ascii") if match[3] else ""

    def close(self) -> None:
        """End of output: a partial record left over is a :class:`ProtocolError`, and so is
        a round's output without the listing's end line."""
        self._closed = True
        if self.end is not None:
            return
        if self._sniff:
            self._pending, self._sniff = self._sniff, None
        if self._inflate is not None and not self._inflate.eof:
            raise ProtocolError("the compressed listing ended early", host=self.host)
        if self._pending:
            pending, self._pending = self._pending, b""
            raise ProtocolError(
                f"listing ended inside a record ({len(pending)} bytes: {pending[:80]!r})",
                host=self.host,
            )
        if self._trailer:
            raise ProtocolError("the listing ended without its end line", host=self.host)

    def _malformed(self, line: bytes, path: bytes) -> ProtocolError:
        # A login shell's rc file that echoes a banner on every command puts it before the
        # listing, and a compressed listing after it reads as that record's "path": such
        # bytes are no path to name, and the first record says where to look.
        garbled = _GZIP_MAGIC in path or _GZIP_MAGIC in line
        where = "" if garbled else f" for path {path[:200]!r}"
        first = "" if self._started else " (output printed before the listing?)"
        return ProtocolError(
            f"malformed listing record {line[:80]!r}{where}{first}",
            host=self.host,
            path=None if garbled else path_text(path[:200]),
        )

    def _record(self, record: re.Match[bytes]) -> RemoteFile:
        size_text, mtime_text, dev_text, ino_text, path = record.groups()
        problem = path_problem(path)
        if problem is not None:
            raise ProtocolError(
                f"unsafe path in listing ({problem}): {path!r}",
                host=self.host,
                path=path_text(path),
            )
        size, dev, ino = int(size_text), int(dev_text), int(ino_text)
        if size > _MAX_SIZE or dev > _U64 or ino > _U64:
            line = record.string[record.start() : record.end(4)]
            raise ProtocolError(
                f"impossible numbers in listing record {line[:80]!r} for path {path!r}",
                host=self.host,
                path=path_text(path),
            )
        self._started = True
        return RemoteFile(path, size, float(mtime_text), dev & LOW_63_BITS, ino & LOW_63_BITS)
