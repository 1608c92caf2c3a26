"""``remote-sync check`` and ``api.check_mirror``: a mirror's files and kept versions held to
its state after a real sync against the sshd fleet, read only, without the lock."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sshfleet import SSHFleet
from synchelp import cli, fault_run, run_cli, session_bytes, write_inventory

from remote_sync import api
from remote_sync.cli import main
from remote_sync.errors import ConfigError, path_text
from remote_sync.mirror import check
from remote_sync.mirror.check import CheckSummary, Problem, check_mirror
from remote_sync.mirror.state import FileState, MirrorState, fingerprint_of
from remote_sync.mirror.state_reader import StateReader
from remote_sync.mirror.versions import prune_versions

BASE = b"agents/a/sessions/"
PLAIN = BASE + b"sess-1.jsonl"
OTHER = BASE + b"sess-2.jsonl"
#: A newline and bytes that are not UTF-8 in its name.
HOSTILE = BASE + b"new\nline\xff.jsonl"


def _checked(
    dest: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[Problem], CheckSummary]:
    code, out, _err = cli(["check", "--dest", str(dest), "--json", *extra], capsys)
    *lines, last = out.splitlines()
    problems = [msgspec.json.decode(line, type=Problem) for line in lines]
    return code, problems, msgspec.json.decode(last, type=CheckSummary)


def _files(dest: Path) -> dict[bytes, tuple[int, int]]:
    """Every entry of the mirror but the state database's (a reader may make its WAL index):
    size and mtime, links not followed."""
    out = {}
    for dirpath, dirs, names in os.walk(os.fsencode(dest)):
        for name in dirs + names:
            if b"state.db" not in name:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def mirror(
    ssh_fleet: Callable[..., SSHFleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """h0 synced twice: three sessions, PLAIN rewritten in between (one kept version), and
    OTHER then deleted on the host (its copy is the only one left)."""
    fleet = ssh_fleet(1)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "mirror"
    rng = random.Random(5)
    for rel in (PLAIN, OTHER, HOSTILE):
        fleet.write("h0", os.fsdecode(rel), session_bytes(rng, 8))
    sync = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    assert run_cli(sync)[0] == 0
    fleet.write("h0", os.fsdecode(PLAIN), session_bytes(rng, 3, start=50))
    os.unlink(os.path.join(os.fsencode(fleet.path("h0")), OTHER))
    assert run_cli(sync)[0] == 0
    capsys.readouterr()
    return dest


def test_an_intact_mirror_checks_clean_and_nothing_is_written(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _files(mirror)
    code, problems, summary = _checked(mirror, capsys)
    assert code == 0 and problems == []
    assert summary == CheckSummary(files=3, versions=1, damaged=0, notes=0, intact=True)
    code, out, err = cli(["check", "--dest", str(mirror)], capsys)
    assert code == 0, err
    assert out.splitlines() == [f"checked 3 files and 1 version in {mirror}: intact (no notes)"]
    assert _files(mirror) == before


def _truncate(local: Path) -> None:
    os.truncate(local, local.stat().st_size - 5)


def _change_head(local: Path) -> None:
    data = bytearray(local.read_bytes())
    data[3] ^= 0x20  # same size: only the head's digest tells
    local.write_bytes(bytes(data))


def _link(local: Path) -> None:
    copy = local.with_name("elsewhere")
    os.rename(local, copy)
    os.symlink(copy, local)  # the same bytes, through a link: still no regular file


@pytest.mark.parametrize(
    ("rel", "damage", "kind", "what"),
    [
        (PLAIN, _truncate, "short", "5 bytes lost"),
        (HOSTILE, _change_head, "changed", "are not those synced"),
        (OTHER, os.unlink, "missing", "missing ("),  # the host deleted it: the only copy
        (PLAIN, _link, "not_a_file", "a symbolic link is in"),
    ],
)
def test_damage_to_a_mirrored_file_is_named_and_exits_1(
    mirror: Path,
    capsys: pytest.CaptureFixture[str],
    rel: bytes,
    damage: Callable[[Path], None],
    kind: str,
    what: str,
) -> None:
    damage(Path(os.fsdecode(os.path.join(os.fsencode(mirror / "h0"), rel))))
    code, problems, summary = _checked(mirror, capsys)
    assert code == 1
    found = [p for p in problems if p.type == "damage"]
    assert [(p.kind, p.host, p.path) for p in found] == [(kind, "h0", path_text(rel))]
    assert what in found[0].what
    assert "remote-sync sync h0 --dest" in found[0].hint
    assert summary.damaged == 1 and not summary.intact
    # The table names it on one line, escaped, and says what to do once.
    code, out, _ = cli(["check", "--dest", str(mirror), "--host", "h0"], capsys)
    assert code == 1
    assert f"damage  h0: {path_text(rel)}".replace("\n", "\\x0a") in out
    assert "what to do: " in out and out.splitlines()[-1].endswith(
        "DAMAGED (1 damaged item, " + ("1 note)" if kind == "not_a_file" else "no notes)")
    )


def test_a_missing_or_linked_version_is_damage(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MirrorState(mirror) as state:
        place = state.version_path("h0", PLAIN, 1)
    place.unlink()
    code, problems, _ = _checked(mirror, capsys)
    assert code == 1
    assert [(p.type, p.kind, p.path, p.version) for p in problems] == [
        ("damage", "version_missing", path_text(PLAIN), 1)
    ]
    os.symlink(mirror / "h0" / os.fsdecode(PLAIN), place)
    code, problems, _ = _checked(mirror, capsys)
    assert code == 1 and [p.kind for p in problems] == ["version_not_a_file"]


def test_a_missing_version_with_no_keep_time_is_not_reported(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version the state has no keep time for (kept by an older remote-sync, or whose
    time a prune forgot before a kill) that is gone cannot be told from a pruned one: no
    problem, exit 0, though the same copy gone with its keep time is damage."""
    with MirrorState(mirror) as state, state.transaction():
        place = state.version_path("h0", PLAIN, 1)
        state.db.execute("DELETE FROM versions WHERE path = ?", (PLAIN,))
    place.unlink()
    code, problems, summary = _checked(mirror, capsys)
    assert (code, problems) == (0, [])
    assert (summary.damaged, summary.notes, summary.intact) == (0, 0, True)


