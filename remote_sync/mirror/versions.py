"""Kept versions for people: listing the earlier copies a sync kept, copying one out, and
removing those no keep rule keeps.

What it owns: :class:`VersionRow` (one kept version, as ``versions list --json`` prints it and
the library returns it), :func:`list_versions` and :func:`restore_version` (:func:`find_version`
and :class:`KeptVersion` are its two steps, the lookup and the copy, for a caller that tells
their failures apart, as the CLI does for ``--to -``), and :func:`prune_versions` with its
:class:`PruneResult` (``versions prune``). Where a version is put and how it is named and
numbered belongs to the batch's flush, the state and :mod:`~remote_sync.mirror.version_names`
(``durable._put_in_place``,
:meth:`MirrorState.version_path <remote_sync.mirror.state.MirrorState.version_path>`): this
module only reads them. The listing and the restore never take the mirror's lock (they read the
state as ``sessions`` does, so they work while a sync runs) and never write inside the mirror;
a prune takes the lock, as a sync does, and removes version copies only: never a mirrored
file, nothing outside the versions folder, never through a link (a dry run reads as a listing).

The state records how many versions a file has (``files.version``) and, since the ``versions``
table, when each was kept: a version kept before (or by an older remote-sync, or left by a run
killed before its commit) has no keep time, and its file's mtime, the last time the mirror
wrote that copy before a rewrite moved it aside, is the time shown. A listing starts from the
state's rows, as a version's place cannot be read back into its remote path (a name too long
for ``.v<N>`` is cut, with a digest), and takes the versions on disk after the recorded ones
too (a run killed before its commit leaves one there); a version removed by hand is left out,
and so is anything that is no regular file (a symbolic link put there by hand is not followed:
its target is no copy the mirror kept, and ``restore`` refuses it by name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import msgspec

from ..errors import (
    ArgumentError,
    ConfigError,
    MirrorError,
    OutputError,
    RemoteSyncError,
    StateError,
    TransferCancelledError,
    path_bytes,
    path_text,
    showable,
)
from ..index.query import (
    age_seconds,
    as_indexed,
    format_instant,
    state_database,
    tidy_path,
    unreadable_index,
)
from .control import enter_dirs
from .destination import DIR_NO_FOLLOW, READ_NO_FOLLOW, fsync_dir, kind_text, place_text
from .state import MirrorState
from .state_reader import kept_times, read_state
from .version_names import VersionsListings

__all__ = [
    "KeptVersion",
    "PruneResult",
    "VersionRow",
    "find_version",
    "list_versions",
    "prune_versions",
    "restore_version",
]

#: Bytes copied at a time by a restore.
_BLOCK = 1 << 20


class VersionRow(msgspec.Struct):
    """One kept version of a mirrored file."""

    host: str
    path: str  # relative to the host's root; undecodable bytes shown as \\xNN
    version: int  # N of ``<path>.v<N>``: 1 is the oldest
    bytes: int
    #: When the sync kept it (UTC): the commit that counted it. None when the state has no
    #: time for it (kept before the state recorded one, by an older remote-sync, or by a run
    #: killed before its commit): ``modified`` is then the time to go by.
    kept_at: str | None
    modified: str  # the copy's mtime (UTC): when the mirror last wrote it, before it was kept
    session_id: str | None  # the index's id for the file's path, when it is a transcript
    file: str  # where the copy is, relative to the mirror directory (\\xNN as in path)


def list_versions(
    dest: str | os.PathLike[str],
    *,
    host: str | None = None,
    files: Sequence[str] = (),
) -> list[VersionRow]:
    """Every kept version in the mirror at ``dest``, sorted by host, path and version.

    ``host``: only that host's. ``files``: only the files one of them names, as a path
    relative to the host's root (as listings show it, or as typed), a session id or a prefix
    of one. A ``dest`` that is not a mirror, or whose state cannot be read, is the
    :class:`ConfigError` ``sessions list`` gives; a copy that cannot be looked at (no
    permission, an I/O error) is a :class:`MirrorError` naming it."""
    dest = Path(dest)
    found, times = read_state(
        dest, lambda db: (_files_with_versions(db, host, files), kept_times(db, host))
    )
    rows: list[VersionRow] = []
    listings = VersionsListings(MirrorState(dest))
    for file_host, path, recorded, session_id in found:
        known = times.get((file_host, path), {})
        for number, place, st in _kept(listings, file_host, path, recorded):
            if not stat.S_ISREG(st.st_mode):
                continue  # put there by hand (a link, a directory): no copy the mirror kept
            rows.append(_row(dest, file_host, path, number, place, st, known, session_id))
    return rows


def _row(
    dest: Path,
    host: str,
    path: bytes,
    number: int,
    place: Path,
    st: os.stat_result,
    known: dict[int, float],
    session_id: str | None,
) -> VersionRow:
    """The row of version ``number`` of ``host``'s ``path``, at ``place`` (``st`` its lstat;
    ``known`` the file's keep times)."""
    kept_at = known.get(number)
    return VersionRow(
        host,
        path_text(path),
        number,
        st.st_size,
        None if kept_at is None else _instant(kept_at),
        _instant(st.st_mtime),
        session_id,
        place_text(dest, place),
    )


