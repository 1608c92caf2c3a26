"""The SSH fleet fixture works with the real OpenSSH client and with asyncssh."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time

import asyncssh
import pytest
from sshfleet import SSHFleet, SSHFleetError

PAYLOAD = bytes(range(256)) * 64 + b"\r\n\x00tail"


def run_ssh(fleet: SSHFleet, name: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(fleet.ssh_argv(name, *argv), capture_output=True, timeout=30)


def test_layout(fleet: SSHFleet) -> None:
    assert fleet.names == ["h0", "h1"]
    h0, h1 = fleet.host("h0"), fleet.host("h1")
    assert h0.port != h1.port
    assert h0.alias == "h0" and h0.hostname == "127.0.0.1"
    assert h0.running and h0.pid is not None
    assert h0.host_public_key != h1.host_public_key
    assert h0.host_public_key.startswith("ssh-ed25519 ")
    assert fleet.known_hosts.read_text().splitlines() == [
        f"[127.0.0.1]:{h.port} {h.host_public_key}" for h in (h0, h1)
    ]
    cfg = fleet.ssh_config.read_text()
    assert "Host h0\n" in cfg and f"Port {h1.port}\n" in cfg
    assert "StrictHostKeyChecking yes" in cfg
    pw = pwd.getpwnam(fleet.user)
    if os.geteuid() == 0:
        assert pw.pw_uid != 0
        assert pw.pw_shell == "/bin/sh"
    assert h0.data_dir.stat().st_uid == pw.pw_uid
    assert h0.data_dir != h1.data_dir


def test_ssh_cat_returns_bytes(fleet: SSHFleet) -> None:
    path = fleet.write("h0", "sessions/a b/x.jsonl", PAYLOAD)
    assert path.stat().st_uid == pwd.getpwnam(fleet.user).pw_uid
    assert path.parent.stat().st_uid == pwd.getpwnam(fleet.user).pw_uid
    r = run_ssh(fleet, "h0", "cat", f"'{path}'")
    assert r.returncode == 0, r.stderr
    assert r.stdout == PAYLOAD
    r = run_ssh(fleet, "h0", "id", "-un")
    assert r.stdout.decode().strip() == fleet.user
    # h1 has its own data dir: the file is not there
    r = run_ssh(fleet, "h1", "cat", f"'{fleet.path('h1', 'sessions/a b/x.jsonl')}'")
    assert r.returncode != 0 and b"No such file" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a distinct non-root login user")
def test_remote_user_is_not_root(fleet: SSHFleet) -> None:
    path = fleet.write("h0", "secret.jsonl", b"nope", mode=0o000)
    os.chown(path, 0, 0)
    r = run_ssh(fleet, "h0", "cat", str(path))
    assert r.returncode == 1
    assert b"Permission denied" in r.stderr


async def test_asyncssh_via_ssh_config(fleet: SSHFleet) -> None:
    path = fleet.write("h1", "f.bin", PAYLOAD)
    async with asyncssh.connect(
        "h1",
        config=[str(fleet.ssh_config)],
        known_hosts=str(fleet.known_hosts),
        agent_path=None,
    ) as conn:
        r = await conn.run(f"cat {path}", encoding=None, check=True)
        assert r.stdout == PAYLOAD
        async with conn.start_sftp_client() as sftp, sftp.open(str(path), "rb") as f:
            assert await f.read() == PAYLOAD  # type: ignore[comparison-overlap]


async def test_asyncssh_via_connect_kwargs(fleet: SSHFleet) -> None:
    path = fleet.write("h0", "f.txt", "hello\n")
    async with asyncssh.connect(**fleet.connect_kwargs("h0")) as conn:
        r = await conn.run(f"cat {path}", check=True)
        assert r.stdout == "hello\n"


async def test_stop_cuts_live_connections_and_start_restores(fleet: SSHFleet) -> None:
    h = fleet.host("h0")
    port, key = h.port, h.host_public_key
    conn = await asyncssh.connect(**fleet.connect_kwargs("h0"))
    try:
        proc = await conn.create_process("echo ready; exec sleep 60")
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)) == "ready\n"
        t0 = time.monotonic()
        fleet.stop("h0")
        assert not h.running and h.pid is None
        # the live connection is cut (its sshd processes are gone), not just the listener
        await asyncio.wait_for(conn.wait_closed(), 10)
        assert time.monotonic() - t0 < 5
    finally:
        conn.close()
    with pytest.raises(OSError):
        await asyncssh.connect(**fleet.connect_kwargs("h0"))
    # the other host is unaffected
    assert run_ssh(fleet, "h1", "true").returncode == 0

    fleet.start("h0")
    assert h.running and h.port == port and h.host_public_key == key
    assert run_ssh(fleet, "h0", "echo", "back").stdout == b"back\n"


async def test_rotated_host_key_is_rejected(fleet: SSHFleet) -> None:
    old = fleet.host("h0").host_public_key
    new = fleet.rotate_host_key("h0")
    assert new != old and fleet.host("h0").host_public_key == new
    assert fleet.host("h0").running

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(**fleet.connect_kwargs("h0"))
    r = run_ssh(fleet, "h0", "true")
    assert r.returncode == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
    # h1 still fine
    assert run_ssh(fleet, "h1", "true").returncode == 0

    fleet.trust_host_key("h0")
    assert run_ssh(fleet, "h0", "true").returncode == 0


def test_named_hosts_and_close(ssh_fleet) -> None:  # type: ignore[no-untyped-def]
    f = ssh_fleet(names=["alpha", "beta-1", "c.x"])
    assert f.names == ["alpha", "beta-1", "c.x"]
    assert run_ssh(f, "beta-1", "echo", "ok").stdout == b"ok\n"
    pids = [h.pid for h in f.hosts]
    root = f.root
    f.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not root.exists()
    f.close()  # idempotent


def test_bad_names_rejected() -> None:
    with pytest.raises(ValueError):
        SSHFleet(names=["a", "a"])
    with pytest.raises(ValueError):
        SSHFleet(names=["bad name"])


def test_missing_sshd_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sshfleet

    monkeypatch.setattr(sshfleet, "find_sshd", lambda: None)
    with pytest.raises(SSHFleetError, match="openssh-server"):
        SSHFleet(1)
