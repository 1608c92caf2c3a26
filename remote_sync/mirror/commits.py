"""A round's writes to the state and its batches made durable and committed, off the event
loop.

What it owns: the run's writes to the state database, one at a time in a worker thread
(:class:`StateWrites`; the state opened and closed with them by :func:`opened`), a batch made
durable in a thread of its own while the stream fills the next (:class:`Flush`), the commit of
durable items' checkpoints and index rows in one transaction (:func:`commit`), the cut-back of
pieces given up that were not committed (:func:`cut_back`), and :func:`in_thread`, work in a
worker thread awaited to its end whatever cancels the task, which every step of a sync that
runs in a thread goes through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.lowlevel

from ..errors import MirrorError, path_text
from ..index.store import IndexRows
from .durable import Pending, make_durable
from .state import MirrorState
from .version_names import VersionNumbers

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")


def cut_back(state: MirrorState, items: list[Pending]) -> None:
    """Cut the file of each piece of ``items`` not committed and given up meanwhile (see
    :attr:`Pending.cut_back`) back to the checkpoint before it (in a worker thread). Its
    descriptor may be closed by now (a flush syncs and closes it): the file is opened again
    by its path, which no other writer renames anything onto (a flush after this one would,
    and none starts before this one is collected). Only ever shorter; a failure is logged,
    and the next open's recovery cuts back all the same."""
    for item in items:
        if item.cut_back is None or item.committed:
            continue
        row = item.row
        try:
            with open(state.local_path(row.host, row.path), "r+b") as file:
                if os.fstat(file.fileno()).st_size > item.cut_back:
                    file.truncate(item.cut_back)
        except OSError as exc:
            log.warning(
                "%s: %s: could not cut the file back to its checkpoint (the next run does): %s",
                row.host,
                path_text(row.path),
                exc,
            )


def commit(state: MirrorState, items: list[Pending]) -> None:
    """Commit durable items' checkpoints and index rows in one transaction."""
    db = state.db

    def write_index() -> None:
        rows = IndexRows()
        for item in items:
            if item.index is None:
                # No facts for these bytes (a --no-index run, a session the index could not
                # continue, a file that is no transcript): a row describing older bytes would
                # be wrong. The next indexed round's end makes it again from the mirror
                # (the engine's HostSync._index_the_unindexed).
                rows.delete(item.row.host, item.row.path)
            elif item.row.size == 0:
                # Not one whole line yet (or any more): no session, as a rebuild of the mirror
                # has none for an empty file.
                rows.delete(item.row.host, item.row.path)
            else:
                item.index.put_into(rows)
        rows.write(db)

    # A version's keep time is this commit's: the copy was moved aside by the flush just made
    # durable, and the state counts it from now on.
    kept = [(item.row.host, item.row.path, item.row.version) for item in items if item.versioned]
    state.commit((item.row for item in items), also=write_index, kept=kept)


