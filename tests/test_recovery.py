"""A run killed between a flush and its commit, files damaged by hand, and conflicts in the
mirror: nothing kept is ever overwritten, no file is spliced, and the index follows."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sshfleet import SSHFleet
from synchelp import ShortThenEIO, append, fault_run, run_cli, session_bytes, write_inventory

from remote_sync.cli import main
from remote_sync.errors import DestinationError, MirrorError, RemoteSyncError, StateError
from remote_sync.events import ErrorEvent, Summary
from remote_sync.formats.readers import get_reader
from remote_sync.index.update import index_local_file, rebuild_index
from remote_sync.mirror import writer as writer_module
from remote_sync.mirror.destination import mirror_error
from remote_sync.mirror.durable import discard, make_durable
from remote_sync.mirror.state import FileState, MirrorState, fingerprint_of
from remote_sync.mirror.writer import AppendWriter, RewriteDetected, WholeWriter

SESSION = b"agents/a/sessions/s.jsonl"
VERSIONS = Path(".remote-sync/versions/h")


def lines(rng: random.Random, n: int, start: int = 0) -> bytes:
    return session_bytes(rng, n, start=start, size=60)


def committed(state: MirrorState, path: bytes, data: bytes, kind: str = "append") -> FileState:
    """``data`` mirrored and committed (with its index row) as a sync would leave it."""
    local = state.local_path("h", path)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    row = FileState("h", path, kind, len(data), len(data), 1.0, 1, 7, fingerprint_of(data[:1024]))
    update = index_local_file(get_reader("openclaw"), "h", path, local, len(data))
    state.commit([row], also=lambda: update.write(state.db))
    return row


def index_rows(dest: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
        return sorted(db.execute("SELECT * FROM sessions"))


def assert_index_is_a_rebuild(dest: Path) -> None:
    before = index_rows(dest)
    rebuild_index(dest)
    assert index_rows(dest) == before


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        state.set_host("h", "openclaw", "/r", "h")
    return dest


# --- recovery, from the states a kill leaves -------------------------------------------------


def test_a_rewrite_renamed_in_before_its_commit_is_not_spliced(dest: Path) -> None:
    rng = random.Random(1)
    old, new = lines(rng, 20), lines(rng, 30, start=100)
    with MirrorState(dest) as state:
        committed(state, SESSION, old)
        # The kill: the old copy went to versions/ and the new one into place, uncommitted.
        kept = state.version_path("h", SESSION, 1)
        kept.parent.mkdir(parents=True)
        os.rename(state.local_path("h", SESSION), kept)
        state.local_path("h", SESSION).write_bytes(new)
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        row = state.host_files("h")[SESSION]
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == new  # not cut to len(old)
    assert kept.read_bytes() == old
    assert (row.size, row.version, row.ino) == (len(new), 1, -1)  # fetched whole next run
    assert row.fingerprint == fingerprint_of(new[:1024])
    assert any("does not match its checkpoint" in n for n in notes)
    assert_index_is_a_rebuild(dest)


def test_a_whole_file_replaced_before_its_commit_is_not_cut_back(dest: Path) -> None:
    path = b"agents/a/sessions/sessions.json"
    with MirrorState(dest) as state:
        committed(state, path, b'{"a": 1}', kind="whole")
        state.local_path("h", path).write_bytes(b'{"a": 1, "b": 2}')  # renamed in, uncommitted
    with MirrorState(dest) as state:
        state.recover(["h"])
        row = state.host_files("h")[path]
    assert (dest / "h" / os.fsdecode(path)).read_bytes() == b'{"a": 1, "b": 2}'
    assert (row.size, row.ino) == (16, -1)


def test_killed_between_the_two_renames_puts_the_old_copy_back(dest: Path) -> None:
    old = lines(random.Random(2), 10)
    with MirrorState(dest) as state:
        committed(state, SESSION, old)
        kept = state.version_path("h", SESSION, 1)
        kept.parent.mkdir(parents=True)
        os.rename(state.local_path("h", SESSION), kept)  # ... and killed
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        row = state.host_files("h")[SESSION]
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == old
    assert not kept.exists()
    assert (row.size, row.version, row.ino) == (len(old), 0, 7)  # as committed
    assert notes == ["h: agents/a/sessions/s.jsonl: put back from versions/ (v1)"]


def placeholder(state: MirrorState, path: bytes, data: bytes | None) -> FileState:
    """A new file's row as a flush writes it before renaming the file into place, and the
    file in place (``data``) or not (None), as a kill before the commit leaves them."""
    row = FileState("h", path, "append", len(data or b""), 0, 3.0, 1, 42, b"")
    state.mark_in_doubt([row])
    if data is not None:
        local = state.local_path("h", path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    return row


def test_a_new_file_renamed_in_before_its_first_commit_is_kept_and_indexed(dest: Path) -> None:
    rng = random.Random(14)
    old, new = lines(rng, 6), lines(rng, 9, start=100)
    other = b"agents/a/sessions/other.jsonl"
    with MirrorState(dest) as state:
        committed(state, SESSION, old)
        placeholder(state, other, new)
        placeholder(state, b"agents/a/sessions/never.jsonl", None)  # killed before its rename
        placeholder(state, b"agents/a/sessions/dir.jsonl", None)
        (dest / "h/agents/a/sessions/dir.jsonl").mkdir()  # its rename failed: in the way
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        rows = state.host_files("h")
    assert sorted(rows) == [other, SESSION]  # the intents alone are forgotten
    row = rows[other]
    # No fingerprint until a round fetches it as the new file it is (and sees a rename).
    assert (row.size, row.ino, row.fingerprint) == (len(new), -1, b"")
    assert notes == [
        f"h: {other.decode()}: found before its first commit ({len(new)} bytes); "
        "it will be fetched whole"
    ]
    assert (dest / "h" / os.fsdecode(other)).read_bytes() == new
    assert [r[1] for r in index_rows(dest)] == [other, SESSION]
    assert_index_is_a_rebuild(dest)
    (dest / "h" / os.fsdecode(other)).unlink()  # removed by hand before it was fetched again
    with MirrorState(dest) as state:
        state.recover(["h"])
        assert sorted(state.host_files("h")) == [SESSION]
    assert_index_is_a_rebuild(dest)


def test_a_file_found_before_its_first_commit_stays_out_of_an_unindexed_mirror(
    dest: Path,
) -> None:
    """A mirror synced with --no-index has files and no sessions: recovery indexes nothing."""
    rng = random.Random(15)
    with MirrorState(dest) as state:
        state.commit([FileState("h", SESSION, "append", 10, 10, 1.0, 1, 7, b"x")])
        (dest / "h" / os.fsdecode(SESSION)).parent.mkdir(parents=True)
        (dest / "h" / os.fsdecode(SESSION)).write_bytes(b"0123456789")
        placeholder(state, b"agents/a/sessions/other.jsonl", lines(rng, 3))
    with MirrorState(dest) as state:
        state.recover(["h"])
        assert len(state.host_files("h")) == 2
    assert index_rows(dest) == []


def test_a_file_marked_in_doubt_before_its_replacement_is_not_cut_back(dest: Path) -> None:
    """A rewrite whose old copy was a prefix of the new keeps no version: only the mark that
    the flush wrote before renaming tells recovery the longer file is not an append."""
    rng = random.Random(12)
    old = lines(rng, 10)
    new = old[:-200] + lines(rng, 10, start=50)  # same start, different history
    with MirrorState(dest) as state:
        row = committed(state, SESSION, old)
        state.mark_in_doubt([row])
        state.local_path("h", SESSION).write_bytes(new)  # renamed in; killed before commit
    with MirrorState(dest) as state:
        state.recover(["h"])
        row = state.host_files("h")[SESSION]
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == new
    assert (row.size, row.ino) == (len(new), -1)
    assert_index_is_a_rebuild(dest)


def test_appended_bytes_beyond_the_checkpoint_are_still_cut_back(dest: Path) -> None:
    rng = random.Random(3)
    old = lines(rng, 10)
    with MirrorState(dest) as state:
        committed(state, SESSION, old)
        with open(state.local_path("h", SESSION), "ab") as f:
            f.write(lines(rng, 3, start=10) + b'{"partial')
    with MirrorState(dest) as state:
        state.recover(["h"])
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == old


@pytest.mark.parametrize("small", [False, True])
def test_a_file_edited_by_hand_to_more_bytes_is_not_cut_back(dest: Path, small: bool) -> None:
    """Recovery took every append-kind file longer than its checkpoint for one a killed run
    appended to, and cut it back: a line put in at the top by hand (or an older, longer
    version copied over it) left the edit's first bytes in the mirror as the host's, and as
    the host's file had not changed, no later sync looked at it again. A file whose head is
    not the committed one's is followed and fetched whole instead, as one cut by hand is."""
    rng = random.Random(21)
    old = lines(rng, 2 if small else 20)
    assert (len(old) < 1024) is small
    edited = b'{"note": "mine"}\n' + old
    with MirrorState(dest) as state:
        committed(state, SESSION, old)
        state.local_path("h", SESSION).write_bytes(edited)
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        row = state.host_files("h")[SESSION]
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == edited
    assert (row.size, row.ino) == (len(edited), -1)  # fetched whole and compared next round
    assert row.fingerprint == fingerprint_of(edited[:1024])
    assert any("does not match its checkpoint" in n for n in notes), notes
    assert_index_is_a_rebuild(dest)


