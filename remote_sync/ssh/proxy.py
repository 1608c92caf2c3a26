"""ProxyCommand, run for a connection as ssh runs it.

What it owns:

- Running a ProxyCommand as ssh runs it (:class:`ProxyProcess`: ``$SHELL -c "exec ..."``,
  in a session of its own, on a socket pair whose other end the connection is made on), its
  stderr kept out of the SSH stream and quoted when its connection fails or is lost once
  made (:meth:`ProxyProcess.quote`), and ending it with its connection (SIGHUP, then
  SIGKILL to what is left of its process group, and reaped), as a task of the pool's task
  group.
- Which ProxyCommand a connection runs on, and how its failure names that route by the
  command's program alone (:class:`Carrier`, :func:`proxy_route`).
- ``none``, which is no command (:func:`is_none_command`), and how a token refused in a
  ProxyCommand is said (:func:`refused_proxy_command`), for the ssh_config's and the
  inventory's alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess

import anyio
from msgspec import Struct

from ..errors import RemoteSyncError, showable
from .sshconfig import UnsafeTokenValue, command_name

log = logging.getLogger(__name__)


def refused_proxy_command(exc: ValueError, named: str) -> tuple[str, str]:
    """The message and the hint to stop on ``exc``, raised by
    :func:`~remote_sync.ssh.sshconfig.expand_proxy_command` for the ProxyCommand the hint
    names ``named``: an :class:`UnsafeTokenValue` as it is, a token ssh does not expand
    there as ssh stops on it."""
    if isinstance(exc, UnsafeTokenValue):
        return str(exc), exc.hint
    hint = f"use only %h %k %n %p %r in {named}, and write %% for a %"
    return f"{exc}, as ssh stops on it", hint


def is_none_command(command: str) -> bool:
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


class ProxyProcess:
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
#: sent SIGHUP (see :meth:`ProxyProcess._end`).
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


class Carrier(Struct, frozen=True):
    """The ProxyCommand a connection runs on (:meth:`~remote_sync.ssh.pool.SSHPool.lost`): its own,
    or, when it was made through the ProxyJump hosts ``jumps``, the one the first of them runs
    on."""

    proxy: ProxyProcess
    jumps: str | None = None

    def route(self) -> str:
        """The connection's route, as its loss names it
        (:func:`~remote_sync.ssh.failures.connection_route`)."""
        if self.jumps is None:
            return proxy_route(self.proxy.command)
        return (
            f"through ProxyJump {self.jumps!r}, carried by ProxyCommand "
            f"{command_name(self.proxy.command)}"
        )


def proxy_route(command: str) -> str:
    """A connection's route through the ProxyCommand ``command``
    (:func:`~remote_sync.ssh.failures.connection_route`)."""
    return f"through ProxyCommand {command_name(command)}"
