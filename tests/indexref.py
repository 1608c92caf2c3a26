"""The per-record indexing path, kept as a reference for the tests and the index benchmark.

``FileIndexer.feed`` took this path before ``JsonlDecoder.feed_values``: a Record or LineError
per line from ``JsonlDecoder.feed``, then the format's ``update`` over each value. The current
indexer must give the same facts and page marks; the benchmark measures what it gained.
"""

from __future__ import annotations

from typing import Any

from remote_sync.decode.jsonl import DEFAULT_MAX_LINE_BYTES, JsonlDecoder, LineError
from remote_sync.index.facts import FormatReader, SessionFacts
from remote_sync.index.store import MARK_EVERY


def index_by_records(
    reader: FormatReader,
    path: bytes,
    chunks: list[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    mark_every: int = MARK_EVERY,
) -> tuple[SessionFacts, list[tuple[int, int]], int, int]:
    """Facts, page marks, committed offset and pending bytes after feeding ``chunks``."""
    agent, session_id = reader.identify(path)
    facts = SessionFacts(session_id=session_id, agent=agent)
    marks: list[tuple[int, int]] = []
    decoder: JsonlDecoder[Any] = JsonlDecoder(reader.line_type, max_line_bytes=max_line_bytes)
    for chunk in chunks:
        start = decoder.committed_offset
        items = decoder.feed(chunk)
        facts.lines += chunk.count(b"\n")
        facts.bytes += decoder.committed_offset - start
        messages = facts.shown
        for item in items:
            if isinstance(item, LineError):
                facts.malformed += 1
                continue
            reader.update(facts, item.value)
            now = facts.shown
            if now != messages:
                if messages % mark_every == 0:
                    marks.append((messages, item.offset))
                messages = now
    return facts, marks, decoder.committed_offset, decoder.pending_bytes
