"""Helpers for sync tests: inventories for a test fleet, realistic trees, mirror comparison."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sshfleet import SSHFleet

from remote_sync.cli import main
from remote_sync.events import decode_event
from remote_sync.mirror.state import MirrorState

SESSIONS = "agents/{agent}/sessions"


def write_inventory(
    fleet: SSHFleet,
    path: Path,
    names: list[str] | None = None,
    extra: str = "",
    tags: dict[str, list[str]] | None = None,
) -> Path:
    """An inventory with one entry per fleet host, rooted at the host's data dir; ``tags``
    gives hosts by name their tags."""
    lines = [
        "[defaults]",
        f'ssh_config = "{fleet.ssh_config}"',
        f'known_hosts = "{fleet.known_hosts}"',
        'format = "openclaw"',
        "",
    ]
    for name in names or fleet.names:
        own = [f"tags = {json.dumps(tags[name])}"] if tags and name in tags else []
        lines += [
            "[[hosts]]",
            f'name = "{name}"',
            f'address = "{name}"',
            f'root = "{fleet.path(name)}"',
            *own,
            extra,
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def session_line(rng: random.Random, i: int, size: int = 300) -> bytes:
    text = "".join(rng.choice("abcdefghij klmnopqrstuvwxyzé😀") for _ in range(size))
    record = {
        "type": "message",
        "id": f"{i:08x}",
        "timestamp": "2026-11-21T10:00:00Z",
        "message": {
            "role": "user" if i % 2 else "assistant",
            "content": [{"type": "text", "text": text}],
        },
    }
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def session_bytes(rng: random.Random, lines: int, start: int = 0, size: int = 300) -> bytes:
    return b"".join(session_line(rng, start + i, size) for i in range(lines))


def big_session(size: int) -> bytes:
    """About ``size`` bytes of JSONL, fast to make (random base64 text in 2 KB lines)."""
    import base64

    blob = base64.b64encode(os.urandom(size * 3 // 4))
    step = 2000
    return b"".join(
        b'{"type":"message","text":"%s"}\n' % blob[i : i + step] for i in range(0, len(blob), step)
    )


def make_openclaw_tree(
    fleet: SSHFleet,
    name: str,
    *,
    agents: int = 2,
    sessions: int = 5,
    lines: int = 20,
    seed: int = 0,
) -> list[str]:
    """Sessions and a sessions.json per agent; returns the relative transcript paths."""
    rng = random.Random(seed)
    paths = []
    for a in range(agents):
        base = SESSIONS.format(agent=f"agent{a}")
        index = {}
        for s in range(sessions):
            rel = f"{base}/sess-{a}-{s}.jsonl"
            fleet.write(name, rel, session_bytes(rng, lines))
            index[f"agent:agent{a}:s{s}"] = {"sessionId": f"sess-{a}-{s}"}
            paths.append(rel)
        fleet.write(name, f"{base}/sessions.json", json.dumps(index))
    return paths


@contextlib.contextmanager
def unreadable(*paths: Path) -> Iterator[None]:
    """``paths`` (files or directories of a host) with no permission at all meanwhile, as a
    host's locked file or directory is; their modes given back after, even when the body
    fails, so the fleet's teardown can remove them."""
    modes = [path.stat().st_mode for path in paths]
    for path in paths:
        os.chmod(path, 0)
    try:
        yield
    finally:
        for path, mode in zip(paths, modes, strict=True):
            os.chmod(path, mode)


def append(fleet: SSHFleet, name: str, rel: str, data: bytes) -> None:
    with open(fleet.path(name, rel), "ab") as out:
        out.write(data)


def expected_tree(root: Path, include_prefix: str = "agents/") -> dict[bytes, bytes]:
    """What the mirror should hold: regular files under the root (JSONL cut at the last line)."""
    out: dict[bytes, bytes] = {}
    broot = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(broot):
        for f in files:
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                continue
            rel = os.path.relpath(full, broot)
            if not rel.startswith(include_prefix.encode()) or b"/sessions/" not in rel:
                continue
            data = Path(os.fsdecode(full)).read_bytes()
            if b".jsonl" in os.path.basename(rel):
                cut = data.rfind(b"\n") + 1
                data = data[:cut]
                if not data:
                    continue
            out[rel] = data
    return out


def mirror_tree(dest: Path, host: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    broot = os.fsencode(dest / host)
    for dirpath, _dirs, files in os.walk(broot):
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, broot)] = Path(os.fsdecode(full)).read_bytes()
    return out


def assert_exact(fleet: SSHFleet, dest: Path, name: str) -> None:
    """The mirror of host ``name`` holds exactly its transcripts, byte for byte."""
    want = expected_tree(fleet.path(name))
    got = mirror_tree(dest, name)
    assert sorted(got) == sorted(want)
    for rel, data in want.items():
        assert got[rel] == data, rel


def assert_sync_heals(fleet: SSHFleet, args: list[str], dest: Path, name: str = "h0") -> None:
    """The sync ``args``, run again to its end in a process of its own after whatever went
    wrong, ends well and leaves host ``name``'s mirror exact."""
    proc = cli_process(args)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_exact(fleet, dest, name)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``remote-sync ARGS`` run in this process: its exit code, stdout and stderr."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(args: list[str], capsys: object | None = None) -> tuple[int, list[object]]:
    """Run ``remote-sync`` in this process; with --json, returns the parsed events."""
    code = main(args)
    events: list[object] = []
    if capsys is not None:
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        events = [decode_event(line) for line in out.splitlines() if line.strip()]
    return code, events


