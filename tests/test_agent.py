"""``remote-sync agent``: syncs served over the control socket on connections kept open.

The agent runs as a real process (``python -m remote_sync.cli agent``) against the real
sshd fleet; clients are real ``remote-sync sync`` processes, or ``main`` in this process
where only the exit code and the events matter. Connections are counted in the hosts'
sshd logs ("Accepted publickey"), one line per SSH connection sshd accepted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from bbtools import applet_dir
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sshfleet import SSHFleet
from synchelp import (
    DEAF_SYNC_STARTED,
    SESSIONS,
    append,
    cli_process,
    expected_tree,
    make_openclaw_tree,
    mirror_tree,
    session_bytes,
    unreadable,
    until_running,
    write_inventory,
)

from remote_sync import agent as agent_module
from remote_sync.agent import Agent
from remote_sync.agent_link import AgentLink
from remote_sync.agent_protocol import SyncRequest
from remote_sync.cancel import CancelToken
from remote_sync.errors import AgentError, ConfigError, DestinationError, MirrorError
from remote_sync.events import (
    Emit,
    ErrorEvent,
    Event,
    FileCounts,
    HostDone,
    Planned,
    Progress,
    Summary,
    WarningEvent,
    decode_event,
    encode_event,
)
from remote_sync.inventory import load_inventory
from remote_sync.mirror import engine
from remote_sync.mirror.engine import SyncOptions
from remote_sync.mirror.fleet import SyncMemory, sync_fleet
from remote_sync.mirror.remote_ops import PROBE_TOOLS
from remote_sync.mirror.state import MirrorState
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import SSHPool

SOCKET = Path(".remote-sync") / "agent.sock"


def accepted(fleet: SSHFleet, name: str) -> int:
    """SSH connections sshd of ``name`` accepted so far."""
    return fleet.host(name).log_path.read_text(errors="replace").count("Accepted publickey")


def start_agent(
    inv: Path, dest: Path, *extra: str, fault: str | None = None, verbose: bool = False
) -> subprocess.Popen[bytes]:
    """The agent, once it listens; ``fault`` injected (``fault_cli.py``); ``verbose``: with
    ``-v``, so that its log says each request it gets ("pid N: ...")."""
    command = [*(["-v"] if verbose else []), "agent", "--inventory", str(inv), "--dest", str(dest)]
    proc = cli_process([*command, *extra], fault=fault)
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()  # "remote-sync agent: serving ..." once it listens
        if b"serving" in line:
            return proc
        # Only -v's log may come before it; anything else says why the agent did not start.
        assert line and verbose, line + proc.stderr.read()


def stop_agent(
    proc: subprocess.Popen[bytes], sent: signal.Signals = signal.SIGTERM
) -> tuple[int, bytes]:
    """Its exit code and what it wrote on stderr."""
    if proc.poll() is None:
        proc.send_signal(sent)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture
def agent_setup(fleet: SSHFleet, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1", seed=1)
    yield write_inventory(fleet, tmp_path / "inventory.toml"), tmp_path / "m"


def sync_json(inv: Path, dest: Path, *extra: str) -> tuple[int, list[object], bytes]:
    proc = cli_process(["sync", "-I", str(inv), "-d", str(dest), "--json", *extra])
    out, err = proc.communicate(timeout=120)
    return proc.returncode, [decode_event(line) for line in out.splitlines()], err


def test_a_sync_through_the_agent_is_a_direct_one_on_kept_connections(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    inv, dest = agent_setup
    agent = start_agent(inv, dest)
    try:
        mode = (dest / SOCKET).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        before = accepted(fleet, "h0")
        code, events, err = sync_json(inv, dest)
        assert code == 0, err
        (summary,) = [e for e in events if isinstance(e, Summary)]
        assert summary.hosts_ok == 2 and summary.exit_code == 0
        assert summary.files.new == sum(h.files.new for h in summary.hosts) > 0
        for name in ("h0", "h1"):
            assert mirror_tree(dest, name) == expected_tree(fleet.path(name))
        # The same as a direct run into another mirror.
        code, direct, _ = sync_json(inv, tmp_path / "direct", "--no-agent")
        (alone,) = [e for e in direct if isinstance(e, Summary)]
        assert code == 0 and alone.files == summary.files and alone.bytes == summary.bytes
        # A second sync through the agent: no new SSH connection to the host.
        once = accepted(fleet, "h0")
        assert once == before + 2  # the agent's and the direct run's
        code, events, err = sync_json(inv, dest)
        assert code == 0, err
        assert accepted(fleet, "h0") == once
        (summary,) = [e for e in events if isinstance(e, Summary)]
        assert summary.files.unchanged == alone.files.new and summary.bytes == 0
    finally:
        assert stop_agent(agent)[0] == 0
    assert not (dest / SOCKET).exists()


#: ``remote-sync ARGS`` run as the console script runs it, the modules loaded written to the
#: file ``OUT`` as it leaves (at its os._exit, after the exit's own steps).
_MODULES_AT_EXIT = """
import os, sys
out, *words = sys.argv[1:]
leave = os._exit

def written_then_left(code):
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    leave(code)

os._exit = written_then_left
sys.argv = ["remote-sync", *words]
from remote_sync.__main__ import run
run()
"""


def test_the_client_imports_no_engine_no_msgspec_no_logging(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """A sync through the agent (its start-up is serial time in every round) loads what
    forwarding takes, not asyncssh, anyio or the engine, nor, under --json, msgspec and the
    event Structs, logging or rich: it passes the agent's lines on as they came."""
    inv, dest = agent_setup
    agent = start_agent(inv, dest)
    try:
        for extra in (["--dry-run"], []):  # the dry run first: it has files to plan
            out = tmp_path / "modules"
            done = subprocess.run(
                [sys.executable, "-c", _MODULES_AT_EXIT, str(out), "sync", "-I", str(inv),
                 "-d", str(dest), "--json", *extra],
                capture_output=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            events = [decode_event(line) for line in done.stdout.splitlines()]
            assert isinstance(events[-1], Summary) and events[-1].dry_run == bool(extra)
            assert any(isinstance(e, Planned) for e in events) == bool(extra)
            loaded = set(out.read_text().splitlines())
            # Through the agent: a run of its own would have loaded the engine (below).
            assert "remote_sync.agent_link" in loaded
            unwanted = {
                "asyncssh", "anyio", "remote_sync.mirror.engine", "msgspec", "logging", "rich",
                "remote_sync.events", "typing_extensions",
            }  # fmt: skip
            assert loaded & unwanted == set()
    finally:
        stop_agent(agent)


def stuck_inventory(fleet: SSHFleet, tmp_path: Path) -> Path:
    """h0, and a host whose ProxyCommand never answers: a sync runs until cancelled."""
    return add_stuck_host(write_inventory(fleet, tmp_path / "inventory.toml", ["h0"]))


def add_stuck_host(inv: Path) -> Path:
    """``inv`` with the host "stuck" added, whose sync runs until cancelled."""
    with open(inv, "a") as out:
        out.write(
            '[[hosts]]\nname = "stuck"\naddress = "stuck.invalid"\nproxy_command = "sleep 60"\n'
        )
    return inv


def wait_listing(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if b'"host":"stuck","phase":"listing"' in line:
            return
    raise AssertionError("the sync never started")


def test_a_cancelled_client_cancels_its_sync_and_the_agent_goes_on(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    make_openclaw_tree(fleet, "h0")
    inv, dest = stuck_inventory(fleet, tmp_path), tmp_path / "m"
    agent = start_agent(inv, dest)
    try:
        client = cli_process(["sync", "-I", str(inv), "-d", str(dest), "--json"])
        wait_listing(client)
        # A second request while it runs: the lock's error, exit 75, nothing touched.
        code, events, _ = sync_json(inv, dest, "h0")
        assert code == 75
        assert isinstance(events[-1], ErrorEvent) and events[-1].kind == "locked"
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 130, err
        assert b"cancelling (Ctrl-C again" in err
        summary = decode_event(out.splitlines()[-1])
        assert isinstance(summary, Summary) and summary.exit_code == 130
        # A client killed mid-sync cancels it too: the next sync is not refused as locked.
        client = cli_process(["sync", "-I", str(inv), "-d", str(dest), "--json"])
        wait_listing(client)
        client.kill()
        client.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while True:
            code, events, _ = sync_json(inv, dest, "h0")
            if code != 75 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 0, events
        assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
        assert agent.poll() is None
    finally:
        assert stop_agent(agent, signal.SIGINT)[0] == 130


def test_an_agent_killed_mid_sync_leaves_a_mirror_a_direct_sync_recovers(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    make_openclaw_tree(fleet, "h0")
    inv, dest = stuck_inventory(fleet, tmp_path), tmp_path / "m"
    agent = start_agent(inv, dest)
    client = cli_process(["sync", "-I", str(inv), "-d", str(dest), "--json"])
    wait_listing(client)
    agent.kill()
    agent.communicate(timeout=30)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 1, err
    assert b"the agent ended the connection" in err
    assert (dest / SOCKET).exists()  # stale: nobody answers
    code, _, err = sync_json(inv, dest, "h0")  # runs directly, silently
    assert code == 0 and b"agent" not in err, err
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
    agent = start_agent(inv, dest)  # the stale socket is replaced
    try:
        second = cli_process(["agent", "-I", str(inv), "-d", str(dest)])
        _, err = second.communicate(timeout=60)
        assert second.returncode == 75 and b"another remote-sync agent" in err
    finally:
        assert stop_agent(agent)[0] == 0


def test_requests_the_agent_cannot_serve_run_directly_and_say_so(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    inv, dest = agent_setup
    other = write_inventory(fleet, tmp_path / "other.toml", ["h0"])
    agent = start_agent(inv, dest)
    try:
        code, events, err = sync_json(other, dest)
        assert code == 0
        assert err.decode().count("the agent cannot serve this sync") == 1, err
        assert not any(isinstance(e, ErrorEvent) for e in events)  # the refusal is no error
        # --no-agent: direct, without a word.
        code, _, err = sync_json(inv, dest, "--no-agent")
        assert code == 0 and b"agent" not in err
    finally:
        stop_agent(agent)


def test_another_uid_is_refused(agent_setup: tuple[Path, Path]) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    inv, _ = agent_setup
    # A destination another uid can reach (pytest's temporary directories are 0700).
    top = Path(tempfile.mkdtemp())
    try:
        os.chmod(top, 0o711)
        dest = top / "m"
        agent = start_agent(inv, dest)
        path = dest / SOCKET
        os.chmod(path, 0o666)  # so that the other uid can connect at all
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            try:
                os.setuid(65534)
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(str(path))
                request = {"type": "sync", "version": 1, "inventory": str(inv)}
                try:
                    # The agent may close before the request is even sent (it checks the
                    # peer's uid first): the send then meets a closed socket.
                    sock.sendall(json.dumps(request).encode() + b"\n")
                    os.write(write, sock.recv(1000) or b"closed")
                except (ConnectionResetError, BrokenPipeError):  # closed, request unread
                    os.write(write, b"closed")
            except BaseException as exc:
                os.write(write, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        assert os.read(read, 1000) == b"closed"
        os.close(read)
        code, err = stop_agent(agent)
        assert code == 0 and b"refused a connection" in err and b"of uid 65534" in err, err
    finally:
        shutil.rmtree(top)


def test_every_runs_scheduled_rounds_as_json_lines(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    inv, dest = agent_setup
    agent = start_agent(inv, dest, "--every", "1s", "--json")
    assert agent.stdout is not None
    summaries = []
    for line in agent.stdout:
        event = decode_event(line)
        if isinstance(event, Summary):
            summaries.append(event)
            if len(summaries) == 2:
                break
    assert stop_agent(agent)[0] == 0
    assert summaries[0].hosts_ok == 2 and summaries[0].files.new > 0
    assert summaries[1].files.new == 0 and summaries[1].files.unchanged == summaries[0].files.new


async def test_rounds_given_a_pool_use_it_and_leave_it_open(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """The engine's side of the agent: a round given the caller's pool connects through it,
    once for two rounds, and leaves it open; a dry run still opens a pool of its own."""
    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0"])
    events: list[object] = []
    async with SSHPool() as pool:
        for dry_run in (False, False, True):
            options = SyncOptions(dest=dest, dry_run=dry_run)
            summary = await sync_fleet(hosts, options, events.append, pool=pool)
            assert summary.exit_code == 0
        stats = pool.stats(hosts[0].endpoint)
        assert (stats.connects, stats.operations) == (1, 2)
        assert pool._slots[hosts[0].endpoint].conn is not None  # still open
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))


def _ignore(_event: object) -> None:
    pass


def _tools_noted(pool: SSHPool, endpoint: Endpoint) -> str | None:
    """What the rounds noted of the host's tools for the pool's connection to ``endpoint``,
    read as a round reads it (``note_of`` its connection); None with no connection."""
    conn = pool._slots[endpoint].conn
    return None if conn is None else pool.note_of(conn, engine._TOOLS_NOTE)


async def test_rounds_over_a_kept_connection_are_told_the_hosts_tools(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """A round that went well leaves what it found of the host's tools with its connection,
    for the next round to skip the probes (see round_argv); a round that did not (here a
    directory find could not read) forgets it, and so does a new connection."""
    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0"])
    endpoint = hosts[0].endpoint
    hidden = Path(fleet.path("h0", SESSIONS.format(agent="agent1")))
    async with SSHPool() as pool:
        noted = []
        for mode in (0o755, 0o000, 0o755, 0o755):
            hidden.chmod(mode)
            try:
                summary = await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)
            finally:
                hidden.chmod(0o755)
            assert summary.exit_code == (0 if mode else 1)
            noted.append(_tools_noted(pool, endpoint))
        found = noted[0]
        assert found is not None and re.fullmatch("[prs][ny][ny]", found)
        assert noted == [found, None, found, found]
        await pool.invalidate(endpoint)
        assert _tools_noted(pool, endpoint) is None
        assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)).exit_code == 0
        assert _tools_noted(pool, endpoint) == found
        assert pool.stats(endpoint).connects == 2
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))


async def test_a_round_whose_listing_failed_forgets_the_hosts_tools(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """A round that fails before its listing has ended (here its root is gone) did not go
    well: what it was told of the host's tools is forgotten, as after a round that listed
    but failed, and the next round over the same connection probes again."""
    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0"])
    endpoint = hosts[0].endpoint
    root = Path(fleet.path("h0"))
    async with SSHPool() as pool:
        assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)).exit_code == 0
        assert _tools_noted(pool, endpoint) is not None
        root.rename(root.with_name("h0-away"))
        try:
            summary = await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)
        finally:
            root.with_name("h0-away").rename(root)
        assert summary.exit_code == 1 and pool.stats(endpoint).connects == 1
        assert _tools_noted(pool, endpoint) is None