def _instant(timestamp: float) -> str:
    return format_instant(datetime.fromtimestamp(timestamp, UTC))


def _files_with_versions(
    db: sqlite3.Connection, host: str | None, targets: Sequence[str]
) -> list[tuple[str, bytes, int, str | None]]:
    """(host, path, recorded versions, session id) of each file with versions, that ``host``
    and ``targets`` choose (a failed read raised as SQLite's error: the caller reads again,
    or says the state cannot be read)."""
    sql = (
        "SELECT f.host, f.path, f.version, s.session_id FROM files f "
        "LEFT JOIN sessions s ON s.host = f.host AND s.path = f.path WHERE f.version > 0"
    )
    params: list[object] = []
    if host is not None:
        sql += " AND f.host = ?"
        params.append(host)
    rows = db.execute(sql + " ORDER BY f.host, f.path", params).fetchall()
    return [
        (h, bytes(p), v, s)
        for h, p, v, s in rows
        if not targets or any(_names(target, bytes(p), s) for target in targets)
    ]


def _names(target: str, path: bytes, session_id: str | None) -> bool:
    """Whether ``target`` names the file at ``path`` or its session (the id or a prefix)."""
    if _names_path(target, path):
        return True
    return bool(target) and session_id is not None and session_id.startswith(as_indexed(target))


def _names_path(target: str, path: bytes) -> bool:
    """Whether ``target`` is ``path`` as listings show it or as typed, in any spelling
    ``sessions show`` takes (``./a//b``)."""
    try:
        raw = target.encode("utf-8", "surrogateescape")
        shown = path_bytes(target)
    except UnicodeEncodeError:  # a surrogate no decoding made (a library caller's text)
        return False
    return path in (tidy_path(shown), tidy_path(raw))


def _kept(
    listings: VersionsListings, host: str, path: bytes, recorded: int
) -> Iterable[tuple[int, Path, os.stat_result]]:
    """Each version of ``host``'s ``path`` on disk: its number, place and lstat (a symbolic
    link is not followed; the caller judges what is no regular file). One that cannot be
    looked at is a :class:`MirrorError` naming it. ``listings``: the pass's, which lists
    the folder the file's versions are in once for all the files whose versions it holds."""
    state = listings.paths
    where = {"host": host, "path": path_text(path)}
    # One listing of the folder, not a look per number ever counted: a prune leaves a gap
    # at the bottom as long as the versions it removed.
    numbers: Iterable[int]
    try:
        on_disk = listings.versions(host, path)
    except OSError:
        # A folder that cannot be listed (no permission, a loop of links on its way): each
        # number looked at, so the first that cannot be is the error, naming that copy.
        numbers = range(1, state.last_version_on_disk(host, path, recorded) + 1)
    else:
        # Those counted, and any unbroken run after them (a rewrite killed before its commit
        # leaves its old copy there, uncounted: MirrorState.last_version_on_disk).
        last = recorded
        while last + 1 in on_disk:
            last += 1
        numbers = sorted(n for n in on_disk if n <= last)
    for number in numbers:
        place = state.version_path(host, path, number)
        try:
            # Not the listing's: a directory's listing holds names and kinds, no sizes or
            # times, so its entry's stat() would make this same lstat; and a copy put or
            # removed since the listing (held for the folder's other files) is seen as it is.
            st = os.lstat(place)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed by hand: nothing to list
        except OSError as exc:  # no permission, a loop of links, an I/O error
            raise _failed_on("look at", number, state.dest, place, where, exc) from exc
        yield number, place, st


