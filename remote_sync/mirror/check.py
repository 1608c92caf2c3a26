"""A mirror's integrity check (``remote-sync check``), as ``restic check`` is a repository's:
whether the mirror still holds what its state says it does, without asking any host.

What it owns: :class:`Problem` (one thing found, as ``check --json`` prints it), the
:class:`CheckSummary` that ends a check, and :func:`check_mirror`. It reads the state as
``versions list`` does (read-only, no lock: it works while a sync runs) and never writes inside
the mirror. Per file the state has (live, deleted or renamed alike: a deleted file's copy is
the only one left), it looks at the file without following a link and reads at most its first
FINGERPRINT_BYTES: missing, no regular file, shorter than its committed size, or a first KiB
whose digest is not the state's fingerprint is damage. A file longer than its checkpoint is
not: a running sync appends past it before it commits (a run killed then leaves such bytes,
which the next sync's recovery cuts back). Only the head is read, so an edit past the first
KiB that keeps the file's size is not seen (there is no ``--read-data``). A kept version the
state has a keep time for that is missing, or any counted version that is no regular file, is
damage; a version with no keep time that is missing is not (``versions prune`` forgets a
version's keep time before removing it, and a version kept before keep times leaves no other
trace, so it cannot be told from a pruned one). Damage is said with what to do: mostly a sync,
which fetches the file again; but the host no longer has a file it deleted (or renamed away),
so for one of those the hint says a backup of the mirror is all that has it, or a sync records
the loss. Once a sync's recovery has recorded it (nothing committed, in doubt) a missing copy
of such a file is a note of its own kind, ``lost``, not damage: nothing can fetch it, so as
damage it would fail every check for ever with nothing to do. Notes, not damage: those, files
the state does not know (strays), and an index that is not the mirror's (``index rebuild``
redoes it).

A sync runs alongside safely: before a rewrite renames a file into place its checkpoint is
committed in doubt (inode -1), and a new file has a placeholder row first, so what a check
finds wrong is read again with the state's newest row before it is said; a file in doubt that
does not match is a note (the next sync's recovery takes it), never damage. The state is read
in pages of :data:`PAGE_ROWS` rows in (host, path) order, each in its own read, so memory stays
bounded and no read transaction is held open for the whole check. Opened while no sync runs,
the state is read as a file nothing changes (``immutable``: see
:func:`~remote_sync.index.store.read_only_uri`), which would not see a sync that starts later,
and would read pages its checkpoints rewrite underneath; so each read is followed by a look at
the database's files, and one that changed meanwhile is read again on a new connection (the
state's :class:`~remote_sync.mirror.state_reader.StateReader`, which the other readers use too).
"""

from __future__ import annotations

import errno
import os
import shlex
import sqlite3
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import GONE, ConfigError, TransferCancelledError, path_text, refetch_hint
from ..formats.readers import find_reader
from ..index.query import unreadable_index
from .control import CONTROL_DIR
from .destination import READ_NO_FOLLOW, kind_text, place_text
from .state import FINGERPRINT_BYTES, MirrorState, fingerprint_of
from .state_reader import StateReader, host_is_indexed, kept_times, unindexed_files
from .version_names import VersionsListings

__all__ = ["CheckReport", "CheckSummary", "Problem", "check_mirror"]

#: How many state rows are read at a time.
PAGE_ROWS = 1000
#: How many times a file found wrong is looked at again against a newer row of the state.
_LOOKS = 3
#: How many paths the state is asked about in one query (with the host, 900 parameters: below
#: the 999 an older SQLite allows).
_IN_PATHS = 899


class Problem(msgspec.Struct, kw_only=True):
    """One thing a check found: ``damage`` (the mirror lost or changed what it held, and
    ``hint`` says what gets it back) or a ``note`` (nothing to repair: nothing lost, or, for
    ``lost``, a loss a sync recorded that nothing can undo; ``hint`` says what tidies it)."""

    type: Literal["damage", "note"]
    #: missing, not_a_file, short, changed, unreadable, in_doubt, lost, version_missing,
    #: version_not_a_file, stray, not_in_state, not_indexed
    kind: str
    host: str
    path: str  # relative to the host's root (\\xNN as listings show it); a stray's to DIR
    what: str
    hint: str
    version: int | None = None  # the kept version a version_* problem is about