async def test_a_round_whose_connection_is_replaced_is_told_nothing_of_the_old_one(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], busybox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's connection turns out lost when a round's channel opens, and the round runs
    on a new one, to a host whose tools changed meanwhile (GNU's, then BusyBox's): it is
    told nothing of what the old connection learned, so it probes the host's tools as a new
    connection's first round does, lists and fetches well, and keeps what it found for the
    new connection. Told the old answer, BusyBox's find failed the listing."""
    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0"])
    endpoint = hosts[0].endpoint
    asked: list[str] = []
    path = ""  # the hosts' own PATH, then BusyBox's applets alone
    real_argv = engine.round_argv

    def recording(*args: Any, tools: str = "", **kwargs: Any) -> list[str]:
        asked.append(tools)
        command = real_argv(*args, tools=tools, **kwargs)
        return ["env", f"PATH={path}", *command] if path else command

    monkeypatch.setattr(engine, "round_argv", recording)
    async with SSHPool() as pool:
        assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)).exit_code == 0
        found = _tools_noted(pool, endpoint)
        assert found is not None and found.startswith("r")  # GNU find
        old = pool._slots[endpoint].conn
        assert old is not None

        async def lost(*_args: object, **_kwargs: object) -> None:
            raise ConnectionResetError("connection lost")

        old.create_session = lost  # type: ignore[method-assign]
        path = str(applet_dir(busybox, fleet.root / "bb", ("gzip", "tar", "md5sum")))
        new = fleet.path("h0", SESSIONS.format(agent="agent1")) / "new.jsonl"
        new.write_bytes(b'{"n":1}\n' * 100)
        asked.clear()
        events: list[Event] = []
        summary = await sync_fleet(hosts, SyncOptions(dest=dest), events.append, pool=pool)
        assert summary.exit_code == 0, [e for e in events if isinstance(e, ErrorEvent)]
        assert pool.stats(endpoint).connects == 2 and pool._slots[endpoint].conn is not old
        # Made for the old connection, whose channel did not open, then for the new one.
        assert asked == [found, PROBE_TOOLS]
        busybox_found = _tools_noted(pool, endpoint)
        assert busybox_found is not None and not busybox_found.startswith("r")
        asked.clear()
        assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)).exit_code == 0
        assert asked == [busybox_found]
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))


