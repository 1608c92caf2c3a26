"""Tests of the session index's read side: ``sessions list/show/stats`` and ``index rebuild``.

Covers the queries (filters, sort, limit, class with a fixed ``now``, state), the stats per
key, reading only the shown part of a transcript (head, tail, page via marks, with the bytes
read bounded), the CLI's JSON and table outputs and exit codes, a real sync of generated
sessions against the sshd fleet, and the CLI's start-up cost (no heavy imports).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis
import msgspec
import pytest
import sessiongen
from hypothesis import strategies as st
from synchelp import cli, tear_reads, write_inventory

from remote_sync.cli import main
from remote_sync.cli.human import _cut_session_id
from remote_sync.errors import ConfigError
from remote_sync.formats.readers import get_reader
from remote_sync.index.facts import Message, SessionFacts
from remote_sync.index.query import (
    SessionRow,
    StatsRow,
    find_session,
    open_index,
    query_sessions,
    row_filter,
    row_from_facts,
    select_rows,
    session_stats,
    state_database,
)
from remote_sync.index.remote_show import _Backward
from remote_sync.index.show import TAIL_FIRST_BLOCK, ShowResult, read_messages, show_session
from remote_sync.index.store import MARK_EVERY
from remote_sync.index.update import IndexUpdate
from remote_sync.mirror.state import FileState, MirrorState

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- an index written directly ------------------------------------------------------------------


@dataclass
class Spec:
    host: str
    fmt: str
    path: bytes
    facts: SessionFacts
    state: str = "live"
    version: int = 0
    mtime: float = field(default_factory=lambda: NOW.timestamp())


def facts(
    sid: str,
    *,
    agent: str | None = None,
    size: int = 5000,
    user: int = 1,
    assistant: int = 1,
    tool: int = 0,
    tool_calls: int = 0,
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0),
    cost: float | None = None,
    models: tuple[str, ...] = (),
    last: datetime | None = None,
    title: str | None = None,
) -> SessionFacts:
    return SessionFacts(
        session_id=sid,
        agent=agent,
        bytes=size,
        lines=user + assistant + tool + 1,
        user=user,
        assistant=assistant,
        tool=tool,
        tool_calls=tool_calls,
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        tokens_cache_read=tokens[2],
        tokens_cache_write=tokens[3],
        cost=cost,
        models=list(models),
        first_ts=iso(last - timedelta(hours=1)) if last else None,
        last_ts=iso(last) if last else None,
        title=title,
    )


def specs(now: datetime = NOW) -> list[Spec]:
    d = timedelta(days=1)
    return [
        Spec(
            "h0",
            "openclaw",
            b"agents/main/sessions/big.jsonl",
            facts(
                "big",
                agent="main",
                size=90_000,
                user=6,
                assistant=8,
                tool=3,
                tool_calls=4,
                tokens=(1000, 500, 100, 50),
                cost=0.5,
                models=("claude-a", "gpt-b"),
                last=now - 2 * d,
                title="Refactor the parser",
            ),
        ),
        Spec(
            "h0",
            "openclaw",
            b"agents/main/sessions/tiny.jsonl",
            facts("tiny", agent="main", size=300, last=now - timedelta(hours=1)),
        ),
        Spec(
            "h0",
            "openclaw",
            b"agents/ops/sessions/once.jsonl",
            facts(
                "once",
                agent="ops",
                size=4000,
                user=1,
                assistant=2,
                tokens=(10, 20, 0, 0),
                cost=0.1,
                models=("claude-a",),
                last=now - 10 * d,
            ),
            state="deleted",
        ),
        Spec(
            "h0",
            "openclaw",
            b"agents/ops/sessions/fresh.jsonl",
            facts("fresh", agent="ops", size=4000, last=now - d),
            version=1,
        ),
        Spec(
            "h0",
            "openclaw",
            b"agents/ops/sessions/\xff-odd.jsonl",
            facts("odd", agent="ops", size=2000, user=0, assistant=0),
        ),
        Spec(
            "h1",
            "codex",
            b"sessions/2026/11/01/rollout-a.jsonl",
            facts(
                "rollout-a",
                size=50_000,
                user=3,
                assistant=3,
                tokens=(2000, 800, 0, 0),
                models=("gpt-b",),
                last=now - 20 * d,
            ),
        ),
        Spec(
            "h1",
            "codex",
            b"sessions/2026/11/02/rollout-b.jsonl",
            facts("dup", size=3000),
            mtime=(now - 30 * d).timestamp(),
        ),
        Spec(
            "h1",
            "codex",
            b"sessions/2026/11/03/rollout-c.jsonl",
            facts("dup", size=3000),
            mtime=(now - d).timestamp(),
        ),
    ]


def build_index(dest: Path, entries: list[Spec]) -> None:
    with MirrorState(dest) as state:
        for host, fmt in sorted({(s.host, s.fmt) for s in entries}):
            state.set_host(host, fmt, "/data", host)
        rows = [
            FileState(
                s.host,
                s.path,
                "append",
                s.facts.bytes,
                s.facts.bytes,
                s.mtime,
                1,
                i,
                b"",
                version=s.version,
                state=s.state,
            )
            for i, s in enumerate(entries)
        ]

        def write_sessions() -> None:
            for s in entries:
                IndexUpdate(s.host, s.path, s.fmt, s.facts).write(state.db)

        state.commit(rows, also=write_sessions)


@pytest.fixture
def index_dest(tmp_path: Path) -> Path:
    dest = tmp_path / "mirror"
    build_index(dest, specs())
    return dest


@pytest.fixture
def db(index_dest: Path) -> Iterator[Any]:
    conn = open_index(index_dest)
    yield conn
    conn.close()


def ids(rows: Any) -> list[str]:
    return [f"{r.host}:{r.path.rsplit('/', 1)[-1]}" for r in rows]


# -- queries --------------------------------------------------------------------------------


def test_list_rows_state_class_and_default_order(db: Any) -> None:
    rows = list(query_sessions(db, now=NOW))
    # Newest activity first; sessions without a timestamp last, by host and path.
    assert ids(rows) == [
        "h0:tiny.jsonl",
        "h0:fresh.jsonl",
        "h0:big.jsonl",
        "h0:once.jsonl",
        "h1:rollout-a.jsonl",
        "h0:\\xff-odd.jsonl",
        "h1:rollout-b.jsonl",
        "h1:rollout-c.jsonl",
    ]
    by = {r.path.rsplit("/", 1)[-1]: r for r in rows}
    assert {k: (r.klass, r.state) for k, r in by.items()} == {
        "tiny.jsonl": ("empty", "live"),  # < 500 bytes
        "fresh.jsonl": ("valuable", "rewritten"),  # one user message but active yesterday
        "big.jsonl": ("valuable", "live"),
        "once.jsonl": ("low", "deleted"),  # one user message, idle for 10 days
        "rollout-a.jsonl": ("valuable", "live"),  # old but 3 user messages
        "\\xff-odd.jsonl": ("empty", "live"),  # no messages
        "rollout-b.jsonl": ("low", "live"),  # no timestamps: the file's mtime (30 days)
        "rollout-c.jsonl": ("valuable", "live"),  # mtime yesterday
    }
    big = by["big.jsonl"]
    assert (big.messages, big.user_messages, big.assistant_messages, big.tool_messages) == (
        17,
        6,
        8,
        3,
    )
    assert big.models == ["claude-a", "gpt-b"] and by["tiny.jsonl"].models == []
    assert (big.tokens_in, big.tokens_out, big.tokens_cache_read, big.tokens_cache_write) == (
        1000,
        500,
        100,
        50,
    )
    assert big.cost == 0.5 and big.title == "Refactor the parser" and big.agent == "main"
    assert big.last_ts == iso(NOW - timedelta(days=2))
    assert by["rollout-a.jsonl"].agent is None and by["rollout-a.jsonl"].format == "codex"
    # The class moves with `now`: a week later `fresh` has gone quiet too.
    later = {r.session_id: r.klass for r in query_sessions(db, now=NOW + timedelta(days=7))}
    assert later["fresh"] == "low" and later["big"] == "valuable"


def test_archives_the_agent_keeps_are_archived(tmp_path: Path) -> None:
    """OpenClaw's /reset archives and sessions_archive/, Codex's archived_sessions/: archived,
    listed and counted by default; a tombstone stays deleted, an archive gone from the
    remote is deleted, one with versions kept is rewritten."""
    sessions = "agents/main/sessions"
    entries = [
        Spec("h0", "openclaw", f"{sessions}/live.jsonl".encode(), facts("live")),
        Spec(
            "h0", "openclaw", f"{sessions}/r.jsonl.reset.2026-11-21T10-00-00Z".encode(), facts("r")
        ),
        Spec("h0", "openclaw", b"agents/main/sessions_archive/old.jsonl", facts("old")),
        Spec(
            "h0",
            "openclaw",
            f"{sessions}/d.jsonl.deleted.2026-11-21T10-00-00Z".encode(),
            facts("d"),
        ),
        Spec(
            "h0",
            "openclaw",
            b"agents/main/sessions_archive/gone.jsonl",
            facts("gone"),
            state="deleted",
        ),
        Spec("h0", "openclaw", b"agents/main/sessions_archive/v.jsonl", facts("v"), version=1),
        Spec("h1", "codex", b"sessions/2026/11/01/rollout-a.jsonl", facts("a")),
        Spec("h1", "codex", b"archived_sessions/rollout-b.jsonl", facts("b")),
    ]
    dest = tmp_path / "mirror"
    build_index(dest, entries)
    conn = open_index(dest)
    try:
        states = {r.session_id: r.state for r in query_sessions(conn, now=NOW)}
        assert states == {
            "live": "live",
            "r": "archived",
            "old": "archived",
            "d": "deleted",
            "gone": "deleted",
            "v": "rewritten",
            "a": "live",
            "b": "archived",
        }
        archived = query_sessions(conn, state="archived", sort="session_id", now=NOW)
        assert [r.session_id for r in archived] == ["b", "old", "r"]
        (total,) = session_stats(conn, by="format", host="h1", now=NOW)
        assert total.sessions == 2  # the archived rollout counts
        assert find_session(conn, "h1", "b").row.state == "archived"
    finally:
        conn.close()


def test_filters_and_limit(db: Any) -> None:
    def q(**kw: Any) -> list[str]:
        return ids(query_sessions(db, now=NOW, **kw))

    assert q(host="h1") == ["h1:rollout-a.jsonl", "h1:rollout-b.jsonl", "h1:rollout-c.jsonl"]
    assert q(format="codex") == q(host="h1")
    assert q(agent="ops") == ["h0:fresh.jsonl", "h0:once.jsonl", "h0:\\xff-odd.jsonl"]
    assert q(klass="low") == ["h0:once.jsonl", "h1:rollout-b.jsonl"]
    assert q(klass="empty") == ["h0:tiny.jsonl", "h0:\\xff-odd.jsonl"]
    assert q(state="deleted") == ["h0:once.jsonl"]
    assert q(state="rewritten") == ["h0:fresh.jsonl"]
    # since compares last_ts (sessions without one never match): date, datetime, age.
    recent = ["h0:tiny.jsonl", "h0:fresh.jsonl", "h0:big.jsonl"]
    assert q(since=(NOW - timedelta(days=3)).date().isoformat()) == recent
    assert q(since=NOW - timedelta(days=3)) == recent
    assert q(since="3d") == recent
    assert q(since=iso(NOW - timedelta(days=2))) == recent  # inclusive
    assert q(since="2026-11-19T15:00:00+02:00") == recent[:2]  # 13:00 UTC: after big
    assert q(host="h0", klass="valuable", agent="main") == ["h0:big.jsonl"]
    assert q(limit=2) == ["h0:tiny.jsonl", "h0:fresh.jsonl"]
    assert q(limit=0) == []
    assert q(host="nope") == []
    for bad in ({"klass": "gold"}, {"state": "gone"}, {"since": "yesterday"}, {"limit": -1}):
        with pytest.raises(ConfigError):
            list(query_sessions(db, **bad))


@pytest.mark.parametrize("verb", ["list", "stats"])
def test_an_unknown_format_is_a_usage_error_naming_the_formats(
    verb: str, index_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It matched nothing (exit 0, "no sessions match"), while a bad --class is refused."""
    code, out, err = cli(["sessions", verb, "--format", "nope", "--dest", str(index_dest)], capsys)
    assert code == 2 and out == "", err
    assert "remote-sync: unknown format 'nope' (use one of claude-code, codex, jsonl," in err
    code, out, err = cli(["sessions", verb, "--format", "codex", "--dest", str(index_dest)], capsys)
    assert code == 0 and "h1" in out and "h0" not in out, err


