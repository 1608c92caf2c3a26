"""Planning a host's round: the remote listing against the checkpoints → what to fetch.

What it owns: the decision, per file, between *unchanged*, *append* (fetch from just before the
committed end, verified by the overlap and by the head the host hashes per batch), *whole*
(new file, a file copied whole, or a rewrite: smaller than mirrored, or a different inode),
and *deleted* (gone from the remote: marked, never removed locally). A file back at the path
of one marked deleted is new unless it is that one (same inode, checked like any append). A
new transcript that is a mirrored one renamed on the host is an append to a copy of that one
(*seeded*). A transcript's range longer than a piece is fetched in pieces
(:meth:`Transfer.requests`), each committed on its own. It is pure: no I/O, so it is tested
on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .fetch_frames import FetchRequest
from .fetch_script import HEAD_BYTES, SKIP_BLOCK
from .listing import RemoteFile
from .state import FileState

#: Bytes re-fetched before the committed end of an appended file to verify it is unchanged:
#: 1/8 of the growth, between these bounds. The overlap ends exactly at a line end the mirror
#: committed, so even 1 KiB holds the end of a JSONL record or two with their ids and
#: timestamps; with the inode and size checks that catches any rewrite worth the name. Scaling
#: keeps a 10 KB append within about an eighth of extra bytes on the wire (a fixed 4 KiB was
#: 40%), while a growth of 32 KiB or more gets the full 4 KiB.
OVERLAP_BYTES = 4096
#: tar's block: a file of at most one block lies in one record, and is read at once.
TAR_BLOCK = 512
MIN_OVERLAP_BYTES = 1024
#: The smallest piece a range may be cut in (tests lower the engine's ``PIECE_BYTES`` to
#: this order): an overlap and a whole head fit in each.
MIN_PIECE_BYTES = 2 * OVERLAP_BYTES


def overlap_for(committed: int, growth: int) -> int:
    """How many committed bytes to re-fetch before appending ``growth`` new ones."""
    return min(committed, OVERLAP_BYTES, max(MIN_OVERLAP_BYTES, growth // 8))


Mode = Literal["append", "whole"]
Category = Literal["new", "grown", "rewritten"]


@dataclass(slots=True)
class Transfer:
    """One file to fetch in this round."""

    remote: RemoteFile
    kind: str  # 'append' or 'whole': how the file evolves
    mode: Mode  # how this fetch writes it
    category: Category
    start: int
    length: int
    row: FileState | None  # the checkpoint before this round, if any
    #: Have the host hash the file's head after the read even for a short range: a file of
    #: its old size with another mtime may be rewritten in place behind an unchanged tail.
    verify_head: bool = False
    #: A new file that is a mirrored one under its old name (see :func:`_seed_renamed`): an
    #: append (``row`` None) to a copy of that one's mirrored bytes.
    seed: FileState | None = None

    @property
    def back(self) -> bool:
        """Is this the file at the path of one the host deleted (its checkpoint marked so)?
        Fetched whole, such a file is new, whatever the plan hoped (see :func:`make_plan`)."""
        return self.row is not None and self.row.state != "live"

    def pieced(self, piece_bytes: int) -> bool:
        """Whether this range is fetched in pieces of at most ``piece_bytes`` (see
        :meth:`requests`): a transcript's, committed at line ends, so that a connection
        dropped 900 MB into a 1 GiB read keeps what came. A file copied whole is not (a
        prefix of it is no copy), nor a renamed one's append to a copy (put in place whole),
        nor a range that only verifies a file's old size."""
        return (
            self.kind == "append"
            and self.seed is None
            and not self.verify_head
            and self.length > piece_bytes
        )

    def requests(self, piece_bytes: int) -> list[FetchRequest]:
        """The fetch requests of this transfer: :meth:`request`, or its pieces when
        :meth:`pieced`.

        Each piece is a range of at most ``piece_bytes`` with its head checked on the host
        after the read, and each after the first starts :data:`OVERLAP_BYTES` before the end
        of the one before it: the next round's append would check
        those bytes and the head the same way, so a file rewritten or replaced between two
        pieces is seen as it would be between two rounds. The pieces are consecutive
        requests of the fetch, one file open on the host at a time."""
        if not self.pieced(piece_bytes):
            return [self.request()]
        if piece_bytes < MIN_PIECE_BYTES:
            raise ValueError(f"a piece is at least {MIN_PIECE_BYTES} bytes, not {piece_bytes}")
        path = self.remote.path
        end = self.start + self.length
        start = self.start
        pieces: list[FetchRequest] = []
        while True:
            stop = min(end, start + piece_bytes)
            pieces.append(FetchRequest(path, start, stop - start, check=True))
            if stop == end:
                return pieces
            start = stop - OVERLAP_BYTES

    def request(self) -> FetchRequest:
        # A whole line-committed file may come as a tar entry: tar's NUL padding of a file that
        # shrank mid-read lies after its last newline, which the writer never commits.
        archive = self.mode == "whole" and self.kind == "append" and not self.straddles
        # A file copied whole must be read to its end: one that grew since the listing comes
        # back Changed (and is fetched again) instead of as a cut-off prefix.
        growth = self.mode == "whole" and self.kind == "whole"
        check = self.kind == "append" and (
            self.verify_head or (self.length >= HEAD_BYTES if archive else self.long)
        )
        # A file copied whole that the host reads in more than one read (its extra byte
        # counted) is hashed whole after the read: it has no overlap or line ends to check.
        check_whole = growth and self.length + 1 > SKIP_BLOCK
        # An append re-reads only its overlap: when that does not reach back to the start, a
        # head rewritten in place since the last round (the rest of the file kept, or grown)
        # would go unseen. The host hashes such heads once per batch.
        check_batched = self.mode == "append" and self.start > 0 and not check
        return FetchRequest(
            self.remote.path,
            self.start,
            self.length,
            archive=archive,
            detect_growth=growth,
            check=check,
            check_whole=check_whole,
            check_batched=check_batched,
        )

    @property
    def long(self) -> bool:
        """Whether the host reads this range in more than one ``read``: only then can the file
        be truncated and rewritten in place between two of them (a copy made of its old head
        and its new tail), so only then does the host hash the head afterwards. tar reads a
        file in records of 10 KiB, so every archive entry of a KiB or more is checked."""
        return self.length > SKIP_BLOCK

    @property
    def straddles(self) -> bool:
        """Whether tar may read this file in two reads with too few bytes to check: its two
        data blocks may lie in two records (GNU tar writes a record between them). Such a
        file comes as a range instead: one read."""
        return TAR_BLOCK < self.length < HEAD_BYTES