async def test_a_follow_up_in_a_round_is_told_the_tools_the_round_found(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transcript rewritten after the round listed it is fetched again, whole, by a
    follow-up command in the same round. Over the kept connection the round knows the host's
    dd and head (it was told them): the follow-up is told them too, and runs neither's probe,
    where each of its batches probed dd (and head for its digests) again."""
    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0"])
    rel = SESSIONS.format(agent="agent0") + "/sess-0-0.jsonl"
    remote = fleet.path("h0", rel)
    log = fleet.root / "tools.log"
    log.write_bytes(b"")
    log.chmod(0o666)  # the hosts' login user writes it
    bindir = fleet.root / "logging-tools"
    bindir.mkdir()
    for name in ("dd", "head"):  # each writes its arguments to the log, then runs
        real = shutil.which(name)
        (bindir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
        (bindir / name).chmod(0o755)
    real_plan, real_fetch_argv = engine.make_plan, engine.fetch_argv
    rewritten = b'{"type":"message","rewritten":true}\n' * 400

    def plan_then_rewrite(*args: Any, **kwargs: Any) -> Any:
        plan = real_plan(*args, **kwargs)
        remote.write_bytes(rewritten)  # in place: the append's overlap no longer matches
        return plan

    def logged(*args: Any, **kwargs: Any) -> list[str]:  # the follow-up's command alone
        return ["env", f"PATH={bindir}:/usr/bin:/bin", *real_fetch_argv(*args, **kwargs)]

    async with SSHPool() as pool:
        assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore, pool=pool)).exit_code == 0
        found = _tools_noted(pool, hosts[0].endpoint)
        assert found is not None and found[1:] == "yy"  # GNU dd and head
        append(fleet, "h0", rel, b'{"type":"message","n":1}\n' * 10)  # planned as an append
        monkeypatch.setattr(engine, "make_plan", plan_then_rewrite)
        monkeypatch.setattr(engine, "fetch_argv", logged)
        events: list[Event] = []
        summary = await sync_fleet(hosts, SyncOptions(dest=dest), events.append, pool=pool)
    assert summary.exit_code == 0, [e for e in events if isinstance(e, ErrorEvent)]
    assert (dest / "h0" / rel).read_bytes() == rewritten
    ran = log.read_text()
    assert "dd " in ran  # the follow-up ran, and read with dd
    assert "iflag=skip_bytes,count_bytes bs=1 count=0" not in ran, ran  # dd's probe
    assert "-q -c 1 /dev/null" not in ran, ran  # head's


def _recovered(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The hosts whose files each recovery from now on looks at one by one."""
    seen: list[list[str]] = []
    real = MirrorState.recover

    def recording(self: MirrorState, hosts: Iterable[str] | None = None) -> list[str]:
        names = sorted(hosts) if hosts is not None else ["every host"]
        seen.append(names)
        return real(self, names if hosts is not None else None)

    monkeypatch.setattr(MirrorState, "recover", recording)
    return seen


async def test_a_sync_after_its_processs_own_clean_one_does_not_look_at_its_files_again(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's syncs remember what the last one left clean: the next one's recovery
    looks only at the hosts it did not sync (a dry run between, on a copy, changes nothing),
    and the mirror is still exact."""
    inv, dest = agent_setup
    recovered = _recovered(monkeypatch)
    inventory = load_inventory(inv)
    memory = SyncMemory()
    async with SSHPool() as pool:
        for names, dry_run in [
            (["h0"], False),
            (["h0", "h1"], False),
            (["h0", "h1"], False),
            (["h0", "h1"], True),
            (["h1"], False),
            (["h0", "h1"], False),
        ]:
            if names == ["h1"]:
                fleet.write("h0", f"{SESSIONS.format(agent='agent0')}/new.jsonl", b'{"n":1}\n')
            options = SyncOptions(dest=dest, dry_run=dry_run)
            hosts = inventory.select(names)
            summary = await sync_fleet(hosts, options, _ignore, pool=pool, memory=memory)
            assert summary.exit_code == 0
    assert recovered == [["h0"], ["h1"], [], [], []]
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


@pytest.mark.parametrize(
    "between", ["direct sync", "prune", "index rebuild", "failed sync", "cancelled sync"]
)
async def test_after_another_run_or_a_sync_not_clean_the_next_looks_at_every_file(
    fleet: SSHFleet,
    agent_setup: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    between: str,
) -> None:
    """Any other run that held the mirror's lock between two of the agent's syncs (a sync of
    its own, ``versions prune``, ``index rebuild``), or a sync of the agent's own that did not
    end clean (it was cancelled), leaves the next a whole recovery; a host that failed leaves
    its own files to it, not the other's, whose round was clean."""
    from remote_sync.cli import main

    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0", "h1"])
    hidden = Path(fleet.path("h0", SESSIONS.format(agent="agent1")))
    memory = SyncMemory()
    recovered = _recovered(monkeypatch)

    async def sync(code: int, token: CancelToken | None = None) -> None:
        options = SyncOptions(dest=dest)
        summary = await sync_fleet(hosts, options, _ignore, pool=pool, memory=memory, token=token)
        assert summary.exit_code == code

    async with SSHPool() as pool:
        await sync(0)
        if between == "direct sync":  # as `sync --no-agent` runs it: a pool of its own
            assert (await sync_fleet(hosts, SyncOptions(dest=dest), _ignore)).exit_code == 0
        elif between in ("prune", "index rebuild"):
            argv = ["versions", "prune", "-d", str(dest), "--keep-last", "1"]
            if between == "index rebuild":
                argv = ["index", "rebuild", "-d", str(dest)]
            assert await anyio.to_thread.run_sync(main, argv) == 0
        elif between == "failed sync":
            with unreadable(hidden):  # a directory find cannot read: h0's round fails
                await sync(1)
        else:
            token = CancelToken("cancelled")
            token.cancel()
            await sync(130, token)
        await sync(0)
        await sync(0)
    expected = [["h0", "h1"], ["h0", "h1"], []]
    if between in ("direct sync", "failed sync", "cancelled sync"):
        expected.insert(1, ["h0", "h1"] if between == "direct sync" else [])
    if between == "failed sync":
        expected[2] = ["h0"]  # h1's round was clean: only the host that failed
    assert recovered == expected
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


async def test_a_sync_whose_every_host_fails_its_local_checks_leaves_the_memory_as_it_was(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync whose every host stops on its local files (here a key file that is not there)
    leaves the destination untouched, its state not even opened: what the last clean sync
    left is still so, and the next sync's recovery skips those hosts, where the memory was
    forgotten and it looked at every file."""
    import dataclasses

    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0", "h1"])
    keyless = [
        dataclasses.replace(
            h, endpoint=dataclasses.replace(h.endpoint, identity_files=(str(dest / "no-key"),))
        )
        for h in hosts
    ]
    memory = SyncMemory()
    recovered = _recovered(monkeypatch)
    async with SSHPool() as pool:
        for which, code in [(hosts, 0), (keyless, 2), (hosts, 0)]:
            summary = await sync_fleet(
                which, SyncOptions(dest=dest), _ignore, pool=pool, memory=memory
            )
            assert summary.exit_code == code
    assert recovered == [["h0", "h1"], []]


_KILLED_MID_SYNC = """
import os, signal, sys
from remote_sync.mirror.state import MirrorState
state = MirrorState(sys.argv[1])
state.open()  # the lock taken, this open counted, as a sync's open does
with open(sys.argv[2], "ab") as out:
    out.write(b'{"type":"message","partial')  # written, never committed
    out.flush()
    os.fsync(out.fileno())
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("run", ["killed", "older version"])
async def test_bytes_another_run_left_past_a_checkpoint_are_cut_back_by_the_next_sync(
    fleet: SSHFleet,
    agent_setup: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    run: str,
) -> None:
    """Between two of the agent's syncs another run wrote past a file's checkpoint: a run of
    this version killed (SIGKILL) mid-sync, or a run of an older version, which knows
    nothing of the count of opens and left its bytes behind (a host of its failed). The next
    sync recovers every file, and that file is cut back to its checkpoint."""
    import fcntl

    inv, dest = agent_setup
    hosts = load_inventory(inv).select(["h0", "h1"])
    rel = f"{SESSIONS.format(agent='agent0')}/sess-0-0.jsonl"
    local = dest / "h0" / rel
    memory = SyncMemory()
    recovered = _recovered(monkeypatch)
    async with SSHPool() as pool:
        assert (
            await sync_fleet(hosts, SyncOptions(dest), _ignore, pool=pool, memory=memory)
        ).exit_code == 0
        size = local.stat().st_size
        if run == "killed":
            child = subprocess.run(
                [sys.executable, "-c", _KILLED_MID_SYNC, str(dest), str(local)], check=False
            )
            assert child.returncode == -signal.SIGKILL
        else:
            # Some milliseconds on: a file system whose times tick coarsely gives the lock
            # file another time than the agent's close gave it.
            time.sleep(0.05)
            fd = os.open(dest / ".remote-sync" / "lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.pwrite(fd, b"4321\n", 0)  # an older version's holder line: its pid
                with open(local, "ab") as out:
                    out.write(b'{"type":"message","partial')
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        assert local.stat().st_size > size
        with caplog.at_level(logging.WARNING, logger="remote_sync.mirror.fleet"):
            summary = await sync_fleet(hosts, SyncOptions(dest), _ignore, pool=pool, memory=memory)
        assert summary.exit_code == 0
    assert recovered == [["h0", "h1"], ["h0", "h1"]]
    assert any("cut back to the checkpoint" in r.getMessage() for r in caplog.records)
    assert local.stat().st_size == size
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


async def test_the_agent_remembers_its_clean_sync_for_the_next_and_a_dry_run_changes_nothing(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent hands its syncs what the last one left clean: the second sync it serves
    looks at no file, a dry run between notwithstanding."""
    inv, dest = agent_setup
    recovered = _recovered(monkeypatch)
    agent = Agent(inv, dest)
    async with _serving(agent, 120):
        for dry_run in (False, True, False):
            ask = functools.partial(_asked, dest, inv, hosts=["h0", "h1"], dry_run=dry_run)
            events = await anyio.to_thread.run_sync(ask)
            assert isinstance(events[-1], Summary) and events[-1].exit_code == 0
    assert recovered == [["h0", "h1"], []]
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


def test_the_recap_through_the_agent_is_a_direct_runs(agent_setup: tuple[Path, Path]) -> None:
    inv, dest = agent_setup
    assert sync_json(inv, dest, "--no-agent")[0] == 0
    agent = start_agent(inv, dest)
    try:
        shown = []
        for extra in ([], ["--no-agent"]):
            proc = cli_process(["sync", "-I", str(inv), "-d", str(dest), *extra])
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            shown.append(out)
    finally:
        stop_agent(agent)
    assert b"sync recap" in shown[0] and shown[0] == shown[1]


def test_a_concurrency_below_one_is_refused_as_a_direct_run_refuses_it(
    agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    inv, dest = agent_setup
    direct = sync_json(inv, tmp_path / "direct", "-j", "0", "--no-agent")
    agent = start_agent(inv, dest)
    try:
        through = sync_json(inv, dest, "-j", "0")
    finally:
        stop_agent(agent)
    for code, events, err in (direct, through):
        assert code == 2, err
        assert b"--concurrency must be at least 1" in err
        (error,) = events
        assert isinstance(error, ErrorEvent) and error.kind == "config"
    assert not (dest / "h0").exists()


def _count_rounds(agent: Agent) -> list[int]:
    """How many syncs ``agent`` starts from now on (scheduled, asked, dry runs), each counted
    as it starts: a list of one count, kept up to date."""
    started = [0]
    real = agent._round

    async def counted(*args: Any, **kwargs: Any) -> Summary:
        started[0] += 1
        return await real(*args, **kwargs)

    agent._round = counted  # type: ignore[method-assign]
    return started


async def test_a_sync_asked_of_a_stopping_agent_is_refused_not_run(tmp_path: Path) -> None:
    """A request served once the agent was told to stop (its syncs cancelled then) is
    refused, so that the client runs it itself, rather than run in full as the agent waits
    for it to end, or cut off when it ends."""
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[hosts]]\nname = "h0"\naddress = "127.0.0.1"\n')
    agent = Agent(inv, tmp_path / "m")
    rounds = _count_rounds(agent)
    agent.stop()
    events: list[Event] = []
    summary = await agent._sync(SyncRequest(inventory=str(inv)), [], events.append, "t", "pid 1")
    assert summary is None and rounds == [0]
    (error,) = events
    assert isinstance(error, ErrorEvent) and error.kind == "agent_refused"
    assert "stopping" in error.message


async def test_a_scheduled_round_of_an_inventory_without_hosts_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round of an inventory that lists no hosts ran a sync of none, exit 0, every
    period, where a client asking the agent (or a run of its own) is told exit 2: the
    schedule's round reports the same error, and runs nothing."""
    inv = tmp_path / "inventory.toml"
    inv.write_text("")
    events: list[Event] = []
    agent = Agent(inv, tmp_path / "m", every=600.0, scheduled=events.append)
    rounds: list[object] = []

    async def sync(request: object, hosts: object, *args: object) -> Summary:
        rounds.append(hosts)
        return _summary()

    monkeypatch.setattr(agent, "_sync", sync)
    await agent._scheduled_round()
    assert rounds == []
    (error,) = events
    assert isinstance(error, ErrorEvent) and error.kind == "config"
    assert "lists no hosts" in error.message


class _StuckClient:
    """A client that reads nothing until told to."""

    def __init__(self) -> None:
        self.reading = anyio.Event()
        self.received: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await self.reading.wait()
        self.received.append(data)


class _SilentReader:
    async def receive_until(self, delimiter: bytes, max_bytes: int) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError


def _progress(n: int) -> Progress:
    """Progress of one of many hosts (the agent throttles each host's alone)."""
    return Progress(
        host=f"h{n}",
        phase="fetching",
        files_done=n,
        files_total=10**6,
        bytes_done=n,
        bytes_total=10**9,
    )


def _summary() -> Summary:
    return Summary(
        hosts=[],
        files=FileCounts(),
        bytes=0,
        hosts_ok=1,
        hosts_failed=0,
        exit_code=0,
        dry_run=False,
        seconds=1.0,
    )


async def _serve_a_client_that_reads_late(
    agent: Agent,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emit_round: Callable[[Emit, str], Awaitable[None]],
) -> _StuckClient:
    """``agent`` serving a sync request to a client that reads nothing until the round (its
    sync replaced by ``emit_round``, given the emit and the transfer's id) has emitted all
    it does and its summary; the client, with what it then read."""
    client = _StuckClient()

    async def sync(request: object, hosts: object, emit: Emit, transfer: str, who: str) -> Summary:
        await emit_round(emit, transfer)
        emit(_summary())
        client.reading.set()
        return _summary()

    monkeypatch.setattr(agent, "_sync", sync)
    request = SyncRequest(inventory=str(tmp_path / "inventory.toml"))
    with anyio.fail_after(30):
        await agent._serve_client(client, _SilentReader(), request, [], "pid 1")  # type: ignore[arg-type]
    return client


async def test_a_client_that_does_not_read_costs_its_progress_not_unbounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(tmp_path / "inventory.toml", tmp_path / "m")

    async def emit_round(emit: Emit, transfer: str) -> None:
        for n in range(20000):  # a large fleet's progress, never read meanwhile
            emit(_progress(n))
            await anyio.sleep(0)
        emit(
            _progress(20000).__class__(**{**msgspec.structs.asdict(_progress(0)), "phase": "done"})
        )

    client = await _serve_a_client_that_reads_late(agent, tmp_path, monkeypatch, emit_round)
    events = [decode_event(line) for line in client.received]
    progress = [e for e in events if isinstance(e, Progress)]
    # What fits in the backlog, not the 20000 lines; the last progress (done) and the
    # summary are never dropped.
    assert 1 < len(progress) < 1000
    assert progress[-1].phase == "done" and isinstance(events[-1], Summary)


async def test_a_client_that_reads_nothing_of_a_large_round_has_its_sync_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "MAX_BACKLOG", 100_000)
    agent = Agent(tmp_path / "inventory.toml", tmp_path / "m")
    cancelled: list[bool] = []

    async def emit_round(emit: Emit, transfer: str) -> None:
        with agent.registry.register(transfer) as token:
            for n in range(10000):  # a dry run's line per file
                emit(Planned(host="h0", path=f"a/{n}.jsonl", action="new", bytes=n))
                await anyio.sleep(0)
            cancelled.append(token.cancelled)

    client = await _serve_a_client_that_reads_late(agent, tmp_path, monkeypatch, emit_round)
    assert cancelled == [True]
    assert sum(map(len, client.received)) <= 100_000


def test_a_request_with_a_field_the_agent_does_not_know_is_refused_not_dropped() -> None:
    """A newer client's option, unknown to this agent, was dropped without a word and the
    sync run without it: the request is refused (the client then runs the sync itself)."""
    from remote_sync.agent_protocol import decode_request
    from remote_sync.errors import AgentRefusedError

    line = b'{"type":"sync","version":1,"inventory":"/i.toml","exclude":["x"]}'
    with pytest.raises(AgentRefusedError, match="exclude"):
        decode_request(line)
    assert decode_request(line.replace(b',"exclude":["x"]', b"")).inventory == "/i.toml"


_NAMES = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=3)


@settings(max_examples=200, deadline=None)
@given(hosts=_NAMES, tags=_NAMES, inventory=st.text(st.characters(blacklist_categories=("Cs",))))
@example(hosts=["a\u2028b"], tags=["\x85"], inventory="/i\u2029.toml")
def test_a_request_is_one_line_whatever_its_names_hold(
    hosts: list[str], tags: list[str], inventory: str
) -> None:
    """A sync request is one line for any line splitter (U+0085, U+2028 and U+2029 written
    escaped, as on every JSON line we write, where they went raw), and the agent reads the
    request that was sent."""
    from remote_sync.agent_link import encode_line
    from remote_sync.agent_protocol import SyncRequest, decode_request

    request = SyncRequest(inventory=inventory, hosts=hosts, tags=tags)
    line = encode_line(_request(request))
    assert line.endswith(b"\n") and len(line.decode().splitlines()) == 1
    assert decode_request(line) == request


@settings(max_examples=200, deadline=None)
@given(
    hosts=_NAMES,
    tags=_NAMES,
    inventory=st.text(),
    dry_run=st.booleans(),
    concurrency=st.integers(-(2**70), 2**70),
    idle_timeout=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    compress=st.none() | st.booleans(),
)
def test_the_clients_request_is_the_one_the_agent_reads(
    hosts: list[str],
    tags: list[str],
    inventory: str,
    dry_run: bool,
    concurrency: int,
    idle_timeout: float | None,
    compress: bool | None,
) -> None:
    """The client writes its request without msgspec (sync_request, a mapping): the agent
    reads the very request the Struct would have sent, and a name that is no text (a lone
    surrogate) is a UnicodeEncodeError as it was (the client then runs the sync itself)."""
    from remote_sync.agent_link import encode_line, sync_request
    from remote_sync.agent_protocol import decode_request

    asked = dict(inventory=inventory, hosts=hosts, tags=tags, dry_run=dry_run, index=False)
    asked.update(concurrency=concurrency, idle_timeout=idle_timeout, compress=compress)
    try:
        struct_line = msgspec.json.encode(SyncRequest(**asked))  # type: ignore[arg-type]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            encode_line(sync_request(**asked))  # type: ignore[arg-type]
        return
    line = encode_line(sync_request(**asked))  # type: ignore[arg-type]
    assert line.endswith(b"\n") and len(line.decode().splitlines()) == 1
    assert decode_request(line) == decode_request(struct_line) == SyncRequest(**asked)  # type: ignore[arg-type]


#: JSON values of every kind, for a field of an event: the values its type takes and others.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | _TEXT
    | st.sampled_from([{}, {"new": 1}, "progress", "fetching", "summary", 0, 130, 256]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_TEXT, inner, max_size=2),
    max_leaves=4,
)
_SAMPLE_EVENTS = [
    Progress("h", "fetching", 1, 2, 3, 4),
    ErrorEvent(None, "p", "agent", "m", "h"),
    ErrorEvent("h", None, "locked", "m", "h"),
    WarningEvent("h", None, "ssh_config", "m", "h"),
    HostDone("h", "ok", FileCounts(new=1), 5, seconds=0.5),
    Summary([HostDone("h", "ok", FileCounts(), 0)], FileCounts(), 0, 1, 0, 0, False, 1.5),
    Planned("h", "a.jsonl", "new", 7),
]
_SUMMARY_LINE = encode_event(_SAMPLE_EVENTS[5]) + b"\n"


def _json_text(value: Any) -> str:
    # Infinity as a number out of range (1e999), as another program may write it.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("-Infinity", "-1e999").replace("Infinity", "1e999")


def _request(request: SyncRequest) -> dict[str, Any]:
    """``request`` as the client sends it (agent_link.sync_request's mapping)."""
    return msgspec.to_builtins(request)  # type: ignore[no-any-return]


def _events(link: AgentLink) -> list[Event]:
    """The events the agent sends on ``link`` until it closes it, decoded."""
    return [event.decoded for event in link.lines(decode_event)]


def _relayed(
    lines: list[bytes], decode: Callable[[bytes], Event] | None = None
) -> tuple[int | None, list[bytes]]:
    """What the client of the agent makes of ``lines`` sent by an agent (under ``--json``,
    or with ``decode`` the live display's): its exit code and the lines it passes on."""
    from remote_sync import agent_link
    from remote_sync.cli.sync import _agent_events

    ours, theirs = socket.socketpair()

    def agent() -> None:
        with theirs:
            theirs.sendall(b"".join(lines))

    writer = threading.Thread(target=agent)
    writer.start()
    relayed: list[bytes] = []
    try:
        with agent_link.AgentLink(ours, Path("agent.sock")) as link:
            code = _agent_events(link, lambda event: relayed.append(event.line), decode, None)
    finally:
        writer.join()
    return code, relayed


def _an_agent_error(line: bytes) -> bool:
    fields = json.loads(line)
    return (
        fields["type"] == "error" and fields["kind"] == "agent" and fields["path"] == "agent.sock"
    )


@settings(max_examples=400, deadline=None)
@given(
    event=st.sampled_from(_SAMPLE_EVENTS),
    changes=st.lists(st.tuples(_TEXT, _JSON_VALUES | st.just(...)), max_size=3),
    raw=st.sampled_from(["", "NaN", "-Infinity", '"\\ud800"', "1e999", "1.0", "[", "true"]),
    summary=st.booleans(),
)
@example(event=_SAMPLE_EVENTS[5], changes=[("exit_code", 256)], raw="", summary=False)
@example(event=_SAMPLE_EVENTS[5], changes=[("exit_code", 2**70)], raw="", summary=False)
@example(event=_SAMPLE_EVENTS[5], changes=[("exit_code", True)], raw="", summary=False)
@example(event=_SAMPLE_EVENTS[0], changes=[("phase", 1)], raw="", summary=True)
@example(event=_SAMPLE_EVENTS[1], changes=[("kind", None)], raw="", summary=False)
def test_the_client_cannot_be_crashed_or_misled_by_a_line_of_the_agent(
    event: Any, changes: list[tuple[str, Any]], raw: str, summary: bool
) -> None:
    """The client checks of the agent's lines only what it reads (the agent is our own
    process, writing from the event Structs), yet no line makes it fail or exit with a code
    no run gives: each line is passed on as it came or is an AgentError (exit 1); the
    summary's exit code, when the client takes one, is an exit status. Each line is a real
    event with fields changed (dropped: ``...``; a name not its own stands for one of its
    fields), added (``x...``), or given raw JSON text, maybe followed by a good summary
    (exit 0)."""
    fields = msgspec.to_builtins(event)
    names = [*fields, "type"]
    for name, value in changes:
        if name not in names and name[:1] != "x":
            name = names[len(name) % len(names)]
        if value is ...:
            fields.pop(name, None)
        else:
            fields[name] = value
    if raw:
        fields["exit_code" if "exit_code" in fields else "bytes" if "bytes" in fields else "x"] = (
            "RAW"
        )
    line = _json_text(fields).replace('"RAW"', raw).encode() + b"\n"
    lines = [line, _SUMMARY_LINE] if summary else [line]
    code, relayed = _relayed(lines)
    assert code is None or 0 <= code <= 255
    if relayed and _an_agent_error(relayed[-1]):
        assert code == 1 and relayed[:-1] == lines[: len(relayed) - 1]
        return
    if code is None:  # refused: the sync runs here, nothing shown
        assert fields["type"] == "error" and fields["kind"] == "agent_refused" and not summary
        return
    assert relayed == lines
    if summary:
        assert code == 0
    elif fields["type"] == "summary":
        assert code == fields["exit_code"]


def test_the_client_passes_on_what_it_does_not_read_as_it_came() -> None:
    """Lines of fields the client does not read, of any type or missing, are relayed as they
    came: where it held the agent's lines to a copy of the event Structs' schema, and took
    such a line for no event at all (the agent, our own process, writes none)."""
    lines = [
        b'{"type":"progress","host":"h","phase":"fetching","files_done":"x","new":[1]}\n',
        b'{"type":"host_done","host":7}\n',
        b'{"type":"planned"}\n',
        b'{"type":"warning","kind":null,"x":{"y":1e999}}\n',
        b'{"type":"summary","exit_code":2,"hosts":{}}\n',
    ]
    assert _relayed(lines) == (2, lines)


def test_the_live_display_takes_a_line_it_cannot_show_for_no_event() -> None:
    """The live display reads every field of an event: a line that passes what ``--json``
    reads of it but not the event's Struct (a progress line without its counts, a summary
    of too few fields) stops the sync as a line that is no event does, exit 1, where it
    reached the display's sink, which logged the decoding error and went on to exit 0."""
    lines = [
        encode_event(_SAMPLE_EVENTS[0]) + b"\n",
        b'{"type":"progress","host":"h","phase":"fetching"}\n',
        b'{"type":"summary","exit_code":0,"hosts_ok":1}\n',
    ]
    assert _relayed(lines, decode_event) == (1, lines[:1])
    assert _relayed(lines[1:], decode_event) == (1, [])
    assert _relayed(lines[2:], decode_event) == (1, [])
    assert _relayed([*lines[:1], _SUMMARY_LINE], decode_event) == (0, [*lines[:1], _SUMMARY_LINE])
    # under --json the client reads no more than the exit code: passed on as they came
    assert _relayed(lines[1:]) == (0, lines[1:])
    assert _followed(lines[1:], json=False) == 1
    assert _followed([*lines[:1], _SUMMARY_LINE], json=False) == 0


def _followed(lines: list[bytes], *, json: bool) -> int | None:
    """The exit code of the sync command's client of an agent that sends ``lines``."""
    import argparse

    from remote_sync.cli.sync import _follow_agent

    ours, theirs = socket.socketpair()
    writer = threading.Thread(target=lambda: theirs.sendall(b"".join(lines)) or theirs.close())
    writer.start()
    try:
        with AgentLink(ours, Path("agent.sock")) as link:
            args = argparse.Namespace(json=json, dest="mirror", verbose=0)
            return _follow_agent(link, args)
    finally:
        writer.join()


def test_a_line_nested_past_jsons_recursion_is_no_event_not_a_crash() -> None:
    """json's RecursionError on a line nested deeper than it goes escaped the client (a
    traceback, exit 1 without the error event): the line is no event, an AgentError."""
    deep = b'{"type":"planned","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    code, relayed = _relayed([deep, _SUMMARY_LINE])
    assert code == 1 and len(relayed) == 1 and _an_agent_error(relayed[0])


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(), min_size=4, max_size=4), host=st.booleans())
@example(texts=["\udcff", "\x00\x85\u2028\u2029\x7f", '\\"', "\U0001f600"], host=True)
def test_the_clients_own_error_line_is_the_one_a_run_here_writes(
    texts: list[str], host: bool
) -> None:
    """An error the client says itself (the agent gone, a line that is no event) is written
    without msgspec, byte for byte as a run here writes its error events."""
    from remote_sync.agent_link import AgentEvent
    from remote_sync.events import encode_event

    exc = AgentError(texts[0], host=texts[1] if host else None, path=texts[2], hint=texts[3])
    assert AgentEvent.of_error(exc).line == encode_event(ErrorEvent.from_exception(exc)) + b"\n"