class _OverQuota(io.FileIO):
    """A mirrored file whose writes that find the disk full fail as over this user's quota."""

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise _as_quota(exc) from None

    def truncate(self, size: int | None = None) -> int:
        try:
            return super().truncate(size)
        except OSError as exc:
            raise _as_quota(exc) from None


def _as_quota(exc: OSError) -> OSError:
    if exc.errno != errno.ENOSPC:
        return exc
    return OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), *exc.args[2:])


def over_quota_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """``open`` for the mirror's writer on a small tmpfs, as if the limit were this user's
    quota: a write that finds no room fails with EDQUOT, where the tmpfs says ENOSPC. Quotas
    themselves cannot be set up here (tmpfs quotas and ext4's quota files are kernel options
    a test machine may lack, and root is exempt from them), and EDQUOT is all the writer sees
    of one. The bytes that do fit are written, as a quota lets them."""
    if "b" not in mode or args or kwargs:
        return builtins.open(file, mode, *args, **kwargs)
    raw = _OverQuota(file, mode.replace("b", ""))
    if "+" in mode:
        return io.BufferedRandom(raw)
    return io.BufferedReader(raw) if mode.startswith("r") else io.BufferedWriter(raw)


class ShortThenEIO(io.FileIO):
    """A mirrored file on a disk that fails: the first write reaches it in part (half its
    bytes), every one after fails with EIO."""

    def write(self, data: Any) -> int:
        if getattr(self, "failing", False):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.failing = True
        return super().write(memoryview(data)[: max(1, len(data) // 2)])


#: ``remote-sync`` with a crash (or another fault) injected, run as a script.
FAULT_CLI = Path(__file__).resolve().parent / "fault_cli.py"
#: What ``fault_cli.py``'s ``deaf_agent_sync`` says on stderr as a sync of the agent begins
#: to sleep, deaf to its cancel.
DEAF_SYNC_STARTED = "fault deaf_agent_sync: a sync is deaf from now on"


def _command(args: list[str], fault: str | None) -> list[str]:
    if fault is None:
        return [sys.executable, "-m", "remote_sync.cli", *args]
    return [sys.executable, str(FAULT_CLI), *args]


def _fault_env(fault: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ, REMOTE_SYNC_TEST_FAULT=fault, **(env or {}))


def cli_process(
    args: list[str], *, fault: str | None = None, **kwargs: object
) -> subprocess.Popen[bytes]:
    """``remote-sync ARGS`` in a process of its own, its output piped; with ``fault``, that
    fault injected (see ``fault_cli.py``)."""
    if fault is not None:
        kwargs["env"] = _fault_env(fault)
    return subprocess.Popen(
        _command(args, fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )  # type: ignore[call-overload]


def fault_run(
    args: list[str], fault: str, *, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    """``remote-sync ARGS`` run to its end with ``fault`` injected (see ``fault_cli.py``),
    its output captured; ``env`` adds variables to the environment."""
    return subprocess.run(
        _command(args, fault),
        capture_output=True,
        env=_fault_env(fault, env),
        timeout=120,
        check=False,
        **kwargs,
    )


def change_first_id_in_place(path: Path) -> None:
    """Rewrite the session at ``path`` in place to the same size, with another id on its
    first line (the rest as it was)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"id": "') + len(b'"id": "')
    data[at : at + 8] = b"%08x" % (int(data[at : at + 8], 16) ^ 0xFFFF)
    with open(path, "r+b") as out:
        out.write(data)


def until_running(pid: int, word: bytes, timeout: float = 60) -> None:
    """Wait until a process below ``pid`` runs a command line holding ``word`` (an
    ssh_config's ``Match exec`` command, or a ProxyCommand, started once a round reaches
    that host): a fixed sleep before a signal could come before it on a loaded machine."""
    deadline = time.monotonic() + timeout
    while True:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_bytes()
                    parents[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
        for child in parents:
            above = parents.get(child)
            while above is not None and above != pid:
                above = parents.get(above)
            if above == pid:
                with contextlib.suppress(OSError):
                    if word in Path(f"/proc/{child}/cmdline").read_bytes():
                        return
        assert time.monotonic() < deadline, f"no {word!r} below pid {pid} in {timeout:g} s"
        time.sleep(0.05)


class TornRead:
    """A connection to the state whose first read fails as one of a state opened while no
    sync had it open fails when a sync starts meanwhile: the sync commits (the database's
    files change under the immutable reader), and SQLite, reading a page of the B-tree the
    checkpoint rewrote, calls the database malformed. ``sync`` False: the files stay as they
    were (the database itself is damaged)."""

    def __init__(self, db: sqlite3.Connection, dest: Path, sync: bool) -> None:
        self._db, self._dest, self._sync = db, dest, sync

    def execute(self, *args: Any) -> Any:
        if self._sync:
            with MirrorState(self._dest) as state:  # a sync, started and ended
                state.set_host(f"late-{time.monotonic_ns()}", "openclaw", "/data", "x")
        raise sqlite3.DatabaseError("database disk image is malformed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def tear_reads(
    monkeypatch: pytest.MonkeyPatch, dest: Path, *, torn: int, sync: bool = True
) -> list[int]:
    """The first ``torn`` connections the state's readers open (through ``open_index``, looked
    up at each open) read as :class:`TornRead`;
    the list counts the connections opened."""
    from remote_sync.index import query

    real = query.open_index
    opened: list[int] = []

    def open_torn(where: Any, **kwargs: Any) -> Any:
        db = real(where, **kwargs)
        opened.append(1)
        return TornRead(db, dest, sync) if len(opened) <= torn else db

    monkeypatch.setattr(query, "open_index", open_torn)
    return opened
