"""``remote-sync versions list / restore`` and ``api.list_versions`` over a mirror whose host
rewrote files (a real sync against the sshd fleet keeps the versions)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sshfleet import SSHFleet
from synchelp import cli, fault_run, run_cli, session_bytes, tear_reads, write_inventory

from remote_sync import api
from remote_sync.cancel import CancelRegistry
from remote_sync.cli import main
from remote_sync.errors import (
    ArgumentError,
    ConfigError,
    LockedError,
    MirrorError,
    OutputError,
    TransferCancelledError,
    path_bytes,
    path_text,
)
from remote_sync.index.query import age_seconds
from remote_sync.mirror import engine
from remote_sync.mirror.state import FileState, MirrorState
from remote_sync.mirror.versions import (
    PruneResult,
    VersionRow,
    _keep_rules,
    _names,
    prune_versions,
    restore_version,
)

BASE = b"agents/a/sessions/"
PLAIN = BASE + b"sess-1.jsonl"
#: A newline and bytes that are not UTF-8 in its name.
HOSTILE = BASE + b"new\nline\xff\xfe.jsonl"
#: No room left for ``.v<N>``: its versions are kept under a cut name with a digest.
LONG = BASE + b"x" * 249 + b".jsonl"


def _write(fleet: SSHFleet, rel: bytes, data: bytes) -> None:
    fleet.write("h0", os.fsdecode(rel), data)


def _sync(inv: Path, dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"])
    capsys.readouterr()
    assert code == 0


def _listed(dest: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[VersionRow]:
    code, out, err = cli(["versions", "list", "--dest", str(dest), "--json", *extra], capsys)
    assert code == 0, err
    return [msgspec.json.decode(line, type=VersionRow) for line in out.splitlines()]


def _snapshot(dest: Path) -> dict[bytes, tuple[int, int, bytes]]:
    """Every file of the mirror (state database aside: a reader may make its WAL index):
    its size, mtime and bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(dest)):
        for name in files:
            full = os.path.join(dirpath, name)
            if b"state.db" not in name:
                st = os.stat(full)
                out[full] = (st.st_size, st.st_mtime_ns, Path(os.fsdecode(full)).read_bytes())
    return out


@pytest.fixture
def one_host(ssh_fleet: Callable[..., SSHFleet], tmp_path: Path) -> tuple[SSHFleet, Path, Path]:
    """A fleet of one host, h0; its inventory; where its mirror goes (not made yet)."""
    fleet = ssh_fleet(1)
    return fleet, write_inventory(fleet, tmp_path / "inventory.toml", ["h0"]), tmp_path / "mirror"


@pytest.fixture
def kept(
    one_host: tuple[SSHFleet, Path, Path], capsys: pytest.CaptureFixture[str]
) -> tuple[Path, dict[bytes, list[bytes]]]:
    """A mirror of h0 after its host rewrote three files (one twice) between syncs, and the
    copies each file's versions must hold, oldest first."""
    fleet, inv, dest = one_host
    rng = random.Random(3)
    copies: dict[bytes, list[bytes]] = {rel: [session_bytes(rng, 12)] for rel in (PLAIN, HOSTILE)}
    copies[LONG] = [session_bytes(rng, 7)]
    _write(fleet, BASE + b"untouched.jsonl", session_bytes(rng, 3))
    for rel, datas in copies.items():
        _write(fleet, rel, datas[0])
    _sync(inv, dest, capsys)
    for rel in copies:  # compacted: shorter, another history
        copies[rel].append(session_bytes(rng, 4, start=100))
        _write(fleet, rel, copies[rel][-1])
    _sync(inv, dest, capsys)
    copies[PLAIN].append(session_bytes(rng, 2, start=200))
    _write(fleet, PLAIN, copies[PLAIN][-1])
    _sync(inv, dest, capsys)
    # The last copy is the mirrored file; the others are its versions.
    return dest, {rel: datas[:-1] for rel, datas in copies.items()}


