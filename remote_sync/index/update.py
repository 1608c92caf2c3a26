"""Keeping the session index current: from the new bytes of a sync, or rebuilt from the mirror.

What it owns: :class:`FileIndexer`, which decodes the bytes a sync writes for one transcript
(only the new ones: an append continues the facts already stored) and folds them into the
session's facts with the format's reader, :func:`index_range`, the same over a byte range of a
file on disk (the index worker's fallback), and :func:`rebuild_index`, which recomputes every
session from the mirrored files (after an upgrade, or when the index is in doubt); a mirrored
file it cannot read is reported and left out, and the rest is indexed. A finished file's update
waits for its flush as a :class:`PackedUpdate`, a few bytes instead of the facts' objects.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..decode.jsonl import JsonlDecoder
from ..errors import MirrorError, path_text, refetch_hint
from .facts import FormatReader, SessionFacts
from .store import MARK_EVERY, IndexRows, load_facts, record_index_rules

log = logging.getLogger(__name__)


class IndexUpdate(msgspec.Struct):
    """One session's new facts, written with its file's checkpoint."""

    host: str
    path: bytes
    format: str
    facts: SessionFacts
    marks: list[tuple[int, int]] = msgspec.field(default_factory=list)
    fresh: bool = False

    def put_into(self, rows: IndexRows) -> None:
        """Add its rows to a commit's (:meth:`IndexRows.write` writes them)."""
        rows.put(self.host, self.path, self.format, self.facts, self.marks, fresh=self.fresh)

    def write(self, db: sqlite3.Connection) -> None:
        """Write its rows alone, now (call inside the checkpoint's transaction)."""
        rows = IndexRows()
        self.put_into(rows)
        rows.write(db)

    def packed(self) -> PackedUpdate | IndexUpdate:
        """The same update held compactly until its commit (see :class:`PackedUpdate`);
        itself when its facts hold a number msgpack cannot (a claimed count past 64 bits,
        which the index's JSON still stores)."""
        try:
            blob = _pack((msgspec.structs.astuple(self.facts), self.marks))
        except OverflowError:
            return self
        return PackedUpdate(self.host, self.path, self.format, blob, self.fresh)


#: SessionFacts' fields in order: what a :class:`PackedUpdate`'s values are, one each.
_FACT_FIELDS = SessionFacts.__struct_fields__
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(tuple[list[Any], list[tuple[int, int]]]).decode


class PackedUpdate(msgspec.Struct, gc=False):
    """An :class:`IndexUpdate` waiting for its file's flush, its facts and marks packed into
    one msgpack string (about 150 bytes for a small session).

    A fleet's round holds every finished file until its flush: 8 hosts x 204 files in the
    benchmark's fleet. Held as objects, a session's facts were a dozen of them (the facts,
    six lists, their strings, the marks), 1.1 KB more per file than this. Unpacked, at the
    commit, it is the update it was: the same rows are written. Not tracked by the garbage
    collector: it holds no object that could lead back to it.
    """

    host: str
    path: bytes
    format: str
    blob: bytes
    fresh: bool

    def put_into(self, rows: IndexRows) -> None:
        """Add its rows to a commit's, as :meth:`IndexUpdate.put_into` does."""
        values, marks = _unpack(self.blob)
        facts = SessionFacts(**dict(zip(_FACT_FIELDS, values, strict=True)))
        rows.put(self.host, self.path, self.format, facts, marks, fresh=self.fresh)


class FileIndexer:
    """Folds the bytes of one transcript, from ``start`` on, into its facts."""

    def __init__(
        self,
        reader: FormatReader,
        host: str,
        path: bytes,
        *,
        start: int = 0,
        facts: SessionFacts | None = None,
    ) -> None:
        self.reader = reader
        self.fresh = facts is None
        if facts is None:
            agent, session_id = reader.identify(path)
            facts = SessionFacts(session_id=session_id, agent=agent)
        self.facts = facts
        self.update = IndexUpdate(host, path, reader.name, facts, fresh=self.fresh)
        self.decoder: JsonlDecoder[Any] = JsonlDecoder(reader.line_type, start_offset=start)
        self.fold_many = getattr(reader, "fold_many", None)

    def feed(self, data: bytes | memoryview) -> None:
        """Fold the lines ``data`` completes into the facts (a partial last line waits).

        Runs on the event loop for every byte a sync writes, so it takes the decoder's
        :meth:`~remote_sync.decode.jsonl.JsonlDecoder.feed_values` (values and offsets, no
        object per line) and folds them in one pass.
        """
        facts = self.facts
        decoder = self.decoder
        start = decoder.committed_offset
        fed = decoder.feed_values(data)
        facts.lines += fed.lines  # every newline ends a line, blank ones too
        facts.bytes += decoder.committed_offset - start
        facts.malformed += fed.malformed
        values = fed.values
        if not values:
            return
        marks = self.update.marks
        if self.fold_many is not None:
            self.fold_many(facts, values, fed.offsets.__getitem__, marks, MARK_EVERY)
            return
        # One pass per line: the message count is read once per line, not twice. Marks
        # number the messages show renders (repeated ones too), as show counts them.
        fold = self.reader.update
        messages = facts.shown
        for i, value in enumerate(values):
            fold(facts, value)
            now = facts.shown
            if now != messages:
                if messages % MARK_EVERY == 0:
                    marks.append((messages, fed.offsets[i]))
                messages = now

    def result(self) -> IndexUpdate:
        """The session's facts so far, ready to store (every index write comes through here)."""
        self.facts.bound()
        return self.update

    def snapshot(self) -> PackedUpdate | IndexUpdate:
        """The facts so far as an update of their own, for a piece of the file committed while
        the indexer goes on (see :meth:`remote_sync.mirror.writer._LineWriter.checkpoint`):
        a copy, since the piece's commit writes it later (packed, as a finished file's
        update waits); the marks it carries are not carried again, and the updates after it
        keep them (not ``fresh``)."""
        update = self.result()
        piece = update.packed()
        if piece is update:
            # Facts msgpack cannot hold (a count past 64 bits a transcript claimed, which the
            # index's JSON stores): copied field by field, each list anew (their items are
            # numbers, strings and None, never changed in place).
            facts = msgspec.structs.replace(
                update.facts,
                **{
                    name: list(value)
                    for name in _FACT_FIELDS
                    if isinstance(value := getattr(update.facts, name), list)
                },
            )
            piece = IndexUpdate(
                update.host, update.path, update.format, facts, update.marks, fresh=update.fresh
            )
        update.marks = []
        update.fresh = False
        return piece


