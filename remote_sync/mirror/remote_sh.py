"""The ``sh`` every remote script of a host's root shares: the mirror's listing, fetch and
round (:mod:`remote_sync.mirror.remote_ops`, :mod:`remote_sync.mirror.fetch_script`) and the
``--remote`` commands (:mod:`remote_sync.index.remote_scripts`).

What it owns: entering the root (:data:`ENTER_ROOT_SH`, its failure
:data:`EXIT_ROOT_UNUSABLE`, and :func:`check_root`, the client's check of a root before it is
sent), the symlink checks of a path, of a found file and of a start point
(:data:`UNDER_SYMLINK_SH`, :data:`IS_GONE_SH`, :data:`START_POINT_SH`), the probes of dd,
head and find's ``-exec ... +`` (:data:`DD_BYTES_PROBE_SH`, :data:`FETCH_PROBES_SH`,
:data:`FIND_EXEC_END_SH`) and the marker read from stdin (:func:`read_marker_sh`). The
scripts run as separate ``sh -c`` processes, so each carries the text of the pieces it uses.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = [
    "DD_BYTES_PROBE_SH",
    "ENTER_ROOT_SH",
    "EXIT_ROOT_UNUSABLE",
    "FETCH_PROBES_SH",
    "FIND_EXEC_END_SH",
    "IS_GONE_FN_SH",
    "IS_GONE_SH",
    "START_POINT_SH",
    "UNDER_SYMLINK_SH",
    "USABLE_START_POINT_FN_SH",
    "check_root",
    "read_marker_sh",
]

#: Exit status of every script when the root directory cannot be entered or read.
EXIT_ROOT_UNUSABLE = 3


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
# is_gone PATH: whether the file PATH found a moment ago is no longer one to read: not a
# regular file now, a symlink, or below a directory that became one (narrows the window in
# which a swapped-in link could lead outside the root). IS_GONE_FN_SH alone is for a script
# that has under_symlink already: the fetch's batches carry it (a round's and the standalone
# fetch's scripts have under_symlink in the text fetch_script's SHARED_TEXT_SH holds).
IS_GONE_FN_SH = r"""is_gone() {
    [ ! -f "$1" ] || [ -L "$1" ] || under_symlink "$1"
}
"""
IS_GONE_SH = UNDER_SYMLINK_SH + IS_GONE_FN_SH
# USABLE_START_POINT_FN_SH alone is for a script that defines under_symlink otherwise: a
# round's, which holds it in the text it also hands the fetch's xargs (see fetch_script).
USABLE_START_POINT_FN_SH = r"""usable_start_point() {
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
START_POINT_SH = UNDER_SYMLINK_SH + USABLE_START_POINT_FN_SH


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
FETCH_PROBES_SH = (
    DD_BYTES_PROBE_SH
    + r"""probe_head_q() {
    if head -q -c 1 /dev/null /dev/null >/dev/null 2>&1; then head_q=y; else head_q=n; fi
}
"""
)


# find_exec_end: in $end, how find's "-exec" ends its command: "+" (the files in batches), or
# ";" (one command per file, slower but the same work) where find refuses "+": some BusyBox
# builds (FEATURE_FIND_EXEC_PLUS off) know only "-exec ... ;".
FIND_EXEC_END_SH = r"""find_exec_end() {
    end=+
    find . -maxdepth 0 -exec true {} + >/dev/null 2>&1 || end=';'
}
"""


def _check_marker_sh(what: str) -> str:
    """sh that exits 2, saying ``no valid WHAT`` on stderr, unless ``$REMOTE_SYNC_MARKER`` is a
    marker as :func:`~remote_sync.mirror.remote_ops.new_marker` makes them (hex digits), then
    exports it: the per-batch scripts get it through the environment, never a command line."""
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
    (what follows stays for the fetch), and checks and exports it as
    :func:`_check_marker_sh`."""
    return "IFS= read -r REMOTE_SYNC_MARKER || REMOTE_SYNC_MARKER=\n" + _check_marker_sh(what)


def check_root(root: str) -> None:
    if not root or "\x00" in root:
        raise ConfigError(f"invalid root directory {root!r}: empty or contains a NUL byte")
