"""What the commands of the command line share: their errors said and mapped to exit codes.

What it owns: an error said on stderr (:func:`say`) and, under ``--json``, as an error line
on stdout too (:func:`report`, :func:`fail`, :func:`write_error_events`); the exit code of
an error's kind (:func:`exit_code`); JSON lines written in large chunks
(:func:`write_json_lines`); a reader that closed the pipe told from output that could not be
written (:func:`guard_pipe`, :func:`report_lost`); the mirror a command names
(:func:`dest_or_default`, :func:`given_dest`), ``--timeout`` (:func:`idle_timeout`),
``-v`` (:func:`setup_logging`), a counted noun (:func:`counted`) and the error a signal's
cancel is said as (:func:`interrupted`). The exit codes
themselves are :mod:`remote_sync.cli`'s. Standard library only at import time, as the
command line's start-up wants.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, OutputError, RemoteSyncError
from ..ssh.remote import IDLE_TIMEOUT
from . import (
    DEFAULT_DEST,
    DEST_ENV,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
)

if TYPE_CHECKING:
    from ..events import Emit


def idle_timeout(args: argparse.Namespace) -> float | None:
    """The idle timeout ``--timeout`` asks for (None: no limit)."""
    if args.timeout is None:
        return IDLE_TIMEOUT
    return args.timeout or None


def interrupted() -> RemoteSyncError:
    """What a Ctrl-C caught outside a sync's rounds is (the rounds report their own)."""
    from ..errors import TransferCancelledError

    return TransferCancelledError(
        "cancelled by a signal", hint="nothing was left half-done; run the command again"
    )


def setup_logging(verbose: int) -> None:
    import logging

    from ..logformat import ShowableFormatter

    # Log lines name hosts' files: their control characters escaped, as in every other line.
    handler = logging.StreamHandler()
    handler.setFormatter(ShowableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        handlers=[handler],
    )


def report_lost(exc: OSError, what: str) -> OutputError:
    return OutputError(
        f"cannot write the output: {exc.strerror or exc}",
        hint=f"{what}: free space on the disk the output is redirected to (a log's), then "
        "run again",
    )


def say(exc: RemoteSyncError) -> None:
    """``exc`` on stderr, undecodable bytes of its host or path as ``\\xNN`` (like paths
    everywhere else), not as the surrogates Python keeps them in. The message may name what a
    host holds (a file, the sessions a prefix matches, a tool's complaint): its control
    characters are escaped as everywhere else, not sent to the terminal."""
    from ..errors import showable

    # A stderr that cannot be written either (the same full disk) leaves nothing to tell;
    # the exit code still says it.
    with contextlib.suppress(OSError):
        print(f"remote-sync: {showable(str(exc), lines=True)}", file=sys.stderr)


def report(exc: RemoteSyncError, json_out: Emit | None) -> None:
    """``exc`` said on stderr and, when ``json_out`` is given (``--json``), as an error
    event there too, as every command reports its errors to a script."""
    if json_out is not None:
        from ..events import ErrorEvent

        with contextlib.suppress(OSError):  # the exit code says it, and so does stderr
            json_out(ErrorEvent.from_exception(exc))
    say(exc)


def dest_or_default(args: argparse.Namespace) -> Path:
    """The read commands' mirror: ``--dest``, else ``$REMOTE_SYNC_DEST``, else ./mirror."""
    if args.dest is not None:
        return given_dest(args.dest)
    return Path(os.environ.get(DEST_ENV) or DEFAULT_DEST)


def given_dest(value: str) -> Path:
    """An explicit ``--dest``: never empty, which ``Path`` would take for the current directory
    (a sync would fill it, a reader would read it)."""
    if not value:
        raise ConfigError(
            "--dest is empty", hint="name the mirror directory; for the current one, say --dest ."
        )
    return Path(value)


#: The exit code of an error by its kind (:attr:`~remote_sync.errors.RemoteSyncError.kind`),
#: any other kind exit 1: one mapping for an error raised in this process and for one the
#: agent reports.
_EXIT_BY_KIND = {
    "config": EXIT_USAGE,  # ConfigError and ArgumentError
    "destination": EXIT_USAGE,  # DestinationError, a ConfigError too
    "locked": EXIT_LOCKED,
    "cancelled": EXIT_CANCELLED,
}


def exit_code(kind: str) -> int:
    """The exit code of an error of ``kind``."""
    return _EXIT_BY_KIND.get(kind, EXIT_FAILED)


def fail(exc: RemoteSyncError, args: argparse.Namespace) -> int:
    """:func:`report` of ``exc`` for a command of ``args`` (its ``--json``, on stdout); its
    exit code."""
    if getattr(args, "json", False):
        from ..events import json_lines_renderer

        report(exc, json_lines_renderer())
    else:
        report(exc, None)
    return exit_code(exc.kind)


def write_json_lines(items: Iterable[Any]) -> int:
    """Encode items as JSON lines and write them to stdout in large chunks.

    U+0085, U+2028 and U+2029 are written escaped (``events.one_line``): many line splitters
    take them for line ends.
    """
    import msgspec

    from ..events import one_line

    encode = msgspec.json.Encoder().encode_lines
    out = sys.stdout.buffer

    def write(batch: list[Any]) -> None:
        out.write(one_line(encode(batch)))

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


def guard_pipe(run: Any) -> int:
    """Run ``run()``; a reader that closed the pipe (``| head``) is not an error, output that
    could not be written otherwise (a full disk, an I/O error) is one: exit 1 and a line on
    stderr, not a traceback.

    The rich output uses ``render.PipeConsole``, which goes quiet instead of raising; plain
    writes raise BrokenPipeError, caught here.
    """
    from ..events import stdout_to_devnull

    try:
        code: int = run()
        return code
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null.
        stdout_to_devnull()
        return EXIT_OK
    except OSError as exc:
        say(report_lost(exc, "what was written of it is incomplete"))
        stdout_to_devnull()  # what is still buffered would fail again at exit
        return EXIT_FAILED


def write_error_events(errors: Sequence[RemoteSyncError]) -> int:
    """Each error as a ``--json`` error event line (``"type": "error"``, as ``sync`` writes)."""
    if errors:
        from ..events import ErrorEvent, json_lines_renderer

        emit = json_lines_renderer()
        for exc in errors:
            emit(ErrorEvent.from_exception(exc))
    return EXIT_OK


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 message", "0 messages"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
