"""The remote operations of a sync round: the listing, the multi-file fetch, and both in one.

This module owns the listing's and the round's POSIX ``sh`` scripts and the argv that run
them, the probe of a missing root's alternatives and the frame marker (:func:`new_marker`);
the fetch's batch script, which a round runs too, and the fetch's argv and stdin are
:mod:`remote_sync.mirror.fetch_script`'s, the sh they share with the ``--remote`` scripts
:mod:`remote_sync.mirror.remote_sh`'s. It does no I/O itself: the caller runs the argv with
:func:`remote_sync.ssh.stream.exec_streaming` and feeds the stdout chunks to the incremental
parsers of their output, :class:`~remote_sync.mirror.listing.ListingParser` for the listing
and :class:`~remote_sync.mirror.fetch_frames.FrameParser` for the fetch's frames.

Remote hosts have only POSIX ``sh`` plus coreutils *or* BusyBox, so the scripts use nothing
else (``find``, ``stat``, ``head``, ``dd``, ``tar``, ``gzip``, ``xargs``, ``printf``). A file
name is data, never code: names travel as positional arguments or on stdin. What ``eval``
sees of a file name is only ever in single quotes, or bare where it holds only what
``shlex.quote`` leaves bare (a round's fetch items, each written as ``shlex.quote`` would:
:func:`~remote_sync.mirror.fetch_script.sh_word`); otherwise a user
name checked to be portable (``~user``), or references to positional parameters by number
(the fetch's tar command line).

Exit statuses (every operation): 0 on success, also when ``find`` could not read some
directory (its messages stay on stderr, for the caller to report naming the host, and each
path find could not read: :func:`~remote_sync.mirror.listing.unread_paths`, said as errors by
:func:`~remote_sync.mirror.listing.listing_errors`);
:data:`~remote_sync.mirror.remote_sh.EXIT_ROOT_UNUSABLE` (3) when the root directory is
missing, not a directory or not readable. Anything else is an unexpected
failure of the remote tools.

Listing (:func:`listing_argv`, :class:`~remote_sync.mirror.listing.ListingParser`)
    ``cd`` into the root (a leading ``~`` or ``~/`` means ``$HOME``), keep the start points that
    exist and run ``find START... -type f`` without following symlinks. Each regular file is
    one record ``<size> <mtime> <dev> <ino>\\n<path>\\0``; ``path`` is relative to the root
    (``./`` prefixed; the parser strips it). GNU find prints it with ``-printf`` (mtime with a
    fraction), other finds (BusyBox) through ``stat -c '%s %Y %d %i'`` (whole seconds).
    Where the host has ``gzip`` the records come gzip-compressed (the parser sees the magic
    bytes and inflates them in bounded steps); without it they come plain. A file or
    directory that vanishes while find walks the tree is left out silently (no message on
    stderr: it is not an incomplete listing); real errors keep their messages.

Round (:func:`round_argv`, ``ListingParser(trailer=True)``, then ``FrameParser``)
    The listing and the fetch in one command, so a round costs each host one start of its
    login shell. stdin starts with the marker line; stdout is the listing, then its end line
    ``L <status> <warned> <tools>`` (``warned``: the listing wrote messages on stderr, so it
    may be incomplete; ``tools``: what the host's find, dd and head can do, which the next
    round over the same connection may be told instead of probing them), then, once the
    client has sent the fetch items, a line of them per batch, or where they are many bytes
    a line ``-<per_batch>`` and the items for ``xargs``, and EOF
    (:func:`~remote_sync.mirror.fetch_script.round_fetch_stdin`), the fetch's frames,
    written by the batches the round's own shell (or xargs) runs; an EOF with no items ends
    the round without a fetch.
    On stderr ``<marker> L`` separates the listing's messages from the fetch's. The fetch
    and its frames are said in :mod:`remote_sync.mirror.fetch_script`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from ..errors import ConfigError
from ..ssh.remote import sh_script
from .fetch_script import FETCH_BATCH_SH, ROUND_FETCH_SH, SHARED_TEXT_SH, TOOLS, batch_text_sh
from .remote_sh import (
    ENTER_ROOT_SH,
    START_POINT_SH,
    USABLE_START_POINT_FN_SH,
    check_root,
    read_marker_sh,
)

__all__ = [
    "PROBE_TOOLS",
    "listing_argv",
    "listing_end_marker",
    "new_marker",
    "probe_roots_argv",
    "probed_roots",
    "round_argv",
]


# Run only after a round found its root missing (never on the normal path): which agents'
# default roots ("~/..." as the formats give them, $@) exist on the host, in one command, so
# the error can name the format to use. Each is printed as given, one per line.
_PROBE_ROOTS_SH = r"""for root do
    case $root in
    "~") dir=$HOME ;;
    "~/"*) dir=$HOME/${root#"~/"} ;;
    *) dir=$root ;;
    esac
    if [ -d "$dir" ] && [ -r "$dir" ]; then
        printf '%s\n' "$root"
    fi
