"""The streaming SSH core against real OpenSSH servers: pool, exec_streaming, cancellation."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest
from sshfleet import SSHFleet

from remote_sync.cancel import CancelRegistry
from remote_sync.errors import (
    AuthenticationError,
    ChannelRefusedError,
    ConfigError,
    HostKeyError,
    HostUnreachableError,
    IdleTimeoutError,
    RemoteCommandError,
    RemoteSyncError,
    TransferCancelledError,
)
from remote_sync.ssh import filecache, hostkeys
from remote_sync.ssh import pool as pool_module
from remote_sync.ssh import stream as stream_module
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.flow import ConsumerCredit
from remote_sync.ssh.options import refuse_unprotected_keys
from remote_sync.ssh.pool import JumpsRead, PoolSettings, SSHPool
from remote_sync.ssh.stream import RemoteStream, _Channel, exec_streaming, run_command

MiB = 1024 * 1024


def _through_relay(fleet: SSHFleet) -> Endpoint:
    """Host h0 reached through bench/delay_relay.py (no delay) as the ProxyCommand."""
    relay = Path(__file__).resolve().parent.parent / "bench" / "delay_relay.py"
    return Endpoint(
        address="127.0.0.1",
        port=fleet.host("h0").port,
        user=fleet.user,
        ssh_config=(),
        identity_files=(str(fleet.client_key),),
        known_hosts=str(fleet.known_hosts),
        proxy_command=f"{sys.executable} {relay} --delay-ms 0 %h %p",
    )


def endpoint(fleet: SSHFleet, name: str, **kwargs: object) -> Endpoint:
    """The endpoint a user would write: an ssh_config alias, with that config and known_hosts."""
    fields: dict[str, object] = {
        "address": fleet.host(name).alias,
        "ssh_config": (str(fleet.ssh_config),),
        "known_hosts": str(fleet.known_hosts),
    }
    fields.update(kwargs)
    return Endpoint(**fields)  # type: ignore[arg-type]


def direct_endpoint(fleet: SSHFleet, name: str, identity: str) -> Endpoint:
    """The host by address and port with this one key, no ssh_config (nor its keys)."""
    return Endpoint(
        address="127.0.0.1",
        port=fleet.host(name).port,
        user=fleet.user,
        ssh_config=(),
        identity_files=(identity,),
        known_hosts=str(fleet.known_hosts),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        await anyio.sleep(0.05)
    return False


async def test_stream_is_byte_identical_and_reports_exit(fleet: SSHFleet) -> None:
    data = os.urandom(3 * MiB + 17)
    fleet.write("h0", "blob", data)
    async with SSHPool() as pool:
        async with exec_streaming(
            pool, endpoint(fleet, "h0"), ["cat", str(fleet.path("h0", "blob"))]
        ) as s:
            got = await s.read_all()
        assert got == data
        assert s.exit_status == 0
        assert s.remote_pid and s.remote_pid > 1


async def test_nonzero_exit_carries_status_and_stderr_tail(fleet: SSHFleet) -> None:
    argv = ["sh", "-c", "printf out; echo 'it broke' >&2; exit 3"]
    chunks: list[bytes] = []
    async with SSHPool() as pool:
        with pytest.raises(RemoteCommandError) as info:
            async with exec_streaming(pool, endpoint(fleet, "h0"), argv, host="kitchen") as s:
                async for chunk in s:
                    chunks.append(chunk)
    assert b"".join(chunks) == b"out"
    assert info.value.exit_status == 3
    assert info.value.stderr_tail == b"it broke\n"
    assert "kitchen" in str(info.value) and "it broke" in str(info.value)


async def test_a_command_gone_before_its_stdin_is_written_reports_its_own_end(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that ends at once (a root that does not exist) can close its channel before
    the client, slowed by a loaded machine, writes the stdin it was started with: asyncssh
    then raises BrokenPipeError ("Channel not open for sending"), and the host failed with an
    "internal error" instead of the command's own exit and message."""
    opened = stream_module._open_channel

    async def open_then_wait_for_the_close(*args: Any) -> Any:
        chan = await opened(*args)
        await args[-1]().closed.wait()  # the command has ended and its channel closed
        return chan

    monkeypatch.setattr(stream_module, "_open_channel", open_then_wait_for_the_close)
    argv = ["sh", "-c", "echo 'no such root' >&2; exit 2"]
    async with SSHPool() as pool:
        with pytest.raises(RemoteCommandError) as info:
            async with exec_streaming(
                pool, endpoint(fleet, "h0"), argv, host="kitchen", stdin=b"paths\n"
            ) as s:
                await s.read_all()
        assert info.value.exit_status == 2 and "no such root" in str(info.value)
        async with exec_streaming(
            pool, endpoint(fleet, "h0"), ["true"], stdin=b"x", keep_stdin_open=True
        ) as s:
            assert await s.read_all() == b""
            s.send(b"more", end=True)  # dropped: the command is gone
        assert s.exit_status == 0


async def test_argv_is_data_never_code(fleet: SSHFleet, tmp_path: Path) -> None:
    marker = fleet.path("h0", "pwned")
    hostile = f"$(touch {marker}); `touch {marker}` ' \" \n -rf *"
    async with SSHPool() as pool:
        out = await run_command(pool, endpoint(fleet, "h0"), ["printf", "%s", hostile])
    assert out == hostile.encode()
    assert not marker.exists()


