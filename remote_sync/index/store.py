"""The session index's tables in the mirror's state database.

What it owns: the ``sessions`` table (one row of facts per transcript, keyed like ``files`` by
host and remote path) and ``session_marks`` (the byte offset of every ``MARK_EVERY``-th message,
so ``sessions show --page`` seeks instead of scanning from line 1). Rows are written in the same
transaction as the file checkpoints they describe, so the index never disagrees with the mirror;
a commit's rows are collected in :class:`IndexRows` and written with one statement per table.

A session's state (live, deleted on the remote, rewritten) is not stored here: it is the
``files`` row's, joined at query time.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

# SQLite's largest INTEGER (a larger Python int cannot be bound as a parameter): also given
# out here, by the module of the index's tables, for those that bind parameters to them.
from .facts import INT64_MAX as INT64_MAX
from .facts import SessionFacts


def read_only_uri(db_path: Path) -> str:
    """The URI that opens the state database ``db_path`` for reading without writing a byte.

    A WAL database opened ``mode=ro`` still creates its ``-wal`` and ``-shm`` files (and
    fails where the directory is read-only). With no ``-wal`` file there is nothing beyond
    the database file to read (a sync's connection keeps one while it is open): it is opened
    ``immutable``, which creates nothing. Otherwise a sync may be writing, and ``mode=ro``
    reads its commits safely through the shared memory it already made.
    """
    uri = "file:" + urllib.parse.quote(os.fsencode(db_path.absolute()))
    wal = db_path.with_name(db_path.name + "-wal")
    return uri + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")


#: A mark every this many messages (message 0, 256, 512, ... of a session).
MARK_EVERY = 256

#: The rules the format readers count by, kept in the state's ``meta`` table as
#: ``index_rules``. Raise it when a reader counts or names something differently: rows
#: computed under earlier rules stay as they were (old bytes are never read again to update
#: the index), so listings warn until ``index rebuild`` recounts them. 2: Claude Code's
#: harness records count as system messages, hosted tool calls as tool calls; models are kept
#: one per line (a model name may hold a comma). 3: a title leaves out the blocks a harness
#: put before the prompt in the same message. 4: a line with fields of the wrong shape is
#: read without them, not counted as malformed; Claude Code's ``costUSD`` (older versions)
#: is the session's cost, once per response; an OpenClaw session's id is its file name's,
#: not its header's; picoclaw's Go zero time (``0001-01-01T00:00:00Z``) is no time; user
#: text counts as injected by the harness (a system message, no title) only when it is made
#: of blocks of the harness's own tags, not whenever it starts with ``<`` and ends with ``>``.
#: 5: the generic ``jsonl`` format reads gemini-cli's records (counting a record written
#: again under the same id once); a Codex fork's copy of its parent's history is not counted
#: (its messages are repeated, its tokens the base of the fork's own). 6: a Claude Code
#: response's output tokens (and ``costUSD``) are the most any of its lines has, not its
#: first line's (which Claude Code writes while the response streams).
INDEX_RULES = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    host TEXT NOT NULL,
    path BLOB NOT NULL,
    format TEXT NOT NULL,
    agent TEXT,
    session_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    malformed INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    user_messages INTEGER NOT NULL,
    assistant_messages INTEGER NOT NULL,
    tool_messages INTEGER NOT NULL,
    system_messages INTEGER NOT NULL,
    other_messages INTEGER NOT NULL,
    tool_calls INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    tokens_cache_read INTEGER NOT NULL,
    tokens_cache_write INTEGER NOT NULL,
    cost REAL,
    models TEXT NOT NULL,          -- each followed by a newline, in order of first use
    first_ts TEXT,
    last_ts TEXT,
    title TEXT,
    PRIMARY KEY (host, path)
) WITHOUT ROWID;
-- The accumulators live apart so listing scans only the lean sessions table.
CREATE TABLE IF NOT EXISTS session_facts (
    host TEXT NOT NULL,
    path BLOB NOT NULL,
    facts BLOB NOT NULL,           -- the SessionFacts accumulator, to extend with new bytes
    PRIMARY KEY (host, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_last_ts ON sessions (last_ts);
CREATE TABLE IF NOT EXISTS session_marks (
    host TEXT NOT NULL,
    path BLOB NOT NULL,
    message_no INTEGER NOT NULL,   -- messages before this one
    offset INTEGER NOT NULL,       -- byte offset of its line
    PRIMARY KEY (host, path, message_no)
) WITHOUT ROWID;
"""

_facts_encoder = msgspec.json.Encoder()
_facts_decoder = msgspec.json.Decoder(SessionFacts)


def models_text(models: Iterable[str]) -> str:
    """The ``models`` column: each name followed by a newline (one inside a name is a space)."""
    return "".join(model.replace("\n", " ") + "\n" for model in models)


def models_list(text: str) -> list[str]:
    """The names in a ``models`` column (comma-separated in indexes of rules 1)."""
    if not text:
        return []
    if text[-1] == "\n":
        return text[:-1].split("\n")
    return text.split(",")


def ensure_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def index_rules(db: sqlite3.Connection) -> int:
    """The rules the index was computed by: 1 for a mirror from before they were recorded
    that holds sessions, :data:`INDEX_RULES` for one that holds none."""
    row = db.execute("SELECT value FROM meta WHERE key = 'index_rules'").fetchone()
    if row is not None:
        return int(row[0])
    return 1 if db.execute("SELECT 1 FROM sessions LIMIT 1").fetchone() else INDEX_RULES


def record_index_rules(db: sqlite3.Connection, rules: int = INDEX_RULES) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES ('index_rules', ?)", (str(rules),))


def load_facts(db: sqlite3.Connection, host: str, path: bytes) -> SessionFacts | None:
    row = db.execute(
        "SELECT facts FROM session_facts WHERE host = ? AND path = ?", (host, path)
    ).fetchone()
    return decode_facts(row[0]) if row else None


#: Paths per statement of :func:`load_facts_of`: well under SQLite's limit of bound values.
_PATHS_PER_QUERY = 500


def load_facts_of(
    db: sqlite3.Connection, host: str, paths: Sequence[bytes]
) -> dict[bytes, bytes | None]:
    """The stored facts of each of ``paths`` (None: the index has none), still encoded
    (:func:`decode_facts`): one statement per few hundred paths where :func:`load_facts` is
    one each, and the bytes smaller to hold than the facts' objects until they are needed."""
    found: dict[bytes, bytes | None] = dict.fromkeys(paths)
    for n in range(0, len(paths), _PATHS_PER_QUERY):
        chunk = paths[n : n + _PATHS_PER_QUERY]
        query = "SELECT path, facts FROM session_facts WHERE host = ? AND path IN ({})".format(
            ", ".join("?" * len(chunk))
        )
        for path, blob in db.execute(query, (host, *chunk)):
            found[path] = blob
    return found


def decode_facts(blob: bytes) -> SessionFacts:
    """Facts as :func:`load_facts_of` gives them, decoded."""
    return _facts_decoder.decode(blob)


_PUT_SESSION = (
    "INSERT OR REPLACE INTO sessions VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PUT_FACTS = "INSERT OR REPLACE INTO session_facts VALUES (?, ?, ?)"
_PUT_MARK = "INSERT OR REPLACE INTO session_marks VALUES (?, ?, ?, ?)"
_DROP_MARKS = "DELETE FROM session_marks WHERE host = ? AND path = ?"

_Key = tuple[str, bytes]


class IndexRows:
    """The index rows of one commit, written with one statement per table.

    A flush commits up to a thousand sessions: statements of each session's own cost a tenth
    of the CPU its rows cost SQLite (calls, binding, resets). :meth:`put` and :meth:`delete`
    collect, in the order called, and :meth:`write` (inside the checkpoints' transaction)
    leaves the rows those calls, made one by one as statements, would leave: the deletes go
    first, so a later call about the same session overrides an earlier one here, before
    writing. A session's facts and marks are read when written, not when put.
    """

    __slots__ = ("_gone", "_puts", "_stale_marks")

    def __init__(self) -> None:
        self._gone: dict[_Key, None] = {}  # sessions whose rows are all dropped first
        self._stale_marks: dict[_Key, None] = {}  # sessions whose stored marks are dropped
        self._puts: dict[_Key, tuple[str, SessionFacts, Sequence[tuple[int, int]]]] = {}

    def put(
        self,
        host: str,
        path: bytes,
        fmt: str,
        facts: SessionFacts,
        marks: Sequence[tuple[int, int]] = (),
        *,
        fresh: bool = False,
    ) -> None:
        """Store one session's facts and new page marks; ``fresh`` drops its earlier marks
        first (the file was fetched whole: re-indexed)."""
        key = (host, path)
        if fresh:
            self._stale_marks[key] = None
        else:
            earlier = self._puts.get(key)
            if earlier is not None:  # its marks are kept, as the stored ones are
                marks = [*earlier[2], *marks]
        self._puts[key] = (fmt, facts, marks)

    def delete(self, host: str, path: bytes) -> None:
        """Drop one session: its row, facts and marks."""
        key = (host, path)
        self._puts.pop(key, None)
        self._gone[key] = None

    def write(self, db: sqlite3.Connection) -> None:
        """Write what was collected (call inside the checkpoints' transaction)."""
        if self._gone:
            delete_sessions(db, self._gone)
        if self._stale_marks:
            db.executemany(_DROP_MARKS, self._stale_marks)
        if not self._puts:
            return
        encode = _facts_encoder.encode
        sessions = []
        facts_rows = []
        marks_rows = []
        for (host, path), (fmt, facts, marks) in self._puts.items():
            sessions.append(_session_row(host, path, fmt, facts))
            facts_rows.append((host, path, encode(facts)))
            for n, offset in marks:
                marks_rows.append((host, path, n, offset))
        db.executemany(_PUT_SESSION, sessions)
        db.executemany(_PUT_FACTS, facts_rows)
        if marks_rows:
            db.executemany(_PUT_MARK, marks_rows)


def _session_row(host: str, path: bytes, fmt: str, facts: SessionFacts) -> tuple[object, ...]:
    """The ``sessions`` row of one session, its columns in the table's order."""
    return (
        host,
        path,
        fmt,
        facts.agent,
        facts.session_id or "",
        facts.bytes,
        facts.lines,
        facts.malformed,
        *session_counts(facts),
        facts.cost,
        models_text(facts.models),
        facts.first_ts,
        facts.last_ts,
        facts.title,
    )


#: What :func:`session_counts` gives: eleven counts.
Counts = tuple[int, int, int, int, int, int, int, int, int, int, int]


def session_counts(facts: SessionFacts) -> Counts:
    """A session's messages (all, then user, assistant, tool, system, other), tool calls and
    tokens (in, out, cache read, cache write): the ``sessions`` columns ``messages`` to
    ``tokens_cache_write``, in the table's order, which is also a ``SessionRow``'s."""
    return (
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
    )


def delete_sessions(db: sqlite3.Connection, keys: Iterable[tuple[str, bytes]]) -> None:
    keys = list(keys)
    if not keys:
        return
    db.executemany("DELETE FROM sessions WHERE host = ? AND path = ?", keys)
    db.executemany("DELETE FROM session_facts WHERE host = ? AND path = ?", keys)
    db.executemany(_DROP_MARKS, keys)


def mark_before(db: sqlite3.Connection, host: str, path: bytes, message_no: int) -> tuple[int, int]:
    """The last mark at or before message ``message_no``: (its message number, its offset)."""
    # A page far past any session (`show --page 99999999999999999999`) asks for a message
    # number SQLite cannot bind; every mark is at or before the largest it can.
    bounded = max(0, min(message_no, INT64_MAX))
    row = db.execute(
        "SELECT message_no, offset FROM session_marks WHERE host = ? AND path = ? "
        "AND message_no <= ? ORDER BY message_no DESC LIMIT 1",
        (host, path, bounded),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