class StateWrites:
    """The run's writes to the state database, each in a worker thread, one at a time.

    A flush's commit holds a thousand files' checkpoints and index rows: tens of
    milliseconds, and more while the disk is busy with the next batch's syncs. Made on the
    event loop's thread, it froze every other task of an app that syncs that long. Here every
    write (recovery, checkpoints, index rows, hosts) runs in a worker thread on a connection
    of its own, the writes of all hosts in turn (SQLite has one writer at a time: none waits
    for its lock on the loop's thread). The state's own connection stays on the loop's
    thread, where it only reads, and sees what is committed.

    It also lends the hosts' reads made in worker threads (a plan's checkpoints, the files
    the index lacks) connections of their own (:meth:`reading`), opened once for the run and
    kept, not once per read: an open (:meth:`~.state.MirrorState.for_thread`) and its first
    statement's reading of the schema cost some 0.11 ms, two per host a round.
    """

    def __init__(self, state: MirrorState) -> None:
        self.state = state
        self.lock = anyio.Lock()
        self.writer: MirrorState | None = None  # opened by the first write
        #: Connections opened for reads and not in use; as many as reads ran at once.
        self._readers: list[MirrorState] = []
        self._readers_lock = threading.Lock()
        self._keep_readers = True  # until close
        self.closed = False

    async def run(self, write: Callable[[MirrorState], T]) -> T:
        """``write(state)`` in a worker thread, after the writes asked for before it. Once
        asked for, a write is made: a cancellation comes after it."""
        with anyio.CancelScope(shield=True):
            async with self.lock:
                done = await in_thread(self._write, write)
        return done

    def _write(self, write: Callable[[MirrorState], T]) -> T:
        if self.writer is None:
            self.writer = self.state.for_thread()
        return write(self.writer)

    @contextlib.contextmanager
    def reading(self) -> Iterator[MirrorState]:
        """A connection of its own for a read in a worker thread, given back after it.

        Such a connection holds no transaction between reads (a read reads each of its
        statements to its end, which ends it), so every read sees what is committed, as one
        just opened would; the files it reads are those the state's open looked at
        (for_thread), as the writes' connection's. One a read failed on is closed, not given
        back: it might still hold a statement, and with it an old snapshot."""
        with self._readers_lock:
            reader = self._readers.pop() if self._readers else None
        if reader is None:
            reader = self.state.for_thread()
        try:
            yield reader
        except BaseException:
            reader.close()
            raise
        with self._readers_lock:
            if self._keep_readers:
                self._readers.append(reader)
                return
        reader.close()  # the run's state closed meanwhile: not kept for a read to come

    def close(self) -> None:
        """Close the reads' and the writes' connections, then the state (once)."""
        if self.closed:
            return
        with self._readers_lock:
            readers, self._readers = self._readers, []
            self._keep_readers = False
        for reader in readers:
            reader.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.state.close()
        self.closed = True


@contextlib.asynccontextmanager
async def opened(state: MirrorState) -> AsyncIterator[StateWrites]:
    """``state`` opened, and its writes; all closed at the end. In worker threads: opening
    may upgrade the schema, and the last connection's close copies the WAL into the database
    and syncs it (up to some 4 MB)."""
    writes = StateWrites(state)
    try:
        await in_thread(state.open)
        yield writes
    finally:
        try:
            with anyio.CancelScope(shield=True):
                await in_thread(writes.close)
        finally:
            writes.close()  # what is still open: asyncio cancelled the task before the thread


async def in_thread(work: Callable[[*Args], T], *args: *Args) -> T:
    """``work(*args)`` in a worker thread, awaited to its end whatever cancels the task.

    anyio's wait for a thread holds off anyio's cancellations but not asyncio's own
    ``Task.cancel()`` (an app cancelling the task that syncs, ``asyncio.wait_for``'s
    timeout): that would leave the thread running while the caller unwinds and closes the
    state (and releases the destination's lock) under it. A task group is left only once its
    tasks are done, so such a cancel is raised when the thread has finished. What ``work``
    raises is raised as it is (not in the group's ExceptionGroup).
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            outcome.append(await anyio.to_thread.run_sync(lambda: work(*args)))
        except Exception as exc:
            failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    if failure:
        raise failure[0]
    return outcome[0]


class Flush:
    """One batch being made durable in a thread of its own."""

    def __init__(self, state: MirrorState, items: list[Pending], numbers: VersionNumbers) -> None:
        self.items = items
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.failed: list[tuple[Pending, MirrorError]] = []
        token = anyio.lowlevel.current_token()

        def run() -> None:
            try:
                durable = make_durable(state, items, numbers)
                self.items, self.failed = durable.done, durable.failed
            except BaseException as exc:  # handed to the event loop, raised there
                self.error = exc
            finally:
                # RuntimeError: the event loop is gone, nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run_sync(self.done.set, token=token)

        threading.Thread(target=run, name="remote-sync-flush", daemon=True).start()

    def ready(self) -> bool:
        """Durable, and every index result of the batch is in (waiting would not block)."""
        if not self.done.is_set():
            return False
        return all(item.job is None or item.job.done.is_set() for item in self.items)

    async def wait(self) -> tuple[list[Pending], list[tuple[Pending, MirrorError]]]:
        """The items made durable and those that could not be put in place."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.items, self.failed