@dataclass
class Plan:
    transfers: list[Transfer] = field(default_factory=list)
    unchanged: list[RemoteFile] = field(default_factory=list)
    deleted: list[FileState] = field(default_factory=list)
    #: Rows marked deleted whose file is back unchanged (moved away and back): live again.
    revived: list[FileState] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(t.length for t in self.transfers)


def make_plan(
    listing: Iterable[RemoteFile],
    rows: dict[bytes, FileState],
    *,
    is_append_only: Callable[[bytes], bool],
    is_included: Callable[[bytes], bool],
    listing_complete: bool = True,
) -> Plan:
    """Compare a host's listing with its checkpoints.

    ``listing_complete`` is False when the remote ``find`` reported errors (an unreadable
    directory): files missing from such a listing are not marked deleted.
    """
    plan = Plan()
    seen: set[bytes] = set()
    for remote in listing:
        seen.add(remote.path)
        row = rows.get(remote.path)
        if (
            row is not None
            and remote.size == row.remote_size
            and remote.mtime == row.mtime
            and remote.ino == row.ino
            and row.state == "live"
            and row.fingerprint
            and (remote.size >= row.size or row.kind != "append")
        ):
            # What _decide says of it whatever the globs make of it: most files of a round,
            # whose glob match (1 us a file) is then not made. An append-only row mirrored
            # past the listed size is not taken here: it is a rewrite only if it still is
            # append-only.
            plan.unchanged.append(remote)
            continue
        kind = "append" if is_append_only(remote.path) else "whole"
        transfer = _decide(remote, row, kind)
        if row is not None and row.state != "live" and row.fingerprint:
            # Back at the path of a file the host deleted (see Transfer.back). The same file
            # back (a disk unmounted for a while, a file moved away and back: its inode) goes
            # on as before: unchanged, or appended to with the overlap and head checks of any
            # append, which fetch it whole as new if it is not that one after all. Anything
            # fetched whole is a new file, as it is to the host's agent; the writer keeps the
            # deleted one's copy as a version unless it is a prefix of the new content.
            if transfer is None:
                if remote.ino == row.ino:
                    plan.revived.append(row)
            elif transfer.mode == "whole":
                transfer = dataclasses.replace(transfer, category="new")
        if transfer is None:
            plan.unchanged.append(remote)
        else:
            plan.transfers.append(transfer)
    if listing_complete:
        for path, row in rows.items():
            if row.state == "live" and path not in seen and is_included(path):
                plan.deleted.append(row)
    _seed_renamed(plan, rows, seen)
    return plan


