"""An endpoint looked up in its ssh_config, and the lookup kept while the files are as they were.

What it owns:

- The lookup (:func:`_resolve`): asyncssh's reading of the ssh_config for an endpoint
  (``Match final`` blocks included, as ssh reads them), and what of it the connection
  applies itself (:class:`Resolved`): HostName, Port and User, the known_hosts files
  (UserKnownHostsFile with ssh's tokens expanded, :func:`_expand_tokens`), identities and
  certificates, StrictHostKeyChecking, HashKnownHosts, ProxyJump, IdentityAgent and which
  of the pool's tuning options it sets (:data:`TUNING`).
- ssh's own walk of the files before it uses them
  (:func:`~remote_sync.ssh.sshconfig.check_config_files`), skipped while every file it
  found clean is as it was (:func:`walk_config_files`); the lookup kept per version of
  every file the walk read and of each Include pattern's matches, per endpoint and
  environment (:func:`cached_lookup`), never with a ``Match exec`` or ``Match localnetwork``
  line.
- The connection built on the lookup's parse instead of a second one
  (:func:`reusing_lookup`).
- How errors name an endpoint's ssh_config files (:func:`config_names`).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ..errors import ConfigError
from . import sshconfig
from .configreader import config_files
from .endpoint import Endpoint
from .filecache import files_version, keep_bounded
from .hostkeys import DEFAULT_GLOBAL_KNOWN_HOSTS, DEFAULT_USER_KNOWN_HOSTS, HostKeyFiles
from .sshconfig import (
    FilesRead,
    check_config_files,
    default_files,
    include_paths,
    match_exec_tokens,
)


@dataclass(frozen=True)
class Resolved:
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
    tuned: frozenset[str] = frozenset()  # the options of TUNING it sets
    agent: str | None = None  # its IdentityAgent
    hash_names: bool = False  # its HashKnownHosts: a recorded key's host name is hashed
    #: asyncssh's reading of the ssh_config for this endpoint, which the connection is built
    #: on (:func:`reusing_lookup`) instead of parsing the files again.
    parsed: asyncssh.SSHClientConnectionOptions | None = field(default=None, compare=False)


def _resolve(endpoint: Endpoint, config: Sequence[str] | None, host_name: str) -> Resolved:
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
        config=config_files(endpoint, default_files() if config is None else list(config)),
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
        option for option in TUNING if found.config.get(option) not in (None, False, 0)
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
        (os.path.expanduser(endpoint.known_hosts),)
        if endpoint.known_hosts is not None
        else tuple(
            _expand_tokens(path, tokens, host_name)
            for path in files(user_files, DEFAULT_USER_KNOWN_HOSTS)
        )
    )
    # ssh expands no token nor ${VAR} there, only ~: a "%" is a letter of the file's name.
    system_known = tuple(
        os.path.expanduser(path) for path in files(system_files, DEFAULT_GLOBAL_KNOWN_HOSTS)
    )
    keys = HostKeyFiles(user_known, system_known, alias)
    return Resolved(
        host,
        port,
        user,
        keys,
        jumps,
        tuple(os.path.expanduser(path) for path in identities),
        tuple(os.path.expanduser(path) for path in certificates),
        identities_only,
        checking,
        tuned,
        agent,
        found.config.get("HashKnownHosts") is True,
        found,
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

    return os.path.expanduser(_TOKEN.sub(value, path))


#: The ssh_config options that replace the pool's own tuning, with asyncssh's names.
TUNING = {
    "Ciphers": "encryption_algs",
    "Compression": "compression_algs",
    "ConnectTimeout": "connect_timeout",
    "ServerAliveInterval": "keepalive_interval",
    "ServerAliveCountMax": "keepalive_count_max",
}


def walk_config_files(endpoint: Endpoint, host: str) -> tuple[object, ...] | None:
    """ssh's own checks of ``endpoint``'s ssh_config files before it uses any
    (:func:`~remote_sync.ssh.sshconfig.check_config_files`: keywords it does not know,
    files others may change, Includes it cannot open, in blocks that do not apply too),
    skipped while every file a walk found clean is as it was then (:data:`_WALKED`). The
    version of the files (:func:`_config_version`), for the lookup's cache; None when a
    reading of them is not to be kept (a file changed just now, a ``Match exec``)."""
    configs = [sshconfig.USER_CONFIG] if endpoint.ssh_config is None else endpoint.ssh_config
    system = sshconfig.SYSTEM_CONFIG if endpoint.ssh_config is None else None
    paths = tuple(os.path.expanduser(path) for path in configs)
    # The user's file is told apart by its path (checked for others' write access), and
    # the system-wide file's relative Includes are under its directory.
    where = (paths, system, sshconfig.SYSTEM_CONFIG, os.path.expanduser(sshconfig.USER_CONFIG))
    with _LOOKUPS_LOCK:
        kept = _WALKED.get(where)
    if kept is not None and _config_version(kept[0]) == kept[1]:
        return None if kept[0].volatile else kept[1]
    read = check_config_files(list(paths), host, config_names(endpoint), system)
    # Taken after the walk: a file changed while it was read is one changed just now.
    version = _config_version(read)
    if version is not None:
        with _LOOKUPS_LOCK:
            keep_bounded(_WALKED, where, (read, version), _LOOKUPS_KEPT)
    return None if read.volatile else version


def _config_version(read: FilesRead) -> tuple[object, ...] | None:
    """The version of the ssh_config files a walk ``read``: each file's
    (:func:`~remote_sync.ssh.filecache.file_version`; a missing one's is its absence, as one that
    appears is read), and every Include pattern's matches as they were. None when one changed within
    :data:`~remote_sync.ssh.filecache._RECENT_NS` or cannot be looked at, or a pattern matches other
    files now."""
    versions = files_version(read.files, time.time_ns())
    if versions is None:
        return None
    for pattern, matched in read.includes:
        if tuple(include_paths(pattern)) != matched:
            return None
    return versions


def cached_lookup(
    endpoint: Endpoint, config: Sequence[str] | None, host: str, version: tuple[object, ...] | None
) -> Resolved:
    """:func:`_resolve`, kept for the same ``endpoint`` while its files keep their
    ``version`` (:func:`walk_config_files`; None: not kept) and nothing else a reading goes
    by changed: the environment ($HOME, $USER, the variables a value names), this machine's
    name and user id (%L %l %C %u %i). Every round of a sync looks every host up again: a
    reading of a 20-host file cost about 1 ms a host; a lookup that failed is made again."""
    if version is None:
        return _resolve(endpoint, config, host)
    inputs = (
        endpoint,
        None if config is None else tuple(config),
        version,
        _environment_digest(),
        socket.gethostname(),
        os.getuid(),
    )
    with _LOOKUPS_LOCK:
        resolved = _LOOKUPS.get(inputs)
    if resolved is None:
        resolved = _resolve(endpoint, config, host)
        with _LOOKUPS_LOCK:
            keep_bounded(_LOOKUPS, inputs, resolved, _LOOKUPS_KEPT)
    return resolved


def _environment_digest() -> bytes:
    """A digest of the whole environment, which a lookup's key holds: any variable may be
    named by a value (``${VAR}``), and asyncssh reads some itself ($HOME, $USER,
    $SSH_AUTH_SOCK). A copy of the environment in each key was about 6 KB a host; this is 16
    bytes. ``NAME=value`` entries, sorted, parted by NUL, which neither can hold (a name
    cannot hold ``=``): two environments never give the same bytes, and their digests the
    same only by a chance of 1 in 2**128."""
    entries = sorted(f"{name}={value}" for name, value in os.environ.items())
    # surrogatepass: a byte that is not UTF-8 is read into os.environ as a lone surrogate.
    text = "\0".join(entries).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


#: ssh_config walks that found the files clean (:func:`walk_config_files`), by the files
#: given: what the walk read and its version; and lookups of endpoints (:func:`cached_lookup`),
#: by what they went by. asyncssh only copies a lookup's options, never changing them, so
#: connections share one, as a jump host's connections share theirs already.
_WALKED: dict[tuple[object, ...], tuple[FilesRead, tuple[object, ...]]] = {}
_LOOKUPS: dict[tuple[object, ...], Resolved] = {}
_LOOKUPS_LOCK = threading.Lock()  # lookups run in worker threads
#: How many of each are kept (the oldest dropped): a run has one lookup a host and jump host.
_LOOKUPS_KEPT = 1024


def reusing_lookup(options: dict[str, Any], resolved: Resolved, endpoint: Endpoint) -> None:
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
        options["config"] = config_files(endpoint, default_files() if files is None else files)
        return
    options.update(options=parsed, config=None, reload=False, final=False)
    options.setdefault("client_keys", ())


def config_names(endpoint: Endpoint) -> str:
    """The ssh_config files ``endpoint`` reads, as errors name them."""
    if endpoint.ssh_config is None:
        return f"{sshconfig.USER_CONFIG}, {sshconfig.SYSTEM_CONFIG}"
    return ", ".join(endpoint.ssh_config) or "(none)"
