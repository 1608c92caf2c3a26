"""The SSH connection pool: one asyncssh connection per endpoint, shared by every operation.

What it owns:

- :class:`Endpoint`, how to reach a machine (address, user, port, keys, ssh_config, known_hosts).
  Two inventory entries that reach the same machine the same way compare equal and so share one
  connection.
- The pre-flight of a connection (:meth:`SSHPool.preflight`): what it would stop on in its
  local files (a file named or Include'd that is missing or unreadable, an ssh_config that
  does not parse or whose algorithm list leaves asyncssh nothing, a UserKnownHostsFile that
  cannot be read, a key that does not load), for the endpoint and every ProxyJump host on
  its way, found before any traffic, so a run whose every host would stop there touches
  nothing; its parse of the ssh_config is the one the connection is built on, and is kept
  for the next while the files are as they were (:func:`_walk_config_files`,
  :func:`_lookup`). What it
  finds that fails nothing but is not followed (algorithm names asyncssh does not support,
  left out of a list; a RemoteCommand, never run) is kept for the caller to show
  (:meth:`SSHPool.config_warnings`).
- Lazy connection set-up under a global cap on concurrent handshakes (key exchange is CPU work
  on our single event loop, and sshd drops bursts above ``MaxStartups``).
- A per-endpoint cap on concurrent channels, below sshd's ``MaxSessions`` (10): asking for more
  waits for a free slot, it never fails.
- Transport tuning: AES-GCM preferred, compression off unless asked for (per endpoint),
  channel windows sized to the link (the window, not the cipher, bounds throughput on a
  high-RTT link; on a short one it is only memory), keepalives, connect timeout, idle close.
- Reconnecting once, with backoff, when a connection dropped between operations.
- Running a ProxyCommand as ssh runs it, its stderr kept out of the SSH stream and quoted
  when its connection fails or is lost once made (:meth:`SSHPool.lost`), and ending it with
  its connection (:class:`_ProxyCommand`, a task of the pool's task group).
- Classifying asyncssh/OS failures into :mod:`remote_sync.errors`.

Host keys are always checked against known_hosts, under the host name ssh looks up: the
HostName (else the name asked for) lowercased, compared with known_hosts names ignoring case
(:func:`_lowercase_host_as_ssh_does`). The only relaxation is the documented opt-in
``host_key_policy="accept-new"`` (OpenSSH's ``StrictHostKeyChecking accept-new``, which the
ssh_config may say too): an unknown host's key is recorded on first contact (its host name
hashed when the ssh_config says ``HashKnownHosts yes``, as ssh writes it); a *changed* key is
refused exactly as in strict mode. The ssh_config's ``StrictHostKeyChecking no`` is not followed.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import getpass
import hashlib
import hmac
import logging
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncssh

from ..cancel import CancelToken
from ..errors import (
    AuthenticationError,
    ChannelRefusedError,
    ConfigError,
    ConnectionLostError,
    HostKeyError,
    HostUnreachableError,
    RemoteSyncError,
    SSHError,
    showable,
)
from . import sshconfig
from .remote import in_range
from .sshconfig import (
    MATCH_ALONE,
    FilesRead,
    SystemWide,
    UnsafeTokenValue,
    check_config_files,
    command_name,
    default_files,
    ends_in_lone_percent,
    expand_match_exec,
    expand_proxy_command,
    host_block_applies,
    include_paths,
    jump_hop,
    lowercase_host,
    match_exec_tokens,
    nested_includes_error,
    split_line,
    unreadable_include_error,
    user_name_problem,
)

log = logging.getLogger(__name__)

HostKeyPolicy = Literal["strict", "accept-new"]

#: AES-GCM first: measured about 30% faster than chacha20-poly1305 through asyncssh here,
#: because AES-NI does the work in C while asyncssh's chacha path costs more per packet.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


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
    #: reaches ``a,b`` by running ``ssh -J a -W ... b`` (:func:`_jump_endpoints`).
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


@dataclass(frozen=True)
class PoolSettings:
    """Tuning of the pool; defaults suit small hosts behind home uplinks and VPS hops."""

    #: Concurrent channels per connection; sshd's MaxSessions default is 10.
    channels_per_host: int = 8
    #: Concurrent SSH handshakes across all hosts.
    max_handshakes: int = 16
    connect_timeout: float = 15.0
    login_timeout: float = 30.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    #: Close a connection nobody used for this long (seconds); 0 keeps it open.
    idle_close: float = 300.0
    #: Receive window per channel. At 50 ms RTT a 2 MiB window caps a channel near 40 MB/s;
    #: 16 MiB allows ~300 MB/s while keeping memory per stream bounded by this figure.
    window: int = 16 * 1024 * 1024
    #: The windows of the channels open at once share this budget: a channel opened while
    #: ``n`` are open (itself included) gets ``budget / n``, between ``min_window`` and
    #: ``window``. Its credit then follows the share of the moment (see ``ssh/flow.py``;
    #: worked out again whenever a channel opens or closes): a channel opened alone gives
    #: its large window up as others open, and one opened among many takes a larger one (up
    #: to ``window``) as they close. This bounds a fleet's
    #: buffers (8 hosts: 2 MiB windows) while one large transfer alone keeps the full window;
    #: a credit granted is not taken back, so channels opened one after another may hold up
    #: to ``budget * (1 + 1/2 + ... + 1/n)`` until their data arrives (43 MiB for eight).
    #: 0 disables the sharing.
    window_budget: int = 16 * 1024 * 1024
    min_window: int = 1024 * 1024
    #: On a direct TCP connection the kernel knows its round-trip time; such a channel gets the
    #: window that carries its share of ``window_rate`` bytes per second over that RTT (the
    #: rate is the client's, divided among the channels open at once), never less than
    #: ``window_floor`` divided the same way, nor more than ``window`` (the budget still
    #: applies); the RTT is read again whenever a channel opens or closes. A window is
    #: memory the link cannot use when the RTT is short: over loopback or a LAN, 2 MiB
    #: keeps a transfer about as fast as 16 MiB (a 1 GiB pull: 1.07 s against 1.05 s with
    #: 4 MiB), and eight concurrent ones need no more in all.
    #: Through a ProxyCommand or ProxyJump the RTT past the first hop is unknown, so those get
    #: ``window``. 0 turns the sizing off.
    window_rate: int = 512 * 1024 * 1024
    window_floor: int = 2 * 1024 * 1024
    max_pktsize: int = 256 * 1024
    compression: bool = False
    reconnect_backoff: float = 0.5
    #: False: accept-new trusts a host's first key for this pool's connections without
    #: writing it to known_hosts (a dry run writes nothing).
    record_new_host_keys: bool = True

    def __post_init__(self) -> None:
        """Every field checked at construction (and at ``dataclasses.replace``): a bad value
        is a :class:`ConfigError` naming the field and what it takes, raised where the
        settings are made, before any host is contacted. Unchecked, such a value reached
        asyncssh and the pool's caps as it was (a run with a negative connect timeout went
        on as if it were valid; a cap of 0 channels or handshakes would wait for ever)."""
        for setting in fields(self):
            # Every field has its entry: a new one without is a KeyError at the first use.
            kind, least, most, takes = _SETTING_RANGES[setting.name]
            value = getattr(self, setting.name)
            if not in_range(value, kind, least, most):
                raise ConfigError(
                    f"PoolSettings.{setting.name} must be {takes}, not {value!r}",
                    hint="pass another value, or leave it out for the default "
                    f"({setting.default!r})",
                )


#: The largest window and packet size: SSH sends them as 32-bit unsigned integers (RFC 4254).
_UINT32_MAX = 2**32 - 1
_SECONDS = "seconds (an int or float)"
#: What each field of :class:`PoolSettings` takes: its type (int: a whole number, never a
#: bool; float: an int or a float, never a bool or NaN), the least and the most value (None:
#: no bound), and the words a refusal says. 0 is allowed where it means something
#: (asyncssh: no connect or login timeout, no keepalives; here: no idle close, no sharing,
#: no sizing, no pause).
_SETTING_RANGES: dict[str, tuple[type, float | None, float | None, str]] = {
    "channels_per_host": (int, 1, None, "a whole number of at least 1"),
    "max_handshakes": (int, 1, None, "a whole number of at least 1"),
    "connect_timeout": (float, 0, None, f"0 (no limit) or more {_SECONDS}"),
    "login_timeout": (float, 0, None, f"0 (no limit) or more {_SECONDS}"),
    "keepalive_interval": (float, 0, None, f"0 (no keepalives) or more {_SECONDS}"),
    "keepalive_count_max": (int, 1, None, "a whole number of at least 1"),
    "idle_close": (float, 0, None, f"0 (never close) or more {_SECONDS}"),
    "window": (int, 1, _UINT32_MAX, "a whole number of bytes from 1 to 2**32 - 1"),
    "window_budget": (int, 0, None, "0 (no sharing) or a whole number of bytes"),
    "min_window": (int, 1, _UINT32_MAX, "a whole number of bytes from 1 to 2**32 - 1"),
    "window_rate": (int, 0, None, "0 (no sizing) or a whole number of bytes per second"),
    "window_floor": (int, 0, None, "0 or a whole number of bytes"),
    "max_pktsize": (int, 1, _UINT32_MAX, "a whole number of bytes from 1 to 2**32 - 1"),
    "compression": (bool, None, None, "True or False"),
    # Finite (no more than the largest float): a reconnect would wait for ever.
    "reconnect_backoff": (
        float,
        0,
        sys.float_info.max,
        "0 or more seconds (a finite int or float)",
    ),
    "record_new_host_keys": (bool, None, None, "True or False"),
}


@dataclass
class HostStats:
    """What the pool did for one endpoint (tests and the recap read it)."""

    connects: int = 0
    channels_open: int = 0
    channels_peak: int = 0
    operations: int = 0


#: Where ssh looks up host keys when the ssh_config names no files (ssh_config(5)).
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
#: ProxyJump hosts reached through ProxyJump hosts, at most this deep.
MAX_JUMP_DEPTH = 8


@dataclass(frozen=True)
class HostKeyFiles:
    """Where one connection's host keys are looked up and recorded, as ssh decides it.

    ``user`` are the UserKnownHostsFile files (the inventory's ``known_hosts`` replaces them;
    ``none`` in the ssh_config leaves none), ``system`` the GlobalKnownHostsFile files (by
    default ``/etc/ssh/ssh_known_hosts``). Both are always consulted: asyncssh alone reads
    only the user files, and takes ``UserKnownHostsFile none`` for "check nothing", where ssh
    trusts nothing. ``alias`` is the HostKeyAlias, under which keys are looked up without a
    port, as ssh does. As ssh does, a line that cannot be read is skipped, not fatal.
    """

    user: tuple[str, ...]
    system: tuple[str, ...]
    alias: str | None = None

    def readable(self) -> list[str]:
        return [
            path
            for path in (*self.user, *self.system)
            if os.path.isfile(path) and os.access(path, os.R_OK)
        ]

    def trusted(self) -> asyncssh.SSHKnownHosts:
        """asyncssh's ``known_hosts``: the keys of every readable file (none at all when
        there is none: never None, which would turn checking off)."""
        return _read_known_hosts(self.readable())

    def holding(self, host: str, port: int | None) -> list[str]:
        """The readable files with a key for exactly this host name (and port): as ssh looks
        a host up, not by its address (CheckHostIP is off by default) and not falling back
        from ``[host]:port`` to ``host`` (as asyncssh does when it trusts)."""
        found = []
        for path in self.readable():
            known = _read_known_hosts([path])
            exact = getattr(known, "_match", known.match)
            if exact(host, "", None if port in (22, None) else port)[0]:
                found.append(path)
        return found

    def describe(self) -> str:
        return ", ".join((*self.user, *self.system)) or "none"


#: known_hosts files already parsed (:func:`_read_known_hosts`), by the version of each file
#: (:func:`_file_version`): every connection of a run reads the same files, and parsing a
#: file of 2,000 keys cost about 30 ms of CPU per connection. A file written since (a key
#: recorded under accept-new, an edit) has another version, and is read again.
_KNOWN_HOSTS_READ: dict[tuple[tuple[object, ...], ...], asyncssh.SSHKnownHosts] = {}
_KNOWN_HOSTS_LOCK = threading.Lock()  # connections look keys up in worker threads
#: How many sets of files are kept (a run has one or two: the targets' and the jump hosts').
_KNOWN_HOSTS_KEPT = 16


#: A file changed less than this long ago (ns) is not kept: the file system's clock ticks
#: coarsely (a few ms), and a write in the same tick as our reading, of the same size,
#: would leave its version as it was (git's "racily clean" index entries).
_RECENT_NS = 2_000_000_000


def _file_version(path: str, now_ns: int) -> tuple[object, ...] | None:
    """What tells one version of the file ``path`` from another without reading it: its
    size, times of change (ns) and inode. None for a file changed within
    :data:`_RECENT_NS` of ``now_ns``, whose next change might not show, and for one that
    cannot be looked at: the reading that follows may find it (it appeared meanwhile), and
    what it read, kept under a version that says nothing of it, would be found again for a
    file gone since."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if max(st.st_mtime_ns, st.st_ctime_ns) > now_ns - _RECENT_NS:
        return None
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _read_known_hosts(paths: Sequence[str]) -> asyncssh.SSHKnownHosts:
    """The known_hosts entries of ``paths``, skipping what cannot be read (a line asyncssh
    cannot parse, bytes that are not UTF-8, a file that went away), as ssh skips it. Parsed
    once per version of the files (:data:`_KNOWN_HOSTS_READ`), but while one was changed
    just now; asyncssh only matches against the result, never changing it, so connections
    share it."""
    now_ns = time.time_ns()  # before the stat: a change after it is newer
    found = [_file_version(path, now_ns) for path in paths]
    if any(version is None for version in found):
        return _parse_known_hosts(paths)  # one just changed, or went: read, not kept
    versions = tuple(version for version in found if version is not None)
    with _KNOWN_HOSTS_LOCK:
        known = _KNOWN_HOSTS_READ.get(versions)
    if known is None:
        known = _parse_known_hosts(paths)  # read after the stat: never older than versions
        with _KNOWN_HOSTS_LOCK:
            _keep(_KNOWN_HOSTS_READ, versions, known, _KNOWN_HOSTS_KEPT)
    return known


def _parse_known_hosts(paths: Sequence[str]) -> asyncssh.SSHKnownHosts:
    lines: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = Path(path).read_text(encoding="utf-8", errors="replace")
            lines += [_lowercase_patterns(line) for line in text.splitlines()]
    try:
        return asyncssh.import_known_hosts("\n".join(lines))
    except ValueError:
        return asyncssh.import_known_hosts("\n".join(line for line in lines if _parses(line)))


def _lowercase_patterns(line: str) -> str:
    """A known_hosts ``line`` with its host patterns in lower case (unless hashed), as ssh
    compares a host name with them (match_hostname, both sides lowercased; a hashed name is
    compared with the hash of the lowercased name, which is the one looked up here too):
    asyncssh compares case-sensitively, and a key written under ``PI-Kitchen`` was not
    found for ``pi-kitchen``."""
    lead = len(line) - len(line.lstrip())
    words = line[lead:].split(None, 2)
    at = 1 if words and words[0].startswith("@") else 0  # @cert-authority, @revoked
    if len(words) <= at or words[at].startswith(("|", "#")):  # a hashed name, a comment
        return line
    words[at] = lowercase_host(words[at])
    return line[:lead] + " ".join(words)


def _parses(line: str) -> bool:
    try:
        asyncssh.import_known_hosts(line)
    except ValueError:
        return False
    return True


