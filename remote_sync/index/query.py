"""Reading the session index: listing, finding and summing sessions, without the mirror's lock.

What it owns: :class:`SessionRow` (one session as ``sessions list --json`` prints it and the
library returns it), :class:`StatsRow` (one group of ``sessions stats``), :func:`open_index`
(a read-only connection to the mirror's state database that never takes the lock, so it works
while a sync runs and never blocks one), :func:`query_sessions`, :func:`session_stats` and
:func:`find_session` (``sessions show``'s HOST SESSION lookup), :func:`unknown_host` (what
to say of a host the index has no session of); and for sessions read straight
from hosts (no index), :func:`row_from_facts`, :func:`row_filter` (built once for a stream
of batches) and :func:`select_rows`, which classify, filter and sort in memory exactly like
the SQL does. Other modules share its small helpers: :func:`state_database` (where a
mirror's state is), :func:`unreadable_index`, :func:`age_seconds`, :func:`format_instant`,
:func:`as_indexed` and :func:`tidy_path`.

Over the index, filtering, the class and state of a session, sorting and the limit are all
done in SQL, so ``--limit`` stays fast on a large index. Definitions:

* **state**: ``deleted`` when the file is gone from the remote, or when the agent deleted the
  conversation and keeps it only under a tombstone's name (OpenClaw's
  ``<id>.jsonl.deleted.<time>``: the format reader's ``deleted_by_agent`` knows the names);
  ``renamed`` when it is gone because the host renamed it (an OpenClaw session archived as
  ``<id>.jsonl.reset.<time>`` or ``.deleted.<time>``: the same conversation is indexed under
  its new name); else ``rewritten`` when earlier copies were kept (the file's ``version`` > 0);
  else ``archived`` when the agent archived it (OpenClaw's ``.jsonl.reset.<time>`` and
  ``sessions_archive/``, Codex's ``archived_sessions/``: the reader's ``archived_by_agent``);
  else ``live``. Renamed sessions are left out of listings and totals unless asked for by
  ``state``, so a conversation counts once (its archive counts instead).
* **class**: ``empty`` when the transcript has fewer than :data:`EMPTY_BYTES` bytes or no
  messages; else ``low`` (low value) when it has at most one user message and its last activity
  (``last_ts``, or the file's mtime when no line had a timestamp) is older than
  :data:`LOW_VALUE_AGE` before ``now``; else ``valuable``.
* **sort**: ``FIELD`` sorts ascending, ``-FIELD`` descending; the default is ``-last_ts`` (most
  recent first). Missing values (no timestamp, no cost, no agent) always sort last; ties are
  broken by host, then path.
* **since**: keeps sessions whose ``last_ts`` is at or after the given instant (an ISO date,
  an ISO datetime, naive meaning UTC, or a relative age such as ``7d``, ``12h``, ``2w``); one
  outside the years 1 to 9999 (in UTC) is a :class:`ConfigError`.
* **limit**: none below 0; one above SQLite's largest integer means no limit.
* **cost**: in USD, rounded to :data:`COST_DIGITS` significant digits (below them a sum of
  floats has noise) in every row, sort and total, over the index and from hosts alike.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import re
import shlex
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import ArgumentError, ConfigError, close_matches, path_bytes, path_text
from ..formats import FORMATS
from ..formats.readers import find_reader
from .facts import FormatReader, SessionFacts
from .store import (
    INDEX_RULES,
    INT64_MAX,
    index_rules,
    models_list,
    read_only_uri,
    session_counts,
)

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "COST_DIGITS",
    "DEFAULT_SORT",
    "EMPTY_BYTES",
    "LOW_VALUE_AGE",
    "SORT_FIELDS",
    "STATES",
    "STATS_KEYS",
    "SessionRef",
    "SessionRow",
    "Since",
    "StatsKey",
    "StatsRow",
    "age_seconds",
    "as_indexed",
    "check_batch_size",
    "find_session",
    "format_instant",
    "held_state",
    "iso_instant",
    "open_index",
    "path_parts",
    "query_sessions",
    "round_cost",
    "row_filter",
    "row_from_facts",
    "select_rows",
    "session_class",
    "session_stats",
    "state_database",
    "tidy_path",
    "unknown_host",
    "unreadable_index",
]

#: Transcripts smaller than this many bytes are ``empty``.
EMPTY_BYTES = 500
#: Sessions with at most one user message and no activity for this long are ``low``.
LOW_VALUE_AGE = timedelta(days=7)
DEFAULT_SORT = "-last_ts"
CLASSES = ("empty", "low", "valuable")
STATES = ("live", "archived", "deleted", "rewritten", "renamed")
STATS_KEYS = ("host", "agent", "format", "model", "day")
#: Significant digits a cost (USD) is given out with. A session's cost is a sum of its
#: responses' and a group's a sum of its sessions', floats whose noise (0.0033 + 0.0066 is
#: 0.009899999999999999) would otherwise show in the JSON; a fixed number of decimal places
#: would cut real ones (a response's cost such as 0.0000369, tokens times a price per million).
COST_DIGITS = 10

StatsKey = Literal["host", "agent", "format", "model", "day"]
Since = str | date | datetime


class SessionRow(msgspec.Struct):
    """One indexed session: its facts, its state in the mirror and its class."""

    host: str
    path: str  # relative to the host's root; undecodable bytes shown as \\xNN
    format: str
    agent: str | None
    session_id: str
    bytes: int
    lines: int
    messages: int
    user_messages: int
    assistant_messages: int
    tool_messages: int
    system_messages: int  # system and developer turns, and context the harness injected
    other_messages: int  # any other role (e.g. pi's bashExecution, custom messages)
    tool_calls: int
    tokens_in: int
    tokens_out: int
    tokens_cache_read: int
    tokens_cache_write: int
    cost: float | None  # USD, to COST_DIGITS significant digits
    models: list[str]
    first_ts: str | None
    last_ts: str | None
    title: str | None
    malformed: int
    state: str  # live | archived | deleted | rewritten | renamed
    klass: str = msgspec.field(name="class")  # empty | low | valuable


class StatsRow(msgspec.Struct):
    """Totals of one group of sessions (``by``: what they are grouped by, ``key``: the group)."""

    by: str
    key: str | None  # None: sessions without an agent / a model / a timestamp
    sessions: int
    messages: int
    tool_calls: int
    tokens_in: int
    tokens_out: int
    tokens_cache_read: int
    tokens_cache_write: int
    cost: float | None  # USD, to COST_DIGITS significant digits
    bytes: int


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session found by :func:`find_session`, with what reading its file needs."""

    row: SessionRow
    raw_path: bytes  # the exact path bytes (``row.path`` is for display)
    committed: int | None  # bytes the mirror's checkpoint vouches for (None: no files row)
    #: The file's state on the host as the checkpoint has it (``row.state`` is the session's:
    #: a tombstone the host still has is a deleted session, a live file).
    file_state: str = "live"


