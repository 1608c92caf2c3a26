"""The destination's control directory and its lock, each reached without following a link.

What it owns: the control directory (``DIR/.remote-sync/``, made or found and held open
without following a link: :func:`open_control_dir`, :func:`enter_control_dir`; the directories
below it, the versions tree's, entered by name in their parent's descriptor: :func:`enter_dirs`),
the lock file that keeps two runs off one destination and the agent's (:func:`open_lock`; the
line that says which process on which machine holds it, :class:`LockHolder`; the lock file as
a clean close left it, :class:`CleanClose`), the look at the state database's files that
refuses a link SQLite would follow (:func:`look_at_db_files`), and the refusal of a
destination inside another mirror (:func:`refuse_nested`). Taking the lock, opening the
database and taking back what a failed first open made are
:class:`~remote_sync.mirror.state.MirrorState`'s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from msgspec import Struct

from ..errors import ConfigError, DestinationError, LockedError, showable
from .destination import DIR_NO_FOLLOW, kind_text

#: The control directory, in the mirror: the state database, the lock, temp files, versions.
CONTROL_DIR = ".remote-sync"
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
HOLDER_MAX = 512


class LockHolder(Struct, frozen=True):
    """Who holds a destination's lock, as its lock file says: one line, ``PID TOKEN HOST``
    (a lock file of an older version holds the pid alone; one being written, nothing)."""

    pid: str
    token: str | None = None
    host: str | None = None

    @classmethod
    def this_process(cls) -> LockHolder:
        # A host name has no spaces or line ends; made sure of, so that the line parses.
        host = "".join(socket.gethostname().split()) or "?"
        return cls(str(os.getpid()), _PROCESS_TOKEN, host)

    @classmethod
    def parse(cls, data: bytes) -> LockHolder:
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


#: The lock file as a close left it or an open found it: device, inode, size, mtime and
#: ctime (ns). Every run, of any version, writes its holder line into it when it takes the
#: lock and empties it when it closes, which changes the times (and the size, until a close).
LockLook = tuple[int, int, int, int, int]


class CleanClose(Struct, frozen=True):
    """What a process remembers of the state as its sync closed it clean (every file of
    ``hosts`` as its checkpoint says: nothing past it, no rename or temp file pending), so
    that its next sync may skip recovery's stat of those hosts' files (see
    :meth:`MirrorState.clean_since <remote_sync.mirror.state.MirrorState.clean_since>`): the
    count of opens the state held then, and the lock file as that close left it. Only in
    memory: a process that starts anew knows nothing."""

    opens: int
    lock: LockLook
    hosts: frozenset[str]


def lock_look(fd: int) -> LockLook | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: The state database's files (SQLite makes its journals beside it).
DB_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")


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


def not_a_dir(mode: int) -> str:
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
        f"the destination's state directory is {not_a_dir(mode)}",
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
