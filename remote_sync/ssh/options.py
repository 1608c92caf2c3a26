"""What a connection reads from its local files before any traffic, each checked first.

What it owns:

- The preparation of a connection (:func:`prepare`), which the pool's pre-flight and a
  connection with none to reuse both call: what it would stop on in its local files (a
  file named or Include'd that is missing or unreadable, an ssh_config that does not parse
  or whose algorithm list leaves asyncssh nothing, a UserKnownHostsFile that cannot be
  read, a key that does not load), found before any traffic, as asyncssh would stop on it
  and as ssh stops on it, and said as this host's configuration error
  (:func:`local_failure`); asyncssh's options for the files named
  (:func:`_local_file_options`), the ssh_config's lookup
  (:func:`~remote_sync.ssh.lookup.cached_lookup`) and its keys added as ssh adds them
  (:func:`_add_config_keys`; a key others may read refused, as ssh refuses it), and the
  inventory's ProxyCommand with its tokens expanded (:func:`expand_proxy_tokens`).
- What it finds that fails nothing but is not followed (:class:`ConfigWarning`: algorithm
  names asyncssh does not support, left out of a list; a RemoteCommand, never run), for
  the caller to show.
- The algorithm lists the connection offers: AES-GCM first (:data:`PREFERRED_CIPHERS`),
  the ssh_config's lists as asyncssh follows them (:func:`_usable_algorithms`), and its
  PubkeyAcceptedAlgorithms as asyncssh's ``signature_algs``
  (:func:`accepted_signature_algs`).
- What an authentication failure says was offered (:func:`offered_credentials`,
  :func:`locked_keys`).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from msgspec import Struct

from ..errors import ConfigError
from .configreader import PUBKEY_ALGORITHMS
from .endpoint import Endpoint
from .filecache import files_version, keep_bounded
from .hostkeys import HostKeyFiles
from .lookup import Resolved, cached_lookup, config_names, walk_config_files
from .proxy import is_none_command, refused_proxy_command
from .sshconfig import expand_proxy_command, nested_includes_error, unreadable_include_error

log = logging.getLogger(__name__)

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


class Prepared(Struct, frozen=True):
    """What a connection to an endpoint reads before any traffic: asyncssh's options for the
    local files named (:func:`_local_file_options`, with the ssh_config's keys added) and the
    ssh_config's lookup."""

    options: dict[str, Any]
    resolved: Resolved
    #: What the ssh_config asks for that the connection leaves out (:class:`ConfigWarning`).
    warnings: tuple[ConfigWarning, ...] = ()


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


def _adding_config_keys(named: list[str], resolved: Resolved) -> list[str]:
    """The keys named in the inventory (or by -i) first, then the ssh_config's IdentityFile
    ones that exist: ssh -i adds to those, where asyncssh would replace them."""
    return named + [
        path for path in resolved.identities if path not in named and os.path.exists(path)
    ]


# The private keys ssh (and asyncssh) try when none is named.
DEFAULT_IDENTITIES = tuple(
    f"~/.ssh/id_{kind}" for kind in ("rsa", "ecdsa", "ecdsa_sk", "ed25519", "ed25519_sk", "dsa")
)


def locked_keys(paths: Sequence[str]) -> list[str]:
    """The private keys among ``paths`` that cannot be read without a passphrase (so were
    skipped): said when authentication fails, since an agent that should hold them did not."""
    locked = []
    for path in paths:
        path = os.path.expanduser(path)
        try:
            asyncssh.read_private_key(path)
        except asyncssh.KeyImportError as exc:
            if "assphrase" in str(exc):
                locked.append(path)
        except (OSError, ValueError):
            pass
    return locked


def offered_credentials(options: dict[str, Any], resolved: Resolved, locked: Sequence[str]) -> str:
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
        offered.append(f"the keys of the ssh-agent at {os.path.expanduser(str(agent))}")
    else:
        variable = (resolved.agent or "SSH_AUTH_SOCK").removeprefix("$")
        why = "IdentityAgent none" if agent is None else f"{variable} is not set"
        lacking.append(f"no ssh-agent ({why})")
    named = [os.path.expanduser(str(path)) for path in options.get("client_keys") or ()]
    files = [
        path
        for path in named or [os.path.expanduser(path) for path in DEFAULT_IDENTITIES]
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
        hint=f"chmod 600 {shlex.quote(path)}",
    )


def _add_config_keys(options: dict[str, Any], resolved: Resolved, host: str) -> None:
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


def _algorithm_lists() -> tuple[tuple[str, str, list[bytes], list[bytes]], ...]:
    """The ssh_config's algorithm lists asyncssh follows (PubkeyAcceptedAlgorithms, which it
    reads only through :func:`~remote_sync.ssh.configreader._read_config_as_ssh_does`, applied by
    :func:`accepted_signature_algs`): each option, what it
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
        *((option, "public key", signatures, default_signatures) for option in PUBKEY_ALGORITHMS),
    )


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


def _refuse_unusable_algorithms(resolved: Resolved, endpoint: Endpoint, host: str) -> None:
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
            path=config_names(endpoint),
            hint=f"fix the {option} line of the ssh_config; asyncssh supports: {names}",
        )


def _unsupported_algorithms(
    resolved: Resolved, endpoint: Endpoint, host: str
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
    """The file that set ``option`` (one of :data:`~remote_sync.ssh.configreader._WHERE_NOTED`) and
    how a warning begins with it: ``ssh_config line N: ``; without its line, the endpoint's files
    and ``ssh_config: ``."""
    set_at: dict[str, tuple[str, int]] = getattr(parsed.config, "_set_at", {})
    file, line = set_at.get(option, (config_names(endpoint), 0))
    return file, f"ssh_config line {line}: " if line else "ssh_config: "


def ignored_remote_command(
    resolved: Resolved, endpoint: Endpoint, host: str
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


def accepted_signature_algs(resolved: Resolved) -> list[str]:
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
    value = None if parsed is None else parsed.config.get(PUBKEY_ALGORITHMS[0])
    if value is None and parsed is not None:
        value = parsed.config.get(PUBKEY_ALGORITHMS[1])
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


def _ciphers_need_a_mac(resolved: Resolved) -> bool:
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
READING_ERRORS = (asyncssh.Error, OSError, ValueError, RecursionError)


def prepare(endpoint: Endpoint, host: str) -> Prepared:
    """What a connection to ``endpoint`` needs from its local files, each checked before any
    traffic as asyncssh would stop on it, and as ssh stops on it: the ssh_config parsed
    (Include, Match and tokens, as the connection would parse it), its algorithm lists
    (:func:`_refuse_unusable_algorithms`), its UserKnownHostsFile files, the private keys
    named loaded. A configuration error is raised as the connection reports it
    (:func:`local_failure`); anything else as asyncssh raised it. Both the pre-flight (a
    sync's, a remote listing's or show's) and a connection with none to reuse (a reconnect,
    a jump host's next use) call it, each in a worker thread: it blocks (files, a ``Match
    exec``'s command)."""
    options = _local_file_options(endpoint, host)
    version = walk_config_files(endpoint, host)
    try:
        try:
            resolved = cached_lookup(endpoint, options.get("config"), host, version)
        except OSError as exc:
            included = _unreadable_include(exc, endpoint, host, options)
            if included is None:
                raise
            raise included from exc
        _refuse_unreadable_user_known_hosts(resolved.keys, endpoint, host)
        _refuse_unusable_algorithms(resolved, endpoint, host)
        _add_config_keys(options, resolved, host)
        if endpoint.proxy_command and not is_none_command(endpoint.proxy_command):
            options["proxy_command"] = expand_proxy_tokens(endpoint, resolved, host)
        prepared = Prepared(options, resolved, _unsupported_algorithms(resolved, endpoint, host))
        # The keys asyncssh loads: the ones named, the ssh_config's that exist among them;
        # with none it tries the default ones, which nobody asked for (and skips those it
        # cannot read). RSA keys are not validated here: that costs some 100 ms a key (per
        # host), and the connection validates them anyway.
        keys = options.get("client_keys")
        if keys:
            _load_keys(list(keys), options.get("client_certs", []), resolved.identities_only)
    except READING_ERRORS as exc:
        error = local_failure(exc, endpoint, host, options)
        if error is None:
            raise
        raise error from exc
    return prepared


def _load_keys(keys: list[str], certs: list[str], identities_only: bool) -> None:
    """Load private keys as the connection loads them, without RSA's validation; not again
    while every file the load reads is as it was after one that went well
    (:data:`_KEYS_LOADED`)."""
    # Besides each key, asyncssh reads its "<key>.pub" and "<key>-cert.pub" when there.
    read = [*certs, *(f"{key}{suffix}" for key in keys for suffix in ("", ".pub", "-cert.pub"))]
    inputs = (tuple(keys), tuple(certs), identities_only, os.getcwd())
    version = files_version(read, time.time_ns())  # before the load: a change after is newer
    with _KEYS_LOCK:
        if version is not None and _KEYS_LOADED.get(inputs) == version:
            return
    asyncssh.load_keypairs(
        keys,
        None,
        certs,
        identities_only,
        True,  # ignore_encrypted, as the connection asks (the agent may hold them)
        unsafe_skip_rsa_key_validation=True,
    )
    if version is not None:
        with _KEYS_LOCK:
            keep_bounded(_KEYS_LOADED, inputs, version, _KEYS_KEPT)


#: Key loads that went well (:func:`_load_keys`), by the keys, certificates and
#: IdentitiesOnly asked for and the working directory (a relative path is read from it):
#: the version of every file they read. The pre-flight of every host of every sync loads
#: its keys: 0.1 ms a host for one Ed25519 key, against some 10 us for the stats. A load
#: that failed is not kept: it is made again, and fails again, saying why.
_KEYS_LOADED: dict[tuple[object, ...], tuple[object, ...]] = {}
_KEYS_LOCK = threading.Lock()  # pre-flights run in worker threads
_KEYS_KEPT = 1024


def _unreadable_include(
    exc: OSError, endpoint: Endpoint, host: str, options: dict[str, Any]
) -> ConfigError | None:
    """``exc``, raised while the ssh_config was read, as this host's :class:`ConfigError` when
    the file it names is one an ``Include`` line reads, as ssh refuses it too ("Can't open
    user config file"); None for a file named in the inventory (:func:`local_failure` says
    it) or no file at all. asyncssh skips what an Include matches that is not a regular file
    (ssh finds nothing in a directory), so only a file that cannot be opened gets here."""
    if exc.filename is None or str(exc.filename) in _local_files(options):
        return None
    return unreadable_include_error(
        str(exc.filename), exc.strerror or str(exc), host, config_names(endpoint)
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
    known_hosts = None if endpoint.known_hosts is None else os.path.expanduser(endpoint.known_hosts)
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
        expanded = [os.path.expanduser(path) for path in paths]
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


def expand_proxy_tokens(endpoint: Endpoint, resolved: Resolved, host: str) -> str:
    """The inventory's proxy_command with the tokens ssh expands in a ProxyCommand
    (:func:`~remote_sync.ssh.sshconfig.expand_proxy_command`: %h %k %n %p %r %%), from the
    HostName, HostKeyAlias, Port and User the ssh_config gives the endpoint (``resolved``),
    as ``ssh -o ProxyCommand=...`` expands them; any other token is this host's
    :class:`ConfigError`, as ssh stops on it, and so is a value the shell could read as
    code (a user name ``a$(id)`` in %r; ssh 9.6 refuses such a user name from its command
    line): found by the pre-flight, before the destination is touched and before anything
    runs. (asyncssh expands an ssh_config's ProxyCommand, see
    :func:`~remote_sync.ssh.configreader._expand_tokens_once_every_file_is_read`; the inventory's
    comes to it as is.)"""
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
        message, hint = refused_proxy_command(exc, named)
        raise ConfigError(message, host=host, hint=hint) from None


def configured_proxy_command(resolved: Resolved) -> str | None:
    """The ssh_config's ProxyCommand for the endpoint, its tokens expanded as asyncssh read
    it, unsplit (asyncssh splits it into words; the shell reads it, as ssh's does); None
    for ``none`` (asyncssh's reader takes it for no value, in any case, as ssh does) and
    for no ProxyCommand. The ``=`` ssh skips before the value is gone already
    (:func:`~remote_sync.ssh.configreader._first_proxy`)."""
    if resolved.parsed is None:
        return None
    command = resolved.parsed.config.get("ProxyCommand")
    return command if isinstance(command, str) and command else None


#: asyncssh's message for a line of an ssh_config it cannot parse.
_CONFIG_LINE = re.compile(r"(?P<path>.+) line (?P<line>\d+): (?P<reason>.+)", re.DOTALL)


def local_failure(
    exc: BaseException, endpoint: Endpoint, host: str, options: dict[str, Any]
) -> ConfigError | None:
    """``exc``, raised by asyncssh as it read the local files of ``options`` (a connection's
    to ``endpoint``), as this host's configuration error; None when it is not one. Both the
    connection and the check before it (:func:`prepare`) say it this way."""
    configs = config_names(endpoint)
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
        except READING_ERRORS:
            failing.append(key)
    return failing


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
