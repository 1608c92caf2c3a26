"""The index worker process, the flush that does not stall the stream, and the syncfs path."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import pytest
from sessiongen import build_tree, facts_dict, generate
from sshfleet import SSHFleet
from synchelp import (
    append,
    assert_exact,
    big_session,
    cli_process,
    make_openclaw_tree,
    session_bytes,
    write_inventory,
)
from test_index import index_facts, inventory, make_readable, sync

from remote_sync import api
from remote_sync.cancel import CancelRegistry
from remote_sync.errors import RemoteCommandError
from remote_sync.events import Summary
from remote_sync.formats.readers import get_reader
from remote_sync.index import worker as worker_module
from remote_sync.index.facts import SessionFacts
from remote_sync.index.update import FileIndexer, index_range, rebuild_index
from remote_sync.index.worker import IndexJob, IndexWorker, IndexWorkerError
from remote_sync.inventory import load_inventory
from remote_sync.mirror import commits, durable, engine, frames
from remote_sync.mirror import fleet as fleet_run
from remote_sync.mirror.state import MirrorState
from remote_sync.mirror.version_names import VersionNumbers

FAKE_WORKER = Path(__file__).resolve().parent / "fake_index_worker.py"


def assert_state_matches_disk(dest: Path, host: str = "h0") -> None:
    db = sqlite3.connect(dest / ".remote-sync" / "state.db")
    try:
        for path, size in db.execute("SELECT path, size FROM files WHERE host = ?", (host,)):
            assert (dest / host / os.fsdecode(path)).stat().st_size == size, path
    finally:
        db.close()


def assert_index_is_a_rebuild(dest: Path) -> None:
    incremental = index_facts(dest)
    rebuild_index(dest)
    assert index_facts(dest) == incremental


# -- the worker on its own ------------------------------------------------------------------


def _job(
    worker: IndexWorker, f: BinaryIO, path: bytes, start: int = 0, facts: SessionFacts | None = None
) -> IndexJob:
    """A job of ``worker`` indexing the Claude Code transcript open as ``f`` from ``start``:
    fresh, or continuing the stored ``facts``."""
    return worker.job(
        fd=f.fileno(),
        host="h",
        path=path,
        fmt="claude-code",
        start=start,
        facts=facts,
        fresh=facts is None,
    )


def test_worker_answers_what_the_in_process_indexer_computes(tmp_path: Path) -> None:
    rng = random.Random(1)
    reader = get_reader("claude-code")
    first = generate("claude-code", rng, messages=600, malformed=3, blank_lines=2).data
    more = generate("claude-code", rng, messages=300, malformed=1).data
    local = tmp_path / "s.jsonl"
    local.write_bytes(first + more + b'{"partial":')
    end_first, end_all = len(first), len(first) + len(more)
    base = index_range(reader, "h", b"p/s.jsonl", local, start=0, end=end_first)

    async def main() -> tuple[Any, Any]:
        worker = IndexWorker()
        async with anyio.create_task_group() as tg:
            worker.start(tg)
            with open(local, "rb") as f:
                whole = _job(worker, f, b"p/s.jsonl")
                whole.written(end_first // 2 + 7)  # not at a line end: held, never counted
                whole.finish(end_all)
                grown = _job(worker, f, b"p/s.jsonl", end_first, base.facts)
                grown.finish(end_all)
            results = (await whole.result(), await grown.result())
            # Its own process group: a terminal's Ctrl-C (sent to the foreground group)
            # does not reach it while it starts, when it would print a traceback.
            assert worker.proc is not None
            assert os.getpgid(worker.proc.pid) == worker.proc.pid != os.getpgid(0)
            await worker.aclose()
        return results

    whole, grown = anyio.run(main)
    in_process = FileIndexer(reader, "h", b"p/s.jsonl")
    in_process.feed(local.read_bytes()[:end_all])
    want = in_process.result()
    assert facts_dict(whole.facts) == facts_dict(want.facts)
    assert whole.marks == want.marks and whole.fresh
    # An append continues the stored facts; the sum equals indexing the whole at once.
    assert facts_dict(grown.facts) == facts_dict(want.facts)
    assert not grown.fresh
    assert grown.marks == [m for m in want.marks if m[1] >= end_first]


@pytest.mark.parametrize("mode", ["exit", "wrong"])
def test_a_worker_that_dies_or_lies_fails_its_jobs(tmp_path: Path, mode: str) -> None:
    local = tmp_path / "s.jsonl"
    local.write_bytes(b'{"type":"user"}\n' * 10)

    async def main() -> str:
        worker = IndexWorker([sys.executable, str(FAKE_WORKER), mode])
        async with anyio.create_task_group() as tg:
            worker.start(tg)
            with open(local, "rb") as f:
                job = _job(worker, f, b"s.jsonl")
                job.finish(160)
            with pytest.raises(IndexWorkerError) as info:
                await job.result()
            await worker.aclose()
        return str(info.value)

    message = anyio.run(main)
    assert (
        ("exited" in message or "gone" in message)
        if mode == "exit"
        else ("expected 160" in message)
    )


# -- sync with the worker -------------------------------------------------------------------


@pytest.fixture
def always_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_SYNC_INDEX_WORKER_MIN_BYTES", "0")


def test_index_through_the_worker_equals_a_rebuild(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    always_worker: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = 0
    original = IndexWorker.job

    def counting(self: IndexWorker, **kwargs: Any) -> Any:
        nonlocal jobs
        jobs += 1
        return original(self, **kwargs)

    monkeypatch.setattr(IndexWorker, "job", counting)
    rng = random.Random(8)
    root = fleet.path("h0", "cc")
    tree = build_tree("claude-code", root, 6, rng, messages=30, split_responses=True)
    make_readable(root)
    inv = inventory(fleet, tmp_path, "claude-code", root)
    dest = tmp_path / "m"
    with caplog.at_level(logging.INFO, logger="remote_sync"):
        assert sync(inv, dest) == 0
        for round_no in range(3):
            for t in rng.sample(tree.transcripts, 3):
                more = generate("claude-code", rng, messages=5, malformed=round_no % 2)
                cut = rng.randint(1, len(more.data) - 1)
                with open(t.path, "ab") as out:
                    out.write(more.data[:cut])  # ends mid-line: the index must stop before it
                assert sync(inv, dest) == 0
                with open(t.path, "ab") as out:
                    out.write(more.data[cut:])
        assert sync(inv, dest) == 0
    capsys.readouterr()
    assert jobs >= len(tree.transcripts) + 9
    assert "in-process" not in caplog.text  # the worker answered every job itself
    assert_index_is_a_rebuild(dest)


def test_worker_killed_mid_round_falls_back_in_process(
    fleet: SSHFleet, tmp_path: Path, always_worker: None
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0", sessions=20, lines=50)
    fleet.write("h0", "agents/a/sessions/big.jsonl", big_session(96 * 1024 * 1024))
    proc = cli_process(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"])
    killed = False
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        for pid in _children(proc.pid):
            if b"remote_sync.index.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                _until_it_holds_a_file(pid, dest)  # it has taken a job: killed mid-job
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.01)
    out, err = proc.communicate(timeout=120)
    assert killed, "the sync never started an index worker"
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    assert_exact(fleet, dest, "h0")
    assert_index_is_a_rebuild(dest)


def _until_it_holds_a_file(pid: int, dest: Path, timeout: float = 60) -> None:
    """Wait until process ``pid`` holds a file of the mirror ``dest`` open: an index worker
    gets each job's file as a descriptor, so it has taken a job (or until it is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return  # gone
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(dest)):
                    return
        time.sleep(0.005)
    raise AssertionError(f"the index worker took no job in {timeout:g} s")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_a_lying_worker_never_reaches_the_index(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    always_worker: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Liar(IndexWorker):
        def __init__(self) -> None:
            super().__init__([sys.executable, str(FAKE_WORKER), "wrong"])

    monkeypatch.setattr(worker_module, "IndexWorker", Liar)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    paths = make_openclaw_tree(fleet, "h0", sessions=4, lines=30)
    assert sync(inv, dest) == 0
    append(fleet, "h0", paths[0], session_bytes(random.Random(2), 5, start=100))
    assert sync(inv, dest) == 0
    capsys.readouterr()
    assert_exact(fleet, dest, "h0")
    assert_index_is_a_rebuild(dest)


def test_kill_9_with_the_worker_then_rerun_is_exact(
    fleet: SSHFleet, tmp_path: Path, always_worker: None
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(12)
    paths = make_openclaw_tree(fleet, "h0", agents=2, sessions=10, lines=100)
    fleet.write("h0", "agents/big/sessions/big.jsonl", session_bytes(rng, 100))
    args = ["sync", "--inventory", str(inv), "--dest", str(dest)]

    def grow(round_no: int) -> None:
        for rel in rng.sample(paths, 5):
            append(fleet, "h0", rel, session_bytes(rng, rng.randint(1, 40), start=round_no * 1000))
        append(fleet, "h0", "agents/big/sessions/big.jsonl", big_session(16 * 1024 * 1024))

    # How long an undisturbed round of this shape takes on this machine now: the kills land
    # at random points within it (a fixed delay misses on a fast machine, kills at once on a
    # slow one).
    def complete_run() -> None:
        proc = cli_process(args)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    complete_run()
    grow(0)
    started = time.monotonic()
    complete_run()
    round_seconds = time.monotonic() - started
    kills = 0
    for round_no in range(1, 7):
        grow(round_no)
        proc = cli_process(args)
        time.sleep(rng.uniform(0.1, 0.8) * round_seconds)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 2
    proc = cli_process(args)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_exact(fleet, dest, "h0")
    assert_state_matches_disk(dest)
    assert_index_is_a_rebuild(dest)


# -- flushes in flight ----------------------------------------------------------------------


def test_stream_failing_with_a_flush_in_flight_loses_nothing(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_run, "FLUSH_FILES", 3)
    real_durable = durable.make_durable
    flushes: list[int] = []

    def slow_durable(
        state: MirrorState, items: list[durable.Pending], numbers: VersionNumbers
    ) -> durable.Durable:
        time.sleep(0.2)  # the stream goes on meanwhile: several files land in the next batch
        flushes.append(len(items))
        return real_durable(state, items, numbers)

    monkeypatch.setattr(commits, "make_durable", slow_durable)
    handle = frames.FrameHandler.handle
    begins = 0

    async def failing(self: frames.FrameHandler, event: object) -> None:
        nonlocal begins
        if type(event).__name__ == "Begin":
            begins += 1
            if begins == 25:
                raise RemoteCommandError("stream broke (test)", host="h0")
        await handle(self, event)

    monkeypatch.setattr(frames.FrameHandler, "handle", failing)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0", agents=3, sessions=12, lines=40)
    code = sync(inv, dest)
    capsys.readouterr()
    assert code == 1
    assert len(flushes) >= 3 and sum(flushes) == 24  # every finished file was flushed
    assert_state_matches_disk(dest)
    with MirrorState(dest) as state:
        assert len(state.host_files("h0")) == 24
    assert not list((dest / ".remote-sync" / "tmp").glob("*"))
    monkeypatch.setattr(frames.FrameHandler, "handle", handle)
    assert sync(inv, dest) == 0
    capsys.readouterr()
    assert_exact(fleet, dest, "h0")
    assert_index_is_a_rebuild(dest)


# -- making batches durable -----------------------------------------------------------------


def _pending(state: MirrorState, n: int) -> list[durable.Pending]:
    items = []
    for i in range(n):
        temp = state.temp_path()
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # closed by make_durable
        data = b'{"n":%d}\n' % i
        os.write(fd, data)
        row = engine.FileState(
            host="h", path=b"d%d/f%d.jsonl" % (i % 3, i), kind="append", size=len(data),
            remote_size=len(data), mtime=0.0, dev=0, ino=i, fingerprint=data,
        )  # fmt: skip
        items.append(durable.Pending(row, fd, temp=str(temp), category="new", bytes=len(data)))
    return items


@pytest.mark.parametrize("syncfs", [True, False])
def test_make_durable_with_and_without_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    calls = {"syncfs": 0, "fdatasync": 0}
    real_syncfs = durable._syncfs

    def counting_syncfs(fd: int) -> bool:
        calls["syncfs"] += 1
        return real_syncfs(fd) if syncfs else False

    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls["fdatasync"] += 1
        real_fdatasync(fd)

    monkeypatch.setattr(durable, "_syncfs", counting_syncfs)
    monkeypatch.setattr(durable.os, "fdatasync", counting_fdatasync)
    with MirrorState(tmp_path / "m") as state:
        state.recover()
        few = durable.make_durable(state, _pending(state, 3)).done
        many = durable.make_durable(state, _pending(state, durable.SYNCFS_MIN_FILES)).done
        assert all(item.fd == -1 for item in few + many)
        for item in few + many:
            local = state.local_path("h", item.row.path)
            assert local.read_bytes() == item.row.fingerprint
    assert calls["syncfs"] == 1  # only the batch of many files tries it
    assert calls["fdatasync"] == 3 + (0 if syncfs else durable.SYNCFS_MIN_FILES)


def test_syncfs_is_real_on_linux(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs(2) is Linux only")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert durable._syncfs(fd) is True
    finally:
        os.close(fd)


def test_worker_threshold_needs_a_spare_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMOTE_SYNC_INDEX_WORKER_MIN_BYTES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert engine.worker_min_bytes() is None  # 2 processors: index in-process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert engine.worker_min_bytes() == engine.WORKER_MIN_BYTES
    monkeypatch.setenv("REMOTE_SYNC_INDEX_WORKER_MIN_BYTES", "0")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert engine.worker_min_bytes() == 0  # the override wins


def test_a_cancel_does_not_wait_for_a_hung_index_worker(
    fleet: SSHFleet, tmp_path: Path, always_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that never answers held a cancel (Ctrl-C) for its whole timeout, the engine
    waiting on it in a shielded commit. Now the cancel drops its jobs: the durable items are
    indexed in-process and committed, and the run ends as cancelled at once."""

    class Hung(IndexWorker):
        def __init__(self) -> None:
            super().__init__([sys.executable, str(FAKE_WORKER), "hang"])

    monkeypatch.setattr(worker_module, "IndexWorker", Hung)
    monkeypatch.setattr(worker_module, "IDLE_TIMEOUT", 600.0)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0", sessions=6, lines=30)
    hosts = load_inventory(inv).select([], [])
    registry = CancelRegistry()

    real_result = worker_module.IndexJob.result
    waiting: list[anyio.Event] = []

    async def result(self: worker_module.IndexJob) -> Any:
        waiting[0].set()
        return await real_result(self)

    monkeypatch.setattr(worker_module.IndexJob, "result", result)

    async def cancelled_run() -> tuple[Summary, float]:
        waiting.append(anyio.Event())
        async with anyio.create_task_group() as tg:

            async def cancel_soon() -> None:
                await waiting[0].wait()  # the round waits for the hung worker's answer
                registry.cancel_all("test")

            tg.start_soon(cancel_soon)
            started = time.monotonic()
            summary = await api.sync(hosts, dest, registry=registry, transfer_id="sync")
            return summary, time.monotonic() - started

    summary, took = anyio.run(cancelled_run)
    assert summary.exit_code == 130 and took < 30, (summary, took)
    assert_state_matches_disk(dest)
    assert_index_is_a_rebuild(dest)
    monkeypatch.undo()
    assert sync(inv, dest) == 0
    assert_exact(fleet, dest, "h0")
    assert_index_is_a_rebuild(dest)
