"""How kept versions are named and numbered in the versions tree.

What it owns: a version's name (``<name>.v<N>``, cut and marked with a digest where it would
pass NAME_MAX; a directory whose name ends like a version's given one more ``~``:
:func:`version_name`, :func:`version_dir_name`), the grouping of one folder's names by the
file they may be versions of (:func:`group_versions`, :func:`numbered_versions`), the numbers
a sync's round gives the copies it keeps (:class:`VersionNumbers`) and the folders listed once
each for a pass over files in path order (:class:`VersionsListings`). Where a file's versions
go is :meth:`MirrorState.version_path <remote_sync.mirror.state.MirrorState.version_path>`,
built from these names; listing, restoring and pruning them is
:mod:`remote_sync.mirror.versions`'.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import MirrorState


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


def version_name(name: bytes, version: int) -> bytes:
    """The name of ``name``'s version ``version`` in the versions tree."""
    return _fit_name(name, b".v%d" % version, cut=bool(_LIKE_CUT_FILE.search(name)))


def version_dir_name(segment: bytes) -> bytes:
    """A remote directory's name in the versions tree, never one a version could have, nor
    the name another directory's cut form has."""
    if _LIKE_CUT_DIR.search(segment):
        return _fit_name(segment, b"~", cut=True)
    if _VERSION_LIKE.search(segment):
        return _fit_name(segment, b"~")
    return segment


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
        if version_name(name, number) == entry
    }


class VersionNumbers:
    """The numbers of the versions in the folders of the versions tree where one host's round
    keeps copies (see ``durable._put_in_place``): each folder listed once in the round, the
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
        while _exists_at(folder, version_name(name, number)):
            number += 1
        return number

    def kept(self, state: MirrorState, host: str, path: bytes, number: int) -> None:
        """Version ``number`` of ``host``'s ``path`` was just put in its folder."""
        entry = version_name(path.rpartition(b"/")[2], number)
        groups = self._folders.setdefault(state.versions_folder(host, path), {})
        for key, found in group_versions([entry]).items():
            groups.setdefault(key, []).extend(found)

    def taken_back(self, state: MirrorState, host: str, path: bytes, number: int) -> None:
        """Version ``number`` of ``host``'s ``path``, just kept, was moved out again."""
        entry = version_name(path.rpartition(b"/")[2], number)
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
