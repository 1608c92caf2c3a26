"""A sync embedded in an app leaves the app's event loop free for its other tasks (a UI, a
web server): the heavy steps of a round run in worker threads, and the long loops that stay
on the event loop's thread let the other tasks run as they go.

Nothing here measures time: a step proves it left the loop free by waiting, while it runs,
for another task of the loop to run, which never happens while it holds the loop's thread.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from sshfleet import SSHFleet
from synchelp import (
    append,
    expected_tree,
    make_openclaw_tree,
    mirror_tree,
    session_bytes,
    write_inventory,
)

from remote_sync import api
from remote_sync.events import Summary
from remote_sync.inventory import load_inventory
from remote_sync.mirror import commits, engine, frames
from remote_sync.mirror import fleet as fleet_run
from remote_sync.mirror.listing import ListingParser
from remote_sync.mirror.state import MirrorState

#: How long a step waits for another task to run before it concludes that it holds the event
#: loop. A step in a worker thread sees the other task run within milliseconds.
PATIENCE = 10.0


class Ticker:
    """Another task of the app: counts the times it got to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self, pause: float = 0.001) -> None:
        while True:
            self.ticks += 1
            await anyio.sleep(pause)


class HeavySteps:
    """Wraps the heavy steps of a round: each records, in the thread it runs in, whether the
    ticker ran while it was running (it waits up to PATIENCE for that), and in which thread."""

    def __init__(self, ticker: Ticker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ticker = ticker
        self.loop_free: dict[str, list[bool]] = defaultdict(list)
        self.threads: set[int] = set()
        self.held = False  # a step held the loop: the next ones need not wait as long
        steps: list[tuple[object, str]] = [
            (MirrorState, "open"),
            (fleet_run, "copy_state"),
            (MirrorState, "recover"),
            (MirrorState, "host_files"),
            (MirrorState, "set_host"),
            (MirrorState, "mark_in_doubt"),
            (MirrorState, "commit"),
            (MirrorState, "unindexed_files"),
            (MirrorState, "close"),
            (ListingParser, "feed"),
            (engine, "make_plan"),
        ]
        for owner, name in steps:
            monkeypatch.setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            self.threads.add(threading.get_ident())
            self.loop_free[name].append(self._ticker_runs())
            return real(*args, **kwargs)

        return step

    def _ticker_runs(self) -> bool:
        before = self.ticker.ticks
        deadline = time.monotonic() + (0 if self.held else PATIENCE)
        while self.ticker.ticks == before:
            if time.monotonic() >= deadline:
                self.held = True
                return False
            time.sleep(0.001)
        return True


def sync_beside(
    hosts: list[Any], dest: Path, ticker: Ticker, **options: Any
) -> tuple[Summary, int]:
    """``api.sync`` in a task group with the ticker; the summary and the loop's thread."""

    async def main() -> tuple[Summary, int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            summary = await api.sync(hosts, dest, **options)
            tg.cancel_scope.cancel()
        return summary, threading.get_ident()

    return anyio.run(main)


def test_the_heavy_steps_of_a_round_leave_the_event_loop_free(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery (a stat of every mirrored file), parsing the listing, reading the checkpoints
    and planning, every write to the state (a flush's commit of a thousand files with their
    index rows), closing it (which copies its log into the database) and a dry run's copy of
    it each took 20 to 300 ms at 20,000 files, on the event loop's thread: every other task
    of the app froze that long. They run in worker threads now."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=4)
    hosts = load_inventory(inv).hosts
    dest = tmp_path / "m"
    ticker = Ticker()
    steps = HeavySteps(ticker, monkeypatch)
    summary, loop_thread = sync_beside(hosts, dest, ticker)  # the first round
    assert summary.exit_code == 0 and summary.files.new == 10
    for rel in paths[:3]:
        append(fleet, "h0", rel, session_bytes(random.Random(1), 2, start=50))
    summary, _ = sync_beside(hosts, dest, ticker, dry_run=True)  # on a copy of the state
    assert summary.exit_code == 0 and summary.files.grown == 3
    summary, _ = sync_beside(hosts, dest, ticker)  # an incremental one
    assert summary.exit_code == 0 and summary.files.grown == 3
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
    assert {name: all(free) for name, free in steps.loop_free.items()} == {
        "open": True,
        "copy_state": True,
        "recover": True,
        "host_files": True,
        "set_host": True,
        "mark_in_doubt": True,
        "commit": True,
        "unindexed_files": True,
        "close": True,
        "feed": True,
        "make_plan": True,
    }
    assert loop_thread not in steps.threads


def test_the_frames_of_a_chunk_are_handled_letting_other_tasks_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk of small files is hundreds of files to create, write and finish in one go
    (150-300 ms at 20,000 files): the other tasks run between its events."""
    monkeypatch.setattr(frames, "YIELD_SECONDS", 0.0, raising=False)  # after every event
    ticker = Ticker()
    ticks_at: list[int] = []

    async def handle(self: frames.FrameHandler, event: object) -> None:
        ticks_at.append(ticker.ticks)

    monkeypatch.setattr(frames.FrameHandler, "handle", handle)
    handler = frames.FrameHandler(types.SimpleNamespace(), [], [], follow_up=False)  # type: ignore[arg-type]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run, 0)
            await anyio.lowlevel.checkpoint()  # the ticker has started
            await handler.handle_all(range(5))
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(ticks_at) == 5
    assert len(set(ticks_at)) == 5, ticks_at  # the ticker ran between every two events


def test_a_step_in_a_worker_thread_ends_before_a_cancel_of_its_task_goes_on() -> None:
    """asyncio's own Task.cancel() (an app cancelling the task that syncs) is not held off
    by anyio's wait for a thread: the step (recovery, a commit) would go on in its thread
    while the sync unwinds and closes the state under it. The cancel waits for the step."""
    started, release = threading.Event(), threading.Event()
    log: list[str] = []

    def step() -> None:
        started.set()
        release.wait(PATIENCE)
        log.append("step done")

    async def main() -> None:
        task = asyncio.ensure_future(commits.in_thread(step))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        log.append("task done" if task.done() else "task waits")
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        log.append("cancelled")

    anyio.run(main)
    assert log == ["task waits", "step done", "cancelled"]