def _failed_on(
    doing: str, version: int, dest: Path, place: Path, where: dict[str, str], exc: OSError
) -> MirrorError:
    """The error of a kept copy that could not be looked at, opened, read or removed."""
    return MirrorError(
        f"cannot {doing} version {version} ({showable(place_text(dest, place))}): "
        f"{exc.strerror or exc}",
        **where,
        hint=f"check the permissions of {showable(path_text(os.fsencode(place.parent)))}",
    )


@dataclass(frozen=True, slots=True)
class KeptVersion:
    """One kept version found by :func:`find_version`, ready to be copied out."""

    dest: Path
    host: str
    path: bytes
    version: int
    place: Path  # the copy, in the mirror's versions folder

    def copy_to(self, out: BinaryIO) -> int:
        """Copy the version's bytes to the binary stream ``out`` (flushed); the bytes copied.
        A read of the copy that fails is a :class:`MirrorError`; a write to ``out`` that
        fails (a full disk under a redirected stdout) an :class:`OutputError`, the mirror
        being fine; a reader that closed the pipe raises BrokenPipeError, for the caller to
        judge (``| head`` read what it wanted: no failure)."""
        with self._open() as source:
            try:
                return _copy(source, out, self._read_failed)
            except BrokenPipeError:
                raise
            except OSError as exc:  # reads fail as MirrorErrors: this is the output's
                raise OutputError(
                    f"cannot write version {self.version} to the output: {exc.strerror or exc}",
                    **self._where,
                    hint="free space on the disk the output goes to (a file stdout is "
                    "redirected to), then run again; the mirror is untouched",
                ) from exc

    def write_to(self, target: Path, *, force: bool = False) -> int:
        """Copy the version to the file ``target`` (see :func:`restore_version`)."""
        _check_target(target, self.dest, force)
        with self._open() as source:
            what = f"version {self.version} of {self.host}: {path_text(self.path)}"
            return _write_file(source, target, force, what, self._read_failed)

    @property
    def _where(self) -> dict[str, str]:
        return {"host": self.host, "path": path_text(self.path)}

    def _read_failed(self, exc: OSError) -> MirrorError:
        return _failed_on("read", self.version, self.dest, self.place, self._where, exc)

    def _open(self) -> BinaryIO:
        """The copy, opened for reading without following a link (one put in its place since
        it was looked at) nor blocking on a FIFO; anything but a regular file is refused."""
        try:
            fd = os.open(self.place, READ_NO_FOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symbolic link
                raise _not_a_copy(self, "a symbolic link") from exc
            where = self._where
            raise _failed_on("open", self.version, self.dest, self.place, where, exc) from exc
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _not_a_copy(self, kind_text(mode))
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def _not_a_copy(kept: KeptVersion, kind: str) -> MirrorError:
    """A version whose place holds no regular file: put there by hand, as a sync keeps only
    files. Its target (a link's) is no copy the mirror kept, and may be any file of this
    user's, so it is not read."""
    return MirrorError(
        f"version {kept.version} ({showable(place_text(kept.dest, kept.place))}) is {kind}, "
        "not a copy a sync kept: not restored",
        host=kept.host,
        path=path_text(kept.path),
        hint="a sync keeps versions as regular files; this one was put there by hand: "
        "look at it, restore another version, or copy what it holds yourself",
    )


def find_version(dest: str | os.PathLike[str], host: str, path: str, version: int) -> KeptVersion:
    """The version ``version`` of ``host``'s ``path`` (or of the one file with versions that
    a session id or prefix names, as :func:`list_versions` takes them), before anything is
    copied: a :class:`ConfigError` when there is none, a :class:`MirrorError` when its place
    holds no regular file or cannot be looked at."""
    dest = Path(dest)
    file_host, raw, recorded, _session = _one_file(dest, host, path)
    listings = VersionsListings(MirrorState(dest))
    found = {n: (place, st) for n, place, st in _kept(listings, file_host, raw, recorded)}
    if version in found:
        place, st = found[version]
        kept = KeptVersion(dest, file_host, raw, version, place)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_copy(kept, kind_text(st.st_mode))
        return kept
    regular = [number for number, (_place, st) in found.items() if stat.S_ISREG(st.st_mode)]
    numbers = ", ".join(f"v{n}" for n in regular) or "none left on disk"
    raise ConfigError(
        f"no version {version} (kept: {numbers})",
        host=file_host,
        path=path_text(raw),
        hint=_list_hint(dest, host),
    )


def restore_version(
    dest: str | os.PathLike[str],
    host: str,
    path: str,
    version: int,
    to: str | os.PathLike[str] | BinaryIO,
    *,
    force: bool = False,
) -> int:
    """Copy version ``version`` of ``host``'s ``path`` (or of the one file with versions that
    a session id or prefix names, as :func:`list_versions` takes them) to ``to``: a file,
    written to a temp file beside it and renamed into place (never into the mirror, and over
    an existing file only with ``force``), or a binary stream (a write to it that fails is an
    :class:`OutputError`, a read of the copy a :class:`MirrorError`). A version's place that
    holds no regular file (a symbolic link put there by hand) is refused, never followed. The
    mirror is only read. Returns the bytes copied."""
    kept = find_version(dest, host, path, version)
    if not isinstance(to, str | os.PathLike):
        return kept.copy_to(to)
    return kept.write_to(Path(to), force=force)


def _one_file(dest: Path, host: str, target: str) -> tuple[str, bytes, int, str | None]:
    """The one file of ``host`` with versions that ``target`` names (a path before a session
    id: a path is exact), else a ConfigError saying which to list."""
    found = read_state(dest, lambda db: _files_with_versions(db, host, [target]))
    found = [row for row in found if _names_path(target, row[1])] or found
    if len(found) == 1:
        return found[0]
    try:
        shown = path_text(tidy_path(path_bytes(target)))
    except UnicodeEncodeError:  # a surrogate no decoding made (a library caller's text)
        shown = target
    if not found:
        raise ConfigError(
            "no kept versions of this file (nor of a session of this id)",
            host=host,
            path=shown,
            hint=_list_hint(dest, host),
        )
    paths = ", ".join(path_text(row[1]) for row in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    raise ConfigError(
        f"names {len(found)} files with versions: {paths}{more}",
        host=host,
        path=shown,
        hint="give the file's path as `remote-sync versions list` shows it",
    )


def _list_hint(dest: Path, host: str) -> str:
    return (
        f"list them: remote-sync versions list --dest {shlex.quote(str(dest))} "
        f"--host {shlex.quote(host)}"
    )


def _check_target(target: Path, dest: Path, force: bool) -> None:
    """Refuse a ``target`` inside the mirror (its files are the sync's: one written over a
    mirrored file may be cut back by recovery, one beside them may take the place a host's
    file or version needs), a directory, one in no directory, an existing one without
    ``force``, and one that cannot be looked at (no permission on its directory: Python
    raises it from ``is_dir``): all before anything is written."""
    try:
        _check_target_place(target, dest, force)
    except OSError as exc:
        raise ConfigError(
            f"cannot look at the file to restore to: {exc.strerror or exc}",
            path=str(target),
            hint="give a file in a directory this user can reach",
        ) from exc


def _check_target_place(target: Path, dest: Path, force: bool) -> None:
    # The directory the rename writes in, symbolic links resolved; the name itself is not
    # followed, as a rename replaces a link rather than writing where it points.
    parent = Path(os.path.realpath(target.parent))
    mirror = Path(os.path.realpath(dest))
    if parent == mirror or mirror in parent.parents:
        raise ConfigError(
            "the file to restore to is inside the mirror",
            path=str(target),
            hint=f"give --to a file outside {dest}; a sync owns every file in it",
        )
    if target.is_dir():
        raise ConfigError(
            "the file to restore to is a directory", path=str(target), hint="give a file name"
        )
    if not parent.is_dir():
        raise ConfigError(
            "the file to restore to is in no directory",
            path=str(target),
            hint="create its directory first, or give another file",
        )
    if not force and os.path.lexists(target):
        raise ConfigError(
            "the file to restore to exists",
            path=str(target),
            hint="give another file, or --force to replace it",
        )


def _copy(
    source: BinaryIO, out: BinaryIO, read_failed: Callable[[OSError], RemoteSyncError]
) -> int:
    """``source`` copied to ``out``, flushed. A read that fails raises ``read_failed``'s
    error (the kept copy's, not the output's); a write's OSError is raised as it is, for the
    caller to say where the output went."""
    copied = 0
    while True:
        try:
            block = source.read(_BLOCK)
        except OSError as exc:
            raise read_failed(exc) from exc
        if not block:
            break
        out.write(block)
        copied += len(block)
    out.flush()
    return copied


def _write_file(
    source: BinaryIO,
    target: Path,
    force: bool,
    what: str,
    read_failed: Callable[[OSError], RemoteSyncError],
) -> int:
    """``source`` copied whole to a temp file beside ``target``, made durable, and put in
    place in one rename (``force``) or link (not over a file that appeared meanwhile): a
    reader sees no file or the whole one, never part of it."""
    temp = ""
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".remote-sync-restore-")
        with os.fdopen(fd, "wb") as out:
            copied = _copy(source, out, read_failed)
            # The kept copy's permissions (a transcript may be private), as cp -p keeps them.
            os.fchmod(out.fileno(), stat.S_IMODE(os.fstat(source.fileno()).st_mode))
            os.fsync(out.fileno())
        if force:
            os.replace(temp, target)
        else:
            _link_new(temp, target)
        fsync_dir(target.parent)
    except FileExistsError:
        raise ConfigError(
            "the file to restore to appeared meanwhile",
            path=str(target),
            hint="give another file, or --force to replace it",
        ) from None
    except OSError as exc:
        raise MirrorError(
            f"cannot write {what}: {exc.strerror or exc}",
            path=str(target),
            hint="free space or fix permissions where the file goes; the mirror is untouched",
        ) from exc
    finally:
        if temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    return copied


def _link_new(temp: str, target: Path) -> None:
    """Put ``temp`` at ``target`` unless a file is there (a link fails on one, where a rename
    would replace it); on a file system without hard links, a rename after one more look."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(temp, target)


# -- pruning --------------------------------------------------------------------------------


class PruneResult(msgspec.Struct):
    """What :func:`prune_versions` removed (or, in a dry run, would remove)."""

    dry_run: bool
    removed: list[VersionRow]  # in a dry run: those that would go
    bytes_freed: int  # their bytes (in a dry run: that would be freed)
    kept: int  # the versions of the files chosen that stay
    #: Versions no rule keeps that were left in place all the same: reached through a
    #: symbolic link put in the versions folder by hand, or changed since they were judged.
    left: list[VersionRow]


@dataclass(frozen=True, slots=True, eq=False)
class _Doomed:
    """A version no keep rule keeps: its row, the file's remote path, its place and its lstat
    when judged. Compared by identity (sets of them)."""

    row: VersionRow
    path: bytes
    place: Path
    st: os.stat_result


def prune_versions(
    dest: str | os.PathLike[str],
    *,
    host: str | None = None,
    files: Sequence[str] = (),
    keep_last: int | None = None,
    keep_within: str | timedelta | None = None,
    dry_run: bool = False,
    cancelled: Callable[[], bool] | None = None,
    errors: list[RemoteSyncError] | None = None,
) -> PruneResult:
    """Remove the kept versions of the mirror at ``dest`` that no keep rule keeps, as
    ``restic forget`` does with snapshots: of each file (``host``'s only, ``files`` only, as
    :func:`list_versions` chooses them), ``keep_last`` keeps its N newest versions,
    ``keep_within`` (``7d``, ``12h``, ``2w``, or a timedelta) those kept within that time of
    now; a version either keeps stays. At least one rule is required (none, or one that keeps
    nothing, is a :class:`ConfigError`): no default removes anything.

    Only version copies go: never a mirrored file, nothing outside the versions folder, never
    through a symbolic link (such a version is left, in :attr:`PruneResult.left`), never a
    version after the ones the state counts (a run killed before its commit left it, and the
    next sync's recovery may put it back in place). A version with no recorded keep time is
    judged by the later of its mtime and ctime (a move into the versions folder sets the
    ctime on Linux file systems), which is never before it was kept: it is kept at least as
    long as its keep time would keep it. Takes the mirror's lock (a sync running is a
    :class:`~remote_sync.errors.LockedError`); ``dry_run`` only reads, as a listing does.
    ``cancelled`` is asked before each file: once it says so, what is removed stays removed
    and a :class:`TransferCancelledError` is raised.

    A copy that cannot be looked at or removed, or a directory of the versions folder that
    cannot be opened or made durable, does not stop the prune: that copy (or the file's
    copies in that directory) stays, and the prune goes on with the others, as ``rsync
    --delete`` and ``restic prune`` do; the state stays true to what went (a copy that fails
    after its keep time was forgotten stays without one, as after a kill). At the end the
    first failure is raised, its hint saying how many others there were and how many
    versions went. Pass a list as ``errors`` to have every failure appended there instead
    and the result returned (the CLI prints it, then each error, and exits 1), as a
    listing's ``errors`` does. A state that cannot be written stops the prune where it is
    (every file left needs a commit too), a failure as the others. A failure before anything
    could be removed (no rule, the lock, a state that cannot be read) is raised either
    way."""
    last, within = _keep_rules(keep_last, keep_within)
    dest = Path(dest)
    state_database(dest)  # no mirror: said before a lock would make one
    now = time.time()
    removed: list[VersionRow] = []
    left: list[VersionRow] = []
    failures: list[MirrorError] = []
    if dry_run:
        found, times = read_state(
            dest, lambda db: (_files_with_versions(db, host, files), kept_times(db, host))
        )
        doomed, kept = _judge(dest, found, times, last, within, now, failures)
        state = MirrorState(dest)  # not opened: only its paths are used, no lock
        for group in doomed:
            _remove(state, group, removed, left, failures, dry_run=True)
    else:
        kept = _prune(dest, host, files, last, within, now, cancelled, removed, left, failures)
    result = PruneResult(dry_run, removed, sum(r.bytes for r in removed), kept, left)
    if failures:
        _say_what_went(failures, removed, dry_run)
        if errors is None:
            raise failures[0]
        errors.extend(failures)
    return result


def _prune(
    dest: Path,
    host: str | None,
    files: Sequence[str],
    last: int | None,
    within: float | None,
    now: float,
    cancelled: Callable[[], bool] | None,
    removed: list[VersionRow],
    left: list[VersionRow],
    failures: list[MirrorError],
) -> int:
    """:func:`prune_versions` once its rules are read, not a dry run: the removal under the
    lock, what went added to ``removed``, what stays to ``left`` and what failed to
    ``failures``; how many versions stay."""
    with MirrorState(dest) as state:
        # The rows forgotten must be on disk before the files go, power loss or not (a
        # sync's NORMAL lets the last commits go with the power).
        state.db.execute("PRAGMA synchronous=FULL")
        try:
            found = _files_with_versions(state.db, host, files)
            times = kept_times(state.db, host)
        except sqlite3.Error as exc:  # a damaged database
            raise unreadable_index(dest, exc) from exc
        doomed, kept = _judge(dest, found, times, last, within, now, failures)
        for group in doomed:
            if cancelled is not None and cancelled():
                raise TransferCancelledError(
                    "cancelled",
                    path=str(dest),
                    hint=f"cancelled on request after {len(removed)} of the versions to go "
                    "were removed; the rest are kept: prune again to finish",
                )
            try:
                _remove(state, group, removed, left, failures, dry_run=False)
            except StateError as exc:
                # The state cannot be written (a full disk): every file left needs a commit
                # too, so the prune stops here rather than say the same error for each (the
                # last failure: _say_what_went tells it by that).
                failures.append(exc)
                break
    return kept


def _say_what_went(failures: list[MirrorError], removed: list[VersionRow], dry_run: bool) -> None:
    """The first of a prune's ``failures`` (the one raised without ``errors``, all a library
    caller then learns), its hint made to say what the prune did besides: it went on past
    each, or stopped at a state it could not write (then the last failure, which says so
    too)."""
    gone = sum(r.bytes for r in removed)
    others = len(failures) - 1
    also = f" and {others} other failure{'s' if others != 1 else ''}" if others else ""
    did = "would be removed" if dry_run else "were removed"
    stopped = isinstance(failures[-1], StateError)
    if stopped and others:
        failures[-1].hint = f"{failures[-1].hint}; the prune stopped there, the versions left stay"
        how = f"the prune went on past it{also}, the last a state it could not write: it stopped"
        stay = "those it failed on and the versions left stay"
    elif stopped:
        how, stay = "the prune stopped there", "the versions left stay"
    else:
        how, stay = f"the prune went on{also}", "those it failed on stay"
    failures[0].hint = (
        f"{failures[0].hint}; {how}: {len(removed)} versions {did} ({gone} bytes), {stay}: "
        "prune again to finish"
    )


def _keep_rules(
    keep_last: int | None, keep_within: str | timedelta | None
) -> tuple[int | None, float | None]:
    """The rules as a count and seconds, each None when not given; a ConfigError for no rule,
    or one that keeps nothing or cannot be read (the CLI's words too: it checks them here), an
    :class:`ArgumentError` for a library caller's value of the wrong type."""
    hint = (
        "give --keep-last N (keep_last) and/or --keep-within DURATION (keep_within, such as "
        "7d or 12h); --dry-run shows what would go"
    )
    if keep_last is None and keep_within is None:
        raise ConfigError("prune needs a keep rule: without one it would remove nothing", hint=hint)
    # A type the CLI cannot give (argparse makes --keep-last an int, --keep-within a string):
    # told as a library call's bad argument, with what to pass, not as a rule keeping nothing.
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)):
        raise ArgumentError(
            f"keep_last must be an int or None, not {type(keep_last).__name__}",
            hint=f"pass the number of versions to keep of each file, such as keep_last=3 "
            f"(not {keep_last!r}), or None for no such rule",
        )
    if keep_within is not None and not isinstance(keep_within, str | timedelta):
        raise ArgumentError(
            f"keep_within must be a str, a timedelta or None, not {type(keep_within).__name__}",
            hint='pass a duration such as keep_within="7d" or timedelta(days=7), or None for '
            "no such rule",
        )
    if keep_last is not None and keep_last < 1:
        raise ConfigError(
            f"keep_last (--keep-last) must be a whole number of at least 1, not {keep_last!r}",
            hint="a rule that keeps nothing is no rule: " + hint,
        )
    within: float | None = None
    if isinstance(keep_within, timedelta):
        within = keep_within.total_seconds()
    elif isinstance(keep_within, str):
        seconds = age_seconds(keep_within)
        within = None if seconds is None else float(seconds)
        if within is None:
            raise ConfigError(
                f"cannot read the duration {keep_within!r} (keep_within, --keep-within)",
                hint="give a number and a unit: 30m, 12h, 7d, 2w",
            )
    if within is not None and within <= 0:
        raise ConfigError(
            f"keep_within (--keep-within) must be longer than 0, not {keep_within!s}",
            hint="a rule that keeps nothing is no rule: " + hint,
        )
    return keep_last, within


