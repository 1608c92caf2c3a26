"""The sync agent: a long-lived process that keeps each host's SSH connection open between
syncs and serves syncs over a control socket, as OpenSSH's ControlMaster + ControlPersist
keep a master connection for later ``ssh`` runs.

What it owns: :class:`Agent`, built on the engine (``mirror.fleet.sync_fleet``) with pools
it keeps open (one per compression setting, each connection closed after ``persist``
seconds unused, 0 never), the control socket (``DIR/.remote-sync/agent.sock``, protocol in
:mod:`remote_sync.agent_link`), the agent's lock (``agent.lock``, flock'd while it runs: a
second agent is refused, a socket left by one that died is removed), and the rounds it runs
every ``every`` seconds on its own.

A sync served here is the sync a run of its own would be: it takes the mirror's lock for
itself (so ``sync --no-agent``, ``versions prune`` and the rest work between the agent's
syncs, and are refused during them as they are by any run), reports the same events, and is
cancelled as Ctrl-C cancels one (a ``cancel`` from its client, or the client gone). One
difference: when its previous sync ended clean and no other run has opened the mirror since,
its recovery does not stat the files that sync left clean (``mirror.fleet.SyncMemory``). One sync
at a time: a request while another runs (a client's or a scheduled one) gets the lock's
error, kind ``locked``, as a second run would. A dry run changes nothing and takes no lock,
so it runs beside another sync, on a pool of its own, as ever. At most ``MAX_REQUESTS``
requests are served at once, dry runs included, each counted from its connection (a client
has ``REQUEST_TIMEOUT`` seconds to send its request, then is closed); one more is refused as
busy (kind ``agent_refused``: its client runs the sync itself). Only peers of the agent's own
uid are served; another's connection is logged and closed.

A stop (:meth:`Agent.stop`: SIGTERM, Ctrl-C) cancels the syncs running through the registry
and waits ``stop_timeout`` seconds for them to wind down; those still running then are cut
off (each host's state is consistent up to its last checkpoint, as after a kill), and
:meth:`Agent.serve` raises an :class:`~remote_sync.errors.AgentError` saying so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from .agent_link import (
    LOCK_NAME,
    MAX_REQUEST,
    PERSIST,
    STOP_TIMEOUT,
    address,
    peer_credentials,
    socket_path,
)
from .agent_protocol import CancelRequest, SyncRequest, decode_request
from .cancel import CancelRegistry
from .errors import (
    AgentError,
    AgentRefusedError,
    ConfigError,
    LockedError,
    MirrorError,
    RemoteSyncError,
)
from .events import (
    Emit,
    ErrorEvent,
    Event,
    Progress,
    Summary,
    ThrottledProgress,
    WarningEvent,
    encode_event,
    guarded,
)
from .inventory import Host, lists_no_hosts, load_inventory
from .mirror.control import open_control_dir, open_lock, refuse_nested
from .mirror.engine import SyncOptions
from .mirror.fleet import SyncMemory, sync_fleet
from .ssh.endpoint import Endpoint
from .ssh.pool import PoolSettings, SSHPool
from .ssh.remote import check_concurrency, checked_idle_timeout

log = logging.getLogger(__name__)

#: Seconds a client has to send its request once connected: a connection counts against
#: MAX_REQUESTS from the moment it is accepted, so one that says nothing is closed then.
REQUEST_TIMEOUT = 10.0
#: Bytes of events a client may leave unread before its progress lines are dropped.
PROGRESS_BACKLOG = 64 * 1024
#: Bytes of events a client may leave unread before it is taken for gone (its sync
#: cancelled): a dry run's line per file of some hundred thousand files.
MAX_BACKLOG = 32 * 1024 * 1024
#: Requests served at once, dry runs included (each a round and its pool), counted from
#: their connections (a client yet to send its request included): one more is refused as
#: busy, and its client runs the sync itself.
MAX_REQUESTS = 8
#: Seconds the agent waits before accepting again when it has no descriptor left for a
#: connection (each connection holds one, a silent one REQUEST_TIMEOUT at most).
ACCEPT_PAUSE = 0.5
#: What accept() fails with when the process or the system is out of descriptors or memory:
#: a pause, not the agent's end.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Agent:
    """Serve syncs of ``dest`` from the hosts of ``inventory`` until :meth:`stop`."""

    def __init__(
        self,
        inventory: Path,
        dest: Path,
        *,
        every: float | None = None,
        persist: float = PERSIST,
        stop_timeout: float = STOP_TIMEOUT,
        scheduled: Emit | None = None,
    ) -> None:
        self.inventory = Path(os.path.realpath(inventory))
        self.dest = dest
        self.every = every
        self.persist = persist
        #: Seconds a stop waits for the syncs it cancelled (0: no limit).
        self.stop_timeout = stop_timeout
        #: Where a scheduled round's events go (None: a line per round in the log); a sink
        #: that raises (stdout on a full disk) loses its events, not the agent.
        self.scheduled = guarded(scheduled) if scheduled is not None else None
        self.registry = CancelRegistry()
        self.socket = socket_path(dest)
        self._ids = itertools.count(1)
        self._syncing: str | None = None  # who holds the agent's one sync
        self._running = 0  # syncs running, dry runs included
        self._requests = 0  # clients served or yet to send their request (see _handle)
        self._quiet: anyio.Event | None = None  # set when none runs any more
        self._stopping: anyio.Event | None = None  # made in serve's event loop
        self._stop_asked = False
        self._pools: dict[bool, SSHPool] = {}
        #: What its last sync left clean, for the next one's recovery (see SyncMemory).
        self._memory = SyncMemory()

    def stop(self) -> None:
        """Cancel the syncs running (as Ctrl-C does), then stop serving: :meth:`serve`
        returns once they have wound down, or raises an :class:`AgentError` once it has cut
        off those still running ``stop_timeout`` seconds later."""
        self.registry.cancel_all("the agent is stopping")
        self._stop_asked = True
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop`: take the agent's lock, listen, serve; on the way out the
        connections are closed and the socket removed. ``ready`` is called once the socket
        listens. Syncs that a stop's cancel has not ended within ``stop_timeout`` seconds are
        cut off (anyio's cancellation, which ends all but work in a worker thread), and
        their :class:`AgentError` raised on the way out."""
        # Refused before anything is made, as a sync refuses it: the agent's control files
        # in another mirror's host directory would be taken for that host's files.
        refuse_nested(self.dest)
        load_inventory(self.inventory)  # a bad inventory stops the agent before it listens
        self._stopping = anyio.Event()
        if self._stop_asked:
            self._stopping.set()
        cut_off = 0
        with self._locked(), self._listening() as sock:
            listener = await anyio.abc.SocketListener.from_socket(sock)
            async with contextlib.AsyncExitStack() as stack:
                for compress in (False, True):
                    settings = PoolSettings(compression=compress, idle_close=self.persist)
                    self._pools[compress] = await stack.enter_async_context(SSHPool(settings))
                async with listener, anyio.create_task_group() as tg:
                    tg.start_soon(self._accept, listener, tg)
                    if self.every:
                        tg.start_soon(self._schedule, self.every)
                    if ready is not None:
                        ready()
                    # stop() cancelled the syncs registered by then; none registers after it
                    # (see _round).
                    await self._stopping.wait()
                    # A cancelled round winds down (its last commit, its summary to its
                    # client) before the connections it uses are closed; one that has not
                    # within stop_timeout is cut off, as a kill would cut it: each host's
                    # state is consistent up to its last checkpoint, whenever it stops.
                    if self._running:
                        self._quiet = anyio.Event()
                        with anyio.move_on_after(self.stop_timeout or math.inf):
                            await self._quiet.wait()
                        cut_off = self._running
                    tg.cancel_scope.cancel()
        if cut_off:
            raise AgentError(
                f"{cut_off} sync{'s' if cut_off > 1 else ''} still running "
                f"{self.stop_timeout:g} s after the stop, cut off",
                path=str(self.dest),
                hint="the mirror is consistent up to each host's last checkpoint and the next "
                "sync resumes (a file cut midway is fetched again); a longer --stop-timeout "
                "gives a sync more time to wind down",
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        control = self.socket.parent
        lock = control / LOCK_NAME
        try:
            # Refused, not followed: a link at the state directory's name (the socket and
            # lock would be elsewhere), a link or a FIFO at the lock's. The lock is opened by
            # name in the directory opened, so a link swapped in after the look leads nowhere.
            control_fd = open_control_dir(control)
            try:
                fd = open_lock(
                    lock, 0o600, "the agent's", "start the agent again", dir_fd=control_fd
                )
            finally:
                os.close(control_fd)
        except OSError as exc:
            raise MirrorError(
                f"cannot create the agent's lock file: {exc.strerror or exc}",
                path=str(lock),
                hint="the destination must be writable by this user",
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    "another remote-sync agent serves this destination",
                    path=str(self.socket),
                    hint="stop it first (systemctl stop remote-sync-agent, or its Ctrl-C); "
                    "syncs already go through it",
                ) from None
            except OSError as exc:  # no flock there (ENOLCK, some network file systems)
                raise MirrorError(
                    f"cannot lock the agent's lock file: {exc.strerror or exc}",
                    path=str(lock),
                    hint="use a destination on a local file system that supports flock",
                ) from exc
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextlib.contextmanager
    def _listening(self) -> Iterator[socket.socket]:
        if not hasattr(socket, "SO_PEERCRED"):
            raise ConfigError(
                "the agent needs SO_PEERCRED (Linux) to know who connects",
                hint="run remote-sync sync directly (or from a timer) on this system",
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with address(self.socket) as where:
                # Under the agent's lock: a socket there is one a dead agent left.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where)
                # umask 077 while it is made: no moment when another user could connect.
                mask = os.umask(0o077)
                try:
                    sock.bind(where)
                finally:
                    os.umask(mask)
                os.chmod(where, 0o600)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise MirrorError(
                f"cannot listen on the agent's socket: {exc.strerror or exc}",
                path=str(self.socket),
                hint="the destination must be writable by this user, on a local file system",
            ) from exc
        try:
            yield sock
        finally:
            with contextlib.suppress(OSError), address(self.socket) as where:
                os.unlink(where)
            sock.close()

    async def _accept(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Serve each connection in a task of its own. Every connection holds a descriptor
        until it closes (one past MAX_REQUESTS too, until its request is read and refused),
        so a flood of them can use up the process's: accept then pauses ACCEPT_PAUSE seconds
        (the clients wait in the listen backlog, or their connect times out and they sync
        themselves), where anyio's ``listener.serve`` raised and the agent ended."""
        paused = False
        while True:
            try:
                client = await listener.accept()
            except anyio.BrokenResourceError as exc:
                cause = exc.__cause__
                if not isinstance(cause, OSError) or cause.errno not in _OUT_OF_RESOURCES:
                    raise
                if not paused:  # one line for a run of them
                    log.warning(
                        "cannot accept a connection: %s; accepting again as connections close",
                        cause.strerror or cause,
                    )
                paused = True
                await anyio.sleep(ACCEPT_PAUSE)
                continue
            paused = False
            tg.start_soon(self._handle, client)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
            pid, uid = peer_credentials(raw)
            if uid != os.getuid():
                log.warning("refused a connection from pid %d of uid %d: not the agent's", pid, uid)
                return
            # Counted from the connection, not from its request: one that sends nothing (for
            # REQUEST_TIMEOUT at most) holds a place as one served does. One past the limit
            # is refused as busy once its request is read (within the same timeout); until
            # then it holds a task and a descriptor too, bounded only by the descriptors
            # the process may open (see _accept).
            counted = self._requests < MAX_REQUESTS
            if counted:
                self._requests += 1
            try:
                await self._answer(client, pid, busy=not counted)
            finally:
                if counted:
                    self._requests -= 1

    async def _answer(self, client: anyio.abc.SocketStream, pid: int, *, busy: bool) -> None:
        """Read the request of peer ``pid`` (giving up on it after REQUEST_TIMEOUT seconds),
        then serve it, or refuse it: as busy when it came past the limit."""
        reader = BufferedByteReceiveStream(client)
        try:
            with anyio.fail_after(REQUEST_TIMEOUT):
                line = await reader.receive_until(b"\n", MAX_REQUEST)
        except (
            TimeoutError,
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.DelimiterNotFound,
            OSError,
            anyio.BrokenResourceError,
        ):
            return
        try:
            request = decode_request(line)
            if busy:
                # Said once the request is read: closed with it unread, the connection would
                # be reset under the client before it reads why.
                raise AgentRefusedError(
                    f"the remote-sync agent (pid {os.getpid()}) is busy: it serves "
                    f"{MAX_REQUESTS} requests already",
                    path=str(self.socket),
                )
            picked = self._hosts(request)
        except RemoteSyncError as exc:
            log.info("pid %d: %s", pid, exc)
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await client.send(encode_event(ErrorEvent.from_exception(exc)) + b"\n")
            return
        await self._serve_client(client, reader, request, picked, f"pid {pid}")

    def _hosts(self, request: SyncRequest) -> _Picked:
        """The hosts ``request`` names, from the agent's inventory, read again for each sync
        (an edit counts from the next sync, as for a timer's runs), and the endpoints of all
        the hosts that reading lists."""
        if os.path.realpath(request.inventory) != str(self.inventory):
            raise AgentRefusedError(
                f"the agent serves the inventory {self.inventory}, not {request.inventory}",
                path=str(self.socket),
            )
        inventory = load_inventory(self.inventory)
        missing = [name for name in request.hosts if inventory.get(name) is None]
        if missing:
            raise AgentRefusedError(
                f"{', '.join(map(repr, missing))} not in the agent's inventory (an ad-hoc host "
                "is synced by the command itself)",
                path=str(self.inventory),
            )
        hosts = inventory.select(request.hosts, request.tags)
        if not hosts:
            raise lists_no_hosts(str(self.inventory))
        return _Picked(hosts, frozenset(host.endpoint for host in inventory.hosts))

    async def _serve_client(
        self,
        client: anyio.abc.SocketStream,
        reader: BufferedByteReceiveStream,
        request: SyncRequest,
        picked: _Picked,
        who: str,
    ) -> None:
        transfer = f"agent-{next(self._ids)}"
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        # The bytes handed to the writer and not yet sent: a client that stops reading (a
        # process suspended, a pipe nobody drains) must neither block the round (emit never
        # waits) nor make the agent hold its events without bound. Past PROGRESS_BACKLOG
        # its progress lines are dropped (each holds the totals so far: the next one sent
        # brings the client up to date); past MAX_BACKLOG it is taken for gone: its sync is
        # cancelled, as a client that left cancels it, and its events are dropped.
        pending = 0
        writer = anyio.CancelScope()

        def emit(event: Event) -> None:
            nonlocal pending
            if writer.cancel_called:
                return
            if isinstance(event, Progress) and event.phase != "done" and pending > PROGRESS_BACKLOG:
                return
            data = encode_event(event) + b"\n"
            if pending + len(data) > MAX_BACKLOG:
                log.warning("%s: its client does not read its events: sync cancelled", who)
                self.registry.cancel(transfer, "its client does not read its events")
                writer.cancel()
                return
            pending += len(data)
            send.send_nowait(data)

        async def write() -> None:
            nonlocal pending
            try:
                with writer:
                    async for data in receive:
                        await client.send(data)
                        pending -= len(data)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.registry.cancel(transfer, "its client went away")
            async for _ in receive:  # drop the rest; the round goes on to its end
                pass

        async def listen() -> None:
            # A cancel line, or the client gone (its end closed, the process killed): the
            # sync is cancelled, as a Ctrl-C cancels a run of its own.
            with contextlib.suppress(Exception):
                while True:
                    line = await reader.receive_until(b"\n", MAX_REQUEST)
                    with contextlib.suppress(Exception):
                        _decode_cancel(line)
                        break
            self.registry.cancel(transfer, "cancelled by its client")

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            async with anyio.create_task_group() as out:
                out.start_soon(write)
                sink = guarded(ThrottledProgress(emit, 0.1))
                summary = await self._sync(request, picked, sink, transfer, who)
                send.close()  # the writer ends once the events are out
            if summary is not None:
                log.info("%s: sync %s, exit %d", who, _outcome(summary), summary.exit_code)
            tg.cancel_scope.cancel()  # the listener: the connection closes now

    async def _sync(
        self, request: SyncRequest, picked: _Picked, emit: Emit, transfer: str, who: str
    ) -> Summary | None:
        """Run one sync of ``picked``'s hosts for ``who``; its events (a failure to start: one
        error) to ``emit``."""
        try:
            self._refuse_if_stopping()
            check_concurrency(request.concurrency)  # as the CLI checks it
            options = SyncOptions(
                dest=self.dest,
                concurrency=request.concurrency,
                dry_run=request.dry_run,
                idle_timeout=checked_idle_timeout(request.idle_timeout),
                index=request.index,
                pool=PoolSettings(compression=bool(request.compress)),
            )
            if request.dry_run:
                return await self._round(picked.hosts, options, emit, transfer, None)
            if self._syncing is not None:
                raise LockedError(
                    f"the remote-sync agent (pid {os.getpid()}) is running {self._syncing} "
                    "of this destination",
                    path=str(self.dest),
                )
            self._syncing = f"a sync for {who}"
            try:
                # Between syncs (none uses the kept pools now; a dry run has its own): a host
                # gone from the inventory, or whose entry changed, does not keep its
                # connection until the idle close. Gone from this sync's reading of it: a
                # request read while these close (refused: this sync holds the mirror) may
                # have read a later edit, which counts from the next sync, as the hosts do.
                for kept in self._pools.values():
                    await kept.close_except(picked.listed)
                pool = self._pools[bool(request.compress)]
                return await self._round(picked.hosts, options, emit, transfer, pool)
            finally:
                self._syncing = None
        except RemoteSyncError as exc:
            emit(ErrorEvent.from_exception(exc))
            return None

    def _refuse_if_stopping(self) -> None:
        """Its stop cancelled the syncs registered then; one begun after it would hold the
        agent's exit up for a whole round, or be cut off by it: refused, its client runs it."""
        if self._stop_asked:
            raise AgentRefusedError(
                f"the remote-sync agent (pid {os.getpid()}) is stopping",
                path=str(self.socket),
            )

    async def _round(
        self,
        hosts: list[Host],
        options: SyncOptions,
        emit: Emit,
        transfer: str,
        pool: SSHPool | None,
    ) -> Summary:
        # Again here, with no await before sync_fleet registers it: a stop that came while
        # the kept pools' connections closed is seen too.
        self._refuse_if_stopping()
        self._running += 1
        try:
            return await sync_fleet(
                hosts,
                options,
                emit,
                registry=self.registry,
                transfer_id=transfer,
                pool=pool,
                memory=self._memory,  # a dry run neither reads nor changes it
            )
        finally:
            self._running -= 1
            if not self._running and self._quiet is not None:
                self._quiet.set()

    async def _schedule(self, every: float) -> None:
        """A sync of every inventory host now, then every ``every`` seconds (its start to
        the next one's); one due while another sync runs (a client's, or the previous
        scheduled one) is skipped, said in the log."""
        due = anyio.current_time()
        while True:
            if self._syncing is not None:
                log.warning("scheduled sync skipped: %s is running", self._syncing)
            elif not self._stop_asked:
                await self._scheduled_round()
            due += every
            now = anyio.current_time()
            if now > due:
                # Those that fell due while this round ran are skipped, as one due while a
                # client's sync runs is: run at once after it, each would sync hosts just
                # synced, and a fleet slower than the period would never rest.
                missed = math.floor((now - due) / every) + 1
                due += missed * every
                log.warning(
                    "%s skipped: the previous scheduled sync was still running (--every %g s)",
                    "scheduled sync" if missed == 1 else f"{missed} scheduled syncs",
                    every,
                )
            await anyio.sleep(due - now)

    async def _scheduled_round(self) -> None:
        emit = self.scheduled if self.scheduled is not None else _log_problems
        transfer = f"agent-{next(self._ids)}"
        request = SyncRequest(inventory=str(self.inventory))
        try:
            picked = self._hosts(request)
        except RemoteSyncError as exc:
            emit(ErrorEvent.from_exception(exc))
            return
        summary = await self._sync(
            request, picked, ThrottledProgress(emit), transfer, "the schedule"
        )
        if summary is not None and self.scheduled is None:
            log.warning("scheduled sync: %s, exit %d", _outcome(summary), summary.exit_code)


@dataclass(frozen=True)
class _Picked:
    """What one sync read of the agent's inventory: the hosts it syncs, and the endpoints of
    every host listed (the kept pools' connections to any other are closed before it)."""

    hosts: list[Host]
    listed: frozenset[Endpoint]


def _decode_cancel(line: bytes) -> CancelRequest:
    return msgspec.json.decode(line, type=CancelRequest)


def _outcome(summary: Summary) -> str:
    partial = f"{summary.hosts_partial} partial, " if summary.hosts_partial else ""
    return (
        f"{summary.hosts_ok} hosts ok, {partial}{summary.hosts_failed} failed, "
        f"{summary.bytes} bytes in {summary.seconds:.1f} s"
    )


def _log_problems(event: Event) -> None:
    """A scheduled round's events without ``--json``: its errors and warnings in the log."""
    if isinstance(event, ErrorEvent | WarningEvent):
        where = ": ".join(p for p in (event.host, event.path) if p)
        label = "error" if isinstance(event, ErrorEvent) else "warning"
        log.warning("%s %s: %s (%s)", label, where, event.message, event.hint)
