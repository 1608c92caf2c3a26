"""Earlier paths of the index, kept as references for the tests and the index benchmark.

``FileIndexer.feed`` took the per-record path (:func:`index_by_records`) before
``JsonlDecoder.feed_values``: a Record or LineError per line from ``JsonlDecoder.feed``, then
the format's ``update`` over each value. The current indexer must give the same facts and page
marks; the benchmark measures what it gained.

A commit wrote each session's index rows with statements of its own
(:func:`put_session_by_statements`, :func:`delete_session_by_statements`) before
``IndexRows`` wrote a commit's rows with one statement per table: it must leave the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

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


def put_session_by_statements(
    db: sqlite3.Connection,
    host: str,
    path: bytes,
    fmt: str,
    facts: SessionFacts,
    marks: Sequence[tuple[int, int]] = (),
    *,
    fresh: bool = False,
) -> None:
    """One session's rows as a commit wrote them before ``IndexRows``."""
    db.execute(
        "INSERT OR REPLACE INTO sessions VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            host,
            path,
            fmt,
            facts.agent,
            facts.session_id or "",
            facts.bytes,
            facts.lines,
            facts.malformed,
            facts.messages,
            facts.user,
            facts.assistant,
            facts.tool,
            facts.system,
            facts.other,
            facts.tool_calls,
            facts.tokens_in,
            facts.tokens_out,
            facts.tokens_cache_read,
            facts.tokens_cache_write,
            facts.cost,
            "".join(model.replace("\n", " ") + "\n" for model in facts.models),
            facts.first_ts,
            facts.last_ts,
            facts.title,
        ),
    )
    db.execute(
        "INSERT OR REPLACE INTO session_facts VALUES (?, ?, ?)",
        (host, path, msgspec.json.encode(facts)),
    )
    if fresh:
        db.execute("DELETE FROM session_marks WHERE host = ? AND path = ?", (host, path))
    if marks:
        db.executemany(
            "INSERT OR REPLACE INTO session_marks VALUES (?, ?, ?, ?)",
            [(host, path, n, offset) for n, offset in marks],
        )


def delete_session_by_statements(db: sqlite3.Connection, host: str, path: bytes) -> None:
    """One session's rows dropped as ``delete_sessions`` dropped them before ``IndexRows``."""
    for table in ("sessions", "session_facts", "session_marks"):
        db.execute(f"DELETE FROM {table} WHERE host = ? AND path = ?", (host, path))
