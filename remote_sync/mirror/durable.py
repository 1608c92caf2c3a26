"""Making a batch of finished files durable: what a batch holds, and its flush.

What it owns: a finished file waiting for its batch's flush (:class:`Pending`, which the
writers of :mod:`remote_sync.mirror.writer` hand over), the batch (:class:`CommitBatch`), the
give-up of items that will not be committed (:func:`give_up`, :func:`discard`), and the flush
itself, :func:`make_durable` (run in a worker thread while the stream goes on), which makes a
taken batch durable: data synced, renames done (a whole file's temp file put in place, the old
copy kept in ``versions/`` first when the new content does not begin with it), directories
synced. Only *then* does the engine commit the checkpoints in one transaction. The syncs are
batched (one ``syncfs(2)`` for a batch of many files, ``fdatasync`` per file for a few); the
guarantee is not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MirrorError, path_text
from ..index.update import IndexUpdate, PackedUpdate
from .destination import fsync_dir, mirror_error
from .state import FileState, MirrorState
from .version_names import VersionNumbers

if TYPE_CHECKING:
    from ..index.worker import IndexJob

log = logging.getLogger(__name__)

#: A batch of at least this many files is made durable by one ``syncfs(2)`` of the destination's
#: file system (2.7x faster than an fsync per file for 505 fresh files); smaller batches sync
#: file by file, so a small incremental round does not flush other processes' dirty data.
SYNCFS_MIN_FILES = 16
#: Directories touched by renames: above this many, one more ``syncfs`` replaces their fsyncs.
SYNCFS_MIN_DIRS = 8


def _makedirs_for(path: Path, host: str, remote_path: bytes, dirs: set[Path]) -> None:
    """Create ``path``'s missing parents; the directory holding each new one goes to ``dirs``
    (a new directory's entry is durable only once its parent is synced)."""
    missing: list[Path] = []
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not missing:
        return  # the usual case: one stat, no mkdir
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise MirrorError(
            "a parent of this path is a file in the mirror (the remote replaced a file by a "
            "directory); the old file is kept",
            host=host,
            path=path_text(remote_path),
            hint="move the conflicting mirror file aside, then run again",
        ) from exc
    except OSError as exc:
        raise mirror_error(exc, host, remote_path, "create its directory") from exc
    dirs.update(created.parent for created in missing)


@dataclass(slots=True)
class Pending:
    """A finished file waiting for the batch flush.

    Held as little as it can be: a fleet's round keeps every finished file until its flush
    (8 hosts x 204 files at once in the benchmark's fleet), so its file is a bare descriptor
    and its temp file a name, not a file object and a ``Path`` (0.6 KB more per file), and
    its facts are packed (:class:`~remote_sync.index.update.PackedUpdate`).
    """

    row: FileState
    #: The file's descriptor (its own, unbuffered: a copy a writer handed over), closed by
    #: the flush or a discard, which set it to -1: a number closed twice could be another
    #: file's by then.
    fd: int
    temp: str | None = None  # WholeWriter: the temp file to rename into place
    category: str = "grown"  # new / grown / rewritten / unchanged; whole fetches: at flush
    #: A file at the path of one the host deleted: new whatever the mirror held there (whose
    #: copy is kept as a version unless it is a prefix of the new content).
    back: bool = False
    versioned: bool = False
    bytes: int = 0
    index: PackedUpdate | IndexUpdate | None = None  # the session's facts, committed with it
    job: IndexJob | None = None  # ...or the index worker's job that computes them
    #: A piece of a file that goes on (see
    #: :meth:`remote_sync.mirror.writer._LineWriter.checkpoint`): its lines are
    #: committed, but the file is not done.
    piece: bool = False
    #: Its checkpoint is committed (set by the engine once its flush's commit is done).
    committed: bool = False
    #: A piece appended in place whose file was given up while its flush ran: the size of
    #: the checkpoint before it, which the file is cut back to should that flush not commit
    #: it (the give-up could only cut back to this piece's end).
    cut_back: int | None = None


@dataclass
class CommitBatch:
    """Finished files not yet durable, taken whole by a flush."""

    state: MirrorState
    items: list[Pending] = field(default_factory=list)
    bytes: int = 0

    def add(self, item: Pending) -> None:
        self.items.append(item)
        self.bytes += item.bytes

    def take(self) -> list[Pending]:
        """The batch so far, leaving it empty (on the event loop, before a flush thread runs)."""
        items, self.items, self.bytes = self.items, [], 0
        return items


def give_up(item: Pending, committed: int | None) -> None:
    """Discard a finished item (see :func:`discard`); an append's file (``committed``: its
    checkpoint's size) is cut back at once, so that no later step of this run sees its new
    bytes."""
    if item.temp is None and committed is not None and item.fd >= 0:
        with contextlib.suppress(OSError):
            os.ftruncate(item.fd, committed)  # else recovery cuts them back on next open
    discard([item])


def discard(items: list[Pending]) -> None:
    """Give up on items that will not be committed: close them, remove their temp files.

    Appended bytes stay on disk beyond the checkpoint; recovery cuts them back on next open.
    """
    for item in items:
        if item.job is not None:
            item.job.drop()
        # Its bytes are not claimed by any checkpoint: a failing close loses nothing.
        with contextlib.suppress(OSError):
            _close(item)
        if item.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.temp)


