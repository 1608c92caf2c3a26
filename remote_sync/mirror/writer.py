"""Writing fetched bytes into the mirror, up to the finished file a batch makes durable.

What it owns: the ways a file's bytes land on disk, each writer handing its file over as a
:class:`~remote_sync.mirror.durable.Pending` (the batch, and what makes it durable, are
:mod:`remote_sync.mirror.durable`'s).

- :class:`AppendWriter` extends a mirrored file in place. The fetch starts a little before the
  committed end; those overlap bytes must equal the local tail, which proves the remote file is
  still the one we mirrored without re-reading it. A mismatch raises :class:`RewriteDetected`
  (:class:`Overlap` compares them; a dry run's check of a returning file uses it too).
  Only whole lines are kept: a trailing partial line is cut off and arrives next run (a disk
  too full to hold it drops it as soon as that shows, see :meth:`_LineWriter._put`).
- :class:`SeededWriter` is an :class:`AppendWriter` on a temp copy of another mirrored file
  (a renamed transcript's old name), put in place like a whole file.
- :class:`WholeWriter` streams a file into a temp file. Its batch's flush replaces the mirrored
  copy with it atomically (rename). If the old copy is not a prefix of the new content (compaction,
  truncation, replace-by-rename) the old copy is first moved to ``versions/`` and kept (until
  ``versions prune`` removes it); the commit that counts it records when.
- A transcript fetched in pieces (see the engine's ``PIECE_BYTES``) keeps one writer of
  either kind from piece to piece: :meth:`~_LineWriter.checkpoint` hands the lines written
  so far to the batch as a :class:`~remote_sync.mirror.durable.Pending` of their own (the
  first one of a :class:`WholeWriter` puts its temp file in place, its bytes past the lines
  kept apart until it is committed; the pieces after it append there; none is handed over
  while the lines so far only repeat a longer mirrored copy), :meth:`~_LineWriter.confirm` takes a
  committed piece's row on, and :meth:`~_LineWriter.resume` checks the next piece's overlap
  with the bytes written.

Appends and whole files feed the session index as they write (a seeded copy is indexed from
the mirror at the round's end, as a new session): an in-process :class:`FileIndexer` gets the
bytes, or an index worker's :class:`IndexJob` is told which line-complete prefix of the file
is written (it reads those bytes itself, from the page cache).

A write that fails is a :class:`~remote_sync.errors.MirrorError` naming the host's file
(:func:`~remote_sync.mirror.destination.mirror_error`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..index.update import FileIndexer
from .destination import mirror_error, out_of_space
from .durable import Pending, discard
from .state import FINGERPRINT_BYTES, FileState, MirrorState, fingerprint_of

if TYPE_CHECKING:
    from ..index.worker import IndexJob

#: Tell an index worker about written lines after at least this many new bytes (and at the end):
#: often enough that it keeps up with the stream, rarely enough that messages cost nothing.
NOTIFY_BYTES = 4 * 1024 * 1024


class RewriteDetected(Exception):
    """The overlap bytes differ from the local tail: the remote file was rewritten."""


class _LineWriter:
    """What both writers share: bytes go to ``handle`` at ``offset``; the in-process indexer is
    fed them, or the index worker is told (every NOTIFY_BYTES) where the complete lines end."""

    _doing = "write the file"  # what a write error says we were doing
    handle: io.BufferedRandom
    local: Path  # the file written (a full disk is told by its directory's file system)
    row: FileState  # what will be committed
    host: str
    path: bytes
    indexer: FileIndexer | None
    job: IndexJob | None
    head: bytearray  # the file's first bytes, for its fingerprint or the host's head digest
    offset: int
    end_of_lines: int
    notified: int
    committed: int  # what the checkpoint claims (or will, once the last piece is committed)
    #: What the state's checkpoint claims for sure: :attr:`committed` once the piece handed
    #: over last is committed (see :meth:`confirm`); a file given up because that piece
    #: will never be is cut back to this (see :meth:`withdrawn`).
    confirmed: int
    #: The bytes the data must start with (an append's overlap, or a next piece's): None
    #: when there are none.
    overlap: Overlap | None = None
    #: The disk (or this user's quota) filled up after the last line end: what follows is not
    #: written (see _put). The errno that said so (ENOSPC, EDQUOT), 0 while there is room.
    no_room: int = 0

    def _put(self, view: memoryview, *, track_lines: bool = True) -> None:
        if self.no_room:
            self._past_the_lines(view)
            return
        try:
            self.handle.write(view)
        except OSError as exc:
            # A full disk while writing bytes after the last line end (a huge last line the
            # agent is still writing) loses nothing: only whole lines are committed, and
            # those bytes would be cut off at the end. The file goes on without them, and
            # fails only if a newline comes (then they were needed).
            if not (track_lines and self._dropped_past_the_lines(exc)):
                raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
            self._past_the_lines(view)
            return
        if self.indexer is not None:
            self.indexer.feed(view)
        if track_lines:
            newline = rfind_newline(view)
            if newline >= 0:
                self.end_of_lines = self.offset + newline + 1
                if self.job is not None and self.end_of_lines - self.notified >= NOTIFY_BYTES:
                    self._notify()
        self.offset += len(view)

    def _past_the_lines(self, view: memoryview) -> None:
        """Bytes not written (out of space): a newline among them ends a line the disk could
        not hold, which fails the file as a full disk (or quota) does."""
        if rfind_newline(view) >= 0:
            full = OSError(self.no_room, os.strerror(self.no_room))
            raise mirror_error(full, self.host, self.path, self._doing, self.local)
        self.offset += len(view)

    def _dropped_past_the_lines(self, exc: OSError) -> bool:
        """After a write failed with ``exc``: if for want of space (the disk's or this user's
        quota), cut the file back to its last line end, freeing what was written past it, and
        go on without writing. False (nothing done, or nothing but a fresh handle) for
        another error, or when bytes before that end did not reach the file."""
        if not out_of_space(exc):
            return False
        # The buffered handle keeps what it could not write and would write it later: its
        # buffer is dropped (those bytes are past the lines or checked below) and the file
        # taken up again through a copy of its descriptor.
        try:
            fd = self._drop_the_buffer()
        except OSError:
            return False
        self.handle = open(fd, "r+b")  # noqa: SIM115 (kept until flush)
        try:
            # Written in order: the descriptor's offset (shared with the closed handle) is
            # where the writes that reached the file end, whatever the file held past it.
            if os.lseek(fd, 0, os.SEEK_CUR) < self.end_of_lines:
                return False
            self.handle.truncate(self.end_of_lines)
            self.handle.seek(self.end_of_lines)
        except OSError:
            return False
        self.no_room = exc.errno or errno.ENOSPC  # one of FULL_ERRNOS, as checked above
        return True

    def _drop_the_buffer(self) -> int:
        """A copy of the file's descriptor, the handle closed: what its buffer still held
        unwritten is dropped (the close writes it once more; its failure is let go). The
        copy's offset is where the writes that reached the file end. Should the copy fail
        (OSError: no descriptor left), the handle is still the writer's, open."""
        fd = os.dup(self.handle.fileno())
        with contextlib.suppress(OSError):
            self.handle.close()
        return fd

    def _cut_back_and_close(self, size: int) -> None:
        """Truncate the file to ``size`` (the checkpoint handed over last: every byte a
        checkpoint covers is below it, written by the flush that handed it over) and close
        it, for an abort. The buffer is dropped first: a write that failed (an I/O error, a
        full disk) leaves its bytes there, and a truncate through the handle writes them
        first, failing again, which left the bytes past the checkpoint until the next
        open's recovery."""
        try:
            fd = self._drop_the_buffer()
        except OSError:
            # No descriptor left for the copy: through the handle, as far as its flush lets.
            try:
                self.handle.truncate(size)
            finally:
                self.handle.close()
            return
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _cut_at_the_lines(self, size: int, doing: str, *, lines: bool = True) -> None:
        """Truncate the file to ``size`` (its last line end, when ``lines``). The flush that
        comes first may find the disk full with only bytes past the lines left to write:
        they are dropped instead (see :meth:`_dropped_past_the_lines`)."""
        try:
            self.handle.truncate(size)
        except OSError as exc:
            if not (lines and self._dropped_past_the_lines(exc)):
                raise mirror_error(exc, self.host, self.path, doing, self.local) from exc

    def _past_the_overlap(self, view: memoryview) -> memoryview:
        """``view`` without the overlap bytes it begins with, checked against what was
        expected; another byte there is :class:`RewriteDetected`."""
        return view if self.overlap is None else self.overlap.take(view)

    def _overlap_whole(self) -> None:
        """:class:`RewriteDetected` if the read ended inside its overlap (the file shrank)."""
        if self.overlap is not None and not self.overlap.whole:
            raise RewriteDetected

    def resume(self, start: int) -> None:
        """Go on with the file's next piece, read from ``start``: its first bytes, up to where
        the last piece ended, must be the ones written then (a file replaced or rewritten
        between the two reads seldom has them), else :class:`RewriteDetected`.

        A disk that filled up in the last piece (after its last line end: those lines are
        handed over) fails the file as full, as a newline past it would in one range: its
        overlap was never written, which is no sign of a rewrite."""
        length = self.offset - start
        if not 0 < length <= FINGERPRINT_BYTES * 16:
            raise ValueError(f"a next piece overlaps its last by 1 to 16 KiB, not {length}")
        if self.no_room:
            full = OSError(self.no_room, os.strerror(self.no_room))
            raise mirror_error(full, self.host, self.path, self._doing, self.local)
        try:
            self.handle.flush()
            expected = os.pread(self.handle.fileno(), length, start)
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
        if len(expected) != length:
            raise RewriteDetected  # bytes a full disk dropped: the overlap cannot be checked
        self.overlap = Overlap(expected)

    def checkpoint(self) -> Pending | None:
        """The lines written so far, as a :class:`Pending` of their own, while the file goes
        on in its next piece: committed, a connection dropped later keeps them. None when no
        line ended since the last checkpoint (a line longer than a piece).

        Its descriptor is a copy of the writer's, which its flush syncs and closes; the bytes
        written after its lines are the next piece's start (a checkpoint never claims them).
        The first of a :class:`WholeWriter` hands its temp file over, to be put in place by
        its flush: from then on the writer writes to the mirrored file."""
        self._overlap_whole()
        added = self.end_of_lines - self.committed
        if added <= 0:
            return None
        try:
            self.handle.flush()
        except OSError as exc:
            # Only bytes past the lines left to write, on a full disk: dropped (see _put).
            if not self._dropped_past_the_lines(exc):
                raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
        self._fingerprint_lines()
        try:
            fd = os.dup(self.handle.fileno())
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
        try:
            index = self.indexer.snapshot() if self.indexer is not None else None
        except BaseException:
            os.close(fd)
            raise
        # Only now, with nothing left to fail: a checkpoint that fails hands nothing over,
        # and must leave the writer's at the one handed over last, which abort cuts back to.
        self.row.size = self.committed = self.end_of_lines
        row = replace(self.row)  # the writer's row goes on changing
        return Pending(row, fd, category="grown", bytes=added, index=index, piece=True)

    def confirm(self, piece: Pending, after: Pending | None) -> None:
        """``piece``, a checkpoint of this file, is committed: it is what a give-up cuts back
        to, and what its flush and commit made of its row (the version its old copy was kept
        as, when it was first seen) holds for the writer's row and for ``after``, the
        checkpoint handed over since (its row a copy made before)."""
        self.confirmed = piece.row.size
        for row in (self.row, after.row) if after is not None else (self.row,):
            row.version = piece.row.version
            row.first_seen = piece.row.first_seen

    def withdrawn(self) -> None:
        """The checkpoint handed over last will never be committed (its flush failed):
        :meth:`abort` cuts back to the one that was."""
        self.committed = self.confirmed

    def taken_back(self, committed: int) -> None:
        """The checkpoint just made (by :meth:`checkpoint`) was never handed over: the
        writer's checkpoint is ``committed`` again, its value before it, which is the one
        handed over last (its flush may yet commit it: :meth:`abort` cuts back to its end,
        not to :attr:`confirmed`)."""
        self.committed = self.row.size = committed

    def _fingerprint_lines(self) -> None:
        """The row's fingerprint of the lines written so far (``end_of_lines`` bytes); a
        failed read of them is a :class:`~remote_sync.errors.MirrorError` naming the file."""
        raise NotImplementedError

    def _keep_head(self, view: memoryview) -> None:
        """Keep the file's first bytes (up to FINGERPRINT_BYTES) as they arrive."""
        if len(self.head) < FINGERPRINT_BYTES:
            self.head += view[: FINGERPRINT_BYTES - len(self.head)]

    def _without_buffer(self) -> int:
        """The file's descriptor alone, its handle and write buffer freed, for the wait until
        the batch flush.

        Hundreds of finished files of a fleet may wait for one flush; each buffer is memory
        nothing will write again (``truncate`` has flushed it), and a file object with its
        name 0.35 KB more than the number. A copy of the descriptor is kept and the handle
        closed: a file object cannot let its descriptor go otherwise. The copy is made
        first: should it fail (no descriptor left), the handle is still the writer's, open,
        for :meth:`abort` to cut back and close.
        """
        try:
            self.handle.flush()
            # Nothing left to write (flushed): a failing close loses nothing, and the
            # descriptor it closes is released all the same.
            return self._drop_the_buffer()
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc

    def _notify(self) -> None:
        assert self.job is not None
        try:
            self.handle.flush()  # the worker reads the file, not our buffer
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
        self.job.written(self.end_of_lines)
        self.notified = self.end_of_lines