def test_versions_list_shows_every_kept_copy_with_its_size_and_session(
    kept: tuple[Path, dict[bytes, list[bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    dest, versions = kept
    before = _snapshot(dest)
    rows = _listed(dest, capsys)
    expected = sorted(
        (path_text(rel), n, len(data))
        for rel, datas in versions.items()
        for n, data in enumerate(datas, 1)
    )
    assert [(r.path, r.version, r.bytes) for r in rows] == expected
    assert {r.host for r in rows} == {"h0"}
    by_path = {(r.path, r.version): r for r in rows}
    assert by_path[path_text(PLAIN), 2].session_id == "sess-1"
    # Each row names the copy it describes; a listing takes no lock and writes nothing.
    by_text = {path_text(rel): rel for rel in versions}
    for r in rows:
        data = versions[by_text[r.path]][r.version - 1]
        assert (dest / os.fsdecode(path_bytes(r.file))).read_bytes() == data
        assert r.modified.endswith("Z") and r.modified[:2] == "20"
    assert _snapshot(dest) == before

    # By session id (or its prefix), by path as listed, by host; an unknown host lists none.
    assert [(r.path, r.version) for r in _listed(dest, capsys, "sess-")] == [
        (path_text(PLAIN), 1),
        (path_text(PLAIN), 2),
    ]
    hostile = _listed(dest, capsys, "--host", "h0", path_text(HOSTILE))
    assert [(r.path, r.version) for r in hostile] == [(path_text(HOSTILE), 1)]
    assert _listed(dest, capsys, "--host", "h9") == []

    # The table: hostile names escaped on one line, as every listing shows paths.
    code, out, err = cli(["versions", "list", "--dest", str(dest), "--host", "h0"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 + len(rows)
    assert "kept (UTC)" in lines[0]  # the times are UTC's, not the reader's zone
    assert any("new\\x0aline\\xff\\xfe.jsonl" in line for line in lines)
    assert "\xff" not in out and "\x1b" not in out


def test_api_list_versions_is_the_cli_listing(
    kept: tuple[Path, dict[bytes, list[bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    dest, _ = kept

    async def listed() -> list[VersionRow]:
        return await api.list_versions(dest=dest, files=["sess-1"])

    assert anyio.run(listed) == _listed(dest, capsys, "sess-1")


def test_versions_restore_writes_exactly_the_kept_bytes(
    kept: tuple[Path, dict[bytes, list[bytes]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest, versions = kept
    before = _snapshot(dest)
    for rel, datas in versions.items():
        for n, data in enumerate(datas, 1):
            out = tmp_path / f"restored-{len(rel)}-{n}"
            args = ["versions", "restore", "h0", path_text(rel), str(n), "--to", str(out)]
            code, _, err = cli([*args, "--dest", str(dest)], capsys)
            assert code == 0, err
            assert out.read_bytes() == data
    # The path as the host spells it (a newline, raw bytes) names the file too.
    out = tmp_path / "raw"
    code, _, err = cli(
        ["versions", "restore", "h0", os.fsdecode(HOSTILE), "1", "--to", str(out), "-d", str(dest)],
        capsys,
    )
    assert code == 0, err
    assert out.read_bytes() == versions[HOSTILE][0]
    # To stdout, byte for byte; by session id.
    command = ["versions", "restore", "h0", "sess-1", "2", "--to", "-", "--dest", str(dest)]
    piped = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", *command],
        capture_output=True,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == versions[PLAIN][1]
    assert not list(tmp_path.glob(".remote-sync-restore-*"))  # no temp file left
    assert _snapshot(dest) == before


def test_versions_restore_refuses_the_mirror_and_an_existing_file(
    kept: tuple[Path, dict[bytes, list[bytes]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest, versions = kept
    before = _snapshot(dest)
    restore = ["versions", "restore", "h0", path_text(PLAIN), "1", "--dest", str(dest)]
    for inside in (dest / "h0" / os.fsdecode(PLAIN), dest / "copy.jsonl", dest / ".remote-sync/x"):
        code, _, err = cli([*restore, "--to", str(inside), "--force"], capsys)
        assert code == 2 and "inside the mirror" in err, err
    assert _snapshot(dest) == before
    assert not (dest / "copy.jsonl").exists()

    existing = tmp_path / "mine.jsonl"
    existing.write_bytes(b"mine\n")
    code, _, err = cli([*restore, "--to", str(existing)], capsys)
    assert code == 2 and "exists" in err and "--force" in err, err
    assert existing.read_bytes() == b"mine\n"
    code, _, err = cli([*restore, "--to", str(existing), "--force"], capsys)
    assert code == 0, err
    assert existing.read_bytes() == versions[PLAIN][0]

    # A version that is not there: the error names host, path and version, and what to run.
    code, _, err = cli(
        [*restore[:4], "7", "--dest", str(dest), "--to", str(tmp_path / "n")], capsys
    )
    assert code == 2
    assert f"h0: {path_text(PLAIN)}: no version 7 (kept: v1, v2)" in err
    assert "remote-sync versions list" in err
    code, _, err = cli([*restore[:3], "nothing.jsonl", "1", "-d", str(dest), "--to", "x"], capsys)
    assert code == 2 and "h0: nothing.jsonl: no kept versions" in err, err
    assert _snapshot(dest) == before


def test_versions_of_a_folder_that_is_no_mirror_fail_as_sessions_list_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["sessions", "list", "--dest", str(tmp_path)], capsys)
    assert code == 2
    for args in (["list"], ["restore", "h0", "a.jsonl", "1", "--to", str(tmp_path / "x")]):
        assert cli(["versions", *args, "--dest", str(tmp_path)], capsys) == (2, out, err)
    assert not (tmp_path / ".remote-sync").exists()


_SEGMENT = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b != b".")


@given(st.lists(_SEGMENT, min_size=1, max_size=4))
def test_a_path_names_its_file_as_listed_and_as_typed(segments: list[bytes]) -> None:
    """A path given to ``versions`` as the listing shows it (``\\xNN`` for bytes that are not
    UTF-8, ``\\x5c`` for a backslash that reads as an escape) or as the host spells it (a
    shell passes bytes that are not UTF-8 as surrogates) names that file."""
    path = b"/".join(segments)
    assert _names(path_text(path), path, None)
    assert _names(os.fsdecode(path), path, None)
    assert _names("./" + path_text(path), path, None)
    assert not _names(path_text(path) + "x", path, None)


def test_api_list_versions_takes_a_list_of_files(tmp_path: Path) -> None:
    async def listed() -> list[VersionRow]:
        return await api.list_versions(dest=tmp_path, files="sess-1")

    with pytest.raises(ConfigError, match="not one"):
        anyio.run(listed)


# -- mirrors built by hand: what no sync leaves (a link, a loop, a damaged database) -----------


def _by_hand(dest: Path, copies: list[bytes], rel: bytes = PLAIN) -> list[Path]:
    """A mirror of h0 whose ``rel`` has ``copies`` as its versions (recorded in the state, as
    a sync leaves them), without a sync; the places of the versions."""
    with MirrorState(dest) as state:
        state.set_host("h0", "openclaw", "/data", "h0")
        local = state.local_path("h0", rel)
        local.parent.mkdir(parents=True)
        local.write_bytes(b"now\n")
        places = []
        for number, data in enumerate(copies, 1):
            place = state.version_path("h0", rel, number)
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_bytes(data)
            places.append(place)
        row = FileState("h0", rel, "append", 4, 4, 0.0, 1, 1, b"", version=len(copies))
        state.commit([row])
    return places


def test_a_copy_that_cannot_be_looked_at_is_a_mirror_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept copy whose stat failed other than by its absence (here a loop of links on its
    way: ELOOP; no permission and an I/O error go the same way) ended ``versions list`` in a
    traceback, and ``api.list_versions`` raised the bare OSError that ``except
    RemoteSyncError`` misses. It is a MirrorError naming host, path and the copy, with the
    directory to look at."""
    dest = tmp_path / "m"
    (place,) = _by_hand(dest, [b"old\n"])
    agents = dest / ".remote-sync" / "versions" / "h0" / "agents"
    os.rename(agents, tmp_path / "agents")
    agents.symlink_to(agents.name)  # a link to itself
    code, out, err = cli(["versions", "list", "--dest", str(dest)], capsys)
    assert (code, out) == (1, ""), err
    shown = path_text(os.fsencode(place.relative_to(dest)))
    assert f"h0: {path_text(PLAIN)}: cannot look at version 1 ({shown}): " in err, err
    assert "Too many levels of symbolic links" in err and "check the permissions of" in err

    async def listed() -> list[VersionRow]:
        return await api.list_versions(dest=dest)

    with pytest.raises(MirrorError, match="cannot look at version 1") as raised:
        anyio.run(listed)
    assert raised.value.host == "h0" and raised.value.path == path_text(PLAIN)


def test_a_link_in_the_versions_folder_is_neither_listed_nor_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symbolic link put in a version's place by hand was listed with its target's size and
    restored from its target, with the target's permissions: any file this user can read
    came out as a kept version. It is left out of the listing, and restore refuses it by
    name, to a file and to stdout; the other versions are as before."""
    dest = tmp_path / "m"
    first, second = _by_hand(dest, [b"v1\n", b"second copy\n"])
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a transcript of this mirror\n")
    secret.chmod(0o600)
    first.unlink()
    first.symlink_to(secret)
    rows = _listed(dest, capsys)
    assert [(r.version, r.bytes) for r in rows] == [(2, len(b"second copy\n"))]

    restore = ["versions", "restore", "h0", path_text(PLAIN), "1", "--dest", str(dest)]
    out = tmp_path / "out"
    for to in (str(out), "-"):
        code, printed, err = cli([*restore, "--to", to], capsys)
        assert (code, printed) == (1, ""), err
        assert "h0: " + path_text(PLAIN) + ": version 1 (" in err, err
        assert "is a symbolic link, not a copy a sync kept: not restored" in err, err
    assert not out.exists() and not list(tmp_path.glob(".remote-sync-restore-*"))
    with pytest.raises(MirrorError, match="is a symbolic link"):
        restore_version(dest, "h0", path_text(PLAIN), 1, io.BytesIO())
    code, _, err = cli([*restore[:4], "2", "--dest", str(dest), "--to", str(out)], capsys)
    assert code == 0 and out.read_bytes() == b"second copy\n", err
    assert second.read_bytes() == b"second copy\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_restore_to_a_full_stdout_blames_the_output_not_the_mirror(tmp_path: Path) -> None:
    """``versions restore --to - > /dev/full`` said "cannot copy version 1: No space left on
    device (free space or fix permissions on the destination...)", as if the mirror were
    full. The output is: an OutputError, exit 1, and the mirror is said to be untouched."""
    dest = tmp_path / "m"
    _by_hand(dest, [b"x" * 100_000])
    command = ["versions", "restore", "h0", path_text(PLAIN), "1", "--to", "-", "-d", str(dest)]
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "remote_sync.cli", *command],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "cannot write version 1 to the output: No space left on device" in err, err
    assert "the disk the output goes to" in err and "the mirror is untouched" in err, err
    assert "destination" not in err and "Traceback" not in err and "Exception" not in err


class _FailingStream(io.RawIOBase):
    """A stream whose every read or write fails with ``error``."""

    def __init__(self, error: int) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise OSError(self.error, os.strerror(self.error))

    def write(self, data: Any) -> int:
        raise OSError(self.error, os.strerror(self.error))


def test_a_restore_tells_a_failed_read_of_the_copy_from_a_failed_write_of_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were "cannot copy version 1" with the destination's hint. A write to the output
    stream that fails is an OutputError; a read of the kept copy that fails (an I/O error of
    the mirror's disk) a MirrorError naming the copy, to a stream as to a file."""
    dest = tmp_path / "m"
    (place,) = _by_hand(dest, [b"kept\n"])
    with pytest.raises(OutputError, match="cannot write version 1 to the output: No space"):
        restore_version(dest, "h0", path_text(PLAIN), 1, _FailingStream(errno.ENOSPC))

    real_fdopen = os.fdopen

    def failing_reads(fd: int, *args: Any, **kwargs: Any) -> Any:
        if os.path.samestat(os.fstat(fd), os.stat(place)):
            os.close(fd)
            return io.BufferedReader(_FailingStream(errno.EIO))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", failing_reads)
    shown = path_text(os.fsencode(place.relative_to(dest)))
    for to in (io.BytesIO(), tmp_path / "out"):
        with pytest.raises(MirrorError) as raised:
            restore_version(dest, "h0", path_text(PLAIN), 1, to)
        assert not isinstance(raised.value, OutputError)
        assert raised.value.message == f"cannot read version 1 ({shown}): Input/output error"
        assert raised.value.host == "h0" and "check the permissions of" in raised.value.hint
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".remote-sync-restore-*"))


def test_a_target_that_cannot_be_looked_at_is_no_lost_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--to FILE`` whose check raised an OSError (Python 3.11's ``is_dir`` raises on a
    directory this user may not search, and on a name too long) was told as output that
    could not be written ("cannot write the output", exit 1) and stdout sent to /dev/null:
    the restore ran inside the guard of the output. It is a usage error naming FILE."""
    dest = tmp_path / "m"
    _by_hand(dest, [b"kept\n"])
    restore = ["versions", "restore", "h0", path_text(PLAIN), "1", "--dest", str(dest)]
    too_long = tmp_path / ("x" * 300)
    code, _, err = cli([*restore, "--to", str(too_long)], capsys)
    assert code == 2, err
    assert f"{too_long}: cannot look at the file to restore to: File name too long" in err
    assert "cannot write the output" not in err

    real_is_dir = Path.is_dir

    def no_permission(path: Path) -> bool:
        if path.name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", no_permission)
    locked = tmp_path / "locked"
    code, _, err = cli([*restore, "--to", str(locked)], capsys)
    assert code == 2, err
    assert f"{locked}: cannot look at the file to restore to: Permission denied" in err
    assert "cannot write the output" not in err


def test_a_damaged_state_database_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query of the state that SQLite refused (a damaged page; a lock held for longer
    than the busy timeout goes the same way) ended ``versions list`` and ``restore`` in a
    traceback: it is the error every reader of the index gives, naming the mirror."""
    dest = tmp_path / "m"
    _by_hand(dest, [b"kept\n"])
    db_path = dest / ".remote-sync" / "state.db"
    with sqlite3.connect(db_path) as db:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(db_path, "r+b") as raw:  # the table's root page: garbage
        raw.seek((root - 1) * page_size)
        raw.write(b"\xff" * page_size)
    says = f"cannot read the mirror's state database in {dest}: database disk image is malformed"
    for args in (["list"], ["restore", "h0", "sess-1", "1", "--to", str(tmp_path / "out")]):
        code, _, err = cli(["versions", *args, "--dest", str(dest)], capsys)
        assert code == 2 and says in err, err
        assert "move it aside" in err and err.index("run again") < err.index("move it aside")

    async def listed() -> list[VersionRow]:
        return await api.list_versions(dest=dest)

    with pytest.raises(ConfigError, match="database disk image is malformed"):
        anyio.run(listed)


# -- keep times --------------------------------------------------------------------------------


def _kept_rows(dest: Path) -> dict[int, float]:
    """The keep times the state has for PLAIN's versions (none: no table)."""
    with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
        try:
            rows = db.execute("SELECT version, kept_at FROM versions WHERE path = ?", (PLAIN,))
            found = {version: kept_at for version, kept_at in rows}
        except sqlite3.OperationalError:
            found = {}
    db.close()
    return found


def _as_before_keep_times(dest: Path) -> None:
    """The state as a remote-sync from before keep times left it: no ``versions`` table."""
    with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
        db.execute("DROP TABLE versions")
    db.close()


def test_a_sync_records_when_it_kept_each_version_and_an_older_state_goes_on(
    one_host: tuple[SSHFleet, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The time shown for a version was its copy's mtime: when the mirror last wrote it,
    which for a session idle for a month and then compacted is a month before it was kept.
    The state records when each version was kept; a state from before (no table) opens,
    syncs and lists, its versions showing their mtime, marked: ``kept_at`` null in JSON,
    "(written)" in the table. A prune then takes no number a removed version had."""
    fleet, inv, dest = one_host
    rng = random.Random(5)
    _write(fleet, PLAIN, session_bytes(rng, 6))
    _sync(inv, dest, capsys)
    month_ago = 1_700_000_000.0
    os.utime(dest / "h0" / os.fsdecode(PLAIN), (month_ago, month_ago))
    _write(fleet, PLAIN, session_bytes(rng, 3, start=100))  # compacted
    before = int(time.time())
    _sync(inv, dest, capsys)
    (v1,) = _listed(dest, capsys)
    assert v1.version == 1 and v1.modified.startswith("2023-11-14")
    assert v1.kept_at is not None and v1.kept_at >= _iso(before), v1
    assert set(_kept_rows(dest)) == {1}

    # Made by a remote-sync from before keep times: it syncs on, v1 shows its mtime.
    _as_before_keep_times(dest)
    (old,) = _listed(dest, capsys)
    assert old.kept_at is None and old.modified == v1.modified
    _write(fleet, PLAIN, session_bytes(rng, 2, start=200))
    _sync(inv, dest, capsys)
    rows = _listed(dest, capsys)
    assert [(r.version, r.kept_at is None) for r in rows] == [(1, True), (2, False)]
    code, out, err = cli(["versions", "list", "--dest", str(dest)], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split()[4] == "kept"  # "kept (UTC)" split on blanks
    assert "2023-11-14" in out and "(written)" in out.splitlines()[1]
    assert "(written)" not in out.splitlines()[2] and rows[1].kept_at[:10] in out  # type: ignore[index]

    # Pruned to the newest, then rewritten: the next version is v3, with its own time.
    code, out, err = cli(["versions", "prune", "--dest", str(dest), "--keep-last", "1"], capsys)
    assert code == 0, err
    _write(fleet, PLAIN, session_bytes(rng, 1, start=300))
    _sync(inv, dest, capsys)
    rows = _listed(dest, capsys)
    assert [(r.version, r.kept_at is None) for r in rows] == [(2, False), (3, False)]
    assert set(_kept_rows(dest)) == {2, 3}


def test_a_version_kept_after_the_state_is_lost_is_numbered_above_every_copy_left(
    one_host: tuple[SSHFleet, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prune leaves gaps at the bottom (v1 gone, v2 left); a damaged state moved aside
    counts no version. The next version kept was numbered after the count's unbroken run,
    v1, below the v2 left: "1 is the oldest" broke, and a later ``--keep-last 1`` would keep
    the old v2 and remove the new v1. It is numbered after every copy on disk, a name cut
    with a digest (LONG) too."""
    fleet, inv, dest = one_host
    rng = random.Random(11)
    for start in (0, 100, 200):  # two rewrites: v1 and v2 of each
        for rel in (PLAIN, LONG):
            _write(fleet, rel, session_bytes(rng, 3, start=start))
        _sync(inv, dest, capsys)
    code, result, err = _prune(dest, capsys, "--keep-last", "1")
    assert code == 0 and sorted(_numbers(result["removed"])) == [1, 1], err

    for name in os.listdir(dest / ".remote-sync"):  # the state moved aside
        if name.startswith("state.db"):
            os.rename(dest / ".remote-sync" / name, tmp_path / name)
    _sync(inv, dest, capsys)  # the mirrored files taken as they are: nothing kept
    mirrored = {rel: (dest / "h0" / os.fsdecode(rel)).read_bytes() for rel in (PLAIN, LONG)}
    for rel in (PLAIN, LONG):
        _write(fleet, rel, session_bytes(rng, 2, start=300))
    _sync(inv, dest, capsys)
    rows = _listed(dest, capsys)
    assert sorted((r.path, r.version) for r in rows) == sorted(
        (path_text(rel), n) for rel in (PLAIN, LONG) for n in (2, 3)
    )
    for r in rows:  # v3 is the copy the mirror had before this rewrite, v2 the older
        rel = PLAIN if r.path == path_text(PLAIN) else LONG
        data = (dest / os.fsdecode(path_bytes(r.file))).read_bytes()
        assert (data == mirrored[rel]) == (r.version == 3)
    code, result, err = _prune(dest, capsys, "--keep-last", "1")
    assert code == 0 and _numbers(result["removed"]) == [2, 2], err


def test_a_copy_put_by_hand_under_a_huge_version_number_is_not_counted_on_from(
    one_host: tuple[SSHFleet, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sync counts versions one at a time, so a number past any it could reach is a name
    put there by hand: numbered after it, the new version's number was past what SQLite
    stores (an internal error, the host failed at each rewrite of the file) or, below that,
    a count a check walks one number at a time. The new version is numbered as if it were
    not there, and the copy by hand is left alone."""
    fleet, inv, dest = one_host
    rng = random.Random(12)
    _write(fleet, PLAIN, session_bytes(rng, 3))
    _sync(inv, dest, capsys)
    state = MirrorState(dest)  # not opened: only its paths are used
    by_hand = [state.version_path("h0", PLAIN, n) for n in (2**64, 10**12)]
    for place in by_hand:
        place.parent.mkdir(parents=True, exist_ok=True)
        place.write_bytes(b"mine\n")
    _write(fleet, PLAIN, session_bytes(rng, 2, start=50))
    _sync(inv, dest, capsys)
    assert [(r.path, r.version) for r in _listed(dest, capsys)] == [(path_text(PLAIN), 1)]
    assert all(place.read_bytes() == b"mine\n" for place in by_hand)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- prune -------------------------------------------------------------------------------------

DAY = 86400.0


def _files(dest: Path) -> dict[bytes, tuple[int, int, bytes]]:
    """:func:`_snapshot` but the lock file (taking the lock writes who holds it)."""
    return {k: v for k, v in _snapshot(dest).items() if not k.endswith(b"/.remote-sync/lock")}


def _by_hand_kept(dest: Path, ages: list[float | None], rel: bytes = PLAIN) -> list[Path]:
    """:func:`_by_hand` with one version per age: kept that many seconds ago (None: no keep
    time recorded, as one kept before keep times; its copy last written a year ago)."""
    places = _by_hand(dest, [b"copy %d\n" % n for n in range(1, len(ages) + 1)], rel)
    now = time.time()
    with MirrorState(dest) as state, state.transaction():
        for number, age in enumerate(ages, 1):
            if age is not None:
                state.db.execute(
                    "INSERT INTO versions VALUES ('h0', ?, ?, ?)", (rel, number, now - age)
                )
    for place, age in zip(places, ages, strict=True):
        if age is None:
            os.utime(place, (now - 365 * DAY, now - 365 * DAY))
    return places


def _prune(
    dest: Path, capsys: pytest.CaptureFixture[str], *rules: str
) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli(["versions", "prune", "--dest", str(dest), "--json", *rules], capsys)
    return code, (msgspec.json.decode(out) if out else {}), err


def _numbers(rows: list[dict[str, Any]]) -> list[int]:
    return [row["version"] for row in rows]


def test_prune_keeps_the_last_n_and_removes_only_the_older_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [5 * DAY, 4 * DAY, 3 * DAY, 2 * DAY, DAY])
    other = _by_hand_kept_other(dest)
    mirrored = dest / "h0" / os.fsdecode(PLAIN)
    before = _files(dest)

    code, result, err = _prune(dest, capsys, "--keep-last", "2", str(path_text(PLAIN)))
    assert code == 0, err
    assert result["dry_run"] is False and _numbers(result["removed"]) == [1, 2, 3]
    assert result["bytes_freed"] == sum(len(b"copy %d\n" % n) for n in (1, 2, 3))
    assert result["kept"] == 2 and result["left"] == []
    assert [p.exists() for p in places] == [False, False, False, True, True]
    # Nothing else is touched: the mirrored file, the other file's version (not chosen).
    gone = {os.fsencode(p) for p in places[:3]}
    assert _files(dest) == {k: v for k, v in before.items() if k not in gone}
    assert mirrored.read_bytes() == b"now\n" and other.exists()
    assert set(_kept_rows(dest)) == {4, 5}
    assert [r.version for r in _listed(dest, capsys, path_text(PLAIN))] == [4, 5]
    with MirrorState(dest) as state:  # the count numbers the next version: not lowered
        assert state.host_files("h0")[PLAIN].version == 5

    # The table: one line per version removed, and the total.
    when = _when_of(dest, 4)
    code, out, err = cli(["versions", "prune", "-d", str(dest), "--keep-last", "1"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        f"removed h0: {path_text(PLAIN)} v4 (7 B, kept {when})",
        "removed 1 version (7 B freed); 2 versions kept",
    ]


def _by_hand_kept_other(dest: Path) -> Path:
    """One more file of h0 with one version, in the mirror :func:`_by_hand_kept` made."""
    rel = BASE + b"other.jsonl"
    with MirrorState(dest) as state:
        place = state.version_path("h0", rel, 1)
        place.write_bytes(b"other copy\n")
        state.local_path("h0", rel).write_bytes(b"other now\n")
        row = FileState("h0", rel, "append", 10, 10, 0.0, 1, 1, b"", version=1)
        state.commit([row], kept=[("h0", rel, 1)])
    return place


def _when_of(dest: Path, number: int) -> str:
    moment = datetime.fromtimestamp(_kept_rows(dest)[number], UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


def test_prune_keeps_within_a_duration_judging_a_version_with_no_time_by_its_ctime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--keep-within`` keeps the versions kept that recently; with ``--keep-last`` a
    version either rule keeps stays (as restic's forget). A version with no keep time whose
    copy was last written a year ago was moved aside no earlier than its ctime: judged by
    that, not by the mtime the listing shows, it is kept as long as its real keep time would
    keep it."""
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [10 * DAY, 6 * DAY, None, 2 * DAY, 3600.0])
    code, result, err = _prune(dest, capsys, "--keep-within", "7d", "--dry-run")
    assert code == 0, err
    assert result["dry_run"] is True and _numbers(result["removed"]) == [1]
    assert result["removed"][0]["kept_at"] is not None and result["kept"] == 4
    assert all(p.exists() for p in places)  # a dry run removes nothing

    # Within a day: v5, and v3 (its ctime); the last two: v4 and v5. Either keeps.
    code, result, err = _prune(dest, capsys, "--keep-within", "1d", "--keep-last", "2")
    assert code == 0, err
    assert _numbers(result["removed"]) == [1, 2] and result["kept"] == 3
    assert [p.exists() for p in places] == [False, False, True, True, True]
    assert [(r.version, r.kept_at is None) for r in _listed(dest, capsys)] == [
        (3, True),
        (4, False),
        (5, False),
    ]


def test_prune_of_a_version_with_no_keep_time_keeps_it_within_its_ctime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [None, 30 * DAY])
    code, result, err = _prune(dest, capsys, "--keep-within", "7d")
    assert code == 0, err
    assert _numbers(result["removed"]) == [2] and result["kept"] == 1
    assert places[0].exists() and not places[1].exists()
    (row,) = _listed(dest, capsys)
    assert row.version == 1 and row.kept_at is None


def test_a_dry_run_removes_nothing_and_reads_while_a_sync_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prune takes the mirror's lock as a sync does: while one runs it is refused with the
    lock's error (exit 75) and removes nothing; a dry run only reads, as a listing, and says
    what would go."""
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY])
    before = _files(dest)
    rows = _kept_rows(dest)
    with MirrorState(dest):  # a sync running
        code, _result, err = _prune(dest, capsys, "--keep-last", "1")
        assert code == 75 and "is using this destination" in err, err
        code, out, err = cli(
            ["versions", "prune", "-d", str(dest), "--keep-last", "1", "-n"], capsys
        )
        assert code == 0, err
    assert out.splitlines()[-1] == (
        "would remove 2 versions (14 B would free); 1 version kept; nothing removed (dry run)"
    )
    assert out.splitlines()[0].startswith(f"would remove h0: {path_text(PLAIN)} v1 (7 B, kept ")
    assert _files(dest) == before and _kept_rows(dest) == rows
    assert all(p.exists() for p in places)

    async def locked() -> None:
        with MirrorState(dest):
            await api.prune_versions(dest=dest, keep_last=1)

    with pytest.raises(LockedError):
        anyio.run(locked)
    assert _files(dest) == before


def test_a_prune_stopped_by_sigterm_exits_130_its_state_true_to_what_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGTERM (``timeout``, systemd) midway through a prune, between two files: it is
    taken as a Ctrl-C (exit 130, said, no traceback), where the prune died of it (status
    -15). What went is gone with its keep times, what stays keeps them, the lock is free:
    a prune again finishes, and the mirror checks intact."""
    dest = tmp_path / "m"
    other = b"agents/b/sessions/other.jsonl"
    places = [_by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY], rel) for rel in (PLAIN, other)]
    done = fault_run(["versions", "prune", "-d", str(dest), "--keep-last", "1"], "term_in_prune")
    assert done.returncode == 130, done.stderr
    assert b"cancelled by a signal" in done.stderr and b"Traceback" not in done.stderr
    # The second file's group was about to go: the first's is gone, the second's whole.
    assert [[p.exists() for p in group] for group in places] == [
        [False, False, True],
        [True, True, True],
    ]
    listed = _listed(dest, capsys)
    assert [(r.path, r.version) for r in listed] == [
        (path_text(PLAIN), 3),
        *((path_text(other), n) for n in (1, 2, 3)),
    ]
    assert all(r.kept_at is not None for r in listed)
    code, result, err = _prune(dest, capsys, "--keep-last", "1")
    assert code == 0, err
    assert [(r["path"], r["version"]) for r in result["removed"]] == [
        (path_text(other), 1),
        (path_text(other), 2),
    ]
    code, out, err = cli(["check", "-d", str(dest)], capsys)
    assert code == 0 and "intact" in out, out + err


def test_prune_without_a_keep_rule_is_refused_and_removes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No default removes: no rule, or one that keeps nothing, is a usage error (exit 2),
    before the mirror is looked at; so is a duration that cannot be read, and no mirror."""
    dest = tmp_path / "m"
    _by_hand_kept(dest, [3 * DAY, 2 * DAY])
    before = _files(dest)
    for rules in (
        [],
        ["--dry-run"],
        ["--keep-last", "0"],
        ["--keep-last", "-1"],
        ["--keep-within", "0d"],
        ["--keep-within", "soon"],
        ["--keep-within", ""],
    ):
        code, out, err = cli(["versions", "prune", "--dest", str(dest), *rules], capsys)
        assert (code, out) == (2, ""), (rules, err)
        assert "keep" in err, err
    code, _, err = cli(["versions", "prune", "--dest", str(dest)], capsys)
    assert "prune needs a keep rule" in err and "--keep-last N" in err
    assert _files(dest) == before
    code, _, err = cli(
        ["versions", "prune", "-d", str(tmp_path / "none"), "--keep-last", "1"], capsys
    )
    assert code == 2 and "no mirror at" in err
    assert not (tmp_path / "none").exists()

    for kwargs in ({}, {"keep_last": 0}, {"keep_last": True}, {"keep_within": timedelta(0)}):

        async def pruned(kwargs: dict[str, Any] = kwargs) -> None:
            await api.prune_versions(dest=dest, **kwargs)

        with pytest.raises(ConfigError, match="keep"):
            anyio.run(pruned)
    assert _files(dest) == before


@given(st.integers(1, 10**6), st.sampled_from("smhdw"), st.sampled_from(["", " "]))
def test_a_keep_within_reads_as_an_age_of_since(n: int, unit: str, space: str) -> None:
    """``--keep-within`` takes the ages ``--since`` takes, in the same seconds."""
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * n
    assert _keep_rules(None, f"{n}{space}{unit}") == (None, float(seconds))
    assert _keep_rules(3, timedelta(seconds=seconds)) == (3, float(seconds))
    assert age_seconds(f"{n}{space}{unit}") == seconds


def test_prune_never_follows_a_link_nor_removes_what_is_no_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version's place holding a link to a file of this user's, or a directory, is no copy
    a sync kept: not judged, not removed, its target untouched. A directory of the versions
    tree that is a link leads out of it: the copy it seems to hold is left (exit 1, said),
    and so is its target; the rest is pruned."""
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [4 * DAY, 3 * DAY, 2 * DAY, DAY])
    secret = tmp_path / "secret"
    secret.write_bytes(b"mine\n")
    places[0].unlink()
    places[0].symlink_to(secret)
    places[1].unlink()
    places[1].mkdir()
    (places[1] / "inside").write_bytes(b"x\n")
    code, result, err = _prune(dest, capsys, "--keep-last", "1")
    assert code == 0, err
    assert _numbers(result["removed"]) == [3] and result["kept"] == 1
    assert places[0].is_symlink() and secret.read_bytes() == b"mine\n"
    assert (places[1] / "inside").read_bytes() == b"x\n"

    # A directory on the way that is a link out of the versions tree.
    rel = b"agents/b/sessions/s.jsonl"
    outside_v1, _ = _by_hand(tmp_path / "other", [b"someone else's\n", b"v2\n"], rel)
    with MirrorState(dest) as state:
        state.local_path("h0", rel).parent.mkdir(parents=True)
        state.local_path("h0", rel).write_bytes(b"now\n")
        state.commit([FileState("h0", rel, "append", 4, 4, 0.0, 1, 1, b"", version=2)])
        linked = state.version_path("h0", rel, 1).parent.parent
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(outside_v1.parent.parent)
    assert [r.version for r in _listed(dest, capsys, path_text(rel))] == [1, 2]
    prune = ["versions", "prune", "-d", str(dest), "--keep-last", "1", path_text(rel)]
    code, result, err = _prune(dest, capsys, *prune[4:])
    assert code == 1, err
    assert result["removed"] == [] and _numbers(result["left"]) == [1]
    assert outside_v1.read_bytes() == b"someone else's\n"
    code, out, err = cli(prune, capsys)
    assert code == 1 and "version 1 (" in err and "is reached through a symbolic link" in err
    assert out.splitlines() == ["removed 0 versions (0 B freed); 1 version kept"]
    assert outside_v1.exists()


def test_a_prune_killed_between_its_commit_and_the_removal_leaves_a_copy_the_listing_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep times are forgotten (committed) before the copies go: killed in between, the
    state claims no copy that is gone; the copy left lists with its mtime, as one kept before
    keep times were recorded, and the next prune removes it."""
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY])

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        prune_versions(dest, keep_last=1)
    monkeypatch.undo()
    assert all(p.exists() for p in places)
    assert set(_kept_rows(dest)) == {3}
    rows = _listed(dest, capsys)
    assert [(r.version, r.kept_at is None) for r in rows] == [(1, True), (2, True), (3, False)]
    code, result, err = _prune(dest, capsys, "--keep-last", "1")
    assert code == 0 and _numbers(result["removed"]) == [1, 2], err
    assert [p.exists() for p in places] == [False, False, True]


def test_the_help_of_versions_names_its_three_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    """``remote-sync --help`` is where one looks for a command: its line for ``versions``
    says what each of its verbs does, prune included (it said list and restore only)."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    line = out[out.index("versions list the") :]
    assert "get one back" in line[:120] and "prune" in line[:120], line[:120]


def test_api_prune_versions_is_the_cli_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "m"
    places = _by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY])
    registry = CancelRegistry()

    async def pruned(**kwargs: Any) -> PruneResult:
        return await api.prune_versions(dest=dest, registry=registry, **kwargs)

    dry = anyio.run(partial(pruned, keep_last=2, files=[path_text(PLAIN)], dry_run=True))
    code, result, err = _prune(dest, capsys, "--keep-last", "2", "--dry-run")
    assert code == 0, err
    assert msgspec.json.decode(msgspec.json.encode(dry)) == result
    assert [r.version for r in dry.removed] == [1] and all(p.exists() for p in places)

    async def cancelled_first() -> None:
        work = api.prune_versions(dest=dest, keep_last=1, registry=registry, transfer_id="t")
        registry.cancel("t")
        await work

    with pytest.raises(TransferCancelledError, match="cancelled") as raised:
        anyio.run(cancelled_first)
    assert "nothing was removed" in raised.value.hint
    assert all(p.exists() for p in places) and len(registry) == 0

    done = anyio.run(partial(pruned, keep_within=timedelta(days=1.5)))
    assert not done.dry_run and [r.version for r in done.removed] == [1, 2]
    assert done.bytes_freed == 14 and done.kept == 1
    assert [p.exists() for p in places] == [False, False, True]
    with pytest.raises(ConfigError, match="not one"):
        anyio.run(partial(pruned, keep_last=1, files="sess-1"))


def _keep_times(dest: Path, rel: bytes) -> set[int]:
    """The numbers of ``rel``'s versions the state has a keep time for."""
    with contextlib.closing(sqlite3.connect(dest / ".remote-sync" / "state.db")) as db:
        rows = db.execute("SELECT version FROM versions WHERE path = ?", (rel,))
        return {version for (version,) in rows}


#: Two more files of h0, each in a directory of its own (so in a versions folder of its own).
SECOND = b"agents/b/sessions/s.jsonl"
THIRD = b"agents/c/sessions/s.jsonl"


def _three_files(dest: Path) -> dict[bytes, list[Path]]:
    """PLAIN with four versions, SECOND and THIRD with three each, all kept days ago."""
    places = {PLAIN: _by_hand_kept(dest, [4 * DAY, 3 * DAY, 2 * DAY, DAY])}
    for rel in (SECOND, THIRD):
        places[rel] = _by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY], rel)
    return places


def _failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """PLAIN's v2 cannot be removed (an I/O error), THIRD's directory of the versions folder
    cannot be opened (no permission): each a failure of its own."""
    real_unlink, real_open = os.unlink, os.open

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fsencode(path) == os.fsencode(os.path.basename(PLAIN)) + b".v2":
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        real_unlink(path, *args, **kwargs)

    def opening(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if kwargs.get("dir_fd") is not None and os.fsencode(path) == b"c":
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "open", opening)


def test_a_prune_goes_on_past_each_failure_and_says_every_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that could not be removed stopped the prune there: the versions after it, and
    every other file's, stayed until the next prune, and only that one failure was said. As
    rsync --delete and restic prune do, it now goes on with the other copies and files,
    prints what it removed, then every failure (host, path, what to do), and exits 1; the
    state says no keep time of a copy that is gone and keeps those of the copies that stay
    untouched. The library raises the first failure, its hint counting the others and what
    went, or, given ``errors``, returns the result and appends every failure."""
    for form in ("table", "json"):
        dest = tmp_path / form
        places = _three_files(dest)
        _failing(monkeypatch)
        json = ["--json"] if form == "json" else []
        code, out, err = cli(
            ["versions", "prune", "-d", str(dest), "--keep-last", "1", *json], capsys
        )
        monkeypatch.undo()
        assert code == 1, err
        assert [p.exists() for p in places[PLAIN]] == [False, True, False, True]
        assert [p.exists() for p in places[SECOND]] == [False, False, True]
        assert all(p.exists() for p in places[THIRD])
        # v2's keep time went before its removal failed (as after a kill); THIRD's stay.
        assert _keep_times(dest, PLAIN) == {4} and _keep_times(dest, THIRD) == {1, 2, 3}
        lines = out.splitlines()
        if form == "table":
            said = err
            assert lines[-1] == "removed 4 versions (28 B freed); 3 versions kept"
            assert [line.split(" (")[0] for line in lines[:-1]] == [
                f"removed h0: {path_text(PLAIN)} v1",
                f"removed h0: {path_text(PLAIN)} v3",
                f"removed h0: {path_text(SECOND)} v1",
                f"removed h0: {path_text(SECOND)} v2",
            ]
        else:
            result, *errors = (msgspec.json.decode(line) for line in lines)
            assert _numbers(result["removed"]) == [1, 3, 1, 2] and result["bytes_freed"] == 28
            assert [(e["type"], e["kind"], e["host"]) for e in errors] == [
                ("error", "mirror", "h0")
            ] * 2
            said = "\n".join(f"{e['path']}: {e['message']} ({e['hint']})" for e in errors)
        assert "cannot remove version 2" in said and path_text(PLAIN) in said, said
        assert "cannot open a directory of the versions folder" in said, said
        assert "check its permissions" in said and "the prune went on and 1 other failure" in said
        # What the failures left is taken by the next prune.
        code, result, err = _prune(dest, capsys, "--keep-last", "1")
        assert code == 0 and _numbers(result["removed"]) == [2, 1, 2], err
        assert _keep_times(dest, THIRD) == {3}

    dest = tmp_path / "api"
    places = _three_files(dest)
    _failing(monkeypatch)
    with pytest.raises(MirrorError, match="cannot remove version 2") as raised:
        anyio.run(partial(api.prune_versions, dest=dest, keep_last=1))
    assert raised.value.host == "h0" and raised.value.path == path_text(PLAIN)
    assert (
        "the prune went on and 1 other failure: 4 versions were removed (28 bytes)"
        in raised.value.hint
    )
    assert [p.exists() for p in places[SECOND]] == [False, False, True]
    dest = tmp_path / "api-errors"
    places = _three_files(dest)
    errors: list[Any] = []
    done = anyio.run(partial(api.prune_versions, dest=dest, keep_last=1, errors=errors))
    assert [r.version for r in done.removed] == [1, 3, 1, 2] and done.bytes_freed == 28
    assert [type(e) for e in errors] == [MirrorError, MirrorError]
    assert "cannot remove version 2" in str(errors[0]) and "cannot open" in str(errors[1])
    monkeypatch.undo()

    # A directory that cannot be made durable once its copies are unlinked: said as the
    # mirror's error (it was a traceback), after what went, and the other files go on.
    dest = tmp_path / "fsync"
    places = _three_files(dest)

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync_fails)
    code, out, err = cli(["versions", "prune", "-d", str(dest), "--keep-last", "1"], capsys)
    monkeypatch.undo()
    assert code == 1 and err.count("cannot sync a directory of the versions folder") == 3, err
    assert out.splitlines()[-1] == "removed 7 versions (49 B freed); 3 versions kept"
    assert not any(p.exists() for rel in places for p in places[rel][:-1])


def test_a_prune_stops_when_the_state_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state that cannot be written (a full disk) would fail each file's commit alike:
    the prune stops there, says it once, and removes no copy whose keep time is not
    forgotten. Its hint says it stopped, not also that it "went on" (as it said, the hint
    of a prune that goes on past a copy added to that of one that stopped)."""
    dest = tmp_path / "m"
    places = _three_files(dest)

    def full(self: MirrorState, *args: Any) -> None:
        raise self._db_error(sqlite3.OperationalError("database or disk is full"), "forget")

    monkeypatch.setattr(MirrorState, "forget_versions", full)
    code, out, err = cli(["versions", "prune", "-d", str(dest), "--keep-last", "1"], capsys)
    monkeypatch.undo()
    assert code == 1 and err.count("disk full") == 1 and "the prune stopped there" in err, err
    assert "went on" not in err, err
    assert out.splitlines() == ["removed 0 versions (0 B freed); 3 versions kept"]
    assert all(p.exists() for rel in places for p in places[rel])


def test_api_prune_versions_of_a_rule_of_the_wrong_type_is_an_argument_error(
    tmp_path: Path,
) -> None:
    """``keep_last="3"`` or ``keep_within=5`` was a plain ConfigError whose hint said a rule
    that keeps nothing is no rule; as other calls' arguments of the wrong type, it is an
    ArgumentError (a ValueError too) saying what to pass, and nothing is removed."""
    dest = tmp_path / "m"
    _by_hand_kept(dest, [3 * DAY, 2 * DAY])
    before = _files(dest)
    for kwargs, says in (
        ({"keep_last": "3"}, "keep_last=3"),
        ({"keep_last": 2.0}, "keep_last=3"),
        ({"keep_last": True}, "keep_last=3"),
        ({"keep_within": 5}, "timedelta(days=7)"),
        ({"keep_last": 1, "keep_within": 5.0}, "timedelta(days=7)"),
    ):
        with pytest.raises(ArgumentError) as raised:
            anyio.run(partial(api.prune_versions, dest=dest, **kwargs))
        assert isinstance(raised.value, ValueError)
        assert says in raised.value.hint and "keeps nothing" not in raised.value.hint
    assert _files(dest) == before


def test_versions_list_reads_again_when_a_sync_started_during_its_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read while no sync had the state open, a listing (and a restore's lookup, and a dry
    run's) failed as "malformed" when a sync started during it; it is read again on a new
    connection, as `check` reads it, and lists what an undisturbed read lists. A damaged
    database is still said."""
    dest = tmp_path / "m"
    _by_hand_kept(dest, [3 * DAY, 2 * DAY, DAY])
    listing = ["versions", "list", "--dest", str(dest), "--json"]
    dry = ["versions", "prune", "--dest", str(dest), "--keep-last", "1", "-n", "--json"]
    expected = [cli(listing, capsys), cli(dry, capsys)]
    assert expected[0][0] == 0 and len(expected[0][1].splitlines()) == 3
    for args, answer in zip([listing, dry], expected, strict=True):
        opened = tear_reads(monkeypatch, dest, torn=1)
        assert cli(args, capsys) == answer
        assert len(opened) == 2  # read again once
        monkeypatch.undo()
    tear_reads(monkeypatch, dest, torn=1)
    out = io.BytesIO()
    assert restore_version(dest, "h0", path_text(PLAIN), 1, out) == len(b"copy 1\n")
    monkeypatch.undo()

    opened = tear_reads(monkeypatch, dest, torn=1000, sync=False)
    code, out_text, err = cli(listing, capsys)
    assert code == 2 and "malformed" in out_text + err and len(opened) == 1


@pytest.mark.parametrize("at", ["the host's folder", "a folder deeper"])
def test_a_link_in_the_versions_tree_is_refused_when_a_version_is_kept(
    one_host: tuple[SSHFleet, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    at: str,
) -> None:
    """A kept copy's folders were made by path (``mkdir(parents=True)``, which takes a link
    to a directory for the directory) and the copy renamed in by path: a symbolic link
    planted at ``versions/<host>`` or deeper put the mirror's old copy where it pointed, out
    of the tree that ``versions`` and ``check`` read. Each folder is now made and entered by
    name in its parent's descriptor, no link followed: the file fails alone with a
    MirrorError naming the host, the file and the link, and saying what to do; nothing is
    made or written through the link, and the mirrored copy stays as it was. With the link
    moved aside, the next sync keeps the version."""
    fleet, inv, dest = one_host
    rng = random.Random(16)
    other = session_bytes(rng, 2)
    _write(fleet, PLAIN, session_bytes(rng, 5))
    _write(fleet, BASE + b"other.jsonl", other)
    _sync(inv, dest, capsys)
    first = (dest / "h0" / os.fsdecode(PLAIN)).read_bytes()
    versions = dest / ".remote-sync" / "versions"
    link = versions / "h0" if at == "the host's folder" else versions / "h0" / "agents" / "a"
    link.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link.symlink_to(elsewhere)

    _write(fleet, PLAIN, session_bytes(rng, 3, start=100))  # compacted: the old copy is kept
    other += session_bytes(rng, 2, start=50)
    _write(fleet, BASE + b"other.jsonl", other)  # grown: no version needed, mirrored as ever
    code, events = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys)
    assert code == 1  # the file failed alone; the host's other file synced
    failed = [e for e in events if getattr(e, "kind", None) == "mirror"]
    assert len(failed) == 1, events
    error = failed[0]
    shown = path_text(os.fsencode(link.relative_to(dest)))
    assert getattr(error, "host", None) == "h0" and getattr(error, "path", None) == path_text(PLAIN)
    message, hint = getattr(error, "message", ""), getattr(error, "hint", "")
    assert f"{shown} in the versions folder is a symbolic link" in message, message
    assert hint.startswith("move it aside") and "mirrored copy is left as it was" in hint, hint
    assert list(elsewhere.iterdir()) == [] and link.is_symlink()
    assert (dest / "h0" / os.fsdecode(PLAIN)).read_bytes() == first
    assert (dest / "h0" / os.fsdecode(BASE + b"other.jsonl")).read_bytes() == other

    link.unlink()
    _sync(inv, dest, capsys)
    rows = _listed(dest, capsys)
    assert [(r.path, r.version) for r in rows] == [(path_text(PLAIN), 1)]
    assert (dest / os.fsdecode(path_bytes(rows[0].file))).read_bytes() == first


def test_a_round_keeping_versions_of_many_files_in_one_folder_lists_it_once(
    one_host: tuple[SSHFleet, Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six files of one directory rewritten between syncs, each flushed on its own: the
    round lists their versions folder once, not once per copy kept (each listing as long as
    the folder). Each copy is still numbered after every version on disk: one put there by
    hand between two rounds is seen by the next, passed over, and left as it was."""
    fleet, inv, dest = one_host
    rng = random.Random(31)
    rels = [BASE + b"s%d.jsonl" % i for i in range(6)]
    for rel in rels:
        _write(fleet, rel, session_bytes(rng, 5))
    _sync(inv, dest, capsys)
    monkeypatch.setattr(engine, "FLUSH_SECONDS", 0.0)  # every finished file starts a flush
    listings: list[int] = []
    real_listdir = os.listdir

    def counted(path: Any = ".") -> list[Any]:
        if isinstance(path, int):  # a versions folder, listed by its descriptor
            listings.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counted)
    state = MirrorState(dest)  # only its paths are used
    for rewrites, by_hand in ([rels, 4], [rels[:1], 7]):
        hand = state.version_path("h0", rels[0], by_hand)
        hand.parent.mkdir(parents=True, exist_ok=True)
        hand.write_bytes(b"put here by hand\n")
        old = {rel: (dest / "h0" / os.fsdecode(rel)).read_bytes() for rel in rewrites}
        for rel in rewrites:  # compacted: shorter, another history
            _write(fleet, rel, session_bytes(rng, 2, start=100))
        listings.clear()
        _sync(inv, dest, capsys)
        assert len(listings) == 1
        with MirrorState(dest) as opened:
            rows = opened.host_files("h0")
        for rel in rewrites:
            number = by_hand + 1 if rel == rels[0] else 1
            assert rows[rel].version == number
            assert state.version_path("h0", rel, number).read_bytes() == old[rel]
        assert hand.read_bytes() == b"put here by hand\n"
