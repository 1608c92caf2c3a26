"""Sessions straight from a host, no mirror needed: `sessions list --remote`, and how both
commands of ``--remote`` run.

``--remote`` is cut by concern: the commands' POSIX ``sh`` scripts and argv are
:mod:`remote_sync.index.remote_scripts`'s, the parser of their framed output
:mod:`remote_sync.index.remote_frames`'s, ``show --remote``'s client
:mod:`remote_sync.index.remote_show`'s.

What it owns: running one of those commands on a host (:func:`host_command`), and the
client side of the listing, :func:`stream_remote_sessions`. That runs **one** command that
walks the host's start points with ``find`` and streams every candidate transcript as it
goes (a header naming the file and its mtime, its bytes, an end mark). Each file is folded
into facts while it streams and dropped when its end mark arrives; batches are yielded as
sessions complete. Nothing is kept per file (no listing, no request list, no stdin built up
front), so memory does not grow with the number of sessions; the stream's own buffers are
bounded by :data:`LIST_CHUNK` here and by the pool's channel window
(:mod:`remote_sync.sessionread` opens its pool with :data:`LIST_WINDOW`). A session without
timestamps gets the same ``class`` as over a mirror's index: its mtime is the one the
mirror's listing records.

A root the host cannot enter fails a listing and a show as it fails a sync: a second command,
only then, names the other agents' roots the host has (:mod:`remote_sync.mirror.root_probe`).
Each directory ``find`` cannot read makes a listing fail with an error naming it, as a
sync's (``listing.listing_errors``), and so does each session file the host cannot read,
of the kind a sync gives it (``permission_denied``). Past a bound on the host's output
(:class:`~remote_sync.index.remote_frames.FrameStream`), a listing ends with a
:class:`~remote_sync.errors.TooMuchOutputError` after yielding the sessions it sent whole.

Which files are transcripts is decided exactly on this side (``Source.is_included`` and the
reader's ``is_transcript``); the remote ``find`` only narrows by file name
(:data:`~remote_sync.index.remote_scripts.NAME_FILTERS`). Inventory ``exclude`` globs are
applied here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from ..cancel import CancelToken
from ..errors import (
    PermissionDeniedError,
    ProtocolError,
    ReadFailedError,
    RemoteCommandError,
    RemoteSyncError,
    TransferCancelledError,
    path_text,
)
from ..formats.readers import get_reader
from ..inventory import Host
from ..mirror.listing import listing_errors
from ..mirror.remote_ops import new_marker
from ..mirror.remote_sh import EXIT_ROOT_UNUSABLE
from ..mirror.root_probe import probed_root_error
from ..ssh.pool import SSHPool
from ..ssh.remote import IDLE_TIMEOUT
from ..ssh.stream import RemoteStream, exec_streaming
from .query import SessionRow, check_batch_size, held_state, row_from_facts
from .remote_frames import FrameStream, Header
from .remote_scripts import list_argv
from .update import FileIndexer

log = logging.getLogger(__name__)

__all__ = ["LIST_CHUNK", "LIST_WINDOW", "host_command", "stream_remote_sessions"]

#: Channel window for a remote listing. The client is CPU-bound while it decodes (about
#: 70 MB/s here), so a bigger window only piles received data up in memory (up to a window;
#: up to two before the window followed consumption, see ssh.flow). Measured then: with 2 MiB
#: the peak grew by about 0.9 MiB from 122 to 1,177 transcripts, with 1 MiB by 0.2 MiB.
#: Smaller windows cost time where client and host share little CPU (512 KiB: about 20 %
#: slower here). 1 MiB allows about 20 MB/s at 50 ms of round-trip time.
LIST_WINDOW = 1024 * 1024
#: The largest chunk the decoder is handed at once from a remote listing's stream (the stream
#: holds at most its window of unconsumed bytes, plus the chunk the decoder holds). Chunks of
#: 64 KiB cost about a third more time than 256 KiB (more trips through the loop).
LIST_CHUNK = 256 * 1024


# ----------------------------------------------------------------------------- commands


@asynccontextmanager
async def host_command(
    pool: SSHPool,
    host: Host,
    argv: list[str],
    stdin: bytes,
    token: CancelToken | None,
    idle_timeout: float | None,
) -> AsyncIterator[RemoteStream]:
    """The stdout of one of the ``--remote`` commands on ``host`` (a listing or a show, argv
    from :mod:`remote_sync.index.remote_scripts`), in chunks of at most :data:`LIST_CHUNK`.
    A root the host cannot enter fails as it fails a sync: one more command, only then,
    names the agents' roots the host has."""
    try:
        async with exec_streaming(
            pool,
            host.endpoint,
            argv,
            host=host.name,
            stdin=stdin,
            token=token,
            chunk_size=LIST_CHUNK,
            idle_timeout=idle_timeout,
        ) as stream:
            yield stream
    except RemoteCommandError as exc:
        if exc.exit_status != EXIT_ROOT_UNUSABLE:
            raise
        raise await probed_root_error(
            pool, host, exc, idle_timeout=idle_timeout, token=token, adhoc_options=False
        ) from exc