def _close(item: Pending) -> None:
    """Close ``item``'s descriptor, once (an error of the close is the caller's)."""
    fd, item.fd = item.fd, -1
    if fd >= 0:
        os.close(fd)


@dataclass
class Durable:
    """What a flush made of its batch: items durable and in place, and items that failed."""

    done: list[Pending] = field(default_factory=list)
    failed: list[tuple[Pending, MirrorError]] = field(default_factory=list)


def make_durable(
    state: MirrorState, items: list[Pending], numbers: VersionNumbers | None = None
) -> Durable:
    """Make ``items`` durable and put them in place; returns them for committing.

    ``numbers``: the round's (one host's), which lists each versions folder a copy is kept
    in once for all its flushes; without it, once for this batch.

    Blocking (syncs, renames, comparisons): run it in a worker thread. An item that cannot be
    put in place (a directory where the file goes) is discarded and listed as failed; the
    others go on. A failing sync fails the whole batch (which of its files reached the disk
    is unknown): every item is discarded and a :class:`MirrorError` names the file.
    """
    dirs: set[Path] = set()
    numbers = numbers if numbers is not None else VersionNumbers()
    result = Durable()
    try:
        _sync_data(items)
        for item in items:
            if item.temp is None:
                result.done.append(item)
                continue
            try:
                _put_in_place(state, item, dirs, numbers)
            except MirrorError as exc:
                discard([item])
                result.failed.append((item, exc))
            except OSError as exc:
                discard([item])
                failure = mirror_error(exc, item.row.host, item.row.path, "put the file in place")
                result.failed.append((item, failure))
            else:
                result.done.append(item)
        if len(dirs) >= SYNCFS_MIN_DIRS and _syncfs_of(next(iter(dirs))):
            pass  # one journal commit covers every rename
        else:
            for directory in dirs:
                try:
                    fsync_dir(directory)
                except OSError as exc:
                    raise MirrorError(
                        f"cannot sync a directory of the mirror: {exc.strerror or exc}",
                        path=str(directory),
                        hint="check the destination's file system; a rerun fetches again",
                    ) from exc
    except MirrorError:
        discard(items)
        raise
    return result


def _sync_data(items: list[Pending]) -> None:
    """Every item's bytes on disk; descriptors closed. (Each is unbuffered: the writers
    flushed their buffers when they handed the file over.)"""
    current: Pending | None = None
    try:
        synced = False
        if len(items) >= SYNCFS_MIN_FILES:
            synced = _syncfs(items[0].fd)
        for current in items:
            if not synced:
                # fdatasync: the data and the size, which is all a checkpoint claims (about a
                # quarter cheaper than fsync, which also writes the times).
                os.fdatasync(current.fd)
            _close(current)
    except OSError as exc:
        if current is None:  # syncfs: the whole batch, no one file
            raise MirrorError(
                f"cannot make {len(items)} fetched files durable: {exc.strerror or exc}",
                host=items[0].row.host if items else None,
                hint="check the destination's disk; a rerun fetches them again",
            ) from exc
        raise mirror_error(
            exc, current.row.host, current.row.path, "make the fetched file durable"
        ) from exc


def _syncfs_of(directory: Path) -> bool:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _syncfs(fd)
    finally:
        os.close(fd)


_libc_syncfs: object = None  # the C function once looked up; False where there is none


