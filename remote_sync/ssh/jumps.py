"""ProxyJump hosts, read and walked as ssh walks them.

What it owns: a ProxyJump list read as the endpoints its hops are connected as
(:func:`jump_endpoints`: looked up in the same ssh_config, each hop of a list but the
first with the hops before it given first, :attr:`~remote_sync.ssh.endpoint.Endpoint.proxy_jump`,
as ssh runs ``ssh -J a -W ... b`` for ``a,b``); the pre-flight of every jump host on a
connection's way (:func:`prepare_jumps`), a loop and a chain deeper than
:data:`MAX_JUMP_DEPTH` refused; and an error met on the way named by the jump host
(:func:`through_jump`). The pool connects the hops (:meth:`SSHPool._open_jumps
<remote_sync.ssh.pool.SSHPool._open_jumps>`), each with the same host-key rules.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError, RemoteSyncError
from .endpoint import Endpoint
from .lookup import Resolved, config_names
from .options import Prepared, prepare
from .sshconfig import jump_hop

#: ProxyJump hosts reached through ProxyJump hosts, at most this deep.
MAX_JUMP_DEPTH = 8


def jump_endpoints(jumps: str, endpoint: Endpoint, host: str) -> list[tuple[str, Endpoint]]:
    """The ProxyJump hosts ``jumps`` of ``endpoint`` (``[ssh://][user@]host[:port]``,
    comma-separated, an IPv6 address in brackets, read as ssh reads them:
    :func:`~remote_sync.ssh.sshconfig.jump_hop`), each as written and as the endpoint it is
    connected as: looked up in the same ssh_config, nothing else of the target's (its keys,
    known_hosts) applied, as ssh runs ``ssh -W`` for it with the same ``-F`` alone, and
    ``-J`` with the hops before it (:attr:`~remote_sync.ssh.endpoint.Endpoint.proxy_jump`)."""
    hops: list[tuple[str, Endpoint]] = []
    written = jumps.split(",")
    for jump in written:
        try:
            user, address, port = jump_hop(jump)
        except ValueError as exc:
            raise ConfigError(
                f"bad ProxyJump host {jump!r} ({exc}); ssh refuses it too",
                host=host,
                path=config_names(endpoint),
                hint="write each ProxyJump hop as [user@]host[:port], an IPv6 address in [], "
                "or ssh://[user@]host[:port] (its user URL-encoded, no path), with no control "
                "character in its user",
            ) from None
        hop = Endpoint(
            address=address,
            user=user,
            port=port,
            ssh_config=endpoint.ssh_config,
            compression=endpoint.compression,
            # The hops before it, as ssh gives them to the ssh it runs for this one (ssh.c:
            # "ssh -J a -W [%h]:%p b" for "a,b"): its own ProxyCommand and ProxyJump lines
            # are not taken, and its %j and %C are of the hop before it; the first hop reads
            # its own. The connection goes through those hops either way (_open_jumps).
            proxy_jump=",".join(written[: len(hops)]) or None,
        )
        hops.append((jump, hop))
    return hops


def through_jump(exc: RemoteSyncError, jump: str, host: str) -> RemoteSyncError | None:
    """``exc``, met on the way through the ProxyJump host ``jump``, as ``host``'s error naming
    that jump host; None when it names one already (the innermost, when the jump host has
    jump hosts of its own)."""
    if exc.message.startswith("ProxyJump host "):
        return None
    return type(exc)(
        f"ProxyJump host {jump!r}: {exc.message}", host=host, path=exc.path, hint=exc.hint
    )


def refuse_deep_jumps(depth: int, host: str) -> None:
    if depth >= MAX_JUMP_DEPTH:
        raise ConfigError(
            f"ProxyJump hosts lead through more than {MAX_JUMP_DEPTH} hops (a loop?)",
            host=host,
            hint="check the ProxyJump lines of the ssh_config",
        )


def prepare_jumps(
    endpoint: Endpoint,
    resolved: Resolved,
    host: str,
    known: Mapping[Endpoint, Prepared],
    depth: int = 0,
    chain: tuple[str, ...] = (),
) -> dict[Endpoint, Prepared]:
    """:func:`~remote_sync.ssh.options.prepare` for every ProxyJump host a connection to
    ``endpoint`` goes through, before any traffic, each as it is connected
    (:meth:`~remote_sync.ssh.pool.SSHPool._open_jumps`), as ssh walks them: every host of a comma
    list (``a,b``: b reached through a), and the first one's own ProxyJump hosts, recursively (ssh
    runs ``ssh -J a -W ... b``: b's own ProxyJump is replaced, a's is followed). A configuration
    error is ``host``'s, naming the jump host.

    A ProxyJump line that leads back to a jump host already on the way is a loop, refused
    here (ssh starts ssh after ssh without end); a chain deeper than :data:`MAX_JUMP_DEPTH`
    is refused as the connection refuses it. A jump host in ``known`` (read by another
    pre-flight of the same pass) is not read again.
    """
    jumps = None if endpoint.proxy_command else resolved.jumps
    if jumps is None:
        return {}
    refuse_deep_jumps(depth, host)
    found: dict[Endpoint, Prepared] = {}
    for position, (jump, hop) in enumerate(jump_endpoints(jumps, endpoint, host)):
        try:
            found[hop] = prepared = known.get(hop) or prepare(hop, host)
            if position > 0:
                continue
            if jump in chain:
                way = " -> ".join((*chain, jump))
                raise ConfigError(
                    f"ProxyJump hosts lead in a loop: {way}",
                    host=host,
                    path=config_names(endpoint),
                    hint="fix the ProxyJump lines of the ssh_config",
                )
            deeper = prepare_jumps(hop, prepared.resolved, host, known, depth + 1, (*chain, jump))
            found.update(deeper)
        except RemoteSyncError as exc:
            named = through_jump(exc, jump, host)
            if named is None:
                raise
            raise named from exc
    return found