class CheckSummary(msgspec.Struct, tag="summary", tag_field="type"):
    """The end of a check: what it looked at and what it found."""

    files: int  # mirrored files checked
    versions: int  # kept versions checked
    damaged: int  # problems of type damage
    notes: int  # problems of type note
    intact: bool  # no damage found


class CheckReport(msgspec.Struct):
    """What ``api.check_mirror`` returns: the summary and every problem, in the order found."""

    summary: CheckSummary
    problems: list[Problem]


def check_mirror(
    dest: str | os.PathLike[str],
    *,
    host: str | None = None,
    on_problem: Callable[[Problem], object],
    cancelled: Callable[[], bool] | None = None,
) -> CheckSummary:
    """Check the mirror at ``dest`` (only ``host``'s part of it, if given) against its state,
    each problem given to ``on_problem`` as it is found. A ``dest`` that holds no mirror, or
    a ``host`` it has no file or record of, is a :class:`ConfigError` before anything is read;
    a state SQLite cannot read, one too (as for ``versions list``). ``cancelled`` is asked
    before each file: true, it stops with a :class:`TransferCancelledError`."""
    dest = Path(dest)
    state = StateReader(dest)
    try:
        checker = _Checker(dest, state, on_problem, cancelled or (lambda: False))
        try:
            hosts = checker.hosts(host)
            for name in hosts:
                checker.check_files(name)
                checker.check_index(name)
                checker.look_for_strays(name)
            if host is None:
                checker.look_for_stray_hosts(hosts)
        except sqlite3.Error as exc:
            raise unreadable_index(dest, exc) from exc
    finally:
        state.close()
    return CheckSummary(
        checker.files, checker.versions, checker.damaged, checker.notes, checker.damaged == 0
    )


#: A file's row as the check reads it: path, committed size, inode, fingerprint, version and
#: state on the host (live, deleted or renamed).
_Row = tuple[bytes, int, int, bytes, int, str]


