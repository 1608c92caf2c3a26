"""A newcomer's first run: ``remote-sync sync me@box --dest ./mirror`` with no inventory.

The user's own ``~/.ssh/config`` (here: the fleet's, under a temporary ``$HOME``) reaches the
hosts, each of which has one agent in its default layout in its home. Every host of a fleet
logs in as the same account, whose real home is shared with every other test: these fleets
give each host a home of its own, its data dir (``home_in_data``), so that ``~/.claude`` is
that host's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeFleet
from sshfleet import SSHFleet

from remote_sync.cli import main
from remote_sync.events import ErrorEvent, WarningEvent, decode_event
from remote_sync.inventory import load_inventory
from remote_sync.mirror import root_probe

CLAUDE_SESSION = "projects/-w/11111111-2222-3333-4444-555555555555.jsonl"


def claude_transcript() -> bytes:
    lines = [
        {
            "type": "user",
            "sessionId": "11111111-2222-3333-4444-555555555555",
            "uuid": "a",
            "timestamp": "2026-11-20T10:00:00.000Z",
            "cwd": "/w",
            "message": {"role": "user", "content": "fix the bug " + "z" * 600},
        },
        {
            "type": "assistant",
            "sessionId": "11111111-2222-3333-4444-555555555555",
            "uuid": "b",
            "timestamp": "2026-11-20T10:00:01.000Z",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        },
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def newcomer(ssh_fleet: MakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHFleet:
    """Hosts ``cc`` (Claude Code only) and ``bare`` (no agent), reached through the user's
    own ``~/.ssh/config``; the working directory is an empty one."""
    fleet = ssh_fleet(names=["cc", "bare"], home_in_data=True)
    fleet.write("cc", f".claude/{CLAUDE_SESSION}", claude_transcript())
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(fleet.ssh_config, home / ".ssh" / "config")
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return fleet


def sync_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[object]]:
    code = main(["sync", *args, "--json"])
    out, _err = capsys.readouterr()
    return code, [decode_event(line) for line in out.splitlines()]


def test_a_missing_default_root_names_the_agent_the_host_has(
    newcomer: SSHFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Synced with the default format, a host with only Claude Code failed with "check 'root'
    (and 'format') for this host in the inventory": there was no inventory, and nothing said
    that ~/.claude was there nor which option reads it."""
    code, events = sync_json([f"{newcomer.user}@cc", "--dest", "mirror"], capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and error.kind == "remote_command_failed", events
    assert "'~/.openclaw' does not exist" in error.message
    assert error.hint is not None and "inventory" not in error.hint, error.hint
    assert "~/.claude (claude-code)" in error.hint and "--format claude-code" in error.hint

    # Nothing of any agent's there: the hint names the options, and the formats.
    code, events = sync_json([f"{newcomer.user}@bare", "--dest", "mirror"], capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and error.hint is not None, events
    assert "--root" in error.hint and "--format" in error.hint and "claude-code" in error.hint


def test_an_inventory_host_whose_root_is_missing_is_told_the_format_to_set(
    newcomer: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "cc"\naddress = "cc"\nformat = "codex"\n')
    code, events = sync_json(["--inventory", str(inventory), "--dest", "mirror"], capsys)
    (error,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and error.hint is not None, events
    assert "'~/.codex' does not exist" in error.message
    assert 'format = "claude-code"' in error.hint and "inventory" in error.hint, error.hint


def test_the_probe_of_other_roots_costs_a_healthy_sync_nothing(
    newcomer: SSHFleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_second_command(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a sync whose root exists ran a second command")

    monkeypatch.setattr(root_probe, "run_command", no_second_command)
    code, _events = sync_json(
        [f"{newcomer.user}@cc", "--format", "claude-code", "--dest", "mirror"], capsys
    )
    assert code == 0
    assert (Path("mirror") / f"{newcomer.user}@cc" / CLAUDE_SESSION).read_bytes() == (
        claude_transcript()
    )


def sessions_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any]]:
    """``sessions ARGS --remote --json``: its exit code and its lines (rows as dicts, events
    decoded)."""
    code = main(["sessions", *args, "--remote", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, [decode_event(json.dumps(line)) if "type" in line else line for line in lines]


def test_a_remote_listing_or_show_of_a_missing_root_names_the_agent_the_host_has(
    newcomer: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sessions list --remote` and `sessions show --remote` of a host with only Claude Code
    said "give the agent's directory on the host with --root, and its format with --format":
    options these commands do not take (their --format is a filter), and nothing said that
    ~/.claude was there. They now probe as a sync does, with its exit code and error."""
    host = f"{newcomer.user}@cc"
    for args in (["list", "--host", host], ["show", host, "11111111"]):
        code, events = sessions_json(args, capsys)
        (error,) = events
        assert isinstance(error, ErrorEvent) and code == 1, (args, events)
        assert (error.host, error.kind) == (host, "remote_command_failed")
        assert "'~/.openclaw' does not exist" in error.message
        assert error.hint is not None and "--root" not in error.hint, error.hint
        assert "~/.claude (claude-code)" in error.hint, error.hint
        assert 'format = "claude-code" and root = "~/.claude"' in error.hint, error.hint
        assert "inventory entry for this host (--inventory FILE)" in error.hint, error.hint

    # Nothing of any agent's there: the hint names the inventory entry, and the formats.
    host = f"{newcomer.user}@bare"
    for args in (["list", "--host", host], ["show", host, "11111111"]):
        code, events = sessions_json(args, capsys)
        (error,) = events
        assert isinstance(error, ErrorEvent) and code == 1, (args, events)
        assert error.hint is not None and "--root" not in error.hint, error.hint
        assert "inventory entry" in error.hint and "claude-code" in error.hint, error.hint

    # A host of the inventory: the sync's exit code, error event and hint, word for word.
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "cc"\naddress = "cc"\nformat = "codex"\n')
    code, events = sync_json(["--inventory", str(inventory), "--dest", "mirror"], capsys)
    (synced,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert code == 1 and 'format = "claude-code"' in (synced.hint or ""), synced
    for args in (["list"], ["show", "cc", "11111111"]):
        code, events = sessions_json([*args, "--inventory", str(inventory)], capsys)
        assert (code, events) == (1, [synced]), args


def test_the_probe_of_other_roots_costs_a_healthy_remote_listing_nothing(
    newcomer: SSHFleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_second_command(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a remote listing or show whose root exists ran a second command")

    monkeypatch.setattr(root_probe, "run_command", no_second_command)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "cc"\naddress = "cc"\nformat = "claude-code"\n')
    code, rows = sessions_json(["list", "--inventory", str(inventory)], capsys)
    assert code == 0 and [row["path"] for row in rows] == [CLAUDE_SESSION], rows
    code, messages = sessions_json(["show", "cc", "11111111", "-I", str(inventory)], capsys)
    assert code == 0 and len(messages) == 2, messages


def test_the_rerun_the_hint_asks_for_is_not_refused(
    newcomer: SSHFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failed first sync recorded the host as openclaw in ~/.openclaw, and the rerun with
    --format claude-code was refused: "this mirror holds ... give this source another host
    name, or sync it into another destination", although the mirror held nothing of it."""
    host = f"{newcomer.user}@cc"
    assert sync_json([host, "--dest", "mirror"], capsys)[0] == 1
    code, events = sync_json([host, "--format", "claude-code", "--dest", "mirror"], capsys)
    assert code == 0, events
    assert (Path("mirror") / host / CLAUDE_SESSION).read_bytes() == claude_transcript()
    code = main(["sessions", "list", "--dest", "mirror", "--host", host, "--json"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and row["format"] == "claude-code", row


def test_a_root_without_session_files_says_nothing_was_found(
    newcomer: SSHFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """An agent with no session yet, or a root given without its format: the sync said "ok"
    with a row of zeros, and nothing told a wrong --root from an idle agent."""
    newcomer.mkdir("bare", ".openclaw/agents/main/sessions")
    code, events = sync_json([f"{newcomer.user}@bare", "--dest", "mirror"], capsys)
    (warning,) = [e for e in events if isinstance(e, WarningEvent)]
    assert code == 0 and warning.kind == "nothing_to_mirror", events
    assert "'~/.openclaw'" in warning.message and "agents/*/sessions/**" in warning.message
    assert warning.hint is not None and "--root" in warning.hint

    # --root of another agent without --format: the hint names the format to give.
    code, events = sync_json([f"{newcomer.user}@cc", "--root", "~/.claude", "-d", "m2"], capsys)
    (warning,) = [e for e in events if isinstance(e, WarningEvent)]
    assert code == 0 and warning.hint is not None, events
    assert "--format claude-code" in warning.hint, warning.hint

    # Once the mirror holds a file of the host, an empty listing is what it records (the
    # files were deleted), not news.
    newcomer.write("bare", ".openclaw/agents/main/sessions/s.jsonl", b"{}\n")
    assert sync_json([f"{newcomer.user}@bare", "--dest", "mirror"], capsys)[0] == 0
    newcomer.path("bare", ".openclaw/agents/main/sessions/s.jsonl").unlink()
    code, events = sync_json([f"{newcomer.user}@bare", "--dest", "mirror"], capsys)
    assert code == 0 and not [e for e in events if isinstance(e, WarningEvent)], events


def test_no_command_and_the_help_show_the_first_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`remote-sync` alone said only "the following arguments are required: command", and no
    help showed a command to type."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "sync,sessions,index" in err
    assert "\n  remote-sync sync me@box --dest ./mirror\n" in err, err
    for command in (["sync"], ["sessions", "list"], ["sessions", "show"]):
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and f"\n  remote-sync {' '.join(command)} " in out, out


def test_the_sync_help_lists_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "openclaw, claude-code, codex, picoclaw, pi, jsonl (default openclaw)" in out, out


def test_the_sync_help_says_tags_add_to_the_hosts_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sync plain1 --tag dual` synced plain1 and every host tagged dual, while the help said
    --tag takes "only hosts with this tag": an operator used to Ansible's --limit expected
    plain1 alone, or nothing."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[[hosts]]\nname = "plain1"\naddress = "a"\n'
        '[[hosts]]\nname = "box"\naddress = "b"\ntags = ["dual"]\n'
    )
    chosen = load_inventory(inventory).select(["plain1"], ["dual"])
    assert [host.name for host in chosen] == ["plain1", "box"]
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "hosts to sync (default: all, or those of --tag)" in out, out
    assert "hosts with this tag, besides any HOST named (repeatable: any of them)" in out, out


def test_the_recap_says_where_the_files_went_and_what_to_type_next(
    newcomer: SSHFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recap's table named hosts and counts, not the mirror's layout nor how to read it."""
    code = main(["sync", f"{newcomer.user}@cc", "--format", "claude-code", "--dest", "./mirror"])
    out = capsys.readouterr().out
    assert code == 0
    assert "mirror: mirror/<host>/; sessions: remote-sync sessions list --dest mirror" in out, out