async def test_pool_reuses_one_connection_for_many_operations(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool() as pool:
        for i in range(30):
            assert await run_command(pool, ep, ["echo", str(i)]) == f"{i}\n".encode()
        # A second inventory entry reaching the same machine the same way is the same endpoint.
        assert await run_command(pool, endpoint(fleet, "h0"), ["true"]) == b""
        stats = pool.stats(ep)
    assert stats.connects == 1
    assert stats.operations == 31


async def test_channel_cap_holds_under_50_concurrent_streams(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    fleet.write("h0", "mid", os.urandom(256 * 1024))
    results: list[bytes] = []
    async with SSHPool(PoolSettings(channels_per_host=8)) as pool:

        async def one(i: int) -> None:
            argv = ["sh", "-c", f"sleep 0.3; cat {fleet.path('h0', 'mid')}; echo {i}"]
            results.append(await run_command(pool, ep, argv))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        stats = pool.stats(ep)
    assert len(results) == 50  # asking for more than the cap waits, never fails
    assert stats.channels_peak == 8
    assert stats.connects == 1


async def _peak_allocations_of_slow_pull(pool: SSHPool, ep: Endpoint, size: int) -> int:
    """Pull ``size`` bytes, pausing now and then like a slow consumer; return the peak."""
    gc.collect()
    tracemalloc.start()
    try:
        received = 0
        async with exec_streaming(pool, ep, ["head", "-c", str(size), "/dev/zero"]) as s:
            async for chunk in s:
                received += len(chunk)
                if received % (16 * MiB) < len(chunk):
                    # Slow now and then: the remote must wait for us, not pile up here.
                    await anyio.sleep(0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    return peak


@pytest.mark.parametrize("credit", ["follows the consumer", "pause/resume fallback"])
async def test_slow_consumer_of_1_gib_keeps_allocations_bounded(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch, credit: str
) -> None:
    """Backpressure: memory is bounded by the window and one chunk, not by the output size."""
    if credit == "pause/resume fallback":  # what an asyncssh with other internals gets
        monkeypatch.setattr(ConsumerCredit, "install", classmethod(lambda cls, *args: None))
    ep = endpoint(fleet, "h0")
    async with SSHPool(PoolSettings(window=4 * MiB)) as pool:
        await run_command(pool, ep, ["true"])  # connect outside the measurement
        small = await _peak_allocations_of_slow_pull(pool, ep, 256 * MiB)
        large = await _peak_allocations_of_slow_pull(pool, ep, 1024 * MiB)
    if credit == "follows the consumer":
        # The window re-opens only for what the consumer took: one window, one chunk.
        assert large < 4 * MiB + 2 * MiB, f"1 GiB pull peaked at {large / MiB:.1f} MiB"
    else:
        # asyncssh re-opens the whole window when it hands data over after a resume, so up to
        # two windows can be held, plus the high-water queue and the chunk.
        assert large < 2 * 4 * MiB + 4 * MiB, f"1 GiB pull peaked at {large / MiB:.1f} MiB"
    assert large < small + 2 * MiB, f"grew with size: {small / MiB:.1f} -> {large / MiB:.1f} MiB"


async def test_stderr_beyond_the_window_does_not_stall_the_stream(fleet: SSHFleet) -> None:
    """stderr counts against the window too; nobody takes it from the queue, so it is
    credited on arrival, or a command that says a lot on stderr would block forever."""
    ep = endpoint(fleet, "h0")
    argv = ["sh", "-c", "head -c 8388608 /dev/zero >&2; echo done"]
    async with SSHPool(PoolSettings(window=1 * MiB, window_budget=0)) as pool:
        with anyio.fail_after(30):
            assert await run_command(pool, ep, argv) == b"done\n"


async def test_channel_windows_share_the_pool_budget(fleet: SSHFleet) -> None:
    """One channel alone gets the full window; many at once share the budget (floored)."""
    settings = PoolSettings(window=16 * MiB, window_budget=16 * MiB, min_window=1 * MiB)
    seen: list[int] = []
    async with SSHPool(settings) as pool:
        eps = [endpoint(fleet, "h0"), endpoint(fleet, "h1")]
        async with pool.session(eps[0]):
            seen.append(pool.channel_window())
        async with anyio.create_task_group() as tg:
            release = anyio.Event()

            async def hold(ep: Endpoint) -> None:
                async with pool.session(ep):
                    seen.append(pool.channel_window())
                    await release.wait()

            for i in range(8):
                tg.start_soon(hold, eps[i % 2])
            while pool.stats(eps[0]).channels_open + pool.stats(eps[1]).channels_open < 8:
                await anyio.sleep(0.01)
            seen.append(pool.channel_window())
            release.set()
    assert seen[0] == 16 * MiB
    assert seen[-1] == 2 * MiB  # 8 channels open
    assert min(seen) >= 1 * MiB
    unshared = SSHPool(PoolSettings(window_budget=0))
    assert unshared.channel_window() == PoolSettings().window


async def test_a_streams_credit_asks_for_its_share_only_when_channels_open_or_close(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credit settles on every chunk taken; the pool's share of the moment (2 µs each:
    75 ms of a 1 GiB pull) is worked out again only when a channel of the pool opened or
    closed, and the credit still follows it both ways: smaller while another channel is open,
    the whole window again once it closed."""
    asked: list[int] = []
    real = SSHPool.channel_window

    def counted(self: SSHPool, endpoint: Endpoint | None = None) -> int:
        asked.append(real(self, endpoint))
        return asked[-1]

    monkeypatch.setattr(SSHPool, "channel_window", counted)
    ep = endpoint(fleet, "h0")
    settings = PoolSettings(window=1 * MiB, window_budget=1 * MiB, min_window=64 * 1024)
    async with SSHPool(dataclasses.replace(settings, window_rate=0)) as pool:
        await run_command(pool, ep, ["true"])  # connected outside the count
        asked.clear()
        chunks = 0
        async with (
            contextlib.AsyncExitStack() as other,
            exec_streaming(pool, ep, ["head", "-c", str(64 * MiB), "/dev/zero"]) as stream,
        ):
            async for _ in stream:
                chunks += 1
                if chunks == 20:  # another channel opens: the share halves
                    await other.enter_async_context(pool.session(ep))
                elif chunks == 40:  # and closes: the whole window again
                    await other.aclose()
    assert chunks > 80, chunks
    # The open's window, the first settle's share, one after each change of the channels.
    assert asked == [1 * MiB, 1 * MiB, MiB // 2, 1 * MiB], (len(asked), asked[:8])


async def test_windows_are_sized_to_the_round_trip_of_a_direct_connection(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loopback needs no 16 MiB window; behind a proxy the RTT is unknown, so it keeps it."""
    settings = PoolSettings(window=16 * MiB, window_floor=4 * MiB, window_rate=512 * MiB)
    direct = endpoint(fleet, "h0")
    proxied = _through_relay(fleet)
    async with SSHPool(settings) as pool:
        assert pool.round_trip(direct) is None  # not connected yet
        await run_command(pool, direct, ["true"])
        await run_command(pool, proxied, ["true"])
        rtt = pool.round_trip(direct)
        assert rtt is not None and 0 < rtt < 0.2
        assert pool.channel_window(direct) == 4 * MiB
        assert pool.round_trip(proxied) is None
        assert pool.channel_window(proxied) == 16 * MiB
        async with pool.session(direct), pool.session(direct), pool.session(direct):
            # Short round trips: the floor is what absorbs the client's pauses, a total.
            assert pool.channel_window(direct) == 4 * MiB // 3
            assert pool.channel_window(proxied) == 16 * MiB // 3  # the budget's share
        # A long round trip gets the window that keeps the link busy, up to ``window``.
        for seconds, window in ((0.001, 4 * MiB), (0.02, int(0.02 * 512 * MiB)), (0.05, 16 * MiB)):
            monkeypatch.setattr(pool_module, "tcp_round_trip", lambda sock, s=seconds: s)
            assert pool.channel_window(direct) == window
    monkeypatch.undo()
    unsized = SSHPool(dataclasses.replace(settings, window_rate=0))
    assert unsized.channel_window(direct) == 16 * MiB
    a, b = socket.socketpair()  # not TCP: no RTT to read
    with a, b:
        assert pool_module.tcp_round_trip(a) is None
    assert pool_module.tcp_round_trip(None) is None


async def test_the_rate_sized_window_is_shared_by_the_channels_open_at_once(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``window_rate`` is the client's pace, not each link's: three channels open at once
    divide it, as they divide the floor. Each one used to get the whole rate's window, so a
    fleet's streams held up to eight times what the client can take in that round trip."""
    settings = PoolSettings(window=16 * MiB, window_floor=1 * MiB, window_rate=512 * MiB)
    direct = endpoint(fleet, "h0")
    async with SSHPool(settings) as pool:
        await run_command(pool, direct, ["true"])  # connected: the RTT is known
        monkeypatch.setattr(pool_module, "tcp_round_trip", lambda sock: 0.02)
        alone = int(0.02 * 512 * MiB)
        assert pool.channel_window(direct) == alone
        async with pool.session(direct), pool.session(direct), pool.session(direct):
            # Not the budget's share (16 MiB / 3): the rate's.
            assert pool.channel_window(direct) == alone // 3


async def _read_slowly(stream: RemoteStream, channel: _Channel) -> tuple[int, int]:
    """Read ``stream`` to its end slower than loopback sends it, so that its channel holds
    what the credit allows: the bytes received, and the most the channel held queued once
    8 MiB were in (what was credited before that point has drained by then)."""
    received = 0
    held_later = 0
    async for chunk in stream:
        received += len(chunk)
        if received > 8 * MiB:
            held_later = max(held_later, channel.queued)
        await anyio.sleep(0.005)
    return received, held_later


async def test_a_channel_gives_up_its_window_as_others_open(fleet: SSHFleet) -> None:
    """A window is fixed when the channel opens, but the credit follows the pool's share: a
    stream that opened alone (4 MiB on loopback) holds no more than a quarter of it once three
    more channels are open, so a fleet's buffers stay within the floor, not a floor per host."""
    ep = endpoint(fleet, "h0")
    settings = PoolSettings(window=16 * MiB, window_floor=4 * MiB, window_rate=512 * MiB)
    async with SSHPool(settings) as pool:
        await run_command(pool, ep, ["true"])  # connected: the RTT is known
        assert pool.channel_window(ep) == 4 * MiB
        argv = ["head", "-c", str(48 * MiB), "/dev/zero"]
        async with exec_streaming(pool, ep, argv) as stream:
            channel = stream._channel
            assert channel is not None and channel.credit is not None
            with anyio.fail_after(30):
                while channel.queued < 3 * MiB:  # alone, the remote fills the whole window
                    await anyio.sleep(0.01)
            alone = channel.queued
            async with pool.session(ep), pool.session(ep), pool.session(ep):
                assert pool.channel_window(ep) == 1 * MiB
                received, held_later = await _read_slowly(stream, channel)
        assert received == 48 * MiB
    assert alone >= 3 * MiB
    # One share, plus a packet that may be on its way when the credit is computed.
    assert 0 < held_later <= 1 * MiB + 64 * 1024, f"held {held_later / MiB:.2f} MiB"


async def test_a_channel_takes_a_larger_window_as_the_others_close(fleet: SSHFleet) -> None:
    """The credit followed the pool's share only downwards, capped by the window the channel
    opened with: a stream opened while three other channels were open (1 MiB of a 4 MiB
    floor) kept 1 MiB after they closed, a quarter of what a stream alone gets. It now takes
    the share of the moment, so it holds the whole 4 MiB once alone."""
    ep = endpoint(fleet, "h0")
    settings = PoolSettings(window=16 * MiB, window_floor=4 * MiB, window_rate=512 * MiB)
    async with SSHPool(settings) as pool:
        await run_command(pool, ep, ["true"])  # connected: the RTT is known
        argv = ["head", "-c", str(48 * MiB), "/dev/zero"]
        others = contextlib.AsyncExitStack()
        async with others:
            for _ in range(3):
                await others.enter_async_context(pool.session(ep))
            async with exec_streaming(pool, ep, argv) as stream:
                channel = stream._channel
                assert channel is not None and channel.credit is not None
                assert channel.credit.window == 1 * MiB  # opened as one of four
                with anyio.fail_after(30):
                    while channel.queued < 1 * MiB - 64 * 1024:
                        await anyio.sleep(0.01)
                await others.aclose()
                assert pool.channel_window(ep) == 4 * MiB
                received, held_later = await _read_slowly(stream, channel)
        assert received == 48 * MiB
    # The whole share of a channel alone, not the quarter it opened with (one packet more
    # may be on its way when the credit is computed).
    assert 3 * MiB < held_later <= 4 * MiB + 64 * 1024, f"held {held_later / MiB:.2f} MiB"


async def test_idle_timeout_fires_on_silence_not_on_long_streams(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool() as pool:
        started = time.monotonic()
        with pytest.raises(IdleTimeoutError) as info:
            async with exec_streaming(pool, ep, ["sleep", "30"], idle_timeout=0.5) as s:
                await s.read_all()
        assert time.monotonic() - started < 10
        assert "no output for 0.5 s" in str(info.value)
        # A stream that keeps flowing for longer than the idle timeout is fine.
        argv = ["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done"]
        async with exec_streaming(pool, ep, argv, idle_timeout=0.6) as s:
            assert await s.read_all() == b"1\n2\n3\n4\n5\n6\n"


def _relay_pids(port: int) -> list[int]:
    """The delay_relay.py processes forwarding to ``port``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"delay_relay.py") for a in argv) and str(port).encode() in argv:
            pids.append(int(entry.name))
    return pids


async def test_an_idle_timeout_on_a_stalled_link_fails_soon_after_it(fleet: SSHFleet) -> None:
    """When the link itself stalls, the stream fails at its idle timeout, not 10 s later
    (a gentle stop of the remote command waited for answers that could not come); the
    connection is cut, and the next operation connects anew."""
    ep = _through_relay(fleet)
    async with SSHPool() as pool:
        argv = ["sh", "-c", "echo start; sleep 30"]
        started = 0.0
        stopped: list[int] = []
        try:
            with pytest.raises(IdleTimeoutError):
                async with exec_streaming(pool, ep, argv, idle_timeout=1.0, host="h0") as s:
                    async for chunk in s:
                        assert chunk == b"start\n"
                        stopped = _relay_pids(fleet.host("h0").port)
                        for pid in stopped:
                            os.kill(pid, signal.SIGSTOP)  # the link goes silent
                        started = time.monotonic()
            assert stopped and time.monotonic() - started < 4.5
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert await run_command(pool, ep, ["echo", "again"]) == b"again\n"
        assert pool.stats(ep).connects == 2


async def test_cancel_midway_stops_remote_and_keeps_connection(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    registry = CancelRegistry()
    argv = ["head", "-c", str(4096 * MiB), "/dev/zero"]
    async with SSHPool() as pool:
        received = 0
        cancelled_at = 0.0
        with pytest.raises(TransferCancelledError) as info:
            async with exec_streaming(
                pool, ep, argv, transfer_id="big", registry=registry, host="h0"
            ) as s:
                async for chunk in s:
                    received += len(chunk)
                    if received >= 64 * MiB and not cancelled_at:
                        cancelled_at = time.monotonic()
                        assert registry.cancel("big")
        latency = time.monotonic() - cancelled_at
        assert latency < 1.0, latency
        assert received < 1024 * MiB
        assert info.value.host == "h0"
        assert s.remote_pid is not None
        assert await wait_gone(s.remote_pid), "remote process still running after cancel"
        assert "big" not in registry and len(registry) == 0  # entries die with the transfer
        # The same connection serves the next operation.
        assert await run_command(pool, ep, ["echo", "still here"]) == b"still here\n"
        assert pool.stats(ep).connects == 1
        assert pool.stats(ep).channels_open == 0


async def test_cancel_stops_a_process_that_ignores_sigterm(fleet: SSHFleet) -> None:
    """The fallback: TERM is ignored, so the group is killed over a fresh channel."""
    ep = endpoint(fleet, "h0")
    registry = CancelRegistry()
    argv = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 300"]
    async with SSHPool() as pool:
        with pytest.raises(TransferCancelledError):
            async with exec_streaming(pool, ep, argv, transfer_id="stuck", registry=registry) as s:
                async for _chunk in s:
                    registry.cancel("stuck")
        assert s.remote_pid is not None
        assert await wait_gone(s.remote_pid, timeout=8), "ignoring TERM kept it alive"
        assert await run_command(pool, ep, ["echo", "ok"]) == b"ok\n"


async def test_cancel_all_and_parent_tokens(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    registry = CancelRegistry()
    outcomes: list[str] = []
    async with SSHPool() as pool:

        async def stream(i: int) -> None:
            try:
                async with exec_streaming(
                    pool, ep, ["sleep", "60"], registry=registry, transfer_id=f"t{i}"
                ) as s:
                    await s.read_all()
            except TransferCancelledError:
                outcomes.append("cancelled")

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(stream, i)
            while len(registry) < 5:
                await anyio.sleep(0.02)
            assert registry.cancel_all() == 5
    assert outcomes == ["cancelled"] * 5
    assert len(registry) == 0


async def test_leaving_early_stops_the_remote_process(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool() as pool:
        async with exec_streaming(pool, ep, ["head", "-c", str(1024 * MiB), "/dev/zero"]) as s:
            async for _chunk in s:
                break
        assert s.remote_pid is not None
        assert await wait_gone(s.remote_pid)
        assert await run_command(pool, ep, ["echo", "ok"]) == b"ok\n"


async def test_dropped_connection_is_reopened_for_the_next_operation(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool(PoolSettings(reconnect_backoff=0.1)) as pool:
        assert await run_command(pool, ep, ["echo", "1"]) == b"1\n"
        fleet.restart("h0")  # kills sshd and its live connections
        assert await run_command(pool, ep, ["echo", "2"]) == b"2\n"
        assert pool.stats(ep).connects == 2


async def test_host_vanishing_midway_is_connection_lost(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool() as pool:
        with pytest.raises(RemoteSyncError) as info:
            async with exec_streaming(
                pool, ep, ["head", "-c", str(4096 * MiB), "/dev/zero"], host="h0"
            ) as s:
                received = 0
                async for chunk in s:
                    received += len(chunk)
                    if received > 16 * MiB:
                        fleet.stop("h0")
        assert info.value.kind in ("connection_lost", "remote_command_failed")
        assert info.value.host == "h0"


async def test_errors_are_classified_per_host_while_others_carry_on(ssh_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = ssh_fleet(3)
    fleet.rotate_host_key("h1")  # known_hosts now holds a different key: a mismatch
    fleet.write("h2", "f", b"fine\n")
    hosts = {
        "down": Endpoint(
            address="127.0.0.1", port=free_port(), ssh_config=(), known_hosts=str(fleet.known_hosts)
        ),
        "rekeyed": endpoint(fleet, "h1"),
        "good": endpoint(fleet, "h2"),
    }
    results: dict[str, object] = {}
    async with SSHPool(PoolSettings(connect_timeout=5)) as pool:

        async def pull(name: str, ep: Endpoint) -> None:
            try:
                results[name] = await run_command(
                    pool, ep, ["cat", str(fleet.path("h2", "f"))], host=name
                )
            except RemoteSyncError as exc:
                results[name] = exc

        async with anyio.create_task_group() as tg:
            for name, ep in hosts.items():
                tg.start_soon(pull, name, ep)
    assert results["good"] == b"fine\n"
    down, rekeyed = results["down"], results["rekeyed"]
    assert isinstance(down, HostUnreachableError) and down.host == "down"
    assert isinstance(rekeyed, HostKeyError) and rekeyed.host == "rekeyed"
    assert "CHANGED" in str(rekeyed) and "known_hosts" in str(rekeyed)


async def test_unknown_host_key_is_refused_unless_accept_new(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    strict = endpoint(fleet, "h0", known_hosts=str(empty_known_hosts))
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="unknown"):
            await run_command(pool, strict, ["true"])
    assert empty_known_hosts.read_text() == ""
    accept_new = endpoint(
        fleet, "h0", known_hosts=str(empty_known_hosts), host_key_policy="accept-new"
    )
    async with SSHPool() as pool:
        assert await run_command(pool, accept_new, ["echo", "hi"]) == b"hi\n"
    assert str(fleet.host("h0").port) in empty_known_hosts.read_text()
    # The recorded key is now enforced: a changed key is refused even under accept-new.
    fleet.rotate_host_key("h0")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="CHANGED"):
            await run_command(pool, accept_new, ["true"])


async def test_a_refused_host_key_is_told_what_to_do_for_its_case(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """Both refusals said "ssh-keygen -R HOST, then connect once with ssh": for a key never
    seen there is nothing to remove (a first contact needs recording, which
    --accept-new-host-keys does), and HOST was a placeholder for a name that is
    [127.0.0.1]:PORT in known_hosts. Each now names the key the host offers."""
    import asyncssh

    def offered() -> str:
        key = asyncssh.import_public_key(fleet.host("h0").host_public_key)
        return str(key.get_fingerprint("sha256"))

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="unknown") as unknown:
            await run_command(pool, endpoint(fleet, "h0", known_hosts=str(empty)), ["true"])
    hint = unknown.value.hint
    assert offered() in hint and "--accept-new-host-keys" in hint, hint
    assert "ssh-keygen -R" not in hint, hint

    fleet.rotate_host_key("h0")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="CHANGED") as changed:
            await run_command(pool, endpoint(fleet, "h0"), ["true"])
    hint = changed.value.hint
    name = f"'[127.0.0.1]:{fleet.host('h0').port}'"
    assert offered() in hint, hint
    assert f"ssh-keygen -R {name} -f {fleet.known_hosts}" in hint, hint


async def test_local_files_that_do_not_exist_are_configuration_errors(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A missing ssh_config, key or (strict) known_hosts file is named as this host's
    configuration error, not taken for an unreachable host; under accept-new a known_hosts
    file that does not exist yet is created at first contact, as OpenSSH does."""
    missing = str(tmp_path / "nope")
    async with SSHPool() as pool:
        for what, ep in (
            ("known_hosts", endpoint(fleet, "h0", known_hosts=missing)),
            ("ssh_config", endpoint(fleet, "h0", ssh_config=(missing,))),
            ("identity_file", endpoint(fleet, "h0", identity_files=(missing,))),
        ):
            with pytest.raises(ConfigError, match=f"{what} .* does not exist") as info:
                await run_command(pool, ep, ["true"], host="h0")
            assert (info.value.host, info.value.path) == ("h0", missing)
    fresh = tmp_path / "new" / "known_hosts"
    accept_new = endpoint(fleet, "h0", known_hosts=str(fresh), host_key_policy="accept-new")
    async with SSHPool() as pool:
        assert await run_command(pool, accept_new, ["echo", "hi"]) == b"hi\n"
    assert str(fleet.host("h0").port) in fresh.read_text()


async def test_local_files_that_cannot_be_used_are_configuration_errors(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A key or known_hosts that is a directory, an ssh_config that includes itself: each is
    this host's configuration error, naming the file, not an unreachable host (nor a
    traceback). (A file that is no key at all, or a key that needs a passphrase, is skipped,
    as ssh skips it: authentication then fails, as its own error.)"""
    looping = tmp_path / "looping"
    looping.write_text(f"Include {looping}\n")
    a_dir = str(tmp_path)
    cases = (
        (endpoint(fleet, "h0", identity_files=(a_dir,)), a_dir, "identity_file"),
        (endpoint(fleet, "h0", known_hosts=a_dir), a_dir, "known_hosts"),
        (endpoint(fleet, "h0", ssh_config=(str(looping),)), str(looping), "Include"),
    )
    async with SSHPool() as pool:
        for ep, path, said in cases:
            with pytest.raises(ConfigError, match=said) as info:
                await run_command(pool, ep, ["true"], host="h0")
            assert (info.value.host, info.value.path) == ("h0", path), said


async def test_auth_failure_is_its_own_error(fleet: SSHFleet, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {stranger}")
    ep = direct_endpoint(fleet, "h0", str(stranger))
    async with SSHPool() as pool:
        with pytest.raises(AuthenticationError) as info:
            await run_command(pool, ep, ["true"], host="h0")
    assert info.value.host == "h0"


async def test_an_auth_failure_names_the_address_port_and_what_was_tried(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Permission denied for user U on host 127.0.0.1" named neither the port nor the keys
    offered, where ssh -v lists them: the failure names the address and port connected to
    (as an unreachable host's does), the key files offered and the ssh-agent asked, or
    that there was none, and nothing of a key but its path."""
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* offered besides
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    ep = direct_endpoint(fleet, "h0", str(stranger))
    port = fleet.host("h0").port
    async with SSHPool() as pool:
        with pytest.raises(AuthenticationError) as info:
            await run_command(pool, ep, ["true"], host="h0")
    message = info.value.message
    assert f"(connected to 127.0.0.1 port {port})" in message, message
    assert f"; offered the key file {stranger}; no ssh-agent (SSH_AUTH_SOCK is not set)" in message
    secret = stranger.read_text().splitlines()[1]
    assert secret not in str(info.value)
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with ssh_agent(tmp_path, other) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        async with SSHPool() as pool:
            with pytest.raises(AuthenticationError) as info:
                await run_command(pool, ep, ["true"], host="h0")
    assert f"offered the keys of the ssh-agent at {sock} and the key file {stranger}" in str(
        info.value
    )


def test_a_known_hosts_file_that_appears_while_it_is_read_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known_hosts file that could not be looked at (gone, or not there yet) had its path
    alone for a version; the reading that followed could find it (it appeared meanwhile)
    and keep its keys under that version, trusted again once the file was gone. A file that
    could not be looked at is read, never kept."""
    known = tmp_path / "known_hosts"
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    monkeypatch.setattr(hostkeys, "_KNOWN_HOSTS_READ", {})
    monkeypatch.setattr(filecache, "_RECENT_NS", 0)
    real = hostkeys._parse_known_hosts

    def appearing(paths: list[str]) -> asyncssh.SSHKnownHosts:
        known.write_text(f"box {key}\n")  # between the look at the file and its reading
        return real(paths)

    monkeypatch.setattr(hostkeys, "_parse_known_hosts", appearing)
    assert hostkeys._read_known_hosts([str(known)]).match("box", "", None)[0]
    monkeypatch.setattr(hostkeys, "_parse_known_hosts", real)
    known.unlink()
    assert not hostkeys._read_known_hosts([str(known)]).match("box", "", None)[0]


async def test_an_identity_file_adds_to_the_ssh_config_keys_as_ssh_i_does(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """``ssh -i other alias`` still offers the alias's IdentityFile (and so does an
    inventory's identity_file): asyncssh alone replaced them, and the login failed."""
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    ep = endpoint(fleet, "h0", identity_files=(str(other),))
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "both"], host="h0") == b"both\n"


@pytest.mark.parametrize("identities_only", ["yes", "no"])
async def test_an_ssh_config_identity_file_that_does_not_exist_is_skipped_as_ssh_skips_it(
    identities_only: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """One ~/.ssh/config serves several machines, and names keys some of them lack: ssh
    skips an IdentityFile that is not there without a word. asyncssh stopped on it, and the
    host failed as unreachable ("check that the host is up")."""
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {tmp_path / 'not-on-this-machine'}\n  IdentityFile {fleet.client_key}\n"
        f"  IdentitiesOnly {identities_only}\n  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    await _assert_box_echoes(cfg, "in", host="h0")


async def test_an_ssh_config_certificate_file_that_does_not_exist_is_skipped(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """As an IdentityFile: ssh skips a CertificateFile that is not there; asyncssh stopped
    on it, and the host failed as unreachable."""
    missing = tmp_path / "not-on-this-machine-cert.pub"
    cfg = _box_config(
        fleet, tmp_path, f"  CertificateFile {missing}\n  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    await _assert_box_echoes(cfg, "in", preflight=True)


async def test_a_user_ssh_config_others_may_change_is_refused_as_ssh_refuses_it(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh refuses a ~/.ssh/config that another user may write ("Bad owner or
    permissions"): its ProxyCommand and Match exec lines run as the user. So do we, read by
    default or named, and once it is fixed the host is reached."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    config = home / ".ssh" / "config"
    h = fleet.host("h0")
    config.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    by_default = Endpoint(address="box")
    named = Endpoint(address="box", ssh_config=("~/.ssh/config",))
    config.chmod(0o666)
    for ep in (by_default, named):
        async with SSHPool() as pool:
            with pytest.raises(ConfigError, match="bad owner or permissions") as info:
                await run_command(pool, ep, ["true"], host="h0")
        assert info.value.host == "h0" and info.value.path == str(config)
        assert "chmod go-w" in (info.value.hint or "")
    # Another file, given as ssh -F gives it, is not checked (nor by ssh).
    other = tmp_path / "other_config"
    other.write_text(config.read_text())
    other.chmod(0o666)
    async with SSHPool() as pool:
        ep = Endpoint(address="box", ssh_config=(str(other),))
        assert await run_command(pool, ep, ["echo", "f"], host="h0") == b"f\n"
    config.chmod(0o600)
    async with SSHPool() as pool:
        assert await run_command(pool, by_default, ["echo", "ok"], host="h0") == b"ok\n"


def test_endpoint_parse() -> None:
    assert Endpoint.parse("me@box:2222") == Endpoint(address="box", user="me", port=2222)
    assert Endpoint.parse("box") == Endpoint(address="box")
    assert Endpoint.parse("[::1]:22").address == "::1"
    with pytest.raises(RemoteSyncError):
        Endpoint.parse("box:notaport")
    assert Endpoint.parse("pi_kitchen.lan.").address == "pi_kitchen.lan."
    assert Endpoint.parse("[fe80::1%eth0]:22").address == "fe80::1%eth0"
    for bad in ["..", ".", "../x", "a/b", "-oProxyCommand=x", "a b", "a..b", "$(id)", "a;b"]:
        with pytest.raises(ConfigError, match="not a host name"):
            Endpoint.parse(f"me@{bad}")


async def test_aes_gcm_is_preferred_and_compression_off(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool() as pool, pool.session(ep) as conn:
        assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert conn.get_extra_info("recv_compression") in (None, "none")


async def test_compression_per_endpoint_or_pool_default(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    compressed = dataclasses.replace(ep, compression=True)
    async with SSHPool() as pool:
        async with pool.session(compressed) as conn:
            assert conn.get_extra_info("recv_compression") == "zlib@openssh.com"
        data = await run_command(pool, compressed, ["head", "-c", "300000", "/dev/zero"])
        assert data == bytes(300000)
    off = dataclasses.replace(ep, compression=False)
    async with SSHPool(PoolSettings(compression=True)) as pool:
        async with pool.session(ep) as conn:
            assert conn.get_extra_info("recv_compression") == "zlib@openssh.com"
        async with pool.session(off) as conn:
            assert conn.get_extra_info("recv_compression") == "none"


async def test_channels_beyond_maxsessions_are_refused_with_their_own_error(
    fleet: SSHFleet,
) -> None:
    """Our cap (8) exists because sshd refuses the 11th session; above it, a clear error."""
    ep = endpoint(fleet, "h0")
    outcomes: list[object] = []
    async with SSHPool(PoolSettings(channels_per_host=14)) as pool:

        async def one() -> None:
            try:
                # Longer than the refusal backoff, so the refusal persists and is reported.
                outcomes.append(await run_command(pool, ep, ["sleep", "6"], host="h0"))
            except RemoteSyncError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(14):
                tg.start_soon(one)
    refused = [o for o in outcomes if isinstance(o, ChannelRefusedError)]
    assert refused and all(o.host == "h0" and "MaxSessions" in str(o) for o in refused)


async def test_idle_connections_are_closed_and_reopened_on_demand(fleet: SSHFleet) -> None:
    ep = endpoint(fleet, "h0")
    async with SSHPool(PoolSettings(idle_close=0.4)) as pool:
        assert await run_command(pool, ep, ["true"]) == b""
        with anyio.fail_after(30):  # closed while idle, however late a loaded machine runs it
            while pool._slots[ep].conn is not None:
                await anyio.sleep(0.05)
        assert await run_command(pool, ep, ["echo", "back"]) == b"back\n"
        assert pool.stats(ep).connects == 2


async def test_connect_timeout_on_a_silent_server() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        ep = Endpoint(address="127.0.0.1", port=port, ssh_config=())
        started = time.monotonic()
        async with SSHPool(PoolSettings(connect_timeout=1.0, login_timeout=1.0)) as pool:
            with pytest.raises(HostUnreachableError) as info:
                await run_command(pool, ep, ["true"], host="silent")
        assert time.monotonic() - started < 10
        assert info.value.host == "silent"


@contextlib.contextmanager
def ssh_agent(tmp_path: Path, *keys: Path) -> Iterator[str]:
    """A running ssh-agent holding ``keys``; yields its socket."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        for key in keys:
            subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True)
        yield str(sock)
    finally:
        agent.kill()
        agent.wait()


async def test_keys_from_ssh_agent(fleet: SSHFleet, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with ssh_agent(tmp_path, fleet.client_key) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        # No identity file and no ssh_config: the only key is the agent's.
        ep = Endpoint(
            address="127.0.0.1",
            port=fleet.host("h0").port,
            user=fleet.user,
            ssh_config=(),
            known_hosts=str(fleet.known_hosts),
        )
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        async with SSHPool() as pool:
            assert await run_command(pool, ep, ["echo", "via agent"]) == b"via agent\n"


async def test_a_passphrase_key_is_used_through_the_agent_else_named(
    fleet: SSHFleet, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The usual set-up: identity_file names a passphrase-protected key that ssh-agent holds.
    ssh then signs with the agent; so do we (we used to stop: "cannot load a private key").
    With no agent, ssh in batch mode skips the key; the failure then names it, with ssh-add."""
    locked = tmp_path / "locked"
    shutil.copy(fleet.client_key, locked)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", str(locked)], check=True
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
    ep = direct_endpoint(fleet, "h0", str(locked))
    with ssh_agent(tmp_path, fleet.client_key) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        async with SSHPool() as pool:
            assert await run_command(pool, ep, ["echo", "signed"]) == b"signed\n"
    monkeypatch.delenv("SSH_AUTH_SOCK")
    async with SSHPool() as pool:
        with pytest.raises(AuthenticationError, match="needs a passphrase") as info:
            await run_command(pool, ep, ["true"], host="h0")
    assert (info.value.host, info.value.path) == ("h0", str(locked))
    assert f"ssh-add {locked}" in str(info.value)


async def test_inventory_proxy_command_tokens_are_expanded(fleet: SSHFleet) -> None:
    ep = _through_relay(fleet)
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "through the proxy"]) == b"through the proxy\n"


async def test_a_momentary_maxsessions_refusal_is_retried(fleet: SSHFleet) -> None:
    """sshd may count a just-closed session a little longer; within our cap that must not fail."""
    ep = endpoint(fleet, "h0")
    async with SSHPool(PoolSettings(channels_per_host=12)) as pool:
        # 12 > MaxSessions (10): the last two are refused until short commands free slots.
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(run_command, pool, ep, ["sleep", "0.5"])
        assert pool.stats(ep).channels_peak == 12


async def _assert_box_echoes(
    cfg: Path, word: str, host: str = "box", *, preflight: bool = False
) -> None:
    """Reach "box" through the ssh_config ``cfg`` (its pre-flight first, finding no
    problem, if ``preflight``) and run echo there."""
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        if preflight:
            assert pool.preflight(ep, "box") is None
        assert await run_command(pool, ep, ["echo", word], host=host) == f"{word}\n".encode()


def _box_config(fleet: SSHFleet, tmp_path: Path, extra: str) -> Path:
    """An ssh_config naming host h0 "box", plus ``extra`` lines (host-key settings)."""
    h = fleet.host("h0")
    cfg = tmp_path / "box_config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  IdentitiesOnly yes\n{extra}"
    )
    return cfg


def _key_line(fleet: SSHFleet, name: str = "h0") -> str:
    port = fleet.host(name).port
    (line,) = [x for x in fleet.known_hosts.read_text().splitlines() if f"]:{port} " in x]
    return line + "\n"


async def test_known_hosts_files_are_the_ones_ssh_reads(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ssh_config's UserKnownHostsFile and GlobalKnownHostsFile (default
    /etc/ssh/ssh_known_hosts) are read as ssh reads them: "none" trusts nothing (it did not
    turn checking off), a key held only in the system file is trusted, and a changed key
    held there is refused under accept-new too (it was recorded anew in ~/.ssh)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # an empty ~/.ssh
    system = tmp_path / "ssh_known_hosts"
    system.write_text("")
    box = Endpoint(address="box", ssh_config=(str(_box_config(fleet, tmp_path, "")),))

    def configured(extra: str, **kwargs: Any) -> Endpoint:
        return dataclasses.replace(
            box, ssh_config=(str(_box_config(fleet, tmp_path, extra)),), **kwargs
        )

    nothing = configured(f"  UserKnownHostsFile none\n  GlobalKnownHostsFile {system}\n")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="unknown"):
            await run_command(pool, nothing, ["true"])
        # Under accept-new there is still nowhere to record it: the hint says so, where it
        # said to run again with --accept-new-host-keys, which is what failed.
        asked = dataclasses.replace(nothing, host_key_policy="accept-new")
        with pytest.raises(HostKeyError, match="unknown") as refused:
            await run_command(pool, asked, ["true"])
    assert "UserKnownHostsFile none" in refused.value.hint, refused.value.hint
    assert "--accept-new-host-keys" not in refused.value.hint
    system.write_text(_key_line(fleet))
    pinned = configured(f"  GlobalKnownHostsFile {system}\n")
    async with SSHPool() as pool:
        assert await run_command(pool, pinned, ["echo", "hi"]) == b"hi\n"
    fleet.rotate_host_key("h0")
    accept_new = dataclasses.replace(pinned, host_key_policy="accept-new")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match=f"CHANGED .*{system}"):
            await run_command(pool, accept_new, ["true"])
    assert not (home / ".ssh" / "known_hosts").exists()
    # Held in two files: the hint removes it from both (one left still refuses the host).
    mine = tmp_path / "mine"
    mine.write_text(system.read_text())
    both = configured(f"  UserKnownHostsFile {mine}\n  GlobalKnownHostsFile {system}\n")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="CHANGED") as changed:
            await run_command(pool, both, ["true"])
    assert f"-f {mine}" in changed.value.hint and f"-f {system}" in changed.value.hint


async def test_accept_new_records_a_host_key_alias_without_the_port(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """With HostKeyAlias, ssh looks the key up (and records it) under the bare alias."""
    mine = tmp_path / "known_hosts"
    cfg = _box_config(
        fleet,
        tmp_path,
        f"  HostKeyAlias pi-kitchen\n  UserKnownHostsFile {mine}\n"
        "  GlobalKnownHostsFile /dev/null\n",
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),), host_key_policy="accept-new")
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "hi"]) == b"hi\n"
    assert mine.read_text().startswith("pi-kitchen ssh-ed25519 ")
    strict = dataclasses.replace(ep, host_key_policy="strict")
    async with SSHPool() as pool:
        assert await run_command(pool, strict, ["echo", "again"]) == b"again\n"


async def test_inventory_proxy_command_tokens_come_from_the_ssh_config(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """%h and %p are the HostName and Port the ssh_config gives the alias, as in ssh."""
    relay = Path(__file__).resolve().parent.parent / "bench" / "delay_relay.py"
    cfg = _box_config(fleet, tmp_path, "")
    ep = Endpoint(
        address="box",
        ssh_config=(str(cfg),),
        known_hosts=str(fleet.known_hosts),
        proxy_command=f"{sys.executable} {relay} --delay-ms 0 %h %p",
    )
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "through"]) == b"through\n"