# ----------------------------------------------------------------------------- list


async def stream_remote_sessions(
    pool: SSHPool,
    host: Host,
    *,
    batch_size: int = 50,
    token: CancelToken | None = None,
    now: float | datetime | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
) -> AsyncGenerator[list[SessionRow], None]:
    """Yield the host's sessions in batches as their bytes are decoded (one remote command).

    ``now`` (epoch seconds or a datetime; default: the current time) judges their class."""
    check_batch_size(batch_size)
    reader = get_reader(host.source.format)
    source = host.source
    marker = new_marker()
    frames = FrameStream(host.name, marker.encode(), "the sessions read before are listed")
    indexer: FileIndexer | None = None
    mtime: float | None = None
    batch: list[SessionRow] = []
    unread: list[str] = []  # files whose read failed midway
    unreadable: list[str] = []  # files the host would not open
    now = time.time() if now is None else now
    try:
        async with host_command(
            pool, host, list_argv(host), marker.encode() + b"\n", token, idle_timeout
        ) as stream:
            async for chunk in stream:
                for item in frames.feed(chunk):
                    if type(item) is memoryview:
                        if indexer is not None:
                            indexer.feed(item)
                        continue
                    assert isinstance(item, Header)
                    kind = item.kind
                    if kind == "F":
                        path = item.arg
                        if source.is_included(path) and reader.is_transcript(path):
                            indexer = FileIndexer(reader, host.name, path)
                            mtime = item.mtime
                    elif kind in "EX":
                        # A file without a whole line is no session (as in a mirror's index,
                        # which commits whole lines only); one whose read failed midway (X)
                        # is left out rather than shown in part.
                        if indexer is not None and kind == "X":
                            unread.append(path_text(path))
                        if indexer is not None and kind == "E" and indexer.facts.bytes:
                            update = indexer.result()
                            batch.append(
                                row_from_facts(
                                    host.name,
                                    update.path,
                                    reader.name,
                                    update.facts,
                                    state=held_state(reader, update.path),
                                    now=now,
                                    mtime=mtime,
                                )
                            )
                            if len(batch) >= batch_size:
                                if token is not None:  # a cancel stops the rows of a chunk too
                                    token.raise_if_cancelled(host=host.name)
                                yield batch
                                batch = []
                        indexer = None
                    elif kind == "U":
                        # A session the host would not let us read is missing from the
                        # listing, as surely as one in an unreadable directory.
                        if source.is_included(item.arg) and reader.is_transcript(item.arg):
                            unreadable.append(path_text(item.arg))
                    else:
                        raise ProtocolError(
                            f"unexpected frame {kind!r} in a listing", host=host.name
                        )
                frames.check()  # after the rows of the chunk before a bound passed
            frames.close()
    except TransferCancelledError:
        raise
    except RemoteSyncError:
        if batch:  # the host failed midway: the sessions read whole before still count
            yield batch
        raise
    if batch:
        yield batch
    # What was listed has been yielded; the host still counts as failed (exit 1), as a
    # sync's incomplete listing does, since sessions may be missing: each directory find
    # could not read is an error naming it, and so is each session file the host would not
    # open or read whole, of the kind a sync reports it by; whatever else went wrong is one
    # error more.
    errors = listing_errors(host.name, stream.stderr_tail, "listed", "the rest was listed")
    errors += [
        PermissionDeniedError(
            "permission denied on the host: the session is left out of the listing",
            host=host.name,
            path=path,
        )
        for path in unreadable
    ]
    errors += [
        ReadFailedError(
            "reading the file on the host failed midway: the session is left out of the listing",
            host=host.name,
            path=path,
        )
        for path in unread
    ]
    if errors:
        first = errors[0]
        first.also = tuple(errors[1:])
        raise first