class Overlap:
    """The bytes the host sends again before what is new (``expected``): an append's, from
    its start to its checkpoint's end (:meth:`read`), or a next piece's, up to where the
    last piece ended; and their comparison with what the host sends, as it arrives
    (:meth:`take`). An append and a dry run's check of one (which reads the overlap only)
    compare alike. ``head``: the file's first bytes, for the host's digest of its head."""

    def __init__(self, expected: bytes, head: bytes = b"") -> None:
        self.expected = expected
        self.head = head
        self.seen = 0

    @classmethod
    def read(cls, file: BinaryIO, size: int, start: int, *, head: bool = False) -> Overlap:
        """The overlap of an append from ``start`` to a file of ``size`` committed bytes,
        read from ``file`` (with its first bytes too, if ``head``).

        Raises :class:`RewriteDetected` when the file holds fewer bytes: cut short since its
        checkpoint (by hand, mid-run), a short overlap would verify nothing and an append at
        ``size`` would leave a hole."""
        first = file.read(FINGERPRINT_BYTES) if head else b""
        file.seek(start)
        expected = file.read(size - start)
        if len(expected) != size - start:
            raise RewriteDetected
        return cls(expected, first)

    @property
    def whole(self) -> bool:
        """Has all of the overlap come (and agreed)? If not when the host's file ends, it
        shrank."""
        return self.seen == len(self.expected)

    def take(self, view: memoryview) -> memoryview:
        """Compare the overlap's part of ``view`` (the host's next bytes) with the mirror's:
        :class:`RewriteDetected` if they differ, else the bytes past the overlap."""
        if self.seen < len(self.expected):
            take = min(len(view), len(self.expected) - self.seen)
            if view[:take] != self.expected[self.seen : self.seen + take]:
                raise RewriteDetected
            self.seen += take
            view = view[take:]
        return view


