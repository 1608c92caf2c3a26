"""The remote operations of a sync round: the listing, the multi-file fetch, and both in one.

This module owns their POSIX ``sh`` scripts, the argv (and stdin) that run them, and the
incremental parsers of their output. It does no I/O itself: the caller runs the argv with
:func:`remote_sync.ssh.stream.exec_streaming` and feeds the stdout chunks to the parser.

Remote hosts have only POSIX ``sh`` plus coreutils *or* BusyBox, so the scripts use nothing
else (``find``, ``stat``, ``head``, ``dd``, ``tar``, ``gzip``, ``xargs``, ``printf``). A file
name is data, never code: names travel as positional arguments or on stdin. What ``eval``
sees is never a file name's text: a user name checked to be portable (``~user``), or
references to positional parameters by number (the fetch's tar command line).

Exit statuses (every operation): 0 on success, also when ``find`` could not read some
directory (its messages stay on stderr, for the caller to report naming the host, and each
path find could not read: :func:`unread_paths`, said as errors by :func:`listing_errors`);
:data:`EXIT_ROOT_UNUSABLE` (3) when the root directory is missing, not a directory or not
readable. Anything else is an unexpected failure of the remote tools.

Listing (:func:`listing_argv`, :class:`ListingParser`)
    ``cd`` into the root (a leading ``~`` or ``~/`` means ``$HOME``), keep the start points that
    exist and run ``find START... -type f`` without following symlinks. Each regular file is
    one record ``<size> <mtime> <dev> <ino>\\n<path>\\0``; ``path`` is relative to the root
    (``./`` prefixed; the parser strips it). GNU find prints it with ``-printf`` (mtime with a
    fraction), other finds (BusyBox) through ``stat -c '%s %Y %d %i'`` (whole seconds).
    Where the host has ``gzip`` the records come gzip-compressed (the parser sees the magic
    bytes and inflates them in bounded steps); without it they come plain. A file or
    directory that vanishes while find walks the tree is left out silently (no message on
    stderr: it is not an incomplete listing); real errors keep their messages. A listing of
    more than :data:`MAX_LISTING_FILES` records or :data:`MAX_LISTING_BYTES` bytes is refused
    (:class:`TooMuchOutputError`): the client holds it until it has planned.

Round (:func:`round_argv`, ``ListingParser(trailer=True)``, then :class:`FrameParser`)
    The listing and the fetch in one command, so a round costs each host one start of its
    login shell. stdin starts with the marker line; stdout is the listing, then its end line
    ``L <status> <warned> <tools>`` (``warned``: the listing wrote messages on stderr, so it
    may be incomplete; ``tools``: what the host's find, dd and head can do, which the next
    round over the same connection may be told instead of probing them), then, once the
    client has sent an empty line, the fetch items and EOF (:func:`round_fetch_stdin`), the
    fetch's frames; an EOF with no items ends the round without starting the fetch.
    On stderr ``<marker> L`` separates the listing's messages from the fetch's.

Fetch (:func:`fetch_argv`, :func:`fetch_stdin`, :class:`FrameParser`)
    stdin holds one NUL-terminated item ``<start>:<length>:<path>`` per
    :class:`FetchRequest` (any bytes in a path, no command-line length limit), consumed in
    batches by ``xargs -0 -r``. The answer to each request, in order, is a frame::

        <marker> G\\n                                   not a regular file (gone)
        <marker> D\\n                                   not readable (denied)
        <marker> B\\n<up to length bytes><marker> E\\n   the byte range, read successfully
        <marker> B\\n<up to length bytes><marker> X\\n   the read failed midway (EIO...)
        <marker> T\\n                                   in this batch's archive

    and a batch with ``T`` answers ends with ``<marker> A\\n<tar stream><marker> E\\n``: one
    ``tar`` reads the files of the batch's archive requests (``a`` for the start: whole
    line-committed files), instead of one ``head`` process per file
    (:mod:`remote_sync.mirror.archive` reads the stream). At most ``per_batch`` items go to
    one batch (``xargs -n``), and an item ``-`` ends a batch early: :func:`fetch_stdin` puts
    one where the batch's archive and its appends checked at its end (below) would hold more
    than :data:`BATCH_BYTES`, which nothing of is committed before the batch's digests.

    A request with ``check`` (``h`` before its start) gets, once its range was read (after
    ``E``), a line ``<marker> K <digest>\\n``: the digest of the file's first
    :data:`HEAD_BYTES` as they are *now*, ``md5:<hex>`` from ``md5sum``, ``cksum:<CRC>:<bytes>``
    from POSIX ``cksum`` where the host has no ``md5sum``, or ``-`` where it has neither (see
    :mod:`remote_sync.mirror.digests`). An archive with such requests gets one such line after
    its end: the digest of their first KiBs, one after another. A file
    truncated and rewritten in place while it was being read gives a copy made of the old
    head and the new tail; this line is how the client sees that the head changed under the
    read (:class:`HeadDigest`). A request with ``check_whole`` (``w`` before its start) gets
    the same line with the digest of the whole file, read from a descriptor opened before the
    read: for files copied whole, which have no head the client could trust on its own.
    Requests with ``check_batched`` (``e`` before the start) share one such line, after the
    last item of their batch (before its archive): the digest of the first KiBs of those whose
    range ended with ``E``, in order. That is how an append finds its file's head rewritten
    in place since the last round, for one ``head``, ``md5sum`` (or ``cksum``) and ``stat``
    per batch. These two lines, which hash by name, end with the inode of each name just after
    (``<marker> K <digest> <inode | ->...``): a name on another file than the one listed was
    replaced since (:class:`HeadDigest`).

    A range is read from the file opened once: one ``dd`` with byte counts seeks and reads
    where ``dd`` knows ``iflag=skip_bytes,count_bytes``; elsewhere ``dd`` seeks (``skip``, no
    copy) and ``head -c`` reads. The reader's exit status picks the end line. Fewer than
    ``length`` bytes before ``E`` (the file shrank) is a short frame: the parser finds the end
    line inside the data window and resynchronizes on it. With ``detect_growth`` the host
    reads one byte more than asked: when it arrives, the file is longer than listed
    (:class:`Changed`).

    Events, per request in order: :class:`Gone` or :class:`Denied` alone; or :class:`Begin`,
    :class:`Data`..., then :class:`End` (exactly ``length`` bytes: the content), :class:`Short`
    (fewer: the file shrank, or tar's copy is not to be trusted: fetch it whole again),
    :class:`Changed` (more: fetch it whole again) or :class:`Failed` (the host could not read
    it: a file-level error). Data never goes beyond ``length`` bytes. After the last event of
    a checked range, or of an archive with checked entries, comes :class:`HeadDigest`; after
    the last item of a batch with ``check_batched`` ranges that ended, one for those.

    The output may hold at most :func:`fetch_budget` bytes: what the requests ask for, plus
    a fixed room per request for its framing and tar's headers and padding, and once for
    files tar finds grown. More is a :class:`TooMuchOutputError` (a tar that sends zero
    blocks without end, an entry nobody asked for, a trickle that never ends).

    The marker is a random nonce per run (:func:`new_marker`). It travels either in the argv
    or, better, as a first line on stdin: from there it reaches the per-batch scripts through
    the environment, never a command line, so other users of the host cannot read it in the
    process list and forge frames from a file they can write.
"""

from __future__ import annotations

import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import (
    ConfigError,
    ListingIncompleteError,
    ProtocolError,
    TooMuchOutputError,
    path_text,
)
from ..ssh.remote import STDERR_TAIL_BYTES, compact_sh, sh_script
from .archive import ArchiveReader
from .digests import MAX_DIGEST_WORD, digest_of_word
from .fetch_events import (
    Begin,
    Changed,
    Data,
    Denied,
    End,
    Failed,
    FrameEvent,
    Gone,
    HeadDigest,
    Short,
    scan_region,
)

__all__ = [
    "BATCH_BYTES",
    "DD_BYTES_PROBE_SH",
    "ENTER_ROOT_SH",
    "EXIT_ROOT_UNUSABLE",
    "FETCH_GROWTH_SLACK",
    "FETCH_ITEM_SLACK",
    "HEAD_BYTES",
    "LISTING_BOUND_HINT",
    "MAX_LISTING_BYTES",
    "MAX_LISTING_FILES",
    "MAX_LISTING_RECORD",
    "PROBE_TOOLS",
    "SKIP_BLOCK",
    "UNREAD_HINT",
    "Begin",
    "Changed",
    "Data",
    "Denied",
    "End",
    "Failed",
    "FetchRequest",
    "FrameEvent",
    "FrameParser",
    "Gone",
    "HeadDigest",
    "ListingParser",
    "RemoteFile",
    "Short",
    "fetch_argv",
    "fetch_budget",
    "fetch_stdin",
    "listing_argv",
    "listing_end_marker",
    "listing_errors",
    "listing_too_much",
    "new_marker",
    "probe_roots_argv",
    "probed_roots",
    "read_marker_sh",
    "round_argv",
    "round_fetch_stdin",
    "unread_paths",
]

#: Exit status of every script when the root directory cannot be entered or read.
EXIT_ROOT_UNUSABLE = 3


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
        _check_root(root)
    return sh_script(_PROBE_ROOTS_SH, *roots)


def probed_roots(out: bytes) -> set[str]:
    """The roots that the output of :func:`probe_roots_argv` names."""
    return set(out.decode("utf-8", "replace").splitlines())


