"""Host keys, checked against known_hosts as ssh checks them.

Host keys are always checked against known_hosts, under the host name ssh looks up: the
HostName (else the name asked for) lowercased, compared with known_hosts names ignoring case
(:func:`~remote_sync.ssh.configreader._lowercase_host_as_ssh_does`, :func:`_lowercase_patterns`).
The only relaxation is the documented opt-in ``host_key_policy="accept-new"`` (OpenSSH's
``StrictHostKeyChecking accept-new``, which the ssh_config may say too): an unknown host's
key is recorded on first contact (its host name hashed when the ssh_config says
``HashKnownHosts yes``, as ssh writes it: :func:`hashed_host_name`); a *changed* key is
refused exactly as in strict mode. The ssh_config's ``StrictHostKeyChecking no`` is not
followed.

What it owns:

- Where one connection's keys are looked up and recorded (:class:`HostKeyFiles`): the
  UserKnownHostsFile and GlobalKnownHostsFile files, both always consulted, and the
  HostKeyAlias; a line that cannot be read skipped, as ssh skips it.
- Each known_hosts file parsed once per version of it (:func:`_read_known_hosts`, by
  :func:`~remote_sync.ssh.filecache.file_version`), read again once written.
- The connection's asyncssh client (:class:`HostKeyClient`): what it decided about the host's key,
  for a refusal to say "unknown" or "changed" and where, a first key recorded under
  accept-new; it also ends the connection's ProxyCommand when the connection ends.
- What to do about a refused key (:func:`host_key_hint`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import shlex
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import asyncssh
from msgspec import Struct

from .endpoint import HostKeyPolicy
from .filecache import file_version, keep_bounded
from .proxy import ProxyProcess
from .sshconfig import lowercase_host

log = logging.getLogger(__name__)

#: Where ssh looks up host keys when the ssh_config names no files (ssh_config(5)).
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


class HostKeyFiles(Struct, frozen=True):
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
#: (:func:`~remote_sync.ssh.filecache.file_version`): every connection of a run reads the same
#: files, and parsing a file of 2,000 keys cost about 30 ms of CPU per connection. A file written
#: since (a key recorded under accept-new, an edit) has another version, and is read again.
_KNOWN_HOSTS_READ: dict[tuple[tuple[object, ...], ...], asyncssh.SSHKnownHosts] = {}
_KNOWN_HOSTS_LOCK = threading.Lock()  # connections look keys up in worker threads
#: How many sets of files are kept (a run has one or two: the targets' and the jump hosts').
_KNOWN_HOSTS_KEPT = 16


def _read_known_hosts(paths: Sequence[str]) -> asyncssh.SSHKnownHosts:
    """The known_hosts entries of ``paths``, skipping what cannot be read (a line asyncssh
    cannot parse, bytes that are not UTF-8, a file that went away), as ssh skips it. Parsed
    once per version of the files (:data:`_KNOWN_HOSTS_READ`), but while one was changed
    just now; asyncssh only matches against the result, never changing it, so connections
    share it."""
    now_ns = time.time_ns()  # before the stat: a change after it is newer
    found = [file_version(path, now_ns) for path in paths]
    if any(version is None for version in found):
        return _parse_known_hosts(paths)  # one just changed, or went: read, not kept
    versions = tuple(version for version in found if version is not None)
    with _KNOWN_HOSTS_LOCK:
        known = _KNOWN_HOSTS_READ.get(versions)
    if known is None:
        known = _parse_known_hosts(paths)  # read after the stat: never older than versions
        with _KNOWN_HOSTS_LOCK:
            keep_bounded(_KNOWN_HOSTS_READ, versions, known, _KNOWN_HOSTS_KEPT)
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


class HostKeyClient(asyncssh.SSHClient):
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
        self.proxy: ProxyProcess | None = None
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


def host_key_hint(client: HostKeyClient) -> str | None:
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