def test_an_older_longer_version_copied_over_the_file_is_not_cut_back(dest: Path) -> None:
    """A kept version copied back over the mirrored file, longer and sharing its first KiB
    (a compaction keeps the session's header): its head matched the checkpoint's, so
    recovery cut it back, leaving the version's first bytes as the host's. An append is
    committed at a line end; there the version has none, so it is fetched whole."""
    rng = random.Random(22)
    header = lines(rng, 20)
    assert len(header) > 1024
    now = header + b'{"now": 1}\n'
    version = header + b'{"before compaction": "' + b"x" * 500 + b'"}\n'
    with MirrorState(dest) as state:
        committed(state, SESSION, now)
        state.local_path("h", SESSION).write_bytes(version)
    with MirrorState(dest) as state:
        state.recover(["h"])
        row = state.host_files("h")[SESSION]
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == version
    assert (row.size, row.ino) == (len(version), -1)  # fetched whole and compared next round


def test_a_file_cut_by_hand_takes_its_index_along(dest: Path) -> None:
    rng = random.Random(4)
    with MirrorState(dest) as state:
        committed(state, SESSION, lines(rng, 20))
        committed(state, b"agents/a/sessions/gone.jsonl", lines(rng, 5))
        with open(state.local_path("h", SESSION), "r+b") as f:
            f.truncate(600)
        state.local_path("h", b"agents/a/sessions/gone.jsonl").unlink()
    with MirrorState(dest) as state:
        state.recover(["h"])
    (row,) = index_rows(dest)  # the session with nothing left is gone
    assert row[1] == SESSION and 0 < row[5] < 600  # the bytes of the whole lines left
    assert_index_is_a_rebuild(dest)


def test_a_file_removed_by_hand_is_noted_once(dest: Path) -> None:
    """A file removed from the mirror by hand (a session the host deleted, pruned) is noted
    by the first recovery, which records it; it used to be noted again on every run, each time
    saying it "will be fetched whole", which it never is once the host has deleted it."""
    rng = random.Random(18)
    gone = b"agents/a/sessions/gone.jsonl"
    with MirrorState(dest) as state:
        committed(state, gone, lines(rng, 5))
        state.local_path("h", gone).unlink()
    with MirrorState(dest) as state:
        (note,) = state.recover(["h"])
        assert "gone.jsonl" in note and "missing" in note
    for _ in range(2):
        with MirrorState(dest) as state:
            assert state.recover(["h"]) == []
            row = state.host_files("h")[gone]
            assert (row.size, row.ino) == (0, -1)  # still unknown: fetched whole if it comes back


@pytest.mark.parametrize("remote", ["deleted", "renamed"])
def test_a_removed_copy_of_a_file_the_host_deleted_is_not_said_to_be_fetched_again(
    dest: Path, remote: str
) -> None:
    """A file the host deleted (or renamed away) whose copy was then removed from the mirror:
    recovery's note says the copy is lost, not that it "will be fetched whole", which no round
    does for a file the host no longer has; the loss is recorded as for any missing file."""
    rng = random.Random(20)
    gone = b"agents/a/sessions/gone.jsonl"
    with MirrorState(dest) as state:
        row = committed(state, gone, lines(rng, 5))
        row.state = remote
        state.commit([row])
        state.local_path("h", gone).unlink()
    with MirrorState(dest) as state:
        (note,) = state.recover(["h"])
        assert "gone.jsonl" in note and "lost" in note and "fetched" not in note
        row = state.host_files("h")[gone]
        assert (row.size, row.ino, row.state) == (0, -1, remote)


def test_a_mirrored_file_where_the_user_put_a_directory_or_under_a_file_is_missing(
    dest: Path,
) -> None:
    """A directory put in a mirrored file's place, or a file in its parent's: recovery notes
    the file as missing (the next round fails it alone, with a hint), instead of stopping
    the run at the mirror's opening for every host ("Is a directory", "Not a directory")."""
    rng = random.Random(19)
    in_dir = b"agents/b/sessions/s.jsonl"
    with MirrorState(dest) as state:
        committed(state, SESSION, lines(rng, 5))
        committed(state, in_dir, lines(rng, 5))
        state.local_path("h", SESSION).unlink()
        state.local_path("h", SESSION).mkdir()
        shutil.rmtree(state.local_path("h", b"agents/b"))
        state.local_path("h", b"agents/b").write_bytes(b"mine")
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        assert len(notes) == 2 and all("(missing)" in note for note in notes)
        rows = state.host_files("h")
        assert [(rows[p].size, rows[p].ino) for p in (SESSION, in_dir)] == [(0, -1)] * 2


# --- writing ---------------------------------------------------------------------------------


def rewrite(
    state: MirrorState, row: FileState, data: bytes, category: str = "rewritten"
) -> list[object]:
    """Fetch ``data`` whole over ``row``'s file and flush it, as a sync does."""
    state.tmp_dir.mkdir(exist_ok=True)
    new = FileState("h", row.path, row.kind, 0, len(data), 2.0, 1, 8, b"", version=row.version)
    writer = WholeWriter(state, new, lines_only=True, category=category)
    writer.write(data)
    durable = make_durable(state, [writer.finish()])
    state.commit([item.row for item in durable.done])
    return [*durable.done, *durable.failed]