done
"""


def probe_roots_argv(roots: Sequence[str]) -> list[str]:
    """argv that prints which of ``roots`` are readable directories on the host."""
    for root in roots:
        check_root(root)
    return sh_script(_PROBE_ROOTS_SH, *roots)


def probed_roots(out: bytes) -> set[str]:
    """The roots that the output of :func:`probe_roots_argv` names."""
    return set(out.decode("utf-8", "replace").splitlines())


# ----------------------------------------------------------------------------- scripts

# What the host's tools can do, probed by running them on nothing (a process each): how its
# find lists (r: GNU find with -ignore_readdir_race and -printf, p: -printf only, s: through
# stat), whether its dd knows iflag=skip_bytes,count_bytes (y/n) and whether its head knows -q
# (y/n). A round is told what the last clean round over the same connection found
# (round_argv's tools) and probes only what it was not told; it reports all three on its end
# line. A wrong answer cannot pass unseen: a find without the option fails with a message (the
# listing is incomplete, said), a dd without the flags fails the read (X), a head without -q
# gives a digest that does not match (the appends come again, checked one by one); and the
# client forgets what it was told after any round that was not clean. Whether md5sum, cksum
# and gzip are there is still looked up every time (command -v is a builtin, and a digest
# without its tool would be "-", which checks nothing); tar's options are tried by running
# tar once in a batch that has archive items.
_FIND_PROBE_SH = r"""probe_find() {
    if find . -maxdepth 0 -ignore_readdir_race -printf '' >/dev/null 2>&1; then
        find_kind=r
    elif find . -maxdepth 0 -printf '' >/dev/null 2>&1; then
        find_kind=p
    else
        find_kind=s
    fi
}
"""
# After the root, "$@" are the start points, already normalized by listing_argv (relative, no
# "..", no empty or "." components, or exactly "."). Each gets a "./" prefix so find never takes
# one for an option or an operator ("-x", "!", "("). Missing ones are skipped; one below a
# symlinked directory is skipped with a warning (find would follow that link out of the root, and
# the fetch refuses such paths anyway), and so is one that is itself a symlink to a directory
# (find would list nothing there, and every file mirrored from it would be taken for deleted). The
# kept ones replace the positional parameters (the "for" list was expanded before the loop changed
# them). find's status 1 means "some file or directory could not be read": its messages are on
# stderr and the listing is still useful, so that is success; 3 is kept for the root. When the
# host has gzip the listing travels compressed (about 5x smaller: paths repeat their directories).
#
# Any message on stderr makes the caller take the listing as incomplete (no deletions
# recorded), so a file or directory that vanishes while find walks the tree (an agent's
# atomic save removes its temporary file) must not produce one, while a real error (an
# unreadable directory) must. ENOENT there can only mean that: the name was just read from
# its directory, or the start point was just checked. GNU find's -ignore_readdir_race covers
# files; the stat loop of other finds drops its own ENOENT; the filter of find's messages
# drops find's (_VANISHED: GNU find still prints them for a directory that vanished, BusyBox
# find for anything). Even when the name exists again (a fixed temporary name, saved anew):
# that is a new file, which the next round lists. Messages are matched in the C locale
# (LC_ALL=C); one in any other form stays (a needless warning, never a lost one).
_START_POINTS_LOOP_SH = r"""LC_ALL=C
export LC_ALL
n=$#
for p do
    case $p in
    .) ;;
    *) p=./$p ;;
    esac
    usable_start_point "$p" || continue
    set -- "$@" "$p"