def _syncfs(fd: int) -> bool:
    """``syncfs(fd)``: True when done, False where unavailable (the caller syncs per file).

    Since Linux 5.8 it reports write-back errors of the file system like fsync does; an error
    raises OSError, exactly as a failing fsync would.
    """
    global _libc_syncfs
    if _libc_syncfs is None:
        _libc_syncfs = _find_syncfs()
    if _libc_syncfs is False:
        return False
    func = _libc_syncfs
    assert callable(func)
    if func(fd) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        _libc_syncfs = False
        return False
    raise OSError(err, os.strerror(err))


def _find_syncfs() -> object:
    if not sys.platform.startswith("linux"):
        return False
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        log.debug("syncfs(2) is not available: syncing file by file")
        return False
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def _put_in_place(
    state: MirrorState, item: Pending, dirs: set[Path], numbers: VersionNumbers
) -> None:
    assert item.temp is not None
    row = item.row
    local = state.local_path(row.host, row.path)
    _makedirs_for(local, row.host, row.path, dirs)
    # One stat of what is in place answers every question below (is it a directory, is
    # there a file, how long is it): the destination's lock keeps other writers out until
    # the rename, so a second look would see the same.
    there = _stat_or_none(local)
    if there is not None and stat.S_ISDIR(there.st_mode) and not local.is_symlink():
        raise MirrorError(
            "the mirror has a directory where the remote has a file",
            host=row.host,
            path=path_text(row.path),
            hint="move the mirror's directory aside (it holds files the host no longer has), "
            "then run again",
        )
    kept: Path | None = None
    folder: int | None = None  # the kept copy's directory, opened with no link followed
    recorded = row.version
    # The versions on disk, not only the recorded ones: a run killed before its commit leaves
    # one the checkpoint does not count (rename() would replace it), and so does a file given
    # up between its pieces (its first piece's flush kept the old copy) that a whole fetch
    # numbered from the round's row. Recovery compares the row with the same count.
    row.version = state.last_version_on_disk(row.host, row.path, row.version)
    try:
        if there is not None and not _is_prefix(local, there.st_size, item.temp, row.size):
            if row.kind == "append" or item.category == "new":
                # The remote rewrote history (or an unknown file sits here, or the copy of a
                # file the host deleted before this one took its path): keep the old copy.
                # Numbered after every version on disk (see above; the destination's lock
                # keeps other writers out), gaps or not: a prune leaves gaps at the bottom, and
                # with the state lost (moved aside) the count starts again at 0 below the
                # copies left. Its folder is listed once in the round (``numbers``), made and
                # entered with no link followed, and the copy renamed in by name there.
                folder = state.open_versions_folder(row.host, row.path, dirs)
                version = numbers.number(state, row.host, row.path, folder, row.version)
                row.version = version
                kept = state.version_path(row.host, row.path, version)
                os.rename(local, kept.name, dst_dir_fd=folder)  # same file system: no copy
                numbers.kept(state, row.host, row.path, version)
                dirs.add(kept.parent)
                item.versioned = True
            if not item.back:  # a file back where one was deleted is new, not a rewrite of it
                item.category = "rewritten"
        elif item.category == "rewritten":
            # Identity changed but the content only grew (e.g. replaced by rename with the
            # same history), or is the same (only touched): nothing to keep apart.
            same = there is not None and there.st_size == row.size
            item.category = "unchanged" if same else "grown"
        try:
            os.rename(item.temp, local)
        except OSError:
            if kept is not None:  # the mirror keeps its copy where it was, not only in versions/
                os.rename(kept.name, local, src_dir_fd=folder)
                numbers.taken_back(state, row.host, row.path, version)
                item.versioned = False
            row.version = recorded
            raise
    finally:
        if folder is not None:
            os.close(folder)
    dirs.add(local.parent)


def _stat_or_none(path: Path) -> os.stat_result | None:
    """``path``'s stat (a link followed), or None where the errors ``Path.exists`` takes
    for no file (a missing path, a parent that is a file, a looping link) say there is
    nothing; any other error raised."""
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _is_prefix(old: Path, old_size: int, new: str, size: int, block: int = 1 << 20) -> bool:
    """Is the content of ``old`` (``old_size`` bytes, its stat's) a prefix of the first
    ``size`` bytes of ``new``?"""
    if old_size > size:
        return False
    with open(old, "rb") as a, open(new, "rb") as b:
        while True:
            x = a.read(block)
            if not x:
                return True
            if b.read(len(x)) != x:
                return False
