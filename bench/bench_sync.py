#!/usr/bin/env python3
"""Benchmarks of incremental mirroring (``remote-sync sync``, whole process) against rsync.

Starts its own fleets of real sshd servers on 127.0.0.1 (``tests/sshfleet.py``), writes
OpenClaw-like session trees into them, and measures, each against a peer in the same run
(median of 3 alternating runs; every run starts after ``sync(2)``, so no run pays for the
previous one's dirty pages):

1. ``one``: one host, a tree of 500 sessions (~100 MB). Initial mirror: ``remote-sync sync``
   vs ``rsync -a -e "ssh -F cfg" alias:ROOT/agents/ DEST/`` (goal <= 0.8x). Incremental after
   20 sessions grew by 10 KiB each: vs ``rsync -a --append`` (goal <= 1.0x). No-change run
   (info). Bytes on the wire of the incremental and the no-change run, counted for both tools
   by ``bench/count_relay.py`` as the ProxyCommand (goal: <= 1.2x the appended bytes + 100 B
   per file).
2. ``fleet``: 20 hosts x 200 sessions (~10 MB per host): ``remote-sync sync`` (default
   concurrency 8) vs ``xargs -P8`` running one ``rsync -a`` per host. Initial (goal <= 0.8x),
   incremental after 10 sessions per host grew by 10 KiB (goal <= 0.3x), no-change (info).
3. ``rss`` / ``big``: peak RSS of ``remote-sync sync`` (``/usr/bin/time -v`` when installed,
   else the child's rusage) for the fleet runs and for one host with one 1 GiB session (goal
   <= 64 MB each); the 1 GiB initial mirror's time vs ``rsync -a`` and ``ssh cat > file``.

Where this version of the CLI has ``--no-index``, mirror-only runs of ``remote-sync sync`` join
the alternation (info). Where it has ``remote-sync agent``, the incremental and no-change runs
of parts 1 and 2 are also timed with warm connections: ``remote-sync sync`` of a destination
an agent serves (the agent keeps each host's connection between runs), against the named peer
(a cold rsync, with the part's goal) and against the same rsync through OpenSSH control masters
(``ControlMaster=auto``, ``ControlPersist``: warm connections on both sides, info); the
initial mirror too, through a fresh agent per run, started before the timed sync but not yet
connected (checked), against the named peer with the initial goal. An agent's peak RSS is
read from ``/proc`` before it stops, and a fresh agent's CPU time for its sync around it.
``--profile``'s phases wrap this tree's modules by name (``PHASES``): run against an older
copy, it stops at the first name that copy lacks. Every run also records its
client CPU time (``time -v``) and the rest of the machine's busy CPU time meanwhile
(``/proc/stat``: sshd, remote commands, kernel, and any other load on the machine). After
every run the mirrors are checked against the remote files (remote-sync: byte-identical up
to each JSONL file's last newline; rsync: identical).

    python3 bench/bench_sync.py [--quick] [--json] [--profile] [--save FILE] [--repeat N]
                                [--only one|fleet|big]

``--quick`` shrinks everything (100 sessions / 20 MB, 5 hosts x 100 sessions, a 128 MiB
session; one to two minutes). ``--profile`` adds diagnostics, each in child processes: a phase
breakdown of instrumented runs, cProfile tops, what-if runs with one library setting changed in
memory (window, fsync, gc.freeze, overlap, SSH compression, concurrency), a tracemalloc peak,
the remote scripts timed alone through OpenSSH, Python's start-up cost and a comparison of
fsync strategies. Progress goes to stderr. It benchmarks whichever ``remote_sync`` is imported
(this checkout, or a copy first on PYTHONPATH); the output names it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from _common import BENCH, MiB, alternate, median, print_rows, report_json, tool_version

THIS = Path(__file__).resolve()
COUNT_RELAY = BENCH / "count_relay.py"

# Goals (see docs/benchmarks.md).
GOAL_INITIAL_RATIO = 0.8  # ours / rsync -a, single host and fleet
GOAL_INCREMENTAL_RATIO = 1.0  # ours / rsync -a --append, single host
GOAL_FLEET_INCREMENTAL_RATIO = 0.3  # ours / xargs -P8 rsync -a --append, fleet
GOAL_WIRE_FACTOR = 1.2  # wire bytes <= factor x appended bytes + per-file allowance
GOAL_WIRE_PER_FILE = 100  # bytes per file
GOAL_PEAK_RSS_MB = 64.0
RSYNC_PARALLEL = 8


@dataclass(frozen=True)
class Sizes:
    sessions: int  # part 1: sessions in the single host's tree
    agents: int
    tree_bytes: int  # part 1: about this many bytes of sessions
    grow_files: int  # part 1: sessions grown before each incremental run
    grow_bytes: int  # bytes appended to each grown session (whole lines, exact)
    fleet_hosts: int
    fleet_sessions: int  # per host
    fleet_agents: int
    fleet_session_bytes: int  # mean size of a fleet session
    fleet_grow_files: int  # per host
    big_bytes: int  # part 3: one session of this size
    repeat: int


FULL = Sizes(500, 5, 100_000_000, 20, 10 * 1024, 20, 200, 4, 50_000, 10, 1024 * MiB, 3)
QUICK = Sizes(100, 2, 20_000_000, 20, 10 * 1024, 5, 100, 2, 50_000, 10, 128 * MiB, 3)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


class Lines:
    """A block of unique, realistic session lines (``bench_decoder``'s generator) that session
    files are cut from: whole lines from a random starting line, wrapping around."""

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.starts = [0, *(m.end() for m in re.finditer(b"\n", block))][:-1]

    def take(self, rng: random.Random, nbytes: int) -> bytes:
        """Whole lines, at least ``nbytes`` (and at least one line)."""
        block = self.block
        pos = rng.choice(self.starts)
        parts: list[bytes] = []
        remaining = max(1, nbytes)
        while remaining > 0:
            if pos >= len(block):
                pos = 0
            end = block.find(b"\n", min(pos + remaining - 1, len(block) - 1))
            piece = block[pos : end + 1]
            parts.append(piece)
            remaining -= len(piece)
            pos = end + 1
        return b"".join(parts)

    def exact(self, rng: random.Random, nbytes: int, tag: int) -> bytes:
        """Whole lines of exactly ``nbytes`` bytes (real lines, then one padding line)."""
        parts: list[bytes] = []
        total = 0
        pos = rng.choice(self.starts)
        while True:
            if pos >= len(self.block):
                pos = 0
            end = self.block.find(b"\n", pos)
            line = self.block[pos : end + 1]
            if total + len(line) > nbytes - 120:
                break
            parts.append(line)
            total += len(line)
            pos = end + 1
        head = b'{"type":"custom","customType":"bench-pad","id":"%08x","data":"' % tag
        tail = b'"}\n'
        parts.append(head + b"x" * (nbytes - total - len(head) - len(tail)) + tail)
        data = b"".join(parts)
        assert len(data) == nbytes
        return data


def session_header(sid: str, cwd: str) -> bytes:
    record = {
        "type": "session",
        "version": 3,
        "id": sid,
        "timestamp": "2026-11-21T09:00:00.000Z",
        "cwd": cwd,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def make_tree(
    fleet: Any,
    name: str,
    lines: Lines,
    rng: random.Random,
    *,
    agents: int,
    sessions: int,
    mean_bytes: float,
    sigma: float,
) -> list[str]:
    """``agents/<agent>/sessions/<uuid>.jsonl`` of log-normally varied sizes (mean about
    ``mean_bytes``) plus a ``sessions.json`` index per agent; returns the transcripts' paths."""
    weights = [rng.lognormvariate(0.0, sigma) for _ in range(sessions)]
    scale = mean_bytes * sessions / sum(weights)
    rels: list[str] = []
    indexes: dict[str, dict[str, Any]] = {}
    for i, weight in enumerate(weights):
        agent = f"agent-{i % agents}"
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        rel = f"agents/{agent}/sessions/{sid}.jsonl"
        size = max(2000, int(weight * scale))
        fleet.write(name, rel, session_header(sid, f"/home/{agent}") + lines.take(rng, size))
        indexes.setdefault(agent, {})[f"agent:{agent}:telegram:{i:06d}"] = {
            "sessionId": sid,
            "updatedAt": 1_763_715_600_000 + i * 60_000,
            "sessionFile": f"{sid}.jsonl",
            "chatType": "direct",
            "model": "claude-sonnet-4-5",
            "inputTokens": rng.randrange(10_000, 900_000),
            "outputTokens": rng.randrange(1_000, 90_000),
        }
        rels.append(rel)
    for agent, index in indexes.items():
        fleet.write(name, f"agents/{agent}/sessions/sessions.json", json.dumps(index, indent=2))
    return rels


def grow(
    fleet: Any, name: str, rels: Sequence[str], lines: Lines, rng: random.Random, nbytes: int
) -> int:
    """Append exactly ``nbytes`` of whole lines to each of ``rels``; returns the total."""
    for i, rel in enumerate(rels):
        with open(fleet.path(name, rel), "ab") as out:
            out.write(lines.exact(rng, nbytes, i))
    return nbytes * len(rels)


# ----------------------------------------------------------------------------- checks


def _walk(root: Path, skip: str | None = None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, dirs, files in os.walk(root):
        if skip is not None and Path(dirpath) == root and skip in dirs:
            dirs.remove(skip)
        for f in files:
            full = Path(dirpath, f)
            if not full.is_symlink():
                out[str(full.relative_to(root))] = full
    return out


def _same_prefix(a: Path, b: Path, length: int, block: int = 4 * MiB) -> bool:
    with open(a, "rb") as x, open(b, "rb") as y:
        done = 0
        while done < length:
            n = min(block, length - done)
            if x.read(n) != y.read(n):
                return False
            done += n
    return True


def _lines_end(path: Path) -> int:
    """Offset just after the last newline of ``path`` (0 if none)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - 64 * 1024)
            f.seek(start)
            found = f.read(pos - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            pos = start
    return 0


def tree_stats(root: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files below ``root``."""
    files = _walk(root)
    return len(files), sum(p.stat().st_size for p in files.values())


def check_mirror(
    remote: Path, mirror: Path, *, lines_only: bool, skip: str | None = None, what: str
) -> tuple[int, int]:
    """The mirror must hold exactly the remote's files and bytes (``lines_only``: JSONL files
    up to their last newline, and none that has no newline yet). Returns (files, bytes)."""
    want: dict[str, tuple[Path, int]] = {}
    for rel, path in _walk(remote).items():
        length = path.stat().st_size
        if lines_only and ".jsonl" in Path(rel).name:
            length = _lines_end(path)
            if not length:
                continue
        want[rel] = (path, length)
    got = _walk(mirror, skip)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise RuntimeError(f"{what}: mirror differs: missing {missing[:3]}, extra {extra[:3]}")
    total = 0
    for rel, (path, length) in want.items():
        local = got[rel]
        if local.stat().st_size != length or not _same_prefix(path, local, length):
            raise RuntimeError(f"{what}: {rel} differs from the remote")
        total += length
    return len(want), total


# ----------------------------------------------------------------------------- runners


def write_inventory(path: Path, fleet: Any, names: Sequence[str], ssh_config: Path) -> Path:
    lines = [
        "[defaults]",
        f'ssh_config = "{ssh_config}"',
        f'known_hosts = "{fleet.known_hosts}"',
        'format = "openclaw"',
        "",
    ]
    for name in names:
        lines += [
            "[[hosts]]",
            f'name = "{name}"',
            f'address = "{name}"',
            f'root = "{fleet.path(name)}"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def counting_config(fleet: Any, path: Path, count_dir: Path) -> Path:
    """The fleet's ssh_config with the counting relay as every host's ProxyCommand."""
    relay = " ".join(
        shlex.quote(x) for x in (sys.executable, str(COUNT_RELAY), "--count-dir", str(count_dir))
    )
    out = []
    for line in fleet.ssh_config.read_text().splitlines():
        out.append(line)
        if line.startswith("Host "):
            out.append(f"    ProxyCommand {relay} %h %p")
    path.write_text("\n".join(out) + "\n")
    return path


def ours_argv(inventory: Path, dest: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "remote_sync.cli",
        "sync",
        "--inventory",
        str(inventory),
        "--dest",
        str(dest),
        "--json",
        *extra,
    ]


TIME_BIN = "/usr/bin/time"
_TIME_FIELDS = {
    "rss_kib": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "user_s": re.compile(r"User time \(seconds\): ([0-9.]+)"),
    "sys_s": re.compile(r"System time \(seconds\): ([0-9.]+)"),
}


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (``/proc/stat``: user, nice, system,
    irq, softirq of all CPUs; not idle, iowait or steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    capture: bool = False,
) -> dict[str, Any]:
    """Run ``argv`` once after ``sync(2)``: wall time, its CPU time and peak RSS (the process
    and its waited-for descendants: ``/usr/bin/time -v`` when installed, else ``os.wait4``),
    and the CPU time the rest of the machine (mostly the sshd side) spent meanwhile."""
    os.sync()
    before = machine_busy()
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".time") as report,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        use_time = os.access(TIME_BIN, os.X_OK)
        full = [TIME_BIN, "-v", "-o", report.name, *argv] if use_time else list(argv)
        started_wall = time.time()
        t0 = time.perf_counter()
        child = subprocess.Popen(
            full,
            stdin=subprocess.PIPE,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        assert child.stdin is not None
        try:
            child.stdin.write(stdin)
            child.stdin.close()
        except BrokenPipeError:
            pass
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:5])}... exited {child.returncode}: "
                f"{err.read()[-2000:].decode(errors='replace')}"
            )
        if use_time:
            text = Path(report.name).read_text()
            got = {k: float(rx.search(text).group(1)) for k, rx in _TIME_FIELDS.items()}  # type: ignore[union-attr]
        else:
            got = {"rss_kib": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}
        out.seek(0)
        stdout = out.read().decode() if capture else ""
    busy = machine_busy() - before
    client = got["user_s"] + got["sys_s"]
    return {
        "s": elapsed,
        "started_wall": started_wall,
        "client_cpu_s": client,
        # Everything else the machine did meanwhile: sshd, the remote commands, kernel
        # threads (writeback), and any other load on this shared machine.
        "server_cpu_s": max(0.0, busy - client),
        "rss_mb": got["rss_kib"] * 1024 / 1e6,
        "stdout": stdout,
    }


