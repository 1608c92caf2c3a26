"""The session index as `remote-sync sync` keeps it: from new bytes only, equal to a rebuild."""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from indexref import delete_session_by_statements, index_by_records, put_session_by_statements
from sessiongen import build_tree, facts_dict, generate
from sshfleet import SSHFleet

from remote_sync import api
from remote_sync.cli import main
from remote_sync.decode.jsonl import DEFAULT_MAX_LINE_BYTES, JsonlDecoder
from remote_sync.formats.readers import get_reader
from remote_sync.index.facts import SessionFacts
from remote_sync.index.store import IndexRows, _facts_decoder, ensure_schema, models_text
from remote_sync.index.update import FileIndexer, IndexUpdate, rebuild_index
from remote_sync.inventory import load_inventory
from remote_sync.mirror import commits
from remote_sync.mirror.durable import Pending
from remote_sync.mirror.state import FileState, MirrorState

FORMATS = ["openclaw", "claude-code", "codex", "picoclaw", "pi"]


def inventory(fleet: SSHFleet, tmp_path: Path, fmt: str, root: Path) -> Path:
    path = tmp_path / f"{fmt}.toml"
    path.write_text(
        "[defaults]\n"
        f'ssh_config = "{fleet.ssh_config}"\nknown_hosts = "{fleet.known_hosts}"\n'
        f'[[hosts]]\nname = "h0"\naddress = "h0"\nformat = "{fmt}"\nroot = "{root}"\n'
    )
    return path


def served_tree(
    fleet: SSHFleet,
    tmp_path: Path,
    fmt: str,
    subdir: str,
    count: int,
    rng: random.Random,
    **kw: Any,
) -> tuple[Any, Path, Path]:
    """A generated tree of ``fmt`` on host h0, its inventory, and a destination for it."""
    root = fleet.path("h0", subdir)
    tree = build_tree(fmt, root, count, rng, **kw)
    make_readable(root)
    return tree, inventory(fleet, tmp_path, fmt, root), tmp_path / "m"


