"""A fetch stream's frame events turned into writer calls, for the file each belongs to.

What it owns: :class:`FrameHandler` (a file's writer opened as its transfer asks: an append, a
whole file, or a renamed transcript's seeded copy, with its indexer or index worker job; a
checked file held until the host's digest agrees; a transcript fetched in pieces, see
:data:`~.engine.PIECE_BYTES`, through one writer from piece to piece, each piece a checkpoint
committed before the next is handed over; what cannot be committed given up or fetched again
by the follow-up), handing what arrived to its round (:class:`~.engine.HostSync`), which
batches the commits.

A piece's checkpoint, which may read and copy up to a piece, and the copy of a renamed
transcript's mirrored bytes its append starts from are made in worker threads, and handling
a chunk's frames lets the event loop's other tasks run every :data:`YIELD_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio.lowlevel

from ..errors import MirrorError, PermissionDeniedError, ReadFailedError, RemoteSyncError, path_text
from ..index.update import FileIndexer, indexer_for
from .commits import in_thread
from .destination import only_this_file
from .digests import Algorithm, Hasher
from .durable import Pending, discard, give_up
from .fetch_events import Begin, Changed, Data, Denied, End, Failed, Gone, HeadDigest, Short
from .fetch_frames import FetchRequest
from .fetch_script import HEAD_BYTES
from .plan import Transfer
from .state import FileState
from .writer import AppendWriter, RewriteDetected, SeededWriter, WholeWriter

if TYPE_CHECKING:
    from .engine import HostSync

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The event loop's other tasks (an app's UI, its server) get to run after this long of
#: handling the frames of one chunk of a fetch.
YIELD_SECONDS = 0.005


class FrameHandler:
    """Frame events of one fetch stream → writer calls for the file each belongs to.

    A checked file (see :attr:`FetchRequest.check`) is finished but *held* until the host's
    digest of its head after the read: a head that changed under the read means the copy may
    be the old head with the new tail, so it is dropped and the file fetched whole again. A
    rewrite that keeps the first KiB as it was is not seen this way. A file copied whole with
    :attr:`FetchRequest.check_whole` is held the same way until the host's digest of the whole
    file agrees with the same digest of the bytes received. An append with
    :attr:`FetchRequest.check_batched` is held until its batch's digest, apart from the
    others: that one comes after the batch's last item, theirs right after their read.

    A transcript fetched in pieces (consecutive requests of one transfer, see
    :data:`~.engine.PIECE_BYTES`) keeps its writer from piece to piece (:class:`_Pieces`). Each
    piece but the last, once the host's digest of the head after its read agrees, becomes a
    checkpoint of the lines so far, committed before the next piece's is handed over; each
    piece after the first checks its overlap with the bytes of the one before. Anything
    else (a digest or overlap that differs, a short read) gives the rest of the file up as
    it would give up a file, the pieces committed kept. In the follow-up, whose pieces are
    cut by a listed size the file may no longer have, a piece whose read comes short is the
    file's last, and the pieces after it are read past (:meth:`_read_past`).
    """

    def __init__(
        self,
        sync: HostSync,
        transfers: Sequence[Transfer],
        requests: Sequence[FetchRequest],
        *,
        follow_up: bool,
    ) -> None:
        self.sync = sync
        self.transfers = transfers
        self.requests = requests
        self.follow_up = follow_up
        self.writer: AppendWriter | WholeWriter | None = None
        self.index = -1
        self.again: list[Transfer] = []
        # Appends whose batch's head digest did not agree: read again one by one, checked.
        self.recheck: list[Transfer] = []
        # Finished checked files since the last digest, and the digests of their heads in order.
        self.held = _Held()
        # The same for appends checked at their batch's end (check_batched).
        self.held_in_batch = _Held()
        # The digests of the bytes of the file being read, when the host hashes it whole.
        self.whole: Hasher | None = None
        # The host's hashing tool, once a digest has named it: later bytes are hashed once.
        self.tool: Algorithm | None = None
        # The file being fetched in pieces, from its first piece's Begin to its last's commit.
        self.pieces: _Pieces | None = None
        # The follow-up's piece whose read came Short: its file's last (see _last_piece).
        self.ended = -1

    async def handle_all(self, events: Iterable[object]) -> None:
        # A chunk of small files is hundreds of files to create, write and finish (the
        # creation alone may take milliseconds): the other tasks of the event loop run
        # between them every YIELD_SECONDS. Not a place to be cancelled (the stream's next
        # read is), so that no event list is left halfway through.
        since = time.monotonic()
        for event in events:
            await self.handle(event)
            if time.monotonic() - since >= YIELD_SECONDS:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                since = time.monotonic()

    async def handle(self, event: object) -> None:
        sync = self.sync
        if isinstance(event, Data):
            if self.whole is not None:
                self.whole.update(event.data)
            if self.writer is not None:
                try:
                    self.writer.write(event.data)
                except RewriteDetected:
                    self._rewrite()
                sync.result.bytes += len(event.data)
                sync.progress_within_file()
            return
        if isinstance(event, HeadDigest):
            await self._digest(event)
            return
        index: int = event.index  # type: ignore[attr-defined]
        t = self.transfers[index]
        request = self.requests[index]
        if isinstance(event, Short) and not request.archive:
            # The file ended there (at most: a read past its end says only that it ends
            # before). Not a tar entry's: tar's copy may come short for other reasons.
            end = request.start + event.received
            ends = sync.ends
            ends[t.remote.path] = min(end, ends.get(t.remote.path, end))
        if self._read_past(index):
            self.index, self.writer, self.whole = index, None, None
            return
        if isinstance(event, Begin):
            self.index = event.index
            checked_whole = self.requests[event.index].check_whole
            self.whole = Hasher(self.tool) if checked_whole else None
            if self._piece_after(event.index):
                self._resume(t)
                return
            try:
                self.writer = await self._open(t)
                if not self._last_piece(event.index):
                    self.pieces = _Pieces(t, self.writer)
            except RewriteDetected:  # the mirrored copy is not what its checkpoint says
                self._again(t)
            except MirrorError as exc:
                if not only_this_file(exc):
                    raise  # disk full, too many open files...: every file would fail
                # This mirrored file cannot be opened (its permissions, a directory in its
                # place): it fails, its bytes are read past, and the other files go on.
                self.writer = None
                sync.fail(t.remote.path, exc.message, "mirror", exc.hint)
        elif isinstance(event, End) or (isinstance(event, Short) and self.follow_up):
            writer = self.writer
            if writer is None:
                return
            if isinstance(event, Short):
                # A follow-up's read ends at the file's end, whichever piece it falls in
                # (see follow_up_requests): the pieces after it are read past.
                self.ended = event.index
            if not self._last_piece(event.index):
                self.writer = None
                return  # the file goes on: its lines are taken once the digest after agrees
            try:
                pending = writer.finish()
            except RewriteDetected:
                self._drop()
                self._again(t)
                return
            # Only now: a finish that raised left the writer here, so that the abort that
            # follows (the host's round fails) aborts it: its temp file removed, an append
            # cut back to its checkpoint, its file closed.
            self.writer = None
            # Where the read ended: the listed size in the round, whose reads end there. A
            # follow-up's read ends where the file did (Short), or at the end of its last
            # piece, the file maybe longer: a row that kept the listed size (and mtime) took
            # the file back as listed for one it had mirrored whole (plan._decide).
            received = event.received if isinstance(event, Short) else request.length
            pending.row.remote_size = request.start + received
            whole, self.whole = self.whole, None
            if whole is not None:
                # Only a range's digest can be due: the held list is empty, and this file's
                # digest is that of all its bytes.
                self.held.files.append((event.index, pending))
                self.held.heads = whole
                return
            # Fewer bytes than a head (a follow-up's read of a small file) came in one read:
            # nothing to check, and the host's head may have grown since.
            if len(writer.head) >= HEAD_BYTES and (request.check or request.check_batched):
                held = self.held_in_batch if request.check_batched else self.held
                held.files.append((event.index, pending))
                held.heads.update(writer.head[:HEAD_BYTES])
                return
            await self._finished(event.index, pending)
        elif isinstance(event, (Short, Changed)):
            self._drop()
            self._again(t)  # it shrank or grew while we read it: fetch it whole again
        elif isinstance(event, Failed):
            self._drop()
            failed = ReadFailedError("reading the file on the host failed midway")
            sync.fail(t.remote.path, failed.message, failed.kind, failed.hint)
        elif isinstance(event, Gone):
            # Vanished since the listing: the next round records the deletion (of what its
            # pieces committed, if it was fetched in pieces).
            self._drop_pieces_of(t)
        elif isinstance(event, Denied):
            self._drop_pieces_of(t)
            denied = PermissionDeniedError("permission denied on the host")
            sync.fail(t.remote.path, denied.message, denied.kind, denied.hint)

    def _piece_after(self, index: int) -> bool:
        """Is request ``index`` a piece of a file after its first?"""
        return index > 0 and self.transfers[index - 1] is self.transfers[index]

    def _read_past(self, index: int) -> bool:
        """Is request ``index`` a piece of a file done with before it: given up in an earlier
        piece (failed and counted so, or to be fetched whole by the follow-up, or gone), or,
        in a follow-up, after the piece its file ended in? Read past, whatever it says: a
        failure or a short read of it would count the file failed a second time, or fetch
        again a file already counted failed."""
        if not self._piece_after(index):
            return False
        ended = self.ended
        if 0 <= ended < index and self.transfers[ended] is self.transfers[index]:
            return True
        # A file that goes on has its pieces from its first piece's Begin to its last's
        # commit; none, or another file's, means it was given up since.
        return self.pieces is None or self.pieces.transfer is not self.transfers[index]

    def _last_piece(self, index: int) -> bool:
        """Is request ``index`` the last (or only) one of its file, or the follow-up's piece
        its file ended in?"""
        after = index + 1
        return (
            after == len(self.transfers)
            or self.transfers[after] is not self.transfers[index]
            or index == self.ended
        )

    def _resume(self, t: Transfer) -> None:
        """The Begin of a piece after a file's first, which goes on (see :meth:`_read_past`):
        its writer goes on, checking the overlap."""
        pieces = self.pieces
        assert pieces is not None
        self.writer = None
        try:
            pieces.writer.resume(self.requests[self.index].start)
        except RewriteDetected:
            self._drop_pieces()
            self._again(t)
            return
        self.writer = pieces.writer

    async def _piece_checked(self, event: HeadDigest) -> None:
        """The host's digest of the head after a piece of a file that goes on: when it
        agrees, the lines so far are committed (after the piece before them); else the file
        is fetched whole, its pieces committed so far kept (a rewrite keeps them as a
        version)."""
        pieces = self.pieces
        index = event.indices[0]
        if pieces is None or pieces.transfer is not self.transfers[index]:
            return  # given up in this piece (it failed, or its overlap differed)
        writer, t = pieces.writer, pieces.transfer
        heads = Hasher(self.tool)
        heads.update(writer.head[:HEAD_BYTES])
        if event.digest is not None and not heads.agrees(event.digest):
            log.info(
                "%s: %s: it changed while it was read in pieces; fetching it whole",
                self.sync.name,
                path_text(t.remote.path),
            )
            self._drop_pieces()
            self._again(t)
            return
        try:
            pending = await _checkpoint(writer)
        except RewriteDetected:
            self._drop_pieces()
            self._again(t)
            return
        except MirrorError as exc:
            if not only_this_file(exc):
                raise  # disk full, an I/O error...: every file would fail
            # The copy in its place cannot be read (a directory there, its permissions): the
            # file fails as one whose open failed, its later pieces read past (_read_past).
            self._drop_pieces()
            self.sync.fail(t.remote.path, exc.message, "mirror", exc.hint)
            return
        if pending is None:
            return  # no line ended in this piece: the next one goes on with it
        request = self.requests[index]
        # Not the listed size: the next round must not take the rest for fetched (plan._decide).
        pending.row.remote_size = request.start + request.length
        await self._finished(index, pending)

    async def _finished(self, index: int, pending: Pending) -> None:
        """Hand a file that arrived, or a piece of one, to the commit."""
        pieces = self.pieces
        if pieces is None or pieces.transfer is not self.transfers[index]:
            await self.sync.finished(pending)
            return
        try:
            placed = pieces.last is None or await self.sync.piece_committed(pieces.last)
        except BaseException:
            self._give_up(index, pending)  # a flush failed: the host's round ends
            raise
        if not placed:
            # The piece before could not be put in place (its error is said, the file
            # counted failed): the rest of the file would be appended to nothing.
            self._give_up(index, pending)
            return
        if pieces.last is not None:
            pieces.writer.confirm(pieces.last, pending)
        if pending.piece:
            pieces.last = pending
            pieces.first = pieces.first or pending
        else:
            self.pieces = None  # the last piece: the file is done
            first = pieces.first
            if first is not None:
                # Counted as its first commit found it (new, rewritten...; its flush put the
                # file in place), or grown since.
                grew = pending.row.size > first.row.size
                unchanged = first.category == "unchanged"
                pending.category = "grown" if grew and unchanged else first.category
        await self.sync.finished(pending)
        if pending.piece and pending.temp is not None:
            await self._put_in_place(pieces, pending)

    async def _put_in_place(self, pieces: _Pieces, piece: Pending) -> None:
        """Wait for the commit of ``piece``, the one that puts its file in place, before
        anything more of the file is written there (see WholeWriter.checkpoint): until
        then the file in place holds its synced lines only, what recovery claims of a file
        found renamed before its commit. Once per file, for one piece's sync.

        Kept rather than streaming on meanwhile: the next piece would have to be written
        somewhere other than the file in place (the file its bytes past the lines were moved
        to), then copied there after the commit: up to a piece more read and written per
        file, to save one sync of at most a piece, during which the host's next bytes still
        fill the channel's window. Not measured on a large file."""
        try:
            placed = await self.sync.piece_committed(piece)
        except BaseException:
            self._abandon(pieces)
            raise
        if not placed:
            self._abandon(pieces)
            return
        # Its bytes past the lines go back: up to a piece (a line that long) copied, in a
        # worker thread as the checkpoint's (see _checkpoint). A cancel that comes once it is
        # done finds the piece confirmed, and the give-up cuts back to it.
        await in_thread(pieces.writer.confirm, piece, None)
        pieces.last = None

    async def _open(self, t: Transfer) -> AppendWriter | WholeWriter:
        state = self.sync.state
        r = t.remote
        row = FileState(
            host=self.sync.name,
            path=r.path,
            kind=t.kind,
            size=0,
            remote_size=r.size,
            mtime=r.mtime,
            dev=r.dev,
            ino=r.ino,
            fingerprint=b"",
            version=t.row.version if t.row else 0,
            first_seen=t.row.first_seen if t.row else 0.0,
        )
        request = self.requests[self.index]
        if t.seed is not None:
            # A renamed file: an append to a copy of its old name's mirrored bytes. Its
            # session is indexed from the mirror at the round's end, as a new one. The copy
            # is made in a worker thread: it may be a whole session of hundreds of MB, which
            # on the event loop would hold every other host's stream for as long.
            seed = t.seed
            row.size = seed.size
            row.fingerprint = seed.fingerprint
            keep_head = request.check or request.check_batched
            return await _made_in_thread(
                lambda: SeededWriter(state, seed, t.start, row, keep_head=keep_head), self._abort
            )
        reader = self.sync.reader
        indexed = t.kind == "append" and reader is not None and reader.is_transcript(r.path)
        worker = self.sync.worker
        if worker is not None and worker.dead is not None:
            worker = None  # it failed earlier in the run: index the rest in-process
        if not self._last_piece(self.index):
            worker = None  # fetched in pieces: each piece commits its facts (FileIndexer)
        writer: AppendWriter | WholeWriter
        if t.mode == "append":
            assert t.row is not None
            row.size = t.row.size
            row.fingerprint = t.row.fingerprint
            indexer = None
            if indexed and reader is not None and worker is None:
                start = t.row.size
                facts = self.sync.continuable_facts_of(r.path, start) if start else None
                indexer = indexer_for(reader, self.sync.name, r.path, start=start, facts=facts)
            check = request.check or request.check_batched
            writer = AppendWriter(state, t.row, t.start, row, indexer, keep_head=check)
        else:
            whole_indexer = (
                FileIndexer(reader, self.sync.name, r.path)
                if indexed and reader is not None and worker is None
                else None
            )
            writer = WholeWriter(
                state,
                row,
                lines_only=t.kind == "append",
                category=t.category,
                back=t.back,
                indexer=whole_indexer,
            )
        if indexed and reader is not None and worker is not None:
            start = row.size if t.mode == "append" else 0
            facts = self.sync.continuable_facts_of(r.path, start) if start else None
            if start > 0 and facts is None:
                return writer  # no facts to continue: indexed at the round's end (indexer_for)
            writer.job = worker.job(
                fd=writer.handle.fileno(),
                host=self.sync.name,
                path=r.path,
                fmt=reader.name,
                start=start,
                facts=facts,
                # No stored facts: a whole fetch (or an append to an empty file), whose marks
                # start afresh.
                fresh=facts is None,
            )
        return writer

    async def _digest(self, event: HeadDigest) -> None:
        """Commit the held files if their heads are as the host hashed them after the read."""
        batch = self.requests[event.indices[0]].check_batched
        if event.digest is not None:
            self.tool = event.digest.algorithm
        if self._read_past(event.indices[0]):
            return
        if not self._last_piece(event.indices[0]):
            await self._piece_checked(event)
            return
        if batch:
            group, self.held_in_batch = self.held_in_batch, _Held(heads=Hasher(self.tool))
        else:
            group, self.held = self.held, _Held(heads=Hasher(self.tool))
        held, heads = group.files, group.heads
        # A checked file that did not end (shrank, failed...) is in the host's digest but not
        # in ours: the others cannot be told apart from it, and are fetched again too.
        complete = [index for index, _ in held] == list(event.indices)
        if event.digest is None or (complete and heads.agrees(event.digest)):
            for n, (index, pending) in enumerate(held):
                t = self.transfers[index]
                if event.digest is None and t.verify_head:
                    # The host cannot hash (neither md5sum nor cksum), and a file of its old
                    # size with another mtime had only its head left to show a rewrite in
                    # place: it is fetched whole and compared instead.
                    self._give_up(index, pending)
                    self._again(t)
                    continue
                try:
                    await self._finished(index, pending)
                except BaseException:
                    self.held.files += held[n + 1 :]  # a flush failed: abort() gives these up
                    raise
            return
        held = await self._commit_replaced(held, event)
        if batch:
            # Which of the batch's appends has another head (or whether the one that did not
            # end had) is not known: each is read again as planned, with a head check of its
            # own, and only one found rewritten is then fetched whole.
            why = "its batch's heads were rewritten or could not be compared; checking it alone"
        elif complete:
            why = "it changed while it was read; fetching it whole"
        else:
            why = "its batch's heads could not be compared (an entry of it did not end); "
            why += "fetching it whole"
        for index, pending in held:
            t = self.transfers[index]
            log.info("%s: %s: %s", self.sync.name, path_text(t.remote.path), why)
            self._give_up(index, pending)
            if batch:
                self.recheck.append(t)
            else:
                self._again(t)

    async def _commit_replaced(
        self, held: list[tuple[int, Pending]], event: HeadDigest
    ) -> list[tuple[int, Pending]]:
        """Commit the held files whose name the host found on another file than the one
        listed, and return the others.

        The host hashed those heads by name after the reads. A transcript compacted meanwhile
        (a new file renamed over it) has another head there, but its bytes came from the
        file listed, opened before the rename, or from the new file when the rename came
        first, which its overlap with the mirrored tail then vouched for. Dropping such a
        read would lose the lines compaction removed: committed, the next round finds the
        new inode, keeps this copy as a version and fetches the new file whole. A file whose
        head had to be verified (its size unchanged, another mtime) is not committed so."""
        inodes = event.inodes
        if inodes is None:
            return held
        now = dict(zip(event.indices, inodes, strict=True))
        kept: list[tuple[int, Pending]] = []
        for n, (index, pending) in enumerate(held):
            t = self.transfers[index]
            if index not in now or now[index] == t.remote.ino or t.verify_head:
                kept.append((index, pending))
                continue
            log.info(
                "%s: %s: replaced on the host since it was listed; committed as it was read",
                self.sync.name,
                path_text(t.remote.path),
            )
            try:
                await self.sync.finished(pending)
            except BaseException:
                self.held.files += kept + held[n + 1 :]  # abort() gives these up
                raise
        return kept

    def _give_up(self, index: int, pending: Pending) -> None:
        self.sync.result.gave_up = True
        t = self.transfers[index]
        pieces = self.pieces
        if pieces is not None and pieces.transfer is t:
            # A piece of a file fetched in pieces, not handed over: the piece before it
            # failed, or its commit could not be waited for. The file is given up, cut back
            # to its checkpoint (its temp file removed if none was).
            self._withdraw(pieces)
            if pending.piece:
                give_up(pending, None)
                self._abort(pieces.writer)
            else:  # the last piece: its descriptor is the writer's
                give_up(pending, pieces.writer.committed)
            return
        give_up(pending, t.row.size if t.mode == "append" and t.row is not None else None)

    def _withdraw(self, pieces: _Pieces) -> None:
        """No more of ``pieces``' file comes: when the piece handed over last will never be
        committed (its flush is over and failed), the writer cuts back to what is committed,
        not to that piece; while its flush runs, that flush decides (see
        :meth:`_left_to_its_flush`)."""
        self.sync.result.gave_up = True
        self.pieces = None
        if pieces.last is not None and self.sync.never_committed(pieces.last):
            pieces.writer.withdrawn()
        else:
            self._left_to_its_flush(pieces)

    @staticmethod
    def _left_to_its_flush(pieces: _Pieces) -> None:
        """``pieces``' file is given up while the flush of its last piece handed over runs:
        the writer's abort cuts back to that piece's end, which the flush may yet commit.
        Should it not, the file is cut back to the checkpoint before the piece as soon as
        that is known (``cut_back``); without this it stayed longer until the next open's
        recovery. A piece that puts its file in place is left to its flush alone: nothing
        more of the file was written past its lines (see ``WholeWriter.checkpoint``)."""
        last = pieces.last
        if last is not None and not last.committed and last.temp is None:
            last.cut_back = pieces.writer.confirmed

    def _abandon(self, pieces: _Pieces) -> None:
        """Give the file up after a piece of it that was handed over was not committed."""
        self._withdraw(pieces)
        if self.writer is pieces.writer:
            self.writer = None
        self._abort(pieces.writer)

    def _abort(self, writer: AppendWriter | WholeWriter) -> None:
        """``writer.abort()`` in a path that already fails, or fails its file: its error must
        not hide that one (what abort leaves past the checkpoint, recovery cuts back)."""
        self.sync.result.gave_up = True
        try:
            writer.abort()
        except OSError as exc:
            log.warning("%s: could not clean up a partial fetch: %s", self.sync.name, exc)

    def _rewrite(self) -> None:
        self._drop()
        self._again(self.transfers[self.index])

    def _again(self, t: Transfer) -> None:
        """Fetch ``t`` whole in the follow-up (once: a rewrite seen mid-file ends Short too)."""
        if not any(other is t for other in self.again):
            self.again.append(t)

    def _drop(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            self.sync.result.gave_up = True
            pieces = self.pieces
            if pieces is not None and pieces.writer is writer:
                self.pieces = None  # its file fails or is fetched again: no piece comes
                self._left_to_its_flush(pieces)
            writer.abort()

    def _drop_pieces_of(self, t: Transfer) -> None:
        if self.pieces is not None and self.pieces.transfer is t:
            self._drop_pieces()

    def _drop_pieces(self) -> None:
        """Give the file being fetched in pieces up, between two of them: cut back to its
        last piece handed to the commit (which stays: its digest agreed)."""
        pieces, self.pieces = self.pieces, None
        if pieces is not None:
            self.sync.result.gave_up = True
            if self.writer is pieces.writer:
                self.writer = None
            self._left_to_its_flush(pieces)
            self._abort(pieces.writer)

    def abort_naming(self, exc: RemoteSyncError) -> None:
        """:meth:`abort`, and name in ``exc`` the file it interrupted (when it names none)."""
        if exc.path is None and self.writer is not None:
            exc.path = path_text(self.transfers[self.index].remote.path)
        self.abort()

    def abort(self) -> None:
        held = self.held.files + self.held_in_batch.files
        self.held, self.held_in_batch = _Held(), _Held()
        for index, pending in held:
            self._give_up(index, pending)
        try:
            self._drop()
            self._drop_pieces()
        except OSError as exc:  # the abort must not hide the error that caused it
            log.warning("%s: could not clean up a partial fetch: %s", self.sync.name, exc)


async def _checkpoint(writer: AppendWriter | WholeWriter) -> Pending | None:
    """``writer.checkpoint()`` in a worker thread: a rewrite's piece is compared with a longer
    mirrored copy, and the piece that puts a file in place copies its bytes past the lines
    aside, each up to a piece (64 MiB) read and written, which on the event loop would hold
    every other host's stream for as long. Nothing else touches the writer meanwhile: its
    handler waits here, and the host's stream with it.

    A cancel raised once the thread is done (``in_thread`` waits for it) takes back the
    checkpoint it made, never handed to the batch: its descriptor closed, the temp file it
    would have put in place removed, and the writer's checkpoint back to what it was, the
    piece handed over last, which the give-up that follows cuts back to. Not to the piece
    confirmed before that one: the flush the round's end waits for may commit the piece
    handed over last, and the file would then be shorter than its checkpoint."""
    before = writer.committed

    def take_back(pending: Pending | None) -> None:
        if pending is not None:
            discard([pending])
            writer.taken_back(before)

    return await _made_in_thread(writer.checkpoint, take_back)


async def _made_in_thread(make: Callable[[], T], undo: Callable[[T], None]) -> T:
    """``make()`` in a worker thread (:func:`in_thread`). A cancel raised once the thread is
    done finds what it made for a task that goes no further: ``undo`` it (descriptors
    closed, temp files removed) before the cancel goes on."""
    made: list[T] = []
    try:
        await in_thread(lambda: made.append(make()))
    except BaseException:
        if made:
            undo(made[0])
        raise
    return made[0]


@dataclass
class _Pieces:
    """A file fetched in pieces: its writer, kept from piece to piece, and the pieces of it
    handed to the commit (the first is the one that put it in place, the last the one the
    next piece waits for)."""

    transfer: Transfer
    writer: AppendWriter | WholeWriter
    first: Pending | None = None
    last: Pending | None = None


@dataclass
class _Held:
    """Finished checked files awaiting one digest, and the digests of their heads in order."""

    files: list[tuple[int, Pending]] = field(default_factory=list)
    heads: Hasher = field(default_factory=Hasher)