def run_ours(inventory: Path, dest: Path, *extra: str) -> dict[str, Any]:
    """One ``remote-sync sync`` process, measured; with the figures of its summary event."""
    r = measure(ours_argv(inventory, dest, *extra), capture=True)
    out = r.pop("stdout")
    summary = json.loads(out.strip().splitlines()[-1])
    if summary.get("type") != "summary" or summary["exit_code"] != 0:
        raise RuntimeError(f"remote-sync failed: {out[-2000:]}")
    r.update(files=summary["files"], bytes=summary["bytes"], seconds_reported=summary["seconds"])
    return r


def run_peer(
    argv: Sequence[str] | str, *, stdin: bytes = b"", env: dict[str, str] | None = None
) -> dict[str, Any]:
    """A peer command, measured (a string runs under ``sh -c``)."""
    if isinstance(argv, str):
        argv = ["sh", "-c", argv]
    r = measure(argv, stdin=stdin, env=env)
    r.pop("stdout")
    return r


def rsync_argv(
    ssh_config: Path, alias: str, root: Path, dest: Path, *extra: str, rsh: str | None = None
) -> list[str]:
    return [
        "rsync",
        "-a",
        *extra,
        "-e",
        rsh or f"ssh -F {ssh_config}",
        f"{alias}:{root}/agents/",
        f"{dest}/",
    ]


def fleet_rsync(fleet: Any, dest: Path, *extra: str, rsh: str | None = None) -> dict[str, Any]:
    """``xargs -P8 -n2 rsync -a ...``: one rsync per host, 8 at a time (RSYNC_RSH = ssh -F,
    or ``rsh``)."""
    items = b"".join(
        f"{name}:{fleet.path(name)}/agents/\0{dest / name}/\0".encode() for name in fleet.names
    )
    env = dict(os.environ, RSYNC_RSH=rsh or f"ssh -F {fleet.ssh_config}")
    argv = ["xargs", "-0", "-P", str(RSYNC_PARALLEL), "-n", "2", "rsync", "-a", *extra]
    return run_peer(argv, stdin=items, env=env)


def supports_agent() -> bool:
    """Does this version have ``remote-sync agent`` (connections kept between syncs)?"""
    out = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "agent", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode == 0


class Agent:
    """A ``remote-sync agent`` serving ``dest`` (connections kept for the whole benchmark:
    ``--persist 0``), started once its mirror holds a first sync; each timed ``remote-sync
    sync`` of that destination then goes through it, as a user's would. Its own peak RSS
    (``VmHWM``) is read before it stops: the client's ``time -v`` does not see it. One a
    failed part left running is stopped at the end (:meth:`stop_all`)."""

    running: ClassVar[set[Agent]] = set()

    def __init__(self, inventory: Path, dest: Path) -> None:
        self.socket = dest / ".remote-sync" / "agent.sock"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remote_sync.cli",
                "agent",
                "--inventory",
                str(inventory),
                "--dest",
                str(dest),
                "--persist",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                err = self.process.communicate()[1]
                raise RuntimeError(f"remote-sync agent did not start: {err[-2000:]!r}")
            time.sleep(0.05)
        #: Its start to its socket answering (interpreter, imports, lock, listen).
        self.ready_s = time.perf_counter() - started
        Agent.running.add(self)

    @classmethod
    def stop_all(cls) -> None:
        for agent in list(cls.running):
            agent.stop()

    def _answers(self) -> bool:
        import socket

        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
        return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) it and its descendants (the index worker it keeps)
        have used so far: a sync it serves is its work, not its client's, whose ``time -v``
        sees only the forwarding."""
        ticks = 0
        pids = [self.process.pid]
        while pids:
            pid = pids.pop()
            with contextlib.suppress(OSError):  # ended since it was listed
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime, stime, and cutime, cstime: those of its children reaped so far.
                ticks += sum(int(x) for x in stat[11:15])
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
        return ticks / os.sysconf("SC_CLK_TCK")

    def tcp_connections(self) -> int:
        """TCP connections it holds (its socket descriptors found in ``/proc/net/tcp``): its
        SSH connections to the hosts, as it talks to its clients over a Unix socket."""
        fds = Path(f"/proc/{self.process.pid}/fd")
        inodes = set()
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # closed since the listing
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        held = 0
        for table in ("tcp", "tcp6"):
            rows = Path(f"/proc/{self.process.pid}/net/{table}").read_text().splitlines()[1:]
            held += sum(1 for row in rows if row.split()[9] in inodes)
        return held

    def stop(self) -> float:
        """Stop it (SIGTERM, as systemd does); its peak RSS."""
        Agent.running.discard(self)
        peak = self.peak_rss_mb()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return peak


def control_master_rsh(ssh_config: Path, work: Path) -> str:
    """ssh for rsync that keeps one master connection per host between runs (OpenSSH's
    ControlMaster and ControlPersist): the peer of ours through the agent."""
    return (
        f"ssh -F {ssh_config} -o ControlMaster=auto -o ControlPath={work}/cm-%C "
        "-o ControlPersist=600"
    )


def close_control_masters(ssh_config: Path, work: Path, aliases: Sequence[str]) -> None:
    for alias in aliases:
        subprocess.run(
            [
                "ssh",
                "-F",
                str(ssh_config),
                "-o",
                f"ControlPath={work}/cm-%C",
                "-O",
                "exit",
                alias,
            ],
            capture_output=True,
            check=False,
        )


def clear(*paths: Path) -> None:
    """Empty destinations between runs: set aside, deleted when the benchmark ends (see
    ``_common.set_aside`` for why they are not deleted at once)."""
    from _common import set_aside

    for path in paths:
        set_aside(path)


def settle(work: Path) -> None:
    """Before a part's timed runs: wait out a recent mass deletion (``_common``)."""
    from _common import wait_for_fast_file_creation

    ms = wait_for_fast_file_creation(work, say=progress)
    progress(f"file creation: {ms:.3f} ms a file")


def supports_no_index() -> bool:
    """Does this version of ``remote-sync sync`` have ``--no-index`` (mirror only)?"""
    out = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "sync", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--no-index" in out.stdout


def rsync_has_fsync() -> bool:
    out = subprocess.run(["rsync", "--help"], capture_output=True, text=True, check=False)
    return "--fsync" in out.stdout


# ----------------------------------------------------------------------------- part 1


