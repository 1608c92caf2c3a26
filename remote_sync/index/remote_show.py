"""One session straight from a host, no mirror needed: ``show --remote``.

What it owns: the client side of the show command (:mod:`remote_sync.index.remote_scripts`'
:func:`~remote_sync.index.remote_scripts.show_argv`), :func:`read_remote_session`. It shows
one session with **one** command, by path, by session id or by a unique prefix of one (as
``sessions show`` over a mirror: an exact id wins over prefixes; several exact or, without
one, several prefix matches are an error listing them): the remote side finds the
candidates with ``find`` (name patterns from the format's rules,
:func:`~remote_sync.index.remote_scripts.id_predicate`, matching every file whose id may
start with the text given), reports them, and when there is exactly one streams it straight
away: from the start for ``head`` and ``page`` (the client stops the command as soon as it
holds the messages it needs), or backwards from the end in growing blocks for ``tail`` (the
client stops it once the blocks read hold enough messages). Only when the name patterns
leave several candidates, of which the format's exact rules keep one, does a second command
fetch it by path. Ids are the ones the format's file names give (``identify``); the index
takes those too, except where a file's first lines name another. As over a mirror's index,
an id is also found as the agent spells it in file names (a picoclaw key, ``id_of_key``).

The command runs as a listing's does (:func:`remote_sync.index.remote.host_command`: a root
the host cannot enter fails as it fails a sync); its output is bounded as a listing's is
(:class:`~remote_sync.index.remote_frames.FrameStream`), and a tail block to the length
asked. A session file the host cannot read fails as a sync's (``permission_denied``); a show
that finds no session where find could read, or whose path goes through a directory that
cannot be searched, says that, not "no session".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cancel import CancelToken
from ..decode.jsonl import DEFAULT_MAX_LINE_BYTES, JsonlDecoder, Record
from ..errors import (
    ConfigError,
    ListingIncompleteError,
    PermissionDeniedError,
    ProtocolError,
    RemoteCommandError,
    TooMuchOutputError,
    path_bytes,
    path_text,
)
from ..formats.readers import get_reader
from ..inventory import Host
from ..mirror.listing import UNREAD_HINT, unread_paths
from ..mirror.remote_ops import new_marker
from ..ssh.pool import SSHPool
from ..ssh.remote import IDLE_TIMEOUT
from .facts import FormatReader, Message
from .query import path_parts
from .remote import host_command
from .remote_frames import LISTING, FrameStream, Header
from .remote_scripts import show_argv
from .show import TAIL_FIRST_BLOCK, TAIL_MAX_BLOCK, HeldLine, ShowResult, check_selection

__all__ = ["SHOW_WINDOW", "read_remote_session"]

#: Channel window for ``show``: what the host may send beyond the last byte the client needs
#: before the client's stop reaches it.
SHOW_WINDOW = 512 * 1024
#: Matches kept per kind (exact id, prefix) when a ``show`` names many sessions (all are
#: counted; the error lists some).
MAX_CANDIDATES = 64
#: Matches an ambiguity error lists (as over a mirror's index).
SHOWN_MATCHES = 20


def _messages(reader: FormatReader, records: list[Any]) -> list[Message]:
    out: list[Message] = []
    for item in records:
        if type(item) is Record:
            shown = reader.message(item.value, item.offset)
            if shown is not None:
                out.append(shown)
    return out


class _Forward:
    """head / page: decode from the start, keep messages ``skip`` to ``skip + count``."""

    def __init__(self, reader: FormatReader, skip: int, count: int, result: ShowResult) -> None:
        self.reader = reader
        self.skip = skip
        self.count = count
        self.result = result
        self.number = 0
        self.decoder: JsonlDecoder[Any] = JsonlDecoder(reader.line_type)

    def feed(self, data: memoryview) -> bool:
        """Take bytes; True when the messages wanted are all there."""
        out = self.result.messages
        for shown in _messages(self.reader, self.decoder.feed(data)):
            if self.number >= self.skip:
                out.append(shown)
            self.number += 1
            if len(out) >= self.count:
                return True
        return False


class _Backward:
    """tail: blocks backwards from the end; keep the last ``count`` messages."""

    def __init__(
        self,
        reader: FormatReader,
        count: int,
        result: ShowResult,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        block: int = TAIL_FIRST_BLOCK,
        max_block: int = TAIL_MAX_BLOCK,
    ) -> None:
        self.reader = reader
        self.max_line_bytes = max_line_bytes
        self.count = count
        self.result = result
        #: The length of the next block, as the show script reads them (from its first
        #: block, doubling up to ``max_block``): each block must be the one asked for, no
        #: longer.
        self.block = block
        self.max_block = max_block
        self.size = 0
        self.have = 0
        self.found: list[list[Message]] = []  # per block, the latest block first
        self.cut = HeldLine(max_line_bytes)  # the line cut by the last block's start, on
        self.start = 0
        self.end = 0
        # This block's bytes before its first newline (maybe the end of a line cut).
        self.lead: list[bytes] = []
        self.decoder: JsonlDecoder[Any] | None = None
        self.shown: deque[Message] = deque()
        self.seen = 0  # messages decoded in all blocks (the whole count once start is 0)

    def begin(self, start: int) -> bool:
        """A block from ``start`` begins; False when it is not the block the script reads
        next."""
        if not self.end:
            self.end = self.size
        if self.end == 0 or start != max(self.end - self.block, 0):
            return False
        self.start = start
        self.lead = []
        self.decoder = None if start > 0 else self._decoder(0)
        self.shown = deque(maxlen=self.count - self.have)
        return True

    def feed(self, data: memoryview) -> None:
        if self.decoder is None:
            # The block's first line may begin before its start: hold it for the next block.
            chunk = bytes(data)
            nl = chunk.find(b"\n")
            if nl < 0:
                self.lead.append(chunk)
                return
            self.lead.append(chunk[: nl + 1])
            self.decoder = self._decoder(self.start + sum(map(len, self.lead)))
            data = data[nl + 1 :]
        self._add(self.decoder.feed(data))

    def _decoder(self, base: int) -> JsonlDecoder[Any]:
        return JsonlDecoder(
            self.reader.line_type, start_offset=base, max_line_bytes=self.max_line_bytes
        )

    def _add(self, records: list[Any]) -> None:
        shown = _messages(self.reader, records)
        self.seen += len(shown)
        self.shown.extend(shown)

    def finish(self, received: int) -> bool:
        """The block is complete; True when enough messages are held."""
        if received != self.end - self.start:
            raise ValueError("short block")
        if self.decoder is not None:  # else no newline in the whole block: one line cut
            # (A line too long to be a message gives nothing: its start stays unfinished.)
            self._add(self.decoder.feed(self.cut.take()))
        self.cut.prepend(b"".join(self.lead))
        if self.shown:
            self.found.append(list(self.shown))
            self.have += len(self.shown)
        self.end = self.start
        if self.block < self.max_block:
            self.block *= 2
        done = self.have >= self.count or self.start == 0
        if done:
            for messages in reversed(self.found):
                self.result.messages.extend(messages)
            self.result.at_end = True
        return done


@dataclass(slots=True)
class _Matches:
    """Sessions a show's candidates hold: by exact id, else by id prefix (counted, and the
    first :data:`MAX_CANDIDATES` of each kept)."""

    exact: list[bytes]
    prefix: list[bytes]
    exact_count: int = 0
    prefix_count: int = 0

    def add(self, path: bytes, exact: bool) -> None:
        if exact:
            self.exact_count += 1
            if len(self.exact) < MAX_CANDIDATES:
                self.exact.append(path)
        else:
            self.prefix_count += 1
            if len(self.prefix) < MAX_CANDIDATES:
                self.prefix.append(path)


@dataclass(slots=True)
class _Outcome:
    """What one show command found: the matching sessions, or the result when it streamed
    one."""

    matches: _Matches
    result: ShowResult | None = None
    #: The directories find could not read while it looked for the session, with why.
    unread: list[tuple[bytes, str]] = field(default_factory=list)


async def read_remote_session(
    pool: SSHPool,
    host: Host,
    session: str,
    *,
    head: int | None = None,
    tail: int | None = None,
    page: int | None = None,
    page_size: int = 50,
    token: CancelToken | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
) -> ShowResult:
    """The first ``head``, last ``tail`` or page ``page`` of ``page_size`` messages of one
    session (by id, a unique prefix of one, or its path relative to the root), reading as
    little as possible.

    One remote command whenever the id's name patterns match one file (see the module
    docstring). ``bytes_read`` is the file's bytes received; ``first`` is the number of the
    first message (for a tail, only when the whole file was read).
    """
    check_selection(head, tail, page, page_size)
    if not session:
        raise ConfigError("no session given", host=host.name)
    reader = get_reader(host.source.format)
    if page is None and head is None and tail is None:
        page = 1
    mode = "tail" if tail is not None else "head"

    async def run(session_id: str | None, path: bytes | None) -> _Outcome:
        return await _run_show(
            pool,
            host,
            reader,
            session_id,
            path,
            mode,
            head,
            tail,
            page,
            page_size,
            token,
            idle_timeout,
        )

    paths = _as_paths(host, reader, session)
    if paths:
        # The path as listed first (its \xNN escapes are bytes, see errors.path_text), then
        # the text as typed (a name holding such text itself), as over a mirror's index.
        for path in paths[:-1]:
            try:
                outcome = await run(None, path)
            except ConfigError:
                continue
            if outcome.result is not None:
                return outcome.result
        path = paths[-1]
    else:
        try:
            session.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"session id {session!r} is not valid UTF-8",
                host=host.name,
                hint="name the session by its path relative to the host's root",
            ) from None
        outcome = await run(session, None)
        if outcome.result is not None:
            return outcome.result
        path = _pick(host, reader, session, outcome)
    outcome = await run(None, path)
    if outcome.result is None:
        raise ConfigError(
            f"no session file {path_text(path)!r}",
            host=host.name,
            hint=f"see {LISTING} for the sessions",
        )
    return outcome.result


def _as_paths(host: Host, reader: FormatReader, session: str) -> list[bytes]:
    """The transcript paths ``session`` may spell (relative to the root, ``./`` and doubled
    slashes dropped), or none when it is no transcript's path (then it is an id)."""
    raw = session.encode("utf-8", "surrogateescape")
    spellings = list(dict.fromkeys([path_bytes(session), raw]))
    paths: list[bytes] = []
    for spelling in spellings:
        parts = path_parts(spelling)
        path = b"/".join(parts)
        if not reader.is_transcript(path):
            continue
        if spelling.startswith(b"/") or b".." in parts:
            raise ConfigError(
                f"{session!r} is not a path inside the host's root",
                host=host.name,
                hint=f"name the session by its path as {LISTING} shows it",
            )
        if not host.source.is_included(path):
            raise ConfigError(
                f"{session!r} is excluded by this host's include/exclude globs",
                host=host.name,
                hint="see the inventory's include and exclude for this host",
            )
        if path not in paths:
            paths.append(path)
    return paths