#: The fetch script reaches an offset as ``dd bs=SKIP_BLOCK skip=<blocks>`` then
#: ``dd bs=1 skip=<bytes>`` (each an lseek). Offsets up to :data:`_SMALL_OFFSET` need only the
#: second: one process less for most appends, and a count any dd reads as a positive number.
SKIP_BLOCK = 65536
_SMALL_OFFSET = 2**31 - 1

#: How much of a file's head the host hashes for a checked request (as much as the state's
#: fingerprint covers).
HEAD_BYTES = 1024

#: A listing record (stat line + path) longer than this without its terminator is an error.
#: Real records are at most about 4 KiB (PATH_MAX) plus a short stat line.
MAX_LISTING_RECORD = 64 * 1024
#: A listing of more files than this (every record find printed, included or not) is
#: refused (:class:`TooMuchOutputError`): the client holds the files it keeps until the plan
#: is made, about 0.3 KB each (a ``RemoteFile`` with a 75-byte path, measured with
#: tracemalloc; 0.45 KB at planning a first sync), so a million is some 300-450 MB of the
#: client's memory, and a thousand times the sessions of a busy agent host. Without a bound, a
#: host printing records without end would hold its round and grow that memory for ever.
MAX_LISTING_FILES = 1_000_000
#: A listing longer than this, compressed or inflated, is refused the same way: a million
#: records of 270 bytes (their paths of 200), or fewer with longer paths, whose bytes are held.
MAX_LISTING_BYTES = 256 * 1024 * 1024
#: What to do about a listing over those bounds: find lists every file under the start
#: points the include globs give (an exclude only drops what it printed).
LISTING_BOUND_HINT = (
    "give this host a narrower root or narrower include globs in the inventory (find walks "
    "every directory the include globs start from; an exclude does not shorten the walk)"
)


def listing_too_much(
    host: str, what: str, outcome: str, path: str | None = None
) -> TooMuchOutputError:
    """The error of a host's listing past :data:`MAX_LISTING_FILES` or
    :data:`MAX_LISTING_BYTES` (``what``: the bound passed, "1000000 files"), a sync's or a
    remote session listing's; ``outcome`` says what becomes of what was listed."""
    return TooMuchOutputError(
        f"the listing holds more than {what}, the most a host's listing may: {outcome}",
        host=host,
        path=path,
        hint=LISTING_BOUND_HINT,
    )


#: A compressed listing is inflated at most this many bytes at a time (a hostile host could
#: send a small stream that inflates to gigabytes).
_INFLATE_STEP = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"

# ----------------------------------------------------------------------------- scripts

# Shared sh functions. under_symlink PATH: whether a parent directory of PATH (relative, with
# a "./" prefix) is a symlink: find or a read would follow it out of the root. A start point
# is usable (usable_start_point) when it exists, is not itself a symlink to a directory (find
# would list nothing there, and every file mirrored from it would be taken for deleted) and
# is not below a symlinked directory; a skipped one is reported on stderr, which makes the
# listing incomplete. The scripts run as separate "sh -c" processes, so each carries the
# text of what it uses.
UNDER_SYMLINK_SH = r"""under_symlink() {
    d=$1
    while :; do
        case $d in
        */*) d=${d%/*} ;;
        *) return 1 ;;
        esac
        if [ -L "$d" ]; then
            return 0
        fi
    done
}
"""
START_POINT_SH = (
    UNDER_SYMLINK_SH
    + r"""usable_start_point() {
    [ -e "$1" ] || [ -L "$1" ] || return 1
    if [ -L "$1" ] && [ -d "$1" ]; then
        printf 'remote-sync: start point %s is a symbolic link to a directory: skipped\n' "$1" >&2
        return 1
    fi
    if under_symlink "$1"; then
        printf 'remote-sync: start point %s is under a symbolic link: skipped\n' "$1" >&2
        return 1
    fi
}
"""
)

# Shared by every script that works under a host's root (also the `--remote` sessions
# scripts): $1 is the root. CDPATH could make cd print to stdout; a root that
# starts with "-" must not be read as an option (or as "cd -"). Tilde patterns are quoted so
# the shell does not expand them itself. "~user" and "~user/..." are another user's home, as
# in a shell: only the shell knows it (NSS, not just /etc/passwd), and it expands a tilde
# only in the text of a command, so an eval builds "~user" from a name
# checked first to be a portable user name (a letter or "_", then letters, digits, ".", "_",
# "-"): no quote, "$", "/", "+" or other character the shell could read as anything but the
# name, and no digit first (bash reads "~0" as its directory stack).
# An unknown user stays "~user", a directory cd cannot enter.
ENTER_ROOT_SH = r"""unset CDPATH
root=$1
case $root in
"~") root=$HOME ;;
"~/"*) root=$HOME/${root#"~/"} ;;
"~"*)
    user=${root#"~"}
    user=${user%%/*}
    case $user in
    "" | [!A-Za-z_]* | *[!A-Za-z0-9._-]*) ;;
    *)
        eval "home=~$user"
        case $home in
        "~"*) ;;
        *) root=$home${root#"~$user"} ;;
        esac
        ;;
    esac
    ;;
-*) root=./$root ;;
esac
if [ -z "$root" ] || ! cd -- "$root"; then
    printf 'remote-sync: cannot enter the root directory %s\n' "$root" >&2
    exit 3
fi
if [ ! -r . ]; then
    printf 'remote-sync: the root directory %s is not readable\n' "$root" >&2
    exit 3
fi
"""

# What the host's tools can do, probed by running them on nothing (a process each): how its
# find lists (r: GNU find with -ignore_readdir_race and -printf, p: -printf only, s: through
# stat), whether its dd knows iflag=skip_bytes,count_bytes (y/n) and whether its head knows -q
# (y/n). A round is told what the last clean round over the same connection found
# (round_argv's tools) and probes only what it was not told; it reports all three on its end
# line. A wrong answer cannot pass unseen: a find without the option fails with a message (the
# listing is incomplete, said), a dd without the flags fails the read (X), a head without -q
# gives a digest that does not match (the appends come again, checked one by one); and the
# client forgets what it was told after any round that was not clean. Whether md5sum, cksum,
# gzip and tar are there is still looked up every time (command -v is a builtin, and a digest
# without its tool would be "-", which checks nothing).
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
# probe_dd_bytes is also what `sessions show --remote` reads a block of a file with, one dd
# seeking and counting bytes where it can (index.remote_scripts' _SHOW_BATCH).
DD_BYTES_PROBE_SH = r"""probe_dd_bytes() {
    if dd iflag=skip_bytes,count_bytes bs=1 count=0 status=none </dev/null >/dev/null 2>&1; then
        dd_bytes=y
    else
        dd_bytes=n
    fi
}
"""
_FETCH_PROBES_SH = (
    DD_BYTES_PROBE_SH
    + r"""probe_head_q() {
    if head -q -c 1 /dev/null /dev/null >/dev/null 2>&1; then head_q=y; else head_q=n; fi
}
"""
)

# After the root, "$@" are the start points, already normalized by listing_argv (relative, no
# "..", no empty or "." components, or exactly "."). Each gets a "./" prefix so find never takes
# one for an option or an operator ("-x", "!", "("). Missing ones are skipped; one below a
# symlinked directory is skipped with a warning (find would follow that link out of the root, and
# the fetch refuses such paths anyway), and so is one that is itself a symlink to a directory
# (find would list nothing there, and every file mirrored from it would be taken for deleted). The
# kept ones replace the positional parameters (the "for" list was expanded before the loop changed
# them). find's status 1 means "some file or directory could not be read": its messages are on
# stderr and the listing is still useful, so that is success; 3 is kept for the root. When the
# host has gzip the listing travels compressed (about 5x smaller: paths repeat their directories);
# find's status comes back around the pipe on fd 3, since POSIX sh has no pipefail.
#
# Any message on stderr makes the caller take the listing as incomplete (no deletions
# recorded), so a file or directory that vanishes while find walks the tree (an agent's
# atomic save removes its temporary file) must not produce one, while a real error (an
# unreadable directory) must. ENOENT there can only mean that: the name was just read from
# its directory, or the start point was just checked. GNU find's -ignore_readdir_race covers
# files; the stat loop of other finds drops its own ENOENT; drop_vanished removes find's
# (GNU find still prints them for a directory that vanished, BusyBox find for anything).
# Even when the name exists again (a fixed temporary name, saved anew): that is a new file,
# which the next round lists. Messages are matched in the C locale (LC_ALL=C); one in any
# other form stays (a needless warning, never a lost one). find's stderr goes to the filter
# through a pipe, so its status comes back on fd 7 (fd 6 is its stdout).
_LISTING_BODY = (
    START_POINT_SH
    + r"""LC_ALL=C
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
[ "$#" -gt 0 ] || exit 0
list_files() {
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
drop_vanished() {
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
        "find: "*": No such file or directory") ;;
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
if command -v gzip >/dev/null 2>&1; then
    exec 4>&1
    st=$({ { list_checked "$@"; echo "$?" >&3; } | gzip -c >&4; } 3>&1)
    gz=$?
    exec 4>&-
    if [ "$gz" != 0 ]; then
        # A cut compressed stream must not pass for a listing (the round's end line would
        # be read as more compressed data).
        printf 'remote-sync: gzip failed (status %s); the listing is incomplete\n' "$gz" >&2
        st=5
    fi
else
    list_checked "$@"
    st=$?
fi
case ${st:-2} in
0 | 1) exit 0 ;;
3) exit 4 ;;
*) exit "${st:-2}" ;;
esac
"""
)

