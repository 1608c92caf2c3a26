"""The command line: parse arguments, run the engine or read the index, map errors to exit codes.

Thin on purpose: everything it does is also reachable from the library API. Commands:

* ``sync``: mirror hosts into DIR (the engine; rich progress or ``--json`` events).
* ``sessions list`` / ``sessions show`` / ``sessions stats``: read the session index of a
  mirror (read-only: they take no lock and never block a running sync).
* ``index rebuild``: recompute the index from the mirrored files (takes the lock).
* ``versions list`` / ``versions restore``: the earlier copies a sync kept of rewritten files,
  and one copied out (read-only on the mirror: no lock); ``versions prune``: those no keep
  rule keeps removed (takes the lock, like a sync; ``--dry-run`` only reads).
* ``check``: whether the mirror holds what its state says (read-only: no lock, no host
  asked); exit 1 when it found damage.
* ``agent``: a daemon that keeps the hosts' connections open and serves syncs of DIR over
  its control socket (:mod:`remote_sync.agent`); ``sync`` goes through it when one answers
  there and can serve it (:func:`_sync_through_agent`: no asyncssh imported, the events shown
  and the exit code derived as in a run of its own), else runs the sync itself.

Exit codes (scripts rely on them): 0 success; 1 some hosts or files failed (the rest synced or
was listed), a mirrored file could not be read, or ``check`` found damage; 2 usage or
configuration error (no mirror, no such host or session, a value out of range); 75 the
destination is locked by another run (nothing touched; try again later, like EX_TEMPFAIL); 130
cancelled (Ctrl-C, or SIGTERM: every command but ``agent`` takes it as a Ctrl-C). A reader
that closes the pipe early (``| head``) is no error: the command finishes its work (a sync its
mirror, a check its files) and exits with the code it would have had, 0 for a listing. Output
that cannot be written otherwise (stdout on a full disk) is a failure, exit 1, said on stderr:
the report a script reads is incomplete, though a sync still goes on to its end.

``--dest`` of the read commands defaults to ``$REMOTE_SYNC_DEST``, else ``./mirror``; an empty
``--dest`` is a usage error everywhere (``Path("")`` would be the current directory).

Everything printed for a person goes through rich as plain Text (``render.plain``): session
titles, message text, paths and host names are data, never markup.

Start-up cost matters (``sessions list --json`` over 10,000 sessions runs in well under half a
second), so this module imports only the standard library's argument parsing at import time:
the engine, asyncssh, anyio and rich are imported inside the commands that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import ConfigError, OutputError, RemoteSyncError
from .ssh.remote import CONCURRENCY, IDLE_TIMEOUT, check_concurrency, checked_idle_timeout

if TYPE_CHECKING:
    import signal
    import sqlite3

    from rich.console import Console
    from rich.text import Text

    from .agent import Agent
    from .agent_link import AgentLink
    from .events import Emit, Event
    from .index.query import SessionRow, StatsRow
    from .index.show import ShowResult
    from .inventory import Host, Inventory
    from .mirror.check import CheckSummary, Problem
    from .mirror.engine import SyncOptions
    from .mirror.versions import PruneResult, VersionRow

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_CANCELLED = 130

#: The first commands to type, shown below the help of the commands they use and alone with
#: no command at all (argparse would only say that a command is required).
FIRST_RUN = """first run (reaches hosts as ssh does: ~/.ssh/config, ssh-agent, known_hosts):
  remote-sync sync me@box --dest ./mirror
  remote-sync sync me@box --dest ./mirror --format claude-code   # or codex, picoclaw, pi
  remote-sync sessions list --dest ./mirror"""

#: Where the read commands look for the mirror when ``--dest`` is not given.
DEST_ENV = "REMOTE_SYNC_DEST"
DEFAULT_DEST = "mirror"

_CLASSES = ("empty", "low", "valuable")
_STATES = ("live", "archived", "deleted", "rewritten", "renamed")
_STATS_KEYS = ("host", "agent", "format", "model", "day")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors also reach a script that asked for ``--json``:
    one ``error`` line on stdout (kind ``config``) before the usage text on stderr and exit 2.
    Its subcommands' parsers are of the same class."""

    #: Set by :func:`main` from the words of the command line, before parsing them.
    json_wanted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if _Parser.json_wanted:
            hint = f"see {self.prog} --help"
            _write_error_events([ConfigError(f"{self.prog}: {message}", hint=hint)])
            with contextlib.suppress(OSError):
                sys.stdout.flush()
        super().error(message)


class _Formatter(argparse.HelpFormatter):
    """argparse's, except that an indented line of a description or epilog (a command to
    copy) is kept whole: wrapping would cut it, even after the '-' of claude-code."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line
            if line.startswith("  ")
            else super(_Formatter, self)._fill_text(line, width, indent)
            for line in text.split("\n")
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="remote-sync",
        description="Mirror AI-agent session transcripts from hosts over SSH.",
        epilog=FIRST_RUN,
    )
    parser.add_argument("--version", action="version", version=f"remote-sync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sync(sub)
    _add_sessions(sub)
    _add_index(sub)
    _add_versions(sub)
    _add_check(sub)
    _add_agent(sub)
    return parser


def _add_sync(sub: Any) -> None:
    sync = sub.add_parser(
        "sync",
        help="bring the mirror up to date with every host",
        description="Bring DIR up to date with each host's session files, moving only new "
        "bytes. A HOST not in the inventory is an ad-hoc [user@]host[:port] or ssh_config alias.",
        epilog=FIRST_RUN,
    )
    sync.set_defaults(run=run_sync)
    sync.add_argument(
        "hosts", nargs="*", metavar="HOST", help="hosts to sync (default: all, or those of --tag)"
    )
    sync.add_argument("--inventory", "-I", metavar="FILE", help="inventory TOML file")
    sync.add_argument("--dest", "-d", metavar="DIR", required=True, help="mirror directory")
    sync.add_argument(
        "--tag",
        "-t",
        action="append",
        default=[],
        metavar="T",
        help="hosts with this tag, besides any HOST named (repeatable: any of them)",
    )
    _concurrency_option(sync, "synced", CONCURRENCY)
    sync.add_argument("--dry-run", "-n", action="store_true", help="show what would move")
    sync.add_argument(
        "--no-index",
        action="store_true",
        help="mirror only: the sessions whose bytes move leave the index until the next sync "
        "without it, which indexes them from the mirror",
    )
    sync.add_argument("--json", action="store_true", help="JSON lines on stdout")
    sync.add_argument(
        "--no-agent",
        action="store_true",
        help="run the sync in this process even when a remote-sync agent serves DIR",
    )
    _timeout_option(sync)
    sync.add_argument(
        "--compress",
        "-z",
        action="store_true",
        help="SSH compression for hosts whose inventory entry does not set 'compression' "
        "(like ssh -C or rsync -z: for slow links; on a LAN it only costs CPU)",
    )
    adhoc = sync.add_argument_group("ad-hoc hosts (not in the inventory)")
    from .formats import FORMATS  # the registry alone: no engine, no asyncssh

    adhoc.add_argument("--format", help=f"session format: {', '.join(FORMATS)} (default openclaw)")
    adhoc.add_argument("--root", help="remote directory (default: the format's)")
    adhoc.add_argument(
        "--ssh-config",
        "-F",
        metavar="FILE",
        help="OpenSSH client config, read as ssh -F reads it (default: ~/.ssh/config, then "
        "/etc/ssh/ssh_config)",
    )
    adhoc.add_argument("--known-hosts", metavar="FILE", help="known_hosts file")
    adhoc.add_argument("--identity", "-i", metavar="FILE", help="identity (private key) file")
    adhoc.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown host keys on first contact (OpenSSH accept-new); "
        "a changed key is still refused",
    )


def _add_agent(sub: Any) -> None:
    agent = sub.add_parser(
        "agent",
        help="keep the hosts' connections open and serve syncs of DIR (a daemon)",
        description="Run in the foreground, keeping each host's SSH connection open between "
        "syncs (as ssh's ControlPersist does), and serve `remote-sync sync --dest DIR` "
        "over the socket DIR/.remote-sync/agent.sock: such a sync of the inventory's hosts "
        "goes through the agent, its output and exit code the same. Stops on SIGTERM (exit 0) "
        "or Ctrl-C (exit 130), cancelling the sync running.",
        epilog="example (as a systemd service: deploy/remote-sync-agent.service):\n"
        "  remote-sync agent --inventory inventory.toml --dest ./mirror --every 15m --json",
    )
    agent.set_defaults(run=run_agent)
    agent.add_argument("--inventory", "-I", metavar="FILE", required=True, help="inventory TOML")
    agent.add_argument("--dest", "-d", metavar="DIR", required=True, help="mirror directory")
    agent.add_argument(
        "--every",
        type=_duration,
        metavar="DURATION",
        help="also sync every host on this period (30s, 15m, 1h, ...), the first at once",
    )
    agent.add_argument(
        "--persist",
        type=_duration,
        metavar="DURATION",
        help="close a connection unused for this long (default 10m; 0: keep it until the "
        "agent stops), as ssh's ControlPersist",
    )
    agent.add_argument(
        "--stop-timeout",
        type=_duration,
        metavar="DURATION",
        help="on a stop, wait this long for the syncs it cancelled to wind down, then cut "
        "them off and exit 1 (default 30s; 0: no limit)",
    )
    agent.add_argument(
        "--json", action="store_true", help="the scheduled syncs' events as JSON lines on stdout"
    )


def _duration(text: str) -> float:
    """A period: seconds (``90``), or a number and a unit (``30s``, ``15m``, ``12h``, ``1d``)."""
    from .index.query import age_seconds

    seconds = age_seconds(text)
    if seconds is None and text.strip().isdigit():
        seconds = int(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90, 30s, 15m or 1h)")
    return float(seconds)


def _concurrency_option(parser: Any, done: str, default: int | None) -> None:
    parser.add_argument(
        "--concurrency",
        "-j",
        type=int,
        default=default,
        metavar="N",
        help=f"hosts {done} at once (default {CONCURRENCY})",
    )


def _timeout_option(parser: Any) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="a host whose remote command sends nothing for this long fails (like rsync's "
        f"--timeout; default {IDLE_TIMEOUT:g}, 0: no limit). Raise it for slow disks or very "
        "large trees; dead links are found by the SSH keepalives anyway",
    )


def _seconds(text: str) -> float:
    """A ``--timeout`` value: seconds, 0 for no limit, checked by the library's rule
    (:func:`~remote_sync.ssh.remote.checked_idle_timeout`), so that the two refuse the same
    values; said in the CLI's words, with the value as typed (the library's names its
    keyword, the float read from the text and None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        checked_idle_timeout(value)
    except ConfigError:
        # argparse puts "argument --timeout: " before it.
        raise argparse.ArgumentTypeError(
            f"must be 0 (no limit) or a finite number of seconds, not {text!r} (give how many "
            "seconds a remote command may send nothing, or 0 for no limit)"
        ) from None
    return value


