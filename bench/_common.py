"""Small helpers shared by the benchmark scripts in ``bench/`` (stdlib only at import time).

- :data:`REPO`, :data:`BENCH`, :data:`TESTS`: the project's directories, found from this file.
- :func:`median`, :func:`timed_run`: timing of subprocess peers; :func:`alternate`: runs of
  several tools in an order that rotates from one repetition to the next.
- :func:`rss_kib`: the current process's RSS / peak RSS from ``/proc/self/status``.
- :func:`run_measuring_rss`: run a child and get its peak RSS (``/usr/bin/time -v`` when
  installed, else the child's own rusage from ``os.wait4``).
- :func:`write_jsonl_file`: a large file of realistic JSONL session lines, generated once
  (a block of unique lines from ``bench_decoder``'s generator, repeated).
- :func:`set_aside`: clear a destination between timed runs without deleting it.
- :func:`wait_for_fast_file_creation`: before timed runs, wait out a recent mass deletion.
- :func:`report_json`: a run's figures as JSON, to a file and to stdout as asked.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
TESTS = REPO / "tests"
MiB = 1024 * 1024

for _dir in (str(BENCH), str(TESTS)):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)


def set_aside(path: Path) -> None:
    """Move ``path`` (if it exists) into ``.set-aside/`` next to it instead of deleting it;
    the benchmark deletes its whole work directory once every timed run is over.

    Why not delete: ext4 here (no journal) skips every inode freed in the last minute when it
    allocates a new one (``recently_deleted()`` in its inode allocator), and each skip costs a
    buffer lookup. Creating the 1,132 files of a mirror right after deleting the previous
    run's took 1.1 s of ``openat`` instead of 0.09 s (found with ``perf``: ``find_inode_bit``
    -> ``recently_deleted``). Deleting between timed runs would charge the harness's clean-up
    to whichever tool runs next; a first sync into a new directory does not pay it.
    """
    if not os.path.lexists(path):
        return
    aside = path.parent / ".set-aside"
    aside.mkdir(exist_ok=True)
    os.rename(path, aside / f"{path.name}-{time.time_ns()}")


def file_creation_ms(work: Path, count: int = 300) -> float:
    """Median milliseconds to create one empty file in a new directory under ``work`` (the
    probe's files are set aside, not deleted)."""
    probe = work / f"create-probe-{time.time_ns()}"
    probe.mkdir(parents=True)
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        fd = os.open(probe / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        times.append(time.perf_counter() - t0)
        os.close(fd)
    set_aside(probe)
    return statistics.median(times) * 1e3


def wait_for_fast_file_creation(
    work: Path, *, limit_ms: float = 0.1, patience_s: float = 300.0, say: Any = None
) -> float:
    """Wait (up to ``patience_s``) until creating a file takes under ``limit_ms`` again.

    A mass deletion anywhere on the file system (a previous benchmark's clean-up, a test run)
    makes file creation slow for about a minute afterwards (see :func:`set_aside`); a timed
    run in that window would measure the deletion, not the tool. Returns the last probe (ms).
    """
    deadline = time.monotonic() + patience_s
    while True:
        ms = file_creation_ms(work)
        if ms < limit_ms or time.monotonic() > deadline:
            return ms
        if say is not None:
            say(f"file creation is slow ({ms:.2f} ms a file: a recent mass deletion?); waiting")
        time.sleep(10)


def alternate(rep: int, steps: Sequence[Callable[[], None]]) -> None:
    """Run ``steps`` in an order that rotates with ``rep`` (alternating runs)."""
    k = rep % len(steps)
    for step in [*steps[k:], *steps[:k]]:
        step()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed_run(argv: Sequence[str], *, timeout: float = 600.0) -> float:
    """Wall time of a subprocess with stdout to /dev/null; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return elapsed


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB (Linux)."""
    fields: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


TIME_BIN = "/usr/bin/time"
_MAXRSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run_measuring_rss(argv: Sequence[str], *, timeout: float = 600.0) -> tuple[str, int, str]:
    """Run ``argv``; return (its stdout, its peak RSS in KiB, how that was measured)."""
    if os.access(TIME_BIN, os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            proc = subprocess.run(
                [TIME_BIN, "-v", "-o", report.name, *argv],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            text = Path(report.name).read_text()
        _check(argv, proc.returncode, proc.stderr)
        found = _MAXRSS.search(text)
        if found is None:
            raise RuntimeError(f"no maximum RSS in the output of {TIME_BIN} -v:\n{text}")
        return proc.stdout.decode(), int(found.group(1)), "/usr/bin/time -v"
    # Fallback: wait4() reports the rusage of exactly this child (ru_maxrss in KiB on Linux).
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        _check(argv, child.returncode, err.read())
        return out.read().decode(), int(usage.ru_maxrss), "os.wait4 rusage"


def _check(argv: Sequence[str], code: int, stderr: bytes) -> None:
    if code != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])}... exited {code}: {stderr.decode(errors='replace')[-3000:]}"
        )


def jsonl_block(megabytes: float, *, min_line: int = 1000, max_line: int = 4096) -> bytes:
    """Unique realistic session lines of ``min_line``..``max_line`` bytes, about ``megabytes``."""
    import random

    from bench_decoder import _line

    rng = random.Random(7)
    parts: list[bytes] = []
    total = 0
    i = 0
    while total < megabytes * 1e6:
        line = _line(rng, i)
        i += 1
        if min_line <= len(line) <= max_line:
            parts.append(line)
            total += len(line)
    return b"".join(parts)


def write_jsonl_file(path: Path, size: int, block: bytes) -> tuple[int, int]:
    """Append ``block`` (whole lines) to the existing file ``path`` until it holds about
    ``size`` bytes, cutting the last copy at a line end. Returns (bytes, lines)."""
    written = 0
    lines = 0
    with open(path, "ab") as out:
        while written < size:
            piece = block
            if written + len(piece) > size:
                cut = block.rfind(b"\n", 0, size - written)
                piece = block[: cut + 1] if cut >= 0 else block[: block.find(b"\n") + 1]
            out.write(piece)
            written += len(piece)
            lines += piece.count(b"\n")
    return written, lines


def tool_version(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


def report_json(results: dict[str, Any], *, save: str | None, as_json: bool) -> bool:
    """Write ``results`` as JSON to the file ``save`` names, if any, and print them if
    ``as_json``: whether it printed them (the run then prints nothing else)."""
    text = json.dumps(results, indent=2, default=str)
    if save:
        Path(save).write_text(text + "\n")
    if as_json:
        print(text)
    return as_json


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """The benchmarks' result table: one row per figure, columns padded to fit."""
    headers = ("benchmark", "ours", "peer", "ratio", "goal")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
