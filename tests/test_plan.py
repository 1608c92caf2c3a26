"""Planning a round: the listing against the checkpoints (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_sync.mirror.listing import RemoteFile
from remote_sync.mirror.plan import (
    MIN_OVERLAP_BYTES,
    MIN_PIECE_BYTES,
    OVERLAP_BYTES,
    Transfer,
    _decide,
    make_plan,
    overlap_for,
)
from remote_sync.mirror.state import FileState


def remote(path: bytes, size: int, ino: int = 7, mtime: float = 1.0) -> RemoteFile:
    return RemoteFile(path, size, mtime, 1, ino)


def row(
    path: bytes, size: int, ino: int = 7, kind: str = "append", fingerprint: bytes = b"f" * 16
) -> FileState:
    """A committed checkpoint (every one has a fingerprint; an empty one is a placeholder's)."""
    return FileState("h", path, kind, size, size, 1.0, 1, ino, fingerprint)


def plan(listing: list[RemoteFile], rows: list[FileState], complete: bool = True):  # type: ignore[no-untyped-def]
    return make_plan(
        listing,
        {r.path: r for r in rows},
        is_append_only=lambda p: p.endswith(b".jsonl"),
        is_included=lambda p: True,
        listing_complete=complete,
    )


def test_overlap_scales_with_the_growth_within_bounds() -> None:
    assert overlap_for(100, 10_240) == 100  # never more than what is committed
    assert overlap_for(1 << 20, 10_240) == 1280  # 1/8 of a 10 KB append
    assert overlap_for(1 << 20, 100) == MIN_OVERLAP_BYTES
    assert overlap_for(1 << 20, 1 << 30) == OVERLAP_BYTES


def test_kinds_of_decision() -> None:
    rows = [
        row(b"grew.jsonl", 50_000),
        row(b"same.jsonl", 50_000),
        row(b"shrank.jsonl", 50_000),
        row(b"replaced.jsonl", 50_000),
        row(b"gone.jsonl", 10),
        row(b"meta.json", 10, kind="whole"),
    ]
    listing = [
        remote(b"grew.jsonl", 60_240),
        remote(b"same.jsonl", 50_000),
        remote(b"shrank.jsonl", 40_000),
        remote(b"replaced.jsonl", 60_000, ino=8),
        remote(b"meta.json", 10, mtime=2.0),
        remote(b"new.jsonl", 5),
        remote(b"empty.jsonl", 0),
    ]
    p = plan(listing, rows)
    by_path = {t.remote.path: t for t in p.transfers}
    grew = by_path[b"grew.jsonl"]
    assert (grew.mode, grew.category, grew.start) == ("append", "grown", 50_000 - 1280)
    assert grew.length == 10_240 + 1280
    assert by_path[b"shrank.jsonl"].category == "rewritten"
    assert by_path[b"replaced.jsonl"].mode == "whole"
    assert by_path[b"meta.json"].category == "rewritten"
    assert (by_path[b"new.jsonl"].category, by_path[b"new.jsonl"].start) == ("new", 0)
    assert set(by_path) == {b"grew.jsonl", b"shrank.jsonl", b"replaced.jsonl", b"meta.json",
                            b"new.jsonl"}  # fmt: skip
    assert [r.path for r in p.unchanged] == [b"same.jsonl", b"empty.jsonl"]
    assert [r.path for r in p.deleted] == [b"gone.jsonl"]
    # An incomplete listing records no deletion.
    assert plan(listing, rows, complete=False).deleted == []
    # A placeholder (renamed into place before its first commit) is new, fetched whole.
    placeholder = row(b"grew.jsonl", 50_000, ino=-1, fingerprint=b"")
    (t,) = plan([remote(b"grew.jsonl", 60_240)], [placeholder]).transfers
    assert (t.mode, t.category, t.start, t.length, t.row) == (
        "whole",
        "new",
        0,
        60_240,
        placeholder,
    )


def test_the_same_size_with_another_mtime_is_verified_by_its_overlap() -> None:
    """Rewritten in place to the same length (or only touched): rsync's quick check would
    look at it, so the tail is fetched and compared; the same size and mtime is unchanged."""
    partial = row(b"partial.jsonl", 50_000)
    partial.remote_size = 50_100  # a partial last line waits for its newline
    rows = [row(b"touched.jsonl", 50_000), partial]
    listing = [remote(b"touched.jsonl", 50_000, mtime=2.0), remote(b"partial.jsonl", 50_100)]
    p = plan(listing, rows)
    (t,) = p.transfers
    assert (t.remote.path, t.mode, t.start, t.length) == (
        b"touched.jsonl",
        "append",
        50_000 - OVERLAP_BYTES,
        OVERLAP_BYTES,
    )
    assert [r.path for r in p.unchanged] == [b"partial.jsonl"]


def test_a_file_copied_whole_is_hashed_whole_when_read_in_more_than_one_read() -> None:
    """The host reads a whole copy plus one byte; above one read (64 KiB) it hashes the whole
    file after the read. Transcripts keep their head check; nothing is both."""
    listing = [
        remote(b"small.json", 65_535),
        remote(b"long.json", 65_536),
        remote(b"s.jsonl", 200_000),
    ]
    requests = {t.remote.path: t.request() for t in plan(listing, []).transfers}
    assert not requests[b"small.json"].check_whole and requests[b"small.json"].detect_growth
    assert requests[b"long.json"].check_whole and not requests[b"long.json"].check
    assert requests[b"s.jsonl"].check and not requests[b"s.jsonl"].check_whole


def test_an_append_whose_overlap_misses_the_head_has_it_hashed_at_the_batch_end() -> None:
    """Only the overlap of an append is re-read: unless it reaches the file's start, the host
    hashes the head with the batch's other appends. A short file's overlap covers it all; a
    file of its old size with another mtime, or a long read, has a head check of its own."""
    rows = [
        row(b"grew.jsonl", 50_000),
        row(b"tiny.jsonl", 900),
        row(b"touched.jsonl", 50_000),
        row(b"long.jsonl", 50_000),
    ]
    listing = [
        remote(b"grew.jsonl", 60_240),
        remote(b"tiny.jsonl", 2_000),
        remote(b"touched.jsonl", 50_000, mtime=2.0),
        remote(b"long.jsonl", 50_000 + 100_000),
    ]
    requests = {t.remote.path: t.request() for t in plan(listing, rows).transfers}
    assert requests[b"grew.jsonl"].check_batched and not requests[b"grew.jsonl"].check
    assert requests[b"tiny.jsonl"].start == 0 and not requests[b"tiny.jsonl"].check_batched
    for path in (b"touched.jsonl", b"long.jsonl"):
        assert requests[path].check and not requests[path].check_batched


def test_a_renamed_transcript_extends_a_copy_of_its_old_name() -> None:
    """A new transcript on the device and inode of a mirrored one whose name is gone (an
    OpenClaw session archived as ``.reset.``) is an append to a copy of that one: from an
    overlap before its mirrored end, checked like any append. Not when the old name is still
    listed, when the file shrank, for a small copy, for a file copied whole, or twice."""
    rows = [
        row(b"a.jsonl", 50_000, ino=11),
        row(b"listed.jsonl", 50_000, ino=12),
        row(b"shrank.jsonl", 50_000, ino=13),
        row(b"small.jsonl", 1000, ino=14),
        row(b"index.json", 50_000, ino=15, kind="whole"),
        row(b"twice.jsonl", 50_000, ino=16),
    ]
    listing = [
        remote(b"a.jsonl.reset.2026-11-22T10-00-00.000Z", 60_240, ino=11),
        remote(b"listed.jsonl", 50_000, ino=12),
        remote(b"listed-link.jsonl", 50_000, ino=12),
        remote(b"shrank.jsonl.reset.1", 40_000, ino=13),
        remote(b"small.jsonl.reset.1", 2000, ino=14),
        remote(b"index.json.1", 50_000, ino=15),
        remote(b"twice-1.jsonl", 50_000, ino=16),
        remote(b"twice-2.jsonl", 50_000, ino=16),
        remote(b"other.jsonl", 70_000, ino=17),
    ]
    p = make_plan(
        listing,
        {r.path: r for r in rows},
        is_append_only=lambda p: b".jsonl" in p,  # archives too, as in the OpenClaw format
        is_included=lambda p: True,
    )
    by_path = {t.remote.path: t for t in p.transfers}
    seeded = by_path.pop(b"a.jsonl.reset.2026-11-22T10-00-00.000Z")
    assert (seeded.mode, seeded.category, seeded.row) == ("append", "new", None)
    assert seeded.seed is rows[0]
    assert (seeded.start, seeded.length) == (50_000 - 1280, 10_240 + 1280)
    request = seeded.request()
    assert request.check_batched and not request.archive
    assert sum(t.seed is not None for t in by_path.values()) == 1  # one of twice-1, twice-2
    for t in by_path.values():
        if t.seed is None:
            assert (t.mode, t.start, t.length) == ("whole", 0, t.remote.size), t.remote.path
    assert {r.path for r in p.deleted} == {
        b"a.jsonl",
        b"shrank.jsonl",
        b"small.jsonl",
        b"index.json",
        b"twice.jsonl",
    }
    # An unchanged rename: only the overlap comes (a KiB).
    pure = plan([remote(b"a-deleted.jsonl", 50_000, ino=11)], rows[:1]).transfers[0]
    assert (pure.seed, pure.start, pure.length) == (rows[0], 50_000 - 1024, 1024)


def deleted(path: bytes, size: int, ino: int = 7, kind: str = "append") -> FileState:
    """A checkpoint the host's file is gone from (marked deleted by an earlier round)."""
    gone = row(path, size, ino=ino, kind=kind)
    gone.state = "deleted"
    return gone


def test_a_file_back_where_one_was_deleted_is_new_unless_it_is_that_one() -> None:
    """Another file at a deleted one's path (another inode, or the same transcript's inode
    shrunk) is new, fetched whole; the same file back goes on as before: unchanged (live
    again), or an append checked like any, whose failure makes it new too (Transfer.back).
    An empty transcript there has nothing to mirror yet: the deleted mark stays."""
    rows = [
        deleted(b"other-inode.jsonl", 50_000),
        deleted(b"shrank.jsonl", 50_000),
        deleted(b"same.jsonl", 50_000),
        deleted(b"grew.jsonl", 50_000),
        deleted(b"empty.jsonl", 50_000),
        deleted(b"index.json", 100, kind="whole"),
        deleted(b"index-same.json", 100, kind="whole"),
        deleted(b"touched.json", 100, kind="whole"),
    ]
    listing = [
        remote(b"other-inode.jsonl", 60_000, ino=8),
        remote(b"shrank.jsonl", 40_000),
        remote(b"same.jsonl", 50_000),
        remote(b"grew.jsonl", 60_240),
        remote(b"empty.jsonl", 0, ino=9),
        remote(b"index.json", 100, ino=8),
        remote(b"index-same.json", 100),
        remote(b"touched.json", 100, mtime=2.0),
    ]
    p = plan(listing, rows)
    by_path = {t.remote.path: t for t in p.transfers}
    for path in (b"other-inode.jsonl", b"shrank.jsonl", b"index.json", b"touched.json"):
        t = by_path.pop(path)
        assert (t.mode, t.category, t.start, t.length) == ("whole", "new", 0, t.remote.size)
        assert t.back and t.row is not None and t.row.path == path
    grew = by_path.pop(b"grew.jsonl")
    assert (grew.mode, grew.category, grew.start) == ("append", "grown", 50_000 - 1280)
    assert grew.back and grew.request().check_batched
    assert by_path == {}
    assert sorted(r.path for r in p.unchanged) == [
        b"empty.jsonl",
        b"index-same.json",
        b"same.jsonl",
    ]
    assert sorted(r.path for r in p.revived) == [b"index-same.json", b"same.jsonl"]
    assert p.deleted == []


@given(
    committed=st.integers(0, 1 << 40),
    growth=st.integers(1, 1 << 36),
    data=st.data(),
    new=st.booleans(),
)
def test_a_long_range_comes_in_pieces_that_cover_it_each_overlapping_the_last(
    committed: int, growth: int, data: st.DataObject, new: bool
) -> None:
    """A transcript's range longer than a piece is cut in consecutive pieces of at most a
    piece, each with its head checked, each after the first starting OVERLAP_BYTES before
    the last one's end; together they read the range exactly, and end where it ends."""
    # A few hundred pieces at most: each is a request object.
    smallest = max(MIN_PIECE_BYTES, growth // 300)
    piece = data.draw(st.integers(smallest, max(smallest, 2 * growth)), label="piece")
    if new:
        (t,) = plan([remote(b"s.jsonl", growth)], []).transfers
    else:
        (t,) = plan(
            [remote(b"s.jsonl", committed + growth)], [row(b"s.jsonl", committed)]
        ).transfers
    requests = t.requests(piece)
    if t.length <= piece:
        assert requests == [t.request()]
        return
    assert t.pieced(piece)
    assert requests[0].start == t.start
    assert requests[-1].start + requests[-1].length == t.start + t.length
    for before, after in itertools.pairwise(requests):
        assert after.start == before.start + before.length - OVERLAP_BYTES
    for request in requests:
        assert 0 < request.length <= piece
        assert request.check and not (request.archive or request.check_batched)
        assert not (request.check_whole or request.detect_growth)
    # Each piece but the last reads a piece: no more of them than the range needs.
    assert len(requests) == 1 + -(-(t.length - piece) // (piece - OVERLAP_BYTES))


def test_only_a_transcript_range_is_cut_in_pieces() -> None:
    """A file copied whole is not (a prefix of it is no copy), nor a range that checks a file
    of its old size; a piece smaller than MIN_PIECE_BYTES is refused."""
    size = 10 * MIN_PIECE_BYTES
    (whole,) = plan([remote(b"s.json", size)], []).transfers
    assert whole.requests(MIN_PIECE_BYTES) == [whole.request()]
    touched = plan([remote(b"s.jsonl", size, mtime=2.0)], [row(b"s.jsonl", size)]).transfers
    assert touched[0].verify_head and not touched[0].pieced(MIN_PIECE_BYTES)
    (new,) = plan([remote(b"s.jsonl", size)], []).transfers
    assert len(new.requests(MIN_PIECE_BYTES)) > 1
    with pytest.raises(ValueError, match="piece"):
        new.requests(MIN_PIECE_BYTES - 1)


def test_an_unchanged_file_is_not_matched_against_the_globs() -> None:
    """A round's files as their checkpoints left them (size, mtime and inode) are unchanged
    whatever the globs say: most files of a round, each matched against the append-only
    globs (some 1 us) before; now only the others are."""
    rows = [row(b"a.jsonl", 100), row(b"b.json", 100, kind="whole"), row(b"c.jsonl", 100)]
    listing = [remote(b"a.jsonl", 100), remote(b"b.json", 100), remote(b"c.jsonl", 200)]
    asked: list[bytes] = []

    def is_append_only(path: bytes) -> bool:
        asked.append(path)
        return path.endswith(b".jsonl")

    p = make_plan(
        listing,
        {r.path: r for r in rows},
        is_append_only=is_append_only,
        is_included=lambda p: True,
    )
    assert [r.path for r in p.unchanged] == [b"a.jsonl", b"b.json"]
    assert [t.remote.path for t in p.transfers] == [b"c.jsonl"]
    assert asked == [b"c.jsonl"]


def _planned_one_by_one(
    remote: RemoteFile, row: FileState | None, kind: str
) -> tuple[Transfer | None, bool]:
    """What the plan made of one file before unchanged ones skipped the globs: ``_decide``
    with the kind the globs give, the file's transfer (None: unchanged) and whether it is
    revived."""
    transfer = _decide(remote, row, kind)
    revived = False
    if row is not None and row.state != "live" and row.fingerprint:
        if transfer is None:
            revived = remote.ino == row.ino
        elif transfer.mode == "whole":
            transfer = dataclasses.replace(transfer, category="new")
    return transfer, revived


def test_a_file_is_planned_as_by_its_glob_and_checkpoint_alone() -> None:
    """Skipping the globs for an unchanged file changes no decision: every combination of a
    listed file and its checkpoint (sizes either side of each other, the mirror past the
    listed size, another mtime or inode, either kind either way, deleted or renamed, a
    placeholder's, none) is planned as ``_decide`` decides it with the kind the globs give."""
    for case in itertools.product(
        [0, 1, 99, 100, 101, 5000],  # the listed size
        [0, 99, 100, 101],  # the size mirrored
        [0, 99, 100, 101],  # the size listed when it was
        [1.0, 2.0],
        [7, 8],
        ["append", "whole"],
        [True, False],
        ["live", "deleted", "renamed"],  # every state a row has (state.py)
        [b"", b"f" * 16],
        [True, False],
    ):
        _plans_one_as_decided(*case)


def _plans_one_as_decided(
    size: int,
    row_size: int,
    remote_size: int,
    mtime: float,
    ino: int,
    row_kind: str,
    append_only: bool,
    state: str,
    fingerprint: bytes,
    has_row: bool,
) -> None:
    listed = RemoteFile(b"f", size, mtime, 1, ino)
    checkpoint = (
        FileState("h", b"f", row_kind, row_size, remote_size, 1.0, 1, 7, fingerprint, state=state)
        if has_row
        else None
    )
    p = make_plan(
        [listed],
        {b"f": checkpoint} if checkpoint is not None else {},
        is_append_only=lambda path: append_only,
        is_included=lambda path: True,
    )
    transfer, revived = _planned_one_by_one(
        listed, checkpoint, "append" if append_only else "whole"
    )
    case = (size, row_size, remote_size, mtime, ino, row_kind, append_only, state, has_row)
    assert p.transfers == ([] if transfer is None else [transfer]), case
    assert p.unchanged == ([listed] if transfer is None else [])
    assert p.revived == ([checkpoint] if revived else [])