#: SessionRow field → SQL expression over ``s`` (sessions) and ``f`` (files, left-joined).
_SELECT = (
    ("host", "s.host"),
    ("path", "s.path"),
    ("format", "s.format"),
    ("agent", "s.agent"),
    ("session_id", "s.session_id"),
    ("bytes", "s.bytes"),
    ("lines", "s.lines"),
    ("messages", "s.messages"),
    ("user_messages", "s.user_messages"),
    ("assistant_messages", "s.assistant_messages"),
    ("tool_messages", "s.tool_messages"),
    ("system_messages", "s.system_messages"),
    ("other_messages", "s.other_messages"),
    ("tool_calls", "s.tool_calls"),
    ("tokens_in", "s.tokens_in"),
    ("tokens_out", "s.tokens_out"),
    ("tokens_cache_read", "s.tokens_cache_read"),
    ("tokens_cache_write", "s.tokens_cache_write"),
    ("cost", "round_cost(s.cost)"),
    ("models", "s.models"),
    ("first_ts", "s.first_ts"),
    ("last_ts", "s.last_ts"),
    ("title", "s.title"),
    ("malformed", "s.malformed"),
    (
        "state",
        "CASE WHEN f.state IN ('deleted', 'renamed') THEN f.state "
        "ELSE held_state(s.format, s.path, f.version) END",
    ),
    (
        "class",
        f"CASE WHEN s.bytes < {EMPTY_BYTES} OR s.messages = 0 THEN 'empty' "
        "WHEN s.user_messages <= 1 AND COALESCE(s.last_ts, "
        "strftime('%Y-%m-%dT%H:%M:%fZ', f.mtime, 'unixepoch'), '') < :cutoff THEN 'low' "
        "ELSE 'valuable' END",
    ),
)
_COLUMNS = ", ".join(f'{expr} AS "{name}"' for name, expr in _SELECT)
_STATE = [name for name, _expr in _SELECT].index("state")
#: Where the checkpoint's committed size, then the file's state on the host (live, deleted,
#: renamed: not the session's, which counts an agent's tombstone as deleted), follow the row's
#: columns in a find_session query.
_COMMITTED = len(_SELECT)
_FILE_STATE = _COMMITTED + 1
_BASE = (
    f"SELECT {_COLUMNS}, f.size AS committed, f.state AS file_state FROM sessions AS s "
    "LEFT JOIN files AS f ON f.host = s.host AND f.path = s.path"
)