async def test_jump_hosts_are_checked_by_the_same_rules(fleet: SSHFleet, tmp_path: Path) -> None:
    """asyncssh connects a ProxyJump host from the ssh_config alone, and would take its
    "UserKnownHostsFile none" for "check nothing": jump hosts are connected here instead,
    whatever their alias looks like, and a refused key is named as the jump host's."""
    jump = fleet.host("h1")
    nobody = tmp_path / "empty_known_hosts"
    nobody.write_text("")

    def via(alias: str, known: str) -> Endpoint:
        cfg = _box_config(
            fleet,
            tmp_path,
            f"  ProxyJump {alias}\n  UserKnownHostsFile {fleet.known_hosts}\n"
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {fleet.user}\n"
            f"  IdentityFile {fleet.client_key}\n  UserKnownHostsFile {known}\n"
            "  GlobalKnownHostsFile /dev/null\n",
        )
        return Endpoint(address="box", ssh_config=(str(cfg),))

    async with SSHPool() as pool:
        for alias, known in (("hop", "none"), ("gw+1", "none"), ("hop", str(nobody))):
            with pytest.raises(
                HostKeyError, match=f"ProxyJump host '{re.escape(alias)}': host key is unknown"
            ):
                await run_command(pool, via(alias, known), ["true"], host="box")
    nobody.write_text(_key_line(fleet, "h1"))
    async with SSHPool() as pool:
        ep = via("hop", str(nobody))
        assert await run_command(pool, ep, ["echo", "via hop"], host="box") == b"via hop\n"