@pytest.mark.parametrize("verb", ["list", "stats"])
@pytest.mark.parametrize("json_out", [[], ["--json"]])
def test_a_host_the_index_has_nothing_of_is_said_with_the_closest_names(
    verb: str, json_out: list[str], index_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sessions list --host box`, box being the address of the hosts box-openclaw and
    box-claude, said only "no sessions match", and `stats --host` nothing at all: a mistyped
    or differently cased name looked like a host without sessions, while `show` said "no host
    'box' in the index". They now say that too, with the indexed names closest to it or
    starting with it, on stderr; still exit 0 and nothing more on stdout, as for any filter
    that matches nothing."""
    dest = ["--dest", str(index_dest), *json_out]
    for host, said in [
        ("H1", "did you mean 'h1'?"),
        ("h", "did you mean 'h1' or 'h0'?"),
        ("zz", "indexed hosts: h0, h1"),
    ]:
        code, out, err = cli(["sessions", verb, "--host", host, *dest], capsys)
        assert code == 0 and err == f"remote-sync: no host {host!r} in the index ({said})\n", err
        assert out == "" if json_out else "h0" not in out and "h1" not in out, out
    code, out, err = cli(["sessions", verb, "--host", "h1", *dest], capsys)
    assert code == 0 and err == "" and "h1" in out, err
    code, out, err = cli(["sessions", "show", "zz", "x", *dest], capsys)
    assert code == 2 and "no host 'zz' in the index (indexed hosts: h0, h1)" in err, err


@pytest.mark.parametrize("verb", ["list", "stats"])
@pytest.mark.parametrize("json_out", [[], ["--json"]])
def test_a_listing_for_one_host_opens_the_state_once(
    verb: str,
    json_out: list[str],
    index_dest: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sessions list --host H` asks whether the index knows H on the connection its rows are
    read on: it opened the state a second time for that question alone."""
    for host, said in [("h1", ""), ("zz", "no host 'zz' in the index")]:
        opened = tear_reads(monkeypatch, index_dest, torn=0)  # counts, spoils nothing
        args = ["sessions", verb, "--host", host, "--dest", str(index_dest), *json_out]
        code, out, err = cli(args, capsys)
        assert code == 0 and said in err and (said or err == ""), err
        assert ("h1" in out) == (host == "h1"), out
        assert len(opened) == 1, (host, len(opened))
        monkeypatch.undo()


def test_sort(db: Any) -> None:
    def q(sort: str, **kw: Any) -> list[str]:
        return [r.session_id for r in query_sessions(db, sort=sort, now=NOW, **kw)]

    assert q("messages", host="h0") == ["odd", "tiny", "fresh", "once", "big"]
    assert q("-messages", host="h0") == ["big", "once", "tiny", "fresh", "odd"]  # ties: by path
    assert q("-bytes") == ["big", "rollout-a", "fresh", "once", "dup", "dup", "odd", "tiny"]
    # Missing values sort last both ways; ties by host then path.
    no_cost = ["tiny", "fresh", "odd", "rollout-a", "dup", "dup"]  # path bytes: \xff after f
    assert q("cost") == ["once", "big", *no_cost]
    assert q("-cost") == ["big", "once", *no_cost]
    assert q("last_ts")[:5] == ["rollout-a", "once", "big", "fresh", "tiny"]
    assert q("class", host="h0") == ["tiny", "odd", "once", "big", "fresh"]
    assert q("+session_id", host="h1") == ["dup", "dup", "rollout-a"]
    with pytest.raises(ConfigError, match="cannot sort by 'models'"):
        q("models")
    with pytest.raises(ConfigError):
        q("-nope")


def test_in_memory_selection_matches_sql(db: Any) -> None:
    everything = list(query_sessions(db, now=NOW, sort="host"))
    cases: list[dict[str, Any]] = [
        {},
        {"sort": "messages"},
        {"sort": "-cost", "limit": 3},
        {"host": "h0", "sort": "-tokens_out"},
        {"klass": "low"},
        {"state": "live", "sort": "title"},
        {"since": "3d", "sort": "last_ts"},
        {"agent": "ops", "format": "openclaw", "sort": "-session_id"},
    ]
    for kw in cases:
        assert ids(select_rows(everything, now=NOW, **kw)) == ids(
            query_sessions(db, now=NOW, **kw)
        ), kw


def _agent_session(name: bytes) -> tuple[bytes, SessionFacts]:
    """The path and facts of a session of the OpenClaw agent whose directory is ``name``, its
    agent as a reader takes it from the path."""
    path = b"agents/" + name + b"/sessions/s.jsonl"
    agent, session_id = get_reader("openclaw").identify(path)
    return path, SessionFacts(session_id=session_id, agent=agent, bytes=600, lines=1, user=1)


# A directory's name: no slash, and not "." (a path's "." segment is dropped).
@hypothesis.given(name=st.binary(max_size=12).map(lambda b: b"a" + b.replace(b"/", b"_")))
@hypothesis.settings(max_examples=60, deadline=None)
def test_in_memory_agent_filter_takes_a_name_that_is_not_utf8(name: bytes) -> None:
    """An agent named by bytes that are not UTF-8 (a directory on the host) is read with
    those bytes replaced (U+FFFD), and ``--agent`` gives them as ``\\udcNN`` escapes: a
    listing from hosts must match the two, as the index's SQL does (``as_indexed``)."""
    path, facts = _agent_session(name)
    row = row_from_facts("h", path, "openclaw", facts, now=NOW)
    typed = name.decode("utf-8", "surrogateescape")  # as the shell's argument arrives
    assert row.agent == name.decode("utf-8", "replace")
    assert row_filter(agent=typed)([row]) == [row]
    assert select_rows([row], agent=typed, now=NOW) == [row]


def test_agent_filter_of_a_name_that_is_not_utf8_keeps_the_same_rows_from_hosts_and_index(
    tmp_path: Path,
) -> None:
    path, facts = _agent_session(b"caf\xff")
    build_index(tmp_path / "mirror", [Spec("h", "openclaw", path, facts)])
    typed = os.fsdecode(b"caf\xff")
    with contextlib.closing(open_index(tmp_path / "mirror")) as db:
        indexed = list(query_sessions(db, agent=typed, now=NOW))
    from_hosts = select_rows([row_from_facts("h", path, "openclaw", facts)], agent=typed, now=NOW)
    assert ids(indexed) == ids(from_hosts) == ["h:s.jsonl"]


def test_in_memory_selection_takes_the_keywords_of_sql() -> None:
    """The filters are spelt out as keywords in each signature (no ``**filters``): the
    in-memory ones and the sums take exactly the listing's, named, typed and defaulted alike."""

    def keywords(function: Any) -> list[tuple[str, Any, Any]]:
        parameters = inspect.signature(function).parameters.values()
        return [(p.name, p.annotation, p.default) for p in parameters if p.kind is p.KEYWORD_ONLY]

    listing = keywords(query_sessions)
    assert keywords(select_rows) == listing
    filters = [k for k in listing if k[0] not in ("sort", "limit")]
    assert keywords(row_filter) == filters
    assert keywords(session_stats) == filters


def test_row_from_facts_classifies_like_sql(db: Any) -> None:
    sql = {(r.host, r.session_id, r.path): r for r in query_sessions(db, now=NOW)}
    for s in specs():
        row = row_from_facts(
            s.host, s.path, s.fmt, s.facts, state="x", now=NOW.timestamp(), mtime=s.mtime
        )
        expected = sql[(s.host, s.facts.session_id, row.path)]
        assert row.klass == expected.klass, s.path
        assert msgspec.structs.replace(row, state=expected.state) == expected


def test_stats_by_every_key(db: Any) -> None:
    def stats(by: str, **kw: Any) -> dict[str | None, StatsRow]:
        rows = session_stats(db, by, now=NOW, **kw)  # type: ignore[arg-type]
        assert all(r.by == by for r in rows)
        return {r.key: r for r in rows}

    hosts = stats("host")
    assert list(hosts) == ["h0", "h1"]
    h0 = hosts["h0"]
    assert (h0.sessions, h0.messages, h0.tool_calls) == (5, 17 + 2 + 3 + 2 + 0, 4)
    assert (h0.tokens_in, h0.tokens_out, h0.tokens_cache_read, h0.tokens_cache_write) == (
        1010,
        520,
        100,
        50,
    )
    assert h0.cost == pytest.approx(0.6) and h0.bytes == 90_000 + 300 + 4000 + 4000 + 2000
    assert hosts["h1"].cost is None and hosts["h1"].sessions == 3

    models = stats("model")  # a session with several models counts for each
    assert list(models) == ["claude-a", "gpt-b", None]
    assert models["claude-a"].sessions == 2 and models["claude-a"].tokens_in == 1010
    assert models["gpt-b"].sessions == 2 and models["gpt-b"].tokens_in == 3000
    assert models["gpt-b"].cost == 0.5
    assert models[None].sessions == 5

    agents = stats("agent")
    assert [(k, a.sessions) for k, a in agents.items()] == [("main", 2), ("ops", 3), (None, 3)]
    formats = stats("format")
    assert [(k, f.sessions) for k, f in formats.items()] == [("codex", 3), ("openclaw", 5)]

    days = stats("day")
    keys = list(days)
    assert keys[-1] is None and days[None].sessions == 3
    assert keys[:-1] == sorted(keys[:-1])  # chronological
    assert days[(NOW - timedelta(days=2)).date().isoformat()].messages == 17

    # Filters apply before grouping.
    assert list(stats("host", klass="valuable")) == ["h0", "h1"]
    assert stats("host", klass="valuable")["h0"].sessions == 2
    assert stats("host", host="h1", since="25d")["h1"].sessions == 1
    with pytest.raises(ConfigError):
        session_stats(db, "week")  # type: ignore[arg-type]


def test_costs_are_given_without_float_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Costs are sums of floats: ``stats --json`` printed 0.009899999999999999. Rounded to
    10 significant digits in every row and total, over the index and from hosts alike (not to
    fixed decimal places: a response may cost 0.0000369)."""
    noisy, other = 0.0033 + 0.0066, 0.1 + 0.2
    assert (noisy, other) != (0.0099, 0.3)  # the noise is there to be taken out
    dest = tmp_path / "mirror"
    entries = [
        Spec("h0", "openclaw", b"agents/a/sessions/x.jsonl", facts("x", cost=noisy, models=("m",))),
        Spec("h0", "openclaw", b"agents/a/sessions/y.jsonl", facts("y", cost=other, models=("m",))),
        Spec(
            "h1", "openclaw", b"agents/b/sessions/z.jsonl", facts("z", cost=3.69e-5, models=("n",))
        ),
    ]
    build_index(dest, entries)
    code, out, _err = cli(["sessions", "list", "--json", "--sort", "cost", "-d", str(dest)], capsys)
    costs = [json.loads(line)["cost"] for line in out.splitlines()]
    assert code == 0 and costs == [3.69e-5, 0.0099, 0.3]
    assert '"cost":0.0099,' in out and '"cost":0.3,' in out, out
    for by in ("host", "model"):
        code, out, _err = cli(["sessions", "stats", "--by", by, "--json", "-d", str(dest)], capsys)
        assert code == 0 and '"cost":0.3099,' in out and '"cost":0.0000369,' in out, out
    code, out, _err = cli(["sessions", "stats", "-d", str(dest)], capsys)
    assert code == 0 and "$0.31" in out  # the table's cents, as before
    # A row read straight from a host has the same cost as the index's.
    row = row_from_facts("h0", b"agents/a/sessions/x.jsonl", "openclaw", entries[0].facts)
    assert row.cost == 0.0099


def test_a_row_from_a_host_with_a_time_no_date_holds_has_no_last_activity() -> None:
    """A listing's mtime stands in for a session's last activity when no line has a time; a
    host whose clock (or a hostile listing) gave one past year 9999 or before year 1 ended the
    remote listing in datetime's ValueError. Such a row is classed as one with no time."""
    import time

    from remote_sync.index.facts import SessionFacts

    facts = SessionFacts(bytes=4096, user=1, assistant=1)
    for mtime in (1e20, -1e20, 2.6e11, float(2**62)):
        row = row_from_facts("h0", b"a.jsonl", "jsonl", facts, mtime=mtime)
        assert row.klass == "low", mtime  # no activity known: one user message, so low
    row = row_from_facts("h0", b"a.jsonl", "jsonl", facts, mtime=time.time())
    assert row.klass == "valuable"  # active now, by its mtime


def test_library_local_stream_reports_progress_and_stops_on_a_cancel(index_dest: Path) -> None:
    """Over the index, as over hosts: progress events as batches go, and a cancel stops the
    stream before its next batch, the last (partial) one included."""
    import anyio

    from remote_sync import api
    from remote_sync.cancel import CancelRegistry
    from remote_sync.errors import TransferCancelledError
    from remote_sync.events import Progress

    events: list[Progress] = []
    total = len(anyio.run(lambda: api.list_sessions(dest=index_dest, emit=events.append)))
    assert total > 2
    assert [e.phase for e in events] == ["listing"] * -(-total // 50) + ["done"]
    assert (events[-1].files_done, events[-1].files_total) == (total, total)

    registry = CancelRegistry()
    seen: list[int] = []

    async def consume() -> None:
        async for batch in api.stream_sessions(
            dest=index_dest, batch_size=total - 1, registry=registry, transfer_id="t"
        ):
            seen.append(len(batch))
            registry.cancel("t")

    with pytest.raises(TransferCancelledError):
        anyio.run(consume)
    assert seen == [total - 1] and len(registry) == 0


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.5])
def test_stream_sessions_refuses_a_batch_size_below_one(index_dest: Path, batch_size: Any) -> None:
    """Not an empty listing, nor batches of one: a ConfigError before anything is read or any
    host contacted (the host below does not exist)."""
    import anyio

    from remote_sync import api
    from remote_sync.inventory import Host, Source
    from remote_sync.ssh.endpoint import Endpoint

    host = Host("nowhere", Endpoint("127.0.0.1", port=9), Source("openclaw", "/x", ("*",)))

    async def first(**kwargs: Any) -> None:
        async for _batch in api.stream_sessions(batch_size=batch_size, **kwargs):
            break

    for kwargs in ({"dest": index_dest}, {"remote": True, "hosts": [host]}):
        with pytest.raises(ConfigError, match="batch_size must be a whole number"):
            anyio.run(lambda kwargs=kwargs: first(**kwargs))