class AppendWriter(_LineWriter):
    """Extend a mirrored file in place after verifying the overlap."""

    _doing = "append to the mirrored file"

    def __init__(
        self,
        state: MirrorState,
        row: FileState,
        start: int,
        new_row: FileState,
        indexer: FileIndexer | None = None,
        job: IndexJob | None = None,
        *,
        keep_head: bool = False,
        local: Path | None = None,
    ) -> None:
        self.row = new_row  # what will be committed (size updated on finish)
        self.indexer = indexer  # fed the new bytes only (after the overlap)
        self.job = job  # or told where the new complete lines end
        self.host = new_row.host
        self.path = new_row.path
        self.committed = self.confirmed = row.size
        self.local = local or state.local_path(row.host, row.path)
        try:
            self.handle = open(self.local, "r+b")  # noqa: SIM115 (kept until flush)
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, "open the mirrored file") from exc
        try:
            # The file's first KiB, for the host's digest of it after the read: the mirror's
            # (committed, unchanged by this append), or the first bytes received.
            self.head_from_data = keep_head and start == 0
            self.overlap = Overlap.read(self.handle, row.size, start, head=keep_head and start > 0)
            self.head = bytearray(self.overlap.head)
        except OSError as exc:
            # Closed here: the error's traceback holds this writer, and with it the file,
            # for as long as the error is kept.
            self.handle.close()
            raise mirror_error(exc, self.host, self.path, "open the mirrored file") from exc
        except RewriteDetected:  # cut short since recovery: fetched whole instead
            self.handle.close()
            raise
        self.offset = row.size  # where the next new byte goes
        self.end_of_lines = row.size
        self.notified = row.size
        self.handle.seek(row.size)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.head_from_data:
            self._keep_head(view)
        view = self._past_the_overlap(view)
        if view:
            self._put(view)

    def _fingerprint_lines(self) -> None:
        if self.committed < FINGERPRINT_BYTES:
            try:
                head = os.pread(self.handle.fileno(), min(self.end_of_lines, FINGERPRINT_BYTES), 0)
            except OSError as exc:
                # Mapped here for both callers (a checkpoint and the finish): a raw OSError
                # out of the finish was said as an internal error of the host.
                raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
            self.row.fingerprint = fingerprint_of(head)

    def finish(self) -> Pending:
        self._overlap_whole()  # the remote file ended inside our overlap: it shrank
        # A partial last line waits for next run.
        self._cut_at_the_lines(self.end_of_lines, "truncate the mirrored file")
        self.row.size = self.end_of_lines
        self._fingerprint_lines()  # the file ends at its lines now
        added = self.end_of_lines - self.committed
        index = self.indexer.result().packed() if self.indexer is not None else None
        if self.job is not None:
            self.job.finish(self.end_of_lines)  # truncate() flushed the buffer
        return Pending(
            self.row,
            self._without_buffer(),
            category="grown" if added else "unchanged",  # verified only (a touched file)
            bytes=added,
            index=index,
            job=self.job,
        )

    def abort(self) -> None:
        """Cut back to the checkpoint: nothing of this fetch stays."""
        if self.job is not None:
            self.job.drop()
        self._cut_back_and_close(self.committed)


