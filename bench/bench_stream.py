#!/usr/bin/env python3
"""Benchmarks of the streaming SSH core (``exec_streaming``) against OpenSSH, in one run.

Starts its own fleet of real sshd servers on 127.0.0.1 (``tests/sshfleet.py``) and measures:

1. ``pull``: exec_streaming of a large JSONL file into :class:`JsonlDecoder` (every chunk fed,
   records counted), against ``ssh -F cfg alias cat file >/dev/null`` on the same file, with
   ssh's default cipher and with ``-c aes128-gcm@openssh.com`` (ours negotiates AES-GCM).
   Runs alternate; the median of 3 is kept. Ours includes its connect, as ssh does.
2. ``rss``: peak RSS of that pull, run in a child process (``--child pull``), for the large file
   and for a 1 MiB file, plus the child's RSS after imports (before connecting).
3. ``decoder``: ``bench/bench_decoder.py`` run as a subprocess (MB/s vs an orjson split peer).
4. ``cancel``: pull ``head -c 8G /dev/zero``; after 64 MiB another task calls
   ``registry.cancel(id)``; time until the consumer's loop ends with TransferCancelledError and
   until the ``exec_streaming`` block has fully exited (remote clean-up). Absolute ms.
5. ``relay``: a pull through ``bench/delay_relay.py`` (50 ms RTT) with windows of 2, 16
   (default) and 64 MiB, against ``ssh -o ProxyCommand=... cat`` through the same relay. Ours
   is timed on an open connection; ssh's time is given raw and minus ``ssh ... true``.

    python3 bench/bench_stream.py [--quick] [--json] [--profile]

``--quick`` uses 64 MiB / 16 MiB files and fewer repeats (about a minute); the full run
(512 MiB / 64 MiB) takes a few minutes on a 2-core machine. Every peer runs in the same run on
the same machine, so ratios, not absolute figures, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from _common import (
    BENCH,
    MiB,
    median,
    print_rows,
    report_json,
    rss_kib,
    run_measuring_rss,
    timed_run,
    tool_version,
)

from remote_sync.cancel import CancelRegistry
from remote_sync.decode.jsonl import JsonlDecoder
from remote_sync.errors import TransferCancelledError
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import PoolSettings, SSHPool
from remote_sync.ssh.stream import exec_streaming, run_command

THIS = Path(__file__).resolve()
RELAY = BENCH / "delay_relay.py"
RELAY_DELAY_MS = 25
GCM = "aes128-gcm@openssh.com"
DICT = dict[str, Any]

# Goals (see docs/benchmarks.md).
GOAL_PULL_RATIO = 1.0  # ours / ssh cat time, at most
GOAL_PEAK_RSS_MB = 64.0  # peak RSS of the large pull, MB (10^6 bytes), at most
GOAL_RSS_GROWTH_MB = 8.0  # large-pull peak minus 1 MiB-pull peak, at most
GOAL_RELAY_SPEEDUP = 5.0  # our MB/s over ssh cat's through the 50 ms RTT relay, at least


# ----------------------------------------------------------------------------- the pull


async def pull(
    pool: SSHPool,
    endpoint: Endpoint,
    path: str,
    *,
    decode_type: Any = DICT,
    pause: float = 0.0,
) -> tuple[int, int]:
    """Stream ``cat path`` through exec_streaming into a JsonlDecoder of ``decode_type``
    (``None``: count bytes only); returns (bytes, records). ``pause``: seconds the consumer
    awaits after each chunk (a consumer waiting on I/O, during which the event loop reads on)."""
    nbytes = records = 0
    decoder: JsonlDecoder[Any] = JsonlDecoder(decode_type or DICT)
    async with exec_streaming(pool, endpoint, ["cat", path]) as stream:
        if pause:
            async for chunk in stream:
                nbytes += len(chunk)
                records += len(decoder.feed(chunk))
                await anyio.sleep(pause)
        elif decode_type is not None:
            feed = decoder.feed
            async for chunk in stream:
                nbytes += len(chunk)
                records += len(feed(chunk))
        else:
            async for chunk in stream:
                nbytes += len(chunk)
    if decode_type is not None and decoder.committed_offset != nbytes:
        raise RuntimeError(f"decoder committed {decoder.committed_offset} of {nbytes} bytes")
    return nbytes, records


async def timed_pull(
    endpoint: Endpoint,
    path: str,
    *,
    decode_type: Any = DICT,
    window: int | None = None,
    time_true: bool = False,
    pause: float = 0.0,
) -> dict[str, Any]:
    """One pull on a fresh pool: connect time, pull time (open channel → last byte), figures.

    ``time_true`` also times ``exec_streaming(["true"])`` on the open connection first: the
    fixed cost of one remote command (channel open, exec, exit status, close).
    """
    settings = PoolSettings() if window is None else PoolSettings(window=window)
    async with SSHPool(settings) as pool:
        t0 = time.perf_counter()
        conn = await pool.reconnect(endpoint)
        t1 = time.perf_counter()
        true_s = 0.0
        if time_true:
            await run_command(pool, endpoint, ["true"])
            true_s = time.perf_counter() - t1
            t1 = time.perf_counter()
        nbytes, records = await pull(pool, endpoint, path, decode_type=decode_type, pause=pause)
        t2 = time.perf_counter()
        cipher = str(conn.get_extra_info("recv_cipher"))
    return {
        "connect_s": t1 - t0 - true_s,
        "true_s": true_s,
        "pull_s": t2 - t1,
        "total_s": t2 - t0 - true_s,
        "bytes": nbytes,
        "records": records,
        "cipher": cipher,
    }


# ----------------------------------------------------------------------------- child mode


def child_main(args: argparse.Namespace) -> int:
    """``--child pull``: one pull in a fresh process; prints its figures as JSON."""
    baseline, _ = rss_kib()
    endpoint = Endpoint(
        address=args.alias, ssh_config=(args.ssh_config,), known_hosts=args.known_hosts
    )
    window = args.window * MiB if args.window else None

    def run() -> dict[str, float]:
        return anyio.run(
            lambda: timed_pull(
                endpoint,
                args.file,
                decode_type=None if args.no_decode else DICT,
                window=window,
                pause=args.pause_ms / 1e3,
            )
        )

    if args.profile_top:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        figures = profiler.runcall(run)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        stats.sort_stats("cumulative").print_stats(args.profile_top)
    else:
        figures = run()
    _, peak = rss_kib()
    figures.update(baseline_rss_kib=baseline, vmhwm_kib=peak)
    print(json.dumps(figures))
    return 0


def child_argv(
    fleet: Any, path: str, *, window_mib: int | None = None, pause_ms: float = 0.0
) -> list[str]:
    argv = [
        sys.executable,
        str(THIS),
        "--child",
        "pull",
        "--file",
        path,
        "--alias",
        fleet.host("h0").alias,
        "--ssh-config",
        str(fleet.ssh_config),
        "--known-hosts",
        str(fleet.known_hosts),
    ]
    if window_mib:
        argv += ["--window", str(window_mib)]
    if pause_ms:
        argv += ["--pause-ms", str(pause_ms)]
    return argv


# ----------------------------------------------------------------------------- benchmarks


def fleet_endpoint(fleet: Any) -> Endpoint:
    return Endpoint(
        address=fleet.host("h0").alias,
        ssh_config=(str(fleet.ssh_config),),
        known_hosts=str(fleet.known_hosts),
    )


def ssh_base(fleet: Any, *options: str) -> list[str]:
    return [
        fleet.ssh,
        "-F",
        str(fleet.ssh_config),
        "-o",
        "BatchMode=yes",
        *options,
        fleet.host("h0").alias,
        "--",
    ]


def ssh_default_cipher(fleet: Any) -> str:
    out = subprocess.run(
        [fleet.ssh, "-G", "-F", str(fleet.ssh_config), fleet.host("h0").alias],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("ciphers "):
            return line.split()[1].split(",")[0]
    return "?"


def bench_pull(fleet: Any, path: str, size: int, lines: int, repeat: int) -> dict[str, Any]:
    endpoint = fleet_endpoint(fleet)
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "ours",
            "ours_connect",
            "ours_pull",
            "ours_nodecode",
            "ours_view",
            "ssh",
            "ssh_gcm",
            "ssh_true",
        )
    }
    from bench_decoder import MessageView  # the indexer's narrow view of a line

    cipher = "?"
    for rep in range(repeat):
        figures = anyio.run(lambda: timed_pull(endpoint, path))
        if figures["bytes"] != size or figures["records"] != lines:
            raise RuntimeError(f"pull got {figures['bytes']} B / {figures['records']} records")
        cipher = str(figures["cipher"])
        runs["ours"].append(figures["total_s"])
        runs["ours_connect"].append(figures["connect_s"])
        runs["ours_pull"].append(figures["pull_s"])
        runs["ours_nodecode"].append(
            anyio.run(partial(timed_pull, endpoint, path, decode_type=None))["total_s"]
        )
        runs["ours_view"].append(
            anyio.run(partial(timed_pull, endpoint, path, decode_type=MessageView))["total_s"]
        )
        runs["ssh"].append(timed_run([*ssh_base(fleet), "cat", path]))
        runs["ssh_gcm"].append(timed_run([*ssh_base(fleet, "-c", GCM), "cat", path]))
        runs["ssh_true"].append(timed_run([*ssh_base(fleet), "true"]))
        progress(
            f"pull rep {rep + 1}/{repeat}: ours {runs['ours'][-1]:.2f}s, "
            f"ssh {runs['ssh'][-1]:.2f}s, ssh gcm {runs['ssh_gcm'][-1]:.2f}s"
        )
    med = {k: median(v) for k, v in runs.items()}
    mb = size / 1e6
    # Connect-adjusted: our time on an open connection against ssh's minus ``ssh ... true``
    # (process start, key exchange, auth, one session: ssh's default kex is heavier).
    ssh_data = max(med["ssh"] - med["ssh_true"], 1e-9)
    ssh_gcm_data = max(med["ssh_gcm"] - med["ssh_true"], 1e-9)
    return {
        "bytes": size,
        "lines": lines,
        "mean_line_bytes": size / lines,
        "repeat": repeat,
        "our_cipher": cipher,
        "ssh_default_cipher": ssh_default_cipher(fleet),
        "runs_s": runs,
        "median_s": med,
        "mb_per_s": {
            k: mb / med[k] for k in ("ours", "ours_nodecode", "ours_view", "ssh", "ssh_gcm")
        },
        "ratio_vs_ssh": med["ours"] / med["ssh"],
        "ratio_vs_ssh_gcm": med["ours"] / med["ssh_gcm"],
        "ratio_nodecode_vs_ssh": med["ours_nodecode"] / med["ssh"],
        "ratio_nodecode_vs_ssh_gcm": med["ours_nodecode"] / med["ssh_gcm"],
        "ratio_view_vs_ssh": med["ours_view"] / med["ssh"],
        "ratio_view_vs_ssh_gcm": med["ours_view"] / med["ssh_gcm"],
        "adjusted_ratio_vs_ssh": med["ours_pull"] / ssh_data,
        "adjusted_ratio_vs_ssh_gcm": med["ours_pull"] / ssh_gcm_data,
        "goal_ratio_max": GOAL_PULL_RATIO,
        "goal_met": med["ours"] / med["ssh"] <= GOAL_PULL_RATIO
        and med["ours"] / med["ssh_gcm"] <= GOAL_PULL_RATIO,
    }


def bench_rss(fleet: Any, big: str, small: str, medium: str, repeat: int) -> dict[str, Any]:
    cases: dict[str, list[str]] = {
        "small": child_argv(fleet, small),
        "large": child_argv(fleet, big),
        "large_window_2mib": child_argv(fleet, big, window_mib=2),
        # Not the goal's case: a consumer that awaits I/O (2 ms per chunk) lets the event loop
        # keep reading, so the channel buffers fill to their bound (see stream.py).
        "slow_consumer": child_argv(fleet, medium, pause_ms=2),
        "slow_consumer_window_2mib": child_argv(fleet, medium, window_mib=2, pause_ms=2),
    }
    results: dict[str, Any] = {}
    how = "?"
    for name, argv in cases.items():
        peaks, hwms, baselines, seconds = [], [], [], []
        for _ in range(repeat):
            out, peak_kib, how = run_measuring_rss(argv)
            figures = json.loads(out.strip().splitlines()[-1])
            peaks.append(peak_kib)
            hwms.append(figures["vmhwm_kib"])
            baselines.append(figures["baseline_rss_kib"])
            seconds.append(figures["total_s"])
        results[name] = {
            "peak_rss_mb": max(peaks) * 1024 / 1e6,
            "vmhwm_mb": max(hwms) * 1024 / 1e6,
            "baseline_rss_mb": median(baselines) * 1024 / 1e6,
            "seconds": median(seconds),
        }
        progress(f"rss {name}: peak {results[name]['peak_rss_mb']:.1f} MB")
    growth = results["large"]["peak_rss_mb"] - results["small"]["peak_rss_mb"]
    return {
        "measured_with": how,
        "repeat": repeat,
        "cases": results,
        "growth_mb": growth,
        "goal_peak_mb_max": GOAL_PEAK_RSS_MB,
        "goal_growth_mb_max": GOAL_RSS_GROWTH_MB,
        "goal_peak_met": results["large"]["peak_rss_mb"] <= GOAL_PEAK_RSS_MB,
        "goal_growth_met": growth <= GOAL_RSS_GROWTH_MB,
    }


def bench_decoder(megabytes: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_decoder.py"), "--mb", str(megabytes), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    figures: dict[str, Any] = json.loads(out)
    progress(
        "decoder: "
        + ", ".join(f"{k} {v['mb_per_s']:.0f} MB/s" for k, v in figures["results"].items())
    )
    return figures


async def cancel_once(
    pool: SSHPool, endpoint: Endpoint, registry: CancelRegistry, i: int, after: int
) -> dict[str, float]:
    tid = f"bench-cancel-{i}"
    reached = anyio.Event()
    marks: dict[str, float] = {}
    received = 0
    remote_pid = 0

    async def canceller() -> None:
        await reached.wait()
        marks["cancel"] = time.perf_counter()
        registry.cancel(tid, "benchmark")

    async with anyio.create_task_group() as tg:
        tg.start_soon(canceller)
        try:
            async with exec_streaming(
                pool,
                endpoint,
                ["head", "-c", "8G", "/dev/zero"],
                transfer_id=tid,
                registry=registry,
            ) as stream:
                try:
                    async for chunk in stream:
                        received += len(chunk)
                        if received >= after and not reached.is_set():
                            marks["bytes_at_cancel"] = received
                            reached.set()
                except TransferCancelledError:
                    marks["loop_end"] = time.perf_counter()
                    remote_pid = stream.remote_pid or 0
                    raise
        except TransferCancelledError:
            marks["exit"] = time.perf_counter()
    if "loop_end" not in marks or "exit" not in marks:
        raise RuntimeError("the pull did not end with TransferCancelledError")
    alive_at_exit = process_alive(remote_pid)
    # Polling /proc: the remote process is local here, and nothing signals its end to us.
    while process_alive(remote_pid) and time.perf_counter() - marks["exit"] < 5:
        await anyio.sleep(0.001)
    return {
        "loop_end_ms": (marks["loop_end"] - marks["cancel"]) * 1e3,
        "exit_ms": (marks["exit"] - marks["cancel"]) * 1e3,
        "remote_gone_ms": (time.perf_counter() - marks["cancel"]) * 1e3,
        "remote_alive_at_exit": float(alive_at_exit),
        "bytes_after_cancel": float(received - marks["bytes_at_cancel"]),
    }


def process_alive(pid: int) -> bool:
    if pid <= 1:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def bench_cancel(fleet: Any, repeat: int, after: int = 64 * MiB) -> dict[str, Any]:
    endpoint = fleet_endpoint(fleet)

    async def run() -> list[dict[str, float]]:
        registry = CancelRegistry()
        async with SSHPool() as pool:
            await pool.reconnect(endpoint)
            return [await cancel_once(pool, endpoint, registry, i, after) for i in range(repeat)]

    runs = anyio.run(run)
    keys = ("loop_end_ms", "exit_ms", "remote_gone_ms", "bytes_after_cancel")
    result: dict[str, Any] = {
        "repeat": repeat,
        "cancel_after_bytes": after,
        "median": {k: median([r[k] for r in runs]) for k in keys},
        "max": {k: max(r[k] for r in runs) for k in keys},
        "remote_alive_at_exit": int(sum(r["remote_alive_at_exit"] for r in runs)),
        "runs": runs,
    }
    progress(
        f"cancel: loop end median {result['median']['loop_end_ms']:.1f} ms, "
        f"exit median {result['median']['exit_ms']:.1f} ms"
    )
    return result


def bench_relay(fleet: Any, path: str, size: int, repeat: int) -> dict[str, Any]:
    host = fleet.host("h0")
    relay = f"{shlex.quote(sys.executable)} {shlex.quote(str(RELAY))} --delay-ms {RELAY_DELAY_MS}"
    endpoint = Endpoint(
        address="127.0.0.1",
        port=host.port,
        user=fleet.user,
        identity_files=(str(fleet.client_key),),
        ssh_config=(),
        known_hosts=str(fleet.known_hosts),
        proxy_command=f"{relay} 127.0.0.1 {host.port}",
    )
    ssh = ssh_base(fleet, "-o", f"ProxyCommand={relay} %h %p")
    windows = {"ours_w2": 2 * MiB, "ours_w16": 16 * MiB, "ours_w64": 64 * MiB}
    extra = ("ours_w16_nodecode", "ours_true", "ssh", "ssh_true")
    runs: dict[str, list[float]] = {k: [] for k in (*windows, *extra)}
    connects: list[float] = []
    for rep in range(repeat):
        for name, window in windows.items():
            figures = anyio.run(
                partial(timed_pull, endpoint, path, window=window, time_true=name == "ours_w16")
            )
            if figures["bytes"] != size:
                raise RuntimeError(f"relay pull got {figures['bytes']} of {size} bytes")
            runs[name].append(figures["pull_s"])
            connects.append(figures["connect_s"])
            if name == "ours_w16":
                runs["ours_true"].append(figures["true_s"])
        figures = anyio.run(partial(timed_pull, endpoint, path, decode_type=None))
        runs["ours_w16_nodecode"].append(figures["pull_s"])
        runs["ssh"].append(timed_run([*ssh, "cat", path]))
        runs["ssh_true"].append(timed_run([*ssh, "true"]))
        progress(
            f"relay rep {rep + 1}/{repeat}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items())
        )
    med = {k: median(v) for k, v in runs.items()}
    mb = size / 1e6
    ssh_adjusted = max(med["ssh"] - med["ssh_true"], 1e-9)
    speed = {k: mb / med[k] for k in (*windows, "ours_w16_nodecode")}
    speed["ssh_raw"] = mb / med["ssh"]
    speed["ssh_adjusted"] = mb / ssh_adjusted
    # Data phase only on both sides: minus the cost of one remote ``true`` (ours on the open
    # connection; ssh's including its connect).
    speed["ours_w16_data_phase"] = mb / max(med["ours_w16"] - med["ours_true"], 1e-9)
    return {
        "bytes": size,
        "rtt_ms": 2 * RELAY_DELAY_MS,
        "repeat": repeat,
        "runs_s": runs,
        "median_s": med,
        "our_connect_s": median(connects),
        "mb_per_s": speed,
        "speedup_raw": {k: speed[k] / speed["ssh_raw"] for k in windows},
        "speedup_adjusted": {k: speed[k] / speed["ssh_adjusted"] for k in windows},
        "speedup_data_phase": speed["ours_w16_data_phase"] / speed["ssh_adjusted"],
        "speedup_nodecode_raw": speed["ours_w16_nodecode"] / speed["ssh_raw"],
        "speedup_nodecode_adjusted": speed["ours_w16_nodecode"] / speed["ssh_adjusted"],
        "goal_speedup_min": GOAL_RELAY_SPEEDUP,
        "goal_met_raw": speed["ours_w16"] / speed["ssh_raw"] >= GOAL_RELAY_SPEEDUP,
        "goal_met_adjusted": speed["ours_w16"] / speed["ssh_adjusted"] >= GOAL_RELAY_SPEEDUP,
    }


def bench_profile(fleet: Any, path: str, top: int) -> str:
    proc = subprocess.run(
        [*child_argv(fleet, path), "--profile-top", str(top)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return proc.stderr


# ----------------------------------------------------------------------------- output


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def yes(flag: bool) -> str:
    return "met" if flag else "MISSED"


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    p = r["pull"]
    mib = p["bytes"] / MiB
    med = p["median_s"]
    ratio = f"goal <= {GOAL_PULL_RATIO:g}"
    rows += [
        (
            f"1 pull {mib:.0f} MiB + decode vs ssh cat ({p['ssh_default_cipher']})",
            f"{med['ours']:.2f} s",
            f"{med['ssh']:.2f} s",
            f"{p['ratio_vs_ssh']:.2f}",
            f"{ratio}: {yes(p['ratio_vs_ssh'] <= GOAL_PULL_RATIO)}",
        ),
        (
            f"1 pull {mib:.0f} MiB + decode vs ssh -c {GCM}",
            f"{med['ours']:.2f} s",
            f"{med['ssh_gcm']:.2f} s",
            f"{p['ratio_vs_ssh_gcm']:.2f}",
            f"{ratio}: {yes(p['ratio_vs_ssh_gcm'] <= GOAL_PULL_RATIO)}",
        ),
        (
            f"1 pull {mib:.0f} MiB, no decode, vs ssh cat (default)",
            f"{med['ours_nodecode']:.2f} s",
            f"{med['ssh']:.2f} s",
            f"{p['ratio_nodecode_vs_ssh']:.2f}",
            "info",
        ),
        (
            "1 pull, decode into a 3-field view Struct, vs ssh cat (default)",
            f"{med['ours_view']:.2f} s",
            f"{med['ssh']:.2f} s",
            f"{p['ratio_view_vs_ssh']:.2f}",
            "info",
        ),
        (
            "1 same, connect-adjusted: ours on open conn vs ssh - ssh true",
            f"{med['ours_pull']:.2f} s",
            f"{med['ssh'] - med['ssh_true']:.2f} s",
            f"{p['adjusted_ratio_vs_ssh']:.2f}",
            "info",
        ),
        (
            "1 same, connect-adjusted, vs ssh -c aes128-gcm - ssh true",
            f"{med['ours_pull']:.2f} s",
            f"{med['ssh_gcm'] - med['ssh_true']:.2f} s",
            f"{p['adjusted_ratio_vs_ssh_gcm']:.2f}",
            "info",
        ),
        (
            "1 connect: ours vs ssh true",
            f"{med['ours_connect'] * 1e3:.0f} ms",
            f"{med['ssh_true'] * 1e3:.0f} ms",
            f"{med['ours_connect'] / med['ssh_true']:.2f}",
            "info (included above)",
        ),
    ]
    s = r["rss"]
    c = s["cases"]
    rows += [
        (
            "2 peak RSS, large pull",
            f"{c['large']['peak_rss_mb']:.1f} MB",
            "-",
            "-",
            f"goal <= {GOAL_PEAK_RSS_MB:g} MB: {yes(s['goal_peak_met'])}",
        ),
        ("2 peak RSS, 1 MiB pull (peer)", f"{c['small']['peak_rss_mb']:.1f} MB", "-", "-", "info"),
        (
            "2 peak RSS growth large - 1 MiB",
            f"{s['growth_mb']:+.1f} MB",
            "-",
            "-",
            f"goal <= {GOAL_RSS_GROWTH_MB:g} MB: {yes(s['goal_growth_met'])}",
        ),
        (
            "2 RSS after imports (child baseline)",
            f"{c['small']['baseline_rss_mb']:.1f} MB",
            "-",
            "-",
            "info",
        ),
        (
            "2 peak RSS, slow consumer (2 ms/chunk), relay-size file",
            f"{c['slow_consumer']['peak_rss_mb']:.1f} MB",
            "-",
            "-",
            "info (worst case, not the goal)",
        ),
        (
            "2 same, window 2 MiB",
            f"{c['slow_consumer_window_2mib']['peak_rss_mb']:.1f} MB",
            "-",
            "-",
            "info",
        ),
        (
            "2 peak RSS, large pull, window 2 MiB",
            f"{c['large_window_2mib']['peak_rss_mb']:.1f} MB",
            "-",
            "-",
            "info",
        ),
    ]
    d = r["decoder"]["results"]
    peer = d["peer_orjson_split"]["mb_per_s"]
    for name in ("jsonl_default", "jsonl_view_struct"):
        rows.append(
            (
                f"3 decoder {name} vs orjson split",
                f"{d[name]['mb_per_s']:.0f} MB/s",
                f"{peer:.0f} MB/s",
                f"{d[name]['ratio_vs_peer']:.2f}",
                "info",
            )
        )
    k = r["cancel"]
    for key, label in (
        ("loop_end_ms", "consumer loop ends"),
        ("exit_ms", "block fully exited"),
        ("remote_gone_ms", "remote process gone"),
    ):
        rows.append(
            (
                f"4 cancel -> {label} (median / max)",
                f"{k['median'][key]:.1f} / {k['max'][key]:.1f} ms",
                "-",
                "-",
                "absolute, no peer",
            )
        )
    x = r["relay"]
    sp = x["mb_per_s"]
    for name, label in (
        ("ours_w2", "2 MiB"),
        ("ours_w16", "16 MiB (default)"),
        ("ours_w64", "64 MiB"),
    ):
        goal = "info"
        if name == "ours_w16":
            goal = (
                f"goal >= {GOAL_RELAY_SPEEDUP:g}x: raw {yes(x['goal_met_raw'])}, "
                f"adjusted {yes(x['goal_met_adjusted'])}"
            )
        rows.append(
            (
                f"5 relay 50 ms RTT, window {label}",
                f"{sp[name]:.1f} MB/s",
                f"{sp['ssh_raw']:.1f} / {sp['ssh_adjusted']:.1f} MB/s",
                f"{x['speedup_raw'][name]:.1f}x / {x['speedup_adjusted'][name]:.1f}x",
                goal,
            )
        )
    med = x["median_s"]
    rows += [
        (
            "5 relay, window 16 MiB, no decode",
            f"{sp['ours_w16_nodecode']:.1f} MB/s",
            f"{sp['ssh_raw']:.1f} / {sp['ssh_adjusted']:.1f} MB/s",
            f"{x['speedup_nodecode_raw']:.1f}x / {x['speedup_nodecode_adjusted']:.1f}x",
            "info",
        ),
        (
            "5 relay, window 16 MiB, data phase (minus one `true`)",
            f"{sp['ours_w16_data_phase']:.1f} MB/s",
            f"{sp['ssh_adjusted']:.1f} MB/s",
            f"{x['speedup_data_phase']:.1f}x",
            "info",
        ),
        (
            "5 relay, one remote `true`: ours on open conn vs ssh",
            f"{med['ours_true'] * 1e3:.0f} ms",
            f"{med['ssh_true'] * 1e3:.0f} ms",
            "-",
            f"info (our connect {x['our_connect_s'] * 1e3:.0f} ms)",
        ),
    ]
    print_rows(rows)
    print(
        "\nratio: ours/peer time for 1, ours/peer MB/s for 3, speed-up for 5 "
        "(raw / ssh minus its connect). Relay peer: ssh cat raw / connect-adjusted."
    )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", action="store_true", help="print a JSON object of figures")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one pull (cProfile, in a child) and print the top",
    )
    child = parser.add_argument_group("child mode (internal)")
    child.add_argument("--child", choices=["pull"])
    child.add_argument("--file")
    child.add_argument("--alias")
    child.add_argument("--ssh-config")
    child.add_argument("--known-hosts")
    child.add_argument("--window", type=int, help="channel window in MiB")
    child.add_argument("--no-decode", action="store_true")
    child.add_argument("--pause-ms", type=float, default=0.0, help="consumer pause per chunk")
    child.add_argument(
        "--profile-top",
        type=int,
        default=0,
        help="profile the child's pull; print the top N functions",
    )
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    return run_all(quick=args.quick, as_json=args.json, profile=args.profile)


def run_all(*, quick: bool, as_json: bool, profile: bool) -> int:
    import asyncssh
    from _common import jsonl_block, write_jsonl_file
    from sshfleet import SSHFleet  # type: ignore[import-not-found]  # tests/, on sys.path

    big_size = (64 if quick else 512) * MiB
    relay_size = (16 if quick else 64) * MiB
    repeat = 3
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "asyncssh": asyncssh.__version__,
        "openssh": tool_version(["ssh", "-V"]),
    }
    fleet = SSHFleet(1)
    try:
        progress("generating JSONL data")
        block = jsonl_block(16)
        files: dict[str, tuple[str, int, int]] = {}
        for name, size in (
            ("big.jsonl", big_size),
            ("small.jsonl", MiB),
            ("relay.jsonl", relay_size),
        ):
            path = fleet.write("h0", name, b"")
            written, lines = write_jsonl_file(path, size, block)
            files[name] = (str(path), written, lines)
        del block
        big, big_bytes, big_lines = files["big.jsonl"]

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("pull", lambda: bench_pull(fleet, big, big_bytes, big_lines, repeat)),
            (
                "rss",
                lambda: bench_rss(
                    fleet,
                    big,
                    files["small.jsonl"][0],
                    files["relay.jsonl"][0],
                    1 if quick else 2,
                ),
            ),
            ("decoder", lambda: bench_decoder(16 if quick else 64)),
            ("cancel", lambda: bench_cancel(fleet, 5 if quick else 10)),
            (
                "relay",
                lambda: bench_relay(
                    fleet, files["relay.jsonl"][0], files["relay.jsonl"][1], repeat
                ),
            ),
        ]
        for name, step in steps:
            progress(f"running {name}")
            results[name] = step()
        if profile:
            results["profile"] = bench_profile(fleet, big, 25)
    finally:
        fleet.close()
    results["elapsed_s"] = time.perf_counter() - started

    if report_json(results, save=None, as_json=as_json):
        return 0
    print(
        f"{results['date']}  {results['openssh']}  asyncssh {results['asyncssh']}  "
        f"Python {results['python']}  {results['cpus']} CPUs  "
        f"{'quick' if quick else 'full'} run, {results['elapsed_s']:.0f} s\n"
    )
    print_table(results)
    if profile:
        print("\n" + results["profile"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
