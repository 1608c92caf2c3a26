"""The mirror's state read without the lock, and the reads of a state's connection that the
readers and the locked state share.

What it owns: :class:`StateReader` (``sessions``, ``versions list``, a dry prune, ``check``),
whose every read is one that a sync starting meanwhile cannot spoil (read again on a new
connection when the database's files changed during it), :func:`read_state` and
:func:`stream_state` on it, the consistent copy of the database a dry run works on
(:func:`copy_state`), and the reads of the ``versions`` table and of the index that both a
reader and an open :class:`~remote_sync.mirror.state.MirrorState` make (:func:`kept_times`,
:func:`host_is_indexed`, :func:`unindexed_files`). Nothing here takes the lock or writes the
state; the database's files are looked at with no link followed, as a sync's open looks at
them (:func:`~remote_sync.mirror.control.look_at_db_files`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import ConfigError, DestinationError, StateError
from ..index.store import read_only_uri
from .control import CONTROL_DIR, DB_FILES, enter_control_dir, look_at_db_files

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
                    look_at_db_files(control, self.path.parent, DB_FILES[:3])
                    before = _stamp(self.path)
                    db = open_index(self.dest, warn=warn)
                    try:
                        # Read immutable, SQLite opened the database file alone.
                        opened = DB_FILES[:1] if before[0] is None else DB_FILES[:3]
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
    same is the error of a state that cannot be read
    (:func:`~remote_sync.index.query.unreadable_index`)."""
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
    look_at_db_files(control, source.parent, DB_FILES[:3])
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
        opened = DB_FILES[:1] if immutable else DB_FILES[:3]
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
