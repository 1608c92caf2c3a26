"""`remote-sync sync` against a fleet of real sshd hosts."""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from bbtools import applet_dir, with_cksum
from sshfleet import SSHFleet
from synchelp import (
    append,
    assert_exact,
    assert_sync_heals,
    big_session,
    change_first_id_in_place,
    cli_process,
    expected_tree,
    fault_run,
    make_openclaw_tree,
    mirror_tree,
    over_quota_open,
    run_cli,
    session_bytes,
    unreadable,
    write_inventory,
)

from remote_sync import api
from remote_sync.cli import main
from remote_sync.errors import ConfigError, MirrorError, StateError
from remote_sync.events import ErrorEvent, HostDone, Planned, Progress, Summary, WarningEvent
from remote_sync.index.query import open_index, query_sessions
from remote_sync.index.update import rebuild_index
from remote_sync.inventory import load_inventory
from remote_sync.mirror import (
    commits,
    durable,
    engine,
    fetch_frames,
    fetch_requests,
    fetch_script,
    frames,
    remote_ops,
    writer,
)
from remote_sync.mirror import listing as listing_module
from remote_sync.mirror.control import refuse_nested
from remote_sync.mirror.fetch_events import End, Failed
from remote_sync.mirror.fetch_frames import FetchRequest
from remote_sync.mirror.plan import OVERLAP_BYTES, Transfer
from remote_sync.mirror.state import FINGERPRINT_BYTES, FileState, MirrorState, fingerprint_of
from remote_sync.mirror.version_names import VersionNumbers
from remote_sync.mirror.versions import list_versions


def sync(inv: Path, dest: Path, capsys: pytest.CaptureFixture[str], *extra: str):  # type: ignore[no-untyped-def]
    code, events = run_cli(
        ["sync", "--inventory", str(inv), "--dest", str(dest), "--json", *extra], capsys
    )
    summary = events[-1]
    assert isinstance(summary, Summary)
    return code, summary, events


def adhoc_sync_args(fleet: SSHFleet, dest: Path) -> list[str]:
    """``sync h0`` as an ad-hoc host (no inventory): the fleet's ssh_config, known_hosts and
    h0's data directory as the root, JSON events."""
    return [
        "sync",
        "h0",
        "--dest",
        str(dest),
        "-F",
        str(fleet.ssh_config),
        "--known-hosts",
        str(fleet.known_hosts),
        "--root",
        str(fleet.path("h0")),
        "--json",
    ]


def assert_holds_the_host(fleet: SSHFleet, dest: Path, name: str) -> None:
    """Every file the host has is in the mirror, byte for byte (which keeps more)."""
    got = mirror_tree(dest, name)
    for rel, data in expected_tree(fleet.path(name)).items():
        assert got.get(rel) == data, rel