done
shift "$n"
"""
_START_POINTS_SH = START_POINT_SH + _START_POINTS_LOOP_SH
_LIST_FILES_SH = r"""list_files() {
    [ -n "$find_kind" ] || probe_find
    if [ "$find_kind" = r ]; then
        find "$@" -ignore_readdir_race -type f -printf '%s %T@ %D %i\n%p\0'
    elif [ "$find_kind" = p ]; then
        find "$@" -type f -printf '%s %T@ %D %i\n%p\0'
    else
        # Some BusyBox builds (FEATURE_FIND_EXEC_PLUS off) know only "-exec ... ;": one sh per
        # file, slower but a listing all the same.
        end=+
        find . -maxdepth 0 -exec true {} + >/dev/null 2>&1 || end=';'
        find "$@" -type f -exec sh -c '
            for f do
                if s=$(stat -c "%s %Y %d %i" -- "$f" 2>&1); then
                    printf "%s\n%s\0" "$s" "$f"
                    continue
                fi
                case $s in
                *": No such file or directory") ;;
                *) printf "%s\n" "$s" >&2 ;;
                esac
            done' sh {} "$end"
    fi
}
"""
#: The case pattern of a message of find's that says a path vanished (see above).
_VANISHED = '"find: "*": No such file or directory"'
# The listing's status in st, from find's ($1) and gzip's ($2: 0 without gzip), either empty
# where it never came back (a subshell killed: 2, never a complete listing). find's 1 is
# success (see above), its 3 becomes 4 (3 is the root's). A gzip that failed is said, makes
# the status 5 and the function's 1: a cut compressed stream must not pass for a listing (in a
# round, its end line would be read as more compressed data). Both listings end with it, the
# standalone one and the round's.
_LISTING_STATUS_SH = r"""listing_status() {
    case $1 in
    0 | 1) st=0 ;;
    3) st=4 ;;
    "") st=2 ;;
    *) st=$1 ;;
    esac
    case $2 in
    0) ;;
    "") st=2 ;;
    *)
        printf 'remote-sync: gzip failed (status %s); the listing is incomplete\n' "$2" >&2
        st=5
        return 1
        ;;
    esac
}
"""
# The standalone listing: find's stderr goes to the filter through a pipe, so its status
# comes back on fd 7 (fd 6 is its stdout); and around the pipe to gzip on fd 3, since POSIX
# sh has no pipefail.
_LISTING_BODY = (
    _START_POINTS_SH
    + r"""[ "$#" -gt 0 ] || exit 0
"""
    + _LIST_FILES_SH
    + r"""drop_vanished() {
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        @VANISHED@) ;;
        *) printf '%s\n' "$line" ;;
        esac
    done
}
list_checked() {
    {
        st=$(
            {
                { list_files "$@" 2>&1 >&6 6>&- 7>&-; echo "$?" >&7; } | drop_vanished >&2
            } 7>&1
        )
    } 6>&1
    return "${st:-2}"
}
""".replace("@VANISHED@", _VANISHED)
    + _LISTING_STATUS_SH
    + r"""if command -v gzip >/dev/null 2>&1; then
    exec 4>&1
    st=$({ { list_checked "$@"; echo "$?" >&3; } | gzip -c >&4; } 3>&1)
    gz=$?
    exec 4>&-
else
    list_checked "$@"
    st=$?
    gz=0
