"""Sessions straight from a host, no mirror needed: `sessions list --remote` and `show --remote`.

What it owns: the two remote commands of ``--remote`` (their POSIX ``sh`` scripts, argv and
stdin), the incremental parser of their framed output (:class:`FrameStream`), and the client
side of each:

* :func:`stream_remote_sessions` runs **one** command that walks the host's start points with
  ``find`` and streams every candidate transcript as it goes (a header naming the file and
  its mtime, its bytes, an end mark). Each file is folded into facts while it streams and
  dropped when its end mark arrives; batches are yielded as sessions complete. Nothing is
  kept per file (no listing, no request list, no stdin built up front), so memory does not
  grow with the number of sessions; the stream's own buffers are bounded by
  :data:`LIST_CHUNK` here and by the pool's channel window (``api`` opens its pool with
  :data:`LIST_WINDOW`). The mtime is the one the mirror's listing records (GNU ``find
  -printf``'s, with its fraction, else ``stat``'s whole seconds), so a session without
  timestamps gets the same ``class`` as over a mirror's index.
* :func:`read_remote_session` shows one session with **one** command, by path, by session id
  or by a unique prefix of one (as ``sessions show`` over a mirror: an exact id wins over
  prefixes; several exact or, without one, several prefix matches are an error listing
  them): the remote side finds the candidates with ``find`` (name patterns from the format's
  rules, :func:`id_predicate`, matching every file whose id may start with the text given),
  reports them, and when there is exactly one streams it straight away: from the start for
  ``head`` and ``page`` (the client stops the command as soon as it holds the messages it
  needs), or backwards from the end in growing blocks for ``tail`` (the client stops it once
  the blocks read hold enough messages). Only when the name patterns leave several
  candidates, of which the format's exact rules keep one, does a second command fetch it by
  path. Ids are the ones the format's file names give (``identify``); the index takes
  those too, except where a file's first lines name another. As over a mirror's index, an
  id is also found as the agent spells it in file names (a picoclaw key, ``id_of_key``).

A root the host cannot enter fails both as it fails a sync: a second command, only then,
names the other agents' roots the host has (:mod:`remote_sync.mirror.root_probe`). Each
directory ``find`` cannot read makes a listing fail with an error naming it, as a sync's
(``remote_ops.listing_errors``), and so does each session file the host cannot read, of the
kind a sync gives it (``permission_denied``), as does a show of such a file; a show that
finds no session where find could read, or whose path goes through a directory that cannot
be searched, says that, not "no session".

A host's output is bounded as a sync's is (:class:`FrameStream`, with the constants of
:mod:`remote_sync.mirror.remote_ops`): as many files and header bytes as a sync's listing
may hold, and of the files' bytes the sizes the host gave in the headers plus room once for
growth while read; a tail block no longer than asked. Past a bound, a host's listing ends
with a :class:`TooMuchOutputError` after yielding the sessions it sent whole; a show ends
with it. The idle timeout alone would let a host that keeps sending go on for ever.

Which files are transcripts is decided exactly on this side (``Source.is_included`` and the
reader's ``is_transcript``); the remote ``find`` only narrows by file name
(:data:`NAME_FILTERS`, a superset per format), so a file it passes that is not a transcript
costs its bytes but is never indexed. Inventory ``exclude`` globs are applied here too.

Remote hosts have POSIX ``sh`` plus coreutils or BusyBox only. A file name is data, never
code: names reach the scripts as ``find -exec`` arguments or on stdin and are printed with
``printf %s``; ids and patterns travel as argv words quoted by ``ssh.remote.quote_word``. The frame
marker is a random nonce sent as the first line of stdin (never on a command line, where
other users could read it in ``ps`` and forge frames from a file they can write).

Output frames (``M`` is the marker, ``\\0`` a NUL byte)::

    M F <mtime> <size> <path>\\0  <bytes>  M E\\n  a file of the listing (M X\\n: read failed)
    M U <path>\\0                                 a file of the listing that is not readable;
                                                 show: the directory that cannot be searched
    M C <path>\\0                                 show: a candidate for the session named
    M G\\n  |  M D\\n                              show: the file is gone / not readable
    M S <size>\\n                                 show: the file's size, before its bytes
    M B\\n  <bytes>  M E\\n                         show: the file from its start
    M K <start>\\n  <bytes>  M E\\n                 show: the block from <start> to the previous
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..cancel import CancelToken
from ..decode.jsonl import DEFAULT_MAX_LINE_BYTES, JsonlDecoder, Record
from ..errors import (
    ConfigError,
    ListingIncompleteError,
    PermissionDeniedError,
    ProtocolError,
    ReadFailedError,
    RemoteCommandError,
    RemoteSyncError,
    TooMuchOutputError,
    TransferCancelledError,
    path_bytes,
    path_text,
)
from ..formats.readers import get_reader
from ..inventory import Host
from ..mirror import remote_ops
from ..mirror.remote_ops import (
    DD_BYTES_PROBE_SH,
    ENTER_ROOT_SH,
    EXIT_ROOT_UNUSABLE,
    START_POINT_SH,
    UNDER_SYMLINK_SH,
    UNREAD_HINT,
    listing_errors,
    listing_too_much,
    new_marker,
    read_marker_sh,
    unread_paths,
)
from ..mirror.root_probe import probed_root_error
from ..ssh.pool import SSHPool
from ..ssh.remote import IDLE_TIMEOUT, compact_sh, sh_script
from ..ssh.stream import RemoteStream, exec_streaming
from .facts import FormatReader, Message
from .query import SessionRow, check_batch_size, held_state, path_parts, row_from_facts
from .show import TAIL_FIRST_BLOCK, TAIL_MAX_BLOCK, HeldLine, ShowResult, check_selection
from .update import FileIndexer

log = logging.getLogger(__name__)

__all__ = [
    "LIST_CHUNK",
    "LIST_WINDOW",
    "NAME_FILTERS",
    "SHOW_WINDOW",
    "FrameStream",
    "id_predicate",
    "list_argv",
    "read_remote_session",
    "show_argv",
    "stream_remote_sessions",
]

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
#: Channel window for ``show``: what the host may send beyond the last byte the client needs
#: before the client's stop reaches it.
SHOW_WINDOW = 512 * 1024
#: Matches kept per kind (exact id, prefix) when a ``show`` names many sessions (all are
#: counted; the error lists some).
MAX_CANDIDATES = 64
#: Matches an ambiguity error lists (as over a mirror's index).
SHOWN_MATCHES = 20
#: A path in a frame header longer than this without its NUL is a protocol error.
MAX_FRAME_PATH = 64 * 1024
#: Where hints send a caller to see a host's sessions, on the command line and in the library.
_LISTING = "`remote-sync sessions list --remote` (the library's list_sessions(remote=True))"

#: Per format, ``find -name`` patterns that every transcript's file name matches and patterns
#: none matches: a superset of the reader's ``is_transcript``, which is checked exactly on the
#: client. A format missing here streams every included file.
NAME_FILTERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "openclaw": (("*.jsonl", "*.jsonl.reset.*", "*.jsonl.deleted.*"), ("*.trajectory.jsonl",)),
    "claude-code": (("*.jsonl",), ()),
    "codex": (("rollout-*.jsonl",), ()),
    "picoclaw": (("*.jsonl",), ()),
    "pi": (("*.jsonl",), ()),
    "jsonl": (("*.jsonl",), ()),
}

# ----------------------------------------------------------------------------- scripts

# After the root is entered ($1): the marker is the first line of stdin (read by the shell
# byte by byte, so what follows stays for xargs), and reaches the per-batch scripts through
# the environment, never a command line.
_READ_MARKER = read_marker_sh("frame marker on stdin")

# Expects $n and the positional parameters: n start points (normalized by globs.start_points,
# or "."), then find's predicate words. Keeps the usable points (usable_start_point: they
# exist, and no symlink leads find out of the root or to nothing), each with a "./" prefix
# so find never takes one for an option or operator, followed by the predicate words; sets
# $kept. The "for" list is expanded before the loop appends to "$@".
_START_POINTS = (
    START_POINT_SH
    + r"""total=$# i=0 kept=0
