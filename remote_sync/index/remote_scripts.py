"""The remote side of ``--remote``: the POSIX ``sh`` scripts of its two commands and their argv.

What it owns: the scripts, argv and ``find`` predicates of the walk-and-stream command of
``sessions list --remote`` (:func:`list_argv`) and of the find-and-stream command of ``show
--remote`` (:func:`show_argv`). Their output is the framed one of
:mod:`remote_sync.index.remote_frames`; the clients that run them are
:mod:`remote_sync.index.remote` (the listing) and :mod:`remote_sync.index.remote_show`.

* The listing walks the host's start points with ``find`` and streams every candidate
  transcript as it goes (a header naming the file and its mtime, its bytes, an end mark).
  The mtime is the one the mirror's listing records (GNU ``find -printf``'s, with its
  fraction, else ``stat``'s whole seconds), so a session without timestamps gets the same
  ``class`` as over a mirror's index.
* The show finds the candidates for a session with ``find`` (name patterns from the
  format's rules, :func:`id_predicate`, matching every file whose id may start with the text
  given), or takes one by path, reports them, and when there is exactly one streams it
  straight away: from the start for ``head`` and ``page``, or backwards from the end in
  growing blocks for ``tail``.

Which files are transcripts is decided exactly on the client (``Source.is_included`` and the
reader's ``is_transcript``); the remote ``find`` only narrows by file name
(:data:`NAME_FILTERS`, a superset per format), so a file it passes that is not a transcript
costs its bytes but is never indexed.

Remote hosts have POSIX ``sh`` plus coreutils or BusyBox only. A file name is data, never
code: names reach the scripts as ``find -exec`` arguments or on stdin and are printed with
``printf %s``; ids and patterns travel as argv words quoted by ``ssh.remote.quote_word``. The frame
marker is a random nonce sent as the first line of stdin (never on a command line, where
other users could read it in ``ps`` and forge frames from a file they can write).
"""

from __future__ import annotations

from ..formats.readers import get_reader
from ..inventory import Host
from ..mirror.remote_sh import (
    DD_BYTES_PROBE_SH,
    ENTER_ROOT_SH,
    FIND_EXEC_END_SH,
    IS_GONE_SH,
    START_POINT_SH,
    read_marker_sh,
)
from ..ssh.remote import compact_sh, sh_script
from .show import TAIL_FIRST_BLOCK, TAIL_MAX_BLOCK

__all__ = ["NAME_FILTERS", "id_predicate", "list_argv", "show_argv"]

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

# find's status 1 means some directory could not be read: its messages are on stderr and
# what was found is still useful.
_FIND_STATUS = r"""st=$?
case $st in
0 | 1) exit 0 ;;
*) exit "$st" ;;
esac
"""

# Run for each batch of files found: $1 says where each file's mtime and size come from, the
# files follow. "given": each argument is <mtime>/<size>/<path> as GNU find printed it (the
# mtime with its fraction, as the mirror's listing has it). "stat": each argument is a path
# and stat tells its mtime in whole seconds, as the mirror's listing has it where find has no
# -printf (BusyBox). The mtime goes with the file's header: the class of a session without
# timestamps is judged by it, the same as over a mirror's index. The size too: the client
# accepts no more of the files' bytes than their sizes and a margin for growth. A file found
# is skipped when it is gone since (is_gone: no longer a regular file of the root's own).
_LIST_BATCH = (
    IS_GONE_SH
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
    is_gone "$f" && continue
    if [ -r "$f" ]; then
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
    + FIND_EXEC_END_SH
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
    find_exec_end
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
    IS_GONE_SH
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
! is_gone "$f" || gone
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
# bytes, no command-line encoding. Where find knows only "-exec ... ;" (find_exec_end) the
# candidates are counted and reported one process each: a batch of one still streams only
# when the whole run found one.
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
    + FIND_EXEC_END_SH
    + r"""[ "$kept" -gt 0 ] || exit 0
find_exec_end
RS_COUNT=$(LC_ALL=C find "$@" -exec sh -c 'for f do printf .; done' sh {} "$end" | wc -c)
RS_COUNT=$((RS_COUNT + 0))
export RS_COUNT
[ "$RS_COUNT" -gt 0 ] || exit 0
LC_ALL=C find "$@" -exec sh -c "$batch" sh {} "$end"
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