#: Fields ``sort`` accepts (every SessionRow field but ``models``; ``class`` sorts by name).
SORT_FIELDS = tuple(name for name, _ in _SELECT if name != "models")

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age_seconds(text: str) -> int | None:
    """The seconds of a relative age (``30s``, ``15m``, ``12h``, ``7d``, ``2w``), or None when
    ``text`` is none."""
    relative = _RELATIVE.fullmatch(text.strip())
    return int(relative[1]) * _UNIT_SECONDS[relative[2]] if relative else None


def state_database(dest: str | Path) -> Path:
    """The state database of the mirror at ``dest``; a :class:`ConfigError` naming ``dest``
    when it holds none (no mirror: nothing of it is made)."""
    db_path = Path(dest) / ".remote-sync" / "state.db"
    if not db_path.is_file():
        raise ConfigError(
            f"no mirror at {dest} (no .remote-sync/state.db)",
            hint="give dest (--dest DIR, or REMOTE_SYNC_DEST) a directory that "
            "`remote-sync sync` has filled",
        )
    return db_path


def open_index(dest: str | Path, *, warn: bool = True) -> sqlite3.Connection:
    """A read-only connection to the mirror's index: takes no lock, never blocks a sync.

    Raises :class:`ConfigError` naming ``dest`` when it holds no mirror or no index. ``warn``:
    say when the index was counted by another version's rules (a reader of the state that
    counts nothing, such as ``versions``, has no use for it).
    """
    uri = read_only_uri(state_database(dest))
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        tables = {
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('sessions', 'files', 'session_marks')"
            )
        }
    except sqlite3.Error as exc:
        raise unreadable_index(dest, exc) from exc
    if "sessions" not in tables or "files" not in tables:
        db.close()
        raise ConfigError(
            f"the mirror at {dest} has no session index yet",
            hint=f"run `remote-sync index rebuild --dest {shlex.quote(str(dest))}` "
            "(or sync it once)",
        )
    if warn:
        _warn_if_other_rules(db, dest)
    return db


def held_state(reader: FormatReader | None, path: bytes, version: int | None = 0) -> str:
    """The state of a transcript the remote still holds at ``path``: ``deleted`` (a tombstone
    the agent keeps), ``rewritten`` (earlier copies kept: ``version`` > 0), ``archived`` (the
    agent archived it) or ``live``. Tombstones come first: a deleted archive is deleted."""
    if reader is not None and reader.deleted_by_agent(path):
        return "deleted"
    if version:
        return "rewritten"
    if reader is not None and reader.archived_by_agent(path):
        return "archived"
    return "live"


def _held_state(format_name: str, path: bytes, version: int | None) -> str:
    return held_state(find_reader(format_name), path, version)


def round_cost(cost: float | None) -> float | None:
    """``cost`` to :data:`COST_DIGITS` significant digits, as every row and total gives it."""
    return None if cost is None else float(f"{cost:.{COST_DIGITS}g}")


def unreadable_index(dest: str | Path, exc: sqlite3.Error) -> ConfigError:
    """The error of a read of the mirror's state database that SQLite refused: at its open
    (no permission, not a database) or in a query (a damaged page, a lock held for longer
    than the busy timeout): :func:`open_index`'s, and that of the queries that catch one."""
    control = Path(dest) / ".remote-sync"
    said = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in said:
        hint = "another process has held it locked for long (a sqlite3 shell?): run again later"
    elif "malformed" in said or "not a database" in said:
        # A read begun while no sync had the database open reads its file as it is
        # (``read_only_uri``): a sync that starts and commits meanwhile can make it read
        # pages of two versions, which SQLite calls malformed. Run again before anything.
        hint = (
            f"run again (a sync that started during the read can cause this); if it says so "
            f"again, check the file system that holds {control}, and if the database itself "
            "is damaged, move it aside (a sync then fetches every file again)"
        )
    else:
        hint = f"check the permissions of {control}"
    return ConfigError(f"cannot read the mirror's state database in {dest}: {exc}", hint=hint)