_LISTING_SCRIPT = ENTER_ROOT_SH + "shift\nfind_kind=\n" + _FIND_PROBE_SH + _LISTING_BODY

# Run by xargs once per batch of items; the marker comes from the environment. An item "-"
# (the client's, see fetch_stdin) ends a batch early: there the batch's digest of its appends
# and its archive are sent, as after its last item, and the next batch goes on in the same
# shell. The loop ends with such an item of its own ("$@" -), so that this end is written
# once, and at the top level, where the eval'd references are the script's parameters (in a
# function they would be the function's). Items are
# checked (a malformed one stops everything: exit 255 makes xargs stop at once). A path whose
# own entry or any parent directory is a symlink is "gone" (the listing never lists such a
# file; this narrows the window in which a swapped-in symlink could lead outside the root).
# Paths get a "./" prefix so no tool or test operator can take one for an option. An archive
# item ("a" for its start) that passes the checks is only announced ("T"): at the batch's end
# one tar reads them all, in that order, into the batch's archive frame ("A"). Its command line
# is built as text for eval, of quoted references to the items by number ("./${12#*:*:}" is
# item 12's path), never of a path itself. Appending to "$@" instead (set -- "$@" ...) copies
# every parameter each time: for the 505 files of an initial mirror that quadratic copying
# cost the host 0.75 s of CPU, more than sshd and tar together.
# tar's status and messages are not needed: the reader sees any file tar skipped or cut or
# padded, and the engine fetches it again with head. Where tar lacks the options (or is
# missing), archive items are ranges from 0 like any other.
#
# A range is read by read_range from the file opened once on its stdin. Where dd knows
# iflag=skip_bytes,count_bytes (GNU coreutils, BusyBox 1.33+; probed once per batch unless
# the round was told) and the
# numbers are small, one dd seeks and reads: one process per append, which is most of what an
# incremental round costs the host. Otherwise dd moves the shared offset (lseek: count=0
# copies nothing; BusyBox's tail -c +N cannot go past 4 GiB), then head reads from there.
# No pipeline, so the reader's status is at hand (POSIX sh has no pipefail) and becomes the
# end line: E when the read succeeded, X when it failed (EIO...). The offset arrives as
# <blocks>+<bytes> (SKIP_BLOCK blocks, computed by the client): no arithmetic here, and no
# number dd or the shell could take as 32 bits (the one-dd path wants blocks 0 and a length
# of at most 9 digits, so both stay below 2**31). Once the file is open, a rename,
# unlink or chmod no longer matters; if the open itself fails (the file went away since the
# checks) the answer is G or D as if the checks had seen it, and the shell's message is
# dropped (fd 3 keeps the real stderr of the reader).
#
# A range of at most 64 KiB is read in one read() (one dd, or where dd cannot seek and read at
# once, a dd with bs of its length after the seeks): a file rewritten in place cannot give it
# bytes of both contents. A checked item ("h" before its start) is followed, once read, by
# the digest of the file's first KiB as it is then (K): one dd and one md5sum (or cksum),
# for reads that the window can pause between two read() calls (the client asks only for
# those). That dd reads a second descriptor opened with the reader's: a transcript
# compacted by a rename during the read was read whole from the old file, which is what it
# hashes (by name, the new file's head made the client drop that read, and with it the
# lines compaction removed). One digest after the archive covers the heads of its checked
# entries, in order (a second eval'd list of references; head -q reads them all at once;
# where head lacks -q, one dd each). The probe for the hasher and head -q runs once per
# batch (head -q's not when the round was told), outside the command substitutions.
# Items checked at the batch's end ("e", appends) join a third list when their read ended
# well; after the batch's last item, one digest covers their heads, in order: an append reads
# only the bytes near the old end, and its head may have been rewritten in place since.
# Those two digests hash by name, so each is followed by the inode of every name just after
# (one stat -c %i for all; one each, "-" for a name gone, when stat skipped some; none where
# stat lacks -c): a name on another file than the one listed was replaced meanwhile (a
# compaction renamed over it), and its read, from the file opened before, is still good.
# The hasher is md5sum; without it (some BusyBox builds) POSIX cksum, a CRC-32 with the byte
# count (always in coreutils, in BusyBox when built with the applet): it is only asked to
# see a change, not to resist a forger. Each digest names its tool ("md5:<hex>",
# "cksum:<CRC>:<bytes>") so the client compares it with the same kind. With neither tool,
# or when the one found prints nothing, the digest is "-".
# A file copied whole has no overlap and no line ends to check, so a long read of one ("w"
# before its start) is followed by the digest of the whole file instead: from a second
# descriptor opened with the reader's, so a file replaced by a rename meanwhile (how agents
# save their JSON indexes) is hashed as it was read, and only a rewrite in place differs.
_FETCH_BATCH_SCRIPT = (
    UNDER_SYMLINK_SH
    + _FETCH_PROBES_SH
    + r"""m=$REMOTE_SYNC_MARKER
tar_ok=
dd_bytes=
dd_quiet=
opened=
hasher=
head_q=
case $REMOTE_SYNC_TOOLS in
?y?) dd_bytes=y ;;
?n?) dd_bytes=n ;;
esac
case $REMOTE_SYNC_TOOLS in
??y) head_q=y ;;
??n) head_q=n ;;
esac
i=0
archived=
archived_checked=
read_checked=
probe_digest() {
    if [ -z "$hasher" ]; then
        if command -v md5sum >/dev/null 2>&1; then
            hasher=md5sum
        elif command -v cksum >/dev/null 2>&1; then
            hasher=cksum
        else
            hasher=-
        fi
    fi
    [ -n "$head_q" ] || probe_head_q
}
# The digest word of the hasher's output $1 in sum: "md5:<hex>" (md5sum prints "<hex>  -"),
# "cksum:<CRC>:<bytes>" (cksum prints "<CRC> <bytes>"), or "-" when it printed nothing.
digest_word() {
    case $hasher:$1 in
    md5sum:?*) sum=md5:${1%% *} ;;
    cksum:?*" "?*)
        sum=${1#* }
        sum=cksum:${1%% *}:${sum%% *}
        ;;
    *) sum=- ;;
    esac
}
# The rest of a K line (after "<marker> K "): the digest of the first KiBs of "$@", then
# their inodes. It prints that line itself, from the batch's shell, where a command
# substitution around it was a fork more per batch.
head_digest() {
    if [ "$hasher" = - ]; then
        echo -
        return
    fi
    if [ "$head_q" = y ]; then
        out=$(head -q -c @HEAD@ "$@" 2>/dev/null | $hasher)
    else
        out=$(for h do dd if="$h" bs=@HEAD@ count=1 2>/dev/null; done | $hasher)
    fi
    digest_word "$out"
    inodes=$(stat -c %i -- "$@" 2>/dev/null)
    if [ -n "$inodes" ]; then
        n=0
        for ino in $inodes; do n=$((n + 1)); done
        if [ "$n" != "$#" ]; then
            inodes=
            for h do
                ino=$(stat -c %i -- "$h" 2>/dev/null) || ino=
                inodes="$inodes ${ino:--}"
            done
        fi
    fi
    # printf, not echo: a hasher's output with a backslash (dash's echo ends its line at a
    # "\c") must not lose the K line its newline and merge it with the next frame line.
    printf '%s' "$sum"
    for ino in $inodes; do printf ' %s' "$ino"; done
    printf '\n'
}
read_range() {
    opened=1
    printf '%s B\n' "$m"
    [ -n "$dd_bytes" ] || probe_dd_bytes
    if [ "$dd_bytes$blocks" = y0 ] && [ "${#len}" -le 9 ]; then
        if dd iflag=skip_bytes,count_bytes bs=65536 skip="$bytes" count="$len" status=none 2>&3
        then
            read_done
        else
            printf '%s X\n' "$m"
        fi
    elif { [ "$blocks" = 0 ] || dd bs=@SKIP_BLOCK@ skip="$blocks" count=0 2>/dev/null; } &&
        { [ "$bytes" = 0 ] || dd bs=1 skip="$bytes" count=0 2>/dev/null; } &&
        read_rest; then
        read_done
    else
        printf '%s X\n' "$m"
    fi
}
read_rest() {
    if [ "${#len}" -le 5 ] && [ "$len" -le 65536 ]; then
        if [ -z "$dd_quiet" ]; then
            dd_quiet=-
            dd status=none count=0 </dev/null >/dev/null 2>&1 && dd_quiet=status=none
        fi
        if [ "$dd_quiet" = - ]; then
            dd bs="$len" count=1 2>&3
        else
            dd bs="$len" count=1 status=none 2>&3
        fi
    else
        head -c "$len" 2>&3
    fi
}
read_done() {
    printf '%s E\n' "$m"
    if [ "$check" = w ]; then
        probe_digest
        printf '%s K %s\n' "$m" "$(opened_digest)"
    elif [ "$check" = e ]; then
        read_checked="$read_checked \"./\${$i#*:*:}\""
    elif [ -n "$check" ]; then
        probe_digest
        printf '%s K %s\n' "$m" "$(opened_digest head)"
    fi
}
# The digest of the file the reader opened (fd 4): of its first KiB with "head", else of all.
opened_digest() {
    out=
    if [ "$hasher" = - ]; then
        :
    elif [ "$1" = head ]; then
        out=$(dd bs=@HEAD@ count=1 <&4 2>/dev/null | $hasher)
    else
        out=$($hasher <&4 2>/dev/null)
    fi
    digest_word "$out"
    echo "$sum"
}
is_gone() {
    [ ! -f "$f" ] || [ -L "$f" ] || under_symlink "$f"
}
for item in "$@" -; do
    i=$((i + 1))
    case $item in
    -)
        if [ -n "$read_checked" ]; then
            probe_digest
            printf '%s K ' "$m"
            eval "head_digest $read_checked"
        fi
        if [ -n "$archived" ]; then
            printf '%s A\n' "$m"
            eval "tar --no-recursion --numeric-owner -cf - $archived" 2>/dev/null
            printf '%s E\n' "$m"
            if [ -n "$archived_checked" ]; then
                probe_digest
                printf '%s K ' "$m"
                eval "head_digest $archived_checked"
            fi
        fi
        read_checked=
        archived=
        archived_checked=
        continue
        ;;
    esac
    start=${item%%:*}
    rest=${item#*:}
    len=${rest%%:*}
    f=./${rest#*:}
    case $item in
    *:*:?*) ;;
    *) start= ;;
    esac
    check=
    case $start in
    h*)
        check=c
        start=${start#h}
        ;;
    w*)
        check=w
        start=${start#w}
        ;;
    e*)
        check=e
        start=${start#e}
        ;;
    esac
    archive=
    case $start in
    a)
        archive=1
        blocks=0
        bytes=0
        if [ -z "$tar_ok" ]; then
            if tar --no-recursion --numeric-owner -cf /dev/null /dev/null >/dev/null 2>&1; then
                tar_ok=y
            else
                tar_ok=n
            fi
        fi
        ;;
    *+*)
        blocks=${start%%+*}
        bytes=${start#*+}
        ;;
    *) blocks= ;;
    esac
    case ${blocks:-x}:${bytes:-x}:${len:-x} in
    *[!0-9:]*)
        echo 'remote-sync: malformed fetch request on stdin' >&2
        exit 255
        ;;
    esac
    if is_gone; then
        printf '%s G\n' "$m"
    elif [ ! -r "$f" ]; then
        printf '%s D\n' "$m"
    elif [ "$archive$tar_ok" = 1y ]; then
        printf '%s T\n' "$m"
        archived="$archived \"./\${$i#*:*:}\""
        [ -z "$check" ] || archived_checked="$archived_checked \"./\${$i#*:*:}\""
    else
        opened=
        if [ "$check" = w ] || [ "$check" = c ]; then
            read_range 3>&2 2>/dev/null <"$f" 4<"$f"
        else
            read_range 3>&2 2>/dev/null <"$f"
        fi
        if [ -n "$opened" ]; then
            :
        elif is_gone; then
            printf '%s G\n' "$m"
        elif [ ! -r "$f" ]; then
            printf '%s D\n' "$m"
        else
            printf '%s B\n%s X\n' "$m" "$m"
        fi
    fi
done
""".replace("@SKIP_BLOCK@", str(SKIP_BLOCK)).replace("@HEAD@", str(HEAD_BYTES))
)