def _judge(
    dest: Path,
    found: list[tuple[str, bytes, int, str | None]],
    times: dict[tuple[str, bytes], dict[int, float]],
    last: int | None,
    within: float | None,
    now: float,
    failures: list[MirrorError],
) -> tuple[list[list[_Doomed]], int]:
    """The versions no rule keeps of the files ``found`` (of :func:`_files_with_versions`;
    ``times``: their keep times), one list per file (oldest first), and how many stay. A
    file whose versions cannot all be looked at is left whole, its error in ``failures``."""
    doomed: list[list[_Doomed]] = []
    kept = 0
    listings = VersionsListings(MirrorState(dest))
    for file_host, path, recorded, session_id in found:
        known = times.get((file_host, path), {})
        try:
            versions = [
                (number, place, st)
                for number, place, st in _kept(listings, file_host, path, recorded)
                if stat.S_ISREG(st.st_mode)  # what else is there is no copy a sync kept
            ]
        except MirrorError as exc:
            failures.append(exc)
            continue
        # Only the versions the state counts are judged: one after them is a killed run's,
        # which the next sync's recovery may put back as the mirrored file.
        judged = [v for v in versions if v[0] <= recorded]
        kept += len(versions) - len(judged)
        group: list[_Doomed] = []
        for newest, (number, place, st) in enumerate(reversed(judged)):
            at = known.get(number, max(st.st_mtime, st.st_ctime))
            if (last is not None and newest < last) or (within is not None and at >= now - within):
                kept += 1
            else:
                row = _row(dest, file_host, path, number, place, st, known, session_id)
                group.append(_Doomed(row, path, place, st))
        if group:
            doomed.append(group[::-1])
    return doomed, kept