def _use_readers(db: sqlite3.Connection) -> None:
    """Let ``db``'s queries ask the format readers what the SQL cannot know, and round costs
    as Python does, so that rows from the index sort and sum as those read from hosts do
    (idempotent)."""
    db.create_function("held_state", 3, _held_state, deterministic=True)
    db.create_function("round_cost", 1, round_cost, deterministic=True)


def _warn_if_other_rules(db: sqlite3.Connection, dest: str | Path) -> None:
    """Say so when the index was counted by another version's rules (it still answers)."""
    try:
        rules = index_rules(db)
    except (sqlite3.Error, ValueError):  # a state without a meta table: nothing to compare
        return
    if rules < INDEX_RULES:
        log.warning(
            "the session index of %s was computed by an earlier remote-sync, which counted "
            "some messages differently; run `remote-sync index rebuild --dest %s` to recount",
            dest,
            dest,
        )
    elif rules > INDEX_RULES:
        log.warning(
            "the session index of %s was computed by a newer remote-sync; its rows may hold "
            "counts this version does not make (upgrade remote-sync)",
            dest,
        )


def iso_instant(value: Since, now: datetime | None = None) -> str:
    """``value`` as a sortable UTC string comparable with ``first_ts``/``last_ts``.

    Accepts a date (its midnight, UTC), a datetime (naive means UTC), an ISO string of either,
    or a relative age before ``now``: ``30s``, ``15m``, ``12h``, ``7d``, ``2w``. Raises
    :class:`ConfigError` for what it cannot read and for an instant outside the years 1-9999.
    """
    try:
        return format_instant(_instant(value, now))
    except (OverflowError, ValueError):
        # datetime's range ends at years 1 and 9999: an age of 99999999d, or 0001-01-01 in a
        # zone east of UTC, has no instant to compare with.
        raise ConfigError(
            f"the time {value!s} is out of range",
            hint="give an instant between the years 1 and 9999 (in UTC), or an age that "
            "reaches no further back",
        ) from None


def _instant(value: Since, now: datetime | None) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = value.strip()
    seconds = age_seconds(text)
    if seconds is not None:
        return _now(now) - timedelta(seconds=seconds)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"cannot read the time {value!r}",
            hint="use an ISO date (2026-11-21), datetime (2026-11-21T10:00:00Z) "
            "or an age like 7d, 12h, 30m",
        ) from None


