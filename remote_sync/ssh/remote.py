"""Building the command lines we run on remote hosts.

Remote hosts are assumed to have a POSIX ``sh`` and coreutils or BusyBox, nothing more (no
Python). Every remote command is built here from an argv list with :func:`shlex.quote`: a file
name is data, never code. Names that are not valid UTF-8 cannot travel in a command line (SSH
carries the command as text), so the engine sends such names on the command's stdin instead.

Every command is wrapped so that its first stderr line reports its process id. The remote
process is a process-group leader (sshd calls ``setsid`` for each session), so a cancel can stop
the whole group with ``kill`` even when the server ignores SSH signal requests (OpenSSH < 7.9).

The defaults every caller of these commands shares live here too: how long a command may send
nothing (:data:`IDLE_TIMEOUT`, checked for the CLI and the library alike by
:func:`checked_idle_timeout`) and how many hosts are worked on at once (the CLI's check of it:
:func:`check_concurrency`).
"""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Sequence

from ..errors import ArgumentError, ConfigError

#: How much of a remote command's stderr a stream keeps: its last bytes (a message cut at
#: the front of what is kept is said to be, where it is parsed).
STDERR_TAIL_BYTES = 8 * 1024

#: Prefix of the first stderr line of every wrapped command.
PID_MARKER = b"remote-sync-pid "
#: Seconds a remote command may go without sending a byte before it counts as hung (rsync's
#: ``--timeout``; the CLI's ``--timeout``). Dead links are found sooner by the keepalives.
IDLE_TIMEOUT = 120.0


def checked_idle_timeout(value: object) -> float | None:
    """An idle timeout as a caller gave it, the library's ``idle_timeout`` or the CLI's
    ``--timeout`` read as a number, checked by the one rule both follow: 0 (or None, in the
    library) is no limit, anything else a finite number of seconds. Infinity is refused
    rather than taken as a second way to say "no limit", and so are NaN (a host's round
    failed deep inside on it), negatives (every host failed at once) and what is not a
    number: an :class:`~remote_sync.errors.ArgumentError` naming the argument and the option,
    saying to pass 0 for no limit. Returns ``value`` as it was (the stream reads 0 as no
    limit)."""
    if value is None:
        return None
    # Infinity is above the largest float, and so is an int too large to be one (the timers
    # take floats); NaN is in no range. (The isinstance is for the type checker.)
    if isinstance(value, (int, float)) and in_range(value, float, 0, sys.float_info.max):
        return value
    raise ArgumentError(
        "idle_timeout (--timeout) must be 0 (no limit) or a finite number of seconds, "
        f"not {value!r}",
        hint="pass how many seconds a remote command may send nothing, or 0 for no limit "
        "(None too, in the library)",
    )


def in_range(value: object, kind: type, least: float | None, most: float | None) -> bool:
    """Whether ``value`` is of ``kind`` and from ``least`` to ``most`` (None: no bound). A
    bool ``kind`` takes a bool; int, a whole number, never a bool; float, an int or a float,
    never a bool or NaN."""
    if kind is bool:
        return isinstance(value, bool)
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        return False
    # Compared so that NaN, which no comparison holds for, is out of range.
    return (least is None or value >= least) and (most is None or value <= most)


#: Hosts worked on at once unless told otherwise: by ``sync`` and by a remote listing (the
#: CLI's ``--concurrency``).
CONCURRENCY = 8


def check_concurrency(concurrency: int) -> None:
    """The CLI's ``--concurrency`` checked, by ``sync`` and ``sessions list --remote`` and by
    the agent for a request (which its client sent unchecked), in the same words: a
    :class:`~remote_sync.errors.ConfigError` below 1 (exit 2). The library's callers are
    checked apart, as an argument (``apicall.checked_tuning``)."""
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")


