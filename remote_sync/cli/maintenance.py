"""The commands that look after the mirror: ``index rebuild``, ``versions list|restore|prune``
and ``check``.

What it owns: each command's run (the work is :mod:`remote_sync.index.update`'s,
:mod:`remote_sync.mirror.versions`' and :mod:`remote_sync.mirror.check`'s), what goes to
stdout or stderr and the exit code: a file that could not be read or removed is said and
makes it 1, as damage found by ``check`` does, and output lost on the way does not stop a
check. What a person reads of them is :mod:`remote_sync.cli.human`'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, OutputError, RemoteSyncError
from . import DEST_ENV, EXIT_FAILED, EXIT_OK
from .common import (
    counted,
    dest_or_default,
    fail,
    guard_pipe,
    report_lost,
    say,
    setup_logging,
    write_error_events,
    write_json_lines,
)

if TYPE_CHECKING:
    from ..mirror.check import Problem


def run_index_rebuild(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    unreadable: list[RemoteSyncError] = []

    def on_error(exc: RemoteSyncError) -> None:
        unreadable.append(exc)
        say(exc)

    try:
        dest = dest_or_default(args)
        if not (dest / ".remote-sync" / "state.db").is_file():
            raise ConfigError(
                f"no mirror at {dest} (no .remote-sync/state.db)",
                hint=f"pass --dest DIR (or set {DEST_ENV}) to a directory `remote-sync sync` "
                "has filled",
            )
        try:
            from ..index.update import rebuild_index
        except ImportError:
            raise ConfigError(
                "index rebuild is not available: remote_sync.index.update is missing"
            ) from None
        # A file it cannot read is left out and reported; the rest is indexed (see there).
        count = rebuild_index(dest, on_error=on_error)
    except RemoteSyncError as exc:
        return fail(exc, args)

    def report() -> int:
        if args.json:
            write_error_events(unreadable)
            extra = f',"unreadable":{len(unreadable)}' if unreadable else ""
            sys.stdout.write(f'{{"type":"index_rebuilt","sessions":{count}{extra}}}\n')
            sys.stdout.flush()
        else:
            n = len(unreadable)
            left_out = f"; {counted(n, 'unreadable file')} left out" if n else ""
            print(f"{counted(count, 'session')} indexed in {dest}{left_out}", flush=True)
        return EXIT_OK

    code = guard_pipe(report)
    return EXIT_FAILED if unreadable else code


def run_versions_list(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        from ..mirror.versions import list_versions

        rows = list_versions(dest_or_default(args), host=args.host, files=args.files)
    except RemoteSyncError as exc:
        return fail(exc, args)
    if args.json:
        return guard_pipe(lambda: write_json_lines(rows))
    from .human import print_versions

    return guard_pipe(lambda: print_versions(rows))


def run_check(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    from ..events import stdout_to_devnull
    from ..mirror.check import check_mirror

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
            out(lambda: write_json_lines([problem]))
            return
        from .human import print_check_problem

        hints.setdefault(problem.hint)
        out(lambda: print_check_problem(problem))

    try:
        dest = dest_or_default(args)
        summary = check_mirror(dest, host=args.host, on_problem=on_problem)
    except RemoteSyncError as exc:
        return fail(exc, args)
    if args.json:
        out(lambda: write_json_lines([summary]))
    else:
        from .human import print_check_end

        out(lambda: print_check_end(dest, summary, hints))
    code = EXIT_FAILED if summary.damaged else EXIT_OK
    if lost and not isinstance(lost[0], BrokenPipeError):
        say(report_lost(lost[0], "what was written of it is incomplete"))
        return EXIT_FAILED
    return code


def run_versions_restore(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        from ..mirror.versions import find_version

        if not args.to:
            raise ConfigError("--to is empty", hint="name a file, or - for stdout")
        # The lookup and the checks of FILE outside guard_pipe: an OSError of theirs (no
        # permission on a directory) is no lost output, and they turn it into their errors.
        kept = find_version(dest_or_default(args), args.host, args.path, args.version)
        if args.to != "-":
            kept.write_to(Path(args.to), force=args.force)
            return EXIT_OK

        def copy_out() -> int:
            from ..events import stdout_to_devnull

            try:
                kept.copy_to(sys.stdout.buffer)
            except OutputError:
                stdout_to_devnull()  # what is still buffered would fail again at exit
                raise
            return EXIT_OK

        return guard_pipe(copy_out)
    except RemoteSyncError as exc:
        return fail(exc, args)


def run_versions_prune(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    # A copy or directory the prune could not remove does not stop it: every failure is said
    # after what it removed (a line each and the total, or the JSON object, then an error
    # each): alone, they left the user not knowing which copies were already gone.
    errors: list[RemoteSyncError] = []
    try:
        from ..mirror.versions import prune_versions

        result = prune_versions(
            dest_or_default(args),
            host=args.host,
            files=args.files,
            keep_last=args.keep_last,
            keep_within=args.keep_within,
            dry_run=args.dry_run,
            errors=errors,
        )
    except RemoteSyncError as exc:
        return fail(exc, args)
    if args.json:
        code = guard_pipe(lambda: write_json_lines([result]))
    else:
        from .human import print_pruned

        code = guard_pipe(lambda: print_pruned(result))
    for failure in errors:  # each a MirrorError: exit 1
        code = fail(failure, args)
    # A version no rule keeps that had to stay (reached through a link put there by hand)
    # is a file that failed, as with any other file a command could not do.
    return EXIT_FAILED if result.left else code
