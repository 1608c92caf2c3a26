"""The mirror's checkpoint: one SQLite database (WAL) inside the destination, opened under its
lock.

What it owns: :class:`MirrorState`, which takes the destination's lock and opens the database
(schema and its upgrades), the ``files`` table (per host and remote path: the bytes committed
in the mirror, the remote size, identity, prefix fingerprint, mtime and version), the
``versions`` table (when each kept version was kept), and crash recovery: on open, bytes
beyond a checkpoint are cut back and stray temp files removed, so a run killed at any instant
resumes exactly. Every open under the lock is counted (meta row ``opens``), so that a process
syncing again and again (the agent) can tell no other run held the lock since its own clean
close, and skip recovery's look at the files it left
(:class:`~remote_sync.mirror.control.CleanClose`). A first open that fails (a full disk, no
permission) takes back the directories, lock file and database it created, so that the folder
does not pass for a mirror; a database that was there is never removed.

What it leaves to others: the control directory, the lock file and the look at the
database's files with no link followed (:mod:`~remote_sync.mirror.control`), the state read
without the lock (:mod:`~remote_sync.mirror.state_reader`), how kept versions are named and
numbered (:mod:`~remote_sync.mirror.version_names`), the destination's places and how a full
disk is told (:mod:`~remote_sync.mirror.destination`).

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
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import GONE, DestinationError, MirrorError, StateError, path_text
from ..index.store import delete_sessions, index_rules, record_index_rules
from ..index.store import ensure_schema as ensure_index_schema
from .control import (
    CONTROL_DIR,
    DB_FILES,
    HOLDER_MAX,
    LOCK_FILE,
    CleanClose,
    FileId,
    LockHolder,
    LockLook,
    enter_dirs,
    lock_look,
    look_at_db_files,
    not_a_dir,
    open_control_dir,
    open_lock,
)
from .destination import (
    fsync_dir,
    full_disk_error,
    full_disk_words,
    mirrored_path,
    nearly_full,
    out_of_space,
    place_text,
)
from .state_reader import host_is_indexed, unindexed_files
from .version_names import version_dir_name, version_name

log = logging.getLogger(__name__)


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
# such table: its readers look first (see
# :func:`~remote_sync.mirror.state_reader.kept_times`).

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


#: How many times an open takes the lock again when a failed open of another run took the
#: lock file (or the directory) back under it.
_LOCK_TRIES = 10


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
        db_before = {name for name in DB_FILES if self._has(name)}
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
                f"the destination's versions folder is {not_a_dir(mode)}",
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
            look_at_db_files(self._control, self.control, DB_FILES[:1], opened=True)
            self._db.execute("PRAGMA journal_mode=WAL")
            # A database already in WAL mode has its -wal and -shm open now: they too are
            # looked at before the schema's statements can write to the -wal.
            look_at_db_files(self._control, self.control, DB_FILES[:3], opened=True)
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
                self._control, self.control, DB_FILES[:3], opened=True
            )
            # Counted once the files are known to be this mirror's own.
            self.opens = self._count_open()
        except sqlite3.Error as exc:
            if nearly_full(self.control):
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
        names = [name for name in DB_FILES if name not in db_before]
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
            look_at_db_files(other._control, other.control, DB_FILES[:3], same_as=self._db_files)
            other._db = other._connect()
            look_at_db_files(other._control, other.control, DB_FILES[:3], same_as=self._db_files)
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
            holder = LockHolder.parse(os.pread(fd, HOLDER_MAX, 0))
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
        self._lock_found = lock_look(fd)
        # Who holds it is for the message a second run prints; failing to write it is
        # harmless.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockHolder.this_process().line(), 0)
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
            self._lock_left = lock_look(self._lock_fd)
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
            f"the versions folder is {not_a_dir(mode)}",
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
        # A path is a BLOB, which sqlite3 gives as bytes: taken as it comes, a fifth of the
        # time a round's 4,000 rows took where each path went through bytes() twice.
        return {r[1]: FileState(*r) for r in cur}

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
        dirs = [version_dir_name(segment) for segment in head.split(b"/")] if head else []
        leaf = version_name(name, version)
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