for a do
    i=$((i + 1))
    if [ "$i" -gt "$n" ]; then
        set -- "$@" "$a"
        continue
    fi
    case $a in
    . | ./*) ;;
    *) a=./$a ;;
    esac
    usable_start_point "$a" || continue
    set -- "$@" "$a"
    kept=$((kept + 1))
done
shift "$total"
"""
)

# A path found by find is skipped when it is no longer a regular file or a parent directory
# became a symlink since (narrows the window in which a swapped-in link could lead outside the
# root). find's status 1 means some directory could not be read: its messages are on stderr
# and what was found is still useful.
_FIND_STATUS = r"""st=$?
case $st in
0 | 1) exit 0 ;;
*) exit "$st" ;;
esac
"""

_SAFE_FILE = r"""[ -f "$f" ] && [ ! -L "$f" ] && ! under_symlink "$f" || continue
"""

# Run for each batch of files found: $1 says where each file's mtime and size come from, the
# files follow. "given": each argument is <mtime>/<size>/<path> as GNU find printed it (the
# mtime with its fraction, as the mirror's listing has it). "stat": each argument is a path
# and stat tells its mtime in whole seconds, as the mirror's listing has it where find has no
# -printf (BusyBox). The mtime goes with the file's header: the class of a session without
# timestamps is judged by it, the same as over a mirror's index. The size too: the client
# accepts no more of the files' bytes than their sizes and a margin for growth.
_LIST_BATCH = (
    UNDER_SYMLINK_SH
    + r"""m=$REMOTE_SYNC_MARKER
how=$1
shift
for f do
    t=
    if [ "$how" = given ]; then
        t=${f%%/*}
        f=${f#*/}
        s=${f%%/*}
        f=${f#*/}
    fi
    """
    + _SAFE_FILE
    + r"""    if [ -r "$f" ]; then
        if [ -z "$t" ]; then
            if ! t=$(stat -c '%Y %s' -- "$f"); then
                [ ! -e "$f" ] || printf 'remote-sync: cannot stat %s: left out\n' "$f" >&2
                continue
            fi
            s=${t#* }
            t=${t%% *}
        fi
        printf '%s F %s %s %s\0' "$m" "$t" "$s" "$f"
        if cat -- "$f"; then printf '%s E\n' "$m"; else printf '%s X\n' "$m"; fi
    else
        printf '%s U %s\0' "$m" "$f"
    fi
done
"""
)

# $1 root, $2 the batch script, $3 how many start points follow, then the points, then find's
# predicate words. The marker is the first line of stdin. Where find has -printf (GNU, tested
# as the mirror's listing tests it) it prints each file's mtime and size with its path,
# NUL-terminated for xargs, so no process per file is spent on them; find's status comes back around
# the pipe on fd 3 (POSIX sh has no pipefail). Elsewhere the batches ask stat.
_LIST_SCRIPT = (
    ENTER_ROOT_SH
    + r"""batch=$2
n=$3
shift 3
"""
    + _READ_MARKER
    + _START_POINTS
    + r"""[ "$kept" -gt 0 ] || exit 0
if LC_ALL=C find . -maxdepth 0 -printf '' >/dev/null 2>&1; then
    exec 4>&1
    st=$({ { LC_ALL=C find "$@" -printf '%T@/%s/%p\0'; echo "$?" >&3; } |
        xargs -0 sh -c "$batch" sh given >&4; } 3>&1)
    xs=$?
    exec 4>&-
    if [ "$xs" != 0 ]; then
        printf 'remote-sync: xargs failed (status %s); the listing is incomplete\n' "$xs" >&2
        exit 5
    fi
else
    # Some BusyBox builds (FEATURE_FIND_EXEC_PLUS off) know only "-exec ... ;".
    end=+
    find . -maxdepth 0 -exec true {} + >/dev/null 2>&1 || end=';'
    LC_ALL=C find "$@" -exec sh -c "$batch" sh stat {} "$end"
    st=$?
fi
case ${st:-2} in
0 | 1) exit 0 ;;
*) exit "${st:-2}" ;;
esac
"""
)

# Run with the candidates as arguments (by find -exec, or by xargs for a path). Every
# candidate is reported; the file is streamed only when it is the only one of the whole run
# ($RS_COUNT, counted before), after its size (the client accepts no more of it than that and
# a margin for growth). head: the whole file from its start, the client stops reading
# when it has what it needs. tail: blocks backwards from the end, the first of
# $RS_BLOCK bytes, each twice the last up to show.TAIL_MAX_BLOCK (16 MiB), until the start of
# the file or until the client stops reading. A short block (the file shrank) ends early.
# The size comes from stat and each block from the file opened anew, read by one dd that
# seeks and counts bytes where dd can (probed as the sync's fetch probes it), else by dd
# seeking and head reading: BusyBox's "tail -c +N" reads the file from its start up to N,
# and its "wc -c" reads all of it.
_SHOW_BATCH = (
    UNDER_SYMLINK_SH
    + DD_BYTES_PROBE_SH
    + r"""m=$REMOTE_SYNC_MARKER