def _places(
    state: MirrorState, group: list[_Doomed], failures: list[MirrorError]
) -> tuple[dict[Path, int], set[_Doomed], set[_Doomed]]:
    """The directories of ``group``'s versions, opened from the top of the versions tree one
    name at a time without following a link (a directory of it that is a link put there by
    hand leads out of it: what is removed must be in it), the versions that are not as they
    were judged (reached through such a link, or no longer the regular file looked at): these
    are left; and those that could not be looked at (their directory not opened, their lstat
    refused), each error added to ``failures``. The caller closes the descriptors."""
    fds: dict[Path, int] = {}
    unopened: set[Path] = set()
    unsure: set[_Doomed] = set()
    failed: set[_Doomed] = set()
    try:
        for doomed in group:
            parent = doomed.place.parent
            if parent not in fds and parent not in unopened:
                try:
                    fds[parent] = _open_dir(state.versions_dir, parent)
                except MirrorError as exc:
                    exc.host = doomed.row.host
                    failures.append(exc)
                    unopened.add(parent)
            if parent in unopened:
                failed.add(doomed)
                continue
            try:
                st = _lstat_at(fds[parent], state.dest, doomed)
            except MirrorError as exc:
                failures.append(exc)
                failed.add(doomed)
                continue
            if (
                st is None
                or not stat.S_ISREG(st.st_mode)
                or (st.st_dev, st.st_ino) != (doomed.st.st_dev, doomed.st.st_ino)
            ):
                unsure.add(doomed)
    except BaseException:
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
        raise
    return {parent: fd for parent, fd in fds.items() if fd >= 0}, unsure, failed