def test_a_version_left_unrecorded_is_never_overwritten(dest: Path) -> None:
    rng = random.Random(5)
    first, second, third = lines(rng, 5), lines(rng, 6, start=10), lines(rng, 7, start=20)
    with MirrorState(dest) as state:
        row = committed(state, SESSION, second)
        unrecorded = state.version_path("h", SESSION, 1)  # a killed run's, row.version is 0
        unrecorded.parent.mkdir(parents=True)
        unrecorded.write_bytes(first)
        rewrite(state, row, third)
        row = state.host_files("h")[SESSION]
    assert row.version == 2
    assert unrecorded.read_bytes() == first
    assert (dest / VERSIONS / "agents/a/sessions/s.jsonl.v2").read_bytes() == second
    assert (dest / "h" / os.fsdecode(SESSION)).read_bytes() == third


def test_a_session_with_the_longest_name_keeps_its_versions(dest: Path) -> None:
    """A 255-byte name has no room for ``.vN``: its versions get a shortened name with a digest
    of the whole one, so a rewrite still keeps the old copy, and each version its own file."""
    rng = random.Random(15)
    long_path = b"agents/a/sessions/" + b"x" * 249 + b".jsonl"
    contents = [lines(rng, 3), lines(rng, 4, start=10), lines(rng, 5, start=20)]
    with MirrorState(dest) as state:
        row = committed(state, long_path, contents[0])
        for data in contents[1:]:
            (done,) = rewrite(state, row, data)
            assert done.versioned  # type: ignore[attr-defined]
            row = state.host_files("h")[long_path]
        kept = [state.version_path("h", long_path, v) for v in (1, 2)]
    assert [p.read_bytes() for p in kept] == contents[:2]
    assert all(len(p.name.encode()) <= 255 for p in kept) and kept[0] != kept[1]
    assert (dest / "h" / os.fsdecode(long_path)).read_bytes() == contents[2]


@pytest.mark.parametrize("case", ["new", "grown", "rewritten"])
def test_a_whole_file_is_put_in_place_after_one_look_at_its_place(
    dest: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A whole file's flush asks one stat of what is in its place (is it a directory, is
    there a file, how long is it), where it asked up to five (``is_dir``, ``exists`` twice,
    ``stat`` twice); what it does with the answer is as before: a new file in place, a
    copy that only grew replaced, a rewritten one kept as a version."""
    rng = random.Random(21)
    old = lines(rng, 5)
    data = {"new": old, "grown": old + lines(rng, 2, start=5), "rewritten": lines(rng, 6, 9)}
    with MirrorState(dest) as state:
        row = (
            committed(state, SESSION, old)
            if case != "new"
            else FileState("h", SESSION, "append", 0, 0, 1.0, 1, 7, b"")
        )
        local = os.fspath(state.local_path("h", SESSION))
        looks: list[str] = []
        for name in ("stat", "lstat"):
            real = getattr(os, name)

            def counted(
                path: Any, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any
            ) -> os.stat_result:
                if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path) == local:
                    looks.append(_name)
                return _real(path, *args, **kwargs)  # type: ignore[no-any-return]

            monkeypatch.setattr(os, name, counted)
        (done,) = rewrite(state, row, data[case], "new" if case == "new" else "rewritten")
        monkeypatch.undo()
        assert looks == ["stat"]
        assert done.category == case  # type: ignore[attr-defined]
        assert done.versioned == (case == "rewritten")  # type: ignore[attr-defined]
        assert Path(local).read_bytes() == data[case]
        if case == "rewritten":
            assert state.version_path("h", SESSION, 1).read_bytes() == old


@pytest.mark.parametrize("first", ["file", "directory"])
def test_a_file_and_a_directory_named_like_its_version_keep_both_versions(
    dest: Path, first: str
) -> None:
    """The remote holds ``d`` and ``d.v1/x`` at once; both are rewritten, in either order."""
    rng = random.Random(13)
    file_path, inner = b"agents/a/sessions/d", b"agents/a/sessions/d.v1/x"
    old = {file_path: lines(rng, 3), inner: lines(rng, 4, start=10)}
    new = {file_path: lines(rng, 5, start=20), inner: lines(rng, 6, start=30)}
    order = [file_path, inner] if first == "file" else [inner, file_path]
    with MirrorState(dest) as state:
        rows = {path: committed(state, path, old[path]) for path in order}
        for path in order:
            (done,) = rewrite(state, rows[path], new[path])
            assert done.versioned, done  # type: ignore[attr-defined]
        kept = {path: state.version_path("h", path, 1) for path in order}
        versions = {path: row.version for path, row in state.host_files("h").items()}
    assert versions == {file_path: 1, inner: 1}
    assert {path: kept[path].read_bytes() for path in order} == old
    assert {path: (dest / "h" / os.fsdecode(path)).read_bytes() for path in order} == new


def _cut_forms() -> list[str]:
    """Remote names that are exactly what a longer name is cut to: a directory named like
    the cut of a long version-like one (with its ``~``, and without), a file named like the
    cut of a long one (before ``.v1``)."""
    from remote_sync.mirror.version_names import _fit_name

    long_dir, long_file = b"e" * 254 + b".v1", b"f" * 255
    cut_dir = _fit_name(long_dir, b"~")
    cut_file = _fit_name(long_file, b".v1")[: -len(b".v1")]
    return [os.fsdecode(name) for name in (cut_dir, cut_dir[:-1], cut_file, long_file)]


_HEX = "0123456789abcdef"
_SEGMENTS = st.sampled_from(
    [
        *("d", "d.v1", "d.v1~", "d.v1~~", "d~", "x.v12", "e" * 254 + ".v1"),
        *(f"a~{_HEX}", f"a~{_HEX}~", f"a~{_HEX}~~", f"a~{_HEX}.v1"),
        *_cut_forms(),
    ]
)


def test_names_are_placed_as_before_unless_they_look_cut(dest: Path) -> None:
    """Only a name that ends like a cut one moves: a file's stem ``~<16 hex>``, a directory's
    ``~<16 hex>~``. Versions kept before stay where the tool looks for them."""
    with MirrorState(dest) as state:
        base = state.versions_dir / "h"
        for path, version, place in [
            (b"a/s.jsonl", 3, "a/s.jsonl.v3"),
            (b"x.v1/y", 2, "x.v1~/y.v2"),
            (f"d~{_HEX}/f".encode(), 1, f"d~{_HEX}/f.v1"),
            (f"d/a~{_HEX}~".encode(), 1, f"d/a~{_HEX}~.v1"),
        ]:
            assert state.version_path("h", path, version) == base / place
        moved = state.version_path("h", f"d~{_HEX}~/a~{_HEX}".encode(), 1)
        assert moved.parent.name.startswith(f"d~{_HEX}~~") and moved.parent.name.endswith("~")
        assert moved.name.startswith(f"a~{_HEX}~") and moved.name.endswith(".v1")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(_SEGMENTS, min_size=1, max_size=4), st.integers(1, 12)),
        min_size=2,
        max_size=6,
    )
)
def test_every_version_has_a_place_of_its_own(versions: list[tuple[list[str], int]]) -> None:
    """No two (file, version) pairs share a path, and no version's path lies inside another's
    (which would need a file and a directory in one place), whatever the remote's names."""
    state = MirrorState.__new__(MirrorState)
    state.versions_dir = Path("/v")
    places: dict[bytes, tuple[bytes, int]] = {}
    for segments, number in versions:
        path = "/".join(segments).encode()
        place = os.fsencode(state.version_path("h", path, number))
        assert all(len(name) <= 255 for name in place.split(b"/"))
        places.setdefault(place, (path, number))
        assert places[place] == (path, number)
    for place in places:
        for other in places:
            assert not other.startswith(place + b"/")