def _check_marker_sh(what: str) -> str:
    """sh that exits 2, saying ``no valid WHAT`` on stderr, unless ``$REMOTE_SYNC_MARKER`` is a
    marker as :func:`new_marker` makes them (hex digits), then exports it: the per-batch
    scripts get it through the environment, never a command line."""
    return r"""case $REMOTE_SYNC_MARKER in
"" | *[!0-9a-f]*)
    echo 'remote-sync: no valid @WHAT@' >&2
    exit 2
    ;;
esac
export REMOTE_SYNC_MARKER
""".replace("@WHAT@", what)


def read_marker_sh(what: str) -> str:
    """sh that takes the marker from the first line of stdin, read by the shell byte by byte
    (what follows stays for xargs), and checks and exports it as :func:`_check_marker_sh`."""
    return "IFS= read -r REMOTE_SYNC_MARKER || REMOTE_SYNC_MARKER=\n" + _check_marker_sh(what)


# $1 root, $2 the batch script, $3 the items per batch, $4 the marker, or "" when it is the
# first line of stdin (read byte by byte by the shell, so xargs gets the rest of stdin
# intact), $5 the tools word a round found (see _ROUND_SCRIPT; "": the batches probe what
# they use), which reaches the batches as REMOTE_SYNC_TOOLS. Entering the root here, before
# xargs, gives a clean exit status 3 (xargs would turn it into 123); the batches inherit the
# directory.
_FETCH_SCRIPT = (
    ENTER_ROOT_SH
    + 'REMOTE_SYNC_MARKER=$4\n[ -n "$REMOTE_SYNC_MARKER" ] || '
    + read_marker_sh("fetch marker")
    + r"""REMOTE_SYNC_TOOLS=$5
export REMOTE_SYNC_TOOLS
exec xargs -0 -r -n "$3" sh -c "$2" sh
"""
)

# A whole round in one command: $1 root, $2 the batch script, $3 the items per batch, $4 the
# tools word it was told, or "probe" (find, dd and head probed at once, to be reported), or ""
# (find probed; dd and head only by a batch that needs them, as a round whose answer nobody
# keeps need not start them; see _FIND_PROBE_SH), $5... start points; the tools reach the
# batches through REMOTE_SYNC_TOOLS, empty when not all known (the batches then probe);
# stdin is the marker line, then (once the client has read the listing and planned) the fetch
# items.
# One command instead of a listing and a fetch saves a channel, and above all a start of the
# host's login shell, per round (a heavy ~/.bashrc costs tens of milliseconds each time).
#
# The listing runs in a subshell, its stdin on /dev/null (so the items stay for xargs), its
# stdout straight to ours (gzip-compressed or plain as in the listing script). Its stderr goes
# on to ours through a filter that notes whether any message came: that is the in-band flag
# the client decides "incomplete listing" on, since stdout and stderr reach it in no fixed
# order. The subshell's status and the flag come back tagged ("s<status>", "w<0|1>") in one
# command substitution, in either order. Then the listing's end line "L <status> <flag>
# <tools>" on stdout (after the listing, where a record would start: a record starts with a
# digit), and "<marker> L" on stderr: the client takes the stderr before it as the listing's
# messages. A listing that failed ends the script with its status; otherwise the fetch follows,
# when the client has items for it: they come after an empty line (round_fetch_stdin), and an
# EOF instead ends the round without starting xargs, a process fewer a host with nothing to
# fetch.
_ROUND_SCRIPT = (
    ENTER_ROOT_SH
    + r"""batch=$2
per_batch=$3
find_kind=
dd_bytes=
head_q=
learn=
case $4 in
[prs][ny][ny])
    find_kind=${4%??}
    dd_bytes=${4#?}
    dd_bytes=${dd_bytes%?}
    head_q=${4#??}
    ;;
probe) learn=y ;;
esac
shift 4
"""
    + read_marker_sh("fetch marker")
    + _FIND_PROBE_SH
    + _FETCH_PROBES_SH
    + r"""[ -n "$find_kind" ] || probe_find
if [ -n "$learn" ]; then
    probe_dd_bytes
    probe_head_q
fi
REMOTE_SYNC_TOOLS=
[ -z "$dd_bytes" ] || REMOTE_SYNC_TOOLS=$find_kind$dd_bytes$head_q
export REMOTE_SYNC_TOOLS
"""
    + "list_tree() {\n"
    + _LISTING_BODY
    + r"""}
exec 5>&1
result=$(
    {
        { (list_tree "$@") 2>&1 >&5 5>&- 7>&- </dev/null; echo "s$?" >&7; } |
            {
                w=0
                while IFS= read -r line || [ -n "$line" ]; do
                    printf '%s\n' "$line" >&2
                    w=1
                done
                echo "w$w" >&7
            }
    } 7>&1
)
exec 5>&-
st=2
warned=1
for word in $result; do
    case $word in
    s*) st=${word#s} ;;
    w*) warned=${word#w} ;;
    esac
done
printf '%s L\n' "$REMOTE_SYNC_MARKER" >&2
printf 'L %s %s%s\n' "$st" "$warned" "${REMOTE_SYNC_TOOLS:+ $REMOTE_SYNC_TOOLS}"
[ "$st" = 0 ] || exit "$st"
IFS= read -r go || exit 0
exec xargs -0 -r -n "$per_batch" sh -c "$batch" sh
"""
)


# What find writes on stderr about a path it could not read, in the C locale the listing sets:
# GNU find quotes the path and escapes it as C does ("find: './a b\\'c': Permission denied";
# a byte that is not printable ASCII as an octal escape), BusyBox find writes it raw. Either
# way it starts with "./" (every start point has that prefix) and the reason, a strerror(3)
# text, has no colon.
_FIND_MESSAGE = re.compile(rb"find: (?:'(\./(?:[^'\\]|\\.)*)'|(\./.*)): ([^:]+)", re.DOTALL)
_C_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)
_C_ESCAPES = {
    b"n": b"\n",
    b"t": b"\t",
    b"r": b"\r",
    b"a": b"\a",
    b"b": b"\b",
    b"f": b"\f",
    b"v": b"\v",
}


