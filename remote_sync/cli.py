"""The command line: parse arguments, call the engine, render its events, map errors to exit codes.

Thin on purpose: everything it does is also reachable from the async library API.

Exit codes (scripts rely on them): 0 every host synced; 1 some hosts or files failed (the rest
synced); 2 usage or configuration error; 75 the destination is locked by another run (nothing
touched; try again later, like EX_TEMPFAIL); 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from . import __version__
from .cancel import CancelRegistry
from .errors import ConfigError, LockedError, RemoteSyncError
from .events import Emit, ErrorEvent, ThrottledProgress, json_lines_renderer
from .inventory import AdhocOptions, Host, Inventory, load_inventory
from .mirror.engine import SyncOptions, sync_fleet
from .ssh.pool import PoolSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remote-sync",
        description="Mirror AI-agent session transcripts from hosts over SSH.",
    )
    parser.add_argument("--version", action="version", version=f"remote-sync {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sync = sub.add_parser(
        "sync",
        help="bring the mirror up to date with every host",
        description="Bring DIR up to date with each host's session files, moving only new "
        "bytes. A HOST not in the inventory is an ad-hoc [user@]host[:port] or ssh_config alias.",
    )
    sync.add_argument("hosts", nargs="*", metavar="HOST", help="hosts to sync (default: all)")
    sync.add_argument("--inventory", "-I", metavar="FILE", help="inventory TOML file")
    sync.add_argument("--dest", "-d", metavar="DIR", required=True, help="mirror directory")
    sync.add_argument(
        "--tag",
        "-t",
        action="append",
        default=[],
        metavar="T",
        help="only hosts with this tag (repeatable: any of them)",
    )
    sync.add_argument(
        "--concurrency",
        "-j",
        type=int,
        default=8,
        metavar="N",
        help="hosts synced at once (default 8)",
    )
    sync.add_argument("--dry-run", "-n", action="store_true", help="show what would move")
    sync.add_argument("--json", action="store_true", help="JSON lines on stdout")
    adhoc = sync.add_argument_group("ad-hoc hosts (not in the inventory)")
    adhoc.add_argument("--format", default="openclaw", help="session format (default openclaw)")
    adhoc.add_argument("--root", help="remote directory (default: the format's)")
    adhoc.add_argument("--ssh-config", "-F", metavar="FILE", help="OpenSSH client config")
    adhoc.add_argument("--known-hosts", metavar="FILE", help="known_hosts file")
    adhoc.add_argument("--identity", "-i", metavar="FILE", help="identity (private key) file")
    adhoc.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record unknown host keys on first contact (OpenSSH accept-new); "
        "a changed key is still refused",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return run_sync(args) if args.command == "sync" else EXIT_USAGE


def _select_hosts(args: argparse.Namespace) -> list[Host]:
    inventory = load_inventory(args.inventory) if args.inventory else Inventory(None, [])
    adhoc = AdhocOptions(
        format=args.format,
        root=args.root,
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        identity_file=args.identity,
        host_key_policy="accept-new" if args.accept_new_host_keys else "strict",
    )
    hosts = inventory.select(args.hosts, args.tag, adhoc=adhoc)
    if not hosts:
        raise ConfigError(
            "no hosts to sync", hint="name hosts, fix --tag, or add hosts to the inventory"
        )
    return list(hosts)


def run_sync(args: argparse.Namespace) -> int:
    error_out = json_lines_renderer() if args.json else None
    try:
        if args.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        hosts = _select_hosts(args)
    except ConfigError as exc:
        _report(exc, error_out)
        return EXIT_USAGE
    options = SyncOptions(
        dest=Path(args.dest),
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        pool=PoolSettings(),
    )
    try:
        if args.json:
            return anyio.run(_sync_main, hosts, options, ThrottledProgress(json_lines_renderer()))
        from .render import RichRenderer

        with RichRenderer() as renderer:
            return anyio.run(_sync_main, hosts, options, ThrottledProgress(renderer, 0.1))
    except LockedError as exc:
        _report(exc, error_out)
        return EXIT_LOCKED
    except ConfigError as exc:
        _report(exc, error_out)
        return EXIT_USAGE
    except RemoteSyncError as exc:
        _report(exc, error_out)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELLED


async def _sync_main(hosts: list[Host], options: SyncOptions, emit: Emit) -> int:
    registry = CancelRegistry()
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                first = True
                async for _ in signals:
                    if not first:
                        raise KeyboardInterrupt
                    first = False
                    print("\ncancelling (Ctrl-C again to abort at once)...", file=sys.stderr)
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


def _report(exc: RemoteSyncError, json_out: Emit | None) -> None:
    if json_out is not None:
        json_out(ErrorEvent.from_exception(exc))
    print(f"remote-sync: {exc}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