def bench_one(fleet: Any, sizes: Sizes, lines: Lines, work: Path, profile: bool) -> dict[str, Any]:
    name = "one"
    rng = random.Random(1)
    progress(f"one: writing {sizes.sessions} sessions (~{sizes.tree_bytes / 1e6:.0f} MB)")
    rels = make_tree(
        fleet,
        name,
        lines,
        rng,
        agents=sizes.agents,
        sessions=sizes.sessions,
        mean_bytes=sizes.tree_bytes / sizes.sessions,
        sigma=1.2,
    )
    remote = fleet.path(name, "agents")
    tree_files, tree_bytes = tree_stats(remote)
    inventory = write_inventory(work / "one.toml", fleet, [name], fleet.ssh_config)
    ours_dest, rsync_dest, fsync_dest = work / "one-ours", work / "one-rsync", work / "one-fsync"
    noindex_dest = work / "one-noindex"
    with_fsync = rsync_has_fsync()
    with_noindex = supports_no_index()
    runs: dict[str, list[Any]] = {}

    def ours(key: str, *extra: str) -> Callable[[], None]:
        dest, label = (noindex_dest, "ours_noindex") if extra else (ours_dest, "ours")

        def step() -> None:
            r = run_ours(inventory, dest, *extra)
            check_mirror(remote, dest / name / "agents", lines_only=True, what=f"{label} {key}")
            runs.setdefault(f"{label}_{key}", []).append(r)

        return step

    def rsync(
        key: str, *extra: str, dest: Path = rsync_dest, label: str = "rsync"
    ) -> Callable[[], None]:
        def step() -> None:
            r = run_peer(rsync_argv(fleet.ssh_config, name, fleet.path(name), dest, *extra))
            check_mirror(remote, dest, lines_only=False, what=f"{label} {key}")
            runs.setdefault(f"{label}_{key}", []).append(r)

        return step

    with_agent = supports_agent()
    agent_dest, cm_dest = work / "one-agent", work / "one-rsync-cm"

    def ours_agent_initial() -> None:
        def check() -> None:
            check_mirror(remote, agent_dest / name / "agents", lines_only=True, what="agent")

        r = initial_through_agent(inventory, agent_dest, check)
        runs.setdefault("ours_agent_initial", []).append(r)

    settle(work)
    for rep in range(sizes.repeat):
        clear(ours_dest, rsync_dest, fsync_dest, noindex_dest)
        steps = [ours("initial"), rsync("initial")]
        if with_noindex:
            steps.append(ours("initial", "--no-index"))
        if with_fsync:
            steps.append(rsync("initial", "--fsync", dest=fsync_dest, label="rsync_fsync"))
        if with_agent:
            steps.append(ours_agent_initial)
        alternate(rep, steps)
        progress(f"one initial rep {rep + 1}: " + _last(runs, "initial"))
    clear(fsync_dest)

    # Warm connections: ours through an agent that serves its destination, against rsync
    # through an OpenSSH control master (ControlPersist), each with a first mirror made and
    # one run to open the connection before the timed runs.
    cm = control_master_rsh(fleet.ssh_config, work)
    agent: Agent | None = None
    if with_agent:
        clear(agent_dest, cm_dest)
        agent = start_warm(
            inventory,
            agent_dest,
            lambda: run_peer(rsync_argv(fleet.ssh_config, name, fleet.path(name), cm_dest, rsh=cm)),
        )

    def ours_agent(key: str) -> Callable[[], None]:
        def step() -> None:
            r = run_ours(inventory, agent_dest)
            check_mirror(remote, agent_dest / name / "agents", lines_only=True, what="agent")
            runs.setdefault(f"ours_agent_{key}", []).append(r)

        return step

    def rsync_cm(key: str) -> Callable[[], None]:
        def step() -> None:
            argv = rsync_argv(fleet.ssh_config, name, fleet.path(name), cm_dest, "--append", rsh=cm)
            r = run_peer(argv)
            check_mirror(remote, cm_dest, lines_only=False, what="rsync control master")
            runs.setdefault(f"rsync_cm_{key}", []).append(r)

        return step

    timed = timed_runs(ours, rsync, with_noindex, (ours_agent, rsync_cm) if with_agent else None)
    appended = timed_rounds(
        "one",
        sizes,
        runs,
        timed,
        lambda: grow(fleet, name, rng.sample(rels, sizes.grow_files), lines, rng, sizes.grow_bytes),
    )
    clear(noindex_dest)
    agent_peak = agent.stop() if agent is not None else None
    if with_agent:
        close_control_masters(fleet.ssh_config, work, [name])
        clear(agent_dest, cm_dest)

    # Bytes on the wire: one more growth round and one no-change round, both tools through
    # the counting relay (given as ProxyCommand in a copy of the fleet's ssh_config).
    wire: dict[str, Any] = {}
    grown = rng.sample(rels, sizes.grow_files)
    wire_appended = grow(fleet, name, grown, lines, rng, sizes.grow_bytes)
    for key in ("incremental", "nochange"):
        for tool in ("ours", "rsync"):
            count_dir = work / f"counts-{tool}-{key}"
            cfg = counting_config(fleet, work / f"count-{tool}-{key}.cfg", count_dir)
            if tool == "ours":
                inv = write_inventory(work / f"count-{key}.toml", fleet, [name], cfg)
                r = run_ours(inv, ours_dest)
                check_mirror(remote, ours_dest / name / "agents", lines_only=True, what="ours")
                wire[f"ours_{key}_fetched_bytes"] = r["bytes"]
                wire[f"ours_{key}_s"] = r["s"]
            else:
                wire[f"rsync_{key}_s"] = run_peer(
                    rsync_argv(cfg, name, fleet.path(name), rsync_dest, "--append")
                )["s"]
                check_mirror(remote, rsync_dest, lines_only=False, what="rsync")
            from count_relay import read_counts

            wire[f"{tool}_{key}"] = read_counts(count_dir)
    per_tree = GOAL_WIRE_FACTOR * wire_appended + GOAL_WIRE_PER_FILE * tree_files
    per_grown = GOAL_WIRE_FACTOR * wire_appended + GOAL_WIRE_PER_FILE * len(grown)
    wire.update(
        appended_bytes=wire_appended,
        grown_files=len(grown),
        tree_files=tree_files,
        budget_per_tree_file=per_tree,
        budget_per_grown_file=per_grown,
        overlap_bytes=sum(4096 for _ in grown),
        listing_output_bytes=listing_output_bytes(fleet, name, inventory),
    )
    progress(
        "one wire: ours "
        f"{wire['ours_incremental']['total']} B, rsync {wire['rsync_incremental']['total']} B "
        f"(appended {wire_appended} B)"
    )

    result: dict[str, Any] = {
        "tree_files": tree_files,
        "tree_bytes": tree_bytes,
        "sessions": sizes.sessions,
        "appended_per_round": appended,
        "wire": wire,
        **against_rsync(runs, with_noindex),
    }
    med = result["median_s"]
    if with_fsync:
        result["ratio_initial_vs_fsync"] = med["ours_initial"] / med["rsync_fsync_initial"]
    if with_agent:
        _agent_ratios(result, med, runs, agent_peak)
    if profile:
        result["profile"] = profile_one(
            fleet, name, rels, lines, rng, inventory, work, sizes, rsync_dest
        )
    return result


def start_warm(inventory: Path, dest: Path, warm_peer: Callable[[], object]) -> Agent:
    """Warm connections on both sides before the timed runs: a first mirror made in
    ``dest``, an agent serving it and one run through it to open its connections; the peer's
    (``warm_peer``: rsync through control masters) run twice, its first mirror and its
    masters opened."""
    run_ours(inventory, dest)
    agent = Agent(inventory, dest)
    run_ours(inventory, dest)
    for _ in range(2):
        warm_peer()
    return agent


def initial_through_agent(inventory: Path, dest: Path, check: Callable[[], None]) -> dict[str, Any]:
    """An initial mirror through an agent, measured: ``dest`` fresh, an agent started on it
    (not timed; its start-to-ready kept as ``agent_ready_s``), then the timed ``remote-sync
    sync`` that it serves, ``check``, and the agent stopped (its peak RSS ``agent_rss_mb``,
    its CPU time for the sync ``agent_cpu_s``). The agent connects to a host at a sync's
    first use of it, not at its start: checked, so the timed sync pays for the connections
    as the peer's does (and the sync is checked to have gone through the agent)."""
    clear(dest)
    agent = Agent(inventory, dest)
    try:
        if agent.tcp_connections():
            raise RuntimeError(
                "remote-sync agent connected to the hosts before its first sync: its initial "
                "mirror would be timed without its connections"
            )
        cpu = agent.cpu_s()
        r = run_ours(inventory, dest)
        r["agent_cpu_s"] = agent.cpu_s() - cpu
        if not agent.tcp_connections():  # --persist 0: kept until it stops
            raise RuntimeError("remote-sync sync did not go through the agent")
        check()
    finally:
        peak = agent.stop()
    r.update(agent_ready_s=agent.ready_s, agent_rss_mb=peak)
    return r


def timed_runs(
    ours: Callable[..., Callable[[], None]],
    rsync: Callable[..., Callable[[], None]],
    with_noindex: bool,
    warm: tuple[Callable[[str], Callable[[], None]], ...] | None,
) -> list[Callable[[str], Callable[[], None]]]:
    """What makes each run of an incremental or no-change repetition, given its key: ours,
    rsync ``--append``, ours ``--no-index`` if it has it, and the ``warm`` ones (through the
    agent, rsync through control masters) if there are."""
    timed: list[Callable[[str], Callable[[], None]]] = [ours, lambda key: rsync(key, "--append")]
    if with_noindex:
        timed.append(lambda key: ours(key, "--no-index"))
    return [*timed, *(warm or ())]


def timed_rounds(
    part: str,
    sizes: Sizes,
    runs: dict[str, list[Any]],
    timed: list[Callable[[str], Callable[[], None]]],
    grow_round: Callable[[], int],
) -> list[int]:
    """Parts 1 and 2's timed repetitions of the runs ``timed`` makes: the incremental ones,
    each after ``grow_round`` (which grows the trees and says by how many bytes), then the
    no-change ones. The bytes appended before each incremental repetition."""
    appended: list[int] = []
    for rep in range(sizes.repeat):
        appended.append(grow_round())
        alternate(rep, [make("incremental") for make in timed])
        progress(f"{part} incremental rep {rep + 1}: " + _last(runs, "incremental"))
    for rep in range(sizes.repeat):
        alternate(rep, [make("nochange") for make in timed])
        progress(f"{part} no-change rep {rep + 1}: " + _last(runs, "nochange"))
    return appended


def against_rsync(runs: dict[str, list[Any]], with_noindex: bool) -> dict[str, Any]:
    """What parts 1 and 2 both report of their ``runs``: the medians, ours against rsync in
    each kind of round (and ours ``--no-index`` against rsync, when this version has it),
    and ours' peak RSS in each."""
    med, cpu = medians(runs)
    kinds = ("initial", "incremental", "nochange")
    peak = {key: max(r["rss_mb"] for r in runs[f"ours_{key}"]) for key in kinds}
    result: dict[str, Any] = {
        "runs": runs,
        "median_s": med,
        "median_cpu_s": cpu,
        **{f"ratio_{key}": med[f"ours_{key}"] / med[f"rsync_{key}"] for key in kinds},
        "peak_rss_mb": peak,
    }
    if with_noindex:
        for key in kinds:
            result[f"ratio_{key}_noindex"] = med[f"ours_noindex_{key}"] / med[f"rsync_{key}"]
            peak[f"{key}_noindex"] = max(r["rss_mb"] for r in runs[f"ours_noindex_{key}"])
    return result