for f do
    printf '%s C %s\0' "$m" "$f"
done
[ "$RS_COUNT" -eq 1 ] && [ "$#" -eq 1 ] || exit 0
f=$1
# Not there, or behind a directory the login user cannot search (then the deepest directory
# that can be stat'ed is the one: its parents can all be searched): said apart, as "deleted"
# would send the user the wrong way.
gone() {
    d=${f%/*}
    while [ "$d" != . ] && [ ! -d "$d" ]; do
        d=${d%/*}
    done
    if [ "$d" != . ] && [ ! -x "$d" ]; then
        printf '%s U %s\0' "$m" "$d"
    else
        printf '%s G\n' "$m"
    fi
    exit 0
}
[ -f "$f" ] && [ ! -L "$f" ] && ! under_symlink "$f" || gone
if [ ! -r "$f" ]; then
    printf '%s D\n' "$m"
    exit 0
fi
if ! size=$(stat -c %s -- "$f" 2>/dev/null) && ! size=$(wc -c <"$f"); then
    printf 'remote-sync: cannot tell the size of %s (stat and wc failed)\n' "$f" >&2
    exit 6
fi
size=$((size + 0))
printf '%s S %s\n' "$m" "$size"
if [ "$RS_MODE" = head ]; then
    printf '%s B\n' "$m"
    if cat -- "$f"; then printf '%s E\n' "$m"; else printf '%s X\n' "$m"; fi
    exit 0
fi
probe_dd_bytes
read_block() {
    if [ "$dd_bytes" = y ] && [ "$start" -le 2147483647 ]; then
        dd iflag=skip_bytes,count_bytes bs=65536 skip="$start" count="$len" status=none
    else
        blocks=$((start / 65536))
        bytes=$((start % 65536))
        { [ "$blocks" = 0 ] || dd bs=65536 skip="$blocks" count=0 2>/dev/null; } &&
            { [ "$bytes" = 0 ] || dd bs=1 skip="$bytes" count=0 2>/dev/null; } &&
            head -c "$len"
    fi
}
end=$size
blk=$RS_BLOCK
while [ "$end" -gt 0 ]; do
    start=$((end - blk))
    [ "$start" -ge 0 ] || start=0
    len=$((end - start))
    printf '%s K %s\n' "$m" "$start"
    read_block <"$f"
    printf '%s E\n' "$m"
    end=$start
    [ "$blk" -ge @MAX_BLOCK@ ] || blk=$((blk * 2))
done
"""
).replace("@MAX_BLOCK@", str(TAIL_MAX_BLOCK))  # the client expects each block's start by it

# $1 root, $2 the batch script, $3 "path" or "id", $4 head or tail, $5 the first tail block;
# for "id": $6 how many start points follow, the points, then find's predicate words. For
# "path" the path (with a ./ prefix) follows the marker line on stdin, NUL-terminated: any
# bytes, no command-line encoding.
_SHOW_SCRIPT = (
    ENTER_ROOT_SH
    + r"""batch=$2
how=$3
RS_MODE=$4
RS_BLOCK=$5
case $RS_MODE:$RS_BLOCK in
head:* | tail:[1-9]*) ;;
*)
    echo 'remote-sync: bad show arguments' >&2
    exit 2
    ;;
esac
case $RS_BLOCK in
*[!0-9]*)
    echo 'remote-sync: bad show arguments' >&2
    exit 2
    ;;
esac
export RS_MODE RS_BLOCK
"""
    + _READ_MARKER
    + r"""if [ "$how" = path ]; then
    RS_COUNT=1
    export RS_COUNT
    exec xargs -0 sh -c "$batch" sh
fi
n=$6
shift 6
"""
    + _START_POINTS
    + r"""[ "$kept" -gt 0 ] || exit 0
RS_COUNT=$(LC_ALL=C find "$@" -exec sh -c 'for f do printf .; done' sh {} + | wc -c)
RS_COUNT=$((RS_COUNT + 0))
export RS_COUNT
[ "$RS_COUNT" -gt 0 ] || exit 0
LC_ALL=C find "$@" -exec sh -c "$batch" sh {} +
"""
    + _FIND_STATUS
)


def _name_predicate(fmt: str) -> list[str]:
    """find predicate words narrowing a listing of ``fmt`` by file name."""
    words = ["-type", "f"]
    names = NAME_FILTERS.get(fmt)
    if names is None:
        return words
    keep, drop = names
    words.append("(")
    for i, pattern in enumerate(keep):
        words += (["-o"] if i else []) + ["-name", pattern]
    words.append(")")
    for pattern in drop:
        words += ["!", "-name", pattern]
    return words


def _fnmatch_escape(text: str) -> str:
    """``text`` as a literal in a find -name/-path pattern."""
    return "".join("\\" + c if c in "\\*?[" else c for c in text)


def id_predicate(fmt: str, session: str) -> list[str]:
    """find predicate words matching the files that may hold a session of ``fmt`` whose id is
    ``session`` or starts with it.

    A superset of what the reader's ``identify`` maps to such an id (the client checks exactly
    and prefers an exact id), narrow enough that a real id usually matches one file. The text
    is data: glob characters in it match themselves.
    """
    e = _fnmatch_escape(session)
    if fmt == "openclaw":
        names = [f"{e}*.jsonl", f"{e}*.jsonl.reset.*", f"{e}*.jsonl.deleted.*"]
    elif fmt == "claude-code" and "/" in session:
        # <session>/agent-<id> is a sub-agent: <slug>/<session>/subagents/agent-<id>.jsonl.
        parent, _, name = session.rpartition("/")
        esc_parent, esc_name = _fnmatch_escape(parent), _fnmatch_escape(name)
        return ["-type", "f", "-path", f"*/{esc_parent}/subagents/{esc_name}*.jsonl"]
    elif fmt == "claude-code":
        # A session, an old-layout agent-<id>, or a sub-agent of a session the text starts.
        return [
            "-type", "f", "(", "-name", f"{e}*.jsonl",
            "-o", "-path", f"*/{e}*/subagents/*.jsonl", ")",
        ]  # fmt: skip
    elif fmt == "picoclaw":
        # A session key names the session its file name spells (telegram:123 is
        # telegram_123.jsonl); a pattern with a "/" would match no name (and GNU find warns).
        ids = dict.fromkeys([session, get_reader(fmt).id_of_key(session)])
        names = [f"{_fnmatch_escape(i)}*.jsonl" for i in ids if "/" not in i]
    elif fmt == "codex":
        names = [f"rollout-*{e}*.jsonl"]
    elif fmt == "pi":
        names = [f"{e}*.jsonl", f"*_{e}*.jsonl"]
    elif fmt == "jsonl":
        return ["-type", "f", "-path", f"./{e}*.jsonl"]
    else:
        return ["-type", "f", "-path", f"*{e}*"]
    words = ["-type", "f", "("]
    for i, pattern in enumerate(names):
        words += (["-o"] if i else []) + ["-name", pattern]
    return [*words, ")"]


def _start_points(host: Host) -> list[str]:
    return list(dict.fromkeys(host.source.start_points)) or ["."]


def list_argv(host: Host) -> list[str]:
    """argv of the walk-and-stream command of ``host`` (the marker goes on stdin)."""
    points = _start_points(host)
    predicate = _name_predicate(host.source.format)
    batch = compact_sh(_LIST_BATCH)  # an argument: sh_script compacts only $0's
    return sh_script(_LIST_SCRIPT, host.source.root, batch, str(len(points)), *points, *predicate)


def show_argv(
    host: Host, session: str | None, mode: str, block: int = TAIL_FIRST_BLOCK
) -> list[str]:
    """argv of the show command: by id ``session``, or by path (None: the path is on stdin)."""
    batch = compact_sh(_SHOW_BATCH)  # an argument: sh_script compacts only $0's
    if session is None:
        return sh_script(_SHOW_SCRIPT, host.source.root, batch, "path", mode, str(block))
    points = _start_points(host)
    predicate = id_predicate(host.source.format, session)
    return sh_script(
        _SHOW_SCRIPT,
        host.source.root,
        batch,
        "id",
        mode,
        str(block),
        str(len(points)),
        *points,
        *predicate,
    )


# ----------------------------------------------------------------------------- frames


def _relative(path: bytes) -> bytes:
    """A path as find printed it (``./a/b``) → relative to the root, checked."""
    rel = path[2:] if path.startswith(b"./") else path
    parts = rel.split(b"/")
    if not rel or rel.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
        raise ValueError(f"unsafe path {path!r}")
    return rel


@dataclass(frozen=True, slots=True)
class Header:
    """A frame header: its kind (one of ``FUCGDBSKEX``), argument (a path or a number) and,
    for ``F``, the file's mtime (epoch seconds) and size."""

    kind: str
    arg: bytes = b""
    mtime: float | None = None
    size: int | None = None


_PATH_KINDS = b"FUC"
_NUMBER_KINDS = b"SK"
_BARE_KINDS = b"GDBEX"
_DATA_KINDS = b"FBK"
#: The mtime and size in an ``F`` header: what find's ``%T@`` or stat's ``%Y``, and ``%s``,
#: print (as the mirror's listing reads them).
_MTIME_SIZE = re.compile(rb"(-?[0-9]{1,20}(?:\.[0-9]{1,20})?) ([0-9]{1,20})")
#: The most digits of a number in an ``S`` or ``K`` header (a size or offset fits in 19).
_MAX_DIGITS = 20


class FrameStream:
    """Incremental parser of the output of both commands: chunks in, frames out.

    ``feed`` returns :class:`Header` s and, between a data header and its end mark, the
    file's bytes as views of the chunk fed (use or copy them at once). Data is found by its
    end mark, the secret marker, so nothing is buffered per file: between chunks only a
    possible split marker or header is kept. Anything else where a header is expected is a
    :class:`ProtocolError` naming the host (and the file of the last header).

    The output is bounded as a sync's is (:mod:`remote_sync.mirror.remote_ops`): at most
    ``MAX_LISTING_FILES`` path headers (``F``, ``U``, ``C``: the files found) and
    ``MAX_LISTING_BYTES`` bytes of headers, as a host's listing; file bytes at most the sizes
    the ``F`` and ``S`` headers gave, plus ``FETCH_GROWTH_SLACK`` once for files that grow
    while read (the bounds are read when the stream is made). A header's bytes are counted
    without its marker: a file's ``F`` header and end mark are then never longer than the
    record a sync's listing has for it (which has a device and an inode number more), so a
    host a sync lists is listed here too. Past one, ``feed`` returns the frames before it and
    :meth:`check` (and any later ``feed`` or ``close``) raises a
    :class:`TooMuchOutputError`, so that what came before it can still be used. ``outcome``
    is what becomes of a listing's output then, said in the error; None (a show's) says it
    in a show's words.
    """

    __slots__ = (
        "_carry",
        "_data",
        "_files",
        "_header_bytes",
        "_in_data",
        "_max_bytes",
        "_max_files",
        "_outcome",
        "_over",
        "_sizes",
        "_slack",
        "_token",
        "host",
        "path",
    )

    def __init__(self, host: str, marker: bytes, outcome: str | None = None) -> None:
        if len(marker) < 16 or marker.strip(b"0123456789abcdef"):
            raise ValueError(f"a marker is at least 16 lowercase hex digits, not {marker!r}")
        self.host = host
        #: The path of the last path header (for errors).
        self.path: bytes | None = None
        self._token = marker + b" "
        self._carry = b""
        self._in_data = False
        #: What becomes of a listing's output when it passes a bound (said in the error);
        #: None for a show's.
        self._outcome = outcome
        self._files = 0  # path headers so far
        self._header_bytes = 0
        self._max_files = remote_ops.MAX_LISTING_FILES
        self._max_bytes = remote_ops.MAX_LISTING_BYTES
        self._data = 0  # file bytes so far: at most _sizes + _slack
        self._sizes = 0  # the sizes the headers gave
        self._slack = remote_ops.FETCH_GROWTH_SLACK
        self._over: TooMuchOutputError | None = None

    def check(self) -> None:
        """Raise the :class:`TooMuchOutputError` of a bound passed (call it once the frames
        ``feed`` returned are used)."""
        if self._over is not None:
            raise self._over

    def feed(self, chunk: bytes) -> list[Header | memoryview]:
        self.check()
        buf = self._carry + chunk if self._carry else chunk
        self._carry = b""
        out: list[Header | memoryview] = []
        view = memoryview(buf)
        size = len(buf)
        token = self._token
        tl = len(token)
        pos = 0
        while pos < size:
            if self._in_data:
                at = buf.find(token, pos)
                keep = self._split_token(buf, pos) if at < 0 else at
                if keep > pos:
                    self._data += keep - pos
                    if self._data > self._sizes + self._slack:
                        self._over = self._too_much_data()
                        return out
                    out.append(view[pos:keep])
                if at < 0:
                    self._carry = buf[keep:]
                    return out
                if size - at < tl + 2:
                    self._carry = buf[at:]
                    return out
                kind = buf[at + tl]
                if kind not in b"EX" or buf[at + tl + 1] != 0x0A:
                    raise self._error("a file's data holds the frame marker", buf[at : at + 80])
                out.append(Header(chr(kind)))
                self._in_data = False
                pos = at + tl + 2
                self._header_bytes += 2  # "E\n": the marker is not counted (see above)
                continue
            if size - pos < tl + 2:
                if not (token.startswith(buf[pos:]) or buf.startswith(token, pos)):
                    raise self._error("expected a frame header", buf[pos:])
                self._carry = buf[pos:]
                return out
            if not buf.startswith(token, pos):
                raise self._error("expected a frame header", buf[pos : pos + 80])
            kind = buf[pos + tl]
            start = pos + tl + 1
            if kind in _BARE_KINDS and kind not in b"EX":
                if buf[start] != 0x0A:
                    raise self._error("malformed frame header", buf[pos : pos + 80])
                header = Header(chr(kind))
                end = start
            elif kind in _PATH_KINDS or kind in _NUMBER_KINDS:
                stop = b"\x00" if kind in _PATH_KINDS else b"\n"
                end = buf.find(stop, start)
                if end < 0:
                    if size - start > MAX_FRAME_PATH:
                        raise self._error("frame header without its end", buf[pos : pos + 80])
                    self._carry = buf[pos:]
                    return out
                arg = buf[start + 1 : end]
                if buf[start] != 0x20 or (
                    kind in _NUMBER_KINDS and not (arg.isdigit() and len(arg) <= _MAX_DIGITS)
                ):
                    raise self._error("malformed frame header", buf[pos : pos + 80])
                header = self._arg_header(kind, arg, buf[pos : pos + 80])
            else:
                raise self._error("unknown frame", buf[pos : pos + 80])
            # Without the marker, 33 bytes a frame that a sync's record does not have: with
            # it, 256 MiB held some 890,000 files of 200-byte paths where a sync takes 1,000,000.
            self._header_bytes += end + 1 - pos - tl
            if header.kind in "FUC":
                self._files += 1
            if self._files > self._max_files:
                self._over = self._too_much(self._max_files, "files")
            elif self._header_bytes > self._max_bytes:
                self._over = self._too_much(self._max_bytes, "bytes of file headers")
            if self._over is not None:
                return out
            pos = end + 1
            out.append(header)
            self._in_data = kind in _DATA_KINDS
            if header.size is not None:  # the bytes of the file the header announces
                self._sizes += header.size
        return out

    def _arg_header(self, kind: int, arg: bytes, found: bytes) -> Header:
        """The header of kind ``kind`` with a path or number ``arg``, checked."""
        if kind == 0x53:  # S: "<size>"
            return Header("S", arg, size=int(arg))
        if kind not in _PATH_KINDS:
            return Header(chr(kind), arg)
        mtime = size = None
        if kind == 0x46:  # F: "<mtime> <size> <path>"
            match = _MTIME_SIZE.match(arg)
            if match is None or arg[match.end() : match.end() + 1] != b" ":
                raise self._error("malformed frame header", found)
            mtime, size = float(match[1]), int(match[2])
            arg = arg[match.end() + 1 :]
        try:
            arg = _relative(arg)
        except ValueError:
            raise self._error("unsafe path in a frame", arg[:200]) from None
        self.path = arg
        return Header(chr(kind), arg, mtime, size)

    def _too_much(self, bound: int, of: str) -> TooMuchOutputError:
        path = path_text(self.path) if self.path is not None else None
        if self._outcome is not None:
            return listing_too_much(self.host, f"{bound} {of}", self._outcome, path)
        # A show's files are the candidates for the session it names (a show by path has
        # one): a listing's words and hint would send the user to the include globs alone.
        what = f"{bound} candidate files" if of == "files" else f"{bound} {of} of candidates"
        return TooMuchOutputError(
            f"the host found more than {what} for the session, the most a show takes: "
            "nothing is shown",
            host=self.host,
            path=path,
            hint=f"give more of the session id, or the session's path as {_LISTING} shows it; "
            "else give this host a narrower root or narrower include globs in the inventory",
        )

    def _too_much_data(self) -> TooMuchOutputError:
        return TooMuchOutputError(
            f"the host sent more than {self._sizes + self._slack} bytes of session files: the "
            f"{self._sizes} bytes the files held when found, and {self._slack} more for files "
            f"that grow while read; {self._outcome or 'nothing is shown'}",
            host=self.host,
            path=path_text(self.path) if self.path is not None else None,
            hint="a session file grew that much while it was read, or the host's cat, dd or "
            "head sends more than the file holds (a wrapper, an alias, a broken build): run "
            "the command again",
        )

    def close(self) -> None:
        """End of output: a frame left unfinished is a :class:`ProtocolError`, a bound
        passed the :class:`TooMuchOutputError` of :meth:`check`."""
        self.check()
        if self._carry or self._in_data:
            raise self._error("output ended inside a frame", self._carry[:80])

    def _split_token(self, buf: bytes, pos: int) -> int:
        """Where a possible start of the marker at the end of ``buf`` begins (else its end)."""
        token = self._token
        size = len(buf)
        at = max(pos, size - len(token) + 1)
        first = token[0]
        while True:
            at = buf.find(first, at)
            if at < 0:
                return size
            if token.startswith(buf[at:]):
                return at
            at += 1

    def _error(self, what: str, found: bytes) -> ProtocolError:
        path = path_text(self.path) if self.path is not None else None
        return ProtocolError(f"{what}; found {found[:80]!r}", host=self.host, path=path)


# ----------------------------------------------------------------------------- commands


@asynccontextmanager
async def _host_command(
    pool: SSHPool,
    host: Host,
    argv: list[str],
    stdin: bytes,
    token: CancelToken | None,
    idle_timeout: float | None,
) -> AsyncIterator[RemoteStream]:
    """The stdout of one of this module's commands on ``host`` (a listing or a show), in
    chunks of at most :data:`LIST_CHUNK`. A root the host cannot enter fails as it fails a
    sync: one more command, only then, names the agents' roots the host has."""
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
        async with _host_command(
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


# ----------------------------------------------------------------------------- show


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
            hint=f"see {_LISTING} for the sessions",
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
                hint=f"name the session by its path as {_LISTING} shows it",
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
        hint=f"see {_LISTING} for the ids",
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
    async with _host_command(
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
                        hint=f"it may have been deleted; see {_LISTING}",
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
