"""Agents writing *while* rounds run (opt-in: ``REMOTE_SYNC_RACE_ROUNDS=25 pytest
tests/test_sync_race.py``; a few seconds per round here).

A thread appends to, compacts, replaces and rewrites in place (to the same size, another
first line) the host's transcripts while `remote-sync sync` runs; then a quiet round runs.
After every round:

* nothing in the mirror or its versions is made up: each mirrored content is a prefix of a
  content the file had (whole lines, as the agent wrote them);
* a round fails no file but one that changed again while its follow-up read it;
* after the quiet round, the mirror equals the host's files.

It is opt-in because it depends on timing: an in-place rewrite caught halfway by a read is a
content the file did have for an instant, but not one the model records, so a rare run can
report one. Searching with it found the unchecked head of an append (see
``test_a_head_rewritten_in_place_is_found_when_the_file_grows``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from sshfleet import SSHFleet
from synchelp import (
    change_first_id_in_place,
    expected_tree,
    mirror_tree,
    run_cli,
    session_line,
    write_inventory,
)

from remote_sync.events import ErrorEvent

ROUNDS = int(os.environ.get("REMOTE_SYNC_RACE_ROUNDS", "0"))
pytestmark = pytest.mark.skipif(not ROUNDS, reason="opt-in: set REMOTE_SYNC_RACE_ROUNDS")


class Agent:
    """Mutations of one sessions directory, each recorded as the content it leaves."""

    def __init__(self, sessions: Path, seed: int) -> None:
        self.sessions = sessions
        self.rng = random.Random(seed)
        self.line = 0
        self.clock = 1_800_000_000.0
        self.states: dict[str, list[bytes]] = {}

    def _more(self, count: int) -> bytes:
        size = self.rng.choice((40, 400, 3000, 30000))
        data = b"".join(session_line(self.rng, self.line + i, size) for i in range(count))
        self.line += count
        return data

    def _done(self, path: Path) -> None:
        self.clock += 3.5  # a later mtime for every change
        os.utime(path, (self.clock, self.clock))
        self.states.setdefault(path.name, []).append(path.read_bytes())

    def act(self) -> None:
        live = sorted(self.sessions.glob("*.jsonl"))
        if not live or self.rng.random() < 0.1:
            path = self.sessions / f"s{self.rng.randrange(10**6)}.jsonl"
            path.write_bytes(self._more(self.rng.randint(1, 30)))
            self._done(path)
            return
        path = self.rng.choice(live)
        what = self.rng.choice(("append", "append", "append", "compact", "replace", "head"))
        if what == "append":
            with open(path, "ab") as out:
                out.write(self._more(self.rng.randint(1, 10)))
        elif what == "compact":
            with open(path, "r+b") as out:
                out.truncate(0)
                out.write(self._more(self.rng.randint(1, 20)))
        elif what == "replace":
            temp = path.with_name(path.name + ".tmp")
            temp.write_bytes(self._more(self.rng.randint(1, 20)))
            os.replace(temp, path)
        else:
            change_first_id_in_place(path)
        self._done(path)

    def made_up(self, name: str, data: bytes) -> bool:
        return bool(data) and not any(s.startswith(data) for s in self.states.get(name, []))


@pytest.mark.timeout(60 + 30 * ROUNDS)
@pytest.mark.parametrize("seed", range(3))
def test_rounds_while_agents_write_invent_nothing_and_catch_up(
    ssh_fleet: object, tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    fleet: SSHFleet = ssh_fleet(1, ["h0"])  # type: ignore[operator]
    sessions = fleet.mkdir("h0", "agents/a/sessions")
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    dest = tmp_path / "m"
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    agent = Agent(sessions, seed)
    for _ in range(ROUNDS):
        for _ in range(agent.rng.randint(0, 5)):
            agent.act()
        stop = threading.Event()

        def write_meanwhile(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                agent.act()
                time.sleep(agent.rng.random() * 0.02)

        writer = threading.Thread(target=write_meanwhile)
        writer.start()
        try:
            code, events = run_cli(args, capsys)
        finally:
            stop.set()
            writer.join()
        # A file that changed again while its follow-up read it fails this round (exit 1),
        # and nothing else may.
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        assert code == (1 if errors else 0)
        assert all(e.message.startswith("changed again while being fetched") for e in errors)
        kept = [p for p in (dest / "h0").rglob("*") if p.is_file()]
        versions = dest / ".remote-sync" / "versions" / "h0"
        kept += [p for p in versions.rglob("*") if p.is_file()]
        for path in kept:
            name = path.name.rsplit(".v", 1)[0] if versions in path.parents else path.name
            assert not agent.made_up(name, path.read_bytes()), path
        assert run_cli(args, capsys)[0] == 0  # a quiet round
        want, got = expected_tree(fleet.path("h0")), mirror_tree(dest, "h0")
        assert all(got.get(rel) == data for rel, data in want.items())