#: What to do about a directory the login user cannot read or search. Not "exclude it":
#: excludes filter the listing, find still walks there.
UNREAD_HINT = "let the login user read and search it on the host (chmod u+rx, or through its group)"


#: What a listing's messages say when their start was not kept.
_EARLIER_NOT_KEPT = (
    "find said more before these messages (not kept): other paths may not have been read"
)


def unread_paths(messages: bytes) -> tuple[list[tuple[bytes, str]], list[str]]:
    """The listing's ``messages`` (its stderr, :data:`EXIT_ROOT_UNUSABLE` aside): each path
    ``find`` could not read, relative to the root, with its reason ("Permission denied"),
    and every other line as text, each once (a script may run find twice over the same
    tree). A name holding a newline splits a BusyBox message in two: both halves are then
    other lines. A path that vanished while find walked the tree (an agent's atomic save) is
    neither: it is gone, not hidden."""
    unread: dict[tuple[bytes, str], None] = {}
    other: dict[str, None] = {}
    if len(messages) >= STDERR_TAIL_BYTES:
        # Only the stream's last bytes were kept: the first line may be the end of a message
        # cut in two, and earlier ones are lost. Said, not parsed as a path.
        messages = messages.partition(b"\n")[2]
        other[_EARLIER_NOT_KEPT] = None
    for line in messages.split(b"\n"):  # not splitlines: a raw name may hold a \r
        found = _FIND_MESSAGE.fullmatch(line)
        if found is None:
            if line.strip():
                other[line.decode("utf-8", "backslashreplace").strip()] = None
            continue
        quoted, raw, reason = found.groups()
        if reason == b"No such file or directory":
            continue
        path = _C_ESCAPE.sub(_unescape_c, quoted) if quoted is not None else raw
        unread[path[2:] or b".", reason.decode("utf-8", "backslashreplace")] = None
    return list(unread), list(other)


def _unescape_c(match: re.Match[bytes]) -> bytes:
    code = match[1]
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    return _C_ESCAPES.get(code, code)  # \\, \', \" and \? stand for themselves


def listing_errors(
    host: str, messages: bytes | None, unseen: str, then: str, *, incomplete: bool = False
) -> list[ListingIncompleteError]:
    """Every error of a listing ``find`` could not make whole, said alike by a sync and by
    ``sessions list --remote``: one per path it could not read (:func:`unread_paths`),
    naming it and what was not done under it (``unseen``: "mirrored", "listed"); then one
    without a path for the other lines of ``messages``, or, when the caller knows the
    listing is ``incomplete`` and no path says where (``messages`` None: the command was
    cut before they came), one saying so. Each hint ends with ``then``."""
    unread, other = unread_paths(messages or b"")
    errors = [
        ListingIncompleteError(
            f"find could not read it ({reason}): nothing under it was {unseen}",
            host=host,
            path=path_text(path),
            hint=f"{UNREAD_HINT}; {then}",
        )
        for path, reason in unread
    ]
    if other or (incomplete and not unread):
        said = "; ".join(other) or "the listing reported errors (their messages were not kept)"
        errors.append(
            ListingIncompleteError(
                f"the listing is incomplete: {said}",
                host=host,
                hint=f"fix permissions (or the failing tool) on the host; {then}",
            )
        )
    return errors


def _normalize_start_point(point: str) -> str:
    if not point or "\x00" in point:
        raise ConfigError(f"invalid start point {point!r}: empty or contains a NUL byte")
    if point.startswith("/"):
        raise ConfigError(f"start point {point!r} must be relative to the root directory")
    parts = [part for part in point.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"start point {point!r} must stay inside the root directory")
    return "/".join(parts) or "."


def _check_root(root: str) -> None:
    if not root or "\x00" in root:
        raise ConfigError(f"invalid root directory {root!r}: empty or contains a NUL byte")


def listing_argv(root: str, start_points: Sequence[str]) -> list[str]:
    """argv of the listing of ``start_points`` (relative to ``root``) on one host.

    Start points are normalized (``a//b/`` and ``./a/b`` are ``a/b``; ``.`` is the whole root)
    and deduplicated; an absolute one or one with a ``..`` component is a :class:`ConfigError`.
    Start points that do not exist on the host are skipped; none at all gives empty output.
    Nested start points (``.`` and ``a``) list the files below both twice.
    """
    _check_root(root)
    points = list(dict.fromkeys(_normalize_start_point(p) for p in start_points))
    return sh_script(_LISTING_SCRIPT, root, *points)


#: Items per batch script (``xargs -n``) unless the caller says otherwise. A batch's archive
#: entries wait for its head digest before they are committed, each holding its descriptor.
PER_BATCH = 1000


#: Bytes of a batch that wait for its end before any of them can be committed: the whole
#: files of its archive (held until the head digest after the archive's end) and its appends
#: checked at its end (until the digest of their heads). A connection dropped before that
#: end loses them all, so :func:`fetch_stdin` ends a batch before a request that would take
#: them over this: a drop throws away at most this much of files that fully arrived (rsync
#: keeps each file it finished). A transcript larger than it comes in pieces of at most as
#: much (the engine's ``PIECE_BYTES``), each committed on its own. The engine's flush threshold
#: (``FLUSH_BYTES``) is this too: a kill of the client may lose as much of files it finished.
#: Each batch costs the host a ``tar``, and a ``head``, ``md5sum`` and ``stat`` for its
#: digests: about 6 ms of CPU on a 2-core test machine, no round trip; at 64 MiB that is
#: under a percent of the time the bytes take at 100 MB/s (the 505 files, 101 MB, of the
#: benchmark's first mirror are two batches; at 16 MiB they were seven, and the fetch's CPU
#: on the host half as much again).
BATCH_BYTES = 64 * 1024 * 1024
#: The item that ends a batch early (a real item always holds two colons).
_BATCH_END = b"-\x00"


def _per_batch(count: int) -> str:
    if count < 1:
        raise ValueError(f"at least one item per batch, not {count}")
    return str(count)


#: The tools word that asks a round to probe the host's tools at once and report them.
PROBE_TOOLS = "probe"


def round_argv(
    root: str, start_points: Sequence[str], *, per_batch: int = PER_BATCH, tools: str = ""
) -> list[str]:
    """argv of a whole round in one command: the listing, then the fetch of what the client
    asks for once it has read the listing (see :class:`ListingParser`'s ``trailer``).

    ``tools`` is what an earlier round's end line said of the host's tools
    (:attr:`ListingParser.tools`), so that this one need not probe them again;
    :data:`PROBE_TOOLS` probes them all at once and reports them on the end line, for a caller
    that keeps the answer (a connection kept between rounds); "" probes only what the round
    uses, when it uses it, and reports nothing. Only a round over the same connection that
    went well should be believed: a wrong answer is seen (the round fails or fetches again),
    never taken for good data.

    Its stdin starts with the marker line (``fetch_stdin([], marker)``) and goes on, after
    the listing's end line, with :func:`round_fetch_stdin` of the requests, then EOF. An EOF
    right after the marker fetches nothing. Start points as in
    :func:`listing_argv`. At most ``per_batch`` items go to one batch of the fetch.
    """
    _check_root(root)
    points = list(dict.fromkeys(_normalize_start_point(p) for p in start_points))
    if tools and tools != PROBE_TOOLS and not _TOOLS.fullmatch(tools):
        raise ValueError(f"bad tools word {tools!r}")
    batch = compact_sh(_FETCH_BATCH_SCRIPT)  # an argument: sh_script compacts only $0's
    return sh_script(_ROUND_SCRIPT, root, batch, _per_batch(per_batch), tools, *points)


def round_fetch_stdin(requests: Sequence[FetchRequest]) -> bytes:
    """What a round's stdin goes on with after its marker line (see :func:`round_argv`): an
    empty line and the items of ``requests`` (:func:`fetch_stdin`), or nothing when there
    are none, so that the round ends without starting the fetch."""
    return b"\n" + fetch_stdin(requests) if requests else b""


def listing_end_marker(marker: str) -> bytes:
    """The stderr line after which a round's messages are no longer the listing's."""
    return marker.encode("ascii") + b" L\n"


def new_marker() -> str:
    """A fresh random frame marker for one fetch (32 lowercase hex digits)."""
    return secrets.token_hex(16)


def fetch_argv(
    root: str, marker: str | None = None, *, per_batch: int = PER_BATCH, tools: str = ""
) -> list[str]:
    """argv of the multi-file fetch under ``root``; the requests go on stdin (fetch_stdin).

    Give the marker here *or* to :func:`fetch_stdin`, not both. On stdin it is preferable:
    a command line is visible to every user of the host (``ps``), and a user who knows the
    marker and can write a file being fetched can forge frames for the files after it.

    ``tools`` is what a round's end line said of the host's tools (as :func:`round_argv`
    takes it): its batches then probe neither dd nor head, as the round's did not. "" has
    each batch probe what it uses. Only what was found over the same connection, in the
    same round or a clean one before, should be passed.
    """
    _check_root(root)
    if marker is not None:
        _check_marker(marker.encode("ascii", "replace"))
    if tools and not _TOOLS.fullmatch(tools):
        raise ValueError(f"bad tools word {tools!r}")
    batch = compact_sh(_FETCH_BATCH_SCRIPT)  # an argument: sh_script compacts only $0's
    return sh_script(_FETCH_SCRIPT, root, batch, _per_batch(per_batch), marker or "", tools)