def _idle_timeout(args: argparse.Namespace) -> float | None:
    """The idle timeout ``--timeout`` asks for (None: no limit)."""
    if args.timeout is None:
        return IDLE_TIMEOUT
    return args.timeout or None


def _dest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dest",
        "-d",
        metavar="DIR",
        help=f"mirror directory (default: ${DEST_ENV}, else ./{DEFAULT_DEST})",
    )


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", metavar="H", help="only this host")
    parser.add_argument("--format", metavar="F", help="only this format (openclaw, codex, ...)")
    parser.add_argument("--agent", metavar="A", help="only this agent or project")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only sessions active at or after WHEN: an ISO date or datetime (UTC unless it "
        "says otherwise) or an age like 7d, 12h, 30m",
    )
    parser.add_argument(
        "--class",
        dest="klass",
        choices=_CLASSES,
        help="only this class: empty (under 500 bytes or no messages), low (at most one user "
        "message and idle for 7 days), valuable (the rest)",
    )
    parser.add_argument(
        "--state",
        choices=_STATES,
        help="only this state: live, archived (archived by the agent: OpenClaw's .reset. "
        "archives and sessions_archive/, Codex's archived_sessions/), deleted (gone from the "
        "remote, or kept by the agent only as a tombstone such as OpenClaw's .deleted. "
        "archive), rewritten (versions kept), renamed (archived by the host under another "
        "name; left out unless asked for)",
    )


def _remote_options(parser: argparse.ArgumentParser, many_hosts: bool = False) -> None:
    group = parser.add_argument_group("remote (ask the hosts instead of the mirror)")
    group.add_argument("--remote", action="store_true", help="read the hosts over SSH")
    group.add_argument("--inventory", "-I", metavar="FILE", help="inventory TOML (with --remote)")
    _timeout_option(group)
    if many_hosts:
        # No default here: given without --remote it is refused, as --timeout is.
        _concurrency_option(group, "read", None)


