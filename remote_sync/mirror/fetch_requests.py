"""The fetch requests a round makes of its transfers, and those of its follow-up.

What it owns: the round's requests of its plan's transfers (one per piece of a transcript
fetched in pieces) and the stdin that sends them (:func:`requests_of`), and the requests of
the follow-up command, which fetches again the files a round found changed
(:func:`follow_up_requests`): a file fetched whole asks for a bounded length
(:data:`FOLLOW_UP_GROWTH`), so that the follow-up's output has a budget as the round's has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import msgspec

from .fetch_frames import FetchRequest
from .fetch_script import BATCH_BYTES, round_fetch_stdin
from .plan import Transfer

#: A follow-up fetches whole a file that changed since the listing, so its size then is not
#: known: it asks for the listed size and as much again, or this much more if that is more,
#: and a byte past it (``detect_growth``). A file longer than that by then grows faster than
#: a round can follow: it is "changed again", fetched by the next run. Asking for a bounded
#: length keeps the follow-up within a byte budget, as the round's fetch is: a host cannot
#: stream bytes without end into a file of the mirror.
FOLLOW_UP_GROWTH = BATCH_BYTES


def _follow_up_length(t: Transfer) -> int:
    """The bytes a follow-up asks for of a file it fetches whole, from its listed size (see
    :data:`FOLLOW_UP_GROWTH`)."""
    return t.remote.size + max(t.remote.size, FOLLOW_UP_GROWTH)


def follow_up_requests(t: Transfer, piece_bytes: int) -> list[FetchRequest]:
    """The requests of ``t`` in a follow-up (see :meth:`~.engine.HostSync._fetch_again`).

    The file changed since the listing: its listed size says nothing of how long the read
    is, so every transcript is checked. A file copied whole is read to its end and taken as
    read: the host's digest of the whole file would also cover what was appended after the
    read, so a file that keeps growing could never agree. The end is bounded all the same
    (:func:`_follow_up_length`), so that the fetch has a budget.

    A transcript longer than a piece when listed comes in pieces, as in the round: each
    piece of the transfer's length, its listed size or the end a short read found it at
    (see :meth:`~.engine.HostSync._as_whole`), the last one a whole piece long, which brings the
    growth since then that fits in it (one piece, when that end is in the first). What grew
    past it is fetched by the next round, as an append: the lines so far are a copy, and no
    piece is longer than a piece, so that a dropped connection loses one at most. One that
    is shorter by now ends in the piece its end falls in (a Short there is its end, as a
    follow-up's Short is); the pieces after it are read past. An append is cut as the
    round cuts it."""
    path = t.remote.path
    if t.mode != "whole":
        if t.pieced(piece_bytes):
            return t.requests(piece_bytes)  # each with its head checked
        return [FetchRequest(path, t.start, t.length, check=True)]
    listed = dataclasses.replace(t, length=t.remote.size)
    if not listed.pieced(piece_bytes):
        length = _follow_up_length(t)
        return [FetchRequest(path, 0, length, detect_growth=True, check=t.kind == "append")]
    if t.pieced(piece_bytes):
        pieces = t.requests(piece_bytes)
    else:  # it ends in the first piece (t.request() would be the round's request of it)
        pieces = [FetchRequest(path, 0, piece_bytes, check=True)]
    pieces[-1] = msgspec.structs.replace(pieces[-1], length=piece_bytes)
    return pieces


def requests_of(
    transfers: Sequence[Transfer], piece_bytes: int, per_batch: int
) -> tuple[list[Transfer], list[FetchRequest], bytes]:
    """The fetch requests of ``transfers`` (a transfer fetched in pieces has one per piece,
    one after another), the transfer of each, and what the round's stdin goes on with after
    its marker line to send them (:func:`round_fetch_stdin`, at most ``per_batch`` items a
    batch)."""
    owners, requests = owned(transfers, lambda t: t.requests(piece_bytes))
    return owners, requests, round_fetch_stdin(requests, per_batch=per_batch)


def owned(
    transfers: Sequence[Transfer], requests_of: Callable[[Transfer], list[FetchRequest]]
) -> tuple[list[Transfer], list[FetchRequest]]:
    """The requests ``requests_of`` makes of each of ``transfers``, one after another, and
    the transfer of each (one per piece for a transfer fetched in pieces)."""
    owners: list[Transfer] = []
    requests: list[FetchRequest] = []
    for t in transfers:
        asked = requests_of(t)
        owners += [t] * len(asked)
        requests += asked
    return owners, requests