def fetch_stdin(
    requests: Sequence[FetchRequest], marker: str | None = None, *, batch_bytes: int = BATCH_BYTES
) -> bytes:
    """The fetch's stdin: one ``<start>:<length>:<path>\\0`` item per request, and an item
    ``-`` that ends a batch early wherever the next request would take the bytes its batch
    holds until its end (see :data:`BATCH_BYTES`) over ``batch_bytes``: a request larger than
    that is a batch of its own.

    ``start`` is ``a`` for an archive request, else ``<blocks>+<bytes>``, after an ``h`` for a
    request with ``check`` or a ``w`` for one with ``check_whole``. ``<blocks>+<bytes>`` is
    the offset as :data:`SKIP_BLOCK` blocks plus bytes, so that the host does no arithmetic
    and no tool there sees a number above 2**31 for any file below 128 TiB. ``length`` is
    one more than requested with ``detect_growth`` (the parser tells a longer file by that
    byte).

    With ``marker`` (when it was not given to :func:`fetch_argv`), a first line holds it.
    """
    if batch_bytes < 1:
        raise ValueError(f"at least one byte per batch, not {batch_bytes}")
    parts: list[bytes] = []
    if marker is not None:
        _check_marker(marker.encode("ascii", "replace"))
        parts.append(marker.encode("ascii") + b"\n")
    # Bytes of this batch that wait for its end. The cuts xargs makes by count are not
    # followed here: a batch after one only ends sooner than it had to.
    held = 0
    for request in requests:
        if request.archive or request.check_batched:
            if held and held + request.length > batch_bytes:
                parts.append(_BATCH_END)
                held = 0
            held += request.length
        if request.archive:
            start = b"a"
        elif request.start <= _SMALL_OFFSET:
            start = b"0+%d" % request.start  # one dd with bs=1 reaches it
        else:
            start = b"%d+%d" % divmod(request.start, SKIP_BLOCK)
        if request.check:
            check = b"h"
        elif request.check_whole:
            check = b"w"
        else:
            check = b"e" if request.check_batched else b""
        parts.append(b"%s%s:%d:%s\x00" % (check, start, request.asked, request.path))
    return b"".join(parts)


#: Bytes a fetch's output may hold per request beyond those it asks for. What a request can
#: bring past its bytes: its frame lines (``B``, ``E`` or ``T``, 35 bytes each with the
#: 32-digit marker), a digest line (:data:`MAX_DIGEST_WORD` and 21 bytes per inode); as an
#: archive entry, tar's 512-byte header, a GNU long name or a pax header for a path over 100
#: bytes (a header and the path, at most PATH_MAX, 4 KiB, with tar's other pax records, in
#: 512-byte blocks: about 6 KiB), the padding of its data to a block (511), and its archive's
#: ``A`` and ``E`` lines, two end blocks and the padding to tar's record (10 KiB, GNU tar's
#: default), counted for every entry although an archive has them once. All that is under
#: 20 KiB; this is more than three times as much.
FETCH_ITEM_SLACK = 64 * 1024
#: Bytes a fetch's archives may bring past their entries' requests, once per fetch: tar reads
#: each file to the size it has when tar reaches it, so a transcript appended to since the
#: listing comes longer (the reader keeps the bytes asked for; the next round appends the
#: rest). Transcripts grow by kilobytes a minute; 64 MiB covers a round's worth many times.
FETCH_GROWTH_SLACK = 64 * 1024 * 1024


def fetch_budget(requests: Sequence[FetchRequest]) -> int:
    """The most bytes the output of a fetch of ``requests`` may hold (:class:`FrameParser`
    refuses more): every byte asked for (:attr:`FetchRequest.asked`, one more than the length
    with ``detect_growth``), :data:`FETCH_ITEM_SLACK` per request and, when some are archive
    requests, :data:`FETCH_GROWTH_SLACK` once. The exact bound plus room, never less: a host
    that sends more is not answering what was asked (endless zero blocks after a tar
    archive's end, an entry nobody asked for, frames past the last request)."""
    asked = sum(request.asked for request in requests)
    growth = FETCH_GROWTH_SLACK if any(request.archive for request in requests) else 0
    return asked + len(requests) * FETCH_ITEM_SLACK + growth


def _check_marker(marker: bytes) -> None:
    if len(marker) < 16 or marker.strip(b"0123456789abcdef"):
        raise ValueError(f"a marker is at least 16 lowercase hex digits, not {marker!r}")


# ----------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One regular file of a listing."""

    path: bytes
    """Relative to the root, normalized (no ``./`` prefix, no empty/``.``/``..`` parts)."""
    size: int
    mtime: float
    dev: int
    ino: int


_INODE = re.compile(rb"[0-9]{1,20}")
#: The largest size a file can have (off_t), and what the state's SQLite integers hold.
_MAX_SIZE = 2**63 - 1
_U64 = 2**64 - 1
# A device or inode number is 64 bits unsigned (overlayfs and some NFS servers use the top
# ones); the state keeps signed 64-bit integers, negative inodes meaning "in doubt". So only
# the low 63 bits are kept, here and for the inodes after a digest, which are compared with
# these: two files differing in the top bit alone would be taken for one.
_I63 = 2**63 - 1
_STAT_LINE = re.compile(
    rb"([0-9]{1,20}) (-?[0-9]{1,20}(?:\.[0-9]{1,20})?) ([0-9]{1,20}) ([0-9]{1,20})"
)


def _path_problem(path: bytes) -> str | None:
    """Why ``path`` (already without its ``./``) is not a safe relative path, or None."""
    if not path:
        return "empty path"
    if b"\x00" in path:
        return "path contains a NUL byte"
    if path.startswith(b"/"):
        return "absolute path"
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            return "path with an empty, '.' or '..' component"
    return None


_END_LINE = re.compile(rb"L ([0-9]{1,3}) ([01])(?: ([prs][ny][ny]))?")
#: What :func:`round_argv` takes as ``tools`` and a round's end line reports (see
#: ``_FIND_PROBE_SH``): how the host's find lists, whether its dd reads a byte range at once,
#: whether its head knows -q.
_TOOLS = re.compile(r"[prs][ny][ny]")