def _add_sessions(sub: Any) -> None:
    sessions = sub.add_parser(
        "sessions",
        help="list, show and sum the mirrored sessions (list and show also --remote)",
        description="Read the session index of a mirror, or with --remote (list, show) "
        "the hosts themselves. Never takes the mirror's lock: works while a sync runs.",
    )
    verbs = sessions.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser(
        "list",
        help="one line per session",
        description="List the indexed sessions. --sort FIELD sorts ascending, --sort -FIELD "
        "descending (default -last_ts: the most recent first); missing values sort last.",
        epilog="example:\n  remote-sync sessions list --dest ./mirror --host me@box --limit 20",
    )
    listing.set_defaults(run=run_sessions_list)
    _dest_option(listing)
    _filter_options(listing)
    listing.add_argument(
        "--sort",
        metavar="FIELD",
        default="-last_ts",
        help="sort by any field of the JSON rows but models (e.g. last_ts, messages, tokens_out, "
        "cost, bytes, host); a leading '-' sorts descending (default -last_ts)",
    )
    listing.add_argument("--limit", type=int, metavar="N", help="at most N sessions")
    listing.add_argument("--json", action="store_true", help="one JSON object per session")
    _remote_options(listing, many_hosts=True)

    show = verbs.add_parser(
        "show",
        help="the messages of one session",
        description="Show messages of one session, reading only what is shown. Without "
        "--head/--tail/--page: the first page.",
        epilog="example (HOST and SESSION as sessions list shows them):\n"
        "  remote-sync sessions show me@box 3f2a9c1e --dest ./mirror --tail 20",
    )
    show.set_defaults(run=run_sessions_show)
    show.add_argument("host", metavar="HOST", help="the host (as in the inventory)")
    show.add_argument(
        "session",
        metavar="SESSION",
        help="session id (or a unique prefix of it), or the file's path relative to the root; "
        "a picoclaw session also by its key (telegram:123 for telegram_123)",
    )
    _dest_option(show)
    which = show.add_mutually_exclusive_group()
    which.add_argument("--head", type=int, metavar="N", help="the first N messages")
    which.add_argument("--tail", type=int, metavar="N", help="the last N messages")
    which.add_argument("--page", type=int, metavar="K", help="page K (1-based) of --page-size")
    show.add_argument(
        "--page-size", type=int, default=50, metavar="N", help="messages per page (default 50)"
    )
    show.add_argument("--json", action="store_true", help="one JSON object per message")
    _remote_options(show)

    stats = verbs.add_parser(
        "stats",
        help="totals per host, agent, format, model or day",
        description="Sum sessions, messages, tool calls, tokens, cost and bytes per group. "
        "By model: a session that used several models counts for each. By day: of its last "
        "activity (UTC).",
    )
    stats.set_defaults(run=run_sessions_stats)
    _dest_option(stats)
    stats.add_argument("--by", choices=_STATS_KEYS, default="host", help="group by (default host)")
    _filter_options(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object per group")


def _add_index(sub: Any) -> None:
    index = sub.add_parser("index", help="maintain the session index")
    verbs = index.add_subparsers(dest="verb", required=True)
    rebuild = verbs.add_parser(
        "rebuild",
        help="recompute the index from the mirrored files",
        description="Recompute every session's facts from the mirror (takes the mirror's lock, "
        "like a sync).",
    )
    rebuild.set_defaults(run=run_index_rebuild)
    _dest_option(rebuild)
    rebuild.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_versions(sub: Any) -> None:
    versions = sub.add_parser(
        "versions",
        help="list the earlier copies kept of rewritten files, get one back, or prune them",
        description="The earlier copies a sync kept when a host rewrote a mirrored file "
        "(compacted, truncated, replaced). list and restore never take the mirror's lock nor "
        "write in it; prune removes copies, under the lock.",
    )
    verbs = versions.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser(
        "list",
        help="one line per kept version",
        description="List the kept versions: host, path, version (1 is the oldest), bytes, "
        "when it was kept (for a version kept before remote-sync recorded that: when the "
        "mirror last wrote that copy, marked 'written'), and a transcript's session.",
        epilog="example:\n  remote-sync versions list --dest ./mirror --host me@box",
    )
    listing.set_defaults(run=run_versions_list)
    _dest_option(listing)
    listing.add_argument("--host", metavar="H", help="only this host")
    listing.add_argument(
        "files",
        nargs="*",
        metavar="PATH-or-SESSION",
        help="only these files: a path as listed (relative to the host's root), or a session "
        "id or a prefix of one",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per version")

    restore = verbs.add_parser(
        "restore",
        help="copy one kept version out of the mirror",
        description="Copy version N of HOST's PATH to FILE (written whole, then renamed into "
        "place), or its bytes to stdout with --to -. The mirror is only read.",
        epilog="example (HOST, PATH and N as versions list shows them):\n"
        "  remote-sync versions restore me@box agents/main/sessions/3f2a9c1e.jsonl 1 "
        "--to ./3f2a9c1e.v1.jsonl --dest ./mirror\n"
        "a PATH that begins with '-': the options first, then -- HOST PATH N",
    )
    restore.set_defaults(run=run_versions_restore)
    restore.add_argument("host", metavar="HOST", help="the host (as in the inventory)")
    restore.add_argument(
        "path",
        metavar="PATH",
        help="the file's path as versions list shows it (or its session id or a unique "
        "prefix of it)",
    )
    restore.add_argument("version", type=int, metavar="N", help="the version's number")
    _dest_option(restore)
    restore.add_argument(
        "--to",
        required=True,
        metavar="FILE",
        help="where to write it (not in the mirror); - for stdout",
    )
    restore.add_argument("--force", "-f", action="store_true", help="replace FILE if it exists")

    prune = verbs.add_parser(
        "prune",
        help="remove the kept versions no keep rule keeps",
        description="Remove, of each file, the kept versions that no rule keeps: --keep-last N "
        "keeps its N newest, --keep-within DURATION those kept that recently (a version either "
        "keeps stays). At least one rule is required: there is no default that removes. Only "
        "version copies are removed (never a mirrored file, never through a link); takes the "
        "mirror's lock, as a sync does. Prints what went and the bytes freed.",
        epilog="examples:\n"
        "  remote-sync versions prune --dest ./mirror --keep-last 3 --dry-run\n"
        "  remote-sync versions prune --dest ./mirror --host me@box --keep-within 30d",
    )
    prune.set_defaults(run=run_versions_prune)
    _dest_option(prune)
    prune.add_argument("--host", metavar="H", help="only this host's versions")
    prune.add_argument(
        "files",
        nargs="*",
        metavar="PATH-or-SESSION",
        help="only these files' versions: a path as listed, or a session id or a prefix of one",
    )
    prune.add_argument(
        "--keep-last", type=int, metavar="N", help="keep each file's N newest versions"
    )
    prune.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep the versions kept within DURATION of now: 30m, 12h, 7d, 2w",
    )
    prune.add_argument(
        "--dry-run", "-n", action="store_true", help="list what would go; remove nothing"
    )
    prune.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _add_check(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="check that the mirror holds what its state says (no host is asked)",
        description="Check every mirrored file the state has (deleted ones too) and its kept "
        "versions: there, a regular file, no shorter than committed, its first KiB the one "
        "synced; files the state does not know and an index out of step are notes. Reads "
        "only: takes no lock, so it runs while a sync does. Exit 0 intact, 1 damage found.",
        epilog="example:\n  remote-sync check --dest ./mirror --host me@box",
    )
    check.set_defaults(run=run_check)
    _dest_option(check)
    check.add_argument("--host", metavar="H", help="only this host's files")
    check.add_argument(
        "--json", action="store_true", help="one JSON object per problem, then a summary"
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = _join_dashed_values(sys.argv[1:] if argv is None else argv)
    _Parser.json_wanted = wants_json(words)
    try:
        if not words:
            # Nothing asked: the help says what there is and what to type first, where
            # argparse alone says only that a command is required. A usage error for a script.
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        _escape_what_the_locale_cannot_encode()
        args = build_parser().parse_args(words)
        # Every command but the agent (whose SIGTERM is its stop, exit 0) takes SIGTERM as
        # a Ctrl-C: `timeout` and systemd stop a run with it, and a reading command or a
        # prune died of it unreported (exit -15) where a Ctrl-C exits 130.
        terminate = contextlib.nullcontext() if args.run is run_agent else _terminate_as_interrupt()
        with terminate:
            code: int = args.run(args)
    except KeyboardInterrupt:
        return report_cancelled_start(_Parser.json_wanted)
    finally:
        _sigterm_default_again()
    return code


def _sigterm_default_again() -> None:
    """SIGTERM's default action again where the console script took it as a Ctrl-C while the
    command line loaded (:mod:`remote_sync.interrupt`), for the command alone: also when no
    command ran (the version, the help, a usage error), where a SIGTERM during the exit was
    otherwise a KeyboardInterrupt's traceback. Any other handler (a library caller's) stays."""
    import signal
    import threading

    from .interrupt import take_as_ctrl_c

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (and none was taken on another)
    if signal.getsignal(signal.SIGTERM) is take_as_ctrl_c:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _escape_what_the_locale_cannot_encode() -> None:
    """Text output in a locale that is not UTF-8 (``LANG=en_US.ISO-8859-1``, as on an old
    server or in a cron environment set so): a character it has no byte for (a title's emoji,
    the ``…`` of a cut column) is written as ``\\uNNNN``, as ``showable`` writes a control
    character, where Python's strict stdout ended the listing in a UnicodeEncodeError
    traceback. ``--json`` is unaffected: it is always UTF-8, written as bytes. Python already
    takes the C locale for UTF-8, so this only changes anything in another 8-bit locale."""
    import codecs
    import io

    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or not stream.encoding:
            continue  # replaced (a test's capture, a caller's StringIO): theirs to set
        if codecs.lookup(stream.encoding).name != "utf-8":
            stream.reconfigure(errors="backslashreplace")


def wants_json(words: Sequence[str]) -> bool:
    """Whether the command line asks for ``--json`` (before any ``--``), known before parsing
    it, so that even a usage error or an early cancel answers in JSON."""
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def report_cancelled_start(json: bool) -> int:
    """A Ctrl-C caught outside a sync's rounds (which report their own): under ``--json`` an
    error event says so, otherwise one line on stderr; the exit status is 130 either way."""
    if json:
        _write_error_events([_interrupted()])
    else:
        _say(_interrupted())
    return EXIT_CANCELLED


def _interrupted() -> RemoteSyncError:
    """What a Ctrl-C caught outside a sync's rounds is (the rounds report their own)."""
    from .errors import TransferCancelledError

    return TransferCancelledError(
        "cancelled by a signal", hint="nothing was left half-done; run the command again"
    )


def entry() -> NoReturn:
    """The console script (and ``python -m remote_sync.cli``): :func:`main`, then a quick exit.

    When ``main`` returns, every file, database and connection of the run is closed (the
    commands use context managers throughout). What remains is the interpreter's teardown,
    which garbage-collects every module object: about 0.07 s after asyncssh's imports, a
    quarter of a sync that finds nothing to do. So flush what is buffered and leave at once.
    Library callers of :func:`main` (tests, benchmarks) keep the normal return, and so does
    a run under a profiler or tracer (cProfile and coverage write their results at exit).
    """
    _open_closed_standard_descriptors()
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    import logging

    logging.shutdown()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away (e.g. `| head`); nothing left to tell it
    except OSError:
        code = code or EXIT_FAILED  # e.g. stdout on a full disk: the output is incomplete
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)


def _open_closed_standard_descriptors() -> None:
    """A standard descriptor the command was started without (``>&-``, a daemon's closed
    stdin) is opened on /dev/null, as ssh does (``sanitise_stdfd``): else the next file the
    run opens (the state database, a temp file) takes its number, and what is written to
    "stdout", by us or by a child that inherits it (a ProxyCommand, the index worker), lands
    in that file. Python left ``sys.stdout`` None for it, which ended in a traceback; the
    output goes where the caller sent it, nowhere, as with ``>/dev/null``."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)  # the lowest number free: this one
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


#: Options whose value may begin with "-": a Claude Code project (``-home-dev-app``), a pi
#: project (``--srv-app--``), any host name. The next word is their value, whatever it is,
#: as getopt takes an option's argument.
_VERBATIM_VALUES = ("--agent", "--host")


def _join_dashed_values(argv: Sequence[str]) -> list[str]:
    """``--sort -FIELD`` as ``--sort=-FIELD``, ``--agent -home-dev-app`` as
    ``--agent=-home-dev-app`` (argparse would take a value starting with "-" for an option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        option = argv[i]
        if i + 1 < len(argv):
            value = argv[i + 1]
            sort = option == "--sort" and value[:1] == "-" and value[:2] != "--"
            if sort or (option in _VERBATIM_VALUES and value[:1] == "-"):
                out.append(f"{option}={value}")
                i += 2
                continue
        if option == "--":
            out.extend(argv[i:])  # operands only from here
            break
        out.append(option)
        i += 1
    return out


def _freeze_imports() -> None:
    """Move the objects of the modules imported so far out of the garbage collector's sight.

    A sync allocates many short-lived objects, so the collector runs often; without this each
    full pass walks the tens of thousands of objects asyncssh and its imports created, none of
    which will ever be garbage.
    """
    import gc

    gc.freeze()


#: mallopt's parameter for the most arenas glibc's malloc may make (``<malloc.h>``).
_M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """Limit glibc's malloc to one arena, before a sync of this process starts its threads.

    glibc gives each thread that allocates an arena of its own (up to eight per core): a
    sync's flush threads, its state writes' worker threads and asyncio's resolver threads
    each get one, and what they free stays there, out of reach of the main thread, where
    most allocations are made. With one arena the main thread reuses that memory: the
    benchmark's fleet (20 hosts, 8 at a time) peaked 1.5-2 MB lower (of about 65 MB), with
    no more CPU time; the threads hardly contend for the arena, as Python code allocates
    holding the GIL. The agent's syncs start the same threads, round after round: its
    command (:func:`run_agent`) does this too (its peak over a fleet's first mirror fell
    from 66.5 to 63.1 MB). Only the command line does this: the allocator is the process's,
    and a program that uses the library (``serve_agent`` included) tunes its own. A limit
    the user set (MALLOC_ARENA_MAX, or arena_max in GLIBC_TUNABLES) is left as it is;
    another C library, or a ``mallopt`` that refuses, leaves the defaults, which only costs
    the memory.
    """
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        glibc = "CS_GNU_LIBC_VERSION" in os.confstr_names and bool(
            os.confstr("CS_GNU_LIBC_VERSION")
        )
    except (ValueError, OSError):
        glibc = False
    if not glibc:
        return
    import ctypes  # already imported with asyncssh's loading (ssh/fastimport.py)

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


def _setup_logging(verbose: int) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# -- sync ---------------------------------------------------------------------------------------


def _select_hosts(args: argparse.Namespace) -> list[Host]:
    from .inventory import DEFAULT_FORMAT, AdhocOptions, Inventory, lists_no_hosts, load_inventory

    inventory = load_inventory(args.inventory) if args.inventory else Inventory(None, [])
    adhoc = AdhocOptions(
        format=args.format or DEFAULT_FORMAT,
        root=args.root,
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        identity_file=args.identity,
        host_key_policy="accept-new" if args.accept_new_host_keys else "strict",
    )
    hosts = inventory.select(args.hosts, args.tag, adhoc=adhoc)
    if not hosts:  # no names, no tags (a tag no host has is an error of its own)
        if args.inventory:
            raise lists_no_hosts(str(args.inventory))
        raise ConfigError(
            "no hosts to sync",
            hint="name a host ([user@]host[:port] or an ssh_config alias), or give --inventory",
        )
    _refuse_unused_adhoc_options(args, inventory, hosts)
    return list(hosts)


def _refuse_unused_adhoc_options(
    args: argparse.Namespace, inventory: Inventory, hosts: Sequence[Host]
) -> None:
    """Options for ad-hoc hosts, given when every host comes from the inventory, would be
    ignored without a word (``--format codex`` against an inventory's openclaw hosts)."""
    given = _given_adhoc_options(args)
    if given and all(inventory.get(host.name) is host for host in hosts):
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(given)} {verb} only to hosts that are not in the inventory, and every "
            "host to sync is in it",
            path=str(args.inventory),
            hint="set these per host (or in [defaults]) in the inventory, or leave them out",
        )