fi
listing_status "$st" "$gz"
exit "$st"
"""
)

_LISTING_SCRIPT = ENTER_ROOT_SH + "shift\nfind_kind=\n" + _FIND_PROBE_SH + _LISTING_BODY


# A whole round in one command: $1 root, $2 the tools word it was told, or "probe" (find, dd
# and head probed at once, to be reported), or "" (find probed; dd and head only by a batch
# that needs them, as a round whose answer nobody keeps need not start them; see
# _FIND_PROBE_SH), $3... start points; the tools reach the batches through
# REMOTE_SYNC_TOOLS, empty when not all known (the batches then probe); stdin is the marker
# line, then (once the client has read the listing and planned) the fetch items, a line per
# batch or, many, for xargs (fetch_script's ROUND_FETCH_SH, which ends the script after
# _ROUND_HEAD and the text of the batch's functions, $b).
# One command instead of a listing and a fetch saves a channel, and above all a start of the
# host's login shell, per round (a heavy ~/.bashrc costs tens of milliseconds each time).
#
# The listing (list_round) runs as the left side of a pipe, a subshell, its stdin on /dev/null
# (so the items stay for the fetch), its stdout straight to ours (gzip-compressed or plain as in
# the listing script). Its stderr, and find's and gzip's, go through the pipe to a filter
# (listing_end) that drops find's messages about vanished paths, passes the others on to our
# stderr and notes whether any came: that is the in-band flag the client decides "incomplete
# listing" on, since stdout and stderr reach it in no fixed order. The statuses come on the
# same pipe, each on a line of its own after the marker, which no message can forge (only
# this host's shells hold it): "<marker> s<status>" once find ended, "<marker> z<status>"
# (gzip's, 0 without it) once the listing's subshell is done. A message written without its
# newline just before one is still passed on, and the status still read. The filter's input
# ends only when every process that holds the pipe has exited, gzip among them: then it writes the
# listing's end line "L <status> <flag> <tools>" on stdout (after the listing, where a record
# would start: a record starts with a digit) and "<marker> L" on stderr (the client takes the
# stderr before it as the listing's messages), and returns the status. A status line missing
# (a subshell killed) is status 2, never a complete listing. The five processes this starts
# under dash (the subshell, find's wrapper, find, gzip, the filter) were eleven when the
# statuses came back through command substitutions, some 0.2 ms of the host's CPU each. The
# filter is a function whose status is returned, not exited: shells such as zsh and ksh run a
# pipe's last command in the shell itself. A listing that failed ends the script with its
# status; otherwise the fetch follows, when the client has items for it: an EOF instead ends
# the round before the batch functions are even parsed. The items are read in the C locale
# (see ROUND_FETCH_SH), and the batches' tools run in it, as the listing's do. The functions
# the listing shares with the batches (under_symlink, the probes) come from eval'ing $s at
# the top (fetch_script's SHARED_TEXT_SH), the text a big round's xargs hands each sh too.
_ROUND_HEAD = (
    ENTER_ROOT_SH
    + r"""find_kind=
dd_bytes=
head_q=
learn=
case $2 in
[prs][ny][ny])
    find_kind=${2%??}
    dd_bytes=${2#?}
    dd_bytes=${dd_bytes%?}
    head_q=${2#??}
    ;;
probe) learn=y ;;
esac
shift 2
"""
    + read_marker_sh("fetch marker")
    + _FIND_PROBE_SH
    + SHARED_TEXT_SH
    + 'eval "$s"\n'
    + USABLE_START_POINT_FN_SH
    + r"""[ -n "$find_kind" ] || probe_find
if [ -n "$learn" ]; then
    probe_dd_bytes
    probe_head_q
fi
REMOTE_SYNC_TOOLS=
[ -z "$dd_bytes" ] || REMOTE_SYNC_TOOLS=$find_kind$dd_bytes$head_q
export REMOTE_SYNC_TOOLS
"""
    + "list_round() {\n"
    + _START_POINTS_LOOP_SH
    + r"""gz=0
if [ "$#" = 0 ]; then
    echo "$m s0" >&2
elif command -v gzip >/dev/null 2>&1; then
    { list_files "$@"; echo "$m s$?" >&2; } | gzip -c
    gz=$?
else
    list_files "$@"
    echo "$m s$?" >&2
fi
echo "$m z$gz" >&2
}
"""
    + _LIST_FILES_SH
    + _LISTING_STATUS_SH
    + r"""listing_end() {
    st=2
    gz=
    w=0
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        *"$m "[sz]*)
            # A status line, also where a message before it did not end its own line.
            word=${line##*"$m "}
            line=${line%"$m $word"}
            case $word in
            s*) st=${word#s} ;;
            *) gz=${word#z} ;;
            esac
            [ -n "$line" ] || continue
            ;;
        esac
        case $line in
        @VANISHED@) ;;
        *)
            printf '%s\n' "$line" >&2
            w=1
            ;;
        esac
    done
    listing_status "$st" "$gz" || w=1
    printf '%s L\n' "$m" >&2
    printf 'L %s %s%s\n' "$st" "$w" "${REMOTE_SYNC_TOOLS:+ $REMOTE_SYNC_TOOLS}"
    return "$st"
}
m=$REMOTE_SYNC_MARKER
{ list_round "$@" 2>&1 >&5 5>&- </dev/null | listing_end; } 5>&1
st=$?
""".replace("@VANISHED@", _VANISHED)
    + r"""[ "$st" = 0 ] || exit "$st"
