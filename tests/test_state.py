"""Recovery on open: the mirror is made to match its checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_sync.errors import DestinationError, MirrorError, StateError
from remote_sync.mirror.durable import make_durable
from remote_sync.mirror.fetch_events import End
from remote_sync.mirror.listing import RemoteFile
from remote_sync.mirror.plan import Transfer
from remote_sync.mirror.returning import OverlapRead, same_file_back
from remote_sync.mirror.state import (
    FINGERPRINT_BYTES,
    SCHEMA_VERSION,
    FileState,
    MirrorState,
    fingerprint_of,
)
from remote_sync.mirror.version_names import VersionNumbers
from remote_sync.mirror.writer import AppendWriter, RewriteDetected, WholeWriter


def row(path: bytes, size: int, host: str = "h", data: bytes = b"") -> FileState:
    """A checkpoint of ``size`` bytes; its fingerprint is that of ``data``'s committed head
    (recovery compares it before cutting a longer file back)."""
    return FileState(host, path, "append", size, size, 1.0, 1, 7, fingerprint_of(data[:size]))


def test_recovery_cuts_back_resets_and_cleans(tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    odd = b"dir/odd \xff\nname.jsonl"  # any bytes in a name
    files = {b"longer.jsonl": b"a\nb\nPARTIAL", b"exact.jsonl": b"a\n", b"shorter.jsonl": b"a\n"}
    with MirrorState(dest) as state:
        for path, data in files.items():
            local = state.local_path("h", path)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
        state.local_path("h", odd).parent.mkdir(parents=True, exist_ok=True)
        state.local_path("h", odd).write_bytes(b"x\ny\n")
        state.commit(
            [row(b"longer.jsonl", 4, data=files[b"longer.jsonl"]), row(b"exact.jsonl", 2),
             row(b"shorter.jsonl", 5), row(b"missing.jsonl", 3), row(odd, 2, data=b"x\ny\n"),
             row(b"other.jsonl", 1, host="g")]
        )  # fmt: skip
        state.tmp_dir.mkdir(parents=True, exist_ok=True)
        (state.tmp_dir / "fetch-1-2").write_bytes(b"stray")
    with MirrorState(dest) as state:
        notes = state.recover(["h"])
        assert state.local_path("h", b"longer.jsonl").read_bytes() == b"a\nb\n"
        assert state.local_path("h", odd).read_bytes() == b"x\n"
        assert state.local_path("h", b"exact.jsonl").read_bytes() == b"a\n"
        rows = state.host_files("h")
        assert (rows[b"shorter.jsonl"].size, rows[b"shorter.jsonl"].ino) == (2, -1)
        assert (rows[b"missing.jsonl"].size, rows[b"missing.jsonl"].ino) == (0, -1)
        assert rows[b"longer.jsonl"].size == 4 and rows[b"longer.jsonl"].ino == 7
        assert state.host_files("g")[b"other.jsonl"].ino == 7  # host g not in this run
        assert list(state.tmp_dir.iterdir()) == []
    assert len(notes) == 4
    assert sum("cut back" in n for n in notes) == 2
    assert sum("fetched whole" in n for n in notes) == 2


def test_fingerprint_is_a_digest_of_the_first_kib(tmp_path: Path) -> None:
    """Rows stay small (a KiB per row spilled into an overflow page each): 16 bytes that
    change with the first KiB, recomputed while the file is shorter than that."""
    lines = b"".join(b'{"n":%04d}\n' % i for i in range(300))  # 3300 bytes
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        new = FileState("h", b"s.jsonl", "append", 0, len(lines), 1.0, 1, 7, b"")
        whole = WholeWriter(state, new, lines_only=True, category="new")
        whole.write(lines[:110])  # ten whole lines
        pending = whole.finish()
        assert pending.row.fingerprint == fingerprint_of(lines[:110])
        make_durable(state, [pending])
        state.commit([pending.row])
        grown = dataclasses.replace(pending.row)
        append = AppendWriter(state, pending.row, 110 - 20, grown)
        append.write(lines[90:])  # 20 bytes of overlap, then the rest
        pending = append.finish()
        assert len(pending.row.fingerprint) == 16
        assert pending.row.fingerprint == fingerprint_of(lines[:FINGERPRINT_BYTES])
        make_durable(state, [pending])
        state.commit([pending.row])
        assert state.local_path("h", b"s.jsonl").read_bytes() == lines


def test_state_of_schema_1_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    head = bytes(range(256)) * 4
    with MirrorState(tmp_path / "m") as state:
        state.commit([FileState("h", b"a.jsonl", "append", 9, 9, 1.0, 1, 7, head)])
        state.db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with MirrorState(tmp_path / "m") as state:
        assert state.host_files("h")[b"a.jsonl"].fingerprint == fingerprint_of(head)
        version = state.db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
        state.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="newer remote-sync") as info:
        MirrorState(tmp_path / "m").open()
    assert "upgrade remote-sync" in str(info.value)
    with sqlite3.connect(tmp_path / "m" / ".remote-sync" / "state.db") as db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with MirrorState(tmp_path / "m"):  # the refusal released the lock
        pass


def test_a_symbolic_link_or_fifo_at_the_lock_is_refused_not_followed(tmp_path: Path) -> None:
    """The destination's lock file was opened following a symbolic link planted at its name
    (the file it names created and locked in its place) and a FIFO there was taken for a
    lock. Both are refused, naming the lock file, as the agent refuses them at its own; what
    the link names is not made."""
    dest = tmp_path / "m"
    (dest / ".remote-sync").mkdir(parents=True)
    lock = dest / ".remote-sync" / "lock"
    target = tmp_path / "elsewhere"
    lock.symlink_to(target)
    with pytest.raises(DestinationError, match="destination's lock file is a symbolic link") as e:
        MirrorState(dest).open()
    assert e.value.path == str(lock) and e.value.hint.startswith("remove it")
    assert not target.exists() and lock.is_symlink()
    assert not (dest / ".remote-sync" / "state.db").exists()
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(DestinationError, match="lock file is no regular file"):
        MirrorState(dest).open()
    lock.unlink()
    with MirrorState(dest):  # once removed, it is made again
        assert lock.is_file() and not lock.is_symlink()


@pytest.mark.parametrize("what", ["a link to a directory", "a dangling link", "a file"])
def test_a_state_directory_that_is_no_directory_is_refused(tmp_path: Path, what: str) -> None:
    """``DIR/.remote-sync`` was made with ``mkdir(exist_ok=True)``, which takes a symbolic
    link to a directory for the directory: the state, lock and temp files went where it
    pointed (a dangling link or a file gave "cannot create the destination: File exists").
    Each is refused, naming the place and what to do, and nothing is made through it."""
    dest = tmp_path / "m"
    dest.mkdir()
    control = dest / ".remote-sync"
    elsewhere = tmp_path / "elsewhere"
    if what == "a link to a directory":
        elsewhere.mkdir()
        control.symlink_to(elsewhere)
    elif what == "a dangling link":
        control.symlink_to(elsewhere)
    else:
        control.write_bytes(b"")
    with pytest.raises(DestinationError, match="destination's state directory is") as e:
        MirrorState(dest).open()
    said = "a symbolic link" if "link" in what else "not a directory"
    assert e.value.message == f"the destination's state directory is {said}"
    assert e.value.path == str(control) and e.value.hint.startswith("move it aside")
    assert os.path.lexists(control)  # left as it was
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []


def test_a_link_at_the_temp_or_versions_folder_is_not_followed(tmp_path: Path) -> None:
    """Inside the state directory, a symbolic link at ``tmp`` survived recovery (rmtree
    refuses a link, which ``ignore_errors`` hid, and ``mkdir(exist_ok=True)`` took it) and
    every fetch's temp file was written where it pointed; one at ``versions`` put kept copies
    where ``versions list`` does not look. The temp folder's link is removed (not what it
    names) and made again; the versions folder's is refused."""
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        state.recover()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"theirs")
    control = dest / ".remote-sync"
    (control / "tmp").rmdir()
    (control / "tmp").symlink_to(elsewhere)
    with MirrorState(dest) as state:
        state.recover()
        assert state.tmp_dir.is_dir() and not state.tmp_dir.is_symlink()
        assert state.temp_path().parent == state.tmp_dir
    assert [p.name for p in elsewhere.iterdir()] == ["keep"]
    (control / "versions").symlink_to(elsewhere)
    with pytest.raises(DestinationError, match="versions folder is a symbolic link") as e:
        MirrorState(dest).open()
    assert e.value.path == str(control / "versions")