def _given_adhoc_options(args: argparse.Namespace) -> list[str]:
    """The options for ad-hoc hosts given on the command line, as typed (``--root``)."""
    return [
        option
        for option, value in (
            ("--format", args.format),
            ("--root", args.root),
            ("--ssh-config", args.ssh_config),
            ("--known-hosts", args.known_hosts),
            ("--identity", args.identity),
            ("--accept-new-host-keys", args.accept_new_host_keys),
        )
        if value
    ]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, systemd stopping a timer's run) taken as a Ctrl-C, for
    a whole command (:func:`main` puts every command but the agent in it): until a sync's
    rounds take both signals over (:func:`_signals_received`), and again after them. Left to
    its default, a SIGTERM while a sync's state was opened or recovered (a second or more on
    a large mirror) ended the process unreported, and left a dry run's copy of the state
    behind; and a check, a listing or a prune died of it (exit -15), where a Ctrl-C exits
    130 saying so."""
    import signal
    import threading

    from .interrupt import heeded, take_as_ctrl_c

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a library caller's thread)
        return
    if not heeded(signal.SIGTERM):
        yield  # ignored by whoever started us: it stays ignored
        return
    previous = signal.signal(signal.SIGTERM, take_as_ctrl_c)
    try:
        yield
    finally:
        # The console script took SIGTERM so from its start (interrupt.py) for the command
        # alone: after it, SIGTERM's default action again, as before the command.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is take_as_ctrl_c else previous)


@contextlib.contextmanager
def _signals_received(heeded: Sequence[signal.Signals]) -> Iterator[AsyncIterator[int]]:
    """anyio's receiver of the ``heeded`` signals, on the running event loop, and then the
    handlers they had before again. asyncio, removing its handlers, leaves SIGTERM to its
    default action (and SIGINT to Python's): a SIGTERM after a sync's rounds (its recap
    printed, the index worker stopped) killed the process unreported, where a Ctrl-C then
    exits 130."""
    import signal

    import anyio

    previous = {s: signal.getsignal(s) for s in heeded}
    try:
        with anyio.open_signal_receiver(*heeded) as signals:
            yield signals
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, not ours to put back
                signal.signal(s, handler)


def _heeded_signals() -> list[signal.Signals]:
    """SIGINT and SIGTERM, less those this process was started with ignored (which stay
    ignored: see :func:`remote_sync.interrupt.heeded`)."""
    import signal

    from .interrupt import heeded

    return [s for s in (signal.SIGINT, signal.SIGTERM) if heeded(s)]


def run_sync(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    through_agent = _sync_through_agent(args)
    if through_agent is not None:
        return through_agent
    _one_malloc_arena()
    from .ssh.fastimport import import_asyncssh

    import_asyncssh()
    import anyio

    from .events import json_lines_renderer
    from .mirror.engine import SyncOptions
    from .ssh.pool import PoolSettings

    _freeze_imports()

    error_out = json_lines_renderer() if args.json else None
    try:
        dest = _given_dest(args.dest)
        check_concurrency(args.concurrency)
        hosts = _select_hosts(args)
    except ConfigError as exc:
        _report(exc, error_out)
        return EXIT_USAGE
    options = SyncOptions(
        dest=dest,
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        pool=PoolSettings(compression=args.compress),
        index=not args.no_index,
        idle_timeout=_idle_timeout(args),
    )
    try:
        with _sync_output(error_out, dest) as (emit, watch, stop_display):
            code: int = anyio.run(_sync_main, hosts, options, emit, stop_display)
        return _with_lost_output(code, watch)
    except RemoteSyncError as exc:
        _report(exc, error_out)
        return _exit_code(exc.kind)
    except KeyboardInterrupt:
        # Before the rounds' signal handler was installed (or after it was removed): the
        # rounds report their own cancels, with a summary.
        _report(_interrupted(), error_out)
        return EXIT_CANCELLED


def _say_cancelling(signum: int) -> None:
    """The line a first Ctrl-C or SIGTERM of a sync prints on stderr."""
    import signal

    # The signal that came, sent again: systemd stops a run with SIGTERM, and its journal
    # said "Ctrl-C again" to someone who pressed none.
    again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    with contextlib.suppress(OSError):  # a stderr on a full disk
        # A newline ends the line a terminal echoed ^C on; in a journal or a log it would
        # be an empty line.
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}cancelling ({again} again to abort at once)...", file=sys.stderr)


async def _sync_main(
    hosts: list[Host],
    options: SyncOptions,
    emit: Emit,
    stop_display: Callable[[], None] | None = None,
) -> int:
    import anyio

    from .cancel import CancelRegistry
    from .mirror.engine import sync_fleet

    registry = CancelRegistry()
    heeded = _heeded_signals()
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            if not heeded:
                return
            with _signals_received(heeded) as signals:
                first = True
                async for signum in signals:
                    if not first:
                        _abort_at_once(emit, stop_display)
                    first = False
                    _say_cancelling(signum)
                    registry.cancel_all("cancelled by signal")

        tg.start_soon(on_signals)
        # Raised after the task group closes, so callers see it unwrapped.
        error: RemoteSyncError | None = None
        try:
            summary = await sync_fleet(hosts, options, emit, registry=registry, transfer_id="sync")
        except RemoteSyncError as exc:
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return summary.exit_code


@contextlib.contextmanager
def _sync_output(
    json_out: Emit | None, dest: str | Path
) -> Iterator[tuple[Emit, _OutputWatch, Callable[[], None] | None]]:
    """Where a sync's events go, run here or by the agent: ``json_out`` (``--json``), else
    the live display of the mirror ``dest``, for as long as the block runs. Yields the sink
    to give the events, the watch of its writes (:func:`_with_lost_output`), and what stops
    the display (None for JSON lines)."""
    from .events import ThrottledProgress, guarded

    # guarded: a failing sink (a reader gone away, a renderer's bug) must not abort the
    # host tasks that call it; the mirror matters more than its report.
    if json_out is not None:
        watch = _OutputWatch(json_out)
        yield guarded(ThrottledProgress(watch)), watch, None
        return
    from .render import RichRenderer

    with RichRenderer(dest=str(dest)) as renderer:
        watch = _OutputWatch(renderer)
        yield guarded(ThrottledProgress(watch, 0.1)), watch, renderer.progress.stop


class _OutputWatch:
    """A sync's event sink that remembers the first write of its report that failed (a full
    disk under the log it is redirected to, an I/O error). :func:`~remote_sync.events.guarded`
    keeps such a failure from costing the run its work, so without this the run exited 0 with
    its summary lost, and a script read a success it could not check. A reader that closed
    the pipe (``| head``) is no such failure: the sinks take that in silence themselves."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.lost: OSError | None = None

    def __call__(self, event: Event) -> None:
        try:
            self.emit(event)
        except OSError as exc:
            if self.lost is None and not isinstance(exc, BrokenPipeError):
                self.lost = exc
            raise


# -- sync through the agent ---------------------------------------------------------------------