@contextlib.asynccontextmanager
async def _serving(agent: Agent, timeout: float) -> AsyncIterator[anyio.abc.TaskGroup]:
    """``agent`` serving (its socket listening) in a task group, within ``timeout`` seconds
    in all, and told to stop on the way out."""
    ready = anyio.Event()
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.serve, ready.set)
            await ready.wait()
            try:
                yield tg
            finally:
                agent.stop()


def _asked(dest: Path, inv: Path, *, hosts: list[str] | None = None, dry_run: bool) -> list[Event]:
    """The events the agent of ``dest`` answers a sync request of ``inv``'s ``hosts`` with
    (blocking: run it in a thread beside the agent)."""
    from remote_sync import agent_link

    link = agent_link.connect(dest)
    assert link is not None
    with link:
        link.send(_request(SyncRequest(inventory=str(inv), hosts=hosts or [], dry_run=dry_run)))
        return _events(link)


def _one_host_inventory(tmp_path: Path) -> Path:
    """An inventory of one host never reached: for tests that stop before any sync."""
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[hosts]]\nname = "h0"\naddress = "127.0.0.1"\n')
    return inv


async def test_a_symbolic_link_at_the_agents_lock_is_refused_not_followed(tmp_path: Path) -> None:
    """``agent.lock`` was opened following a symbolic link planted at its name: the file
    it named was created (or locked) in its place. It is refused, naming the lock file, and
    what the link names is left as it was (not made)."""
    dest = tmp_path / "m"
    (dest / ".remote-sync").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (dest / ".remote-sync" / "agent.lock").symlink_to(target)
    agent = Agent(_one_host_inventory(tmp_path), dest)
    agent.stop()  # serve takes its lock, then returns at once
    with pytest.raises(DestinationError, match="lock file is a symbolic link") as caught:
        await agent.serve()
    assert caught.value.path == str(dest / ".remote-sync" / "agent.lock")
    assert "remove it" in caught.value.hint
    assert not target.exists() and not (dest / SOCKET).exists()
    # A FIFO there is no lock file either, and is not waited on.
    (dest / ".remote-sync" / "agent.lock").unlink()
    os.mkfifo(dest / ".remote-sync" / "agent.lock")
    with anyio.fail_after(10), pytest.raises(DestinationError, match="lock file is no regular"):
        await agent.serve()