def format_instant(moment: datetime) -> str:
    """``moment`` as the index stores an instant: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    m = moment.astimezone(UTC)
    # The year always in 4 digits (strftime's %Y gives "999" for 999, which sorts after
    # "2026"); milliseconds always: "…:00.000Z" sorts at or before "…:00Z" and "…:00.000Z".
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}Z"
    )


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime):
        # A date, an epoch number or a string failed later in a subtraction or in
        # astimezone, with words that named neither the argument nor what to pass.
        raise ArgumentError(
            f"now must be a datetime or None, not {type(now).__name__}",
            hint="pass datetime.now(UTC) or another datetime (naive means UTC), or None for "
            "the current time",
        )
    return now


def as_indexed(text: str) -> str:
    """A command-line argument (``\\udcNN`` for bytes that are not UTF-8) as the index holds
    such text: ids, agents and other names read from paths have those bytes replaced
    (U+FFFD), and SQLite cannot take the escapes at all."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding made (a library caller's text)
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def _where(
    *,
    host: str | None,
    format: str | None,
    agent: str | None,
    since: Since | None,
    klass: str | None,
    state: str | None,
    now: datetime | None,
    with_renamed: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The filtered rows as SQL over ``_BASE``, and its named parameters.

    With no ``state``, renamed sessions are left out unless ``with_renamed``."""
    params: dict[str, Any] = {"cutoff": format_instant(_now(now) - LOW_VALUE_AGE)}
    inner: list[str] = []
    outer: list[str] = []
    if host is not None:
        inner.append("s.host = :host")
        params["host"] = as_indexed(host)
    if format is not None:
        if format not in FORMATS:
            # As a bad class or state: a misspelt format would match nothing without a word.
            raise ConfigError(
                f"unknown format {format!r}", hint=f"use one of {', '.join(sorted(FORMATS))}"
            )
        inner.append("s.format = :format")
        params["format"] = as_indexed(format)
    if agent is not None:
        inner.append("s.agent = :agent")
        params["agent"] = as_indexed(agent)
    if since is not None:
        inner.append("s.last_ts >= :since")
        params["since"] = iso_instant(since, now)
    if klass is not None:
        if klass not in CLASSES:
            raise ConfigError(f"unknown class {klass!r}", hint=f"use one of {', '.join(CLASSES)}")
        outer.append('"class" = :klass')
        params["klass"] = klass
    if state is not None:
        if state not in STATES:
            raise ConfigError(f"unknown state {state!r}", hint=f"use one of {', '.join(STATES)}")
        outer.append("state = :state")
        params["state"] = state
    elif not with_renamed:
        outer.append("state != 'renamed'")
    sql = _BASE + (" WHERE " + " AND ".join(inner) if inner else "")
    if outer:
        sql = f"SELECT * FROM ({sql}) WHERE " + " AND ".join(outer)
    return sql, params


def _sort_field(sort: str) -> str:
    """The field of ``FIELD``, ``+FIELD`` or ``-FIELD`` (one sign at most)."""
    return sort[1:] if sort[:1] in ("+", "-") else sort


def check_batch_size(batch_size: int) -> None:
    """A :class:`ConfigError` unless ``batch_size`` is a whole number of at least 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch_size must be a whole number of at least 1, not {batch_size!r}",
            hint="pass the number of sessions each batch should hold",
        )


