"""The destination as a file system: where the mirror holds a file, how its places are opened,
made durable and named in messages, and how its running out of space is told.

What it owns: :func:`mirrored_path` (a host's file in the mirror), how a mirrored file or a
kept copy is opened to be read and a directory of the mirror's state entered, neither through
a symbolic link (:data:`READ_NO_FOLLOW`, :data:`DIR_NO_FOLLOW`), :func:`fsync_dir`, the texts
messages name a place and what it holds by (:func:`place_text`, :func:`kind_text`), and a full
file system or disk quota (:func:`out_of_space`, :func:`nearly_full`, :func:`full_disk_error`,
:func:`full_disk_words`), told alike at the state's open and in the middle of a file, and
the error of a host's file that a write, a sync or a rename of its mirrored copy failed
(:func:`mirror_error`; :func:`only_this_file` tells one that leaves the other files be).
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from pathlib import Path

from ..errors import MirrorError, path_text


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


def fsync_dir(directory: bytes | str | os.PathLike[str]) -> None:
    """Make a directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nearly_full(directory: Path) -> bool:
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


def mirror_error(
    exc: OSError, host: str, path: bytes, doing: str, file: Path | None = None
) -> MirrorError:
    """The error of ``host``'s file ``path`` that ``exc`` failed while we tried to ``doing``
    (``file``: the local file written, when ``exc`` does not name it)."""
    shown = path_text(path)
    if out_of_space(exc):
        # As a full disk at the state's open is told: where, the room left, what to run.
        local = file if file is not None else exc.filename
        where = Path(os.fsdecode(local)).parent if isinstance(local, (str, bytes, Path)) else None
        said, hint = full_disk_words(where, exc, "what was committed is kept")
        whose = " (over this user's quota)" if exc.errno == errno.EDQUOT else ""
        inside = f" in {path_text(os.fsencode(where))}" if where is not None else ""
        return MirrorError(
            f"disk full{whose} while trying to {doing}{inside} ({said})",
            host=host or None,
            path=shown,
            hint=hint,
        )
    if exc.errno == errno.ENAMETOOLONG:
        return MirrorError(
            f"cannot {doing}: the path is too long for the destination's file system",
            host=host or None,
            path=shown,
            hint="sync into a shorter destination path, or exclude this file in the inventory",
        )
    if exc.errno in _ONE_FILE_ERRNOS:
        return MirrorError(
            f"cannot {doing}: {exc.strerror or exc}",
            host=host or None,
            path=shown,
            hint="fix this mirrored file's permissions, or move it aside; the next run "
            "fetches it again",
        )
    return MirrorError(f"cannot {doing}: {exc.strerror or exc}", host=host or None, path=shown)


#: Errors of one mirrored file (its permissions, its name, what is in its place), as opposed to
#: those of the whole destination (disk full, read-only, too many open files, I/O errors).
_ONE_FILE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
)


def only_this_file(exc: MirrorError) -> bool:
    """Does ``exc`` concern one mirrored file only, so that the others can go on?"""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in _ONE_FILE_ERRNOS