def make_readable(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def index_facts(dest: Path) -> dict[bytes, dict[str, object]]:
    db = sqlite3.connect(dest / ".remote-sync" / "state.db")
    try:
        return {
            bytes(path): facts_dict(_facts_decoder.decode(blob))
            for path, blob in db.execute("SELECT path, facts FROM session_facts WHERE host = 'h0'")
        }
    finally:
        db.close()


def sync(inv: Path, dest: Path) -> int:
    return main(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_sync_indexes_every_format_as_generated(
    fmt: str, fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fleet.path("h0", fmt)
    tree = build_tree(
        fmt,
        root,
        6,
        random.Random(fmt),
        messages=30,
        malformed=2,
        blank_lines=2,
        huge_line_bytes=300_000,
        unicode=True,
    )
    make_readable(root)
    dest = tmp_path / "m"
    assert sync(inventory(fleet, tmp_path, fmt, root), dest) in (0, 1)
    capsys.readouterr()
    got = index_facts(dest)
    want = {t.rel: t.expected for t in tree.transcripts}
    assert sorted(got) == sorted(want)
    for rel, expected in want.items():
        facts = dict(got[rel])
        facts.pop("recent_usage_keys", None)
        for key, value in expected.items():
            assert facts[key] == value, (rel, key)


def test_clawpals_sessions_archive_is_mirrored_and_indexed(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ClawPal archives OpenClaw transcripts into ``agents/<a>/sessions_archive/``, which the
    reader reads: the format's default includes mirror it, so its sessions are indexed."""
    rng = random.Random(31)
    root = fleet.path("h0", "clawpal")
    tree = build_tree("openclaw", root, 3, rng, messages=10)
    archived = generate("openclaw", rng, messages=12, session_id="0ld5e55")
    rel = b"agents/main/sessions_archive/0ld5e55.jsonl"
    (root / rel.decode()).parent.mkdir(parents=True, exist_ok=True)
    (root / rel.decode()).write_bytes(archived.data)
    make_readable(root)
    dest = tmp_path / "m"
    assert sync(inventory(fleet, tmp_path, "openclaw", root), dest) == 0
    capsys.readouterr()
    got = index_facts(dest)
    assert sorted(got) == sorted([t.rel for t in tree.transcripts] + [rel])
    expected = dict(archived.expected, agent="main", session_id="0ld5e55")
    assert {k: got[rel][k] for k in expected} == expected
    assert (dest / "h0" / rel.decode()).read_bytes() == archived.data


def test_index_after_many_incremental_syncs_equals_a_rebuild(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(7)
    tree, inv, dest = served_tree(
        fleet, tmp_path, "claude-code", "cc", 5, rng, messages=20, split_responses=True
    )
    assert sync(inv, dest) == 0
    for round_no in range(6):
        for t in rng.sample(tree.transcripts, 3):
            more = generate(
                "claude-code",
                rng,
                messages=rng.randint(1, 8),
                split_responses=True,
                malformed=round_no % 2,
            )
            # Append in two writes: the first ends mid-line, as an agent's buffered write may.
            cut = rng.randint(1, len(more.data) - 1)
            with open(t.path, "ab") as out:
                out.write(more.data[:cut])
            assert sync(inv, dest) == 0
            with open(t.path, "ab") as out:
                out.write(more.data[cut:])
        assert sync(inv, dest) == 0
    capsys.readouterr()
    incremental = index_facts(dest)
    assert rebuild_index(dest) == len(tree.transcripts)
    rebuilt = index_facts(dest)
    assert incremental == rebuilt
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0


def test_a_codex_fork_synced_in_pieces_counts_its_parent_once(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Codex fork copies its parent's rollout before its own turns: synced while it is
    written (cut inside the copy and mid-line), its facts equal a rebuild's, and the
    totals count the parent's messages and tokens once."""
    from test_formats import codex_fork, codex_parent

    root = fleet.path("h0", "codex")
    day = root / "sessions" / "2026" / "09" / "21"
    day.mkdir(parents=True)
    pid, parent = codex_parent()
    fid, data = codex_fork(parent, pid, 1_790_003_600_000)
    (day / f"rollout-2026-09-21T00-00-00-{pid}.jsonl").write_bytes(b"".join(parent))
    fork = day / f"rollout-2026-09-21T01-00-00-{fid}.jsonl"
    fork.write_bytes(b"")
    make_readable(root)
    inv, dest = inventory(fleet, tmp_path, "codex", root), tmp_path / "m"
    rng = random.Random(12)
    cuts = sorted(rng.sample(range(1, len(data)), 6))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        with open(fork, "ab") as out:
            out.write(data[start:end])
        assert sync(inv, dest) == 0
    capsys.readouterr()
    incremental = index_facts(dest)
    rebuild_index(dest)
    assert index_facts(dest) == incremental
    assert main(["sessions", "stats", "--dest", str(dest), "--json"]) == 0
    (total,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (total["sessions"], total["messages"], total["tool_calls"]) == (2, 8 + 4, 2 + 1)
    assert (total["tokens_out"], total["tokens_cache_read"]) == (300 + 50, 1000 + 100)


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_rounds_with_no_index_then_indexed_rounds_equal_a_rebuild(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    worker: bool,
) -> None:
    """A --no-index run moves bytes the index does not see: the next indexed run indexes
    what it missed from the mirror (appended to since or not), as `index rebuild` would."""
    if worker:
        monkeypatch.setenv("REMOTE_SYNC_INDEX_WORKER_MIN_BYTES", "0")
    rng = random.Random(21)
    tree, inv, dest = served_tree(fleet, tmp_path, "openclaw", "oc", 4, rng, messages=300)
    grown, still = tree.transcripts[0], tree.transcripts[1]

    def grow(t: object) -> None:
        more = generate("openclaw", rng, messages=rng.randint(2, 6)).data
        with open(t.path, "ab") as out:  # type: ignore[attr-defined]
            out.write(more.split(b"\n", 1)[1])  # its lines, without a second header

    def assert_a_rebuild() -> None:
        incremental = index_facts(dest)
        assert sorted(incremental) == sorted(t.rel for t in tree.transcripts)
        rebuild_index(dest)
        assert index_facts(dest) == incremental

    assert main(["sync", "--inventory", str(inv), "--dest", str(dest), "--no-index"]) == 0
    grow(grown)
    assert sync(inv, dest) == 0
    assert_a_rebuild()
    # Page 1 of the grown session starts at its first message, as the marks say.
    rel = grown.rel.decode()
    capsys.readouterr()
    assert main(["sessions", "show", "h0", rel, "--dest", str(dest), "--page", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["offset"] == len(grown.path.read_bytes().split(b"\n", 1)[0]) + 1
    # An indexed mirror, one --no-index round in between.
    grow(grown)
    grow(still)
    assert main(["sync", "--inventory", str(inv), "--dest", str(dest), "--no-index"]) == 0
    grow(grown)
    assert sync(inv, dest) == 0
    capsys.readouterr()
    assert_a_rebuild()


def test_rewritten_session_is_reindexed_from_its_new_content(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(3)
    tree, inv, dest = served_tree(
        fleet, tmp_path, "picoclaw", "pico", 3, rng, messages=30, compacted=0.0
    )
    assert sync(inv, dest) == 0
    target = tree.transcripts[0]
    smaller = generate("picoclaw", rng, messages=4)
    target.path.write_bytes(smaller.data)  # compaction rewrites the file shorter
    assert sync(inv, dest) == 0
    capsys.readouterr()
    facts = index_facts(dest)[target.rel]
    assert facts["user"] == smaller.expected["user"]
    assert facts["bytes"] == len(smaller.data)


def test_a_session_archived_by_the_host_counts_once(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw's /reset renames ``<id>.jsonl`` to ``<id>.jsonl.reset.<time>``: the old path
    is gone from the host, the same conversation is there under the new name."""
    rng = random.Random(4)
    tree, inv, dest = served_tree(fleet, tmp_path, "openclaw", "claw", 3, rng, messages=20)
    assert sync(inv, dest) == 0

    def stats() -> dict[str, object]:
        capsys.readouterr()
        assert main(["sessions", "stats", "--dest", str(dest), "--json"]) == 0
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return row  # type: ignore[no-any-return]

    before = stats()
    target = tree.transcripts[0]
    archived = target.path.with_name(target.path.name + ".reset.2026-11-21T10-00-00.000Z")
    os.rename(target.path, archived)
    assert sync(inv, dest) == 0
    assert stats() == before  # not twice
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The archive is listed as archived (the host's /reset archived it), in place of its old
    # name, which is renamed.
    states = {r["path"]: r["state"] for r in listed}
    assert len(listed) == 3 and states[archived.relative_to(tree.root).as_posix()] == "archived"
    assert main(["sessions", "list", "--dest", str(dest), "--state", "renamed", "--json"]) == 0
    (old,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert old["path"] == target.rel.decode()
    # By id, the current name is meant (the old one would make it ambiguous).
    assert main(["sessions", "show", "h0", old["session_id"], "--dest", str(dest), "--json"]) == 0
    # Deleted outright: a deletion, counted as such.
    os.unlink(archived)
    assert sync(inv, dest) == 0
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--state", "deleted", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize("grown_to", [900, 5000])
def test_a_session_archived_after_a_short_first_copy_counts_once(
    grown_to: int, fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mirrored with its first prompt only (under the KiB a fingerprint covers), then grown
    and archived by /reset: still the same file under another name, not a deletion."""
    root = fleet.path("h0", "claw")
    sessions = "claw/agents/main/sessions"

    def line(record: dict[str, object]) -> bytes:
        return json.dumps(record).encode() + b"\n"

    first = line({"type": "session", "version": 3, "id": "s1", "timestamp": "2026-11-20T10:00:00Z"})
    first += line({"type": "message", "message": {"role": "user", "content": "fix the build"}})
    assert len(first) < 300
    path = fleet.write("h0", f"{sessions}/s1.jsonl", first)
    make_readable(root)
    inv = inventory(fleet, tmp_path, "openclaw", root)
    dest = tmp_path / "m"
    assert sync(inv, dest) == 0
    reply = {"type": "message", "message": {"role": "assistant", "content": "on it"}}
    with open(path, "ab") as grown:
        while os.path.getsize(path) < grown_to:
            grown.write(line(reply))
            grown.flush()
    os.rename(path, path.with_name("s1.jsonl.reset.2026-11-21T10-00-00.000Z"))
    assert sync(inv, dest) == 0
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--state", "renamed", "--json"]) == 0
    (old,) = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    assert old["path"] == "agents/main/sessions/s1.jsonl"
    assert main(["sessions", "stats", "--dest", str(dest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == 1


def test_a_session_the_agent_deleted_is_listed_as_deleted_once(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw deletes a session by renaming it to ``<id>.jsonl.deleted.<time>``: the file is
    still on the host, the conversation is deleted, and it counts once, as deleted."""
    rng = random.Random(6)
    tree, inv, dest = served_tree(fleet, tmp_path, "openclaw", "claw", 3, rng, messages=20)
    assert sync(inv, dest) == 0
    target = tree.transcripts[0]
    tombstone = target.path.with_name(target.path.name + ".deleted.2026-11-21T10-00-00.000Z")
    os.rename(target.path, tombstone)
    assert sync(inv, dest) == 0

    def listed(*args: str) -> list[dict[str, object]]:
        capsys.readouterr()
        assert main(["sessions", "list", "--dest", str(dest), "--json", *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    states = sorted(str(r["state"]) for r in listed())
    assert states == ["archived", "deleted", "live"]  # the tree holds a /reset archive too
    (deleted,) = listed("--state", "deleted")
    assert str(deleted["path"]).endswith(".deleted.2026-11-21T10-00-00.000Z")
    (old,) = listed("--state", "renamed")
    assert old["path"] == target.rel.decode()
    remote = anyio.run(lambda: api.list_sessions(remote=True, hosts=load_inventory(inv).hosts))
    assert sorted(r.state for r in remote) == states


def test_a_transcript_without_a_whole_line_has_no_session(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fleet.path("h0", "claw")
    tree = build_tree("openclaw", root, 2, random.Random(5), messages=5)
    make_readable(root)
    partial = root / "agents/main/sessions/new-session.jsonl"
    partial.write_bytes(b'{"type":"session","id":"x"')  # the agent is mid-write
    inv = inventory(fleet, tmp_path, "openclaw", root)
    dest = tmp_path / "m"
    assert sync(inv, dest) == 0
    target = tree.transcripts[0]
    target.path.write_bytes(b'{"type":"session","id":"y"')  # rewritten: a partial line only
    assert sync(inv, dest) == 0
    capsys.readouterr()
    sessions = set(index_facts(dest))
    assert partial.relative_to(root).as_posix().encode() not in sessions
    assert target.rel not in sessions
    before = index_facts(dest)
    rebuild_index(dest)
    assert index_facts(dest) == before


def test_token_counts_beyond_sqlite_integers_are_stored_saturated(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage line may claim up to 2**64 - 1 tokens (valid JSON): the session is stored with
    its sums held at 2**63 - 1, in the sync, after it grows, and by a rebuild, and the remote
    listing says the same (such a row once failed every later sync in recovery)."""
    top = 2**63 - 1

    def turn(n: int, tokens: int) -> bytes:
        user = {"type": "user", "message": {"role": "user", "content": f"question {n}"}}
        usage = {"input_tokens": 10, "output_tokens": tokens, "cache_read_input_tokens": top}
        answer = {
            "type": "assistant",
            "requestId": f"req_{n}",
            "timestamp": "2026-11-20T10:00:00.000Z",
            "message": {"id": f"msg_{n}", "role": "assistant", "usage": usage},
        }
        return b"".join(json.dumps(x).encode() + b"\n" for x in (user, answer))

    root = fleet.path("h0", "cc")
    rel = "projects/-home-u/11111111-2222-3333-4444-555555555555.jsonl"
    fleet.write("h0", f"cc/{rel}", turn(1, 10**19))
    make_readable(root)
    inv = inventory(fleet, tmp_path, "claude-code", root)
    dest = tmp_path / "m"
    assert sync(inv, dest) == 0
    with open(fleet.path("h0", f"cc/{rel}"), "ab") as grown:
        grown.write(turn(2, 5))
    assert sync(inv, dest) == 0
    assert sync(inv, dest) == 0  # recovery and a round with nothing to do
    capsys.readouterr()
    facts = index_facts(dest)[rel.encode()]
    assert (facts["tokens_in"], facts["tokens_out"], facts["tokens_cache_read"]) == (20, top, top)
    before = index_facts(dest)
    rebuild_index(dest)
    assert index_facts(dest) == before
    hosts = load_inventory(inv).hosts
    local, remote = anyio.run(lambda: _both_listings(dest, hosts), backend="asyncio")
    assert [(r.tokens_out, r.tokens_cache_read) for r in local] == [(top, top)]
    assert [(r.tokens_out, r.tokens_cache_read) for r in remote] == [(top, top)]


async def _both_listings(dest: Path, hosts: Any) -> tuple[list[Any], list[Any]]:
    return await api.list_sessions(dest=dest), await api.list_sessions(remote=True, hosts=hosts)


def synced_openclaw(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    count: int,
    rng: random.Random,
    **knobs: Any,
) -> tuple[Path, list[Any]]:
    """A generated OpenClaw tree on h0, synced: the destination and the inventory's hosts."""
    root = fleet.path("h0", "oc")
    build_tree("openclaw", root, count, rng, **knobs)
    make_readable(root)
    inv = inventory(fleet, tmp_path, "openclaw", root)
    dest = tmp_path / "m"
    assert sync(inv, dest) == 0
    capsys.readouterr()
    return dest, load_inventory(inv).hosts


def test_remote_and_local_listing_agree(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest, hosts = synced_openclaw(fleet, tmp_path, capsys, 8, random.Random(1), messages=25)

    async def both() -> tuple[list[object], list[object], list[list[object]]]:
        local = await api.list_sessions(dest=dest)
        remote = await api.list_sessions(remote=True, hosts=hosts)
        batches = [b async for b in api.stream_sessions(remote=True, hosts=hosts, batch_size=3)]
        return local, remote, batches  # type: ignore[return-value]

    local, remote, batches = anyio.run(both)

    def key(rows: list[object]) -> list[tuple[object, ...]]:
        return sorted(
            (r.path, r.session_id, r.state, r.messages, r.tokens_in, r.tokens_out, r.title, r.bytes)  # type: ignore[attr-defined]
            for r in rows
        )

    assert key(local) == key(remote)
    assert len(local) > 8  # transcripts plus topic files and archives
    assert all(len(b) <= 3 for b in batches) and sum(len(b) for b in batches) == len(remote)


def test_remote_and_local_listing_judge_the_class_at_the_same_now(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library caller's ``now`` decides a remote row's class as it decides a local one's
    (the remote rows were judged at the wall clock)."""
    # Sessions of the last hour: of low value only at a ``now`` years later.
    hour_ago = time.time_ns() - 3600 * 10**9
    dest, hosts = synced_openclaw(
        fleet, tmp_path, capsys, 12, random.Random(4), messages=2, start_ns=hour_ago
    )
    later = datetime(2031, 1, 1, tzinfo=UTC)  # every session is then older than 7 days

    async def classes(**filters: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        local = await api.list_sessions(dest=dest, now=later, **filters)
        remote = await api.list_sessions(remote=True, hosts=hosts, now=later, **filters)
        return (
            sorted((r.session_id, r.klass) for r in local),
            sorted((r.session_id, r.klass) for r in remote),
        )

    local, remote = anyio.run(classes)
    assert local == remote
    assert {"low", "valuable"} <= {klass for _, klass in local}
    local_low, remote_low = anyio.run(lambda: classes(klass="low"))
    assert local_low == remote_low and local_low


def test_stream_sessions_reports_progress_and_cancels_midway(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    from remote_sync.cancel import CancelRegistry
    from remote_sync.errors import TransferCancelledError
    from remote_sync.events import ErrorEvent, Progress

    root = fleet.path("h0", "oc")
    build_tree("openclaw", root, 30, random.Random(2), messages=20)
    make_readable(root)
    hosts = load_inventory(inventory(fleet, tmp_path, "openclaw", root)).hosts
    registry = CancelRegistry()
    events: list[Progress | ErrorEvent] = []
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async for batch in api.stream_sessions(
            remote=True,
            hosts=hosts,
            batch_size=5,
            registry=registry,
            transfer_id="listing",
            emit=events.append,
        ):
            seen += len(batch)
            registry.cancel("listing")

    with pytest.raises(TransferCancelledError):
        anyio.run(consume)
    assert 5 <= seen < 30
    assert len(registry) == 0
    phases = [e.phase for e in events if isinstance(e, Progress)]
    assert phases[:2] == ["listing", "fetching"] and phases[-1] == "done"
    # The host stopped by the cancel says so, as a sync's would.
    assert [e.kind for e in events if isinstance(e, ErrorEvent)] == ["cancelled"]


def test_stream_sessions_closed_early_is_closed_in_the_callers_task(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """A caller that stops after the first batch and closes the stream (aclosing) goes on
    normally: the connections were closed in its task, not left to the garbage collector (whose
    task could not exit their cancel scopes, and cancelled the caller's next await)."""
    import contextlib

    from remote_sync.cancel import CancelRegistry

    root = fleet.path("h0", "oc")
    build_tree("openclaw", root, 6, random.Random(3), messages=5)
    make_readable(root)
    hosts = load_inventory(inventory(fleet, tmp_path, "openclaw", root)).hosts
    registry = CancelRegistry()

    async def stop_early() -> int:
        stream = api.stream_sessions(
            remote=True, hosts=hosts, batch_size=2, registry=registry, transfer_id="x"
        )
        async with contextlib.aclosing(stream) as batches:
            async for _batch in batches:
                break
        await anyio.sleep(0.2)
        return len(await api.list_sessions(remote=True, hosts=hosts))

    assert anyio.run(stop_early) > 6
    assert len(registry) == 0


# --------------------------------------------------------------------------- FileIndexer


_HOSTILE = [
    b"",
    b" \t\r",
    b"\r",
    b'{"zz":"\xff"}',
    b"[1,2]",
    b"{",
    b"}{}",
    b'{"a":1}{"b":2}',
    b'{"x":' + b"L" * 200 + b"}",
]


@st.composite
def _transcripts(draw: st.DrawFn) -> tuple[str, bytes]:
    """A generated transcript with hostile lines: invalid UTF-8 in skipped fields, blank
    lines, two objects on one line, an object over two lines, odd values, CRLF."""
    fmt = draw(st.sampled_from(FORMATS))
    rng = random.Random(draw(st.integers(0, 2**32)))
    session = generate(
        fmt,
        rng,
        messages=draw(st.integers(1, 12)),
        malformed=draw(st.integers(0, 2)),
        blank_lines=draw(st.integers(0, 2)),
    )
    lines = session.data.split(b"\n")
    tail = lines.pop()  # b"" after the final newline
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(lines)))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.insert(at, draw(st.sampled_from(_HOSTILE)))
        elif lines and kind == 1:  # invalid UTF-8 in a field every view skips
            i = min(at, len(lines) - 1)
            if lines[i].startswith(b"{"):
                lines[i] = b'{"zz_skipped":"\xc3(",' + lines[i][1:]
        elif len(lines) > 1 and kind == 2:  # two lines run together: two objects on one
            i = min(at, len(lines) - 2)
            lines[i : i + 2] = [lines[i] + lines[i + 1]]
        elif lines and kind == 3:  # an object over two lines
            i = min(at, len(lines) - 1)
            comma = lines[i].find(b",")
            if comma > 0:
                lines[i] = lines[i][: comma + 1] + b"\n" + lines[i][comma + 1 :]
    sep = b"\r\n" if draw(st.booleans()) else b"\n"
    data = sep.join(lines) + (sep if lines else b"") + tail
    if draw(st.booleans()):  # a file that starts with a byte order mark
        data = b"\xef\xbb\xbf" + data
    if draw(st.booleans()):
        data += draw(st.sampled_from([b'{"partial":', b"{}", b" "]))
    return fmt, data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transcript=_transcripts(),
    limit=st.sampled_from([DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_LINE_BYTES, 300, 40]),
    mark_every=st.sampled_from([1, 3, 256]),
    seed=st.data(),
)
def test_file_indexer_equals_the_record_path(
    transcript: tuple[str, bytes], limit: int, mark_every: int, seed: st.DataObject
) -> None:
    """Same facts, page marks, malformed count and decoder state as folding JsonlDecoder's
    records, for every format, hostile lines and any chunking."""
    fmt, data = transcript
    reader = get_reader(fmt)
    path = b"agents/a/sessions/s.jsonl"
    cuts = sorted(seed.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    want = index_by_records(reader, path, chunks, max_line_bytes=limit, mark_every=mark_every)
    indexer = FileIndexer(reader, "h", path)
    indexer.decoder = JsonlDecoder(reader.line_type, max_line_bytes=limit)
    with mock.patch("remote_sync.index.update.MARK_EVERY", mark_every):
        for chunk in chunks:
            indexer.feed(chunk)
    decoder = indexer.decoder
    got = (indexer.facts, indexer.update.marks, decoder.committed_offset, decoder.pending_bytes)
    assert got == want


@pytest.mark.parametrize("fmt", [*FORMATS, "jsonl"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_byte_order_mark_is_the_files_across_syncs_and_chunks(
    fmt: str, data: st.DataObject
) -> None:
    """A transcript starting with a byte order mark, indexed as syncs see it: rounds that end
    anywhere (the first may hold two bytes of the mark: nothing committed, the next round
    starts again at 0), each round's bytes in any chunks, the facts stored between rounds.
    The facts are the generated ones: no line malformed for the mark, the first line read."""
    session = _bom_sessions(fmt)
    reader = get_reader(fmt)
    path = b"x/rollout-s.jsonl" if fmt == "codex" else b"agents/a/sessions/s.jsonl"
    size = len(session.data)
    ends = sorted(data.draw(st.lists(st.integers(1, size), max_size=3), label="rounds"))
    if data.draw(st.booleans(), label="first round ends in the mark"):
        ends.insert(0, data.draw(st.integers(1, 2)))
    start, stored = 0, None
    for end in [*ends, size]:
        if end <= start:
            continue
        indexer = FileIndexer(reader, "h", path, start=start, facts=stored)
        piece = session.data[start:end]
        cuts = sorted(data.draw(st.lists(st.integers(0, len(piece)), max_size=4), label="cuts"))
        for a, b in zip([0, *cuts], [*cuts, len(piece)], strict=True):
            indexer.feed(piece[a:b])
        if indexer.decoder.committed_offset > start:  # a round commits whole lines only
            blob = msgspec.json.encode(indexer.result().facts)
            stored = _facts_decoder.decode(blob)
            start = indexer.decoder.committed_offset
    assert stored is not None and start == size
    got = facts_dict(stored)
    want = dict(session.expected)
    for key in ("session_id", "agent"):  # the path's or the first line's: not the point here
        got.pop(key), want.pop(key)
    assert got.pop("cost") == pytest.approx(want.pop("cost"))
    assert got == want


@functools.cache
def _bom_sessions(fmt: str) -> Any:
    return generate(fmt, random.Random(f"bom-{fmt}"), messages=12, bom=True)


# -- a commit's index rows, one statement per table -----------------------------------------


def _facts_of(rng: random.Random, path: bytes, i: int) -> SessionFacts:
    """Realistic facts, and now and then a field the ``sessions`` row spells its own way."""
    indexer = FileIndexer(get_reader("openclaw"), "h0", path)
    indexer.feed(generate("openclaw", rng, messages=rng.randint(3, 40), unicode=True).data)
    facts = indexer.result().facts
    if i % 7 == 0:
        facts.models = ["gpt\nodd", "claude", ""]  # a newline inside a name, an empty name
    if i % 11 == 0:
        facts.session_id, facts.title, facts.cost = None, None, None
    return facts


def _index_tables(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = ("sessions", "session_facts", "session_marks")
    return {t: sorted(db.execute(f"SELECT * FROM {t}")) for t in tables}


def _commit_by_statements(state: MirrorState, items: list[Pending]) -> None:
    """What ``commits.commit`` did with a statement per session and table."""

    def write() -> None:
        for item in items:
            if item.index is None or item.row.size == 0:
                delete_session_by_statements(state.db, item.row.host, item.row.path)
            else:
                u = item.index
                put_session_by_statements(
                    state.db, u.host, u.path, u.format, u.facts, u.marks, fresh=u.fresh
                )

    state.commit([item.row for item in items], also=write)


def test_a_commits_index_rows_in_one_statement_per_table_are_the_per_session_rows(
    tmp_path: Path,
) -> None:
    """A flush's commit of many sessions (``commits.commit``) leaves the index rows the
    statements of each session alone left: new sessions, appended ones (their marks added to
    the stored ones), ones re-indexed fresh (their old marks gone), ones without facts or
    without a whole line (dropped), and in a second commit every one of those again."""
    rng = random.Random(12)
    paths = [f"agents/main/sessions/s{i:04d}.jsonl".encode() for i in range(260)]

    def items(round_no: int) -> list[Pending]:
        out = []
        for i, path in enumerate(paths[: 200 + 30 * round_no]):
            kind = i % 5 if round_no else 0
            if kind == 4:
                continue  # not in this commit: its rows stay as they are
            facts = _facts_of(rng, path, i)
            fresh = round_no == 0 or kind == 1 or i >= 200
            count = 1 if round_no and fresh else 1 + i % 4  # fewer than a fresh one had
            marks = [(256 * (k + 2 * (not fresh)), 40_000 * k + i) for k in range(count)]
            size = 0 if kind == 3 else facts.bytes
            row = FileState("h0", path, "append", size, size, 1.7e9, 2049, i, b"f" * 16)
            update = IndexUpdate("h0", path, "openclaw", facts, marks, fresh=fresh)
            out.append(Pending(row, -1, index=None if kind == 2 else update))
        return out

    with MirrorState(tmp_path / "a") as by_statements, MirrorState(tmp_path / "b") as batched:
        for round_no in range(3):
            batch = items(round_no)
            _commit_by_statements(by_statements, batch)
            commits.commit(batched, batch)
            want = _index_tables(by_statements.db)
            assert _index_tables(batched.db) == want
            assert len(want["sessions"]) > 100 and len(want["session_marks"]) > 200


_KEYS = [("h0", b"a.jsonl"), ("h0", b"b.jsonl"), ("h1", b"a.jsonl")]
_OPS = st.tuples(
    st.sampled_from(["put", "fresh", "delete"]),
    st.sampled_from(_KEYS),
    st.integers(0, 3),  # which facts
    st.lists(st.tuples(st.sampled_from([0, 256, 512]), st.integers(0, 9)), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(stored=st.lists(st.sampled_from(_KEYS), unique=True), ops=st.lists(_OPS, max_size=8))
def test_index_rows_about_one_session_twice_in_a_commit_leave_the_last_calls_rows(
    stored: list[tuple[str, bytes]], ops: list[tuple[str, tuple[str, bytes], int, Any]]
) -> None:
    """Puts (fresh or not) and deletes of the same sessions, in any order, collected in one
    :class:`IndexRows`: its rows are those of the calls made one by one as statements."""
    facts = [SessionFacts(session_id=f"s{n}", bytes=n, user=n, models=["m"] * n) for n in range(4)]
    dbs = [sqlite3.connect(":memory:") for _ in range(2)]
    for db in dbs:
        ensure_schema(db)
        for host, path in stored:
            put_session_by_statements(db, host, path, "pi", facts[3], [(0, 1), (256, 2)])
    by_statements, batched = dbs
    rows = IndexRows()
    for op, (host, path), n, marks in ops:
        if op == "delete":
            delete_session_by_statements(by_statements, host, path)
            rows.delete(host, path)
        else:
            fresh = op == "fresh"
            put_session_by_statements(by_statements, host, path, "pi", facts[n], marks, fresh=fresh)
            rows.put(host, path, "pi", facts[n], marks, fresh=fresh)
    rows.write(batched)
    assert _index_tables(batched) == _index_tables(by_statements)


@given(st.lists(st.text(alphabet="ab\n ", max_size=4), max_size=4))
def test_models_text_is_each_name_then_a_newline(models: list[str]) -> None:
    want = "".join(model.replace("\n", " ") + "\n" for model in models)
    assert models_text(models) == want


def test_stored_facts_of_many_paths_are_read_in_statements_of_a_few_hundred() -> None:
    """``load_facts_of`` gives each path's stored facts (encoded) or None, the same as one
    ``load_facts`` each, for more paths than one statement takes, another host's left out."""
    import msgspec

    from remote_sync.index.facts import SessionFacts
    from remote_sync.index.store import decode_facts, load_facts, load_facts_of

    db = sqlite3.connect(":memory:")
    ensure_schema(db)
    stored = [f"s/{n}.jsonl".encode() for n in range(0, 1200, 2)]
    db.executemany(
        "INSERT INTO session_facts VALUES (?, ?, ?)",
        [("h", p, msgspec.json.encode(SessionFacts(bytes=len(p), lines=1))) for p in stored]
        + [("other", b"s/1.jsonl", msgspec.json.encode(SessionFacts(bytes=9)))],
    )
    asked = [f"s/{n}.jsonl".encode() for n in range(1200)]
    found = load_facts_of(db, "h", asked)
    assert list(found) == asked
    for path in asked:
        blob = found[path]
        assert (decode_facts(blob) if blob is not None else None) == load_facts(db, "h", path)
    assert sum(blob is not None for blob in found.values()) == len(stored)