async def test_a_lock_file_that_cannot_be_locked_is_a_mirror_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without flock (ENOLCK) made the agent's lock raise a bare OSError, which
    the command line does not catch (a traceback); it is a MirrorError naming the lock file,
    as the mirror's own lock says it."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    dest = tmp_path / "m"
    agent = Agent(_one_host_inventory(tmp_path), dest)
    agent.stop()
    with pytest.raises(MirrorError, match="cannot lock the agent's lock file") as caught:
        await agent.serve()
    assert caught.value.path == str(dest / ".remote-sync" / "agent.lock")
    assert "flock" in caught.value.hint


async def test_a_symbolic_link_at_the_agents_state_directory_is_refused(tmp_path: Path) -> None:
    """The agent made ``DIR/.remote-sync`` with ``mkdir(exist_ok=True)``, which takes a link
    to a directory for one: its lock and socket went where the link pointed. Refused, as a
    sync refuses it, nothing made there."""
    dest = tmp_path / "m"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / ".remote-sync").symlink_to(elsewhere)
    agent = Agent(_one_host_inventory(tmp_path), dest)
    agent.stop()
    with pytest.raises(DestinationError, match="state directory is a symbolic link") as caught:
        await agent.serve()
    assert caught.value.path == str(dest / ".remote-sync")
    assert list(elsewhere.iterdir()) == []


async def test_an_agent_for_a_destination_inside_another_mirror_is_refused_first(
    tmp_path: Path,
) -> None:
    """A sync refuses a destination inside another mirror; the agent made its control
    directory and lock there first (in the other mirror's host directory, taken for that
    host's files by its next sync). It is refused as a sync refuses it, nothing made."""
    outer = tmp_path / "outer"
    (outer / ".remote-sync").mkdir(parents=True)
    (outer / ".remote-sync" / "state.db").write_bytes(b"")
    (outer / "h0").mkdir()
    inv = _one_host_inventory(tmp_path)
    for dest in (outer / "h0" / "m", outer / ".remote-sync" / "m"):
        agent = Agent(inv, dest)
        agent.stop()
        with pytest.raises(ConfigError, match="inside the mirror at") as caught:
            await agent.serve()
        assert caught.value.path == str(dest)
        assert not dest.exists()
    assert sorted(p.name for p in (outer / "h0").iterdir()) == []