def test_initial_and_incremental_sync_are_byte_identical(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    dest = tmp_path / "mirror"
    paths = make_openclaw_tree(fleet, "h0", sessions=6)
    make_openclaw_tree(fleet, "h1", sessions=3, seed=1)
    code, summary, events = sync(inv, dest, capsys)
    assert code == 0
    assert_exact(fleet, dest, "h0")
    assert_exact(fleet, dest, "h1")
    assert summary.files.new == 12 + 2 + 6 + 2
    assert summary.exit_code == 0
    # The summary repeats each host_done as it was sent, its seconds included.
    done = {e.host: e for e in events if isinstance(e, HostDone)}
    assert {h.host: h for h in summary.hosts} == done
    # Grow a few sessions; only the new bytes move.
    rng = random.Random(5)
    grown = session_bytes(rng, 3, start=100)
    for rel in paths[:3]:
        append(fleet, "h0", rel, grown)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert_exact(fleet, dest, "h0")
    h0 = next(h for h in summary.hosts if h.host == "h0")
    assert h0.files.grown == 3
    assert h0.files.new == 0 and h0.files.rewritten == 0
    # Bytes on the wire: the appended bytes plus the verification overlap, nothing else.
    assert h0.bytes <= 3 * (len(grown) + 4096)
    # A third run moves nothing.
    code, summary, _ = sync(inv, dest, capsys)
    assert summary.bytes == 0 and summary.files.unchanged == 22


def test_json_events_parse_and_summary_adds_up(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1", seed=2)
    _code, summary, events = sync(inv, tmp_path / "m", capsys)
    kinds = {type(e).__name__ for e in events}
    assert {"Progress", "HostDone", "Summary"} <= kinds
    done = [e for e in events if isinstance(e, HostDone)]
    assert sorted(h.host for h in done) == ["h0", "h1"]
    assert summary.bytes == sum(h.bytes for h in done)
    assert summary.files.new == sum(h.files.new for h in done)
    assert summary.hosts_ok == 2 and summary.hosts_failed == 0
    assert all(isinstance(e, Progress | HostDone | Summary) for e in events)


def test_dry_run_moves_nothing(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    code, summary, events = sync(inv, dest, capsys, "--dry-run")
    assert code == 0 and summary.dry_run
    assert summary.files.new == 12
    assert not dest.exists()  # nothing created, not even the state (as rsync -n)
    planned = [e for e in events if isinstance(e, Planned)]
    assert sorted(e.path.encode() for e in planned) == sorted(expected_tree(fleet.path("h0")))
    assert {e.action for e in planned} == {"new"}
    assert sum(e.bytes for e in planned) == summary.bytes
    done = [e for e in events if isinstance(e, Progress) and e.phase == "done"]
    assert [(e.files_done, e.bytes_done, e.files_total) for e in done] == [(0, 0, 12)]
    # Against a mirror: the files that grew, and those gone (marked, never removed).
    sync(inv, dest, capsys)
    rel = sorted(expected_tree(fleet.path("h0")))
    append(fleet, "h0", rel[0].decode(), b'{"more": 1}\n')
    os.unlink(fleet.path("h0", rel[1].decode()))
    before = mirror_tree(dest, "h0")
    code, summary, events = sync(inv, dest, capsys, "--dry-run")
    planned = [(e.action, e.path.encode()) for e in events if isinstance(e, Planned)]
    assert sorted(planned) == sorted([("grown", rel[0]), ("deleted", rel[1])])
    assert mirror_tree(dest, "h0") == before
    # On a terminal: one line per file, as rsync -n lists them.
    assert main(["sync", "--inventory", str(inv), "--dest", str(dest), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grown" in out and rel[0].decode() in out and rel[1].decode() in out


def test_a_dry_run_writes_nothing_to_an_existing_mirror(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the state (even one written by an older version, which a sync would upgrade), not
    the lock file: a dry run reads a copy of the state."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    control = dest / ".remote-sync"
    db = sqlite3.connect(control / "state.db")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    (control / "lock").write_text("4242\n")

    def snapshot() -> dict[str, tuple[bytes, int]]:
        # SQLite's side files included: a reader must not create a -wal or -shm either.
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in control.iterdir() if p.is_file()
        }

    before = snapshot()
    append(fleet, "h0", sorted(expected_tree(fleet.path("h0")))[0].decode(), b'{"more": 1}\n')
    code, summary, _ = sync(inv, dest, capsys, "--dry-run")
    assert code == 0 and summary.files.grown == 1
    assert snapshot() == before
    for command in (["list"], ["stats"]):
        assert main(["sessions", *command, "--dest", str(dest), "--json"]) == 0
    assert snapshot() == before


def test_a_dry_run_records_no_host_key(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--accept-new-host-keys with --dry-run trusts a first key for that run only: the dry
    run writes nothing, known_hosts included; the real run then records it."""
    make_openclaw_tree(fleet, "h0")
    known = tmp_path / "known_hosts"
    known.write_text("")
    args = ["sync", "h0", "-F", str(fleet.ssh_config), "--known-hosts", str(known)]
    args += ["--root", str(fleet.path("h0")), "--accept-new-host-keys", "--json"]
    dest = tmp_path / "m"
    code, events = run_cli([*args, "--dest", str(dest), "--dry-run"], capsys)
    assert code == 0 and any(isinstance(e, Planned) for e in events), events
    assert known.read_text() == "" and not dest.exists()
    code, _ = run_cli([*args, "--dest", str(dest)], capsys)
    assert code == 0 and str(fleet.host("h0").port) in known.read_text()
    assert_exact(fleet, dest, "h0")


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_destination_that_is_a_file_is_a_usage_error(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "afile"
    dest.write_text("not a directory")
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    code = main([*args, "--dry-run"] if dry_run else args)
    out = capsys.readouterr().out
    assert code == 2, out
    (error,) = [json.loads(line) for line in out.splitlines()]
    assert error["kind"] == "destination" and error["path"] == str(dest)
    assert dest.read_text() == "not a directory"


def test_missing_local_ssh_files_are_configuration_errors(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One host's key file that is not there fails that host (the others sync, exit 1); an
    ssh_config that is not there fails every host: a configuration error, exit 2."""
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1")
    missing = tmp_path / "keys" / "id_missing"
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    text = inv.read_text().replace('name = "h1"', f'name = "h1"\nidentity_file = "{missing}"')
    inv.write_text(text)
    code, summary, events = sync(inv, tmp_path / "m", capsys)
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (error.host, error.kind, error.path) == ("h1", "config", str(missing))
    assert "does not exist" in error.message
    assert_exact(fleet, tmp_path / "m", "h0")
    inv.write_text(text.replace(str(fleet.ssh_config), str(tmp_path / "no_config")))
    code, summary, events = sync(inv, tmp_path / "m", capsys)
    assert code == 2 and summary.hosts_failed == 2
    assert {e.kind for e in events if isinstance(e, ErrorEvent)} == {"config"}
    # Found before anything is touched: a destination never synced is not even created.
    code, summary, events = sync(inv, tmp_path / "never", capsys)
    assert code == 2 and summary.hosts_failed == 2 and not (tmp_path / "never").exists()
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.host, e.kind) for e in errors] == [("h0", "config"), ("h1", "config")]
    assert [h.status for h in summary.hosts] == ["failed", "failed"]
    # The same for the commands that read the hosts without a mirror.
    remote = ["--remote", "--inventory", str(inv), "--json"]
    assert main(["sessions", "list", *remote]) == 2
    assert main(["sessions", "list", "--host", "h0", *remote]) == 2
    assert main(["sessions", "show", "h0", "x.jsonl", *remote]) == 2
    inv.write_text(text)  # one host's key missing again: the other host is read
    assert main(["sessions", "list", *remote]) == 1
    capsys.readouterr()


def _unusable_local_file(fleet: SSHFleet, where: Path, case: str) -> tuple[str, str, str]:
    """An inventory line for one host whose local SSH files its connection cannot use (found
    only by reading them), the file it names and what the error says of it."""
    config = where / "ssh_config"
    if case == "config does not parse":
        config.write_text(fleet.ssh_config.read_text() + "\nHost *\n    Port twenty-two\n")
        return f'ssh_config = "{config}"', str(config), "Invalid Port integer value"
    if case == "bad token":
        config.write_text("Host *\n    HostName %Z\n" + fleet.ssh_config.read_text())
        return f'ssh_config = "{config}"', str(config), "Invalid token expansion"
    if case == "include loop":
        config.write_text(f"Include {config}\n")
        return f'ssh_config = "{config}"', str(config), "Include"
    if case == "config is a directory":
        return f'ssh_config = "{where}"', str(where), "cannot read ssh_config"
    if case == "unreadable config":
        config.write_text(fleet.ssh_config.read_text())
        config.chmod(0)
        return f'ssh_config = "{config}"', str(config), "cannot read ssh_config"
    if case == "unreadable known_hosts":
        known = where / "known_hosts"
        known.write_bytes(fleet.known_hosts.read_bytes())
        known.chmod(0)
        return f'known_hosts = "{known}"', str(known), "cannot read known_hosts"
    assert case == "not a key"
    key = where / "id_notakey"
    key.write_text("this is not a private key\n")
    key.chmod(0o600)
    # With IdentitiesOnly, a file that is no key is skipped, as ssh skips it.
    config.write_text(fleet.ssh_config.read_text().replace("IdentitiesOnly yes", ""))
    lines = f'ssh_config = "{config}"\nidentity_file = "{key}"'
    return lines, str(key), "cannot load a private key"


def _reads_mode_000() -> bool:
    """Whether this process reads a file whatever its mode says (root, CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as where:
        probe = Path(where) / "mode-000"
        probe.write_text("")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return False
        return True


_OVERRIDES_MODES = _reads_mode_000()


@pytest.mark.parametrize(
    "case",
    [
        "config does not parse",
        "bad token",
        "include loop",
        "config is a directory",
        pytest.param(
            "unreadable config",
            marks=pytest.mark.skipif(_OVERRIDES_MODES, reason="this user reads a mode 000 file"),
        ),
        pytest.param(
            "unreadable known_hosts",
            marks=pytest.mark.skipif(_OVERRIDES_MODES, reason="this user reads a mode 000 file"),
        ),
        "not a key",
    ],
)
def test_local_files_found_unusable_on_reading_leave_the_destination_untouched(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """An ssh_config that does not parse or includes itself, a file that cannot be read, an
    identity file that is no key: found before the destination is touched when every host
    stops on it (exit 2, nothing created, nothing added), with the very error the connection
    gives when the other hosts sync (exit 1)."""
    make_openclaw_tree(fleet, "h1")
    where = tmp_path / "bad"
    where.mkdir()
    line, path, said = _unusable_local_file(fleet, where, case)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    inv.write_text(inv.read_text().replace('name = "h0"', f'name = "h0"\n{line}'))
    args = ["sync", "h0", "--inventory", str(inv), "--json", "--dest"]
    never = tmp_path / "never"
    code, events = run_cli([*args, str(never)], capsys)
    assert code == 2 and not never.exists(), events
    (first,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (first.host, first.kind) == ("h0", "config")
    assert path in (first.path or "") and said in first.message, first
    assert [h.status for h in events[-1].hosts] == ["failed"]  # type: ignore[attr-defined]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    code, _ = run_cli([*args, str(kept)], capsys)
    assert code == 2 and [p.name for p in kept.iterdir()] == ["notes.txt"]
    # In text too: the host, the file and what to do.
    assert main(["sync", "h0", "--inventory", str(inv), "--dest", str(never)]) == 2
    err = capsys.readouterr().err
    assert f"h0: {path}" in err and said in err and first.hint in err, err
    # The library's sync too.
    hosts = [h for h in load_inventory(inv).hosts if h.name == "h0"]
    got: list[object] = []
    summary = anyio.run(lambda: api.sync(hosts, never, emit=got.append))
    assert [e for e in got if isinstance(e, ErrorEvent)] == [first]
    assert summary.exit_code == 2 and not never.exists()
    # With a host that works, the bad one fails on connecting, with the same error.
    code, summary, events = sync(inv, tmp_path / "m", capsys)
    assert code == 1 and [h.status for h in summary.hosts] == ["failed", "ok"]
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert error == first
    assert_exact(fleet, tmp_path / "m", "h1")


def test_partial_trailing_line_waits_for_its_newline(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, b'{"a":1}\n{"b":2}\n{"c":')
    sync(inv, dest, capsys)
    assert (dest / "h0" / rel).read_bytes() == b'{"a":1}\n{"b":2}\n'
    append(fleet, "h0", rel, b'3}\n{"d":4}\n')
    sync(inv, dest, capsys)
    assert (dest / "h0" / rel).read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n{"d":4}\n'


def test_rewrites_keep_the_old_copy_as_a_version(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(9)
    base = "agents/a/sessions"
    originals = {}
    for kind in ("shrunk", "renamed", "regrown", "truncated"):
        originals[kind] = session_bytes(rng, 30)
        fleet.write("h0", f"{base}/{kind}.jsonl", originals[kind])
    sync(inv, dest, capsys)
    # compaction: shorter content
    fleet.write("h0", f"{base}/shrunk.jsonl", session_bytes(rng, 5))
    # replace-by-rename with new content of a larger size (a different inode)
    new = fleet.write("h0", f"{base}/renamed.tmp", session_bytes(rng, 40))
    os.rename(new, fleet.path("h0", f"{base}/renamed.jsonl"))
    # copy-truncate, then the agent wrote more than before: same inode, larger, overlap differs
    with open(fleet.path("h0", f"{base}/regrown.jsonl"), "r+b") as f:
        f.truncate(0)
        f.write(session_bytes(rng, 45, start=1000))
    # truncated to nothing: the mirror keeps everything
    with open(fleet.path("h0", f"{base}/truncated.jsonl"), "r+b") as f:
        f.truncate(0)
    # As the README says: the emptied transcript is unchanged (its copy kept as it is), in a
    # dry run as in the sync, until new lines arrive.
    _, dry, events = sync(inv, dest, capsys, "--dry-run")
    planned = {e.path for e in events if isinstance(e, Planned)}
    assert f"{base}/truncated.jsonl" not in planned and len(planned) == 3
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert dry.files.unchanged == summary.files.unchanged == 1
    h0 = summary.hosts[0]
    assert h0.files.rewritten == 3
    assert h0.versions_kept == 3
    for kind in ("shrunk", "renamed", "regrown"):
        assert (dest / "h0" / base / f"{kind}.jsonl").read_bytes() == fleet.path(
            "h0", f"{base}/{kind}.jsonl"
        ).read_bytes()
        kept = dest / ".remote-sync" / "versions" / "h0" / base / f"{kind}.jsonl.v1"
        assert kept.read_bytes() == originals[kind], kind
    assert (dest / "h0" / base / "truncated.jsonl").read_bytes() == originals["truncated"]
    # Then it grows again from nothing: the old copy is kept as a version.
    append(fleet, "h0", f"{base}/truncated.jsonl", session_bytes(rng, 2))
    sync(inv, dest, capsys)
    kept = dest / ".remote-sync" / "versions" / "h0" / base / "truncated.jsonl.v1"
    assert kept.read_bytes() == originals["truncated"]
    assert_exact(fleet, dest, "h0")


def test_deleted_files_stay_in_the_mirror(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    paths = make_openclaw_tree(fleet, "h0")
    sync(inv, dest, capsys)
    kept = (dest / "h0" / paths[0]).read_bytes()
    fleet.path("h0", paths[0]).unlink()
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.deleted == 1
    assert (dest / "h0" / paths[0]).read_bytes() == kept
    with MirrorState(dest) as state:
        row = state.host_files("h0")[paths[0].encode()]
    assert row.state == "deleted" and row.deleted_at


def test_an_openclaw_that_moved_to_sqlite_is_said_and_its_database_never_copied(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw 2026.7.2 and later keep sessions in a per-agent SQLite database: the JSONL
    files left are mirrored, the live database is not copied, and every sync says so (a
    warning, not a failure), rather than a mirror that looks complete while it is not."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1")
    fleet.write(
        "h0", "agents/main/agent/openclaw-agent.sqlite", b"SQLite format 3\x00" + bytes(100)
    )
    for _ in range(2):
        code, summary, events = sync(inv, dest, capsys)
        assert code == 0 and summary.exit_code == 0 and summary.hosts_ok == 2
        warnings = [e for e in events if isinstance(e, WarningEvent)]
        assert [(w.host, w.path, w.kind) for w in warnings] == [
            ("h0", "agents/main/agent/openclaw-agent.sqlite", "moved_store")
        ]
        assert "SQLite" in warnings[0].message and "openclaw backup" in warnings[0].hint
        assert_exact(fleet, dest, "h1")
        assert not (dest / "h0" / "agents" / "main" / "agent").exists()
    code, _ = run_cli(["sync", "--inventory", str(inv), "--dest", str(dest)])
    assert code == 0
    assert "warning h0: agents/main/agent/openclaw-agent.sqlite: this OpenClaw keeps" in (
        capsys.readouterr().err.replace("\n", " ")
    )


HOSTILE = [
    b"with space.jsonl",
    b"new\nline.jsonl",
    b"quote'single\".jsonl",
    b"$(touch PWNED).jsonl",
    b"`touch PWNED2`.jsonl",
    b"-leading-dash.jsonl",
    b"\xff\xfenot-utf8.jsonl",
    b"colon:in:name.jsonl",
    b"back\\slash.jsonl",
    # From the tenth item on, the fetch script refers to an item as ${10}, ${11}...
    b"dollar${1}brace.jsonl",
    b"glob*?[a].jsonl",
    b"tab\there;echo PWNED3.jsonl",
]


def test_hostile_file_names_are_mirrored_exactly_and_never_run(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    base = os.fsencode(fleet.path("h0", "agents/a/sessions"))
    fleet.mkdir("h0", "agents/a/sessions")
    for i, name in enumerate(HOSTILE):
        with open(os.path.join(base, name), "wb") as out:
            out.write(b'{"n":%d}\n' % i)
        os.chown(os.path.join(base, name), fleet.uid, fleet.gid)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0, summary
    mirrored = os.fsencode(dest / "h0" / "agents/a/sessions")
    assert sorted(os.listdir(mirrored)) == sorted(HOSTILE)
    for i, name in enumerate(HOSTILE):
        assert Path(os.fsdecode(os.path.join(mirrored, name))).read_bytes() == b'{"n":%d}\n' % i
    home = Path("/home") / fleet.user
    for where in (fleet.path("h0"), home, Path(os.getcwd()), fleet.path("h0", "agents/a/sessions")):
        assert not any((where / f"PWNED{n}").exists() for n in ("", "2", "3"))


def test_a_first_sync_of_many_files_hands_its_items_to_xargs_and_mirrors_them_exactly(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The round of a first sync of many files sends its items NUL-terminated after a line
    "-<n>", for xargs on the host to read in blocks (its shell's read would take one byte a
    system call); the next round, a few appends, sends them as lines its shell runs. Both
    mirror every file exactly, the hostile names too."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    fleet.mkdir("h0", "agents/a/sessions")
    base = os.fsencode(fleet.path("h0", "agents/a/sessions"))
    names = [b"%04d-0000-4000-8000-%012d.jsonl" % (n, n) for n in range(400)] + HOSTILE
    for i, name in enumerate(names):
        with open(os.path.join(base, name), "wb") as out:
            out.write(b'{"n":%d}\n' % i)
        os.chown(os.path.join(base, name), fleet.uid, fleet.gid)
    sent: list[bytes] = []

    def spied(*args: Any, **kwargs: Any) -> bytes:
        sent.append(fetch_script.round_fetch_stdin(*args, **kwargs))
        return sent[-1]

    monkeypatch.setattr(fetch_requests, "round_fetch_stdin", spied)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0, summary
    assert summary.files.new == len(names)
    assert_exact(fleet, dest, "h0")
    assert len(sent) == 1 and re.match(rb"-[0-9]+\n", sent[0])
    for i in range(3):
        with open(os.path.join(base, names[i]), "ab") as out:
            out.write(b'{"more":%d}\n' % i)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.grown == 3, summary
    assert_exact(fleet, dest, "h0")
    assert len(sent) == 2 and sent[1].count(b"\n") == 1 and not sent[1].startswith(b"-")
    home = Path("/home") / fleet.user
    for where in (fleet.path("h0"), home, Path(os.getcwd()), fleet.path("h0", "agents/a/sessions")):
        assert not any((where / f"PWNED{n}").exists() for n in ("", "2", "3"))


def test_symlinks_are_not_followed(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.jsonl").write_bytes(b'{"secret":1}\n')
    fleet.write("h0", "agents/a/sessions/real.jsonl", b'{"ok":1}\n')
    os.symlink(secret / "secret.jsonl", fleet.path("h0", "agents/a/sessions/link.jsonl"))
    os.symlink(secret, fleet.path("h0", "agents/a/sessions/linkdir"))
    dest = tmp_path / "m"
    code, _, _ = sync(inv, dest, capsys)
    assert code == 0
    assert sorted(os.listdir(dest / "h0" / "agents/a/sessions")) == ["real.jsonl"]


def test_permission_denied_file_is_reported_while_the_rest_syncs(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0")
    os.chmod(fleet.path("h0", paths[1]), 0)
    dest = tmp_path / "m"
    code, summary, events = sync(inv, dest, capsys)
    assert code == 1
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.host, e.path, e.kind) for e in errors] == [("h0", paths[1], "permission_denied")]
    assert "let the login user read the file" in errors[0].hint
    h0 = summary.hosts[0]
    assert h0.status == "partial" and h0.files.failed == 1 and h0.files.new == 11
    # Not counted as an ok host: the totals say partial, as the exit code does.
    assert (summary.hosts_ok, summary.hosts_partial, summary.hosts_failed) == (0, 1, 0)
    assert (dest / "h0" / paths[0]).exists() and not (dest / "h0" / paths[1]).exists()


def test_host_key_mismatch_is_refused_while_others_sync(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1")
    fleet.rotate_host_key("h1")
    dest = tmp_path / "m"
    code, summary, events = sync(inv, dest, capsys)
    assert code == 1
    by_host = {h.host: h for h in summary.hosts}
    assert by_host["h0"].status == "ok"
    assert by_host["h1"].status == "failed" and "CHANGED" in (by_host["h1"].error or "")
    assert any(
        isinstance(e, ErrorEvent) and e.kind == "host_key" and e.host == "h1" for e in events
    )
    assert not (dest / "h1").exists()


def test_unreachable_host_exit_1_others_carry_on(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0")
    fleet.stop("h1")
    code, summary, _ = sync(inv, tmp_path / "m", capsys)
    assert code == 1
    by_host = {h.host: h for h in summary.hosts}
    assert by_host["h0"].status == "ok" and by_host["h1"].status == "failed"
    # The address and port tried, as ssh names them ("connect to host H port P").
    tried = f"h1: cannot connect to 127.0.0.1 port {fleet.host('h1').port}: connection refused"
    assert (by_host["h1"].error or "").startswith(tried), by_host["h1"].error


def test_an_unreachable_name_not_in_the_inventory_says_so_and_suggests_its_names(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A HOST not in the inventory is an ad-hoc host (as it must be), so a mistyped name was
    tried as an address and failed with nothing but "cannot resolve" or "refused". Its hint
    now says that the name is not in the inventory and which of its names are close."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    # The ad-hoc host's own ssh_config sends every name to a closed port: no DNS is asked.
    config = tmp_path / "adhoc_config"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(f"Host *\n  HostName 127.0.0.1\n  Port {port}\n")
    code, summary, events = sync(inv, tmp_path / "m", capsys, "h00", "-F", str(config))
    assert code == 1 and summary.hosts[0].status == "failed"
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert error.host == "h00" and error.kind == "unreachable"
    assert error.hint.startswith(
        f"'h00' is not a host of the inventory {inv} (did you mean 'h0'?), so it was tried "
        "as an address or ssh_config alias; if it is one, check that the host is up"
    ), error.hint
    assert "did you mean 'h0'?" in (summary.hosts[0].error or "")


@pytest.mark.parametrize("fails_on", ["host_key", "auth_failed"])
def test_a_name_not_in_the_inventory_that_reaches_a_host_and_fails_there_says_so(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fails_on: str,
) -> None:
    """A mistyped inventory name that is also some machine's name reaches that machine, and
    its host key or our login is refused there: the error said only that, with no clue that
    the name was not the inventory's. The not-in-the-inventory note now comes first, and the
    error's own hint after it."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    # The ad-hoc host's own ssh_config sends every name to h0's sshd: a real host answers.
    config = tmp_path / "adhoc_config"
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(fleet.known_hosts.read_text() if fails_on == "auth_failed" else "")
    config.write_text(
        f"Host *\n  HostName 127.0.0.1\n  Port {fleet.host('h0').port}\n  User {fleet.user}\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n"
    )
    extra = ("-F", str(config), "--known-hosts", str(known))
    code, summary, events = sync(inv, tmp_path / "m", capsys, "h00", *extra)
    assert code == 1 and summary.hosts[0].status == "failed"
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert error.host == "h00" and error.kind == fails_on, error
    note = (
        f"'h00' is not a host of the inventory {inv} (did you mean 'h0'?), so it was tried "
        "as an address or ssh_config alias, and a host answered there; if it is the one "
        "meant, "
    )
    assert error.hint.startswith(note) and len(error.hint) > len(note), error.hint
    assert error.hint.count("is not a host of the inventory") == 1


def test_second_run_is_refused_by_the_lock(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0")
    with MirrorState(dest):
        code, events = run_cli(
            ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"], capsys
        )
    assert code == 75
    assert isinstance(events[0], ErrorEvent) and events[0].kind == "locked"
    assert not (dest / "h0").exists()


def test_bad_inventory_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[hosts]]\nname = "a"\nadress = "x"\n')
    code = run_cli(["sync", "--inventory", str(inv), "--dest", str(tmp_path / "m")])[0]
    assert code == 2
    assert "inventory.toml: line 3" in capsys.readouterr().err


def test_adhoc_host_with_ssh_config(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    code, events = run_cli(adhoc_sync_args(fleet, dest), capsys)
    assert code == 0, events
    assert_exact(fleet, dest, "h0")


def test_sshd_killed_mid_transfer_exit_1_then_rerun_completes(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    fleet.write("h0", "agents/a/sessions/big.jsonl", big_session(256 * 1024 * 1024))
    make_openclaw_tree(fleet, "h0")
    proc = cli_process(["sync", "--inventory", str(inv), "--dest", str(dest), "--json"])
    temp_dir = dest / ".remote-sync" / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        temps = list(temp_dir.glob("*")) if temp_dir.exists() else []
        if any(t.stat().st_size > 16 * 1024 * 1024 for t in temps if t.exists()):
            fleet.stop("h0")  # the host vanishes mid-transfer
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    summary = [line for line in out.splitlines() if b'"summary"' in line][-1]
    assert b'"host":"h0","status":"failed"' in summary
    # The error names the host and the file the transfer was in the middle of.
    assert b"h0: agents/a/sessions/big.jsonl: " in summary, summary
    errors = [line for line in out.splitlines() if b'"type":"error"' in line]
    assert any(b'"path":"agents/a/sessions/big.jsonl"' in line for line in errors), errors
    assert not list(temp_dir.glob("*")), "a partial temp file was left behind"
    fleet.start("h0")
    assert_sync_heals(fleet, ["sync", "--inventory", str(inv), "--dest", str(dest)], dest)


def test_a_dropped_connection_keeps_the_whole_files_that_arrived_before_it(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first sync's whole transcripts come through tar in batches of at most BATCH_BYTES
    (or one larger file each), each committed after its batch's head digest: a host cut off
    once two of three large sessions fully arrived keeps those two, and the rerun fetches
    only the third. (All three in one archive, as before, lost both to the cut.)"""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    # Any two are over the budget: each its own batch. Each is also more than the channel's
    # window and the socket's buffers, so the one being read when the host dies is cut.
    size = fetch_script.BATCH_BYTES // 2 + 1024 * 1024
    paths = [f"agents/a/sessions/s{i}.jsonl" for i in range(3)]
    for rel in paths:
        fleet.write("h0", rel, big_session(size))
    opened: list[bytes] = []
    real_open = frames.FrameHandler._open

    def open_then_cut(handler: frames.FrameHandler, t: Transfer) -> Any:
        opened.append(t.remote.path)
        if len(opened) == 3:  # the first two are in: the host goes away
            fleet.stop("h0")
        return real_open(handler, t)

    monkeypatch.setattr(frames.FrameHandler, "_open", open_then_cut)
    code, _, events = sync(inv, dest, capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert (code, done.status) == (1, "failed"), done.error
    assert len(opened) == 3
    with MirrorState(dest) as state:
        committed = {path: row.size for path, row in state.host_files("h0").items()}
    arrived = {path: fleet.path("h0", os.fsdecode(path)).stat().st_size for path in opened[:2]}
    assert committed == arrived
    for path in opened[:2]:
        assert (dest / "h0" / os.fsdecode(path)).read_bytes() == fleet.path(
            "h0", os.fsdecode(path)
        ).read_bytes()
    monkeypatch.undo()
    fleet.start("h0")
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    (h0,) = summary.hosts
    assert (h0.files.new, h0.files.unchanged) == (1, 2)
    assert h0.bytes == fleet.path("h0", os.fsdecode(opened[2])).stat().st_size
    assert_exact(fleet, dest, "h0")


#: Pieces small enough that a file of a few MiB is many of them (PIECE_BYTES is 64 MiB).
PIECE = 1024 * 1024
#: More than what can be on its way when the host is cut off (the channel's window, 2 MiB on
#: loopback, and the pipes on the host): the pieces after the cut do not all arrive.
PIECED_SIZE = 12 * 1024 * 1024


def _messages(count: int, start: int = 0, size: int = 1500) -> bytes:
    """``count`` OpenClaw message lines of about ``size`` bytes (fast to make), ids from
    ``start``: sessions the index counts messages and marks pages of."""
    text = base64.b64encode(os.urandom(count * size * 3 // 4 + 3)).decode()
    return b"".join(
        json.dumps(
            {
                "type": "message",
                "id": f"{i:08x}",
                "timestamp": "2026-11-21T10:00:00Z",
                "message": {
                    "role": "user" if i % 2 else "assistant",
                    "content": [{"type": "text", "text": text[n * size : (n + 1) * size]}],
                },
            }
        ).encode()
        + b"\n"
        for n, i in enumerate(range(start, start + count))
    )


def _one_big_transcript(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int = PIECE
) -> tuple[Path, Path, str]:
    """Pieces of ``piece`` bytes, and an inventory of h0 alone: the inventory, the mirror's
    destination, and the path of the transcript the test writes on h0."""
    monkeypatch.setattr(engine, "PIECE_BYTES", piece)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    return inv, tmp_path / "m", "agents/a/sessions/big.jsonl"


def _pieces_handed(
    monkeypatch: pytest.MonkeyPatch,
    path: bytes,
    then: Any = None,
    *,
    after: int = 0,
) -> list[tuple[int, bytes]]:
    """Record each piece of ``path`` handed to the commit (its size and the bytes its
    descriptor holds up to it), and call ``then()`` once ``after`` of them were."""
    handed: list[tuple[int, bytes]] = []
    real = engine.HostSync.finished

    async def finished(sync: engine.HostSync, pending: Any) -> None:
        ours = pending.row.path == path and pending.piece
        if ours:  # before its flush, which may close its descriptor at once, starts
            size = pending.row.size
            handed.append((size, os.pread(pending.fd, size, 0)))
        await real(sync, pending)
        if ours and len(handed) == after and then is not None:
            then()

    monkeypatch.setattr(engine.HostSync, "finished", finished)
    return handed


def _assert_index_is_a_rebuild(dest: Path, tmp_path: Path) -> None:
    copy = tmp_path / "rebuilt"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(dest, copy)
    rebuild_index(copy)
    for table in ("sessions", "session_marks"):
        rows = []
        for where in (dest, copy):
            with contextlib.closing(sqlite3.connect(where / ".remote-sync" / "state.db")) as db:
                rows.append(sorted(db.execute(f"SELECT * FROM {table}")))
        assert rows[0] == rows[1], table


def _assert_cut_at_a_line_end(dest: Path, rel: str, data: bytes, at_least: int) -> int:
    """The checkpoint of ``rel`` after a dropped connection: at least ``at_least`` bytes, at a
    line end of ``data``, which the mirrored file holds exactly so far."""
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert row.size >= at_least
    assert data[row.size - 1 : row.size] == b"\n"
    assert (dest / "h0" / rel).read_bytes() == data[: row.size]
    assert not list((dest / ".remote-sync" / "tmp").glob("*")), "a temp file was left behind"
    return row.size


def _assert_rerun_fetches_the_rest(
    inv: Path, dest: Path, capsys: pytest.CaptureFixture[str], fleet: SSHFleet, rest: int
) -> None:
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    (h0,) = summary.hosts
    assert h0.files.grown == 1
    # The rest, and an overlap before each piece of it: not what the first run had fetched.
    assert rest <= h0.bytes <= rest + 4096 * (2 + rest // (PIECE - 4096))
    assert_exact(fleet, dest, "h0")


def _assert_a_drop_after_two_pieces_keeps_them(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inv: Path,
    dest: Path,
    rel: str,
    data: bytes,
    at_least: int,
) -> None:
    """Sync h0, which holds ``data`` at ``rel``, with the host stopped once two pieces of it
    were handed to the commit: the run fails, each piece handed is a prefix of ``data``, the
    mirror holds at least ``at_least`` bytes up to a line end but not the end, and its index
    is a rebuild's. Then the host is started again and a rerun fetches only the rest."""
    handed = _pieces_handed(monkeypatch, rel.encode(), lambda: fleet.stop("h0"), after=2)
    code, _, events = sync(inv, dest, capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert (code, done.status) == (1, "failed"), done.error
    assert [data.startswith(piece) for _, piece in handed] == [True] * len(handed)
    size = _assert_cut_at_a_line_end(dest, rel, data, at_least)
    assert size < len(data) - 2 * 1024 * 1024  # the host was cut off before the end
    _assert_index_is_a_rebuild(dest, tmp_path)
    fleet.start("h0")
    _assert_rerun_fetches_the_rest(inv, dest, capsys, fleet, len(data) - size)
    _assert_index_is_a_rebuild(dest, tmp_path)


def test_a_connection_dropped_in_a_big_new_transcript_keeps_the_pieces_that_arrived(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first sync of a transcript longer than a piece commits it piece by piece, each at
    its last line end once the host's head digest after it agrees: a host cut off after the
    second piece leaves at least two pieces' lines committed (the mirror a line-ended
    prefix of the file, its index that of those lines), and the rerun fetches only the
    rest. It used to commit nothing of the file, and the rerun fetched it all again."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    data = _messages(PIECED_SIZE // 1600)
    fleet.write("h0", rel, data)
    # The second piece ends a piece and an overlap short of two, at the line end before.
    _assert_a_drop_after_two_pieces_keeps_them(
        fleet, tmp_path, capsys, monkeypatch, inv, dest, rel, data, 2 * PIECE - 4096 - 2000
    )


def test_a_connection_dropped_in_a_big_append_keeps_the_pieces_that_arrived(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for a large append after a long outage: the pieces committed extend the
    mirrored file in place, and the session's index goes on from its stored facts."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    fleet.write("h0", rel, _messages(100))
    code, _, _ = sync(inv, dest, capsys)
    assert code == 0
    append(fleet, "h0", rel, _messages(PIECED_SIZE // 1600, start=100))
    data = fleet.path("h0", rel).read_bytes()
    before = (dest / "h0" / rel).stat().st_size
    _assert_a_drop_after_two_pieces_keeps_them(
        fleet,
        tmp_path,
        capsys,
        monkeypatch,
        inv,
        dest,
        rel,
        data,
        before + 2 * PIECE - 3 * 4096 - 2000,
    )


def test_a_transcript_rewritten_in_place_between_its_pieces_is_fetched_whole(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transcript rewritten in place (same inode, same size, another content) after its
    first piece arrived: the piece being read then has another head, or another overlap,
    and the file is fetched whole in the same run. What its pieces committed is a prefix
    of the old content, kept as a version; no piece ever held a mix of the two."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    old = _messages(PIECED_SIZE // 1600)
    new = _messages(PIECED_SIZE // 1600, start=1)
    new = new[: new.rindex(b"\n", 0, len(old)) + 1]
    new += b"x" * (len(old) - len(new) - 1) + b"\n"
    fleet.write("h0", rel, old)

    def rewrite() -> None:
        with open(fleet.path("h0", rel), "r+b") as remote:
            remote.write(new)

    handed = _pieces_handed(monkeypatch, rel.encode(), rewrite, after=1)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert handed
    for _size, piece in handed:
        assert old.startswith(piece) or new.startswith(piece)
    assert (summary.files.rewritten, summary.hosts[0].versions_kept) == (1, 1)
    assert (dest / "h0" / rel).read_bytes() == new
    kept = (dest / ".remote-sync" / "versions" / "h0" / f"{rel}.v1").read_bytes()
    assert old.startswith(kept) and kept.endswith(b"\n") and len(kept) >= handed[0][0]
    _assert_index_is_a_rebuild(dest, tmp_path)


def _follow_up_asked(monkeypatch: pytest.MonkeyPatch) -> list[FetchRequest]:
    """Record the requests the follow-up command makes of each file it fetches."""
    asked: list[FetchRequest] = []
    real = engine.follow_up_requests

    def follow_up_requests(t: Transfer, piece_bytes: int) -> list[FetchRequest]:
        made = real(t, piece_bytes)
        asked.extend(made)
        return made

    monkeypatch.setattr(engine, "follow_up_requests", follow_up_requests)
    return asked


@pytest.mark.parametrize("length", [0.5, 1.0, 1.4])
def test_a_transcript_fetched_whole_again_by_the_follow_up_comes_in_pieces_too(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    length: float,
) -> None:
    """A transcript rewritten in place between its pieces is fetched whole again by the
    follow-up command in pieces too, each committed, as in the round (it came in one range,
    all of it lost to a connection dropped near its end): cut by its listed size, or by the
    end a read that came short found it at (half as long: the follow-up no longer asks for
    every listed piece, read past after the first came short), the last piece a whole piece
    long. No piece is longer than a piece: what grew past the last one (1.4 times as long)
    comes with the next round, as an append, where the last piece went on to the follow-up's
    bound (twice the listed size)."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    old = _messages(PIECED_SIZE // 1600)
    new = _messages(int(len(old) * length) // 1550, start=1)
    fleet.write("h0", rel, old)

    def rewrite() -> None:
        with open(fleet.path("h0", rel), "r+b") as remote:
            remote.write(new)
            remote.truncate()

    handed = _pieces_handed(monkeypatch, rel.encode(), rewrite, after=1)
    asked = _follow_up_asked(monkeypatch)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert (summary.files.rewritten, summary.hosts[0].versions_kept) == (1, 1)
    assert asked and max(request.length for request in asked) <= PIECE
    assert len(asked) <= min(len(old), len(new)) // (PIECE - OVERLAP_BYTES) + 2
    mirrored = (dest / "h0" / rel).read_bytes()
    assert new.startswith(mirrored) and mirrored.endswith(b"\n")
    assert len(mirrored) >= min(len(old), len(new))
    for _size, piece in handed:
        assert old.startswith(piece) or new.startswith(piece)
    again = [size for size, piece in handed if not old.startswith(piece)]
    # Pieces of the listed size, or of the file's, if shorter (past that, the last piece).
    assert len(again) >= min(len(old), len(new)) // PIECE - 1
    assert again == sorted(again) and again[-1] < len(new)
    _assert_index_is_a_rebuild(dest, tmp_path)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.rewritten == 0
    assert (dest / "h0" / rel).read_bytes() == new
    _assert_index_is_a_rebuild(dest, tmp_path)


def _cut_after_the_plan(
    monkeypatch: pytest.MonkeyPatch, remote: Path, cut: int, before_follow_up: Callable[[], None]
) -> Callable[[], None]:
    """The host's file cut to ``cut`` bytes once the round's plan is made (its reads then
    come short), and ``before_follow_up`` done as the follow-up's command is built; returns
    what puts both back, for the next round."""
    real_plan, real_fetch_argv = engine.make_plan, engine.fetch_argv

    def plan_then_cut(*args: Any, **kwargs: Any) -> Any:
        plan = real_plan(*args, **kwargs)
        with open(remote, "r+b") as f:
            f.truncate(cut)
        return plan

    def follow_up(*args: Any, **kwargs: Any) -> list[str]:
        before_follow_up()
        return real_fetch_argv(*args, **kwargs)

    monkeypatch.setattr(engine, "make_plan", plan_then_cut)
    monkeypatch.setattr(engine, "fetch_argv", follow_up)

    def undo() -> None:
        monkeypatch.setattr(engine, "make_plan", real_plan)
        monkeypatch.setattr(engine, "fetch_argv", real_fetch_argv)

    return undo


@pytest.mark.parametrize("listed", ["small", "pieced"])
def test_a_transcript_cut_short_in_the_round_may_grow_back_by_its_listed_allowance(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    listed: str,
) -> None:
    """A transcript truncated after the listing (its append's read comes short) and grown
    again before the follow-up reads it, past the short read's end and as much again but
    within its listed size and as much again (FOLLOW_UP_GROWTH made 0): the follow-up's
    bound is its listed size's, so the run mirrors it (exit 0), where it failed as "changed
    again" with the bound taken from that end. Listed longer than a piece, it still comes
    in a piece, not in one read of twice that end: what grew past the piece comes with the
    next round, as an append."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    monkeypatch.setattr(fetch_requests, "FOLLOW_UP_GROWTH", 0)
    data = _messages(70)  # about 100 KiB, mirrored
    fleet.write("h0", rel, data)
    assert sync(inv, dest, capsys)[0] == 0
    total = 300 * 1024 if listed == "small" else 3 * PIECE
    data += _messages((total - len(data)) // 1550, start=70)
    fleet.write("h0", rel, data)
    cut = data.rindex(b"\n", 0, 150 * 1024) + 1  # the end the append's read finds
    regrown = data[:cut] + _messages((cut + 100 * 1024) // 1550, start=1000)
    if listed == "pieced":
        regrown += _messages(PIECE // 1550, start=5000)  # longer than a piece
    assert 2 * cut < len(regrown) < 2 * len(data)
    remote = fleet.path("h0", rel)

    def grow_then_follow_up() -> None:
        remote.write_bytes(regrown)  # same inode, grown from the cut

    undo = _cut_after_the_plan(monkeypatch, remote, cut, grow_then_follow_up)
    asked = _follow_up_asked(monkeypatch)
    code, summary, events = sync(inv, dest, capsys)
    errors = [e.message for e in events if isinstance(e, ErrorEvent)]
    assert (code, errors) == (0, [])  # was 1, ["changed again while being fetched; ..."]
    assert summary.files.grown == 1  # the mirrored copy is a prefix of what it became
    assert asked and max(request.length for request in asked) <= 2 * len(data)
    mirrored = (dest / "h0" / rel).read_bytes()
    if listed == "small":
        assert mirrored == regrown
    else:
        assert [request.length for request in asked] == [PIECE]
        assert regrown.startswith(mirrored) and mirrored.endswith(b"\n")
        assert PIECE - 1600 < len(mirrored) <= PIECE
    undo()
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / rel).read_bytes() == regrown
    _assert_index_is_a_rebuild(dest, tmp_path)


@pytest.mark.parametrize("listed", ["small", "pieced"])
def test_a_follow_up_read_that_comes_short_records_the_end_it_found(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    listed: str,
) -> None:
    """A transcript cut after the listing (the round's read of it comes short) and cut
    again before the follow-up reads it: the follow-up commits the lines it found (listed
    longer than a piece, the longer copy the round's first pieces put in place is kept as
    a version), and the row says the file was as long as that read found it, not as long
    as it was listed. Then the host
    puts the file back as it was listed, its mtime with it (a copy restored with ``cp -p``
    or from a snapshot; on a host whose listing has whole seconds, a rewrite within the
    second): the next round sees a file longer than what was read, and mirrors the rest,
    where a row that kept the listed size and mtime took it for unchanged and kept the
    shorter copy for good."""
    piece = 64 * 1024
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, piece)
    data = _messages((4 * piece if listed == "pieced" else piece // 2) // 1550)
    remote = fleet.write("h0", rel, data)
    listed_ns = remote.stat().st_mtime_ns
    # Mid-line, past the round's first two pieces, then within the follow-up's second.
    cut = len(data) * 5 // 8 + 100
    again = len(data) * 3 // 8 + 100

    def cut_again_then_follow_up() -> None:
        with open(remote, "r+b") as f:
            f.truncate(again)

    undo = _cut_after_the_plan(monkeypatch, remote, cut, cut_again_then_follow_up)
    code, summary, events = sync(inv, dest, capsys)
    assert (code, [e for e in events if isinstance(e, ErrorEvent)]) == (0, [])
    mirrored = (dest / "h0" / rel).read_bytes()
    lines = data.rindex(b"\n", 0, again) + 1
    assert mirrored == data[:lines]
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert (row.size, row.remote_size) == (lines, again)  # was (lines, len(data))
    if listed == "pieced":  # the round's first pieces put a longer copy in place
        assert summary.hosts[0].versions_kept == 1
        (kept,) = (dest / ".remote-sync" / "versions" / "h0").rglob("*.v1")
        assert data.startswith(kept.read_bytes()) and len(kept.read_bytes()) > lines
    undo()
    remote.write_bytes(data)  # the same inode, as it was listed
    os.utime(remote, ns=(listed_ns, listed_ns))
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.grown, summary.files.unchanged) == (0, 1, 0)
    assert (dest / "h0" / rel).read_bytes() == data
    _assert_index_is_a_rebuild(dest, tmp_path)


@pytest.mark.parametrize("read", ["a whole piece", "short"])
def test_a_line_longer_than_a_piece_in_a_one_piece_follow_up_arrives_whole_once(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    read: str,
) -> None:
    """A new transcript listed longer than a piece and cut inside its first piece, in a line
    longer than a piece, after the listing: the follow-up fetches it in one piece. That
    piece reads a whole piece of the file grown back, or comes short inside the line (the
    file still cut): either way only the lines before the long one are committed, not the
    part of it read. The next round appends the rest in pieces, from where the follow-up's
    read ended, the long line committed by the piece that ends it, once: the mirror is then
    exact. (A row that kept the listed size took the file, grown back to it, for one of its
    old size with another mtime: the rest came in one range of three pieces.)"""
    piece = 64 * 1024
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, piece)
    lines = _messages(14, size=1000)
    long_line = _messages(1, start=14, size=int(2.5 * piece))
    data = lines + long_line + _messages(30, start=15, size=1000)
    cut = len(lines) + 10 * 1024  # inside the long line, inside the first piece
    assert cut < piece < len(data) - len(lines) - piece
    remote = fleet.write("h0", rel, data)

    def follow_up() -> None:
        if read == "a whole piece":
            remote.write_bytes(data)  # grown back, the same inode

    undo = _cut_after_the_plan(monkeypatch, remote, cut, follow_up)
    asked = _follow_up_asked(monkeypatch)
    code, summary, events = sync(inv, dest, capsys)
    assert (code, [e for e in events if isinstance(e, ErrorEvent)]) == (0, [])
    assert [(request.start, request.length) for request in asked] == [(0, piece)]
    assert (dest / "h0" / rel).read_bytes() == lines  # not a byte of the long line
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert (row.size, row.remote_size) == (len(lines), piece if read != "short" else cut)
    undo()
    remote.write_bytes(data)
    handed = _pieces_handed(monkeypatch, rel.encode())
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.grown) == (0, 1)
    # The first pieces end no line: the first handed over is past the long one.
    assert handed and handed[0][0] >= len(lines) + len(long_line)
    for size, mirrored in handed:
        assert mirrored == data[:size] and data[size - 1 : size] == b"\n"
    assert (dest / "h0" / rel).read_bytes() == data
    _assert_index_is_a_rebuild(dest, tmp_path)


@pytest.mark.parametrize("first", ["new", "grown"])
def test_a_first_piece_left_in_the_batch_by_a_failed_commit_is_committed_by_the_rounds_end(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    first: str,
) -> None:
    """A transcript's first piece is handed over while an earlier flush is ready, and that
    flush's commit fails: HostSync.finished raises with the piece still in the batch. The
    round ends (its handler aborts the writer, nothing asks piece_committed or
    never_committed about that piece, which assert it is out of the batch), and the
    round's end flushes the batch: the piece is committed after its writer aborted, the
    mirrored file as long as its row says (a new one put in place with its lines, a grown
    one cut back to them), and the next run completes it."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch)
    if first == "grown":
        fleet.write("h0", rel, _messages(70))
        assert sync(inv, dest, capsys)[0] == 0
    data = _messages(3 * PIECE // 1550)
    fleet.write("h0", rel, data)
    real_finished, real_commit = engine.HostSync.finished, engine.commit
    failed: list[bool] = []

    def commit(state: MirrorState, items: list[durable.Pending]) -> None:
        if not items and not failed:  # the earlier flush's (made empty below)
            failed.append(True)
            raise StateError("disk I/O error", host="h0")
        real_commit(state, items)

    async def finished(sync_: engine.HostSync, pending: durable.Pending) -> None:
        if pending.piece and not failed:
            assert sync_.inflight is None
            # an earlier flush, done
            sync_.inflight = commits.Flush(sync_.state, [], sync_.version_numbers)
            while not sync_.inflight.ready():
                await anyio.sleep(0.01)
        await real_finished(sync_, pending)

    monkeypatch.setattr(engine.HostSync, "finished", finished)
    monkeypatch.setattr(engine, "commit", commit)
    code, _, events = sync(inv, dest, capsys)
    assert failed
    assert (code, [e.message for e in events if isinstance(e, ErrorEvent)]) == (
        1,
        ["disk I/O error"],
    )
    committed = _committed(dest, rel)
    assert PIECE - 2000 < committed <= PIECE  # the first piece's lines, committed
    assert (dest / "h0" / rel).read_bytes() == data[:committed]
    monkeypatch.setattr(engine.HostSync, "finished", real_finished)
    monkeypatch.setattr(engine, "commit", real_commit)
    assert sync(inv, dest, capsys)[0] == 0
    assert (dest / "h0" / rel).read_bytes() == data
    _assert_index_is_a_rebuild(dest, tmp_path)


def test_a_line_longer_than_a_piece_is_committed_by_the_piece_that_ends_it(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pieces in which no line ends commit nothing: the line is carried on, on disk, into
    the piece that ends it. Every checkpoint is at a line end, and the mirror is exact."""
    piece = 64 * 1024
    monkeypatch.setattr(engine, "PIECE_BYTES", piece)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/long.jsonl"
    long_line = _messages(1, start=40, size=int(3.5 * piece))
    data = _messages(40, size=1000) + long_line + _messages(100, start=41, size=1000)
    fleet.write("h0", rel, data)
    handed = _pieces_handed(monkeypatch, rel.encode())
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.new) == (0, 1)
    sizes = [size for size, _ in handed]
    assert all(data[size - 1 : size] == b"\n" for size in sizes)
    line_start = data.index(long_line)
    assert line_start in sizes  # the piece it starts in commits the lines before it
    # No piece ends it for three pieces: the next checkpoint is past it.
    after = sizes[sizes.index(line_start) + 1]
    assert after >= line_start + len(long_line)
    assert len(sizes) < len(data) // (piece - 4096)
    assert_exact(fleet, dest, "h0")
    _assert_index_is_a_rebuild(dest, tmp_path)


def _replace_by_rename(fleet: SSHFleet, rel: str, data: bytes) -> None:
    """Replace ``rel`` on h0 by a file of ``data`` (another inode), as an agent's rewrite."""
    path = fleet.path("h0", rel)
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.rename(temp, path)


def test_a_transcript_rewritten_and_fetched_in_pieces_records_its_kept_version(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transcript replaced by another one longer than several pieces: the old copy kept
    as a version is the one each piece's checkpoint records (versions list shows it), and
    recovery cuts back what a kill during a later piece leaves past the checkpoint."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    fleet.write("h0", rel, _messages(50, size=1000))
    assert sync(inv, dest, capsys)[0] == 0
    _replace_by_rename(fleet, rel, _messages(400, start=7, size=1000))
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    (h0,) = summary.hosts
    assert (h0.files.rewritten, h0.versions_kept) == (1, 1)
    assert_exact(fleet, dest, "h0")
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert row.version == 1
    assert [(v.path, v.version) for v in list_versions(dest)] == [(rel, 1)]
    # What a kill -9 in a later piece leaves: bytes past the checkpoint, a partial line.
    with open(dest / "h0" / rel, "ab") as mirrored:
        mirrored.write(b'{"type":"message","id":"par')
    with MirrorState(dest) as state:
        state.recover()
        after = state.host_files("h0")[rel.encode()]
    assert (after.size, after.version) == (row.size, 1)
    assert (dest / "h0" / rel).stat().st_size == row.size


def test_a_transcript_replaced_by_its_history_and_more_in_pieces_is_grown_not_rewritten(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transcript of several pieces replaced by rename with the same lines and more is
    fetched whole (another inode): its first piece, shorter than the mirrored copy and a
    prefix of it, is not put in place as a rewrite; the file is counted grown, no version
    kept, as when it came in one range."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    old = _messages(300, size=1000)
    fleet.write("h0", rel, old)
    assert sync(inv, dest, capsys)[0] == 0
    _replace_by_rename(fleet, rel, old + _messages(100, start=300, size=1000))
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    (h0,) = summary.hosts
    assert (h0.files.grown, h0.files.rewritten, h0.versions_kept) == (1, 0, 0)
    assert not (dest / ".remote-sync" / "versions").exists() or not list_versions(dest)
    assert_exact(fleet, dest, "h0")


def test_a_pieced_rewrite_reads_and_copies_its_pieces_off_the_event_loop(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transcript replaced by its history and more, fetched in pieces: comparing each
    piece with the longer mirrored copy, and moving the first piece put in place's partial
    line aside and back, read and write up to a piece each (64 MiB): they run in worker
    threads, not on the event loop's (the main thread here), where they held every other
    host's stream. The mirror is as exact as before."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    old = _messages(300, size=1000)
    fleet.write("h0", rel, old)
    assert sync(inv, dest, capsys)[0] == 0
    _replace_by_rename(fleet, rel, old + _messages(100, start=300, size=1000))
    threads: dict[str, list[threading.Thread]] = {"compare": [], "copy": []}
    real_compare = writer.WholeWriter._grows_the_old_copy
    real_copy = writer._copy_range

    def compare(self: writer.WholeWriter) -> bool:
        threads["compare"].append(threading.current_thread())
        return real_compare(self)

    def copy(source: int, start: int, target: int, at: int, length: int) -> None:
        threads["copy"].append(threading.current_thread())
        real_copy(source, start, target, at, length)

    monkeypatch.setattr(writer.WholeWriter, "_grows_the_old_copy", compare)
    monkeypatch.setattr(writer, "_copy_range", copy)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert summary.hosts[0].files.grown == 1
    # Several pieces compared; the partial line moved out, then back once committed.
    assert len(threads["compare"]) >= 3 and len(threads["copy"]) == 2
    on_loop = [t for each in threads.values() for t in each if t is threading.main_thread()]
    assert not on_loop
    assert_exact(fleet, dest, "h0")


def test_a_checkpoint_made_in_its_thread_for_a_cancelled_sync_is_taken_back(
    tmp_path: Path,
) -> None:
    """A cancel that comes while a piece's checkpoint is made in its worker thread is raised
    once the thread is done: the checkpoint it made, never handed to the batch, is taken
    back (its descriptor closed, its temp file removed) and the writer's checkpoint goes
    back to what it was before, which the give-up then cuts back to."""
    temp = tmp_path / "temp"
    made = durable.Pending(
        FileState(
            host="h0",
            path=b"s.jsonl",
            kind="append",
            size=10,
            remote_size=10,
            mtime=0.0,
            dev=0,
            ino=0,
            fingerprint=b"",
        ),
        os.open(temp, os.O_RDWR | os.O_CREAT, 0o600),  # the checkpoint's copy of a descriptor
        temp=str(temp),
        piece=True,
    )
    in_thread = threading.Event()
    cancelled = threading.Event()
    taken_back: list[int] = []

    class Writer:
        committed = 7

        def checkpoint(self) -> durable.Pending:
            in_thread.set()
            cancelled.wait(10)  # the cancel comes meanwhile, however slow the loop
            self.committed = 10
            return made

        def taken_back(self, committed: int) -> None:
            taken_back.append(committed)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel() -> None:
                    await anyio.to_thread.run_sync(in_thread.wait)
                    scope.cancel()
                    cancelled.set()

                tg.start_soon(cancel)
                await frames._checkpoint(Writer())  # type: ignore[arg-type]
                pytest.fail("the cancel was not raised")

    anyio.run(main)
    assert taken_back == [7]
    assert made.fd == -1 and not temp.exists()


@pytest.mark.parametrize("which", [2, 3])
def test_a_sync_cancelled_during_a_piece_checkpoint_keeps_the_piece_handed_before(
    fleet: SSHFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: int,
) -> None:
    """An app's cancel (its own scope's, or asyncio's) while a piece's checkpoint is made in
    its thread takes that checkpoint back, and only that one: the piece handed over before
    it, which the flush the round's end waits for commits, stays in the mirrored file, never
    shorter than its checkpoint. (A new file's second piece, after the first put it in
    place; its third, after a piece handed over and not yet known committed.)"""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    data = _messages(600, size=1000)
    fleet.write("h0", rel, data)
    scopes: list[anyio.CancelScope] = []
    calls: list[int] = []
    real_checkpoint = writer.WholeWriter.checkpoint

    def checkpoint(self: writer.WholeWriter) -> Any:
        calls.append(1)
        if len(calls) == which:  # in the checkpoint's thread: the cancel comes meanwhile
            anyio.from_thread.run_sync(scopes[0].cancel)
        return real_checkpoint(self)

    monkeypatch.setattr(writer.WholeWriter, "checkpoint", checkpoint)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await api.sync(load_inventory(inv).hosts, dest)
            pytest.fail("the cancel was not raised")

    anyio.run(main)
    assert len(calls) == which
    size = _committed(dest, rel)  # read as it is: no recovery ran since
    assert size > 0
    assert (dest / "h0" / rel).stat().st_size >= size
    assert (dest / "h0" / rel).read_bytes()[:size] == data[:size]


def test_kill_9_between_a_first_piece_rename_and_its_commit_leaves_only_whole_lines(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first piece of a new transcript renamed into place, the client killed before its
    commit: recovery follows the file found in place, which holds that piece's synced lines
    only (the start of the line the next piece ends is not written there until the commit),
    and a rerun completes the mirror."""
    monkeypatch.setenv("REMOTE_SYNC_PIECE_BYTES", str(64 * 1024))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/big.jsonl"
    data = _messages(400, size=1000)
    fleet.write("h0", rel, data)
    args = ["sync", "--inventory", str(inv), "--dest", str(dest)]
    done = fault_run(args, "before_commit")
    assert done.returncode == 9
    with MirrorState(dest) as state:
        state.recover()
        row = state.host_files("h0")[rel.encode()]
    local = (dest / "h0" / rel).read_bytes()
    assert 0 < row.size < len(data)
    assert local == data[: row.size]
    assert data[row.size - 1 : row.size] == b"\n"
    assert_sync_heals(fleet, args, dest)


def test_a_piece_whose_flush_fails_cuts_its_file_back_to_the_checkpoint(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A piece's flush failing (its sync) ends the host's round: the file is cut back to
    the last piece committed, what the checkpoint says, not to a piece never committed."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    data = _messages(600, size=1000)
    fleet.write("h0", rel, data)
    real = os.fdatasync
    syncs = []

    def fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("big.jsonl"):
            syncs.append(fd)
            if len(syncs) == 3:
                raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    code, _summary, _ = sync(inv, dest, capsys)
    assert code != 0
    with MirrorState(dest) as state:
        row = state.host_files("h0")[rel.encode()]
    assert row.size > 0
    assert (dest / "h0" / rel).read_bytes() == data[: row.size]


def test_a_file_given_up_while_its_piece_flushes_is_cut_back_when_that_flush_fails(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transcript fetched in pieces is given up (its next piece's overlap differs) while
    the flush of the piece before runs; the give-up can only cut back to that piece's end,
    which the flush may yet commit. The flush then fails: the file is cut back to the
    checkpoint before that piece at once, not left longer than its checkpoint until the
    next open's recovery. (The follow-up that would fetch the file whole is left out: it
    would replace what the failed flush left.)"""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    data = _messages(600, size=1000)
    fleet.write("h0", rel, data)
    given_up = threading.Event()
    real_abort = writer.WholeWriter.abort

    def abort(self: writer.WholeWriter) -> None:
        real_abort(self)
        given_up.set()

    resumed: list[int] = []
    real_resume = writer._LineWriter.resume

    def resume(self: writer._LineWriter, start: int) -> None:
        resumed.append(start)
        if len(resumed) == 2:  # the third piece: as if the file changed since the second
            raise writer.RewriteDetected
        real_resume(self, start)

    real_sync = os.fdatasync
    failed: list[int] = []

    def fdatasync(fd: int) -> None:
        # The first sync of the file in place is the second piece's (the first piece is
        # synced as a temp file): it fails, once its file was given up.
        if not failed and os.readlink(f"/proc/self/fd/{fd}").endswith("big.jsonl"):
            failed.append(fd)
            assert given_up.wait(30)
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    async def no_follow_up(sync: engine.HostSync, transfers: Any) -> list[Transfer]:
        return list(transfers)  # the file is seen as the failed flush left it

    monkeypatch.setattr(writer.WholeWriter, "abort", abort)
    monkeypatch.setattr(writer._LineWriter, "resume", resume)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(engine.HostSync, "_fetch_again", no_follow_up)
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.hosts[0].status) == (1, "failed")
    assert failed and "Input/output error" in str(summary.hosts[0].error)
    size = _committed(dest, rel)  # read as it is: no recovery ran since
    assert 0 < size < 64 * 1024
    assert (dest / "h0" / rel).read_bytes() == data[:size]


@pytest.mark.parametrize("later", ["failed", "short"])
def test_a_file_given_up_in_a_piece_is_counted_failed_once_whatever_its_later_pieces_say(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    later: str,
) -> None:
    """A new transcript's first piece cannot be put in place (its flush says so: counted
    failed, its error said once). The pieces after it are read past, whatever they say: a
    read of one that fails on the host counted the file failed a second time, and one that
    came short (the file cut meanwhile) sent the file to the follow-up, which failed it
    again."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    data = _messages(600, size=1000)
    fleet.write("h0", rel, data)
    real_put = durable._put_in_place

    def put_in_place(
        state: MirrorState, item: durable.Pending, dirs: set[Path], numbers: VersionNumbers
    ) -> None:
        if item.row.path == rel.encode():
            raise MirrorError("cannot put the file in place", host="h0", path=rel)
        real_put(state, item, dirs, numbers)

    def cut() -> None:
        os.truncate(fleet.path("h0", rel), 3 * 64 * 1024)

    real_handle = frames.FrameHandler.handle

    async def handle(handler: frames.FrameHandler, event: object) -> None:
        if isinstance(event, End) and handler.requests[event.index].start > 3 * 64 * 1024:
            event = Failed(event.index)  # as a read the host could not finish
        await real_handle(handler, event)

    monkeypatch.setattr(durable, "_put_in_place", put_in_place)
    if later == "failed":
        monkeypatch.setattr(frames.FrameHandler, "handle", handle)
    else:
        _pieces_handed(monkeypatch, rel.encode(), cut, after=1)
    code, summary, events = sync(inv, dest, capsys)
    (h0,) = summary.hosts
    assert (code, h0.status, h0.files.failed, h0.files.new) == (1, "partial", 1, 0)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.path, e.message) for e in errors] == [(rel, "cannot put the file in place")]
    assert not (dest / "h0" / rel).exists()
    assert not list((dest / ".remote-sync" / "tmp").glob("*")), "a temp file was left behind"


def test_a_piece_handed_over_starts_its_flush(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A piece's flush starts when it is handed over (it is smaller than a flush's bytes):
    it runs while the next piece streams in, which then seldom waits for it."""
    inv, dest, rel = _one_big_transcript(fleet, tmp_path, monkeypatch, 64 * 1024)
    fleet.write("h0", rel, _messages(50, size=1000))
    assert sync(inv, dest, capsys)[0] == 0
    append(fleet, "h0", rel, _messages(400, start=50, size=1000))
    waiting: list[bool] = []
    real = engine.HostSync.finished

    async def finished(sync: engine.HostSync, pending: Any) -> None:
        await real(sync, pending)
        if pending.piece:
            waiting.append(any(item is pending for item in sync.batch.items))

    monkeypatch.setattr(engine.HostSync, "finished", finished)
    assert sync(inv, dest, capsys)[0] == 0
    assert len(waiting) >= 3
    assert not any(waiting)
    assert_exact(fleet, dest, "h0")


@pytest.mark.parametrize("value", ["4096", "64k"])
def test_a_piece_size_a_piece_cannot_have_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str, fleet: SSHFleet, tmp_path: Path
) -> None:
    monkeypatch.setenv("REMOTE_SYNC_PIECE_BYTES", value)
    with pytest.raises(ConfigError, match="REMOTE_SYNC_PIECE_BYTES"):
        engine.piece_bytes()
    # A sync says so before any host is asked or the destination made: exit 2, as a
    # usage error (it was each host's failure, after its listing, every file counted failed).
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=2)
    dest = tmp_path / "mirror"
    assert main(["sync", "-I", str(inv), "--dest", str(dest)]) == 2 and not dest.exists()
    monkeypatch.setenv("REMOTE_SYNC_PIECE_BYTES", "8192")
    assert engine.piece_bytes() == 8192


def _committed(dest: Path, rel: str) -> int:
    """The checkpoint's size of ``rel`` (0 before there is one)."""
    state_db = (dest / ".remote-sync" / "state.db").as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(state_db, uri=True)) as db:
            found = db.execute("SELECT size FROM files WHERE path = ?", (rel.encode(),)).fetchone()
    except sqlite3.Error:
        return 0  # not made yet (a read-only open makes nothing)
    return int(found[0]) if found is not None else 0


def test_kill_9_while_a_transcript_comes_in_pieces_then_rerun_gives_an_exact_mirror(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transcript fetched in pieces, its host appending meanwhile, the client killed at
    random points: every checkpoint is at a line end of the remote file, the mirror holds
    exactly its bytes up to there, and a last run completes the mirror."""
    monkeypatch.setenv("REMOTE_SYNC_PIECE_BYTES", str(PIECE))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/big.jsonl"
    rng = random.Random(7)
    fleet.write("h0", rel, _messages(PIECED_SIZE // 1600))
    args = ["sync", "--inventory", str(inv), "--dest", str(dest)]
    kills = 0
    partial = 0  # runs killed with pieces of their range committed
    size = 0
    for round_no in range(6):
        new_lines = rng.randint(3000, 8000)
        append(fleet, "h0", rel, _messages(new_lines, start=10_000 * (round_no + 1)))
        proc = cli_process(args)
        # Every other run is killed once two pieces are committed, the others at any time.
        deadline = time.monotonic() + rng.uniform(0.2, 1.0) * (60 if round_no % 2 else 1)
        while time.monotonic() < deadline and proc.poll() is None:
            if round_no % 2 and _committed(dest, rel) > size + 2 * PIECE:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=60)
        remote = fleet.path("h0", rel).read_bytes()
        before, size = size, _committed(dest, rel)
        if size:
            assert remote[size - 1 : size] == b"\n"
            assert (dest / "h0" / rel).read_bytes()[:size] == remote[:size]
        partial += before < size < len(remote) - 2 * 1024 * 1024
    assert kills >= 2
    assert partial >= 1
    assert_sync_heals(fleet, args, dest)


def test_kill_9_at_random_points_then_rerun_gives_an_exact_mirror(
    fleet: SSHFleet, tmp_path: Path
) -> None:
    """No duplicated or lost line, whatever instant the process dies at."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(11)
    paths = make_openclaw_tree(fleet, "h0", agents=3, sessions=10, lines=200)
    fleet.write("h0", "agents/big/sessions/big.jsonl", session_bytes(rng, 10_000, size=1500))
    args = ["sync", "--inventory", str(inv), "--dest", str(dest)]
    kills = 0
    latest = 1.2  # the latest instant to kill at; shrinks while runs end before their kill
    for round_no in range(12):
        # Change the remote between rounds: appends, a rewrite, a new file.
        for rel in rng.sample(paths, 5):
            append(fleet, "h0", rel, session_bytes(rng, rng.randint(1, 50), start=round_no * 1000))
        if round_no % 4 == 1:
            fleet.write("h0", paths[round_no], session_bytes(rng, 3, start=7))
        fleet.write("h0", f"agents/new/sessions/n{round_no}.jsonl", session_bytes(rng, 30))
        if round_no % 2 == 0:
            # Plenty to do, so the kill lands mid-fetch, mid-flush or mid-commit.
            append(fleet, "h0", "agents/big/sessions/big.jsonl", big_session(24 * 1024 * 1024))
        proc = cli_process(args)
        time.sleep(rng.uniform(0.2, 1.0) * latest)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        else:  # a fast machine: the next kills come earlier, so that most runs are cut
            latest = max(0.3, latest * 0.7)
        proc.communicate(timeout=60)
    assert kills >= 3
    assert_sync_heals(fleet, args, dest)
    # Lines are exactly the remote's: none lost, none duplicated.
    for rel in paths:
        got = (dest / "h0" / rel).read_bytes().splitlines()
        want = fleet.path("h0", rel).read_bytes().splitlines()
        assert got == want
    # The state agrees with the files.
    db = sqlite3.connect(dest / ".remote-sync" / "state.db")
    for path, size in db.execute("SELECT path, size FROM files WHERE host = 'h0'"):
        assert (dest / "h0" / os.fsdecode(path)).stat().st_size == size


def _wait_for_temp_bytes(proc, dest: Path, size: int, timeout: float = 60) -> bool:  # type: ignore[no-untyped-def]
    temp_dir = dest / ".remote-sync" / "tmp"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        temps = list(temp_dir.glob("*")) if temp_dir.exists() else []
        if any(t.stat().st_size > size for t in temps if t.exists()):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_cancels_with_130_and_a_rerun_completes(
    fleet: SSHFleet, tmp_path: Path, signals: int
) -> None:
    """Ctrl-C cancels (the summary says so); a second one aborts at once, as kill -9 would,
    with an error event and no traceback, even while the cancelled round winds down slowly.
    Either way a rerun completes the mirror."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0")
    fleet.write("h0", "agents/a/sessions/big.jsonl", big_session(256 * 1024 * 1024))
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    # With two, the first cancel takes a minute to wind down.
    proc = cli_process(args, fault=None if signals == 1 else "hold_cancel")
    assert _wait_for_temp_bytes(proc, dest, 16 * 1024 * 1024)
    proc.send_signal(signal.SIGINT)
    said = b""
    if signals == 2:
        assert proc.stderr is not None
        while b"cancelling (" not in said:  # the first is taken: the round winds down
            line = proc.stderr.readline()
            assert line, said
            said += line
        assert proc.poll() is None  # still winding down
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    err = said + err
    assert proc.returncode == 130, err
    assert b"Traceback" not in err, err
    last = json.loads(out.splitlines()[-1])
    if signals == 1:
        assert last["type"] == "summary" and last["hosts"][0]["status"] == "cancelled"
        assert not list((dest / ".remote-sync" / "tmp").glob("*"))
    else:
        assert last["type"] == "error" and last["kind"] == "cancelled", last
        assert "second signal" in last["message"]
    with MirrorState(dest) as state:  # the lock was released and the state is readable
        assert all(
            r.size == (dest / "h0" / os.fsdecode(r.path)).stat().st_size
            for r in state.host_files("h0").values()
        )
    assert_sync_heals(fleet, ["sync", "--inventory", str(inv), "--dest", str(dest)], dest)


def test_appends_during_a_sync_arrive_whole(fleet: SSHFleet, tmp_path: Path) -> None:
    """An agent writing while we read: never a torn line, and the rest comes next run."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/live.jsonl"
    fleet.write("h0", rel, big_session(64 * 1024 * 1024))
    rng = random.Random(4)
    proc = cli_process(["sync", "--inventory", str(inv), "--dest", str(dest)])
    written = 0
    with open(fleet.path("h0", rel), "ab") as out:
        while proc.poll() is None:
            # Write lines in two pieces, the way a slow agent's buffered writes land.
            line = session_bytes(rng, 1, start=written)
            out.write(line[:50])
            out.flush()
            out.write(line[50:])
            out.flush()
            written += 1
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    mirrored = (dest / "h0" / rel).read_bytes()
    assert mirrored.endswith(b"\n")
    assert fleet.path("h0", rel).read_bytes().startswith(mirrored)
    code = cli_process(["sync", "--inventory", str(inv), "--dest", str(dest)]).wait()
    assert code == 0
    assert_exact(fleet, dest, "h0")
    assert written > 0


def test_recap_table_without_json(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0")
    make_openclaw_tree(fleet, "h1")
    code, _ = run_cli(["sync", "--inventory", str(inv), "--dest", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("sync recap", "h0", "h1", "new", "grown", "rewritten", "unchanged", "failed"):
        assert word in out


def test_two_agents_on_one_box_share_one_connection(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw and Claude Code on the same host: two entries, one SSH connection."""
    fleet.write("h0", "oc/agents/a/sessions/s.jsonl", b'{"type":"session","id":"s"}\n')
    fleet.write("h0", "cc/projects/p/u.jsonl", b'{"type":"user","message":{"role":"user"}}\n')
    inv = tmp_path / "inventory.toml"
    inv.write_text(
        f'[defaults]\nssh_config = "{fleet.ssh_config}"\nknown_hosts = "{fleet.known_hosts}"\n'
        f'[[hosts]]\nname = "box-openclaw"\naddress = "h0"\nroot = "{fleet.path("h0", "oc")}"\n'
        f'[[hosts]]\nname = "box-claude"\naddress = "h0"\nformat = "claude-code"\n'
        f'root = "{fleet.path("h0", "cc")}"\n'
    )
    before = fleet.host("h0").log().count("Accepted publickey")
    code, summary, _ = sync(inv, tmp_path / "m", capsys)
    assert code == 0 and summary.files.new == 2
    assert fleet.host("h0").log().count("Accepted publickey") - before == 1
    assert (tmp_path / "m" / "box-claude" / "projects/p/u.jsonl").exists()


def test_a_round_is_one_remote_command_per_host(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The listing and the fetch share one command: one start of the login shell per round,
    whether it mirrors everything, grows a few files or finds nothing to do; a rewrite found
    mid-fetch costs one more."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=4)
    dest = tmp_path / "m"
    host = fleet.host("h0")

    def commands() -> int:
        return host.log().count("Starting session: command")

    for change in ("initial", "grown", "none", "rewritten"):
        if change == "grown":
            append(fleet, "h0", paths[0], session_bytes(random.Random(1), 2, start=50))
        if change == "rewritten":  # in place and longer: only the overlap shows it
            data = fleet.path("h0", paths[1]).read_bytes()
            with open(fleet.path("h0", paths[1]), "r+b") as f:
                f.write(data[:-10] + b"X" * 9 + b"\n" + data)
        before = commands()
        code, summary, _ = sync(inv, dest, capsys)
        assert code == 0, change
        assert_exact(fleet, dest, "h0")
        assert commands() - before == (2 if change == "rewritten" else 1), change
        if change == "rewritten":
            assert summary.files.rewritten == 1


def host_tools(
    fleet: SSHFleet, monkeypatch: pytest.MonkeyPatch, name: str, scripts: dict[str, str]
) -> None:
    """Give every host's round these stand-in tools, first on its PATH (sh scripts)."""
    where = fleet.root / name
    where.mkdir()
    for tool, body in scripts.items():
        (where / tool).write_text("#!/bin/sh\n" + body)
        (where / tool).chmod(0o755)
    real = engine.round_argv
    monkeypatch.setattr(
        engine,
        "round_argv",
        lambda root, points, **kw: [
            "env",
            f"PATH={where}:/usr/bin:/bin",
            *real(root, points, **kw),
        ],
    )


def slow_planning(monkeypatch: pytest.MonkeyPatch, then: object = None) -> None:
    """The client takes a while between the listing's end and sending the fetch items (a
    big listing to plan, an index worker starting); ``then`` runs first, given the HostSync
    and the round's stream."""
    real = engine.HostSync._list

    async def slow(self: engine.HostSync, stream):  # type: ignore[no-untyped-def]
        listed = await real(self, stream)
        if callable(then):
            then(self, stream)
        await anyio.sleep(0.5)
        return listed

    monkeypatch.setattr(engine.HostSync, "_list", slow)


@pytest.mark.parametrize("how", ["command dies", "connection drops", "cancelled"])
def test_a_round_that_ends_before_the_fetch_is_sent_says_why(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The host's command may end while the client plans: its real outcome is reported (the
    command's failure, the lost connection, the cancel), never an internal error."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=3)
    if how == "command dies":  # the round's sh, waiting for the items, is killed
        slow_planning(monkeypatch, lambda _sync, stream: os.kill(stream.remote_pid, signal.SIGKILL))
    elif how == "connection drops":
        slow_planning(monkeypatch, lambda _sync, _stream: fleet.stop("h0"))
    else:
        slow_planning(monkeypatch, lambda sync_, _stream: sync_.token.cancel("interrupted"))
    code, _, events = sync(inv, tmp_path / "m", capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert done.error is not None and "internal error" not in done.error, done.error
    if how == "command dies":
        assert (code, done.status) == (1, "failed")
        assert "signal" in done.error, done.error
    elif how == "connection drops":
        assert (code, done.status) == (1, "failed")
        fleet.start("h0")
    else:
        assert (code, done.status) == (130, "cancelled")
    assert not (tmp_path / "m" / "h0").exists() or not any((tmp_path / "m" / "h0").rglob("*.jsonl"))


def test_hosts_cancelled_while_queued_are_reported_like_the_others(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel while hosts wait for a slot (--concurrency 1): each host gets its error and
    its host_done line, as scripts count them (the waiting ones got neither)."""
    names = fleet.names
    inv = write_inventory(fleet, tmp_path / "inventory.toml", names)
    for name in names:
        make_openclaw_tree(fleet, name, sessions=2)
    slow_planning(monkeypatch, lambda sync_, _stream: sync_.token.cancel("interrupted"))
    code, summary, events = sync(inv, tmp_path / "m", capsys, "--concurrency", "1")
    assert code == 130 and len(names) > 1
    done = [e.host for e in events if isinstance(e, HostDone)]
    failed = [e.host for e in events if isinstance(e, ErrorEvent) and e.kind == "cancelled"]
    assert sorted(done) == sorted(failed) == sorted(names)
    assert [h.status for h in summary.hosts] == ["cancelled"] * len(names)


@pytest.mark.parametrize("fetch", ["writes much to stderr", "fails"])
def test_an_incomplete_listing_is_reported_whatever_the_fetch_does(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fetch: str,
) -> None:
    """find's messages about an unreadable directory reach the listing_incomplete event whole,
    although the fetch then writes more than the stderr tail holds, or fails."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=4)
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    for rel in paths[:2]:
        append(fleet, "h0", rel, session_bytes(random.Random(1), 2, start=50))
    if fetch == "fails":  # the first read says why and kills the round's shell
        script = "echo 'dd: fetch killed by signal 9' >&2\nkill -9 \"$PPID\"\nexit 1\n"
        host_tools(fleet, monkeypatch, "bad-dd", {"dd": script})
    else:
        noise = (
            "i=0\n"
            'while [ $i -lt 300 ]; do echo "dd: noise $i ...................." >&2\n'
            "i=$((i + 1)); done\n"
        )
        host_tools(fleet, monkeypatch, "noisy-dd", {"dd": noise + 'exec /usr/bin/dd "$@"\n'})
    fleet.mkdir("h0", "agents/locked/sessions")
    with unreadable(fleet.path("h0", "agents/locked")):
        code, _, events = sync(inv, dest, capsys)
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent) and e.kind == "listing_incomplete"]
    assert error.path == "agents/locked", error
    assert "noise" not in error.message and "fetch killed" not in error.message
    if fetch == "writes much to stderr":
        assert_exact(fleet, dest, "h0")


def test_a_failed_listing_is_reported_as_one(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=2)
    host_tools(fleet, monkeypatch, "oom-find", {"find": "echo 'find: out of memory' >&2\nexit 2\n"})
    code, _, events = sync(inv, tmp_path / "m", capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert code == 1 and done.error is not None
    assert "the listing failed (status 2)" in done.error and "out of memory" in done.error
    assert " L" not in done.error.partition("remote stderr:")[2]  # the round's boundary line


def test_a_login_shell_that_prints_a_banner_is_a_clear_error(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An rc file that echoes on every command spoils the output, as it does rsync's: the host
    fails at once with a hint at the rc files, nothing is mirrored, the others are unharmed."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    make_openclaw_tree(fleet, "h0", sessions=3)
    make_openclaw_tree(fleet, "h1", sessions=3)
    real = engine.round_argv

    def with_banner(root: str, points: list[str], tools: str) -> list[str]:
        argv = real(root, points, tools=tools)
        if root != str(fleet.path("h0")):
            return argv
        return ["sh", "-c", 'echo "Welcome to h0!"; exec "$@"', "sh", *argv]

    monkeypatch.setattr(engine, "round_argv", with_banner)
    code, _, events = sync(inv, tmp_path / "m", capsys)
    done = {e.host: e for e in events if isinstance(e, HostDone)}
    assert code == 1 and done["h1"].status == "ok" and done["h0"].status == "failed"
    assert done["h0"].error is not None and "rc files" in done["h0"].error
    # Said as what it is: output before the listing, not a record for a path made of the
    # banner and the compressed listing's first bytes.
    errors = [e for e in events if isinstance(e, ErrorEvent) and e.host == "h0"]
    assert [e.message for e in errors] == [
        "malformed listing record b'Welcome to h0!' (output printed before the listing?)"
    ]
    assert errors[0].path is None
    assert not (tmp_path / "m" / "h0").exists()
    assert_exact(fleet, tmp_path / "m", "h1")


@pytest.mark.parametrize("held", ["stdout", "stderr"])
def test_a_process_the_login_shell_leaves_behind_does_not_stall_the_round(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    held: str,
) -> None:
    """An rc file that starts a daemon without closing its output keeps the session's
    stdout (or stderr) open after the command has exited, as ssh itself hangs on it. The
    round ends at the command's exit once its last frame is in, not at the idle timeout as a
    failure: a round that fetches, and one with nothing to fetch."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=2)
    real = engine.round_argv
    other = "2>/dev/null" if held == "stdout" else ">/dev/null"
    # The daemon outlives each round by a few seconds (and the --timeout), then goes.
    daemon = f'sleep 6 </dev/null {other} & exec "$@"'
    monkeypatch.setattr(
        engine,
        "round_argv",
        lambda root, points, **kw: ["sh", "-c", daemon, "sh", *real(root, points, **kw)],
    )
    for change in ("initial", "grown", "none"):
        if change == "grown":
            append(fleet, "h0", paths[0], session_bytes(random.Random(1), 2, start=50))
        started = time.monotonic()
        code, summary, _ = sync(inv, tmp_path / "m", capsys, "--timeout", "4")
        assert code == 0, (change, summary)
        assert time.monotonic() - started < 3, change
        assert_exact(fleet, tmp_path / "m", "h0")


SLOW_WALK = 'case $1 in .) ;; *) sleep 1.5 ;; esac\nexec /usr/bin/find "$@"\n'


def test_a_host_slower_than_the_timeout_fails_and_a_larger_timeout_lets_it_sync(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A walk of a large tree on a slow disk sends nothing for a while. Past --timeout the host
    fails with a message that names the option; with a larger one, or 0 (no limit), as with
    rsync's --timeout, the same host syncs."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=3)
    host_tools(fleet, monkeypatch, "slow-find", {"find": SLOW_WALK})
    code, _, events = sync(inv, tmp_path / "m", capsys, "--timeout", "0.3")
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert code == 1 and done.error is not None
    assert "no output for 0.3 s" in done.error and "raise --timeout" in done.error
    for timeout in ("30", "0"):
        code, summary, _ = sync(inv, tmp_path / "m", capsys, "--timeout", timeout)
        assert code == 0, summary
    assert_exact(fleet, tmp_path / "m", "h0")


def test_the_frame_marker_is_on_no_command_line_of_the_host(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pin: another user of the host who could read the round's marker in the process list
    (``ps``) and write a file being fetched could forge frames for the files after it. The
    marker travels on stdin and in the environment only: no process of a round, from the
    listing to the reads and the archive, has it in its argv."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=3)
    markers: list[str] = []

    def recorded() -> str:
        markers.append(remote_ops.new_marker())
        return markers[-1]

    monkeypatch.setattr(engine, "new_marker", recorded)
    snapshots = fleet.root / "ps"
    # Each tool takes a snapshot of every command line on the host while it runs.
    snap = f'cat /proc/[0-9]*/cmdline >>"{snapshots}" 2>/dev/null\n'
    host_tools(
        fleet,
        monkeypatch,
        "ps-tools",
        {tool: snap + f'exec /usr/bin/{tool} "$@"\n' for tool in ("find", "dd", "tar", "md5sum")},
    )
    snapshots.touch(mode=0o666)
    snapshots.chmod(0o666)
    code, summary, _ = sync(inv, tmp_path / "m", capsys)
    assert code == 0 and summary.files.new == 8
    seen = snapshots.read_bytes()
    # The snapshots saw the round's command (its root among its words) and the fetch's tar.
    assert os.fsencode(fleet.path("h0")) + b"\x00" in seen
    assert b"tar\x00" in seen
    assert markers and not any(m.encode() in seen for m in markers)


def lying_find(numbers: str, path: str) -> str:
    """A find that lists ``path`` (under the root's one start point) with ``numbers`` as
    its size, mtime, device and inode, and the other files as they are."""
    record = f"{numbers}\\n./{path}\\0"
    return (
        'case $2 in -maxdepth) exec /usr/bin/find "$@" ;; esac\n'
        f'start=$1\nshift\n/usr/bin/find "$start" ! -path "./{path}" "$@"\nst=$?\n'
        f"printf '{record}'\nexit \"$st\"\n"
    )


def test_listing_numbers_past_64_signed_bits_are_kept_or_refused_by_path(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An inode with its top bit set (overlayfs, some NFS servers) is mirrored; a size past
    what any file can have is a protocol error naming the host and path. Both used to stop the
    host's every round with an internal error, when the numbers reached SQLite."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=2)
    dest = tmp_path / "m"
    size = fleet.path("h0", paths[0]).stat().st_size
    host_tools(
        fleet, monkeypatch, "high-inode", {"find": lying_find(f"{size} 1 2 {2**63 + 12}", paths[0])}
    )
    for _ in range(2):
        code, summary, events = sync(inv, dest, capsys)
        assert code == 0, [e for e in events if isinstance(e, ErrorEvent)]
    assert summary.files.unchanged == 6
    assert_exact(fleet, dest, "h0")
    monkeypatch.undo()
    host_tools(fleet, monkeypatch, "huge-size", {"find": lying_find(f"{2**63} 1 2 3", paths[1])})
    code, _, events = sync(inv, dest, capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert code == 1 and done.error is not None
    assert "impossible numbers" in done.error and paths[1] in done.error
    assert "internal error" not in done.error


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_timeout_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", "me@box", "--dest", str(tmp_path / "m"), "--timeout", value])
    assert exit_info.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_a_compressed_listing_cut_short_fails_at_once(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gzip dying after it read the whole listing (out of memory) used to leave the client
    reading the end line as compressed data, and waiting for the idle timeout."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=30)
    cut = '/usr/bin/gzip "$@" > "$0.$$"\nhead -c 300 "$0.$$"\nrm -f "$0.$$"\nkill -9 $$\n'
    host_tools(fleet, monkeypatch, "dying-gzip", {"gzip": cut})
    os.chmod(fleet.root / "dying-gzip", 0o777)  # its scratch file goes next to it
    started = time.monotonic()
    code, _, events = sync(inv, tmp_path / "m", capsys)
    (done,) = [e for e in events if isinstance(e, HostDone)]
    assert code == 1 and done.error is not None and "gzip failed" in done.error
    assert time.monotonic() - started < 20


def test_unreadable_remote_directory_is_reported_and_deletions_not_recorded(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    sync(inv, dest, capsys)
    with unreadable(fleet.path("h0", "agents/agent1/sessions")):
        code, summary, events = sync(inv, dest, capsys)
    assert code == 1
    assert any(
        isinstance(e, ErrorEvent)
        and e.kind == "listing_incomplete"
        and e.host == "h0"
        and e.path == "agents/agent1/sessions"
        and " L" not in e.message  # the round's stderr boundary is not part of the message
        for e in events
    )
    assert summary.files.deleted == 0  # files it could not see are not taken for deleted
    assert all((dest / "h0" / p).exists() for p in paths)


@pytest.mark.parametrize("tools", ["GNU", "BusyBox"])
def test_each_unreadable_remote_directory_is_an_error_naming_it(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tools: str,
) -> None:
    """The error had no path (``path: null`` in --json) and find's raw words for a message,
    and two unreadable directories counted as one failed file. Each directory find could not
    read is now an error naming it, relative to the root as other paths are (a quote, a space
    or a non-UTF-8 byte in its name unescaped from GNU find's quoting), saying what to do, and
    counts as one failed: the files under it are not known, the host is partial, exit 1."""
    if tools == "BusyBox":
        bb = applet_dir(request.getfixturevalue("busybox"), fleet.root / "bb", ("gzip", "tar"))
        with_host_path(monkeypatch, str(bb))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    paths = make_openclaw_tree(fleet, "h0", sessions=2)
    odd = b"agents/it's \xe9/sessions"
    fleet.write("h0", os.fsdecode(odd + b"/s.jsonl"), session_bytes(random.Random(3), 3))
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    locked = [fleet.path("h0", "agents/agent1/sessions"), fleet.path("h0", os.fsdecode(odd))]
    with unreadable(*locked):
        code, summary, events = sync(inv, dest, capsys)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and summary.hosts[0].status == "partial"
    assert sorted((e.kind, e.path) for e in errors) == [
        ("listing_incomplete", "agents/agent1/sessions"),
        ("listing_incomplete", "agents/it's \\xe9/sessions"),
    ], errors
    assert all(
        e.message == "find could not read it (Permission denied): nothing under it was mirrored"
        for e in errors
    ), errors
    assert all("chmod u+rx" in e.hint and "no deletion" in e.hint for e in errors)
    assert summary.hosts[0].files.failed == 2 and summary.files.deleted == 0
    assert all((dest / "h0" / p).exists() for p in paths)


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.parametrize("full", ["disk", "quota"])
def test_disk_full_is_a_clear_error_and_loses_nothing(
    fleet: SSHFleet, tmp_path: Path, small_disk: Path, full: str
) -> None:
    """A disk that fills midway fails the host's round with a "disk full" error, and a
    rerun with room completes the mirror. Over this user's disk quota (EDQUOT) the same: it
    was "cannot write the file: Disk quota exceeded", without the cut-back a full disk
    gets."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    fleet.write("h0", "agents/a/sessions/big.jsonl", big_session(6 * 1024 * 1024))
    dest = small_disk / "m"
    args = ["sync", "--inventory", str(inv), "--dest", str(dest), "--json"]
    proc = cli_process(args, fault=None if full == "disk" else "over_quota")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    # Where the space runs out (a file's bytes, the flush, the checkpoint database) varies;
    # the error says "disk full" and the host's round is the one that failed.
    assert b"disk full" in out, out[-2000:]
    # Each says where, the room left and what to run, as a disk full at the start does (it
    # said "disk full while trying to write a temp file" with the generic hint).
    said = [e for e in map(json.loads, out.splitlines()) if "disk full" in e.get("message", "")]
    assert said and all(e["hint"].endswith("; what was committed is kept") for e in said), said
    if full == "quota":  # the 6 MiB file runs out first, and says whose limit it is
        assert said[0]["message"] == (
            "disk full (over this user's quota) while trying to write a temp file in "
            f"{dest}/.remote-sync/tmp (Disk quota exceeded)"
        ), said
        assert said[0]["hint"].startswith("this user's disk quota on the destination is used up")
    else:
        assert all(re.search(r"; [0-9]+ KiB free\)$", e["message"]) for e in said), said
        assert all(
            e["hint"].startswith(f"free space on the file system that holds it (df -h {dest}")
            for e in said
        ), said
        assert any(f" in {dest}" in e["message"] for e in said), said
    assert b'"host":"h0","status":"failed"' in out
    # The files the round meant to fetch and did not commit count as failed: at least the one
    # that filled the disk, and with those committed, every file of the host.
    (done,) = [e for e in map(json.loads, out.splitlines()) if e["type"] == "host_done"]
    files = done["files"]
    assert files["failed"] >= 1
    assert files["new"] + files["failed"] == len(expected_tree(fleet.path("h0")))
    assert not list((dest / ".remote-sync" / "tmp").glob("*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    proc = cli_process(["sync", "--inventory", str(inv), "--dest", str(dest)])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_exact(fleet, dest, "h0")


def fill(disk: Path, out_of: str, inodes: int = 2) -> None:
    """Leave no room on ``disk`` (a tmpfs): no block free, or ``inodes`` inodes free only."""
    if out_of == "space":
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    else:
        fs = os.statvfs(disk)
        used = fs.f_files - fs.f_ffree
        subprocess.run(["mount", "-o", f"remount,nr_inodes={used + inodes}", str(disk)], check=True)


@pytest.mark.parametrize("out_of", ["space", "inodes"])
def test_a_destination_on_a_full_disk_says_so_and_exits_1(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    small_disk: Path,
    out_of: str,
) -> None:
    """A disk already full when the state database is opened failed with exit 1 but "disk
    full while opening the state database", and one out of inodes as an unwritable
    destination, exit 2 ("must be writable by this user"). A full disk is no usage error:
    both are a failed run (exit 1, as a disk that fills midway), saying that the
    destination's disk is full and what to free."""
    fill(small_disk, out_of)
    dest = small_disk / "m"
    code, events = run_cli(adhoc_sync_args(fleet, dest), capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and error.kind == "mirror", error
    assert error.path == str(dest) and error.message.startswith(
        "the destination's disk is full ("
    ), error
    assert "KiB free" in error.message and (out_of == "space" or "no inode free" in error.message)
    assert error.hint.startswith(f"free space on the file system that holds it (df -h {dest}; ")


@pytest.mark.parametrize(
    ("out_of", "dest_before"), [("space", False), ("inodes", False), ("inodes", True)]
)
def test_a_first_open_that_fails_on_a_full_disk_leaves_no_mirror_behind(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    small_disk: Path,
    out_of: str,
    dest_before: bool,
) -> None:
    """A first sync whose state could not be opened (the disk full) left an empty
    .remote-sync/state.db (or the directory and its lock file): the folder then passed for a
    mirror, so a --dest inside it was refused as nested and a listing there read an empty
    mirror rather than none. What the failed open created is now taken back: the state
    directory, and the destination unless it was there before."""
    dest = small_disk / "m"
    if dest_before:
        dest.mkdir()
    # Out of inodes: with the destination made, room for the state directory and the lock
    # file, not the database (SQLite fails); else room for the directories only.
    fill(small_disk, out_of, inodes=2)
    code, events = run_cli(adhoc_sync_args(fleet, dest), capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and "disk is full" in error.message, error
    assert sorted(p.name for p in small_disk.iterdir()) == sorted(
        (["filler"] if out_of == "space" else []) + (["m"] if dest_before else [])
    )
    if dest_before:
        assert list(dest.iterdir()) == []
    refuse_nested(dest / "inner")  # not inside a mirror
    code = main(["sessions", "list", "--dest", str(dest)])
    assert code == 2 and "no mirror at" in capsys.readouterr().err


def test_a_mirror_whose_open_fails_on_a_full_disk_keeps_everything(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], small_disk: Path
) -> None:
    """Only a first open takes back what it made: a mirror that was there keeps its state
    database, lock and files, byte for byte, when its open fails."""
    make_openclaw_tree(fleet, "h0", sessions=2)
    dest = small_disk / "m"
    assert run_cli(adhoc_sync_args(fleet, dest), capsys)[0] == 0

    def contents() -> dict[Path, bytes | None]:  # the lock file's pid aside
        return {
            p: None if p.is_dir() or p.name == "lock" else p.read_bytes() for p in dest.rglob("*")
        }

    before = contents()
    assert dest / ".remote-sync" / "state.db" in before and dest / ".remote-sync/lock" in before
    fill(small_disk, "inodes", inodes=0)
    code, events = run_cli(adhoc_sync_args(fleet, dest), capsys)
    assert code == 1 and any(isinstance(e, ErrorEvent) for e in events), events
    assert contents() == before


@pytest.mark.parametrize("full", ["disk", "quota"])
def test_a_huge_partial_last_line_on_a_full_disk_is_not_needed(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    full: str,
) -> None:
    """A last line the agent is still writing (no newline yet) larger than the free space:
    its bytes are never committed, so a full disk while writing them fails nothing; the
    whole lines before it are mirrored, appended or new. Once the line ends, the disk must
    hold it: then it is a disk-full error, and with room the next run brings it. Over this
    user's quota (EDQUOT) alike: the file used to fail at once ("Disk quota exceeded")."""
    if full == "quota":
        monkeypatch.setattr(writer, "open", over_quota_open, raising=False)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = small_disk / "m"
    base = "agents/a/sessions"
    rng = random.Random(4)
    old = session_bytes(rng, 20)
    fleet.write("h0", f"{base}/grown.jsonl", old)
    assert sync(inv, dest, capsys)[0] == 0
    partial = b'{"type":"message","text":"' + b"x" * (5 * 1024 * 1024)
    more = session_bytes(rng, 5, start=100)
    append(fleet, "h0", f"{base}/grown.jsonl", more + partial)
    new = session_bytes(rng, 5, start=200)
    fleet.write("h0", f"{base}/new.jsonl", new + partial)
    code, summary, events = sync(inv, dest, capsys)
    assert code == 0, [e for e in events if isinstance(e, ErrorEvent)]
    assert (summary.files.grown, summary.files.new, summary.files.failed) == (1, 1, 0)
    assert (dest / "h0" / base / "grown.jsonl").read_bytes() == old + more
    assert (dest / "h0" / base / "new.jsonl").read_bytes() == new
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    assert rows[f"{base}/grown.jsonl".encode()].size == len(old + more)
    assert rows[f"{base}/new.jsonl".encode()].size == len(new)
    # The index counts those lines only, as a rebuild would.
    conn = open_index(dest)
    try:
        indexed = {row.path: (row.bytes, row.lines) for row in query_sessions(conn)}
    finally:
        conn.close()
    assert indexed == {
        f"{base}/grown.jsonl": (len(old + more), 25),
        f"{base}/new.jsonl": (len(new), 5),
    }
    # The next run finds nothing new: the partial line is not fetched again.
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.bytes, summary.files.unchanged) == (0, 0, 2)
    # The line ends: now its bytes are needed, and the disk cannot hold them.
    append(fleet, "h0", f"{base}/new.jsonl", b'"}\n')
    code, summary, events = sync(inv, dest, capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and error.path == f"{base}/new.jsonl", error
    if full == "disk":
        assert error.message.startswith("disk full while trying to "), error
        assert f" in {dest}/h0/{base} (No space left on device; " in error.message, error
        assert error.message.endswith(" KiB free)"), error
        assert error.hint == (
            f"free space on the file system that holds it (df -h {dest}/h0/{base}; df -i for "
            "inodes), or move the mirror to a larger one, then run again; what was committed "
            "is kept"
        ), error
    else:
        assert error.message.startswith(
            "disk full (over this user's quota) while trying to "
        ) and error.hint.startswith("this user's disk quota on the destination is used up")
        assert error.hint.endswith("; what was committed is kept"), error
    assert (dest / "h0" / base / "new.jsonl").read_bytes() == new
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert sync(inv, dest, capsys)[0] == 0
    assert_exact(fleet, dest, "h0")


def test_checkpoints_that_cannot_be_written_before_a_flush_leave_no_temp_file(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows a flush writes before its renames fail (the state's disk full): the batch's
    temp files and descriptors go at once, not at the next run's recovery."""
    from remote_sync.errors import StateError

    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"

    def full(self: MirrorState, rows: object) -> None:
        raise StateError("disk full while trying to write checkpoints", host="h0")

    monkeypatch.setattr(MirrorState, "mark_in_doubt", full)
    fds = len(os.listdir("/proc/self/fd"))
    code, summary, events = sync(inv, dest, capsys)
    assert code == 1 and [(h.host, h.status) for h in summary.hosts] == [("h0", "failed")]
    assert any(isinstance(e, ErrorEvent) and "disk full" in e.message for e in events)
    assert not list((dest / ".remote-sync" / "tmp").iterdir())
    assert len(os.listdir("/proc/self/fd")) <= fds
    monkeypatch.undo()
    assert sync(inv, dest, capsys)[0] == 0
    assert_exact(fleet, dest, "h0")


def test_new_files_fetched_again_are_counted_new(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tar sends a second hard link as a link, not as data: that file takes the follow-up."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    first = fleet.write("h0", "agents/a/sessions/one.jsonl", session_bytes(random.Random(12), 4))
    os.link(first, fleet.path("h0", "agents/a/sessions/two.jsonl"))
    code, summary, _ = sync(inv, tmp_path / "m", capsys)
    assert code == 0
    assert (summary.files.new, summary.files.rewritten, summary.files.grown) == (2, 0, 0)
    assert_exact(fleet, tmp_path / "m", "h0")


def mirrored_session(state: MirrorState, data: bytes) -> tuple[Path, FileState]:
    """``s.jsonl`` of host ``h`` mirrored with ``data`` and its checkpoint (a recovered state)."""
    state.recover()
    local = state.local_path("h", b"s.jsonl")
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    row = FileState("h", b"s.jsonl", "append", len(data), len(data), 1.0, 1, 7,
                    fingerprint_of(data[:1024]))  # fmt: skip
    return local, row


def frame_handler(state: MirrorState, t: Any, request: Any, **callbacks: Any) -> Any:
    """A ``FrameHandler`` of transfer ``t`` alone (asked as ``request``), fed by hand: its
    round, host ``h``'s, is a stand-in with what the handler uses of one (no reader nor index
    worker) and ``callbacks``, the round's methods the test watches."""
    import types

    from remote_sync.mirror.engine import HostRound
    from remote_sync.mirror.frames import FrameHandler

    sync = types.SimpleNamespace(
        state=state,
        name="h",
        reader=None,
        worker=None,
        result=HostRound("h"),
        ends={},
        progress_within_file=lambda: None,
        **callbacks,
    )
    return FrameHandler(sync, [t], [request], follow_up=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("ending", ["short", "changed", "failed"])
def test_a_fetch_that_ends_badly_commits_nothing(tmp_path: Path, ending: str) -> None:
    """The events a frame may end with besides End: a rewrite seen mid-file that also ends
    Short is fetched again once; a whole file that grew (Changed) is fetched again; a read
    that failed on the host (Failed) is that file's error. Nothing of them is written."""
    from remote_sync.mirror.fetch_events import Begin, Changed, Data, Failed, Short
    from remote_sync.mirror.listing import RemoteFile
    from remote_sync.mirror.plan import Transfer

    data = session_bytes(random.Random(13), 10)
    failures: list[tuple[bytes, str, str]] = []
    with MirrorState(tmp_path / "m") as state:
        local, row = mirrored_session(state, data)
        remote = RemoteFile(b"s.jsonl", len(data) + 500, 2.0, 1, 7)
        if ending == "short":  # an append whose overlap differs, then the file ends early
            t = Transfer(remote, "append", "append", "grown", len(data) - 100, 600, row)
            events = [Begin(0), Data(0, b"x" * 100), Short(0, 100)]
        else:  # a whole fetch
            t = Transfer(remote, "append", "whole", "rewritten", 0, len(data) + 500, row)
            last = Changed(0) if ending == "changed" else Failed(0)
            events = [Begin(0), Data(0, b"y" * 100), last]
        handler = frame_handler(
            state,
            t,
            t.request(),
            fail=lambda path, message, kind, hint: failures.append((path, message, kind)),
        )
        anyio.run(handler.handle_all, events)
        assert handler.again == ([] if ending == "failed" else [t])
        assert failures == (
            [(b"s.jsonl", "reading the file on the host failed midway", "read_failed")]
            if ending == "failed"
            else []
        )
        assert local.read_bytes() == data
        assert not list(state.tmp_dir.iterdir())


def test_a_transcript_compacted_by_rename_during_its_read_keeps_every_line_read(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """An agent compacts a transcript (a shorter file, another first line, renamed over it)
    while the host reads a long append of it. The read came whole from the old file, so it is
    committed; the next run keeps it as a version and fetches the compacted file. The head
    used to be hashed by name, from the new file: the read was dropped (the lines compaction
    removed were lost) and the run failed with "changed again"."""
    from remote_sync.mirror.fetch_events import Data

    rel = "agents/a/sessions/s.jsonl"
    rng = random.Random(77)
    path = fleet.write("h0", rel, session_bytes(rng, 200, size=3000))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    append(fleet, "h0", rel, session_bytes(rng, 2000, start=200, size=3000))  # ~6 MB more
    before = path.read_bytes()
    compacted = session_bytes(random.Random(78), 300, size=3000)
    real = frames.FrameHandler.handle
    replaced: list[bool] = []

    async def handle(self, event):  # type: ignore[no-untyped-def]
        if not replaced and isinstance(event, Data):  # the host is reading it now
            fleet.write("h0", rel + ".tmp", compacted)
            fleet.path("h0", rel + ".tmp").replace(path)
            replaced.append(True)
        await real(self, event)

    monkeypatch.setattr(frames.FrameHandler, "handle", handle)
    code, summary, events = sync(inv, dest, capsys)
    assert replaced and code == 0, [e for e in events if isinstance(e, ErrorEvent)]
    assert (dest / "h0" / rel).read_bytes() == before
    monkeypatch.setattr(frames.FrameHandler, "handle", real)
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.rewritten == 1
    assert (dest / "h0" / rel).read_bytes() == compacted
    versions = list((dest / ".remote-sync" / "versions" / "h0").rglob("s.jsonl.v*"))
    assert [v.read_bytes() for v in versions] == [before]


def test_a_transcript_renamed_on_the_host_brings_only_its_new_bytes(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw's /reset renames a session to ``.reset.<time>``, often after one more turn.
    The mirrored bytes of the old name are copied locally, and only what follows them comes
    over the wire (from an overlap, checked as any append); the old name keeps its copy,
    marked renamed, and the index counts the session once. A renamed file that is not what
    was mirrored (overwritten in place first) fails those checks and is fetched whole."""
    rel, other = "agents/a/sessions/s.jsonl", "agents/a/sessions/t.jsonl"
    rng = random.Random(81)
    fleet.write("h0", rel, session_bytes(rng, 600))  # about 180 KB each
    fleet.write("h0", other, session_bytes(rng, 600))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    old = fleet.path("h0", rel).read_bytes()
    archived = rel + ".reset.2026-11-22T10-00-00.000Z"
    fleet.path("h0", rel).rename(fleet.path("h0", archived))
    append(fleet, "h0", archived, session_bytes(rng, 3, start=600))
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    assert_holds_the_host(fleet, dest, "h0")
    assert (dest / "h0" / rel).read_bytes() == old
    assert (summary.files.new, summary.files.deleted, summary.hosts[0].versions_kept) == (1, 1, 0)
    grown = len(fleet.path("h0", archived).read_bytes()) - len(old)
    assert summary.bytes <= grown + 4096  # the new lines and an overlap, not 180 KB
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["path"] for row in listed) == sorted([archived, other])
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    capsys.readouterr()
    assert main(["sessions", "list", "--dest", str(dest), "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == listed

    replaced = session_bytes(random.Random(82), 700)  # same inode, other content
    with open(fleet.path("h0", other), "r+b") as rewritten:
        rewritten.write(replaced)
    fleet.path("h0", other).rename(fleet.path("h0", other + ".deleted.1"))
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.new == 1
    assert summary.bytes >= len(replaced)  # fetched whole after the overlap disagreed
    assert_holds_the_host(fleet, dest, "h0")


def test_a_renamed_transcript_is_copied_off_the_event_loop_and_a_cancel_leaves_no_copy(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of a renamed transcript's mirrored bytes, which its new name's append starts
    from, may be a whole session of hundreds of MB: it is made in a worker thread, not on
    the event loop that every host's stream runs on. An app's cancel that comes meanwhile
    is raised once the copy is done, and the copy (a temp file) is removed."""
    rel = "agents/a/sessions/s.jsonl"
    fleet.write("h0", rel, session_bytes(random.Random(83), 300))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    hosts = load_inventory(inv).hosts
    anyio.run(lambda: api.sync(hosts, dest))
    archived = rel + ".reset.2026-11-22T10-00-00.000Z"
    fleet.path("h0", rel).rename(fleet.path("h0", archived))
    append(fleet, "h0", archived, session_bytes(random.Random(84), 3, start=300))
    scopes: list[anyio.CancelScope] = []
    threads: list[threading.Thread] = []
    real_copy = writer._copy_prefix

    def copy_prefix(source: Any, copy: Any, size: int) -> None:
        threads.append(threading.current_thread())
        anyio.from_thread.run_sync(scopes[0].cancel)  # in the copy's thread: comes meanwhile
        real_copy(source, copy, size)

    monkeypatch.setattr(writer, "_copy_prefix", copy_prefix)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await api.sync(hosts, dest)
            pytest.fail("the cancel was not raised")

    anyio.run(main)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert not list((dest / ".remote-sync" / "tmp").glob("*")), "the copy was left behind"
    assert not (dest / "h0" / archived).exists()
    monkeypatch.undo()
    anyio.run(lambda: api.sync(hosts, dest))
    assert_holds_the_host(fleet, dest, "h0")


@pytest.mark.parametrize("read", ["append", "archive"])
def test_a_transcript_compacted_by_rename_before_its_batch_digest_keeps_every_line_read(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    read: str,
) -> None:
    """An agent compacts a transcript (a shorter file, another first line, renamed over it)
    after the host read a short append of it, or the whole new file in its batch's tar, but
    before the batch's digest of their heads, which hashes by name: the new file's head. The
    host also sends the inode each name has then; this one is not the one listed, so the
    read is committed, and the next run keeps it as a version and fetches the compacted
    file. It used to be dropped: the lines compaction removed were lost."""
    from test_remote_ops import with_hooks_before_the_digests

    rel = "agents/a/sessions/s.jsonl"
    rng = random.Random(79)
    dest = tmp_path / "m"
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    fleet.write("h0", "keep.jsonl", b"{}\n")  # the root holds a file not mirrored
    if read == "append":
        fleet.write("h0", rel, session_bytes(rng, 20))
        assert sync(inv, dest, capsys)[0] == 0
        append(fleet, "h0", rel, session_bytes(rng, 3, start=20))  # one short read
    else:
        fleet.write("h0", rel, session_bytes(rng, 20))  # new: in the batch's tar
    before = fleet.path("h0", rel).read_bytes()
    fleet.write("h0", "compacted.tmp", session_bytes(random.Random(80), 5))
    compacted = fleet.path("h0", "compacted.tmp").read_bytes()
    hook = f"[ ! -e compacted.tmp ] || mv -f compacted.tmp {rel}"
    if read == "append":
        with_hooks_before_the_digests(monkeypatch, hook, "")
    else:
        with_hooks_before_the_digests(monkeypatch, "", hook)
    code, summary, events = sync(inv, dest, capsys)
    assert code == 0, [e for e in events if isinstance(e, ErrorEvent)]
    assert fleet.path("h0", rel).read_bytes() == compacted  # the hook ran
    assert (dest / "h0" / rel).read_bytes() == before
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.rewritten == 1
    assert (dest / "h0" / rel).read_bytes() == compacted
    versions = list((dest / ".remote-sync" / "versions" / "h0").rglob("s.jsonl.v*"))
    assert [v.read_bytes() for v in versions] == [before]


@pytest.mark.parametrize(
    "digest", ["agrees", "differs", "agrees-cksum", "differs-cksum", "unknown", "incomplete"]
)
@pytest.mark.parametrize("mode", ["whole", "append"])
def test_a_checked_file_is_committed_only_once_its_head_digest_agrees(
    tmp_path: Path, digest: str, mode: str
) -> None:
    """A checked file is held after its End until the host's digest of its head (md5, or
    POSIX cksum from a host without md5sum): committed when the digest agrees (or the host
    cannot hash), else dropped and fetched whole again, its mirrored copy as it was."""
    from remote_sync.mirror.digests import Algorithm, Digest, Hasher
    from remote_sync.mirror.fetch_events import Begin, Data, End, HeadDigest
    from remote_sync.mirror.listing import RemoteFile
    from remote_sync.mirror.plan import Transfer

    rng = random.Random(15)
    old = session_bytes(rng, 10)
    new = session_bytes(rng, 300, start=10)
    finished: list[object] = []
    with MirrorState(tmp_path / "m") as state:
        local, row = mirrored_session(state, old)
        if mode == "whole":
            remote = RemoteFile(b"s.jsonl", len(new), 2.0, 1, 8)
            t = Transfer(remote, "append", "whole", "rewritten", 0, len(new), row)
            head, data = new[:1024], new
        else:
            remote = RemoteFile(b"s.jsonl", len(old) + len(new), 2.0, 1, 7)
            start = len(old) - 1024
            t = Transfer(remote, "append", "append", "grown", start, len(new) + 1024, row)
            head, data = old[:1024], old[start:] + new
        request = t.request()
        assert request.check

        def made(data: bytes, algorithm: Algorithm = "md5") -> Digest:
            hasher = Hasher()
            hasher.update(data)
            return hasher.digest(algorithm)

        hashed = {
            "agrees": made(head),
            "differs": made(b"x" + head[1:]),
            "agrees-cksum": made(head, "cksum"),
            "differs-cksum": made(b"x" + head[1:], "cksum"),
            "unknown": None,
            "incomplete": made(head),
        }[digest]
        indices = (0, 1) if digest == "incomplete" else (0,)

        async def done(pending: object) -> None:
            finished.append(pending)

        handler = frame_handler(state, t, request, finished=done)
        events = [Begin(0), Data(0, data), End(0), HeadDigest(indices, hashed)]
        anyio.run(handler.handle_all, events[:3])
        assert finished == [] and len(handler.held.files) == 1  # not before the digest
        anyio.run(handler.handle_all, events[3:])
        if digest in ("agrees", "agrees-cksum", "unknown"):
            assert len(finished) == 1 and handler.again == []
        else:
            assert finished == [] and handler.again == [t]
            assert local.read_bytes() == old  # the append's bytes cut back at once
            assert not list(state.tmp_dir.iterdir())
        assert handler.held.files == []


def test_empty_files_copied_whole_are_mirrored(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    fleet.write("h0", "agents/a/sessions/notes.txt", b"")
    fleet.write("h0", "agents/a/sessions/sessions.json", b'{"a": 1}')
    assert sync(inv, dest, capsys)[0] == 0
    fleet.write("h0", "agents/a/sessions/sessions.json", b"")  # truncated to nothing
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.rewritten) == (0, 1)
    assert_exact(fleet, dest, "h0")


def rewrite_behind_the_tail(path: Path, rng: random.Random, mtime_ahead: float) -> bytes:
    """Rewrite the session at ``path`` in place to the same size, keeping its last 4 KiB or
    more (what an overlap compares), with an mtime ``mtime_ahead`` seconds ahead; returns the
    content before."""
    current = path.read_bytes()
    tail_at = current.index(b"\n", len(current) - 6000) + 1
    head = session_bytes(rng, 40, start=500)
    cut = head.rindex(b"\n", 0, tail_at)
    rewritten = head[:cut] + b"x" * (tail_at - cut - 1) + b"\n" + current[tail_at:]
    assert len(rewritten) == len(current) and rewritten[-4096:] == current[-4096:]
    path.write_bytes(rewritten)
    os.utime(path, (time.time() + mtime_ahead, time.time() + mtime_ahead))
    return current


def with_host_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Run every command of the hosts' rounds (and their follow-ups) with ``path`` as PATH."""
    for name in ("round_argv", "fetch_argv"):
        real = getattr(engine, name)

        def with_path(*args: Any, real: Any = real, **kwargs: Any) -> list[str]:
            return ["env", f"PATH={path}", *real(*args, **kwargs)]

        monkeypatch.setattr(engine, name, with_path)


def test_a_host_that_cannot_hash_gets_a_same_size_file_whole(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host whose md5sum and cksum are missing (or print nothing) cannot hash a head. A
    JSONL file of its old size with another mtime is then fetched whole and compared, so a
    rewrite in place behind an unchanged tail is found there too; a file only touched stays
    as it was."""
    tools = fleet.root / "no-hash"  # where the host's user can reach it
    tools.mkdir()
    for name in ("md5sum", "cksum"):
        (tools / name).write_text("#!/bin/sh\nexit 127\n")
        (tools / name).chmod(0o755)
    tools.chmod(0o755)
    with_host_path(monkeypatch, f"{tools}:/usr/bin:/bin")
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(15)
    rel = "agents/a/sessions/s.jsonl"
    current = session_bytes(rng, 40)
    path = fleet.write("h0", rel, current)
    assert sync(inv, dest, capsys)[0] == 0
    rewrite_behind_the_tail(path, rng, mtime_ahead=5)
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.rewritten, summary.hosts[0].versions_kept) == (0, 1, 1)
    assert (dest / ".remote-sync/versions/h0" / f"{rel}.v1").read_bytes() == current
    assert_exact(fleet, dest, "h0")
    os.utime(path, (time.time() + 10, time.time() + 10))  # touched only
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.unchanged, summary.hosts[0].versions_kept) == (0, 1, 0)
    assert_exact(fleet, dest, "h0")


def test_a_head_rewritten_in_place_is_found_on_a_host_without_md5sum(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    busybox: str,
) -> None:
    """A host without md5sum (BusyBox applets alone, with a cksum) hashes heads with POSIX
    cksum: a transcript whose head was rewritten in place before it grew (its overlap as
    mirrored) is found rewritten, and so is one of its old size rewritten behind its tail;
    one only touched moves its tail and nothing more (not the whole file, as where the host
    cannot hash)."""
    tools = applet_dir(busybox, fleet.root / "no-md5sum", ("gzip", "tar"))
    with_cksum(tools)
    tools.chmod(0o755)
    with_host_path(monkeypatch, str(tools))
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(16)
    base = "agents/a/sessions"
    old = {name: session_bytes(rng, 40, start=100 * n) for n, name in enumerate("gst")}
    paths = {name: fleet.write("h0", f"{base}/{name}.jsonl", data) for name, data in old.items()}
    assert sync(inv, dest, capsys)[1].files.new == 3
    change_first_id_in_place(paths["g"])  # the head rewritten, then the file grows
    append(fleet, "h0", f"{base}/g.jsonl", session_bytes(rng, 5, start=1000))
    rewrite_behind_the_tail(paths["s"], rng, mtime_ahead=5)
    code, summary, _ = sync(inv, dest, capsys)
    files = summary.files
    assert (code, files.rewritten, files.unchanged, summary.hosts[0].versions_kept) == (0, 2, 1, 2)
    assert_exact(fleet, dest, "h0")
    versions = dest / ".remote-sync" / "versions" / "h0" / base
    assert {v.name: v.read_bytes() for v in versions.iterdir()} == {
        "g.jsonl.v1": old["g"],
        "s.jsonl.v1": old["s"],
    }
    os.utime(paths["t"], (time.time() + 10, time.time() + 10))  # touched only
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.unchanged, summary.hosts[0].versions_kept) == (0, 3, 0)
    assert summary.bytes <= 4096  # the tail it compared, its head hashed on the host
    assert_exact(fleet, dest, "h0")


def test_a_rewrite_to_the_same_size_is_found_and_a_touch_moves_nothing(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(14)
    rel = "agents/a/sessions/s.jsonl"
    original = session_bytes(rng, 20)
    path = fleet.write("h0", rel, original)
    sync(inv, dest, capsys)
    os.utime(path, (time.time() + 5, time.time() + 5))  # touched only
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.unchanged, summary.files.grown) == (0, 1, 0)
    assert summary.bytes <= 4096  # the tail it compared, nothing more
    other = session_bytes(rng, 20, start=100)[: len(original)]  # same length, other lines
    with open(path, "r+b") as f:  # copy-truncate, then the same number of bytes
        f.truncate(0)
        f.write(other[:-1] + b"\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.rewritten, summary.hosts[0].versions_kept) == (0, 1, 1)
    kept = dest / ".remote-sync/versions/h0" / f"{rel}.v1"
    assert kept.read_bytes() == original
    assert_exact(fleet, dest, "h0")
    # Rewritten in place again, to the same size, behind an unchanged tail: the head the
    # host hashes after the read differs from the mirror's.
    current = rewrite_behind_the_tail(path, rng, mtime_ahead=15)
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.rewritten, summary.hosts[0].versions_kept) == (0, 1, 1)
    assert (dest / ".remote-sync/versions/h0" / f"{rel}.v2").read_bytes() == current
    assert_exact(fleet, dest, "h0")


def test_a_head_rewritten_in_place_is_found_when_the_file_grows(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An agent that saves a whole transcript anew, in place, with another first line and more
    lines after the old ones: the overlap near the old end agrees, the head does not. The
    host's digest of the batch's heads finds it, and the old copy is kept as a version. The
    other appends of the batch are checked one by one, not fetched whole: a large session
    that only grew moves its new bytes, even with a second rewrite in the batch."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(16)
    rels = [f"agents/a/sessions/s{i}.jsonl" for i in range(4)]
    for n, rel in enumerate(rels):
        fleet.write("h0", rel, session_bytes(rng, 20 if n < 2 else 400, start=1000 * n))
    assert sync(inv, dest, capsys)[0] == 0
    before = [fleet.path("h0", rel).read_bytes() for rel in rels]
    first = before[0].index(b"\n")
    new_head = before[0][:first].replace(b'"id": "00000000"', b'"id": "ffffffff"')
    assert len(new_head) == first and new_head != before[0][:first]
    with open(fleet.path("h0", rels[0]), "r+b") as out:  # in place: the same inode
        out.truncate(0)
        out.write(new_head + before[0][first:] + session_bytes(rng, 2, start=100))
    with open(fleet.path("h0", rels[1]), "r+b") as out:  # rewritten in place, longer
        out.truncate(0)
        out.write(session_bytes(rng, 30, start=5000))
    for rel in rels[2:]:
        append(fleet, "h0", rel, session_bytes(rng, 2, start=200))
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.rewritten, summary.files.grown) == (0, 2, 2)
    assert summary.hosts[0].versions_kept == 2
    versions = dest / ".remote-sync/versions/h0"
    assert [(versions / f"{rel}.v1").read_bytes() for rel in rels[:2]] == before[:2]
    assert sorted(p.name for p in versions.rglob("*") if p.is_file()) == [
        "s0.jsonl.v1",
        "s1.jsonl.v1",
    ]
    assert_exact(fleet, dest, "h0")
    assert summary.bytes < len(before[2])  # neither large session came whole
    # Nothing changed since: one more round moves nothing, and checks nothing in vain.
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.bytes, summary.files.unchanged) == (0, 0, 4)


def test_a_destination_inside_another_mirror_is_refused(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mirror in a host's directory of another would take that host's files for its own
    (rewrite them, keep the other's copies as versions); one in the state directory, worse."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    before = mirror_tree(dest, "h0")
    for inner in (dest / "h0", dest / "h0" / "agents" / "new", dest / ".remote-sync" / "x"):
        for extra in ([], ["--dry-run"]):
            code, events = run_cli(
                ["sync", "--inventory", str(inv), "--dest", str(inner), "--json", *extra], capsys
            )
            assert code == 2, (inner, extra)
            (error,) = [e for e in events if isinstance(e, ErrorEvent)]
            assert f"inside the mirror at {dest}" in error.message
            assert not (inner / ".remote-sync").exists()
    assert mirror_tree(dest, "h0") == before
    assert not (dest / "h0" / "agents" / "new").exists()


def test_a_read_only_mirror_can_be_listed_and_dry_run(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mirror on a read-only mount (a backup disk, a snapshot): the readers need no write."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0")
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    view = tmp_path / "ro"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(dest), str(view)]).returncode:
        pytest.skip("cannot bind-mount here (not root?)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        capsys.readouterr()
        assert main(["sessions", "list", "--dest", str(view), "--json"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 10
        code, summary, _ = sync(inv, view, capsys, "--dry-run")
        assert code == 0 and summary.files.unchanged == len(expected_tree(fleet.path("h0")))
    finally:
        subprocess.run(["umount", "-l", str(view)])


def test_progress_moves_while_a_large_file_streams_in(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only when a file ends: a 1 GiB session would hold the bar still for minutes."""
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    fleet.write("h0", "agents/a/sessions/big.jsonl", big_session(8 * 1024 * 1024))
    events: list[object] = []
    hosts = load_inventory(inv).hosts
    summary = anyio.run(lambda: api.sync(hosts, tmp_path / "m", emit=events.append))
    assert summary.exit_code == 0
    within = [
        e
        for e in events
        if isinstance(e, Progress) and e.files_done == 0 and 0 < e.bytes_done < e.bytes_total
    ]
    assert len(within) >= 2
    assert [e.bytes_done for e in within] == sorted(e.bytes_done for e in within)


def test_a_file_back_where_one_was_deleted_is_new_unless_it_is_that_one(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file at the path of one the host deleted (marked deleted by an earlier round) is new,
    fetched whole, the deleted one's copy kept as a version; the same file back (its inode,
    its overlap and head as mirrored) goes on as before. Transcripts and files copied whole,
    in the dry run's plan, the counts, the state and the next rounds."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(23)
    base = "agents/a/sessions"
    names = ("other", "reused", "same", "between")
    old = {name: session_bytes(rng, 20) for name in names}
    for name, data in old.items():
        fleet.write("h0", f"{base}/{name}.jsonl", data)
    fleet.write("h0", f"{base}/sessions.json", b'{"old": 1}')
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.new) == (0, 5)
    # Gone from the host: moved out of its root, so that each keeps its inode meanwhile.
    away = fleet.mkdir("h0", "away")
    for name in ("other", "reused", "same"):
        os.rename(fleet.path("h0", f"{base}/{name}.jsonl"), away / name)
    os.rename(fleet.path("h0", f"{base}/sessions.json"), away / "sessions.json")
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.deleted) == (0, 4)
    # Back: another file (another inode: the old one still exists), the same inode with
    # other lines, the same file grown; and a file replaced between two rounds (never seen
    # gone: a replacement like any, counted rewritten).
    new_other = session_bytes(rng, 25, start=1000)
    fleet.write("h0", f"{base}/other.jsonl", new_other)
    reused = session_bytes(rng, 30, start=2000)
    with open(away / "reused", "r+b") as f:
        f.truncate(0)
        f.write(reused)
    os.rename(away / "reused", fleet.path("h0", f"{base}/reused.jsonl"))
    more = session_bytes(rng, 5, start=3000)
    append(fleet, "h0", "away/same", more)
    os.rename(away / "same", fleet.path("h0", f"{base}/same.jsonl"))
    fleet.write("h0", f"{base}/sessions.json", b'{"new": 2}')
    fleet.path("h0", f"{base}/between.jsonl").unlink()
    fleet.write("h0", f"{base}/between.jsonl", session_bytes(rng, 10, start=4000))

    code, summary, events = sync(inv, dest, capsys, "--dry-run")
    planned = {e.path.rsplit("/", 1)[1]: e.action for e in events if isinstance(e, Planned)}
    # The plan appends to a file on its old inode; the dry run reads its overlap to see, as
    # the real run does, that it is another file.
    assert planned == {
        "other.jsonl": "new",
        "reused.jsonl": "new",
        "same.jsonl": "grown",
        "sessions.json": "new",
        "between.jsonl": "rewritten",
    }

    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0
    files = summary.files
    assert (files.new, files.grown, files.rewritten, files.unchanged) == (3, 1, 1, 0)
    assert summary.hosts[0].versions_kept == 4
    assert_exact(fleet, dest, "h0")
    versions = dest / ".remote-sync" / "versions" / "h0" / base
    for name in ("other", "reused", "between"):
        assert (versions / f"{name}.jsonl.v1").read_bytes() == old[name], name
    assert (versions / "sessions.json.v1").read_bytes() == b'{"old": 1}'
    assert not (versions / "same.jsonl.v1").exists()
    assert (dest / "h0" / base / "same.jsonl").read_bytes() == old["same"] + more
    with MirrorState(dest) as state:
        rows = state.host_files("h0")
    for path, row in rows.items():
        assert (row.state, row.deleted_at) == ("live", None), path

    # The next rounds go on from the new files.
    append(fleet, "h0", f"{base}/other.jsonl", more)
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.grown, summary.files.unchanged) == (0, 1, 4)
    assert summary.hosts[0].versions_kept == 0
    assert (dest / "h0" / base / "other.jsonl").read_bytes() == new_other + more
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.bytes, summary.files.unchanged) == (0, 0, 5)


@pytest.mark.parametrize("hashing", ["md5sum", "cksum", "none"])
def test_a_dry_run_reports_what_the_real_run_does_with_a_returning_file(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    hashing: str,
) -> None:
    """A file back on the inode of one the host deleted is appended to when it is that one
    (its overlap and head as mirrored), else fetched whole as new. The dry run reads those
    files' overlaps and heads to report what the real run then does: on a host hashing with
    md5sum, with cksum (no md5sum), or not at all (a head rewritten in place then goes
    unseen by both, and a file of its old size is fetched whole by both). A dry run with no
    such file asks the host for nothing, as before."""
    if hashing == "cksum":
        tools = applet_dir(request.getfixturevalue("busybox"), fleet.root / "bb", ("gzip", "tar"))
        with_cksum(tools)
        tools.chmod(0o755)
        with_host_path(monkeypatch, str(tools))
    elif hashing == "none":
        tools = fleet.mkdir("h0", "no-hash")
        for name in ("md5sum", "cksum"):
            (tools / name).write_text("#!/bin/sh\nexit 127\n")
            (tools / name).chmod(0o755)
        with_host_path(monkeypatch, f"{tools}:/usr/bin:/bin")
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rng = random.Random(24)
    base = "agents/a/sessions"
    names = ("same", "reused", "head", "size", "touched", "partial", "completed", "ended")
    partial = b'{"type":"message","partial'
    for n, name in enumerate(names):
        # The last three end on a partial line, which the mirror does not hold yet.
        tail = partial if n >= 5 else b""
        fleet.write("h0", f"{base}/{name}.jsonl", session_bytes(rng, 40, start=100 * n) + tail)
    assert sync(inv, dest, capsys)[1].files.new == 8
    away = fleet.mkdir("h0", "away")
    for name in names:  # moved out of the root: each keeps its inode meanwhile
        os.rename(fleet.path("h0", f"{base}/{name}.jsonl"), away / name)
    assert sync(inv, dest, capsys)[1].files.deleted == 8
    asked: list[int] = []  # the requests of each dry run's fetch
    real_fetch_stdin = engine.round_fetch_stdin

    def fetch_stdin(requests: Sequence[FetchRequest], per_batch: int) -> bytes:
        asked.append(len(requests))
        return real_fetch_stdin(requests, per_batch=per_batch)

    monkeypatch.setattr(engine, "round_fetch_stdin", fetch_stdin)
    code, _, events = sync(inv, dest, capsys, "--dry-run")
    assert (code, [e for e in events if isinstance(e, Planned)], asked) == (0, [], [0])
    monkeypatch.setattr(engine, "round_fetch_stdin", real_fetch_stdin)
    append(fleet, "h0", "away/same", session_bytes(rng, 5, start=1000))  # the same file, grown
    with open(away / "reused", "r+b") as f:  # another file on the inode
        f.truncate(0)
        f.write(session_bytes(rng, 50, start=2000))
    change_first_id_in_place(away / "head")  # its head rewritten in place, then grown
    append(fleet, "h0", "away/head", session_bytes(rng, 5, start=3000))
    rewrite_behind_the_tail(away / "size", rng, mtime_ahead=5)  # its old size, other lines
    os.utime(away / "touched", (time.time() + 5, time.time() + 5))  # as it was, another mtime
    os.utime(away / "partial", (time.time() + 5, time.time() + 5))  # its last line still partial
    append(fleet, "h0", "away/completed", b'":1}\n')  # its last line ended
    with open(away / "ended", "r+b") as f:  # its last line ended in place, at the same size
        f.seek(-len(partial), os.SEEK_END)
        f.write(b'{"type":"message","p":1}'.ljust(len(partial) - 1) + b"\n")
    os.utime(away / "ended", (time.time() + 5, time.time() + 5))
    for name in names:
        os.rename(away / name, fleet.path("h0", f"{base}/{name}.jsonl"))

    monkeypatch.setattr(engine, "round_fetch_stdin", fetch_stdin)
    code, dry, events = sync(inv, dest, capsys, "--dry-run")
    monkeypatch.setattr(engine, "round_fetch_stdin", real_fetch_stdin)
    assert asked == [0, 8]  # the returning files' overlaps, nothing else
    planned = {e.path.rsplit("/", 1)[1]: e.action for e in events if isinstance(e, Planned)}
    head = "grown" if hashing == "none" else "new"
    # The touched ones are not planned: where the host cannot hash, a sync fetches them
    # whole, finds them as mirrored, and counts them as new all the same (they are back).
    touched = {"touched.jsonl": "new", "partial.jsonl": "new"} if hashing == "none" else {}
    assert (code, planned) == (
        0,
        {
            "same.jsonl": "grown",
            "reused.jsonl": "new",
            "head.jsonl": head,
            "size.jsonl": "new",
            "completed.jsonl": "grown",
            # Of its old size: fetched whole where the host cannot hash.
            "ended.jsonl": "new" if hashing == "none" else "grown",
            **touched,
        },
    )
    code, summary, _ = sync(inv, dest, capsys)
    files = summary.files
    actions = list(planned.values())
    assert (code, files.new, files.grown) == (0, actions.count("new"), actions.count("grown"))
    assert files.unchanged == dry.files.unchanged == (0 if touched else 2)
    if hashing != "none":
        assert_exact(fleet, dest, "h0")


def test_a_file_back_unchanged_is_live_again_and_moves_nothing(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same transcript and file copied whole moved away and back as they were (a disk
    unmounted for a while): live again, unchanged, nothing fetched, no version."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    base = "agents/a/sessions"
    fleet.write("h0", f"{base}/s.jsonl", session_bytes(random.Random(3), 10))
    fleet.write("h0", f"{base}/sessions.json", b'{"a": 1}')
    sync(inv, dest, capsys)
    away = fleet.mkdir("h0", "away")
    for name in ("s.jsonl", "sessions.json"):
        os.rename(fleet.path("h0", f"{base}/{name}"), away / name)
    assert sync(inv, dest, capsys)[1].files.deleted == 2
    for name in ("s.jsonl", "sessions.json"):
        os.rename(away / name, fleet.path("h0", f"{base}/{name}"))
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.bytes, summary.files.unchanged, summary.hosts[0].versions_kept) == (
        0,
        0,
        2,
        0,
    )
    with MirrorState(dest) as state:
        assert {row.state for row in state.host_files("h0").values()} == {"live"}


# ----------------------------------------------------------------------------- output bounds


def one_host_tools(
    fleet: SSHFleet,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    scripts: dict[str, str],
    argv: str = "round_argv",
) -> None:
    """Stand-in tools (sh scripts) first on the PATH of ``name``'s commands alone: its
    round's, or with ``argv="fetch_argv"`` its follow-up's. The other hosts keep the real
    ones; a stand-in reaches its real tool by its full path."""
    where = fleet.root / f"tools-{name}-{argv}"
    where.mkdir()
    for tool, body in scripts.items():
        (where / tool).write_text("#!/bin/sh\n" + body)
        (where / tool).chmod(0o755)
    real = getattr(engine, argv)
    root = str(fleet.path(name))

    def with_tools(first: str, *args: Any, **kwargs: Any) -> list[str]:
        command: list[str] = real(first, *args, **kwargs)
        return ["env", f"PATH={where}:/usr/bin:/bin", *command] if first == root else command

    monkeypatch.setattr(engine, argv, with_tools)


def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output bounds made small, so a test goes past them in a blink (raising=False: the
    base code, without them, runs the test and shows what it did)."""
    monkeypatch.setattr(fetch_frames, "FETCH_ITEM_SLACK", 16 * 1024, raising=False)
    monkeypatch.setattr(fetch_frames, "FETCH_GROWTH_SLACK", 0, raising=False)
    monkeypatch.setattr(listing_module, "MAX_LISTING_FILES", 2000, raising=False)
    monkeypatch.setattr(fetch_requests, "FOLLOW_UP_GROWTH", 0, raising=False)


# The stand-ins send their extra output, then keep the command open without a word: without
# a bound the client reads it all and waits for the idle timeout.
ENDLESS_TAR = """case " $* " in
*" -cf - "*)
    /usr/bin/tar "$@"
    /usr/bin/head -c 8388608 /dev/zero
    exec /usr/bin/sleep 3600
    ;;
esac
exec /usr/bin/tar "$@"
"""
ENDLESS_FIND = r"""case " $* " in
*" -type f "*)
    /usr/bin/find "$@"
    awk 'BEGIN {
        for (i = 0; i < 400000; i++) printf "1 2.0 3 %d\n./agents/x/sessions/s%d.jsonl%c", i, i, 0
    }'
    exec /usr/bin/sleep 3600
    ;;
esac
exec /usr/bin/find "$@"
"""


@pytest.mark.parametrize("tool", ["tar", "find"])
def test_a_host_that_keeps_sending_is_stopped_well_before_the_idle_timeout(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tool: str,
) -> None:
    """A tar that sends zero blocks past its archive's end, or a find that prints records
    past the tree's: the client knows how much it asked for (and how long a listing may be),
    so the host's round ends at once, an error of its own naming the host, not at the idle
    timeout (which a host that never stops sending would never reach). The other host
    completes, nothing is recorded as deleted, and a rerun with the real tools converges."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    dest = tmp_path / "m"
    make_openclaw_tree(fleet, "h0", sessions=3)
    make_openclaw_tree(fleet, "h1", sessions=2, seed=1)
    if tool == "find":  # mirrored first: a listing refused must record no deletion
        assert sync(inv, dest, capsys)[0] == 0
        make_openclaw_tree(fleet, "h1", sessions=3, seed=2)
    small_bounds(monkeypatch)
    one_host_tools(fleet, monkeypatch, "h0", {tool: ENDLESS_TAR if tool == "tar" else ENDLESS_FIND})
    started = time.monotonic()
    code, summary, events = sync(inv, dest, capsys, "--timeout", "8")
    took = time.monotonic() - started
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent) and e.host == "h0"]
    assert error.kind == "too_much_output", error
    if tool == "find":
        assert "include globs" in error.hint
        assert summary.files.deleted == 0
        with MirrorState(dest) as state:
            assert {row.state for row in state.host_files("h0").values()} == {"live"}
    assert took < 8, took
    status = {e.host: e.status for e in events if isinstance(e, HostDone)}
    assert status == {"h0": "failed", "h1": "ok"}
    assert_exact(fleet, dest, "h1")
    monkeypatch.undo()
    code, summary, _ = sync(inv, dest, capsys)
    assert code == 0 and summary.files.deleted == 0
    assert_exact(fleet, dest, "h0")
    assert_exact(fleet, dest, "h1")


def test_a_follow_up_that_sends_more_than_asked_commits_none_of_it(
    fleet: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command that fetches whole a file found rewritten asks for a bounded length, not
    "to its end": a dd or head there that sends lines past the file is refused, naming the
    host, where those lines were committed to the mirror as the file's."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0", "h1"])
    dest = tmp_path / "m"
    paths = make_openclaw_tree(fleet, "h0", sessions=3)
    make_openclaw_tree(fleet, "h1", sessions=2, seed=1)
    assert sync(inv, dest, capsys)[0] == 0
    data = fleet.path("h0", paths[1]).read_bytes()
    with open(fleet.path("h0", paths[1]), "r+b") as f:  # in place: only the overlap shows it
        f.write(data[:-10] + b"X" * 9 + b"\n" + data)
    fleet.write("h1", "agents/agent0/sessions/new.jsonl", session_bytes(random.Random(3), 2))
    more = "yes more-than-asked | /usr/bin/head -c 4194304\n"
    small_bounds(monkeypatch)
    one_host_tools(
        fleet,
        monkeypatch,
        "h0",
        {
            "dd": (
                f'/usr/bin/dd "$@"\nst=$?\ncase " $* " in *count_bytes*) {more};; esac\nexit $st\n'
            ),
            "head": (
                '/usr/bin/head "$@"\nst=$?\n'
                f'case " $* " in *" -q "*) ;; *" -c "*) {more};; esac\nexit $st\n'
            ),
        },
        argv="fetch_argv",
    )
    code, _, events = sync(inv, dest, capsys, "--timeout", "8")
    assert code == 1
    (error,) = [e for e in events if isinstance(e, ErrorEvent) and e.host == "h0"]
    assert error.kind in ("protocol", "too_much_output"), error
    assert b"more-than-asked" not in (dest / "h0" / paths[1]).read_bytes()
    status = {e.host: e.status for e in events if isinstance(e, HostDone)}
    assert status == {"h0": "failed", "h1": "ok"}
    assert_exact(fleet, dest, "h1")
    monkeypatch.undo()
    assert sync(inv, dest, capsys)[0] == 0
    assert_exact(fleet, dest, "h0")


# --------------------------------------------------------------------- promises of the issues


def test_sync_tag_picks_the_tagged_hosts_and_named_hosts_add_to_them(
    ssh_fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sync --tag T`` (``-t T``) syncs the inventory's hosts with that tag and no other;
    a repeated tag adds its hosts, and a HOST named besides adds that host."""
    fleet = ssh_fleet(3)
    tags = {"h0": ["edge"], "h1": ["lab"]}
    inv = write_inventory(fleet, tmp_path / "inventory.toml", tags=tags)
    for name in fleet.names:
        make_openclaw_tree(fleet, name, agents=1, sessions=1, lines=2)
    for n, (picks, synced) in enumerate(
        [
            (["--tag", "edge"], ["h0"]),
            (["-t", "lab"], ["h1"]),
            (["h2", "-t", "lab"], ["h1", "h2"]),
            (["-t", "edge", "--tag", "lab"], ["h0", "h1"]),
        ]
    ):
        dest = tmp_path / f"m{n}"
        code, events = run_cli(["sync", *picks, "-I", str(inv), "-d", str(dest), "--json"], capsys)
        assert code == 0, (picks, events)
        assert sorted(e.host for e in events if isinstance(e, HostDone)) == synced, picks
        assert sorted(p.name for p in dest.iterdir() if p.name != ".remote-sync") == synced
        for name in synced:
            assert_exact(fleet, dest, name)


def test_sync_concurrency_bounds_the_host_rounds_run_at_once(
    ssh_fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sync --concurrency 2`` over four hosts runs two host rounds at once, never more."""
    fleet = ssh_fleet(4)
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    for name in fleet.names:
        make_openclaw_tree(fleet, name, agents=1, sessions=2, lines=5)
    running: list[str] = []
    most = 0
    real = engine.HostSync.run

    async def counted(self: engine.HostSync) -> Any:
        nonlocal most
        running.append(self.name)
        most = max(most, len(running))
        try:
            # Long enough a round that every host's task is waiting for its slot meanwhile.
            await anyio.sleep(0.2)
            return await real(self)
        finally:
            running.remove(self.name)

    monkeypatch.setattr(engine.HostSync, "run", counted)
    code, summary, _ = sync(inv, tmp_path / "m", capsys, "--concurrency", "2")
    assert code == 0 and summary.hosts_ok == 4
    assert most == 2
    for name in fleet.names:
        assert_exact(fleet, tmp_path / "m", name)


def test_a_syncs_reads_share_connections_opened_once_for_it(
    ssh_fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each host's round read its checkpoints and the files the index lacks (in worker
    threads) on connections opened for that one read: two opens of the state database per
    host, each some 0.13 ms with its schema read, 40 a round of a 20 hosts' fleet. Now a
    sync's reads take turns on connections opened once for it: no more than the writes'
    and one per round running at once, whatever the number of hosts. They still see what
    the round committed before them: no transcript the round indexed is taken for one the
    index lacks and indexed again."""
    fleet = ssh_fleet(4)
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    paths = {
        name: make_openclaw_tree(fleet, name, agents=1, sessions=2, lines=5) for name in fleet.names
    }
    opens: list[int] = []
    real_open = MirrorState.for_thread

    def counted(self: MirrorState) -> MirrorState:
        opens.append(1)
        return real_open(self)

    monkeypatch.setattr(MirrorState, "for_thread", counted)
    indexed_again: list[bytes] = []
    real_index = engine.index_local_file

    def index_local_file(reader: Any, host: str, path: bytes, *args: Any) -> Any:
        indexed_again.append(path)
        return real_index(reader, host, path, *args)

    monkeypatch.setattr(engine, "index_local_file", index_local_file)
    dest = tmp_path / "m"
    for change in ("initial", "grown"):
        if change == "grown":
            for name in fleet.names:
                append(fleet, name, paths[name][0], session_bytes(random.Random(1), 2, start=50))
        opens.clear()
        code, summary, _ = sync(inv, dest, capsys, "--concurrency", "2")
        assert code == 0 and summary.hosts_ok == 4, change
        assert 1 < len(opens) <= 1 + 2, (change, len(opens))  # was 1 + 2 x 4
        assert indexed_again == [], change
        for name in fleet.names:
            assert_exact(fleet, dest, name)
    assert summary.files.grown == 4


def test_a_read_that_fails_closes_its_connection_and_the_next_one_sees_the_commits(
    tmp_path: Path,
) -> None:
    """A connection a read failed on is not lent again (it might still hold a statement,
    and so a snapshot of the state before later commits); one given back sees every commit
    made after it; the run's close closes every one."""
    state = MirrorState(tmp_path / "m")
    row = FileState("h", b"a.jsonl", "file", 1, 1, 1.0, 1, 1, b"x")
    closed: list[MirrorState] = []

    async def run() -> None:
        async with commits.opened(state) as writes:

            def failing() -> None:
                with writes.reading() as reader:
                    real_close = reader.close

                    def close() -> None:
                        closed.append(reader)
                        real_close()

                    reader.close = close  # type: ignore[method-assign]
                    cursor = reader.db.execute("SELECT path FROM files")
                    cursor.fetchone()  # a statement left open: a read transaction
                    raise OSError("read failed")

            with pytest.raises(OSError, match="read failed"):
                await commits.in_thread(failing)
            assert len(closed) == 1

            def read() -> tuple[MirrorState, list[bytes]]:
                with writes.reading() as reader:
                    return reader, list(reader.host_files("h"))

            first, found = await commits.in_thread(read)
            assert first is not closed[0] and found == []
            await writes.run(lambda s: s.commit([row]))
            again, found = await commits.in_thread(read)
            assert again is first and found == [b"a.jsonl"]
        assert first._db is None  # closed with the run

    anyio.run(run)


def test_the_checkpoint_database_is_in_wal_mode(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint (and index) database a sync leaves is SQLite in WAL mode, so that a
    reader never blocks the sync's commits, nor they the reader."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", agents=1, sessions=1, lines=2)
    dest = tmp_path / "m"
    assert sync(inv, dest, capsys)[0] == 0
    with contextlib.closing(sqlite3.connect(dest / ".remote-sync" / "state.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_index_of_an_appended_transcript_counts_the_new_bytes_only(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index of a grown transcript goes on from its stored facts with the appended
    lines: the old bytes are never read again for it. A role changed in the mirrored copy
    past its first KiB and before its last 4 KiB (which a sync does read, as the file's
    fingerprint and the overlap) would count as another role if they were."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    rel = "agents/a/sessions/s.jsonl"
    rng = random.Random(9)
    old = session_bytes(rng, 40)  # odd lines are the user's: 20 of each
    fleet.write("h0", rel, old)
    assert sync(inv, dest, capsys)[0] == 0
    assert _user_and_assistant(dest) == (20, 20)
    at = old.index(b'"role": "user"', FINGERPRINT_BYTES)
    assert at + 100 < len(old) - OVERLAP_BYTES
    mirrored = dest / "h0" / rel
    with open(mirrored, "r+b") as copy:
        copy.seek(at)
        copy.write(b'"role": "usEr"')
    append(fleet, "h0", rel, session_bytes(rng, 10, start=40))
    code, summary, _ = sync(inv, dest, capsys)
    assert (code, summary.files.grown) == (0, 1)
    assert mirrored.read_bytes()[at : at + 14] == b'"role": "usEr"'  # appended to, not fetched
    assert _user_and_assistant(dest) == (25, 25)
    # Read again, the old bytes count one user message less.
    rebuild_index(dest)
    assert _user_and_assistant(dest) == (24, 25)


def _user_and_assistant(dest: Path) -> tuple[int, int]:
    with contextlib.closing(open_index(dest)) as conn:
        (row,) = query_sessions(conn)
    return row.user_messages, row.assistant_messages