def test_check_json_prints_the_fields_the_readme_lists(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check --json``'s objects have the README's fields, no more, no fewer: a problem
    ``type``, ``kind``, ``host``, ``path``, ``what``, ``hint`` and ``version`` (the kept
    version's number, null for a mirrored file's); the summary ``type``, ``files``,
    ``versions``, ``damaged``, ``notes``, ``intact``."""
    with MirrorState(mirror) as state:
        state.version_path("h0", PLAIN, 1).unlink()
    _truncate(mirror / "h0" / os.fsdecode(PLAIN))
    (mirror / "h0" / "stray.jsonl").write_bytes(b"{}\n")
    code, out, err = cli(["check", "--dest", str(mirror), "--json"], capsys)
    assert code == 1, err
    *problems, summary = [msgspec.json.decode(line) for line in out.splitlines()]
    fields = {"type", "kind", "host", "path", "what", "hint", "version"}
    assert [(set(p), p["type"], p["kind"], p["version"]) for p in problems] == [
        (fields, "damage", "short", None),
        (fields, "damage", "version_missing", 1),
        (fields, "note", "stray", None),
    ]
    assert summary == {
        "type": "summary",
        "files": 3,
        "versions": 1,
        "damaged": 2,
        "notes": 1,
        "intact": False,
    }


def test_a_directory_in_a_versions_place_is_said_to_be_one(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MirrorState(mirror) as state:
        place = state.version_path("h0", PLAIN, 1)
    place.unlink()
    place.mkdir()
    code, problems, _ = _checked(mirror, capsys)
    assert code == 1 and [(p.kind, p.version) for p in problems] == [("version_not_a_file", 1)]
    assert problems[0].what.endswith(") is a directory")


def test_strays_and_an_index_out_of_step_are_notes(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mirror / "h0" / "agents" / "by-hand.txt").write_text("mine")
    (mirror / "notes.md").write_text("not a host")
    db = sqlite3.connect(mirror / ".remote-sync" / "state.db")
    with db:
        db.execute("DELETE FROM sessions WHERE path = ?", (HOSTILE,))
        db.execute("UPDATE sessions SET path = ? WHERE path = ?", (BASE + b"gone.jsonl", PLAIN))
    db.close()
    code, problems, summary = _checked(mirror, capsys)
    assert code == 0 and summary.intact and summary.notes == 5
    assert sorted((p.kind, p.host, p.path) for p in problems) == [
        ("not_in_state", "h0", path_text(BASE + b"gone.jsonl")),
        ("not_indexed", "h0", path_text(HOSTILE)),
        ("not_indexed", "h0", path_text(PLAIN)),
        ("stray", "", "notes.md"),
        ("stray", "h0", "agents/by-hand.txt"),
    ]
    assert all(p.type == "note" for p in problems)
    assert all("index rebuild" in p.hint for p in problems if p.kind.startswith("not_"))


def test_strays_among_known_files_are_found_whatever_the_chunk_the_state_is_asked_in(
    mirror: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = mirror / "h0" / os.fsdecode(BASE)
    strays = [f"by-hand-{i}.txt" for i in range(5)]
    for name in strays:
        (sessions / name).write_text("mine")
    monkeypatch.setattr(check, "_IN_PATHS", 2)  # 3 known files and 5 strays: 4 queries
    code, problems, summary = _checked(mirror, capsys)
    found = sorted(p.path for p in problems if p.kind == "stray")
    assert code == 0 and summary.intact
    assert found == [path_text(BASE + name.encode()) for name in strays]


def test_a_mirror_synced_without_the_index_has_no_index_notes(
    ssh_fleet: Callable[..., SSHFleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = ssh_fleet(1)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    fleet.write("h0", os.fsdecode(PLAIN), session_bytes(random.Random(1), 4))
    dest = tmp_path / "mirror"
    assert main(["sync", "--inventory", str(inv), "--dest", str(dest), "--no-index"]) == 0
    capsys.readouterr()
    code, problems, summary = _checked(dest, capsys)
    assert (code, problems, summary.files) == (0, [], 1)


def test_it_runs_while_a_sync_holds_the_lock_and_bytes_past_a_checkpoint_are_no_damage(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sync appends past the checkpoint before it commits: a longer file is no damage."""
    with MirrorState(mirror):  # a sync running
        with open(mirror / "h0" / os.fsdecode(PLAIN), "ab") as out:
            out.write(b'{"type":"message","id":"half-written"}\n{"type":')
        code, problems, summary = _checked(mirror, capsys)
        assert (code, problems, summary.intact) == (0, [], True)

        async def checked() -> Any:
            return await api.check_mirror(dest=mirror)

        report = anyio.run(checked)
        assert report.summary == summary and report.problems == []


def test_api_check_mirror_reports_as_the_cli(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.unlink(mirror / "h0" / os.fsdecode(OTHER))

    async def checked() -> Any:
        return await api.check_mirror(dest=mirror, host="h0")

    report = anyio.run(checked)
    code, problems, summary = _checked(mirror, capsys, "--host", "h0")
    assert code == 1 and report.problems == problems and report.summary == summary


def test_no_mirror_or_an_unknown_host_is_a_usage_error(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["check", "--dest", str(tmp_path / "none"), "--json"], capsys)
    assert code == 2 and "no mirror at" in err
    assert msgspec.json.decode(out.splitlines()[0])["kind"] == "config"
    assert not (tmp_path / "none").exists()
    code, _, err = cli(["check", "--dest", str(mirror), "--host", "h9"], capsys)
    assert code == 2 and "has no host 'h9'" in err and "its hosts: h0" in err


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.sets(
        st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b),
        min_size=1,
        max_size=12,
    ).filter(lambda names: not names & {b".", b".."})
)
def test_the_state_is_read_in_pages_each_row_once(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, names: set[bytes]
) -> None:
    """However the paths' bytes sort, paging through the rows checks every file once."""
    monkeypatch.setattr(check, "PAGE_ROWS", 2)
    dest = tmp_path_factory.mktemp("paged")
    rows = []
    for name in names:
        data = name + b"\n"
        local = os.path.join(os.fsencode(dest / "h0"), name)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as out:
            out.write(data)
        rows.append(
            FileState("h0", name, "append", len(data), len(data), 0.0, 1, 1, fingerprint_of(data))
        )
    with MirrorState(dest) as state:
        state.set_host("h0", "openclaw", "/r", "h0")
        state.commit(rows)
    found: list[Problem] = []
    summary = check_mirror(dest, on_problem=found.append)
    assert (summary.files, found) == (len(names), [])
    with pytest.raises(ConfigError):
        check_mirror(dest, host="h1", on_problem=found.append)


