"""The mirror's checkpoint: one SQLite database (WAL) inside the destination, and its lock.

What it owns: the destination's control directory (``DIR/.remote-sync/``, held open without
following a link, the lock and the versions tree reached by name in it), the exclusive lock
that keeps two runs off one destination (its file says which process on which machine holds
it), the ``files`` table (per host and remote path: the bytes committed in the mirror, the
remote size, identity, prefix fingerprint, mtime and version), the ``versions`` table (when
each kept version was kept), the state read without the lock (:class:`StateReader`, which
reads again what a sync starting meanwhile spoilt), and crash recovery: on open,
bytes beyond a checkpoint are cut back and stray temp files removed, so a run killed at any
instant resumes exactly. Every open under the lock is counted (meta row ``opens``), so that a
process syncing again and again (the agent) can tell no other run held the lock since its own
clean close, and skip recovery's look at the files it left (:class:`CleanClose`). A first
open that fails (a full disk, no permission) takes back the
directories, lock file and database it created, so that the folder does not pass for a
mirror; a database that was there is never removed.

The order that makes this safe is the writer's: bytes written, flushed to disk, *then* the
checkpoint committed. A checkpoint therefore never claims bytes the disk does not hold; the disk
may hold bytes the checkpoint does not claim, and recovery cuts those back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import (
    GONE,
    ConfigError,
    DestinationError,
    LockedError,
    MirrorError,
    StateError,
    path_text,
    showable,
)
from ..index.store import delete_sessions, index_rules, read_only_uri, record_index_rules
from ..index.store import ensure_schema as ensure_index_schema

log = logging.getLogger(__name__)

CONTROL_DIR = ".remote-sync"
#: The longest file name (bytes) of the file systems a mirror lives on (ext4, XFS, btrfs...).
NAME_MAX = 255

#: A name in the versions tree that only a kept version may have: it ends in ``.v<n>``.
#: Directories whose names end so (or so followed by ``~``) get one more ``~``.
_VERSION_LIKE = re.compile(rb"\.v[0-9]+~*\Z")
#: Remote names that end like a cut one (see :func:`_fit_name`): a file's name before its
#: ``.v<n>`` (``~`` and 16 hex digits), a directory's (the same, then ``~``). Such a name is
#: cut too, with a digest of its own, so that it never takes the place of the cut form of
#: another, longer name. No other name is placed differently than before this rule.
_LIKE_CUT_FILE = re.compile(rb"~[0-9a-f]{16}\Z")
#: The number a name in the versions tree ends with, when it ends like a version's: at most
#: nine digits, so 999,999,999 is the highest number of a copy on disk a new version is
#: numbered after. A sync counts a file's versions one at a time, so a longer number is a
#: name put there by hand: counted on from, it would take the next number past what SQLite
#: stores (2**63 - 1), or leave a count a check walks one number at a time.
_NUMBERED = re.compile(rb"\.v([1-9][0-9]{0,8})\Z")
_LIKE_CUT_DIR = re.compile(rb"~[0-9a-f]{16}~+\Z")
#: The most a version's name adds after what it keeps of the file's name: a digest ("~" and
#: 16 hex digits) and ``.v`` with nine digits (see _NUMBERED).
_VERSION_TAIL = 17 + 11


def _fit_name(name: bytes, suffix: bytes, *, cut: bool = False) -> bytes:
    """``name + suffix``, with ``name`` cut and marked by a digest of it when the whole would
    pass NAME_MAX (or when ``cut`` says so)."""
    if cut or len(name) + len(suffix) > NAME_MAX:
        digest = b"~" + hashlib.sha256(name).hexdigest()[:16].encode()
        name = name[: NAME_MAX - len(suffix) - len(digest)] + digest
    return name + suffix


def _version_name(name: bytes, version: int) -> bytes:
    """The name of ``name``'s version ``version`` in the versions tree."""
    return _fit_name(name, b".v%d" % version, cut=bool(_LIKE_CUT_FILE.search(name)))


def _version_dir_name(segment: bytes) -> bytes:
    """A remote directory's name in the versions tree, never one a version could have, nor
    the name another directory's cut form has."""
    if _LIKE_CUT_DIR.search(segment):
        return _fit_name(segment, b"~", cut=True)
    if _VERSION_LIKE.search(segment):
        return _fit_name(segment, b"~")
    return segment