async def test_known_hosts_paths_lines_and_aliases_as_ssh_reads_them(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """${VAR}, %k, %C and %i in a known_hosts path name the file ssh reads (a changed key held
    there is refused under accept-new); a token ssh does not expand there is a configuration
    error (%C and %i were, though ssh expands them); a line
    that cannot be read is skipped; and an alias's key is not taken for "changed" because
    the address has another key (several hosts behind one router)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    keys = tmp_path / "keys"
    keys.mkdir()
    monkeypatch.setenv("RS_KEYS", str(keys))
    (keys / "pi-kitchen").write_text(
        "garbage\n@bogus-marker x y\n"
        + _key_line(fleet).replace(_key_line(fleet).split()[0], "pi-kitchen", 1)
    )

    def box(extra: str, policy: str = "strict") -> Endpoint:
        cfg = _box_config(fleet, tmp_path, extra + "  GlobalKnownHostsFile /dev/null\n")
        return Endpoint(address="box", ssh_config=(str(cfg),), host_key_policy=policy)  # type: ignore[arg-type]

    aliased = "  HostKeyAlias pi-kitchen\n  UserKnownHostsFile ${RS_KEYS}/%k\n"
    async with SSHPool() as pool:
        assert await run_command(pool, box(aliased), ["echo", "hi"]) == b"hi\n"
    # %C and %i, which ssh expands there too, name the file the key is in (ssh -G names it).
    hashed = f"{socket.gethostname()}127.0.0.1{fleet.host('h0').port}{fleet.user}"
    (keys / f"{hashlib.sha1(hashed.encode()).hexdigest()}.{os.getuid()}").write_text(
        _key_line(fleet)
    )
    by_hash = "  UserKnownHostsFile ${RS_KEYS}/%C.%i\n"
    async with SSHPool() as pool:
        assert await run_command(pool, box(by_hash), ["echo", "hash"]) == b"hash\n"
    async with SSHPool() as pool:  # %T is ssh's for a LocalCommand only: it stops on it here
        with pytest.raises(ConfigError, match="cannot expand '%T'"):
            await run_command(pool, box("  UserKnownHostsFile ~/%T\n"), ["true"])
    router = tmp_path / "router_known_hosts"  # the router's own key, for its address
    router.write_text("127.0.0.1 " + " ".join(_key_line(fleet, "h1").split()[1:]) + "\n")
    other = f"  HostKeyAlias pi-garage\n  UserKnownHostsFile {router}\n"
    async with SSHPool() as pool:
        assert await run_command(pool, box(other, "accept-new"), ["echo", "new"]) == b"new\n"
    assert "pi-garage ssh-ed25519" in router.read_text()
    fleet.rotate_host_key("h0")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match=f"CHANGED .*{keys}/pi-kitchen"):
            await run_command(pool, box(aliased, "accept-new"), ["true"])


async def test_a_known_hosts_file_is_parsed_once_and_an_edit_is_seen(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections share the parse of a known_hosts file that has not changed (it cost
    about 30 ms per connection for 2,000 keys), and an edit between two uses of the pool is
    seen: here one of the same size, in place, its time of modification set back (its
    change time tells it). A file changed within the last seconds is parsed each time, as
    the file system's clock is coarse: an edit in the same tick would not show."""
    known = tmp_path / "known_hosts"
    h0, h1 = fleet.host("h0").port, fleet.host("h1").port
    wrong = _key_line(fleet, "h1").replace(f"]:{h1} ", f"]:{h0} ")
    right = _key_line(fleet)
    assert len(wrong) == len(right)  # ed25519 both: an edit of the same size
    known.write_text(wrong)
    files = hostkeys.HostKeyFiles((str(known),), ())
    assert files.trusted() is not files.trusted()  # just written: not kept
    # As if written long ago.
    monkeypatch.setattr(filecache, "_RECENT_NS", 0)
    assert files.trusted() is files.trusted()  # parsed once
    ep = dataclasses.replace(
        direct_endpoint(fleet, "h0", str(fleet.client_key)), known_hosts=str(known)
    )
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="CHANGED"):
            await run_command(pool, ep, ["true"])
    modified = known.stat().st_mtime_ns
    with open(known, "r+") as out:  # in place: the same inode and size
        out.write(right)
    os.utime(known, ns=(modified, modified))
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "seen"]) == b"seen\n"