async def test_a_stop_cuts_off_a_sync_its_cancel_does_not_end_after_stop_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop waited without limit for the syncs it cancelled: one the registry's cancel does
    not reach (stuck outside the scopes bound to its token) held the agent for ever. It waits
    ``stop_timeout`` seconds, then cuts the sync off and says so, its socket removed."""
    started = anyio.Event()

    async def stuck(*args: object, **kwargs: object) -> Summary:
        started.set()
        await anyio.sleep(3600)  # registers nothing: the registry's cancel misses it
        raise AssertionError

    monkeypatch.setattr(agent_module, "sync_fleet", stuck)
    dest = tmp_path / "m"
    agent = Agent(
        _one_host_inventory(tmp_path),
        dest,
        every=3600.0,
        stop_timeout=0.5,
        scheduled=lambda e: None,
    )
    caught: list[BaseException] = []

    async def serve() -> None:
        try:
            await agent.serve()
        except AgentError as exc:
            caught.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await started.wait()
            stopped = anyio.current_time()
            agent.stop()
    assert 0.4 < anyio.current_time() - stopped < 10
    (error,) = caught
    assert isinstance(error, AgentError) and error.kind == "agent"
    assert "1 sync still running 0.5 s after the stop, cut off" in error.message
    assert "consistent up to each host's last checkpoint" in error.hint
    assert not (dest / SOCKET).exists()


def test_a_stop_the_cut_off_cannot_end_leaves_at_once(tmp_path: Path) -> None:
    """What even the cut-off cannot end (an ssh_config's ``Match exec`` command, run in a
    worker thread: a sync stuck before it reaches its host) does not keep the agent's process
    for ever: it leaves, exit 1, saying so, ``--stop-timeout`` and a grace after the stop."""
    config = tmp_path / "ssh_config"
    config.write_text('Match exec "sleep 25"\n  Port 22\n')
    inv = tmp_path / "inventory.toml"
    inv.write_text(
        f'[[hosts]]\nname = "h0"\naddress = "127.0.0.1"\nssh_config = "{config}"\n'
        f'root = "{tmp_path / "root"}"\n'
    )
    agent = start_agent(inv, tmp_path / "m", "--every", "1h", "--stop-timeout", "1s")
    until_running(agent.pid, b"sleep 25")  # the scheduled round's pre-flight, in Match exec
    stopped = time.monotonic()
    code, err = stop_agent(agent)
    took = time.monotonic() - stopped
    assert code == 1, err
    assert b"still running" not in err  # the cut-off never came to its end
    assert b"did not stop 11 s after it was told to: leaving at once" in err
    assert 10 < took < 30


async def test_a_host_gone_from_the_inventory_has_its_connection_closed_at_the_next_sync(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """A host removed from the inventory (or whose entry changed: another endpoint) kept its
    connection until ``--persist`` closed it, though no sync would use it again: the next
    sync, which reads the inventory again, closes it. The hosts still listed keep theirs."""
    inv, dest = agent_setup
    endpoints = {host.name: host.endpoint for host in load_inventory(inv).hosts}
    agent = Agent(inv, dest)
    request = SyncRequest(inventory=str(inv))

    async def synced() -> Summary:
        events: list[Event] = []
        summary = await agent._sync(request, agent._hosts(request), events.append, "t", "test")
        assert summary is not None and summary.exit_code == 0, events
        return summary

    async with _serving(agent, 120):
        await synced()
        pool = agent._pools[False]
        conns = {name: pool._slots[e].conn for name, e in endpoints.items()}
        assert all(c is not None and not c.is_closed() for c in conns.values())
        write_inventory(fleet, inv, ["h0"])
        await synced()
        assert endpoints["h1"] not in pool._slots
        old = conns["h1"]
        assert old is not None and old.is_closed()
        assert pool._slots[endpoints["h0"]].conn is conns["h0"]
        assert pool.stats(endpoints["h0"]).connects == 1


def _agent_with_its_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: Callable[..., Awaitable[Summary]]
) -> tuple[Agent, Callable[[], list[Event]]]:
    """An agent of one host whose syncs are ``sync``, and what asks it for a dry run (from
    a worker thread) and returns the events it answered."""
    inv, dest = _one_host_inventory(tmp_path), tmp_path / "m"
    agent = Agent(inv, dest)
    monkeypatch.setattr(agent, "_sync", sync)

    def events_of() -> list[Event]:
        return _asked(dest, inv, dry_run=True)

    return agent, events_of


async def test_a_sync_closes_connections_by_its_own_reading_of_the_inventory(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept pools' connections to hosts gone from the inventory are closed by what the
    sync about to run read of it, not by whichever request read it last: a request that
    came while the sync closed them (refused, the sync holding the mirror) and read an
    inventory edited since (h1 gone) had the sync's next pool close h1's connection, which
    that sync then opened again. The edit counts from the next sync, which closes it."""
    from remote_sync import agent_link

    inv, dest = agent_setup
    endpoints = {host.name: host.endpoint for host in load_inventory(inv).hosts}
    agent = Agent(inv, dest)
    request = SyncRequest(inventory=str(inv), compress=True)
    refused: list[Event] = []

    async def synced() -> None:
        events: list[Event] = []
        summary = await agent._sync(request, agent._hosts(request), events.append, "t", "test")
        assert summary is not None and summary.exit_code == 0, events

    def another_request() -> list[Event]:
        link = agent_link.connect(dest)
        assert link is not None
        with link:
            link.send(_request(SyncRequest(inventory=str(inv))))
            return _events(link)

    async with _serving(agent, 120):
        await synced()
        pool = agent._pools[True]
        kept = pool._slots[endpoints["h1"]].conn
        assert kept is not None and not kept.is_closed()
        plain = agent._pools[False]
        close_plain = plain.close_except

        async def edited_meanwhile(listed: Collection[Endpoint]) -> None:
            await close_plain(listed)
            if not refused:
                write_inventory(fleet, inv, ["h0"])
                refused.extend(await anyio.to_thread.run_sync(another_request))

        monkeypatch.setattr(plain, "close_except", edited_meanwhile)
        await synced()
        (error,) = refused
        assert isinstance(error, ErrorEvent) and error.kind == "locked"
        assert pool._slots[endpoints["h1"]].conn is kept and not kept.is_closed()
        assert pool.stats(endpoints["h1"]).connects == 1
        await synced()  # reads the edited inventory: h0 alone
        assert endpoints["h1"] not in pool._slots and kept.is_closed()


async def test_requests_past_the_limit_are_refused_as_busy_and_run_by_their_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests (dry runs beside a sync, each with a round and a pool of its own) were served
    in any number: past ``MAX_REQUESTS`` at once one is refused as busy, kind
    ``agent_refused`` (its client then runs the sync itself); once one ends, the next is
    served."""

    monkeypatch.setattr(agent_module, "MAX_REQUESTS", 1)
    release = anyio.Event()
    began = anyio.Event()
    calls: list[bool] = []

    async def sync(request: object, hosts: object, emit: Emit, transfer: str, who: str) -> Summary:
        calls.append(True)
        if len(calls) == 1:
            began.set()
            await release.wait()
        emit(_summary())
        return _summary()

    agent, events_of = _agent_with_its_sync(tmp_path, monkeypatch, sync)
    async with _serving(agent, 30) as tg:
        first: list[list[Event]] = []

        async def run_first() -> None:
            first.append(await anyio.to_thread.run_sync(events_of))

        tg.start_soon(run_first)
        await began.wait()
        (refused,) = await anyio.to_thread.run_sync(events_of)
        assert isinstance(refused, ErrorEvent) and refused.kind == "agent_refused"
        assert "is busy: it serves 1 requests already" in refused.message
        release.set()
        while not first:
            await anyio.sleep(0.05)
        assert isinstance(first[0][-1], Summary)
        assert isinstance((await anyio.to_thread.run_sync(events_of))[-1], Summary)
        assert len(calls) == 2


async def test_a_client_that_sends_no_request_counts_against_the_limit_until_it_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sends nothing was not counted against ``MAX_REQUESTS`` (only a
    request read was): any number of them held a task each beside the requests served. It
    now counts from its connection, so a request made meanwhile is refused as busy, and it
    is closed after ``REQUEST_TIMEOUT``, when the next request is served."""

    monkeypatch.setattr(agent_module, "MAX_REQUESTS", 1)
    monkeypatch.setattr(agent_module, "REQUEST_TIMEOUT", 1.0)
    calls: list[bool] = []

    async def sync(request: object, hosts: object, emit: Emit, transfer: str, who: str) -> Summary:
        calls.append(True)
        emit(_summary())
        return _summary()

    agent, events_of = _agent_with_its_sync(tmp_path, monkeypatch, sync)
    dest = agent.dest

    async with _serving(agent, 30):
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            silent.connect(str(dest / SOCKET))
            connected = time.monotonic()
            with anyio.move_on_after(0.5):  # accepted (the code before never counts it)
                while agent._requests == 0:
                    await anyio.sleep(0.01)
            (refused,) = await anyio.to_thread.run_sync(events_of)
            assert isinstance(refused, ErrorEvent) and refused.kind == "agent_refused"
            assert "is busy" in refused.message and calls == []
            assert await anyio.to_thread.run_sync(silent.recv, 1) == b""  # closed by it
            assert 0.9 < time.monotonic() - connected < 10
        finally:
            silent.close()
        assert isinstance((await anyio.to_thread.run_sync(events_of))[-1], Summary)
        assert calls == [True] and agent._requests == 0


async def test_serve_agent_runs_the_agent_until_its_transfer_is_cancelled(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """The library's entry point to the agent: it serves ``remote-sync sync`` as the command
    does, and a cancel of its transfer through the registry stops it as SIGTERM does (the
    socket removed, the call returned); its stop cancels none of the registry's other
    transfers. Bad arguments are refused before anything is made."""
    from remote_sync import api
    from remote_sync.cancel import CancelRegistry
    from remote_sync.errors import ArgumentError

    inv, dest = agent_setup
    for bad in ({"persist": -1}, {"stop_timeout": float("nan")}, {"every": 0}, {"emit": 3}):
        with pytest.raises(ArgumentError, match=next(iter(bad))):
            await api.serve_agent(inv, dest, **bad)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="registry must be a CancelRegistry"):
        api.serve_agent(inv, dest, registry="r")  # type: ignore[arg-type]
    assert not dest.exists()
    registry = CancelRegistry()
    ready = anyio.Event()
    with anyio.fail_after(120), registry.register("other") as other:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: api.serve_agent(
                    inv, dest, ready=ready.set, registry=registry, transfer_id="agent"
                )
            )
            await ready.wait()
            assert stat.S_ISSOCK((dest / SOCKET).stat().st_mode)
            before = accepted(fleet, "h0")
            for _ in range(2):  # through the agent: one connection for both
                code, events, err = await anyio.to_thread.run_sync(lambda: sync_json(inv, dest))
                assert code == 0 and b"agent" not in err, err
                assert [e.hosts_ok for e in events if isinstance(e, Summary)] == [2]
            assert accepted(fleet, "h0") == before + 1
            assert registry.cancel("agent")
        assert not other.cancelled
    assert not (dest / SOCKET).exists()
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


def _listing_stuck(event: Event) -> bool:
    return isinstance(event, Progress) and event.host == "stuck" and event.phase == "listing"


async def _until(found: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = anyio.current_time() + timeout
    while not found():
        if anyio.current_time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await anyio.sleep(0.05)


async def test_a_scheduled_sync_due_while_the_previous_one_runs_is_skipped_and_logged(
    fleet: SSHFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduled round that outlasts ``every`` (here one host never answers) was followed
    at once by the next, due while it ran, and nothing was logged: those due meanwhile are
    skipped, said in the log, and the next starts on the period's time after them."""
    make_openclaw_tree(fleet, "h0")
    inv, dest = stuck_inventory(fleet, tmp_path), tmp_path / "m"
    events: list[Event] = []
    every = 1.0
    agent = Agent(inv, dest, every=every, scheduled=events.append)
    starts: list[float] = []
    ended: list[float] = []
    scheduled_round = agent._scheduled_round

    async def timed_round() -> None:
        starts.append(anyio.current_time())
        try:
            await scheduled_round()
        finally:
            ended.append(anyio.current_time())

    agent._scheduled_round = timed_round  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="remote_sync.agent")
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.serve)
            await _until(lambda: any(map(_listing_stuck, events)), "the first round")
            await anyio.sleep(2.3)  # two periods pass while it runs
            agent.registry.cancel_all("the round ends")  # the round ends, cancelled
            await _until(lambda: any(isinstance(e, Summary) for e in events), "its summary")
            await _until(lambda: len(starts) == 2, "the next round", 10)
            agent.stop()
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped and all("the previous scheduled sync was still running" in m for m in skipped)
    # The next round started on the schedule: not before the first time due after the long
    # one ended (the code before started it then), and a whole number of periods after the
    # first round, however late a loaded machine woke it (never early).
    due = starts[0] + math.ceil((ended[0] - starts[0]) / every) * every
    assert starts[1] >= due - 0.001, (starts, ended)
    periods = (starts[1] - starts[0]) / every
    assert periods > 2 and (periods - math.floor(periods)) * every < 0.5, (starts, ended)