#: 2: ``files.fingerprint`` is a digest of the first bytes, no longer the bytes themselves.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,         -- inventory name: DIR/<host>/ in the mirror
    format TEXT NOT NULL,          -- its session format, for the index
    root TEXT NOT NULL,            -- remote root the paths are relative to
    address TEXT NOT NULL,
    last_sync REAL
);
CREATE TABLE IF NOT EXISTS files (
    host TEXT NOT NULL,
    path BLOB NOT NULL,            -- remote path relative to the host's root, exact bytes
    kind TEXT NOT NULL,            -- 'append' (grows by offset) or 'whole' (copied whole)
    size INTEGER NOT NULL,         -- bytes committed in the mirror
    remote_size INTEGER NOT NULL,  -- where the last sync's read of it ended (its listed size)
    mtime REAL NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,     -- digest of the first FINGERPRINT_BYTES (fingerprint_of)
    version INTEGER NOT NULL DEFAULT 0,  -- earlier copies kept under versions/
    state TEXT NOT NULL DEFAULT 'live',  -- 'live', 'deleted' or 'renamed' (gone from the remote)
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,
    PRIMARY KEY (host, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    host TEXT NOT NULL,
    path BLOB NOT NULL,
    version INTEGER NOT NULL,      -- N of versions/<host>/<path>.v<N>
    kept_at REAL NOT NULL,         -- when the checkpoint that counts it was committed
    PRIMARY KEY (host, path, version)
) WITHOUT ROWID;
"""
# ``versions`` came after schema 2 without a new schema number: it only adds, so an older
# remote-sync still opens the state (it ignores the table, and a version it keeps has no time
# in it, as one kept before the table was there). A state no newer version has opened has no
# such table: its readers look first (see :func:`kept_times`).

#: The inode recovery sees for a placeholder row: a new file about to be renamed into place,
#: nothing of it committed yet (stored as size 0, inode -1 and an empty fingerprint; after a
#: kill, recovery gives it the size on disk and keeps the empty fingerprint until the next
#: round fetches it as new). Every committed row has a fingerprint (:func:`fingerprint_of`).
PLACEHOLDER = -2

#: How many leading bytes identify a file's content (Filebeat's fingerprint uses 1 KiB too).
FINGERPRINT_BYTES = 1024


def fingerprint_of(head: bytes | bytearray | memoryview) -> bytes:
    """The fingerprint of a file whose first bytes (up to FINGERPRINT_BYTES) are ``head``.

    A 16-byte digest, as Filebeat keeps a hash and not the bytes: a row holding the whole KiB
    is too big for a page of a ``WITHOUT ROWID`` table, so every row spilled into an overflow
    page of its own and the table grew fivefold, and so did every scan of it.
    """
    return hashlib.blake2b(head, digest_size=16).digest()


def mirrored_path(dest: Path, host: str, path: bytes) -> Path:
    """Where the mirror at ``dest`` holds ``host``'s file ``path`` (any bytes in its name).
    A dry run, whose state is a copy elsewhere, reads the mirror's files through it."""
    return Path(os.fsdecode(os.path.join(os.fsencode(dest / host), path)))


#: How a mirrored file or a kept copy is opened to be read: without following a symbolic link
#: (ELOOP instead) nor blocking on a FIFO put in its place.
READ_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: How a directory of the mirror's state (the state directory, the versions tree) is entered:
#: a symbolic link at its name is refused (Linux says ENOTDIR, as for a file), not followed.
DIR_NO_FOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def place_text(dest: Path, place: Path) -> str:
    """A place inside the mirror at ``dest`` (a kept copy's), relative to it, as listings show
    paths."""
    return path_text(os.fsencode(place.relative_to(dest)))


def kind_text(mode: int) -> str:
    """What a place holds that is no regular file, by its ``mode`` (an lstat's or fstat's),
    as messages say it."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "no regular file"


@dataclass(slots=True)
class FileState:
    """One row of ``files``: what the mirror holds of one remote file."""

    host: str
    path: bytes
    kind: str
    size: int
    remote_size: int
    mtime: float
    dev: int
    ino: int
    fingerprint: bytes
    version: int = 0
    state: str = "live"
    first_seen: float = 0.0
    updated_at: float = 0.0
    deleted_at: float | None = None


_COLUMNS = (
    "host, path, kind, size, remote_size, mtime, dev, ino, fingerprint, version, state, "
    "first_seen, updated_at, deleted_at"
)


def _nearly_full(directory: Path) -> bool:
    """Is the file system of ``directory`` out of space (under 1 MiB free, or no inodes)?"""
    try:
        fs = os.statvfs(directory)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < (1 << 20) or (fs.f_files > 0 and fs.f_favail == 0)


#: What a write says when the destination's file system (ENOSPC) or this user's disk quota on
#: it (EDQUOT) is full. Every write that fails so is handled alike, at the state's open as in
#: the middle of a file: the destination is out of space, not wrong, and no file is to blame.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: What to do when this user's quota is what is full: df shows the disk's room, not the quota's.
QUOTA_HINT = (
    "this user's disk quota on the destination is used up: free space within it (quota -s "
    "shows it) or have it raised, then run again"
)


def out_of_space(exc: BaseException) -> bool:
    """Did ``exc`` fail a write for want of space (a full disk, or this user's quota)?"""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def full_disk_error(dest: Path, cause: str | OSError) -> MirrorError:
    """The error of a destination whose file system (or this user's quota on it: an EDQUOT
    ``cause``) is full (``cause``: what said so). Not a usage error (exit 2: nothing given is
    wrong) but a failed run, exit 1, as a disk that fills midway fails one (rsync exits 11, a
    file I/O error, and 2 for usage)."""
    quota = isinstance(cause, OSError) and cause.errno == errno.EDQUOT
    said, hint = full_disk_words(dest, cause, "nothing was synced")
    what = "this user's disk quota on the destination" if quota else "the destination's disk"
    return MirrorError(f"{what} is full ({said})", path=str(dest), hint=hint)


def full_disk_words(where: Path | None, cause: str | OSError, then: str) -> tuple[str, str]:
    """How a full disk is told, at the state's open as midway: ``cause`` (what said so) with
    the space left on the file system that holds ``where`` (its nearest part that exists), as
    statvfs tells it, and the hint: ``df -h`` of ``where``, or :data:`QUOTA_HINT` when
    ``cause`` is an EDQUOT (df shows the disk's room, not the quota's), ending with ``then``
    (what became of the run)."""
    quota = isinstance(cause, OSError) and cause.errno == errno.EDQUOT
    if isinstance(cause, OSError):
        cause = cause.strerror or str(cause)
    if quota:
        return cause, f"{QUOTA_HINT}; {then}"
    if where is None:
        look = "df -h; df -i for inodes"
    else:
        while not where.exists() and where != where.parent:
            where = where.parent
        look = f"df -h {shlex.quote(str(where))}; df -i for inodes"
        try:
            fs = os.statvfs(where)
        except OSError:
            pass
        else:
            cause += f"; {fs.f_bavail * fs.f_frsize // 1024} KiB free"
            if fs.f_files > 0 and fs.f_favail == 0:
                cause += ", no inode free"
    return cause, (
        f"free space on the file system that holds it ({look}), or move the mirror to a "
        f"larger one, then run again; {then}"
    )


#: The lock file in the control directory.
LOCK_FILE = "lock"
#: How a lock file (the destination's, the agent's) is opened, created if absent: a symbolic
#: link planted at its name not followed (ELOOP: the file it names would be created or
#: locked in its place) and a FIFO not waited on; :func:`open_lock` refuses both.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: This process among all that may share a destination: a random id drawn at import. A pid
#: alone does not tell: two containers on one volume both run as pid 1, processes in other
#: pid namespaces or on other machines of a network file system may have ours.
_PROCESS_TOKEN = secrets.token_hex(16)
#: The most of a lock file read back: a pid, the token, a host name (Linux: 64 bytes at most).
_HOLDER_MAX = 512


@dataclass(frozen=True, slots=True)
class _LockHolder:
    """Who holds a destination's lock, as its lock file says: one line, ``PID TOKEN HOST``
    (a lock file of an older version holds the pid alone; one being written, nothing)."""

    pid: str
    token: str | None = None
    host: str | None = None

    @classmethod
    def this_process(cls) -> _LockHolder:
        # A host name has no spaces or line ends; made sure of, so that the line parses.
        host = "".join(socket.gethostname().split()) or "?"
        return cls(str(os.getpid()), _PROCESS_TOKEN, host)

    @classmethod
    def parse(cls, data: bytes) -> _LockHolder:
        line = data.decode("utf-8", "replace").split("\n", 1)[0].strip()
        pid, token, host = [*line.split(" ", 2), None, None][:3]
        return cls(showable(pid) if pid else "?", token or None, showable(host) if host else None)

    def line(self) -> bytes:
        return f"{self.pid} {self.token} {self.host}\n".encode()

    def is_this_process(self) -> bool:
        """Whether the holder is this very process: its pid and its token both ours (a
        forked child keeps the token, not the pid). A lock file of an older version is
        never this process's: this one writes the token."""
        return self.token == _PROCESS_TOKEN and self.pid == str(os.getpid())

    def locked_error(self, dest: Path) -> LockedError:
        """What a run refused by this holder is told."""
        if self.is_this_process():
            # The lock is per open file, so a second run in this process (a library
            # caller's second sync on the destination) is refused too: "another run (pid
            # <our own>)" read as a stale lock or a bug.
            return LockedError(
                "another sync in this process is using this destination",
                path=str(dest),
                hint="await the first sync before starting another on the same dest; "
                "nothing was touched",
            )
        where = f"pid {self.pid} on {self.host}" if self.host else f"pid {self.pid}"
        return LockedError(
            f"another remote-sync run ({where}) is using this destination", path=str(dest)
        )


#: How many times an open takes the lock again when a failed open of another run took the
#: lock file (or the directory) back under it.
_LOCK_TRIES = 10

#: The lock file as a close left it or an open found it: device, inode, size, mtime and
#: ctime (ns). Every run, of any version, writes its holder line into it when it takes the
#: lock and empties it when it closes, which changes the times (and the size, until a close).
LockLook = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class CleanClose:
    """What a process remembers of the state as its sync closed it clean (every file of
    ``hosts`` as its checkpoint says: nothing past it, no rename or temp file pending), so
    that its next sync may skip recovery's stat of those hosts' files (see
    :meth:`MirrorState.clean_since`): the count of opens the state held then, and the lock
    file as that close left it. Only in memory: a process that starts anew knows nothing."""

    opens: int
    lock: LockLook
    hosts: frozenset[str]


def _lock_look(fd: int) -> LockLook | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: The state database's files (SQLite makes its journals beside it).
_DB_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")


def open_control_dir(control: Path) -> int:
    """Create the control directory ``control`` (``DIR/.remote-sync``) and its parents, or
    find it, and a descriptor of it opened without following a link: what is made or opened
    in it after (a lock file, the versions tree) is reached by name in that descriptor, so a
    link swapped in at ``control`` after the look leads nothing elsewhere. A
    :class:`DestinationError` naming it when its name holds anything but a directory: a
    symbolic link there, even to a directory, is refused rather than followed (the state,
    lock and kept versions would live where it points, outside the mirror, and two mirrors
    linked to one place would share them). A ``FileNotFoundError`` when it went meanwhile
    (another run's failed open took it back); other failures an ``OSError`` for the caller
    to word. The caller closes the descriptor."""
    with contextlib.suppress(FileExistsError):  # a file or a link: enter_control_dir says
        control.mkdir(parents=True, exist_ok=True)
    return enter_control_dir(control)


def enter_control_dir(control: Path) -> int:
    """A descriptor of the state directory ``control``, opened without following a link: a
    :class:`DestinationError` naming it when its name holds a link or no directory; an
    ``OSError`` for any other failure (its absence too)."""
    try:
        return os.open(control, DIR_NO_FOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            mode = os.lstat(control).st_mode
        except OSError:
            raise exc from None  # an ancestor is what is in the way
        if stat.S_ISDIR(mode):  # a link put there and taken away again since: the open's error
            raise
        raise _not_a_control_dir(control, mode) from None


def _not_a_dir(mode: int) -> str:
    """What a place that should be a directory holds instead, by its lstat's ``mode``."""
    return "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"


def enter_dirs(
    top: int, names: Sequence[bytes], *, made: Callable[[int], None] | None = None
) -> int:
    """A new descriptor of the directory that ``names`` lead to down from the directory
    ``top`` (left open), each entered by name in its parent's descriptor without following a
    link (:data:`DIR_NO_FOLLOW`): a link planted anywhere on the way, even after a look
    before, is refused, not followed. One that cannot be entered is its open's ``OSError``
    (ENOTDIR for a link or no directory, ENOENT for none), its ``filename`` the names down to
    it joined by ``/``, relative to ``top``. With ``made``, each absent directory is made
    first (``mkdir`` by name in its parent's descriptor: never through a link) and ``made``
    told how many names down its parent is (an entry is durable once its directory is
    synced). The versions tree is entered so, by a sync keeping a copy and by a prune."""
    fd = os.dup(top)
    try:
        for depth, name in enumerate(names):
            if made is not None:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                    made(depth)
                except FileExistsError:
                    pass
            try:
                inner = os.open(name, DIR_NO_FOLLOW, dir_fd=fd)
            except OSError as exc:
                exc.filename = b"/".join(names[: depth + 1])
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_a_control_dir(control: Path, mode: int) -> DestinationError:
    return DestinationError(
        f"the destination's state directory is {_not_a_dir(mode)}",
        path=str(control),
        hint=f"move it aside: remote-sync makes {CONTROL_DIR} itself, a directory inside the "
        "mirror (a link would put the state elsewhere); then run again",
    )


def open_lock(lock: Path, mode: int, whose: str, then: str, *, dir_fd: int) -> int:
    """A descriptor of the lock file ``lock`` (created if absent, with ``mode``), for an
    flock, opened by its name in ``dir_fd`` (:func:`open_control_dir`'s descriptor of its
    directory): a :class:`DestinationError` when its name holds a symbolic link or anything
    but a regular file, which says it is ``whose`` lock file and to remove it, then ``then``.
    An ``OSError`` for any other failure, for the caller to word."""
    try:
        fd = os.open(lock.name, _LOCK_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symbolic link
            raise _not_a_lock(lock, "a symbolic link", whose, then) from None
        raise
    try:
        kind = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise _not_a_lock(lock, kind_text(kind), whose, then)
    return fd


def _not_a_lock(lock: Path, kind: str, whose: str, then: str) -> DestinationError:
    return DestinationError(
        f"{whose} lock file is {kind}",
        path=str(lock),
        hint=f"remove it (remote-sync makes its lock files itself), then {then}",
    )


def _open_files() -> set[tuple[int, int]] | None:
    """The (device, inode) of each file this process has open, from ``/proc/self/fd`` (None
    where there is none to read: not Linux)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    held: set[tuple[int, int]] = set()
    for name in names:
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        held.add((st.st_dev, st.st_ino))
    return held


#: A file's identity: its device and inode.
FileId = tuple[int, int]


def look_at_db_files(
    control_fd: int,
    control: Path,
    names: Iterable[str],
    *,
    opened: bool = False,
    same_as: Mapping[str, FileId] | None = None,
) -> dict[str, FileId]:
    """The identity of each of the state database's files ``names`` there, once looked at.

    A :class:`DestinationError` naming the first of the state database's files ``names``
    (those absent are passed over) that is a symbolic link at its name in the state directory
    ``control`` (open as ``control_fd``). SQLite opens them by path, following a link: at
    ``state.db`` the state would live where it points (two mirrors linked to one database
    sharing it under two locks); at its ``-wal`` SQLite fails as on an unusable database,
    whose hint (move it aside) would cost every file fetched again.

    ``opened``: looked at once SQLite has opened them, which each of ``names`` must be. Then
    the file at each name must also be one this process has open (``/proc/self/fd``): a link
    put at the name between the look before the open and the open, which SQLite followed, or
    a link swapped in and out again, leaves the file there one nothing holds open. Another
    connection of this process to the same database (a sync's, while a reader of the same
    process reads) holds it too, and then this tells nothing: see the guarantees in
    docs/architecture.md.

    ``same_as``: the identities this look gave at the open of a connection of this process
    that is still open (a sync's first one), which the files at ``names`` must still have,
    each there or absent as it was (then ``/proc/self/fd`` is not listed: that connection
    holds them)."""
    held = _open_files() if opened and same_as is None else None
    found: dict[str, FileId] = {}
    for name in names:
        place = control / name
        try:
            st = os.stat(name, dir_fd=control_fd, follow_symlinks=False)
        except FileNotFoundError:
            if (opened and name == "state.db") or (same_as is not None and name in same_as):
                raise _db_file_changed(place) from None
            continue
        except OSError as exc:
            raise DestinationError(
                f"cannot look at the destination's state database's file {name}: "
                f"{exc.strerror or exc}",
                path=str(place),
                hint=f"check the permissions of {control}, then run again",
            ) from exc
        if stat.S_ISLNK(st.st_mode):
            if name == "state.db":
                hint = (
                    "put the database it names in its place (remote-sync keeps the state in "
                    f"the mirror's {CONTROL_DIR}, follows no link there), then run again"
                )
            else:
                hint = "remove the link (SQLite makes this file itself), then run again"
            raise DestinationError(
                f"the destination's state database's file {name} is a symbolic link",
                path=str(place),
                hint=hint,
            )
        found[name] = (st.st_dev, st.st_ino)
        if held is not None and found[name] not in held:
            raise _db_file_changed(place)
        if same_as is not None and same_as.get(name) != found[name]:
            raise _db_file_changed(place)
    return found


def _db_file_changed(place: Path) -> DestinationError:
    return DestinationError(
        f"the destination's state database's file {place.name} changed while it was opened "
        "(a symbolic link put in its place, or the file moved)",
        path=str(place),
        hint="find what else writes in the mirror's state directory (remote-sync follows no "
        "link there), then run again",
    )


def _absent_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist, innermost first: what
    ``mkdir(parents=True)`` would create."""
    absent: list[Path] = []
    # Spelt without "..": "x/../y" would name y itself (there before) as made by the open.
    directory = Path(os.path.abspath(directory))
    for path in (directory, *directory.parents):
        if os.path.lexists(path):
            break
        absent.append(path)
    return absent


def _remove_dirs(made: dict[Path, None]) -> None:
    """Remove the directories ``made`` (innermost first) while they are empty: one that is
    not holds what someone else put there since, and so do its parents."""
    for path in sorted(made, key=lambda p: len(p.parts), reverse=True):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            return


def refuse_nested(dest: Path) -> None:
    """A :class:`ConfigError` when ``dest`` lies inside another mirror: in one of its host
    directories (a sync there would take that host's files for its own, rewrite them and keep
    the other mirror's copies as versions) or in its state directory."""
    here = dest.resolve()
    for parent in here.parents:
        if parent.name == CONTROL_DIR or (parent / CONTROL_DIR / "state.db").is_file():
            mirror = parent.parent if parent.name == CONTROL_DIR else parent
            raise ConfigError(
                f"the destination is inside the mirror at {mirror}",
                path=str(dest),
                hint="give a destination outside every mirror: a mirror's directories hold "
                "its hosts' files and its state",
            )


def copy_state(source: Path, target: Path) -> None:
    """A consistent copy of the state database ``source`` (read-only: it is not locked,
    upgraded or written; a sync may be running). For a dry run, which must change nothing.
    Its files are looked at as a reader's are (:class:`StateReader`): a link refused.

    Copied with SQLite's backup, which reads one snapshot where a sync has the database
    open (its ``-wal`` there). Where none had it open, the database is read ``immutable``
    (:func:`~remote_sync.index.store.read_only_uri`), unlocked, as a reader reads it, and a
    sync that started and checkpointed its commits into the file during the copy gave pages
    of two versions of the B-tree: a torn copy ("out of order" rows, a broken index). As a
    reader does, the copy is taken again, over the copy before, unless the files are the ones
    it started with, at most :data:`REREADS` times."""
    try:
        control = enter_control_dir(source.parent)
    except OSError as exc:
        raise StateError(
            f"cannot read the state database: {exc.strerror or exc}",
            path=str(source),
            hint="check its permissions; a sync (not a dry run) says more",
        ) from exc
    try:
        for _ in range(REREADS):
            if _copied_steady(control, source, target):
                return
        raise StateError(
            "the state database kept changing while it was copied",
            path=str(source),
            hint="syncs started and ended faster than it could be copied: run the dry run again",
        )
    except (sqlite3.Error, OSError) as exc:  # OSError: moved away between two looks
        reason = (exc.strerror or exc) if isinstance(exc, OSError) else exc
        raise StateError(
            f"cannot read the state database: {reason}",
            path=str(source),
            hint="check its permissions; a sync (not a dry run) says more",
        ) from exc
    finally:
        os.close(control)


def _copied_steady(control: int, source: Path, target: Path) -> bool:
    """Copy ``source`` over ``target`` once (see :func:`copy_state`): whether the copy is of
    one snapshot, False when a sync may have changed the file while it was read unlocked."""
    look_at_db_files(control, source.parent, _DB_FILES[:3])
    before = _stamp(source)
    # Not resolved itself: a link at its name is what the look after the open refuses.
    uri = read_only_uri(source.parent.resolve() / source.name)
    immutable = uri.endswith("immutable=1")
    src = sqlite3.connect(uri, uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        except sqlite3.DatabaseError:
            # Pages of two versions of the file can also fail the read (as a StateReader's
            # read, taken again): taken again too, unless the files did not change.
            if immutable and _stamp(source) != before:
                return False
            raise
        finally:
            dst.close()
        # Read immutable, SQLite opened the database file alone.
        opened = _DB_FILES[:1] if immutable else _DB_FILES[:3]
        look_at_db_files(control, source.parent, opened, opened=True)
    finally:
        src.close()
    # Through a -wal, the backup held a read transaction: one snapshot, whatever was
    # committed or checkpointed meanwhile. Read as a file, only the same files say so (a -wal
    # there now, or gone since the stamp, is a sync that ran meanwhile).
    return not immutable or _stamp(source) == before


def kept_times(
    db: sqlite3.Connection, host: str | None = None, paths: tuple[bytes, bytes] | None = None
) -> dict[tuple[str, bytes], dict[int, float]]:
    """When each version was kept (unix time), per (host, path) and version number, of every
    host, of ``host``'s files, or of those of its files whose paths are from ``paths[0]`` to
    ``paths[1]`` (both included: a page of a check's rows, or one file): what the ``versions``
    table records. A version kept before the table was there (or by an older remote-sync) has
    no time: it is not in the answer, and neither is any version of a state no version with
    the table has opened (read read-only, it was never given one)."""
    sql = "SELECT host, path, version, kept_at FROM versions"
    where: list[str] = []
    params: list[str | bytes] = []
    if host is not None:
        where.append("host = ?")
        params.append(host)
    if paths is not None:
        where.append("path BETWEEN ? AND ?")
        params.extend(paths)
    if where:
        sql += " WHERE " + " AND ".join(where)
    try:
        cur = db.execute(sql, params)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    times: dict[tuple[str, bytes], dict[int, float]] = {}
    for file_host, path, version, kept_at in cur:
        times.setdefault((file_host, bytes(path)), {})[version] = kept_at
    return times


#: The names of a folder of the versions tree that end like a version's, by the file they may
#: be versions of (see :func:`group_versions`), each with its number.
VersionGroups = Mapping[bytes, Sequence[tuple[int, bytes]]]


def _group_key(name: bytes) -> bytes:
    """What every name of ``name``'s versions starts with, cut or not: _fit_name keeps this
    much of it before its digest of 17 and a suffix of 11 at most."""
    return name[: NAME_MAX - _VERSION_TAIL]


def group_versions(entries: Iterable[bytes]) -> dict[bytes, list[tuple[int, bytes]]]:
    """``entries``, the names in one folder of the versions tree, that end like a version's,
    with their numbers, grouped by the file they may be versions of (its :func:`_group_key`):
    what is before a name's ``.v<N>`` is the file's name, or, ending like a cut name (which
    no name kept whole does), its cut form: as much of the name as fits (all of a short one,
    cut so for ending like a cut name itself) and a digest of 17. A folder is grouped once
    for all its files (:func:`numbered_versions`), not scanned again per file: a project's
    folder holds thousands."""
    groups: dict[bytes, list[tuple[int, bytes]]] = {}
    for entry in entries:
        match = _NUMBERED.search(entry)
        if match is None:
            continue
        kept = entry[: match.start()]
        if _LIKE_CUT_FILE.search(kept):
            kept = kept[:-17]  # its digest: "~" and 16 hex digits
        groups.setdefault(_group_key(kept), []).append((int(match[1]), entry))
    return groups


def numbered_versions(path: bytes, groups: VersionGroups) -> dict[int, bytes]:
    """Of ``groups``, the names in the folder of ``path``'s versions
    (:meth:`MirrorState.versions_folder`) as :func:`group_versions` groups them, those of
    ``path``'s versions, by number: a name is taken only when it is the one
    :meth:`MirrorState.version_path` gives that number (a name cut with a digest too), so
    another file's versions in that folder (in its group when the names start alike) are not,
    nor a number of more than nine digits (put there by hand, see ``_NUMBERED``)."""
    name = path.rpartition(b"/")[2]
    return {
        number: entry
        for number, entry in groups.get(_group_key(name), ())
        if _version_name(name, number) == entry
    }


class VersionNumbers:
    """The numbers of the versions in the folders of the versions tree where one host's round
    keeps copies (see ``writer._put_in_place``): each folder listed once in the round, the
    first time a copy goes there, and the copies the round puts there or takes back noted as
    it does. A round keeping N copies in one folder listed it N times, each listing as long
    as the folder (1000 rewritten files in one folder took seconds).

    A new version is numbered after the highest of its file there, with gaps below it or not
    (:meth:`number`), not only after the recorded count's unbroken run
    (:meth:`MirrorState.last_version_on_disk`): a state moved aside (damaged) counts nothing,
    and a prune left gaps at the bottom, so that run would start over at v1 below copies that
    stay, and "1 is the oldest" and a later ``--keep-last`` would be wrong. Names are taken as
    :func:`numbered_versions` takes them.

    Held for one round: the destination's lock keeps other syncs and prunes out meanwhile,
    and the next round lists again, so a folder changed by hand between rounds is seen. One
    put there by hand during the round is not in the listing; the number then goes past the
    name it finds in place, so that no copy is ever replaced. One round's flushes run one at
    a time (in a worker thread each): nothing here is shared between threads at once."""

    def __init__(self) -> None:
        #: Per folder (:meth:`MirrorState.versions_folder`), its names grouped.
        self._folders: dict[bytes, dict[bytes, list[tuple[int, bytes]]]] = {}

    def number(self, state: MirrorState, host: str, path: bytes, folder: int, after: int) -> int:
        """The number of a new version of ``host``'s ``path``: after ``after`` and after its
        every version in ``folder`` (the directory its versions are in, open:
        :meth:`MirrorState.open_versions_folder`), at a name free there. An ``OSError`` when
        the folder cannot be listed or looked at."""
        groups = self._folders.get(state.versions_folder(host, path))
        if groups is None:
            names = [os.fsencode(name) for name in os.listdir(folder)]  # by descriptor: str
            groups = self._folders[state.versions_folder(host, path)] = group_versions(names)
        number = max(after, max(numbered_versions(path, groups), default=0)) + 1
        name = path.rpartition(b"/")[2]
        while _exists_at(folder, _version_name(name, number)):
            number += 1
        return number

    def kept(self, state: MirrorState, host: str, path: bytes, number: int) -> None:
        """Version ``number`` of ``host``'s ``path`` was just put in its folder."""
        entry = _version_name(path.rpartition(b"/")[2], number)
        groups = self._folders.setdefault(state.versions_folder(host, path), {})
        for key, found in group_versions([entry]).items():
            groups.setdefault(key, []).extend(found)

    def taken_back(self, state: MirrorState, host: str, path: bytes, number: int) -> None:
        """Version ``number`` of ``host``'s ``path``, just kept, was moved out again."""
        entry = _version_name(path.rpartition(b"/")[2], number)
        groups = self._folders.get(state.versions_folder(host, path), {})
        for key, found in group_versions([entry]).items():
            with contextlib.suppress(KeyError, ValueError):
                groups[key].remove(found[0])


def _exists_at(folder: int, name: bytes) -> bool:
    """Is there anything (a link not followed) at ``name`` in directory ``folder``?"""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class VersionsListings:
    """The folders of the versions tree listed for a pass over files in (host, path) order, as
    ``check``, ``versions list`` and ``versions prune`` make: each folder listed once and
    grouped (:func:`group_versions`) for all the files whose versions it holds, however their
    subdirectories' files come between them in that order (a session's ``<id>.jsonl``, then
    its ``<id>/subagents/``, then the next session's). A folder is let go once a file outside
    its directory comes: the paths of one directory are together in that order, so no more
    are held than a path has directories. A pass in another order is as right, only slower.
    What is listed is as it was then: a copy put or removed since is looked at by the
    caller."""

    def __init__(self, paths: MirrorState) -> None:
        self.paths = paths  # only its paths are used
        #: Per host and remote directory, its folder's entries by name and their groups.
        self._held: dict[
            tuple[str, bytes], tuple[dict[bytes, os.DirEntry[bytes]], VersionGroups]
        ] = {}

    def versions(self, host: str, path: bytes) -> dict[int, os.DirEntry[bytes]]:
        """The entries of ``host``'s ``path``'s versions in their folder, by number
        (:func:`numbered_versions`); none when there is no such folder. An ``OSError`` when
        it cannot be listed (not held: asked again for the next file)."""
        head = path.rpartition(b"/")[0]
        for key in [k for k in self._held if k[0] != host or not _is_under(path, k[1])]:
            del self._held[key]
        held = self._held.get((host, head))
        if held is None:
            try:
                with os.scandir(self.paths.versions_folder(host, path)) as found:
                    entries = {entry.name: entry for entry in found}
            except (FileNotFoundError, NotADirectoryError):
                entries = {}
            held = self._held[host, head] = (entries, group_versions(entries))
        entries, groups = held
        return {number: entries[name] for number, name in numbered_versions(path, groups).items()}


def _is_under(path: bytes, directory: bytes) -> bool:
    """Is the remote ``path`` in ``directory`` or below it (b"": the host's root)?"""
    return not directory or path.startswith(directory + b"/")


def host_is_indexed(db: sqlite3.Connection, host: str) -> bool:
    """Is ``host``'s mirror indexed: it has sessions, or no committed file yet (a mirror
    synced with ``--no-index`` has files and no sessions)? Recovery asks it of an open state,
    ``check`` of one read without the lock."""
    if db.execute("SELECT 1 FROM sessions WHERE host = ? LIMIT 1", (host,)).fetchone():
        return True
    return not db.execute(
        "SELECT 1 FROM files WHERE host = ? AND size > 0 AND ino >= 0 LIMIT 1", (host,)
    ).fetchone()


def unindexed_files(db: sqlite3.Connection, host: str) -> Iterator[tuple[bytes, int]]:
    """Path and committed size of ``host``'s mirrored files that have bytes but no session in
    the index (transcripts among them were synced with ``--no-index``), one at a time."""
    cur = db.execute(
        "SELECT f.path, f.size FROM files AS f WHERE f.host = ? AND f.size > 0 AND NOT "
        "EXISTS (SELECT 1 FROM sessions AS s WHERE s.host = f.host AND s.path = f.path)",
        (host,),
    )
    for path, size in cur:
        yield bytes(path), size


#: How many times in a row a read of the state is done again on a new connection because a
#: sync changed the database during it, before the reader gives up.
REREADS = 20

_T = TypeVar("_T")

#: What a look at the state database's files sees: the ``-wal`` file's inode (None: there is
#: none, no sync has the database open) and the database file's inode, size and mtime.
_Stamp = tuple[int | None, int, int, int]


def _stamp(db_path: Path) -> _Stamp:
    try:
        wal: int | None = os.stat(db_path.with_name(db_path.name + "-wal")).st_ino
    except FileNotFoundError:
        wal = None
    st = os.stat(db_path)
    return wal, st.st_ino, st.st_size, st.st_mtime_ns


class StateReader:
    """The state read without the lock (``sessions``, ``versions list``, ``check``), each
    read one that a sync starting meanwhile cannot spoil. With a ``-wal`` file there when it
    was opened, the connection reads through the sync's shared memory and sees each commit as
    it is made. Without one, it was opened ``immutable`` (see
    :func:`~remote_sync.index.store.read_only_uri`): it sees neither a later sync's commits
    nor that the database file changes when they are checkpointed into it (pages read then
    may belong to two versions of the B-tree: wrong rows, or a "malformed" error on a sound
    database). So a read that finds the files changed since the open is done again on a new
    connection, at most :data:`REREADS` times; an error of a read during which nothing
    changed is the database's own, raised at once. ``warn``: as for ``open_index`` (the
    first open only)."""

    def __init__(self, dest: Path, *, warn: bool = False) -> None:
        # Imported here: the engine imports this module and reads no index.
        from ..index.query import state_database

        self.dest = dest
        self.path = state_database(dest)
        self.db, self.stamp = self._open(warn)

    def _open(self, warn: bool = False) -> tuple[sqlite3.Connection, _Stamp]:
        from ..index.query import open_index

        for _ in range(REREADS):
            try:
                # The state directory entered and the database's files looked at with no link
                # followed, before SQLite opens them by path and after (look_at_db_files).
                control = enter_control_dir(self.path.parent)
                try:
                    look_at_db_files(control, self.path.parent, _DB_FILES[:3])
                    before = _stamp(self.path)
                    db = open_index(self.dest, warn=warn)
                    try:
                        # Read immutable, SQLite opened the database file alone.
                        opened = _DB_FILES[:1] if before[0] is None else _DB_FILES[:3]
                        refused: DestinationError | None = None
                        try:
                            look_at_db_files(control, self.path.parent, opened, opened=True)
                        except DestinationError as exc:
                            refused = exc  # told once the files are known to be unchanged
                        # The same files before and after: open_index chose its mode on what
                        # ``before`` says (a -wal file or none); a sync that ended and one
                        # that started meanwhile make another -wal, which is no link.
                        after = _stamp(self.path)
                        if after == before and refused is not None:
                            raise refused
                    except BaseException:
                        db.close()
                        raise
                finally:
                    os.close(control)
            except OSError as exc:  # moved away between two looks
                raise ConfigError(
                    f"cannot read the mirror's state database in {self.dest}: "
                    f"{exc.strerror or exc}",
                    hint=f"check the permissions of {self.dest / CONTROL_DIR}",
                ) from exc
            if after == before:
                return db, before
            db.close()
            warn = False  # said once
        raise self._unsteady()

    def _unsteady(self) -> ConfigError:
        return ConfigError(
            f"the mirror's state database in {self.dest} kept changing while it was read",
            hint="syncs started and ended faster than it could be read: run it again",
        )

    def changed(self) -> bool:
        """Whether what was read since the open may be stale or torn: read immutable, and
        the database's files are no longer those it was opened on."""
        try:
            return self.stamp[0] is None and _stamp(self.path) != self.stamp
        except OSError:
            return True  # moved away meanwhile: the reopen says so

    def reopen(self) -> None:
        self.db.close()
        self.db, self.stamp = self._open()

    def steady(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        """What ``read`` returns from the state, read again on a new connection until no
        sync changed the database during it (``read`` must be whole when it returns: a
        lazy answer would be read after this look)."""
        for _ in range(REREADS):
            try:
                found = read(self.db)
            except sqlite3.DatabaseError:
                if not self.changed():
                    raise
            else:
                if not self.changed():
                    return found
            self.reopen()
        raise self._unsteady()

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        return self.steady(lambda db: db.execute(sql, params).fetchall())

    def close(self) -> None:
        self.db.close()


def read_state(dest: Path, read: Callable[[sqlite3.Connection], _T], *, warn: bool = False) -> _T:
    """What ``read`` returns from the state of the mirror at ``dest``, read as
    :meth:`StateReader.steady` does on a connection of its own; a read SQLite refuses all the
    same is the error of a state that cannot be read (:func:`unreadable_index`)."""
    from ..index.query import unreadable_index

    state = StateReader(dest, warn=warn)
    try:
        return state.steady(read)
    except sqlite3.Error as exc:
        raise unreadable_index(dest, exc) from exc
    finally:
        state.close()


_END = object()


def stream_state(
    dest: Path, query: Callable[[sqlite3.Connection], Iterator[_T]], *, warn: bool = False
) -> Generator[_T]:
    """The items ``query`` gives from the state of the mirror at ``dest``, one at a time (a
    listing of any length is never all in memory): the query and its first item read as
    :func:`read_state` does, again on a new connection when a sync changed the database
    meanwhile; after an item was given out, a failure is raised (read again, the items before
    it would be given twice). SQLite sorts before its first row, so that first read is most of
    the work. Close the iterator to close its connection early.

    The items are a snapshot as of the first, however slowly they are taken and whatever a
    sync commits meanwhile: through a WAL the query is one statement, one read transaction;
    read as a file (``immutable``, no lock) only because the query sorts by what no index
    gives (``query_sessions``), so that every row is read into SQLite's sorter, checked as
    the first read, before the first comes out, and none after it from the file a sync may
    checkpoint into. A query without such a sort would read torn rows here."""
    from ..index.query import unreadable_index

    state = StateReader(dest, warn=warn)
    try:

        def first(db: sqlite3.Connection) -> tuple[Iterator[_T], object]:
            items = query(db)
            return items, next(items, _END)

        items, head = state.steady(first)
        if head is _END:
            return
        yield cast(_T, head)
        yield from items
    except sqlite3.Error as exc:
        raise unreadable_index(dest, exc) from exc
    finally:
        state.close()


class MirrorState:
    """The destination's state database and lock. Use as a context manager."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(dest)
        self.control = self.dest / CONTROL_DIR
        self.tmp_dir = self.control / "tmp"
        self.versions_dir = self.control / "versions"
        self._lock_fd: int | None = None
        #: The state directory, opened without following a link (:func:`open_control_dir`):
        #: the lock and the versions tree are reached by name in it.
        self._control_fd: int | None = None
        #: The database's files as the open found them, its connection holding them: those a
        #: worker thread's connection must find at their names (:meth:`for_thread`).
        self._db_files: dict[str, FileId] = {}
        self._db: sqlite3.Connection | None = None
        #: This open's number among every open of the state under its lock (the meta row
        #: ``opens``), and the lock file as this open found it and as its close left it: what
        #: tells a process whether another run held the lock between two of its own.
        self.opens: int | None = None
        self._lock_found: LockLook | None = None
        self._lock_left: LockLook | None = None

    # -- opening, locking, recovery -------------------------------------------------------

    def __enter__(self) -> MirrorState:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create or open the destination's state, and lock it. A first open that fails (a
        full disk, no permission) takes back what it created (:meth:`_take_back`), so that
        the folder does not pass for a mirror (a destination inside it refused as nested, a
        listing there reading an empty mirror rather than none); a state database that was
        there before is never touched, nor anything beside it."""
        made: dict[Path, None] = {}  # the directories this open created
        try:
            for _ in range(_LOCK_TRIES):
                made.update(dict.fromkeys(_absent_dirs(self.control)))
                self._close_control()
                if not self._make_control():
                    continue  # taken back meanwhile by another run's failed open
                lock_made = not self._has(LOCK_FILE)
                if self._lock():
                    break
            else:  # taken back under it each time: other runs failing to open it, again and again
                raise DestinationError(
                    f"the destination's lock file kept going away ({_LOCK_TRIES} tries)",
                    path=str(self.control / LOCK_FILE),
                    hint="check what else removes files in the destination, then run again",
                )
        except BaseException:
            self._close_control()
            _remove_dirs(made)
            raise
        # Looked at under the lock: no other run is creating the database meanwhile.
        db_before = {name for name in _DB_FILES if self._has(name)}
        try:
            look_at_db_files(self._control, self.control, db_before)
            self._open_db()
        except BaseException:
            if self._db is not None:
                self._db.close()
                self._db = None
            if "state.db" not in db_before:
                self._take_back(db_before, lock_made, made)
            self.close()
            raise

    @property
    def _control(self) -> int:
        if self._control_fd is None:
            raise StateError("state database is not open", path=str(self.dest))
        return self._control_fd

    def _has(self, name: str) -> bool:
        """Whether the state directory holds ``name`` (a link to nothing too)."""
        try:
            os.stat(name, dir_fd=self._control, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _close_control(self) -> None:
        if self._control_fd is not None:
            os.close(self._control_fd)
            self._control_fd = None

    def _make_control(self) -> bool:
        """Make or find the state directory and open it (False: it went meanwhile)."""
        try:
            self._control_fd = open_control_dir(self.control)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and os.path.isdir(self.dest):
                return False
            if out_of_space(exc):
                raise full_disk_error(self.dest, exc) from exc
            raise DestinationError(
                f"cannot create the destination: {exc.strerror or exc}", path=str(self.dest)
            ) from exc
        # Said at the open, before a sync does anything; the versions tree is entered without
        # following a link anyway (open_versions_folder): a link here would put kept copies
        # elsewhere, where neither `versions` nor `check` look (they follow no link).
        try:
            mode = os.stat("versions", dir_fd=self._control, follow_symlinks=False).st_mode
        except OSError:
            return True  # none yet (a versions folder that cannot be looked at fails when used)
        if not stat.S_ISDIR(mode):
            raise DestinationError(
                f"the destination's versions folder is {_not_a_dir(mode)}",
                path=str(self.versions_dir),
                hint="move it aside (remote-sync makes it itself, a directory in the mirror's "
                "state directory), then run again",
            )
        return True

    def _open_db(self) -> None:
        try:
            self._db = self._connect()
            # Looked at before the first write (the journal mode is one, to the database's
            # header): a link put at state.db after the look before the open had SQLite write
            # the schema into the file it named before the look after it refused the open.
            look_at_db_files(self._control, self.control, _DB_FILES[:1], opened=True)
            self._db.execute("PRAGMA journal_mode=WAL")
            # A database already in WAL mode has its -wal and -shm open now: they too are
            # looked at before the schema's statements can write to the -wal.
            look_at_db_files(self._control, self.control, _DB_FILES[:3], opened=True)
            self._db.executescript(_SCHEMA)
            ensure_index_schema(self._db)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            # Before its first sync a mirror's (empty) index follows this version's rules; an
            # older mirror keeps the rules it was indexed by until `index rebuild`.
            if self._db.execute("SELECT 1 FROM meta WHERE key = 'index_rules'").fetchone() is None:
                record_index_rules(self._db, index_rules(self._db))
            self._upgrade()
            # SQLite opened the files by path (it has no other way), WAL journal and shared
            # memory made: the files it has must be those at their names, no link followed.
            self._db_files = look_at_db_files(
                self._control, self.control, _DB_FILES[:3], opened=True
            )
            # Counted once the files are known to be this mirror's own.
            self.opens = self._count_open()
        except sqlite3.Error as exc:
            if _nearly_full(self.control):
                # SQLite says "disk I/O error" when it cannot even make its WAL files: the
                # database is fine, and moving it aside would throw its history away.
                raise full_disk_error(self.dest, f"opening the state database: {exc}") from exc
            raise StateError(
                f"the state database is unusable: {exc}",
                path=str(self.control / "state.db"),
                hint="check the destination's file system; if the database itself is damaged, "
                "move it aside (a rerun then fetches every file again)",
            ) from exc

    def _count_open(self) -> int:
        """Count this open in the meta row ``opens`` (under the lock, so no two runs take one
        number); returns its number. A state an older remote-sync wrote has no row: it starts
        at 1, a number no process remembers (see :meth:`clean_since`)."""
        db = self.db
        with self.transaction():
            row = db.execute(
                "INSERT INTO meta VALUES ('opens', '1') ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(value AS INTEGER) + 1 RETURNING value"
            ).fetchone()
        return int(row[0])

    def clean_since(self, last: CleanClose | None) -> frozenset[str]:
        """The hosts whose mirrored files match their checkpoints without recovery's look at
        them: those of ``last``, what this process's previous sync left clean, when no other
        run has held the lock since. Any other run counts itself in ``opens`` (this open's
        number is then more than one past ``last``'s), and writes and empties the lock file,
        as every version does (an older one knows nothing of ``opens``: the lock file is then
        not as ``last`` left it). Any doubt: none, and recovery looks at every file."""
        if (
            last is None
            or self.opens != last.opens + 1
            or self._lock_found is None
            or self._lock_found != last.lock
        ):
            return frozenset()
        return last.hosts

    def closed_clean(self, hosts: Iterable[str]) -> CleanClose | None:
        """After :meth:`close`: what this process's next sync may trust of ``hosts`` (the
        caller knows this run left their files as their checkpoints say); None if this open
        did not count itself or its close could not look at the lock file."""
        if self.opens is None or self._lock_left is None:
            return None
        return CleanClose(self.opens, self._lock_left, frozenset(hosts))

    def _take_back(self, db_before: set[str], lock_made: bool, made: dict[Path, None]) -> None:
        """Remove what a first open that failed created: the database's files that were not
        there, the lock file if it made it, the directories it made (each only while empty).
        Done holding the lock, so no other run is opening the database meanwhile; a run that
        opened the lock file before it went finds it gone once it holds it (:meth:`_lock`).
        Best effort: the open's own error is the one to report."""
        names = [name for name in _DB_FILES if name not in db_before]
        for name in names + ([LOCK_FILE] if lock_made else []):
            try:
                os.unlink(name, dir_fd=self._control)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("cannot remove %s after a failed open: %s", self.control / name, exc)
        _remove_dirs(made)

    def _connect(self) -> sqlite3.Connection:
        # Not bound to the thread that opens it: a sync's work on the state moves between
        # worker threads (see for_thread); a connection is used by one thread at a time.
        db = sqlite3.connect(
            self.control / "state.db", isolation_level=None, check_same_thread=False
        )
        # NORMAL in WAL mode survives any process kill; after a power loss the newest
        # commits may be lost, which recovery handles by cutting data back to them.
        db.execute("PRAGMA synchronous=NORMAL")
        # A sync reads each host's rows once, in one range scan, and writes each changed
        # row once: beyond the B-tree's inner pages, SQLite's default 2 MB cache holds
        # pages nobody reads again (the OS keeps the file cached anyway). 1 MiB.
        db.execute("PRAGMA cache_size=-1024")
        return db

    def for_thread(self) -> MirrorState:
        """This open state over a connection of its own, for work in a worker thread while
        the event loop's thread goes on using this one (a connection shares its transaction
        with every statement made on it, whatever the thread). It reads what is committed;
        its writes take turns with this one's (SQLite has one writer at a time). Valid while
        this state is open (it holds the lock); closing it closes only its connection and its
        copy of the state directory's descriptor."""
        other = MirrorState(self.dest)
        other._control_fd = os.dup(self._control)
        try:
            # Opened by path again, so the files at the names must be those the open looked
            # at, before and after: a link there, or another database renamed in, is refused.
            # Not by /proc/self/fd: this state's own connection holds the real files (and a
            # listing there costs a stat per descriptor on every round of every host).
            look_at_db_files(other._control, other.control, _DB_FILES[:3], same_as=self._db_files)
            other._db = other._connect()
            look_at_db_files(other._control, other.control, _DB_FILES[:3], same_as=self._db_files)
        except BaseException as exc:
            other.close()
            if isinstance(exc, sqlite3.Error):
                raise self._db_error(exc, "open the state database") from exc
            raise
        return other

    def _upgrade(self) -> None:
        """Bring a state written by an earlier version to this one's schema (once)."""
        db = self.db
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0])
        if version > SCHEMA_VERSION:
            self.close()
            raise StateError(
                f"the state was written by a newer remote-sync (schema {version}; this one "
                f"knows {SCHEMA_VERSION})",
                path=str(self.control / "state.db"),
                hint="upgrade remote-sync to use this destination",
            )
        if version < 2:
            # Version 1 kept the first KiB itself as the fingerprint.
            db.create_function("fingerprint_of", 1, fingerprint_of, deterministic=True)
            with self.transaction():
                db.execute("UPDATE files SET fingerprint = fingerprint_of(fingerprint)")
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )

    def _lock(self) -> bool:
        """Take the destination's lock; False when the file locked is no longer the lock
        file (a first open that failed removed it meanwhile): open it again."""
        lock = self.control / LOCK_FILE
        try:
            fd = open_lock(lock, 0o644, "the destination's", "run again", dir_fd=self._control)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and os.fstat(self._control).st_nlink == 0:
                # The state directory was taken back (see above) since it was opened; any
                # other ENOENT is an error, not a retry.
                return False
            if out_of_space(exc):  # out of inodes: no usage error either
                raise full_disk_error(self.dest, exc) from exc
            raise DestinationError(
                f"cannot open the destination's lock file: {exc.strerror or exc}",
                path=str(lock),
                hint="the destination must be writable by this user",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _LockHolder.parse(os.pread(fd, _HOLDER_MAX, 0))
            os.close(fd)
            raise holder.locked_error(self.dest) from None
        except OSError as exc:
            os.close(fd)
            raise MirrorError(
                f"cannot lock the destination: {exc.strerror or exc}",
                path=str(lock),
                hint="use a destination on a local file system that supports flock",
            ) from exc
        try:
            # lstat: a link put in its place since is no longer the lock file either.
            held = os.stat(LOCK_FILE, dir_fd=self._control, follow_symlinks=False)
            current = os.path.samestat(os.fstat(fd), held)
        except OSError:
            current = False
        if not current:
            os.close(fd)
            return False
        # Before this run's own holder line changes it: as the last run's close left it?
        self._lock_found = _lock_look(fd)
        # Who holds it is for the message a second run prints; failing to write it is
        # harmless.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _LockHolder.this_process().line(), 0)
        self._lock_fd = fd
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            # Emptied while still held: a later run that finds the lock taken, by a run that
            # has not written itself in yet, is not told it is this process's own.
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            # Still held: no other run's open has changed it yet (see clean_since).
            self._lock_left = _lock_look(self._lock_fd)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._close_control()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError("state database is not open", path=str(self.dest))
        return self._db

    def recover(self, hosts: Iterable[str] | None = None) -> list[str]:
        """Make the mirror match its checkpoints; returns notes on what was repaired.

        Bytes beyond a checkpoint (a run killed between writing and committing) are cut back;
        stray temp files are removed. A file the checkpoint no longer describes has its
        checkpoint follow the file, so the next fetch takes it whole and compares: a file
        shorter than its checkpoint (damaged or cut by hand), and a file a rewrite replaced
        before its checkpoint was committed (its old copy already under ``versions/``). A run
        killed between a rewrite's two renames has the old copy put back in place.
        """
        try:
            return self._recover(hosts)
        except sqlite3.Error as exc:
            raise self._db_error(exc, "read the checkpoints") from exc

    def _recover(self, hosts: Iterable[str] | None) -> list[str]:
        notes: list[str] = []
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(self.tmp_dir).st_mode):
                    shutil.rmtree(self.tmp_dir, ignore_errors=True)
                else:
                    # A link (or file) put in its place: removed, not what it names. rmtree
                    # refuses a link, which ignore_errors hid, and mkdir's exist_ok took a
                    # link to a directory: every temp file was written where it pointed.
                    os.unlink(self.tmp_dir)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MirrorError(
                f"cannot prepare the temp directory: {exc.strerror or exc}",
                path=str(self.tmp_dir),
                hint="check that the destination is writable",
            ) from exc
        followed: list[FileState] = []
        forgotten: list[tuple[str, bytes]] = []
        first_seen: set[tuple[str, bytes]] = set()
        rows_of: dict[str, dict[bytes, FileState]] = {}
        # Runs on every open over every mirrored file of the hosts in the run, so it reads only
        # the columns it needs and stats byte paths directly (Path objects per file cost more
        # than the stat itself). versions/ is looked at only for a file that does not match.
        for host, path, kind, committed, version, ino in self._committed_sizes(hosts):
            local = os.path.join(os.fsencode(self.dest / host), path)
            try:
                size = _size_of_regular(local)
                if size == committed and ino >= 0:
                    continue  # the usual case: one stat
                kept = self.last_version_on_disk(host, path, version)
                if size < 0 and kept > version and _room_for_a_file(local):
                    # Killed between a rewrite's two renames: the old copy went to versions/
                    # and the new one never arrived. Undo the first rename (unless something
                    # else took the file's place since: the old copy then stays a version).
                    os.rename(self.version_path(host, path, kept), local)
                    fsync_dir(os.path.dirname(local))
                    kept -= 1
                    size = _size_of_regular(local)
                    notes.append(
                        f"{host}: {path_text(path)}: put back from versions/ (v{kept + 1})"
                    )
                if ino == PLACEHOLDER:
                    if _size_of_regular(local) <= 0:
                        # A new file's row written before its rename, which never happened
                        # (or failed: something else is in the way), or brought nothing (no
                        # whole line yet): the row was only ever an intent.
                        forgotten.append((host, path))
                        continue
                    if size == committed:
                        continue  # followed already (see below), still to be fetched whole
                elif kept == version and (
                    size == committed or (size < 0 and committed == 0 and ino < 0)
                ):
                    # In doubt, but nothing replaced it: it is as committed. (Or it is missing
                    # and its row says so already, from an earlier recovery: a file the host
                    # deleted, then removed from the mirror by hand, is noted once.)
                    continue
                if host not in rows_of:
                    rows_of[host] = self.host_files(host)
                row = rows_of[host][path]
                if (
                    size > committed
                    and kind == "append"
                    and kept == version
                    and ino >= 0
                    and _same_head(local, committed, row.fingerprint)
                ):
                    # Appended in place beyond the checkpoint: those bytes were never committed.
                    # (A file about to be replaced by rename is marked in doubt, -1, first, and
                    # a new one has a placeholder.)
                    with open(local, "r+b") as out:
                        out.truncate(committed)
                        os.fsync(out.fileno())
                    notes.append(
                        f"{host}: {path_text(path)}: cut back to the checkpoint "
                        f"({size - committed} uncommitted bytes)"
                    )
                    continue
                # Anything else is a file the checkpoint does not describe: a whole-kind file
                # or a rewrite renamed into place before its commit (its old copy is kept
                # as version ``kept``), or a file cut or removed by hand. Never cut such a file
                # back (that would splice two contents): the checkpoint takes what is on disk,
                # and the unknown identity makes the next fetch take the file whole and compare.
                # So is a longer file whose head is not the committed one's: edited by hand
                # (a line put in at the top, an old version copied over it), not appended to;
                # cut back, it would keep a piece of the edit as the host's bytes.
                row.size = max(size, 0)
                row.ino = -1
                row.version = kept
                if ino == PLACEHOLDER:
                    # Its fingerprint stays empty: the next round takes it for a new file
                    # (plan._decide), as it was, so that a rename is still seen as one.
                    first_seen.add((host, path))
                    found = f"found before its first commit ({size} bytes)"
                else:
                    if size > 0:
                        with open(local, "rb") as src:
                            row.fingerprint = fingerprint_of(src.read(FINGERPRINT_BYTES))
                    found = "does not match its checkpoint" + (
                        " (missing)" if size < 0 else f" ({size} bytes, {committed} committed)"
                    )
                followed.append(row)
                gone = GONE.get(row.state) if size < 0 else None
                if gone is not None:
                    # No round fetches it: the loss is recorded (``check`` then says it as a
                    # note of kind lost), and only a backup of the mirror still has it.
                    then = f"{gone}, so nothing can fetch it again: its copy is lost"
                else:
                    then = "it will be fetched whole"
                notes.append(f"{host}: {path_text(path)}: {found}; {then}")
            except OSError as exc:
                raise MirrorError(
                    f"cannot check the mirrored file against its checkpoint: {exc.strerror or exc}",
                    host=host,
                    path=path_text(path),
                    hint="check the destination's permissions and free space",
                ) from exc
        self.forget_placeholders(forgotten)
        if followed:
            self.commit(followed, also=lambda: self._reindex(followed, first_seen))
        return notes

    def last_version_on_disk(self, host: str, path: bytes, version: int) -> int:
        """The highest version on disk in an unbroken run after ``version`` (the recorded one):
        a rewrite killed before its commit leaves its old copy there, unrecorded."""
        while os.path.lexists(self.version_path(host, path, version + 1)):
            version += 1
        return version

    def versions_folder(self, host: str, path: bytes) -> bytes:
        """The directory of the versions tree that ``host``'s ``path``'s versions are in (it
        holds its directory's other files' versions too)."""
        return os.path.dirname(os.fsencode(self.version_path(host, path, 1)))

    def open_versions_folder(self, host: str, path: bytes, made: set[Path]) -> int:
        """A descriptor of the directory of the versions tree that ``host``'s ``path``'s
        versions go in (:meth:`versions_folder`), for a kept copy to be renamed in by its
        name. Each directory from the state directory down is made if absent and entered
        without following a link (:func:`enter_dirs`), so a link planted anywhere on the way,
        even after the open looked at ``versions``, is refused and nothing is made or written
        where it points; the directory holding each one made goes to ``made`` (an entry is
        durable once its directory is synced). A :class:`MirrorError` naming ``host``,
        ``path`` and the place in the way; an ``OSError`` for any other failure, for the
        caller to word. The caller closes the descriptor."""
        control = os.fsencode(self.control)
        names = os.path.relpath(self.versions_folder(host, path), control).split(b"/")

        def mark(depth: int) -> None:
            made.add(Path(os.fsdecode(os.path.join(control, *names[:depth]))))

        try:
            return enter_dirs(self._control, names, made=mark)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            assert isinstance(exc.filename, bytes)
            # Looked at by its path from the state directory, for the message only: the
            # directories above it were entered a moment ago, but one swapped meanwhile makes
            # the look fail, and the refusal is said all the same (as no directory).
            try:
                mode = os.stat(exc.filename, dir_fd=self._control, follow_symlinks=False).st_mode
            except OSError:
                mode = 0
            place = Path(os.fsdecode(os.path.join(control, exc.filename)))
            raise self._not_a_versions_dir(host, path, place, mode) from exc

    def _not_a_versions_dir(self, host: str, path: bytes, place: Path, mode: int) -> MirrorError:
        return MirrorError(
            f"cannot keep the mirrored copy as a version: {place_text(self.dest, place)} in "
            f"the versions folder is {_not_a_dir(mode)}",
            host=host,
            path=path_text(path),
            hint="move it aside (remote-sync makes the versions folder's directories itself "
            "and follows no link there), then run again; the mirrored copy is left as it was",
        )

    def _reindex(self, rows: list[FileState], first_seen: set[tuple[str, bytes]]) -> None:
        """The index of sessions whose checkpoint followed the file, from the file itself.

        The index describes the committed bytes; once the checkpoint takes what is on disk it
        must too, or it would differ from a rebuild until the file is fetched again (which may
        never happen, if the remote file is gone). Only sessions the index has are redone (a
        mirror synced with ``--no-index`` keeps none); of the files ``first_seen`` (found
        before their first commit), the transcripts of hosts whose other files are indexed.
        """
        from ..formats.readers import get_reader
        from ..index.update import index_local_file

        formats = {host: fmt for host, (fmt, _root) in self.hosts().items()}
        for row in rows:
            key = (row.host, row.path)
            if key in first_seen:
                if row.host not in formats:
                    continue
                reader = get_reader(formats[row.host])
                if not reader.is_transcript(row.path) or not host_is_indexed(self.db, row.host):
                    continue
            elif not self.db.execute(
                "SELECT 1 FROM sessions WHERE host = ? AND path = ?", key
            ).fetchone():
                continue
            delete_sessions(self.db, [key])
            if row.size > 0 and row.host in formats:
                local = self.local_path(row.host, row.path)
                reader = get_reader(formats[row.host])
                try:
                    update = index_local_file(reader, row.host, row.path, local, row.size)
                except OSError as exc:
                    raise MirrorError(
                        f"cannot read the mirrored file to index it: {exc.strerror or exc}",
                        host=row.host,
                        path=path_text(row.path),
                        hint="check the destination's permissions",
                    ) from exc
                update.fresh = True
                # Written now, not batched: whether a later file's host counts as indexed
                # (``host_is_indexed``) reads the sessions as this one leaves them.
                update.write(self.db)

    # -- reading and writing rows ---------------------------------------------------------

    def _committed_sizes(
        self, hosts: Iterable[str] | None
    ) -> list[tuple[str, bytes, str, int, int, int]]:
        """host, path, kind, committed size, version and inode of every row; the inode of a
        placeholder (see :meth:`mark_in_doubt`) is given as :data:`PLACEHOLDER`."""
        query = (
            "SELECT host, path, kind, size, version, "
            f"CASE WHEN fingerprint = X'' THEN {PLACEHOLDER} ELSE ino END FROM files"
        )
        if hosts is None:
            return [(h, bytes(p), k, n, v, i) for h, p, k, n, v, i in self.db.execute(query)]
        out: list[tuple[str, bytes, str, int, int, int]] = []
        for host in hosts:
            cur = self.db.execute(query + " WHERE host = ?", (host,))
            out.extend((h, bytes(p), k, n, v, i) for h, p, k, n, v, i in cur)
        return out

    def all_files(self, hosts: Iterable[str] | None = None) -> list[FileState]:
        if hosts is None:
            cur = self.db.execute(f"SELECT {_COLUMNS} FROM files")
            return [FileState(*r) for r in cur]
        out: list[FileState] = []
        for host in hosts:
            out.extend(self.host_files(host).values())
        return out

    def host_files(self, host: str) -> dict[bytes, FileState]:
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM files WHERE host = ?", (host,))
        return {bytes(r[1]): FileState(r[0], bytes(r[1]), *r[2:]) for r in cur}

    def set_host(self, host: str, fmt: str, root: str, address: str) -> None:
        """Record which format and root a host's mirror has (the index and rebuild read it)."""
        try:
            with self.transaction():
                self.db.execute(
                    "INSERT OR REPLACE INTO hosts VALUES (?, ?, ?, ?, ?)",
                    (host, fmt, root, address, time.time()),
                )
        except sqlite3.Error as exc:
            raise self._db_error(exc, "record the host", host) from exc

    def hosts(self) -> dict[str, tuple[str, str]]:
        """host → (format, root) of every host this mirror has synced."""
        cur = self.db.execute("SELECT host, format, root FROM hosts")
        return {h: (f, r) for h, f, r in cur}

    def holds_files(self, host: str) -> bool:
        """Whether the mirror has a checkpoint of any file of ``host`` (deleted ones too)."""
        cur = self.db.execute("SELECT 1 FROM files WHERE host = ? LIMIT 1", (host,))
        return cur.fetchone() is not None

    def commit(
        self,
        rows: Iterable[FileState],
        also: Callable[[], None] | None = None,
        kept: Iterable[tuple[str, bytes, int]] = (),
    ) -> None:
        """Write checkpoints in one transaction (call only after their bytes are on disk).

        ``also`` runs inside the same transaction (the index's rows for these files). ``kept``:
        the versions (host, path, number) these checkpoints are the first to count, whose keep
        time is now (a number a version removed by hand left free is taken over).
        """
        now = time.time()
        kept_rows = [(host, path, number, now) for host, path, number in kept]
        params = []
        for r in rows:
            r.updated_at = now
            if not r.first_seen:
                r.first_seen = now
            params.append(
                (
                    r.host,
                    r.path,
                    r.kind,
                    r.size,
                    r.remote_size,
                    r.mtime,
                    r.dev,
                    r.ino,
                    r.fingerprint,
                    r.version,
                    r.state,
                    r.first_seen,
                    r.updated_at,
                    r.deleted_at,
                )
            )
        if not params and also is None:
            return
        try:
            with self.transaction():
                self.db.executemany(
                    f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params,
                )
                if kept_rows:
                    self.db.executemany(
                        "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?)", kept_rows
                    )
                if also is not None:
                    also()
        except sqlite3.Error as exc:
            hosts = {host for host, *_ in params}
            raise self._db_error(
                exc, "write checkpoints", hosts.pop() if len(hosts) == 1 else None
            ) from exc

    def mark_in_doubt(self, rows: Iterable[FileState]) -> None:
        """Forget the identity of these files' checkpoints (before replacing them by rename).

        Their sizes and content stay claimed; only the inode (-1) changes, which makes the next
        round fetch them whole and recovery never cut them back (see :meth:`recover`). A file
        with no checkpoint yet gets a placeholder: nothing committed (size 0, no fingerprint),
        so that a file renamed into place before its first commit is not left in the mirror
        unknown to the state.
        """
        now = time.time()
        placeholders = [
            (row.host, row.path, row.kind, row.remote_size, row.mtime, row.dev, row.version, now)
            for row in rows
        ]
        if not placeholders:
            return
        try:
            with self.transaction():
                self.db.executemany(
                    "INSERT INTO files (host, path, kind, size, remote_size, mtime, dev, ino, "
                    "fingerprint, version, state, first_seen, updated_at) "
                    "VALUES (?, ?, ?, 0, ?, ?, ?, -1, X'', ?, 'live', ?, ?) "
                    "ON CONFLICT (host, path) DO UPDATE SET ino = -1",
                    [(*values, now) for values in placeholders],
                )
        except sqlite3.Error as exc:
            raise self._db_error(exc, "write checkpoints", placeholders[0][0]) from exc

    def forget_versions(self, host: str, path: bytes, numbers: Sequence[int]) -> None:
        """Forget the keep times of versions ``numbers`` of ``host``'s ``path``, in one
        transaction (before their copies are removed: see ``versions.prune_versions``).
        ``files.version`` is left as it is: it numbers the next version kept."""
        try:
            with self.transaction():
                self.db.executemany(
                    "DELETE FROM versions WHERE host = ? AND path = ? AND version = ?",
                    [(host, path, number) for number in numbers],
                )
        except sqlite3.Error as exc:
            raise self._db_error(exc, "forget the versions removed", host) from exc

    def unindexed_files(self, host: str) -> list[tuple[bytes, int]]:
        """Path and committed size of ``host``'s mirrored files that have bytes but no session
        in the index (transcripts among them were synced with ``--no-index``)."""
        return list(unindexed_files(self.db, host))

    def forget_placeholders(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """Drop the placeholder rows of these files whose rename never happened or brought no
        byte (or whose file is gone since): a row for a file with bytes in its place, or with
        anything committed, is kept."""
        keys = [key for key in keys if _size_of_regular(self.local_path(*key)) <= 0]
        if not keys:
            return
        try:
            with self.transaction():
                dropped = [
                    key
                    for key in keys
                    if self.db.execute(
                        "DELETE FROM files WHERE host = ? AND path = ? AND fingerprint = X''", key
                    ).rowcount
                ]
                # With their sessions, which recovery may have indexed.
                delete_sessions(self.db, dropped)
        except sqlite3.Error as exc:
            raise self._db_error(exc, "write checkpoints", keys[0][0]) from exc

    def _db_error(self, exc: sqlite3.Error, doing: str, host: str | None = None) -> StateError:
        # SQLITE_FULL reads "database or disk is full"; say it the way the writer does.
        full = isinstance(exc, sqlite3.OperationalError) and "is full" in str(exc)
        if full:
            said, hint = full_disk_words(self.control, str(exc), "what was committed is kept")
            return StateError(
                f"disk full while trying to {doing} ({said})",
                host=host,
                path=str(self.control / "state.db"),
                hint=hint,
            )
        return StateError(
            f"cannot {doing}: {exc}",
            host=host,
            path=str(self.control / "state.db"),
            hint="check free space on the destination",
        )

    def transaction(self) -> _Transaction:
        """``with state.transaction():`` runs statements atomically (BEGIN IMMEDIATE)."""
        return _Transaction(self.db)

    # -- paths ------------------------------------------------------------------------------

    def local_path(self, host: str, path: bytes) -> Path:
        return mirrored_path(self.dest, host, path)

    def version_path(self, host: str, path: bytes, version: int) -> Path:
        """``versions/<host>/<path>.v<version>``, one distinct path per file and version.

        A name too long for the suffix (file names end at 255 bytes) is cut, and a digest of
        the whole name keeps it unique. A directory whose name ends like a version (``d.v1``,
        ``d.v1~``) gets one more ``~``: the remote may hold a file ``d`` and a directory
        ``d.v1/`` at once, and ``d``'s first version must not need the directory's place.
        """
        head, _slash, name = path.rpartition(b"/")
        dirs = [_version_dir_name(segment) for segment in head.split(b"/")] if head else []
        leaf = _version_name(name, version)
        return Path(os.fsdecode(os.path.join(os.fsencode(self.versions_dir / host), *dirs, leaf)))

    def temp_path(self) -> Path:
        return self.tmp_dir / f"fetch-{os.getpid()}-{time.monotonic_ns()}"


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not exc_type:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            # SQLite may have rolled back already (a full disk does): then the error that
            # got us here is the one to report, not "no transaction is active".
            self.db.execute("ROLLBACK")


def _same_head(local: bytes, committed: int, fingerprint: bytes) -> bool:
    """Whether the file at ``local`` begins with the committed bytes' head, and has a line end
    where they end, as a file a killed run appended to does (an append is committed at a line
    end; a longer file put there by hand, an old version sharing the session's header, seldom
    has one exactly there). Only a file longer than its checkpoint is read so: two reads of
    at most FINGERPRINT_BYTES and one byte."""
    with open(local, "rb") as src:
        head = src.read(min(committed, FINGERPRINT_BYTES))
        if committed > 0:
            src.seek(committed - 1)
            if src.read(1) != b"\n":
                return False
    return fingerprint_of(head) == fingerprint


def _room_for_a_file(path: bytes) -> bool:
    """Is nothing at ``path``, in a directory that exists?"""
    return not os.path.lexists(path) and os.path.isdir(os.path.dirname(path))


def _size_of_regular(path: Path | bytes) -> int:
    """The size of a regular file, or -1 when there is none (missing, a directory, a file
    where a parent should be: the remote turned a file into a directory or the reverse)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    except OSError as exc:
        # A path too long for the destination (a host's PATH_MAX is counted from its root,
        # ours from the destination's) can hold no file: its put in place failed alone.
        if exc.errno == errno.ENAMETOOLONG:
            return -1
        raise
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def fsync_dir(directory: bytes | str | os.PathLike[str]) -> None:
    """Make a directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