class ListingParser:
    """Incremental parser of a listing's stdout: chunks in, :class:`RemoteFile` records out.

    Holds at most one partial record between chunks (at most :data:`MAX_LISTING_RECORD`
    bytes). Every path is validated: the host controls this output, and a path that is empty,
    absolute or has an empty, ``.`` or ``..`` component is a :class:`ProtocolError`. A listing
    of more than :data:`MAX_LISTING_FILES` records, or more than :data:`MAX_LISTING_BYTES`
    bytes as it came or inflated, is a :class:`TooMuchOutputError` (the bounds are read when
    the parser is made).

    With ``trailer`` (a round's output, :func:`round_argv`) the listing ends at its end line
    ``L <status> <warned> [<tools>]``: then :attr:`end` holds ``(status, warned)``,
    :attr:`tools` the tools word (see :func:`round_argv`) and :attr:`rest` the bytes that came
    after it in the chunk (the fetch's frames); feed nothing more.
    """

    __slots__ = (
        "_closed",
        "_fed",
        "_gzip_done",
        "_inflate",
        "_max_bytes",
        "_max_files",
        "_pending",
        "_plain",
        "_sniff",
        "_started",
        "_trailer",
        "count",
        "end",
        "host",
        "rest",
        "tools",
    )

    def __init__(self, host: str, *, trailer: bool = False) -> None:
        self.host = host
        self.count = 0
        self.end: tuple[int, bool] | None = None
        #: What the round's end line said of the host's tools ("" when it said nothing).
        self.tools = ""
        self.rest = b""
        self._trailer = trailer
        self._started = False  # a record was read: what comes first is the listing's
        self._pending = b""
        self._closed = False
        # Bytes fed as they came, and as records (inflated): each within _max_bytes.
        self._fed = 0
        self._plain = 0
        self._max_files = MAX_LISTING_FILES
        self._max_bytes = MAX_LISTING_BYTES
        # The first bytes tell whether the listing is gzip-compressed: a plain record starts
        # with a digit, never with the gzip magic.
        self._sniff: bytes | None = b""
        self._inflate: zlib._Decompress | None = None
        self._gzip_done = False

    def feed(self, chunk: bytes) -> list[RemoteFile]:
        if self._closed or self.end is not None:
            raise ValueError("feed() after the end of the listing")
        # Compressed bytes that inflate to nothing (empty deflate blocks) are bytes too.
        self._fed += len(chunk)
        if self._fed > self._max_bytes:
            raise self._too_much(f"{self._max_bytes} bytes")
        if self._sniff is not None:
            head = self._sniff + bytes(chunk)
            if len(head) < len(_GZIP_MAGIC) and _GZIP_MAGIC.startswith(head):
                self._sniff = head
                return []
            self._sniff = None
            if head.startswith(_GZIP_MAGIC):
                self._inflate = zlib.decompressobj(wbits=31)
            chunk = head
        if self._inflate is None:
            return self._parse(chunk)
        out: list[RemoteFile] = []
        data = bytes(chunk)
        while data:
            try:
                plain = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                raise ProtocolError(f"corrupt compressed listing: {exc}", host=self.host) from exc
            data = self._inflate.unconsumed_tail
            out.extend(self._parse(plain))
            if not self._inflate.eof:
                continue
            # Every byte past the compressed stream is in unused_data; when the stream ended
            # in a call whose output was capped, CPython leaves them in unconsumed_tail too.
            after = self._inflate.unused_data
            if not self._trailer:
                if after:
                    raise ProtocolError(
                        "output after the end of the compressed listing", host=self.host
                    )
                break
            if self._pending:
                raise ProtocolError("the compressed listing ended inside a record", host=self.host)
            # Only the end line may follow the compressed records.
            self._inflate = None
            self._gzip_done = True
            out.extend(self._parse(after))
            break
        return out

    def _parse(self, chunk: bytes) -> list[RemoteFile]:
        self._plain += len(chunk)
        if self._plain > self._max_bytes:
            raise self._too_much(f"{self._max_bytes} bytes")
        buf = self._pending + chunk if self._pending else bytes(chunk)
        out: list[RemoteFile] = []
        pos = 0
        find = buf.find
        while True:
            if self._trailer and self._inflate is None and buf[pos : pos + 1] == b"L":
                newline = find(b"\n", pos)
                if newline < 0:
                    break
                self._end_line(buf[pos:newline])
                self.rest = buf[newline + 1 :]
                self._pending = b""
                self._count(out)
                return out
            if self._gzip_done and pos < len(buf):
                raise ProtocolError(
                    f"output after the end of the compressed listing: {buf[pos : pos + 80]!r}",
                    host=self.host,
                )
            newline = find(b"\n", pos)
            if newline < 0:
                break
            end = find(b"\x00", newline + 1)
            if end < 0:
                break
            out.append(self._record(buf[pos:newline], buf[newline + 1 : end]))
            pos = end + 1
        rest = buf[pos:]
        if len(rest) > MAX_LISTING_RECORD:
            raise ProtocolError(
                f"listing record longer than {MAX_LISTING_RECORD} bytes without terminator "
                f"(starts {rest[:80]!r})",
                host=self.host,
            )
        self._pending = rest
        self._count(out)
        return out

    def _count(self, records: list[RemoteFile]) -> None:
        # Once per chunk (at most an inflate step of records), not per record.
        self.count += len(records)
        if self.count > self._max_files:
            raise self._too_much(f"{self._max_files} files")

    def _too_much(self, what: str) -> TooMuchOutputError:
        return listing_too_much(
            self.host, what, "nothing is mirrored this round, and no file is recorded as deleted"
        )

    def _end_line(self, line: bytes) -> None:
        match = _END_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed end of the listing {line[:80]!r}", host=self.host)
        self.end = (int(match[1]), match[2] == b"1")
        self.tools = match[3].decode("ascii") if match[3] else ""

    def close(self) -> None:
        """End of output: a partial record left over is a :class:`ProtocolError`, and so is
        a round's output without the listing's end line."""
        self._closed = True
        if self.end is not None:
            return
        if self._sniff:
            self._pending, self._sniff = self._sniff, None
        if self._inflate is not None and not self._inflate.eof:
            raise ProtocolError("the compressed listing ended early", host=self.host)
        if self._pending:
            pending, self._pending = self._pending, b""
            raise ProtocolError(
                f"listing ended inside a record ({len(pending)} bytes: {pending[:80]!r})",
                host=self.host,
            )
        if self._trailer:
            raise ProtocolError("the listing ended without its end line", host=self.host)

    def _record(self, line: bytes, path: bytes) -> RemoteFile:
        match = _STAT_LINE.fullmatch(line)
        if match is None:
            # A login shell's rc file that echoes a banner on every command puts it before
            # the listing, and a compressed listing after it reads as that record's "path":
            # such bytes are no path to name, and the first record says where to look.
            garbled = _GZIP_MAGIC in path or _GZIP_MAGIC in line
            where = "" if garbled else f" for path {path[:200]!r}"
            first = "" if self._started else " (output printed before the listing?)"
            raise ProtocolError(
                f"malformed listing record {line[:80]!r}{where}{first}",
                host=self.host,
                path=None if garbled else path_text(path[:200]),
            )
        if path.startswith(b"./"):
            path = path[2:]
        problem = _path_problem(path)
        if problem is not None:
            raise ProtocolError(
                f"unsafe path in listing ({problem}): {path!r}",
                host=self.host,
                path=path_text(path),
            )
        size, dev, ino = int(match[1]), int(match[3]), int(match[4])
        if size > _MAX_SIZE or dev > _U64 or ino > _U64:
            raise ProtocolError(
                f"impossible numbers in listing record {line[:80]!r} for path {path!r}",
                host=self.host,
                path=path_text(path),
            )
        self._started = True
        return RemoteFile(path, size, float(match[2]), dev & _I63, ino & _I63)


# ----------------------------------------------------------------------------- fetch


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """Fetch ``length`` bytes of ``path`` (relative to the root) from offset ``start``."""

    path: bytes
    start: int
    length: int
    archive: bool = False
    """The host may answer with an entry of a tar stream instead of a ``head`` range: only for
    a whole (``start`` 0) line-committed file (see :mod:`remote_sync.mirror.archive`)."""
    detect_growth: bool = False
    """The range should reach the end of the file: the host reads one byte more, and a file
    longer than ``start + length`` ends as :class:`Changed` instead of a cut-off
    :class:`End`. For whole files that are not line-committed (a prefix of their new content
    is not a valid copy); not with ``archive``."""
    check: bool = False
    """After the read, the host sends the digest of the file's first :data:`HEAD_BYTES`
    (:class:`HeadDigest`): a head that changed while the file was read tells a copy spliced
    from two contents. For line-committed files, whose head the client has in full."""
    check_whole: bool = False
    """After the read, the host sends the digest of the whole file (:class:`HeadDigest`), hashed
    from a descriptor opened with the reader's: it differs from the bytes read when the file
    was rewritten in place meanwhile. For files copied whole, whose every byte the client
    hashes; not with ``check`` or ``archive``."""
    check_batched: bool = False
    """Once the batch's reads are done, the host sends one digest of the first
    :data:`HEAD_BYTES` of every such request of the batch that was read (:class:`HeadDigest`):
    an append fetches only the bytes after an overlap near the old end, and this is how a head
    rewritten in place since the last round (an agent saving the whole file anew with another
    first line, a tool redacting a secret to the same length) is seen. For appends whose
    overlap does not cover the head; not with another check or ``archive``."""

    @property
    def asked(self) -> int:
        """Bytes the host is asked for: one more than ``length`` with ``detect_growth``."""
        return self.length + 1 if self.detect_growth else self.length

    def __post_init__(self) -> None:
        # An empty whole file is asked for with 0 bytes: the extra byte of detect_growth
        # still tells whether it is empty.
        if self.start < 0 or self.length < 0 or (self.length == 0 and not self.detect_growth):
            raise ValueError(f"bad byte range start={self.start} length={self.length}")
        if self.archive and self.start:
            raise ValueError(f"an archive request starts at 0, not {self.start}")
        if self.archive and self.detect_growth:
            raise ValueError("an archive request cannot detect growth")
        if self.check_whole and (self.check or self.archive):
            raise ValueError("a whole-file check goes with neither a head check nor an archive")
        if self.check_batched and (self.check or self.check_whole or self.archive):
            raise ValueError("a batched head check goes with no other check and no archive")
        problem = _path_problem(self.path)
        if problem is not None:
            raise ValueError(f"bad fetch path {self.path!r}: {problem}")


_KINDS = b"GDBTA"