@pytest.mark.parametrize("name", ["state.db", "state.db-wal", "state.db-shm"])
def test_a_link_at_a_state_database_file_is_refused_not_followed(tmp_path: Path, name: str) -> None:
    """SQLite opened ``state.db`` through a symbolic link planted at its name: the state of
    the mirror lived where it pointed, and two mirrors linked to one database shared their
    checkpoints under two locks. A link at its ``-wal`` failed as "the state database is
    unusable", hinting to move the database aside (every file fetched again). Each is
    refused, naming the link, and the state it names is left as it was."""
    elsewhere = tmp_path / "elsewhere"
    with MirrorState(elsewhere):
        pass
    dest = tmp_path / "m"
    with MirrorState(dest):
        pass
    control = dest / ".remote-sync"
    target = elsewhere / ".remote-sync" / name
    (control / name).unlink(missing_ok=True)
    (control / name).symlink_to(target)
    before = target.read_bytes() if target.exists() else None
    with pytest.raises(DestinationError, match=f"state database's file {name} is a symbolic") as e:
        MirrorState(dest).open()
    assert e.value.path == str(control / name)
    assert (control / name).is_symlink()
    assert (target.read_bytes() if target.exists() else None) == before
    (control / name).unlink()
    if name == "state.db":
        (elsewhere / ".remote-sync" / name).rename(control / name)
    with MirrorState(dest):  # once the link is gone, it opens
        pass