def _sync_through_agent(args: argparse.Namespace) -> int | None:
    """The sync run by the agent serving ``--dest``, if one answers there and can serve it:
    its exit code, the events shown as a run here would show them. None: run it here (no
    agent, ``--no-agent``, an ad-hoc host or its options, or a request the agent refused,
    said on stderr). Only the standard library, msgspec and rich: no asyncssh, no engine."""
    if args.no_agent or not args.inventory or _given_adhoc_options(args):
        return None
    if not args.dest:
        return None  # the run here says what is wrong with it
    from . import agent_link

    link = agent_link.connect(Path(args.dest))
    if link is None:
        return None
    request = agent_link.SyncRequest(
        inventory=os.path.abspath(args.inventory),
        hosts=list(args.hosts),
        tags=list(args.tag),
        dry_run=args.dry_run,
        index=not args.no_index,
        concurrency=args.concurrency,
        idle_timeout=_idle_timeout(args),
        compress=True if args.compress else None,
    )
    with link:
        try:
            link.send(request)
        except OSError:
            return None  # gone between the connect and the request: as if none answered
        return _follow_agent(link, args)


def _follow_agent(link: AgentLink, args: argparse.Namespace) -> int | None:
    from .events import json_lines_renderer

    json_out = json_lines_renderer() if args.json else None
    with _sync_output(json_out, args.dest) as (emit, watch, stop_display):
        code = _agent_events(link, emit, args.json, stop_display)
    return None if code is None else _with_lost_output(code, watch)


def _agent_events(
    link: AgentLink, emit: Emit, json: bool, stop_display: Callable[[], None] | None
) -> int | None:
    """Pass the agent's events to ``emit`` until it closes; the exit code a run here would
    have had (from the summary, else from the error that stopped the sync), or None when the
    agent refused the request. An error is held until the next event: the last one, with
    no summary after it, stopped the sync, and is reported as a run here reports such an
    error (a refusal is not shown at all: the sync runs here instead)."""
    from .errors import AgentError
    from .events import ErrorEvent, Summary

    held: ErrorEvent | None = None
    summary: Summary | None = None
    with _cancel_on_signals(link, emit, stop_display):
        try:
            for event in link.events():
                if held is not None:
                    emit(held)
                    held = None
                if isinstance(event, ErrorEvent):
                    held = event
                    continue
                emit(event)
                if isinstance(event, Summary):
                    summary = event
        except AgentError as exc:
            held = ErrorEvent.from_exception(exc)
    if summary is not None:
        if held is not None:
            emit(held)
        return summary.exit_code
    if held is None:
        held = ErrorEvent.from_exception(
            AgentError("the agent ended the connection before the sync's end", path=str(link.path))
        )
    error = RemoteSyncError(held.message, host=held.host, path=held.path, hint=held.hint)
    if held.kind == "agent_refused":
        _say(RemoteSyncError(f"the agent cannot serve this sync: {error}"))
        return None
    if json:
        emit(held)
    _say(error)
    return _exit_code(held.kind)