def _agent_ratios(
    result: dict[str, Any],
    med: dict[str, float],
    runs: dict[str, list[Any]],
    agent_peak: float | None,
) -> None:
    """The through-the-agent figures: against the named peer (a cold rsync) and against
    rsync through a control master (warm connections on both sides); the initial mirror's
    (a fresh agent each time) against the named peer only."""
    for key in ("incremental", "nochange"):
        result[f"ratio_{key}_agent"] = med[f"ours_agent_{key}"] / med[f"rsync_{key}"]
        result[f"ratio_{key}_agent_vs_cm"] = med[f"ours_agent_{key}"] / med[f"rsync_cm_{key}"]
    result["peak_rss_mb"]["agent_client"] = max(
        r["rss_mb"] for key in ("incremental", "nochange") for r in runs[f"ours_agent_{key}"]
    )
    result["peak_rss_mb"]["agent"] = agent_peak
    initial = runs.get("ours_agent_initial")
    if initial:  # a fresh agent each: its first connections are in the sync's time
        result["ratio_initial_agent"] = med["ours_agent_initial"] / med["rsync_initial"]
        result["peak_rss_mb"]["agent_initial_client"] = max(r["rss_mb"] for r in initial)
        result["peak_rss_mb"]["agent_initial"] = max(r["agent_rss_mb"] for r in initial)
        result["agent_initial_ready_s"] = median([r["agent_ready_s"] for r in initial])
        result["agent_initial_cpu_s"] = median([r["agent_cpu_s"] for r in initial])