def _match(host: Host, reader: FormatReader, session: str) -> Callable[[bytes], bool | None]:
    """Whether a candidate path is session ``session`` (True), a session whose id starts with
    it (False), or neither (None): the exact rules over what the name patterns found."""
    source = host.source
    ids = tuple(dict.fromkeys([session, reader.id_of_key(session)]))  # a key names its id too

    def check(path: bytes) -> bool | None:
        if not (source.is_included(path) and reader.is_transcript(path)):
            return None
        found = reader.identify(path)[1]
        if found in ids:
            return True
        return False if found.startswith(ids) else None

    return check


def _pick(host: Host, reader: FormatReader, session: str, outcome: _Outcome) -> bytes:
    """The one session ``session`` names: its exact id, else a unique prefix of its id (the
    order of ``find_session`` over a mirror's index)."""
    matches = outcome.matches
    for paths, count in (
        (matches.exact, matches.exact_count),
        (matches.prefix, matches.prefix_count),
    ):
        if count == 1:
            return paths[0]
        if count > 1:
            shown = "\n  ".join(
                f"{path_text(p)}  (session {reader.identify(p)[1]})"
                for p in sorted(paths)[:SHOWN_MATCHES]
            )
            more = f"\n  … and {count - SHOWN_MATCHES} more" if count > SHOWN_MATCHES else ""
            raise ConfigError(
                f"{session!r} matches {count} sessions:\n  {shown}{more}",
                host=host.name,
                hint="name one by its path",
            )
    if outcome.unread:
        # Not "no session" (a usage error, exit 2): it may be where find could not look.
        where = ", ".join(f"{path_text(path)} ({reason})" for path, reason in outcome.unread)
        raise ListingIncompleteError(
            f"no session {session!r} where find could read, and it could not read {where}: "
            "the session may be there",
            host=host.name,
            path=path_text(outcome.unread[0][0]) if len(outcome.unread) == 1 else None,
            hint=f"{UNREAD_HINT}, then show it again",
        )
    raise ConfigError(
        f"no session {session!r}",
        host=host.name,
        hint=f"see {LISTING} for the ids",
    )