def indexer_for(
    reader: FormatReader, host: str, path: bytes, *, start: int, facts: SessionFacts | None
) -> FileIndexer | None:
    """An indexer continuing ``facts`` when ``start`` > 0, else starting afresh.

    ``facts`` are the stored facts of exactly the ``start`` committed bytes
    (:func:`continuable_facts`); None when there are none such (none, or fewer: a
    ``--no-index`` run appended to the file, or an older version's index lost it), and then
    so is the indexer: new bytes cannot be added to them. The sync then drops the session
    and indexes the file from the mirror at the end of its round
    (``HostSync._index_the_unindexed``).
    """
    if start == 0:
        return FileIndexer(reader, host, path)
    if facts is None:
        return None
    return FileIndexer(reader, host, path, start=start, facts=facts)


def continuable_facts(
    db: sqlite3.Connection, host: str, path: bytes, start: int
) -> SessionFacts | None:
    """The stored facts of exactly the ``start`` committed bytes of a session, to which the
    facts of its new bytes can be added; None when there are none such (see
    :func:`indexer_for`)."""
    return continuable(load_facts(db, host, path), start)


def continuable(facts: SessionFacts | None, start: int) -> SessionFacts | None:
    """``facts`` if they describe exactly the ``start`` committed bytes, else None."""
    return facts if facts is not None and facts.bytes == start else None


def index_local_file(
    reader: FormatReader, host: str, path: bytes, local: Path, size: int
) -> IndexUpdate:
    """Index the first ``size`` bytes of a mirrored file from scratch."""
    return index_range(reader, host, path, local, start=0, end=size)


def index_range(
    reader: FormatReader,
    host: str,
    path: bytes,
    local: Path,
    *,
    start: int,
    end: int,
    facts: SessionFacts | None = None,
    fresh: bool | None = None,
) -> IndexUpdate:
    """Fold bytes ``[start, end)`` of a mirrored file into ``facts`` (None: a fresh session).

    ``fresh`` (default: no ``facts`` given) says the session's page marks start afresh.
    """
    indexer = FileIndexer(reader, host, path, start=start, facts=facts)
    if fresh is not None:
        indexer.update.fresh = fresh
    with open(local, "rb") as src:
        src.seek(start)
        remaining = end - start
        while remaining > 0:
            block = src.read(min(remaining, 1 << 20))
            if not block:
                break
            remaining -= len(block)
            indexer.feed(block)
    return indexer.result()


def rebuild_index(
    dest: Path,
    hosts: Sequence[str] | None = None,
    *,
    on_error: Callable[[MirrorError], None] | None = None,
) -> int:
    """Recompute the index from the mirror; returns how many sessions it holds.

    A mirrored file that cannot be read (gone, unreadable, not a file) is left out, with its
    session, and reported as a :class:`MirrorError` naming host and path to ``on_error``
    (default: logged as a warning); every other session is indexed.
    """
    from ..formats.readers import get_reader
    from ..mirror.state import MirrorState

    report = on_error if on_error is not None else _log_unreadable
    count = 0
    with MirrorState(dest) as state:
        known = state.hosts()
        for host, (fmt, _root) in known.items():
            if hosts is not None and host not in hosts:
                continue
            reader = get_reader(fmt)
            rows = state.host_files(host)
            updates: list[IndexUpdate] = []
            for path, row in rows.items():
                if row.size <= 0 or not reader.is_transcript(path):
                    continue
                local = state.local_path(host, path)
                try:
                    updates.append(index_local_file(reader, host, path, local, row.size))
                except OSError as exc:
                    # As rsync does with a file that vanished and `restic check` with a damaged
                    # pack: report it, go on with the rest, fail at the end. One lost file must
                    # not keep every other session out of the index; and an index rebuilt
                    # from what the mirror holds has no session for a file it does not hold.
                    gone = isinstance(exc, (FileNotFoundError, NotADirectoryError))
                    report(
                        MirrorError(
                            f"cannot read the mirrored file: {exc.strerror or exc}; "
                            "its session is left out of the index",
                            host=host,
                            path=path_text(path),
                            hint=refetch_hint(host, dest, row.state)
                            if gone
                            else f"restore {local} or fix its permissions, then run "
                            "`remote-sync index rebuild` again",
                        )
                    )
            indexed = {u.path for u in updates}
            index = IndexRows()
            for (p,) in state.db.execute("SELECT path FROM sessions WHERE host = ?", (host,)):
                if bytes(p) not in indexed:
                    index.delete(host, bytes(p))
            for update in updates:
                update.fresh = True
                update.put_into(index)
            with state.transaction():
                index.write(state.db)
            count += len(updates)
        if hosts is None:  # every row is now counted by this version's rules
            record_index_rules(state.db)
    return count


def _log_unreadable(error: MirrorError) -> None:
    log.warning("%s", error)
