"""The SSH connection pool: one asyncssh connection per endpoint, shared by every operation.

What it owns:

- :class:`PoolSettings`, the pool's tuning, each field checked as it is made.
- The pre-flight of a connection (:meth:`SSHPool.preflight`): what it would stop on in its
  local files (:func:`~remote_sync.ssh.options.prepare`), for the endpoint and every
  ProxyJump host on its way (:func:`~remote_sync.ssh.jumps.prepare_jumps`), found before
  any traffic, so a run whose every host would stop there touches nothing; its parse of the
  ssh_config is the one the connection is built on, kept for the endpoint's first
  connection. What it finds that fails nothing but is not followed is kept for the caller
  to show (:meth:`SSHPool.config_warnings`).
- Lazy connection set-up under a global cap on concurrent handshakes (key exchange is CPU work
  on our single event loop, and sshd drops bursts above ``MaxStartups``).
- A per-endpoint cap on concurrent channels, below sshd's ``MaxSessions`` (10): asking for more
  waits for a free slot, it never fails.
- Transport tuning: AES-GCM preferred, compression off unless asked for (per endpoint),
  channel windows sized to the link (the window, not the cipher, bounds throughput on a
  high-RTT link; on a short one it is only memory), keepalives, connect timeout, idle close.
- Reconnecting once, with backoff, when a connection dropped between operations.
- Making a connection: its ProxyJump hosts connected here, each through the one before,
  with the same host-key rules (asyncssh would connect them from the ssh_config alone), or
  its ProxyCommand started as a task of the pool's task group
  (:class:`~remote_sync.ssh.proxy.ProxyProcess`); its failures said as
  :mod:`remote_sync.errors` (:func:`~remote_sync.ssh.failures.classify`), and a loss once
  made quoting its ProxyCommand (:meth:`SSHPool.lost`).

The parts it is built from: :mod:`~remote_sync.ssh.endpoint` (how to reach a machine),
:mod:`~remote_sync.ssh.hostkeys` (host keys and known_hosts), :mod:`~remote_sync.ssh.lookup`
(the ssh_config's lookup, kept), :mod:`~remote_sync.ssh.options` (the local files checked
before any traffic), :mod:`~remote_sync.ssh.configreader` (asyncssh's reader patched to
read as ssh reads), :mod:`~remote_sync.ssh.proxy` (ProxyCommand),
:mod:`~remote_sync.ssh.jumps` (ProxyJump) and :mod:`~remote_sync.ssh.failures` (errors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any

import anyio
import asyncssh

from ..cancel import CancelToken
from ..errors import (
    ConfigError,
    HostUnreachableError,
    RemoteSyncError,
    SSHError,
)
from .endpoint import Endpoint
from .failures import (
    authentication_failure,
    classify,
    connection_route,
    host_key_failure,
    noting_jump,
    unresolved_host_name,
)
from .hostkeys import HostKeyClient
from .jumps import jump_endpoints, prepare_jumps, refuse_deep_jumps, through_jump
from .lookup import TUNING, Resolved, reusing_lookup
from .options import (
    PREFERRED_CIPHERS,
    READING_ERRORS,
    ConfigWarning,
    Prepared,
    accepted_signature_algs,
    configured_proxy_command,
    ignored_remote_command,
    local_failure,
    prepare,
)
from .proxy import Carrier, ProxyProcess
from .remote import in_range

log = logging.getLogger(__name__)


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


#: The jump hosts the pre-flights of one pass have read (:meth:`SSHPool.preflight`).
JumpsRead = dict[Endpoint, Prepared]


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
        #: every field of :class:`~remote_sync.ssh.lookup.Resolved`: HostName, Port and User, and
        #: as well the identities, host key checking, known_hosts files and HostKeyAlias, ProxyJump,
        #: IdentityAgent and which tuning options are set; not asyncssh's reading itself
        #: (``parsed``), so a changed ProxyCommand or cipher list alone does not count.
        self.made_with: Resolved | None = None
        self.stale = False


class SSHPool:
    """Pooled asyncssh connections. Use as ``async with SSHPool() as pool``."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        self._slots: dict[Endpoint, _HostSlot] = {}
        self._handshakes = anyio.Semaphore(self.settings.max_handshakes)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._prepared: dict[Endpoint, Prepared] = {}
        self._warnings: dict[Endpoint, tuple[ConfigWarning, ...]] = {}
        #: The ProxyCommand each connection made on one runs on, for :meth:`lost`: its own,
        #: or that of the jump hosts it was made through.
        self._proxies: weakref.WeakKeyDictionary[asyncssh.SSHClientConnection, Carrier] = (
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
        ProxyJump host the connection goes through (:func:`~remote_sync.ssh.jumps.prepare_jumps`).
        Nothing goes on the network (beyond what a ``Match exec`` command of the ssh_config does).

        What it reads (the ssh_config parsed, for the endpoint and its jump hosts) is kept
        for their first connection, which would read it again. ``jumps_read``: the jump hosts
        read by the other pre-flights of one pass (a round's hosts behind one bastion), which
        are not read again; none is taken from an earlier pass, so that a pool that lives on
        (the agent's) sees a bastion's HostName, Port or keys edited since. Blocking file
        work: call it in a worker thread.
        """
        try:
            prepared = prepare(endpoint, host)
            known = {} if jumps_read is None else jumps_read
            jumps = prepare_jumps(endpoint, prepared.resolved, host, known)
        except ConfigError as exc:
            return exc
        except READING_ERRORS:
            return None  # not a configuration error: the connection meets it and reports it
        self._prepared.update(jumps)
        if jumps_read is not None:
            jumps_read.update(jumps)
        self._prepared[endpoint] = prepared
        slot = self._slots.get(endpoint)
        if slot is not None and slot.made_with not in (None, prepared.resolved):
            slot.stale = True  # taken by the next operation, on the event loop
        ignored = ignored_remote_command(prepared.resolved, endpoint, host)
        seen = dict.fromkeys((*prepared.warnings, *ignored))
        for hop in jumps.values():  # a jump host's are this host's too (a shared one's, once)
            seen.update(dict.fromkeys(hop.warnings))
        self._warnings[endpoint] = tuple(seen)
        return None

    def config_warnings(self, endpoint: Endpoint) -> tuple[ConfigWarning, ...]:
        """What :meth:`preflight` found in ``endpoint``'s ssh_config (its jump hosts'
        included) that the connection will not follow, though it fails nothing
        (:class:`~remote_sync.ssh.options.ConfigWarning`): algorithm names asyncssh does not
        support, left out; a RemoteCommand, not run."""
        return self._warnings.get(endpoint, ())

    async def __aenter__(self) -> SSHPool:
        # Always: the ProxyCommands of the connections run in it (ProxyProcess.run).
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
        and quoted, as a failed connect quotes it
        (:meth:`~remote_sync.ssh.proxy.ProxyProcess.quote`): the jump host's ``ssh -W`` says why
        ("Connection closed by remote host", "Broken pipe"), asyncssh only "Connection lost"."""
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
            # RemoteCommand (said: ignored_remote_command), and with nothing forwarded to
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
                    prepare, endpoint, host, abandon_on_cancel=True
                )
            except READING_ERRORS as exc:  # not a configuration error (those are ours)
                raise classify(exc, host, connecting=True) from exc
        options.update(prepared.options)
        reusing_lookup(options, prepared.resolved, endpoint)
        slot = None if depth else self._slots.get(endpoint)
        if slot is not None:
            slot.made_with = prepared.resolved
        accepted = accepted_signature_algs(prepared.resolved)
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
                del options[TUNING[option]]
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
        client = HostKeyClient(
            resolved.keys, policy, settings.record_new_host_keys, resolved.hash_names
        )
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
            # The inventory's proxy_command, expanded by the pre-flight (prepare); none for
            # "none", which connects directly, no ProxyJump taken either, as in ssh.
            command = options.get("proxy_command")
        elif tunnel is None and resolved.jumps is not None:
            # Jump hosts are connected here, not by asyncssh: it would connect them from the
            # ssh_config alone, with "UserKnownHostsFile none" meaning no check at all.
            opened = tunnel = await self._open_jumps(resolved.jumps, endpoint, host, depth)
        elif tunnel is None:
            command = configured_proxy_command(resolved)
        # None: no jump host, and asyncssh must not open one of its own choosing.
        options["tunnel"] = tunnel
        # A ProxyCommand is run here (ProxyProcess), never by asyncssh: it fed the command's
        # stderr into the SSH stream.
        options["proxy_command"] = None
        proxy = None
        try:
            if command is not None:
                proxy = client.proxy = ProxyProcess(command, host)
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
            self._proxies[conn] = Carrier(proxy)
        elif carried is not None:
            # Through jump hosts the first of which runs on a ProxyCommand: its end ends
            # this connection too, and what it said is why. Named by the jump hosts this
            # connection asked for (a hop's own are those of the hop before it).
            jumps = resolved.jumps if opened is not None else carried.jumps
            self._proxies[conn] = Carrier(carried.proxy, jumps)
        return conn

    async def _open_jumps(
        self, jumps: str, endpoint: Endpoint, host: str, depth: int
    ) -> asyncssh.SSHClientConnection:
        """Connect the ProxyJump hosts ``jumps`` (``[user@]host[:port]``, comma-separated, split
        as asyncssh splits them), each through the one before; the first one through its own
        ProxyJump, if its ssh_config gives it one. Host keys are checked strictly."""
        refuse_deep_jumps(depth, host)
        conn: asyncssh.SSHClientConnection | None = None
        try:
            for jump, hop in jump_endpoints(jumps, endpoint, host):
                try:
                    conn = await self._connect(hop, host, conn, depth + 1)
                except RemoteSyncError as exc:
                    named = through_jump(exc, jump, host)
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
        client: HostKeyClient,
        resolved: Resolved,
        through: str | None,
        proxy: ProxyProcess | None,
    ) -> asyncssh.SSHClientConnection:
        """asyncssh's connect, its failures mapped to our errors, naming ``host`` (and the
        ProxyJump hosts it went ``through``, when it opened them, or the ``proxy`` command
        it was made on, with what that command said last on its stderr)."""
        # How a refusal and a failure name the way the connection went (a few string
        # operations, made before the connect so both branches below share them).
        route = connection_route(proxy.command if proxy is not None else None, resolved)
        try:
            return await asyncssh.connect(endpoint.address, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise host_key_failure(host, client, resolved) from exc
        except asyncssh.PermissionDenied as exc:
            raise authentication_failure(exc, host, options, resolved, route) from exc
        except socket.gaierror as exc:
            raise unresolved_host_name(exc, host, resolved) from exc
        except READING_ERRORS as exc:
            error = local_failure(exc, endpoint, host, options)
            if error is not None:
                raise error from exc
            failed = noting_jump(exc, host, through, route)
            if proxy is not None:
                await proxy.quote(failed)
            raise failed from exc

    def _start(self, proxy: ProxyProcess, resolved: Resolved) -> socket.socket:
        """Start ``proxy``, owned from then by a task of the pool's task group; the socket
        the connection is made on."""
        if self._task_group is None:
            raise RuntimeError("a ProxyCommand runs in the pool's task group: async with SSHPool()")
        try:
            sock = proxy.spawn()
        except OSError as exc:  # the shell itself could not be run
            raise HostUnreachableError(
                f"cannot connect {connection_route(proxy.command, resolved)}: cannot run the shell "
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


__all__ = [
    "HostStats",
    "JumpsRead",
    "PoolSettings",
    "SSHPool",
]

# Silence asyncssh's per-channel info logging unless the user asks for debug output.
logging.getLogger("asyncssh").setLevel(logging.WARNING)