@contextlib.contextmanager
def _cancel_on_signals(
    link: AgentLink, emit: Emit, stop_display: Callable[[], None] | None
) -> Iterator[None]:
    """A first Ctrl-C or SIGTERM sends the agent a cancel for this sync (whose events then
    end as a cancelled run's do); a second leaves at once, as in a run here (the agent
    cancels the sync of a client gone)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heeded = _heeded_signals()
    signals = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            _abort_at_once(emit, stop_display)
        _say_cancelling(signum)
        link.cancel()

    previous = {s: signal.signal(s, on_signal) for s in heeded}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, not ours to put back
                signal.signal(s, handler)


# -- agent --------------------------------------------------------------------------------------


def run_agent(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    _one_malloc_arena()
    from .ssh.fastimport import import_asyncssh

    import_asyncssh()
    import anyio

    from .agent import Agent
    from .agent_link import PERSIST, STOP_TIMEOUT
    from .events import json_lines_renderer

    _freeze_imports()
    out = json_lines_renderer() if args.json else None
    try:
        agent = Agent(
            Path(args.inventory),
            _given_dest(args.dest),
            every=args.every or None,
            persist=PERSIST if args.persist is None else args.persist,
            stop_timeout=STOP_TIMEOUT if args.stop_timeout is None else args.stop_timeout,
            scheduled=out,
        )
        code: int = anyio.run(_agent_main, agent)
        return code
    except RemoteSyncError as exc:
        _report(exc, out)
        return _exit_code(exc.kind)
    except KeyboardInterrupt:
        return EXIT_CANCELLED


async def _agent_main(agent: Agent) -> int:
    """Serve until SIGTERM (exit 0: systemd's stop) or Ctrl-C (130); a second one leaves
    at once, and so does a stop still not done CUT_OFF_GRACE seconds after the agent's
    ``--stop-timeout`` (exit 1)."""
    import signal

    import anyio

    from .agent_link import CUT_OFF_GRACE
    from .errors import AgentError

    stopped_by: list[int] = []
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with _signals_received(_heeded_signals()) as signals:
                async for signum in signals:
                    if stopped_by:
                        os._exit(EXIT_CANCELLED)
                    stopped_by.append(signum)
                    agent.stop()
                    if agent.stop_timeout:
                        tg.start_soon(leave_if_stuck)

        async def leave_if_stuck() -> None:
            # The agent cuts off, after --stop-timeout, what its stop's cancel did not end;
            # what even that cannot end (work in a worker thread) must not keep the process
            # for ever: it leaves at once, as a second signal does.
            await anyio.sleep(agent.stop_timeout + CUT_OFF_GRACE)
            _say(
                AgentError(
                    f"the agent did not stop {agent.stop_timeout + CUT_OFF_GRACE:g} s after "
                    "it was told to: leaving at once",
                    path=str(agent.dest),
                    hint="the mirror is consistent up to each host's last checkpoint and the "
                    "next sync resumes; the agent's socket stays until the next agent",
                )
            )
            os._exit(EXIT_FAILED)

        tg.start_soon(on_signals)
        # Raised after the task group closes, so callers see it unwrapped.
        error: RemoteSyncError | None = None
        try:

            def ready() -> None:
                with contextlib.suppress(OSError):
                    print(f"remote-sync agent: serving {agent.socket}", file=sys.stderr, flush=True)

            await agent.serve(ready)
        except RemoteSyncError as exc:
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return EXIT_CANCELLED if stopped_by[:1] == [signal.SIGINT] else EXIT_OK


def _with_lost_output(code: int, watch: _OutputWatch) -> int:
    """The exit code of a sync whose report may have been lost: a success becomes a failure
    (exit 1), said on stderr; a failure, a cancel or the lock keep their own codes."""
    if watch.lost is None:
        return code
    _say(_report_lost(watch.lost, "the sync went on to its end, but its report is incomplete"))
    return EXIT_FAILED if code == EXIT_OK else code


def _report_lost(exc: OSError, what: str) -> OutputError:
    return OutputError(
        f"cannot write the output: {exc.strerror or exc}",
        hint=f"{what}: free space on the disk the output is redirected to (a log's), then "
        "run again",
    )


def _abort_at_once(emit: Emit, stop_display: Callable[[], None] | None) -> NoReturn:
    """A second Ctrl-C: leave now, as a ``kill -9`` would, without waiting for the rounds to
    wind down (a commit in progress, a host that does not answer the cancel). The mirror is
    built to survive exactly that: the next run cuts back what no checkpoint covers."""
    from .errors import TransferCancelledError
    from .events import ErrorEvent

    emit(
        ErrorEvent.from_exception(
            TransferCancelledError(
                "aborted at once by a second signal",
                hint="run the sync again: it resumes from the last checkpoints",
            )
        )
    )
    if stop_display is not None:
        stop_display()  # the terminal gets its cursor back
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_CANCELLED)


def _say(exc: RemoteSyncError) -> None:
    """``exc`` on stderr, undecodable bytes of its host or path as ``\\xNN`` (like paths
    everywhere else), not as the surrogates Python keeps them in. The message may name what a
    host holds (a file, the sessions a prefix matches, a tool's complaint): its control
    characters are escaped as everywhere else, not sent to the terminal."""
    from .errors import showable

    # A stderr that cannot be written either (the same full disk) leaves nothing to tell;
    # the exit code still says it.
    with contextlib.suppress(OSError):
        print(f"remote-sync: {showable(str(exc), lines=True)}", file=sys.stderr)


def _report(exc: RemoteSyncError, json_out: Emit | None) -> None:
    if json_out is not None:
        from .events import ErrorEvent

        with contextlib.suppress(OSError):  # the exit code says it, and so does stderr
            json_out(ErrorEvent.from_exception(exc))
    _say(exc)


# -- sessions and index -------------------------------------------------------------------------


def _dest(args: argparse.Namespace) -> Path:
    """The read commands' mirror: ``--dest``, else ``$REMOTE_SYNC_DEST``, else ./mirror."""
    if args.dest is not None:
        return _given_dest(args.dest)
    return Path(os.environ.get(DEST_ENV) or DEFAULT_DEST)


def _given_dest(value: str) -> Path:
    """An explicit ``--dest``: never empty, which ``Path`` would take for the current directory
    (a sync would fill it, a reader would read it)."""
    if not value:
        raise ConfigError(
            "--dest is empty", hint="name the mirror directory; for the current one, say --dest ."
        )
    return Path(value)


#: The exit code of an error by its kind (:attr:`~remote_sync.errors.RemoteSyncError.kind`),
#: any other kind exit 1: one mapping for an error raised here and for one the agent reports.
_EXIT_BY_KIND = {
    "config": EXIT_USAGE,  # ConfigError and ArgumentError
    "destination": EXIT_USAGE,  # DestinationError, a ConfigError too
    "locked": EXIT_LOCKED,
    "cancelled": EXIT_CANCELLED,
}


def _exit_code(kind: str) -> int:
    """The exit code of an error of ``kind``."""
    return _EXIT_BY_KIND.get(kind, EXIT_FAILED)


def _fail(exc: RemoteSyncError, args: argparse.Namespace) -> int:
    """``exc`` said on stderr and, with ``--json``, as an error line on stdout too (as every
    command reports its errors to a script); its exit code."""
    if getattr(args, "json", False):
        with contextlib.suppress(OSError):  # the exit code says it, and so does stderr
            _write_error_events([exc])
    _say(exc)
    return _exit_code(exc.kind)


def _write_json_lines(items: Iterable[Any]) -> int:
    """Encode items as JSON lines and write them to stdout in large chunks.

    U+2028 and U+2029 are written escaped: they are valid in JSON strings, but many line
    splitters (Python's ``str.splitlines``, JavaScript) take them for line ends.
    """
    import msgspec

    encode = msgspec.json.Encoder().encode_lines
    out = sys.stdout.buffer

    def write(batch: list[Any]) -> None:
        data = encode(batch)
        if b"\xe2\x80" in data:
            data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
        out.write(data)

    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= 4096:
            write(batch)
            batch.clear()
    if batch:
        write(batch)
    out.flush()
    return EXIT_OK


def _guard_pipe(run: Any) -> int:
    """Run ``run()``; a reader that closed the pipe (``| head``) is not an error, output that
    could not be written otherwise (a full disk, an I/O error) is one: exit 1 and a line on
    stderr, not a traceback.

    The rich output uses ``render.PipeConsole``, which goes quiet instead of raising; plain
    writes raise BrokenPipeError, caught here.
    """
    from .events import stdout_to_devnull

    try:
        code: int = run()
        return code
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null.
        stdout_to_devnull()
        return EXIT_OK
    except OSError as exc:
        _say(_report_lost(exc, "what was written of it is incomplete"))
        stdout_to_devnull()  # what is still buffered would fail again at exit
        return EXIT_FAILED


def _remote_api(*names: str) -> Any:
    """The first of ``remote_sync.api``'s functions ``names`` that exists (or a ConfigError)."""
    import importlib

    try:
        api = importlib.import_module("remote_sync.api")
    except ImportError:
        api = None
    for name in names:
        function = getattr(api, name, None)
        if function is not None:
            return function
    raise ConfigError(
        "--remote is not available: remote_sync.api has no "
        + " or ".join(names)
        + " in this installation",
        hint="read the mirror instead (drop --remote)",
    )


def _resolve(result: Any) -> Any:
    """``result``, awaited first when it is a coroutine (the library API is async)."""
    if not hasattr(result, "__await__"):
        return result
    import anyio

    async def wait() -> Any:
        return await result

    return anyio.run(wait)


def _remote_hosts(args: argparse.Namespace, names: list[str]) -> list[Host]:
    from .inventory import Inventory, load_inventory

    inventory = load_inventory(args.inventory) if args.inventory else Inventory(None, [])
    hosts = inventory.select(names, [])
    if not hosts:
        raise ConfigError("no hosts to ask", hint="pass --inventory FILE, or --host H")
    return list(hosts)


def _list_remote(
    args: argparse.Namespace, filters: dict[str, Any], failures: list[RemoteSyncError]
) -> tuple[list[SessionRow], int]:
    """The hosts' sessions, filtered and sorted by the library, and how many hosts were asked;
    a host that failed is appended to ``failures`` (and said on stderr), and the other hosts'
    rows are still returned."""
    function = _remote_api("stream_sessions")
    hosts = _remote_hosts(args, [args.host] if args.host else [])

    async def collect() -> list[SessionRow]:
        rows: list[SessionRow] = []
        async for batch in function(
            remote=True,
            hosts=hosts,
            errors=failures,
            emit=_warnings_out(args),
            idle_timeout=_idle_timeout(args),
            concurrency=args.concurrency or CONCURRENCY,
            **filters,
        ):
            rows.extend(batch)
        return rows

    import anyio

    result: list[SessionRow] = anyio.run(collect)
    for exc in failures:
        _say(exc)
    return result, len(hosts)


def _show_remote(args: argparse.Namespace, how: dict[str, Any]) -> tuple[Any, ShowResult]:
    """A session straight from its host: no index row (None), and the messages read."""
    function = _remote_api("read_session")
    (host,) = _remote_hosts(args, [args.host])
    result: ShowResult = _resolve(
        function(
            host, args.session, idle_timeout=_idle_timeout(args), emit=_warnings_out(args), **how
        )
    )
    return None, result


def _warnings_out(args: argparse.Namespace) -> Callable[[Any], None]:
    """The ``emit`` of a remote listing or show: the hosts' warning events (what a host's
    ssh_config asks for that its connection leaves out) shown as ``sync`` shows them, as
    they come: with ``--json`` as event lines on stdout, else on stderr. Progress is not
    shown, and a host's error is said with the others once the command is done."""
    from .events import WarningEvent, json_lines_renderer

    if args.json:
        write = json_lines_renderer()
    else:
        from .render import PipeConsole, print_problem

        err = PipeConsole(stderr=True)

        def write(event: Any) -> None:
            print_problem(err, event)

    def emit(event: Any) -> None:
        if isinstance(event, WarningEvent):
            write(event)

    return emit


def _check_remote_flags(args: argparse.Namespace) -> None:
    if args.remote and args.dest is not None:
        # It would be ignored: the hosts are read, not that mirror ($REMOTE_SYNC_DEST, a
        # default, is not refused).
        raise ConfigError(
            "--dest does not apply with --remote: the hosts are read, not a mirror",
            hint="drop --dest to ask the hosts, or --remote to read the mirror",
        )
    if args.inventory and not args.remote:
        raise ConfigError("--inventory applies only with --remote")
    if args.timeout is not None and not args.remote:
        raise ConfigError("--timeout applies only with --remote")
    concurrency: int | None = getattr(args, "concurrency", None)  # list has it, show not
    if concurrency is not None:
        if not args.remote:
            raise ConfigError("--concurrency applies only with --remote")
        check_concurrency(concurrency)


def run_sessions_list(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        _check_remote_flags(args)
        filters: dict[str, Any] = {
            "host": args.host,
            "format": args.format,
            "agent": args.agent,
            "since": args.since,
            "klass": args.klass,
            "state": args.state,
            "sort": args.sort,
            "limit": args.limit,
        }
        listed: Generator[SessionRow] | None = None
        failures: list[RemoteSyncError] = []
        unknown: RemoteSyncError | None = None
        hosts = 0
        if args.remote:
            rows: Iterable[SessionRow]
            rows, hosts = _list_remote(args, filters, failures)
        else:
            from .index.query import query_sessions
            from .mirror.state import stream_state

            def query(db: sqlite3.Connection) -> Iterator[SessionRow]:
                # Whether --host names an indexed host, asked on the listing's connection
                # (one open of the state, not two) and again with it on a reread.
                nonlocal unknown
                unknown = _unknown_host(db, args.host)
                return query_sessions(db, **filters)

            # Read again (on a new connection) when a sync starts during the read: see
            # stream_state. The rows stay a stream, never all in memory.
            listed = stream_state(_dest(args), query, warn=True)
            rows = listed
        try:
            if args.json:

                def rows_then_errors() -> int:
                    _write_json_lines(rows)
                    # The hosts that failed, as `sync --json` reports them (after the rows).
                    return _write_error_events(failures)

                code = _guard_pipe(rows_then_errors)
            else:

                def table() -> int:
                    found = list(rows)  # read first: it says whether the host is unknown
                    quiet = bool(failures) or unknown is not None
                    return _print_sessions(found, quiet=quiet)

                code = _guard_pipe(table)
            if unknown is not None:
                _say(unknown)
        finally:
            if listed is not None:
                listed.close()
        configuration = all(isinstance(exc, ConfigError) for exc in failures)
        if failures and configuration and len({exc.host for exc in failures}) == hosts:
            return EXIT_USAGE  # every host failed on its configuration, as in `sync`
        # Some hosts could not be read: the rows shown are not the whole fleet's.
        return EXIT_FAILED if failures else code
    except RemoteSyncError as exc:
        return _fail(exc, args)


def _unknown_host(db: sqlite3.Connection, host: str | None) -> RemoteSyncError | None:
    """For a ``--host`` of ``sessions list`` or ``stats`` that the index has no session of,
    what to say after the (empty) output: a filter that matches nothing is no error (exit 0),
    but a mistyped name, or an inventory address where its hosts' names are meant, would
    otherwise look like a host without sessions. ``show`` refuses such a name."""
    if host is None:
        return None
    from .index.query import unknown_host

    return unknown_host(db, host)


def _write_error_events(errors: Sequence[RemoteSyncError]) -> int:
    """Each error as a ``--json`` error event line (``"type": "error"``, as ``sync`` writes)."""
    if errors:
        from .events import ErrorEvent, json_lines_renderer

        emit = json_lines_renderer()
        for exc in errors:
            emit(ErrorEvent.from_exception(exc))
    return EXIT_OK


def run_sessions_show(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        _check_remote_flags(args)
        if args.page_size < 1:
            raise ConfigError("--page-size must be at least 1")
        head, tail, page = args.head, args.tail, args.page
        if head is None and tail is None and page is None:
            page = 1
        how = {"head": head, "tail": tail, "page": page, "page_size": args.page_size}
        if args.remote:
            row, result = _show_remote(args, how)
        else:
            from .index.show import show_session

            row, result = show_session(_dest(args), args.host, args.session, **how)
        if args.json:
            return _guard_pipe(lambda: _write_json_lines(result.messages))
        return _guard_pipe(lambda: _print_messages(row, result, page, args.page_size))
    except RemoteSyncError as exc:
        return _fail(exc, args)


def run_sessions_stats(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        from .index.query import session_stats
        from .mirror.state import read_state

        def read(db: sqlite3.Connection) -> tuple[list[StatsRow], RemoteSyncError | None]:
            groups = session_stats(
                db,
                args.by,
                host=args.host,
                format=args.format,
                agent=args.agent,
                since=args.since,
                klass=args.klass,
                state=args.state,
            )
            return groups, _unknown_host(db, args.host)

        groups, unknown = read_state(_dest(args), read, warn=True)
        if args.json:
            code = _guard_pipe(lambda: _write_json_lines(groups))
        else:
            code = _guard_pipe(lambda: _print_stats(args.by, groups))
        if unknown is not None:
            _say(unknown)
        return code
    except RemoteSyncError as exc:
        return _fail(exc, args)


def run_index_rebuild(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    unreadable: list[RemoteSyncError] = []

    def on_error(exc: RemoteSyncError) -> None:
        unreadable.append(exc)
        _say(exc)

    try:
        dest = _dest(args)
        if not (dest / ".remote-sync" / "state.db").is_file():
            raise ConfigError(
                f"no mirror at {dest} (no .remote-sync/state.db)",
                hint=f"pass --dest DIR (or set {DEST_ENV}) to a directory `remote-sync sync` "
                "has filled",
            )
        try:
            from .index.update import rebuild_index
        except ImportError:
            raise ConfigError(
                "index rebuild is not available: remote_sync.index.update is missing"
            ) from None
        # A file it cannot read is left out and reported; the rest is indexed (see there).
        count = rebuild_index(dest, on_error=on_error)
    except RemoteSyncError as exc:
        return _fail(exc, args)

    def report() -> int:
        if args.json:
            _write_error_events(unreadable)
            extra = f',"unreadable":{len(unreadable)}' if unreadable else ""
            sys.stdout.write(f'{{"type":"index_rebuilt","sessions":{count}{extra}}}\n')
            sys.stdout.flush()
        else:
            n = len(unreadable)
            left_out = f"; {_counted(n, 'unreadable file')} left out" if n else ""
            print(f"{_counted(count, 'session')} indexed in {dest}{left_out}", flush=True)
        return EXIT_OK

    code = _guard_pipe(report)
    return EXIT_FAILED if unreadable else code


def run_versions_list(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        from .mirror.versions import list_versions

        rows = list_versions(_dest(args), host=args.host, files=args.files)
    except RemoteSyncError as exc:
        return _fail(exc, args)
    if args.json:
        return _guard_pipe(lambda: _write_json_lines(rows))
    return _guard_pipe(lambda: _print_versions(rows))


def run_check(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from .events import stdout_to_devnull
    from .mirror.check import check_mirror

    hints: dict[str, None] = {}  # each hint once, in the order found, after the problems
    lost: list[OSError] = []

    def out(write: Callable[[], object]) -> None:
        """Output that fails does not stop the check: a reader that closed the pipe has what
        it wanted, and the exit code still says whether the mirror is intact."""
        if lost:
            return
        try:
            write()
        except OSError as exc:
            lost.append(exc)
            stdout_to_devnull()

    def on_problem(problem: Problem) -> None:
        if args.json:
            out(lambda: _write_json_lines([problem]))
            return
        hints.setdefault(problem.hint)
        out(lambda: _print_problem(problem))

    try:
        dest = _dest(args)
        summary = check_mirror(dest, host=args.host, on_problem=on_problem)
    except RemoteSyncError as exc:
        return _fail(exc, args)
    if args.json:
        out(lambda: _write_json_lines([summary]))
    else:
        out(lambda: _print_check_end(dest, summary, hints))
    code = EXIT_FAILED if summary.damaged else EXIT_OK
    if lost and not isinstance(lost[0], BrokenPipeError):
        _say(_report_lost(lost[0], "what was written of it is incomplete"))
        return EXIT_FAILED
    return code


def run_versions_restore(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        from .mirror.versions import find_version

        if not args.to:
            raise ConfigError("--to is empty", hint="name a file, or - for stdout")
        # The lookup and the checks of FILE outside _guard_pipe: an OSError of theirs (no
        # permission on a directory) is no lost output, and they turn it into their errors.
        kept = find_version(_dest(args), args.host, args.path, args.version)
        if args.to != "-":
            kept.write_to(Path(args.to), force=args.force)
            return EXIT_OK

        def copy_out() -> int:
            from .events import stdout_to_devnull

            try:
                kept.copy_to(sys.stdout.buffer)
            except OutputError:
                stdout_to_devnull()  # what is still buffered would fail again at exit
                raise
            return EXIT_OK

        return _guard_pipe(copy_out)
    except RemoteSyncError as exc:
        return _fail(exc, args)


def run_versions_prune(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    # A copy or directory the prune could not remove does not stop it: every failure is said
    # after what it removed (a line each and the total, or the JSON object, then an error
    # each): alone, they left the user not knowing which copies were already gone.
    errors: list[RemoteSyncError] = []
    try:
        from .mirror.versions import prune_versions

        result = prune_versions(
            _dest(args),
            host=args.host,
            files=args.files,
            keep_last=args.keep_last,
            keep_within=args.keep_within,
            dry_run=args.dry_run,
            errors=errors,
        )
    except RemoteSyncError as exc:
        return _fail(exc, args)
    if args.json:
        code = _guard_pipe(lambda: _write_json_lines([result]))
    else:
        code = _guard_pipe(lambda: _print_pruned(result))
    for failure in errors:  # each a MirrorError: exit 1
        code = _fail(failure, args)
    # A version no rule keeps that had to stay (reached through a link put there by hand)
    # is a file that failed, as with any other file a command could not do.
    return EXIT_FAILED if result.left else code


# -- human output (rich, imported only here) ----------------------------------------------------


def _console() -> Console:
    from .render import PipeConsole

    console = PipeConsole(highlight=False)
    # Piped output has no width to honour: one wide enough for the columns.
    return console if console.is_terminal else PipeConsole(width=160, highlight=False)


def _listing_console() -> Console:
    """The console of a listing: piped (grep, a log), every row whole, as wide as its widest
    cell needs."""
    from .render import PipeConsole

    console = _console()
    return console if console.is_terminal else PipeConsole(width=1 << 20, highlight=False)


def _print_whole(console: Console, table: Any) -> None:
    """``table`` with every cell as its columns allow (a title cut to its ``max_width``):
    rich fits a table to the terminal by cutting every column, so on an 80-column terminal a
    host name became ``…`` and a size of 829 B ``82…``. A terminal narrower than the columns
    need wraps the rows instead; nothing shown is cut short."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1 << 20), table).maximum
    if needed > console.width:
        console.width = needed
    console.print(table)


def _counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 message", "0 messages"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _when(ts: str | None) -> str:
    """An index time (UTC) to the minute. The tables say UTC in their heading and ``show``
    after each time: the hosts' own offsets are gone by then, and ``--since`` and ``stats
    --by day`` count in UTC too."""
    return f"{ts[:10]} {ts[11:16]}" if ts else "-"


def _cut(text: str | None, width: int) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _cut_session_id(session_id: str, width: int = 14) -> str:
    """A session id for the table: cut at its end, or, for an id with a ``/`` (a Claude Code
    sub-agent's ``<parent uuid>/agent-<id>``), in its middle, so that its last part shows and
    a sub-agent does not read as its parent."""
    head, slash, tail = session_id.rpartition("/")
    if not slash or len(session_id) <= width:
        return _cut(session_id, width)
    cut = f"{head[:8]}…/{tail if len(tail) <= width + 2 else '…' + tail[-(width + 1) :]}"
    # The tail's end is kept: sub-agents of one parent differ there (agent-<hex id>).
    return session_id if len(session_id) <= len(cut) else cut


def _print_sessions(rows: list[SessionRow], *, quiet: bool = False) -> int:
    """The table of sessions; ``quiet``: no "no sessions match" (errors were said instead)."""
    from rich.table import Table
    from rich.text import Text

    from .render import plain

    console = _listing_console()
    class_style = {"empty": "dim", "low": "yellow", "valuable": "green"}
    state_style = {
        "live": "",
        "archived": "blue",
        "deleted": "red",
        "rewritten": "magenta",
        "renamed": "dim",
    }
    cells = [
        (
            plain(r.host),
            plain(r.agent or "-"),
            plain(_cut_session_id(r.session_id)),
            plain(r.klass, class_style.get(r.klass, "")),
            plain(r.state, state_style.get(r.state, "")),
            Text(str(r.messages)),
            Text(_count(r.tokens_in + r.tokens_out)),
            plain(_when(r.last_ts)),
        )
        for r in rows
    ]
    heads = (
        "host",
        "agent",
        "session",
        "class",
        "state",
        "messages",
        "tokens",
        "last activity (UTC)",
    )
    # The title gets what the other columns leave (rich alone would squeeze them all, host
    # names first): on a narrow terminal it is the one cut.
    widths = [len(head) for head in heads]
    for row_cells in cells:
        widths = [max(w, cell.cell_len) for w, cell in zip(widths, row_cells, strict=True)]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for head in heads:
        table.add_column(
            head, no_wrap=True, justify="right" if head in ("messages", "tokens") else "left"
        )
    left = console.width - sum(widths) - 2 * len(widths)
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=max(left, 10))
    for r, row_cells in zip(rows, cells, strict=True):
        table.add_row(*row_cells, plain(_cut(r.title, 60)))
    _print_whole(console, table)
    if not rows and not quiet:
        print("no sessions match", file=sys.stderr)
    return EXIT_OK


def _print_versions(rows: list[VersionRow]) -> int:
    """The table of kept versions (paths whole: they are what restore takes)."""
    from rich.table import Table
    from rich.text import Text

    from .render import human_size, plain

    console = _listing_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for head in ("host", "path", "version", "bytes", "kept (UTC)", "session"):
        table.add_column(
            head, no_wrap=True, justify="right" if head in ("version", "bytes") else "left"
        )
    for r in rows:
        table.add_row(
            plain(r.host),
            plain(r.path),
            Text(str(r.version)),
            Text(human_size(r.bytes)),
            plain(_kept_when(r)),
            plain(_cut_session_id(r.session_id) if r.session_id else "-"),
        )
    _print_whole(console, table)
    if not rows:
        print("no kept versions", file=sys.stderr)
    return EXIT_OK


def _print_problem(problem: Problem) -> None:
    """One line a problem: damage or note, where, and what."""
    from .errors import showable

    where = f"{problem.host}: {problem.path}" if problem.host else problem.path
    if problem.version is not None:
        where += f" v{problem.version}"
    print(f"{problem.type:6}  {showable(where)}: {showable(problem.what)}", flush=True)


def _print_check_end(dest: Path, summary: CheckSummary, hints: Iterable[str]) -> None:
    """What to do (each hint once), then the counts."""
    from .errors import showable

    for hint in hints:
        print(f"what to do: {showable(hint)}")
    found = f"{_counted(summary.damaged, 'damaged item')}, " if summary.damaged else ""
    notes = f"{_counted(summary.notes, 'note')}" if summary.notes else "no notes"
    state = "intact" if summary.intact else "DAMAGED"
    print(
        f"checked {_counted(summary.files, 'file')} and {_counted(summary.versions, 'version')} "
        f"in {showable(str(dest))}: {state} ({found}{notes})",
        flush=True,
    )


def _kept_when(row: VersionRow) -> str:
    """When a version was kept, or, with no keep time recorded, when its copy was last
    written (no later than it was kept), said so."""
    return _when(row.kept_at) if row.kept_at else f"{_when(row.modified)} (written)"


def _print_pruned(result: PruneResult) -> int:
    """One line per version removed (or, in a dry run, to be), stderr for those left, and a
    total."""
    from .errors import showable
    from .render import human_size

    verb = "would remove" if result.dry_run else "removed"
    for r in result.removed:
        print(
            f"{verb} {showable(r.host)}: {showable(r.path)} v{r.version} "
            f"({human_size(r.bytes)}, kept {_kept_when(r)})"
        )
    for r in result.left:
        print(
            f"remote-sync: {showable(r.host)}: {showable(r.path)}: version {r.version} "
            f"({showable(r.file)}) is reached through a symbolic link or changed meanwhile: "
            "left in place (look at it; remove it by hand if it is yours to remove)",
            file=sys.stderr,
        )
    freed = "would free" if result.dry_run else "freed"
    tail = "; nothing removed (dry run)" if result.dry_run else ""
    print(
        f"{verb} {_counted(len(result.removed), 'version')} ({human_size(result.bytes_freed)} "
        f"{freed}); {_counted(result.kept, 'version')} kept{tail}",
        flush=True,
    )
    return EXIT_OK


_TEXT_CHARS = 1200
_TEXT_LINES = 16


def _message_text(text: str) -> str:
    lines = text.strip().splitlines()
    cut = len(lines) > _TEXT_LINES
    shown = "\n".join(lines[:_TEXT_LINES])
    if len(shown) > _TEXT_CHARS:
        shown, cut = shown[:_TEXT_CHARS], True
    return shown + (" …" if cut else "")


def _print_messages(
    row: SessionRow | None, result: ShowResult, page: int | None, page_size: int
) -> int:
    """Messages for a person; ``row`` is None for a session read straight from its host."""
    from rich.text import Text

    from .render import plain

    console = _console()
    if row is not None:
        console.print(
            Text.assemble(
                plain(row.host, "bold"),
                " ",
                plain(row.path, "bold"),
                "  session ",
                plain(row.session_id),
                f"  {_counted(row.messages, 'message')}  ",
                plain(row.state),
            ),
            # One line however long the path: a terminal wraps it, a pipe keeps it whole.
            soft_wrap=True,
        )
    role_style = {"user": "bold cyan", "assistant": "bold green", "tool": "bold magenta"}
    for i, message in enumerate(result.messages):
        number = f"#{result.first + i + 1} " if result.first is not None else ""
        header = Text.assemble(
            (number, "dim"),
            plain(message.role, role_style.get(message.role, "bold")),
            plain(f"  {_when(message.timestamp)} UTC" if message.timestamp else "", "dim"),
            plain(f"  {message.model}" if message.model else "", "dim"),
        )
        console.print()
        console.print(header)
        if message.text:
            console.print(plain(_message_text(message.text), lines=True), soft_wrap=False)
        for call in message.tool_calls:
            shown = f"→ {call.name}({_cut(call.arguments, 160)})"
            # Not folded at the console's width: rich broke a call after "→ " when its
            # arguments filled their 160 characters, leaving the name on the next line.
            console.print(plain(shown, "yellow"), soft_wrap=True)
    _print_footer(row, result, page, page_size)
    return EXIT_OK


def _print_footer(
    row: SessionRow | None, result: ShowResult, page: int | None, page_size: int
) -> None:
    from .render import human_size

    shown = len(result.messages)
    # Straight from the host, the total is known when the read decoded the whole file anyway
    # (a page that reached the end, a tail that reached the start); reading the rest of the
    # file only to count its messages would cost what a show is built not to read.
    total = result.total if result.total is not None or row is None else row.messages
    if total is None:
        messages = _counted(shown, "message")
        note = f"page {page}: {messages}" if page is not None else messages
        print(f"\n{note}; read {human_size(result.bytes_read)}", file=sys.stderr)
        return
    # Pages number every message shown, a record written again too (counted once in the row).
    count = _counted(total, "message")
    if row is not None and total != row.messages:
        count += f", {total - row.messages} of them repeated"
    if page is not None:
        pages = max(1, -(-total // page_size))
        if not shown:
            note = f"page {page} is past the end ({count}, {_counted(pages, 'page')})"
        else:
            note = f"page {page} of {pages} ({count})"
            if page < pages:
                note += f"; --page {page + 1} for more"
    else:
        note = f"{shown} of {count}"
    print(f"\n{note}; read {human_size(result.bytes_read)}", file=sys.stderr)


def _print_stats(by: str, groups: list[StatsRow]) -> int:
    from rich.table import Table
    from rich.text import Text

    from .render import plain

    console = _console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(by, no_wrap=True)
    heads = ("sessions", "messages", "tool calls", "tokens in", "tokens out", "cache read")
    for name in (*heads, "cache write", "cost", "bytes"):
        table.add_column(name, justify="right", no_wrap=True)
    for g in groups:
        table.add_row(*_stats_cells(plain(g.key or "-"), g))
    if groups and by != "model":
        total = _total(groups)
        table.add_row(*_stats_cells(Text("total", style="bold"), total), end_section=True)
    _print_whole(console, table)
    return EXIT_OK


def _stats_cells(key: Text, g: StatsRow) -> Iterator[Text | str]:
    from .render import human_size

    yield key
    yield str(g.sessions)
    yield str(g.messages)
    yield str(g.tool_calls)
    for n in (g.tokens_in, g.tokens_out, g.tokens_cache_read, g.tokens_cache_write):
        yield _count(n)
    yield "-" if g.cost is None else f"${g.cost:.2f}"
    yield human_size(g.bytes)


def _total(groups: list[StatsRow]) -> StatsRow:
    from .index.query import StatsRow

    costs = [g.cost for g in groups if g.cost is not None]
    return StatsRow(
        groups[0].by,
        None,
        sum(g.sessions for g in groups),
        sum(g.messages for g in groups),
        sum(g.tool_calls for g in groups),
        sum(g.tokens_in for g in groups),
        sum(g.tokens_out for g in groups),
        sum(g.tokens_cache_read for g in groups),
        sum(g.tokens_cache_write for g in groups),
        sum(costs) if costs else None,
        sum(g.bytes for g in groups),
    )


if __name__ == "__main__":  # pragma: no cover
    entry()