def test_the_chmod_hint_of_a_key_others_may_read_is_a_command_to_copy(tmp_path: Path) -> None:
    """The hint of a key others may read is a command to copy: a key file whose name holds a
    space is named by it as one word, as the other hints' commands name hosts and folders."""
    key = tmp_path / "my key"
    key.write_bytes(b"not read")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="may be read by others") as info:
        refuse_unprotected_keys([str(key)], "h0")
    assert info.value.hint == f"chmod 600 {shlex.quote(str(key))}", info.value.hint


async def test_a_private_key_others_may_read_is_refused(fleet: SSHFleet, tmp_path: Path) -> None:
    """ssh ignores a private key with group or other permissions ("UNPROTECTED PRIVATE KEY
    FILE"); asyncssh would use it. Named in the inventory or by the ssh_config, it is this
    host's configuration error, saying what to do."""
    key = tmp_path / "open_key"
    key.write_bytes(fleet.client_key.read_bytes())
    key.chmod(0o644)
    cfg = _box_config(fleet, tmp_path, "")
    cfg.write_text(cfg.read_text().replace(str(fleet.client_key), str(key)))
    by_config = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(fleet.known_hosts))
    by_inventory = direct_endpoint(fleet, "h0", str(key))
    async with SSHPool() as pool:
        for ep in (by_config, by_inventory):
            with pytest.raises(ConfigError, match="may be read by others") as info:
                await run_command(pool, ep, ["true"], host="h0")
            assert info.value.path == str(key) and "chmod 600" in info.value.hint
    # With another key that ssh may use, only a warning: ssh would log in with that one,
    # also when it is the ssh_config's (an identity_file adds to those, as ssh -i does).
    both = dataclasses.replace(by_inventory, identity_files=(str(key), str(fleet.client_key)))
    with_config = endpoint(fleet, "h0", identity_files=(str(key),))
    async with SSHPool() as pool:
        for ep in (both, with_config):
            assert await run_command(pool, ep, ["echo", "other"], host="h0") == b"other\n"
    key.chmod(0o600)
    async with SSHPool() as pool:
        for ep in (by_config, by_inventory):
            assert await run_command(pool, ep, ["echo", "ok"], host="h0") == b"ok\n"


def test_an_include_glob_is_read_in_sorted_order(tmp_path: Path) -> None:
    """ssh reads the files of ``Include conf.d/*`` sorted (glob(3)); with first-match-wins,
    only then does "box" get the port of ``00-box.conf``. asyncssh read directory order."""
    import asyncssh

    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    for i in range(12):  # the first one written first: directory order rarely sorts it first
        (conf_d / f"{i:02d}-box.conf").write_text(f"Host box\n  Port {2200 + i}\n")
    main_config = tmp_path / "config"
    main_config.write_text(f"Include {conf_d}/*\n")
    found = asyncssh.SSHClientConnectionOptions(
        host="box", config=[str(main_config)], known_hosts=None, client_keys=None
    )
    assert found.port == 2200