def test_one_file_that_cannot_be_put_in_place_fails_alone(dest: Path) -> None:
    rng = random.Random(6)
    with MirrorState(dest) as state:
        state.recover()
        items = []
        for name in (b"agents/a/sessions/ok.jsonl", b"agents/a/sessions/dir.jsonl"):
            new = FileState("h", name, "append", 0, 100, 2.0, 1, 8, b"")
            writer = WholeWriter(state, new, lines_only=True, category="new")
            writer.write(lines(rng, 2))
            items.append(writer.finish())
        state.local_path("h", b"agents/a/sessions/dir.jsonl").mkdir(parents=True)
        durable = make_durable(state, items)
    assert [item.row.path for item in durable.done] == [b"agents/a/sessions/ok.jsonl"]
    ((item, error),) = durable.failed
    assert item.row.path == b"agents/a/sessions/dir.jsonl"
    assert isinstance(error, MirrorError) and error.host == "h"
    assert "directory where the remote has a file" in str(error)
    assert "move the mirror's directory aside" in error.hint
    assert not list(state.tmp_dir.iterdir())  # the failed one's temp file is gone


def test_appending_to_a_file_shorter_than_its_checkpoint_refetches_it(dest: Path) -> None:
    data = lines(random.Random(7), 10)
    with MirrorState(dest) as state:
        row = committed(state, SESSION, data)
        with open(state.local_path("h", SESSION), "r+b") as f:
            f.truncate(len(data) - 100)  # cut after recovery ran: mid-run
        new = FileState("h", SESSION, "append", len(data), len(data) + 50, 2.0, 1, 7, b"")
        with pytest.raises(RewriteDetected):
            AppendWriter(state, row, len(data) - 64, new)


# --- errors ----------------------------------------------------------------------------------


def test_a_failed_statement_is_reported_not_the_rollback(dest: Path) -> None:
    with MirrorState(dest) as state:
        with pytest.raises(ZeroDivisionError), state.transaction():
            state.db.execute("ROLLBACK")  # what SQLite does itself on a full disk
            raise ZeroDivisionError
        assert not state.db.in_transaction


def test_an_unusable_lock_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m" / ".remote-sync" / "lock").mkdir(parents=True)  # cannot be opened
    with pytest.raises(DestinationError, match="lock file"), MirrorState(tmp_path / "m"):
        pass