def _seed_renamed(plan: Plan, rows: dict[bytes, FileState], seen: set[bytes]) -> None:
    """Turn the fetch of a new transcript that is a mirrored one renamed on the host into an
    append to a copy of the mirrored one.

    Agents archive by renaming: an OpenClaw session reset or deleted becomes
    ``<id>.jsonl.reset.<time>`` or ``.deleted.<time>``, a Codex session moves to
    ``archived_sessions/``. The file keeps its device and inode, and its old name is gone
    from the listing. Instead of fetching it whole again (as rsync would without
    ``--fuzzy``), the round copies the mirrored bytes locally and fetches only what follows,
    from an overlap, with its head hashed on the host: the checks of any append, so a file
    that is not that one after all (an inode reused) fails them and is fetched whole. A
    mirrored copy of a KiB or less is not worth it (the overlap would be all of it)."""
    gone: dict[tuple[int, int], FileState] = {}
    for path, row in rows.items():
        if (
            path not in seen
            and row.state == "live"
            and row.kind == "append"
            and row.ino
            and row.fingerprint
            and row.size > MIN_OVERLAP_BYTES
        ):
            gone.setdefault((row.dev, row.ino), row)
    if not gone:
        return
    for n, t in enumerate(plan.transfers):
        if t.category != "new" or t.kind != "append" or t.row is not None:
            continue
        seed = gone.get((t.remote.dev, t.remote.ino))
        if seed is None or t.remote.size < seed.size:
            continue
        del gone[(seed.dev, seed.ino)]  # one copy per mirrored file
        start = seed.size - overlap_for(seed.size, t.remote.size - seed.size)
        length = t.remote.size - start
        seeded = Transfer(t.remote, t.kind, "append", "new", start, length, None, seed=seed)
        plan.transfers[n] = seeded


def _decide(remote: RemoteFile, row: FileState | None, kind: str) -> Transfer | None:
    if row is None or not row.fingerprint:
        # No checkpoint, or a placeholder's (a file renamed into place before its first
        # commit, see MirrorState.mark_in_doubt): new, fetched whole and compared.
        if remote.size == 0 and kind == "append":
            return None  # an empty transcript: nothing to mirror until it has a line
        return Transfer(remote, kind, "whole", "new", 0, remote.size, row)
    if kind == "whole" or row.kind != kind:
        if remote.size == row.remote_size and remote.mtime == row.mtime and remote.ino == row.ino:
            return None
        return _whole(remote, row, kind, "rewritten")
    # An append-only file.
    if remote.ino != row.ino or remote.size < row.size:
        # Replaced (rename, copy) or shrunk (compaction, truncation): fetch it whole; the
        # writer keeps the old copy as a version unless the old content is a prefix of the new.
        return _whole(remote, row, kind, "rewritten")
    if remote.size == row.remote_size or remote.size == row.size:
        if remote.mtime == row.mtime or remote.size == 0:
            return None  # nothing new (a partial last line stays partial until it grows)
        # The same size with another mtime: rewritten in place to the same length, or only
        # touched. rsync's quick check would transfer it; here the overlap alone is fetched,
        # and a tail that differs from the mirror's, or a head that differs (hashed on the
        # host), makes it a rewrite (fetched whole).
        start = row.size - min(row.size, OVERLAP_BYTES)
        length = remote.size - start
        return Transfer(remote, kind, "append", "grown", start, length, row, verify_head=True)
    overlap = overlap_for(row.size, remote.size - row.size)
    start = row.size - overlap
    return Transfer(remote, kind, "append", "grown", start, remote.size - start, row)


def _whole(remote: RemoteFile, row: FileState, kind: str, category: Category) -> Transfer | None:
    if remote.size == 0 and kind == "append":
        return None  # truncated to nothing: keep what we have; new lines come as a rewrite
    return Transfer(remote, kind, "whole", category, 0, remote.size, row)
