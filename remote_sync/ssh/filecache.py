"""Readings of local files kept while the files are as they were.

What it owns: what tells one version of a file from another without reading it
(:func:`file_version`: size, times of change, inode; none for a file changed within
:data:`_RECENT_NS`, whose next change might not show), the same of a set of files some of
which may be missing (:func:`files_version`), and the bounded tables such readings are
kept in (:func:`keep_bounded`, the oldest dropped). The known_hosts files
(:mod:`~remote_sync.ssh.hostkeys`), the ssh_config's walk and lookup
(:mod:`~remote_sync.ssh.lookup`) and the private keys' load
(:mod:`~remote_sync.ssh.options`) are kept so: every connection of a run reads the same
files, and every round of a sync looks every host up again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

#: A file changed less than this long ago (ns) is not kept: the file system's clock ticks
#: coarsely (a few ms), and a write in the same tick as our reading, of the same size,
#: would leave its version as it was (git's "racily clean" index entries).
_RECENT_NS = 2_000_000_000


def file_version(path: str, now_ns: int) -> tuple[object, ...] | None:
    """What tells one version of the file ``path`` from another without reading it: its
    size, times of change (ns) and inode. None for a file changed within
    :data:`_RECENT_NS` of ``now_ns``, whose next change might not show, and for one that
    cannot be looked at: the reading that follows may find it (it appeared meanwhile), and
    what it read, kept under a version that says nothing of it, would be found again for a
    file gone since."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if max(st.st_mtime_ns, st.st_ctime_ns) > now_ns - _RECENT_NS:
        return None
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def files_version(paths: Iterable[str], now_ns: int) -> tuple[object, ...] | None:
    """The version of each of ``paths`` (:func:`file_version`); a missing one's is its
    absence, as a file that appears later gives another version. None when one changed
    within :data:`_RECENT_NS` of ``now_ns``, or is there but cannot be looked at."""
    versions: list[object] = []
    for path in paths:
        version = file_version(path, now_ns)
        if version is None and os.path.lexists(path):
            return None
        versions.append(version or (path, None))
    return tuple(versions)


def keep_bounded(kept: dict[Any, Any], key: object, value: object, limit: int) -> None:
    """``kept[key] = value``, the oldest entries dropped beyond ``limit``."""
    kept.pop(key, None)
    while len(kept) >= limit:
        del kept[next(iter(kept))]
    kept[key] = value
