"""Recovery on open: the mirror is made to match its checkpoints."""

from __future__ import annotations

from pathlib import Path

from remote_sync.mirror.state import FileState, MirrorState


def row(path: bytes, size: int, host: str = "h") -> FileState:
    return FileState(host, path, "append", size, size, 1.0, 1, 7, b"x")


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
            [row(b"longer.jsonl", 4), row(b"exact.jsonl", 2), row(b"shorter.jsonl", 5),
             row(b"missing.jsonl", 3), row(odd, 2), row(b"other.jsonl", 1, host="g")]
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