async def test_while_a_scheduled_sync_runs_a_request_is_locked_out_and_a_dry_run_runs_beside(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """One sync at a time, the schedule's included: a client's request while a scheduled
    round runs gets the lock's error (exit 75 for ``sync``), and a dry run, which takes no
    lock, runs beside it."""

    make_openclaw_tree(fleet, "h0")
    inv, dest = stuck_inventory(fleet, tmp_path), tmp_path / "m"
    events: list[Event] = []
    agent = Agent(inv, dest, every=3600.0, scheduled=events.append)

    def asked(dry_run: bool) -> list[Event]:
        return _asked(dest, inv, hosts=["h0"], dry_run=dry_run)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.serve)
            await _until(lambda: any(map(_listing_stuck, events)), "the scheduled round")
            (locked,) = await anyio.to_thread.run_sync(asked, False)
            assert isinstance(locked, ErrorEvent) and locked.kind == "locked"
            assert "is running a sync for the schedule" in locked.message
            dry = await anyio.to_thread.run_sync(asked, True)
            assert isinstance(dry[-1], Summary) and dry[-1].dry_run
            assert (dry[-1].exit_code, dry[-1].hosts_ok) == (0, 1)
            assert not any(isinstance(e, Summary) for e in events)  # still running
            # On a connection of its own: the kept pool's one to h0 is the round's alone.
            (h0,) = load_inventory(inv).select(["h0"])
            assert agent._pools[False].stats(h0.endpoint).connects == 1
            assert accepted(fleet, "h0") == 2
            agent.stop()