async def test_a_target_the_jump_host_cannot_reach_is_named_as_such(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """The jump host answered (it is connected first), so the failure is the target's."""
    jump = fleet.host("h1")
    cfg = _box_config(
        fleet,
        tmp_path,
        f"  ProxyJump hop\n  UserKnownHostsFile {fleet.known_hosts}\n"
        f"Host hop\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  UserKnownHostsFile {fleet.known_hosts}\n",
    )
    cfg.write_text(cfg.read_text().replace(f"Port {fleet.host('h0').port}\n", "Port 1\n", 1))
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        with pytest.raises(HostUnreachableError, match="through ProxyJump 'hop', which answered"):
            await run_command(pool, ep, ["true"], host="box")
        # The address the jump host was asked for, as the ssh_config gives it.
        with pytest.raises(HostUnreachableError, match=r"cannot connect to 127\.0\.0\.1 port 1\b"):
            await run_command(pool, ep, ["true"], host="box")


async def test_an_unreachable_host_names_the_address_and_port_it_tried(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh says "connect to host 127.0.0.1 port 57673: Connection refused"; the error said
    "box: connection refused", which does not show a wrong HostName or Port. Through a
    ProxyCommand no address of ours is tried: the command is named instead."""
    port = free_port()  # nothing listens there: a host whose sshd is down
    cfg = _box_config(fleet, tmp_path, f"  UserKnownHostsFile {fleet.known_hosts}\n")
    cfg.write_text(cfg.read_text().replace(f"Port {fleet.host('h0').port}\n", f"Port {port}\n"))
    async with SSHPool() as pool:
        with pytest.raises(HostUnreachableError) as refused:
            await run_command(pool, Endpoint("box", ssh_config=(str(cfg),)), ["true"], host="b")
        assert refused.value.kind == "unreachable"
        assert str(refused.value).startswith(
            f"b: cannot connect to 127.0.0.1 port {port}: connection refused ("
        )
        # A port given with the host (the inventory's, ad-hoc host:port) wins, and is named.
        other = free_port()
        with pytest.raises(HostUnreachableError, match=f"to 127.0.0.1 port {other}: "):
            await run_command(pool, Endpoint("box", port=other, ssh_config=(str(cfg),)), ["true"])
        cfg.write_text(cfg.read_text() + "  ProxyCommand sh -c 'exit 1' %h\n")
        with pytest.raises(HostUnreachableError) as proxied:
            await run_command(pool, Endpoint("box", ssh_config=(str(cfg),)), ["true"], host="b")
        shown = str(proxied.value)
        # Named by its program alone: its arguments may hold a secret.
        assert "cannot connect through ProxyCommand sh …: " in shown, shown
        assert "the command exited with status 1" in shown, shown
        assert "port" not in shown and "ProxyCommand runs" in shown, shown


async def test_ssh_config_comments_and_times_are_read_as_ssh_reads_them(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh takes a word starting with '#' as the end of the line, and "1m" as a time;
    asyncssh refused both ("Extra data at end", "Invalid ... integer value"), failing every
    host of the config."""
    cfg = _box_config(
        fleet,
        tmp_path,
        f"  UserKnownHostsFile {fleet.known_hosts}  # the fleet's keys\n"
        "  ServerAliveInterval 1m\n  ConnectTimeout 1m30s\n",
    )
    cfg.write_text("Match originalhost box # comment\n" + cfg.read_text())
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "read"], host="box") == b"read\n"
    cfg.write_text(cfg.read_text() + "  ServerAliveCountMax # none given\n")
    async with SSHPool() as pool:
        with pytest.raises(ConfigError, match="line 11: Missing ServerAliveCountMax value"):
            await run_command(pool, ep, ["true"], host="box")


