"""Failures of asyncssh and the OS, as this project's errors.

What it owns: :func:`classify`, which maps an asyncssh/OS failure into
:mod:`remote_sync.errors`, naming the host and, for a connection that failed or was lost,
the route it took (:func:`connection_route`: the address and port asked for, or the ProxyCommand run
instead, by its program alone), as ssh names the address it tried; and a connection's
failure through ProxyJump hosts, which answered, said as the target's
(:func:`noting_jump`); and what the pool's connect makes of a host key refused
(:func:`host_key_failure`), an authentication that failed (:func:`authentication_failure`)
and a HostName that does not resolve (:func:`unresolved_host_name`). What a connection's
local files make of a failure is :func:`~remote_sync.ssh.options.local_failure`'s.
"""

from __future__ import annotations

import shlex
import socket
from typing import Any

import asyncssh

from ..errors import (
    AuthenticationError,
    ChannelRefusedError,
    ConnectionLostError,
    HostKeyError,
    HostUnreachableError,
    RemoteSyncError,
    SSHError,
)
from .hostkeys import HostKeyClient, host_key_hint
from .lookup import Resolved
from .options import DEFAULT_IDENTITIES, locked_keys, offered_credentials
from .proxy import proxy_route


def connection_route(command: str | None, resolved: Resolved) -> str:
    """Where a connection went, as its failure names it: the address and port asked for (of
    the ssh_config's HostName and Port, as ssh's "connect to host H port P" names them;
    through ProxyJump hosts, the last one asked for them), or the ProxyCommand it ran
    instead (``command``, expanded), as no address of ours was tried then: named by its
    program alone (:func:`~remote_sync.ssh.sshconfig.command_name`, ``through ProxyCommand
    sshpass …``), as its arguments may hold a secret that an error would carry into JSON
    events and cron's mail; the whole command is logged at debug level as it starts."""
    if command:
        return proxy_route(command)
    return f"to {resolved.host} port {resolved.port}"  # the lookup had the endpoint's port


def noting_jump(exc: BaseException, host: str, through: str | None, route: str) -> SSHError:
    """``exc`` as our error for a connection to ``host`` by ``route``
    (:func:`connection_route`) that went ``through`` ProxyJump hosts (connected already, by
    then): a refusal or silence is then the target's, from the last of them (not a channel cap
    of ours)."""
    error = classify(exc, host, connecting=True, route=route)
    if through is None:
        if route.startswith("through ProxyCommand") and type(error) is HostUnreachableError:
            error.hint = "check that the ProxyCommand runs (try it in a shell) and reaches the host"
        return error
    if isinstance(exc, asyncssh.ChannelOpenError):
        error = HostUnreachableError(f"cannot connect {route}: {exc.reason}", host=host)
    if type(error) is not HostUnreachableError:
        return error
    return HostUnreachableError(
        f"{error.message} (through ProxyJump {through!r}, which answered)",
        host=host,
        hint="check that the host is up and that the jump host reaches it",
    )


def host_key_failure(host: str, client: HostKeyClient, resolved: Resolved) -> HostKeyError:
    """asyncssh's refusal of ``host``'s key (``HostKeyNotVerifiable``), as our error: what
    ``client`` found of the key, in which known_hosts files, and what to do."""
    state = client.host_key_state or "not trusted"
    unfollowed = resolved.checking in ("no", "off", "false") and state != "changed"
    what = "CHANGED" if state == "changed" else state
    where = ", ".join(client.held_in) or resolved.keys.describe()
    return HostKeyError(
        f"host key is {what} (known_hosts: {where}); refusing to connect",
        host=host,
        hint=f"the ssh_config's StrictHostKeyChecking {resolved.checking} is not "
        "followed, checks are never skipped: verify the host's key and add it to "
        "known_hosts, or let first contact record it (StrictHostKeyChecking "
        "accept-new, or --accept-new-host-keys)"
        if unfollowed
        else host_key_hint(client),
    )


def authentication_failure(
    exc: asyncssh.PermissionDenied,
    host: str,
    options: dict[str, Any],
    resolved: Resolved,
    route: str,
) -> AuthenticationError:
    """asyncssh's ``PermissionDenied`` of a connection to ``host`` made with ``options``, by
    ``route`` (:func:`connection_route`), as our error. Where and with what, as ssh -v says
    it: the host's name alone does not show a wrong HostName or Port, nor a key that was
    never offered (one needing a passphrase no ssh-agent gave is named, with its fix)."""
    keys = options.get("client_keys") or resolved.identities or DEFAULT_IDENTITIES
    locked = locked_keys(keys)
    return AuthenticationError(
        f"authentication failed (connected {route}): {exc.reason}; "
        f"{offered_credentials(options, resolved, locked)}"
        + ("; this key needs a passphrase, and no ssh-agent offered it" if locked else ""),
        host=host,
        path=", ".join(locked) or None,
        hint=f"add the key to ssh-agent (ssh-add {shlex.quote(locked[0])}), or "
        "check that the agent runs for this job (SSH_AUTH_SOCK)"
        if locked
        else None,
    )


def unresolved_host_name(
    exc: socket.gaierror, host: str, resolved: Resolved
) -> HostUnreachableError:
    """A connection's name lookup that failed, as our error. Only a direct connection
    resolves a name there (through jump hosts, the last one does): the ssh_config's
    HostName, which is named."""
    return HostUnreachableError(
        f"cannot resolve host name {resolved.host!r}: {exc.strerror}", host=host
    )


def classify(
    exc: BaseException, host: str, *, connecting: bool = False, route: str | None = None
) -> SSHError:
    """Map an asyncssh/OS failure to our hierarchy, naming the host, and for a connection
    that failed (``connecting``) or was lost, the ``route`` it took (:func:`connection_route`: "to
    10.0.0.5 port 22", "through ProxyCommand nc …"), as ssh names the address it tried: the
    host's name alone does not show a wrong HostName or Port."""
    if isinstance(exc, SSHError):
        return exc
    if isinstance(exc, RemoteSyncError):
        return SSHError(exc.message, host=host)
    if isinstance(exc, asyncssh.ChannelOpenError):
        return ChannelRefusedError(f"channel refused: {exc.reason}", host=host)
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationError(f"authentication failed: {exc.reason}", host=host)
    if isinstance(exc, socket.gaierror):
        return HostUnreachableError(f"cannot resolve host: {exc.strerror}", host=host)
    tried = f"cannot connect {route}: " if route and connecting else ""
    if isinstance(exc, TimeoutError):
        return HostUnreachableError(f"{tried}connection timed out", host=host)
    if isinstance(exc, ConnectionRefusedError):
        return HostUnreachableError(f"{tried}connection refused", host=host)
    if connecting:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return HostUnreachableError(f"{tried or 'cannot connect: '}{reason}", host=host)
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    lost = f"connection lost {route}" if route else "connection lost"
    return ConnectionLostError(f"{lost}: {reason}", host=host)
