#!/usr/bin/env python3
"""Benchmarks of the session index (``remote-sync sessions``), each against a peer in one run.

Starts its own fleet of real sshd servers on 127.0.0.1 (``tests/sshfleet.py``), writes
realistic OpenClaw sessions from ``tests/sessiongen.py`` into it, and measures:

1. ``list``: ``remote-sync sessions list --json --dest D`` over an index of 10,000 sessions as a
   whole process (``python3 -m remote_sync.cli``, the console script next to this Python, and
   ``remote-sync`` as found on PATH when that is something else), median of 5 alternating runs
   with its peers ``python3 -c pass`` and ``sqlite3 D/.remote-sync/state.db 'select * from
   sessions'``; also without cached bytecode. The index is written directly
   (``MirrorState.commit`` + ``IndexRows``) from the facts of 250 generated transcripts
   indexed by the real reader, replicated with new ids, paths, hosts and times; each file's
   fingerprint is the digest a sync records. A child splits the time (import, ``cli.main()``,
   SQL, JSON) and times the first query with a bigger page cache or a memory map. Goal:
   <= 0.4 s.
2. ``show``: ``sessions show h0 SID --tail 100 --json`` (and ``--head 100``, ``--page K`` in the
   middle) of a 1 GiB session mirrored by a real ``remote-sync sync`` (which also indexes it and
   records its page marks). The session is one ~16 MiB generated OpenClaw transcript whose
   message lines are repeated. Bytes read from the file (``ShowResult.bytes_read``), ``rchar``
   of the command and of the whole process (``/proc/self/io`` in a wrapper around
   ``cli.main``), whole-process time (median of 5) against ``python3 -c pass`` and
   ``tail -n 100`` / ``head -n 100`` of the file. Goals: <= 4 MiB read, <= 0.3 s.
3. ``remote``: peak Python allocations (``tracemalloc``, in a fresh child per case, after a
   warm-up listing; median of 3) of ``api.stream_sessions(remote=True, batch_size=50)``
   consumed batch by batch over 100, 300 and 1,000 generated sessions
   (``sessiongen.build_tree``, 20-60 messages each), and of the eager ``api.list_sessions`` for
   context. Goal: the streamed peak does not grow with the number of sessions (1,000 vs 100:
   within 1 MiB or 10 %). Wall time of ``sessions list --remote --json`` (whole process) and
   of the API call alone against ``ssh -F cfg h0 'cat ROOT/agents/*/sessions/*.jsonl*'``
   (median of 3, alternating). ``show --remote`` of the large tree's biggest session by id
   (``--tail 100``, ``--head 100``, ``--page 2 --page-size 10``): remote commands per call,
   bytes of the file decoded, wall time with the connection (median of 3). Diagnostics: what
   is held mid-stream (a tracemalloc snapshot) and a cProfile of the stream.
4. ``sync``: initial ``remote-sync sync`` of a 500-session OpenClaw tree (~100 MB) with the
   index (the default) vs ``--no-index``, fresh destination each time, median of 3 alternating;
   then incremental runs after 20 sessions grew by ~10 KB each. Goal: indexing costs <= 10 %.
   One more indexed initial run under ``python3 -m cProfile`` shows where indexing time goes.

    python3 bench/bench_sessions.py [--quick] [--json] [--save FILE] [--only PART]

``--quick`` shrinks everything (2,000 indexed sessions, a 128 MiB session, 20/60/200 remote
sessions, a 100-session tree): under a minute. The full run takes about 2 minutes on a quiet
2-core machine (up to 4 when shared). Python children run with bytecode caching on, into a
private ``PYTHONPYCACHEPREFIX``. Progress goes to stderr. Needs ``sshd``, ``ssh``,
``ssh-keygen``; uses ``sqlite3`` and ``/usr/bin/time`` when installed. Results and their
reading: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pstats
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import (
    MiB,
    alternate,
    median,
    print_rows,
    report_json,
    rss_kib,
    set_aside,
    tool_version,
    wait_for_fast_file_creation,
    write_jsonl_file,
)

THIS = Path(__file__).resolve()

# Goals (see docs/benchmarks.md).
GOAL_LIST_S = 0.4  # sessions list --json over 10,000 sessions, whole process
GOAL_SHOW_BYTES = 4 * MiB  # bytes read from the file by show --tail 100
GOAL_SHOW_S = 0.3  # show --tail 100, whole process
GOAL_PEAK_DIFF_BYTES = 1 * MiB  # streamed remote list: large peak - small peak, at most...
GOAL_PEAK_DIFF_SHARE = 0.10  # ... or at most this share of the small peak
GOAL_INDEX_OVERHEAD = 1.10  # indexed sync / --no-index sync, at most

FORMAT = "openclaw"
HOST = "h0"


@dataclass(frozen=True)
class Sizes:
    index_sessions: int  # part 1
    big_bytes: int  # part 2: the mirrored session's size
    remote_small: int  # part 3: sessions of the trees (build_tree adds topics, archives)
    remote_medium: int  # (info: where the peak stops growing)
    remote_large: int
    remote_messages: int  # mean messages per remote session (build_tree: +-50 %)
    tree_sessions: int  # part 4
    tree_messages: int  # mean messages per session of part 4's tree
    grow_files: int  # part 4: sessions grown before each incremental run
    grow_bytes: int  # ... by about this many bytes of whole lines each
    repeat_cli: int  # parts 1 and 2: runs per command
    repeat_sync: int  # parts 3 and 4


FULL = Sizes(10_000, 1024 * MiB, 100, 300, 1000, 40, 500, 100, 20, 10_000, 5, 3)
QUICK = Sizes(2_000, 128 * MiB, 20, 60, 200, 40, 100, 100, 20, 10_000, 5, 3)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- running things

#: Environment of every Python child (set by run_all): bytecode caching on, into a private
#: prefix, as an installed package has it (this repo's CI image sets PYTHONDONTWRITEBYTECODE=1,
#: which makes every start compile remote_sync from source; part 1 measures that too).
CHILD_ENV: dict[str, str] | None = None


def cached_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def uncached_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def run_timed(
    argv: Sequence[str], *, capture: bool = False, env: dict[str, str] | None = None
) -> tuple[float, bytes]:
    """Wall time of a subprocess (stdout to /dev/null unless ``capture``); raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env if env is not None else CHILD_ENV,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:6])}... exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed, proc.stdout if capture else b""


TIME_BIN = "/usr/bin/time"
_MAXRSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def measure(argv: Sequence[str]) -> dict[str, Any]:
    """Run ``argv`` once after ``sync(2)``: wall time, CPU time (user + sys of the child and
    its waited-for children), peak RSS, stdout."""
    os.sync()
    use_time = os.access(TIME_BIN, os.X_OK)
    with (
        tempfile.NamedTemporaryFile("w+", suffix=".time") as report,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        full = [TIME_BIN, "-v", "-o", report.name, *argv] if use_time else list(argv)
        t0 = time.perf_counter()
        child = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=CHILD_ENV
        )
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        if code != 0:
            raise RuntimeError(
                f"{' '.join(argv[:6])}... exited {code}: "
                f"{err.read()[-2000:].decode(errors='replace')}\n{stdout[-2000:]}"
            )
        rss_kib = usage.ru_maxrss
        if use_time:
            found = _MAXRSS.search(Path(report.name).read_text())
            if found:
                rss_kib = int(found.group(1))
    return {
        "s": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": rss_kib * 1024 / 1e6,
        "stdout": stdout,
    }


