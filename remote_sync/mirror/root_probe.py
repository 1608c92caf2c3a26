"""A host's root that could not be entered: the error, naming the agents' roots it has instead.

What it owns: :func:`probed_root_error`, the error and its hint, shared by every command
that reads a host's root (a sync round, ``sessions list --remote``, ``sessions show
--remote``). Their scripts exit with
:data:`~remote_sync.mirror.remote_sh.EXIT_ROOT_UNUSABLE` when the root is missing; only
then does this run one more command (:func:`~remote_sync.mirror.remote_ops.probe_roots_argv`)
to find which other agents' default roots the host has, so that the hint can name the format
to use (``~/.claude`` for a host read with the default format). A root that exists costs
nothing more: the probe is never part of the normal path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..cancel import CancelToken
from ..errors import RemoteCommandError, RemoteSyncError, TransferCancelledError
from ..formats import FORMATS, get_format
from ..inventory import Host
from ..ssh.pool import SSHPool
from ..ssh.stream import run_command
from .remote_ops import probe_roots_argv, probed_roots

log = logging.getLogger(__name__)

__all__ = ["probed_root_error"]


async def probed_root_error(
    pool: SSHPool,
    host: Host,
    exc: RemoteCommandError,
    *,
    idle_timeout: float | None,
    token: CancelToken | None = None,
    adhoc_options: bool = True,
) -> RemoteCommandError:
    """The error for ``host``'s root that the command of ``exc`` could not enter, with a hint
    naming the other agents' default roots the host has (one more command, on ``pool``).

    ``adhoc_options`` says whether the command takes ``--format`` and ``--root`` for an
    ad-hoc host (``sync`` does; ``sessions --remote`` does not, so its hint names an inventory
    entry). A cancel during the probe is raised; any other failure of it leaves the hint
    without them."""
    source = host.source
    roots = {
        spec.name: spec.default_root
        for spec in FORMATS.values()
        if spec.default_root is not None and spec.default_root != source.root
    }
    found: list[tuple[str, str]] = []
    try:
        out = await run_command(
            pool,
            host.endpoint,
            probe_roots_argv(list(roots.values())),
            host=host.name,
            idle_timeout=idle_timeout,
            token=token,
        )
        there = probed_roots(out)
        found = [(name, root) for name, root in roots.items() if root in there]
    except TransferCancelledError:
        raise
    except RemoteSyncError as probe_failed:
        # The probe only adds a hint: the host's own error is what to report.
        log.debug("%s: probing the default roots failed: %s", host.name, probe_failed)
    return _root_unusable(
        exc,
        host.name,
        source.root,
        format=source.format,
        adhoc=host.adhoc,
        adhoc_options=adhoc_options,
        found=found,
    )


def _root_unusable(
    exc: RemoteCommandError,
    host: str,
    root: str,
    *,
    format: str | None = None,
    adhoc: bool = False,
    adhoc_options: bool = True,
    found: Sequence[tuple[str, str]] = (),
) -> RemoteCommandError:
    """The clear error for a command that exited with the missing root's status.

    ``found`` holds the (format, default root) pairs that the probe found on the host;
    ``adhoc`` says whether the host came from the command line, and ``adhoc_options``
    whether that command takes ``--format`` and ``--root`` for it (``sync``; the hint then
    names options to give) or not (``sessions --remote``: an inventory entry is the way to
    give them); a host of the inventory is told what to fix in it."""
    return exc.restated(
        f"the remote root {root!r} does not exist or cannot be entered",
        host=host,
        hint=_root_hint(root, format, adhoc, adhoc_options, found),
    )


def _root_hint(
    root: str,
    format: str | None,
    adhoc: bool,
    adhoc_options: bool,
    found: Sequence[tuple[str, str]],
) -> str:
    by_options = adhoc and adhoc_options
    # An ad-hoc host of a command without --format and --root (sessions --remote) can get
    # them only from an inventory entry of its own: say to write one, not what to fix in it.
    where = (
        "in an inventory entry for this host (--inventory FILE)"
        if adhoc
        else "for this host in the inventory"
    )
    formats = ", ".join(sorted(FORMATS))
    if not found:
        if by_options:
            return (
                "give the agent's directory on the host with --root, and its format with "
                f"--format ({formats})"
            )
        if adhoc:
            return f"give the agent's 'root' and 'format' ({formats}) {where}"
        return f"check 'root' (and 'format') {where}"
    there = " and ".join(f"{other_root} ({name})" for name, other_root in found)
    if not by_options:
        ways = ", or ".join(
            f'format = "{name}" and root = "{other_root}"' for name, other_root in found
        )
        return f"the host has {there}: set {ways} {where}"
    default = get_format(format).default_root if format in FORMATS else None
    ways = " or ".join(
        # Without --root the format's default root is used: naming the format is enough.
        f"--format {name}" if root == default else f"--format {name} --root {other_root}"
        for name, other_root in found
    )
    return f"the host has {there}: run again with {ways}"