def _two_mirrors(tmp_path: Path) -> tuple[Path, Path]:
    """A mirror ``m`` and another, ``elsewhere``, whose state names a host ``theirs``."""
    elsewhere = tmp_path / "elsewhere"
    with MirrorState(elsewhere) as state:
        state.set_host("theirs", "openclaw", "/", "theirs")
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        state.set_host("ours", "openclaw", "/", "ours")
    return dest, elsewhere


def _link_swapped_in_at_the_open(
    monkeypatch: pytest.MonkeyPatch, db: Path, theirs: Path, aside: Path, back: bool
) -> None:
    """At the next ``sqlite3.connect`` (one function, whichever module calls it): ``db`` is
    moved to ``aside`` and a link to ``theirs`` put in its place (and taken away again, ``db``
    put back, if ``back``)."""
    real_connect = sqlite3.connect

    def swapped(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        os.rename(db, aside)
        db.symlink_to(theirs)
        try:
            return real_connect(*args, **kwargs)
        finally:
            if back:
                db.unlink()
                os.rename(aside, db)

    monkeypatch.setattr(sqlite3, "connect", swapped)


#: The readers of the state, which take no lock: each exits 2 on a refused destination.
_READERS = [
    ["sessions", "list"],
    ["sessions", "stats"],
    ["check"],
    ["versions", "list"],
]


@pytest.mark.parametrize("name", ["state.db", "state.db-wal"])
@pytest.mark.parametrize("reader", _READERS, ids=lambda words: " ".join(words))
def test_a_reader_refuses_a_link_at_the_state_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reader: list[str]
) -> None:
    """The readers (``sessions``, ``check``, ``versions list``) opened ``state.db`` through
    a symbolic link planted at its name and read another mirror's state as this one's; a
    link at its ``-wal`` failed as "unable to open database file", hinting at permissions.
    Each is refused, exit 2, naming the link and what to do, and what it names is left as it
    was."""
    from remote_sync.cli import main

    dest, elsewhere = _two_mirrors(tmp_path)
    control = dest / ".remote-sync"
    if name == "state.db":
        target = elsewhere / ".remote-sync" / "state.db"
        (control / name).unlink()
    else:
        target = tmp_path / "journal"
        target.write_bytes(b"")
    (control / name).symlink_to(target)
    before = target.read_bytes()
    code = main([*reader, "--dest", str(dest)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"the destination's state database's file {name} is a symbolic link" in err, err
    assert str(control / name) in err and ("put the database" in err or "remove the link" in err)
    assert target.read_bytes() == before and (control / name).is_symlink()


def test_a_dry_runs_copy_of_the_state_refuses_a_link_at_the_state_database(tmp_path: Path) -> None:
    """A dry run copies the state to work on; the copy resolved a link at ``state.db`` and
    copied another mirror's state. It is refused as the readers refuse it."""
    from remote_sync.mirror.state_reader import copy_state

    dest, elsewhere = _two_mirrors(tmp_path)
    db = dest / ".remote-sync" / "state.db"
    db.unlink()
    db.symlink_to(elsewhere / ".remote-sync" / "state.db")
    with pytest.raises(DestinationError, match=r"state\.db is a symbolic link") as e:
        copy_state(db, tmp_path / "copy.db")
    assert e.value.path == str(db) and not (tmp_path / "copy.db").exists()


def _copy_state_through(
    factory: type[sqlite3.Connection], source: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run's copy of ``source`` to ``target``, the state's connections made by
    ``factory`` (which stands in for a sync writing meanwhile)."""
    from remote_sync.mirror import state_reader
    from remote_sync.mirror.state_reader import copy_state

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, **kwargs, factory=factory)

    monkeypatch.setattr(state_reader.sqlite3, "connect", connect)
    copy_state(source, target)
    monkeypatch.undo()


def test_a_dry_runs_copy_of_the_state_is_whole_when_a_sync_writes_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run copies the state while no sync has it open (no -wal): SQLite reads it as a
    file, unlocked. A sync that commits and closes during the copy (here between two steps of
    the backup: its checkpoint rewrites the file) gave a copy of pages from two versions of
    the database, "Rowid out of order" and rows missing from an index. The copy is taken
    again, whole, of the database as the sync left it."""
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        state.db.executemany(
            "INSERT INTO meta VALUES (?, ?)", ((f"k{i}", "old" * 20) for i in range(3000))
        )
    source = dest / ".remote-sync" / "state.db"
    assert not source.with_name("state.db-wal").exists()  # read as a file, then
    synced = []

    def sync_commits() -> None:
        with MirrorState(dest) as state:  # a sync's open, commit and close (its checkpoint)
            state.db.execute("UPDATE meta SET value = ? WHERE key LIKE 'k%'", ("new" * 30,))
            state.db.executemany(
                "INSERT INTO meta VALUES (?, ?)", ((f"k{i}", "new" * 30) for i in range(3000, 4000))
            )
        synced.append(True)

    class Stepped(sqlite3.Connection):
        def backup(self, target: sqlite3.Connection, **_kwargs: Any) -> None:
            def between_steps(_status: int, _remaining: int, _total: int) -> None:
                if not synced:
                    sync_commits()

            super().backup(target, pages=5, progress=between_steps)

    _copy_state_through(Stepped, source, tmp_path / "copy.db", monkeypatch)
    assert synced
    with contextlib.closing(sqlite3.connect(tmp_path / "copy.db")) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        values = "SELECT value, count(*) FROM meta WHERE key LIKE 'k%' GROUP BY value"
        assert copy.execute(values).fetchall() == [("new" * 30, 4000)]


def test_a_dry_runs_copy_that_fails_as_a_sync_writes_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy read unlocked while a sync rewrote the file may also fail outright (pages of
    two versions: "malformed"), not only come out torn. As a reader's read, it is taken
    again when the files changed meanwhile, where the dry run failed at once."""
    dest, source = _a_closed_state(tmp_path, "k")
    failed = []

    class FailsOnce(sqlite3.Connection):
        def backup(self, target: sqlite3.Connection, **kwargs: Any) -> None:
            if not failed:
                failed.append(True)
                with MirrorState(dest) as state:  # a sync's open, commit and close
                    state.db.execute("UPDATE meta SET value = 'w' WHERE key = 'k'")
                raise sqlite3.DatabaseError("database disk image is malformed")
            super().backup(target, **kwargs)

    _copy_state_through(FailsOnce, source, tmp_path / "copy.db", monkeypatch)
    assert failed
    with contextlib.closing(sqlite3.connect(tmp_path / "copy.db")) as copy:
        assert copy.execute("SELECT value FROM meta WHERE key = 'k'").fetchall() == [("w",)]


@pytest.mark.parametrize("back", [False, True], ids=["left", "taken back"])
def test_a_link_swapped_in_as_a_reader_opens_the_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], back: bool
) -> None:
    """SQLite opens by path, so a look by name before the open leaves a window: a link put at
    ``state.db`` in it (here: as the reader calls SQLite), even one taken away again once
    SQLite followed it, had the reader read another mirror's state. The file SQLite holds is
    compared with the one at the name, looked at after the open with no link followed: the
    read is refused, naming the file, and nothing of the other mirror is shown."""
    from remote_sync.cli import main

    dest, elsewhere = _two_mirrors(tmp_path)
    db = dest / ".remote-sync" / "state.db"
    theirs = elsewhere / ".remote-sync" / "state.db"
    _link_swapped_in_at_the_open(monkeypatch, db, theirs, tmp_path / "aside.db", back)
    code = main(["sessions", "stats", "--by", "host", "--dest", str(dest), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "theirs" not in out, (out, err)
    said = "changed while it was opened" if back else "is a symbolic link"
    assert f"the destination's state database's file state.db {said}" in err, err
    assert str(db) in err


def test_a_link_swapped_in_as_a_sync_opens_the_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same window at a sync's open, which looks at the database's files by name under
    the lock: a link put at ``state.db`` as SQLite opens it and taken away again had the
    sync commit its checkpoints into another mirror's state. The open is refused, naming the
    file, and the other mirror's state is as it was."""

    dest, elsewhere = _two_mirrors(tmp_path)
    db = dest / ".remote-sync" / "state.db"
    theirs = elsewhere / ".remote-sync" / "state.db"
    before = theirs.read_bytes()
    _link_swapped_in_at_the_open(monkeypatch, db, theirs, tmp_path / "aside.db", back=True)
    with pytest.raises(DestinationError, match=r"file state\.db changed while it was opened") as e:
        MirrorState(dest).open()
    monkeypatch.undo()
    assert e.value.path == str(db) and e.value.hint.startswith("find what else writes")
    assert theirs.read_bytes() == before
    with MirrorState(dest) as state:  # its own state, untouched
        assert list(state.hosts()) == ["ours"]


@pytest.mark.parametrize("back", [False, True], ids=["left", "taken back"])
def test_a_link_swapped_in_as_a_sync_opens_the_state_is_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, back: bool
) -> None:
    """The same window, with the link naming a database that is not a mirror's state (a
    user's own, in SQLite's default rollback mode): the look after the open came after the
    schema was written, so the refused open had turned that database to WAL and added the
    state's tables to it. The open is now refused before any write: the database is left
    byte for byte as it was."""

    dest, _elsewhere = _two_mirrors(tmp_path)
    db = dest / ".remote-sync" / "state.db"
    theirs = tmp_path / "notes.db"
    with contextlib.closing(sqlite3.connect(theirs)) as other:
        other.execute("CREATE TABLE notes (body TEXT)")
        other.execute("INSERT INTO notes VALUES ('keep me')")
        other.commit()
    before = theirs.read_bytes()
    _link_swapped_in_at_the_open(monkeypatch, db, theirs, tmp_path / "aside.db", back)
    said = "changed while it was opened" if back else "is a symbolic link"
    with pytest.raises(DestinationError, match=f"file state\\.db {said}") as e:
        MirrorState(dest).open()
    monkeypatch.undo()
    assert e.value.path == str(db)
    assert theirs.read_bytes() == before
    assert not (tmp_path / "notes.db-wal").exists()
    if not back:
        db.unlink()
        os.rename(tmp_path / "aside.db", db)
    with MirrorState(dest) as state:  # its own state, untouched
        assert list(state.hosts()) == ["ours"]


@pytest.mark.parametrize("at", ["control directory", "lock file"])
def test_an_open_over_the_users_quota_says_the_quota_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """EDQUOT at the open was said as a full disk ("the destination's disk is full (Disk
    quota exceeded; 5120 KiB free)", and df -h to look at), where the disk has room and the
    quota does not: it now names the quota and how to see it. The open still takes back
    what it made, as for a full disk."""
    over = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    if at == "control directory":
        real_mkdir = Path.mkdir

        def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
            if self.name == ".remote-sync":
                raise over
            real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        real_open = os.open

        def os_open(path: Any, *args: Any, **kwargs: Any) -> int:
            if os.fspath(path) == "lock" and "dir_fd" in kwargs:  # opened by name in the state dir
                raise over
            return int(real_open(path, *args, **kwargs))

        monkeypatch.setattr(os, "open", os_open)
    dest = tmp_path / "m"
    with pytest.raises(MirrorError) as info:
        MirrorState(dest).open()
    monkeypatch.undo()
    assert info.value.kind == "mirror" and info.value.path == str(dest)
    assert info.value.message == (
        "this user's disk quota on the destination is full (Disk quota exceeded)"
    )
    assert info.value.hint.startswith("this user's disk quota on the destination is used up")
    assert "quota -s" in info.value.hint and "df -h" not in info.value.hint
    assert not dest.exists()


def test_the_readme_quotes_what_a_full_quota_and_a_full_sqlite_write_say(tmp_path: Path) -> None:
    """The README's row for exit 1 said that over the quota both messages "say the quota is
    full instead", where midway the message begins "disk full (over this user's quota)", and
    it claimed that for every full disk, where SQLite's "database or disk is full" cannot
    tell a quota from a disk. It now quotes what each says."""
    from remote_sync.mirror.destination import full_disk_error, mirror_error

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| 1 |")]
    over = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    at_start = full_disk_error(tmp_path, over).message
    midway = mirror_error(over, "h0", b"a.jsonl", "write the file", tmp_path / "a").message
    for message, begins in (
        (at_start, "this user's disk quota on the destination is full"),
        (midway, "disk full (over this user's quota) while trying to"),
    ):
        assert message.startswith(begins) and f'"{begins}"' in row, (message, row)
    with MirrorState(tmp_path / "m") as state:
        full = state._db_error(sqlite3.OperationalError("database or disk is full"), "commit")
    assert full.message.startswith("disk full while trying to commit") and "df -h" in full.hint
    assert '"database or disk is full" is told as a full disk, with `df -h`' in row
    assert "either says the quota is full instead" not in row


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_dry_run_and_an_append_judge_an_overlap_alike(data: st.DataObject) -> None:
    """A dry run's check of a returning file's overlap (returning.same_file_back) and the append
    of a real run compare the mirror's bytes with the host's through one Overlap: whatever
    the mirror holds (cut short since its checkpoint, or not) and whatever the host sends
    (the overlap, another one, more or fewer bytes, in any chunks), a dry run says an append
    where an append goes through, and a whole fetch where it finds the file rewritten."""
    on_disk = data.draw(st.binary(min_size=1, max_size=40), label="mirrored bytes")
    size = len(on_disk) + data.draw(st.integers(0, 3), label="cut short by")
    start = data.draw(st.integers(0, size), label="start")
    same = on_disk[start:size]
    sent = data.draw(
        st.one_of(
            st.binary(max_size=4).map(lambda more: same + more),
            st.binary(max_size=size - start + 4),
            st.just(same[:-1]),
        ),
        label="host's bytes",
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(sent)), max_size=3), label="chunks"))
    chunks = [sent[a:b] for a, b in zip([0, *cuts], [*cuts, len(sent)], strict=True)]
    row = FileState("h", b"s.jsonl", "append", size, size, 1.0, 1, 7, b"")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "s.jsonl"
        local.write_bytes(on_disk)
        t = Transfer(
            RemoteFile(b"s.jsonl", start + len(sent), 2.0, 1, 7),
            "append",
            "append",
            "grown",
            start,
            len(sent),
            row,
        )
        keep = size - start
        # The host's file ends as listed (End): shorter than the overlap, it came Short.
        read = OverlapRead(keep, bytearray(sent[:keep]), ended=End)
        dry = same_file_back(t, read, local) if len(sent) >= keep else False
        try:
            writer = AppendWriter(
                cast(Any, None), row, start, dataclasses.replace(row), local=local
            )
            try:
                for chunk in chunks:
                    writer.write(chunk)
                os.close(writer.finish().fd)
            except RewriteDetected:
                writer.abort()
                raise
            appended = True
        except RewriteDetected:
            appended = False
    assert dry == appended