class _Checker:
    """One check's reads and counts."""

    def __init__(
        self,
        dest: Path,
        state: StateReader,
        on_problem: Callable[[Problem], object],
        cancelled: Callable[[], bool],
    ) -> None:
        self.dest = dest
        self.state = state
        self.on_problem = on_problem
        self.cancelled = cancelled
        self.paths = MirrorState(dest)  # not opened: its paths only, no lock, no database
        self.files = self.versions = self.damaged = self.notes = 0
        self._listings = VersionsListings(self.paths)
        #: The keep times of the page of rows being checked, by path and version number.
        self._times: dict[tuple[str, bytes], dict[int, float]] = {}

    def say(self, problem: Problem) -> None:
        if problem.type == "damage":
            self.damaged += 1
        else:
            self.notes += 1
        self.on_problem(problem)

    def hosts(self, only: str | None) -> list[str]:
        """The hosts to check: every one the mirror has synced or holds files of."""
        known = {h for (h,) in self.state.rows("SELECT host FROM hosts")}
        known.update(h for (h,) in self.state.rows("SELECT DISTINCT host FROM files"))
        if only is None:
            return sorted(known)
        if only not in known:
            names = ", ".join(sorted(known)) or "none yet"
            raise ConfigError(
                f"the mirror at {self.dest} has no host {only!r}",
                host=only,
                hint=f"its hosts: {names}",
            )
        return [only]

    # -- mirrored files and their versions --------------------------------------------------

    def _rows(self, host: str) -> Iterator[_Row]:
        """``host``'s rows, a page per query (each sees the newest commit), and the keep
        times of the page's versions read with it (:attr:`_times`): one query per page, not
        one per file with versions."""
        after = b""
        first = True
        while True:
            page, self._times = self.state.steady(partial(self._page, host, first, after))
            for path, size, ino, fingerprint, version, state in page:
                yield bytes(path), size, ino, bytes(fingerprint), version, state
            if len(page) < PAGE_ROWS:
                return
            after, first = bytes(page[-1][0]), False

    def _page(
        self, host: str, first: bool, after: bytes, db: sqlite3.Connection
    ) -> tuple[list[Any], dict[tuple[str, bytes], dict[int, float]]]:
        """A page of ``host``'s rows after the path ``after`` (``first``: from the first),
        and the keep times of those rows' versions."""
        page = db.execute(
            "SELECT path, size, ino, fingerprint, version, state FROM files "
            "WHERE host = ? AND (? OR path > ?) ORDER BY path LIMIT ?",
            (host, first, after, PAGE_ROWS),
        ).fetchall()
        if not page:
            return page, {}
        return page, kept_times(db, host, (bytes(page[0][0]), bytes(page[-1][0])))

    def _row(self, host: str, path: bytes) -> _Row | None:
        rows = self.state.rows(
            "SELECT path, size, ino, fingerprint, version, state FROM files "
            "WHERE host = ? AND path = ?",
            (host, path),
        )
        if not rows:
            return None
        found = rows[0]
        return bytes(found[0]), found[1], found[2], bytes(found[3]), found[4], found[5]

    def check_files(self, host: str) -> None:
        for row in self._rows(host):
            if self.cancelled():
                raise TransferCancelledError(
                    "cancelled", host=host, hint="a check changes nothing: run it again"
                )
            found = self._judge(host, row)
            for _ in range(_LOOKS - 1):
                if found is None:
                    break
                # Said only if the state still says what the file was judged by: a sync may
                # have committed a rewrite, or marked the file in doubt, since the page was read.
                newer = self._row(host, row[0])
                if newer == row:
                    break
                if newer is None:  # a placeholder forgotten: nothing was committed
                    found = None
                    break
                row = newer
                found = self._judge(host, row)
            self.files += 1
            if found is not None:
                self.say(found)
            if row[4] > 0:
                self._check_versions(host, row[0], row[4])

    def _judge(self, host: str, row: _Row) -> Problem | None:
        """What is wrong with ``host``'s mirrored file of ``row``, or None."""
        path, committed, ino, fingerprint, version, remote = row
        if not fingerprint:
            # A placeholder: nothing committed yet (a new file a sync is putting in place, or
            # one the next recovery forgets), so nothing to hold the file to.
            return None
        local = self.paths.local_path(host, path)
        in_doubt = ino < 0
        try:
            fd = os.open(local, READ_NO_FOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                if in_doubt and self.paths.last_version_on_disk(host, path, version) > version:
                    return self._note_in_doubt(
                        host, path, "missing, its earlier copy in versions/ not yet counted"
                    )
                if in_doubt and committed == 0 and remote in GONE:
                    # A sync's recovery recorded the loss (see MirrorState.recover) of a file
                    # no sync can fetch again: said, but nothing is left to do about it, so it
                    # is no damage (it would fail every check for ever, with no way to act).
                    return self._lost(host, path, remote, version)
                return self._damage(
                    host,
                    path,
                    "missing",
                    f"missing ({_counted(committed)} committed)",
                    refetch_hint(host, self.dest, remote),
                )
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symbolic link
                return self._not_a_file(host, path, "a symbolic link", remote)
            return self._unreadable(host, path, local, exc)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._not_a_file(host, path, kind_text(st.st_mode), remote)
            if st.st_size < committed:
                if in_doubt:
                    return self._note_in_doubt(host, path, f"{_counted(st.st_size)} on disk")
                return self._damage(
                    host,
                    path,
                    "short",
                    f"{_counted(st.st_size)} on disk, {_counted(committed)} committed: "
                    f"{_counted(committed - st.st_size)} lost",
                    refetch_hint(host, self.dest, remote),
                )
            head = os.pread(fd, min(committed, FINGERPRINT_BYTES), 0)
        except OSError as exc:
            return self._unreadable(host, path, local, exc)
        finally:
            os.close(fd)
        if fingerprint_of(head) == fingerprint:
            return None
        if in_doubt:
            return self._note_in_doubt(host, path, "its first bytes are another copy's")
        return self._damage(
            host,
            path,
            "changed",
            f"its first {_counted(len(head))} are not those synced",
            # A sync takes a file of its committed size for intact: moved away, it is
            # fetched whole again (or, gone from the host, recorded as lost).
            "move the file out of the mirror (a sync does not see an edit that keeps its "
            f"size), then {refetch_hint(host, self.dest, remote)}",
        )

    def _check_versions(self, host: str, path: bytes, counted: int) -> None:
        """``host``'s ``path``'s versions 1 to ``counted``, from one listing of their folder
        (shared with its other files': see :class:`VersionsListings`), so a file pruned down
        to a few versions of many costs as few looks: not one per number it ever counted,
        nor a scan of the folder's other files' versions. Those with a keep time are looked
        at too when the listing lacks them (:attr:`_times`, read with the row's page)."""
        try:
            on_disk = {
                number: entry
                for number, entry in self._listings.versions(host, path).items()
                if number <= counted
            }
        except OSError as exc:
            where = Path(os.fsdecode(self.paths.versions_folder(host, path)))
            self.say(
                self._damage(
                    host,
                    path,
                    "unreadable",
                    f"cannot list the folder of its versions ({place_text(self.dest, where)}): "
                    f"{exc.strerror or exc}",
                    f"check the permissions of {place_text(self.dest, where)}",
                )
            )
            return
        timed = self._times.get((host, path), {})
        for number in sorted(on_disk.keys() | {n for n in timed if n <= counted}):
            place = self.paths.version_path(host, path, number)
            entry = on_disk.get(number)
            try:
                # Looked at again when the listing lacks it: the listing may be older than
                # the row, when another file of the folder was listed first.
                mode = _mode_of(entry) if entry is not None else os.lstat(place).st_mode
            except (FileNotFoundError, NotADirectoryError):
                # Said only if the state still has its keep time: a prune forgets it
                # (committed) before it removes the copy, so one gone meanwhile was pruned.
                if number in self._timed(host, path):
                    self.versions += 1
                    self.say(
                        self._damage(
                            host,
                            path,
                            "version_missing",
                            f"version {number} is missing ({place_text(self.dest, place)})",
                            "it cannot be fetched again (the host has rewritten the file "
                            "since): put the copy back from a backup of the mirror",
                            version=number,
                        )
                    )
                continue  # no keep time: pruned, or kept before keep times and removed
            except OSError as exc:
                self.versions += 1
                self.say(
                    self._damage(
                        host,
                        path,
                        "unreadable",
                        f"cannot look at version {number} ({place_text(self.dest, place)}): "
                        f"{exc.strerror or exc}",
                        f"check the permissions of {place_text(self.dest, place.parent)}",
                        version=number,
                    )
                )
                continue
            self.versions += 1
            if not stat.S_ISREG(mode):
                self.say(
                    self._damage(
                        host,
                        path,
                        "version_not_a_file",
                        f"version {number} ({place_text(self.dest, place)}) is {kind_text(mode)}",
                        "a sync keeps versions as regular files; this one was put there by "
                        "hand: move it away and put the copy back from a backup",
                        version=number,
                    )
                )

    def _timed(self, host: str, path: bytes) -> set[int]:
        """The numbers of ``host``'s ``path``'s versions the state has a keep time for now."""
        times = self.state.steady(lambda db: kept_times(db, host, (path, path)))
        return set(times.get((host, path), ()))

    def _damage(
        self, host: str, path: bytes, kind: str, what: str, hint: str, version: int | None = None
    ) -> Problem:
        return Problem(
            type="damage",
            kind=kind,
            host=host,
            path=path_text(path),
            what=what,
            hint=hint,
            version=version,
        )

    def _note(self, host: str, path: bytes, kind: str, what: str, hint: str) -> Problem:
        return Problem(
            type="note", kind=kind, host=host, path=path_text(path), what=what, hint=hint
        )

    def _not_a_file(self, host: str, path: bytes, kind: str, remote: str) -> Problem:
        return self._damage(
            host,
            path,
            "not_a_file",
            f"{kind} is in the mirrored file's place",
            "remove it (the mirror puts only regular files there), then "
            f"{refetch_hint(host, self.dest, remote)}",
        )

    def _unreadable(self, host: str, path: bytes, local: Path, exc: OSError) -> Problem:
        return self._damage(
            host,
            path,
            "unreadable",
            f"cannot read the mirrored file: {exc.strerror or exc}",
            f"check the permissions of {path_text(os.fsencode(local.parent))}, and the "
            "disk's health if it is an I/O error",
        )

    def _lost(self, host: str, path: bytes, remote: str, version: int) -> Problem:
        kept = "; its earlier versions stay in versions/ (`remote-sync versions list`)"
        return self._note(
            host,
            path,
            "lost",
            f"{GONE[remote]}; its copy under this name is gone from the mirror (a sync "
            "recorded the loss)",
            "nothing to do: no sync fetches it again (a copy put back from a backup of the "
            f"mirror is taken up by the next sync){kept if version > 0 else ''}",
        )

    def _note_in_doubt(self, host: str, path: bytes, what: str) -> Problem:
        return self._note(
            host,
            path,
            "in_doubt",
            f"replaced before its checkpoint was committed ({what})",
            "nothing to do: a sync is putting it in place, or the next sync's recovery "
            "checks it and fetches it whole",
        )

    # -- the index ---------------------------------------------------------------------------

    def check_index(self, host: str) -> None:
        # Gathered, then said: a read a sync spoilt is done again whole, so nothing is said
        # twice (a host's notes are few, and api.check_mirror keeps them all anyway).
        for problem in self.state.steady(lambda db: self._index_notes(db, host)):
            self.say(problem)

    def _index_notes(self, db: sqlite3.Connection, host: str) -> list[Problem]:
        rebuild = f"run `remote-sync index rebuild --dest {shlex.quote(str(self.dest))}`"
        notes: list[Problem] = []
        cur = db.execute(
            "SELECT s.path, s.session_id FROM sessions AS s WHERE s.host = ? AND NOT EXISTS "
            "(SELECT 1 FROM files AS f WHERE f.host = s.host AND f.path = s.path)",
            (host,),
        )
        for path, session_id in cur:
            notes.append(
                self._note(
                    host,
                    bytes(path),
                    "not_in_state",
                    f"the index has session {session_id} for a file the state does not know",
                    f"{rebuild}: it leaves the session out",
                )
            )
        fmt = db.execute("SELECT format FROM hosts WHERE host = ?", (host,)).fetchone()
        reader = find_reader(fmt[0]) if fmt else None
        # A host synced with --no-index has files and no session: none is missing.
        if reader is None or not host_is_indexed(db, host):
            return notes
        for path, size in unindexed_files(db, host):
            if reader.is_transcript(path):
                notes.append(
                    self._note(
                        host,
                        path,
                        "not_indexed",
                        f"a transcript ({_counted(size)}) with no session in the index",
                        f"{rebuild}: it indexes every mirrored transcript",
                    )
                )
        return notes

    # -- strays ------------------------------------------------------------------------------

    def look_for_strays(self, host: str) -> None:
        """Each file (or link, or other non-directory) under ``DIR/<host>/`` the state has no
        row for, a note; a link to a directory is not followed."""
        top = os.fsencode(self.dest / host)
        if not os.path.isdir(top) or os.path.islink(top):
            return
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                self.say(
                    self._note(
                        host,
                        os.path.relpath(directory, top),
                        "unreadable",
                        f"cannot list a directory to look for strays: {exc.strerror or exc}",
                        f"check the permissions of {path_text(directory)}",
                    )
                )
                continue
            files: list[bytes] = []
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    files.append(os.path.relpath(entry.path, top))
            known = self._known(host, files)
            for rel in files:
                if rel not in known:
                    self.say(self._stray(host, rel, "a file the state does not know"))

    def _known(self, host: str, paths: list[bytes]) -> set[bytes]:
        """Those of ``paths`` the state has a row of ``host``'s for, asked a chunk at a time."""
        known: set[bytes] = set()
        for at in range(0, len(paths), _IN_PATHS):
            chunk = paths[at : at + _IN_PATHS]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT path FROM files WHERE host = ? AND path IN ({marks})"
            known.update(bytes(path) for (path,) in self.state.rows(sql, (host, *chunk)))
        return known

    def look_for_stray_hosts(self, hosts: list[str]) -> None:
        """Each entry of DIR that is neither a host's directory nor the state's, a note."""
        names = {os.fsencode(h) for h in hosts} | {CONTROL_DIR.encode()}
        try:
            entries = sorted(os.listdir(os.fsencode(self.dest)))
        except OSError:
            return  # the state was read from it: a listing refused is said by nothing else
        for name in entries:
            if name not in names:
                self.say(self._stray("", name, "not a host this mirror has synced"))

    def _stray(self, host: str, path: bytes, what: str) -> Problem:
        return self._note(
            host,
            path,
            "stray",
            what,
            "a sync neither syncs nor indexes it; move it out of the mirror if it is not "
            "wanted there",
        )


def _mode_of(entry: os.DirEntry[bytes]) -> int:
    """The file type and mode of a listed entry, not following a link: the listing's type
    when it is a regular file (no system call on a file system that gives types), else its
    lstat (cached by the entry)."""
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return entry.stat(follow_symlinks=False).st_mode


def _counted(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"
