"""Throughput of in-process indexing (``FileIndexer.feed``) next to the per-record path.

Generates transcripts of each format with ``tests/sessiongen.py`` (repeated to ``--mb``),
feeds them in 256 KiB chunks and prints MB/s, medians of ``--repeat`` runs interleaved so the
cases share the machine's noise:

* ``indexer``: :class:`remote_sync.index.update.FileIndexer` as a sync runs it;
* ``records``: ``JsonlDecoder.feed`` (a ``Record``/``LineError`` per line) and the fold loop
  over them: what ``FileIndexer.feed`` did before ``feed_values``; the facts and page marks
  of both are checked equal;
* ``decode``: ``JsonlDecoder.feed`` alone; ``fold``: the format's ``update`` alone over
  values decoded beforehand.

    python bench/bench_index.py [--formats openclaw,claude-code] [--mb N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401  (puts tests/ on sys.path for sessiongen and indexref)
import msgspec
from indexref import index_by_records

from remote_sync.decode.jsonl import JsonlDecoder
from remote_sync.formats.readers import get_reader
from remote_sync.index.facts import FormatReader, SessionFacts
from remote_sync.index.update import FileIndexer

CHUNK = 256 * 1024
PATHS = {
    "openclaw": b"agents/a/sessions/s.jsonl",
    "claude-code": b"p/s.jsonl",
    "codex": b"2025/01/01/rollout-2025-01-01T00-00-00-s.jsonl",
    "pi": b"--p--/t_s.jsonl",
    "picoclaw": b"s.jsonl",
}


def make_data(fmt: str, megabytes: float, seed: int = 1) -> bytes:
    import sessiongen  # type: ignore[import-not-found]

    rng = random.Random(seed)
    data = b"".join(sessiongen.generate(fmt, rng, messages=300).data for _ in range(30))
    while len(data) < megabytes * 1e6:
        data += data
    return data


def run_indexer(reader: FormatReader, chunks: list[bytes]) -> tuple[SessionFacts, Any]:
    indexer = FileIndexer(reader, "h", PATHS.get(reader.name, b"s.jsonl"))
    for chunk in chunks:
        indexer.feed(chunk)
    return indexer.facts, indexer.update.marks


def run_records(reader: FormatReader, chunks: list[bytes]) -> tuple[SessionFacts, Any]:
    """The per-record path: ``FileIndexer.feed`` as it was before ``feed_values``."""
    facts, marks, _, _ = index_by_records(reader, PATHS.get(reader.name, b"s.jsonl"), chunks)
    return facts, marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="openclaw,claude-code")
    parser.add_argument("--mb", type=float, default=64.0, help="MB of JSONL per format")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; median is kept")
    parser.add_argument("--json", action="store_true", help="print a JSON object of figures")
    args = parser.parse_args(argv)

    summary: dict[str, Any] = {}
    for fmt in args.formats.split(","):
        reader = get_reader(fmt)
        data = make_data(fmt, args.mb)
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        values = msgspec.json.Decoder(reader.line_type).decode_lines(data)

        def decode_only(chunks: list[bytes] = chunks, reader: FormatReader = reader) -> None:
            decoder: JsonlDecoder[Any] = JsonlDecoder(reader.line_type)
            for chunk in chunks:
                decoder.feed(chunk)

        def fold_only(values: list[Any] = values, reader: FormatReader = reader) -> None:
            facts = SessionFacts()
            fold = reader.update
            for value in values:
                fold(facts, value)

        new = run_indexer(reader, chunks)
        old = run_records(reader, chunks)
        if new != old:
            print(f"{fmt}: FileIndexer and the record path disagree", file=sys.stderr)
            return 1
        cases: dict[str, Callable[[], object]] = {
            "indexer": lambda reader=reader, chunks=chunks: run_indexer(reader, chunks),
            "records": lambda reader=reader, chunks=chunks: run_records(reader, chunks),
            "decode": decode_only,
            "fold": fold_only,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        mb = len(data) / 1e6
        summary[fmt] = {
            "bytes": len(data),
            "lines": data.count(b"\n"),
            "mb_per_s": {name: mb / statistics.median(t) for name, t in times.items()},
        }

    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{CHUNK // 1024} KiB chunks, median of {args.repeat} interleaved runs, MB/s")
    names = ["indexer", "records", "decode", "fold"]
    print(f"{'format':<14}{'MB':>6}" + "".join(f"{n:>10}" for n in names) + f"{'speedup':>10}")
    for fmt, figures in summary.items():
        rates = figures["mb_per_s"]
        print(
            f"{fmt:<14}{figures['bytes'] / 1e6:>6.0f}"
            + "".join(f"{rates[n]:>10.0f}" for n in names)
            + f"{rates['indexer'] / rates['records']:>9.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