LC_ALL=C
export LC_ALL
IFS= read -r line || exit 0
"""
)


def _normalize_start_point(point: str) -> str:
    if not point or "\x00" in point:
        raise ConfigError(f"invalid start point {point!r}: empty or contains a NUL byte")
    if point.startswith("/"):
        raise ConfigError(f"start point {point!r} must be relative to the root directory")
    parts = [part for part in point.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"start point {point!r} must stay inside the root directory")
    return "/".join(parts) or "."


def listing_argv(root: str, start_points: Sequence[str]) -> list[str]:
    """argv of the listing of ``start_points`` (relative to ``root``) on one host.

    Start points are normalized (``a//b/`` and ``./a/b`` are ``a/b``; ``.`` is the whole root)
    and deduplicated; an absolute one or one with a ``..`` component is a :class:`ConfigError`.
    Start points that do not exist on the host are skipped; none at all gives empty output.
    Nested start points (``.`` and ``a``) list the files below both twice.
    """
    check_root(root)
    points = list(dict.fromkeys(_normalize_start_point(p) for p in start_points))
    return sh_script(_LISTING_SCRIPT, root, *points)


#: The tools word that asks a round to probe the host's tools at once and report them.
PROBE_TOOLS = "probe"


def round_argv(root: str, start_points: Sequence[str], *, tools: str = "") -> list[str]:
    """argv of a whole round in one command: the listing, then the fetch of what the client
    asks for once it has read the listing (see
    :class:`~remote_sync.mirror.listing.ListingParser`'s ``trailer``).

    ``tools`` is what an earlier round's end line said of the host's tools
    (:attr:`~remote_sync.mirror.listing.ListingParser.tools`), so that this one need not probe
    them again; :data:`PROBE_TOOLS` probes them all at once and reports them on the end line,
    for a caller that keeps the answer (a connection kept between rounds); "" probes only what
    the round uses, when it uses it, and reports nothing. Only a round over the same
    connection that went well should be believed: a wrong answer is seen (the round fails or
    fetches again), never taken for good data.

    Its stdin starts with the marker line (``fetch_stdin([], marker)``) and goes on, after
    the listing's end line, with :func:`~.fetch_script.round_fetch_stdin` of the requests,
    then EOF. An EOF right after the marker fetches nothing. Start points as in
    :func:`listing_argv`. Each line of items is one batch of the fetch (at most the
    ``per_batch`` items :func:`~.fetch_script.round_fetch_stdin` was given).
    """
    check_root(root)
    points = list(dict.fromkeys(_normalize_start_point(p) for p in start_points))
    if tools and tools != PROBE_TOOLS and not TOOLS.fullmatch(tools):
        raise ValueError(f"bad tools word {tools!r}")
    # Put together here, not at import, so that a test can change the batch's functions.
    script = _ROUND_HEAD + batch_text_sh(FETCH_BATCH_SH) + ROUND_FETCH_SH
    return sh_script(script, root, tools, *points)


def listing_end_marker(marker: str) -> bytes:
    """The stderr line after which a round's messages are no longer the listing's."""
    return marker.encode("ascii") + b" L\n"


def new_marker() -> str:
    """A fresh random frame marker for one fetch (32 lowercase hex digits)."""
    return secrets.token_hex(16)
