"""A ProxyCommand as ssh runs it: through the shell, its stderr kept out of the SSH stream
(logged, and quoted when the connection fails), its process group ended and reaped with
its connection, against real OpenSSH servers."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from sshfleet import SSHFleet
from synchelp import expected_tree, make_openclaw_tree, mirror_tree, write_inventory
from test_ssh_core import direct_endpoint

from remote_sync.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    HostUnreachableError,
)
from remote_sync.events import ErrorEvent, decode_event
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import PoolSettings, SSHPool
from remote_sync.ssh.stream import exec_streaming, run_command

RELAY = Path(__file__).resolve().parent.parent / "bench" / "delay_relay.py"

#: Says its pid (its process group's id: the command runs in a session of its own) into the
#: file PIDFILE, writes to stderr before the connection, then every 0.1 s for a second
#: while the relay carries it (a jump host's banner, ssh -W's "Warning: Permanently added").
NOISY = (
    "sh -c 'echo $$ > PIDFILE; echo hello from the proxy >&2; "
    "(for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.1; echo noise >&2; done) & "
    f"exec {sys.executable} {RELAY} --delay-ms 20 %h %p'"
)

#: A jump host that is down, as ssh -W says it, with a background job still running.
REFUSED = (
    "sh -c 'echo $$ > PIDFILE; sleep 30 & "
    'echo "ssh: connect to host jump.example port 22: Connection refused" >&2; exit 255\''
)


def _group_members(pgid: int) -> list[int]:
    """The processes of the process group ``pgid``, but zombies another process is to reap
    (init, for the group's orphans): a zombie of ours is one we failed to reap."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid, group = stat.rpartition(")")[2].split()[:3]
        if int(group) == pgid and (state != "Z" or int(ppid) == os.getpid()):
            members.append(int(entry.name))
    return members


def _group_gone(pgid: int) -> bool:
    """Whether the group ``pgid`` is gone within a few seconds (a killed process takes a
    moment to die)."""
    deadline = time.monotonic() + 5
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _proxied(fleet: SSHFleet, command: str) -> Endpoint:
    direct = direct_endpoint(fleet, "h0", str(fleet.client_key))
    return dataclasses.replace(direct, proxy_command=command)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_proxy_command_writing_to_stderr_during_the_sync_does_not_break_it(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """asyncssh fed the command's stderr into the SSH stream: a line written mid-connection
    broke it ("MAC verification failed"). It is logged at debug level, and no process of the
    command's group is left once the run ends; asyncio's "Unknown child process" warning,
    which came from its reaping the command, does not appear in a few runs."""
    pidfile = tmp_path / "pid"
    command = NOISY.replace("PIDFILE", str(pidfile))
    inv = write_inventory(
        fleet, tmp_path / "inventory.toml", ["h0"], f"proxy_command = {json.dumps(command)}"
    )
    make_openclaw_tree(fleet, "h0", sessions=6, lines=200)
    dest = tmp_path / "mirror"
    for run in range(3):
        done = subprocess.run(
            [sys.executable, "-m", "remote_sync.cli", "-vv", "sync", *("-I", inv, "-d", dest)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        err = done.stderr.decode()
        assert done.returncode == 0, err
        assert "Unknown child process" not in err, err
        if run == 0:
            assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
            assert "ProxyCommand: hello from the proxy" in err, err
            assert "ProxyCommand: noise" in err, err
        assert _group_gone(int(pidfile.read_text()))
    # Without -v, nothing of it is shown.
    quiet = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "sync", "-I", str(inv), "-d", str(dest)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert quiet.returncode == 0 and b"noise" not in quiet.stderr, quiet.stderr


def test_a_failing_proxy_command_is_quoted_in_the_error(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A jump host that is down was reported as "Connection lost" alone: the command's last
    words say why, and the error quotes them, naming the host and the command."""
    from remote_sync.cli import main

    pidfile = tmp_path / "pid"
    command = REFUSED.replace("PIDFILE", str(pidfile))
    inv = write_inventory(
        fleet, tmp_path / "inventory.toml", ["h0"], f"proxy_command = {json.dumps(command)}"
    )
    code = main(["sync", "-I", str(inv), "-d", str(tmp_path / "mirror"), "--json"])
    out = capsys.readouterr().out
    (event,) = [e for e in map(decode_event, out.splitlines()) if isinstance(e, ErrorEvent)]
    assert code == 1 and event.kind == "unreachable", event
    assert event.host == "h0", event
    # Named by its program alone: its arguments may hold a secret (the pid file's path
    # stands for one here).
    assert event.message.startswith("cannot connect through ProxyCommand sh …: "), event.message
    assert str(pidfile) not in out
    # Its exit is said after what the connection met ("connection reset by peer").
    assert event.message.endswith(
        "; the command exited with status 255; it said: "
        "ssh: connect to host jump.example port 22: Connection refused"
    ), event.message
    # Its background job went with it.
    assert _group_gone(int(pidfile.read_text()))


async def test_the_proxy_command_is_ended_and_reaped_with_its_connection(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """After a connection that worked, one that failed and one whose opening was cancelled,
    no process of the command's group is left, not even a zombie, and no descriptor."""
    pidfile = tmp_path / "pid"
    before = _fds()

    def group() -> list[int]:
        return _group_members(int(pidfile.read_text()))

    async with SSHPool() as pool:
        ep = _proxied(fleet, NOISY.replace("PIDFILE", str(pidfile)))
        assert await run_command(pool, ep, ["echo", "hi"], host="h0") == b"hi\n"
        assert group() != []
        await pool.invalidate(ep)  # closed: the command goes with it
        with anyio.fail_after(5):
            while group():
                await anyio.sleep(0.05)

        failing = _proxied(fleet, REFUSED.replace("PIDFILE", str(pidfile)))
        with pytest.raises(HostUnreachableError, match="Connection refused"):
            await run_command(pool, failing, ["true"], host="h0")
        # Reaped before the error was raised (no zombie), its background job killed.
        assert not Path(f"/proc/{pidfile.read_text().strip()}").exists()
        assert _group_gone(int(pidfile.read_text()))

        # Never answers: the opening is cancelled while the command runs.
        stuck = _proxied(fleet, f"sh -c 'echo $$ > {pidfile}; sleep 60 & exec sleep 60'")
        with anyio.move_on_after(1) as scope:
            await run_command(pool, stuck, ["true"], host="h0")
        assert scope.cancelled_caught
        assert group() != []  # still running: the pool's task ends it
    assert not Path(f"/proc/{pidfile.read_text().strip()}").exists()
    assert _group_gone(int(pidfile.read_text()))
    assert _fds() == before


async def test_a_user_name_the_shell_would_run_is_not_put_in_the_command(tmp_path: Path) -> None:
    """The shell reads the command, as ssh's does (asyncssh split it into words): a user name
    of the command line ("a$(touch X)@box") that %r put in would run, so it is refused, as
    ssh 9.6 refuses it, before anything runs."""
    ran = tmp_path / "ran"
    (tmp_path / "known_hosts").write_text("")
    ep = Endpoint(
        address="127.0.0.1",
        user=f"a$(touch {ran})",
        ssh_config=(),
        known_hosts=str(tmp_path / "known_hosts"),
        proxy_command="ssh -W %h:%p -l %r jump.invalid",
    )
    async with SSHPool() as pool:
        with pytest.raises(ConfigError, match=r"the remote user name %r is .* holds a character"):
            await run_command(pool, ep, ["true"], host="box")
    assert not ran.exists()


def _hostile_endpoints(tmp_path: Path) -> list[tuple[Endpoint, str, str | None]]:
    """Endpoints whose ProxyCommand would get, by a token, a value that runs ``touch
    $RS_RAN`` in the shell (no ``/`` in it: a ProxyJump hop takes none); each with the
    token and the ssh_config that names the command (None: the inventory's)."""
    hostile = "box$(touch${IFS}$RS_RAN)"
    known = tmp_path / "known_hosts"
    known.write_text("")
    cfg = tmp_path / "config"
    cfg.write_text(  # the HostKeyAlias is lowercased, as in ssh: $rs_ran
        "Host aliased\n  HostName 127.0.0.1\n  HostKeyAlias a`touch${IFS}$rs_ran`\n"
        f"Host through\n  HostName 127.0.0.1\n  ProxyJump {hostile}\n"
        "Host *\n  ProxyCommand nc %n 22\n"
    )
    plain = {"ssh_config": (), "known_hosts": str(known)}
    configured = {"ssh_config": (str(cfg),), "known_hosts": str(known)}
    return [
        # The inventory's: %n is the address as given (an Endpoint is public: no parse).
        (Endpoint(address=hostile, proxy_command="nc %n 22", **plain), "%n", None),  # type: ignore[arg-type]
        (Endpoint(address=hostile, proxy_command="nc %k 22", **plain), "%k", None),  # type: ignore[arg-type]
        # The ssh_config's: for the host, and for a ProxyJump hop of another host.
        (Endpoint(address=hostile, **configured), "%n", str(cfg)),  # type: ignore[arg-type]
        (Endpoint(address="aliased", proxy_command="nc %k 22", **configured), "%k", None),  # type: ignore[arg-type]
        (Endpoint(address="through", **configured), "%n", str(cfg)),  # type: ignore[arg-type]
    ]


async def test_every_token_value_the_shell_would_run_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """%h and %r alone were looked for in the command, by a case-sensitive search of the
    lowercased host name: %n (the name as given, ``box$(touch${IFS}F)``), %k and a ProxyJump
    hop's name ran. Every value a token puts in is checked as it is put in, by the
    pre-flight (a configuration error, before the destination is touched) and by the
    connection, and nothing runs."""
    ran = tmp_path / "ran"
    monkeypatch.setenv("RS_RAN", str(ran))
    monkeypatch.setenv("rs_ran", str(ran))
    for ep, token, path in _hostile_endpoints(tmp_path):
        problem = SSHPool().preflight(ep, "box")
        assert isinstance(problem, ConfigError), (ep, problem)
        assert (problem.host, problem.path) == ("box", path), problem
        assert f" {token} is " in problem.message, problem.message
        assert "holds a character the shell could read as code" in problem.message
        assert problem.hint is not None and f"take {token} out of" in problem.hint, problem.hint
        async with SSHPool() as pool:
            with pytest.raises(ConfigError, match="holds a character the shell"):
                await run_command(pool, ep, ["true"], host="box")
    assert not ran.exists()


async def test_an_ssh_config_proxy_command_is_read_by_the_shell(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh runs ``$SHELL -c "exec COMMAND"``: a redirection or a variable in the command is
    the shell's. asyncssh split it into words itself, and gave the relay "2>/dev/null" and
    "$RELAY_DELAY" as arguments."""
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n"
        f"  ProxyCommand {sys.executable} {RELAY} --delay-ms $RELAY_DELAY %h %p 2>/dev/null\n"
    )
    monkeypatch.setenv("RELAY_DELAY", "0")
    async with SSHPool() as pool:
        ep = Endpoint(address="box", ssh_config=(str(cfg),))
        assert await run_command(pool, ep, ["echo", "hi"], host="box") == b"hi\n"


async def test_a_proxy_command_that_hands_the_socket_on_and_exits_0_keeps_its_connection(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A command that exits with status 0 may have left the socket to a job of its own (a
    proxy that forks and leaves): its connection goes on, as ssh's does. Only a failed
    command ends the connection at its exit."""
    pidfile = tmp_path / "pid"
    # An asynchronous list's stdin is /dev/null before its redirections (POSIX sh): the
    # socket is passed on as descriptor 3.
    handing = (
        f"sh -c 'echo $$ > {pidfile}; exec 3<&0; "
        f"({sys.executable} {RELAY} --delay-ms 0 %h %p <&3 3<&- &); exit 0'"
    )
    async with SSHPool() as pool:
        ep = _proxied(fleet, handing)
        assert await run_command(pool, ep, ["echo", "hi"], host="h0") == b"hi\n"
        await anyio.sleep(0.3)  # the command has long exited: the connection still serves
        assert await run_command(pool, ep, ["echo", "again"], host="h0") == b"again\n"
    assert _group_gone(int(pidfile.read_text()))


def _direct_config(fleet: SSHFleet, tmp_path: Path, lines: str) -> Path:
    """An ssh_config naming h0 "box", with ``lines`` before a ProxyJump to a host that does
    not exist: a connection that takes the jump host fails."""
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n{lines}  ProxyJump nobody@jump.invalid\n"
    )
    return cfg


def _ssh_g(cfg: Path, *options: str) -> dict[str, str]:
    printed = subprocess.run(
        ["ssh", "-F", str(cfg), *options, "-G", "box"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return dict(line.split(" ", 1) for line in printed if " " in line)


@pytest.mark.parametrize(
    ("given", "lines"),
    [
        ("none", ""),
        ("NONE", ""),
        (None, "  ProxyCommand None\n"),
        (None, "  ProxyCommand = none\n"),
        (None, "  ProxyCommand=NONE\n"),
    ],
)
async def test_a_proxy_command_none_connects_directly_as_ssh_does(
    given: str | None, lines: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """``none``, in any case, is no command at all for ssh (``ssh -o ProxyCommand=none``):
    given first, it keeps the ssh_config's ProxyJump out, and ssh connects directly. The
    inventory's ``proxy_command = "none"`` ran a program named "none"; the ssh_config's
    ``ProxyCommand = none`` ran ``exec = none``."""
    cfg = _direct_config(fleet, tmp_path, lines)
    printed = _ssh_g(cfg, *(("-o", f"ProxyCommand={given}") if given else ()))
    assert "proxyjump" not in printed and "proxycommand" not in printed, printed
    ep = Endpoint(address="box", ssh_config=(str(cfg),), proxy_command=given)
    assert SSHPool().preflight(ep, "box") is None
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "direct"], host="box") == b"direct\n"


async def test_a_proxy_command_that_exits_0_leaves_the_connection_s_own_error(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A command may hand the socket on and exit with status 0; when the connection then
    fails (here: nothing ever answers, and it times out), its error is what it met. "the
    command exited with status 0" replaced it."""
    handing = "sh -c 'exec 3<&0; (sleep 30 <&3 3<&- &); exit 0'"
    async with SSHPool(PoolSettings(connect_timeout=1.0)) as pool:
        with pytest.raises(HostUnreachableError) as failed:
            await run_command(pool, _proxied(fleet, handing), ["true"], host="h0")
    message = failed.value.message
    assert message == "cannot connect through ProxyCommand sh …: connection timed out", message


async def test_the_proxy_command_s_arguments_are_not_in_its_errors(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure through a ProxyCommand quoted the whole command, and its arguments may hold
    a secret (``sshpass -p ...``, a service token) that went into JSON events and cron's
    mail: the command is named by its program. The whole command is logged at debug
    level."""
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    secret = "S3CRET-token"
    relaying = f"{sys.executable} {RELAY} --delay-ms 0 %h %p # {secret}"
    ep = dataclasses.replace(_proxied(fleet, relaying), identity_files=(str(stranger),))
    failing = _proxied(fleet, f"env TOKEN={secret} sh -c 'exit 3' {secret}")
    async with SSHPool() as pool:
        with pytest.raises(AuthenticationError) as refused:
            await run_command(pool, ep, ["true"], host="h0")
        with pytest.raises(HostUnreachableError) as unreachable:
            await run_command(pool, failing, ["true"], host="h0")
    shown = str(refused.value)
    assert f"(connected through ProxyCommand {sys.executable} …)" in shown, shown
    shown = str(unreachable.value)
    assert shown.startswith("h0: cannot connect through ProxyCommand env …: "), shown
    assert "the command exited with status 3" in shown, shown
    for error in (refused.value, unreachable.value):
        assert secret not in f"{error.message} {error.hint} {error.path}", error
    # A shell that cannot be run is said the same way.
    monkeypatch.setenv("SHELL", str(tmp_path / "no-such-shell"))
    async with SSHPool() as pool:
        with pytest.raises(HostUnreachableError, match="cannot run the shell") as unrun:
            await run_command(pool, failing, ["true"], host="h0")
    assert secret not in str(unrun.value) and "ProxyCommand env …" in str(unrun.value)


#: Relays (its relay a background job holding the socket as descriptor 3, see above) until
#: the file TRIGGER appears, then says what ``ssh -W`` says when its jump host drops it and
#: exits with status 255, its relay killed; its pid in PIDFILE.
DYING = (
    "sh -c 'echo $$ > PIDFILE; exec 3<&0; "
    f"{sys.executable} {RELAY} --delay-ms 0 %h %p <&3 3<&- & "
    "while [ ! -e TRIGGER ]; do sleep 0.05; done; "
    'echo "Connection to jump.example closed by remote host." >&2; '
    'echo "client_loop: send disconnect: Broken pipe" >&2; kill $!; exit 255\''
)


@pytest.mark.parametrize("how", ["exits", "killed"])
async def test_a_connection_lost_midway_quotes_what_its_proxy_command_said(
    how: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """A connection made through a ProxyCommand and lost midway (the jump host's ``ssh -W``
    dropped, or the command killed) was "connection lost: Connection lost" alone, where a
    failed connect quotes the command: the error says how the command ended and its last
    words, naming the command by its program alone, as for a failed connect."""
    pidfile, trigger = tmp_path / "pid", tmp_path / "trigger"
    command = DYING.replace("PIDFILE", str(pidfile)).replace("TRIGGER", str(trigger))
    argv = ["sh", "-c", "echo first; sleep 30; echo late"]
    ep = _proxied(fleet, command)
    async with SSHPool() as pool, exec_streaming(pool, ep, argv, host="h0") as stream:
        chunks = aiter(stream)
        assert await anext(chunks) == b"first\n"
        if how == "exits":
            trigger.touch()
        else:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        with anyio.fail_after(10), pytest.raises(ConnectionLostError) as lost:
            await anext(chunks)
    error = lost.value
    assert (error.host, error.path) == ("h0", None), error
    assert error.message.startswith("connection lost through ProxyCommand sh …: "), error
    if how == "exits":
        assert error.message.endswith(
            "; the command exited with status 255; it said: Connection to jump.example "
            "closed by remote host. / client_loop: send disconnect: Broken pipe"
        ), error.message
    else:
        assert error.message.endswith("; the command was killed by signal 9"), error.message
    assert str(tmp_path) not in str(error)
    assert _group_gone(int(pidfile.read_text()))


async def test_a_connection_lost_through_a_jump_host_quotes_its_proxy_command(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A target reached through ``ProxyJump jump``, where jump is reached through a
    ProxyCommand, and lost midway because that command ended: the error was "connection
    lost: Connection lost" alone, as only a connection made on the command itself quoted
    it. It now names the jump host and the command, and quotes the command as the target's
    own ProxyCommand is quoted."""
    pidfile, trigger = tmp_path / "pid", tmp_path / "trigger"
    command = DYING.replace("PIDFILE", str(pidfile)).replace("TRIGGER", str(trigger))
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {fleet.host('h0').port}\n  ProxyJump jump\n"
        f"Host jump\n  HostName 127.0.0.1\n  Port {fleet.host('h1').port}\n"
        f"  ProxyCommand {command}\n"
        f"Host *\n  User {fleet.user}\n  IdentityFile {fleet.client_key}\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    argv = ["sh", "-c", "echo first; sleep 30; echo late"]
    async with SSHPool() as pool, exec_streaming(pool, ep, argv, host="box") as stream:
        chunks = aiter(stream)
        assert await anext(chunks) == b"first\n"
        trigger.touch()
        with anyio.fail_after(10), pytest.raises(ConnectionLostError) as lost:
            await anext(chunks)
    error = lost.value
    assert (error.host, error.path) == ("box", None), error
    assert error.message.startswith(
        "connection lost through ProxyJump 'jump', carried by ProxyCommand sh …: "
    ), error
    assert error.message.endswith(
        "; the command exited with status 255; it said: Connection to jump.example "
        "closed by remote host. / client_loop: send disconnect: Broken pipe"
    ), error.message
    assert str(tmp_path) not in str(error)
    assert _group_gone(int(pidfile.read_text()))
