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
  there and can serve it (:mod:`remote_sync.cli.sync`: no asyncssh imported, the events shown
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

What this module owns: the parser (every command's options and help), :func:`main` (dispatch,
exit codes, SIGTERM taken as a Ctrl-C), :func:`entry` (the console script's quick exit) and
the exit codes. Each command's code is a module of this package, imported only when the
command runs (:func:`_command`), so that ``--help``, ``--version`` and a usage error load none:

* :mod:`~remote_sync.cli.sync`: ``sync``, run here or followed through the agent;
* :mod:`~remote_sync.cli.agent`: ``agent``;
* :mod:`~remote_sync.cli.sessions`: ``sessions list|show|stats``, from the mirror or the hosts;
* :mod:`~remote_sync.cli.maintenance`: ``index rebuild``, ``versions list|restore|prune``,
  ``check``;
* :mod:`~remote_sync.cli.human`: what the read commands print for a person (rich);
* :mod:`~remote_sync.cli.common`: what the commands share: errors said and mapped to exit
  codes, JSON lines, a closed pipe, the mirror's ``--dest``;
* :mod:`~remote_sync.cli.running`: the process set up for the engine (``sync``, ``agent``).
"""

from __future__ import annotations

# First: under ``python -m remote_sync.cli``, importing it guards the rest of this package's
# import against a Ctrl-C (runpy makes it before the command line's own guard runs).
from .. import __main__ as _guard  # noqa: F401

# isort: split
import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import ConfigError
from ..ssh.remote import CONCURRENCY, IDLE_TIMEOUT, checked_idle_timeout

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


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The run function ``name`` of the command module ``module`` of this package, imported
    when the command runs: ``--help``, ``--version`` and a usage error load no command's code
    (see the module's docstring). The same object each time, so that :func:`main` can tell
    which command it runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        function = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        code: int = function(args)
        return code

    run.__name__ = run.__qualname__ = name
    return run


run_sync = _command("sync", "run_sync")
run_agent = _command("agent", "run_agent")
run_sessions_list = _command("sessions", "run_sessions_list")
run_sessions_show = _command("sessions", "run_sessions_show")
run_sessions_stats = _command("sessions", "run_sessions_stats")
run_index_rebuild = _command("maintenance", "run_index_rebuild")
run_versions_list = _command("maintenance", "run_versions_list")
run_versions_restore = _command("maintenance", "run_versions_restore")
run_versions_prune = _command("maintenance", "run_versions_prune")
run_check = _command("maintenance", "run_check")


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
            from .common import write_error_events

            hint = f"see {self.prog} --help"
            # A stdout that cannot be written (a full disk) loses the event, not the usage
            # text and exit 2 that follow: the exit code says it, and so does stderr.
            with contextlib.suppress(OSError):
                write_error_events([ConfigError(f"{self.prog}: {message}", hint=hint)])
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
    from ..formats import FORMATS  # the registry alone: no engine, no asyncssh

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
    from ..index.query import age_seconds

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

    from ..interrupt import take_as_ctrl_c

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
    from .common import interrupted, say, write_error_events

    if json:
        with contextlib.suppress(OSError):  # as a usage error's event: exit 130 says it
            write_error_events([interrupted()])
            sys.stdout.flush()
    else:
        say(interrupted())
    return EXIT_CANCELLED


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
    logging = sys.modules.get("logging")
    if logging is not None:  # imported by the run (a sync through the agent has none)
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


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, systemd stopping a timer's run) taken as a Ctrl-C, for
    a whole command (:func:`main` puts every command but the agent in it): until a sync's
    rounds take both signals over (:func:`~remote_sync.cli.running.signals_received`), and
    again after them. Left to its default, a SIGTERM while a sync's state was opened or
    recovered (a second or more on a large mirror) ended the process unreported, and left a
    dry run's copy of the state behind; and a check, a listing or a prune died of it (exit
    -15), where a Ctrl-C exits 130 saying so."""
    import signal
    import threading

    from ..interrupt import heeded, take_as_ctrl_c

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