def test_a_state_database_full_midway_says_where_and_what_to_run(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" midway said "disk full while trying to write
    checkpoints" and "check free space on the destination": it now says the room left and
    what to run, as a disk full at the open does."""
    with MirrorState(tmp_path / "m") as state:
        full = state._db_error(
            sqlite3.OperationalError("database or disk is full"), "write checkpoints", "h"
        )
        other = state._db_error(sqlite3.OperationalError("disk I/O error"), "write checkpoints")
    control = tmp_path / "m" / ".remote-sync"
    assert full.message.startswith(
        "disk full while trying to write checkpoints (database or disk is full; "
    ) and full.message.endswith(" KiB free)"), full.message
    assert full.hint == (
        f"free space on the file system that holds it (df -h {control}; df -i for inodes), or "
        "move the mirror to a larger one, then run again; what was committed is kept"
    )
    assert (other.message, other.hint) == (
        "cannot write checkpoints: disk I/O error",
        "check free space on the destination",
    )


_NAME_BYTES = st.sampled_from([b"a", b"x", b"~", b".", b"v", b"1", b"0", b"f", b"\xff"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_NAME_BYTES, min_size=1, max_size=8).map(b"".join),
    st.sampled_from([0, 200, 245, 250, 252]),
    st.lists(st.integers(1, 120), max_size=5),
    st.lists(st.integers(1, 120), max_size=5),
)
def test_a_new_version_is_numbered_after_the_highest_on_disk_from_any_name(
    stem: bytes, pad: int, mine: list[int], theirs: list[int]
) -> None:
    """A new version of a file is numbered after its highest one, read back from the names
    in its versions directory, gaps or not, whatever its name: one cut with a digest for
    some numbers and not others (a name near 255 bytes), one ending like a version or a cut
    name itself; never from another file's versions in the same directory (a name that is a
    prefix of this one's, or this one's followed by a version's suffix). The round's
    numbers, listed once, take in the copies it keeps there, as a new listing would; a
    name put there by hand meanwhile is passed over, not replaced."""
    name = b"y" * pad + stem
    if name in (b".", b".."):
        return
    others = [name[:-1] or b"z", name + b".v1", b"z" + name[:254]]
    with tempfile.TemporaryDirectory() as tmp:
        state = MirrorState(Path(tmp))  # not opened: only its paths are used
        for rel, numbers in [(b"d/" + name, mine)] + [(b"d/" + o, theirs) for o in others]:
            for number in numbers:
                place = state.version_path("h", rel, number)
                place.parent.mkdir(parents=True, exist_ok=True)
                place.write_bytes(b"")
        # As a sync asks it: the folder made and opened (a descriptor lists str names).
        os.makedirs(state.versions_folder("h", b"d/" + name), exist_ok=True)
        folder = os.open(state.versions_folder("h", b"d/" + name), os.O_RDONLY | os.O_DIRECTORY)
        rel = b"d/" + name
        try:
            numbers = VersionNumbers()
            first = numbers.number(state, "h", rel, folder, 0)
            assert first == max(mine, default=0) + 1
            assert numbers.number(state, "h", rel, folder, first + 3) == first + 4
            state.version_path("h", rel, first).write_bytes(b"")
            numbers.kept(state, "h", rel, first)
            assert numbers.number(state, "h", rel, folder, 0) == first + 1
            assert VersionNumbers().number(state, "h", rel, folder, 0) == first + 1
            numbers.taken_back(state, "h", rel, first)
            state.version_path("h", rel, first).unlink()
            assert numbers.number(state, "h", rel, folder, 0) == first
            state.version_path("h", rel, first + 1).mkdir()  # by hand, after the listing
            numbers.kept(state, "h", rel, first)
            assert numbers.number(state, "h", rel, folder, 0) == first + 2
        finally:
            os.close(folder)


@pytest.mark.parametrize("how", ["another database", "a link"])
def test_a_worker_threads_connection_opens_the_database_the_sync_opened(
    tmp_path: Path, how: str
) -> None:
    """A sync's worker threads open the state database again by path (``for_thread``), as
    every round plans and indexes. That look only asked whether the file at ``state.db`` was
    one this process held open, which the sync's first connection makes true of the real
    one, and it listed every descriptor of the process for that. A database put in its place
    during the sync (another mirror's, renamed in) was read and written as this mirror's
    state; a link there made SQLite open the file it names. Each is refused, naming the
    file, before SQLite opens anything, and the database the sync opened is its state."""
    dest, elsewhere = _two_mirrors(tmp_path)
    db = dest / ".remote-sync" / "state.db"
    theirs = elsewhere / ".remote-sync" / "state.db"
    with MirrorState(dest) as state:
        os.rename(db, tmp_path / "aside.db")
        if how == "a link":
            db.symlink_to(theirs)
        else:
            os.rename(theirs, db)
        with pytest.raises(DestinationError, match=r"file state\.db ") as e:
            state.for_thread().close()
        assert e.value.path == str(db)
        db.unlink()
        os.rename(tmp_path / "aside.db", db)
        with contextlib.closing(state.for_thread()) as worker:  # the state it opened: fine
            assert list(worker.hosts()) == ["ours"]


def test_a_worker_threads_connection_lists_no_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first connection holding the database, the look at ``/proc/self/fd`` tells a
    worker thread's connection nothing, and it cost 10 ms with 2,000 descriptors open (a
    fleet's SSH connections) on every round of every host: it is not made."""
    from remote_sync.mirror import control

    listed: list[object] = []
    monkeypatch.setattr(control, "_open_files", lambda: listed.append(1))
    with MirrorState(tmp_path / "m") as state:
        listed.clear()
        with contextlib.closing(state.for_thread()) as worker:
            assert list(worker.hosts()) == []
    assert listed == []


@settings(max_examples=200, deadline=None)
@given(
    name=st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b),
    cut_like=st.booleans(),
    version=st.integers(min_value=1, max_value=999_999_999),
)
def test_a_files_versions_are_found_among_its_neighbours_versions(
    name: bytes, cut_like: bool, version: int
) -> None:
    """numbered_versions passes another file's entries over by their first bytes before its
    regular expressions (a project's folder holds thousands): every name a version of any
    length gets, cut with a digest or not, still starts with what it keeps, and is found."""
    from remote_sync.mirror import version_names

    if cut_like:
        name += b"~0123456789abcdef"
    mine = version_names.version_name(name, version)
    others = [version_names.version_name(name + b"x", version), b"other.jsonl.v1", mine + b"~"]
    groups = version_names.group_versions([*others, mine])
    assert version_names.numbered_versions(b"dir/" + name, groups) == {version: mine}


@settings(max_examples=300, deadline=None)
@given(
    stems=st.lists(
        st.tuples(
            st.lists(_NAME_BYTES, min_size=1, max_size=6).map(b"".join),
            st.sampled_from([0, 200, 226, 227, 228, 240, 250, 260]),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    numbers=st.lists(st.integers(1, 999_999_999), min_size=1, max_size=4),
    junk=st.lists(st.lists(_NAME_BYTES, max_size=12).map(b"".join), max_size=4),
)
def test_a_folder_grouped_once_finds_each_files_versions_as_a_scan_of_it_did(
    stems: list[tuple[bytes, int, bool]], numbers: list[int], junk: list[bytes]
) -> None:
    """A folder's listing is grouped once for all its files (group_versions), not scanned per
    file: each file's versions found in its group are those the rule finds scanning the
    whole folder, for names that are prefixes of one another, long enough to be cut for some
    numbers and not others, ending like a cut name, and among names no version has."""
    from remote_sync.mirror import version_names

    names = []
    for stem, pad, cut_like in stems:
        name = (b"y" * pad + stem)[:255]
        names.append(name + b"~0123456789abcdef" if cut_like else name)
    names += [name[:-1] for name in names if len(name) > 1]
    names = [name for name in names if name not in (b".", b"..")]
    entries = {version_names.version_name(name, n) for name in names for n in numbers}
    entries.update(junk)
    groups = version_names.group_versions(entries)
    for name in names:
        scanned = {}
        for entry in entries:
            match = version_names._NUMBERED.search(entry)
            if match and version_names.version_name(name, int(match[1])) == entry:
                scanned[int(match[1])] = entry
        assert version_names.numbered_versions(b"d/" + name, groups) == scanned
        assert set(scanned) == set(numbers)


def _held_by_another_run(dest: Path) -> None:
    """What any run, of any version, does to the lock file while it holds it: its holder
    line written once it has the lock, emptied when it closes."""
    import fcntl

    fd = os.open(dest / ".remote-sync" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"4321 0123456789abcdef other\n", 0)
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def test_every_open_is_counted_and_one_of_an_older_state_starts_the_count(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    counted = []
    for _ in range(3):
        with MirrorState(dest) as state:
            counted.append(state.opens)
    assert counted == [1, 2, 3]
    with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
        db.execute("DELETE FROM meta WHERE key = 'opens'")  # as an older remote-sync left it
    with MirrorState(dest) as state:
        assert state.opens == 1


@pytest.mark.parametrize("between", ["nothing", "an open", "an older run", "a deleted count"])
def test_a_state_closed_clean_is_trusted_only_if_no_other_run_held_it_since(
    tmp_path: Path, between: str
) -> None:
    """What a process's clean close left is trusted by its next open only when no other run
    has held the lock since: one of this version counts itself; one of an older version (it
    knows no count) is seen by the lock file it wrote and emptied."""
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        assert state.clean_since(None) == frozenset()
    last = state.closed_clean(["h", "g"])
    assert last is not None and last.hosts == {"h", "g"}
    if between == "an open":
        with MirrorState(dest):
            pass
    elif between == "an older run":
        _held_by_another_run(dest)
    elif between == "a deleted count":
        with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
            db.execute("DELETE FROM meta WHERE key = 'opens'")
    with MirrorState(dest) as state:
        assert state.clean_since(last) == ({"h", "g"} if between == "nothing" else frozenset())


def test_a_versions_folder_refused_is_said_even_when_its_place_is_gone_at_the_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link on the way into the versions tree is refused; the kind of what is there is
    then looked at by path, for the message only. A folder above it swapped away by then made
    that look's FileNotFoundError escape instead of the MirrorError naming host and path."""
    with MirrorState(tmp_path / "m") as state:
        folder = Path(os.fsdecode(state.versions_folder("h", b"agents/a/s.jsonl")))
        folder.parent.mkdir(parents=True)
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
        real_stat = os.stat

        def stat_after_a_swap(*args: Any, **kwargs: Any) -> os.stat_result:
            if kwargs.get("dir_fd") is not None and kwargs.get("follow_symlinks") is False:
                raise FileNotFoundError(errno.ENOENT, "gone")
            return real_stat(*args, **kwargs)

        monkeypatch.setattr(os, "stat", stat_after_a_swap)
        with pytest.raises(MirrorError) as caught:
            state.open_versions_folder("h", b"agents/a/s.jsonl", set())
        monkeypatch.undo()
    assert caught.value.host == "h" and "in the versions folder is not a directory" in str(
        caught.value
    )
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_dry_runs_copy_of_a_state_that_changes_on_every_copy_gives_up_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that commits and closes during every copy of the state (read unlocked, as a
    file): the copy is taken again REREADS times, then given up with an error naming the
    state database and saying to run the dry run again, not looped on for ever."""
    from remote_sync.mirror.state_reader import REREADS

    dest, source = _a_closed_state(tmp_path, "k0")
    copies = []

    class EverChanging(sqlite3.Connection):
        def backup(self, target: sqlite3.Connection, **kwargs: Any) -> None:
            super().backup(target, **kwargs)
            copies.append(True)
            with MirrorState(dest) as state:  # a sync's open, commit and close
                state.db.execute("INSERT INTO meta VALUES (?, ?)", (f"k{len(copies)}", "x" * 8192))

    with pytest.raises(StateError, match="kept changing while it was copied") as e:
        _copy_state_through(EverChanging, source, tmp_path / "copy.db", monkeypatch)
    assert len(copies) == REREADS
    assert e.value.path == str(source) and e.value.host is None
    assert e.value.hint is not None and "run the dry run again" in e.value.hint


def _a_closed_state(tmp_path: Path, key: str) -> tuple[Path, Path]:
    """A mirror whose state holds one meta row (``key``) and is closed (no -wal: a copy
    reads it as a file), and its database."""
    dest = tmp_path / "m"
    with MirrorState(dest) as state:
        state.db.execute("INSERT INTO meta VALUES (?, 'v')", (key,))
    source = dest / ".remote-sync" / "state.db"
    assert not source.with_name("state.db-wal").exists()
    return dest, source
