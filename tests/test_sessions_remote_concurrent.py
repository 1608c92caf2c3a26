"""A remote listing reads its hosts at once (real sshd), as ``sync`` does.

Every assertion is on the order of what arrives (batches, progress and error events), never
on how long it took: a host whose remote command waits for a gate file the test creates
stands for a slow host, and a TCP listener that never answers for a host that hangs.

- A held-back host does not hold back the others: their rows come first.
- Hosts that cannot be reached (refused, or silent until the test cuts them off) fail while
  the others give all their rows; the failures are listed in inventory order.
- A cancel (registry, the caller's cancel scope, or closing the stream early) stops every
  host at once: no task left, no socket left open, no remote command left running.
- A caller that leaves its loop without closing the stream (no ``aclosing``) goes on
  uncancelled, and the hosts stop once the stream is dropped.
- ``concurrency=1`` reads the hosts one after another, in inventory order.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from synchelp import write_inventory
from test_sessions_cli import openclaw_session
from test_ssh_core import process_alive

from remote_sync import api, cli
from remote_sync.cancel import CancelRegistry
from remote_sync.errors import ConfigError, RemoteSyncError, TransferCancelledError
from remote_sync.events import ErrorEvent, Progress
from remote_sync.index import remote as remote_module
from remote_sync.inventory import Host, load_inventory

SESSIONS = "agents/main/sessions"
#: How long a gated host waits for its gate at most (in steps of 0.05 s) before it lists
#: anyway: long enough that its rows coming first means it was waited for.
GATE_STEPS = 300


def sessions(fleet: Any, name: str, count: int) -> None:
    for i in range(count):
        fleet.write(name, f"{SESSIONS}/{name}-s{i}.jsonl", openclaw_session(f"{name}-s{i}", 3))


def gate_host(fleet: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[Path, Path]:
    """Host ``name``'s listing waits until its gate file exists (or GATE_STEPS ran out).
    Returns the gate and the file where the waiting remote shell writes its pid."""
    gate, pid = fleet.path(name, "gate"), fleet.path(name, "waiting.pid")
    wait = (
        f"echo $$ > {shlex.quote(str(pid))}; i=0; "
        f"while [ ! -e {shlex.quote(str(gate))} ] && [ $i -lt {GATE_STEPS} ]; do "
        'sleep 0.05; i=$((i + 1)); done; exec "$@"'
    )
    plain = remote_module.list_argv

    def argv(host: Host) -> list[str]:
        return ["sh", "-c", wait, "sh", *plain(host)] if host.name == name else plain(host)

    monkeypatch.setattr(remote_module, "list_argv", argv)
    return gate, pid


@contextmanager
def silent_host() -> Iterator[tuple[socket.socket, str]]:
    """A listener that never accepts: a connection to it hangs in the SSH handshake until the
    listener is closed (which resets it). Yields it and its inventory entry."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        entry = f'name = "mute"\naddress = "127.0.0.1"\nport = {port}\nroot = "/srv/agent"\n\n'
        yield listener, "[[hosts]]\n" + entry


def inventory(fleet: Any, tmp_path: Path, names: list[str], first: str = "") -> list[Host]:
    """The fleet's hosts ``names``, after the entry ``first`` when given."""
    text = write_inventory(fleet, tmp_path / "inv.toml", names).read_text()
    head, sep, rest = text.partition("[[hosts]]")
    (tmp_path / "inv.toml").write_text(head + first + sep + rest)
    return list(load_inventory(tmp_path / "inv.toml").hosts)


def open_sockets() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


