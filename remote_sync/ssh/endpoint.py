"""How to reach one machine: :class:`Endpoint`.

What it owns: an endpoint's address, user, port, keys, ssh_config, known_hosts, host-key
policy, ProxyCommand, ProxyJump and compression, as the inventory or the command line gives
them, and the parse of an ad-hoc ``[user@]host[:port]`` (:meth:`Endpoint.parse`), a name
that is no host name or alias refused. Two inventory entries that reach the same machine the
same way compare equal and so share one connection of the pool
(:class:`~remote_sync.ssh.pool.SSHPool`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

HostKeyPolicy = Literal["strict", "accept-new"]


@dataclass(frozen=True)
class Endpoint:
    """How to reach one machine. Equal endpoints share a connection in the pool."""

    address: str
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    #: OpenSSH client config files, read as ``ssh -F`` reads one (no system-wide file);
    #: ``None`` reads what ssh reads by default: ``~/.ssh/config``, then the system-wide
    #: ``/etc/ssh/ssh_config`` (:func:`~remote_sync.ssh.sshconfig.default_files`).
    ssh_config: tuple[str, ...] | None = None
    #: known_hosts file; ``None`` means the default ``~/.ssh/known_hosts``. Never "no checking".
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy = "strict"
    #: Run instead of a TCP connection, as ``ssh -o ProxyCommand=...`` runs it: the
    #: ssh_config's ProxyCommand and ProxyJump are then not read; ``none`` (in any case)
    #: connects directly.
    proxy_command: str | None = None
    #: ProxyJump hosts given before the ssh_config is read, as ``ssh -J`` gives them: its
    #: ProxyCommand and ProxyJump lines are then not taken (a ``proxy_command`` still goes
    #: first). The pool gives it to each hop of a ProxyJump list but the first, as ssh
    #: reaches ``a,b`` by running ``ssh -J a -W ... b``
    #: (:func:`~remote_sync.ssh.jumps.jump_endpoints`).
    proxy_jump: str | None = None
    #: SSH compression (zlib) for this machine, like ``ssh -C``; ``None``: the pool's default.
    #: Worth it on slow links (JSON compresses 4-5x); on a LAN it only costs CPU.
    compression: bool | None = None

    @property
    def label(self) -> str:
        """How errors name this endpoint when no inventory name is given."""
        text = f"{self.user}@{self.address}" if self.user else self.address
        return f"{text}:{self.port}" if self.port else text

    @classmethod
    def parse(cls, spec: str, **kwargs: Any) -> Endpoint:
        """Parse an ad-hoc ``[user@]host[:port]`` (or a bare ssh_config alias)."""
        user, sep, rest = spec.rpartition("@")
        if not sep:
            user, rest = "", spec
        elif not user:
            raise ConfigError(f"empty user name in {spec!r}", hint="use [user@]host[:port]")
        port: int | None = None
        host = rest
        if rest.startswith("["):  # [ipv6]:port
            close = rest.find("]")
            if close < 0:
                raise ConfigError(f"unbalanced '[' in host {spec!r}")
            host, tail = rest[1:close], rest[close + 1 :]
            if tail.startswith(":"):
                port = _parse_port(spec, tail[1:])
            elif tail:
                raise ConfigError(
                    f"{tail!r} after the address in {spec!r}", hint="use [user@][ipv6]:port"
                )
        elif rest.count(":") == 1:
            host, port_text = rest.split(":")
            port = _parse_port(spec, port_text)
        if not host:
            raise ConfigError(f"no host name in {spec!r}", hint="use [user@]host[:port]")
        if not _plausible_host(host):
            # As OpenSSH refuses such names (and asyncssh fails on empty labels with an
            # encoding error): a name is data, and it reaches ssh_config's %h tokens.
            raise ConfigError(
                f"{host!r} in {spec!r} is not a host name or an ssh_config alias",
                hint="use [user@]host[:port]: letters, digits, '-', '_' and '.', or [ipv6]",
            )
        return cls(address=host, user=user or None, port=port, **kwargs)


def _plausible_host(host: str) -> bool:
    """A DNS name, an ssh_config alias, an IPv4 or (unbracketed) IPv6 address: no empty
    label, no leading '-', nothing but letters, digits and ``-_.:%``."""
    if host.startswith("-") or not all(c.isalnum() or c in "-_.:%" for c in host):
        return False
    if ":" in host:  # IPv6 (with an optional %scope)
        return True
    labels = host.removesuffix(".").split(".")
    return all(labels)


def _parse_port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"bad port {text!r} in {spec!r}", hint="use [user@]host[:port]")
    return int(text)
