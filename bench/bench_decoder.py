"""Throughput of the incremental JSONL decoder on realistic session transcripts.

Generates Claude-Code/OpenClaw-like session lines (200 B to 8 KB, with non-ASCII text), feeds
them to :class:`remote_sync.decode.jsonl.JsonlDecoder` in 256 KiB chunks and prints MB/s for
the default ``dict[str, Any]`` type and for a small view Struct, next to a peer measured in
the same run: a naive ``for line in data.split(b"\\n"): orjson.loads(line)`` over the whole
buffer (no chunking, no offsets, no error handling).

    python bench/bench_decoder.py [--mb N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from remote_sync.decode.jsonl import JsonlDecoder

CHUNK = 256 * 1024

_PROSE = (
    "the function returns a list of records and the caller checks each offset before it "
    "commits the checkpoint so a resumed pull never skips or repeats a line of the transcript "
    "refactor tests passed failed retry ssh channel mirror index backup"
)
_WORDS = _PROSE.split()
_UNICODE = [
    "héllo",
    "naïve",
    "café",
    "Grüße",
    "日本語",
    "テスト",
    "中文",
    "✓",
    "→",
    "🚀",
    "Ωmega",
    "ünïcödé",
]


class MessageView(msgspec.Struct):
    """The few fields an indexer reads; everything else is skipped unread."""

    type: str
    id: str | None = None
    timestamp: str | None = None


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    n = 0
    while n < size:
        word = rng.choice(_UNICODE) if rng.random() < 0.04 else rng.choice(_WORDS)
        words.append(word)
        n += len(word) + 1
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text.replace(" the ", ' the "quoted"\n\tline ', 2)
    return text


def _line(rng: random.Random, i: int) -> bytes:
    target = int(rng.lognormvariate(7.3, 0.8))  # median ~1.5 KB
    target = max(200, min(7800, target))
    if target < 400:  # short bookkeeping lines: summaries, system notes
        summary: dict[str, Any] = {
            "type": "summary",
            "summary": _text(rng, max(10, target - 90)),
            "leafUuid": f"{rng.getrandbits(128):032x}",
        }
        return orjson.dumps(summary) + b"\n"
    kind = rng.random()
    content: list[dict[str, Any]]
    if kind < 0.6:
        content = [{"type": "text", "text": _text(rng, max(20, target - 330))}]
    elif kind < 0.8:
        content = [
            {
                "type": "tool_use",
                "id": f"toolu_{rng.getrandbits(64):016x}",
                "name": rng.choice(["Bash", "Read", "Edit", "Grep"]),
                "input": {"command": _text(rng, max(20, target - 380)), "timeout": 120000},
            }
        ]
    else:
        content = [
            {
                "type": "tool_result",
                "tool_use_id": f"toolu_{rng.getrandbits(64):016x}",
                "content": _text(rng, max(20, target - 360)),
                "is_error": rng.random() < 0.1,
            }
        ]
    role = "assistant" if kind < 0.8 else "user"
    record: dict[str, Any] = {
        "type": "message",
        "id": f"msg_{rng.getrandbits(96):024x}",
        "parentId": f"msg_{rng.getrandbits(96):024x}",
        "timestamp": f"2025-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.000Z",
        "message": {
            "role": role,
            "model": "claude-sonnet-4-5",
            "content": content,
            "usage": {
                "input_tokens": rng.randint(1, 200000),
                "output_tokens": rng.randint(1, 8000),
                "cache_read_input_tokens": rng.randint(0, 100000),
                "cache_creation_input_tokens": rng.randint(0, 5000),
            },
        },
    }
    return orjson.dumps(record) + b"\n"


def make_data(megabytes: float, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts: list[bytes] = []
    total = 0
    i = 0
    while total < megabytes * 1e6:
        line = _line(rng, i)
        parts.append(line)
        total += len(line)
        i += 1
    return b"".join(parts)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def _run_decoder(chunks: list[bytes], tp: Any) -> int:
    decoder: JsonlDecoder[Any] = JsonlDecoder(tp)
    n = 0
    for chunk in chunks:
        n += len(decoder.feed(chunk))
    return n


def _run_peer(data: bytes) -> int:
    n = 0
    loads = orjson.loads
    for line in data.split(b"\n"):
        if line:
            loads(line)
            n += 1
    return n


def _best(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return best, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=64.0, help="MB of JSONL to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is kept")
    parser.add_argument("--json", action="store_true", help="print a JSON object of figures")
    args = parser.parse_args(argv)

    data = make_data(args.mb)
    chunks = _chunks(data)
    lines = data.count(b"\n")
    mb = len(data) / 1e6

    cases: dict[str, Callable[[], int]] = {
        "jsonl_default": lambda: _run_decoder(chunks, dict[str, Any]),
        "jsonl_view_struct": lambda: _run_decoder(chunks, MessageView),
        "peer_orjson_split": lambda: _run_peer(data),
    }
    results: dict[str, dict[str, float]] = {}
    for name, fn in cases.items():
        seconds, n = _best(fn, args.repeat)
        if n != lines:
            print(f"{name}: decoded {n} of {lines} lines", file=sys.stderr)
            return 1
        results[name] = {"seconds": seconds, "mb_per_s": mb / seconds}
    peer = results["peer_orjson_split"]["mb_per_s"]
    for figures in results.values():
        figures["ratio_vs_peer"] = figures["mb_per_s"] / peer

    if args.json:
        summary = {
            "bytes": len(data),
            "lines": lines,
            "mean_line_bytes": len(data) / lines,
            "chunk_bytes": CHUNK,
            "python": sys.version.split()[0],
            "msgspec": msgspec.__version__,
            "orjson": orjson.__version__,
            "results": results,
        }
        print(json.dumps(summary, indent=2))
        return 0

    print(
        f"{mb:.1f} MB, {lines} lines (mean {len(data) / lines:.0f} B), "
        f"{CHUNK // 1024} KiB chunks, best of {args.repeat}"
    )
    print(f"{'case':<22}{'MB/s':>10}{'vs peer':>10}")
    for name, figures in results.items():
        print(f"{name:<22}{figures['mb_per_s']:>10.0f}{figures['ratio_vs_peer']:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