def _lstat_at(fd: int, dest: Path, doomed: _Doomed) -> os.stat_result | None:
    """The lstat of ``doomed``'s copy in the directory ``fd`` (-1: none reached), None when
    there is none."""
    if fd < 0:
        return None
    try:
        return os.stat(doomed.place.name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        where = {"host": doomed.row.host, "path": doomed.row.path}
        raise _failed_on("look at", doomed.row.version, dest, doomed.place, where, exc) from exc


def _open_dir(versions_dir: Path, parent: Path) -> int:
    """``parent`` opened from ``versions_dir`` down (see :func:`_places`); -1 when a name on
    the way is a link, no directory, or one that leaves the tree (``..``)."""
    # A version lies at least in its host's directory: ``parent`` is below the tree's top.
    names = os.fsencode(parent.relative_to(versions_dir)).split(b"/")
    if any(name in (b"", b".", b"..") for name in names):
        return -1
    try:
        top = os.open(versions_dir, DIR_NO_FOLLOW)
        try:
            return enter_dirs(top, names)
        finally:
            os.close(top)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return -1
        raise MirrorError(
            f"cannot open a directory of the versions folder: {exc.strerror or exc}",
            path=str(parent),
            hint="check its permissions; nothing in it was removed",
        ) from exc


def _remove(
    state: MirrorState,
    group: list[_Doomed],
    removed: list[VersionRow],
    left: list[VersionRow],
    failures: list[MirrorError],
    *,
    dry_run: bool,
) -> None:
    """Remove one file's ``group`` of versions (``dry_run``: only look at them), adding the
    rows of those removed (that would be) to ``removed`` as each goes, of those that must
    stay to ``left``, and the error of each copy or directory that fails to ``failures``,
    going on with the others. A state that cannot be written is raised (a
    :class:`StateError`), before any copy of the group is removed."""
    fds, unsure, failed = _places(state, group, failures)
    try:
        going = [doomed for doomed in group if doomed not in unsure and doomed not in failed]
        left += [doomed.row for doomed in group if doomed in unsure]
        if dry_run or not going:
            removed += [doomed.row for doomed in going]
            return
        host, path = going[0].row.host, going[0].path
        # The rows first, committed (and, synchronous=FULL, on disk), then the files: killed
        # in between, the state claims no version that is gone; a copy left without its row
        # lists with its mtime, as one kept before keep times were recorded, and the next
        # prune judges it so. The other order would leave rows of copies that are gone.
        # ``files.version`` stays: it numbers the next version, which must never take a
        # number a removed one had (a keep time could then describe the wrong copy).
        state.forget_versions(host, path, [doomed.row.version for doomed in going])
        for doomed in going:
            try:
                os.unlink(doomed.place.name, dir_fd=fds[doomed.place.parent])
            except FileNotFoundError:
                pass  # gone meanwhile: removed by hand, nothing of it to free
            except OSError as exc:
                # Said, and the others go on (as rsync --delete and restic prune do): the
                # copy stays without its keep time, as after a kill, and the next prune
                # judges it by its mtime.
                where = {"host": doomed.row.host, "path": doomed.row.path}
                failures.append(
                    _failed_on("remove", doomed.row.version, state.dest, doomed.place, where, exc)
                )
                continue
            removed.append(doomed.row)
        for parent, fd in fds.items():
            try:
                os.fsync(fd)  # the removals durable, as a sync's renames are
            except OSError as exc:  # an I/O error: said as the mirror's, not a traceback
                failures.append(
                    MirrorError(
                        f"cannot sync a directory of the versions folder: {exc.strerror or exc}",
                        host=host,
                        path=str(parent),
                        hint="check the destination's file system (its log: an I/O error?); "
                        "the versions said removed are unlinked, but may come back after a "
                        "power loss",
                    )
                )
    finally:
        for fd in fds.values():
            os.close(fd)