async def _run_show(
    pool: SSHPool,
    host: Host,
    reader: FormatReader,
    session: str | None,
    path: bytes | None,
    mode: str,
    head: int | None,
    tail: int | None,
    page: int | None,
    page_size: int,
    token: CancelToken | None,
    idle_timeout: float | None,
) -> _Outcome:
    """One show command, by id ``session`` or by ``path``."""
    marker = new_marker()
    stdin = marker.encode() + b"\n"
    if path is not None:
        stdin += b"./" + path + b"\x00"
    frames = FrameStream(host.name, marker.encode())
    outcome = _Outcome(_Matches([], []))
    size: int | None = None  # the file's, as the host gave it before its bytes
    match = _match(host, reader, session) if session is not None else None
    result = ShowResult()
    forward: _Forward | None = None
    backward: _Backward | None = None
    received = 0
    current: bytes | None = None
    async with host_command(
        pool, host, show_argv(host, session, mode), stdin, token, idle_timeout
    ) as stream:
        async for chunk in stream:
            for item in frames.feed(chunk):
                if type(item) is memoryview:
                    received += len(item)
                    result.bytes_read += len(item)
                    if forward is not None:
                        if forward.feed(item):
                            outcome.result = result
                            return outcome  # leaving the block stops the remote command
                    elif backward is not None:
                        if received > backward.end - backward.start:
                            raise _longer_block(host, current, backward)
                        backward.feed(item)
                    continue
                assert isinstance(item, Header)
                kind = item.kind
                if kind == "C":
                    current = item.arg
                    exact = match(current) if match is not None else True
                    if exact is not None:
                        outcome.matches.add(current, exact)
                    continue
                where = path_text(current) if current is not None else None
                if kind in "BS" and match is not None and match(current or b"") is None:
                    return outcome  # the one candidate is no session this names
                if kind == "G":
                    raise ConfigError(
                        "no such session file",
                        host=host.name,
                        path=where,
                        hint=f"it may have been deleted; see {LISTING}",
                    )
                if kind == "U":
                    raise ListingIncompleteError(
                        f"{where} is under a directory the login user cannot search",
                        host=host.name,
                        path=path_text(item.arg),
                        hint=f"{UNREAD_HINT}, then show it again",
                    )
                if kind == "D":
                    # Said as a sync and a listing say a file the host would not open.
                    raise PermissionDeniedError(
                        "permission denied on the host: the session cannot be shown",
                        host=host.name,
                        path=where,
                    )
                if kind == "S" and size is None and item.size is not None:  # S has a size
                    size = item.size
                    if mode == "tail":
                        backward = _Backward(reader, tail or 1, result)
                        backward.size = size
                        if size == 0:
                            result.at_end, result.first, result.total = True, 0, 0
                            outcome.result = result
                elif kind == "B" and mode == "head" and size is not None and forward is None:
                    skip = (page - 1) * page_size if page is not None else 0
                    count = page_size if page is not None else head or page_size
                    result.first = skip
                    forward = _Forward(reader, skip, count, result)
                elif kind == "K" and backward is not None:
                    if not backward.begin(int(item.arg)):
                        raise ProtocolError(
                            f"a tail block from byte {int(item.arg)}, where the block before "
                            f"byte {backward.end} of {backward.block} bytes was asked for",
                            host=host.name,
                            path=where,
                        )
                    received = 0
                elif kind == "E" and backward is not None:
                    try:
                        done = backward.finish(received)
                    except ValueError:
                        raise _changed(host, where, stream.stderr_tail) from None
                    if done:
                        if backward.start == 0:  # every message was counted
                            result.first = max(backward.seen - len(result.messages), 0)
                            result.total = backward.seen
                        outcome.result = result
                        return outcome
                elif kind == "E" and forward is not None:
                    # The whole file was decoded: its messages are all counted.
                    result.at_end, result.total = True, forward.number
                    outcome.result = result
                elif kind == "X":
                    raise _changed(host, where, stream.stderr_tail)
                else:
                    raise ProtocolError(
                        f"unexpected frame {kind!r} in a show", host=host.name, path=where
                    )
            frames.check()
        frames.close()
    if session is not None:
        outcome.unread = unread_paths(stream.stderr_tail)[0]
    return outcome


def _longer_block(host: Host, path: bytes | None, backward: _Backward) -> TooMuchOutputError:
    """A tail block longer than asked: refused as it comes, never held."""
    return TooMuchOutputError(
        f"the host sent more than the {backward.end - backward.start} bytes of the block "
        f"from byte {backward.start} it was asked for: nothing is shown",
        host=host.name,
        path=path_text(path) if path is not None else None,
        hint="the host's dd or head sends more than it is asked for (a wrapper, an alias, a "
        "broken build)",
    )


def _changed(host: Host, where: str | None, stderr: bytes) -> RemoteCommandError:
    """A block or the file came short: the file changed, or a read failed (whose message,
    if it has arrived, is in ``stderr``)."""
    return RemoteCommandError(
        "the session file changed or became unreadable while it was read",
        host=host.name,
        path=where,
        hint="run the command again; if it fails the same way, see the remote stderr",
        stderr_tail=stderr,
    )