async def until(check: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    """Wait until ``check()`` is true; ``bound`` seconds bound a hang, they measure nothing."""
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {bound} s"
        await anyio.sleep(0.05)


def others() -> set[asyncio.Task[Any]]:
    """The event loop's tasks but the current one."""
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_a_held_back_host_does_not_hold_back_the_others(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h0, first in the inventory, lists only once a row of h1 has arrived: h1's rows come
    first (read one host after another, they came after all of h0's), each batch holds one
    host's rows, and every row comes."""
    sessions(fleet, "h0", 3)
    sessions(fleet, "h1", 3)
    gate, _ = gate_host(fleet, monkeypatch, "h0")
    hosts = inventory(fleet, tmp_path, ["h0", "h1"])

    async def consume() -> list[list[str]]:
        seen: list[list[str]] = []
        stream = api.stream_sessions(remote=True, hosts=hosts, batch_size=1)
        async with aclosing(stream) as batches:
            async for batch in batches:
                seen.append([row.host for row in batch])
                if batch[0].host == "h1":
                    gate.touch()
        return seen

    seen = anyio.run(consume)
    assert seen[0] == ["h1"], seen
    assert all(len(set(batch)) == 1 for batch in seen), seen
    assert sorted(host for batch in seen for host in batch) == ["h0"] * 3 + ["h1"] * 3


@pytest.mark.parametrize("concurrency", [None, 2])
def test_unreachable_hosts_fail_while_the_others_give_every_row(
    ssh_fleet: Any, tmp_path: Path, concurrency: int | None
) -> None:
    """Before the live hosts: one that hangs in its handshake (cut off by the test once every
    live row has arrived) and one whose sshd is down. Both fail, reported as they fail and
    listed in inventory order; the live hosts' rows all come before the hanging one fails."""
    fleet = ssh_fleet(3)
    fleet.stop("h0")
    sessions(fleet, "h1", 4)
    sessions(fleet, "h2", 2)
    with silent_host() as (listener, entry):
        hosts = inventory(fleet, tmp_path, ["h0", "h1", "h2"], first=entry)
        order: list[tuple[str, str]] = []

        def emit(event: object) -> None:
            if isinstance(event, ErrorEvent):
                order.append(("error", event.host or ""))
            elif isinstance(event, Progress) and event.phase == "done":
                order.append(("done", event.host))

        async def consume() -> list[RemoteSyncError]:
            errors: list[RemoteSyncError] = []
            rows = 0
            given: dict[str, Any] = {} if concurrency is None else {"concurrency": concurrency}
            stream = api.stream_sessions(
                remote=True, hosts=hosts, emit=emit, errors=errors, **given
            )
            async with aclosing(stream) as batches:
                async for batch in batches:
                    order.extend(("row", row.host) for row in batch)
                    rows += len(batch)
                    if rows == 6:
                        listener.close()  # resets the connection waiting in its queue
            return errors

        errors = anyio.run(consume)
    assert [exc.host for exc in errors] == ["mute", "h0"], errors
    assert sorted(host for kind, host in order if kind == "row") == ["h1"] * 4 + ["h2"] * 2
    assert order.index(("error", "mute")) > max(
        i for i, (kind, _) in enumerate(order) if kind == "row"
    ), order
    assert ("error", "h0") in order
    assert sorted(host for kind, host in order if kind == "done") == ["h0", "h1", "h2", "mute"]


Ready = Callable[[], Awaitable[None]]


async def _stop_by_registry(stream: Any, registry: CancelRegistry, ready: Ready) -> None:
    with pytest.raises(TransferCancelledError):
        async with aclosing(stream) as batches:
            async for _batch in batches:
                await ready()
                assert registry.cancel("listing")


async def _stop_by_scope(stream: Any, registry: CancelRegistry, ready: Ready) -> None:
    with anyio.CancelScope() as scope:
        async with aclosing(stream) as batches:
            async for _batch in batches:
                await ready()
                scope.cancel()
    assert scope.cancelled_caught


async def _stop_by_closing(stream: Any, registry: CancelRegistry, ready: Ready) -> None:
    async with aclosing(stream) as batches:
        async for _batch in batches:
            await ready()
            break


@pytest.mark.parametrize("stop", [_stop_by_registry, _stop_by_scope, _stop_by_closing])
def test_a_stop_mid_listing_stops_every_host(
    fleet: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[[Any, CancelRegistry, Ready], Awaitable[None]],
) -> None:
    """Stopped after h1's first batch, while h0's command waits for a gate that never opens
    and a third host hangs in its handshake: nothing goes on, in this process or on h0."""
    sessions(fleet, "h0", 2)
    sessions(fleet, "h1", 20)
    _, pid_file = gate_host(fleet, monkeypatch, "h0")
    with silent_host() as (_, entry):
        hosts = inventory(fleet, tmp_path, ["h0", "h1"], first=entry)

        async def h0_waits() -> None:
            await until(pid_file.exists, "h0's command started")

        async def run() -> None:
            registry = CancelRegistry()
            before = open_sockets()
            stream = api.stream_sessions(
                remote=True,
                hosts=hosts,
                batch_size=1,
                errors=[],
                registry=registry,
                transfer_id="listing",
            )
            await stop(stream, registry, h0_waits)
            assert registry.active() == []
            assert others() == set()
            assert open_sockets() == before
            waiting = int(pid_file.read_text())
            await until(lambda: not process_alive(waiting), "h0's remote command stopped")

        anyio.run(run)


def test_a_loop_left_without_closing_the_stream_goes_on_and_the_hosts_stop(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that breaks out of its loop without ``aclosing`` (PEP 789): asyncio closes the
    dropped stream in a task of its own, and that cleanup used to cancel the caller's task
    (a cancel scope of the stream's was held across its yield). Now the caller goes on, and
    the hosts stop: no task, no socket, no remote command left."""
    sessions(fleet, "h0", 2)
    sessions(fleet, "h1", 20)
    _, pid_file = gate_host(fleet, monkeypatch, "h0")
    hosts = inventory(fleet, tmp_path, ["h0", "h1"])

    async def run() -> None:
        before = open_sockets()
        async for _batch in api.stream_sessions(remote=True, hosts=hosts, batch_size=1):
            await until(pid_file.exists, "h0's command started")
            break
        await until(lambda: not others() and open_sockets() == before, "the listing stopped")
        waiting = int(pid_file.read_text())
        await until(lambda: not process_alive(waiting), "h0's remote command stopped")
        await anyio.sleep(0.1)  # the caller's own awaits still work

    anyio.run(run)


def test_concurrency_1_reads_the_hosts_one_after_another(ssh_fleet: Any, tmp_path: Path) -> None:
    """One host at a time, in inventory order: each host's progress from listing to done
    before the next host's, and its rows before the next host's. (A host's last batch is
    handed over as it is sent, so its "done" may come before the caller has that batch.)"""
    fleet = ssh_fleet(3)
    names = ["h2", "h0", "h1"]
    for name in names:
        sessions(fleet, name, 2)
    hosts = inventory(fleet, tmp_path, names)
    progress: list[tuple[str, str]] = []
    rows: list[str] = []

    def emit(event: object) -> None:
        if isinstance(event, Progress) and event.phase != "fetching":
            progress.append((event.phase, event.host))

    async def consume() -> None:
        stream = api.stream_sessions(
            remote=True, hosts=hosts, batch_size=1, emit=emit, concurrency=1
        )
        async with aclosing(stream) as batches:
            async for batch in batches:
                rows.extend(row.host for row in batch)

    anyio.run(consume)
    assert progress == [(phase, name) for name in names for phase in ("listing", "done")]
    assert rows == [name for name in names for _ in range(2)]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_a_bad_concurrency_is_refused_before_any_host(tmp_path: Path, bad: Any) -> None:
    inv = tmp_path / "inv.toml"
    inv.write_text('[[hosts]]\nname = "box"\naddress = "box.invalid"\n')
    hosts = load_inventory(inv).hosts

    async def first() -> None:
        async with aclosing(api.stream_sessions(remote=True, hosts=hosts, concurrency=bad)) as s:
            async for _ in s:
                pass

    with pytest.raises(ConfigError, match="concurrency must be a whole number"):
        anyio.run(first)


def test_the_cli_passes_concurrency_and_checks_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sessions list --remote --concurrency N`` reads N hosts at once (default: sync's); the
    option is refused without --remote and below 1."""
    from remote_sync.ssh.remote import CONCURRENCY  # sync's default

    given: list[int] = []

    async def fake(**kwargs: Any) -> Any:
        given.append(kwargs["concurrency"])
        if False:
            yield []

    monkeypatch.setattr(api, "stream_sessions", fake)
    inv = tmp_path / "inv.toml"
    inv.write_text('[[hosts]]\nname = "box"\naddress = "box.invalid"\n')
    remote = ["sessions", "list", "--remote", "-I", str(inv), "--json"]
    assert cli.main([*remote, "--concurrency", "3"]) == 0
    assert cli.main(remote) == 0
    assert given == [3, CONCURRENCY]
    assert cli.main([*remote, "-j", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
    assert cli.main(["sessions", "list", "--dest", str(tmp_path), "--concurrency", "2"]) == 2
    assert "--concurrency applies only with --remote" in capsys.readouterr().err