async def test_channels_carry_bytes_with_nothing_forwarded_whatever_the_ssh_config_asks(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host's "RequestTTY force" (with a RemoteCommand for tmux, say) gave our channels a
    pseudo-terminal, which turned every \\n of the transfer into \\r\\n; its "ForwardAgent
    yes" lent the host the agent's keys for every command. Like scp, neither."""
    cfg = _box_config(
        fleet,
        tmp_path,
        f"  RequestTTY force\n  ForwardAgent yes\n  UserKnownHostsFile {fleet.known_hosts}\n",
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    with ssh_agent(tmp_path, fleet.client_key) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        async with SSHPool() as pool:
            assert await run_command(pool, ep, ["printf", "a\\nb"], host="box") == b"a\nb"
            agent = await run_command(pool, ep, ["sh", "-c", 'echo "${SSH_AUTH_SOCK:-none}"'])
            assert agent == b"none\n"


async def test_match_final_blocks_give_the_known_hosts_files_too(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh's connection applies "Match final" blocks (a second reading, as ssh's), but
    the lookup of the known_hosts files read the config once: the host key was "unknown"
    (looked up in ~/.ssh/known_hosts) where ssh found it in the block's file."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an empty ~/.ssh
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host box\n  HostName 127.0.0.1\n"
        f"Match final host 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    await _assert_box_echoes(cfg, "final")


async def test_the_ssh_config_accept_new_is_followed_and_its_no_is_not(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh records a first key under the ssh_config's "StrictHostKeyChecking accept-new";
    we refused it as unknown (asyncssh skips the option). A changed key is still refused,
    and "no" still checks, saying that it is not followed."""
    mine = tmp_path / "known_hosts"
    mine.write_text("")

    def box(checking: str) -> Endpoint:
        cfg = _box_config(
            fleet,
            tmp_path,
            f"  StrictHostKeyChecking {checking}  # the user's\n"
            f"  UserKnownHostsFile {mine}\n  GlobalKnownHostsFile /dev/null\n",
        )
        return Endpoint(address="box", ssh_config=(str(cfg),))

    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="unknown") as info:
            await run_command(pool, box("no"), ["true"], host="box")
    assert "StrictHostKeyChecking no is not followed" in info.value.hint
    assert mine.read_text() == ""
    async with SSHPool() as pool:
        assert await run_command(pool, box("accept-new"), ["echo", "new"], host="box") == b"new\n"
    assert str(fleet.host("h0").port) in mine.read_text()
    fleet.rotate_host_key("h0")
    async with SSHPool() as pool:
        with pytest.raises(HostKeyError, match="CHANGED"):
            await run_command(pool, box("accept-new"), ["true"], host="box")


async def test_the_ssh_config_ciphers_and_timeouts_replace_the_pool_defaults(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's cipher list replaced the ssh_config's, so an old server that offers only
    a cipher ssh needs to be told about ("Ciphers +aes128-cbc") was unreachable where ssh
    connects; its ConnectTimeout, ServerAlive* and Compression were overridden alike."""
    real = fleet._sshd_config
    monkeypatch.setattr(fleet, "_sshd_config", lambda h: real(h) + "Ciphers aes128-cbc\n")
    fleet.restart("h0")
    cfg = _box_config(
        fleet,
        tmp_path,
        f"  Ciphers +aes128-cbc\n  ConnectTimeout 7\n  ServerAliveInterval 5\n"
        f"  ServerAliveCountMax 2\n  Compression yes\n  UserKnownHostsFile {fleet.known_hosts}\n",
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert await run_command(pool, ep, ["echo", "old"], host="box") == b"old\n"
        async with pool.session(ep) as conn:
            options = conn._options  # what the connection was made with
            assert (options.connect_timeout, options.keepalive_interval) == (7, 5)
            assert options.keepalive_count_max == 2
            assert conn.get_extra_info("recv_compression") == "zlib@openssh.com"


@pytest.mark.parametrize("agent", ["SSH_AUTH_SOCK", "$RS_AGENT"])
async def test_an_identity_agent_named_by_variable_is_the_one_ssh_uses(
    agent: str, fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh reads "IdentityAgent SSH_AUTH_SOCK" (and "$VAR") from the environment, as a
    config does to undo another block's agent; asyncssh took it for a path: no agent."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {h.port}\n  User {fleet.user}\n"
        f"  IdentityAgent {agent}\n  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    with ssh_agent(tmp_path, fleet.client_key) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        monkeypatch.setenv("RS_AGENT", sock)
        async with SSHPool() as pool:
            assert await run_command(pool, ep, ["echo", "agent"], host="box") == b"agent\n"


def _chain_config(fleet: SSHFleet, tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    """An ssh_config naming h0 "box", reached through ``ProxyJump gw,hop``; "gw" has a
    ProxyJump of its own, "up". "up", "gw" and "hop" are all h1. ``extra`` adds lines to
    an alias's block."""
    extra = extra or {}
    jump = fleet.host("h1")
    blocks = [
        f"Host box\n  HostName 127.0.0.1\n  Port {fleet.host('h0').port}\n  ProxyJump gw,hop\n",
        "Host gw\n  ProxyJump up\n",
    ]
    for alias in ("box", "gw", "hop", "up"):
        blocks.append(
            f"Host {alias}\n{extra.get(alias, '')}  HostName 127.0.0.1\n  Port {jump.port}\n"
            f"  User {fleet.user}\n  IdentityFile {fleet.client_key}\n"
            f"  UserKnownHostsFile {fleet.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        )
    cfg = tmp_path / "chain_config"
    cfg.write_text("".join(blocks))
    return cfg


def _connections(fleet: SSHFleet, name: str) -> int:
    return fleet.host(name).log().count("Connection from")


@pytest.mark.parametrize("broken", ["up", "gw", "hop"])
@pytest.mark.parametrize("problem", ["key", "known_hosts", "config line"])
async def test_every_jump_host_is_checked_before_any_traffic(
    problem: str, broken: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """A jump host's key that does not load, its UserKnownHostsFile that cannot be read, an
    ssh_config line of its block that does not parse: found by the pre-flight, for every
    host of a comma list and for the first one's own ProxyJump hosts (as ssh walks them),
    as the target's configuration error naming the jump host; nothing goes on the network.
    They were found only on connecting, after the destination was created."""
    not_a_key = tmp_path / "not_a_key"
    not_a_key.write_text("this is not a private key\n")
    not_a_key.chmod(0o600)
    line, path, said = {
        "key": (f"  IdentityFile {not_a_key}\n", str(not_a_key), "cannot load a private key"),
        "known_hosts": (
            f"  UserKnownHostsFile {tmp_path}\n",
            str(tmp_path),
            "UserKnownHostsFile",
        ),
        "config line": ("  Port twenty\n", None, "Invalid Port integer value"),
    }[problem]
    cfg = _chain_config(fleet, tmp_path, {broken: line})
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    before = _connections(fleet, "h1")
    pool = SSHPool()
    problem_found = await anyio.to_thread.run_sync(pool.preflight, ep, "box")
    assert isinstance(problem_found, ConfigError), problem_found
    assert problem_found.host == "box"
    assert problem_found.message.startswith(f"ProxyJump host '{broken}': "), problem_found
    assert said in problem_found.message, problem_found
    assert problem_found.path == (path or str(cfg)), problem_found
    assert _connections(fleet, "h1") == before
    # The connection says the same (when the host is tried anyway).
    async with SSHPool() as fresh:
        with pytest.raises(ConfigError) as info:
            await run_command(fresh, ep, ["true"], host="box")
    assert info.value.message == problem_found.message


async def test_a_proxy_jump_chain_that_checks_out_connects_and_a_loop_is_refused(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """The pre-flight walks up -> gw -> hop -> box without a word, and the connection goes
    that way; a ProxyJump line that leads back to a jump host on the way is a loop, said as
    such before any traffic (ssh starts ssh after ssh without end)."""
    ep = Endpoint(address="box", ssh_config=(str(_chain_config(fleet, tmp_path)),))
    async with SSHPool() as pool:
        assert await anyio.to_thread.run_sync(pool.preflight, ep, "box") is None
        assert await run_command(pool, ep, ["echo", "via 3"], host="box") == b"via 3\n"
    looping = _chain_config(fleet, tmp_path, {"up": "  ProxyJump gw\n"})
    ep = Endpoint(address="box", ssh_config=(str(looping),))
    before = _connections(fleet, "h1")
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError) and problem.host == "box"
    assert "ProxyJump hosts lead in a loop: gw -> up -> gw" in problem.message, problem
    assert _connections(fleet, "h1") == before


async def test_a_later_jump_host_s_own_proxy_lines_give_way_to_the_hops_before_it(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh reaches a host through ``ProxyJump gw,hop`` by running ``ssh -J gw -W ... hop``
    (ssh.c): hop's own ProxyCommand and ProxyJump lines are not taken, the ``-J`` coming
    first, and its %j is gw; gw, the first hop, reads its own (here, "ProxyJump up"). hop's
    lines were read: a ProxyCommand token ssh does not expand there (in a command it never
    runs) stopped the host, and hop's %j was not gw."""
    cfg = _chain_config(fleet, tmp_path, {"hop": "  ProxyCommand nc %d 22\n"})
    printed = subprocess.run(
        ["ssh", "-F", str(cfg), "-G", "-J", "gw", "hop"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "proxyjump gw" in printed and not any(
        line.startswith("proxycommand ") for line in printed
    ), printed
    # %j (OpenSSH 9.6, not in the 9.2 that printed the above): what hop's lookup has.
    said = tmp_path / "said"
    cfg.write_text(f'Match originalhost hop exec "echo %j >> {said}"\n' + cfg.read_text())
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert await anyio.to_thread.run_sync(pool.preflight, ep, "box") is None
        assert await run_command(pool, ep, ["echo", "via 3"], host="box") == b"via 3\n"
    assert set(said.read_text().split()) == {"gw"}, said.read_text()


@pytest.mark.parametrize(
    "spelling",
    [
        "ssh://{user}@127.0.0.1:{port}/",
        "{user}@[127.0.0.1]:{port}",
        "ssh://{encoded};fingerprint=x@127.0.0.1:{port}",
    ],
)
async def test_a_jump_host_written_as_a_uri_or_in_brackets_is_reached_as_ssh_reaches_it(
    spelling: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh reads a ProxyJump hop as ``ssh://user@host:port`` too, and an address in brackets
    (IPv6's way of keeping its colons apart from the port); the user was taken for
    ``ssh://user`` and the brackets kept in the address, so no such hop was reached. A
    URI's user is URL-decoded, its ``;`` parameters dropped, as ssh reads it; it was taken
    as written (``%72%73...``), and the jump host refused it."""
    jump = fleet.host("h1")
    encoded = "".join(f"%{byte:02X}" for byte in fleet.user.encode())
    hop = spelling.format(user=fleet.user, port=jump.port, encoded=encoded)
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Host box\n  HostName 127.0.0.1\n  Port {fleet.host('h0').port}\n"
        f"  ProxyJump {hop}\n"
        f"Host *\n  IdentityFile {fleet.client_key}\n  User {fleet.user}\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
    )
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    before = _connections(fleet, "h1")
    async with SSHPool() as pool:
        assert await anyio.to_thread.run_sync(pool.preflight, ep, "box") is None
        assert await run_command(pool, ep, ["echo", "via"], host="box") == b"via\n"
    assert _connections(fleet, "h1") == before + 1


async def test_a_user_known_hosts_file_that_cannot_be_read_is_a_configuration_error(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """ssh skips a UserKnownHostsFile it cannot read. Under accept-new, whose first such file
    is where a new key is recorded, that made every key pass for a first one, run after run
    (the key could not be written, nor any checked); it is refused, as the inventory's
    known_hosts is."""
    a_dir = tmp_path / "known_hosts.d"
    a_dir.mkdir()
    cfg = _box_config(fleet, tmp_path, f"  UserKnownHostsFile {a_dir}\n")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), host_key_policy="accept-new")
    async with SSHPool() as pool:
        with pytest.raises(ConfigError, match=r"UserKnownHostsFile .*: it is a directory") as info:
            await run_command(pool, ep, ["true"], host="box")
    assert (info.value.host, info.value.path) == ("box", str(a_dir))


@pytest.mark.parametrize("how", ["mode 000", "open refused"])
def test_an_included_file_that_cannot_be_read_is_a_configuration_error(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh stops on an Include'd file it cannot open ("Can't open user config file ...:
    Permission denied"); asyncssh's failure to open it was taken for an unreachable host.
    (Root reads a mode 000 file: there, ``open`` is made to refuse it.)"""
    import errno

    import asyncssh

    included = tmp_path / "included.conf"
    included.write_text("Host box\n  Port 2222\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {tmp_path}/*.conf\nHost box\n  HostName 127.0.0.1\n")
    if how == "mode 000":
        included.chmod(0)
        try:
            included.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("this user reads a mode 000 file")
    else:

        def refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) == str(included):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return open(path, *args, **kwargs)

        monkeypatch.setattr(asyncssh.config, "open", refusing, raising=False)
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(included))
    assert "cannot read the ssh_config file" in problem.message
    assert "Permission denied" in problem.message and "Include" in (problem.hint or "")


@pytest.mark.parametrize(
    ("lines", "option"),
    [
        ("Ciphers nope-cipher@example.com", "Ciphers"),
        ("Ciphers -*", "Ciphers"),
        ("MACs nope-mac@example.com", "MACs"),
        ("MACs nope-mac@example.com\n  Ciphers aes128-ctr,aes128-gcm@openssh.com", "MACs"),
        ("KexAlgorithms nope-kex@example.com,nope2-*", "KexAlgorithms"),
        ("HostKeyAlgorithms nope-key@example.com", "HostKeyAlgorithms"),
        ("PubkeyAcceptedAlgorithms nope-key@example.com", "PubkeyAcceptedAlgorithms"),
        ("PubkeyAcceptedKeyTypes nope-key@example.com", "PubkeyAcceptedKeyTypes"),
        # The first of ssh's two names for one option wins.
        (
            "PubkeyAcceptedKeyTypes nope-key@example.com\n  PubkeyAcceptedAlgorithms ssh-ed25519",
            "PubkeyAcceptedKeyTypes",
        ),
    ],
)
def test_an_algorithm_list_asyncssh_cannot_use_is_a_configuration_error(
    lines: str, option: str, tmp_path: Path
) -> None:
    """A list naming only algorithms asyncssh does not support (or ``-`` removing every
    one) failed in the key exchange, as an unreachable host ("No matching key exchange
    algorithm" for a HostKeyAlgorithms); now the pre-flight names the option, the host and
    what asyncssh supports. ssh refuses such a list too ("Bad SSH2 cipher spec")."""
    cfg = tmp_path / "config"
    cfg.write_text(f"Host box\n  HostName 127.0.0.1\n  {lines}\n")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError), problem
    assert (problem.host, problem.path) == ("box", str(cfg))
    assert problem.message.startswith(f"the ssh_config's {option} "), problem
    assert "asyncssh supports: " in (problem.hint or "")
    supported = {
        "Ciphers": "aes128-gcm@openssh.com",
        "MACs": "hmac-sha2-256",
        "KexAlgorithms": "curve25519-sha256",
    }.get(option, "ssh-ed25519")
    assert supported in (problem.hint or ""), problem.hint


@pytest.mark.parametrize(
    "lines",
    [
        "Ciphers nope-cipher@example.com,aes128-gcm@openssh.com",
        "Ciphers +nope-cipher@example.com",
        "Ciphers ^nope-cipher@example.com",
        "Ciphers -aes128-cbc,aes192-cbc",
        "MACs nope-mac@example.com\n  Ciphers aes128-gcm@openssh.com",
        "KexAlgorithms nope-kex@example.com,curve25519-*",
        "PubkeyAcceptedAlgorithms +ssh-rsa,nope-key@example.com",
    ],
)
async def test_an_algorithm_list_asyncssh_can_use_part_of_keeps_working(
    lines: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    """asyncssh drops the names it does not support (ssh knows some it lacks); while one it
    supports is left, the host is reached."""
    cfg = _box_config(fleet, tmp_path, f"  {lines}\n  UserKnownHostsFile {fleet.known_hosts}\n")
    await _assert_box_echoes(cfg, "ok", preflight=True)


def _ssh_config_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the ssh_config files asyncssh parses from now on, in order."""
    import asyncssh

    parsed: list[str] = []
    real_parse = asyncssh.config.SSHConfig.parse

    def counting(self: Any, path: Path) -> None:
        parsed.append(str(path))
        real_parse(self, path)

    monkeypatch.setattr(asyncssh.config.SSHConfig, "parse", counting)
    return parsed


async def test_a_connection_reuses_the_pre_flight_s_parse_of_the_ssh_config(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-flight parsed each ssh_config, and the connection (each jump host's too)
    parsed it again; now a connection is built on the pre-flight's reading. One made later
    (after an idle close) reads the files once, for itself."""
    parsed = _ssh_config_parses(monkeypatch)
    cfg = _box_config(fleet, tmp_path, f"  UserKnownHostsFile {fleet.known_hosts}\n")
    ep = Endpoint(address="box", ssh_config=(str(cfg),))
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        assert parsed == [str(cfg)]
        assert await run_command(pool, ep, ["echo", "a"], host="box") == b"a\n"
        assert await run_command(pool, ep, ["echo", "b"], host="box") == b"b\n"
        assert parsed == [str(cfg)]
        await pool.invalidate(ep)  # as the idle close drops it
        assert await run_command(pool, ep, ["echo", "c"], host="box") == b"c\n"
        assert parsed == [str(cfg)] * 2
    # Through jump hosts: one parse per host of the chain (up, gw, hop, box), none more.
    chain = _chain_config(fleet, tmp_path)
    ep = Endpoint(address="box", ssh_config=(str(chain),))
    parsed.clear()
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        assert await run_command(pool, ep, ["echo", "j"], host="box") == b"j\n"
    assert parsed == [str(chain)] * 4


async def test_jump_hosts_shared_by_targets_are_looked_up_once(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet behind one bastion: the pre-flight looked each jump host up once, but the
    first target's connection took that lookup away, and every other target's connection
    parsed and checked the bastion's files again."""
    parsed = _ssh_config_parses(monkeypatch)
    chain = _chain_config(fleet, tmp_path)
    targets = [
        Endpoint(address="box", ssh_config=(str(chain),)),
        Endpoint(address="box", port=fleet.host("h0").port, ssh_config=(str(chain),)),
    ]
    async with SSHPool() as pool:
        jumps_read: JumpsRead = {}  # one pass, as a round's pre-flight of its hosts
        for n, ep in enumerate(targets):
            assert pool.preflight(ep, f"t{n}", jumps_read) is None
        for n, ep in enumerate(targets):
            assert await run_command(pool, ep, ["echo", "j"], host=f"t{n}") == b"j\n"
    assert parsed == [str(chain)] * 5  # two targets, three jump hosts


def _ssh_accepts(config: Path, alias: str = "box") -> tuple[bool, str]:
    """Whether this machine's ``ssh -F config -G alias`` reads the config, and its stderr."""
    ssh = shutil.which("ssh")
    assert ssh is not None, "the ssh client is needed (CI installs openssh-client)"
    done = subprocess.run(
        [ssh, "-F", str(config), "-G", alias],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return done.returncode == 0, done.stderr


def _ssh_port(config: Path, alias: str = "box") -> int:
    ssh = shutil.which("ssh")
    assert ssh is not None
    out = subprocess.run(
        [ssh, "-F", str(config), "-G", alias], capture_output=True, text=True, check=True
    ).stdout
    (port,) = [line.split()[1] for line in out.splitlines() if line.startswith("port ")]
    return int(port)


async def test_an_included_ssh_config_others_may_change_is_refused_as_ssh_refuses_it(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh checks every Include'd file as it checks ~/.ssh/config ("Bad owner or
    permissions"), from a file given with -F too, and in a Host block that does not apply
    (it reads the file all the same); asyncssh read it, and its ProxyCommand ran. Once it
    is fixed, the host is reached."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    included = home / ".ssh" / "conf.d" / "box.conf"
    included.write_text("Host box\n  ServerAliveInterval 30\n")
    box = _box_config(fleet, tmp_path, f"  UserKnownHostsFile {fleet.known_hosts}\n")
    cfg = tmp_path / "config"
    for include in ("Include conf.d/*.conf\n", "Host elsewhere\n  Include conf.d/*.conf\n"):
        cfg.write_text(include + box.read_text())
        included.chmod(0o666)
        ep = Endpoint(address="box", ssh_config=(str(cfg),))
        problem = SSHPool().preflight(ep, "box")
        assert isinstance(problem, ConfigError), problem
        assert (problem.host, problem.path) == ("box", str(included))
        assert "bad owner or permissions" in problem.message
        assert f"Include line {cfg} line " in problem.message
        assert "chmod go-w" in (problem.hint or "")
        accepted, stderr = _ssh_accepts(cfg)
        assert not accepted and f"Bad owner or permissions on {included}" in stderr
        included.chmod(0o644)
        assert _ssh_accepts(cfg)[0]
        async with SSHPool() as pool:
            assert pool.preflight(ep, "box") is None
            assert await run_command(pool, ep, ["echo", "ok"], host="box") == b"ok\n"


async def test_a_directory_an_include_glob_matches_is_skipped_as_ssh_skips_it(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Include conf.d/*`` with a directory among the matches: ssh reads nothing from it and
    goes on; the walk of the files refused every host ("Is a directory")."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d" / "old").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / ".ssh" / "conf.d" / "box.conf").write_text("Host box\n  ServerAliveInterval 30\n")
    box = _box_config(fleet, tmp_path, f"  UserKnownHostsFile {fleet.known_hosts}\n")
    cfg = tmp_path / "config"
    cfg.write_text("Include conf.d/*\n" + box.read_text())
    assert _ssh_accepts(cfg)[0]
    await _assert_box_echoes(cfg, "ok", preflight=True)


def test_a_group_writable_ssh_config_is_refused_unless_the_group_is_the_user_s_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As this machine's (Debian's) ssh judges it: group write is fine when the group's
    only member is the user (a umask of 002 with a group per user), else refused."""
    import grp
    import pwd

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    config = home / ".ssh" / "config"
    config.write_text("Host box\n  HostName 127.0.0.1\n")
    config.chmod(0o664)
    me = pwd.getpwuid(os.getuid())
    own = grp.getgrgid(me.pw_gid)
    others = [e.pw_name for e in pwd.getpwall() if e.pw_gid == me.pw_gid and e.pw_uid != me.pw_uid]
    ep = Endpoint(address="box", known_hosts=str(config))
    problem = SSHPool().preflight(ep, "box")
    if others or own.gr_mem not in ([], [me.pw_name]):
        assert isinstance(problem, ConfigError), "the user's group has other members"
    else:
        assert problem is None
    if os.getuid() != 0:
        return  # only root may give the file another group
    shared = [g for g in grp.getgrall() if g.gr_gid != me.pw_gid and g.gr_name == "nogroup"]
    if not shared:
        pytest.skip("no 'nogroup' group to share the file with")
    os.chown(config, -1, shared[0].gr_gid)
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError) and problem.path == str(config)
    assert "bad owner or permissions" in problem.message


#: ssh_config files and whether ssh reads them: a keyword it does not know stops it, in
#: whatever block (Include'd or not), unless an IgnoreUnknown line before it names it (the
#: first one that applies is the one ssh goes by).
_UNKNOWN_OPTION_CASES = [
    ("Host box\n  Bogus yes\n", "Bogus", 2),
    ("Host elsewhere\n  Bogus yes\n", "Bogus", 2),
    ("Host box\n  Bogus yes\nIgnoreUnknown bogus\n", "Bogus", 2),
    ("IgnoreUnknown other\nIgnoreUnknown bogus\nBogus yes\n", "Bogus", 3),
    ("Bogus=yes\n", "Bogus", 1),
    ("IgnoreUnknown bogus\nHost box\n  Bogus yes\n", None, 0),
    ("IgnoreUnknown Bo*,!x\nBOGUS yes\n", None, 0),
    ("Host *\n  IgnoreUnknown UseKeychain,AddKeysToAgent\n  UseKeychain yes\n", None, 0),
    # Every keyword of OpenSSH's, its deprecated and unsupported ones too.
    (
        "Host box\n  Protocol 2\n  UseRoaming no\n  RSAAuthentication no\n  Cipher x\n"
        "  GSSAPIAuthentication no\n  PubkeyAcceptedKeyTypes +ssh-rsa\n  ForwardX11 no\n"
        "  ControlMaster auto\n  ControlPath none\n  LogLevel ERROR\n  SendEnv LANG\n",
        None,
        0,
    ),
]


@pytest.mark.parametrize(("text", "bad", "line"), _UNKNOWN_OPTION_CASES)
def test_an_option_ssh_does_not_know_is_refused_as_ssh_refuses_it(
    text: str, bad: str | None, line: int, tmp_path: Path
) -> None:
    """asyncssh skipped an option it does not know without a word; ssh refuses the whole
    config ("Bad configuration option: x ... terminating"). Now the pre-flight refuses what
    this machine's ssh refuses, naming the file, the line and the option."""
    cfg = tmp_path / "config"
    cfg.write_text(text)
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    accepted, stderr = _ssh_accepts(cfg)
    assert accepted == (problem is None) == (bad is None), (problem, stderr)
    if bad is not None:
        assert isinstance(problem, ConfigError)
        assert (problem.host, problem.path) == ("box", str(cfg))
        assert problem.message.startswith(f"ssh_config line {line}: unknown option ")
        assert repr(bad.lower()) in problem.message
        assert "IgnoreUnknown" in (problem.hint or "")


def test_an_unknown_option_in_an_included_file_is_named_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a file Include'd under a block that does not apply, which asyncssh never read."""
    monkeypatch.setenv("HOME", str(tmp_path))
    included = tmp_path / "more.conf"
    included.write_text("# more\nHost *\n  Bogus 1\n  Other 2\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Host elsewhere\n  Include {included}\n")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(cfg))
    problem = SSHPool().preflight(ep, "box")
    assert isinstance(problem, ConfigError) and problem.path == str(included)
    assert problem.message.startswith("ssh_config lines 3, 4: unknown options 'bogus', 'other'")
    assert not _ssh_accepts(cfg)[0]
    cfg.write_text(f"IgnoreUnknown bogus,other\nHost elsewhere\n  Include {included}\n")
    assert SSHPool().preflight(ep, "box") is None
    assert _ssh_accepts(cfg)[0]


def test_every_keyword_this_ssh_knows_is_accepted(tmp_path: Path) -> None:
    """The keyword table holds every option this machine's ssh prints (``ssh -G``), and
    every keyword of the table is one this ssh knows, or one of another release or build."""
    from remote_sync.ssh.sshconfig import KEYWORDS

    cfg = tmp_path / "config"
    cfg.write_text("")
    ssh = shutil.which("ssh")
    assert ssh is not None
    shown = subprocess.run(
        [ssh, "-F", str(cfg), "-G", "box"], capture_output=True, text=True, check=True
    ).stdout
    options = {line.split()[0].lower() for line in shown.splitlines() if line.strip()}
    assert options <= KEYWORDS, sorted(options - KEYWORDS)
    elsewhere = {  # newer releases, macOS, FreeBSD and HPN-SSH, an older release
        "channeltimeout", "obscurekeystroketiming", "refuseconnection", "tag",
        "warnweakcrypto", "usekeychain", "hpnbuffersize", "hpndisabled", "noneenabled",
        "nonemacenabled", "noneswitch", "tcprcvbuf", "tcprcvbufpoll", "versionaddendum",
        "zeroknowledgepasswordauthentication",
    }  # fmt: skip
    for keyword in sorted(KEYWORDS - elsewhere):
        cfg.write_text(f"Host *\n  {keyword} x\n")
        assert "Bad configuration option" not in _ssh_accepts(cfg)[1], keyword


async def test_a_match_exec_command_with_an_equals_sign_is_run_whole(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """asyncssh cut a quoted word of a Match line at its '=' ("Invalid match condition"),
    failing every host of the config; ssh runs the command whole. ``Match host=x`` (no
    quotes) still reads as ``Match host x``, as in ssh."""
    h = fleet.host("h0")
    cfg = tmp_path / "config"
    cfg.write_text(
        'Match exec "test 1 = 2"\n  Port 1\n'
        f'Match exec "X=1 test 1 = 1"\n  Port {h.port}\n'
        "Match originalhost=box\n  HostName 127.0.0.1\n"
        f"Host box\n  User {fleet.user}\n  IdentityFile {fleet.client_key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {fleet.known_hosts}\n"
    )
    assert _ssh_port(cfg) == h.port
    await _assert_box_echoes(cfg, "ok", preflight=True)


async def test_a_kept_connection_the_ssh_config_now_sends_elsewhere_is_made_anew(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A long-lived pool (the agent's) reused a connection whatever the ssh_config said by
    the next pre-flight: an alias whose HostName, Port or User was edited went on to the old
    machine for as long as syncs kept coming. A pre-flight that finds the files say
    otherwise makes the next operation connect anew, to where they say now (ssh's
    ControlPath, whose %C hashes host, port and user, would name a new master too); one
    that finds them unchanged keeps the connection."""
    cfg = _box_config(fleet, tmp_path, "")
    ep = Endpoint(address="box", ssh_config=(str(cfg),), known_hosts=str(fleet.known_hosts))
    where = ["sh", "-c", 'echo "$SSH_CONNECTION"']
    ports = {name: str(fleet.host(name).port) for name in ("h0", "h1")}
    async with SSHPool() as pool:
        assert pool.preflight(ep, "box") is None
        assert (await run_command(pool, ep, where)).split()[3] == ports["h0"].encode()
        assert pool.preflight(ep, "box") is None  # nothing changed: the same connection
        assert (await run_command(pool, ep, where)).split()[3] == ports["h0"].encode()
        assert pool.stats(ep).connects == 1
        cfg.write_text(cfg.read_text().replace(f"Port {ports['h0']}", f"Port {ports['h1']}"))
        assert pool.preflight(ep, "box") is None
        assert (await run_command(pool, ep, where)).split()[3] == ports["h1"].encode()
        assert pool.stats(ep).connects == 2