def test_a_full_disk_at_open_is_not_called_a_damaged_state(
    dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says "disk I/O error" when a full file system leaves no room for its WAL files:
    that is a full disk (free space, run again), not a database to move aside."""
    import os as os_module

    from remote_sync.mirror import state as state_module

    class Full:
        f_bavail, f_frsize, f_files, f_favail = 0, 4096, 1000, 10

    def refuse(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(state_module.sqlite3, "connect", refuse)
    monkeypatch.setattr(os_module, "statvfs", lambda path: Full())
    with pytest.raises(MirrorError, match="disk is full") as info, MirrorState(dest):
        pass
    assert not isinstance(info.value, StateError) and "free space" in info.value.hint


def test_a_damaged_state_database_is_a_clear_error(dest: Path) -> None:
    with MirrorState(dest) as state:
        for i in range(300):
            committed(state, b"agents/a/sessions/%03d.jsonl" % i, b'{"type":"session"}\n')
        state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = dest / ".remote-sync" / "state.db"
    data = bytearray(db.read_bytes())
    data[8192:] = b"\xde\xad" * ((len(data) - 8192) // 2)  # every page after the second
    db.write_bytes(bytes(data))
    with pytest.raises(StateError) as info, MirrorState(dest) as state:
        state.recover()
    assert "state.db" in str(info.value)


def test_a_state_database_there_before_is_kept_when_the_open_fails(tmp_path: Path) -> None:
    """A failed first open takes back what it made; a database that was there (here one that
    is no database) is not its to remove, nor is anything beside it, even the lock file it
    made."""
    control = tmp_path / "m" / ".remote-sync"
    control.mkdir(parents=True)
    (control / "state.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StateError), MirrorState(tmp_path / "m"):
        pass
    assert sorted(p.name for p in control.iterdir()) == ["lock", "state.db"]
    assert (control / "state.db").read_bytes() == b"not a database" * 100


def test_a_lock_file_taken_back_while_it_was_opened_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed first open removes its lock file holding it; a run that had opened that file
    then locks a file no other run sees. It opens the lock file again (and makes the state
    directory again) rather than go on beside a third run."""
    from remote_sync.mirror import control

    real_open = os.open
    opened: list[str] = []

    def open_then_taken_back(
        path: str | os.PathLike[str], flags: int, *args: int, dir_fd: int | None = None
    ) -> int:
        fd = real_open(path, flags, *args, dir_fd=dir_fd)
        if str(path).endswith("lock") and not opened:
            opened.append(str(path))
            # As the failed open does, then its directory (the lock is opened by name in it).
            where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else "."
            os.unlink(os.path.join(where, path))
            os.rmdir(where)
        return fd

    monkeypatch.setattr(control.os, "open", open_then_taken_back)
    with MirrorState(tmp_path / "m") as state:
        assert state._lock_fd is not None
        lock = tmp_path / "m" / ".remote-sync" / "lock"
        assert os.path.samestat(os.fstat(state._lock_fd), os.stat(lock)) and opened


def test_a_failed_first_open_through_dotdot_keeps_the_directory_that_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination spelt x/../y, y there and empty, x not: the failed open read "x/../y" as
    a directory it had made (x was not there) and took y back, with nothing of its own."""
    from remote_sync.mirror import state as state_module

    (tmp_path / "y").mkdir()

    def refuse(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(state_module.sqlite3, "connect", refuse)
    with pytest.raises(RemoteSyncError):
        MirrorState(tmp_path / "x" / ".." / "y").open()
    assert (tmp_path / "y").is_dir() and not (tmp_path / "y" / ".remote-sync").exists()


@pytest.mark.timeout(30)
def test_a_lock_that_is_a_dangling_link_is_an_error_not_a_retry(tmp_path: Path) -> None:
    """Any ENOENT of the lock file was taken for a state directory taken back by another
    run's failed open, and opened again, for ever: a dangling symbolic link kept the open
    spinning. Only a state directory that is gone is a retry now."""
    control = tmp_path / "m" / ".remote-sync"
    control.mkdir(parents=True)
    (control / "lock").symlink_to(tmp_path / "nowhere" / "lock")
    with pytest.raises(DestinationError, match="lock file"):
        MirrorState(tmp_path / "m").open()


# --- whole runs against real hosts -----------------------------------------------------------


def faulty_sync(inv: Path, dest: Path, fault: str) -> int:
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    return fault_run(args, fault).returncode


def sync(inv: Path, dest: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Summary]:
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert isinstance(events[-1], Summary)
    return code, events[-1]


@pytest.mark.parametrize("fault", ["before_commit", "after_version_rename"])
def test_a_rewrite_killed_midway_loses_no_version(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(8)
    rel = "agents/a/sessions/s.jsonl"
    contents = [lines(rng, 30), lines(rng, 45, start=1000), lines(rng, 10, start=5000)]
    fleet.write("h0", rel, contents[0])
    assert sync(inv, dest, capsys)[0] == 0
    with open(fleet.path("h0", rel), "r+b") as f:  # rewritten in place, larger
        f.truncate(0)
        f.write(contents[1])
    assert faulty_sync(inv, dest, fault) == 9
    fleet.write("h0", rel, contents[2])  # and rewritten once more
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / rel).read_bytes() == contents[2]
    kept = sorted((dest / ".remote-sync/versions/h0/agents/a/sessions").iterdir())
    held = [path.read_bytes() for path in kept]
    assert contents[0] in held  # never overwritten by a later version
    if fault == "before_commit":  # the second content reached the mirror before the kill
        assert contents[1] in held
    assert_index_is_a_rebuild(dest)


def test_new_files_killed_before_their_first_commit_are_not_left_unknown(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first sync dies after renaming its new files into place, before committing them;
    the host then deletes one session and archives the other. The rerun still knows both:
    marked gone from the host, indexed, and the archive mirrored beside them."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(16)
    one, two = "agents/a/sessions/one.jsonl", "agents/a/sessions/two.jsonl"
    contents = {one: lines(rng, 10), two: lines(rng, 12, start=100)}
    for rel, data in contents.items():
        fleet.write("h0", rel, data)
    assert faulty_sync(inv, dest, "before_commit") == 9
    assert {rel: (dest / "h0" / rel).read_bytes() for rel in contents} == contents
    os.unlink(fleet.path("h0", one))
    os.rename(fleet.path("h0", two), fleet.path("h0", two + ".reset.2026-11-22T03-00-00.000Z"))
    code, summary = sync(inv, dest, capsys)
    assert (code, summary.files.new, summary.files.deleted) == (0, 1, 2)
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    assert {rel: rows[rel.encode()].state for rel in contents} == {one: "deleted", two: "deleted"}
    assert {rel: rows[rel.encode()].size for rel in contents} == {
        rel: len(data) for rel, data in contents.items()
    }
    assert {rel: (dest / "h0" / rel).read_bytes() for rel in contents} == contents
    assert len(index_rows(dest)) == 3
    assert_index_is_a_rebuild(dest)


def test_an_archive_killed_before_its_first_commit_is_still_a_rename(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw archives a session (renames it) and the sync that fetches the archive dies
    before its commit: the rerun still sees one conversation renamed, not two."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    archive = rel + ".reset.2026-11-22T03-00-00.000Z"
    fleet.write("h0", rel, lines(random.Random(17), 12))
    assert sync(inv, dest, capsys)[0] == 0
    os.rename(fleet.path("h0", rel), fleet.path("h0", archive))
    assert faulty_sync(inv, dest, "before_commit") == 9
    code, summary = sync(inv, dest, capsys)
    assert (code, summary.files.new, summary.files.grown, summary.files.deleted) == (0, 1, 0, 1)
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    assert (rows[rel.encode()].state, rows[archive.encode()].state) == ("renamed", "live")
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--json"]) == 0
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == [archive]
    assert_index_is_a_rebuild(dest)


@pytest.mark.parametrize("fault", ["in_seed_copy", "before_commit"])
def test_a_renamed_transcript_killed_while_seeded_is_exact_after_a_rerun(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    """A transcript renamed on the host (``/reset`` after one more turn) is seeded from its
    old name's mirrored bytes. The sync dies halfway through that local copy, or after the
    seeded file was put in place but before its commit; the host goes on appending. The
    rerun leaves no temp file behind, mirrors the archive byte for byte and keeps the old
    name's copy as it was. After the half copy it still brings only the new bytes; a file
    found in place before its first commit is fetched whole, as any such file is."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(19)
    rel = "agents/a/sessions/s.jsonl"
    archive = rel + ".reset.2026-11-22T03-00-00.000Z"
    fleet.write("h0", rel, session_bytes(rng, 600))  # about 180 KB: worth a local copy
    assert sync(inv, dest, capsys)[0] == 0
    old = fleet.path("h0", rel).read_bytes()
    os.rename(fleet.path("h0", rel), fleet.path("h0", archive))
    append(fleet, "h0", archive, session_bytes(rng, 3, start=600))
    assert faulty_sync(inv, dest, fault) == 9
    append(fleet, "h0", archive, session_bytes(rng, 2, start=603))
    code, summary = sync(inv, dest, capsys)
    assert code == 0
    assert (dest / "h0" / rel).read_bytes() == old
    assert (dest / "h0" / archive).read_bytes() == fleet.path("h0", archive).read_bytes()
    if fault == "in_seed_copy":
        assert summary.bytes <= len(fleet.path("h0", archive).read_bytes()) - len(old) + 4096
    assert list((dest / ".remote-sync" / "tmp").iterdir()) == []
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    assert (rows[rel.encode()].state, rows[archive.encode()].state) == ("renamed", "live")
    assert_index_is_a_rebuild(dest)


def test_a_new_file_without_a_line_killed_before_its_commit_leaves_no_row(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/midwrite.jsonl"
    fleet.write("h0", "agents/a/sessions/s.jsonl", lines(random.Random(18), 3))
    fleet.write("h0", rel, b'{"type":"session","id":"mid')  # the agent is mid-write
    assert faulty_sync(inv, dest, "before_commit") == 9
    os.unlink(fleet.path("h0", rel))
    code, summary = sync(inv, dest, capsys)
    assert (code, summary.files.deleted) == (0, 0)
    with MirrorState(dest) as state:
        assert rel.encode() not in state.host_files("h0")


def test_a_same_size_rewrite_killed_before_its_commit_is_counted_from_disk(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old copy went to versions/ and the new one (as long) into place, uncommitted; the
    host then deletes the file. The checkpoint and the index follow what the mirror holds."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(19)
    rel = "agents/a/sessions/s.jsonl"
    old = lines(rng, 12)
    new = lines(rng, 40, start=500)[: len(old)]
    new = new[: new.rindex(b"\n")] + b"x" * (len(old) - new.rindex(b"\n") - 1) + b"\n"
    assert len(new) == len(old)
    fleet.write("h0", rel, old)
    assert sync(inv, dest, capsys)[0] == 0
    fleet.write("h0", rel, new)  # in place: same inode, same size, another mtime
    os.utime(fleet.path("h0", rel), (time.time() + 5, time.time() + 5))
    assert faulty_sync(inv, dest, "before_commit") == 9
    os.unlink(fleet.path("h0", rel))
    assert sync(inv, dest, capsys)[0] == 0
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
        kept = state.version_path("h0", rel.encode(), 1)
    assert (dest / "h0" / rel).read_bytes() == new and kept.read_bytes() == old
    assert (row.state, row.version, row.fingerprint) == ("deleted", 1, fingerprint_of(new[:1024]))
    assert_index_is_a_rebuild(dest)


def test_a_transcript_moved_away_and_back_is_live_again(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, lines(random.Random(9), 5))
    sync(inv, dest, capsys)
    away = fleet.path("h0", "away.jsonl")
    os.rename(fleet.path("h0", rel), away)
    assert sync(inv, dest, capsys)[1].files.deleted == 1
    os.rename(away, fleet.path("h0", rel))  # same inode, same size
    sync(inv, dest, capsys)
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert (row.state, row.deleted_at) == ("live", None)


def test_a_conflict_in_the_mirror_fails_that_file_only(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(10)
    for name in ("a", "b", "c"):
        fleet.write("h0", f"agents/a/sessions/{name}.jsonl", lines(rng, 3))
    (dest / "h0/agents/a/sessions/b.jsonl").mkdir(parents=True)  # in the way
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert code == 1
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [e.path for e in errors] == ["agents/a/sessions/b.jsonl"]
    summary = events[-1]
    assert isinstance(summary, Summary)
    assert (summary.files.new, summary.files.failed) == (2, 1)
    append(fleet, "h0", "agents/a/sessions/a.jsonl", lines(rng, 1, start=50))
    code, summary = sync(inv, dest, capsys)
    assert (summary.files.grown, summary.files.unchanged, summary.files.failed) == (1, 1, 1)


def test_a_conflict_in_the_mirror_fails_a_file_fetched_in_pieces_only(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A directory where a new transcript fetched in pieces is mirrored: its first piece's
    checkpoint cannot read the copy in its place, and that file fails alone, its error naming
    host and path; the other files are synced, and nothing is left in the temp directory."""
    monkeypatch.setenv("REMOTE_SYNC_PIECE_BYTES", str(16 * 1024))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(13)
    for name in ("a", "c"):
        fleet.write("h0", f"agents/a/sessions/{name}.jsonl", lines(rng, 3))
    fleet.write("h0", "agents/a/sessions/b.jsonl", lines(rng, 1000))  # about 100 KB
    (dest / "h0/agents/a/sessions/b.jsonl").mkdir(parents=True)  # in the way
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert code == 1
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.host, e.path) for e in errors] == [("h0", "agents/a/sessions/b.jsonl")]
    summary = events[-1]
    assert isinstance(summary, Summary)
    assert (summary.files.new, summary.files.failed) == (2, 1)
    for name in ("a", "c"):
        rel = f"agents/a/sessions/{name}.jsonl"
        assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()
    assert not os.listdir(dest / ".remote-sync" / "tmp")
    (dest / "h0/agents/a/sessions/b.jsonl").rmdir()
    code, summary = sync(inv, dest, capsys)
    assert code == 0
    assert (summary.files.new, summary.files.unchanged) == (1, 2)
    rel = "agents/a/sessions/b.jsonl"
    assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()


def test_a_mirrored_file_that_cannot_be_opened_fails_alone(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mirrored file its append cannot open (made read-only by someone): that file fails,
    with a hint about its permissions; the files after it are still synced."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(12)
    names = [f"agents/a/sessions/{name}.jsonl" for name in ("a", "b", "c")]
    for rel in names:
        fleet.write("h0", rel, lines(rng, 3))
    assert sync(inv, dest, capsys)[0] == 0
    for rel in names:
        append(fleet, "h0", rel, lines(rng, 1, start=50))
    real = AppendWriter.__init__

    def refuse_a(
        self: AppendWriter, state: MirrorState, row: FileState, *rest: object, **kw: object
    ) -> None:
        if row.path == names[0].encode():
            denied = PermissionError(13, "Permission denied")
            doing = "open the mirrored file"
            raise mirror_error(denied, row.host, row.path, doing) from denied
        real(self, state, row, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(AppendWriter, "__init__", refuse_a)
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (error.path, error.kind) == (names[0], "mirror") and "permissions" in error.hint
    summary = events[-1]
    assert isinstance(summary, Summary) and (summary.files.grown, summary.files.failed) == (2, 1)
    for rel in names[1:]:
        assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()


def test_a_path_too_long_for_the_destination_fails_alone_run_after_run(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A remote path that fits the host's PATH_MAX but not the destination's (its prefix is
    longer) fails alone, with a hint that says so. It used to end the host's round as an
    internal error (nothing committed), and every later run at the mirror's opening, with a
    hint about permissions and free space, for all hosts."""
    rng = random.Random(16)
    fleet.write("h0", "agents/a/sessions/ok.jsonl", lines(rng, 3))
    root = len(os.fsencode(fleet.path("h0")))
    deep = "agents/a/sessions/" + "/".join(["d" * 200] * ((3900 - root) // 201))
    deep += "/" + "e" * (4090 - root - len(deep) - len("//deep.jsonl")) + "/deep.jsonl"
    fleet.write("h0", deep, lines(rng, 2))
    assert len(os.fsencode(fleet.path("h0", deep))) < 4095  # fine on the host
    dest = tmp_path / ("L" * 200) / "m"
    assert len(os.fsencode(dest / "h0" / deep)) > 4096  # not here
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    for run in range(2):
        code, events = run_cli(
            ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys
        )
        assert code == 1
        (error,) = [e for e in events if isinstance(e, ErrorEvent)]
        assert (error.host, error.path, error.kind) == ("h0", deep, "mirror")
        assert "too long" in error.message and "shorter destination" in error.hint
        summary = events[-1]
        assert isinstance(summary, Summary) and summary.hosts_partial == 1
        assert (summary.files.new, summary.files.unchanged, summary.files.failed) == (
            (1, 0, 1) if run == 0 else (0, 1, 1)
        )
        ok = fleet.path("h0", "agents/a/sessions/ok.jsonl").read_bytes()
        assert (dest / "h0/agents/a/sessions/ok.jsonl").read_bytes() == ok
    excluded = write_inventory(
        fleet, tmp_path / "excluded.toml", ["h0"], 'exclude = ["agents/a/sessions/d*/**"]'
    )
    code, summary = sync(excluded, dest, capsys)
    assert code == 0 and summary.files.failed == 0


def test_a_file_and_a_directory_swapped_on_the_host_sync_again_once_moved_aside(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host turns a file into a directory and a directory into a file: both conflicts
    fail alone, and once the user moves the mirror's old entries aside as the hints say,
    every run is exact. The rows of the files kept in the old entries used to stop every
    later run at the mirror's opening ("cannot check the mirrored file against its
    checkpoint: Not a directory"), for all hosts."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(17)
    base = "agents/a/sessions"
    for rel in ("x.jsonl", "d/y.jsonl", "ok.jsonl"):
        fleet.write("h0", f"{base}/{rel}", lines(rng, 3))
    assert sync(inv, dest, capsys)[0] == 0
    fleet.path("h0", f"{base}/x.jsonl").unlink()
    fleet.write("h0", f"{base}/x.jsonl/inner.jsonl", lines(rng, 3))
    fleet.path("h0", f"{base}/d/y.jsonl").unlink()
    fleet.path("h0", f"{base}/d").rmdir()
    fleet.write("h0", f"{base}/d", lines(rng, 3))
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert code == 1
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert sorted(e.path for e in errors) == [f"{base}/d", f"{base}/x.jsonl/inner.jsonl"]
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("d", "x.jsonl"):
        (dest / "h0" / base / name).rename(aside / name)
    for _ in range(3):
        code, summary = sync(inv, dest, capsys)
        assert code == 0 and summary.files.failed == 0
        for rel in ("x.jsonl/inner.jsonl", "d", "ok.jsonl"):
            got = (dest / "h0" / base / rel).read_bytes()
            assert got == fleet.path("h0", f"{base}/{rel}").read_bytes()


def test_a_file_committed_empty_is_fetched_once_rewritten_at_the_same_size(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """First synced while it held only a partial line (nothing committed), then rewritten in
    place to whole lines of the same size: another mtime, so it is fetched."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    partial = b'{"type":"message","text":"' + b"a" * 60
    fleet.write("h0", rel, partial)
    assert sync(inv, dest, capsys)[0] == 0
    whole = b'{"type":"message","text":"' + b"b" * 57 + b'"}\n'
    assert len(whole) == len(partial)
    remote = fleet.path("h0", rel)
    with open(remote, "r+b") as f:
        f.write(whole)
    stat = remote.stat()
    os.utime(remote, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / rel).read_bytes() == whole


def test_a_low_open_file_limit_does_not_fail_a_first_mirror(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """Each finished file stays open until its batch is durable. Under a hard limit of 256
    open files (a soft one is raised to the hard one first), 600 new files in one round."""
    import resource

    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(13)
    for i in range(600):
        fleet.write("h0", f"agents/a/sessions/s{i:03d}.jsonl", lines(rng, 1))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", *args],
        capture_output=True,
        preexec_fn=low_limit,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-1000:]
    assert len(list((dest / "h0/agents/a/sessions").iterdir())) == 600


def test_a_host_name_holding_another_source_is_refused(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "m"
    fleet.write("h0", "agents/a/sessions/s.jsonl", lines(random.Random(11), 3))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    assert sync(inv, dest, capsys)[0] == 0
    moved = inv.read_text().replace(str(fleet.path("h0")), str(fleet.path("h1")))
    (tmp_path / "moved.toml").write_text(moved)
    code, events = run_cli(
        ["sync", "--inventory", str(tmp_path / "moved.toml"), "--dest", str(dest), "--json"],
        capsys,
    )
    assert code == 2
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert error.host == "h0" and "another destination" in error.hint
    with MirrorState(dest) as state:
        assert state.hosts()["h0"][1] == str(fleet.path("h0"))


@pytest.mark.parametrize("adhoc", [True, False])
def test_a_host_dropped_from_the_inventory_is_told_how_to_sync_its_source_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], adhoc: bool
) -> None:
    """A host taken out of the inventory and named again on the command line is an ad-hoc
    host with the default format and root, refused against what the mirror holds; the hint
    said only "give this source another host name, or sync it into another destination",
    not the --format and --root (or, in an inventory, the keys) that sync the same source
    under the same name again. Refused before any connection: no fleet needed."""
    dest = tmp_path / "m"
    root = "/srv/agent's data"
    with MirrorState(dest) as state:
        state.set_host("cc", "claude-code", root, "cc")
        rel = b"projects/p/s.jsonl"
        state.local_path("cc", rel).parent.mkdir(parents=True)
        state.local_path("cc", rel).write_bytes(b"{}\n")
        state.commit([FileState("cc", rel, "append", 3, 3, 0.0, 1, 2, fingerprint_of(b"{}\n"))])
    config = tmp_path / "ssh_config"
    config.write_text("")
    known = tmp_path / "known_hosts"
    known.write_text("")
    if adhoc:
        args = ["sync", "cc", "-F", str(config), "--known-hosts", str(known)]
    else:
        inv = tmp_path / "inventory.toml"
        inv.write_text(
            f'[defaults]\nssh_config = "{config}"\nknown_hosts = "{known}"\n'
            '[[hosts]]\nname = "cc"\naddress = "cc"\nformat = "openclaw"\n'
        )
        args = ["sync", "--inventory", str(inv)]
    code, events = run_cli([*args, "--dest", str(dest), "--json"], capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 2 and error.host == "cc" and error.hint is not None, events
    if adhoc:
        assert "add --format claude-code --root '/srv/agent'\"'\"'s data'" in error.hint
    else:
        assert 'format = "claude-code" and root = "/srv/agent\'s data"' in error.hint
        assert "inventory entry" in error.hint and "another host name" in error.hint
    assert "another destination" in error.hint


def test_the_same_root_spelt_with_a_trailing_slash_is_not_another_source(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A root given once as /x and once as /x/ (or /x//, /./x) is one directory: the second
    sync was refused as "this mirror holds 'h0' ... with root '/x', not ... '/x/'". So was a
    mirror that recorded '/x/' synced with '/x' (recorded by an older version, set here)."""
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, lines(random.Random(12), 3))
    root = str(fleet.path("h0"))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    assert sync(inv, dest, capsys)[0] == 0
    append(fleet, "h0", rel, lines(random.Random(13), 2, start=10))
    for spelt in (root + "/", root.replace("/", "//") + "/./"):
        other = tmp_path / "slash.toml"
        other.write_text(inv.read_text().replace(f'root = "{root}"', f'root = "{spelt}"'))
        args = ["sync", "--inventory", str(other), "--dest", str(dest), "--json"]
        code, events = run_cli(args, capsys)
        assert code == 0, events
    assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()
    with MirrorState(dest) as state:
        assert state.hosts()["h0"][1] == root
        state.set_host("h0", "openclaw", root + "/", "h0")
    assert sync(inv, dest, capsys)[0] == 0


@pytest.mark.parametrize("ignored", [False, True])
def test_a_sigint_ignored_from_the_start_stays_ignored(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], ignored: bool
) -> None:
    """A shell starts a background job (`remote-sync sync ... &` in a script) with SIGINT
    ignored, so that a Ctrl-C at the terminal leaves it running. The rounds' handler took
    SIGINT over regardless, and such a run was cancelled (exit 130) by a Ctrl-C meant for
    the foreground. A run started without it ignored is still cancelled."""
    import signal

    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, lines(random.Random(5), 20))

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    done = fault_run(
        ["sync", "-I", str(inv), "-d", str(dest)],
        "sigint_in_commit",
        preexec_fn=ignore_sigint if ignored else None,
    )
    assert done.returncode == (0 if ignored else 130), done.stderr
    if ignored:
        assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()
    assert sync(inv, dest, capsys)[0] == 0


def test_new_directories_are_synced_in_their_parents(tmp_path: Path) -> None:
    from remote_sync.mirror.durable import _makedirs_for

    (tmp_path / "h").mkdir()
    dirs: set[Path] = set()
    _makedirs_for(tmp_path / "h/a/b/c/s.jsonl", "h", b"a/b/c/s.jsonl", dirs)
    # c's entry lives in b, b's in a, a's in h: each must reach the disk (c itself is synced
    # by the rename that puts the file there).
    assert dirs == {tmp_path / "h", tmp_path / "h/a", tmp_path / "h/a/b"}


@pytest.mark.parametrize("fault", ["term_in_recovery", "term_in_state_copy", "term_after_rounds"])
def test_a_sigterm_while_the_mirror_opens_or_after_the_rounds_is_a_cancel(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    """While the mirror opens (recovery, a dry run's copy of the state), a SIGTERM is taken
    as Ctrl-C: exit 130 with a cancelled event, no temporary copy left behind, and a rerun is
    exact. It used to end the process unreported (status -15). Recovery runs in a worker
    thread once the rounds' signal handler is installed: the cancel is then reported as the
    rounds report theirs, a summary last. So is one after the rounds, once their handler is
    gone (asyncio left SIGTERM to its default action then)."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, lines(random.Random(3), 20))
    assert sync(inv, dest, capsys)[0] == 0
    append(fleet, "h0", rel, lines(random.Random(4), 5, start=100))
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    args += ["--dry-run"] if fault == "term_in_state_copy" else []
    done = fault_run(args, fault, env={"TMPDIR": str(temp)})
    assert done.returncode == 130, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert ("error", "cancelled") in [(e["type"], e.get("kind")) for e in events]
    assert list(temp.iterdir()) == []
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / rel).read_bytes() == fleet.path("h0", rel).read_bytes()


class _FullDisk(io.BufferedRandom):
    """A writer's handle on a disk that has just filled up."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_disk_full_past_a_pieces_lines_fails_the_next_piece_as_full_not_rewritten(
    dest: Path,
) -> None:
    """A full disk after a piece's last line end: those lines are handed over, and the
    next piece fails the file as full (as a newline past them would in one range), where
    its overlap, never written, was taken for a rewrite (the file then fetched whole onto
    the full disk)."""
    rng = random.Random(8)
    with MirrorState(dest) as state:
        state.recover()
        new = FileState("h", SESSION, "append", 0, 100, 2.0, 1, 8, b"")
        writer = WholeWriter(state, new, lines_only=True, category="new")
        data = lines(rng, 20)
        writer.write(data)
        writer.handle = _FullDisk(writer.handle.detach())
        writer.write(b'{"partial": "')
        assert writer.no_room
        piece = writer.checkpoint()
        assert piece is not None and piece.row.size == len(data)
        with pytest.raises(MirrorError, match="disk full"):
            writer.resume(writer.offset - 8)
        writer.abort()
        discard([piece])


def test_a_failed_read_of_the_longer_mirrored_copy_is_an_error_not_a_short_first_piece(
    dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a whole fetch's lines only repeat the start of a longer mirrored copy, its first
    piece is not put in place. A read of that copy that failed (an I/O error) was taken for a
    copy that differs: the short first piece went in place, the old copy was kept as a
    version of a file that only grew, and the mirror was cut to one piece. It is the file's
    error now, and nothing is handed over."""
    rng = random.Random(9)
    old = lines(rng, 40)
    with MirrorState(dest) as state:
        state.recover()
        local = state.local_path("h", SESSION)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(old)
        new = FileState("h", SESSION, "append", 0, 100, 2.0, 1, 8, b"")
        writer = WholeWriter(state, new, lines_only=True, category="rewritten")
        writer.write(old[: len(old) // 2 + old[len(old) // 2 :].index(b"\n") + 1])
        real_pread = os.pread

        def failing_pread(fd: int, n: int, offset: int) -> bytes:
            if os.fstat(fd).st_ino == local.stat().st_ino:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_pread(fd, n, offset)

        monkeypatch.setattr(writer_module.os, "pread", failing_pread)
        with pytest.raises(MirrorError, match="compare with the mirrored copy"):
            writer.checkpoint()
        monkeypatch.undo()
        assert local.read_bytes() == old  # nothing put in place, no version kept
        assert not state.version_path("h", SESSION, 1).exists()
        writer.abort()


@pytest.mark.parametrize("case", ["new", "grown", "renamed"])
def test_a_finish_that_fails_leaves_nothing_of_its_fetch_behind(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """The finish of a file fetched in one read fails (no descriptor left for the copy it
    hands to the batch): the host's round fails, and the fetch leaves nothing behind, where
    its temp file stayed until the next open's recovery, and an append's new bytes sat past
    the checkpoint. The mirrored file and its row are as they were; the next sync is exact."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(21)
    rel = "agents/a/sessions/s.jsonl"
    fetched = rel + ".reset.2026-11-22T03-00-00.000Z" if case == "renamed" else rel
    if case != "new":
        fleet.write("h0", rel, session_bytes(rng, 600))  # renamed: worth a local copy
        assert sync(inv, dest, capsys)[0] == 0
    if case == "renamed":
        os.rename(fleet.path("h0", rel), fleet.path("h0", fetched))
    if case == "new":
        fleet.write("h0", rel, session_bytes(rng, 3, start=600))
    else:
        append(fleet, "h0", fetched, session_bytes(rng, 3, start=600))
    mirrored = (dest / "h0" / rel).read_bytes() if case != "new" else None
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    tmp = dest / ".remote-sync" / "tmp"
    written = (str(tmp) + "/", str(dest / "h0" / fetched))
    real_dup = os.dup

    def no_copy_of_the_fetched_file(fd: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(written):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_dup(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "dup", no_copy_of_the_fetched_file)
        code, events = run_cli(
            ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys
        )
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (error.host, error.path) == ("h0", fetched) and "Too many open files" in error.message
    assert list(tmp.iterdir()) == []
    assert (dest / "h0" / fetched).exists() == (case == "grown")
    if mirrored is not None:
        assert (dest / "h0" / rel).read_bytes() == mirrored
    with MirrorState(dest) as state:
        assert state.host_files("h0") == rows
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / fetched).read_bytes() == fleet.path("h0", fetched).read_bytes()
    assert_index_is_a_rebuild(dest)


def test_an_append_whose_finish_meets_an_io_error_is_cut_back_at_once(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An append whose new lines, still in the write buffer at its finish, meet an I/O error
    (not a full disk) after half of them reached the mirrored file: the host's round fails
    naming the file, and the file is cut back to its checkpoint at once, where those bytes
    stayed past it until the next open's recovery (the abort's truncate wrote the buffer
    first, failing again). The next sync is exact."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(23)
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, session_bytes(rng, 50))
    assert sync(inv, dest, capsys)[0] == 0
    added = session_bytes(rng, 3, start=50)
    assert len(added) < 4096  # held in the write buffer until the finish
    append(fleet, "h0", rel, added)
    local = dest / "h0" / rel
    mirrored = local.read_bytes()
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    real_open = open

    def failing_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "r+b" and os.fspath(file) == os.fspath(local):
            return io.BufferedRandom(ShortThenEIO(file, mode))
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(writer_module, "open", failing_disk, raising=False)
        code, events = run_cli(
            ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys
        )
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (error.host, error.path) == ("h0", rel) and "Input/output error" in error.message
    assert local.read_bytes() == mirrored
    assert "could not clean up" not in caplog.text
    with MirrorState(dest) as state:
        assert state.host_files("h0") == rows
    assert sync(inv, dest, capsys)[0] == 0
    assert local.read_bytes() == fleet.path("h0", rel).read_bytes()
    assert_index_is_a_rebuild(dest)