def _check_limit(limit: int | None) -> None:
    """A :class:`ConfigError` for a negative ``limit``, naming the argument and the option,
    or one that is no whole number (a library caller's ``True`` was taken for 1, and a
    ``"3"`` failed in a comparison's TypeError)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ConfigError(
            f"limit (--limit) must be a whole number, not {limit!r}",
            hint="pass the largest number of sessions wanted, or none for all",
        )
    if limit is not None and limit < 0:
        raise ConfigError(
            f"limit (--limit) must not be negative, got {limit}",
            hint="pass the largest number of sessions wanted, or none for all",
        )


def _order(sort: str) -> str:
    descending = sort.startswith("-")
    field = _sort_field(sort)
    if field not in SORT_FIELDS:
        raise ConfigError(
            f"cannot sort by {field!r}",
            hint=f"use FIELD (ascending) or -FIELD (descending), FIELD one of "
            f"{', '.join(SORT_FIELDS)}",
        )
    column = f'"{field}"'
    direction = " DESC" if descending else ""
    # Never an order an index gives: SQLite then sorts every row before the first comes
    # out, which makes a slow listing read as a file a snapshot (see stream_state).
    return f"{column} IS NULL, {column}{direction}, host, path"


def query_sessions(
    db: sqlite3.Connection,
    *,
    host: str | None = None,
    format: str | None = None,
    agent: str | None = None,
    since: Since | None = None,
    klass: str | None = None,
    state: str | None = None,
    sort: str = DEFAULT_SORT,
    limit: int | None = None,
    now: datetime | None = None,
) -> Iterator[SessionRow]:
    """The index's sessions matching every given filter, sorted, at most ``limit`` of them.

    ``sort`` is ``FIELD`` (ascending) or ``-FIELD`` (descending), FIELD in
    :data:`SORT_FIELDS`. ``now`` (default: the current time) is when ``class`` is judged and
    relative ``since`` ages are counted from. Bad arguments raise :class:`ConfigError` before
    any row is produced.
    """
    _use_readers(db)
    sql, params = _where(
        host=host, format=format, agent=agent, since=since, klass=klass, state=state, now=now
    )
    sql = f"SELECT * FROM ({sql}) ORDER BY {_order(sort)}"
    if limit is not None:
        _check_limit(limit)
        sql += " LIMIT :limit"
        # SQLite binds at most a signed 64-bit integer; a larger limit is no limit.
        params["limit"] = min(limit, INT64_MAX)
    return _rows(db.execute(sql, params))


def _row(r: Sequence[Any]) -> SessionRow:
    return SessionRow(
        r[0],
        path_text(r[1]),
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
        r[16],
        r[17],
        r[18],
        models_list(r[19]),
        r[20],
        r[21],
        r[22],
        r[23],
        r[24],
        r[25],
    )


def _rows(cursor: sqlite3.Cursor) -> Iterator[SessionRow]:
    row = _row
    while True:
        batch = cursor.fetchmany(1024)
        if not batch:
            return
        for r in batch:
            yield row(r)


def session_class(
    size: int, messages: int, user_messages: int, last_activity: str | None, cutoff: str
) -> str:
    """The class as the SQL computes it (``cutoff``: :func:`iso_instant` of now - 7 days)."""
    if size < EMPTY_BYTES or messages == 0:
        return "empty"
    if user_messages <= 1 and (last_activity or "") < cutoff:
        return "low"
    return "valuable"


def row_from_facts(
    host: str,
    path: bytes,
    fmt: str,
    facts: SessionFacts,
    *,
    state: str = "live",
    now: float | datetime | None = None,
    mtime: float | None = None,
) -> SessionRow:
    """A :class:`SessionRow` from facts not (yet) in an index, e.g. read straight from a host.

    ``now`` (epoch seconds or a datetime; default: the current time) judges the class;
    ``mtime`` stands in for the last activity when no line had a timestamp.
    """
    moment = datetime.fromtimestamp(now, UTC) if isinstance(now, int | float) else _now(now)
    last = facts.last_ts
    if last is None and mtime is not None:
        # A host's clock or a hostile listing may give a time no datetime holds (year 10000
        # or before year 1): then there is no last activity to go by, not a failed listing.
        with contextlib.suppress(ValueError, OverflowError, OSError):
            last = format_instant(datetime.fromtimestamp(mtime, UTC))
    klass = session_class(
        facts.bytes,
        facts.messages,
        facts.user,
        last,
        format_instant(moment - LOW_VALUE_AGE),
    )
    return SessionRow(
        host,
        path_text(path),
        fmt,
        facts.agent,
        facts.session_id or "",
        facts.bytes,
        facts.lines,
        *session_counts(facts),
        round_cost(facts.cost),
        list(facts.models),
        facts.first_ts,
        facts.last_ts,
        facts.title,
        facts.malformed,
        state,
        klass,
    )


def row_filter(
    *,
    host: str | None = None,
    format: str | None = None,
    agent: str | None = None,
    since: Since | None = None,
    klass: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
) -> Callable[[Iterable[SessionRow]], list[SessionRow]]:
    """:func:`query_sessions`'s filters for rows in memory, read once: the values checked
    and ``since``'s instant worked out here, a ``ConfigError`` raised here, and the function
    returned keeps the matching rows of each batch it is given, in their order. A stream of
    batches (a listing straight from hosts) builds it once per listing."""
    _, params = _where(
        host=None, format=format, agent=None, since=since, klass=klass, state=state, now=now
    )
    after: str | None = params.get("since")  # iso_instant(since, now), as the SQL compares
    # An agent is read from a path with its bytes that are not UTF-8 replaced, and the
    # SQL compares it so (as_indexed): `--agent` gives those bytes as \udcNN escapes.
    wanted = as_indexed(agent) if agent is not None else None

    def keep(rows: Iterable[SessionRow]) -> list[SessionRow]:
        return [
            r
            for r in rows
            if (host is None or r.host == host)
            and (format is None or r.format == format)
            and (wanted is None or r.agent == wanted)
            and (after is None or (r.last_ts is not None and r.last_ts >= after))
            and (klass is None or r.klass == klass)
            and (state is None or r.state == state)
        ]

    return keep


def select_rows(
    rows: Iterable[SessionRow],
    *,
    host: str | None = None,
    format: str | None = None,
    agent: str | None = None,
    since: Since | None = None,
    klass: str | None = None,
    state: str | None = None,
    sort: str = DEFAULT_SORT,
    limit: int | None = None,
    now: datetime | None = None,
) -> list[SessionRow]:
    """:func:`query_sessions`'s filters, sort and limit applied to rows already in memory
    (sessions read straight from hosts). Same arguments, same semantics."""
    _order(sort)  # validates the arguments like the SQL path does
    _check_limit(limit)
    keep = row_filter(
        host=host, format=format, agent=agent, since=since, klass=klass, state=state, now=now
    )
    kept = keep(rows)
    field = _sort_field(sort)
    value: Callable[[SessionRow], Any] = (
        _row_path_bytes
        if field == "path"
        else operator.attrgetter("klass" if field == "class" else field)
    )
    kept.sort(key=lambda r: (r.host, path_bytes(r.path)))
    present = [r for r in kept if value(r) is not None]
    missing = [r for r in kept if value(r) is None]
    present.sort(key=value, reverse=sort.startswith("-"))
    out = present + missing
    return out if limit is None else out[:limit]


def _row_path_bytes(row: SessionRow) -> bytes:
    return path_bytes(row.path)


def unknown_host(db: sqlite3.Connection, host: str) -> ConfigError | None:
    """The error to say of ``host`` when the index holds no session of it, else None: its
    hint names the indexed hosts closest to it, or starting with it (a machine's address, for
    the entries of its agents, ``box`` for ``box-claude``; a name is compared as typed, and a
    mistyped or differently cased one matched nothing), else all of them."""
    if db.execute("SELECT 1 FROM sessions WHERE host = ? LIMIT 1", (as_indexed(host),)).fetchone():
        return None
    hosts = [h for (h,) in db.execute("SELECT DISTINCT host FROM sessions ORDER BY host")]
    folded = {h.casefold(): h for h in hosts}
    close = close_matches(host.casefold(), list(folded), n=3)
    close += [h for h in folded if h.startswith(host.casefold()) and h not in close][:3]
    if close:
        hint = f"did you mean {' or '.join(repr(folded[c]) for c in close)}?"
    else:
        hint = f"indexed hosts: {', '.join(hosts) if hosts else 'none yet'}"
    return ConfigError(f"no host {host!r} in the index", hint=hint)


def find_session(
    db: sqlite3.Connection, host: str, session: str, *, now: datetime | None = None
) -> SessionRef:
    """The one session of ``host`` that ``session`` names: its path relative to the host's
    root (as listed), else its session id, else a unique prefix of its session id. An id is
    also matched as the agent spells it in file names (a picoclaw key ``telegram:123`` is the
    session ``telegram_123``: the readers' ``id_of_key``).

    Raises :class:`ConfigError` for an unknown host, no match, or several matches (the message
    lists them).
    """
    unknown = unknown_host(db, host)
    if unknown is not None:
        raise unknown
    if not session:
        # As over SSH: an empty prefix would name every session of the host (or its only one).
        raise ConfigError("no session given", host=host)
    _use_readers(db)
    base, params = _where(
        host=host,
        format=None,
        agent=None,
        since=None,
        klass=None,
        state=None,
        now=now,
        with_renamed=True,
    )
    params["raw"] = session.encode("utf-8", "surrogateescape")
    params["session"] = as_indexed(session)
    params["unescaped"] = path_bytes(session)  # a path as listed (see errors.path_text)
    # Other spellings of a path (./a/b, a//b), which a show over SSH accepts too.
    params["raw_tidy"] = tidy_path(params["raw"])
    params["unescaped_tidy"] = tidy_path(params["unescaped"])
    # The id as each format of the host's sessions spells a key in its file names, where
    # that differs from the text given.
    exact = ["session_id = :session"]
    prefix = ["substr(session_id, 1, length(:session)) = :session"]
    formats = db.execute("SELECT DISTINCT format FROM sessions WHERE host = :host", params)
    for n, (fmt,) in enumerate(formats.fetchall()):
        reader = find_reader(fmt)
        alias = as_indexed(reader.id_of_key(session)) if reader is not None else params["session"]
        if alias != params["session"]:
            params[f"format{n}"], params[f"alias{n}"] = fmt, alias
            exact.append(f"(format = :format{n} AND session_id = :alias{n})")
            prefix.append(
                f"(format = :format{n} AND substr(session_id, 1, length(:alias{n})) = :alias{n})"
            )
    tiers = (
        # The path as listed first: its escapes name bytes (a backslash that reads as one is
        # listed as \x5c). Then the text as typed, for a name holding such text itself, typed
        # as it is (as over SSH).
        f"SELECT * FROM ({base}) WHERE path IN (:unescaped, :unescaped_tidy) ORDER BY path",
        f"SELECT * FROM ({base}) WHERE path IN (:raw, :raw_tidy) ORDER BY path",
        f"SELECT * FROM ({base}) WHERE {' OR '.join(exact)} ORDER BY path",
        f"SELECT * FROM ({base}) WHERE {' OR '.join(prefix)} ORDER BY path",
    )
    for sql in tiers:
        found = db.execute(sql, params).fetchall()
        if len(found) > 1:
            # The old name of a renamed session holds the same conversation: the current
            # one is meant.
            current = [r for r in found if r[_STATE] != "renamed"]
            found = current if len(current) == 1 else found
        if len(found) == 1:
            r = found[0]
            return SessionRef(_row(r), bytes(r[1]), r[_COMMITTED], r[_FILE_STATE] or "live")
        if len(found) > 1:
            shown = "\n  ".join(f"{path_text(r[1])}  (session {r[4]})" for r in found[:20])
            more = f"\n  … and {len(found) - 20} more" if len(found) > 20 else ""
            raise ConfigError(
                f"{session!r} matches {len(found)} sessions:\n  {shown}{more}",
                host=host,
                hint="name one by its path",
            )
    raise ConfigError(
        f"no session {session!r}",
        host=host,
        hint=f"`remote-sync sessions list --host {shlex.quote(host)}` (the library's "
        f"list_sessions(host={host!r})) shows its sessions",
    )


def tidy_path(path: bytes) -> bytes:
    """``path`` as an index stores it (:func:`path_parts`); an absolute path stays as it is
    (no path of a host's root: over SSH it is refused)."""
    if path.startswith(b"/"):
        return path
    return b"/".join(path_parts(path))


def path_parts(path: bytes) -> list[bytes]:
    """The components of ``path`` without its ``.`` components and empty ones (``./a//b`` is
    ``a``, ``b``): a session named by another spelling of its path, over the index and over
    SSH alike."""
    return [part for part in path.split(b"/") if part not in (b"", b".")]


_SUMS = (
    "COUNT(*), COALESCE(SUM(messages), 0), COALESCE(SUM(tool_calls), 0), "
    "COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), "
    "COALESCE(SUM(tokens_cache_read), 0), COALESCE(SUM(tokens_cache_write), 0), "
    "SUM(cost), COALESCE(SUM(bytes), 0)"
)
_GROUP_EXPR = {
    "host": "host",
    "agent": "agent",
    "format": "format",
    "day": "substr(last_ts, 1, 10)",
}


def session_stats(
    db: sqlite3.Connection,
    by: StatsKey = "host",
    *,
    host: str | None = None,
    format: str | None = None,
    agent: str | None = None,
    since: Since | None = None,
    klass: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
) -> list[StatsRow]:
    """Totals per host, agent, format, model or day (of ``last_ts``), over the filtered sessions.

    ``model``: a session that used several models counts in full for each of them. Groups come
    sorted by key (days chronologically); the group of sessions without a key comes last.
    """
    if by not in STATS_KEYS:
        raise ConfigError(f"cannot group by {by!r}", hint=f"use one of {', '.join(STATS_KEYS)}")
    _use_readers(db)
    sql, params = _where(
        host=host, format=format, agent=agent, since=since, klass=klass, state=state, now=now
    )
    if by != "model":
        expr = _GROUP_EXPR[by]
        cur = db.execute(
            f"SELECT {expr} AS key, {_SUMS} FROM ({sql}) GROUP BY key ORDER BY key IS NULL, key",
            params,
        )
        return [_stats_row(by, *r) for r in cur]
    cur = db.execute(
        f"SELECT models, messages, tool_calls, tokens_in, tokens_out, tokens_cache_read, "
        f"tokens_cache_write, cost, bytes FROM ({sql})",
        params,
    )
    groups: dict[str | None, list[Any]] = {}
    for models, *figures in cur:
        names: list[str | None] = [*models_list(models)] or [None]
        for model in names:
            acc = groups.get(model)
            if acc is None:
                acc = groups[model] = [0, 0, 0, 0, 0, 0, 0, None, 0]
            acc[0] += 1
            for i, value in enumerate(figures, start=1):
                if value is not None:
                    acc[i] = value if acc[i] is None else acc[i] + value
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    return [_stats_row(by, k, *groups[k]) for k in keys]


def _stats_row(by: str, key: str | None, *figures: Any) -> StatsRow:
    """A group's totals, its cost (a sum of the sessions' rounded costs) rounded again."""
    row = StatsRow(by, key, *figures)
    row.cost = round_cost(row.cost)
    return row
