"""The remote operations of a sync round: the listing, the multi-file fetch, and both in one.

This module owns their POSIX ``sh`` scripts and the argv (and stdin) that run them. It does
no I/O itself: the caller runs the argv with :func:`remote_sync.ssh.stream.exec_streaming`
and feeds the stdout chunks to the incremental parsers of their output,
:class:`~remote_sync.mirror.listing.ListingParser` for the listing and
:class:`~remote_sync.mirror.fetch_frames.FrameParser` for the fetch's frames.

Remote hosts have only POSIX ``sh`` plus coreutils *or* BusyBox, so the scripts use nothing
else (``find``, ``stat``, ``head``, ``dd``, ``tar``, ``gzip``, ``xargs``, ``printf``). A file
name is data, never code: names travel as positional arguments or on stdin. What ``eval``
sees is never a file name's text: a user name checked to be portable (``~user``), or
references to positional parameters by number (the fetch's tar command line).

Exit statuses (every operation): 0 on success, also when ``find`` could not read some
directory (its messages stay on stderr, for the caller to report naming the host, and each
path find could not read: :func:`~remote_sync.mirror.listing.unread_paths`, said as errors by
:func:`~remote_sync.mirror.listing.listing_errors`); :data:`EXIT_ROOT_UNUSABLE` (3) when the
root directory is missing, not a directory or not readable. Anything else is an unexpected
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
    client has sent an empty line, the fetch items and EOF (:func:`round_fetch_stdin`), the
    fetch's frames; an EOF with no items ends the round without starting the fetch.
    On stderr ``<marker> L`` separates the listing's messages from the fetch's.

Fetch (:func:`fetch_argv`, :func:`fetch_stdin`, then ``FrameParser``)
    stdin holds one NUL-terminated item ``<start>:<length>:<path>`` per
    :class:`~remote_sync.mirror.fetch_frames.FetchRequest` (any bytes in a path, no
    command-line length limit), consumed in batches by ``xargs -0 -r``. The answer to each
    request, in order, is a frame::

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
    read (:class:`~remote_sync.mirror.fetch_events.HeadDigest`). A request with
    ``check_whole`` (``w`` before its start) gets the same line with the digest of the whole
    file, read from a descriptor opened before the read: for files copied whole, which have
    no head the client could trust on its own.
    Requests with ``check_batched`` (``e`` before the start) share one such line, after the
    last item of their batch (before its archive): the digest of the first KiBs of those whose
    range ended with ``E``, in order. That is how an append finds its file's head rewritten
    in place since the last round, for one ``head``, ``md5sum`` (or ``cksum``) and ``stat``
    per batch. These two lines, which hash by name, end with the inode of each name just after
    (``<marker> K <digest> <inode | ->...``): a name on another file than the one listed was
    replaced since (:class:`~remote_sync.mirror.fetch_events.HeadDigest`).

    A range is read from the file opened once: one ``dd`` with byte counts seeks and reads
    where ``dd`` knows ``iflag=skip_bytes,count_bytes``; elsewhere ``dd`` seeks (``skip``, no
    copy) and ``head -c`` reads. The reader's exit status picks the end line. Fewer than
    ``length`` bytes before ``E`` (the file shrank) is a short frame: the parser finds the end
    line inside the data window and resynchronizes on it. With ``detect_growth`` the host
    reads one byte more than asked: when it arrives, the file is longer than listed
    (:class:`~remote_sync.mirror.fetch_events.Changed`). The events the parser makes of the
    frames, and the most output a fetch may send, are said in
    :mod:`remote_sync.mirror.fetch_frames`.

    The marker is a random nonce per run (:func:`new_marker`). It travels either in the argv
    or, better, as a first line on stdin: from there it reaches the per-batch scripts through
    the environment, never a command line, so other users of the host cannot read it in the
    process list and forge frames from a file they can write.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from ..errors import ConfigError
from ..ssh.remote import compact_sh, sh_script
from .fetch_frames import FetchRequest, check_marker

__all__ = [
    "BATCH_BYTES",
    "DD_BYTES_PROBE_SH",
    "ENTER_ROOT_SH",
    "EXIT_ROOT_UNUSABLE",
    "HEAD_BYTES",
    "PROBE_TOOLS",
    "SKIP_BLOCK",
    "fetch_argv",
    "fetch_stdin",
    "listing_argv",
    "listing_end_marker",
    "new_marker",
    "probe_roots_argv",
    "probed_roots",
    "read_marker_sh",
    "round_argv",
    "round_fetch_stdin",
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
_START_POINTS_SH = (
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
"""
)
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
""".replace("@VANISHED@", _VANISHED)
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
pend=
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
# say KIND [WORDS]: write the frame line "<marker> KIND[ WORDS]", after the end line of a
# range that waits in $pend. A range's end line (E, X) is not written at once but with the
# batch's next line, in one write: a grown file costs the host two writes (its B line with
# the last file's E line, then its data), where each line of its own was a packet more
# from sshd to the client. $pend is printf format text (the marker is hex digits, so it holds
# no "%"); WORDS go through "%s", as a hasher's output may hold a backslash. Where stdout is
# line-buffered (bash) each line is still a write of its own.
say() {
    if [ "$#" = 1 ]; then
        printf "$pend$m %s\n" "$1"
    else
        printf "$pend$m %s %s\n" "$1" "$2"
    fi
    pend=
}
# The K line of the digest of the first KiBs of "$@", then their inodes. It prints that
# line itself, from the batch's shell, where a command substitution around it was a fork
# more per batch.
head_digest() {
    if [ "$hasher" = - ]; then
        say K -
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
    for ino in $inodes; do sum="$sum $ino"; done
    say K "$sum"
}
read_range() {
    opened=1
    say B
    [ -n "$dd_bytes" ] || probe_dd_bytes
    if [ "$dd_bytes$blocks" = y0 ] && [ "${#len}" -le 9 ]; then
        if dd iflag=skip_bytes,count_bytes bs=65536 skip="$bytes" count="$len" status=none 2>&3
        then
            read_done
        else
            pend="$m"' X\n'
        fi
    elif { [ "$blocks" = 0 ] || dd bs=@SKIP_BLOCK@ skip="$blocks" count=0 2>/dev/null; } &&
        { [ "$bytes" = 0 ] || dd bs=1 skip="$bytes" count=0 2>/dev/null; } &&
        read_rest; then
        read_done
    else
        pend="$m"' X\n'
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
    pend="$m"' E\n'
    if [ "$check" = w ]; then
        probe_digest
        say K "$(opened_digest)"
    elif [ "$check" = e ]; then
        read_checked="$read_checked \"./\${$i#*:*:}\""
    elif [ -n "$check" ]; then
        probe_digest
        say K "$(opened_digest head)"
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
            eval "head_digest $read_checked"
        fi
        if [ -n "$archived" ]; then
            say A
            eval "tar --no-recursion --numeric-owner -cf - $archived" 2>/dev/null
            pend="$m"' E\n'
            if [ -n "$archived_checked" ]; then
                probe_digest
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
        [ -z "$pend" ] || printf "$pend"
        echo 'remote-sync: malformed fetch request on stdin' >&2
        exit 255
        ;;
    esac
    if is_gone; then
        say G
    elif [ ! -r "$f" ]; then
        say D
    elif [ "$archive$tar_ok" = 1y ]; then
        say T
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
            say G
        elif [ ! -r "$f" ]; then
            say D
        else
            say B
            pend="$m"' X\n'
        fi
    fi
done
[ -z "$pend" ] || printf "$pend"
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
# The listing (list_round) runs as the left side of a pipe, a subshell, its stdin on /dev/null
# (so the items stay for xargs), its stdout straight to ours (gzip-compressed or plain as in
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
# status; otherwise the fetch follows, when the client has items for it: they come after an
# empty line (round_fetch_stdin), and an EOF instead ends the round without starting xargs,
# a process fewer a host with nothing to fetch.
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
    + "list_round() {\n"
    + _START_POINTS_SH
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
    case $st in
    0 | 1) st=0 ;;
    3) st=4 ;;
    esac
    case $gz in
    0) ;;
    "") st=2 ;;
    *)
        # A cut compressed stream must not pass for a listing (its end line would be
        # read as more compressed data).
        printf 'remote-sync: gzip failed (status %s); the listing is incomplete\n' "$gz" >&2
        w=1
        st=5
        ;;
    esac
    printf '%s L\n' "$m" >&2
    printf 'L %s %s%s\n' "$st" "$w" "${REMOTE_SYNC_TOOLS:+ $REMOTE_SYNC_TOOLS}"
    return "$st"
}
m=$REMOTE_SYNC_MARKER
{ list_round "$@" 2>&1 >&5 5>&- </dev/null | listing_end; } 5>&1
st=$?
""".replace("@VANISHED@", _VANISHED)
    + r"""[ "$st" = 0 ] || exit "$st"
IFS= read -r go || exit 0
exec xargs -0 -r -n "$per_batch" sh -c "$batch" sh
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
#: What :func:`round_argv` takes as ``tools`` and a round's end line reports (see
#: ``_FIND_PROBE_SH``): how the host's find lists, whether its dd reads a byte range at once,
#: whether its head knows -q.
_TOOLS = re.compile(r"[prs][ny][ny]")


def round_argv(
    root: str, start_points: Sequence[str], *, per_batch: int = PER_BATCH, tools: str = ""
) -> list[str]:
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
        check_marker(marker.encode("ascii", "replace"))
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
        check_marker(marker.encode("ascii", "replace"))
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