class FrameParser:
    """Incremental parser of a fetch's stdout into :data:`FrameEvent` s, one frame per request.

    Data is streamed: a range of any size passes through as views of the chunks fed, never
    buffered per file. Between chunks the parser holds only a possible split marker (fewer
    bytes than a marker line), so the last few bytes of a chunk may be emitted with the next.
    Anything that is not a marker line where one is expected is a :class:`ProtocolError`
    naming the host and the path of the request concerned. Output past :attr:`budget`
    (:func:`fetch_budget`, counted per chunk) is a :class:`TooMuchOutputError`: the idle
    timeout alone would let a host that keeps sending keep the fetch going for ever.
    """

    __slots__ = (
        "_archive",
        "_archive_checked",
        "_batch_checked",
        "_carry",
        "_closed",
        "_deferred",
        "_digest_for",
        "_digest_named",
        "_digest_prefix",
        "_end",
        "_end_len",
        "_ends",
        "_fed",
        "_head",
        "_head_len",
        "_in_data",
        "_index",
        "_length",
        "_received",
        "_remaining",
        "budget",
        "host",
        "marker",
        "requests",
    )

    def __init__(self, host: str, marker: bytes, requests: Sequence[FetchRequest]) -> None:
        _check_marker(marker)
        self.host = host
        self.marker = marker
        self.requests = requests
        self.budget = fetch_budget(requests)
        self._fed = 0  # bytes fed so far: at most the budget
        self._head = marker + b" "
        self._head_len = len(marker) + 3
        self._end = marker + b" E\n"
        self._end_len = len(self._end)
        self._ends = (self._end, marker + b" X\n")  # the end lines of a range frame
        self._index = 0
        self._in_data = False
        self._deferred: list[int] = []  # requests answered by the next archive frame
        self._archive: ArchiveReader | None = None
        self._archive_checked: tuple[int, ...] = ()  # its checked entries: a digest follows it
        # check_batched ranges read since the last batch digest: the batch's digest covers them
        self._batch_checked: list[int] = []
        self._digest_for: tuple[int, ...] | None = None  # requests whose K line comes next
        # Whether that line hashes the files by name (an archive's, a batch's), and so ends
        # with the inode each name had then.
        self._digest_named = False
        self._digest_prefix = marker + b" K "
        self._remaining = 0  # bytes the current frame may still hold
        self._received = 0  # bytes of the current frame so far
        self._length = 0  # the current request's length: bytes beyond it are not Data
        self._carry = b""
        self._closed = False

    def feed(self, chunk: bytes) -> list[FrameEvent]:
        if self._closed:
            raise ValueError("feed() after close()")
        self._fed += len(chunk)
        if self._fed > self.budget:
            raise self._over_budget()
        buf = self._carry + chunk if self._carry else bytes(chunk)
        self._carry = b""
        size = len(buf)
        view = memoryview(buf)
        events: list[FrameEvent] = []
        pos = 0
        while pos < size:
            archive = self._archive
            if archive is not None:
                pos = archive.feed(buf, view, pos, events)
                if archive.carry:
                    self._carry, archive.carry = archive.carry, b""
                if archive.done:
                    self._archive = None
                    if self._archive_checked:
                        self._digest_for, self._archive_checked = self._archive_checked, ()
                        self._digest_named = True
            elif self._digest_for is not None:
                pos = self._digest(buf, pos, events)
            elif self._in_data:
                pos = self._data(buf, view, pos, events)
            else:
                pos = self._header(buf, pos, events)
        return events

    @property
    def complete(self) -> bool:
        """Every request is answered and no frame or digest line is open: any further output
        is not the fetch's."""
        return not (
            self._carry
            or self._in_data
            or self._archive is not None
            or self._digest_for is not None
            or self._batch_checked
            or self._deferred
            or self._index < len(self.requests)
        )

    def close(self) -> list[FrameEvent]:
        """End of output: unanswered requests or leftover bytes are a :class:`ProtocolError`."""
        self._closed = True
        archive = self._archive
        inside = self._carry or self._in_data or archive is not None
        inside = inside or self._digest_for is not None or bool(self._batch_checked)
        pending = archive.pending() if archive is not None else []
        pending += self._deferred
        pending += range(self._index, len(self.requests))
        if inside or pending:
            index = pending[0] if pending else len(self.requests) - 1
            raise ProtocolError(
                f"fetch output ended {'inside a frame' if inside else 'before its frame'}: "
                f"{len(pending)} of {len(self.requests)} requests unanswered",
                host=self.host,
                path=path_text(self.requests[index].path) if index >= 0 else None,
            )
        return []

    def _over_budget(self) -> TooMuchOutputError:
        archive = self._archive
        if archive is not None:
            reading = archive.pending()[:1]  # the entry being read, or the next one asked for
        else:
            reading = [self._index] if self._in_data else []
        path = path_text(self.requests[reading[0]].path) if reading else None
        return TooMuchOutputError(
            f"the fetch's output passed {self.budget} bytes, the most its "
            f"{len(self.requests)} requests can bring with their framing",
            host=self.host,
            path=path,
            hint="the host sent more than it was asked for: check its tar, dd and head (a "
            "wrapper, an alias, a broken build); what was committed is kept",
        )

    def _error(self, what: str, found: bytes) -> ProtocolError:
        index = min(self._index, len(self.requests) - 1)
        path = self.requests[index].path if index >= 0 else None
        about = f" (request {index}: {path!r})" if path is not None else ""
        return ProtocolError(
            f"{what}{about}; found {found[:80]!r}",
            host=self.host,
            path=path_text(path) if path is not None else None,
        )

    def _header(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        head = self._head
        avail = len(buf) - pos
        if self._batch_checked:
            # A batch with check_batched ranges that were read ends with their digest.
            digest = self._digest_prefix
            if buf.startswith(digest, pos):
                self._digest_for, self._batch_checked = tuple(self._batch_checked), []
                self._digest_named = True
                return pos  # read by _digest
            if avail < len(digest) and digest.startswith(buf[pos:]):
                self._carry = buf[pos:]
                return len(buf)
        if self._index >= len(self.requests) and not self._deferred:
            raise self._error("unexpected output after the last frame", buf[pos:])
        if avail < self._head_len:
            part = buf[pos:]
            ok = head.startswith(part) if avail <= len(head) else part.startswith(head)
            if not ok or (avail > len(head) and part[len(head)] not in _KINDS):
                raise self._error("expected a frame marker", part)
            self._carry = part
            return len(buf)
        end = pos + self._head_len
        kind = buf[end - 2]
        if not buf.startswith(head, pos) or buf[end - 1] != 0x0A or kind not in _KINDS:
            raise self._error("expected a frame marker", buf[pos:end])
        index = self._index
        if kind == 0x41:  # A: the tar stream answering the requests deferred to it
            if not self._deferred:
                raise self._error("an archive frame with no request deferred to it", buf[pos:end])
            self._archive = ArchiveReader(self.host, self._end, self.requests, self._deferred)
            self._archive_checked = tuple(i for i in self._deferred if self.requests[i].check)
            self._deferred = []
            return end
        if index >= len(self.requests):
            raise self._error("unexpected output after the last frame", buf[pos:end])
        if kind == 0x54:  # T: this request is answered by the batch's archive frame
            if not self.requests[index].archive:
                raise self._error("a range request deferred to an archive", buf[pos:end])
            self._deferred.append(index)
            self._index = index + 1
        elif kind == 0x42:  # B
            events.append(Begin(index))
            request = self.requests[index]
            self._in_data = True
            self._length = request.length
            self._remaining = request.asked
            self._received = 0
        else:
            events.append(Gone(index) if kind == 0x47 else Denied(index))
            self._index = index + 1
        return end

    def _data(self, buf: bytes, view: memoryview, pos: int, events: list[FrameEvent]) -> int:
        remaining = self._remaining
        index = self._index
        found, split = scan_region(buf, pos, remaining, self._ends)
        if found >= 0:
            self._deliver(view, pos, found, events)
            received = self._received
            length = self._length
            if buf[found + self._end_len - 2] == 0x58:  # X: the read failed on the host
                events.append(Failed(index))
            elif received > length:  # the byte past the listed end (detect_growth)
                events.append(Changed(index))
            elif received == length:
                events.append(End(index))
            else:
                events.append(Short(index, received))
            request = self.requests[index]
            if buf[found + self._end_len - 2] == 0x45:  # E: the read went well
                if request.check or request.check_whole:
                    self._digest_for = (index,)  # the host hashed the file after the read
                    self._digest_named = False
                elif request.check_batched:
                    self._batch_checked.append(index)  # hashed at the batch's end
            self._in_data = False
            self._index = index + 1
            return found + self._end_len
        limit = pos + remaining
        if split > limit:
            raise self._error("data longer than requested, or end marker missing", buf[limit:])
        if split > pos:
            self._deliver(view, pos, split, events)
            self._remaining = remaining - (split - pos)
        self._carry = buf[split:]
        return len(buf)

    def _digest(self, buf: bytes, pos: int, events: list[FrameEvent]) -> int:
        """The line ``<marker> K <digest | ->`` after a checked range or archive, or after a
        batch's appends; the last two end with the inode of each file's name (see
        :class:`HeadDigest`)."""
        indices = self._digest_for
        assert indices is not None
        named = self._digest_named
        prefix = self._digest_prefix
        # The digest word and the newline; then, by name, a space and up to 20 digits each.
        longest = len(prefix) + MAX_DIGEST_WORD + 1 + (21 * len(indices) if named else 0)
        newline = buf.find(b"\n", pos, pos + longest)
        if newline < 0:
            part = buf[pos:]
            if len(part) >= longest or not prefix.startswith(part[: len(prefix)]):
                raise self._digest_error(buf[pos:])
            self._carry = part
            return len(buf)
        if not buf.startswith(prefix, pos):
            raise self._digest_error(buf[pos:newline])
        value, *inode_words = buf[pos + len(prefix) : newline].split(b" ")
        try:
            digest = digest_of_word(value)  # None: the host has no tool to hash with
        except ValueError:
            raise self._digest_error(buf[pos:newline]) from None
        inodes: tuple[int | None, ...] | None = None
        if inode_words:
            if not named or not all(w == b"-" or _INODE.fullmatch(w) for w in inode_words):
                raise self._digest_error(buf[pos:newline])
            if len(inode_words) == len(indices):  # else stat lost count: as if it had none
                inodes = tuple(None if w == b"-" else int(w) & _I63 for w in inode_words)
        events.append(HeadDigest(indices, digest, inodes))
        self._digest_for = None
        return newline + 1

    def _digest_error(self, found: bytes) -> ProtocolError:
        indices = self._digest_for or (0,)
        path = self.requests[indices[0]].path
        return ProtocolError(
            f"expected the head digest after request {indices[0]} ({path!r}); found {found[:80]!r}",
            host=self.host,
            path=path_text(path),
        )

    def _deliver(self, view: memoryview, pos: int, stop: int, events: list[FrameEvent]) -> None:
        """``view[pos:stop]`` is frame data: Data up to the request's length, never beyond."""
        received = self._received
        self._received = received + stop - pos
        stop = min(stop, pos + self._length - received)
        if stop > pos:
            events.append(Data(self._index, view[pos:stop]))