class SeededWriter(AppendWriter):
    """Append to a copy of another mirrored file, to be put in place as a new file.

    For a file the host renamed (see :func:`remote_sync.mirror.plan._seed_renamed`): the
    mirrored bytes of its old name (``seed``, as far as its checkpoint goes) are copied into
    a temp file, which the fetch then extends as :class:`AppendWriter` extends a mirrored
    file, overlap check included. Its flush renames the temp file into place like
    :class:`WholeWriter`'s; the copy under the old name is left as it is.
    """

    _doing = "append to a copy of a mirrored file"

    def __init__(
        self,
        state: MirrorState,
        seed: FileState,
        start: int,
        new_row: FileState,
        *,
        keep_head: bool,
    ) -> None:
        try:
            source = open(state.local_path(seed.host, seed.path), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise RewriteDetected from None  # moved away by hand: fetched whole instead
        except OSError as exc:
            raise mirror_error(exc, seed.host, seed.path, "open the mirrored file") from exc
        self.temp = state.temp_path()
        try:
            with source, open(self.temp, "wb") as copy:
                _copy_prefix(source, copy, seed.size)
            super().__init__(state, seed, start, new_row, keep_head=keep_head, local=self.temp)
        except OSError as exc:
            self.temp.unlink(missing_ok=True)
            raise mirror_error(
                exc, new_row.host, new_row.path, "copy a mirrored file", self.temp
            ) from exc
        except BaseException:
            self.temp.unlink(missing_ok=True)
            raise

    def finish(self) -> Pending:
        pending = super().finish()
        pending.temp = os.fspath(self.temp)
        pending.category = "new"
        pending.bytes = self.row.size
        return pending

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            self.temp.unlink(missing_ok=True)


def _copy_prefix(source: BinaryIO, copy: BinaryIO, size: int, block: int = 1 << 20) -> None:
    """Copy the first ``size`` bytes of ``source``; fewer there is :class:`RewriteDetected`
    (the copy is not what its checkpoint says)."""
    left = size
    while left:
        data = source.read(min(block, left))
        if not data:
            raise RewriteDetected
        copy.write(data)
        left -= len(data)


def rfind_newline(view: memoryview) -> int:
    """The offset of the last newline in ``view``, or -1."""
    # bytes(view) would copy a whole chunk; search the tail first, where a newline usually is.
    tail = bytes(view[-4096:])
    found = tail.rfind(b"\n")
    if found >= 0:
        return len(view) - len(tail) + found
    if len(view) <= 4096:
        return -1
    return bytes(view[:-4096]).rfind(b"\n")


class WholeWriter(_LineWriter):
    """Stream a whole file into a temp file; the flush puts it in place."""

    _doing = "write a temp file"

    def __init__(
        self,
        state: MirrorState,
        row: FileState,
        *,
        lines_only: bool,
        category: str,
        back: bool = False,
        indexer: FileIndexer | None = None,
        job: IndexJob | None = None,
    ) -> None:
        self.back = back
        self.indexer = indexer
        self.job = job
        self.state = state
        self.row = row
        self.host = row.host
        self.path = row.path
        self.lines_only = lines_only
        self.category = category
        #: None once a checkpoint handed it over: the writer then writes to the mirrored file.
        self.temp: Path | None = state.temp_path()
        self.local = self.temp
        self.mirrored = state.local_path(row.host, row.path)  # where a first piece goes
        try:
            # Readable too: an index worker reads the lines through (a copy of) this descriptor.
            self.handle = open(self.temp, "w+b")  # noqa: SIM115 (kept until flush)
        except OSError as exc:
            raise mirror_error(exc, row.host, row.path, "create a temp file") from exc
        self.offset = 0
        self.end_of_lines = 0
        self.notified = 0
        self.committed = self.confirmed = 0
        self.head = bytearray()
        #: How far the mirrored copy is known to begin with the lines so far (see
        #: :meth:`_grows_the_old_copy`); None once it is known not to.
        self.matched: int | None = 0
        #: The bytes past the lines of the piece that put the file in place, kept apart
        #: until that piece is committed (see :meth:`checkpoint`).
        self.tail: BinaryIO | None = None

    def write(self, data: bytes | memoryview) -> None:
        view = self._past_the_overlap(memoryview(data))
        self._keep_head(view)
        self._put(view, track_lines=self.lines_only)

    def _fingerprint_lines(self) -> None:
        self.row.fingerprint = fingerprint_of(
            self.head[: min(self.end_of_lines, FINGERPRINT_BYTES)]
        )

    def checkpoint(self) -> Pending | None:
        """See :meth:`_LineWriter.checkpoint`. Nothing is handed over while the mirrored copy
        is longer than the lines so far and begins with them (a file replaced by one with the
        same history and more, or fetched whole after recovery): in place, those lines would
        be taken for a rewrite of it (the old copy kept as a version, the mirror cut to one
        piece). The temp file goes on until it is as long, or differs.

        The first checkpoint handed over puts the temp file in place: its bytes past the
        lines (the start of a line the next piece ends) are moved out of it first, and go
        back only once that piece is committed (:meth:`confirm`; the engine waits for it),
        so that a kill between its rename and its commit leaves in place only synced whole
        lines, which recovery's follow of the file on disk then claims.

        Blocking, up to a piece read and written (the comparison, the bytes moved out; and
        :meth:`confirm` moving them back): the engine runs both in a worker thread."""
        if self.temp is not None:
            self._overlap_whole()
            if self._grows_the_old_copy():
                return None
        before = self.committed
        pending = super().checkpoint()
        if pending is None or self.temp is None:
            return pending
        try:
            self.tail = self._move_out_past(self.end_of_lines)
        except BaseException:
            discard([pending])  # its descriptor only: the temp file is still the writer's
            self.taken_back(before)  # handed nothing over (see _LineWriter.checkpoint)
            raise
        pending.temp, self.temp = os.fspath(self.temp), None
        self.local = self.mirrored
        self._doing = "append to the mirrored file"
        pending.category = self.category
        pending.back = self.back
        return pending

    def _grows_the_old_copy(self) -> bool:
        """Is the mirrored copy longer than the lines so far, and do they begin it? Compares
        only the lines since the last call (each piece's once)."""
        if self.matched is None:
            return False
        try:
            old = open(self.mirrored, "rb")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError):
            return False  # no copy there: nothing to keep apart
        except OSError as exc:
            raise mirror_error(exc, self.host, self.path, "read the mirrored copy") from exc
        try:
            with old:
                info = os.fstat(old.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size <= self.end_of_lines:
                    return False  # at least as long: its flush compares the two whole
                self.handle.flush()
                while self.matched < self.end_of_lines:
                    n = min(1 << 20, self.end_of_lines - self.matched)
                    mine = os.pread(self.handle.fileno(), n, self.matched)
                    if len(mine) != n or os.pread(old.fileno(), n, self.matched) != mine:
                        self.matched = None
                        return False
                    self.matched += n
        except OSError as exc:
            # A failed read (or a full disk under the flush) must not pass for a copy that
            # differs: that would put a short first piece in place and keep the old copy as
            # a version of a file that only grew.
            raise mirror_error(exc, self.host, self.path, "compare with the mirrored copy") from exc
        return True

    def _move_out_past(self, size: int) -> BinaryIO | None:
        """Move the temp file's bytes past ``size`` to a file of their own (None: none)."""
        try:
            self.handle.flush()
            end = os.fstat(self.handle.fileno()).st_size
            if end <= size:
                return None
            tail = open(self.state.temp_path(), "w+b")  # noqa: SIM115 (until confirm)
            try:
                _copy_range(self.handle.fileno(), size, tail.fileno(), 0, end - size)
                self.handle.truncate(size)
            except BaseException:
                _remove_tail(tail)
                raise
        except OSError as exc:
            if out_of_space(exc):
                # Past the lines, as a full disk in _put: the file goes on without them.
                self._cut_at_the_lines(size, self._doing)
                if not self.no_room:
                    self.no_room = exc.errno or errno.ENOSPC
                return None
            raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
        return tail

    def confirm(self, piece: Pending, after: Pending | None) -> None:
        super().confirm(piece, after)
        tail, self.tail = self.tail, None
        if tail is None:
            return
        try:
            size = os.fstat(tail.fileno()).st_size
            _copy_range(tail.fileno(), 0, self.handle.fileno(), self.end_of_lines, size)
        except OSError as exc:
            if not out_of_space(exc):
                raise mirror_error(exc, self.host, self.path, self._doing, self.local) from exc
            self._cut_at_the_lines(self.end_of_lines, self._doing)
            self.no_room = exc.errno or errno.ENOSPC
        finally:
            _remove_tail(tail)

    def finish(self) -> Pending:
        # A last piece that ended inside its overlap: the file shrank since the piece before.
        self._overlap_whole()
        size = self.end_of_lines if self.lines_only else self.offset
        doing = "truncate a temp file" if self.temp is not None else "truncate the mirrored file"
        self._cut_at_the_lines(size, doing, lines=self.lines_only)
        self.row.size = size
        self.row.fingerprint = fingerprint_of(self.head[: min(size, FINGERPRINT_BYTES)])
        index = self.indexer.result().packed() if self.indexer is not None else None
        if self.job is not None:
            self.job.finish(size)  # truncate() flushed the buffer
        return Pending(
            self.row,
            self._without_buffer(),
            temp=os.fspath(self.temp) if self.temp is not None else None,
            category=self.category,
            back=self.back,
            bytes=size - self.committed,
            index=index,
            job=self.job,
        )

    def abort(self) -> None:
        if self.job is not None:
            self.job.drop()
        if self.tail is not None:
            _remove_tail(self.tail)
            self.tail = None
        if self.temp is None:  # in place since a checkpoint: cut back to it
            if self.confirmed:
                self._cut_back_and_close(self.committed)
            else:  # its flush, failed or not, decides what is in place
                self.handle.close()
            return
        # Nothing of a temp file is kept: a close that fails writing its buffer (a finish
        # that found the disk full) loses nothing, and must not skip the removal.
        with contextlib.suppress(OSError):
            self.handle.close()
        self.temp.unlink(missing_ok=True)


def _copy_range(source: int, start: int, target: int, at: int, length: int) -> None:
    """Copy ``length`` bytes of descriptor ``source`` from ``start`` to ``target`` at ``at``
    (a megabyte at a time: a line as long as a piece is not read into memory at once)."""
    done = 0
    while done < length:
        data = os.pread(source, min(1 << 20, length - done), start + done)
        if not data:
            raise OSError(errno.EIO, "a temp file was shorter than it was written")
        view = memoryview(data)
        while view:
            written = os.pwrite(target, view, at + done)
            view = view[written:]
            done += written


def _remove_tail(tail: BinaryIO) -> None:
    """Close and remove a file of bytes kept apart (see :meth:`WholeWriter.checkpoint`)."""
    with contextlib.suppress(OSError):
        tail.close()
    with contextlib.suppress(OSError):
        os.unlink(tail.name)
