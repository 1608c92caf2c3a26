"""The fetch's batch script: the ``sh`` that answers the client's requests with frames, and the
argv and stdin that run it.

What it owns: the sh function that answers one batch of items (``fetch_batch`` in
:data:`FETCH_BATCH_SH`), which a round runs in its own shell, once per line of items
(:data:`ROUND_FETCH_SH`, see :func:`remote_sync.mirror.remote_ops.round_argv`), or hands
to ``xargs`` where its items are many bytes, as the fetch as a command of its own does
(:func:`fetch_argv`, a round's follow-up), the functions' text once in the command
(:data:`SHARED_TEXT_SH`, :func:`batch_text_sh`); the items on their stdin
(:func:`fetch_stdin`, :func:`round_fetch_stdin`, each item's words :func:`sh_word`) and the
numbers both sides agree on
(:data:`SKIP_BLOCK`, :data:`HEAD_BYTES`, :data:`BATCH_BYTES`, :data:`PER_BATCH`, the tools word
:data:`TOOLS`). It does no I/O itself: the caller runs the argv with
:func:`remote_sync.ssh.stream.exec_streaming` and feeds the stdout chunks to
:class:`~remote_sync.mirror.fetch_frames.FrameParser`. What the scripts may use on the host,
and their exit statuses, are said in :mod:`remote_sync.mirror.remote_ops`.

Fetch (:func:`fetch_argv`, :func:`fetch_stdin`, then ``FrameParser``)
    stdin holds one NUL-terminated item ``<start>:<length>:<path>`` per
    :class:`~remote_sync.mirror.fetch_frames.FetchRequest` (any bytes in a path, no
    command-line length limit), consumed in batches by ``xargs -0 -r``. A round's items
    (:func:`round_fetch_stdin`) are the same after a line ``-<per_batch>`` where they are
    many bytes; otherwise a line of them per batch, each a shell word that the round's shell
    evals into the batch's parameters (:func:`sh_word`: any bytes in a path still, and none
    of them code). The answer to each request, in order, is a
    frame::

        <marker> G\\n                                   not a regular file (gone)
        <marker> D\\n                                   not readable (denied)
        <marker> B\\n<up to length bytes><marker> E\\n   the byte range, read successfully
        <marker> B\\n<up to length bytes><marker> X\\n   the read failed midway (EIO...)
        <marker> T\\n                                   in this batch's archive

    and a batch with ``T`` answers ends with ``<marker> A\\n<tar stream><marker> E\\n``: one
    ``tar`` reads the files of the batch's archive requests (``a`` for the start: whole
    line-committed files), instead of one ``head`` process per file
    (:mod:`remote_sync.mirror.archive` reads the stream). At most ``per_batch`` items go to
    one batch (``xargs -n``, or a round's line), and a batch ends early where its archive
    and its appends checked at its end (below) would hold more than :data:`BATCH_BYTES`,
    which nothing of is committed before the batch's digests: :func:`fetch_stdin` puts an
    item ``-`` there, :func:`round_fetch_stdin` ends the line.

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

    The marker is a random nonce per run (:func:`~remote_sync.mirror.remote_ops.new_marker`).
    It travels either in the argv or, better, as a first line on stdin: from there it reaches
    the batches through the environment (or the round's own shell), never a command line, so
    other users of the host cannot read it in the process list and forge frames from a file
    they can write.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..ssh.remote import sh_script
from .fetch_frames import FetchRequest, check_marker
from .remote_sh import (
    ENTER_ROOT_SH,
    FETCH_PROBES_SH,
    IS_GONE_FN_SH,
    UNDER_SYMLINK_SH,
    check_root,
    read_marker_sh,
)

__all__ = [
    "BATCH_BYTES",
    "FETCH_BATCH_SH",
    "HEAD_BYTES",
    "PER_BATCH",
    "ROUND_FETCH_SH",
    "SHARED_TEXT_SH",
    "SKIP_BLOCK",
    "TOOLS",
    "XARGS_BYTES",
    "XARGS_LINE_BYTES",
    "batch_text_sh",
    "fetch_argv",
    "fetch_stdin",
    "per_batch_word",
    "round_fetch_stdin",
    "sh_word",
]

#: The fetch script reaches an offset as ``dd bs=SKIP_BLOCK skip=<blocks>`` then
#: ``dd bs=1 skip=<bytes>`` (each an lseek). Offsets up to :data:`_SMALL_OFFSET` need only the
#: second: one process less for most appends, and a count any dd reads as a positive number.
SKIP_BLOCK = 65536
_SMALL_OFFSET = 2**31 - 1

#: How much of a file's head the host hashes for a checked request (as much as the state's
#: fingerprint covers).
HEAD_BYTES = 1024


#: Items per batch (``xargs -n``, or a round's line) unless the caller says otherwise. A
#: batch's archive entries wait for its head digest before they are committed, each holding
#: its descriptor.
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


def per_batch_word(count: int) -> str:
    if count < 1:
        raise ValueError(f"at least one item per batch, not {count}")
    return str(count)


#: What :func:`~remote_sync.mirror.remote_ops.round_argv` takes as ``tools`` and a round's end
#: line reports (see ``remote_ops._FIND_PROBE_SH``): how the host's find lists, whether its dd
#: reads a byte range at once, whether its head knows -q.
TOOLS = re.compile(r"[prs][ny][ny]")


# fetch_batch ITEM...: answer one batch of items, run by a round's shell in a subshell of
# its own (or, the last, in the shell itself: see ROUND_FETCH_SH), or by an "sh -c" that
# xargs starts for a round of many bytes of items or the standalone fetch (fetch_argv),
# with the functions it uses defined before it ($s and $b, see SHARED_TEXT_SH). It sets
# every variable it reads before reading it, so what the round's shell holds cannot reach
# it. The marker comes from the environment. An item "-" (the client's,
# see fetch_stdin; a round's line ends instead) ends a batch early: there the batch's
# digest of its appends and its archive are sent, as after its last item, and the next batch
# goes on in the same shell. The loop ends with such an item of its own ("$@" -), so that
# this end is written once, where the eval'd references are fetch_batch's parameters. Items are
# checked (a malformed one stops everything: exit 255 ends the round's shell, or makes xargs
# stop at once). A path whose
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
# (one stat -c %i for all, in the hasher's command substitution after a "/" line; one each,
# "-" for a name gone, when stat skipped some; none where stat lacks -c): a name on another
# file than the one listed was replaced meanwhile (a compaction renamed over it), and its
# read, from the file opened before, is still good.
# The hasher is md5sum; without it (some BusyBox builds) POSIX cksum, a CRC-32 with the byte
# count (always in coreutils, in BusyBox when built with the applet): it is only asked to
# see a change, not to resist a forger. Each digest names its tool ("md5:<hex>",
# "cksum:<CRC>:<bytes>") so the client compares it with the same kind. With neither tool,
# or when the one found prints nothing, the digest is "-".
# A file copied whole has no overlap and no line ends to check, so a long read of one ("w"
# before its start) is followed by the digest of the whole file instead: from a second
# descriptor opened with the reader's, so a file replaced by a rename meanwhile (how agents
# save their JSON indexes) is hashed as it was read, and only a rewrite in place differs.
FETCH_BATCH_SH = (
    IS_GONE_FN_SH
    + r"""probe_digest() {
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
# more per batch. The hasher's output and stat's come from one command substitution, a "/"
# line between them (neither prints a "/"; $nl is a newline), where one each was a fork more
# per batch.
head_digest() {
    if [ "$hasher" = - ]; then
        say K -
        return
    fi
    if [ "$head_q" = y ]; then
        out=$(
            head -q -c @HEAD@ "$@" 2>/dev/null | $hasher
            echo /
            stat -c %i -- "$@" 2>/dev/null
        )
    else
        out=$(
            for h do dd if="$h" bs=@HEAD@ count=1 2>/dev/null; done | $hasher
            echo /
            stat -c %i -- "$@" 2>/dev/null
        )
    fi
    inodes=${out#*/}
    out=${out%%/*}
    digest_word "${out%"$nl"}"
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
            pend="$m X\n"
        fi
    elif { [ "$blocks" = 0 ] || dd bs=@SKIP_BLOCK@ skip="$blocks" count=0 2>/dev/null; } &&
        { [ "$bytes" = 0 ] || dd bs=1 skip="$bytes" count=0 2>/dev/null; } &&
        read_rest; then
        read_done
    else
        pend="$m X\n"
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
    pend="$m E\n"
    if [ "$check" = w ]; then
        probe_digest
        opened_digest
        say K "$sum"
    elif [ "$check" = e ]; then
        read_checked="$read_checked \"./\${$i#*:*:}\""
    elif [ -n "$check" ]; then
        probe_digest
        opened_digest head
        say K "$sum"
    fi
}
# The digest of the file the reader opened (fd 4), in $sum: of its first KiB with "head",
# else of all. It runs in the batch's shell, where a command substitution around it was a
# fork more per checked file, and its word goes out through say's "%s" (dash's echo would
# end it at a "\c" in the hasher's output).
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
}
fetch_batch() {
    m=$REMOTE_SYNC_MARKER
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
                pend="$m E\n"
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
            echo "remote-sync: malformed fetch request on stdin" >&2
            exit 255
            ;;
        esac
        if is_gone "$f"; then
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
            elif is_gone "$f"; then
                say G
            elif [ ! -r "$f" ]; then
                say D
            else
                say B
                pend="$m X\n"
            fi
        fi
    done
    [ -z "$pend" ] || printf "$pend"
}
""".replace("@SKIP_BLOCK@", str(SKIP_BLOCK)).replace("@HEAD@", str(HEAD_BYTES))
)


def _sh_text(text: str) -> str:
    """``text`` as one shell word in single quotes (``'`` as ``'\\''``): how a script holds
    the text of functions, to eval it or hand it to another sh, as data."""
    return "'" + text.replace("'", "'\\''") + "'"


# The text of the fetch's functions is in a round's command once, in two variables, for the
# round's shell to eval and for each "sh -c" that xargs starts to parse: $s what a batch
# shares with the round (under_symlink and the probes of dd and head, which the listing
# uses, and $nl, a newline: a round's batch line writes one in a name as '"$nl"', and
# head_digest cuts its output at one), which a round evals at its start; $b the batch's own
# (FETCH_BATCH_SH, see batch_text_sh). The standalone fetch holds them the same way. The
# text is compacted with the script that holds it: it has no single quote of its own (the
# batch's strings are in double quotes), so it costs the wire no escapes.
SHARED_TEXT_SH = "s=" + _sh_text('nl="\n"\n' + UNDER_SYMLINK_SH + FETCH_PROBES_SH) + "\n"


def batch_text_sh(batch: str) -> str:
    """sh that sets ``$b`` to ``batch``, the text of the batch's functions (FETCH_BATCH_SH,
    or a test's stand-in)."""
    return "b=" + _sh_text(batch) + "\n"


# The fetch through xargs, of $n items a batch: xargs reads the items (NUL-terminated, as
# fetch_stdin writes them) in blocks, where a shell's read takes one byte a system call, and
# starts an sh for each batch that parses the functions' text ($s$b) and runs fetch_batch.
# Its stdin is what follows on the script's (its shell read only whole lines before).
_XARGS_SH = """exec xargs -0 -r -n "$n" sh -c "$s$b"'fetch_batch "$@"' sh\n"""


# What a round runs once its listing is done (see remote_ops._ROUND_HEAD), in its own
# shell, after $s was eval'd and with $b set (batch_text_sh), its first line of stdin read
# into $line. Two ways to fetch, as the client chose by the items' size (round_fetch_stdin):
#
# - A first line "-<n>" (no batch line starts with "-": an item starts with its offset or
#   a letter) hands the rest of stdin, NUL-terminated items, to xargs, $n a batch (_XARGS_SH),
#   the round's shell replaced. This is a big round's way (a first sync, a catch-up): the
#   shell's read takes one byte a system call, where xargs reads blocks, and under dash 1.6 MB
#   of items (a first sync of 20,000 files, 20 lines of 1,000) cost the host 0.38 s of CPU
#   read by the shell against 0.04 s through xargs; an xargs and an sh that parses the
#   functions again for each batch are little beside that.
# - Otherwise the round evals $b and runs each line as a batch in its own shell: the items of
#   a line written as shell words (round_fetch_stdin), which eval makes the positional
#   parameters. A batch runs in a subshell of its own (a fork, no exec, no new sh to parse the
#   batch script: an xargs and an "sh -c" per batch cost a host about 2 ms of CPU a round), so
#   that nothing it sets or probes reaches the next, with its stdin on /dev/null (its items
#   are not its to read); the last runs in the round's shell itself, a fork fewer, as nothing
#   follows it: the line after a batch is read before it runs (the client sends them all at
#   once). Only whole lines run: a line cut by a dropped connection (no newline) is read as
#   EOF. A batch that fails (a malformed item: 255) ends the round with its status, as xargs
#   stops (with 124). A name holds a newline as '"$nl"' (one batch is one line, $nl set by
#   $s); every other byte of a name is in single quotes or one shlex.quote
#   leaves bare. The lines are read and eval'd in the C locale (set before the first line is
#   read), where a shell takes each byte as a character: bash in a UTF-8 one loses a \001
#   (its own quoting byte) that follows a byte that cannot start a character.
ROUND_FETCH_SH = (
    r"""case $line in
-*)
    n=${line#-}
"""
    + _XARGS_SH
    + r"""esac
eval "$b"
while IFS= read -r next; do
    eval "set -- $line"
    (fetch_batch "$@") </dev/null || exit
    line=$next
done
eval "set -- $line"
fetch_batch "$@" </dev/null
"""
)


# $1 root, $2 the items per batch, $3 the marker, or "" when it is the first line of stdin
# (read byte by byte by the shell, so xargs gets the rest of stdin intact), $4 the tools
# word a round found (see remote_ops._ROUND_HEAD; "": the batches probe what they use),
# which reaches the batches as REMOTE_SYNC_TOOLS. Entering the root here, before xargs,
# gives a clean exit status 3 (xargs would turn it into 123); the batches inherit the
# directory. This fetch is a round's rare follow-up, which may carry many items: it runs
# them through xargs as a big round does (_XARGS_SH), its functions' text set as a round's.
_FETCH_SCRIPT = (
    ENTER_ROOT_SH
    + 'n=$2\nREMOTE_SYNC_MARKER=$3\n[ -n "$REMOTE_SYNC_MARKER" ] || '
    + read_marker_sh("fetch marker")
    + r"""REMOTE_SYNC_TOOLS=$4
export REMOTE_SYNC_TOOLS
"""
    + SHARED_TEXT_SH
)


def fetch_argv(
    root: str, marker: str | None = None, *, per_batch: int = PER_BATCH, tools: str = ""
) -> list[str]:
    """argv of the multi-file fetch under ``root``; the requests go on stdin (fetch_stdin).

    Give the marker here *or* to :func:`fetch_stdin`, not both. On stdin it is preferable:
    a command line is visible to every user of the host (``ps``), and a user who knows the
    marker and can write a file being fetched can forge frames for the files after it.

    ``tools`` is what a round's end line said of the host's tools (as
    :func:`~.remote_ops.round_argv` takes it): its batches then probe neither dd nor head,
    as the round's did not. "" has each batch probe what it uses. Only what was found over
    the same connection, in the same round or a clean one before, should be passed.
    """
    check_root(root)
    if marker is not None:
        check_marker(marker.encode("ascii", "replace"))
    if tools and not TOOLS.fullmatch(tools):
        raise ValueError(f"bad tools word {tools!r}")
    # Put together here, not at import, so that a test can change the batch's functions.
    script = _FETCH_SCRIPT + batch_text_sh(FETCH_BATCH_SH) + _XARGS_SH
    return sh_script(script, root, per_batch_word(per_batch), marker or "", tools)


def _batches(requests: Sequence[FetchRequest], batch_bytes: int) -> list[list[bytes]]:
    """The items of ``requests``, ``<start>:<length>:<path>``, in batches that each hold at
    most ``batch_bytes`` until their end (see :data:`BATCH_BYTES`; a request larger than that
    is a batch of its own).

    ``start`` is ``a`` for an archive request, else ``<blocks>+<bytes>``, after an ``h`` for a
    request with ``check``, a ``w`` for one with ``check_whole`` or an ``e`` for one with
    ``check_batched``. ``<blocks>+<bytes>`` is the offset as :data:`SKIP_BLOCK` blocks plus
    bytes, so that the host does no arithmetic and no tool there sees a number above 2**31
    for any file below 128 TiB. ``length`` is one more than requested with ``detect_growth``
    (the parser tells a longer file by that byte)."""
    if batch_bytes < 1:
        raise ValueError(f"at least one byte per batch, not {batch_bytes}")
    batches: list[list[bytes]] = [[]]
    held = 0  # bytes of this batch that wait for its end
    for request in requests:
        if request.archive or request.check_batched:
            if held and held + request.length > batch_bytes:
                batches.append([])
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
        batches[-1].append(b"%s%s:%d:%s" % (check, start, request.asked, request.path))
    return batches


def fetch_stdin(
    requests: Sequence[FetchRequest], marker: str | None = None, *, batch_bytes: int = BATCH_BYTES
) -> bytes:
    """The fetch's stdin: one ``<start>:<length>:<path>\\0`` item per request, and an item
    ``-`` that ends a batch early wherever the next request would take the bytes its batch
    holds until its end (see :data:`BATCH_BYTES`) over ``batch_bytes``: a request larger than
    that is a batch of its own. The items are as :func:`_batches` says.

    With ``marker`` (when it was not given to :func:`fetch_argv`), a first line holds it.
    """
    head = b""
    if marker is not None:
        check_marker(marker.encode("ascii", "replace"))
        head = marker.encode("ascii") + b"\n"
    return head + _nul_items(_batches(requests, batch_bytes))


def _nul_items(batches: list[list[bytes]]) -> bytes:
    """``batches`` as xargs takes them: each item NUL-terminated, an item ``-`` between two
    batches. The cuts xargs makes by count are not followed here: a batch after one only
    ends sooner than it had to."""
    parts: list[bytes] = []
    for n, batch in enumerate(batches):
        if n:
            parts.append(_BATCH_END)
        parts.extend(item + b"\x00" for item in batch)
    return b"".join(parts)


#: What an item may hold unquoted on a round's batch line: what shlex.quote leaves as it is.
_UNSAFE = re.compile(rb"[^\w@%+=:,./-]").search


def sh_word(item: bytes) -> bytes:
    """``item`` as one shell word on one line, as :func:`shlex.quote` writes it but on bytes
    (a file name need not be UTF-8): as it is when it holds only letters, digits and
    ``@%+=:,./-_``, else in single quotes, ``'`` as ``'\\''`` and a newline as ``'"$nl"'``
    (``nl`` is a newline in the round's shell, see ``ROUND_FETCH_SH``)."""
    if item and not _UNSAFE(item):
        return item
    return b"'" + item.replace(b"'", b"'\\''").replace(b"\n", b"'\"$nl\"'") + b"'"


#: Where a round's items go to xargs rather than through its shell's read (ROUND_FETCH_SH):
#: past this many bytes of items (NUL-terminated, as xargs takes them), and
#: :data:`XARGS_LINE_BYTES` more for each line they would make. Below, a shell reads them
#: for less than xargs and an sh a batch cost. Measured on a host's side (docs/benchmarks.md,
#: "A first sync's items"): the shell's read costs some 0.3 us a byte under dash, 0.56 under
#: bash; for one line the ways cross at about 6 KB of items under dash, below 4 KB under
#: bash; ten lines of 3.3 KB cost dash 0.4 ms more through xargs, bash 10 ms less. An
#: incremental round (ten appends, 1 KB) stays in the shell.
XARGS_BYTES = 4096
XARGS_LINE_BYTES = 2048


def round_fetch_stdin(
    requests: Sequence[FetchRequest],
    *,
    per_batch: int = PER_BATCH,
    batch_bytes: int = BATCH_BYTES,
) -> bytes:
    """What a round's stdin goes on with after its marker line (see
    :func:`~.remote_ops.round_argv`): the batches of ``requests``, at most ``per_batch``
    items and ``batch_bytes`` held bytes each (:func:`_batches`); nothing when there are
    none, so that the round ends without a fetch.

    A round of few items (every incremental one) gets a line per batch, its items written as
    shell words (:func:`sh_word`) that the round's shell evals into the batch's parameters. A
    round whose items are many bytes (more than :data:`XARGS_BYTES` and
    :data:`XARGS_LINE_BYTES` a line; a first sync, a catch-up) gets a line ``-<per_batch>``
    and the items as :func:`fetch_stdin` writes them, for xargs to read in blocks."""
    per_batch_word(per_batch)
    batches = _batches(requests, batch_bytes)
    lines = sum(-(-len(batch) // per_batch) for batch in batches)
    # The items' own bytes: their lines differ only by the quotes of an odd name.
    size = sum(len(item) + 1 for batch in batches for item in batch)
    if size > XARGS_BYTES + lines * XARGS_LINE_BYTES:
        return b"-%d\n" % per_batch + _nul_items(batches)
    return b"".join(
        b" ".join(map(sh_word, batch[at : at + per_batch])) + b"\n"
        for batch in batches
        for at in range(0, len(batch), per_batch)
    )