def hashed_host_name(name: str, salt: bytes | None = None) -> str:
    """``name`` (a host, ``[host]:port``, a HostKeyAlias) as ssh writes it in known_hosts
    under ``HashKnownHosts yes`` (hostfile.c's host_hash): ``|1|salt|hash``, the HMAC-SHA1
    of the name keyed with a random salt of 20 bytes, both in base64. ssh and asyncssh find a
    host's key under it; nobody reading the file learns which hosts it names."""
    salt = os.urandom(hashlib.sha1().digest_size) if salt is None else salt
    digest = hmac.new(salt, name.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


class _Client(asyncssh.SSHClient):
    """Records host-key decisions so a refusal can say "unknown" or "changed", and where;
    under accept-new, records a first key as ssh does (its name hashed when ``hash_names``:
    the ssh_config's HashKnownHosts)."""

    def __init__(
        self,
        files: HostKeyFiles,
        policy: HostKeyPolicy,
        record: bool = True,
        hash_names: bool = False,
    ) -> None:
        self.files = files
        self.policy = policy
        self.record = record
        self.hash_names = hash_names
        self.host_key_state: Literal["unknown", "changed"] | None = None
        self.held_in: list[str] = []
        #: The name the key is looked up under (``[host]:port`` off port 22, as in
        #: known_hosts) and the offered key's SHA256 fingerprint, for the refusal's hint.
        self.key_name = ""
        self.offered = ""
        #: The ProxyCommand the connection is made on, ended when the connection closes.
        self.proxy: _ProxyCommand | None = None
        self.made = False  # asyncssh made its connection (on its socket) for this client

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.made = True

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncssh calls this however the connection ends (closed by us, by the host, or
        # lost): the command has served its purpose then.
        if self.proxy is not None:
            self.proxy.stop()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # Called only when the key is not among the trusted ones for this host (``host`` is
        # the HostKeyAlias when there is one, and then the port plays no part, as in ssh).
        lookup_port = None if self.files.alias else port
        self.held_in = self.files.holding(host, lookup_port)
        self.host_key_state = "changed" if self.held_in else "unknown"
        pattern = host if lookup_port in (22, None) else f"[{host}]:{port}"
        self.key_name = pattern
        self.offered = key.get_fingerprint("sha256")
        record_to = self.files.user[0] if self.files.user else None
        if self.held_in or self.policy != "accept-new" or record_to is None:
            return False
        written = hashed_host_name(pattern) if self.hash_names else pattern
        line = f"{written} {key.export_public_key('openssh').decode().strip()}\n"
        if not self.record:
            log.warning("accept-new: trusting the new host key of %s for this run only", pattern)
            return True
        try:
            Path(record_to).parent.mkdir(parents=True, exist_ok=True)
            with open(record_to, "a", encoding="utf-8") as out:
                out.write(line)
        except OSError as exc:  # as ssh: "Failed to add the host", and on
            log.warning("accept-new: could not record the host key of %s: %s", pattern, exc)
            return True
        log.warning("accept-new: recorded the host key of %s in %s", pattern, record_to)
        return True


@dataclass(frozen=True)
class _Resolved:
    """What the ssh_config makes of an endpoint, for the parts we apply ourselves."""

    host: str  # the HostName
    port: int
    user: str
    keys: HostKeyFiles
    jumps: str | None = None  # the ProxyJump hosts, as the ssh_config gives them
    identities: tuple[str, ...] = ()  # the ssh_config's IdentityFile entries
    certificates: tuple[str, ...] = ()  # its CertificateFile entries
    identities_only: bool = False  # its IdentitiesOnly: a file that is no key is skipped
    checking: str | None = None  # its StrictHostKeyChecking, lower-cased
    tuned: frozenset[str] = frozenset()  # the options of _TUNING it sets
    agent: str | None = None  # its IdentityAgent
    hash_names: bool = False  # its HashKnownHosts: a recorded key's host name is hashed
    #: asyncssh's reading of the ssh_config for this endpoint, which the connection is built
    #: on (:func:`_reusing_lookup`) instead of parsing the files again.
    parsed: asyncssh.SSHClientConnectionOptions | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Prepared:
    """What a connection to an endpoint reads before any traffic: asyncssh's options for the
    local files named (:func:`_local_file_options`, with the ssh_config's keys added) and the
    ssh_config's lookup."""

    options: dict[str, Any]
    resolved: _Resolved
    #: What the ssh_config asks for that the connection leaves out (:class:`ConfigWarning`).
    warnings: tuple[ConfigWarning, ...] = ()


#: The jump hosts the pre-flights of one pass have read (:meth:`SSHPool.preflight`).
JumpsRead = dict[Endpoint, _Prepared]


@dataclass(frozen=True)
class ConfigWarning:
    """Something of an ssh_config the connection does not follow, which fails nothing: for
    the caller to show once per host (the sync shows it as a warning event)."""

    #: Whose lookup found it. Not part of its identity: a shared jump host's warning, found
    #: while looking up one target, is the same warning for the next (said once).
    host: str = field(compare=False)
    path: str | None
    message: str
    hint: str


def _resolve(endpoint: Endpoint, config: Sequence[str] | None, host_name: str) -> _Resolved:
    """Look ``endpoint`` up in its ssh_config (``None`` reads ~/.ssh/config and the system-wide
    file, as ssh does without -F; ``[]`` none).

    What asyncssh raises while it reads the config is raised. A known_hosts path with a token
    this cannot expand is this host's :class:`ConfigError` (a wrong file would mean trusting
    or recording the wrong keys).
    """
    found = asyncssh.SSHClientConnectionOptions(
        host=endpoint.address,
        port=endpoint.port or (),
        username=endpoint.user or (),
        config=_config_files(endpoint, default_files() if config is None else list(config)),
        known_hosts=None,  # nothing read or checked: a lookup only
        client_keys=None,
    )
    if found.config.has_match_final():
        # The connection reads the config again for its "Match final" blocks, as ssh
        # does; what they give (the known_hosts files, keys, ProxyJump) applies here too.
        # As ssh, with the host name of the first reading (lowercased) as its HostName:
        # the final pass's %h and Match host (_FinalPassStart).
        found.update(last_config=found.config, reload=True, final=True)
    host, port, user = found.host, found.port, found.username
    user_files = found.config.get("UserKnownHostsFile")
    system_files = found.config.get("GlobalKnownHostsFile")
    alias = found.host_key_alias
    jumps = found.tunnel if isinstance(found.tunnel, str) and found.tunnel else None
    identities: Sequence[str] = found.config.get("IdentityFile", ())  # type: ignore[assignment]
    certificates: Sequence[str] = found.config.get("CertificateFile", ())  # type: ignore[assignment]
    identities_only = bool(found.config.get("IdentitiesOnly"))
    checking = str(found.config.get("StrictHostKeyChecking") or "").lower() or None
    # A value that turns the thing off (ssh's default) leaves ours: "ServerAliveInterval
    # 0" must not stop dead links from being found, "Compression no" -z from compressing.
    tuned = frozenset(
        option for option in _TUNING if found.config.get(option) not in (None, False, 0)
    )
    named_agent = found.config.get("IdentityAgent")
    agent = named_agent if isinstance(named_agent, str) else None
    named_jumps = found.config.get("ProxyJump")
    # ssh's tokens of UserKnownHostsFile, the same as of IdentityFile and Match exec
    # (ssh.c's default client expansion), but %k: the HostKeyAlias, else the name as asked.
    tokens = match_exec_tokens(
        host=host,
        original_host=endpoint.address,
        port=port,
        remote_user=user,
        local_user=getpass.getuser(),
        key_alias=alias or endpoint.address,
        proxy_jump=named_jumps if isinstance(named_jumps, str) else None,
    )

    def files(listed: object, default: Sequence[str]) -> Sequence[str]:
        return default if listed is None else listed  # type: ignore[return-value]

    user_known = (
        (_expand(endpoint.known_hosts),)
        if endpoint.known_hosts is not None
        else tuple(
            _expand_tokens(path, tokens, host_name)
            for path in files(user_files, DEFAULT_USER_KNOWN_HOSTS)
        )
    )
    # ssh expands no token nor ${VAR} there, only ~: a "%" is a letter of the file's name.
    system_known = tuple(_expand(path) for path in files(system_files, DEFAULT_GLOBAL_KNOWN_HOSTS))
    keys = HostKeyFiles(user_known, system_known, alias)
    return _Resolved(
        host,
        port,
        user,
        keys,
        jumps,
        tuple(_expand(path) for path in identities),
        tuple(_expand(path) for path in certificates),
        identities_only,
        checking,
        tuned,
        agent,
        found.config.get("HashKnownHosts") is True,
        found,
    )


def _open_mode(path: str) -> int | None:
    """The mode of ``path`` if it is a private key of ours that others may read (ssh's
    sshkey_perm_ok), else None (a missing default key is no key; a named one is reported
    elsewhere)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = st.st_mode & 0o777
    return mode if st.st_uid == os.getuid() and mode & 0o077 else None


def _adding_config_keys(named: list[str], resolved: _Resolved) -> list[str]:
    """The keys named in the inventory (or by -i) first, then the ssh_config's IdentityFile
    ones that exist: ssh -i adds to those, where asyncssh would replace them."""
    return named + [
        path for path in resolved.identities if path not in named and os.path.exists(path)
    ]


# The private keys ssh (and asyncssh) try when none is named.
_DEFAULT_IDENTITIES = tuple(
    f"~/.ssh/id_{kind}" for kind in ("rsa", "ecdsa", "ecdsa_sk", "ed25519", "ed25519_sk", "dsa")
)


def _locked_keys(paths: Sequence[str]) -> list[str]:
    """The private keys among ``paths`` that cannot be read without a passphrase (so were
    skipped): said when authentication fails, since an agent that should hold them did not."""
    locked = []
    for path in paths:
        path = _expand(path)
        try:
            asyncssh.read_private_key(path)
        except asyncssh.KeyImportError as exc:
            if "assphrase" in str(exc):
                locked.append(path)
        except (OSError, ValueError):
            pass
    return locked


def _offered(options: dict[str, Any], resolved: _Resolved, locked: Sequence[str]) -> str:
    """What a connection made with ``options`` offered the host, as an authentication
    failure names it (ssh -v lists each key it offers): the ssh-agent asyncssh asks (the
    ssh_config's IdentityAgent, else SSH_AUTH_SOCK), and the key files it loads: those
    named (the inventory's and the ssh_config's that exist), else the default
    ``~/.ssh/id_*`` that exist, less the ``locked`` ones (they need a passphrase, and are
    skipped). Paths only: nothing of a key is said."""
    agent = options.get("agent_path")
    if agent is None:  # not set by us: asyncssh takes the ssh_config's, else the variable
        parsed = resolved.parsed
        configured = () if parsed is None else parsed.config.get("IdentityAgent", ())
        agent = os.environ.get("SSH_AUTH_SOCK", "") if configured == () else configured
    offered, lacking = [], []
    if agent:
        offered.append(f"the keys of the ssh-agent at {_expand(str(agent))}")
    else:
        variable = (resolved.agent or "SSH_AUTH_SOCK").removeprefix("$")
        why = "IdentityAgent none" if agent is None else f"{variable} is not set"
        lacking.append(f"no ssh-agent ({why})")
    named = [_expand(str(path)) for path in options.get("client_keys") or ()]
    files = [
        path
        for path in named or [_expand(path) for path in _DEFAULT_IDENTITIES]
        if os.path.isfile(path) and path not in locked
    ]
    if files:
        offered.append(f"the key file{'s' if len(files) > 1 else ''} {', '.join(files)}")
    else:
        lacking.append("no key file" + ("" if named else " (none named, no ~/.ssh/id_*)"))
    said = f"offered {' and '.join(offered)}" if offered else "offered no key"
    return "; ".join((said, *lacking))


def refuse_unprotected_keys(paths: Sequence[str], host: str) -> None:
    """ssh ignores a private key others may read ("UNPROTECTED PRIVATE KEY FILE"); asyncssh
    would use it. When every key named is such a key, that is this host's
    :class:`ConfigError`; when some other key remains, a warning (ssh would use the other)."""
    present = [path for path in paths if os.path.exists(path)]
    unprotected = [(path, mode) for path in present if (mode := _open_mode(path)) is not None]
    if not unprotected:
        return
    path, mode = unprotected[0]
    if len(unprotected) < len(present):
        log.warning("%s: the private key %s may be read by others; chmod 600 it", host, path)
        return
    raise ConfigError(
        f"the private key {path!r} may be read by others (mode {mode:04o}); "
        "ssh refuses to use it, and so does remote-sync",
        host=host,
        path=path,
        hint=f"chmod 600 {path}",
    )


#: A token (``%`` and the letter after it, none for a ``%`` at the end) or a ``${VAR}``.
_TOKEN = re.compile(r"%(.?)|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", re.DOTALL)


def _expand_tokens(path: str, tokens: Mapping[str, str], host: str) -> str:
    """A UserKnownHostsFile path with ``~``, ``${VAR}`` and ssh's tokens expanded, as ssh
    expands them there (``tokens``: those of
    :func:`~remote_sync.ssh.sshconfig.match_exec_tokens`, %C %L %d %h %i %j %k %l %n %p %r
    %u, and %%); any other token (%T...), a ``%`` at the end or an unset variable is a
    :class:`ConfigError`, as ssh stops on it ("unknown key", "invalid format")."""

    def value(match: re.Match[str]) -> str:
        token, variable = match.group(1), match.group(2)
        if variable is not None and variable in os.environ:
            return os.environ[variable]
        if token == "%":
            return "%"
        if token is not None and token in tokens:
            return tokens[token]
        raise ConfigError(
            f"cannot expand {match.group(0)!r} in the known_hosts path {path!r} (nor can "
            "ssh: it stops on it)",
            host=host,
            path=path,
            hint="spell that part of UserKnownHostsFile out in the ssh_config, or give the "
            "host known_hosts in the inventory",
        )

    return _expand(_TOKEN.sub(value, path))


def _add_config_keys(options: dict[str, Any], resolved: _Resolved, host: str) -> None:
    """Add the ssh_config's keys to the ones named in ``options`` (in place), as ssh adds
    them; a key ssh would refuse is refused."""
    if "client_keys" in options:
        options["client_keys"] = _adding_config_keys(options["client_keys"], resolved)
    elif resolved.identities:
        # The ssh_config's keys that exist: one config often serves several machines and
        # names keys some of them lack, which ssh skips without a word (asyncssh stopped on
        # the first missing one). With none left, asyncssh tries its default keys.
        options["client_keys"] = _adding_config_keys([], resolved)
    if resolved.certificates:
        # As its keys: ssh skips a CertificateFile that is not there (asyncssh stopped, and
        # the host was taken for unreachable).
        options["client_certs"] = [path for path in resolved.certificates if os.path.exists(path)]
    refuse_unprotected_keys(options.get("client_keys") or resolved.identities, host)


#: The ssh_config options that replace the pool's own tuning, with asyncssh's names.
_TUNING = {
    "Ciphers": "encryption_algs",
    "Compression": "compression_algs",
    "ConnectTimeout": "connect_timeout",
    "ServerAliveInterval": "keepalive_interval",
    "ServerAliveCountMax": "keepalive_count_max",
}


def _algorithm_lists() -> tuple[tuple[str, str, list[bytes], list[bytes]], ...]:
    """The ssh_config's algorithm lists asyncssh follows (PubkeyAcceptedAlgorithms, which it
    reads only through :func:`_read_config_as_ssh_does`, applied by
    :func:`_accepted_signature_algs`): each option, what it
    names, the algorithms asyncssh supports and its defaults (the base of ``+``, ``-``, ``^``)."""
    from asyncssh import encryption, kex, mac, public_key

    signatures = (
        public_key.get_x509_certificate_algs()
        + public_key.get_certificate_algs()
        + public_key.get_public_key_algs()
    )
    default_signatures = (
        public_key.get_default_certificate_algs() + public_key.get_default_public_key_algs()
    )
    return (
        (
            "Ciphers",
            "cipher",
            encryption.get_encryption_algs(),
            encryption.get_default_encryption_algs(),
        ),
        ("MACs", "MAC", mac.get_mac_algs(), mac.get_default_mac_algs()),
        ("KexAlgorithms", "key exchange", kex.get_kex_algs(), kex.get_default_kex_algs()),
        ("HostKeyAlgorithms", "host key", signatures, default_signatures),
        *((option, "public key", signatures, default_signatures) for option in _PUBKEY_ALGORITHMS),
    )


#: ssh's two names of one option (the second its old one): the first line of either wins.
_PUBKEY_ALGORITHMS = ("PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes")


def _usable_algorithms(value: str, supported: list[bytes], default: list[bytes]) -> list[bytes]:
    """The algorithms asyncssh takes from the ssh_config list ``value``, as it reads one
    given there (not as an argument): a name or ``*``/``?`` pattern it does not support
    matches nothing and is dropped without a word; ``+`` appends what matched to its
    defaults, ``^`` puts it before them, ``-`` removes it from them."""
    from asyncssh.pattern import WildcardPattern

    prefix = value[:1] if value[:1] in ("+", "-", "^") else ""
    patterns = [WildcardPattern(name) for name in value[len(prefix) :].split(",")]
    matched = [alg for alg in supported if any(p.matches(alg.decode("ascii")) for p in patterns)]
    if prefix == "-":
        return [alg for alg in default if alg not in matched]
    if prefix == "^":
        return matched + default
    if prefix == "+":
        return default + matched
    return matched


def _refuse_unusable_algorithms(resolved: _Resolved, endpoint: Endpoint, host: str) -> None:
    """A :class:`ConfigError` for an algorithm list of the ssh_config that leaves asyncssh
    nothing to offer (every name one it does not support, or ``-`` removing every one): the
    connection would fail in the key exchange, and look like an unreachable host.

    ssh refuses a list with any name it does not know; asyncssh's set is not ssh's (no
    sntrup761 key exchange, say), so a list it can use part of is followed, as asyncssh
    follows it. An empty MACs is refused only when a cipher in use needs a MAC (an AEAD
    one, such as aes128-gcm, has its own)."""
    parsed = resolved.parsed
    if parsed is None:
        return
    for option, kind, supported, default in _algorithm_lists():
        value = parsed.config.get(option)
        if not isinstance(value, str) or _usable_algorithms(value, supported, default):
            continue
        if option == "MACs" and not _ciphers_need_a_mac(resolved):
            continue
        names = ", ".join(alg.decode("ascii") for alg in supported)
        raise ConfigError(
            f"the ssh_config's {option} {value!r} leaves no {kind} algorithm that "
            "remote-sync's SSH library (asyncssh) supports",
            host=host,
            path=_config_names(endpoint),
            hint=f"fix the {option} line of the ssh_config; asyncssh supports: {names}",
        )


def _unsupported_algorithms(
    resolved: _Resolved, endpoint: Endpoint, host: str
) -> tuple[ConfigWarning, ...]:
    """A warning for each algorithm list of the ssh_config that names algorithms asyncssh
    does not support, which it leaves out without a word while others of the list remain
    (a list left with none is an error: :func:`_refuse_unusable_algorithms`), naming the
    option, the names and the file and line that set it.

    ssh refuses a list with a name it does not know ("Bad SSH2 cipher spec"), but a name
    asyncssh lacks may be one ssh knows (sntrup761x25519-sha512@openssh.com) or one only a
    newer ssh or another build knows: which of them a name is cannot be told here, so it is
    said, not refused. Names after ``-`` remove algorithms: one that is not there is no
    loss.

    A list the system-wide ssh_config (or a file it Includes) set is only logged (debug):
    there it is the distribution's, not the user's (Fedora's and RHEL's crypto-policies
    Include one naming sntrup761x25519-sha512@openssh.com in every ssh_config), and a
    warning for every host of every sync would ask the user to edit a file root keeps,
    generated, for a name ssh knows."""
    parsed = resolved.parsed
    if parsed is None:
        return ()
    warnings = []
    for option, kind, supported, _ in _algorithm_lists():
        value = parsed.config.get(option)
        if not isinstance(value, str) or value.startswith("-"):
            continue
        names = [name for name in value.lstrip("+^").split(",") if name]
        left_out = [name for name in names if not _usable_algorithms(name, supported, [])]
        if not left_out:
            continue
        file, where = _where_set(parsed, option, endpoint)
        if option in getattr(parsed.config, "_set_by_system", ()):
            log.debug(
                "%s: %s %s%s names algorithms asyncssh does not support, left out: %s",
                host,
                file,
                where,
                option,
                ", ".join(left_out),
            )
            continue
        plural = "s" if len(left_out) > 1 else ""
        warnings.append(
            ConfigWarning(
                host,
                file,
                f"{where}{option} names {kind} algorithm{plural} remote-sync's SSH library "
                f"(asyncssh) does not support, left out: {', '.join(left_out)}",
                "a name ssh knows but asyncssh lacks is only left out (the others of the "
                'list are used); a misspelt one is refused by ssh ("Bad SSH2 cipher spec")'
                ": fix it, or remove it from the line",
            )
        )
    return tuple(warnings)


def _where_set(
    parsed: asyncssh.SSHClientConnectionOptions, option: str, endpoint: Endpoint
) -> tuple[str, str]:
    """The file that set ``option`` (one of :data:`_WHERE_NOTED`) and how a warning begins
    with it: ``ssh_config line N: ``; without its line, the endpoint's files and
    ``ssh_config: ``."""
    set_at: dict[str, tuple[str, int]] = getattr(parsed.config, "_set_at", {})
    file, line = set_at.get(option, (_config_names(endpoint), 0))
    return file, f"ssh_config line {line}: " if line else "ssh_config: "


def _ignored_remote_command(
    resolved: _Resolved, endpoint: Endpoint, host: str
) -> tuple[ConfigWarning, ...]:
    """A warning when the ssh_config gives the host a RemoteCommand (not ``none``), which
    the connection never runs: remote-sync runs its own commands, as scp does (it runs ssh
    with ``-oRemoteCommand=none -oRequestTTY=no``).

    ssh refuses a command line for such a host ("Cannot execute command-line and remote
    command"), so remote-sync does what ssh would not; but a RemoteCommand (tmux, a
    container's shell) is nearly always there for an interactive alias, and refusing the
    host would fail a sync that reads it fine. Said, not refused. A ProxyJump host's is
    not said: a jump host runs no command, for ssh (``-W``) or here (a forwarded port)."""
    parsed = resolved.parsed
    if parsed is None or not isinstance(parsed.config.get("RemoteCommand"), str):
        return ()
    file, where = _where_set(parsed, "RemoteCommand", endpoint)
    return (
        ConfigWarning(
            host,
            file,
            f"{where}RemoteCommand is not run: remote-sync runs its own commands on the "
            "host (as scp does), with no pseudo-terminal whatever RequestTTY says",
            'ssh refuses a command line for this host ("Cannot execute command-line and '
            'remote command"); to keep the RemoteCommand for interactive use, put it under '
            "a Host alias of its own that remote-sync is not given",
        ),
    )


def _accepted_signature_algs(resolved: _Resolved) -> list[str]:
    """The ssh_config's PubkeyAcceptedAlgorithms (or PubkeyAcceptedKeyTypes) as asyncssh's
    ``signature_algs``: the signature algorithms a key may authenticate with, as ssh offers
    only the keys whose type it lists. Empty when the ssh_config sets none.

    asyncssh judges a certificate by the signature algorithm of its key: a certificate is
    used when its key's type is accepted. A list of certificate types only
    (``ssh-ed25519-cert-v01@openssh.com``) stands for their keys' types, which lets the plain
    keys of those types in too (ssh would offer only the certificates); in a list with plain
    types, a certificate type adds nothing (``-ssh-ed25519`` keeps ssh-ed25519 certificates
    out too, where ssh would offer them). X.509 types (x509v3-*) are not applied."""
    from asyncssh import public_key

    parsed = resolved.parsed
    value = None if parsed is None else parsed.config.get(_PUBKEY_ALGORITHMS[0])
    if value is None and parsed is not None:
        value = parsed.config.get(_PUBKEY_ALGORITHMS[1])
    if not isinstance(value, str):
        return []
    (*_, (_, _, supported, default)) = _algorithm_lists()
    plain = [alg.decode("ascii") for alg in public_key.get_public_key_algs()]
    names = [alg.decode("ascii") for alg in _usable_algorithms(value, supported, default)]
    if not any(name in plain for name in names):
        names = [_key_type_of(name, plain) for name in names]
    return list(dict.fromkeys(name for name in names if name in plain))


def _key_type_of(name: str, plain: list[str]) -> str:
    """The key type of an OpenSSH certificate type (``sk-ssh-ed25519-cert-v01@openssh.com``:
    ``sk-ssh-ed25519@openssh.com``); ``name`` if it is none."""
    if not name.endswith(_CERT_SUFFIX):
        return name
    base = name.removesuffix(_CERT_SUFFIX)
    return f"{base}@openssh.com" if f"{base}@openssh.com" in plain else base


#: What OpenSSH certificate types add to the name of their key's type.
_CERT_SUFFIX = "-cert-v01@openssh.com"


def _ciphers_need_a_mac(resolved: _Resolved) -> bool:
    """Whether a cipher the connection offers needs a MAC: the ssh_config's, else ours."""
    from asyncssh import encryption

    assert resolved.parsed is not None
    ciphers = [alg.encode("ascii") for alg in PREFERRED_CIPHERS]
    value = resolved.parsed.config.get("Ciphers")
    if "Ciphers" in resolved.tuned and isinstance(value, str):
        ciphers = _usable_algorithms(
            value, encryption.get_encryption_algs(), encryption.get_default_encryption_algs()
        )
    return any(encryption.encryption_needs_mac(alg) for alg in ciphers)


#: What asyncssh raises while it reads an ssh_config and private keys.
_READING_ERRORS = (asyncssh.Error, OSError, ValueError, RecursionError)


def _prepare(endpoint: Endpoint, host: str) -> _Prepared:
    """What a connection to ``endpoint`` needs from its local files, each checked before any
    traffic as asyncssh would stop on it, and as ssh stops on it: the ssh_config parsed
    (Include, Match and tokens, as the connection would parse it), its algorithm lists
    (:func:`_refuse_unusable_algorithms`), its UserKnownHostsFile files, the private keys
    named loaded. A configuration error is raised as the connection reports it
    (:func:`_local_failure`); anything else as asyncssh raised it. Both the pre-flight (a
    sync's, a remote listing's or show's) and a connection with none to reuse (a reconnect,
    a jump host's next use) call it, each in a worker thread: it blocks (files, a ``Match
    exec``'s command)."""
    options = _local_file_options(endpoint, host)
    version = _walk_config_files(endpoint, host)
    try:
        try:
            resolved = _lookup(endpoint, options.get("config"), host, version)
        except OSError as exc:
            included = _unreadable_include(exc, endpoint, host, options)
            if included is None:
                raise
            raise included from exc
        _refuse_unreadable_user_known_hosts(resolved.keys, endpoint, host)
        _refuse_unusable_algorithms(resolved, endpoint, host)
        _add_config_keys(options, resolved, host)
        if endpoint.proxy_command and not _is_none(endpoint.proxy_command):
            options["proxy_command"] = expand_proxy_tokens(endpoint, resolved, host)
        prepared = _Prepared(options, resolved, _unsupported_algorithms(resolved, endpoint, host))
        # The keys asyncssh loads: the ones named, the ssh_config's that exist among them;
        # with none it tries the default ones, which nobody asked for (and skips those it
        # cannot read). RSA keys are not validated here: that costs some 100 ms a key (per
        # host), and the connection validates them anyway.
        keys = options.get("client_keys")
        if keys:
            _load_keys(list(keys), options.get("client_certs", []), resolved.identities_only)
    except _READING_ERRORS as exc:
        error = _local_failure(exc, endpoint, host, options)
        if error is None:
            raise
        raise error from exc
    return prepared


def _load_keys(keys: list[str], certs: list[str], identities_only: bool) -> None:
    """Load private keys as the connection loads them, without RSA's validation."""
    asyncssh.load_keypairs(
        keys,
        None,
        certs,
        identities_only,
        True,  # ignore_encrypted, as the connection asks (the agent may hold them)
        unsafe_skip_rsa_key_validation=True,
    )


def _unreadable_include(
    exc: OSError, endpoint: Endpoint, host: str, options: dict[str, Any]
) -> ConfigError | None:
    """``exc``, raised while the ssh_config was read, as this host's :class:`ConfigError` when
    the file it names is one an ``Include`` line reads, as ssh refuses it too ("Can't open
    user config file"); None for a file named in the inventory (:func:`_local_failure` says
    it) or no file at all. asyncssh skips what an Include matches that is not a regular file
    (ssh finds nothing in a directory), so only a file that cannot be opened gets here."""
    if exc.filename is None or str(exc.filename) in _local_files(options):
        return None
    return unreadable_include_error(
        str(exc.filename), exc.strerror or str(exc), host, _config_names(endpoint)
    )


_IS_A_DIRECTORY = "it is a directory"


def _unreadable_known_hosts(path: str) -> str | None:
    """Why the known_hosts file ``path`` exists but cannot be read (a directory, no read
    permission), or None: it can be read, or it is not there yet."""
    if os.path.isdir(path):
        return _IS_A_DIRECTORY
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return "permission denied"
    return None


def _refuse_unreadable_user_known_hosts(keys: HostKeyFiles, endpoint: Endpoint, host: str) -> None:
    """A :class:`ConfigError` for a UserKnownHostsFile of the ssh_config that exists but
    cannot be read (a directory, no read permission).

    ssh skips such a file; here, as for the inventory's known_hosts, it is not skipped: no
    key could be checked against it, and under accept-new, whose first file is where a new
    key goes, every key would pass for a first one, run after run. A file not there yet is
    fine (accept-new creates it); the GlobalKnownHostsFile files are skipped, as ssh skips
    them (a system file may be meant for others)."""
    if endpoint.known_hosts is not None:
        return  # the inventory's, checked by _local_file_options
    for path in keys.user:
        why = _unreadable_known_hosts(path)
        if why is None:
            continue
        raise ConfigError(
            f"cannot read the ssh_config's UserKnownHostsFile {path!r}: {why}",
            host=host,
            path=path,
            hint="fix the UserKnownHostsFile line of the ssh_config, or let this user read "
            "the file (chmod u+r)",
        )


def _local_file_options(endpoint: Endpoint, host: str) -> dict[str, Any]:
    """asyncssh's options for the local files ``endpoint`` names, each checked first.

    A file named explicitly that is not there is this host's configuration error (as ``ssh
    -F`` on a missing file exits at once), not "unreachable". A missing known_hosts is fine
    only with accept-new, whose first contact creates it.
    """
    options: dict[str, Any] = {}
    known_hosts = None if endpoint.known_hosts is None else _expand(endpoint.known_hosts)
    why = None if known_hosts is None else _unreadable_known_hosts(known_hosts)
    if why is not None:
        # Not skipped as an unreadable system file is: no key could be checked against it,
        # and accept-new would take any key for a first one.
        fix = "fix the path in the inventory (or on the command line)"
        raise ConfigError(
            f"cannot read known_hosts {known_hosts!r}: {why}",
            host=host,
            path=known_hosts,
            hint=fix if why == _IS_A_DIRECTORY else f"let this user read it (chmod u+r), or {fix}",
        )
    missing = known_hosts is not None and not os.path.exists(known_hosts)
    if missing and endpoint.host_key_policy != "accept-new":
        raise ConfigError(
            f"known_hosts {known_hosts!r} does not exist: no host key can be verified",
            host=host,
            path=known_hosts,
            hint="fix the path, or create the file (ssh-keyscan, then check the keys), "
            "or let first contact record the keys (host_key_policy = 'accept-new', "
            "--accept-new-host-keys)",
        )
    for what, key, paths in (
        # ssh_config = [] reads no config at all (not ~/.ssh/config): passed on even empty.
        ("ssh_config", "config", endpoint.ssh_config),
        ("identity_file", "client_keys", endpoint.identity_files or None),
    ):
        if paths is None:
            continue
        expanded = [_expand(path) for path in paths]
        for path in expanded:
            if not os.path.exists(path):
                raise ConfigError(
                    f"{what} {path!r} does not exist",
                    host=host,
                    path=path,
                    hint="fix the path in the inventory (or on the command line)",
                )
        options[key] = expanded
    return options


def _walk_config_files(endpoint: Endpoint, host: str) -> tuple[object, ...] | None:
    """ssh's own checks of ``endpoint``'s ssh_config files before it uses any
    (:func:`~remote_sync.ssh.sshconfig.check_config_files`: keywords it does not know,
    files others may change, Includes it cannot open, in blocks that do not apply too),
    skipped while every file a walk found clean is as it was then (:data:`_WALKED`). The
    version of the files (:func:`_config_version`), for the lookup's cache; None when a
    reading of them is not to be kept (a file changed just now, a ``Match exec``)."""
    configs = [sshconfig.USER_CONFIG] if endpoint.ssh_config is None else endpoint.ssh_config
    system = sshconfig.SYSTEM_CONFIG if endpoint.ssh_config is None else None
    paths = tuple(_expand(path) for path in configs)
    # The user's file is told apart by its path (checked for others' write access), and
    # the system-wide file's relative Includes are under its directory.
    where = (paths, system, sshconfig.SYSTEM_CONFIG, _expand(sshconfig.USER_CONFIG))
    with _LOOKUPS_LOCK:
        kept = _WALKED.get(where)
    if kept is not None and _config_version(kept[0]) == kept[1]:
        return None if kept[0].volatile else kept[1]
    read = check_config_files(list(paths), host, _config_names(endpoint), system)
    # Taken after the walk: a file changed while it was read is one changed just now.
    version = _config_version(read)
    if version is not None:
        with _LOOKUPS_LOCK:
            _keep(_WALKED, where, (read, version), _LOOKUPS_KEPT)
    return None if read.volatile else version


def _config_version(read: FilesRead) -> tuple[object, ...] | None:
    """The version of the ssh_config files a walk ``read``: each file's
    (:func:`_file_version`; a missing one's is its absence, as one that appears is read),
    and every Include pattern's matches as they were. None when one changed within
    :data:`_RECENT_NS` or cannot be looked at, or a pattern matches other files now."""
    now_ns = time.time_ns()
    versions: list[object] = []
    for path in read.files:
        version = _file_version(path, now_ns)
        if version is None and os.path.lexists(path):
            return None
        versions.append(version or (path, None))
    for pattern, matched in read.includes:
        if tuple(include_paths(pattern)) != matched:
            return None
    return tuple(versions)


def _lookup(
    endpoint: Endpoint, config: Sequence[str] | None, host: str, version: tuple[object, ...] | None
) -> _Resolved:
    """:func:`_resolve`, kept for the same ``endpoint`` while its files keep their
    ``version`` (:func:`_walk_config_files`; None: not kept) and nothing else a reading goes
    by changed: the environment ($HOME, $USER, the variables a value names), this machine's
    name and user id (%L %l %C %u %i). Every round of a sync looks every host up again: a
    reading of a 20-host file cost about 1 ms a host; a lookup that failed is made again."""
    if version is None:
        return _resolve(endpoint, config, host)
    inputs = (
        endpoint,
        None if config is None else tuple(config),
        version,
        tuple(sorted(os.environ.items())),
        socket.gethostname(),
        os.getuid(),
    )
    with _LOOKUPS_LOCK:
        resolved = _LOOKUPS.get(inputs)
    if resolved is None:
        resolved = _resolve(endpoint, config, host)
        with _LOOKUPS_LOCK:
            _keep(_LOOKUPS, inputs, resolved, _LOOKUPS_KEPT)
    return resolved


#: ssh_config walks that found the files clean (:func:`_walk_config_files`), by the files
#: given: what the walk read and its version; and lookups of endpoints (:func:`_lookup`),
#: by what they went by. asyncssh only copies a lookup's options, never changing them, so
#: connections share one, as a jump host's connections share theirs already.
_WALKED: dict[tuple[object, ...], tuple[FilesRead, tuple[object, ...]]] = {}
_LOOKUPS: dict[tuple[object, ...], _Resolved] = {}
_LOOKUPS_LOCK = threading.Lock()  # lookups run in worker threads
#: How many of each are kept (the oldest dropped): a run has one lookup a host and jump host.
_LOOKUPS_KEPT = 1024


def _keep(kept: dict[Any, Any], key: object, value: object, limit: int) -> None:
    """``kept[key] = value``, the oldest entries dropped beyond ``limit``."""
    kept.pop(key, None)
    while len(kept) >= limit:
        del kept[next(iter(kept))]
    kept[key] = value


class _HostSlot:
    """One endpoint's connection, its channel cap and its figures."""

    def __init__(self, endpoint: Endpoint, settings: PoolSettings) -> None:
        self.endpoint = endpoint
        self.channels = anyio.Semaphore(settings.channels_per_host)
        self.lock = anyio.Lock()
        self.conn: asyncssh.SSHClientConnection | None = None
        self.stats = HostStats()
        self.last_used = time.monotonic()
        self.ever_connected = False
        #: The ssh_config's lookup the connection was made with, and whether a pre-flight
        #: since found the files say otherwise: a long-lived pool (the agent's) then opens
        #: a new connection, as ssh's ControlPath (%C: host, port, user) would name a new
        #: master, rather than go on with the old settings. The whole lookup is compared,
        #: every field of :class:`_Resolved`: HostName, Port and User, and as well the
        #: identities, host key checking, known_hosts files and HostKeyAlias, ProxyJump,
        #: IdentityAgent and which tuning options are set; not asyncssh's reading itself
        #: (``parsed``), so a changed ProxyCommand or cipher list alone does not count.
        self.made_with: _Resolved | None = None
        self.stale = False


class SSHPool:
    """Pooled asyncssh connections. Use as ``async with SSHPool() as pool``."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        self._slots: dict[Endpoint, _HostSlot] = {}
        self._handshakes = anyio.Semaphore(self.settings.max_handshakes)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._prepared: dict[Endpoint, _Prepared] = {}
        self._warnings: dict[Endpoint, tuple[ConfigWarning, ...]] = {}
        #: The ProxyCommand each connection made on one runs on, for :meth:`lost`: its own,
        #: or that of the jump hosts it was made through.
        self._proxies: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, _Carrier] = (
            weakref.WeakKeyDictionary()
        )
        #: Counts the opens and closes of channels, in any slot: a channel's share (see
        #: channel_share) is worked out again only when it moved.
        self._channel_changes = 0
        #: What callers learned about a host over one connection (see set_note, note_of),
        #: gone with it: a new connection (a reconnect, a changed ssh_config) starts with none.
        self._notes: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )

    def preflight(
        self, endpoint: Endpoint, host: str, jumps_read: JumpsRead | None = None
    ) -> ConfigError | None:
        """The configuration error a connection to ``endpoint`` would stop on before any
        traffic, or None: a local file named that is not there or cannot be read (an
        Include's, a UserKnownHostsFile), an ssh_config that does not parse or names no
        algorithm asyncssh supports, a private key that cannot be loaded; the same for every
        ProxyJump host the connection goes through (:func:`_prepare_jumps`). Nothing goes on
        the network (beyond what a ``Match exec`` command of the ssh_config does).

        What it reads (the ssh_config parsed, for the endpoint and its jump hosts) is kept
        for their first connection, which would read it again. ``jumps_read``: the jump hosts
        read by the other pre-flights of one pass (a round's hosts behind one bastion), which
        are not read again; none is taken from an earlier pass, so that a pool that lives on
        (the agent's) sees a bastion's HostName, Port or keys edited since. Blocking file
        work: call it in a worker thread.
        """
        try:
            prepared = _prepare(endpoint, host)
            known = {} if jumps_read is None else jumps_read
            jumps = _prepare_jumps(endpoint, prepared.resolved, host, known)
        except ConfigError as exc:
            return exc
        except _READING_ERRORS:
            return None  # not a configuration error: the connection meets it and reports it
        self._prepared.update(jumps)
        if jumps_read is not None:
            jumps_read.update(jumps)
        self._prepared[endpoint] = prepared
        slot = self._slots.get(endpoint)
        if slot is not None and slot.made_with not in (None, prepared.resolved):
            slot.stale = True  # taken by the next operation, on the event loop
        ignored = _ignored_remote_command(prepared.resolved, endpoint, host)
        seen = dict.fromkeys((*prepared.warnings, *ignored))
        for hop in jumps.values():  # a jump host's are this host's too (a shared one's, once)
            seen.update(dict.fromkeys(hop.warnings))
        self._warnings[endpoint] = tuple(seen)
        return None

    def config_warnings(self, endpoint: Endpoint) -> tuple[ConfigWarning, ...]:
        """What :meth:`preflight` found in ``endpoint``'s ssh_config (its jump hosts'
        included) that the connection will not follow, though it fails nothing
        (:class:`ConfigWarning`): algorithm names asyncssh does not support, left out; a
        RemoteCommand, not run."""
        return self._warnings.get(endpoint, ())

    async def __aenter__(self) -> SSHPool:
        # Always: the ProxyCommands of the connections run in it (_ProxyCommand.run).
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self.settings.idle_close > 0:
            self._task_group.start_soon(self._close_idle_loop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            # The connections first, so that their ProxyCommands end after them, as when a
            # connection closes alone; then the tasks (the idle loop, and the ProxyCommands,
            # each killed and reaped under a shield however it is stopped).
            with anyio.CancelScope(shield=True):
                await self.close()
        finally:
            group, self._task_group = self._task_group, None
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)

    async def close(self) -> None:
        """Close every connection."""
        for slot in self._slots.values():
            await self._drop(slot)

    async def close_except(self, kept: Collection[Endpoint]) -> None:
        """Close the connections of the endpoints not in ``kept``, and forget them (their
        figures and what their pre-flight found): a long-lived pool's hosts that are gone
        from its inventory, or whose entry changed (another endpoint), which the idle close
        would otherwise keep for its whole period. One with a channel open is left; call it
        between operations."""
        for endpoint, slot in list(self._slots.items()):
            if endpoint in kept or slot.stats.channels_open:
                continue
            del self._slots[endpoint]
            self._warnings.pop(endpoint, None)
            self._prepared.pop(endpoint, None)
            if slot.conn is not None:
                log.debug("closing the connection to %s: no longer wanted", endpoint.label)
            await self._drop(slot)

    def stats(self, endpoint: Endpoint) -> HostStats:
        return self._slot(endpoint).stats

    def channel_window(self, endpoint: Endpoint | None = None) -> int:
        """The receive window for a channel opened now to ``endpoint``.

        See ``PoolSettings.window_rate`` (sized to the endpoint's round trip, once known) and
        ``PoolSettings.window_budget`` (shared by the channels open at once).
        """
        settings = self.settings
        open_now = max(1, sum(other.stats.channels_open for other in self._slots.values()))
        largest = settings.window
        round_trip = self.round_trip(endpoint) if endpoint is not None else None
        if round_trip is not None and settings.window_rate > 0:
            # What the link needs, or else what absorbs the client's pauses. Both are shares:
            # window_rate is the client's pace, not each link's, so the channels open at once
            # divide it as they divide the floor. Unshared, a loaded machine (where loopback's
            # RTT grows to milliseconds) gave each of a fleet's eight streams up to 2 MiB.
            needed = int(round_trip * settings.window_rate) // open_now
            largest = min(largest, max(settings.window_floor // open_now, needed))
        if settings.window_budget <= 0:
            return largest
        share = settings.window_budget // open_now
        return max(min(settings.min_window, largest), min(largest, share))

    def channel_share(self, endpoint: Endpoint) -> Callable[[], int]:
        """What a channel to ``endpoint`` may hold now, for its credit to follow (see
        ``ssh/flow.py``): :meth:`channel_window`, worked out again only when a channel of the
        pool opened or closed since it was last. The credit asks on every chunk it settles,
        and the window costs about 2 µs (a sum over the slots, and the kernel asked for the
        RTT): 75 ms of a 1 GiB pull, for an answer that changes only with the channels open.
        The RTT it was sized on is that of the last open or close."""
        asked = -1
        window = 0

        def share() -> int:
            nonlocal asked, window
            if asked != self._channel_changes:
                asked = self._channel_changes
                window = self.channel_window(endpoint)
            return window

        return share

    def round_trip(self, endpoint: Endpoint) -> float | None:
        """The kernel's smoothed RTT of ``endpoint``'s connection, when it is direct TCP."""
        slot = self._slots.get(endpoint)
        if slot is None or slot.conn is None:
            return None
        return tcp_round_trip(slot.conn.get_extra_info("socket"))

    def note_of(self, conn: asyncssh.SSHClientConnection, key: str) -> str | None:
        """What :meth:`set_note` kept under ``key`` for ``conn`` (None when nothing was, or it
        is closed): read once a command's channel opens on ``conn`` (``exec_streaming``'s
        argv as a function of the connection), it is that connection's, even when the one
        the pool held before turned out lost and was replaced."""
        if conn.is_closed():
            return None
        return self._notes.get(conn, {}).get(key)

    def set_note(self, conn: asyncssh.SSHClientConnection, key: str, value: str | None) -> None:
        """Keep ``value`` under ``key`` for as long as ``conn`` lives (None forgets it)."""
        if value is None:
            self._notes.get(conn, {}).pop(key, None)
        else:
            self._notes.setdefault(conn, {})[key] = value

    def _slot(self, endpoint: Endpoint) -> _HostSlot:
        slot = self._slots.get(endpoint)
        if slot is None:
            slot = self._slots[endpoint] = _HostSlot(endpoint, self.settings)
        return slot

    @asynccontextmanager
    async def session(
        self, endpoint: Endpoint, *, host: str | None = None, token: CancelToken | None = None
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """Hold one of the endpoint's channel slots and yield its (shared) connection.

        The caller opens exactly one channel on the connection while inside. Cancelling
        ``token`` while this waits for a slot or for the connection (a handshake that hangs)
        raises :class:`TransferCancelledError` at once.
        """
        slot = self._slot(endpoint)
        name = host or endpoint.label
        acquired = False
        try:
            with token.scope(host=name) if token is not None else contextlib.nullcontext():
                await slot.channels.acquire()
                acquired = True
                conn = await self._connection(slot, name)
            slot.stats.operations += 1
            slot.stats.channels_open += 1
            self._channel_changes += 1
            slot.stats.channels_peak = max(slot.stats.channels_peak, slot.stats.channels_open)
            try:
                yield conn
            finally:
                slot.stats.channels_open -= 1
                self._channel_changes += 1
                slot.last_used = time.monotonic()
        finally:
            if acquired:
                slot.channels.release()

    async def reconnect(
        self, endpoint: Endpoint, *, host: str | None = None
    ) -> asyncssh.SSHClientConnection:
        """A live connection for ``endpoint``: the pooled one, or a new one after a backoff."""
        return await self._connection(self._slot(endpoint), host or endpoint.label)

    async def lost(
        self, conn: asyncssh.SSHClientConnection, exc: BaseException, host: str
    ) -> SSHError:
        """``exc``, which ended the connection ``conn`` once it was made (a channel of it saw
        it lost), as ``host``'s error. For a connection made on a ProxyCommand, or through
        ProxyJump hosts the first of which was, the command is named (by its program alone)
        and quoted, as a failed connect quotes it (:meth:`_ProxyCommand.quote`): the jump
        host's ``ssh -W`` says why ("Connection closed by remote host", "Broken pipe"),
        asyncssh only "Connection lost"."""
        carrier = self._proxies.get(conn)
        if carrier is None:
            return classify(exc, host)
        error = classify(exc, host, route=carrier.route())
        await carrier.proxy.quote(error)
        return error

    async def invalidate(self, endpoint: Endpoint) -> None:
        """Forget a connection found dead so the next operation reconnects."""
        slot = self._slots.get(endpoint)
        if slot is not None:
            await self._drop(slot)

    async def _connection(self, slot: _HostSlot, host: str) -> asyncssh.SSHClientConnection:
        async with slot.lock:
            if slot.stale and slot.conn is not None and not slot.conn.is_closed():
                # Made with what the ssh_config no longer says (see _HostSlot.made_with): a
                # new connection now, no backoff (nothing failed). Only between operations:
                # a pre-flight runs before a round's first.
                old, slot.conn = slot.conn, None
                old.close()
                slot.ever_connected = False
            slot.stale = False
            if slot.conn is not None and not slot.conn.is_closed():
                return slot.conn
            if slot.conn is not None or slot.ever_connected:
                # The connection dropped since the last operation: reopen it once, after a
                # pause, so a host that is rebooting is not hammered.
                slot.conn = None
                await anyio.sleep(self.settings.reconnect_backoff)
            async with self._handshakes:
                slot.conn = await self._connect(slot.endpoint, host)
            slot.ever_connected = True
            slot.stats.connects += 1
            slot.last_used = time.monotonic()
            return slot.conn

    async def _connect(
        self,
        endpoint: Endpoint,
        host: str,
        tunnel: asyncssh.SSHClientConnection | None = None,
        depth: int = 0,
    ) -> asyncssh.SSHClientConnection:
        """A connection to ``endpoint`` (through ``tunnel``, else through the ProxyJump hosts
        its ssh_config names, each connected here with the same host-key rules)."""
        settings = self.settings
        compress = settings.compression if endpoint.compression is None else endpoint.compression
        options: dict[str, Any] = {
            "encryption_algs": list(PREFERRED_CIPHERS),
            "compression_algs": (["zlib@openssh.com", "zlib", "none"] if compress else ["none"]),
            "connect_timeout": settings.connect_timeout,
            "login_timeout": settings.login_timeout,
            "keepalive_interval": settings.keepalive_interval,
            "keepalive_count_max": settings.keepalive_count_max,
            # Our channels carry bytes, as scp's do: never through a pseudo-terminal (the
            # ssh_config's "RequestTTY force" turned every \n into \r\n), never running its
            # RemoteCommand (said: _ignored_remote_command), and with nothing forwarded to
            # the host (its ForwardAgent would lend it the agent's keys).
            "request_pty": False,
            "command": None,  # every channel passes its own: this keeps RemoteCommand out
            "agent_forwarding": False,
            "x11_forwarding": False,
        }
        # The pre-flight's lookup, once for a target: a reconnect reads the files again. A
        # jump host keeps it (many targets go through one bastion, each over a connection
        # of its own: a lookup each would read and check the same files again).
        prepared = self._prepared.get(endpoint) if depth else self._prepared.pop(endpoint, None)
        if prepared is None:
            try:
                # In a worker thread, as the pre-flight's: it reads files, a `Match exec`
                # runs its command, keys are loaded, and every other task of the loop (a
                # UI's) would stop meanwhile. A cancel stops the wait at once; the thread
                # finishes its lookup alone (it writes nothing) and its result is dropped.
                prepared = await anyio.to_thread.run_sync(
                    _prepare, endpoint, host, abandon_on_cancel=True
                )
            except _READING_ERRORS as exc:  # not a configuration error (those are ours)
                raise classify(exc, host, connecting=True) from exc
        options.update(prepared.options)
        _reusing_lookup(options, prepared.resolved, endpoint)
        slot = None if depth else self._slots.get(endpoint)
        if slot is not None:
            slot.made_with = prepared.resolved
        accepted = _accepted_signature_algs(prepared.resolved)
        if accepted:
            options["signature_algs"] = accepted
        # A key that needs a passphrase is skipped, as ssh in batch mode skips it: the agent
        # may hold it (asyncssh would stop on an inventory's identity_file instead).
        options["ignore_encrypted"] = True
        # The known_hosts files are chosen here, as ssh chooses them, and always given to
        # asyncssh: left to itself it reads no system-wide file, and the ssh_config's
        # "UserKnownHostsFile none" would turn checking off.
        resolved = prepared.resolved
        for option in resolved.tuned:
            # What the ssh_config sets is followed, as ssh follows it (a NAS that offers only
            # aes128-cbc, a link that needs a longer ConnectTimeout); -z or the inventory's
            # compression still win over its Compression, as -C does.
            if option != "Compression" or endpoint.compression is None:
                del options[_TUNING[option]]
        agent = resolved.agent
        if agent is not None and (agent == "SSH_AUTH_SOCK" or agent.startswith("$")):
            # ssh reads these from the environment (ssh_config(5)); asyncssh took them for
            # a path, and found no agent.
            options["agent_path"] = os.environ.get(agent.removeprefix("$"), "")
        policy = endpoint.host_key_policy
        if resolved.checking == "accept-new":
            # The user's own opt-in, as the inventory's: a changed key is still refused. Its
            # "no" is not followed (nor mapped to this: with "UserKnownHostsFile /dev/null",
            # as it often comes, every key would pass for a first one).
            policy = "accept-new"
        client = _Client(resolved.keys, policy, settings.record_new_host_keys, resolved.hash_names)
        options["client_factory"] = lambda: client
        # Read in a worker thread, as the rest of the lookup: a known_hosts file is parsed
        # again whenever it changed since it was last parsed (_read_known_hosts: a key
        # recorded under accept-new by the previous connection must count), else shared.
        options["known_hosts"] = await anyio.to_thread.run_sync(resolved.keys.trusted)
        if endpoint.user:
            options["username"] = endpoint.user
        if endpoint.port:
            options["port"] = endpoint.port
        opened = None
        command = None
        if tunnel is None and endpoint.proxy_command:
            # The inventory's proxy_command, expanded by the pre-flight (_prepare); none for
            # "none", which connects directly, no ProxyJump taken either, as in ssh.
            command = options.get("proxy_command")
        elif tunnel is None and resolved.jumps is not None:
            # Jump hosts are connected here, not by asyncssh: it would connect them from the
            # ssh_config alone, with "UserKnownHostsFile none" meaning no check at all.
            opened = tunnel = await self._open_jumps(resolved.jumps, endpoint, host, depth)
        elif tunnel is None:
            command = _configured_proxy_command(resolved)
        # None: no jump host, and asyncssh must not open one of its own choosing.
        options["tunnel"] = tunnel
        # A ProxyCommand is run here (_ProxyCommand), never by asyncssh: it fed the command's
        # stderr into the SSH stream.
        options["proxy_command"] = None
        proxy = None
        try:
            if command is not None:
                proxy = client.proxy = _ProxyCommand(command, host)
                options["sock"] = self._start(proxy, resolved)
            through = resolved.jumps if opened is not None else None
            conn = await self._connect_mapped(
                endpoint, host, options, client, resolved, through, proxy
            )
        except BaseException:
            if opened is not None:
                opened.close()
            if proxy is not None:
                proxy.stop()
                sock = options.get("sock")
                if sock is not None and not client.made:
                    sock.close()  # asyncssh stopped before a transport of its took it
            raise
        if tunnel is not None:
            conn.set_tunnel(tunnel)  # closing this connection closes the jump hosts' too
        carried = self._proxies.get(tunnel) if tunnel is not None else None
        if proxy is not None:
            self._proxies[conn] = _Carrier(proxy)
        elif carried is not None:
            # Through jump hosts the first of which runs on a ProxyCommand: its end ends
            # this connection too, and what it said is why. Named by the jump hosts this
            # connection asked for (a hop's own are those of the hop before it).
            jumps = resolved.jumps if opened is not None else carried.jumps
            self._proxies[conn] = _Carrier(carried.proxy, jumps)
        return conn

    async def _open_jumps(
        self, jumps: str, endpoint: Endpoint, host: str, depth: int
    ) -> asyncssh.SSHClientConnection:
        """Connect the ProxyJump hosts ``jumps`` (``[user@]host[:port]``, comma-separated, split
        as asyncssh splits them), each through the one before; the first one through its own
        ProxyJump, if its ssh_config gives it one. Host keys are checked strictly."""
        _refuse_deep_jumps(depth, host)
        conn: asyncssh.SSHClientConnection | None = None
        try:
            for jump, hop in _jump_endpoints(jumps, endpoint, host):
                try:
                    conn = await self._connect(hop, host, conn, depth + 1)
                except RemoteSyncError as exc:
                    named = _through_jump(exc, jump, host)
                    if named is None:
                        raise
                    raise named from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        assert conn is not None
        return conn

    async def _connect_mapped(
        self,
        endpoint: Endpoint,
        host: str,
        options: dict[str, Any],
        client: _Client,
        resolved: _Resolved,
        through: str | None,
        proxy: _ProxyCommand | None,
    ) -> asyncssh.SSHClientConnection:
        """asyncssh's connect, its failures mapped to our errors, naming ``host`` (and the
        ProxyJump hosts it went ``through``, when it opened them, or the ``proxy`` command
        it was made on, with what that command said last on its stderr)."""
        try:
            return await asyncssh.connect(endpoint.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            state = client.host_key_state or "not trusted"
            unfollowed = resolved.checking in ("no", "off", "false") and state != "changed"
            what = "CHANGED" if state == "changed" else state
            where = ", ".join(client.held_in) or resolved.keys.describe()
            raise HostKeyError(
                f"host key is {what} (known_hosts: {where}); refusing to connect",
                host=host,
                hint=f"the ssh_config's StrictHostKeyChecking {resolved.checking} is not "
                "followed, checks are never skipped: verify the host's key and add it to "
                "known_hosts, or let first contact record it (StrictHostKeyChecking "
                "accept-new, or --accept-new-host-keys)"
                if unfollowed
                else _host_key_hint(client),
            ) from exc
        except asyncssh.PermissionDenied as exc:
            keys = options.get("client_keys") or resolved.identities or _DEFAULT_IDENTITIES
            locked = _locked_keys(keys)
            # Where and with what, as ssh -v says it: the host's name alone does not show a
            # wrong HostName or Port, nor a key that was never offered.
            route = _route(proxy.command if proxy is not None else None, resolved)
            raise AuthenticationError(
                f"authentication failed (connected {route}): {exc.reason}; "
                f"{_offered(options, resolved, locked)}"
                + ("; this key needs a passphrase, and no ssh-agent offered it" if locked else ""),
                host=host,
                path=", ".join(locked) or None,
                hint=f"add the key to ssh-agent (ssh-add {shlex.quote(locked[0])}), or "
                "check that the agent runs for this job (SSH_AUTH_SOCK)"
                if locked
                else None,
            ) from exc
        except socket.gaierror as exc:
            # Only a direct connection resolves a name here (through jump hosts, the last
            # one does): the ssh_config's HostName.
            raise HostUnreachableError(
                f"cannot resolve host name {resolved.host!r}: {exc.strerror}", host=host
            ) from exc
        except _READING_ERRORS as exc:
            error = _local_failure(exc, endpoint, host, options)
            if error is not None:
                raise error from exc
            route = _route(proxy.command if proxy is not None else None, resolved)
            failed = _noting_jump(exc, host, through, route)
            if proxy is not None:
                await proxy.quote(failed)
            raise failed from exc

    def _start(self, proxy: _ProxyCommand, resolved: _Resolved) -> socket.socket:
        """Start ``proxy``, owned from then by a task of the pool's task group; the socket
        the connection is made on."""
        if self._task_group is None:
            raise RuntimeError("a ProxyCommand runs in the pool's task group: async with SSHPool()")
        try:
            sock = proxy.spawn()
        except OSError as exc:  # the shell itself could not be run
            raise HostUnreachableError(
                f"cannot connect {_route(proxy.command, resolved)}: cannot run the shell "
                f"{proxy.shell!r}: {exc.strerror or exc}",
                host=proxy.host,
                hint="the ProxyCommand runs with $SHELL -c, as in ssh: set SHELL to a shell "
                "that exists",
            ) from exc
        self._task_group.start_soon(proxy.run)
        return sock

    async def _drop(self, slot: _HostSlot) -> None:
        conn, slot.conn = slot.conn, None
        if conn is not None:
            conn.close()
            with anyio.move_on_after(2):
                await conn.wait_closed()

    async def _close_idle_loop(self) -> None:
        idle = self.settings.idle_close
        while True:
            await anyio.sleep(min(idle / 2, 30.0))
            now = time.monotonic()
            for slot in list(self._slots.values()):
                if (
                    slot.conn is not None
                    and slot.stats.channels_open == 0
                    and now - slot.last_used > idle
                ):
                    log.debug("closing idle connection to %s", slot.endpoint.label)
                    await self._drop(slot)


#: Where Linux's ``struct tcp_info`` (``TCP_INFO``) keeps ``tcpi_rtt``, the smoothed round-trip
#: time in microseconds; the layout up to it has not changed since Linux 2.6.
_TCPI_RTT_OFFSET = 68


def tcp_round_trip(sock: Any) -> float | None:
    """The kernel's smoothed RTT of a connected TCP socket, in seconds (Linux); else None."""
    if sock is None or sys.platform != "linux" or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_RTT_OFFSET + 8)
    except (OSError, AttributeError, TypeError):
        return None  # not a TCP socket (a proxy's pipe), or closed
    if not isinstance(info, bytes) or len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    (micros,) = struct.unpack_from("=I", info, _TCPI_RTT_OFFSET)
    return micros / 1e6 if micros else None


def expand_proxy_tokens(endpoint: Endpoint, resolved: _Resolved, host: str) -> str:
    """The inventory's proxy_command with the tokens ssh expands in a ProxyCommand
    (:func:`~remote_sync.ssh.sshconfig.expand_proxy_command`: %h %k %n %p %r %%), from the
    HostName, HostKeyAlias, Port and User the ssh_config gives the endpoint (``resolved``),
    as ``ssh -o ProxyCommand=...`` expands them; any other token is this host's
    :class:`ConfigError`, as ssh stops on it, and so is a value the shell could read as
    code (a user name ``a$(id)`` in %r; ssh 9.6 refuses such a user name from its command
    line): found by the pre-flight, before the destination is touched and before anything
    runs. (asyncssh expands an ssh_config's ProxyCommand, see
    :func:`_expand_tokens_once_every_file_is_read`; the inventory's comes to it as is.)"""
    assert endpoint.proxy_command is not None
    tokens = {
        "h": resolved.host,
        "k": resolved.keys.alias or endpoint.address,
        "n": endpoint.address,
        "p": str(resolved.port),
        "r": resolved.user or getpass.getuser(),
    }
    named = "proxy_command"
    try:
        return expand_proxy_command(
            endpoint.proxy_command, tokens, f"the inventory's {named}:", named
        )
    except ValueError as exc:
        message, hint = _refused_proxy_command(exc, named)
        raise ConfigError(message, host=host, hint=hint) from None


def _refused_proxy_command(exc: ValueError, named: str) -> tuple[str, str]:
    """The message and the hint to stop on ``exc``, raised by
    :func:`~remote_sync.ssh.sshconfig.expand_proxy_command` for the ProxyCommand the hint
    names ``named``: an :class:`UnsafeTokenValue` as it is, a token ssh does not expand
    there as ssh stops on it."""
    if isinstance(exc, UnsafeTokenValue):
        return str(exc), exc.hint
    hint = f"use only %h %k %n %p %r in {named}, and write %% for a %"
    return f"{exc}, as ssh stops on it", hint


def _configured_proxy_command(resolved: _Resolved) -> str | None:
    """The ssh_config's ProxyCommand for the endpoint, its tokens expanded as asyncssh read
    it, unsplit (asyncssh splits it into words; the shell reads it, as ssh's does); None
    for ``none`` (asyncssh's reader takes it for no value, in any case, as ssh does) and
    for no ProxyCommand. The ``=`` ssh skips before the value is gone already
    (:func:`_first_proxy`)."""
    if resolved.parsed is None:
        return None
    command = resolved.parsed.config.get("ProxyCommand")
    return command if isinstance(command, str) and command else None


def _is_none(command: str) -> bool:
    """Whether the ProxyCommand ``command`` is ``none`` (in any case), which ssh takes for
    no command at all (readconf.c's option_clear_or_none): given first (``ssh -o
    ProxyCommand=none``, the inventory's), it keeps the ssh_config's ProxyCommand and
    ProxyJump out, and the connection is a direct one."""
    return command.strip().lower() == "none"


#: How much of a ProxyCommand's stderr is kept, for its connection's error to quote.
_PROXY_STDERR_KEPT = 8192
#: How long a ProxyCommand has to exit on SIGHUP (what ssh sends it) before its process
#: group is killed.
_PROXY_GRACE = 1.0
#: How long its stderr is still read once its process group is gone (a process that left
#: the group may hold it open).
_PROXY_DRAIN = 0.5


class _ProxyCommand:
    """A ProxyCommand run for one connection as ssh runs it (sshconnect.c's
    ssh_proxy_connect): ``$SHELL -c "exec COMMAND"`` (``/bin/sh`` when SHELL is unset), its
    stdin and stdout one end of a socket pair whose other end the connection is made on.

    Its stderr is never part of the SSH stream: asyncssh's own ProxyCommand fed it in, and a
    jump host's "Warning: Permanently added ..." in the middle of a connection broke it (a
    MAC that did not verify). It is read apart, each line logged at debug level, and its
    last :data:`_PROXY_STDERR_KEPT` bytes kept for the error of a connection that failed, or
    was lost once made, to quote (:meth:`quote`): ssh shows it on its own stderr.

    The command runs in a session of its own, as asyncssh ran it: a Ctrl-C at the terminal
    reaches us alone, and its process group can be killed whole. :meth:`run`, a task of the
    pool's task group, owns the process once it is spawned: when :meth:`stop` is called (the
    connection closed or was lost, its opening failed or was cancelled, the command exited
    with a status other than 0) or the task is cancelled, it sends the group SIGHUP, as ssh
    sends its proxy, then, once the command has exited (or after :data:`_PROXY_GRACE` if it
    has not), SIGKILL to what is left of it (a job the command put in the background), and
    reaps the command itself, under a shield: no zombie, no descriptor left, and no asyncio
    child watcher involved (whose race with asyncio's own reaping warned of an "Unknown
    child process pid", python/cpython#86276)."""

    def __init__(self, command: str, host: str) -> None:
        self.command = command
        self.host = host
        self.shell = os.environ.get("SHELL") or "/bin/sh"
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr = bytearray()
        self._stop = anyio.Event()
        self._drained = anyio.Event()
        self._exited = anyio.Event()
        self._ended = anyio.Event()
        self._quit = False  # it exited before it was told to

    def spawn(self) -> socket.socket:
        """Start the command; the socket the connection is to be made on. OSError when the
        shell cannot be run."""
        ours, theirs = socket.socketpair()
        try:
            with theirs:  # the command's copy: ours closes when the command has it
                # In the event loop's thread: a fork and an exec, a few milliseconds (the
                # shell's start is the child's, not ours), once per connection made, which
                # the handshake that follows outweighs; a worker thread would add as much
                # for its hand-over, and a cancel could leave a command no task owns.
                self._process = subprocess.Popen(
                    [self.shell, "-c", f"exec {self.command}"],
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        log.debug(
            "%s: running ProxyCommand %s (pid %d)", self.host, self.command, self._process.pid
        )
        return ours

    def stop(self) -> None:
        """End the command (:meth:`run` does it): its connection is over."""
        self._stop.set()

    async def ended(self) -> None:
        """Wait until the command is reaped and its stderr read."""
        await self._ended.wait()

    def quit(self) -> str | None:
        """How the command ended, once :meth:`ended`, when it failed before it was told to
        end ("exited with status 255", "was killed by signal 9"); else None, and for a
        status of 0: a command may hand the socket on and exit so (:meth:`_watch`), which
        says nothing of why its connection failed."""
        status = None if self._process is None or not self._quit else self._process.returncode
        if not status:
            return None
        return f"exited with status {status}" if status > 0 else f"was killed by signal {-status}"

    async def quote(self, error: RemoteSyncError) -> None:
        """Add to ``error`` (its connection's: failed, or lost once made) how the command
        ended and what it said last, once it is stopped and its stderr read to the end (it
        is killed :data:`_PROXY_GRACE` after its SIGHUP): a command that failed has said
        why ("Connection refused", "Broken pipe"), where asyncssh says only that the
        connection was lost."""
        self.stop()
        with anyio.CancelScope(shield=True):
            await self.ended()
        said, quit = self.said(), self.quit()
        if quit is not None:
            # Said after what failed, not instead: a failed exit is the likely cause, but
            # what the connection met (a timeout, a lost connection) is the error.
            error.message += f"; the command {quit}"
        if said is not None:
            error.message += f"; it said: {said}"
        error.args = (error.message,)

    def said(self) -> str | None:
        """The last lines (up to three) the command wrote to its stderr, on one line, safe to
        show; None when it wrote nothing."""
        text = self._stderr.decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return showable(" / ".join(lines[-3:])) if lines else None

    async def run(self) -> None:
        process = self._process
        assert process is not None and process.stderr is not None
        stderr = process.stderr.fileno()
        os.set_blocking(stderr, False)
        exit_fd = _exit_descriptor(process.pid)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read, stderr)
                if exit_fd is not None:
                    tasks.start_soon(self._watch, exit_fd)
                try:
                    await self._stop.wait()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._end(process, exit_fd is not None)
                        with anyio.move_on_after(_PROXY_DRAIN):
                            await self._drained.wait()
                    tasks.cancel_scope.cancel()
        finally:
            if process.returncode is None:  # cancelled before it could wait for the stop
                with anyio.CancelScope(shield=True):
                    await self._end(process, False)
            process.stderr.close()
            if exit_fd is not None:
                os.close(exit_fd)
            self._ended.set()

    async def _watch(self, exit_fd: int) -> None:
        """Stop when the command fails: the connection is over then, even when a job it left
        in the background holds the socket open (the connection would wait for its
        timeout). A command that exits with status 0 may have handed the socket to a job of
        its own (a proxy that forks and leaves), as ssh lets it: its connection goes on."""
        await anyio.wait_readable(exit_fd)
        self._exited.set()
        assert self._process is not None
        if _exit_status(self._process.pid) != 0:
            self._stop.set()

    async def _end(self, process: subprocess.Popen[bytes], watched: bool) -> None:
        """SIGHUP to the command's group, SIGKILL to what is left of it, then reap it."""
        # Asked here, not when the exit was seen: the connection may have been seen lost
        # (the command's end of the socket closed as it exited) first. The kernel closes an
        # exiting process's files a moment before it is a zombie that waitid sees, so a
        # command that just failed is given that moment (10 ms at most, only when it has
        # not exited yet), not taken for one our SIGHUP ended.
        if watched and _exit_status(process.pid) is None:
            with anyio.move_on_after(_PROXY_EXITING):
                await self._exited.wait()
        self._quit = _exit_status(process.pid) is not None
        _signal_group(process.pid, signal.SIGHUP)
        if watched:  # else it is killed at once
            with anyio.move_on_after(_PROXY_GRACE):
                await self._exited.wait()
        # While the command is not reaped its pid is not free, so the group's id is not
        # another's yet.
        _signal_group(process.pid, signal.SIGKILL)
        status = await anyio.to_thread.run_sync(process.wait)
        log.debug("%s: ProxyCommand exited with status %d", self.host, status)

    async def _read(self, stderr: int) -> None:
        """Read the command's stderr to its end: kept (the last bytes) and logged."""
        pending = b""
        try:
            while True:
                await anyio.wait_readable(stderr)
                try:
                    data = os.read(stderr, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self._stderr += data
                del self._stderr[:-_PROXY_STDERR_KEPT]
                *lines, pending = (pending + data).split(b"\n")
                pending = pending[-_PROXY_STDERR_KEPT:]
                for line in lines:
                    self._log(line)
        finally:
            if pending:
                self._log(pending)
            self._drained.set()

    def _log(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        log.debug("%s: ProxyCommand: %s", self.host, showable(text))


def _signal_group(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)


#: How long a ProxyCommand whose connection ended is given to be seen exited before it is
#: sent SIGHUP (see :meth:`_ProxyCommand._end`).
_PROXY_EXITING = 0.01


def _exit_status(pid: int) -> int | None:
    """The exit status of the exited child ``pid``, without reaping it: its code, or minus
    the signal that killed it; None while it runs, and where that cannot be asked (macOS
    before Python 3.13)."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (AttributeError, ChildProcessError):
        return None
    if found is None:
        return None
    return found.si_status if found.si_code == os.CLD_EXITED else -found.si_status


def _exit_descriptor(pid: int) -> int | None:
    """A descriptor that becomes readable when the child ``pid`` exits, without reaping it (a
    pidfd: Linux 5.3 and later); None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _jump_endpoints(jumps: str, endpoint: Endpoint, host: str) -> list[tuple[str, Endpoint]]:
    """The ProxyJump hosts ``jumps`` of ``endpoint`` (``[ssh://][user@]host[:port]``,
    comma-separated, an IPv6 address in brackets, read as ssh reads them:
    :func:`~remote_sync.ssh.sshconfig.jump_hop`), each as written and as the endpoint it is
    connected as: looked up in the same ssh_config, nothing else of the target's (its keys,
    known_hosts) applied, as ssh runs ``ssh -W`` for it with the same ``-F`` alone, and
    ``-J`` with the hops before it (:attr:`Endpoint.proxy_jump`)."""
    hops: list[tuple[str, Endpoint]] = []
    written = jumps.split(",")
    for jump in written:
        try:
            user, address, port = jump_hop(jump)
        except ValueError as exc:
            raise ConfigError(
                f"bad ProxyJump host {jump!r} ({exc}); ssh refuses it too",
                host=host,
                path=_config_names(endpoint),
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


def _through_jump(exc: RemoteSyncError, jump: str, host: str) -> RemoteSyncError | None:
    """``exc``, met on the way through the ProxyJump host ``jump``, as ``host``'s error naming
    that jump host; None when it names one already (the innermost, when the jump host has
    jump hosts of its own)."""
    if exc.message.startswith("ProxyJump host "):
        return None
    return type(exc)(
        f"ProxyJump host {jump!r}: {exc.message}", host=host, path=exc.path, hint=exc.hint
    )


def _refuse_deep_jumps(depth: int, host: str) -> None:
    if depth >= MAX_JUMP_DEPTH:
        raise ConfigError(
            f"ProxyJump hosts lead through more than {MAX_JUMP_DEPTH} hops (a loop?)",
            host=host,
            hint="check the ProxyJump lines of the ssh_config",
        )


def _prepare_jumps(
    endpoint: Endpoint,
    resolved: _Resolved,
    host: str,
    known: Mapping[Endpoint, _Prepared],
    depth: int = 0,
    chain: tuple[str, ...] = (),
) -> dict[Endpoint, _Prepared]:
    """:func:`_prepare` for every ProxyJump host a connection to ``endpoint`` goes through,
    before any traffic, each as it is connected (:meth:`SSHPool._open_jumps`), as ssh walks
    them: every host of a comma list (``a,b``: b reached through a), and the first one's own
    ProxyJump hosts, recursively (ssh runs ``ssh -J a -W ... b``: b's own ProxyJump is
    replaced, a's is followed). A configuration error is ``host``'s, naming the jump host.

    A ProxyJump line that leads back to a jump host already on the way is a loop, refused
    here (ssh starts ssh after ssh without end); a chain deeper than :data:`MAX_JUMP_DEPTH`
    is refused as the connection refuses it. A jump host in ``known`` (read by another
    pre-flight of the same pass) is not read again.
    """
    jumps = None if endpoint.proxy_command else resolved.jumps
    if jumps is None:
        return {}
    _refuse_deep_jumps(depth, host)
    found: dict[Endpoint, _Prepared] = {}
    for position, (jump, hop) in enumerate(_jump_endpoints(jumps, endpoint, host)):
        try:
            found[hop] = prepared = known.get(hop) or _prepare(hop, host)
            if position > 0:
                continue
            if jump in chain:
                way = " -> ".join((*chain, jump))
                raise ConfigError(
                    f"ProxyJump hosts lead in a loop: {way}",
                    host=host,
                    path=_config_names(endpoint),
                    hint="fix the ProxyJump lines of the ssh_config",
                )
            deeper = _prepare_jumps(hop, prepared.resolved, host, known, depth + 1, (*chain, jump))
            found.update(deeper)
        except RemoteSyncError as exc:
            named = _through_jump(exc, jump, host)
            if named is None:
                raise
            raise named from exc
    return found


def _reusing_lookup(options: dict[str, Any], resolved: _Resolved, endpoint: Endpoint) -> None:
    """``options`` (changed in place) built on the ssh_config as the lookup read it, instead
    of parsing the files again (about 2 ms a host for a 20-host ssh_config, against 0.07 ms).

    ``config=None`` reads no file: asyncssh copies the values found (``Match final``
    blocks' included, as the lookup applied them), and ``reload``/``final`` off keep it from
    reading them afresh. Not when asyncssh would canonicalize the host name
    (CanonicalizeHostname with CanonicalDomains): it reads the files again for the new name
    then, which needs them named. The lookup asked for no keys: unless some are named, the
    connection asks for asyncssh's default (the ssh_config's IdentityFile, else ~/.ssh/id_*).
    """
    parsed = resolved.parsed
    if parsed is None or (parsed.canonicalize_hostname and parsed.canonical_domains):
        # asyncssh alone would read ~/.ssh/config only: the system-wide file too, as ssh;
        # and the inventory's ProxyCommand goes before them, as in the lookup.
        files = options.get("config")  # [] (no file at all) stays []
        options["config"] = _config_files(endpoint, default_files() if files is None else files)
        return
    options.update(options=parsed, config=None, reload=False, final=False)
    options.setdefault("client_keys", ())


def _host_key_hint(client: _Client) -> str | None:
    """What to do about a refused host key, for the key the host offered: ``ssh-keygen -R``
    helps only when a key is held (it removes it); an unknown key needs recording, which
    the generic hint did not say (it told a first contact to remove a key it did not have).
    None (the generic hint) when asyncssh refused before asking the client."""
    if not client.key_name:
        return None
    name = shlex.quote(client.key_name)
    if client.host_key_state == "changed":
        # Each file that holds the old key: one left behind still refuses the host.
        removals = "; ".join(
            f"ssh-keygen -R {name} -f {shlex.quote(path)}" for path in client.held_in
        )
        return (
            f"the host now offers {client.offered}; if that change is expected (the host "
            f"was reinstalled), verify it out of band, remove the old key ({removals}) and "
            "connect once with ssh; checks are never skipped"
        )
    if client.policy == "accept-new" and not client.files.user:
        return (
            f"the host offers {client.offered}; accept-new is asked for, but the ssh_config "
            "names no known_hosts file to record it in (UserKnownHostsFile none): verify "
            "the key out of band and add it to a known_hosts file; checks are never skipped"
        )
    return (
        f"the host offers {client.offered}: verify it out of band, then record it by "
        "connecting once with ssh, or run again with --accept-new-host-keys (for an "
        'inventory host: host_key_policy = "accept-new"; for a ProxyJump host, which '
        "those leave strict: StrictHostKeyChecking accept-new in its ssh_config block); "
        "checks are never skipped"
    )


def _route(command: str | None, resolved: _Resolved) -> str:
    """Where a connection went, as its failure names it: the address and port asked for (of
    the ssh_config's HostName and Port, as ssh's "connect to host H port P" names them;
    through ProxyJump hosts, the last one asked for them), or the ProxyCommand it ran
    instead (``command``, expanded), as no address of ours was tried then: named by its
    program alone (:func:`~remote_sync.ssh.sshconfig.command_name`, ``through ProxyCommand
    sshpass …``), as its arguments may hold a secret that an error would carry into JSON
    events and cron's mail; the whole command is logged at debug level as it starts."""
    if command:
        return _proxy_route(command)
    return f"to {resolved.host} port {resolved.port}"  # the lookup had the endpoint's port


@dataclass(frozen=True, slots=True)
class _Carrier:
    """The ProxyCommand a connection runs on (:meth:`SSHPool.lost`): its own, or, when it
    was made through the ProxyJump hosts ``jumps``, the one the first of them runs on."""

    proxy: _ProxyCommand
    jumps: str | None = None

    def route(self) -> str:
        """The connection's route, as its loss names it (:func:`_route`)."""
        if self.jumps is None:
            return _proxy_route(self.proxy.command)
        return (
            f"through ProxyJump {self.jumps!r}, carried by ProxyCommand "
            f"{command_name(self.proxy.command)}"
        )


def _proxy_route(command: str) -> str:
    """A connection's route through the ProxyCommand ``command`` (:func:`_route`)."""
    return f"through ProxyCommand {command_name(command)}"


def _noting_jump(exc: BaseException, host: str, through: str | None, route: str) -> SSHError:
    """``exc`` as our error for a connection to ``host`` by ``route`` (:func:`_route`) that
    went ``through`` ProxyJump hosts (connected already, by then): a refusal or silence is
    then the target's, from the last of them (not a channel cap of ours)."""
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


#: asyncssh's message for a line of an ssh_config it cannot parse.
_CONFIG_LINE = re.compile(r"(?P<path>.+) line (?P<line>\d+): (?P<reason>.+)", re.DOTALL)


def _local_failure(
    exc: BaseException, endpoint: Endpoint, host: str, options: dict[str, Any]
) -> ConfigError | None:
    """``exc``, raised by asyncssh as it read the local files of ``options`` (a connection's
    to ``endpoint``), as this host's configuration error; None when it is not one. Both the
    connection and the check before it (:func:`_prepare`) say it this way."""
    configs = _config_names(endpoint)
    if isinstance(exc, asyncssh.ConfigParseError):
        # asyncssh names the file (an included one, when the line is there) and the line,
        # except for a token or variable it cannot expand.
        found = _CONFIG_LINE.fullmatch(str(exc))
        if found is None:
            return ConfigError(
                f"ssh_config: {exc}", host=host, path=configs, hint="fix the ssh_config"
            )
        return ConfigError(
            f"ssh_config line {found['line']}: {found['reason']}",
            host=host,
            path=found["path"],
            hint=getattr(exc, "hint", None) or "fix that line of the ssh_config",
        )
    if isinstance(exc, RecursionError):  # an Include that includes itself, directly or not
        return nested_includes_error(host, configs)
    if isinstance(exc, asyncssh.KeyImportError):
        keys = [str(key) for key in options.get("client_keys") or ()]
        return ConfigError(
            f"cannot load a private key: {exc}",
            host=host,
            path=", ".join(_unloadable(keys) or keys) or None,
            hint="give identity_file a private key ssh can read "
            "(ssh-keygen -y -f FILE shows whether it can)",
        )
    named = _local_files(options)
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) in named:
        return ConfigError(
            f"cannot read {named[str(exc.filename)]} {exc.filename!r}: {exc.strerror or exc}",
            host=host,
            path=str(exc.filename),
            hint="fix the path in the inventory (or on the command line)",
        )
    return None


def _unloadable(keys: list[str]) -> list[str]:
    """The private keys among ``keys`` that do not load on their own (asyncssh's error does
    not say which one stopped it)."""
    failing = []
    for key in keys:
        try:
            _load_keys([key], [], False)
        except _READING_ERRORS:
            failing.append(key)
    return failing


def _config_names(endpoint: Endpoint) -> str:
    """The ssh_config files ``endpoint`` reads, as errors name them."""
    if endpoint.ssh_config is None:
        return f"{sshconfig.USER_CONFIG}, {sshconfig.SYSTEM_CONFIG}"
    return ", ".join(endpoint.ssh_config) or "(none)"


def _local_files(options: dict[str, Any]) -> dict[str, str]:
    """The local files asyncssh was given to read, each with the option that names it."""
    named: dict[str, str] = {}
    for key, what in (("config", "ssh_config"), ("client_keys", "identity_file")):
        for path in options.get(key) or ():
            named[str(path)] = what
    known = options.get("known_hosts")
    for path in [known] if isinstance(known, str) else known if isinstance(known, list) else ():
        named[path] = "known_hosts"
    return named


def _expand(path: str) -> str:
    """``~`` expansion (string work only; no file system access)."""
    return os.path.expanduser(path)


def classify(
    exc: BaseException, host: str, *, connecting: bool = False, route: str | None = None
) -> SSHError:
    """Map an asyncssh/OS failure to our hierarchy, naming the host, and for a connection
    that failed (``connecting``) or was lost, the ``route`` it took (:func:`_route`: "to
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


__all__ = [
    "ConfigWarning",
    "Endpoint",
    "HostStats",
    "PoolSettings",
    "SSHPool",
    "classify",
]

# Silence asyncssh's per-channel info logging unless the user asks for debug output.
logging.getLogger("asyncssh").setLevel(logging.WARNING)


#: Where asyncssh's client config class keeps the names of the patches of this module
#: applied to it: each is applied once, in whatever order and however often the functions
#: are called (a marker on a wrapper was hidden by the next wrapper of the same method, and
#: a patch applied twice expanded tokens twice).
_PATCHES_APPLIED = "_remote_sync_patches"


def _config_class() -> Any:
    """asyncssh's SSHClientConfig (None where there is none: another asyncssh)."""
    return getattr(getattr(asyncssh, "config", None), "SSHClientConfig", None)


def _applied(config_class: Any) -> set[str]:
    """The names of the patches applied to ``config_class`` (:data:`_PATCHES_APPLIED`)."""
    applied: set[str] | None = config_class.__dict__.get(_PATCHES_APPLIED)
    if applied is None:
        applied = set()
        setattr(config_class, _PATCHES_APPLIED, applied)
    return applied


#: What asyncssh's reading of ssh_config files is given to read (its ``config_paths``),
#: while it reads them; None otherwise. Per thread and task, as lookups run in both. Its
#: ``system`` (:class:`~remote_sync.ssh.sshconfig.SystemWide`) is the system-wide file,
#: read last; its ``proxy_command_given`` and ``known_hosts_given`` (:class:`_InventoryGives`)
#: say the inventory gives the ProxyCommand, the known_hosts file.
_READING_FILES: contextvars.ContextVar[object] = contextvars.ContextVar(
    "remote_sync_ssh_config_files", default=None
)


def _sort_config_includes() -> None:
    """Make asyncssh read an ssh_config ``Include`` as ssh reads it
    (:func:`_include_as_ssh_does`): the files of a glob sorted and without the dot files a
    wildcard does not match in glob(3), and a relative path of the system-wide file (or of
    a file it Includes) under that file's directory.

    asyncssh's own handler took ``Path.glob``, in directory order and with dot files, so
    with first-match-wins a host could get another file's HostName or Port than ssh gives
    it (and be mirrored under the wrong name), or an editor's swap file's. Its handler is
    replaced, not wrapped: ``pathlib.Path.glob`` is never changed (swapped for the time of
    an Include, it was swapped for every thread of the process). Where the handler is not
    asyncssh's own (another asyncssh), nothing is changed."""
    module: Any = getattr(asyncssh, "config", None)
    config_class = _config_class()
    handlers = getattr(config_class, "_handlers", None)
    entry = handlers.get("include") if isinstance(handlers, dict) else None
    own = getattr(getattr(module, "SSHConfig", None), "_include", None)
    if entry is None or own is None or "include" in _applied(config_class):
        return
    assert isinstance(handlers, dict)
    if entry[1] is not own:
        return
    handlers["include"] = (entry[0], _include_as_ssh_does)
    _applied(config_class).add("include")


def _include_as_ssh_does(config: Any, option: str, args: list[str]) -> None:
    """asyncssh's Include handler (``SSHConfig._include``, as asyncssh 2.x has it), reading
    what ssh reads: each pattern's files as glob(3) finds them
    (:func:`~remote_sync.ssh.sshconfig.include_paths`), the regular files among them; a
    relative pattern under ~/.ssh, or, in the system-wide file and the files it Includes
    (:func:`_reading_system_file`), under that file's directory, as ssh takes them."""
    if _reading_system_file(config):
        config._system_includes = True
        system = getattr(_READING_FILES.get(), "system", None)
        config._default_path = Path(os.path.dirname(str(system)))
    old_path, old_line_no = config._path, config._line_no
    for pattern in args:
        path = Path(pattern).expanduser()
        if path.anchor:
            pattern, path = str(Path(*path.parts[1:])), Path(path.anchor)
        else:
            path = config._default_path
        matched = include_paths(os.path.join(path, pattern))
        found = [name for name in matched if os.path.isfile(name)]
        if not found:
            log.debug("ssh_config Include %s matched no files", pattern)
        for name in found:
            config.parse(Path(name))
    config._path, config._line_no = old_path, old_line_no
    config._matching = True
    args.clear()


class _InventoryGives(SystemWide):
    """The ssh_config files of an endpoint whose ProxyCommand or known_hosts file the
    inventory gives, read as ``ssh -o ProxyCommand=... -o UserKnownHostsFile=...`` reads
    them: a value given before the files is the first obtained, and what the files say is
    not used. With ``proxy_command_given``, their ProxyCommand and ProxyJump lines are not
    taken (:func:`_first_proxy`) and their tokens are not expanded (nor refused): ssh never
    runs them, and %j is empty. With ``proxy_jump_given`` (:attr:`Endpoint.proxy_jump`, as
    ``ssh -J`` gives it) the reading starts with that ProxyJump, so that the lines are not
    taken either, and %j and %C are of its last hop (:func:`_read_system_file_as_ssh_does`).
    With ``known_hosts_given``, a UserKnownHostsFile path is
    not refused for a lone ``%`` (:func:`_refusing_lone_percent`): ssh never expands it."""

    def __init__(
        self,
        paths: list[str],
        *,
        proxy_command_given: bool,
        known_hosts_given: bool,
        proxy_jump_given: str | None = None,
    ) -> None:
        super().__init__(paths, getattr(paths, "system", None))
        self.proxy_command_given = proxy_command_given
        self.known_hosts_given = known_hosts_given
        self.proxy_jump_given = None if proxy_command_given else proxy_jump_given


def _config_files(endpoint: Endpoint, files: list[str]) -> list[str]:
    """``files``, the ssh_config files read for ``endpoint``, as asyncssh is given them: an
    :class:`_InventoryGives` when the inventory gives the ProxyCommand (``none`` too) or
    the known_hosts file, or the endpoint its ProxyJump hosts."""
    if not endpoint.proxy_command and endpoint.known_hosts is None and not endpoint.proxy_jump:
        return files
    return _InventoryGives(
        files,
        proxy_command_given=bool(endpoint.proxy_command),
        known_hosts_given=endpoint.known_hosts is not None,
        proxy_jump_given=endpoint.proxy_jump or None,
    )


class _GivenFirst:
    """What asyncssh's first pass over the ssh_config starts from (its ``last_config``)
    when values are given before any file, as ssh's command line gives them: ``options``."""

    def __init__(self, options: dict[str, object]) -> None:
        self.options = options

    def get_options(self, reload: bool) -> dict[str, object]:
        return dict(self.options)


def _read_system_file_as_ssh_does() -> None:
    """Make asyncssh note what its reading of ssh_config files is given
    (:data:`_READING_FILES`): which file is the system-wide one, whose relative Include
    paths, and those of the files it Includes, ssh takes under its directory (Debian's
    ``Include /etc/ssh/ssh_config.d/*.conf`` is absolute, others need not be), where
    asyncssh took every one under ~/.ssh (:func:`_include_as_ssh_does`); and whether the
    inventory gives the ProxyCommand or the known_hosts file (:class:`_InventoryGives`),
    or the endpoint its ProxyJump hosts, which the reading then starts with.
    Which file is the system-wide one it learns from the list it is given
    (:func:`~remote_sync.ssh.sshconfig.default_files`), read last: once an Include line of
    that file is read, every later one of the same reading is the system's. Where
    asyncssh's reader is not as expected (another asyncssh), nothing is changed."""
    config_class = _config_class()
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    if real_load is None or "files" in _applied(config_class):
        return

    def loading(cls: Any, last_config: Any, config_paths: Any, *args: Any) -> Any:
        given = getattr(config_paths, "proxy_jump_given", None)
        if given and last_config is None:
            # Before the first line, as ssh -J sets it: first obtained, it wins (a final
            # pass starts from the first pass's options, which hold it already).
            last_config = _GivenFirst({"ProxyJump": given})
        token = _READING_FILES.set(config_paths)
        try:
            return real_load(cls, last_config, config_paths, *args)
        finally:
            _READING_FILES.reset(token)

    config_class.load = classmethod(loading)
    _applied(config_class).add("files")


def _reading_system_file(config: Any) -> bool:
    """Whether asyncssh's reading ``config`` is at a line of the system-wide ssh_config or
    of a file it Includes (:data:`_READING_FILES`): that file, read last, or any file once
    one of its Include lines was read."""
    system = getattr(_READING_FILES.get(), "system", None)
    return system is not None and (
        getattr(config, "_system_includes", False) or str(config._path) == system
    )


_sort_config_includes()
_read_system_file_as_ssh_does()


#: The Match criteria whose value is a host name, compared as ssh compares it (ignoring
#: case); ``user``, ``localuser`` and ``tagged`` are compared as they are, as in ssh.
_HOST_CRITERIA = ("host", "originalhost")


def _lowercase_host_as_ssh_does() -> None:
    """Make asyncssh's reading of an ssh_config end, as ssh's does, with the host name
    lowercased (:func:`~remote_sync.ssh.sshconfig.lowercase_host`): the HostName (the name
    asked for when none is set) and the HostKeyAlias. The connection goes to that name and
    looks its key up under it (asyncssh kept ``PI-Kitchen`` as written, and missed the key
    that ssh, and ssh-keyscan, record under ``pi-kitchen``). A final pass (``Match final``)
    starts from it, as ssh's does (:class:`_FinalPassStart`: its %h and ``Match host``
    see the lowercased name; the first pass sees the name as written, as in ssh). And a
    ``Match host`` or ``originalhost`` pattern is compared with the name ignoring case, as
    ssh compares them (``Host`` patterns stay case-sensitive, as in ssh).

    The ``%h`` of the options whose tokens are expanded once the files are read
    (IdentityFile, CertificateFile, ProxyCommand, IdentityAgent, ForwardAgent:
    :func:`_expand_tokens_once_every_file_is_read`) is that lowercased name too, and ``%C``
    is hashed from it, as ssh expands them after lowercasing it (asyncssh used the HostName
    as written: ``id_%h`` was ``id_Real.Example`` where ssh loads ``id_real.example``), and
    from the ProxyJump host, as OpenSSH 9.6 and later hash it, and as ``Match exec`` has it;
    they have ssh's %k and %j too, which asyncssh lacked (all from
    :func:`~remote_sync.ssh.sshconfig.match_exec_tokens`, as the UserKnownHostsFile's).

    Where asyncssh's reader is not as expected (another asyncssh), nothing is changed."""
    config_class = _config_class()
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    match_val = getattr(config_class, "_match_val", None)
    set_tokens = getattr(config_class, "_set_tokens", None)
    if (
        real_load is None
        or match_val is None
        or set_tokens is None
        or "lowercase" in _applied(config_class)
    ):
        return

    def loading(
        cls: Any,
        last_config: Any,
        paths: Any,
        reload: bool,
        canonical: bool,
        final: bool,
        *args: Any,
    ) -> Any:
        if reload and final and not canonical and last_config is not None:
            last_config = _FinalPassStart(last_config)
        config = real_load(cls, last_config, paths, reload, canonical, final, *args)
        options: dict[str, Any] = config._options
        host = options.get("Hostname", config._orig_host)
        if isinstance(host, str):
            options["Hostname"] = lowercase_host(host)
        alias = options.get("HostKeyAlias")
        if isinstance(alias, str):
            options["HostKeyAlias"] = lowercase_host(alias)
        return config

    def host_values(config: Any, match: str) -> object:
        value = match_val(config, match)
        return (
            lowercase_host(value) if match in _HOST_CRITERIA and isinstance(value, str) else value
        )

    def lowercased_tokens(config: Any) -> None:
        set_tokens(config)
        tokens: dict[str, str] = config._tokens
        host = tokens.get("h")
        if isinstance(host, str):
            # The tokens of Match exec, which ssh expands in these options too (ssh.c's
            # default client expansion): %C with the jump host, as OpenSSH 9.6 and later
            # hash it (asyncssh's, as 9.2's, had none, so one config had two); %k and %j,
            # which asyncssh lacked and stopped on. %k is the HostKeyAlias (lowercased, as
            # ssh has it by then), else the name as asked for.
            options: dict[str, Any] = config._options
            jumps, alias = options.get("ProxyJump"), options.get("HostKeyAlias")
            tokens.update(
                match_exec_tokens(
                    host=lowercase_host(host),
                    original_host=tokens["n"],
                    port=int(tokens["p"]),
                    remote_user=tokens["r"],
                    local_user=tokens["u"],
                    key_alias=lowercase_host(alias) if isinstance(alias, str) else tokens["n"],
                    proxy_jump=jumps if isinstance(jumps, str) else None,
                )
            )

    config_class.load = classmethod(loading)
    config_class._match_val = host_values
    config_class._set_tokens = lowercased_tokens
    _applied(config_class).add("lowercase")


class _FinalPassStart:
    """What asyncssh's final pass over the ssh_config starts from (its ``last_config``): the
    options the first pass started from, and the HostName that pass ended with, lowercased,
    which ssh gives its final pass as its host name (and which, set first, no HostName line
    of that pass replaces)."""

    def __init__(self, first: Any) -> None:
        self.first = first

    def get_options(self, reload: bool) -> dict[str, object]:
        options: dict[str, object] = self.first.get_options(reload)
        host = self.first.get("Hostname")
        if host is not None:
            options["Hostname"] = host
        return options


_lowercase_host_as_ssh_does()


def _expand_tokens_once_every_file_is_read() -> None:
    """Make asyncssh expand the ``%`` tokens of an ssh_config once it has read every file, as
    ssh expands them once its whole configuration is read: IdentityFile, CertificateFile,
    IdentityAgent and ForwardAgent with its tokens and ``${VAR}`` (those of
    :func:`_lowercase_host_as_ssh_does`), and ProxyCommand with the tokens ssh expands there
    alone (:func:`~remote_sync.ssh.sshconfig.expand_proxy_command`: %h %k %n %p %r %%; any
    other refused with its file and line, as ssh stops on it; asyncssh expanded every token
    of the paths there, and ``${VAR}``, which ssh leaves to the command).

    asyncssh expanded them at the end of each file it read, an Include'd one too, from what
    was read so far: a HostName, User or HostKeyAlias set by a later file (the system-wide
    one, read after ~/.ssh/config) or after the Include line did not reach ``%h %r %k``
    (``id_%h`` named the host as asked for, not its HostName), and a ``%%`` that one file's
    expansion made ``%`` was expanded again by the next one's (``cert_%%C`` became a
    hash). A RemoteCommand's tokens are not expanded: it is never run
    (:func:`_ignored_remote_command`), and asyncssh stopped the whole host on one it lacks
    that ssh expands there (%k, %j).

    Applied only once :func:`_lowercase_host_as_ssh_does` is: the tokens come from its
    ``_set_tokens`` (asyncssh's own lack %k and %j, which a ProxyCommand's expansion looks
    up). Where asyncssh's reader is not as expected (another asyncssh), nothing is
    changed: asyncssh expands the tokens at the end of each file, as it did."""
    config_class = _config_class()
    expanded = getattr(config_class, "_percent_expand", None)
    real_load = getattr(getattr(config_class, "load", None), "__func__", None)
    if (
        not isinstance(expanded, set)
        or real_load is None
        or "lowercase" not in _applied(config_class)
        or "expand_once" in _applied(config_class)
    ):
        return
    paths = tuple(sorted(expanded - {"ProxyCommand", "RemoteCommand"}))
    config_class._percent_expand = set()  # nothing expanded at the end of each file

    def loading(cls: Any, last_config: Any, config_paths: Any, *args: Any) -> Any:
        config = real_load(cls, last_config, config_paths, *args)
        if config.loaded:  # a file was read (none: nothing to expand)
            _expand_read_options(config, paths)
        return config

    config_class.load = classmethod(loading)
    _applied(config_class).add("expand_once")


def _expand_read_options(config: Any, paths: Sequence[str]) -> None:
    """The options ``paths`` and ProxyCommand of asyncssh's finished reading ``config``
    expanded (:func:`_expand_tokens_once_every_file_is_read`), from the tokens of its
    options as every file left them. A ProxyCommand here is the one that runs (the first
    of ProxyCommand and ProxyJump, :func:`_first_proxy`): a token's value in it that the
    shell could read as code (a host name as typed ``box$(id)`` in %n, a ProxyJump hop's
    name in its own lookup's %h) is refused with the file and line, as an unknown token is,
    so the pre-flight finds it before the destination is touched and nothing runs."""
    config._set_tokens()
    options: dict[str, Any] = config._options
    for option in paths:
        value = options.get(option)
        if isinstance(value, list):
            options[option] = [config._expand_val(item) for item in value]
        elif isinstance(value, str):
            options[option] = config._expand_val(value)
    command = options.get("ProxyCommand")
    if isinstance(command, str):
        try:
            options["ProxyCommand"] = expand_proxy_command(command, config._tokens)
        except ValueError as exc:
            path, line = config.__dict__.get("_set_at", {}).get(
                "ProxyCommand", (config._path, config._line_no)
            )
            message, hint = _refused_proxy_command(exc, "the ProxyCommand")
            raise _RefusedLine(f"{path} line {line}: {message}", hint) from None


_expand_tokens_once_every_file_is_read()


#: ssh's time format (convtime): seconds, or numbers with units, as in "1m30s".
_SSH_TIME = re.compile(r"(?:\d+[smhdw])*\d*", re.IGNORECASE)
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The options asyncssh reads as integers that ssh reads as times.
_TIME_OPTIONS = ("connecttimeout", "serveraliveinterval")


def _ssh_seconds(text: str) -> str | None:
    """``text`` (an ssh_config time, "90", "1m30s") in seconds, or None if it is none."""
    if not text or _SSH_TIME.fullmatch(text) is None:
        return None
    parts = re.findall(r"(\d+)([smhdw]?)", text, re.IGNORECASE)
    return str(sum(int(number) * _TIME_UNITS[unit.lower()] for number, unit in parts))


class _SSHWords:
    """What asyncssh's config reader splits its lines with (``shlex``): the words ssh reads
    (:func:`~remote_sync.ssh.sshconfig.split_line`: the keyword split off at blanks or one
    ``=``, the line's comment cut off, quotes and backslashes read as ssh reads them, an
    ``=`` inside quotes kept in its word). (ssh gives a ProxyCommand the rest of its line,
    comment included, to the shell, for which it is a comment too.)"""

    @staticmethod
    def split(line: str) -> list[str]:
        return split_line(line)


def _read_config_as_ssh_does() -> None:
    """Make asyncssh split every line of ssh_config as ssh splits it (:class:`_SSHWords`;
    its ``shlex`` dropped a backslash ssh keeps: ``User DOMAIN\\u`` was ``DOMAINu``), and
    so read three things of ssh_config syntax that ssh reads and asyncssh refused, failing
    every host of the config (ssh_config(5)):

    - a comment at the end of a line (asyncssh took its words for values, and an
      apostrophe in it for an unclosed quote);
    - an ``=`` inside quotes on a Host or Match line (``Match exec "test %h = x"``: asyncssh
      cut the command in two there, "Invalid match condition");
    - a time with units (``ServerAliveInterval 1m``, ``ConnectTimeout 10s``).

    decide whether a ``Host`` line applies as ssh decides (:func:`_host_block`: its words
    are patterns, a comma in one a character, where asyncssh read one comma-separated list);
    refuse, naming its file and line, a User the connection could not send
    (:func:`_checking_user`), and a path ending in a ``%`` that starts no token, as ssh
    refuses it (:func:`_refusing_lone_percent`);
    take a ProxyCommand or a ProxyJump as ssh takes them: the first one of the two
    obtained, the other not at all (:func:`_first_proxy`);
    expand ssh's ``%`` tokens in a ``Match exec`` command, which it ran as written
    (:func:`_expanding_match_exec`), and keep the StrictHostKeyChecking and HashKnownHosts
    options, which it skipped, and PubkeyAcceptedAlgorithms (or PubkeyAcceptedKeyTypes),
    which it skips too, for the pre-flight to check and the connection to apply. (The
    tokens of the other options: :func:`_expand_tokens_once_every_file_is_read`.)

    Where asyncssh's reader is not as expected (another asyncssh), nothing is changed.
    """
    module: Any = getattr(asyncssh, "config", None)
    config_class = _config_class()
    handlers = getattr(config_class, "_handlers", None)
    if not isinstance(handlers, dict) or "words" in _applied(config_class):
        return
    _applied(config_class).add("words")
    if getattr(module, "shlex", None) is shlex:
        module.shlex = _SSHWords
    set_string = getattr(getattr(module, "SSHConfig", None), "_set_string", None)
    set_bool = getattr(getattr(module, "SSHConfig", None), "_set_bool", None)
    if set_bool is not None:
        # asyncssh skips it; a host key recorded under accept-new follows it (_Client).
        handlers.setdefault("hashknownhosts", ("HashKnownHosts", set_bool))
    if set_string is not None:
        # asyncssh skips it; its accept-new is followed (see SSHPool._connect).
        handlers.setdefault("stricthostkeychecking", ("StrictHostKeyChecking", set_string))
        for option in _PUBKEY_ALGORITHMS:
            handlers.setdefault(option.lower(), (option, _first_of_both(set_string)))
    wrapped = (
        *((key, _reading_times) for key in _TIME_OPTIONS),
        *((option.lower(), _noting_where) for option in _WHERE_NOTED),
        *((option.lower(), _refusing_lone_percent) for option in _PATH_OPTIONS),
        ("proxycommand", _first_proxy),
        ("proxyjump", _first_proxy),
        ("user", _checking_user),
    )
    for key, wrapper in wrapped:
        entry = handlers.get(key)
        if entry is not None:
            handlers[key] = (entry[0], wrapper(entry[1]))
    if "host" in handlers:
        handlers["host"] = (handlers["host"][0], _host_block)
    entry = handlers.get("match")
    run = getattr(module, "_exec", None)
    if entry is not None and run is not None:
        handlers["match"] = (entry[0], _expanding_match_exec(entry[1]))
        module._exec = _running_checked(run)


#: The options holding paths whose tokens ssh expands (IdentityFile and the others asyncssh
#: expands, :func:`_expand_tokens_once_every_file_is_read`; UserKnownHostsFile, expanded by
#: the lookup, :func:`_expand_tokens`).
_PATH_OPTIONS = (
    "CertificateFile",
    "ForwardAgent",
    "IdentityAgent",
    "IdentityFile",
    "UserKnownHostsFile",
)


def _refusing_lone_percent(handler: Any) -> Any:
    """asyncssh's setter of a path option (:data:`_PATH_OPTIONS`), refusing a path it takes
    that ends in a ``%`` starting no token, as an error naming the file and line: ssh stops
    on it when it expands the path ("invalid format"), where asyncssh took the ``%`` for a
    letter of the file's name. A value not taken (a later line of an option whose first
    value wins) is not expanded by ssh, and not refused; nor is a UserKnownHostsFile when
    the inventory's known_hosts replaces it (:class:`_InventoryGives`), as ssh goes on with
    ``-o UserKnownHostsFile=...`` given."""

    def read(config: Any, option: str, args: list[str]) -> None:
        if option == "UserKnownHostsFile" and getattr(
            _READING_FILES.get(), "known_hosts_given", False
        ):
            handler(config, option, args)  # kept, never used (_resolve)
            return
        options: dict[str, Any] = config._options
        had = option in options
        before = options.get(option)
        kept = len(before) if isinstance(before, list) else 0
        handler(config, option, args)
        value = options.get(option)
        if had and not isinstance(value, list):
            return
        taken = value[kept:] if isinstance(value, list) else [value]
        for path in taken:
            if isinstance(path, str) and ends_in_lone_percent(path):
                raise _RefusedLine(
                    f"{config._path} line {config._line_no}: {option} {path!r} ends in a "
                    "'%' that starts no token, which ssh refuses too (\"invalid format\")",
                    hint="write %% for a % in the path",
                )

    return read


def _first_proxy(handler: Any) -> Any:
    """asyncssh's setter of ProxyCommand or ProxyJump, taking a value only when ssh takes
    it (readconf.c): the two are one choice, whose first value obtained wins. So a
    ProxyCommand is not taken after a ProxyJump (``ProxyJump none`` excepted, as OpenSSH
    9.2 runs a ProxyCommand after it), a ProxyJump not after a ProxyCommand (``none``
    included), and neither when the inventory gives the ProxyCommand
    (:class:`_InventoryGives`), as ``ssh -o ProxyCommand=...`` gives it before the
    files. asyncssh took both: the connection opened the jump hosts where ssh ran the
    command, %j and %C were of a jump host ssh never used, and a token ssh would never
    expand in a command it would never run was refused.

    A ProxyCommand's value starts where ssh starts it (readconf.c: ``strspn(str,
    WHITESPACE "=")``): after every blank and ``=`` that follows the keyword. asyncssh
    kept them from an ``=`` on (``ProxyCommand=nc %h %p`` ran ``exec =nc ...``, and
    ``ProxyCommand = none`` a program named ``none``)."""

    def read(config: Any, option: str, args: list[str]) -> None:
        options: dict[str, Any] = config._options
        if option == "ProxyCommand" and args:
            args[0] = args[0].lstrip(" \t\r\n=")
        if option == "ProxyCommand":
            other = isinstance(options.get("ProxyJump"), str)
        else:
            other = "ProxyCommand" in options
        if other or getattr(_READING_FILES.get(), "proxy_command_given", False):
            args.pop(0)  # its value, not taken (a ProxyJump's extra words still refused)
            return
        handler(config, option, args)

    return read


def _host_block(config: Any, option: str, args: list[str]) -> None:
    """asyncssh's Host handler, deciding as ssh decides
    (:func:`~remote_sync.ssh.sshconfig.host_block_applies`: each word one pattern, a comma in
    it a character; asyncssh joined the words into one comma-separated list, so ``Host a,b``
    applied to ``b``); an empty pattern is refused, as ssh refuses it."""
    if any(not word for word in args):
        config._error('an empty Host pattern, which ssh refuses too ("empty argument")')
    config._matching = host_block_applies(config._orig_host, args)
    args.clear()


def _checking_user(handler: Any) -> Any:
    """asyncssh's User setter, refusing the user name it takes if the connection could not
    send it, as an error naming the file and line: asyncssh puts user names through SASLprep
    (:func:`~remote_sync.ssh.sshconfig.user_name_problem`), which refuses a tab or another
    control character that ssh sends as it is (``User "a\tb"``),
    and the connection's options stopped on it with neither (a bare SASLPrepError)."""

    def read(config: Any, option: str, args: list[str]) -> None:
        before = config._options.get(option)
        handler(config, option, args)
        user = config._options.get(option)
        problem = user_name_problem(user) if before is None and isinstance(user, str) else None
        if problem is not None:
            raise _RefusedLine(
                f"{config._path} line {config._line_no}: the user name {user!r} cannot be "
                f"sent by the SSH library remote-sync uses ({problem}), though ssh sends it",
                hint="give a User without tabs or control characters",
            )

    return read


#: The options whose file and line are kept, for the warnings that name them.
_WHERE_NOTED = (
    "Ciphers",
    "MACs",
    "KexAlgorithms",
    "HostKeyAlgorithms",
    *_PUBKEY_ALGORITHMS,
    "RemoteCommand",
    "ProxyCommand",
)


def _noting_where(handler: Any) -> Any:
    """asyncssh's setter of an option, keeping the file and line of the value it takes (the
    first one, as in ssh) in the reading's ``_set_at``, and the option in its
    ``_set_by_system`` when the system-wide ssh_config (or a file it Includes) set it."""

    def read(config: Any, option: str, args: list[str]) -> None:
        before = config._options.get(option)
        handler(config, option, args)
        if before is None and config._options.get(option) is not None:
            config.__dict__.setdefault("_set_at", {})[option] = (
                str(config._path),
                config._line_no,
            )
            if _reading_system_file(config):
                config.__dict__.setdefault("_set_by_system", set()).add(option)

    return read


def _expanding_match_exec(match: Any) -> Any:
    """asyncssh's Match handler, with the ``%`` tokens of each ``exec`` command expanded
    first, as ssh expands them (:func:`~remote_sync.ssh.sshconfig.expand_match_exec`), from
    the configuration read so far. A token ssh does not expand there is an error naming the
    file and line, on any Match line: ssh expands the command before it looks at the
    criteria before it, and stops on it. A value of one of the target's tokens (%h %n %k %r
    %p %j) that the shell could read as code is refused (:class:`_RefusedLine`, with
    what to do) only where the command would run: ssh skips the ``exec`` of a line whose
    earlier criteria failed, and so does asyncssh, which then never meets the refusal
    (:class:`_RefusedCommand`, raised by :func:`_running_checked`). A ``host`` or
    ``originalhost`` pattern is lowercased, to be compared ignoring case, as in ssh."""

    def read(config: Any, option: str, args: list[str]) -> None:
        i = 0
        while i < len(args):
            if args[i].startswith("#"):
                del args[i:]  # ssh ends the line at a criterion starting with #
                break
            criterion = args[i].lower().removeprefix("!")
            if criterion in MATCH_ALONE:
                i += 1
                continue
            if criterion == "exec" and i + 1 < len(args):
                args[i + 1] = _expanded_exec(config, args[i + 1])
            elif criterion in _HOST_CRITERIA and i + 1 < len(args):
                # Lowercased as the name it is compared with (_lowercase_host_as_ssh_does).
                args[i + 1] = lowercase_host(args[i + 1])
            i += 2
        match(config, option, args)

    return read


def _expanded_exec(config: Any, command: str) -> str:
    """``command`` of a ``Match exec`` with its tokens expanded from asyncssh's reading
    ``config``, or a :class:`_RefusedCommand` if a target's token value is unsafe."""
    tokens = _exec_tokens(config)
    where = f"{config._path} line {config._line_no}"  # as asyncssh words its errors
    try:
        return expand_match_exec(command, tokens)
    except UnsafeTokenValue as exc:
        try:  # an unknown token later in the command stops the reading, as in ssh
            expand_match_exec(command, dict.fromkeys(tokens, ""))
        except ValueError as unknown:
            raise asyncssh.ConfigParseError(f"{where}: {unknown}") from None
        return _RefusedCommand(command, _RefusedLine(f"{where}: {exc}", exc.hint))
    except ValueError as exc:
        raise asyncssh.ConfigParseError(f"{where}: {exc}") from None


class _RefusedCommand(str):
    """A ``Match exec`` command not to run, a target's token value being unsafe: its text
    as written, and the error to raise if asyncssh comes to run it."""

    def __new__(cls, command: str, error: _RefusedLine) -> _RefusedCommand:
        made = super().__new__(cls, command)
        made.error = error
        return made

    error: _RefusedLine


def _running_checked(run: Any) -> Any:
    """asyncssh's runner of a ``Match exec`` command, raising the refusal of a
    :class:`_RefusedCommand` instead of running it."""

    def run_checked(command: str) -> bool:
        if isinstance(command, _RefusedCommand):
            raise command.error
        return bool(run(command))

    return run_checked


class _RefusedLine(asyncssh.ConfigParseError):
    """asyncssh's error for a line of ssh_config (``PATH line N: REASON``, as it words its
    own), with what to do about it, which :func:`_local_failure` gives as the hint."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _exec_tokens(config: Any) -> dict[str, str]:
    """The ``Match exec`` tokens from asyncssh's reading so far (first value wins, so what
    lines above set is what ssh has too): its HostName has its own %h expanded already."""
    options: dict[str, Any] = config._options
    jumps = options.get("ProxyJump")
    return match_exec_tokens(
        host=str(options.get("Hostname", config._orig_host)),
        original_host=str(config._orig_host),
        port=int(options.get("Port") or 22),
        remote_user=str(options.get("User") or config._local_user),
        local_user=str(config._local_user),
        key_alias=options.get("HostKeyAlias"),
        proxy_jump=jumps if isinstance(jumps, str) else None,
    )


def _first_of_both(set_string: Any) -> Any:
    """asyncssh's string setter for PubkeyAcceptedAlgorithms and its old name: the first
    line of either is kept, as ssh reads both as one option."""

    def read(config: Any, option: str, args: list[str]) -> None:
        if any(config.get(name) is not None for name in _PUBKEY_ALGORITHMS):
            args.pop(0)
            return
        set_string(config, option, args)

    return read


def _reading_times(handler: Any) -> Any:
    def read(config: Any, option: str, args: list[str]) -> None:
        seconds = _ssh_seconds(args[0])
        if seconds is not None:
            args[0] = seconds
        handler(config, option, args)

    return read


_read_config_as_ssh_does()