def test_open_index_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no mirror at") as info:
        open_index(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(info.value)


def test_reading_does_not_take_the_lock_or_block_a_writer(index_dest: Path) -> None:
    reader = open_index(index_dest)
    cursor = reader.execute("SELECT host FROM sessions")
    cursor.fetchone()  # a read in progress
    with MirrorState(index_dest) as state:  # the lock is free; a write commits
        state.set_host("h9", "jsonl", "/x", "h9")
    cursor.fetchall()
    reader.close()


# -- the CLI over the index ------------------------------------------------------------------


def json_rows(out: str, tp: Any = SessionRow) -> list[Any]:
    return [msgspec.json.decode(line, type=tp) for line in out.splitlines()]


def test_cli_list_json(index_dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["sessions", "list", "--json", "--dest", str(index_dest)], capsys)
    assert code == 0, err
    rows = json_rows(out)
    assert len(rows) == 8
    first = json.loads(out.splitlines()[0])
    assert list(first) == [
        "host",
        "path",
        "format",
        "agent",
        "session_id",
        "bytes",
        "lines",
        "messages",
        "user_messages",
        "assistant_messages",
        "tool_messages",
        "system_messages",
        "other_messages",
        "tool_calls",
        "tokens_in",
        "tokens_out",
        "tokens_cache_read",
        "tokens_cache_write",
        "cost",
        "models",
        "first_ts",
        "last_ts",
        "title",
        "malformed",
        "state",
        "class",
    ]
    assert {r.klass for r in rows} <= {"empty", "low", "valuable"}

    # "--sort -FIELD" works with a space too (argparse alone would take -FIELD for an option).
    for sort_args in (["--sort", "-messages"], ["--sort=-messages"]):
        code, out, _ = cli(
            ["sessions", "list", "--json", "--dest", str(index_dest), "--limit", "2", *sort_args],
            capsys,
        )
        assert code == 0 and [r.session_id for r in json_rows(out)] == ["big", "rollout-a"]

    code, out, _ = cli(
        ["sessions", "list", "--json", "-d", str(index_dest), "--host", "h1", "--class", "low"],
        capsys,
    )
    assert [r.path for r in json_rows(out)] == ["sessions/2026/11/02/rollout-b.jsonl"]
    code, out, _ = cli(
        ["sessions", "list", "--json", "-d", str(index_dest), "--state", "deleted"], capsys
    )
    assert [r.session_id for r in json_rows(out)] == ["once"]


def test_cli_values_that_begin_with_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Claude Code and pi name projects "-home-dev-app" and "--srv-app--": `--agent` (and
    `--host`) take such a value after a space, as `--sort -FIELD` does."""
    dest = tmp_path / "mirror"
    build_index(
        dest,
        [
            Spec("-h", "claude-code", b"-home-dev-app/a.jsonl", facts("a", agent="-home-dev-app")),
            Spec("h", "pi", b"--srv-app--/b.jsonl", facts("b", agent="--srv-app--")),
        ],
    )
    for args, want in (
        (["--agent", "-home-dev-app"], ["a"]),
        (["--agent", "--srv-app--"], ["b"]),
        (["--host", "-h"], ["a"]),
        (["--agent=--srv-app--"], ["b"]),
    ):
        code, out, err = cli(["sessions", "list", "--json", "-d", str(dest), *args], capsys)
        assert (code, [r.session_id for r in json_rows(out)]) == (0, want), (args, err)
    code, out, err = cli(
        ["sessions", "stats", "--json", "-d", str(dest), "--agent", "-home-dev-app"], capsys
    )
    assert code == 0 and json.loads(out.splitlines()[-1])["sessions"] == 1, (out, err)
    with pytest.raises(SystemExit) as exited:  # other options still want their value
        main(["sessions", "list", "-d", str(dest), "--limit", "--json"])
    assert exited.value.code == 2


def test_a_model_name_with_a_comma_is_one_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "mirror"
    models = ("acme/chat,2025-06", "b")
    build_index(dest, [Spec("h", "openclaw", b"a/sessions/a.jsonl", facts("a", models=models))])

    def listed() -> list[list[str]]:
        code, out, _ = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
        assert code == 0
        return [r.models for r in json_rows(out)]

    assert listed() == [list(models)]
    code, out, _ = cli(["sessions", "stats", "--json", "-d", str(dest), "--by", "model"], capsys)
    groups = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert sorted(g["key"] for g in groups if g.get("type") != "total") == sorted(models)
    # A row written by an earlier version (rules 1) kept them comma-separated.
    with sqlite3.connect(dest / ".remote-sync" / "state.db") as db:
        db.execute("UPDATE sessions SET models = 'x,y'")
    assert listed() == [["x", "y"]]


def test_cli_list_table_and_default_dest(
    index_dest: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_SYNC_DEST", str(index_dest))
    code, out, err = cli(["sessions", "list"], capsys)
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:5] == ["host", "agent", "session", "class", "state"]
    assert "Refactor the parser" in out and "rollout-a" in out and "deleted" in out
    assert "\\xff-odd" not in out  # paths are not a column; sessions show by id
    # Without the variable: ./mirror relative to the working directory.
    monkeypatch.delenv("REMOTE_SYNC_DEST")
    monkeypatch.chdir(index_dest.parent)
    code, out, _ = cli(["sessions", "list", "--json", "--limit", "1"], capsys)
    assert code == 0 and len(out.splitlines()) == 1


def test_the_table_tells_a_sub_agent_from_its_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The session column cuts ids at 14 characters: a Claude Code sub-agent's id (``<parent
    uuid>/agent-<id>``) was cut at its end too, and read as its parent's; it is now cut in
    its middle."""
    dest = tmp_path / "mirror"
    parent = "3f2a9c1e-1111-4aaa-8bbb-123456789abc"
    sub = f"{parent}/agent-ab12"
    build_index(
        dest,
        [
            Spec("h", "claude-code", f"projects/p/{parent}.jsonl".encode(), facts(parent)),
            Spec(
                "h",
                "claude-code",
                f"projects/p/{parent}/subagents/agent-ab12.jsonl".encode(),
                facts(sub),
            ),
        ],
    )
    code, out, err = cli(["sessions", "list", "--dest", str(dest)], capsys)
    assert code == 0, err
    assert "3f2a9c1e…/agent-ab12" in out and "3f2a9c1e-1111…" in out, out
    # Sub-agents of one parent differ at their ids' ends, which are kept; a short id stays.
    assert _cut_session_id(f"{parent}/agent-a1b2c3d4e5f6a7b8c9") == "3f2a9c1e…/…2c3d4e5f6a7b8c9"
    assert _cut_session_id("ab/cdefghijklmnop") == "ab/cdefghijklmnop"


def test_cli_stats(index_dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for by in ("host", "agent", "format", "model", "day"):
        code, out, err = cli(
            ["sessions", "stats", "--by", by, "--json", "--dest", str(index_dest)], capsys
        )
        assert code == 0, err
        rows = json_rows(out, StatsRow)
        assert rows and all(r.by == by for r in rows)
        if by != "model":
            assert sum(r.sessions for r in rows) == 8
    code, out, _ = cli(["sessions", "stats", "--dest", str(index_dest)], capsys)
    assert code == 0 and "total" in out and "h0" in out and "$0.60" in out
    code, out, _ = cli(
        ["sessions", "stats", "--json", "-d", str(index_dest), "--class", "empty", "--by", "host"],
        capsys,
    )
    assert [(r.key, r.sessions) for r in json_rows(out, StatsRow)] == [("h0", 2)]


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list", "--sort", "models"],
        ["sessions", "list", "--sort", "-nope"],
        ["sessions", "list", "--sort=--messages"],
        ["sessions", "list", "--sort=+-messages"],
        ["sessions", "list", "--since", "last tuesday"],
        ["sessions", "list", "--limit", "-3"],
        ["sessions", "list", "--inventory", "inv.toml"],
        ["sessions", "show", "h9", "x"],
        ["sessions", "show", "h1", "dup"],
        ["sessions", "show", "h0", "no-such-session"],
        ["sessions", "show", "h0", "big", "--page-size", "0"],
    ],
)
def test_cli_usage_errors_exit_2(
    index_dest: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = cli([*args, "--dest", str(index_dest)], capsys)
    assert code == 2 and out == "" and err.startswith("remote-sync: ")


def test_cli_errors_name_what_is_wrong(
    index_dest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-mirror-here"
    for args in (["sessions", "list", "--json"], ["sessions", "stats"], ["index", "rebuild"]):
        code, _, err = cli([*args, "--dest", str(missing)], capsys)
        assert code == 2 and f"no mirror at {missing}" in err
    assert not missing.exists()  # a reader (or a failed rebuild) creates nothing
    code, _, err = cli(["sessions", "show", "h1", "dup", "-d", str(index_dest)], capsys)
    assert "matches 2 sessions" in err
    assert "rollout-b.jsonl" in err and "rollout-c.jsonl" in err
    code, _, err = cli(["sessions", "show", "h9", "x", "-d", str(index_dest)], capsys)
    assert "no host 'h9'" in err and "h0, h1" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: mutually exclusive
        main(["sessions", "show", "h0", "big", "--head", "1", "--tail", "1"])
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_find_session_by_path_id_prefix_and_escaped_path(db: Any) -> None:
    assert find_session(db, "h0", "big").row.path == "agents/main/sessions/big.jsonl"
    assert find_session(db, "h0", "agents/main/sessions/big.jsonl").row.session_id == "big"
    assert find_session(db, "h1", "rollout-a").row.session_id == "rollout-a"
    assert find_session(db, "h1", "roll").row.session_id == "rollout-a"  # unique prefix
    assert find_session(db, "h1", "sessions/2026/11/02/rollout-b.jsonl").row.session_id == "dup"
    odd = find_session(db, "h0", "agents/ops/sessions/\\xff-odd.jsonl")
    assert odd.raw_path == b"agents/ops/sessions/\xff-odd.jsonl"
    # The same path typed raw: the shell passes the byte, Python decodes it as \udcff.
    raw = find_session(db, "h0", os.fsdecode(b"agents/ops/sessions/\xff-odd.jsonl"))
    assert raw.raw_path == odd.raw_path
    with pytest.raises(ConfigError, match="matches 2 sessions"):
        find_session(db, "h1", "dup")
    with pytest.raises(ConfigError, match="no session"):
        find_session(db, "h0", "rollout-a")  # another host's


def test_find_a_path_spelt_as_a_show_over_ssh_takes_it(db: Any) -> None:
    """``./a/b`` and ``a//b`` name the path ``a/b`` from a mirror as they do over SSH; an
    absolute or ``..`` spelling names nothing, and an empty name is refused, not taken for a
    prefix of every session."""
    for given in (
        "./agents/main/sessions/big.jsonl",
        "agents//main/./sessions/big.jsonl",
        "agents/main/sessions//big.jsonl",
    ):
        assert find_session(db, "h0", given).row.session_id == "big", given
    odd = find_session(db, "h0", "./agents/ops/sessions/\\xff-odd.jsonl")
    assert odd.raw_path == b"agents/ops/sessions/\xff-odd.jsonl"
    for outside in ("/agents/main/sessions/big.jsonl", "agents/x/../main/sessions/big.jsonl"):
        with pytest.raises(ConfigError, match="no session"):
            find_session(db, "h0", outside)
    with pytest.raises(ConfigError, match="no session given"):
        find_session(db, "h0", "")


def test_a_name_holding_a_backslash_escape_is_found_as_listed_and_as_typed(
    tmp_path: Path,
) -> None:
    """A file named ``a\\xff.jsonl`` (a backslash, then "xff") lists as ``a\\x5cxff.jsonl``,
    not as the file ``a`` + byte 0xff does (``a\\xff.jsonl``): each is found by its path as
    listed. Typed as it is, a name holding a backslash finds its file when no listed path
    reads so (the listing's form wins: it is what a user copies)."""
    dest = tmp_path / "mirror"
    literal, odd = b"agents/a/sessions/a\\xff.jsonl", b"agents/a/sessions/a\xff.jsonl"
    alone = b"agents/a/sessions/b\\xff.jsonl"
    build_index(
        dest,
        [
            Spec("h", "openclaw", literal, facts("a\\xff", agent="a")),
            Spec("h", "openclaw", odd, facts("a\ufffd", agent="a")),
            Spec("h", "openclaw", alone, facts("b\\xff", agent="a")),
        ],
    )
    conn = open_index(dest)
    try:
        listed = {row.path: row for row in query_sessions(conn)}
        assert sorted(listed) == [
            "agents/a/sessions/a\\x5cxff.jsonl",
            "agents/a/sessions/a\\xff.jsonl",
            "agents/a/sessions/b\\x5cxff.jsonl",
        ]
        for path in listed:
            assert find_session(conn, "h", path).row.path == path
            assert find_session(conn, "h", "./" + path).row.path == path
        assert find_session(conn, "h", os.fsdecode(odd)).raw_path == odd
        assert find_session(conn, "h", alone.decode()).raw_path == alone  # typed as it is
        assert find_session(conn, "h", literal.decode()).raw_path == odd  # as listed
    finally:
        conn.close()


def test_find_a_picoclaw_session_by_its_key(tmp_path: Path) -> None:
    """A picoclaw key names the session its file name spells (':', '/', '\\' → '_'); an id
    as given still matches exactly; other formats' ids are matched as given only."""
    dest = tmp_path / "mirror"
    build_index(
        dest,
        [
            Spec("p", "picoclaw", b"sessions/telegram_42.jsonl", facts("telegram_42")),
            Spec("p", "picoclaw", b"sessions/odd:name.jsonl", facts("odd:name")),
            Spec("o", "openclaw", b"agents/a/sessions/x_y.jsonl", facts("x_y", agent="a")),
        ],
    )
    conn = open_index(dest)
    try:
        for session in ("telegram:42", "telegram/42", "telegram\\42", "telegram_42", "telegram:4"):
            assert find_session(conn, "p", session).row.session_id == "telegram_42", session
        assert find_session(conn, "p", "odd:name").row.session_id == "odd:name"  # exact
        with pytest.raises(ConfigError, match="no session"):
            find_session(conn, "o", "x:y")
    finally:
        conn.close()


def test_arguments_that_are_not_utf8_match_nothing_cleanly(
    index_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte that is not UTF-8 in an argument (``$'\\xff'``) is no session, agent or host
    of the index: a clean answer, not a traceback."""
    odd = os.fsdecode(b"x\xff")
    dest = ["--dest", str(index_dest)]
    code, out, err = cli(["sessions", "show", "h0", odd, *dest], capsys)
    assert code == 2 and "no session" in err and "Traceback" not in err
    code, out, err = cli(["sessions", "list", "--agent", odd, "--json", *dest], capsys)
    assert (code, out, err) == (0, "", "")
    # A host the index has nothing of is said so, as show says it.
    code, out, err = cli(["sessions", "list", "--host", odd, "--json", *dest], capsys)
    assert (code, out) == (0, "") and "no host 'x\\udcff' in the index" in err, err
    # No format has such a name: a usage error, its byte escaped (as any unknown format).
    code, out, err = cli(["sessions", "list", "--format", odd, *dest], capsys)
    assert code == 2 and "unknown format 'x\\udcff'" in err and "Traceback" not in err
    code, out, err = cli(["sessions", "stats", "--agent", odd, "--json", *dest], capsys)
    assert (code, err) == (0, "")
    assert (code, out, err) == cli(
        ["sessions", "stats", "--agent", "nobody", "--json", *dest], capsys
    )


def test_an_error_naming_hostile_files_escapes_their_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host names its files: an error that lists them (the sessions a prefix matches) must
    not send their escape sequences to the terminal, as the table and the messages do not."""
    dest = tmp_path / "mirror"
    title = b"agents/a/sessions/s-\x1b]0;owned\x07.jsonl"
    clear = b"agents/a/sessions/s-\x1b[2J\xe2\x80\xae.jsonl"
    build_index(
        dest,
        [
            Spec("h", "openclaw", title, facts("s-\x1b]0;owned\x07", agent="a")),
            Spec("h", "openclaw", clear, facts("s-\x1b[2J\u202e", agent="a")),
        ],
    )
    code, out, err = cli(["sessions", "show", "h", "s-", "--dest", str(dest)], capsys)
    assert code == 2 and "matches 2 sessions" in err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "s-\\x1b]0;owned\\x07.jsonl" in err and "s-\\x1b[2J\\u202e.jsonl" in err
    # --json keeps the message as it is (JSON escapes it), for a script to read.
    code, out, err = cli(["sessions", "show", "h", "s-", "--json", "--dest", str(dest)], capsys)
    assert "\x1b" not in err and "s-\x1b]0;owned\x07" in json.loads(out)["message"]


def test_remote_flags_without_the_remote_api(
    index_dest: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "remote_sync.api", None)  # import fails
    for args in (["sessions", "list", "--remote"], ["sessions", "show", "h0", "x", "--remote"]):
        code, out, err = cli(args, capsys)
        assert code == 2 and "--remote is not available" in err and out == ""


# -- show: reading only what is shown -------------------------------------------------------------

_LINE = (
    b'{"type":"message","id":"m%d","parentId":null,"timestamp":"2026-11-20T%02d:%02d:%02d.000Z",'
    b'"message":{"role":"%s","content":[{"type":"text","text":"msg %d %s"}]%s}}\n'
)
_USAGE = (
    b',"model":"claude-sonnet-4","usage":{"input":100,"output":40,"cacheRead":7,'
    b'"cacheWrite":3,"cost":{"total":0.002}}'
)


def openclaw_session(sid: str, messages: int, *, pad: int = 100, start: int = 0) -> bytes:
    """An OpenClaw (pi v3) transcript: a header, then alternating user/assistant messages whose
    text starts with ``msg <number>`` (0-based)."""
    head = (
        b'{"type":"session","version":3,"id":"%s","timestamp":"2026-11-20T09:00:00.000Z",'
        b'"cwd":"/work"}\n' % sid.encode()
        if start == 0
        else b""
    )
    filler = b"x" * pad
    out = [head]
    for i in range(start, start + messages):
        user = i % 2 == 0
        out.append(
            _LINE
            % (
                i,
                10 + i // 3600 % 10,
                i // 60 % 60,
                i % 60,
                b"user" if user else b"assistant",
                i,
                filler,
                b"" if user else _USAGE,
            )
        )
    return b"".join(out)


def text_numbers(messages: list[Message]) -> list[int]:
    return [int(m.text.split()[1]) for m in messages]


def make_mirror(dest: Path, host: str, fmt: str, files: dict[str, bytes]) -> None:
    """Mirror files as a sync would leave them (bytes + checkpoints), without an index."""
    with MirrorState(dest) as state:
        state.set_host(host, fmt, "/data", host)
        rows = []
        for i, (rel, data) in enumerate(files.items()):
            local = state.local_path(host, rel.encode())
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            rows.append(
                FileState(host, rel.encode(), "append", len(data), len(data), 0.0, 1, i, b"")
            )
        state.commit(rows)


@pytest.fixture
def show_dest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    dest = tmp_path / "mirror"
    make_mirror(
        dest,
        "h0",
        "openclaw",
        {
            "agents/main/sessions/long-0001.jsonl": openclaw_session("long-0001", 1000),
            "agents/main/sessions/short.jsonl": openclaw_session("short", 3),
            "agents/main/sessions/short.jsonl.reset.2026-11-20T10-00-00.000Z": (
                openclaw_session("short", 2)
            ),
        },
    )
    code, out, err = cli(["index", "rebuild", "--dest", str(dest)], capsys)
    assert code == 0, err
    assert out.strip() == f"3 sessions indexed in {dest}"
    return dest


def test_an_index_counted_by_earlier_rules_warns_until_rebuilt(
    show_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old bytes are never read again to update the index, so rows an earlier version counted
    stay as they were: listings say so (stderr only) until `index rebuild` recounts them."""
    listing = [sys.executable, "-m", "remote_sync.cli", "sessions", "list", "--json"]
    listing += ["--dest", str(show_dest)]

    def run() -> tuple[list[SessionRow], str]:
        done = subprocess.run(listing, capture_output=True, text=True, timeout=60, check=True)
        return json_rows(done.stdout), done.stderr

    rows, err = run()
    assert len(rows) == 3 and err == ""
    with sqlite3.connect(show_dest / ".remote-sync" / "state.db") as db:
        db.execute("DELETE FROM meta WHERE key = 'index_rules'")  # as an older version left it
    with MirrorState(show_dest):  # a sync of this version does not make the old rows current
        pass
    rows, err = run()
    assert len(rows) == 3
    assert "computed by an earlier remote-sync" in err
    assert f"remote-sync index rebuild --dest {show_dest}" in err
    code, _out, _err = cli(["index", "rebuild", "--dest", str(show_dest)], capsys)
    assert code == 0
    rows, err = run()
    assert len(rows) == 3 and err == ""


def full_messages(dest: Path, rel: str) -> list[Message]:
    result = read_messages(dest / "h0" / rel, get_reader("openclaw"))
    return result.messages


def test_show_head_tail_page_json(show_dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    everything = full_messages(show_dest, "agents/main/sessions/long-0001.jsonl")
    assert text_numbers(everything) == list(range(1000))

    def show(*args: str) -> list[Message]:
        code, out, err = cli(
            ["sessions", "show", "h0", *args, "--json", "-d", str(show_dest)], capsys
        )
        assert code == 0, err
        return json_rows(out, Message)

    assert show("long-0001", "--head", "5") == everything[:5]
    assert show("long-0001", "--tail", "5") == everything[-5:]
    assert show("long-0001", "--page", "3", "--page-size", "7") == everything[14:21]
    assert show("long-0001", "--page", "40", "--page-size", "25") == everything[975:]
    assert show("long-0001", "--page", "41", "--page-size", "25") == []
    assert show("long-0001") == everything[:50]  # default: the first page
    assert show("long") == everything[:50]  # a unique prefix of the session id
    assert show("agents/main/sessions/long-0001.jsonl", "--tail", "1") == everything[-1:]
    assert show("long-0001", "--tail", "5000") == everything
    assert show("long-0001", "--head", "5000") == everything
    # The live file and its reset archive share a session id: name one by its path.
    code, _, err = cli(["sessions", "show", "h0", "short", "-d", str(show_dest)], capsys)
    assert code == 2 and "short.jsonl.reset." in err and "agents/main/sessions/short.jsonl " in err
    assert len(show("agents/main/sessions/short.jsonl")) == 3


def test_show_pages_agree_with_a_full_read_across_marks(show_dest: Path) -> None:
    rel = "agents/main/sessions/long-0001.jsonl"
    everything = full_messages(show_dest, rel)
    for size in (1, 7, 50, 255, 256, 257, 999):
        pages = -(-1000 // size)
        for page in {1, 2, pages // 2, pages - 1, pages, pages + 1} - {0}:
            _row, result = show_session(show_dest, "h0", rel, page=page, page_size=size)
            assert result.messages == everything[(page - 1) * size : page * size], (size, page)
            assert result.first == (page - 1) * size
    row, result = show_session(show_dest, "h0", rel, tail=3)
    assert result.first == 997 and row.messages == 1000


def test_show_text_output(show_dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def show(*args: str) -> tuple[int, str, str]:
        return cli(["sessions", "show", "h0", "long-0001", *args, "-d", str(show_dest)], capsys)

    code, out, err = show("--page", "2", "--page-size", "3")
    assert code == 0, err
    assert "#4 assistant" in out and "#5 user" in out and "msg 3 " in out and "msg 5 " in out
    assert "#3" not in out and "#7" not in out
    assert "page 2 of 334 (1000 messages)" in err and "--page 3" in err
    code, out, err = show("--tail", "2")
    assert code == 0 and "#999 user" in out and "#1000 assistant" in out
    assert "claude-sonnet-4" in out


def test_the_tables_and_show_say_their_times_are_utc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A picoclaw on a host at UTC+8 writes 10:00+08:00: the index keeps 02:00Z, and the
    tables and ``show`` printed "02:00" with no zone, which a reader there took for a time
    eight hours off. They now say UTC (as ``--since`` and ``stats --by day`` count)."""
    dest = tmp_path / "mirror"
    lines = [
        {"role": "user", "content": "weather?", "created_at": "2026-01-12T10:00:00+08:00"},
        {"role": "assistant", "content": "sunny", "created_at": "2026-01-12T10:00:09+08:00"},
    ]
    pad = {"role": "assistant", "content": "x" * 500, "created_at": "2026-01-12T10:01:00+08:00"}
    data = b"".join(msgspec.json.encode(line) + b"\n" for line in [*lines, pad])
    make_mirror(dest, "pi", "picoclaw", {"sessions/telegram_1.jsonl": data})
    code, _out, err = cli(["index", "rebuild", "--dest", str(dest)], capsys)
    assert code == 0, err
    code, out, err = cli(["sessions", "list", "--dest", str(dest)], capsys)
    assert code == 0, err
    assert "last activity (UTC)" in out.splitlines()[0] and "2026-01-12 02:01" in out
    code, out, err = cli(["sessions", "show", "pi", "telegram:1", "--dest", str(dest)], capsys)
    assert code == 0, err
    assert "#1 user  2026-01-12 02:00 UTC" in out and "#2 assistant  2026-01-12 02:00 UTC" in out


def test_counts_of_one_are_said_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "1 messages", "1 sessions indexed", "1 pages" were printed; the JSON says counts as
    numbers and is unchanged."""
    dest = tmp_path / "mirror"
    make_mirror(
        dest, "h0", "openclaw", {"agents/main/sessions/one.jsonl": openclaw_session("one", 1)}
    )
    code, out, err = cli(["index", "rebuild", "-d", str(dest)], capsys)
    assert code == 0 and out.startswith("1 session indexed in "), out
    code, out, err = cli(["index", "rebuild", "-d", str(dest), "--json"], capsys)
    assert out == '{"type":"index_rebuilt","sessions":1}\n'
    show = ["sessions", "show", "h0", "one", "-d", str(dest)]
    code, out, err = cli(show, capsys)
    assert code == 0 and "  session one  1 message  live" in out, out
    assert "page 1 of 1 (1 message); read" in err, err
    code, out, err = cli([*show, "--head", "1"], capsys)
    assert code == 0 and "\n1 of 1 message; read" in err, err
    code, out, err = cli([*show, "--page", "2"], capsys)
    assert code == 0 and "page 2 is past the end (1 message, 1 page); read" in err, err
    code, out, err = cli([*show, "--tail", "5"], capsys)
    assert code == 0 and "\n1 of 1 message; read" in err, err


def test_show_reads_only_committed_bytes(
    show_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = "agents/main/sessions/long-0001.jsonl"
    before = show_session(show_dest, "h0", rel, tail=3)[1].messages
    # A sync writing beyond the checkpoint: complete and partial lines not yet committed.
    with open(show_dest / "h0" / rel, "ab") as out:
        out.write(openclaw_session("long-0001", 2, start=1000) + b'{"type":"mess')
    assert show_session(show_dest, "h0", rel, tail=3)[1].messages == before
    assert text_numbers(show_session(show_dest, "h0", rel, head=1000)[1].messages)[-1] == 999


def test_show_of_a_session_whose_mirrored_file_is_gone_names_its_host_and_the_way_back(
    show_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mirrored file removed by hand (or by a cleanup) while its row stays in the index:
    the error named no host (``"host": null`` in the JSON) and told the user to free space or
    fix permissions, which helps with neither."""
    rel = "agents/main/sessions/long-0001.jsonl"
    (show_dest / "h0" / rel).unlink()
    show = ["sessions", "show", "h0", "long-0001", "-d", str(show_dest)]
    code, out, err = cli([*show, "--json"], capsys)
    assert code == 1, err
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["type"] == "error" and event["kind"] == "mirror"
    assert event["host"] == "h0" and event["path"] == rel  # as `sessions list` names it
    assert "No such file or directory" in event["message"]
    assert "free space" not in event["hint"]
    # A sync's recovery fetches it again, or drops its row: a rebuild alone would not.
    assert f"remote-sync sync h0 --dest {show_dest}" in event["hint"], event["hint"]
    assert "index rebuild" not in event["hint"]
    code, out, err = cli(show, capsys)
    assert code == 1 and f"h0: {rel}: cannot read the mirrored session" in err, err


def test_show_piped_prints_a_long_tool_call_and_the_header_each_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped, show wrapped at 160 columns: a tool call whose arguments fill their 160
    characters came out as a lone "→ " and its name on the next line (so `grep '→ edit'`
    missed it), and a long path pushed the header's state onto a line of its own."""
    args = json.dumps({"path": "src/module.py", "diff": "+" * 400})
    sid = "a-session-with-a-rather-long-name-" + "x" * 60
    data = (
        b'{"type":"session","version":3,"id":"s","timestamp":"2026-11-20T09:00:00.000Z"}\n'
        + json.dumps(
            {
                "type": "message",
                "timestamp": "2026-11-20T09:00:01.000Z",
                "message": {
                    "role": "assistant",
                    "content": [
                        {"type": "toolCall", "name": "edit", "arguments": json.loads(args)}
                    ],
                },
            }
        ).encode()
        + b"\n"
    )
    dest = tmp_path / "mirror"
    make_mirror(dest, "h0", "openclaw", {f"agents/main/sessions/{sid}.jsonl": data})
    code, out, err = cli(["index", "rebuild", "-d", str(dest)], capsys)
    assert code == 0, err
    code, out, err = cli(["sessions", "show", "h0", sid, "-d", str(dest)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    (call,) = [line for line in lines if "→" in line]
    assert call.startswith("→ edit({") and call.endswith("…)"), lines
    assert lines[0].startswith("h0 agents/main/sessions/") and lines[0].endswith("  live"), lines


def _with_a_long_line(pad: int) -> bytes:
    """Messages 0 to 5 of a transcript "s", message 3 padded with ``pad`` bytes."""
    return (
        openclaw_session("s", 3)
        + openclaw_session("s", 1, start=3, pad=pad)
        + openclaw_session("s", 2, start=4)
    )


def test_tail_with_a_line_longer_than_the_first_block(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    data = _with_a_long_line(3 * TAIL_FIRST_BLOCK)
    path.write_bytes(data)
    reader = get_reader("openclaw")
    result = read_messages(path, reader, tail=4)
    assert text_numbers(result.messages) == [2, 3, 4, 5]
    assert len(result.messages[1].text) > 3 * TAIL_FIRST_BLOCK
    assert text_numbers(read_messages(path, reader, tail=1).messages) == [5]
    with pytest.raises(ConfigError):
        read_messages(path, reader, head=1, tail=1)
    with pytest.raises(ConfigError):
        read_messages(path, reader, tail=0)


def backward_tail(
    data: bytes, reader: Any, count: int, max_line_bytes: int, block: int, max_block: int
) -> list[Message]:
    """The remote show's tail (``index.remote_show._Backward``) fed ``data`` the way its host sends
    it: blocks from the end backwards, the first of ``block`` bytes, each twice the last while
    under ``max_block``, in chunks of 32 KiB."""
    result = ShowResult()
    backward = _Backward(reader, count, result, max_line_bytes, block, max_block)
    backward.size = end = len(data)
    view = memoryview(data)
    while True:
        start = max(0, end - block)
        assert backward.begin(start), (start, end, block)  # the block the client expects
        for at in range(start, end, 32 * 1024):
            backward.feed(view[at : min(at + 32 * 1024, end)])
        if backward.finish(end - start):
            return result.messages
        end = start
        if block < max_block:  # as the show script doubles it (and the client expects)
            block *= 2


def test_tail_past_a_line_too_long_to_be_a_message_holds_little_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than the decoder takes is no message. Reading backwards past one (to
    find where it starts, and the messages before it), a tail, local or remote, holds no more
    of it than that, not the whole line."""
    import tracemalloc

    from remote_sync.index import show

    monkeypatch.setattr(show, "TAIL_MAX_BLOCK", MiB)
    path = tmp_path / "s.jsonl"
    data = _with_a_long_line(12 * MiB)
    path.write_bytes(data)
    reader = get_reader("openclaw")
    tracemalloc.start()
    try:
        local = read_messages(path, reader, tail=4, max_line_bytes=MiB)
        local_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        remote = backward_tail(data, reader, 4, MiB, TAIL_FIRST_BLOCK, MiB)
        remote_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text_numbers(local.messages) == text_numbers(remote) == [1, 2, 4, 5]
    assert local.bytes_read == len(data)  # the line's start had to be found
    assert local_peak < 5 * MiB and remote_peak < 5 * MiB, (local_peak, remote_peak)
    # A long line within the limit is still a message, both ways.
    assert text_numbers(read_messages(path, reader, tail=4).messages) == [2, 3, 4, 5]
    assert text_numbers(backward_tail(data, reader, 4, 16 * MiB, 1000, MiB)) == [2, 3, 4, 5]


def test_big_session_reads_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 96 MiB transcript: tail, head and a deep page each read a few MiB at most."""
    dest = tmp_path / "mirror"
    n = 96 * 1024  # ~1 KiB per message line
    data = openclaw_session("big", n, pad=900)
    assert len(data) > 90 * MiB
    make_mirror(dest, "h0", "openclaw", {"agents/a/sessions/big.jsonl": data})
    del data
    started = time.perf_counter()
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    rebuilt = time.perf_counter() - started
    capsys.readouterr()
    print(f"rebuild of {n} messages ({96} MiB): {rebuilt:.2f}s")

    row, tail = show_session(dest, "h0", "big", tail=100)
    assert row.messages == n and text_numbers(tail.messages) == list(range(n - 100, n))
    assert tail.bytes_read <= 4 * MiB
    _, head = show_session(dest, "h0", "big", head=10)
    assert text_numbers(head.messages) == list(range(10)) and head.bytes_read <= 128 * 1024
    page = n // 50 - 3  # near the end: the mark before it saves reading ~90 MiB
    _, deep = show_session(dest, "h0", "big", page=page, page_size=50)
    assert text_numbers(deep.messages) == list(range((page - 1) * 50, page * 50))
    assert deep.bytes_read <= (MARK_EVERY + 50) * 1024 + 2 * MiB
    print(f"bytes read: tail {tail.bytes_read}, head {head.bytes_read}, page {deep.bytes_read}")


# -- a real sync of generated sessions ----------------------------------------------------------

_RENAMED = {role: f"{role}_messages" for role in ("user", "assistant", "tool", "system", "other")}
# The cost is compared apart, with pytest.approx: a sum of floats.
_FACT_FIELDS = tuple(k for k in sessiongen.FACT_KEYS if k != "cost")


def expected_row(expected: dict[str, Any]) -> dict[str, Any]:
    out = {_RENAMED.get(k, k): expected[k] for k in _FACT_FIELDS}
    out["messages"] = sum(expected[k] for k in ("user", "assistant", "tool", "system", "other"))
    return out


def shown(messages: list[Message]) -> list[tuple[Any, ...]]:
    return [
        (m.offset, m.role, m.timestamp, m.text, m.model, [c.name for c in m.tool_calls])
        for m in messages
    ]


def generated(messages: list[sessiongen.ExpectedMessage]) -> list[tuple[Any, ...]]:
    return [
        (m.offset, m.role, m.timestamp, m.text, m.model, [c[0] for c in m.tool_calls])
        for m in messages
    ]


def test_every_format_synced_listed_and_shown(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(7)
    host = fleet.names[0]
    # Claude Code's sessions carry older versions' costUSD: the listing's cost is theirs.
    # picoclaw's start with messages of Go's zero time: no time, not year 1.
    trees = {
        fmt: sessiongen.build_tree(
            fmt,
            fleet.path(host) / fmt,
            6,
            rng,
            messages=30,
            cost_usd=fmt == "claude-code",
            migrated=2 if fmt == "picoclaw" else 0,
        )
        for fmt in sessiongen.FORMATS
    }
    lines = [
        "[defaults]",
        f'ssh_config = "{fleet.ssh_config}"',
        f'known_hosts = "{fleet.known_hosts}"',
    ]
    for fmt in trees:
        lines += [
            "[[hosts]]",
            f'name = "{host}-{fmt}"',
            f'address = "{host}"',
            f'format = "{fmt}"',
            f'root = "{fleet.path(host) / fmt}"',
        ]
        if fmt == "jsonl":
            lines.append('include = ["**/*.jsonl"]')
    inventory = tmp_path / "inventory.toml"
    inventory.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "mirror"
    assert main(["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]) == 0
    capsys.readouterr()

    code, out, err = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
    assert code == 0, err
    rows = {(r.host, r.path): r for r in json_rows(out)}
    want = {
        (f"{host}-{fmt}", entry.rel.decode()): entry
        for fmt, tree in trees.items()
        for entry in tree.transcripts
    }
    assert set(rows) == set(want)  # every transcript, no side file
    for key, entry in want.items():
        row = rows[key]
        got = msgspec.structs.asdict(row)
        expected = expected_row(entry.expected)
        assert row.cost == pytest.approx(entry.expected["cost"]), key
        if key[0].endswith("-claude-code"):
            assert row.cost is not None and row.cost > 0, key
        assert {k: got[k] for k in expected} == expected, key
        # OpenClaw's .deleted. tombstones are sessions the agent deleted; its .reset. archives
        # and sessions_archive/, and Codex's archived_sessions/, sessions it archived.
        archives = (".jsonl.reset.", "/sessions_archive/", "archived_sessions/")
        if ".jsonl.deleted." in key[1]:
            state = "deleted"
        elif any(part in key[1] for part in archives):
            state = "archived"
        else:
            state = "live"
        assert row.format == key[0].removeprefix(f"{host}-") and row.state == state, key

    code, out, _ = cli(["sessions", "stats", "--by", "format", "--json", "-d", str(dest)], capsys)
    counts = {r.key: r.sessions for r in json_rows(out, StatsRow)}
    assert counts == {fmt: len(tree.transcripts) for fmt, tree in trees.items()}

    for fmt, tree in trees.items():
        entry = max(tree.transcripts, key=lambda e: len(e.session.messages))
        expected_messages = generated(entry.session.messages)
        name = f"{host}-{fmt}"
        for how, part in (
            (["--tail", "5"], expected_messages[-5:]),
            (["--head", "3"], expected_messages[:3]),
            (["--page", "2", "--page-size", "4"], expected_messages[4:8]),
        ):
            code, out, err = cli(
                ["sessions", "show", name, entry.rel.decode(), *how, "--json", "-d", str(dest)],
                capsys,
            )
            assert code == 0, err
            assert shown(json_rows(out, Message)) == part, (fmt, how)


def test_pages_of_every_format_across_marks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(11)
    dest = tmp_path / "mirror"
    chosen: dict[str, sessiongen.TreeFile] = {}
    for fmt in sessiongen.FORMATS:
        tree = sessiongen.build_tree(fmt, tmp_path / "src" / fmt, 1, rng, messages=600)
        entry = chosen[fmt] = tree.transcripts[0]
        make_mirror(dest, f"h-{fmt}", fmt, {entry.rel.decode(): entry.session.data})
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    capsys.readouterr()
    for fmt, entry in chosen.items():
        everything = generated(entry.session.messages)
        total = len(everything)
        assert total > MARK_EVERY, fmt
        for size in (7, 100, 256):
            for page in (1, 2, total // size, total // size + 1):
                _, result = show_session(
                    dest, f"h-{fmt}", entry.rel.decode(), page=page, page_size=size
                )
                part = everything[(page - 1) * size : page * size]
                assert shown(result.messages) == part, (fmt, size, page)
        _, tail = show_session(dest, f"h-{fmt}", entry.rel.decode(), tail=10)
        assert shown(tail.messages) == everything[-10:] and tail.first == total - 10


def test_sessions_after_a_real_sync(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated: dict[tuple[str, str], int] = {}
    for h, name in enumerate(fleet.names):
        for a in range(2):
            for s in range(3):
                sid = f"{name}-a{a}-s{s}"
                count = 10 + 7 * s + h
                rel = f"agents/agent{a}/sessions/{sid}.jsonl"
                fleet.write(name, rel, openclaw_session(sid, count))
                generated[(name, sid)] = count
        fleet.write(name, "agents/agent0/sessions/sessions.json", "{}")
    inventory = write_inventory(fleet, tmp_path / "inventory.toml")
    dest = tmp_path / "mirror"
    sync = ["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]
    assert main(sync) == 0
    capsys.readouterr()

    code, out, err = cli(["sessions", "list", "--json", "-d", str(dest), "--sort", "host"], capsys)
    assert code == 0, err
    rows = json_rows(out)
    assert {(r.host, r.session_id): r.messages for r in rows} == generated
    for r in rows:
        assert r.format == "openclaw" and r.state == "live" and r.malformed == 0
        assert r.user_messages == (r.messages + 1) // 2
        assert r.tokens_in == 100 * r.assistant_messages and r.models == ["claude-sonnet-4"]
        assert r.agent in ("agent0", "agent1") and r.first_ts == "2026-11-20T09:00:00.000Z"

    # Rewrite one session (shrunk: versions kept), delete another, grow a third; sync again.
    h0 = fleet.names[0]
    fleet.write(h0, "agents/agent0/sessions/h0-a0-s1.jsonl", openclaw_session("h0-a0-s1", 4))
    os.unlink(fleet.path(h0, "agents/agent1/sessions/h0-a1-s2.jsonl"))
    with open(fleet.path(h0, "agents/agent0/sessions/h0-a0-s0.jsonl"), "ab") as grow:
        grow.write(openclaw_session("h0-a0-s0", 5, start=10))
    assert main(sync) == 0
    capsys.readouterr()
    code, out, _ = cli(["sessions", "list", "--json", "-d", str(dest), "--host", h0], capsys)
    states = {r.session_id: (r.state, r.messages) for r in json_rows(out)}
    assert states["h0-a0-s1"] == ("rewritten", 4)
    assert states["h0-a1-s2"] == ("deleted", 24)
    assert states["h0-a0-s0"] == ("live", 15)
    code, out, _ = cli(
        ["sessions", "show", h0, "h0-a0-s0", "--tail", "6", "--json", "-d", str(dest)], capsys
    )
    assert code == 0 and text_numbers(json_rows(out, Message)) == list(range(9, 15))

    code, out, _ = cli(["sessions", "stats", "--json", "-d", str(dest)], capsys)
    by_host = {r.key: r for r in json_rows(out, StatsRow)}
    assert by_host[h0].sessions == 6 and by_host[h0].messages == 15 + 4 + 24 + 10 + 17 + 24

    # Straight from the hosts: the same facts (state aside) without the mirror.
    code, out, err = cli(
        ["sessions", "list", "--remote", "--inventory", str(inventory), "--json", "--host", h0],
        capsys,
    )
    assert code == 0, err
    remote = {r.session_id: r.messages for r in json_rows(out)}
    assert remote == {sid: m for sid, (state, m) in states.items() if state != "deleted"}
    remote_show = ["--remote", "--inventory", str(inventory), "--tail", "6", "--json"]
    code, out, err = cli(["sessions", "show", h0, "h0-a0-s0", *remote_show], capsys)
    assert code == 0, err
    assert text_numbers(json_rows(out, Message)) == list(range(9, 15))


def test_a_session_back_where_one_was_deleted_is_listed_and_shown_from_its_new_bytes(
    ssh_fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A transcript deleted on the host (listed deleted), then another one written at its
    path: the index has the new one, from its own bytes, no longer deleted (``rewritten``:
    the deleted one's copy is kept as a version), and show shows its messages."""
    fleet = ssh_fleet(1)
    name = fleet.names[0]
    rel = "agents/main/sessions/s.jsonl"
    fleet.write(name, rel, openclaw_session("first", 12))
    inventory = write_inventory(fleet, tmp_path / "inventory.toml")
    dest = tmp_path / "mirror"
    sync = ["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]
    listing = ["sessions", "list", "--json", "-d", str(dest)]
    assert main(sync) == 0
    os.unlink(fleet.path(name, rel))
    assert main(sync) == 0
    capsys.readouterr()
    code, out, _ = cli(listing, capsys)
    assert [(r.state, r.messages) for r in json_rows(out)] == [("deleted", 12)]
    fleet.write(name, rel, openclaw_session("second", 5))
    assert main(sync) == 0
    capsys.readouterr()
    code, out, _ = cli(listing, capsys)
    assert [(r.state, r.messages) for r in json_rows(out)] == [("rewritten", 5)]
    code, out, _ = cli(["sessions", "show", name, rel, "--json", "-d", str(dest)], capsys)
    assert code == 0 and text_numbers(json_rows(out, Message)) == list(range(5))
    # It goes on from there: an append continues the new session's facts.
    with open(fleet.path(name, rel), "ab") as grow:
        grow.write(openclaw_session("second", 3, start=5))
    assert main(sync) == 0
    capsys.readouterr()
    code, out, _ = cli(listing, capsys)
    assert [(r.state, r.messages) for r in json_rows(out)] == [("rewritten", 8)]
    assert cli(["index", "rebuild", "-d", str(dest)], capsys)[0] == 0
    code, rebuilt, _ = cli(listing, capsys)
    assert rebuilt == out


def test_names_told_apart_only_by_a_backslash_are_apart_everywhere(
    ssh_fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session named ``a\\xff.jsonl`` (typed backslash) and one named ``a`` + byte 0xff,
    synced from a host: the dry run's plan, the errors, the recap, the listing (from the
    mirror and from the host) and show name each apart, and each listed path shows its own
    session (the literal one's backslash is listed as \\x5c)."""
    from remote_sync.events import decode_event

    fleet = ssh_fleet(1)
    name = fleet.names[0]
    base = b"agents/main/sessions/"
    literal, odd, denied = base + b"a\\xff.jsonl", base + b"a\xff.jsonl", base + b"c\\xfe.jsonl"
    fleet.write(name, os.fsdecode(literal), openclaw_session("literal", 3))
    fleet.write(name, os.fsdecode(odd), openclaw_session("odd", 5))
    fleet.write(name, os.fsdecode(denied), openclaw_session("denied", 1), mode=0)
    listed = {
        literal: "agents/main/sessions/a\\x5cxff.jsonl",
        odd: "agents/main/sessions/a\\xff.jsonl",
    }
    inventory = write_inventory(fleet, tmp_path / "inventory.toml")
    dest = tmp_path / "mirror"
    sync = ["sync", "--inventory", str(inventory), "--dest", str(dest)]
    code, out, _ = cli([*sync, "--json", "--dry-run"], capsys)
    planned = [
        e.path for e in map(decode_event, out.splitlines()) if e.__class__.__name__ == "Planned"
    ]
    assert sorted(planned) == sorted([*listed.values(), "agents/main/sessions/c\\x5cxfe.jsonl"])
    code, out, _ = cli([*sync, "--json"], capsys)
    errors = [
        e for e in map(decode_event, out.splitlines()) if e.__class__.__name__ == "ErrorEvent"
    ]
    assert code == 1 and [e.path for e in errors] == ["agents/main/sessions/c\\x5cxfe.jsonl"]
    code, out, err = cli(sync, capsys)
    assert code == 1 and "c\\x5cxfe.jsonl" in out + err
    code, out, _ = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
    assert sorted(r.path for r in json_rows(out)) == sorted(listed.values())
    remote = ["--remote", "--inventory", str(inventory)]
    code, out, _ = cli(["sessions", "list", "--json", *remote], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["path"] for r in lines if "session_id" in r) == sorted(listed.values())
    # The file it could not read is named in the same form.
    (error,) = [r for r in lines if "session_id" not in r]
    assert error["path"] == "agents/main/sessions/c\\x5cxfe.jsonl", error
    for raw, messages in ((literal, 3), (odd, 5)):
        for where in (["-d", str(dest)], remote):
            code, out, err = cli(["sessions", "show", name, listed[raw], "--json", *where], capsys)
            assert code == 0, err
            assert text_numbers(json_rows(out, Message)) == list(range(messages)), where


def test_show_numbers_a_gemini_record_written_again_like_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gemini-cli writes its last message again under the same id: the row counts it once,
    show renders every version, and show's numbers (page marks, a tail's first, the
    footer's total) count what it renders."""
    from test_formats import gemini_chat

    data, want, rendered = gemini_chat(random.Random(3), turns=160)
    assert len(rendered) > 2 * MARK_EVERY and want["repeated"] > 0
    dest = tmp_path / "mirror"
    rel = "chats/session-2026-11-20T10-00-9f1c2b3a.jsonl"
    make_mirror(dest, "g", "jsonl", {rel: data})
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    everything = rendered

    def got(messages: list[Message]) -> list[tuple[str, str, list[str]]]:
        return [(m.role, m.text, [c.name for c in m.tool_calls]) for m in messages]

    row, tail = show_session(dest, "g", rel, tail=7)
    assert row.messages == want["user"] + want["assistant"] + want["system"]
    assert row.tool_calls == want["tool_calls"] and row.tokens_in == want["tokens_in"]
    assert got(tail.messages) == everything[-7:] and tail.first == len(everything) - 7
    assert tail.total == len(everything)
    for size in (50, 256):
        for page in (1, 2, len(everything) // size + 1):
            _, result = show_session(dest, "g", rel, page=page, page_size=size)
            assert got(result.messages) == everything[(page - 1) * size : page * size]
    capsys.readouterr()
    assert main(["sessions", "show", "g", rel, "--dest", str(dest), "--page", "2"]) == 0
    pages = -(-len(everything) // 50)
    footer = capsys.readouterr().err
    assert f"page 2 of {pages} ({len(everything)} messages, {want['repeated']} of them" in footer


def test_show_numbers_a_codex_forks_copied_history(tmp_path: Path) -> None:
    """show renders a fork's copy of its parent's history (repeated: not counted), and
    numbers it with the fork's own messages."""
    from test_formats import codex_fork, codex_parent

    pid, parent = codex_parent()
    fid, data = codex_fork(parent, pid, 1_790_003_600_000)
    dest = tmp_path / "mirror"
    rel = f"sessions/2026/09/21/rollout-2026-09-21T01-00-00-{fid}.jsonl"
    make_mirror(dest, "c", "codex", {rel: data})
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    row, tail = show_session(dest, "c", fid, tail=5)
    assert (row.messages, row.user_messages, tail.total, tail.first) == (4, 1, 12, 7)
    assert [m.role for m in tail.messages] == ["tool", "user", "assistant", "assistant", "tool"]
    assert tail.messages[1].text == "question 9"
    _, page = show_session(dest, "c", fid, page=2, page_size=4)
    assert [m.text for m in page.messages if m.role == "user"] == ["question 2"]


def test_index_rebuild_waits_for_no_one(
    show_dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MirrorState(show_dest):  # a sync holds the lock: rebuild refuses, reading still works
        code, _, err = cli(["index", "rebuild", "--dest", str(show_dest)], capsys)
        # Held in this process, so said to be this process's (another's would name its pid).
        assert code == 75 and "another sync in this process" in err
        code, out, err = cli(["sessions", "list", "--json", "--dest", str(show_dest)], capsys)
        assert code == 0 and len(out.splitlines()) == 3, err
    code, out, _ = cli(["index", "rebuild", "--dest", str(show_dest), "--json"], capsys)
    assert code == 0 and json.loads(out) == {"type": "index_rebuilt", "sessions": 3}


# -- start-up cost ------------------------------------------------------------------------------

_HEAVY = ("asyncssh", "anyio", "rich", "remote_sync.mirror.engine", "remote_sync.ssh.pool")


def test_cli_import_and_json_listing_stay_light(index_dest: Path) -> None:
    code = (
        "import sys\n"
        "from remote_sync import cli\n"
        f"heavy = {_HEAVY!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "sys.stdout.flush()\n"
        f"cli.main(['sessions', 'list', '--json', '--dest', {str(index_dest)!r}])\n"
        "sys.stdout.flush()\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "[]" and lines[-1] == "[]" and len(lines) == 10


def build_many(dest: Path, n: int) -> None:
    now = datetime.now(UTC)
    entries = [
        Spec(
            f"h{i % 4}",
            "openclaw",
            f"agents/a{i % 9}/sessions/s{i:06d}.jsonl".encode(),
            facts(
                f"s{i:06d}",
                agent=f"a{i % 9}",
                size=300 + 97 * i,
                user=i % 5,
                assistant=3,
                tool_calls=i % 7,
                tokens=(i, 2 * i, 0, 0),
                cost=i / 1000,
                models=("claude-a", "gpt-b")[: i % 3],
                last=now - timedelta(minutes=i),
                title=f"session number {i} about something",
            ),
        )
        for i in range(n)
    ]
    build_index(dest, entries)


def test_list_json_over_10000_sessions_as_a_process(tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    build_many(dest, 10_000)
    argv = [sys.executable, "-m", "remote_sync.cli", "sessions", "list", "--json", "--dest"]
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([*argv, str(dest)], capture_output=True, check=True)
        timings.append(time.perf_counter() - started)
    lines = done.stdout.splitlines()
    assert len(lines) == 10_000
    assert msgspec.json.decode(lines[0], type=SessionRow).session_id == "s000000"
    print(f"sessions list --json, 10,000 sessions: best {min(timings):.3f}s of {timings}")


def test_list_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    build_many(dest, 20_000)
    argv = [sys.executable, "-m", "remote_sync.cli", "sessions", "list", "--json", "-d", str(dest)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_the_readers_read_again_when_a_sync_started_during_their_read(
    show_dest: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened while no sync has it open, the state is read as a file nothing changes; a sync
    that starts during the read can make it fail as "malformed" on a sound database. Only
    `check` read it again: `sessions list`, `show` and `stats` (and the library's listing and
    stats) failed, exit 2, telling the user to run again. They now read it again on a new
    connection, as `check` does, and answer as an undisturbed read would. A database that is
    damaged (the same error while nothing changed) is still said, at once."""
    import anyio

    from remote_sync import api

    dest = ["--dest", str(show_dest)]
    commands = {
        "list": ["sessions", "list", "--json", *dest],
        "stats": ["sessions", "stats", "--json", "--by", "agent", *dest],
        "show": ["sessions", "show", "h0", "long-0001", "--tail", "3", "--json", *dest],
        "unknown host": ["sessions", "list", "--json", "--host", "nobody", *dest],
    }
    expected = {name: cli(args, capsys) for name, args in commands.items()}
    assert expected["list"][0] == 0 and len(json_rows(expected["list"][1])) == 3
    assert "nobody" in expected["unknown host"][2]
    for name, args in commands.items():
        opened = tear_reads(monkeypatch, show_dest, torn=1)
        assert cli(args, capsys) == expected[name], name
        assert len(opened) >= 2, name  # read again on a new connection
        monkeypatch.undo()

    rows = anyio.run(lambda: api.list_sessions(dest=show_dest))
    stats = anyio.run(lambda: api.session_stats(dest=show_dest, by="agent"))
    tear_reads(monkeypatch, show_dest, torn=1)
    assert anyio.run(lambda: api.list_sessions(dest=show_dest)) == rows
    tear_reads(monkeypatch, show_dest, torn=1)
    assert anyio.run(lambda: api.session_stats(dest=show_dest, by="agent")) == stats
    monkeypatch.undo()

    # Damaged: the same error while the files stay as they were is the database's own.
    for args in commands.values():
        opened = tear_reads(monkeypatch, show_dest, torn=1000, sync=False)
        code, out, err = cli(args, capsys)
        said = out + err  # with --json, an error line on stdout
        assert code == 2 and "cannot read the mirror's state database" in said, args
        assert "malformed" in said and "run again" in said, said
        assert len(opened) == 1  # not read again: nothing changed
        monkeypatch.undo()


def test_the_librarys_listing_says_a_damaged_state_as_its_stats_do(
    show_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state SQLite refuses while nothing changes it is a ConfigError naming the mirror and
    what to do, from api.list_sessions as from api.session_stats: the listing raised
    sqlite3.DatabaseError, outside the library's errors, naming nothing."""
    import anyio

    from remote_sync import api

    for call in (
        lambda: api.list_sessions(dest=show_dest),
        lambda: api.session_stats(dest=show_dest, by="agent"),
    ):
        tear_reads(monkeypatch, show_dest, torn=1000, sync=False)
        with pytest.raises(ConfigError) as raised:
            anyio.run(call)
        said = f"{raised.value} {raised.value.hint}"
        assert f"cannot read the mirror's state database in {show_dest}" in said, said
        assert "malformed" in said and "run again" in said, said
        monkeypatch.undo()


def test_a_reader_gives_up_when_syncs_keep_changing_the_state(
    show_dest: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read spoilt by a sync every time is read again a bounded number of times, then said
    (run again), not read forever."""
    from remote_sync.mirror.state_reader import REREADS

    opened = tear_reads(monkeypatch, show_dest, torn=1000)
    code, out, err = cli(["sessions", "stats", "--dest", str(show_dest)], capsys)
    assert (code, out) == (2, "")
    assert "kept changing while it was read" in err and "run it again" in err, err
    assert len(opened) == REREADS + 1  # the first open and each read again


def _state_descriptors(dest: Path) -> list[str]:
    """The descriptors this process holds open on the state database's files."""
    state = str(state_database(dest))
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith(state):
                found.append(fd)
    return found


def test_the_librarys_listing_closes_every_connection_it_read_again_on(
    show_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing whose reads a sync spoils every time gives up after its rereads, and each
    connection it opened is closed by then, the last one too: none waits for the garbage
    collector (the error raised holds the frames that held it)."""
    import anyio

    from remote_sync import api
    from remote_sync.mirror.state_reader import REREADS

    assert not _state_descriptors(show_dest)
    opened = tear_reads(monkeypatch, show_dest, torn=1000)
    with pytest.raises(ConfigError, match="kept changing while it was read") as raised:
        anyio.run(lambda: api.list_sessions(dest=show_dest))
    assert len(opened) == REREADS + 1
    assert raised.value is not None  # held: what it refers to is not collected yet
    assert not _state_descriptors(show_dest)


@pytest.mark.parametrize("sync_open", [False, True], ids=["read-as-a-file", "read-through-wal"])
def test_a_slow_listing_is_a_snapshot_whatever_a_sync_commits_between_its_rows(
    tmp_path: Path, sync_open: bool
) -> None:
    """A listing consumed slowly (``sessions list --json | less``) gives the rows as they were
    when its first row came, though a sync commits between its rows and checkpoints into the
    database file: none torn, none of the sync's. Opened with no sync running the state is
    read as a file nothing changes (``immutable``), else through the sync's WAL: both."""
    from remote_sync.index.query import query_sessions, state_database
    from remote_sync.mirror.state_reader import stream_state

    dest = tmp_path / "mirror"
    build_many(dest, 2100)  # more rows than two fetches of the query's cursor hold
    before = list(stream_state(dest, query_sessions))
    db_path = state_database(dest)
    sync = sqlite3.connect(db_path, isolation_level=None) if sync_open else None
    if sync is not None:
        sync.execute("PRAGMA journal_mode = WAL")
        sync.execute("BEGIN IMMEDIATE")  # holds the -wal file open, as a running sync does
        sync.execute("COMMIT")
    rows = stream_state(dest, query_sessions)
    try:
        first = next(rows)
        writer = sync or sqlite3.connect(db_path, isolation_level=None)
        writer.execute("PRAGMA journal_mode = WAL")
        for _ in range(3):  # commits, each checkpointed into the database file
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE sessions SET title = 'changed', user_messages = 99")
            writer.execute("DELETE FROM sessions WHERE bytes % 3 = 0")
            writer.execute("UPDATE sessions SET host = 'zz' WHERE bytes % 3 = 1")
            writer.execute("COMMIT")
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        writer.execute("VACUUM")  # every page moved
        writer.close()
        rest = list(rows)
    finally:
        rows.close()
    assert len(before) == 2100 and [first, *rest] == before


def test_every_sort_of_a_listing_is_done_before_its_first_row(tmp_path: Path) -> None:
    """What makes a listing read as a file a snapshot (the test above): SQLite builds its
    sorter from every matching row before the first comes out, and the rows after it come
    from the sorter, never from the database file a sync may checkpoint into meanwhile. An
    order an index gave (no sorter) would read the file row by row: torn rows, "malformed".
    So no sort of ``sessions list`` may be one an index gives."""
    from remote_sync.index.query import SORT_FIELDS, open_index, query_sessions

    dest = tmp_path / "mirror"
    build_many(dest, 10)
    db = open_index(dest, warn=False)
    try:
        for field in SORT_FIELDS:
            for sort in (field, f"-{field}"):
                ran: list[str] = []
                db.set_trace_callback(ran.append)
                rows = query_sessions(db, sort=sort)
                db.set_trace_callback(None)
                assert len(list(rows)) == 10
                (sql,) = [s for s in ran if s.lstrip().startswith("SELECT")]
                plan = db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
                assert any("USE TEMP B-TREE FOR ORDER BY" in step[-1] for step in plan), sort
    finally:
        db.close()