# Runs under the user's login shell (bash, dash, zsh, ash, fish: the outer "exec sh -c"
# hands over to POSIX sh at once). "$$" is then the pid sshd started, which is also the process
# group id; "exec" keeps that pid for the real command (a script runs in that sh itself, after
# the report: see wrapped_command). fish reads "\\" and "\'" inside single
# quotes as escapes: the scripts contain neither, and every backslash of an argument (a root, a
# start point) is quoted apart (see quote_word). csh and tcsh as login shells are not
# supported: they reject a newline inside quotes and expand "!" there, and the scripts have
# both.
_PID_REPORT = 'echo "remote-sync-pid $$" >&2'
_WRAPPER = _PID_REPORT + '; exec "$@"'


def quote_argv(argv: Sequence[str]) -> str:
    """Quote an argv list into one POSIX shell command line."""
    if not argv:
        raise ValueError("empty remote command")
    for arg in argv:
        if "\x00" in arg:
            raise ValueError("a remote argument cannot contain a NUL byte")
    return " ".join(quote_word(arg) for arg in argv)


def quote_word(arg: str) -> str:
    """``arg`` quoted for every login shell: :func:`shlex.quote`, with two changes for fish.

    The login shell reads the command line before sh does, and fish, unlike POSIX shells,
    takes ``\\\\`` and ``\\'`` inside single quotes as escapes and expands a bare ``%self``. So each
    backslash is quoted apart, as ``"\\\\"`` (one backslash to both), and every other piece is in
    single quotes, even one shlex would leave bare.
    """
    return '"\\\\"'.join(_single_quoted(piece) for piece in arg.split("\\"))


def _single_quoted(piece: str) -> str:
    quoted = shlex.quote(piece)
    return quoted if quoted.startswith("'") else f"'{quoted}'"


def wrapped_command(argv: Sequence[str]) -> str:
    """The command line sent to sshd: argv, run by ``sh`` after reporting its pid on stderr.

    A script of :func:`sh_script` runs in that same ``sh``, after the report: one start of
    ``sh`` a command instead of two, which a round of a fleet's host pays every time."""
    if len(argv) >= 4 and argv[0] == "sh" and argv[1] == "-c":
        if "\x00" in argv[2]:  # quote_argv checks the rest
            raise ValueError("a remote argument cannot contain a NUL byte")
        script = _PID_REPORT + "\n" + argv[2]
        return f"exec sh -c {quote_word(script)} {quote_argv(argv[3:])}"
    return f"exec sh -c {shlex.quote(_WRAPPER)} sh {quote_argv(argv)}"


def sh_script(script: str, *args: str) -> list[str]:
    """argv that runs a POSIX sh script with positional arguments (``$1``...), the script
    as :func:`compact_sh` makes it."""
    return ["sh", "-c", compact_sh(script), "sh", *args]


@functools.lru_cache(maxsize=32)
def compact_sh(script: str) -> str:
    """``script`` as it goes on the wire: without its comment lines, blank lines and the
    indentation of its lines.

    A command's text travels whole with every command (in the exec request, or as an
    argument the script hands to ``xargs sh -c``), every round, so the comments and
    indentation that keep the scripts readable here were about a fifth of a round's upload. Lines
    are kept as they are otherwise (a "#" inside a line, as in ``${root#"~/"}``, is no
    comment to strip). This is only right for a script where no quoted text that is data
    spans lines: the leading blanks and "#" lines of such text would be lost. None of ours
    has any (the quoted text over several lines is code, the stat loop given to find's ``sh
    -c``, or a lone newline, the round's ``nl``, which loses nothing), and none uses a
    here-document.
    """
    lines = (line.lstrip(" \t") for line in script.split("\n"))
    return "".join(f"{line}\n" for line in lines if line and not line.startswith("#"))


# $1 is the process group. Run by sh, not by the login shell: fish reads "( ... )" as a
# command substitution.
_KILL_GROUP = (
    'kill -TERM -"$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null; '
    '(sleep 1; kill -KILL -"$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null) '
    "</dev/null >/dev/null 2>&1 & exit 0"
)


def kill_group_command(pid: int) -> str:
    """Stop a remote process group: TERM now, KILL a second later, without waiting for it.

    The delayed KILL runs detached with its fds on /dev/null so the channel closes at once.
    """
    if pid <= 1:
        raise ValueError(f"refusing to signal pid {pid}")
    return quote_argv(["sh", "-c", _KILL_GROUP, "sh", str(pid)])
