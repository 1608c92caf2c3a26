"""What a finished file holds while it waits for its batch's flush (``durable.Pending``), and
the packed form its session's facts wait in (``update.PackedUpdate``): the same rows at the
commit, in a fraction of the memory."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import json
import os
import random
import sqlite3
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sessiongen import generate
from synchelp import ShortThenEIO

from remote_sync.errors import MirrorError
from remote_sync.formats.readers import get_reader
from remote_sync.index.facts import INT64_MAX, INT64_MIN, SessionFacts
from remote_sync.index.store import IndexRows, ensure_schema
from remote_sync.index.update import FileIndexer, IndexUpdate
from remote_sync.mirror import writer as writer_module
from remote_sync.mirror.durable import discard
from remote_sync.mirror.state import FileState, MirrorState
from remote_sync.mirror.writer import AppendWriter, WholeWriter


def test_a_finished_file_waiting_for_its_flush_holds_little(tmp_path: Path) -> None:
    """A fleet's round keeps every finished file until its flush (1,632 at once in the
    benchmark's fleet): each holds its row, its descriptor, its temp file's name and its
    session's facts, packed: about 1 KB in all for these generated sessions (2.9 KB when
    they were a file object, a ``Path`` and the facts' objects), and the flush still has
    all it needs."""
    reader = get_reader("openclaw")
    rng = random.Random(5)
    sessions = [generate("openclaw", rng, messages=rng.randint(3, 20)).data for _ in range(200)]
    with MirrorState(tmp_path / "m") as state:
        state.recover()  # makes the temp directory, as a sync does first
        waiting = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i, data in enumerate(sessions):
                path = b"agents/main/sessions/s%04d.jsonl" % i
                row = FileState("h0", path, "append", 0, len(data), 1.7e9, 2049, i, b"")
                indexer = FileIndexer(reader, "h0", path)
                writer = WholeWriter(state, row, lines_only=True, category="new", indexer=indexer)
                writer.write(data)
                waiting.append(writer.finish())
                del writer, indexer
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        try:
            assert held / len(sessions) < 1300, f"{held / len(sessions):.0f} B per file"
            for pending, data in zip(waiting, sessions, strict=True):
                assert pending.row.size == len(data) and pending.index is not None
                with open(pending.temp or "", "rb") as temp:
                    assert temp.read() == data
        finally:
            discard(waiting)
    assert all(pending.fd == -1 for pending in waiting)


#: Integers past msgpack's range (2**64 - 1 down to -2**63) now and then: facts holding one
#: stay unpacked, and are stored all the same.
_WIDE = st.integers(-(2**65), 2**65)
_COUNT = st.integers(0, INT64_MAX)
_TEXT = st.text(max_size=30)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)

_FACTS = st.builds(
    SessionFacts,
    session_id=st.none() | _TEXT,
    agent=st.none() | _TEXT,
    bytes=_COUNT,
    lines=_COUNT,
    malformed=_COUNT,
    user=st.integers(0, 2**40),
    assistant=st.integers(0, 2**40),
    tool=st.integers(0, 2**40),
    system=st.integers(0, 2**40),
    other=st.integers(0, 2**40),
    repeated=st.integers(0, 2**40),
    tool_calls=_COUNT,
    tokens_in=st.integers(INT64_MIN, INT64_MAX),
    tokens_out=st.integers(INT64_MIN, INT64_MAX),
    tokens_cache_read=st.integers(INT64_MIN, INT64_MAX),
    tokens_cache_write=st.integers(INT64_MIN, INT64_MAX),
    cost=st.none() | _FLOAT,
    models=st.lists(_TEXT, max_size=3),
    first_ts=st.none() | _TEXT,
    last_ts=st.none() | _TEXT,
    title=st.none() | st.text(max_size=80),
    recent_usage_keys=st.lists(_TEXT, max_size=3),
    recent_usage_out=st.lists(st.none() | _WIDE, max_size=3),
    recent_usage_cost=st.lists(st.none() | _FLOAT, max_size=3),
    last_record_id=st.none() | _TEXT,
    last_record_counts=st.lists(_WIDE, max_size=4),
    forked_from=st.none() | _TEXT,
    copied_before_ms=st.none() | _WIDE,
    token_base=st.lists(_WIDE, max_size=3),
)
_MARKS = st.lists(st.tuples(_COUNT, _COUNT), max_size=3)


def _rows_of(update: Any) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(":memory:")
    try:
        ensure_schema(db)
        rows = IndexRows()
        update.put_into(rows)
        rows.write(db)
        tables = ("sessions", "session_facts", "session_marks")
        return {t: sorted(db.execute(f"SELECT * FROM {t}")) for t in tables}
    finally:
        db.close()


def _fits_msgpack(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, list):
            return all(_fits_msgpack(v) for v in value)
        return True
    return -(2**63) <= value <= 2**64 - 1


@settings(max_examples=300, deadline=None)
@given(facts=_FACTS, marks=_MARKS, fresh=st.booleans(), path=st.binary(min_size=1, max_size=40))
def test_a_packed_update_writes_the_rows_its_update_writes(
    facts: SessionFacts, marks: list[tuple[int, int]], fresh: bool, path: bytes
) -> None:
    """Packed while its file waits for the flush, a session's update writes at the commit
    the very rows (the facts' JSON byte for byte) it would have written unpacked; facts
    holding an integer msgpack cannot are kept as they are."""
    update = IndexUpdate("h0", path, "openclaw", facts, list(marks), fresh=fresh)
    want = _rows_of(update)
    packed = update.packed()
    fits = all(_fits_msgpack(getattr(facts, name)) for name in facts.__struct_fields__)
    assert (packed is update) == (not fits)
    assert _rows_of(packed) == want


def test_a_piece_of_a_session_claiming_a_count_past_64_bits_is_committed(tmp_path: Path) -> None:
    """A transcript may claim any count (a hostile host's, a corrupt line): a piece's copy of
    facts holding one msgpack cannot carry is copied all the same, not an OverflowError out
    of the checkpoint, and writes the rows the facts so far would; what is indexed after it
    does not change it."""
    reader = get_reader("claude-code")
    path = b"projects/p/s.jsonl"

    def line(n: int, out: int) -> bytes:
        message = {"id": f"m{n}", "role": "assistant", "model": "x", "content": []}
        message["usage"] = {"input_tokens": 1, "output_tokens": out}
        record = {"type": "assistant", "requestId": f"r{n}", "message": message}
        return json.dumps(record).encode() + b"\n"

    indexer = FileIndexer(reader, "h0", path)
    indexer.feed(line(0, 2**70) + line(1, 5))
    want = _rows_of(indexer.result())
    piece = indexer.snapshot()
    indexer.feed(line(2, 7))
    assert _rows_of(piece) == want
    assert indexer.result().facts.assistant == 3


def test_a_finish_that_cannot_copy_its_descriptor_leaves_the_writer_to_abort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No descriptor left for the finished file's copy: the finish fails naming the file,
    and the writer's abort still closes its file and removes its temp file (it raised
    ValueError on a detached handle, which left the temp file behind)."""
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        temps = set(os.listdir(state.temp_path().parent))
        before = len(os.listdir("/proc/self/fd"))
        row = FileState("h0", b"d/f.jsonl", "append", 0, 8, 1.7e9, 2049, 1, b"")
        writer = WholeWriter(state, row, lines_only=True, category="new")
        writer.write(b'{"a":1}\n')
        with monkeypatch.context() as patch:
            patch.setattr(os, "dup", _no_descriptor_left)
            with pytest.raises(MirrorError, match=r"h0: d/f\.jsonl: cannot write a temp file"):
                writer.finish()
        writer.abort()
        assert len(os.listdir("/proc/self/fd")) == before
        assert set(os.listdir(state.temp_path().parent)) == temps


def _no_descriptor_left(fd: int) -> int:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class _NoRoom(io.FileIO):
    """A temp file on a disk that has just filled up: no write reaches it."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_whole_file_whose_finish_finds_the_disk_full_is_aborted_without_a_trace(
    tmp_path: Path,
) -> None:
    """A file kept whole (not cut at its lines) whose bytes, still in the write buffer, find
    the disk full at its finish: the finish fails as a full disk, and the abort closes the
    file and removes its temp file without an error of its own. The close, writing the
    buffer again, failed and the removal was skipped: the temp file stayed until the next
    open's recovery."""
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        temps = set(os.listdir(state.tmp_dir))
        before = len(os.listdir("/proc/self/fd"))
        row = FileState("h0", b"d/sessions.json", "whole", 0, 8, 1.7e9, 2049, 1, b"")
        writer = WholeWriter(state, row, lines_only=False, category="new")
        assert writer.temp is not None
        writer.handle.close()
        writer.handle = io.BufferedRandom(_NoRoom(writer.temp, "r+b"))
        writer.write(b'{"a": 1}')
        with pytest.raises(MirrorError, match=r"h0: d/sessions\.json: disk full"):
            writer.finish()
        writer.abort()
        assert len(os.listdir("/proc/self/fd")) == before
        assert set(os.listdir(state.tmp_dir)) == temps


def test_a_checkpoint_whose_index_snapshot_fails_claims_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of the index's facts for a piece fails (out of memory, say): nothing is
    handed over, and the writer's checkpoint is still the last one handed over, so that its
    abort cuts the file back to it. It moved to the new lines first, and the abort left them
    in place past the state's checkpoint until the next open's recovery."""
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        path = b"d/s.jsonl"
        local = state.local_path("h0", path)
        local.parent.mkdir(parents=True)
        old = b'{"type": "message", "id": "1"}\n'
        local.write_bytes(old)
        row = FileState("h0", path, "append", len(old), len(old), 1.7e9, 2049, 1, b"")
        indexer = FileIndexer(get_reader("openclaw"), "h0", path, start=len(old))
        writer = AppendWriter(state, row, len(old), replace(row), indexer)
        writer.write(b'{"type": "message", "id": "2"}\n')

        def no_memory(self: FileIndexer) -> None:
            raise MemoryError

        monkeypatch.setattr(FileIndexer, "snapshot", no_memory)
        with pytest.raises(MemoryError):
            writer.checkpoint()
        assert (writer.committed, writer.row.size) == (len(old), len(old))
        writer.abort()
        assert local.read_bytes() == old


def _mirrored(state: MirrorState, path: bytes, data: bytes) -> FileState:
    """``data`` as the mirrored copy of ``h0``'s ``path``, and the row that commits it."""
    local = state.local_path("h0", path)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    return FileState("h0", path, "append", len(data), len(data), 1.7e9, 2049, 1, b"")


def _eio(*args: Any, **kwargs: Any) -> bytes:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_failed_read_of_an_appended_files_first_bytes_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finish of an append to a short file reads its first bytes back for the
    fingerprint: an I/O error there is a MirrorError naming the host and the file, where a
    raw OSError came out (said as an internal error of the host); the abort still cuts the
    file back to its checkpoint."""
    with MirrorState(tmp_path / "m") as state:
        old = b'{"a":1}\n'
        row = _mirrored(state, b"d/f.jsonl", old)
        writer = AppendWriter(state, row, 0, replace(row))
        writer.write(old + b'{"b":2}\n')
        with monkeypatch.context() as patch:
            patch.setattr(os, "pread", _eio)
            with pytest.raises(MirrorError, match=r"h0: d/f\.jsonl: .*Input/output error") as e:
                writer.finish()
        assert isinstance(e.value.__cause__, OSError)
        writer.abort()
        assert state.local_path("h0", b"d/f.jsonl").read_bytes() == old


@pytest.mark.parametrize("whole", [False, True])
def test_a_file_whose_buffered_bytes_meet_an_io_error_is_cut_back_by_its_abort(
    tmp_path: Path, whole: bool
) -> None:
    """An append (or a whole file in place since its first piece) whose finish writes its
    buffered bytes and meets an I/O error, not a full disk, after some reached the file:
    the abort cuts it back to its checkpoint at once. It truncated through the buffered
    handle, whose flush failed again: the bytes past the checkpoint stayed until the next
    open's recovery (and the abort raised)."""
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        path = b"d/f.jsonl"
        old = b'{"a":1}\n'
        new = b'{"b":2}\n{"c":3}\n'
        local = state.local_path("h0", path)
        writer: AppendWriter | WholeWriter
        if whole:
            row = FileState("h0", path, "append", 0, 0, 1.7e9, 2049, 1, b"")
            writer = WholeWriter(state, row, lines_only=True, category="new")
            writer.write(old)
            piece = writer.checkpoint()
            assert piece is not None and piece.temp is not None
            writer.confirm(piece, None)  # as if its flush put it in place and committed it
            local.parent.mkdir(parents=True, exist_ok=True)
            os.rename(piece.temp, local)
            discard([piece])
        else:
            row = _mirrored(state, path, old)
            writer = AppendWriter(state, row, 0, replace(row))
        writer.handle.close()
        writer.handle = io.BufferedRandom(ShortThenEIO(local, "r+b"))
        writer.handle.seek(len(old))
        writer.write(new if whole else old + new)  # held in the buffer until the finish
        with pytest.raises(MirrorError, match=r"h0: d/f\.jsonl: .*Input/output error"):
            writer.finish()
        assert local.stat().st_size == len(old) + len(new) // 2  # half reached the file
        writer.abort()
        assert local.read_bytes() == old


def test_an_append_whose_overlap_cannot_be_read_closes_the_mirrored_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append whose read of the mirrored file's overlap fails (an I/O error) raises a
    MirrorError naming the file, and leaves the file closed: its handle was only let go
    with the half-made writer, which the error's traceback holds for as long as the error
    is kept (a ResourceWarning when it went)."""
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        path = b"d/f.jsonl"
        row = _mirrored(state, path, b'{"a":1}\n')
        local = os.fspath(state.local_path("h0", path))

        def open_on_the_file() -> list[str]:
            fds = Path("/proc/self/fd")
            found = []
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):  # the listing's own descriptor, gone
                    if os.readlink(fd) == local:
                        found.append(fd.name)
            return found

        monkeypatch.setattr(writer_module.Overlap, "read", _eio)
        with pytest.raises(MirrorError, match=r"h0: d/f\.jsonl: .*Input/output error") as e:
            AppendWriter(state, row, 0, replace(row))
        assert isinstance(e.value.__cause__, OSError)
        assert open_on_the_file() == []