async def test_a_scheduled_sync_due_while_a_requests_sync_runs_is_skipped_and_logged(
    fleet: SSHFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from remote_sync import agent_link

    make_openclaw_tree(fleet, "h0")
    inv, dest = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"]), tmp_path / "m"
    events: list[Event] = []
    agent = Agent(inv, dest, every=2.0, scheduled=events.append)
    rounds = _count_rounds(agent)
    caplog.set_level(logging.WARNING, logger="remote_sync.agent")
    link = None
    client: list[Event] = []

    def request() -> None:
        nonlocal link
        link = agent_link.connect(dest)
        assert link is not None
        link.send(_request(SyncRequest(inventory=str(inv), hosts=["stuck"])))
        client.extend(event.decoded for event in link.lines(decode_event))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.serve)
            await _until(lambda: any(isinstance(e, Summary) for e in events), "the first round")
            add_stuck_host(inv)  # read again for the request's sync
            async with anyio.create_task_group() as asking:
                asking.start_soon(anyio.to_thread.run_sync, request)
                await _until(lambda: any(map(_listing_stuck, client)), "the request's sync")
                await _until(lambda: "skipped" in caplog.text, "the skip's log line", 10)
                assert link is not None
                link.cancel()
            assert isinstance(client[-1], Summary) and client[-1].exit_code == 130
            assert rounds == [2]  # the first round and the request's
            agent.stop()
    (skipped,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert re.fullmatch(r"scheduled sync skipped: a sync for pid \d+ is running", skipped)


def test_requests_of_another_protocol_or_for_a_host_not_in_the_inventory_run_directly(
    fleet: SSHFleet,
    agent_setup: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The agent refuses a request naming a host its inventory lacks (an ad-hoc one) and one
    of another protocol version (another release's client); each client then runs the sync
    itself, on connections of its own, saying so once."""
    from remote_sync import agent_link
    from remote_sync.cli import main

    inv, dest = agent_setup
    agent = start_agent(inv, dest)
    try:
        assert sync_json(inv, dest)[0] == 0  # through the agent, which keeps its connections
        kept = accepted(fleet, "h0")
        # An ad-hoc host beside h0 (a port nothing listens on): the client syncs both.
        code, events, err = sync_json(inv, dest, "h0", "127.0.0.1:1")
        assert err.decode().count("the agent cannot serve this sync") == 1, err
        assert b"'127.0.0.1:1' not in the agent's inventory" in err
        (summary,) = [e for e in events if isinstance(e, Summary)]
        assert (code, summary.hosts_ok, summary.hosts_failed) == (1, 1, 1)
        assert accepted(fleet, "h0") == kept + 1  # the client's own connection
        # Another protocol version: the same, and the sync goes well.
        encode_line = agent_link.encode_line
        monkeypatch.setattr(
            agent_link,
            "encode_line",
            lambda message: encode_line(message).replace(b'"version":1,', b'"version":2,', 1),
        )
        code = main(["sync", "-I", str(inv), "-d", str(dest), "--json"])
        out, err_text = capsys.readouterr()
        assert code == 0, err_text
        assert err_text.count("the agent cannot serve this sync") == 1, err_text
        assert "the request speaks protocol version 2, this agent 1" in err_text
        summaries = [e for e in map(decode_event, out.splitlines()) if isinstance(e, Summary)]
        assert [s.hosts_ok for s in summaries] == [2]
        assert accepted(fleet, "h0") == kept + 2
    finally:
        assert stop_agent(agent)[0] == 0
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


def test_a_socket_path_longer_than_a_unix_address_is_reached_through_its_directory(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """A ``--dest`` so deep that its socket's path does not fit in ``sockaddr_un`` (108
    bytes): the agent binds it and the client connects to it through a descriptor of its
    directory, and the syncs go through the agent as anywhere else."""
    inv, dest = agent_setup
    dest = dest / ("d" * 60) / ("e" * 60)
    dest.mkdir(parents=True)
    assert len(os.fsencode(dest / SOCKET)) > 108
    with socket.socket(socket.AF_UNIX) as plain, pytest.raises(OSError):
        plain.bind(str(dest / "plain.sock"))  # what a bind of the path itself does
    agent = start_agent(inv, dest)
    try:
        mode = (dest / SOCKET).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        code, _, err = sync_json(inv, dest)
        assert code == 0 and b"agent" not in err, err
        once = accepted(fleet, "h0")
        code, events, err = sync_json(inv, dest)
        assert code == 0 and b"agent" not in err, err
        assert accepted(fleet, "h0") == once  # the agent's kept connection
        assert [e.hosts_ok for e in events if isinstance(e, Summary)] == [2]
    finally:
        assert stop_agent(agent)[0] == 0
    assert not (dest / SOCKET).exists()
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


def test_the_client_talks_to_no_agent_of_another_uid(agent_setup: tuple[Path, Path]) -> None:
    """A socket at the agent's place that another uid listens on (here uid 65534's, moved
    there) is no agent of ours: the client sends it nothing, and runs the sync itself
    without a word, as when no agent answers."""
    if os.getuid() != 0:
        pytest.skip("needs root to listen as another uid")
    inv, dest = agent_setup
    (dest / ".remote-sync").mkdir(parents=True)
    top = Path(tempfile.mkdtemp())  # where the other uid may bind (pytest's are root's)
    read, write = os.pipe()
    try:
        os.chown(top, 65534, -1)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            try:
                os.close(read)
                os.setuid(65534)
                server = socket.socket(socket.AF_UNIX)
                server.bind(str(top / "agent.sock"))
                server.listen(1)
                os.write(write, b"listening\n")
                server.settimeout(60)
                conn, _ = server.accept()
                conn.settimeout(5)
                got = b""
                try:
                    while chunk := conn.recv(65536):  # until the client closes
                        got += chunk
                except TimeoutError:
                    pass
                os.write(write, b"got %d bytes" % len(got))
            except BaseException as exc:
                os.write(write, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as said:
            assert said.readline() == b"listening\n"
            os.rename(top / "agent.sock", dest / SOCKET)
            code, events, err = sync_json(inv, dest)
            heard = said.read()
        os.waitpid(child, 0)
    finally:
        shutil.rmtree(top)
    assert code == 0 and b"agent" not in err, err
    assert [e.hosts_ok for e in events if isinstance(e, Summary)] == [2]
    assert heard == b"got 0 bytes"


def _requests_logged(err: bytes, pid: int) -> list[bytes]:
    """The lines of a ``-v`` agent's log about a request of the client ``pid``."""
    return [line for line in err.splitlines() if f"pid {pid}: ".encode() in line]


def test_ad_hoc_options_or_no_inventory_sync_directly_sending_the_agent_nothing(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """With ad-hoc options (``--format``, ``--root``) or without ``--inventory``, the client
    asks the agent nothing (its log has no request of that pid) and runs the sync itself,
    on a connection of its own, without a word about the agent."""
    inv, dest = agent_setup
    agent = start_agent(inv, dest, verbose=True)
    clients: list[int] = []
    try:
        code, _, err = sync_json(inv, dest, "h0")  # through the agent: its log has it
        assert code == 0, err
        kept = accepted(fleet, "h0")
        # An ad-hoc host (a port nothing listens on) beside h0, with --format and --root.
        adhoc = ["--format", "openclaw", "--root", "/nowhere"]
        client = cli_process(
            ["sync", "-I", str(inv), "-d", str(dest), "--json", "h0", "127.0.0.1:1", *adhoc]
        )
        out, err = client.communicate(timeout=120)
        clients.append(client.pid)
        assert client.returncode == 1, err  # the ad-hoc host unreachable, h0 synced
        (summary,) = [e for e in map(decode_event, out.splitlines()) if isinstance(e, Summary)]
        assert (summary.hosts_ok, summary.hosts_failed) == (1, 1)
        assert b"agent" not in err, err
        assert accepted(fleet, "h0") == kept + 1  # the client's own connection
        # No --inventory, no option: h1 (not in the mirror yet) as an ssh_config alias, read
        # from the client's ~/.ssh/config.
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        shutil.copy(fleet.ssh_config, home / ".ssh" / "config")
        before = accepted(fleet, "h1")
        client = cli_process(
            ["sync", "-d", str(dest), "--json", "h1"], env=dict(os.environ, HOME=str(home))
        )
        out, err = client.communicate(timeout=120)
        clients.append(client.pid)
        # Reached, by the client itself: its root, the format's default, is not on the host.
        assert client.returncode == 1 and b"agent" not in err, err
        errors = [e for e in map(decode_event, out.splitlines()) if isinstance(e, ErrorEvent)]
        assert [e.host for e in errors] == ["h1"] and ".openclaw" in errors[0].message, out
        assert accepted(fleet, "h1") == before + 1
    finally:
        code, log = stop_agent(agent)
    assert code == 0, log
    # One request logged, the first client's; none of the others.
    assert len(re.findall(rb"pid \d+: sync 1 hosts ok, 0 failed, .*, exit 0", log)) == 1, log
    assert [_requests_logged(log, pid) for pid in clients] == [[], []], log


def test_a_request_to_a_stopping_agent_is_run_by_its_client(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """While a stopped agent waits for its scheduled round to wind down (a host's ssh_config
    ``Match exec`` command still running in a worker thread), a request is refused as the
    agent stopping, and its client runs the sync itself (here a dry run), saying so once."""
    config = tmp_path / "slow_config"
    config.write_text('Match exec "sleep 6"\n  Port 22\n')
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    with open(inv, "a") as out:
        out.write(
            f'[[hosts]]\nname = "slow"\naddress = "127.0.0.1"\nssh_config = "{config}"\n'
            f'root = "{tmp_path / "root"}"\n'
        )
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    agent = start_agent(inv, dest, "--every", "1h")
    try:
        until_running(agent.pid, b"sleep 6")  # the scheduled round's pre-flight, in Match exec
        agent.send_signal(signal.SIGTERM)
        # The agent says nothing when it takes the stop: asked until it answers as stopping.
        # One asked before (a loaded machine) is a dry run the agent serves itself, whole or
        # cancelled by the stop, its client running nothing.
        deadline = time.monotonic() + 30
        while True:
            assert agent.poll() is None  # the stop waits for the round
            # The refusal as stopping says the agent was still there when asked; it may end
            # while the client's own dry run goes on (the Match exec's six seconds are up).
            code, events, err = sync_json(inv, dest, "h0", "--dry-run")
            if b"is stopping" in err or time.monotonic() > deadline:
                break
            assert code in (0, 130) and b"cannot serve" not in err, err
            time.sleep(0.05)
    finally:
        # Not stop_agent: a second SIGTERM would make it leave at once (exit 130).
        _, log = agent.communicate(timeout=60)
    assert agent.returncode == 0, log
    assert code == 0, err
    assert err.decode().count("the agent cannot serve this sync") == 1, err
    assert b"is stopping" in err, err
    planned = [e for e in events if isinstance(e, Planned)]
    assert len(planned) == len(expected_tree(fleet.path("h0")))  # the dry run, run here
    assert [e.hosts_ok for e in events if isinstance(e, Summary)] == [1]


def test_prune_and_index_rebuild_run_between_the_agents_syncs(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An agent idle between syncs (its connections kept) holds no lock of the mirror:
    ``versions prune`` and ``index rebuild`` run, and the next sync goes through the agent
    on its kept connection."""
    from remote_sync.cli import main

    inv, dest = agent_setup
    rel = f"{SESSIONS.format(agent='agent0')}/sess-0-0.jsonl"
    agent = start_agent(inv, dest)
    try:
        for n in range(3):  # two rewrites: two versions kept
            if n:
                fleet.write("h0", rel, session_bytes(random.Random(n), 3, start=100 * n))
            code, _, err = sync_json(inv, dest)
            assert code == 0, err
        kept = accepted(fleet, "h0")
        capsys.readouterr()
        code = main(["versions", "prune", "-d", str(dest), "--keep-last", "1", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        pruned = json.loads(out)
        assert [(r["path"], r["version"]) for r in pruned["removed"]] == [(rel, 1)]
        assert main(["index", "rebuild", "-d", str(dest), "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["sessions"] == 20, err
        code, _, err = sync_json(inv, dest)
        assert code == 0 and b"agent" not in err, err
        assert accepted(fleet, "h0") == kept  # through the agent, on its connection
    finally:
        assert stop_agent(agent)[0] == 0
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))


def _disconnects(fleet: SSHFleet, name: str) -> int:
    """SSH connections of ``name`` whose client closed them, as sshd logs it."""
    return fleet.host(name).log_path.read_text(errors="replace").count("Disconnected from user")


def test_persist_closes_an_idle_connection_and_the_next_request_connects_again(
    fleet: SSHFleet, agent_setup: tuple[Path, Path]
) -> None:
    """``--persist``: the agent itself closes a connection unused that long, no request
    needed (sshd logs the disconnect), and the next request makes a new one."""
    inv, dest = agent_setup
    agent = start_agent(inv, dest, "--persist", "2s")
    try:
        before, gone = accepted(fleet, "h0"), _disconnects(fleet, "h0")
        code, _, err = sync_json(inv, dest, "h0")
        assert code == 0, err
        assert accepted(fleet, "h0") == before + 1
        deadline = time.monotonic() + 20
        while _disconnects(fleet, "h0") == gone:
            assert time.monotonic() < deadline, "the idle connection was never closed"
            time.sleep(0.2)
        code, _, err = sync_json(inv, dest, "h0")
        assert code == 0 and b"agent" not in err, err
        assert accepted(fleet, "h0") == before + 2
    finally:
        assert stop_agent(agent)[0] == 0


def test_the_command_exits_1_when_its_stop_cut_a_sync_off(tmp_path: Path) -> None:
    """A sync the stop's cancel does not end (a fault makes it deaf to it) is cut off
    ``--stop-timeout`` after the stop: the agent's process says so and exits 1, its socket
    removed, well before the grace after which it would leave at once."""
    dest = tmp_path / "m"
    agent = start_agent(
        _one_host_inventory(tmp_path),
        dest,
        *("--every", "1h", "--stop-timeout", "1s"),
        fault="deaf_agent_sync",
    )
    assert agent.stderr is not None
    while (line := agent.stderr.readline()) and DEAF_SYNC_STARTED.encode() not in line:
        pass  # until the scheduled round, begun at once, is deaf
    assert line, agent.stderr.read()
    stopped = time.monotonic()
    code, err = stop_agent(agent)
    took = time.monotonic() - stopped
    assert code == 1, err
    assert b"1 sync still running 1 s after the stop, cut off" in err, err
    assert b"leaving at once" not in err and b"Traceback" not in err, err
    assert 0.9 < took < 10
    assert not (dest / SOCKET).exists()


def test_a_changed_ssh_config_setting_connects_anew_at_the_next_request(
    fleet: SSHFleet, agent_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """The agent reads the ssh_config again for every sync: a setting the pool applies
    changed (StrictHostKeyChecking, IdentityFile: a copy of the key, a Ciphers line where
    there was none) makes the next request connect anew; another Ciphers list alone does
    not, nor does nothing changed."""
    inv, dest = agent_setup
    config = fleet.ssh_config

    def connections() -> int:
        code, _, err = sync_json(inv, dest, "h0")
        assert code == 0 and b"agent" not in err, err
        return accepted(fleet, "h0")

    def change(old: str, new: str) -> None:
        text = config.read_text()
        assert old in text
        config.write_text(text.replace(old, new))

    agent = start_agent(inv, dest)
    try:
        first = connections()
        assert connections() == first
        change("StrictHostKeyChecking yes", "StrictHostKeyChecking accept-new")
        assert connections() == first + 1
        key = tmp_path / "key_copy"
        shutil.copy(fleet.client_key, key)
        os.chmod(key, 0o600)
        change(f"IdentityFile {fleet.client_key}\n", f"IdentityFile {key}\n")
        assert connections() == first + 2
        change("Host h0\n", "Host h0\n    Ciphers aes128-ctr\n")
        assert connections() == first + 3
        change("Ciphers aes128-ctr", "Ciphers aes256-ctr")
        assert connections() == first + 3
    finally:
        assert stop_agent(agent)[0] == 0


def test_an_agent_out_of_descriptors_pauses_accepting_and_goes_on(tmp_path: Path) -> None:
    """Connections past ``MAX_REQUESTS`` still each hold a descriptor while their request is
    awaited, so a flood of them (here with the agent's descriptors limited to a few more
    than it holds) reaches the limit: ``accept`` then fails with EMFILE, which ended the
    agent in a traceback (anyio's ``serve`` raised it). It now says so in its log, accepts
    again once connections have closed, and serves the next request."""
    import resource

    from remote_sync import agent_link

    inv, dest = _one_host_inventory(tmp_path), tmp_path / "m"
    agent = start_agent(inv, dest)
    flood: list[socket.socket] = []
    try:
        held = len(os.listdir(f"/proc/{agent.pid}/fd"))
        resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (held + 4, held + 4))
        for _ in range(12):  # past the limit, into the listen backlog (16)
            flood.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            flood[-1].connect(str(dest / SOCKET))
        assert agent.stderr is not None
        line = agent.stderr.readline()  # the agent's warning, or its traceback's first line
        assert b"cannot accept a connection" in line, line + agent.stderr.read()
        for silent in flood:
            silent.close()
        flood.clear()
        link = agent_link.connect(dest)
        assert link is not None
        with link:
            link.send(_request(SyncRequest(inventory=str(tmp_path / "other.toml"))))
            (refused,) = _events(link)
        assert isinstance(refused, ErrorEvent) and refused.kind == "agent_refused"
        assert agent.poll() is None
    finally:
        for silent in flood:
            silent.close()
        code, err = stop_agent(agent)
    assert code == 0 and b"Traceback" not in err, err


async def test_a_scheduled_rounds_sink_that_fails_loses_its_event_not_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled round that cannot start (its inventory edited to nothing) reports one
    error to the schedule's sink; the command line's sink raises when stdout cannot be
    written (a full disk). That error went unguarded and ended the agent in a traceback: the
    event is dropped and logged now, and the agent serves on until it is stopped."""
    told: list[Event] = []

    def full_disk(event: Event) -> None:
        told.append(event)
        raise OSError(28, "No space left on device")

    def no_hosts(request: SyncRequest) -> object:
        raise ConfigError("the inventory lists no hosts")

    inv, dest = _one_host_inventory(tmp_path), tmp_path / "m"
    agent = Agent(inv, dest, every=3600.0, scheduled=full_disk)
    monkeypatch.setattr(agent, "_hosts", no_hosts)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.serve)
            while not told:
                await anyio.sleep(0.02)
            await anyio.sleep(0.1)  # what the raise would have ended meanwhile
            assert agent.socket.exists()
            agent.stop()
    (event,) = told
    assert isinstance(event, ErrorEvent) and "lists no hosts" in event.message


def test_the_agents_socket_lives_in_the_mirrors_own_state_directory() -> None:
    """agent_link names the mirror's state directory itself (importing the mirror package
    would cost the client its start-up): the two names must not drift apart."""
    from remote_sync import agent_link
    from remote_sync.mirror import control

    assert agent_link.CONTROL_DIR == control.CONTROL_DIR


def test_a_request_holding_a_name_that_is_not_utf8_runs_here_not_a_traceback(
    tmp_path: Path,
) -> None:
    """An inventory path of bytes that are not UTF-8 cannot go into the agent's JSON request:
    the sync runs in this process instead, where an encoding error came out of main."""
    import socket as socket_module

    from remote_sync import agent_link
    from remote_sync.cli import main

    dest = tmp_path / "mirror"
    where = agent_link.socket_path(dest)
    where.parent.mkdir(parents=True)
    inventory = tmp_path / os.fsdecode(b"inv-\xff.toml")
    inventory.write_text('[[hosts]]\nname = "h"\naddress = "127.0.0.1:1"\n')
    listener = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        with agent_link.address(where) as address:
            listener.bind(address)
        listener.listen(1)  # an agent that answers: connect() succeeds
        code = main(["sync", "h", "--inventory", str(inventory), "--dest", str(dest)])
    finally:
        listener.close()
    assert code == 1  # the run here: its one host unreachable
