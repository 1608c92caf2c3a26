"""Random sequences of what agents do to their session files, each followed now and then by a
`remote-sync sync` over real sshd, checked against a model after every round.

What an agent does between two rounds is drawn by hypothesis: new sessions (some with
hostile names), appends (ending mid-line or not), compaction rewriting a file in place, a
rewrite or a longer copy renamed over it, renames, archives (OpenClaw's ``.reset.`` and
``.deleted.``), deletions, a rewrite of the same size or a whole file saved anew with another
head, and new ``sessions.json`` indexes. Rounds run with or without the index, and some are
killed (SIGKILL) midway, then run again. After each whole round:

* every file on the host is mirrored exactly (JSONL cut at its last newline): a head
  rewritten in place is found whether the file kept its size or grew;
* a file gone from the host keeps its last mirrored content;
* nothing the mirror ever held is lost: each content a round left in the mirror is a prefix
  of the file now mirrored at that path or of one of its kept versions;
* the checkpoints say what is on disk;
* after an indexed round, the index equals one rebuilt from the mirror.

Same-size rewrites change the file's first line: a change behind an unchanged head and tail
at the same size is not looked for (see the README's "What a sync does").

The suite runs 12 sequences, the same ones every time. To search further, with new sequences
each run: ``REMOTE_SYNC_MODEL_SEARCH=1 REMOTE_SYNC_MODEL_EXAMPLES=300 pytest
tests/test_sync_model.py`` (about a second per sequence here). Such a search found the
unchecked head of an append (``test_a_head_rewritten_in_place_is_found_when_the_file_grows``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sshfleet import SSHFleet
from synchelp import (
    change_first_id_in_place,
    cli_process,
    expected_tree,
    mirror_tree,
    run_cli,
    session_line,
)

from remote_sync.events import Summary
from remote_sync.index.update import rebuild_index

HOST = "h0"
AGENTS = ("a", "b")
#: Session file names, from the plain to the hostile (see test_sync's hostile names).
NAME_STYLES = {
    "plain": "s{}.jsonl",
    "space": "s {} x.jsonl",
    "newline": "s{}\nx.jsonl",
    "quotes": "s{}'\"$(touch pwned)`id`.jsonl",
    "dash": "-s{}.jsonl",
    "not utf-8": os.fsdecode(b"s{}\xff\xfe.jsonl"),
}
STATE_DB = Path(".remote-sync") / "state.db"
VERSIONS = Path(".remote-sync") / "versions" / HOST
_machines = itertools.count()


def _lines(rng: random.Random, start: int, count: int, *, long: bool = False) -> bytes:
    # Long lines take a file past 64 KiB, where a read is checked by the host's head digest.
    size = 30_000 if long else rng.choice((300, 1500, 3000))
    return b"".join(session_line(rng, start + i, size) for i in range(count))


class AgentHost(RuleBasedStateMachine):
    """One host's session directories, what the agents do to them, and the mirror's rounds."""

    fleet: SSHFleet
    base: Path
    capsys: pytest.CaptureFixture[str]

    @initialize()
    def start(self) -> None:
        n = next(_machines)
        self.rng = random.Random(0)  # the same draws replay the same files
        self.root = self.fleet.path(HOST, f"model-{n}")
        self.dest = self.base / f"mirror-{n}"
        self.inventory = self.base / f"inventory-{n}.toml"
        self.inventory.write_text(
            "\n".join(
                [
                    "[defaults]",
                    f'ssh_config = "{self.fleet.ssh_config}"',
                    f'known_hosts = "{self.fleet.known_hosts}"',
                    'format = "openclaw"',
                    "[[hosts]]",
                    f'name = "{HOST}"',
                    f'address = "{HOST}"',
                    f'root = "{self.root}"',
                    "",
                ]
            )
        )
        for agent in AGENTS:
            self.fleet.mkdir(HOST, f"model-{n}/agents/{agent}/sessions")
        self.next_line = 0
        self.next_name = 0
        self.clock = 1_800_000_000.0
        # Every content a round left in the mirror, per path (in order, no repeats).
        self.history: dict[bytes, list[bytes]] = {}
        self.mirrored: dict[bytes, bytes] = {}  # what the last round left in the mirror

    # ------------------------------------------------------------------ the host's files

    def _sessions(self, agent: str) -> Path:
        return self.root / "agents" / agent / "sessions"

    def _live(self) -> list[Path]:
        """The live transcripts (``*.jsonl``) on the host, in a stable order."""
        return sorted(p for a in AGENTS for p in self._sessions(a).glob("*.jsonl"))

    def _pick(self, which: int) -> Path:
        live = self._live()
        return live[which % len(live)]

    def _more(self, count: int, *, long: bool = False) -> bytes:
        data = _lines(self.rng, self.next_line, count, long=long)
        self.next_line += count
        return data

    def _write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        self._touch(path)

    def _touch(self, path: Path) -> None:
        # Every change gets a later mtime, as a second agent write would: a same-size rewrite
        # within the same mtime is not something the quick check (or rsync's) can see.
        self.clock += 7.25
        os.utime(path, (self.clock, self.clock))

    def _new_name(self, style: str) -> str:
        self.next_name += 1
        return NAME_STYLES[style].format(self.next_name)

    @rule(
        agent=st.sampled_from(AGENTS),
        count=st.integers(0, 4),
        partial=st.booleans(),
        style=st.sampled_from(sorted(NAME_STYLES)),
    )
    def new_session(self, agent: str, count: int, partial: bool, style: str) -> None:
        data = self._more(count) + (b'{"type":"mess' if partial else b"")
        self._write(self._sessions(agent) / self._new_name(style), data)

    @precondition(lambda self: bool(self._live()))
    @rule(
        which=st.integers(0, 50),
        count=st.integers(0, 4),
        partial=st.booleans(),
        long=st.booleans(),
    )
    def append(self, which: int, count: int, partial: bool, long: bool) -> None:
        path = self._pick(which)
        data = path.read_bytes()
        more = b""
        if data and not data.endswith(b"\n"):
            more = b'sage"}\n'  # the agent finishes the line it was writing
        more += self._more(count, long=long)
        if partial:
            more += b'{"type":"mess'
        with open(path, "ab") as out:
            out.write(more)
        self._touch(path)

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50), keep=st.integers(0, 3))
    def compact_in_place(self, which: int, keep: int) -> None:
        """Truncate and rewrite the same file (same inode) with a shorter history (or none:
        a copy-truncate)."""
        path = self._pick(which)
        with open(path, "r+b") as out:
            out.truncate(0)
            out.write(self._more(keep))
        self._touch(path)

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50), count=st.integers(1, 5))
    def replace_by_rename(self, which: int, count: int) -> None:
        """Write a new file and rename it over the old one (a new inode)."""
        path = self._pick(which)
        temp = path.with_name(path.name + ".tmp")
        self._write(temp, self._more(count))
        os.replace(temp, path)

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50), count=st.integers(0, 3))
    def copy_with_more_renamed_over(self, which: int, count: int) -> None:
        """A copy of the file with more lines, renamed over it: same content, a new inode."""
        path = self._pick(which)
        temp = path.with_name(path.name + ".tmp")
        self._write(temp, path.read_bytes() + self._more(count))
        os.replace(temp, path)

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50), style=st.sampled_from(sorted(NAME_STYLES)))
    def rename(self, which: int, style: str) -> None:
        """A transcript moved to a new session name."""
        path = self._pick(which)
        os.rename(path, path.with_name(self._new_name(style)))

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50), kind=st.sampled_from(("reset", "deleted")))
    def archive(self, which: int, kind: str) -> None:
        """OpenClaw's /new, /reset and deletion rename the transcript aside."""
        path = self._pick(which)
        self.clock += 1
        os.rename(path, path.with_name(f"{path.name}.{kind}.{int(self.clock)}"))

    @precondition(lambda self: bool(self._live()))
    @rule(which=st.integers(0, 50))
    def delete(self, which: int) -> None:
        self._pick(which).unlink()

    @precondition(lambda self: any(p.stat().st_size > 100 for p in self._live()))
    @rule(which=st.integers(0, 50))
    def rewrite_same_size(self, which: int) -> None:
        """The same number of bytes, another first line (in place)."""
        candidates = [p for p in self._live() if p.stat().st_size > 100]
        path = candidates[which % len(candidates)]
        change_first_id_in_place(path)
        self._touch(path)

    @precondition(lambda self: any(p.stat().st_size > 100 for p in self._live()))
    @rule(which=st.integers(0, 50), count=st.integers(1, 3))
    def save_anew_with_another_head(self, which: int, count: int) -> None:
        """The whole file written again in place: another first line, the same lines after
        it, and new ones (as an agent that rewrites its transcript on every turn)."""
        self.rewrite_same_size(which)
        candidates = [p for p in self._live() if p.stat().st_size > 100]
        path = candidates[which % len(candidates)]
        if not path.read_bytes().endswith(b"\n"):
            return
        with open(path, "ab") as out:
            out.write(self._more(count))
        self._touch(path)

    @rule(agent=st.sampled_from(AGENTS), entries=st.integers(0, 5))
    def write_sessions_index(self, agent: str, entries: int) -> None:
        """OpenClaw rewrites sessions.json whole, by a rename."""
        index = {
            f"agent:{agent}:{i}": {"sessionId": f"s{i}", "n": self.next_line}
            for i in range(entries)
        }
        final = self._sessions(agent) / "sessions.json"
        temp = final.with_name("sessions.json.tmp")
        self._write(temp, json.dumps(index).encode())
        os.replace(temp, final)

    # ------------------------------------------------------------------ a round

    @rule(index=st.booleans())
    def sync(self, index: bool) -> None:
        args = ["sync", "--inventory", str(self.inventory), "--dest", str(self.dest), "--json"]
        code, events = run_cli(args if index else [*args, "--no-index"], self.capsys)
        summary = events[-1]
        assert isinstance(summary, Summary), events
        assert code == 0, events
        assert summary.files.failed == 0, events
        self._check_the_mirror()
        self._check_the_checkpoints()
        if index:
            self._check_the_index()

    @rule(after=st.floats(0, 0.25))
    def sync_killed_then_again(self, after: float) -> None:
        """A round killed (SIGKILL) some time after it connected, then a whole round: the
        same mirror as if the first had never run."""
        args = ["sync", "--inventory", str(self.inventory), "--dest", str(self.dest), "--json"]
        proc = cli_process(args)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # its first event: it has connected
            time.sleep(after)
        finally:
            proc.kill()
            proc.communicate()
        self.sync(index=True)

    def _check_the_mirror(self) -> None:
        want = expected_tree(self.root)
        got = mirror_tree(self.dest, HOST)
        for rel, data in want.items():
            assert got.get(rel) == data, f"{rel!r} is not mirrored exactly"
        for rel, data in got.items():
            if rel in want:
                continue
            # Gone from the host, or a transcript without a whole line (mirrored empty).
            on_host = self.root / os.fsdecode(rel)
            if data == b"" and on_host.exists():
                assert b"\n" not in on_host.read_bytes()
            else:
                assert data == self.mirrored.get(rel), f"{rel!r} changed after it went away"
        self.mirrored = got
        # Transcripts only: a file copied whole (sessions.json) is replaced, as rsync would.
        for rel, data in got.items():
            seen = self.history.setdefault(rel, []) if _is_transcript(rel) else None
            if seen is not None and (not seen or seen[-1] != data):
                seen.append(data)
        for rel, seen in self.history.items():
            kept = [got.get(rel, b"")]
            versions = (self.dest / VERSIONS / os.fsdecode(rel)).parent
            if versions.is_dir():
                name = os.fsdecode(os.path.basename(rel))
                kept += [v.read_bytes() for v in versions.glob(f"{name}.v*")]
            for data in seen:
                assert any(k.startswith(data) for k in kept), f"a content of {rel!r} was lost"

    def _check_the_checkpoints(self) -> None:
        with contextlib.closing(sqlite3.connect(self.dest / STATE_DB)) as db:
            rows = list(db.execute("SELECT path, size FROM files WHERE host = ?", (HOST,)))
        for path, size in rows:
            local = self.dest / HOST / os.fsdecode(bytes(path))
            if local.exists():
                assert local.stat().st_size == size, f"{bytes(path)!r}: checkpoint {size}"

    def _check_the_index(self) -> None:
        copy = self.base / "rebuilt"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.dest, copy)
        rebuild_index(copy)
        for table in ("sessions", "session_marks"):
            assert _rows(self.dest, table) == _rows(copy, table), f"{table} != a rebuild"

    @invariant()
    def no_temp_file_is_left_between_rounds(self) -> None:
        temp = self.dest / ".remote-sync" / "tmp"
        assert not temp.is_dir() or not any(temp.iterdir())


def _is_transcript(rel: bytes) -> bool:
    return b".jsonl" in os.path.basename(rel)


def _rows(dest: Path, table: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(dest / STATE_DB)) as db:
        return sorted(db.execute(f"SELECT * FROM {table}"))


def test_random_agent_activity_between_rounds_keeps_an_exact_mirror(
    ssh_fleet: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = ssh_fleet(1, [HOST])  # type: ignore[operator]

    class Machine(AgentHost):
        pass

    Machine.fleet = fleet
    Machine.base = tmp_path
    Machine.capsys = capsys
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=int(os.environ.get("REMOTE_SYNC_MODEL_EXAMPLES", "12")),
            stateful_step_count=30,
            deadline=None,
            derandomize="REMOTE_SYNC_MODEL_SEARCH" not in os.environ,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            # No explain phase: it traces every line of every round.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        ),
    )
