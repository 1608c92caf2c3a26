"""Sessions straight from a host, no mirror needed: `sessions list --remote` and `show --remote`.

What it owns: listing a host's transcripts and folding their bytes into facts as they stream
in (one listing command, then one framed fetch of every transcript; batches are yielded as
sessions complete, so memory does not grow with the number of sessions), and showing one
session by fetching only the bytes it shows in one remote command (a tail is read from the end
of the file with ``tail -c``; a bigger slice is asked for only when the first held too few
messages).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..cancel import CancelToken
from ..decode.jsonl import JsonlDecoder, Record
from ..errors import ConfigError
from ..formats.readers import get_reader
from ..inventory import Host
from ..mirror.remote_ops import (
    Begin,
    Data,
    End,
    FetchRequest,
    FrameParser,
    RemoteFile,
    Short,
    fetch_argv,
    fetch_stdin,
    new_marker,
)
from ..ssh.pool import SSHPool
from ..ssh.remote import sh_script
from ..ssh.stream import exec_streaming
from .facts import Message
from .query import SessionRow, row_from_facts
from .update import FileIndexer

#: First slice of a file fetched for ``show --tail`` / ``--head``; grows 8x when too small.
FIRST_SLICE = 256 * 1024


async def list_transcripts(
    pool: SSHPool, host: Host, token: CancelToken | None = None
) -> list[RemoteFile]:
    """One listing command: the host's transcripts (per its format) with sizes."""
    from ..mirror.engine import list_host

    reader = get_reader(host.source.format)
    files, _warnings = await list_host(pool, host, token=token, keep=reader.is_transcript)
    return files


async def stream_remote_sessions(
    pool: SSHPool,
    host: Host,
    *,
    batch_size: int = 50,
    token: CancelToken | None = None,
    now: float | None = None,
) -> AsyncIterator[list[SessionRow]]:
    """Yield the host's sessions in batches as their bytes are decoded."""
    reader = get_reader(host.source.format)
    files = await list_transcripts(pool, host, token)
    files = [f for f in files if f.size > 0]
    if not files:
        return
    requests = [FetchRequest(f.path, 0, f.size) for f in files]
    del files  # the requests carry what is needed; keep one copy only
    marker = new_marker()
    parser = FrameParser(host.name, marker.encode(), requests)
    indexer: FileIndexer | None = None
    batch: list[SessionRow] = []
    now = time.time() if now is None else now
    async with exec_streaming(
        pool,
        host.endpoint,
        fetch_argv(host.source.root),
        host=host.name,
        stdin=fetch_stdin(requests, marker),
        token=token,
    ) as stream:
        async for chunk in stream:
            for event in parser.feed(chunk):
                if isinstance(event, Data):
                    if indexer is not None:
                        indexer.feed(event.data)
                elif isinstance(event, Begin):
                    indexer = FileIndexer(reader, host.name, requests[event.index].path)
                elif isinstance(event, End | Short) and indexer is not None:
                    update = indexer.result()
                    batch.append(
                        row_from_facts(
                            host.name, update.path, reader.name, update.facts, state="live", now=now
                        )
                    )
                    indexer = None
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
        parser.close()
    if batch:
        yield batch


_SHOW_SCRIPT = r"""
case $1 in "~") r=$HOME ;; "~/"*) r=$HOME/${1#"~/"} ;; *) r=$1 ;; esac
cd -- "$r" 2>/dev/null || { echo "cannot enter $1" >&2; exit 3; }
f=$2 mode=$3 n=$4
case $f in -*) f=./$f ;; esac
[ -f "$f" ] && [ ! -L "$f" ] || { echo "no such session file" >&2; exit 5; }
[ -r "$f" ] || { echo "permission denied" >&2; exit 6; }
size=$(wc -c < "$f") || exit 6
printf '%s\n' $size
if [ "$mode" = tail ]; then tail -c "$n" -- "$f"; else head -c "$n" -- "$f"; fi
"""


async def _fetch_slice(
    pool: SSHPool, host: Host, path: bytes, mode: str, n: int, token: CancelToken | None
) -> tuple[int, bytes]:
    argv = sh_script(
        _SHOW_SCRIPT, host.source.root, path.decode("utf-8", "surrogateescape"), mode, str(n)
    )
    async with exec_streaming(pool, host.endpoint, argv, host=host.name, token=token) as s:
        data = await s.read_all()
    head, _, rest = data.partition(b"\n")
    return int(head.strip() or b"0"), rest


def _messages(reader: Any, data: bytes, start: int) -> list[Message]:
    decoder: JsonlDecoder[Any] = JsonlDecoder(reader.line_type, start_offset=start)
    out: list[Message] = []
    for item in decoder.feed(data):
        if isinstance(item, Record):
            message = reader.message(item.value, item.offset)
            if message is not None:
                out.append(message)
    return out


async def show_remote_session(
    pool: SSHPool,
    host: Host,
    session: str,
    *,
    head: int | None = None,
    tail: int | None = None,
    token: CancelToken | None = None,
) -> list[Message]:
    """The first ``head`` or last ``tail`` messages of one session, fetching only those bytes."""
    reader = get_reader(host.source.format)
    path = await resolve_session(pool, host, session, token)
    want = tail if tail is not None else head if head is not None else 50
    mode = "tail" if tail is not None else "head"
    n = FIRST_SLICE
    while True:
        size, data = await _fetch_slice(pool, host, path, mode, n, token)
        whole = len(data) >= size
        if mode == "tail":
            start = size - len(data)
            if not whole:  # we start mid-line: drop the partial first line
                cut = data.find(b"\n") + 1
                data, start = data[cut:], start + cut
            messages = _messages(reader, data, start)
            if len(messages) >= want or whole:
                return messages[-want:]
        else:
            messages = _messages(reader, data, 0)
            if len(messages) >= want or whole:
                return messages[:want]
        n *= 8


async def resolve_session(
    pool: SSHPool, host: Host, session: str, token: CancelToken | None = None
) -> bytes:
    """A session id (or a path relative to the root) → the transcript's path."""
    if "/" in session and session.endswith(".jsonl"):
        return session.encode("utf-8", "surrogateescape")
    reader = get_reader(host.source.format)
    matches = [
        f.path
        for f in await list_transcripts(pool, host, token)
        if reader.identify(f.path)[1] == session
    ]
    if not matches:
        raise ConfigError(
            f"no session {session!r}",
            host=host.name,
            hint="see `remote-sync sessions list --remote` for the ids",
        )
    if len(matches) > 1:
        shown = ", ".join(m.decode("utf-8", "backslashreplace") for m in matches[:5])
        raise ConfigError(
            f"session {session!r} is ambiguous: {shown}",
            host=host.name,
            hint="give the path relative to the host's root instead",
        )
    return matches[0]


__all__ = ["list_transcripts", "resolve_session", "show_remote_session", "stream_remote_sessions"]