def timer(
    into: list[float], argv: Sequence[str], env: dict[str, str] | None = None
) -> Callable[[], None]:
    """A step that runs ``argv`` once and appends its wall time to ``into``."""

    def step() -> None:
        into.append(run_timed(argv, env=env)[0])

    return step


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "remote_sync.cli", *args]


def write_inventory(path: Path, fleet: Any, root: Path) -> Path:
    path.write_text(
        "[defaults]\n"
        f'ssh_config = "{fleet.ssh_config}"\n'
        f'known_hosts = "{fleet.known_hosts}"\n'
        f'format = "{FORMAT}"\n\n'
        f'[[hosts]]\nname = "{HOST}"\naddress = "{fleet.host(HOST).alias}"\nroot = "{root}"\n'
    )
    return path


def make_readable(root: Path) -> None:
    """The fleet's login user (not root) must read what this process wrote."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def iso_ms(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def sync_summary(stdout: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if summary.get("type") != "summary" or summary.get("exit_code") != 0:
        raise RuntimeError(f"remote-sync sync failed: {stdout[-2000:]}")
    return summary


def count_sessions(dest: Path) -> int:
    import sqlite3

    db = sqlite3.connect(dest / ".remote-sync" / "state.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])
    finally:
        db.close()


def console_scripts() -> dict[str, str]:
    """The ``remote-sync`` console script next to this Python and the one on PATH (when that
    is a different file, e.g. a pyenv shim)."""
    found: dict[str, str] = {}
    beside = Path(sys.executable).parent / "remote-sync"
    if os.access(beside, os.X_OK):
        found["script"] = str(beside)
    on_path = shutil.which("remote-sync")
    if on_path and (not beside.exists() or not os.path.samefile(on_path, beside)):
        found["path"] = on_path
    return found


# ----------------------------------------------------------------------------- part 1: list


def index_templates(rng: random.Random, count: int) -> list[tuple[Any, list[Any], bytes]]:
    """(facts, marks, fingerprint) of ``count`` generated transcripts, indexed by the reader."""
    import sessiongen  # type: ignore[import-not-found]

    from remote_sync.formats.readers import get_reader
    from remote_sync.index.update import FileIndexer
    from remote_sync.mirror.state import FINGERPRINT_BYTES, fingerprint_of

    reader = get_reader(FORMAT)
    out = []
    for _ in range(count):
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        session = sessiongen.generate(
            FORMAT, rng, messages=rng.randint(20, 60), session_id=sid, unicode=True
        )
        indexer = FileIndexer(reader, HOST, f"agents/main/sessions/{sid}.jsonl".encode())
        indexer.feed(session.data)
        update = indexer.result()
        out.append((update.facts, update.marks, fingerprint_of(session.data[:FINGERPRINT_BYTES])))
    return out


def build_index(dest: Path, n: int, rng: random.Random) -> dict[str, Any]:
    """An index of ``n`` sessions on 4 hosts, written straight into the state database."""
    import msgspec

    from remote_sync.index.store import IndexRows
    from remote_sync.mirror.state import FileState, MirrorState

    t0 = time.perf_counter()
    templates = index_templates(rng, 250)
    base = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    files: list[FileState] = []
    sessions: list[tuple[str, bytes, Any, list[Any]]] = []
    for i in range(n):
        facts, marks, fingerprint = templates[i % len(templates)]
        host = f"h{i % 4}"
        agent = ("main", "work", "ops")[i % 3]
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = f"agents/{agent}/sessions/{sid}.jsonl".encode()
        shift = base - timedelta(minutes=rng.randint(0, 365 * 24 * 60))
        first = parse_iso(facts.first_ts) if facts.first_ts else shift
        last = parse_iso(facts.last_ts) if facts.last_ts else shift
        copy = msgspec.structs.replace(
            facts,
            session_id=sid,
            agent=agent,
            first_ts=iso_ms(shift - (last - first)),
            last_ts=iso_ms(shift),
            models=list(facts.models),
            recent_usage_keys=list(facts.recent_usage_keys),
            recent_usage_out=list(facts.recent_usage_out),
            recent_usage_cost=list(facts.recent_usage_cost),
        )
        roll = rng.random()
        files.append(
            FileState(
                host=host,
                path=path,
                kind="append",
                size=facts.bytes,
                remote_size=facts.bytes,
                mtime=shift.timestamp(),
                dev=2049,
                ino=1_000_000 + i,
                fingerprint=fingerprint,
                version=1 if 0.05 <= roll < 0.07 else 0,
                state="deleted" if roll < 0.05 else "live",
            )
        )
        sessions.append((host, path, copy, marks))
    with MirrorState(dest) as state:
        for h in range(4):
            state.set_host(f"h{h}", FORMAT, "~/.openclaw", f"h{h}")

        def write_index() -> None:
            rows = IndexRows()  # as a sync's commit writes its sessions
            for host, path, facts, marks in sessions:
                rows.put(host, path, FORMAT, facts, marks, fresh=True)
            rows.write(state.db)

        state.commit(files, also=write_index)
    db_bytes = sum(p.stat().st_size for p in (dest / ".remote-sync").glob("state.db*"))
    return {
        "sessions": n,
        "templates": len(templates),
        "build_s": time.perf_counter() - t0,
        "db_bytes": db_bytes,
    }


def bench_list(dest: Path, n: int, repeat: int) -> dict[str, Any]:
    args = ("sessions", "list", "--json", "--dest", str(dest))
    commands: dict[str, list[str]] = {"module": cli(*args)}
    for name, script in console_scripts().items():
        commands[name] = [script, *args]
    commands["python_pass"] = [sys.executable, "-c", "pass"]
    commands["import_cli"] = [sys.executable, "-c", "import remote_sync.cli"]
    sqlite3_bin = shutil.which("sqlite3")
    if sqlite3_bin:
        db = dest / ".remote-sync" / "state.db"
        commands["sqlite3"] = [sqlite3_bin, str(db), "select * from sessions"]
    # Check the output once (and warm the page cache and the bytecode cache of every command).
    _, out = run_timed(commands["module"], capture=True)
    lines = out.splitlines()
    if len(lines) != n:
        raise RuntimeError(f"sessions list printed {len(lines)} lines, not {n}")
    first = json.loads(lines[0])
    for argv in commands.values():
        run_timed(argv)
    runs: dict[str, list[float]] = {k: [] for k in commands}
    steps = [timer(runs[k], a) for k, a in commands.items()]
    # The same command without cached bytecode (remote_sync compiled from source at each start).
    runs["module_uncached"] = []
    steps.append(timer(runs["module_uncached"], commands["module"], env=uncached_env()))
    for rep in range(repeat):
        alternate(rep, steps)
        progress(
            f"list rep {rep + 1}/{repeat}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in runs.items())
        )
    # Where the time goes: import of the CLI and cli.main() itself, timed inside a child.
    breakdown = [
        json.loads(
            run_timed(
                [sys.executable, str(THIS), "--child", "list-breakdown", "--dest", str(dest)],
                capture=True,
            )[1]
        )
        for _ in range(repeat)
    ]
    med = {k: median(v) for k, v in runs.items()}
    return {
        "sessions": n,
        "db_bytes": (dest / ".remote-sync" / "state.db").stat().st_size,
        "output_bytes": len(out),
        "first_row_keys": sorted(first),
        "commands": {k: " ".join(shlex.quote(x) for x in v[:1]) for k, v in commands.items()},
        "runs_s": runs,
        "median_s": med,
        "breakdown_s": {k: median([b[k] for b in breakdown]) for k in breakdown[0]},
        "ratio_vs_python_pass": med["module"] / med["python_pass"],
        "ratio_vs_sqlite3": med["module"] / med["sqlite3"] if "sqlite3" in med else None,
        "goal_s_max": GOAL_LIST_S,
        "goal_met": med["module"] <= GOAL_LIST_S,
    }


def child_list_breakdown(dest: str) -> int:
    t0 = time.perf_counter()
    from remote_sync import cli as cli_module

    t1 = time.perf_counter()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        cli_module.main(["sessions", "list", "--json", "--dest", dest])
        sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)
    t2 = time.perf_counter()
    # Again, the imports done: the SQL query with the rows built, then the JSON encoding.
    import msgspec

    from remote_sync.index.query import open_index, query_sessions

    db = open_index(dest)
    t3 = time.perf_counter()
    rows = list(query_sessions(db))
    t4 = time.perf_counter()
    data = msgspec.json.Encoder().encode_lines(rows)
    t5 = time.perf_counter()
    db.close()
    figures = {
        "import_cli": t1 - t0,
        "main": t2 - t1,
        "warm_query_rows": t4 - t3,
        "warm_encode": t5 - t4,
        "output_bytes": len(data),
    }
    # What-ifs: the first query on a fresh connection (as the CLI runs it) with SQLite's
    # default page cache (2 MiB), a 64 MiB one, or a 256 MiB memory map.
    for name, pragma in (
        ("first_query_default", None),
        ("first_query_cache_64mib", "PRAGMA cache_size = -65536"),
        ("first_query_mmap_256mib", "PRAGMA mmap_size = 268435456"),
    ):
        db = open_index(dest)
        if pragma:
            db.execute(pragma)
        t6 = time.perf_counter()
        rows = list(query_sessions(db))
        figures[name] = time.perf_counter() - t6
        db.close()
    print(json.dumps(figures))
    return 0


# ----------------------------------------------------------------------------- part 2: show

_IO_WRAPPER = r"""
import json, sys, time
def io():
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}
t0 = time.perf_counter()
before = io()
from remote_sync.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
after = io()
print("BENCH-IO " + json.dumps({
    "rchar_command": after["rchar"] - before["rchar"],
    "read_bytes_command": after["read_bytes"] - before["read_bytes"],
    "rchar_process": after["rchar"],
    "read_bytes_process": after["read_bytes"],
    "seconds_in_process": time.perf_counter() - t0,
}), file=sys.stderr)
sys.exit(code)
"""


def make_big_session(path: Path, size: int, rng: random.Random) -> dict[str, Any]:
    """One OpenClaw transcript of about ``size`` bytes: a generated ~16 MiB session (with one
    512 KiB tool output), whose lines after the header are repeated."""
    import sessiongen

    sid = path.name.removesuffix(".jsonl")
    session = sessiongen.generate(
        FORMAT, rng, messages=10_000, session_id=sid, huge_line_bytes=512 * 1024
    )
    data = session.data
    cut = data.index(b"\n") + 1
    header, body = data[:cut], data[cut:]
    path.write_bytes(header)
    written = len(header) + write_jsonl_file(path, size - len(header), body)[0]
    lines = body.split(b"\n")
    longest = max(range(len(lines)), key=lambda i: len(lines[i]))
    return {
        "bytes": written,
        "block_bytes": len(body),
        # The one huge line: its line number in the block, and the block's line count.
        "longest_line_at": [longest, len(lines) - 1],
        "block_messages": len(session.messages),
        "longest_line": len(lines[longest]),
        "mean_line_bytes": len(body) / body.count(b"\n"),
    }


def warm_sync_bytecode(fleet: Any, work: Path, big_root: Path, rel: str) -> None:
    """One untimed indexed sync of a root holding the first lines of the session ``rel``
    under ``big_root``, so that the measured sync of the big session finds the sync's
    bytecode cached in the private prefix, as an installed package has it. Otherwise that
    first sync compiled asyncssh, cryptography and remote_sync as it ran, and its peak RSS
    was about 5 MB higher for it (docs/benchmarks.md, twentieth session)."""
    root = fleet.mkdir(HOST, "warm")
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    with open(big_root / rel, "rb") as big:
        head = big.read(256 * 1024)
    (root / rel).write_bytes(head[: head.rindex(b"\n") + 1])
    make_readable(root)
    progress("an untimed sync of a small root first (the sync's bytecode cached)")
    run_timed(
        cli(
            "sync",
            "--inventory",
            str(write_inventory(work / "warm.toml", fleet, root)),
            "--dest",
            str(work / "warm-mirror"),
            "--json",
        )
    )
    set_aside(work / "warm-mirror")
    set_aside(root)


def bench_show(
    fleet: Any, work: Path, size: int, repeat: int, rng: random.Random
) -> dict[str, Any]:
    from remote_sync.index.query import find_session, open_index
    from remote_sync.index.show import show_session

    root = fleet.mkdir(HOST, "big")
    sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    rel = f"agents/main/sessions/{sid}.jsonl"
    (root / "agents/main/sessions").mkdir(parents=True, exist_ok=True)
    progress(f"writing a {size / MiB:.0f} MiB session")
    made = make_big_session(root / rel, size, rng)
    make_readable(root)
    inventory = write_inventory(work / "big.toml", fleet, root)
    dest = work / "big-mirror"
    warm_sync_bytecode(fleet, work, root, rel)
    progress("mirroring it with remote-sync sync (indexed)")
    synced = measure(cli("sync", "--inventory", str(inventory), "--dest", str(dest), "--json"))
    sync_summary(synced.pop("stdout"))
    mirrored = dest / HOST / rel
    if mirrored.stat().st_size != made["bytes"]:
        raise RuntimeError("the mirrored session differs in size from the remote one")
    db = open_index(dest)
    try:
        ref = find_session(db, HOST, sid)
        marks = db.execute("SELECT COUNT(*) FROM session_marks").fetchone()[0]
    finally:
        db.close()
    messages = ref.row.messages
    page_size = 50
    page = max(1, messages // 2 // page_size)
    modes: dict[str, tuple[list[str], int]] = {
        "tail": (["--tail", "100"], 100),
        "head": (["--head", "100"], 100),
        "page": (["--page", str(page), "--page-size", str(page_size)], page_size),
    }
    file_arg = str(mirrored)
    commands: dict[str, list[str]] = {}
    for mode, (extra, _) in modes.items():
        commands[mode] = cli("sessions", "show", HOST, sid, *extra, "--json", "--dest", str(dest))
    commands["python_pass"] = [sys.executable, "-c", "pass"]
    commands["tail_n"] = ["tail", "-n", "100", file_arg]
    commands["head_n"] = ["head", "-n", "100", file_arg]

    results: dict[str, Any] = {}
    for mode, (extra, want) in modes.items():
        # Library figure: bytes of the file read (same call the CLI makes).
        kw: dict[str, Any] = {"tail": None, "head": None, "page": None}
        if mode == "page":
            kw.update(page=page, page_size=page_size)
        else:
            kw[mode] = 100
        t0 = time.perf_counter()
        _row, shown = show_session(dest, HOST, sid, **kw)
        in_process = time.perf_counter() - t0
        if len(shown.messages) != want:
            raise RuntimeError(f"show {mode}: {len(shown.messages)} messages, not {want}")
        if mode == "page" and shown.first != (page - 1) * page_size:
            raise RuntimeError(f"show page {page} starts at message {shown.first}")
        # Whole-process figures: rchar of the command (cli.main) and of the process.
        wrapped = subprocess.run(
            [
                sys.executable,
                "-c",
                _IO_WRAPPER,
                "sessions",
                "show",
                HOST,
                sid,
                *extra,
                "--json",
                "--dest",
                str(dest),
            ],
            capture_output=True,
            check=True,
            timeout=300,
            env=CHILD_ENV,
        )
        lines = wrapped.stdout.splitlines()
        if len(lines) != want:
            raise RuntimeError(f"show {mode} printed {len(lines)} lines, not {want}")
        io_line = [x for x in wrapped.stderr.decode().splitlines() if x.startswith("BENCH-IO ")]
        io = json.loads(io_line[-1].removeprefix("BENCH-IO "))
        results[mode] = {
            "messages": len(shown.messages),
            "first": shown.first,
            "bytes_read": shown.bytes_read,
            "library_s": in_process,
            **io,
        }
    for argv in commands.values():
        run_timed(argv)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in commands}
    steps = [timer(runs[k], a) for k, a in commands.items()]
    for rep in range(repeat):
        alternate(rep, steps)
        progress(
            f"show rep {rep + 1}/{repeat}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in runs.items())
        )
    med = {k: median(v) for k, v in runs.items()}
    tail = results["tail"]
    return {
        "session": made,
        "messages": messages,
        "marks": marks,
        "page": page,
        "page_size": page_size,
        "sync": synced,
        "modes": results,
        "runs_s": runs,
        "median_s": med,
        "ratio_tail_vs_python_pass": med["tail"] / med["python_pass"],
        "ratio_tail_vs_tail_n": med["tail"] / med["tail_n"],
        "ratio_head_vs_head_n": med["head"] / med["head_n"],
        "goal_bytes_max": GOAL_SHOW_BYTES,
        "goal_s_max": GOAL_SHOW_S,
        "goal_bytes_met": tail["bytes_read"] <= GOAL_SHOW_BYTES,
        "goal_bytes_met_rchar": tail["rchar_command"] <= GOAL_SHOW_BYTES,
        "goal_s_met": med["tail"] <= GOAL_SHOW_S,
    }


# ----------------------------------------------------------------------------- part 3: remote


def child_remote_list(args: argparse.Namespace) -> int:
    """One remote listing in a fresh process: figures (and tracemalloc's peak) as JSON."""
    import gc
    import tracemalloc

    import anyio

    import remote_sync.formats.readers
    import remote_sync.index.remote
    import remote_sync.mirror.engine
    import remote_sync.ssh.pool  # noqa: F401  (imported before tracing starts)
    from remote_sync import api
    from remote_sync.inventory import load_inventory

    async def consume(hosts: Any, mode: str) -> dict[str, Any]:
        n = batches = max_batch = nbytes = 0
        if mode == "eager":
            rows = await api.list_sessions(remote=True, hosts=hosts, batch_size=args.batch_size)
            n, batches, max_batch = len(rows), 1, len(rows)
            nbytes = sum(r.bytes for r in rows)
            del rows
        else:
            async for batch in api.stream_sessions(
                remote=True, hosts=hosts, batch_size=args.batch_size
            ):
                n += len(batch)
                batches += 1
                max_batch = max(max_batch, len(batch))
                nbytes += sum(r.bytes for r in batch)
                if batches == 3 and args.snapshot and tracemalloc.is_tracing():
                    # What is held mid-stream, by line (a diagnostic run, not the peak's).
                    snapshot = tracemalloc.take_snapshot().statistics("lineno")
                    held.extend(
                        (label_frame(stat.traceback[0]), stat.size, stat.count)
                        for stat in snapshot[:12]
                    )
        return {"sessions": n, "batches": batches, "max_batch": max_batch, "bytes": nbytes}

    held: list[tuple[str, int, int]] = []

    if args.warmup:  # lazy imports and first-use caches, outside the measurement
        anyio.run(consume, load_inventory(args.warmup).hosts, "stream")
    hosts = load_inventory(args.inventory).hosts
    gc.collect()
    if args.trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        figures = profiler.runcall(anyio.run, consume, hosts, args.mode)
        figures["profile"] = summarize_profile(pstats.Stats(profiler))
    else:
        figures = anyio.run(consume, hosts, args.mode)
    figures["seconds"] = time.perf_counter() - t0
    if args.trace:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        figures.update(traced_peak=peak, traced_current=current)
    if held:
        figures["held_mid_stream"] = held
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
    figures["vmhwm_kib"] = rss_kib()[1]
    print(json.dumps(figures))
    return 0


def label_frame(frame: Any) -> str:
    parts = Path(frame.filename).parts
    short = "/".join(parts[-3:]) if "remote_sync" in parts else "/".join(parts[-2:])
    return f"{short}:{frame.lineno}"


def remote_child(
    inventory: Path,
    mode: str,
    *,
    trace: bool,
    warmup: Path | None,
    snapshot: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    argv = [sys.executable, str(THIS), "--child", "remote-list", "--inventory", str(inventory)]
    argv += ["--mode", mode, "--batch-size", "50"]
    if trace:
        argv.append("--trace")
    if snapshot:
        argv.append("--snapshot")
    if profile:
        argv.append("--profile")
    if warmup is not None:
        argv += ["--warmup", str(warmup)]
    _, out = run_timed(argv, capture=True)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def bench_remote(fleet: Any, work: Path, sizes: Sizes, rng: random.Random) -> dict[str, Any]:
    import sessiongen

    trees: dict[str, dict[str, Any]] = {}
    for name, count in (
        ("small", sizes.remote_small),
        ("medium", sizes.remote_medium),
        ("large", sizes.remote_large),
    ):
        root = fleet.mkdir(HOST, f"remote-{name}")
        tree = sessiongen.build_tree(FORMAT, root, count, rng, messages=sizes.remote_messages)
        make_readable(root)
        sizes_list = [len(t.session.data) for t in tree.transcripts]
        trees[name] = {
            "root": root,
            "inventory": write_inventory(work / f"remote-{name}.toml", fleet, root),
            "sessions": count,
            "transcripts": len(tree.transcripts),
            "bytes": sum(sizes_list),
            "messages": [len(t.session.messages) for t in tree.transcripts],
        }
        progress(
            f"remote tree {name}: {len(tree.transcripts)} transcripts, "
            f"{sum(sizes_list) / 1e6:.1f} MB"
        )
    warm = trees["small"]["inventory"]
    cases: dict[str, Any] = {}
    for rep in range(sizes.repeat_sync):
        for name in ("small", "medium", "large"):
            for mode in ("stream", "eager"):
                got = remote_child(trees[name]["inventory"], mode, trace=True, warmup=warm)
                if got["sessions"] != trees[name]["transcripts"]:
                    raise RuntimeError(
                        f"remote {mode} listed {got['sessions']} of {trees[name]['transcripts']}"
                    )
                case = cases.setdefault(f"{mode}_{name}", {"runs": []})
                case["runs"].append(got)
        progress(
            f"remote traced peaks rep {rep + 1}/{sizes.repeat_sync}: "
            + ", ".join(
                f"{k} {v['runs'][-1]['traced_peak'] / MiB:.2f} MiB" for k, v in cases.items()
            )
        )
    for case in cases.values():
        peaks = [r["traced_peak"] for r in case["runs"]]
        case.update(
            sessions=case["runs"][0]["sessions"],
            batches=case["runs"][0]["batches"],
            max_batch=case["runs"][0]["max_batch"],
            traced_peak=median(peaks),
            traced_peak_min=min(peaks),
            traced_peak_max=max(peaks),
            vmhwm_kib=median([r["vmhwm_kib"] for r in case["runs"]]),
        )
    small = cases["stream_small"]["traced_peak"]
    large = cases["stream_large"]["traced_peak"]
    diff = large - small
    extra_transcripts = trees["large"]["transcripts"] - trees["small"]["transcripts"]
    medium = cases["stream_medium"]["traced_peak"]
    above_medium = trees["large"]["transcripts"] - trees["medium"]["transcripts"]

    # Wall time over the large tree: the CLI (whole process), the API call alone, ssh cat.
    big = trees["large"]
    root = big["root"]
    pattern = f"{shlex.quote(str(root))}/agents/*/sessions/*.jsonl*"
    ssh_cat = fleet.ssh_argv(HOST, f"cat {pattern}")
    peer_bytes = sum(p.stat().st_size for p in root.glob("agents/*/sessions/*.jsonl*"))
    runs: dict[str, list[float]] = {"cli": [], "api": [], "ssh_cat": []}
    cli_argv = cli("sessions", "list", "--remote", "--inventory", str(big["inventory"]), "--json")
    _, out = run_timed(cli_argv, capture=True)
    if len(out.splitlines()) != big["transcripts"]:
        raise RuntimeError("sessions list --remote printed the wrong number of sessions")

    def api_call() -> None:
        runs["api"].append(
            remote_child(big["inventory"], "stream", trace=False, warmup=None)["seconds"]
        )

    steps = [
        lambda: runs["cli"].append(run_timed(cli_argv)[0]),
        api_call,
        lambda: runs["ssh_cat"].append(run_timed(ssh_cat)[0]),
    ]
    for rep in range(sizes.repeat_sync):
        alternate(rep, steps)
        progress(
            f"remote time rep {rep + 1}/{sizes.repeat_sync}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items())
        )
    med = {k: median(v) for k, v in runs.items()}
    shows = bench_remote_show(big["inventory"], root)
    progress(
        f"remote show {shows['session']} ({shows['file_bytes'] / 1e3:.0f} kB): "
        + ", ".join(
            f"{k} {v['commands']} command(s), {v['bytes_read'] / 1024:.0f} KiB, "
            f"{v['seconds'] * 1000:.0f} ms"
            for k, v in shows["cases"].items()
        )
    )
    progress("remote: a diagnostic run (what is held mid-stream) and a profiled run")
    held = remote_child(big["inventory"], "stream", trace=True, warmup=warm, snapshot=True)
    profiled = remote_child(big["inventory"], "stream", trace=False, warmup=warm, profile=True)
    for t in trees.values():
        msgs = t.pop("messages")
        t["messages_min_max"] = [min(msgs), max(msgs)]
        t["root"] = str(t["root"])
        t["inventory"] = str(t["inventory"])
    return {
        "trees": trees,
        "cases": cases,
        "peak_small": small,
        "peak_large": large,
        "peak_diff": diff,
        "peak_diff_per_transcript": diff / extra_transcripts,
        "peak_medium": medium,
        "peak_diff_large_medium": large - medium,
        "peak_diff_per_transcript_above_medium": (large - medium) / above_medium,
        "eager_diff_per_transcript": (
            cases["eager_large"]["traced_peak"] - cases["eager_small"]["traced_peak"]
        )
        / extra_transcripts,
        "goal_diff_bytes_max": GOAL_PEAK_DIFF_BYTES,
        "goal_diff_share_max": GOAL_PEAK_DIFF_SHARE,
        "goal_met": diff <= GOAL_PEAK_DIFF_BYTES or diff <= GOAL_PEAK_DIFF_SHARE * small,
        "peer_bytes": peer_bytes,
        "runs_s": runs,
        "median_s": med,
        "held_mid_stream": held.get("held_mid_stream", []),
        "profile": profiled["profile"],
        "ratio_cli_vs_ssh_cat": med["cli"] / med["ssh_cat"],
        "ratio_api_vs_ssh_cat": med["api"] / med["ssh_cat"],
        "show": shows,
    }


def bench_remote_show(inventory: Path, root: Path) -> dict[str, Any]:
    """``show --remote`` by id of the tree's biggest session with an id of its own (no archive
    shares it): remote commands per call, file bytes decoded, wall time (connect included)."""
    import anyio

    from remote_sync.formats.readers import get_reader
    from remote_sync.index.remote_show import SHOW_WINDOW, read_remote_session
    from remote_sync.inventory import load_inventory
    from remote_sync.ssh.pool import PoolSettings, SSHPool

    (host,) = load_inventory(inventory).hosts
    reader = get_reader(FORMAT)
    by_id: dict[str, list[Path]] = {}
    for path in root.glob("agents/*/sessions/*"):
        rel = os.fsencode(path.relative_to(root))
        if reader.is_transcript(rel):
            by_id.setdefault(reader.identify(rel)[1], []).append(path)
    session, (path,) = max(
        ((k, v) for k, v in by_id.items() if len(v) == 1), key=lambda kv: kv[1][0].stat().st_size
    )

    async def one(how: dict[str, int]) -> dict[str, Any]:
        async with SSHPool(PoolSettings(window=SHOW_WINDOW)) as pool:
            t0 = time.perf_counter()
            result = await read_remote_session(pool, host, session, **how)
            return {
                "messages": len(result.messages),
                "bytes_read": result.bytes_read,
                "commands": pool.stats(host.endpoint).operations,
                "seconds": time.perf_counter() - t0,
            }

    cases: dict[str, Any] = {}
    for label, how in (
        ("tail_100", {"tail": 100}),
        ("head_100", {"head": 100}),
        ("page_2_of_10", {"page": 2, "page_size": 10}),
    ):
        runs = [anyio.run(one, how) for _ in range(3)]
        cases[label] = runs[0] | {"seconds": median([r["seconds"] for r in runs])}
    return {"session": session, "file_bytes": path.stat().st_size, "cases": cases}


# ----------------------------------------------------------------------------- part 4: sync


def grow_lines(pool: bytes, starts: list[int], rng: random.Random, nbytes: int) -> bytes:
    """Whole lines of ``pool`` from a random line on, at least ``nbytes`` of them."""
    pos = rng.choice(starts)
    end = pos
    while end - pos < nbytes:
        nxt = pool.find(b"\n", end)
        if nxt < 0:  # wrapped: start over at a line start
            pos = end = 0
            continue
        end = nxt + 1
    return pool[pos:end]


def profile_sync(inventory: Path, dest: Path, prof: Path, top: int = 25) -> dict[str, Any]:
    """Run one indexed initial sync under cProfile (in a child) and summarize the profile."""
    argv = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "remote_sync.cli"]
    argv += ["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]
    run = measure(argv)
    sync_summary(run.pop("stdout"))
    summary = summarize_profile(pstats.Stats(str(prof)), top)
    summary.update(wall_s=run["s"], cpu_s=run["cpu_s"])
    return summary


def summarize_profile(stats: pstats.Stats, top: int = 25) -> dict[str, Any]:
    """Where the time goes: the index's entry points, their callees, the top functions."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]

    def find(path_end: str, name: str) -> Any:
        for key in table:
            if key[0].replace(os.sep, "/").endswith(path_end) and key[2] == name:
                return key
        return None

    def label(key: Any) -> str:
        file, line, name = key
        if file == "~":
            return str(name)
        parts = Path(file).parts
        short = "/".join(parts[-3:]) if "remote_sync" in parts else "/".join(parts[-2:])
        return f"{short}:{line}({name})"

    def cum(key: Any) -> float:
        return float(table[key][3]) if key in table else 0.0

    def callees(parent: Any, limit: int = 8) -> list[tuple[str, float, int]]:
        out = []
        for key, (_cc, _nc, _tt, _ct, callers) in table.items():
            if parent in callers:
                c = callers[parent]
                out.append((label(key), float(c[3]), int(c[1])))
        out.sort(key=lambda x: -x[1])
        return out[:limit]

    imports = cum(find("<frozen importlib._bootstrap>", "_find_and_load"))
    feed = find("remote_sync/index/update.py", "feed")
    write = find("remote_sync/index/update.py", "write")
    decoder_feed = find("remote_sync/decode/jsonl.py", "feed")
    entry = {
        "FileIndexer.feed": cum(feed),
        "IndexUpdate.write (put_session)": cum(write),
        "FileIndexer.__init__": cum(find("remote_sync/index/update.py", "__init__")),
        "FileIndexer.result": cum(find("remote_sync/index/update.py", "result")),
        "indexer_for": cum(find("remote_sync/index/update.py", "indexer_for")),
    }
    index_total = sum(entry.values())
    by_tottime = sorted(table.items(), key=lambda kv: -kv[1][2])[:top]
    by_cum = sorted(table.items(), key=lambda kv: -kv[1][3])[:top]
    return {
        "profiled_total_s": total,
        "imports_s": imports,
        "frame_parser_feed_s": cum(find("remote_sync/mirror/fetch_frames.py", "feed")),
        "index_entry_cum_s": entry,
        "index_total_s": index_total,
        "index_share": index_total / total if total else 0.0,
        "feed_self_s": float(table[feed][2]) if feed in table else 0.0,
        "feed_callees": callees(feed) if feed else [],
        "decoder_feed_callees": callees(decoder_feed) if decoder_feed else [],
        "write_callees": callees(write) if write else [],
        "top_tottime": [(label(k), float(v[2]), int(v[1])) for k, v in by_tottime],
        "top_cumulative": [(label(k), float(v[3]), int(v[1])) for k, v in by_cum],
    }


def bench_sync(fleet: Any, work: Path, sizes: Sizes, rng: random.Random) -> dict[str, Any]:
    import sessiongen

    root = fleet.mkdir(HOST, "tree")
    tree = sessiongen.build_tree(
        FORMAT, root, sizes.tree_sessions, rng, messages=sizes.tree_messages
    )
    make_readable(root)
    all_files = [p for p in root.rglob("*") if p.is_file()]
    tree_bytes = sum(p.stat().st_size for p in all_files)
    transcripts = len(tree.transcripts)
    progress(
        f"sync tree: {sizes.tree_sessions} sessions, {transcripts} transcripts, "
        f"{len(all_files)} files, {tree_bytes / 1e6:.1f} MB"
    )
    inventory = write_inventory(work / "tree.toml", fleet, root)
    dests = {"index": work / "sync-index", "noindex": work / "sync-noindex"}
    extra = {"index": [], "noindex": ["--no-index"]}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (*dests, "inc_index", "inc_noindex")}

    def initial(kind: str) -> None:
        set_aside(dests[kind])  # not deleted: see _common.set_aside
        argv = cli("sync", "--inventory", str(inventory), "--dest", str(dests[kind]), "--json")
        r = measure([*argv, *extra[kind]])
        summary = sync_summary(r.pop("stdout"))
        r["files"] = summary["files"]
        r["bytes"] = summary["bytes"]
        r["sessions_indexed"] = count_sessions(dests[kind])
        want = transcripts if kind == "index" else 0
        if r["sessions_indexed"] != want:
            raise RuntimeError(f"{kind}: {r['sessions_indexed']} sessions indexed, not {want}")
        runs[kind].append(r)

    creation_ms = wait_for_fast_file_creation(work, say=progress)
    progress(f"file creation: {creation_ms:.3f} ms a file")
    for rep in range(sizes.repeat_sync):
        alternate(rep, [lambda: initial("index"), lambda: initial("noindex")])
        progress(
            f"sync rep {rep + 1}/{sizes.repeat_sync}: index {runs['index'][-1]['s']:.2f}s, "
            f"no-index {runs['noindex'][-1]['s']:.2f}s"
        )

    # Incremental: both mirrors are current; grow sessions, then sync each.
    pool_session = sessiongen.generate(FORMAT, rng, messages=2000)
    pool = pool_session.data[pool_session.data.index(b"\n") + 1 :]
    starts = [0, *(m.end() for m in re.finditer(b"\n", pool))][:-1]
    live = [t for t in tree.transcripts if t.path.name.endswith(".jsonl")]
    grown_bytes: list[int] = []

    def incremental(kind: str) -> None:
        argv = cli("sync", "--inventory", str(inventory), "--dest", str(dests[kind]), "--json")
        r = measure([*argv, *extra[kind]])
        summary = sync_summary(r.pop("stdout"))
        r["files"] = summary["files"]
        r["bytes"] = summary["bytes"]
        if summary["files"].get("grown") != sizes.grow_files:
            raise RuntimeError(f"incremental {kind}: {summary['files']}")
        runs[f"inc_{kind}"].append(r)

    for rep in range(sizes.repeat_sync):
        total = 0
        for t in rng.sample(live, sizes.grow_files):
            data = grow_lines(pool, starts, rng, sizes.grow_bytes)
            with open(t.path, "ab") as out:
                out.write(data)
            total += len(data)
        grown_bytes.append(total)
        alternate(rep, [lambda: incremental("index"), lambda: incremental("noindex")])
        progress(
            f"incremental rep {rep + 1}/{sizes.repeat_sync}: "
            f"index {runs['inc_index'][-1]['s']:.2f}s, "
            f"no-index {runs['inc_noindex'][-1]['s']:.2f}s"
        )

    progress("profiling one indexed initial sync (cProfile)")
    profile = profile_sync(inventory, work / "sync-profile", work / "sync.prof")

    def med(kind: str, key: str) -> float:
        return median([r[key] for r in runs[kind]])

    m = {f"{k}_{key}": med(k, key) for k in runs for key in ("s", "cpu_s", "rss_mb")}
    return {
        "tree": {
            "sessions": sizes.tree_sessions,
            "transcripts": transcripts,
            "files": len(all_files),
            "bytes": tree_bytes,
        },
        "grow_files": sizes.grow_files,
        "grown_bytes": grown_bytes,
        "file_create_ms": creation_ms,
        "runs": runs,
        "median": m,
        "ratio_initial": m["index_s"] / m["noindex_s"],
        "ratio_initial_cpu": m["index_cpu_s"] / m["noindex_cpu_s"],
        "ratio_incremental": m["inc_index_s"] / m["inc_noindex_s"],
        "ratio_incremental_cpu": m["inc_index_cpu_s"] / m["inc_noindex_cpu_s"],
        "goal_ratio_max": GOAL_INDEX_OVERHEAD,
        "goal_met": m["index_s"] / m["noindex_s"] <= GOAL_INDEX_OVERHEAD,
        "profile": profile,
    }


# ----------------------------------------------------------------------------- output


def yes(flag: bool) -> str:
    return "met" if flag else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def print_table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    p = r["list"]
    med = p["median_s"]
    n = p["sessions"]
    rows.append(
        (
            f"1 sessions list --json, {n:,} sessions, python3 -m, vs python3 -c pass",
            ms(med["module"]),
            ms(med["python_pass"]),
            f"{p['ratio_vs_python_pass']:.1f}",
            f"goal <= {GOAL_LIST_S:g} s: {yes(p['goal_met'])}",
        )
    )
    if "sqlite3" in med:
        rows.append(
            (
                "1 same vs sqlite3 state.db 'select * from sessions'",
                ms(med["module"]),
                ms(med["sqlite3"]),
                f"{p['ratio_vs_sqlite3']:.1f}",
                "info",
            )
        )
    for key, what in (("script", "console script"), ("path", "remote-sync on PATH")):
        if key in med:
            rows.append(
                (
                    f"1 same via {what}",
                    ms(med[key]),
                    ms(med["python_pass"]),
                    f"{med[key] / med['python_pass']:.1f}",
                    "info",
                )
            )
    rows.append(
        (
            "1 same without cached bytecode (as PYTHONDONTWRITEBYTECODE=1 leaves it)",
            ms(med["module_uncached"]),
            ms(med["python_pass"]),
            f"{med['module_uncached'] / med['python_pass']:.1f}",
            "info",
        )
    )
    b = p["breakdown_s"]
    rows.append(
        (
            "1 in the process: import cli / cli.main() / again: SQL + rows / JSON",
            f"{ms(b['import_cli'])} / {ms(b['main'])} / {ms(b['warm_query_rows'])} / "
            f"{ms(b['warm_encode'])}",
            "-",
            "-",
            "info",
        )
    )
    rows.append(
        (
            "1 in the process, first query: default cache / cache_size 64 MiB / mmap",
            f"{ms(b['first_query_default'])} / {ms(b['first_query_cache_64mib'])} / "
            f"{ms(b['first_query_mmap_256mib'])}",
            "-",
            "-",
            "info",
        )
    )
    s = r["show"]
    med = s["median_s"]
    mib = s["session"]["bytes"] / MiB
    for mode, label, peer in (
        ("tail", "--tail 100", "tail_n"),
        ("head", "--head 100", "head_n"),
        ("page", f"--page {s['page']} (middle)", "python_pass"),
    ):
        m = s["modes"][mode]
        if mode == "tail":
            goal_bytes = f"goal <= 4 MiB: {yes(s['goal_bytes_met'])}"
            goal_s = f"goal <= {GOAL_SHOW_S:g} s: {yes(s['goal_s_met'])}"
        else:
            goal_bytes = f"info (<= 4 MiB: {yes(m['bytes_read'] <= GOAL_SHOW_BYTES)})"
            goal_s = f"info (<= {GOAL_SHOW_S:g} s: {yes(med[mode] <= GOAL_SHOW_S)})"
        rows.append(
            (
                f"2 show {label}, {mib:.0f} MiB session: read (file / rchar cmd / process)",
                f"{m['bytes_read'] / MiB:.2f} / {m['rchar_command'] / MiB:.2f} / "
                f"{m['rchar_process'] / MiB:.2f} MiB",
                "-",
                "-",
                goal_bytes,
            )
        )
        rows.append(
            (
                f"2 show {label}: whole process vs {peer.replace('_n', ' -n 100')}",
                ms(med[mode]),
                ms(med[peer]),
                f"{med[mode] / med[peer]:.1f}",
                goal_s,
            )
        )
    rows.append(("2 python3 -c pass", ms(med["python_pass"]), "-", "-", "info"))
    rows.append(
        (
            f"2 sync of the {mib:.0f} MiB session (indexed): time / peak RSS",
            f"{s['sync']['s']:.1f} s / {s['sync']['rss_mb']:.1f} MB",
            "-",
            "-",
            "info",
        )
    )
    x = r["remote"]
    c = x["cases"]
    t = x["trees"]
    for mode in ("stream", "eager"):
        large = c[f"{mode}_large"]["traced_peak"]
        small = c[f"{mode}_small"]["traced_peak"]
        rows.append(
            (
                f"3 remote {mode}: traced peak, {t['large']['transcripts']} vs "
                f"{t['small']['transcripts']} transcripts",
                f"{large / MiB:.2f} MiB",
                f"{small / MiB:.2f} MiB",
                f"{(large - small) / MiB:+.2f} MiB ({(large - small) / small:+.0%})",
                (
                    f"goal diff <= 1 MiB or 10 %: {yes(x['goal_met'])}"
                    if mode == "stream"
                    else "info"
                ),
            )
        )
    rows.append(
        (
            f"3 remote stream: traced peak, {t['large']['transcripts']} vs "
            f"{t['medium']['transcripts']} transcripts",
            f"{x['peak_large'] / MiB:.2f} MiB",
            f"{x['peak_medium'] / MiB:.2f} MiB",
            f"{x['peak_diff_large_medium'] / MiB:+.2f} MiB "
            f"({x['peak_diff_per_transcript_above_medium']:.0f} B each)",
            "info",
        )
    )
    rows.append(
        (
            "3 remote stream / eager: traced peak growth per extra transcript",
            f"{x['peak_diff_per_transcript']:.0f} B",
            f"{x['eager_diff_per_transcript']:.0f} B",
            "-",
            "info",
        )
    )
    med = x["median_s"]
    rows.append(
        (
            f"3 sessions list --remote --json ({t['large']['bytes'] / 1e6:.0f} MB) vs ssh cat "
            f"({x['peer_bytes'] / 1e6:.0f} MB)",
            f"{med['cli']:.2f} s",
            f"{med['ssh_cat']:.2f} s",
            f"{x['ratio_cli_vs_ssh_cat']:.2f}",
            "info",
        )
    )
    rows.append(
        (
            "3 api.stream_sessions call alone (incl. connect) vs ssh cat",
            f"{med['api']:.2f} s",
            f"{med['ssh_cat']:.2f} s",
            f"{x['ratio_api_vs_ssh_cat']:.2f}",
            "info",
        )
    )
    y = r["sync"]
    m = y["median"]
    rows += [
        (
            f"4 initial sync {y['tree']['bytes'] / 1e6:.0f} MB, index vs --no-index (wall)",
            f"{m['index_s']:.2f} s",
            f"{m['noindex_s']:.2f} s",
            f"{y['ratio_initial']:.2f}",
            f"goal <= {GOAL_INDEX_OVERHEAD:.2f}: {yes(y['goal_met'])}",
        ),
        (
            "4 same, CPU time of the client (user + sys)",
            f"{m['index_cpu_s']:.2f} s",
            f"{m['noindex_cpu_s']:.2f} s",
            f"{y['ratio_initial_cpu']:.2f}",
            "info",
        ),
        (
            f"4 incremental, {y['grow_files']} sessions grown ~10 KB, index vs --no-index",
            f"{m['inc_index_s']:.2f} s",
            f"{m['inc_noindex_s']:.2f} s",
            f"{y['ratio_incremental']:.2f}",
            f"info (<= {GOAL_INDEX_OVERHEAD:.2f}: {yes(y['ratio_incremental'] <= 1.1)})",
        ),
        (
            "4 same, CPU time",
            f"{m['inc_index_cpu_s']:.2f} s",
            f"{m['inc_noindex_cpu_s']:.2f} s",
            f"{y['ratio_incremental_cpu']:.2f}",
            "info",
        ),
        (
            "4 peak RSS, initial index / no-index",
            f"{m['index_rss_mb']:.1f} MB",
            f"{m['noindex_rss_mb']:.1f} MB",
            "-",
            "info",
        ),
    ]
    print_rows(rows)
    prof = y["profile"]
    print(
        f"\nProfile of one indexed initial sync (cProfile, {prof['profiled_total_s']:.2f} s "
        f"profiled, of which imports {prof['imports_s']:.2f} s; indexing "
        f"{prof['index_total_s']:.2f} s = {prof['index_share']:.0%}):"
    )
    for name, value in prof["index_entry_cum_s"].items():
        print(f"  {value:7.3f} s  {name}")
    print(f"  FileIndexer.feed self time {prof['feed_self_s']:.3f} s; its callees:")
    for name, value, calls in prof["feed_callees"]:
        print(f"    {value:7.3f} s  {calls:8d}x  {name}")
    print("  JsonlDecoder.feed's callees:")
    for name, value, calls in prof["decoder_feed_callees"]:
        print(f"    {value:7.3f} s  {calls:8d}x  {name}")
    print("  top by self time:")
    for name, value, calls in prof["top_tottime"][:15]:
        print(f"    {value:7.3f} s  {calls:8d}x  {name}")
    rp = x["profile"]
    feed_s = rp["index_entry_cum_s"]["FileIndexer.feed"]
    print(
        f"\nProfile of one remote stream over {t['large']['transcripts']} transcripts "
        f"(cProfile, {rp['profiled_total_s']:.2f} s): FileIndexer.feed {feed_s:.2f} s "
        f"({rp['index_share']:.0%}), FrameParser.feed {rp['frame_parser_feed_s']:.2f} s; "
        "top by self time:"
    )
    for name, value, calls in rp["top_tottime"][:12]:
        print(f"    {value:7.3f} s  {calls:8d}x  {name}")
    print("\nHeld mid-stream (tracemalloc snapshot at the 3rd batch, large tree), top lines:")
    for name, size, count in x["held_mid_stream"]:
        print(f"    {size / 1024:8.1f} KiB  {count:6d} blocks  {name}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--json", action="store_true", help="print a JSON object of figures")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON figures to FILE")
    parser.add_argument(
        "--only",
        action="append",
        choices=["list", "show", "remote", "sync"],
        help="run only these parts (repeatable)",
    )
    parser.add_argument(
        "--repeat-sync", type=int, help="runs per median in parts 3 and 4 (default 3)"
    )
    child = parser.add_argument_group("child mode (internal)")
    child.add_argument("--child", choices=["remote-list", "list-breakdown"])
    child.add_argument("--inventory")
    child.add_argument("--warmup")
    child.add_argument("--mode", choices=["stream", "eager"], default="stream")
    child.add_argument("--batch-size", type=int, default=50)
    child.add_argument("--trace", action="store_true")
    child.add_argument("--snapshot", action="store_true")
    child.add_argument("--profile", action="store_true")
    child.add_argument("--dest")
    args = parser.parse_args(argv)
    if args.child == "remote-list":
        return child_remote_list(args)
    if args.child == "list-breakdown":
        return child_list_breakdown(args.dest)
    return run_all(
        quick=args.quick,
        as_json=args.json,
        only=args.only,
        save=args.save,
        repeat_sync=args.repeat_sync,
    )


def run_all(
    *,
    quick: bool,
    as_json: bool,
    only: list[str] | None,
    save: str | None,
    repeat_sync: int | None = None,
) -> int:
    import asyncssh
    import msgspec
    from sshfleet import SSHFleet  # type: ignore[import-not-found]  # tests/, on sys.path

    sizes = QUICK if quick else FULL
    if repeat_sync:
        sizes = dataclasses.replace(sizes, repeat_sync=max(1, repeat_sync))
    parts = only or ["list", "show", "remote", "sync"]
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "asyncssh": asyncssh.__version__,
        "msgspec": msgspec.__version__,
        "openssh": tool_version(["ssh", "-V"]),
        "sqlite3_cli": tool_version(["sqlite3", "--version"]) if shutil.which("sqlite3") else None,
        "console_scripts": {
            k: ("pyenv shim" if "shims" in v else "script") for k, v in console_scripts().items()
        },
    }
    rng = random.Random(20261121)
    work = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    global CHILD_ENV
    CHILD_ENV = cached_env(work)
    results["environment_disables_bytecode_cache"] = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    fleet = SSHFleet(1)
    try:
        if "list" in parts:
            progress(f"part 1: building an index of {sizes.index_sessions:,} sessions")
            dest = work / "list-mirror"
            results["list_index"] = build_index(dest, sizes.index_sessions, rng)
            results["list"] = bench_list(dest, sizes.index_sessions, sizes.repeat_cli)
            set_aside(dest)
        if "show" in parts:
            progress("part 2: sessions show of a big session")
            results["show"] = bench_show(fleet, work, sizes.big_bytes, sizes.repeat_cli, rng)
            set_aside(fleet.path(HOST, "big"))
            set_aside(work / "big-mirror")
        if "remote" in parts:
            progress("part 3: remote listing")
            results["remote"] = bench_remote(fleet, work, sizes, rng)
        if "sync" in parts:
            progress("part 4: indexing overhead of sync")
            results["sync"] = bench_sync(fleet, work, sizes, rng)
    finally:
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - started

    if report_json(results, save=save, as_json=as_json):
        return 0
    print(
        f"{results['date']}  {results['openssh']}  asyncssh {results['asyncssh']}  "
        f"msgspec {results['msgspec']}  Python {results['python']}  {results['cpus']} CPUs  "
        f"{'quick' if quick else 'full'} run, {results['elapsed_s']:.0f} s  "
        f"load {results['loadavg_start'][0]:.1f} -> {results['loadavg_end'][0]:.1f}\n"
    )
    if set(parts) == {"list", "show", "remote", "sync"}:
        print_table(results)
    else:
        print(json.dumps({k: results[k] for k in parts}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