def test_a_sync_that_starts_after_the_check_opened_the_state_is_no_damage(
    ssh_fleet: Callable[..., SSHFleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Opened with no sync running, the state is read as a file nothing changes: a sync that
    starts, rewrites a file and ends while the check runs must still be seen, not taken for
    damage."""
    fleet = ssh_fleet(1)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "mirror"
    rng = random.Random(9)
    fleet.write("h0", os.fsdecode(PLAIN), session_bytes(rng, 8))
    sync = ["sync", "--inventory", str(inv), "--dest", str(dest)]
    assert main(sync) == 0
    assert not (dest / ".remote-sync" / "state.db-wal").exists()
    fleet.write("h0", os.fsdecode(PLAIN), session_bytes(rng, 3, start=50))  # rewritten
    synced: list[int] = []

    def sync_first() -> bool:
        if not synced:  # the state is open and the page of rows read: a sync runs now
            synced.append(main(sync))
        return False

    found: list[Problem] = []
    summary = check_mirror(dest, on_problem=found.append, cancelled=sync_first)
    capsys.readouterr()
    assert synced == [0]
    assert [p for p in found if p.type == "damage"] == [] and summary.intact
    # The version the sync kept is counted too: the check saw its commit.
    assert summary.versions == 1


def _count_looks(monkeypatch: pytest.MonkeyPatch, looks: list[str]) -> None:
    """Each lstat, stat, listdir or scandir of a path under the mirror's versions noted in
    ``looks`` (by the call's name), until ``monkeypatch.undo()``."""
    for name in ("lstat", "stat", "listdir", "scandir"):
        real = getattr(os, name)

        def look(path: Any, *args: Any, name: str = name, real: Any = real, **kwargs: Any) -> Any:
            if b"/.remote-sync/versions/" in os.fsencode(path):
                looks.append(name)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, look)


def _pruned_down(dest: Path, counted: int, names: list[bytes]) -> dict[bytes, list[Path]]:
    """A mirror of h0 whose files ``names`` (in one directory) each counted ``counted``
    versions, of which only the last two are left, with their keep times (as a prune
    leaves them); each file's places of those two."""
    kept: dict[bytes, list[Path]] = {}
    with MirrorState(dest) as state:
        state.set_host("h0", "openclaw", "/r", "h0")
        rows = []
        for name in names:
            data = name + b"\n"
            local = state.local_path("h0", name)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            kept[name] = []
            for number in (counted - 1, counted):
                place = state.version_path("h0", name, number)
                place.parent.mkdir(parents=True, exist_ok=True)
                place.write_bytes(b"copy %d\n" % number)
                kept[name].append(place)
            rows.append(
                FileState(
                    "h0",
                    name,
                    "append",
                    len(data),
                    len(data),
                    0.0,
                    1,
                    1,
                    fingerprint_of(data),
                    version=counted,
                )
            )
        state.commit(rows, kept=[("h0", n, v) for n in names for v in (counted - 1, counted)])
    return kept


def test_the_versions_are_looked_at_once_per_folder_not_once_per_number_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check looked for each number a file ever counted (an lstat each): after many prunes,
    thousands of looks for two copies. It now lists the folder of the versions once (for
    every file whose versions are in it), and finds the same: the looks no longer grow with
    the versions pruned, and what is missing or no file is still said."""
    looks: list[str] = []
    names = [BASE + b"a.jsonl", BASE + b"b.jsonl", BASE + b"c.jsonl"]
    found: dict[int, tuple[int, list[Problem], CheckSummary]] = {}
    for counted in (3, 300):
        dest = tmp_path / str(counted)
        _pruned_down(dest, counted, names)
        _count_looks(monkeypatch, looks)
        problems: list[Problem] = []
        summary = check_mirror(dest, on_problem=problems.append)
        monkeypatch.undo()
        found[counted] = (len(looks), problems, summary)
        looks.clear()
    assert found[3] == found[300]
    looked, problems, summary = found[300]
    assert problems == [] and summary.versions == 6 and summary.intact
    assert looked <= 1, looked  # one listing of the folder all three files' versions share

    # What is wrong is still said: a timed version gone, one that is a directory.
    dest = tmp_path / "wrong"
    places = _pruned_down(dest, 40, names)
    places[names[0]][0].unlink()
    places[names[2]][1].unlink()
    places[names[2]][1].mkdir()
    problems = []
    summary = check_mirror(dest, on_problem=problems.append)
    assert [(p.kind, p.path, p.version) for p in problems] == [
        ("version_missing", path_text(names[0]), 39),
        ("version_not_a_file", path_text(names[2]), 40),
    ]
    assert summary.versions == 6 and summary.damaged == 2


def test_versions_list_and_prune_look_at_a_folder_once_not_once_per_number_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``versions list`` (and restore and prune, through the same walk) looked for each number
    a file ever counted: after a prune, a look per version it removed. It lists each file's
    versions folder once now: the looks do not grow with the versions pruned, and the listing
    is the same."""
    looks: list[str] = []
    names = [BASE + b"a.jsonl", BASE + b"b.jsonl"]
    found: dict[int, tuple[int, list[tuple[str, int]]]] = {}
    for counted in (3, 300):
        dest = tmp_path / str(counted)
        _pruned_down(dest, counted, names)
        _count_looks(monkeypatch, looks)
        code, out, _ = cli(["versions", "list", "--dest", str(dest), "--json"], capsys)
        dry = ["versions", "prune", "--dest", str(dest), "--keep-last", "1", "--dry-run"]
        pruned, _, _ = cli(dry, capsys)
        monkeypatch.undo()
        assert code == pruned == 0
        rows = [msgspec.json.decode(line) for line in out.splitlines()]
        listed = [(row["path"], row["version"] - counted) for row in rows]
        found[counted] = (len(looks), listed)
        looks.clear()
    assert found[3] == found[300]
    assert sorted(found[300][1]) == sorted((path_text(n), v) for n in names for v in (-1, 0))


def test_a_folder_of_versions_is_listed_once_for_all_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``versions list`` and ``prune`` listed a file's versions folder once per file, and a
    check once per file too when the files of one directory came apart in path order (a
    session's ``<id>.jsonl``, its ``<id>/subagents/``, the next session's, as Claude Code
    keeps them); each listing was then scanned for every file, quadratic in a project's
    folder. Each folder is listed once now, for every file whose versions it holds, and
    what is found is the same."""
    sessions = [BASE + b"s%02d.jsonl" % i for i in range(20)]
    names = sessions + [BASE + b"s%02d/subagents/agent-1.jsonl" % i for i in range(20)]
    dest = tmp_path / "mirror"
    _pruned_down(dest, 3, names)
    folders = len(names) - len(sessions) + 1  # each session's subagents/, and BASE
    looks: list[str] = []
    _count_looks(monkeypatch, looks)

    def listings() -> int:
        listed = looks.count("scandir") + looks.count("listdir")
        looks.clear()
        return listed

    summary = check_mirror(dest, on_problem=lambda problem: pytest.fail(str(problem)))
    assert summary.versions == 2 * len(names) and summary.intact
    assert listings() == folders
    code, out, _ = cli(["versions", "list", "--dest", str(dest), "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 2 * len(names)
    assert listings() == folders
    result = prune_versions(dest, keep_last=1)
    assert len(result.removed) == len(names) and result.kept == len(names)
    assert listings() == folders
    monkeypatch.undo()
    assert all(
        not places[0].exists() and places[1].exists() for places in _kept_places(dest, names)
    )


def _kept_places(dest: Path, names: list[bytes]) -> list[list[Path]]:
    state = MirrorState(dest)  # not opened: its paths only
    return [[state.version_path("h0", name, n) for n in (2, 3)] for name in names]


def test_the_keep_times_are_read_with_each_page_of_rows_not_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check read the versions' keep times from the state once per file with versions (a
    query each, twice for a copy missing): now once per page of rows, with the page; a
    timed copy missing from any page is still damage."""
    statements: list[str] = []

    class Traced(StateReader):
        def _open(self, warn: bool = False) -> tuple[sqlite3.Connection, Any]:
            db, stamp = super()._open(warn)
            db.set_trace_callback(statements.append)
            return db, stamp

    monkeypatch.setattr(check, "StateReader", Traced)
    monkeypatch.setattr(check, "PAGE_ROWS", 7)
    names = [BASE + b"f%02d.jsonl" % i for i in range(30)]  # pages of 7, 7, 7, 7 and 2
    dest = tmp_path / "mirror"
    places = _pruned_down(dest, 5, names)
    places[names[0]][0].unlink()
    places[names[24]][1].unlink()
    problems: list[Problem] = []
    summary = check_mirror(dest, on_problem=problems.append)
    assert [(p.kind, p.path, p.version) for p in problems] == [
        ("version_missing", path_text(names[0]), 4),
        ("version_missing", path_text(names[24]), 5),
    ]
    assert summary.versions == 2 * len(names)
    # One read per page, and one more per copy found missing: its keep time asked again, as
    # a prune may have forgotten it (committed) since the page was read.
    assert sum("FROM versions" in sql for sql in statements) == 5 + 2, statements


def test_a_deleted_files_lost_copy_is_damage_until_a_sync_records_it_then_a_note(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host deleted OTHER; its copy, the only one, is then removed from the mirror. No sync
    fetches it again, so the hint says so (a backup, or a sync that records the loss); once a
    sync has recorded it, it is a note of its own, not damage every check for ever."""
    local = mirror / "h0" / os.fsdecode(OTHER)
    backup = local.read_bytes()
    local.unlink()
    code, problems, summary = _checked(mirror, capsys)
    assert code == 1 and [(p.type, p.kind, p.path) for p in problems] == [
        ("damage", "missing", path_text(OTHER))
    ]
    hint = problems[0].hint
    assert "no sync fetches it again: the host deleted it" in hint
    assert "backup of the mirror" in hint and "records the loss" in hint
    assert "fetches the file again" not in hint
    # The index still lists its session, deleted; showing it tells the same.
    listed = ["sessions", "list", "--dest", str(mirror), "--state", "deleted", "--json"]
    code, out, _ = cli(listed, capsys)
    [session] = [msgspec.json.decode(line) for line in out.splitlines()]
    assert code == 0 and session["path"] == path_text(OTHER)
    shown = ["sessions", "show", "h0", session["session_id"], "--dest", str(mirror)]
    code, _, err = cli(shown, capsys)
    assert code != 0 and "no sync fetches it again: the host deleted it" in err
    sync = ["sync", "--inventory", str(tmp_path / "inventory.toml"), "--dest", str(mirror)]
    assert run_cli(sync)[0] == 0
    capsys.readouterr()
    # The recovery dropped its session from the index, so a rebuild has nothing to say of it.
    code, out, _ = cli(listed, capsys)
    assert (code, out) == (0, "")
    assert cli(["index", "rebuild", "--dest", str(mirror)], capsys)[0] == 0
    for _ in range(2):  # and so it stays
        code, problems, summary = _checked(mirror, capsys)
        assert code == 0 and summary.intact
        assert (summary.damaged, summary.notes) == (0, 1)
        assert [(p.type, p.kind, p.host, p.path) for p in problems] == [
            ("note", "lost", "h0", path_text(OTHER))
        ]
        assert problems[0].what.startswith("the host deleted it; its copy under this name is")
        assert problems[0].hint.startswith("nothing to do: no sync fetches it again")
    code, out, _ = cli(["check", "--dest", str(mirror)], capsys)
    assert code == 0
    assert f"note    h0: {path_text(OTHER)}: the host deleted it" in out
    assert out.splitlines()[-1].endswith(": intact (1 note)")

    async def checked() -> Any:
        return await api.check_mirror(dest=mirror)

    report = anyio.run(checked)
    assert report.summary == summary and report.problems == problems
    # Put back from a backup after all: the next sync takes it up, in the index too.
    local.write_bytes(backup)
    assert run_cli(sync)[0] == 0
    capsys.readouterr()
    code, problems, summary = _checked(mirror, capsys)
    assert (code, problems) == (0, [])
    code, out, _ = cli(listed, capsys)
    assert [msgspec.json.decode(line)["path"] for line in out.splitlines()] == [path_text(OTHER)]


def test_a_live_files_missing_copy_stays_damage_a_sync_fetches_again(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.unlink(mirror / "h0" / os.fsdecode(HOSTILE))
    code, problems, _ = _checked(mirror, capsys)
    assert code == 1 and [(p.type, p.kind) for p in problems] == [("damage", "missing")]
    assert "it fetches the file again while the host still has it" in problems[0].hint
    assert "backup" not in problems[0].hint
    sync = ["sync", "--inventory", str(tmp_path / "inventory.toml"), "--dest", str(mirror)]
    assert run_cli(sync)[0] == 0
    capsys.readouterr()
    code, problems, _ = _checked(mirror, capsys)
    assert (code, problems) == (0, [])


def test_a_renamed_files_lost_copy_says_its_new_name_is_mirrored_apart(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Renamed on the host (same inode), the old name's row is ``renamed`` and its copy stays;
    lost, no sync fetches it under that name either, and its kept version stays."""
    with MirrorState(mirror) as state:  # the fleet runs on this machine: its root is here
        root = os.fsencode(state.hosts()["h0"][1])
    os.rename(os.path.join(root, PLAIN), os.path.join(root, PLAIN + b".reset.1"))
    sync = ["sync", "--inventory", str(tmp_path / "inventory.toml"), "--dest", str(mirror)]
    assert run_cli(sync)[0] == 0
    os.unlink(mirror / "h0" / os.fsdecode(PLAIN))
    capsys.readouterr()
    code, problems, _ = _checked(mirror, capsys)
    assert code == 1 and [(p.kind, p.path) for p in problems] == [("missing", path_text(PLAIN))]
    assert "no sync fetches it again: the host renamed it, and its new name is mirrored" in (
        problems[0].hint
    )
    assert run_cli(sync)[0] == 0
    capsys.readouterr()
    code, problems, _ = _checked(mirror, capsys)
    assert code == 0 and [(p.type, p.kind) for p in problems] == [("note", "lost")]
    assert problems[0].what.startswith("the host renamed it, and its new name is mirrored apart;")
    assert "its earlier versions stay in versions/" in problems[0].hint


def test_a_shown_tombstones_missing_copy_is_said_to_be_fetched_again(
    ssh_fleet: Callable[..., SSHFleet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw's ``.deleted.`` tombstone is a session the agent deleted, but a file the host
    still has: with its copy gone from the mirror, ``sessions show`` says a sync fetches it
    again (the file's state), not that no sync can (the session's)."""
    fleet = ssh_fleet(1)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "mirror"
    tomb = BASE + b"sess-9.jsonl.deleted.2026-11-21T10-00-00Z"
    fleet.write("h0", os.fsdecode(tomb), session_bytes(random.Random(6), 4))
    assert run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"])[0] == 0
    capsys.readouterr()
    listed = ["sessions", "list", "--dest", str(dest), "--state", "deleted", "--json"]
    code, out, _ = cli(listed, capsys)
    [session] = [msgspec.json.decode(line) for line in out.splitlines()]
    assert code == 0 and session["path"] == path_text(tomb)
    (dest / "h0" / os.fsdecode(tomb)).unlink()
    shown = ["sessions", "show", "h0", session["path"], "--dest", str(dest)]
    code, _, err = cli(shown, capsys)
    assert code != 0 and "fetches the file again" in err
    assert "no sync fetches it again" not in err


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        # The new copy renamed into place, its checkpoint not yet committed.
        ("before_commit", "its first bytes are another copy's"),
        # The old copy moved into versions/, the new one not yet in its place.
        ("after_version_rename", "missing, its earlier copy in versions/ not yet counted"),
    ],
)
def test_a_file_a_sync_is_replacing_is_an_in_doubt_note_not_damage(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str, what: str
) -> None:
    """A rewrite of PLAIN caught between its steps (the sync killed there, so that the instant
    holds still for the check: the mirror and its state are as a running sync has them
    then): its checkpoint is in doubt, and the check says so as a note, exit 0."""
    with MirrorState(mirror) as state:  # the fleet runs on this machine: its root is here
        root = os.fsencode(state.hosts()["h0"][1])
    with open(os.path.join(root, PLAIN), "wb") as out:  # another first line: a rewrite
        out.write(session_bytes(random.Random(11), 4, start=90))
    sync = ["sync", "--inventory", str(tmp_path / "inventory.toml"), "--dest", str(mirror)]
    assert fault_run(sync, fault).returncode == 9
    code, problems, summary = _checked(mirror, capsys)
    assert (code, summary.damaged, summary.intact) == (0, 0, True)
    assert [(p.type, p.kind, p.host, p.path) for p in problems] == [
        ("note", "in_doubt", "h0", path_text(PLAIN))
    ]
    assert what in problems[0].what
    assert problems[0].hint.startswith("nothing to do: a sync is putting it in place")


def test_a_check_started_with_sigterm_ignored_keeps_ignoring_it(mirror: Path) -> None:
    """As a shell's background job keeps SIGINT ignored: a check started with SIGTERM
    ignored does not take the SIGTERM sent midway for a cancel, and runs to its end."""
    import signal

    def ignore_sigterm() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    args = ["check", "--dest", str(mirror), "--json"]
    done = fault_run(args, "term_in_check", preexec_fn=ignore_sigterm)
    assert done.returncode == 0, done.stderr
    summary = msgspec.json.decode(done.stdout.splitlines()[-1], type=CheckSummary)
    assert summary.intact and summary.files == 3


def _state_files(dest: Path) -> dict[str, bytes]:
    control = dest / ".remote-sync"
    return {p.name: p.read_bytes() for p in control.iterdir() if p.name.startswith("state.db")}


@pytest.mark.parametrize("fault", ["sigint_in_check", "term_in_check"])
@pytest.mark.parametrize("json", [False, True])
def test_a_check_cancelled_by_ctrl_c_or_sigterm_exits_130_and_changes_nothing(
    mirror: Path, json: bool, fault: str
) -> None:
    """A Ctrl-C midway, or a SIGTERM (``timeout``, systemd), which killed the check
    unreported (status -15) before every command took it as a Ctrl-C."""
    before, state = _files(mirror), _state_files(mirror)
    args = ["check", "--dest", str(mirror), *(["--json"] if json else [])]
    done = fault_run(args, fault)
    assert done.returncode == 130, done.stderr
    assert b"Traceback" not in done.stderr
    if json:  # an error event says so, as for any command's early cancel
        (error,) = [msgspec.json.decode(line) for line in done.stdout.splitlines()]
        assert (error["type"], error["kind"]) == ("error", "cancelled")
    else:
        assert b"cancelled by a signal" in done.stderr
    assert _files(mirror) == before and _state_files(mirror) == state