def medians(runs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Per kind of run: the median wall time, and the median client / server CPU seconds."""
    med = {k: median([r["s"] for r in v]) for k, v in runs.items() if v}
    cpu = {
        k: {
            "client": median([r["client_cpu_s"] for r in v]),
            "server": median([r["server_cpu_s"] for r in v]),
        }
        for k, v in runs.items()
        if v
    }
    return med, cpu


def _last(runs: dict[str, list[Any]], key: str) -> str:
    parts = []
    for k, v in runs.items():
        if k.endswith(key) and v:
            last = v[-1]
            parts.append(f"{k} {last['s']:.2f}s")
    return ", ".join(parts)


def listing_output_bytes(fleet: Any, name: str, inventory: Path) -> int:
    """Bytes of stdout of our listing script for this host, run alone through OpenSSH."""
    from remote_sync.inventory import load_inventory
    from remote_sync.mirror.remote_ops import listing_argv
    from remote_sync.ssh.remote import quote_argv

    host = load_inventory(inventory).get(name)
    assert host is not None
    argv = listing_argv(host.source.root, host.source.start_points)
    proc = subprocess.run(fleet.ssh_argv(name, quote_argv(argv)), capture_output=True, check=True)
    return len(proc.stdout)


# ----------------------------------------------------------------------------- part 2


def bench_fleet(sizes: Sizes, lines: Lines, work: Path, profile: bool) -> dict[str, Any]:
    from sshfleet import SSHFleet  # type: ignore[import-not-found]  # tests/, on sys.path

    names = [f"f{i:02d}" for i in range(sizes.fleet_hosts)]
    progress(f"fleet: starting {len(names)} sshd servers")
    fleet = SSHFleet(names=names)
    try:
        rng = random.Random(2)
        rels: dict[str, list[str]] = {}
        for i, name in enumerate(names):
            rels[name] = make_tree(
                fleet,
                name,
                lines,
                rng,
                agents=sizes.fleet_agents,
                sessions=sizes.fleet_sessions,
                mean_bytes=sizes.fleet_session_bytes,
                sigma=0.8,
            )
            if i == 0:
                progress(f"fleet: writing {len(names)} x {sizes.fleet_sessions} sessions")
        per_host = [tree_stats(fleet.path(n, "agents")) for n in names]
        inventory = write_inventory(work / "fleet.toml", fleet, names, fleet.ssh_config)
        ours_dest, rsync_dest = work / "fleet-ours", work / "fleet-rsync"
        noindex_dest = work / "fleet-noindex"
        with_noindex = supports_no_index()
        runs: dict[str, list[Any]] = {}

        def check(dest: Path, lines_only: bool) -> None:
            for n in names:
                remote = fleet.path(n, "agents")
                mirror = dest / n / "agents" if lines_only else dest / n
                check_mirror(remote, mirror, lines_only=lines_only, what=n)

        def ours(key: str, *extra: str) -> Callable[[], None]:
            dest, label = (noindex_dest, "ours_noindex") if extra else (ours_dest, "ours")

            def step() -> None:
                runs.setdefault(f"{label}_{key}", []).append(run_ours(inventory, dest, *extra))
                check(dest, True)

            return step

        def rsync(key: str, *extra: str) -> Callable[[], None]:
            def step() -> None:
                runs.setdefault(f"rsync_{key}", []).append(fleet_rsync(fleet, rsync_dest, *extra))
                check(rsync_dest, False)

            return step

        with_agent = supports_agent()
        agent_dest, cm_dest = work / "fleet-agent", work / "fleet-rsync-cm"

        def ours_agent_initial() -> None:
            r = initial_through_agent(inventory, agent_dest, lambda: check(agent_dest, True))
            runs.setdefault("ours_agent_initial", []).append(r)

        settle(work)
        for rep in range(sizes.repeat):
            clear(ours_dest, rsync_dest, noindex_dest)
            rsync_dest.mkdir()
            steps = [ours("initial"), rsync("initial")]
            if with_noindex:
                steps.append(ours("initial", "--no-index"))
            if with_agent:
                steps.append(ours_agent_initial)
            alternate(rep, steps)
            progress(f"fleet initial rep {rep + 1}: " + _last(runs, "initial"))
        # Warm connections, as in part 1: ours through an agent, rsync through control
        # masters.
        cm = control_master_rsh(fleet.ssh_config, work)
        agent: Agent | None = None
        if with_agent:
            clear(agent_dest, cm_dest)
            cm_dest.mkdir()
            agent = start_warm(inventory, agent_dest, lambda: fleet_rsync(fleet, cm_dest, rsh=cm))

        def ours_agent(key: str) -> Callable[[], None]:
            def step() -> None:
                runs.setdefault(f"ours_agent_{key}", []).append(run_ours(inventory, agent_dest))
                check(agent_dest, True)

            return step

        def rsync_cm(key: str) -> Callable[[], None]:
            def step() -> None:
                r = fleet_rsync(fleet, cm_dest, "--append", rsh=cm)
                runs.setdefault(f"rsync_cm_{key}", []).append(r)
                check(cm_dest, False)

            return step

        timed = timed_runs(
            ours, rsync, with_noindex, (ours_agent, rsync_cm) if with_agent else None
        )
        appended = timed_rounds(
            "fleet",
            sizes,
            runs,
            timed,
            lambda: sum(
                grow(
                    fleet,
                    n,
                    rng.sample(rels[n], sizes.fleet_grow_files),
                    lines,
                    rng,
                    sizes.grow_bytes,
                )
                for n in names
            ),
        )
        clear(noindex_dest)
        agent_peak = agent.stop() if agent is not None else None
        if with_agent:
            close_control_masters(fleet.ssh_config, work, names)
            clear(agent_dest, cm_dest)

        result: dict[str, Any] = {
            "hosts": len(names),
            "files_per_host": per_host[0][0],
            "files": sum(f for f, _ in per_host),
            "bytes": sum(b for _, b in per_host),
            "appended_per_round": appended,
            "grown_files_per_round": sizes.fleet_grow_files * len(names),
            **against_rsync(runs, with_noindex),
        }
        if with_agent:
            _agent_ratios(result, result["median_s"], runs, agent_peak)
        if profile:
            result["profile"] = profile_fleet(
                fleet, names, rels, lines, rng, inventory, work, sizes, ours_dest
            )
        return result
    finally:
        fleet.close()


# ----------------------------------------------------------------------------- part 3


def bench_big(fleet: Any, sizes: Sizes, block: bytes, work: Path, profile: bool) -> dict[str, Any]:
    from _common import write_jsonl_file

    name = "big"
    rel = f"agents/main/sessions/{uuid.UUID(int=3, version=4)}.jsonl"
    path = fleet.write(name, rel, session_header("big", "/home/main"))
    progress(f"big: writing a {sizes.big_bytes / MiB:.0f} MiB session")
    write_jsonl_file(path, sizes.big_bytes, block)
    fleet.write(name, "agents/main/sessions/sessions.json", json.dumps({"agent:main:x": {}}))
    size = path.stat().st_size
    remote = fleet.path(name, "agents")
    inventory = write_inventory(work / "big.toml", fleet, [name], fleet.ssh_config)
    dests = {k: work / f"big-{k}" for k in ("ours", "noindex", "rsync", "fsync", "cat")}
    with_fsync = rsync_has_fsync()
    with_noindex = supports_no_index()
    runs: dict[str, list[Any]] = {}
    cat_out = dests["cat"] / "session.jsonl"
    ssh_cat = " ".join(shlex.quote(x) for x in fleet.ssh_argv(name, "cat", str(path)))

    def ours(*extra: str) -> Callable[[], None]:
        key = "ours_noindex" if extra else "ours"
        dest = dests["noindex" if extra else "ours"]

        def step() -> None:
            runs.setdefault(key, []).append(run_ours(inventory, dest, *extra))
            check_mirror(remote, dest / name / "agents", lines_only=True, what=f"{key} big")

        return step

    def rsync(*extra: str, key: str = "rsync") -> Callable[[], None]:
        def step() -> None:
            dest = dests["fsync" if extra else "rsync"]
            runs.setdefault(key, []).append(
                run_peer(rsync_argv(fleet.ssh_config, name, fleet.path(name), dest, *extra))
            )
            check_mirror(remote, dest, lines_only=False, what=f"{key} big")

        return step

    def cat(then_sync: bool) -> Callable[[], None]:
        def step() -> None:
            out = shlex.quote(str(cat_out))
            command = f"{ssh_cat} > {out}" + (f" && sync {out}" if then_sync else "")
            runs.setdefault("ssh_cat_sync" if then_sync else "ssh_cat", []).append(
                run_peer(command)
            )
            if cat_out.stat().st_size != size or not _same_prefix(path, cat_out, size):
                raise RuntimeError("ssh cat: the copy differs")
            cat_out.unlink()

        return step

    settle(work)
    for rep in range(sizes.repeat):
        clear(*dests.values())
        dests["cat"].mkdir()
        steps = [ours(), rsync(), cat(False)]
        if with_noindex:
            steps.append(ours("--no-index"))
        if with_fsync:
            steps += [rsync("--fsync", key="rsync_fsync"), cat(True)]
        alternate(rep, steps)
        progress(f"big rep {rep + 1}: " + _last(runs, ""))
    clear(*dests.values())
    med, cpu = medians(runs)
    result: dict[str, Any] = {
        "bytes": size,
        "runs": runs,
        "median_s": med,
        "median_cpu_s": cpu,
        "ratio_vs_rsync": med["ours"] / med["rsync"],
        "ratio_vs_ssh_cat": med["ours"] / med["ssh_cat"],
        "peak_rss_mb": max(r["rss_mb"] for r in runs["ours"]),
    }
    if with_fsync:
        result["ratio_vs_rsync_fsync"] = med["ours"] / med["rsync_fsync"]
        result["ratio_vs_ssh_cat_sync"] = med["ours"] / med["ssh_cat_sync"]
    if with_noindex:
        result["ratio_noindex_vs_rsync"] = med["ours_noindex"] / med["rsync"]
        result["ratio_noindex_vs_ssh_cat"] = med["ours_noindex"] / med["ssh_cat"]
        result["peak_rss_mb_noindex"] = max(r["rss_mb"] for r in runs["ours_noindex"])
    if profile:

        def check(d: Path) -> None:
            check_mirror(remote, d / name / "agents", lines_only=True, what="what-if big")

        result["profile"] = {
            "whatif": what_if(
                {"default": [], "window_2mib": [WINDOW_2MIB]},
                inventory,
                work,
                "big",
                sizes.repeat,
                fresh=True,
                check=check,
            ),
        }
    return result


# ----------------------------------------------------------------------------- profiling


PATCHES = {
    "window": "PoolSettings.window (bytes) for every connection",
    "overlap": "mirror.plan.OVERLAP_BYTES",
    "fsync": "'off': fsync, fdatasync and syncfs do nothing (what they cost; never for real use)",
    "gcfreeze": "gc.freeze() after the imports (less GC work, and a fast interpreter exit)",
    "tracemalloc": "trace Python allocations; reports the peak of traced memory",
    "compression": "PoolSettings.compression (SSH zlib@openssh.com)",
}


def apply_patch(key: str, value: str) -> None:
    """A what-if change to the library, made in the child process only (never on disk)."""
    import functools
    import gc

    import remote_sync.cli as cli
    from remote_sync.mirror import plan
    from remote_sync.ssh import pool

    if key in ("window", "compression"):
        setting = {"window": int(value)} if key == "window" else {"compression": value == "1"}
        patched = functools.partial(pool.PoolSettings, **setting)
        pool.PoolSettings = patched  # type: ignore[assignment,misc]
        if hasattr(cli, "PoolSettings"):  # imported at module level by older versions
            cli.PoolSettings = patched
    elif key == "overlap":
        plan.OVERLAP_BYTES = int(value)
    elif key == "fsync" and value == "off":
        os.fsync = lambda fd: None
        os.fdatasync = lambda fd: None
        try:  # the batch's syncs, in durable.py since writer.py was split
            from remote_sync.mirror import durable as syncs
        except ImportError:
            from remote_sync.mirror import writer as syncs
        if hasattr(syncs, "_syncfs"):  # newer versions: one syncfs for big batches
            syncs._syncfs = lambda fd: True
    elif key == "gcfreeze":
        gc.freeze()
    elif key == "tracemalloc":
        import tracemalloc

        tracemalloc.start(int(value))
    else:
        raise ValueError(f"unknown patch {key}={value}; known: {', '.join(PATCHES)}")


#: What ``--child phases`` times: (module, name in it, label) of each step it wraps, in that
#: process only. Each is looked up by :func:`phase_target`, which raises if it is gone: a
#: rename in the library fails the profile (and tests/test_bench_imports.py) where it
#: dropped a phase unsaid. A function is wrapped where its callers look it up (``make_plan``
#: in ``engine``, which imported it).
PHASES: tuple[tuple[str, str, str], ...] = (
    ("remote_sync.ssh.pool", "SSHPool._connect", "ssh connect + auth"),
    ("remote_sync.mirror.engine", "HostSync._round", "host round (all of it)"),
    ("remote_sync.mirror.engine", "HostSync._list", "listing (remote find, parse)"),
    ("remote_sync.mirror.engine", "make_plan", "plan"),
    ("remote_sync.mirror.engine", "requests_of", "requests of the plan (thread)"),
    ("remote_sync.mirror.engine", "HostSync._consume", "fetch stream (frames, writes, index)"),
    ("remote_sync.mirror.frames", "FrameHandler.handle_all", "  frames handled (all but reads)"),
    ("remote_sync.mirror.engine", "HostSync._fetch_again", "  follow-up fetches (own command)"),
    ("remote_sync.mirror.engine", "HostSync._flush", "flush (await fsync thread + commit)"),
    ("remote_sync.mirror.engine", "HostSync._complete", "  wait for the flush in flight + commit"),
    ("remote_sync.mirror.commits", "make_durable", "  sync + rename (flush thread)"),
    ("os", "fsync", "  os.fsync calls"),
    ("os", "fdatasync", "  os.fdatasync calls"),
    ("remote_sync.mirror.durable", "_syncfs", "  syncfs calls"),
    ("remote_sync.mirror.state", "MirrorState.commit", "  sqlite commit (checkpoints + index)"),
    ("remote_sync.mirror.state", "MirrorState.open", "state open (lock, sqlite, schema)"),
    ("remote_sync.mirror.state", "MirrorState.recover", "state recover"),
    ("remote_sync.mirror.state", "MirrorState.host_files", "state host_files (read checkpoints)"),
    ("remote_sync.mirror.engine", "HostSync._mark_deleted", "mark deleted (sqlite)"),
    ("remote_sync.mirror.engine", "HostSync._index_the_unindexed", "index the unindexed"),
    ("remote_sync.index.update", "FileIndexer.feed", "  index: FileIndexer.feed"),
    ("remote_sync.index.update", "FileIndexer.result", "  index: FileIndexer.result"),
)


def phase_target(module: str, name: str) -> tuple[Any, str]:
    """The object holding the attribute a :data:`PHASES` entry names, and that attribute's
    name; raises if it is not in the library (renamed or moved: fix :data:`PHASES`)."""
    import importlib

    owner: Any = importlib.import_module(module)
    *path, attr = name.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            break
    if owner is None or not callable(getattr(owner, attr, None)):
        raise RuntimeError(
            f"--profile's phase {module}.{name} is not in this remote_sync: fix bench_sync.PHASES"
        )
    return owner, attr


def child_main(argv: list[str]) -> int:
    """``--child plain|phases|cprofile OUT [--patch K=V]... -- sync ...``: one ``remote-sync``
    run in this process, for diagnostics; OUT gets a JSON object.

    ``plain`` just runs the CLI (with the what-if patches, see :data:`PATCHES`); ``phases``
    also wraps the engine's steps (monkeypatched in this process only) and records calls and
    seconds per step; ``cprofile`` runs the CLI under cProfile (main thread only) and keeps
    the top functions.
    """
    t_enter = time.perf_counter()
    wall_enter = time.time()
    mode, out = argv[0], argv[1]
    split = argv.index("--")
    patches = [p.split("=", 1) for p in argv[2:split] if p != "--patch"]
    sync_args = argv[split + 1 :]
    import cProfile
    import io
    import pstats

    import remote_sync.cli as cli

    t_imported = time.perf_counter()
    for key, value in patches:
        apply_patch(key, value)
    phases: dict[str, list[float]] = {}
    lock = threading.Lock()

    def add(label: str, start: float, end: float) -> None:
        with lock:
            c = phases.setdefault(label, [0, 0.0, float("inf"), 0.0])
            c[0] += 1
            c[1] += end - start
            c[2] = min(c[2], start - t_enter)
            c[3] = max(c[3], end - t_enter)

    def wrap(owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        if hasattr(original, "__code__") and original.__code__.co_flags & 0x80:  # coroutine

            async def timed_async(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await original(*a, **k)
                finally:
                    add(label, t, time.perf_counter())

            setattr(owner, attr, timed_async)
        else:

            def timed(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    add(label, t, time.perf_counter())

            setattr(owner, attr, timed)

    text = ""
    with open(os.devnull, "w") as null:
        saved, sys.stdout = sys.stdout, null
        try:
            if mode == "cprofile":
                profiler = cProfile.Profile()
                code = profiler.runcall(cli.main, sync_args)
                buf = io.StringIO()
                stats = pstats.Stats(profiler, stream=buf)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(35)
                text = buf.getvalue()
            else:
                if mode == "phases":
                    for module, name, label in PHASES:
                        owner, attr = phase_target(module, name)
                        wrap(owner, attr, label)
                code = cli.main(sync_args)
        finally:
            sys.stdout = saved
    t_end = time.perf_counter()
    import tracemalloc

    traced_peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else None
    Path(out).write_text(
        json.dumps(
            {
                "exit_code": code,
                "patches": dict(patches),
                "traced_peak_mb": traced_peak / 1e6 if traced_peak is not None else None,
                "wall_enter": wall_enter,
                "wall_end": time.time(),
                "import_s": t_imported - t_enter,
                "main_s": t_end - t_imported,
                "phases": {
                    k: {"calls": int(v[0]), "s": v[1], "first_start_s": v[2], "last_end_s": v[3]}
                    for k, v in phases.items()
                },
                "pstats": text,
            }
        )
    )
    return 0


def run_child(
    mode: str, inventory: Path, dest: Path, work: Path, patches: Sequence[str] = ()
) -> dict[str, Any]:
    """One ``--child`` run, measured like any other (wall, CPU, peak RSS)."""
    out = work / f"child-{mode}.json"
    argv = [sys.executable, str(THIS), "--child", mode, str(out)]
    for patch in patches:
        if not patch.startswith("--"):
            argv += ["--patch", patch]
    cli_args = [p for p in patches if p.startswith("--")]
    argv += ["--", *ours_argv(inventory, dest, *cli_args)[3:]]
    result = measure(argv)
    exited = time.time()
    spawned = result["started_wall"]
    result.pop("stdout")
    result.update(json.loads(out.read_text()))
    result["wall_s"] = result["s"]
    # Interpreter start (plus this script's stdlib imports), and interpreter shutdown.
    result["startup_s"] = result.pop("wall_enter") - spawned
    result["exit_s"] = exited - result.pop("wall_end")
    if result["exit_code"] != 0:
        raise RuntimeError(f"instrumented run exited {result['exit_code']}")
    return result


def what_if(
    variants: dict[str, list[str]],
    inventory: Path,
    work: Path,
    tag: str,
    repeat: int,
    *,
    fresh: bool,
    check: Callable[[Path], None],
) -> dict[str, Any]:
    """Alternating ``plain`` child runs of each variant (a list of patches and ``--`` CLI
    options; [] is the library as it is). ``fresh``: every run starts from an empty mirror
    (an initial mirror); otherwise each variant's mirror is primed once, unmeasured, and the
    runs find nothing to do."""
    dests = {v: work / f"whatif-{tag}-{v}" for v in variants}
    if not fresh:
        for v, d in dests.items():
            clear(d)
            run_child("plain", inventory, d, work, variants[v])
    runs: dict[str, list[dict[str, Any]]] = {}

    def step(v: str) -> Callable[[], None]:
        def run() -> None:
            if fresh:
                clear(dests[v])
            r = run_child("plain", inventory, dests[v], work, variants[v])
            check(dests[v])
            runs.setdefault(v, []).append(r)

        return run

    for rep in range(repeat):
        alternate(rep, [step(v) for v in variants])
        progress(f"what-if {tag} rep {rep + 1}: " + _last(runs, ""))
    clear(*dests.values())
    med, cpu = medians(runs)
    return {
        "variants": variants,
        "median_s": med,
        "median_cpu_s": cpu,
        "peak_rss_mb": {v: max(r["rss_mb"] for r in rs) for v, rs in runs.items()},
        "ratio_vs_default": {v: med[v] / med["default"] for v in variants},
    }


def ssh_median(argv: Sequence[str], *, stdin: bytes = b"", repeat: int = 3) -> tuple[float, int]:
    """Median wall time of an OpenSSH command, and its stdout size."""
    times, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
        size = len(proc.stdout)
    return median(times), size


def remote_diagnostics(
    fleet: Any, name: str, inventory: Path, requests: dict[str, list[tuple[str, int, int]]]
) -> dict[str, Any]:
    """Our remote scripts timed alone through OpenSSH (minus ``ssh true``), and a tar peer."""
    from remote_sync.inventory import load_inventory
    from remote_sync.mirror.fetch_frames import FetchRequest
    from remote_sync.mirror.fetch_script import fetch_argv, fetch_stdin
    from remote_sync.mirror.remote_ops import listing_argv, new_marker
    from remote_sync.ssh.remote import quote_argv

    host = load_inventory(inventory).get(name)
    assert host is not None
    root = host.source.root
    out: dict[str, Any] = {}
    true_s, _ = ssh_median(fleet.ssh_argv(name, "true"))
    out["ssh_true_s"] = true_s
    s, n = ssh_median(
        fleet.ssh_argv(name, quote_argv(listing_argv(root, host.source.start_points)))
    )
    out["listing"] = {"s": s - true_s, "bytes": n}
    s, n = ssh_median(fleet.ssh_argv(name, "tar", "-C", root, "-cf", "-", "agents"))
    out["tar_all"] = {"s": s - true_s, "bytes": n}
    for key, items in requests.items():
        reqs = [FetchRequest(p.encode(), start, length) for p, start, length in items]
        marker = new_marker()
        s, n = ssh_median(
            fleet.ssh_argv(name, quote_argv(fetch_argv(root))), stdin=fetch_stdin(reqs, marker)
        )
        out[f"fetch_{key}"] = {"s": s - true_s, "bytes": n, "files": len(reqs)}
    return out


WINDOW_2MIB = "window=2097152"


def profile_one(
    fleet: Any,
    name: str,
    rels: list[str],
    lines: Lines,
    rng: random.Random,
    inventory: Path,
    work: Path,
    sizes: Sizes,
    rsync_dest: Path,
) -> dict[str, Any]:
    progress("profile: single host")
    remote = fleet.path(name, "agents")
    dest = work / "one-profile"
    out: dict[str, Any] = {}
    clear(dest)
    out["initial_phases"] = run_child("phases", inventory, dest, work)
    clear(dest)
    out["initial_cprofile"] = run_child("cprofile", inventory, dest, work)
    for mode in ("phases", "cprofile"):
        grow(fleet, name, rng.sample(rels, sizes.grow_files), lines, rng, sizes.grow_bytes)
        out[f"incremental_{mode}"] = run_child(mode, inventory, dest, work)
    check_mirror(remote, dest / name / "agents", lines_only=True, what="profile")
    out["nochange_phases"] = run_child("phases", inventory, dest, work)

    def check(d: Path) -> None:
        check_mirror(remote, d / name / "agents", lines_only=True, what="what-if")

    out["whatif_initial"] = what_if(
        {"default": [], "window_2mib": [WINDOW_2MIB], "no_fsync": ["fsync=off"]},
        inventory,
        work,
        "one-initial",
        sizes.repeat,
        fresh=True,
        check=check,
    )
    out["whatif_nochange"] = what_if(
        {"default": [], "gc_freeze": ["gcfreeze=1"]},
        inventory,
        work,
        "one-nochange",
        sizes.repeat,
        fresh=False,
        check=check,
    )
    # Bytes on the wire with a smaller overlap and/or SSH compression, each variant after its
    # own growth round of the same shape, through the counting relay; and rsync -z likewise
    # (its mirror first catches up, uncounted, with the rounds before).
    from count_relay import read_counts

    wire: dict[str, Any] = {}
    for label, patches in (
        ("default", []),
        ("overlap_512", ["overlap=512"]),
        ("compression", ["compression=1"]),
        ("overlap_512_compression", ["overlap=512", "compression=1"]),
        ("rsync_z", None),
    ):
        if patches is None:
            run_peer(rsync_argv(fleet.ssh_config, name, fleet.path(name), rsync_dest, "--append"))
        grow(fleet, name, rng.sample(rels, sizes.grow_files), lines, rng, sizes.grow_bytes)
        count_dir = work / f"counts-whatif-{label}"
        cfg = counting_config(fleet, work / f"count-whatif-{label}.cfg", count_dir)
        if patches is None:
            run_peer(rsync_argv(cfg, name, fleet.path(name), rsync_dest, "--append", "-z"))
            check_mirror(remote, rsync_dest, lines_only=False, what="what-if rsync -z")
        else:
            inv = write_inventory(work / f"count-whatif-{label}.toml", fleet, [name], cfg)
            run_child("plain", inv, dest, work, patches)
            check_mirror(remote, dest / name / "agents", lines_only=True, what="what-if wire")
        wire[label] = read_counts(count_dir)
    out["whatif_wire"] = wire
    clear(dest)
    root = fleet.path(name)
    all_files = [
        (str(p.relative_to(root)), 0, p.stat().st_size)
        for p in sorted(root.glob("agents/*/sessions/*"))
    ]
    grown = []
    for rel in rng.sample(rels, sizes.grow_files):
        size = fleet.path(name, rel).stat().st_size
        start = max(0, size - sizes.grow_bytes - 4096)
        grown.append((rel, start, size - start))
    out["remote"] = remote_diagnostics(fleet, name, inventory, {"all": all_files, "grown": grown})
    out["python"] = python_startup()
    out["fsync_strategies"] = fsync_strategies(root, work, sizes.repeat)
    return out


def fsync_strategies(root: Path, work: Path, repeat: int) -> dict[str, Any]:
    """How long making a batch of new files durable takes, three ways: ``fsync`` per file (what
    the writer does), ``fdatasync`` per file, or one ``syncfs`` of the file system. The files
    are the host's session files, written fresh each time (not timed) and kept open, as the
    writer keeps them until its flush; then the parent directories are fsynced once each."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    sources = sorted(root.glob("agents/*/sessions/*"))
    results: dict[str, list[float]] = {}
    order = ("fsync_each", "fdatasync_each", "syncfs_once")
    for rep in range(repeat):
        k = rep % len(order)
        for strategy in order[k:] + order[:k]:
            target = work / f"fsync-{strategy}"
            clear(target)
            os.sync()
            handles = []
            for src in sources:
                dst = target / src.relative_to(root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                f = open(dst, "wb")  # noqa: SIM115 (closed below, after the durability step)
                f.write(src.read_bytes())
                f.flush()
                handles.append(f)
            t0 = time.perf_counter()
            if strategy == "syncfs_once":
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if libc.syncfs(fd) != 0:
                        raise OSError(ctypes.get_errno(), "syncfs failed")
                finally:
                    os.close(fd)
            else:
                sync = os.fsync if strategy == "fsync_each" else os.fdatasync
                for f in handles:
                    sync(f.fileno())
                for directory in {Path(f.name).parent for f in handles}:
                    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            results.setdefault(strategy, []).append(time.perf_counter() - t0)
            for f in handles:
                f.close()
            clear(target)
    return {
        "files": len(sources),
        "bytes": sum(p.stat().st_size for p in sources),
        "median_s": {k: median(v) for k, v in results.items()},
    }


def profile_fleet(
    fleet: Any,
    names: list[str],
    rels: dict[str, list[str]],
    lines: Lines,
    rng: random.Random,
    inventory: Path,
    work: Path,
    sizes: Sizes,
    dest: Path,
) -> dict[str, Any]:
    progress("profile: fleet")
    out: dict[str, Any] = {}
    fresh = work / "fleet-profile"
    clear(fresh)
    out["initial_phases"] = run_child("phases", inventory, fresh, work)
    clear(fresh)
    for mode in ("phases", "cprofile"):
        for n in names:
            grow(
                fleet, n, rng.sample(rels[n], sizes.fleet_grow_files), lines, rng, sizes.grow_bytes
            )
        out[f"incremental_{mode}"] = run_child(mode, inventory, dest, work)
    out["nochange_phases"] = run_child("phases", inventory, dest, work)

    def check(d: Path) -> None:
        for n in names:
            check_mirror(fleet.path(n, "agents"), d / n / "agents", lines_only=True, what=n)

    clear(fresh)
    traced = run_child("plain", inventory, fresh, work, ["tracemalloc=1"])
    clear(fresh)
    out["initial_tracemalloc"] = {
        "rss_mb": traced["rss_mb"],
        "traced_peak_mb": traced["traced_peak_mb"],
        "s": traced["s"],
    }
    out["whatif_initial"] = what_if(
        {
            "default": [],
            "window_2mib": [WINDOW_2MIB],
            "no_fsync": ["fsync=off"],
            "j4_window_2mib": ["--concurrency=4", WINDOW_2MIB],
            "j1": ["--concurrency=1"],
        },
        inventory,
        work,
        "fleet-initial",
        sizes.repeat,
        fresh=True,
        check=check,
    )
    host = fleet.path(names[0])
    items = [
        (str(p.relative_to(host)), 0, p.stat().st_size)
        for p in sorted(host.glob("agents/*/sessions/*"))
    ]
    out["remote"] = remote_diagnostics(fleet, names[0], inventory, {"all": items})
    return out


#: What a sync run imports (the CLI may import the engine lazily).
SYNC_IMPORTS = (
    "import remote_sync.cli, remote_sync.mirror.fleet, remote_sync.inventory, "
    "remote_sync.ssh.pool, remote_sync.events"
)


def python_startup() -> dict[str, float]:
    """Median over 5 runs: a bare interpreter; the imports of a sync run (:data:`SYNC_IMPORTS`)
    as a whole process, split into the imports themselves and the interpreter's shutdown
    afterwards; the same shutdown after ``gc.freeze()``; and ``import asyncssh`` alone."""
    probe = (
        "import sys, time\nt = time.time()\n{body}\nu = time.time()\n{tail}\n"
        "sys.stderr.write(repr((t, u)))\nsys.stderr.flush()\n"
    )

    def run(body: str, tail: str = "") -> tuple[float, float, float]:
        totals, imports, exits = [], [], []
        for _ in range(5):
            t0 = time.time()
            proc = subprocess.run(
                [sys.executable, "-c", probe.format(body=body, tail=tail)],
                capture_output=True,
                text=True,
                check=True,
            )
            t3 = time.time()
            t1, t2 = (float(x) for x in proc.stderr.strip("()").split(","))
            totals.append(t3 - t0)
            imports.append(t2 - t1)
            exits.append(t3 - t2)
        return median(totals), median(imports), median(exits)

    bare, _, _ = run("pass")
    total, imports, exits = run(SYNC_IMPORTS)
    _, _, frozen = run(SYNC_IMPORTS, "import gc; gc.freeze()")
    _, asyncssh_import, _ = run("import asyncssh")
    return {
        "python_bare_s": bare,
        "import_sync_process_s": total,
        "import_sync_s": imports,
        "exit_after_import_s": exits,
        "exit_after_import_gc_freeze_s": frozen,
        "import_asyncssh_s": asyncssh_import,
    }


# ----------------------------------------------------------------------------- output


def verdict(ok: bool, by: str = "") -> str:
    return "met" if ok else f"MISSED{(' ' + by) if by else ''}"


def _agent_rows(
    part: str, r: dict[str, Any], goal: float, *, rss_goal: bool = False
) -> list[tuple[str, str, str, str, str]]:
    """The rows of the runs through an agent: against the named (cold) peer, with the goal,
    and against rsync through control masters, for information; the initial mirror's
    against the named peer, and its peak RSS (``rss_goal``: the agent's with the goal)."""
    if "ratio_incremental_agent" not in r:
        return []
    m = r["median_s"]
    rows: list[tuple[str, str, str, str, str]] = []
    if "ratio_initial_agent" in r:
        ratio = r["ratio_initial_agent"]
        rows.append(
            (
                f"{part} initial through a fresh agent vs rsync -a",
                f"{m['ours_agent_initial']:.2f} s",
                f"{m['rsync_initial']:.2f} s",
                f"{ratio:.2f}",
                f"<= {GOAL_INITIAL_RATIO:g}: {verdict(ratio <= GOAL_INITIAL_RATIO)}",
            )
        )
        peak = r["peak_rss_mb"]["agent_initial"]
        rows.append(
            (
                f"{part} same: peak RSS client / agent (agent CPU "
                f"{r['agent_initial_cpu_s']:.2f} s, ready in {r['agent_initial_ready_s']:.2f} s)",
                f"{r['peak_rss_mb']['agent_initial_client']:.1f} MB",
                f"{peak:.1f} MB",
                "",
                f"<= {GOAL_PEAK_RSS_MB:g} MB: {verdict(peak <= GOAL_PEAK_RSS_MB)}"
                if rss_goal
                else "info",
            )
        )
    for key, what in (("incremental", "incremental"), ("nochange", "no-change")):
        ratio = r[f"ratio_{key}_agent"]
        rows.append(
            (
                f"{part} {what} through the agent vs rsync --append",
                f"{m[f'ours_agent_{key}']:.2f} s",
                f"{m[f'rsync_{key}']:.2f} s",
                f"{ratio:.2f}",
                f"<= {goal:g}: {verdict(ratio <= goal)}" if key == "incremental" else "info",
            )
        )
        rows.append(
            (
                f"{part} same vs rsync --append over a control master",
                f"{m[f'ours_agent_{key}']:.2f} s",
                f"{m[f'rsync_cm_{key}']:.2f} s",
                f"{r[f'ratio_{key}_agent_vs_cm']:.2f}",
                "info",
            )
        )
    peak = r["peak_rss_mb"]
    rows.append(
        (
            f"{part} peak RSS through the agent: client / agent",
            f"{peak['agent_client']:.1f} MB",
            f"{peak['agent']:.1f} MB",
            "",
            "info",
        )
    )
    return rows


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    one = r["one"]
    m = one["median_s"]
    mb = one["tree_bytes"] / 1e6
    rows.append(
        (
            f"1 initial, {one['tree_files']} files {mb:.0f} MB: ours vs rsync -a",
            f"{m['ours_initial']:.2f} s",
            f"{m['rsync_initial']:.2f} s",
            f"{one['ratio_initial']:.2f}",
            f"<= {GOAL_INITIAL_RATIO:g}: {verdict(one['ratio_initial'] <= GOAL_INITIAL_RATIO)}",
        )
    )
    if "ratio_initial_vs_fsync" in one:
        rows.append(
            (
                "1 same vs rsync -a --fsync",
                f"{m['ours_initial']:.2f} s",
                f"{m['rsync_fsync_initial']:.2f} s",
                f"{one['ratio_initial_vs_fsync']:.2f}",
                "info",
            )
        )
    w = one["wire"]
    grown = w["grown_files"]
    rows.append(
        (
            f"1 incremental ({grown} x {w['appended_bytes'] // grown} B appended) "
            "vs rsync --append",
            f"{m['ours_incremental']:.2f} s",
            f"{m['rsync_incremental']:.2f} s",
            f"{one['ratio_incremental']:.2f}",
            f"<= {GOAL_INCREMENTAL_RATIO:g}: "
            f"{verdict(one['ratio_incremental'] <= GOAL_INCREMENTAL_RATIO)}",
        )
    )
    rows.append(
        (
            "1 no-change vs rsync --append",
            f"{m['ours_nochange']:.2f} s",
            f"{m['rsync_nochange']:.2f} s",
            f"{one['ratio_nochange']:.2f}",
            "info",
        )
    )
    rows += _agent_rows("1", one, GOAL_INCREMENTAL_RATIO)
    oi, ri = w["ours_incremental"], w["rsync_incremental"]
    rows.append(
        (
            "1 wire bytes, incremental (up + down = total)",
            f"{oi['up']} + {oi['down']} = {oi['total']}",
            f"{ri['up']} + {ri['down']} = {ri['total']}",
            f"{oi['total'] / ri['total']:.2f}",
            "vs rsync: info",
        )
    )
    rows.append(
        (
            f"1 same vs budget 1.2 x {w['appended_bytes']} + 100 x {w['tree_files']} files",
            f"{oi['total']} B",
            f"{w['budget_per_tree_file']:.0f} B",
            f"{oi['total'] / w['budget_per_tree_file']:.2f}",
            f"<= 1: {verdict(oi['total'] <= w['budget_per_tree_file'])}",
        )
    )
    rows.append(
        (
            f"1 same vs budget 1.2 x {w['appended_bytes']} + 100 x {grown} grown files",
            f"{oi['total']} B",
            f"{w['budget_per_grown_file']:.0f} B",
            f"{oi['total'] / w['budget_per_grown_file']:.2f}",
            f"<= 1: {verdict(oi['total'] <= w['budget_per_grown_file'])}",
        )
    )
    on, rn = w["ours_nochange"], w["rsync_nochange"]
    rows.append(
        (
            "1 wire bytes, no change (up + down = total)",
            f"{on['up']} + {on['down']} = {on['total']}",
            f"{rn['up']} + {rn['down']} = {rn['total']}",
            f"{on['total'] / rn['total']:.2f}",
            "info",
        )
    )
    f = r["fleet"]
    m = f["median_s"]
    label = f"{f['hosts']} hosts x {f['files_per_host']} files, {f['bytes'] / 1e6:.0f} MB"
    rows.append(
        (
            f"2 fleet initial ({label}) vs xargs -P8 rsync -a",
            f"{m['ours_initial']:.2f} s",
            f"{m['rsync_initial']:.2f} s",
            f"{f['ratio_initial']:.2f}",
            f"<= {GOAL_INITIAL_RATIO:g}: {verdict(f['ratio_initial'] <= GOAL_INITIAL_RATIO)}",
        )
    )
    rows.append(
        (
            f"2 fleet incremental ({f['grown_files_per_round']} files grew) vs rsync --append",
            f"{m['ours_incremental']:.2f} s",
            f"{m['rsync_incremental']:.2f} s",
            f"{f['ratio_incremental']:.2f}",
            f"<= {GOAL_FLEET_INCREMENTAL_RATIO:g}: "
            f"{verdict(f['ratio_incremental'] <= GOAL_FLEET_INCREMENTAL_RATIO)}",
        )
    )
    rows.append(
        (
            "2 fleet no-change vs rsync --append",
            f"{m['ours_nochange']:.2f} s",
            f"{m['rsync_nochange']:.2f} s",
            f"{f['ratio_nochange']:.2f}",
            "info",
        )
    )
    rows += _agent_rows("2 fleet", f, GOAL_FLEET_INCREMENTAL_RATIO, rss_goal=True)
    b = r["big"]
    rss_goal = f"<= {GOAL_PEAK_RSS_MB:g} MB"
    for label, value, goal in (
        ("3 peak RSS, fleet initial", f["peak_rss_mb"]["initial"], True),
        (
            "3 peak RSS, fleet incremental / no-change",
            max(f["peak_rss_mb"]["incremental"], f["peak_rss_mb"]["nochange"]),
            False,
        ),
        ("3 peak RSS, single host initial", one["peak_rss_mb"]["initial"], False),
        (f"3 peak RSS, one {b['bytes'] / MiB:.0f} MiB session, initial", b["peak_rss_mb"], True),
    ):
        rows.append(
            (
                label,
                f"{value:.1f} MB",
                "-",
                "-",
                f"{rss_goal}: {verdict(value <= GOAL_PEAK_RSS_MB)}" if goal else "info",
            )
        )
    m = b["median_s"]
    rows.append(
        (
            f"3 {b['bytes'] / MiB:.0f} MiB session vs rsync -a",
            f"{m['ours']:.2f} s",
            f"{m['rsync']:.2f} s",
            f"{b['ratio_vs_rsync']:.2f}",
            "info",
        )
    )
    rows.append(
        (
            "3 same vs ssh cat > file",
            f"{m['ours']:.2f} s",
            f"{m['ssh_cat']:.2f} s",
            f"{b['ratio_vs_ssh_cat']:.2f}",
            "info",
        )
    )
    if "ratio_vs_rsync_fsync" in b:
        rows.append(
            (
                "3 same vs rsync -a --fsync",
                f"{m['ours']:.2f} s",
                f"{m['rsync_fsync']:.2f} s",
                f"{b['ratio_vs_rsync_fsync']:.2f}",
                "info",
            )
        )
        rows.append(
            (
                "3 same vs ssh cat > file && sync file",
                f"{m['ours']:.2f} s",
                f"{m['ssh_cat_sync']:.2f} s",
                f"{b['ratio_vs_ssh_cat_sync']:.2f}",
                "info",
            )
        )
    rsync_rss = [
        ("one", "rsync_initial", "single host initial"),
        ("fleet", "rsync_initial", "fleet initial (largest process)"),
        ("big", "rsync", "big session"),
    ]
    rows.append(
        (
            "3 peak RSS of rsync: " + " / ".join(label for _, _, label in rsync_rss),
            "-",
            " / ".join(
                f"{max(x['rss_mb'] for x in r[part]['runs'][key]):.1f}"
                for part, key, _ in rsync_rss
            )
            + " MB",
            "-",
            "info",
        )
    )
    # Mirror only (--no-index), when this version has it: what the session index costs.
    for part, key, peer, label in (
        ("one", "ours_noindex_initial", "rsync_initial", "1 initial, --no-index vs rsync -a"),
        ("one", "ours_noindex_incremental", "rsync_incremental", "1 incremental, --no-index"),
        ("one", "ours_noindex_nochange", "rsync_nochange", "1 no-change, --no-index"),
        ("fleet", "ours_noindex_initial", "rsync_initial", "2 fleet initial, --no-index"),
        (
            "fleet",
            "ours_noindex_incremental",
            "rsync_incremental",
            "2 fleet incremental, --no-index",
        ),
        ("fleet", "ours_noindex_nochange", "rsync_nochange", "2 fleet no-change, --no-index"),
        ("big", "ours_noindex", "rsync", "3 big session, --no-index vs rsync -a"),
        ("big", "ours_noindex", "ssh_cat", "3 big session, --no-index vs ssh cat > file"),
    ):
        m = r[part]["median_s"]
        if key in m:
            rows.append(
                (label, f"{m[key]:.2f} s", f"{m[peer]:.2f} s", f"{m[key] / m[peer]:.2f}", "info")
            )
    f, b = r["fleet"], r["big"]
    if "initial_noindex" in f["peak_rss_mb"]:
        rows.append(
            (
                "3 peak RSS --no-index: fleet initial / big session",
                f"{f['peak_rss_mb']['initial_noindex']:.1f} / {b['peak_rss_mb_noindex']:.1f} MB",
                "-",
                "-",
                "info",
            )
        )
    for part, key, peer, label in (
        ("one", "ours_initial", "rsync_initial", "1 CPU s, initial (client + rest of machine)"),
        ("one", "ours_incremental", "rsync_incremental", "1 CPU s, incremental"),
        ("one", "ours_nochange", "rsync_nochange", "1 CPU s, no change"),
        ("fleet", "ours_initial", "rsync_initial", "2 CPU s, fleet initial (client + rest)"),
        ("fleet", "ours_incremental", "rsync_incremental", "2 CPU s, fleet incremental"),
        ("fleet", "ours_nochange", "rsync_nochange", "2 CPU s, fleet no change"),
        ("big", "ours", "rsync", "3 CPU s, big session vs rsync -a"),
        ("big", "ours", "ssh_cat", "3 CPU s, big session vs ssh cat > file"),
    ):
        c = r[part]["median_cpu_s"]
        mine, theirs = c[key], c[peer]
        rows.append(
            (
                label,
                f"{mine['client']:.2f} + {mine['server']:.2f}",
                f"{theirs['client']:.2f} + {theirs['server']:.2f}",
                f"{(mine['client'] + mine['server']) / (theirs['client'] + theirs['server']):.2f}",
                "info",
            )
        )
    print_rows(rows)
    print("\nratio: ours / peer (time, or bytes); wire bytes are TCP payload through the relay.")


def print_what_if(title: str, w: dict[str, Any]) -> None:
    print(f"\n{title}: median of alternating runs (each a --child plain process)")
    for v, patches in w["variants"].items():
        c = w["median_cpu_s"][v]
        print(
            f"    {v:<12} {' '.join(patches) or '(library as is)':<16} "
            f"{w['median_s'][v]:6.2f} s  x{w['ratio_vs_default'][v]:.2f}  peak RSS "
            f"{w['peak_rss_mb'][v]:6.1f} MB  CPU client {c['client']:.2f} s "
            f"+ rest {c['server']:.2f} s"
        )


def print_profile(r: dict[str, Any]) -> None:
    for part in ("one", "fleet", "big"):
        prof = r.get(part, {}).get("profile")
        if not prof:
            continue
        for key, value in prof.items():
            if key.startswith("whatif") and "variants" in value:
                print_what_if(f"[{part}] {key}", value)
            elif key.endswith("_phases"):
                print(
                    f"\n[{part}] {key}: wall {value['wall_s']:.2f} s = start "
                    f"{value['startup_s']:.2f} + imports {value['import_s']:.2f} + main "
                    f"{value['main_s']:.2f} + exit {value['exit_s']:.2f} s"
                )
                for label, p in value["phases"].items():
                    print(
                        f"    {label:<52} {p['calls']:>6} calls {p['s']:8.3f} s  "
                        f"[{p['first_start_s']:.2f} .. {p['last_end_s']:.2f}]"
                    )
            elif key.endswith("_cprofile"):
                print(f"\n[{part}] {key}: wall {value['wall_s']:.2f} s")
                print(value["pstats"])
            else:
                print(f"\n[{part}] {key}: {json.dumps(value, indent=1)}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller trees, fleet and session")
    parser.add_argument("--json", action="store_true", help="print a JSON object of figures")
    parser.add_argument("--profile", action="store_true", help="add the diagnostics")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--repeat", type=int, default=3, help="runs per median (default 3)")
    parser.add_argument(
        "--only",
        choices=["one", "fleet", "big"],
        action="append",
        help="run only these parts (repeatable; the table needs all three)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    return run_all(
        dataclasses.replace(sizes, repeat=max(1, args.repeat)),
        quick=args.quick,
        as_json=args.json,
        profile=args.profile,
        only=args.only,
        save=args.save,
    )


def code_under_test() -> str:
    """Which ``remote_sync`` the runs use: this checkout (commit, dirty or not) or another
    copy put first on PYTHONPATH (e.g. a snapshot of a commit)."""
    from _common import REPO

    import remote_sync

    where = Path(remote_sync.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else "?"

    head = git("rev-parse", "--short", "HEAD")
    if where == REPO:
        dirty = git("status", "--porcelain", "--", "remote_sync")
        return (
            f"remote_sync of this checkout, HEAD {head}{' + uncommitted changes' if dirty else ''}"
        )
    return f"remote_sync from PYTHONPATH (not this checkout, whose HEAD is {head})"


def stale_bytecode() -> list[str]:
    """Modules of the ``remote_sync`` under test whose cached bytecode is missing or older than
    their source (with PYTHONDONTWRITEBYTECODE set, those are compiled again by every run)."""
    import importlib.util

    import remote_sync

    stale = []
    for source in sorted(Path(remote_sync.__file__).parent.rglob("*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            header = cached.read_bytes()[:16]
        except OSError:
            stale.append(str(source))
            continue
        st = source.stat()
        recorded = int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:16], "little")
        if recorded != (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF):
            stale.append(str(source))
    return stale


def ensure_bytecode() -> bool:
    """Byte-compile the package under test as ``pip install`` leaves it; True if it is."""
    import compileall

    import remote_sync

    if stale_bytecode():
        progress("byte-compiling remote_sync (its cached bytecode is missing or stale)")
        compileall.compile_dir(str(Path(remote_sync.__file__).parent), quiet=1)
    return not stale_bytecode()


def run_all(
    sizes: Sizes,
    *,
    quick: bool,
    as_json: bool,
    profile: bool,
    only: list[str] | None,
    save: str | None = None,
) -> int:
    import asyncssh
    from _common import jsonl_block
    from sshfleet import SSHFleet  # tests/, on sys.path

    parts = set(only or ("one", "fleet", "big"))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "asyncssh": asyncssh.__version__,
        "openssh": tool_version(["ssh", "-V"]),
        "rsync": tool_version(["rsync", "--version"]),
        "rss_method": "/usr/bin/time -v" if os.access("/usr/bin/time", os.X_OK) else "wait4",
        "code": code_under_test(),
        "bytecode_cached": ensure_bytecode(),
        "loadavg": {"start": os.getloadavg()},
    }
    if not results["bytecode_cached"]:
        progress(
            "remote_sync's bytecode could not be written: every run compiles it (with "
            "PYTHONDONTWRITEBYTECODE set); the figures include that"
        )
    progress("generating a 16 MB block of session lines")
    block = jsonl_block(16, min_line=200, max_line=7800)
    lines = Lines(block)
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        if parts & {"one", "big"}:
            fleet = SSHFleet(names=["one", "big"])
            try:
                if "one" in parts:
                    results["one"] = bench_one(fleet, sizes, lines, work, profile)
                    results["loadavg"]["after_one"] = os.getloadavg()
                if "big" in parts:
                    results["big"] = bench_big(fleet, sizes, block, work, profile)
                    results["loadavg"]["after_big"] = os.getloadavg()
            finally:
                fleet.close()
        if "fleet" in parts:
            results["fleet"] = bench_fleet(sizes, lines, work, profile)
            results["loadavg"]["after_fleet"] = os.getloadavg()
    finally:
        Agent.stop_all()  # one a failed part left serving
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.perf_counter() - started
    if report_json(results, save=save, as_json=as_json):
        return 0
    print(
        f"{results['date']}  {results['openssh']}  {results['rsync']}  asyncssh "
        f"{results['asyncssh']}  Python {results['python']}  {results['cpus']} CPUs  "
        f"{'quick' if quick else 'full'} run, {results['elapsed_s']:.0f} s\n{results['code']}"
        f"{'' if results['bytecode_cached'] else ' (NOT byte-compiled)'}; load average "
        f"{' / '.join(f'{v[0]:.1f}' for v in results['loadavg'].values())} (start / after "
        "each part)\n"
    )
    if parts == {"one", "fleet", "big"}:
        print_table(results)
    else:
        print(json.dumps({k: results[k] for k in parts}, indent=1, default=str)[:20000])
    if profile:
        print_profile(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
