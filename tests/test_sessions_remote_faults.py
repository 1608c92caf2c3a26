"""`sessions list|show --remote` when the host's tools, files or paths misbehave (real sshd).

Each case is what an audit of the remote session commands found: a listing that came back
incomplete with exit 0, BusyBox reading a whole file for a tail, start points and paths the
scripts or the client spelled differently, an inventory exclude that `show` ignored.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest
from synchelp import cli, unreadable, write_inventory
from test_sessions_cli import openclaw_session

from remote_sync import api
from remote_sync.cancel import CancelRegistry, default_registry
from remote_sync.errors import (
    ConfigError,
    RemoteSyncError,
    TooMuchOutputError,
    TransferCancelledError,
)
from remote_sync.index import remote as remote_module
from remote_sync.index import remote_scripts
from remote_sync.inventory import load_inventory
from remote_sync.mirror import engine, fetch_frames
from remote_sync.mirror import listing as listing_module

SESSIONS = "agents/main/sessions"


def host_tools(
    fleet: Any,
    monkeypatch: pytest.MonkeyPatch,
    scripts: dict[str, str],
    busybox_only: bool = False,
) -> None:
    """The host's commands find these stand-in tools (sh scripts) first on their PATH; with
    ``busybox_only`` the other tools are BusyBox applets, and nothing else is on PATH."""
    where = fleet.root / "tools"
    where.mkdir()
    path = f"{where}:$PATH"
    if busybox_only:
        busybox = shutil.which("busybox")
        assert busybox is not None, "busybox is installed by .ci/run"
        for applet in ("sh", "find", "head", "tail", "xargs", "printf", "cat", "wc", "stat", "dd"):
            if applet not in scripts:
                os.symlink(busybox, where / applet)
        path = str(where)
    for tool, body in scripts.items():
        (where / tool).write_text("#!/bin/sh\n" + body)
        (where / tool).chmod(0o755)
    first = f'PATH="{path}"; export PATH\n'
    monkeypatch.setattr(remote_scripts, "_LIST_SCRIPT", first + remote_scripts._LIST_SCRIPT)
    monkeypatch.setattr(remote_scripts, "_SHOW_SCRIPT", first + remote_scripts._SHOW_SCRIPT)


def sessions(fleet: Any, name: str, count: int = 3) -> None:
    for i in range(count):
        fleet.write(name, f"{SESSIONS}/s{i}.jsonl", openclaw_session(f"s{i}", 3))


def listed(out: str) -> set[str]:
    """The paths of the session rows printed (error events go to stdout too with --json)."""
    rows = [json.loads(line) for line in out.splitlines()]
    return {row["path"] for row in rows if row.get("type") != "error"}


@pytest.mark.parametrize(
    "tool",
    ["xargs killed", "stat missing (BusyBox)", "find without -exec + (BusyBox)", "read fails"],
)
def test_a_listing_that_a_tool_cut_short_is_not_passed_for_complete(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tool: str,
) -> None:
    name = fleet.names[0]
    sessions(fleet, name)
    busybox = shutil.which("busybox") or "busybox"
    if tool == "xargs killed":
        host_tools(fleet, monkeypatch, {"xargs": "sleep 0.2\nkill -9 $$\n"})
    elif tool == "stat missing (BusyBox)":
        stat = 'echo "stat: applet not found" >&2\nexit 127\n'
        host_tools(fleet, monkeypatch, {"stat": stat}, busybox_only=True)
    elif tool == "find without -exec + (BusyBox)":
        find = (
            'for a do [ "$a" = + ] && { echo "find: unrecognized: +" >&2; exit 1; }; done\n'
            f'exec {busybox} find "$@"\n'
        )
        host_tools(fleet, monkeypatch, {"find": find}, busybox_only=True)
    else:
        cat = (
            'case $2 in *s1.jsonl) head -c 100 "$2"; echo "cat: I/O error" >&2; exit 1 ;; esac\n'
            'exec /usr/bin/cat "$@"\n'
        )
        host_tools(fleet, monkeypatch, {"cat": cat})
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    everything = {f"{SESSIONS}/s{i}.jsonl" for i in range(3)}
    if tool == "find without -exec + (BusyBox)":  # its fallback lists everything
        assert (code, listed(out)) == (0, everything), err
        return
    assert code == 1 and name in err and "incomplete" in err, (code, err)
    if tool == "xargs killed":
        assert "xargs failed" in err
    elif tool == "stat missing (BusyBox)":
        assert "cannot stat" in err
    else:  # the file is named as a sync names it (it was a line of one error without a path)
        assert listed(out) == everything - {f"{SESSIONS}/s1.jsonl"}
        failed = [e for e in map(json.loads, out.splitlines()) if e.get("kind") == "read_failed"]
        assert [(e["host"], e["path"]) for e in failed] == [(name, f"{SESSIONS}/s1.jsonl")]
        assert failed[0]["message"] == (
            "reading the file on the host failed midway: the session is left out of the listing"
        )
        assert f"{name}: {SESSIONS}/s1.jsonl: reading the file on the host failed" in err


def test_an_unreadable_directory_makes_the_listing_incomplete(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    sessions(fleet, name, 1)
    fleet.write(name, "agents/secret/sessions/b.jsonl", openclaw_session("b", 3))
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    with unreadable(fleet.path(name, "agents/secret/sessions")):
        code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert listed(out) == {f"{SESSIONS}/s0.jsonl"}  # what could be read is listed
    assert code == 1 and "agents/secret/sessions: find could not read it (Permission denied)" in err


def test_busybox_tail_reads_only_the_blocks(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BusyBox's tail -c +N reads the file from its start (and failed past 2 GiB) and its
    wc -c reads it all: a tail of a 3 GiB session (sparse here) must use neither."""
    name = fleet.names[0]
    path = fleet.write(name, f"{SESSIONS}/big.jsonl", b"")
    with open(path, "r+b") as fh:
        fh.truncate(3 * 1024**3)
        fh.seek(0, 2)
        fh.write(b"\n" + openclaw_session("big", 50))
    refuse = 'echo "$0: must not read the file for a tail" >&2\nexit 99\n'
    busybox = shutil.which("busybox") or "busybox"
    wc = f'[ -p /dev/stdin ] && exec {busybox} wc "$@"\n' + refuse  # counting on a pipe is fine
    host_tools(fleet, monkeypatch, {"tail": refuse, "wc": wc}, busybox_only=True)
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    code, out, err = cli(
        ["sessions", "show", "--json", "--tail", "3", "--remote", "-I", str(inv), name, "big"],
        capsys,
    )
    assert code == 0, err
    assert [json.loads(line)["role"] for line in out.splitlines()][-3:] != []


def test_show_accepts_the_path_as_listed_and_its_other_spellings(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    fleet.write(name, f"{SESSIONS}/plain.jsonl", openclaw_session("plain", 3))
    with open(os.fsencode(fleet.path(name, SESSIONS)) + b"/\xff\xfe.jsonl", "wb") as fh:
        fh.write(openclaw_session("odd", 3))
    subprocess.run(["chown", "-R", fleet.user, str(fleet.path(name))], check=True)
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert code == 0, err
    odd = next(path for path in listed(out) if "\\x" in path)  # as listed: \xff\xfe
    for given in (
        odd,
        f"./{SESSIONS}/plain.jsonl",
        "agents/main//sessions/plain.jsonl",
        f"{SESSIONS}/./plain.jsonl",
    ):
        code, out, err = cli(["sessions", "show", "--remote", "-I", str(inv), name, given], capsys)
        assert code == 0 and out, (given, err)
    for outside in (f"/{SESSIONS}/plain.jsonl", f"{SESSIONS}/../sessions/plain.jsonl"):
        code, _, err = cli(["sessions", "show", "--remote", "-I", str(inv), name, outside], capsys)
        assert code == 2 and "not a path inside the host's root" in err, (outside, err)


def test_show_keeps_to_the_inventory_excludes(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    sessions(fleet, name, 1)
    fleet.write(name, f"{SESSIONS}/secret.jsonl", openclaw_session("secret", 3))
    inv = write_inventory(
        fleet, tmp_path / "inv.toml", [name], extra='exclude = ["**/secret.jsonl"]'
    )
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert (code, listed(out)) == (0, {f"{SESSIONS}/s0.jsonl"}), err
    path = f"{SESSIONS}/secret.jsonl"
    code, out, err = cli(["sessions", "show", "--remote", "-I", str(inv), name, path], capsys)
    assert code == 2 and "excluded" in err and out == ""


def test_start_points_that_begin_with_a_dash(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Claude Code names a project's directory after its path: "-home-alice-work"."""
    name = fleet.names[0]
    line = (
        b'{"type":"user","message":{"role":"user","content":"hello"},'
        b'"timestamp":"2026-01-01T00:00:00Z"}\n'
    )
    fleet.write(name, "projects/-home-alice-work/abc.jsonl", line)
    inv = tmp_path / "inv.toml"
    inv.write_text(
        f'[defaults]\nssh_config = "{fleet.ssh_config}"\nknown_hosts = "{fleet.known_hosts}"\n'
        f'[[hosts]]\nname = "{name}"\naddress = "{name}"\nformat = "claude-code"\n'
        f'root = "{fleet.path(name, "projects")}"\ninclude = ["-home-alice-work/**"]\n'
    )
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert (code, listed(out)) == (0, {"-home-alice-work/abc.jsonl"}), err
    code, out, err = cli(["sessions", "show", "--remote", "-I", str(inv), name, "abc"], capsys)
    assert code == 0 and "hello" in out, err


def test_a_cancel_stops_a_handshake_that_hangs(tmp_path: Path) -> None:
    """A host that accepts TCP and never says a word: cancelling through the registry ends a
    remote listing and a remote show at once, not after the connect timeout."""
    import socket
    import time

    import anyio

    from remote_sync import api
    from remote_sync.cancel import CancelRegistry
    from remote_sync.errors import TransferCancelledError
    from remote_sync.inventory import load_inventory

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        inv = tmp_path / "inv.toml"
        inv.write_text(
            f'[[hosts]]\nname = "mute"\naddress = "127.0.0.1"\nport = {port}\nroot = "/tmp"\n'
        )
        (host,) = load_inventory(inv).hosts

        async def cancelled_after(seconds: float, work: Any) -> float:
            registry = CancelRegistry()
            started = time.monotonic()
            async with anyio.create_task_group() as tg:

                async def cancel() -> None:
                    await anyio.sleep(seconds)
                    assert registry.cancel("t")

                tg.start_soon(cancel)
                with pytest.raises(TransferCancelledError):
                    await work(registry)
            return time.monotonic() - started

        async def listing(registry: CancelRegistry) -> None:
            async for _ in api.stream_sessions(
                remote=True, hosts=[host], registry=registry, transfer_id="t", errors=[]
            ):
                pass

        async def show(registry: CancelRegistry) -> None:
            await api.read_session(host, "abc", registry=registry, transfer_id="t")

        for work in (listing, show):
            assert anyio.run(cancelled_after, 0.3, work) < 5  # the connect timeout is 15 s


def test_a_tail_whose_tools_fail_says_so(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No size from stat or wc: the host's own message, not "no such session file"."""
    name = fleet.names[0]
    sessions(fleet, name, 1)
    broken = 'echo "$0: cannot run" >&2\nexit 127\n'
    busybox = shutil.which("busybox") or "busybox"
    wc = f'[ -p /dev/stdin ] && exec {busybox} wc "$@"\n' + broken  # counts, but not files
    host_tools(fleet, monkeypatch, {"stat": broken, "wc": wc}, busybox_only=True)
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    code, out, err = cli(
        ["sessions", "show", "--tail", "2", "--remote", "-I", str(inv), name, "s0"], capsys
    )
    assert code == 1 and out == "", err
    assert "cannot tell the size" in err and "no such session" not in err, err


def test_a_start_point_that_is_a_symlink_to_a_directory_is_reported(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Symlinks are not followed; a start point that is one would list nothing, silently."""
    name = fleet.names[0]
    fleet.write(name, "real/agents/main/sessions/s.jsonl", openclaw_session("s", 3))
    os.symlink(fleet.path(name, "real/agents"), fleet.path(name, "agents"))
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert code == 1 and listed(out) == set()
    assert "is a symbolic link to a directory" in err and "incomplete" in err


def test_remote_commands_slower_than_the_timeout_fail_and_a_larger_one_waits(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long silent walk (a large tree, a slow disk): past --timeout the host fails with a
    message that names the option; with a larger one, or 0 (no limit), list and show work."""
    name = fleet.names[0]
    sessions(fleet, name, 2)
    slow = 'case $1 in .) ;; *) sleep 1.5 ;; esac\nexec /usr/bin/find "$@"\n'
    host_tools(fleet, monkeypatch, {"find": slow})
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    remote = ["--json", "--remote", "-I", str(inv)]
    code, out, err = cli(["sessions", "list", *remote, "--timeout", "0.3"], capsys)
    assert code == 1 and name in err and "no output for 0.3 s" in err and "--timeout" in err
    code, out, err = cli(["sessions", "show", name, "s1", *remote, "--timeout", "0.3"], capsys)
    assert code == 1 and "no output for 0.3 s" in err
    for timeout in ("30", "0"):
        code, out, err = cli(["sessions", "list", *remote, "--timeout", timeout], capsys)
        assert (code, listed(out)) == (0, {f"{SESSIONS}/s0.jsonl", f"{SESSIONS}/s1.jsonl"}), err
    code, out, err = cli(["sessions", "show", name, "s1", *remote, "--timeout", "0"], capsys)
    assert code == 0 and len(out.splitlines()) == 3, err


def test_a_host_that_stalls_after_sending_sessions_still_gives_them(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that goes silent midway (a hung disk, a dead link) fails past --timeout, and the
    sessions it had sent whole are still printed, whatever the batch size: a default batch
    (50) of them used to be dropped with the error."""
    name = fleet.names[0]
    sessions(fleet, name, 3)
    plain = remote_module.list_argv
    monkeypatch.setattr(
        remote_module,
        "list_argv",
        lambda host: ["sh", "-c", shlex.join(plain(host)) + "; sleep 30"],
    )
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    remote = ["--json", "--remote", "-I", str(inv), "--timeout", "1"]
    code, out, err = cli(["sessions", "list", *remote], capsys)
    assert code == 1 and "no output for 1 s" in err, err
    assert listed(out) == {f"{SESSIONS}/s{i}.jsonl" for i in range(3)}


def test_timeout_without_remote_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["sessions", "list", "--dest", str(tmp_path), "--timeout", "5"], capsys)
    assert code == 2 and "--timeout applies only with --remote" in err


def test_an_unreadable_transcript_makes_the_listing_incomplete(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host would not open one session: the others are listed and the host fails, as
    for an unreadable directory. The file was one line ("<path>: not readable: left out")
    of an error without a path, of kind listing_incomplete; it is now an error of its own
    naming host and path, of kind permission_denied, as a sync reports it."""
    name = fleet.names[0]
    sessions(fleet, name, 3)
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    secret = fleet.path(name, f"{SESSIONS}/s1.jsonl")
    with unreadable(secret):
        code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    assert listed(out) == {f"{SESSIONS}/s0.jsonl", f"{SESSIONS}/s2.jsonl"}
    (error,) = [json.loads(line) for line in out.splitlines() if '"type":"error"' in line]
    assert code == 1 and error["kind"] == "permission_denied", error
    assert (error["host"], error["path"]) == (name, f"{SESSIONS}/s1.jsonl")
    assert error["message"] == (
        "permission denied on the host: the session is left out of the listing"
    )
    assert error["hint"].startswith("let the login user read the file on the host")
    assert f"{name}: {SESSIONS}/s1.jsonl: permission denied on the host" in err


@pytest.mark.parametrize("given", ["s1", f"{SESSIONS}/s1.jsonl"])
@pytest.mark.parametrize("part", ["--head", "--tail"])
def test_an_unreadable_transcript_shown_is_permission_denied_as_listed(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, part: str
) -> None:
    """`show --remote` of a session file the host would not open said kind
    remote_command_failed ("the session file is not readable"), where `sync` and `sessions
    list --remote` say permission_denied: it now says that kind, naming host and path, with
    the same hint, by id or by path, for a head or a tail."""
    name = fleet.names[0]
    sessions(fleet, name, 2)
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    secret = fleet.path(name, f"{SESSIONS}/s1.jsonl")
    show = ["sessions", "show", "--json", part, "2", "--remote", "-I", str(inv), name]
    with unreadable(secret):
        code, out, err = cli([*show, given], capsys)
        listing = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
    (error,) = [json.loads(line) for line in out.splitlines()]
    (listed_error,) = [json.loads(line) for line in listing[1].splitlines() if '"error"' in line]
    assert code == 1 and error["kind"] == "permission_denied", error
    assert (error["host"], error["path"]) == (name, f"{SESSIONS}/s1.jsonl")
    assert error["message"] == "permission denied on the host: the session cannot be shown"
    assert error["hint"] == listed_error["hint"]
    assert f"{name}: {SESSIONS}/s1.jsonl: permission denied on the host" in err


def test_a_cancel_ends_a_remote_stream_at_once_and_only_through_its_registry(
    fleet: Any, tmp_path: Path
) -> None:
    """A stream's commands live in the caller's registry only: the process-wide one neither
    lists nor cancels them. Cancelled there, the stream ends at its next batch, though rows
    of a chunk already received remain (they used to come first: 400 batches of 600). The
    local listing takes a batch size as large as the remote one does."""
    name = fleet.names[0]
    sessions(fleet, name, 200)
    hosts = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [name])).hosts
    mine = CancelRegistry()

    async def consume() -> int:
        seen = after = 0
        with pytest.raises(TransferCancelledError):
            async for _batch in api.stream_sessions(
                remote=True, hosts=hosts, batch_size=1, registry=mine, transfer_id="transfer-1"
            ):
                seen += 1
                if seen == 1:
                    assert default_registry.active() == []
                    assert default_registry.cancel_all("another component") == 0
                    await anyio.sleep(0.3)  # the host's rows queue up meanwhile
                elif seen == 2:
                    assert mine.cancel("transfer-1")
                else:
                    after += 1
        return after

    assert anyio.run(consume) == 0
    assert anyio.run(lambda: api.sync(hosts, tmp_path / "m")).exit_code == 0
    rows = anyio.run(lambda: api.list_sessions(dest=tmp_path / "m", batch_size=2**70))
    assert len(rows) == 200


@pytest.mark.parametrize("call", ["sync", "stream_sessions", "read_session"])
def test_the_api_says_it_needs_asyncio_before_touching_anything(call: str, tmp_path: Path) -> None:
    """Outside asyncio (trio), what reaches hosts refuses at once with a ConfigError that says
    what to do; sync used to take the lock and recover the mirror, then fail every host with
    an internal error."""
    inv = tmp_path / "inv.toml"
    inv.write_text('[[hosts]]\nname = "box"\naddress = "box.invalid"\n')
    (host,) = load_inventory(inv).hosts
    dest = tmp_path / "m"
    if call == "sync":
        step: Any = api.sync([host], dest)
    elif call == "read_session":
        step = api.read_session(host, "s1")
    else:
        step = api.stream_sessions(remote=True, hosts=[host]).__anext__()
    with pytest.raises(ConfigError, match="asyncio only"):
        step.send(None)  # driven without any event loop, as another library would
    step.close()
    assert not dest.exists()


@pytest.mark.parametrize("tools", ["GNU", "BusyBox"])
def test_each_unreadable_directory_of_a_listing_is_an_error_naming_it(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tools: str,
) -> None:
    """The listing said find's raw words in one error without a path ("the listing is
    incomplete: find: './agents/x/sessions': Permission denied"). Each directory find could
    not read is now its own error of kind listing_incomplete naming it, relative to the root
    (a quote or a non-UTF-8 byte in its name unescaped from GNU find's quoting), with what to
    do, as a sync reports it; the rest is listed and the command exits 1."""
    if tools == "BusyBox":
        host_tools(fleet, monkeypatch, {}, busybox_only=True)
    name = fleet.names[0]
    sessions(fleet, name, 1)
    odd = b"agents/it's \xe9/sessions"
    fleet.write(name, "agents/secret/sessions/b.jsonl", openclaw_session("b", 3))
    fleet.write(name, os.fsdecode(odd + b"/c.jsonl"), openclaw_session("c", 3))
    locked = [fleet.path(name, "agents/secret/sessions"), fleet.path(name, os.fsdecode(odd))]
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    with unreadable(*locked):
        code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inv)], capsys)
        events: list[Any] = []
        rows = anyio.run(
            lambda: api.list_sessions(
                remote=True, hosts=load_inventory(inv).hosts, errors=[], emit=events.append
            )
        )
    assert code == 1 and listed(out) == {f"{SESSIONS}/s0.jsonl"}, err
    errors = [json.loads(line) for line in out.splitlines() if '"type":"error"' in line]
    assert sorted((e["kind"], e["path"]) for e in errors) == [
        ("listing_incomplete", "agents/it's \\xe9/sessions"),
        ("listing_incomplete", "agents/secret/sessions"),
    ], errors
    for error in errors:
        assert error["host"] == name
        assert error["message"] == (
            "find could not read it (Permission denied): nothing under it was listed"
        )
        assert "chmod u+rx" in error["hint"] and "the rest was listed" in error["hint"]
        assert f"{name}: {error['path']}: find could not read it" in err
    assert [row.path for row in rows] == [f"{SESSIONS}/s0.jsonl"]
    said = [(e.kind, e.path) for e in events if type(e).__name__ == "ErrorEvent"]
    assert sorted(said) == sorted((e["kind"], e["path"]) for e in errors)
    assert type(events[-1]).__name__ == "Progress" and events[-1].phase == "done"


@pytest.mark.parametrize("tools", ["GNU", "BusyBox"])
def test_a_session_under_an_unreadable_directory_is_not_shown_as_missing(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tools: str,
) -> None:
    """`show --remote` of a session in a directory the login user cannot read said "no
    session" (by id) or "no such session file ... it may have been deleted" (by path), a
    usage error (exit 2) sending the user the wrong way. Both now name the directory, say the
    session may be there and what to do, and exit 1; a session elsewhere is still shown."""
    if tools == "BusyBox":
        host_tools(fleet, monkeypatch, {}, busybox_only=True)
    name = fleet.names[0]
    sessions(fleet, name, 1)
    fleet.write(name, "agents/secret/sessions/b.jsonl", openclaw_session("b", 3))
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    show = ["sessions", "show", "--remote", "-I", str(inv), name]
    with unreadable(fleet.path(name, "agents/secret/sessions")):
        by_id = cli([*show, "b"], capsys)
        by_path = cli([*show, "agents/secret/sessions/b.jsonl"], capsys)
        elsewhere = cli([*show, "s0"], capsys)
    code, out, err = by_id
    assert code == 1 and out == "", err
    assert (
        f"{name}: agents/secret/sessions: no session 'b' where find could read, and it could "
        "not read agents/secret/sessions (Permission denied): the session may be there"
    ) in err, err
    assert "chmod u+rx" in err
    code, out, err = by_path
    assert code == 1 and out == "", err
    assert (
        f"{name}: agents/secret/sessions: agents/secret/sessions/b.jsonl is under a directory "
        "the login user cannot search"
    ) in err, err
    assert "chmod u+rx" in err and "deleted" not in err
    assert elsewhere[0] == 0 and "msg 2" in elsewhere[1], elsewhere


def test_a_listing_message_naming_no_path_reads_alike_in_sync_and_listing(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What find says that names no path it could not read is one error without a path, from
    one builder for a sync and for `sessions list --remote`: a sync used to give find's raw
    lines joined by newlines, with another hint, where the listing said "the listing is
    incomplete: ..." on one line. Only what is left undone differs, in the hint's end."""
    name = fleet.names[0]
    sessions(fleet, name, 2)
    find = 'echo "find: warning: the clock is odd" >&2\necho "find: and so is this" >&2\n'
    host_tools(fleet, monkeypatch, {"find": find + 'exec /usr/bin/find "$@"\n'})
    real = engine.round_argv
    monkeypatch.setattr(  # the sync's round finds the same tools first
        engine,
        "round_argv",
        lambda root, points, **kw: [
            "env",
            f"PATH={fleet.root / 'tools'}:/usr/bin:/bin",
            *real(root, points, **kw),
        ],
    )
    inv = write_inventory(fleet, tmp_path / "inv.toml", [name])
    said: list[dict[str, Any]] = []
    for args in (
        ["sessions", "list", "--json", "--remote", "-I", str(inv)],
        ["sync", "--json", "-I", str(inv), "-d", str(tmp_path / "m")],
    ):
        code, out, _ = cli(args, capsys)
        errors = [e for e in map(json.loads, out.splitlines()) if e.get("type") == "error"]
        assert code == 1 and [(e["kind"], e["host"], e["path"]) for e in errors] == [
            ("listing_incomplete", name, None)
        ], errors
        said.append(errors[0])
    listing, sync = said
    odd = "find: warning: the clock is odd; find: and so is this"
    assert listing["message"] == sync["message"] == f"the listing is incomplete: {odd}"
    assert (
        listing["hint"] == "fix permissions (or the failing tool) on the host; the rest was listed"
    )
    assert sync["hint"] == (
        "fix permissions (or the failing tool) on the host; until then no deletion is recorded "
        "for this host"
    )


# ----------------------------------------------------------------------------- output bounds


def small_bounds(monkeypatch: pytest.MonkeyPatch, files: int = 40) -> None:
    """The bounds a sync's output has, made small so that a test passes them in a blink
    (raising=False: the base code, without them, runs the test and shows what it did)."""
    monkeypatch.setattr(listing_module, "MAX_LISTING_FILES", files, raising=False)
    monkeypatch.setattr(fetch_frames, "FETCH_GROWTH_SLACK", 64 * 1024, raising=False)


# A stand-in cat that, after the file named endless.jsonl, keeps sending valid output (forged
# with the marker the batch script has in its environment): frames of more session files, or
# more lines of the file as if it grew. Then it keeps the command open without a word: without
# a bound the client reads it all and waits for the idle timeout.
ENDLESS_CAT = r"""/usr/bin/cat "$@" || exit
case $2 in */endless.jsonl) ;; *) exit 0 ;; esac
m=$REMOTE_SYNC_MARKER
if [ @HOW@ = grows ]; then
    /usr/bin/yes "$(/usr/bin/head -n 1 "$2")" | /usr/bin/head -c 16777216
    exec /usr/bin/sleep 3600
fi
size=$(/usr/bin/wc -c <"$2")
printf '%s E\n' "$m"
i=0
while [ "$i" -lt 2000 ]; do
    printf '%s F 1.0 %s ./agents/main/sessions/fake%s.jsonl\0' "$m" "$size" "$i"
    /usr/bin/cat -- "$2"
    printf '%s E\n' "$m"
    i=$((i + 1))
done
exec /usr/bin/sleep 3600
"""


@pytest.mark.parametrize("how", ["frames", "grows"])
def test_a_listing_host_that_keeps_sending_is_stopped_and_what_it_listed_is_kept(
    fleet: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """A host whose listing brings session files without end, or a file that grows without
    end while it is read, ends that host's listing with too_much_output naming it (and the
    file), well before the idle timeout; the sessions it sent whole before are listed, and
    the other host is listed whole."""
    h0, h1 = fleet.names
    sessions(fleet, h0, 3)
    sessions(fleet, h1, 3)
    fleet.write(h0, f"{SESSIONS}/endless.jsonl", openclaw_session("endless", 3))
    small_bounds(monkeypatch)
    host_tools(fleet, monkeypatch, {"cat": ENDLESS_CAT.replace("@HOW@", how)})
    inv = write_inventory(fleet, tmp_path / "inv.toml", [h0, h1])
    remote = ["--json", "--remote", "-I", str(inv), "--timeout", "8"]
    started = time.monotonic()
    code, out, err = cli(["sessions", "list", *remote], capsys)
    took = time.monotonic() - started
    assert code == 1, err
    events = [json.loads(line) for line in out.splitlines()]
    (error,) = [e for e in events if e.get("type") == "error"]
    assert (error["kind"], error["host"]) == ("too_much_output", h0), error
    rows = {(e["host"], e["path"]) for e in events if e.get("type") != "error"}
    assert {path for host, path in rows if host == h1} == {
        f"{SESSIONS}/s{i}.jsonl" for i in range(3)
    }
    mine = {path for host, path in rows if host == h0}
    if how == "frames":  # every file up to the bound (in find's order), listed before the error
        assert "more than 40 files" in error["message"] and "include globs" in error["hint"]
        over = re.fullmatch(f"{SESSIONS}/fake([0-9]+)[.]jsonl", error["path"])
        assert over is not None, error
        fakes = {f"{SESSIONS}/fake{i}.jsonl" for i in range(int(over[1]))}
        assert len(mine) == 40 and fakes <= mine and f"{SESSIONS}/endless.jsonl" in mine
    else:  # the growing file is named and left out; the others are listed
        assert error["path"] == f"{SESSIONS}/endless.jsonl", error
        assert "grow while read" in error["message"], error
        assert f"{SESSIONS}/endless.jsonl" not in mine
    assert took < 8, took


def test_a_listing_within_the_bounds_is_whole_and_one_file_more_is_refused(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A larger listing up to the bounds exactly (as many files as may be, each file's
    bytes as its listed size, nothing for growth) is listed whole through the library; one
    file more is a TooMuchOutputError of that host alone, the other host listed whole."""
    h0, h1 = fleet.names
    one = openclaw_session("x", 20, pad=300)
    for name in (h0, h1):
        for i in range(300):
            fleet.write(name, f"{SESSIONS}/s{i:03d}.jsonl", one)
    monkeypatch.setattr(listing_module, "MAX_LISTING_FILES", 300, raising=False)
    monkeypatch.setattr(fetch_frames, "FETCH_GROWTH_SLACK", 0, raising=False)
    hosts = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [h0, h1])).hosts
    errors: list[RemoteSyncError] = []
    rows = anyio.run(lambda: api.list_sessions(remote=True, hosts=hosts, errors=errors))
    assert errors == [] and len(rows) == 600
    fleet.write(h0, f"{SESSIONS}/s300.jsonl", one)
    rows = anyio.run(lambda: api.list_sessions(remote=True, hosts=hosts, errors=errors))
    (error,) = errors
    assert isinstance(error, TooMuchOutputError) and error.host == h0, error
    assert sum(row.host == h1 for row in rows) == 300
    assert sum(row.host == h0 for row in rows) == 300  # those before the bound are kept


# A stand-in cat (head and page) that sends lines past the file, and a stand-in dd (tail) that
# sends zero bytes past the block asked for, then keep the command open.
ENDLESS_SHOW = {
    "cat": r"""/usr/bin/cat "$@" || exit
/usr/bin/yes "$(/usr/bin/head -n 1 "$2")" | /usr/bin/head -c 16777216
exec /usr/bin/sleep 3600
""",
    "dd": r"""case " $* " in *" count=0 "*) exec /usr/bin/dd "$@" ;; esac
/usr/bin/dd "$@" || exit
/usr/bin/head -c 16777216 /dev/zero
exec /usr/bin/sleep 3600
""",
}


@pytest.mark.parametrize("how", ["head", "page", "tail"])
def test_a_show_host_that_sends_more_than_asked_is_stopped_and_holds_little(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A show takes no more than it asked for: a file's bytes up to the size the host gave
    (plus the margin for growth), a tail block up to its length. A host that sends 16 MiB
    more (lines that are no messages, zero bytes without a newline) ends the show with
    too_much_output naming host and file, well before the idle timeout, and the client's
    memory stays within the ask: the zero bytes were held as an unfinished line."""
    name = fleet.names[0]
    fleet.write(name, f"{SESSIONS}/s0.jsonl", openclaw_session("s0", 3))
    small_bounds(monkeypatch)
    host_tools(fleet, monkeypatch, ENDLESS_SHOW)
    (host,) = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [name])).hosts
    ask: dict[str, Any] = {"head": {"head": 10}, "page": {"page": 2}, "tail": {"tail": 10}}[how]

    async def show() -> tuple[BaseException, int]:
        tracemalloc.start()
        try:
            with pytest.raises(RemoteSyncError) as raised:
                await api.read_session(host, "s0", idle_timeout=8, **ask)
            return raised.value, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    started = time.monotonic()
    error, peak = anyio.run(show)
    took = time.monotonic() - started
    assert peak < 6 * 1024 * 1024, (peak, error)
    assert isinstance(error, TooMuchOutputError), error
    assert (error.host, error.path) == (name, f"{SESSIONS}/s0.jsonl"), error
    assert took < 8, took


def test_a_show_by_id_of_more_candidates_than_a_listing_holds_says_so_as_a_show(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A show by an id whose name patterns match more files than a host's listing may hold
    was refused in the listing's words ("the listing holds more than 2 files"), with the
    listing's hint; it now says the host found that many candidate files for the session,
    and to give more of the id (or the session's path)."""
    name = fleet.names[0]
    for i in range(3):
        fleet.write(name, f"{SESSIONS}/abc{i}.jsonl", openclaw_session(f"abc{i}", 2))
    small_bounds(monkeypatch, files=2)
    (host,) = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [name])).hosts
    with pytest.raises(TooMuchOutputError) as raised:
        anyio.run(lambda: api.read_session(host, "abc", idle_timeout=8))
    error = raised.value
    assert error.host == name and "candidate files for the session" in error.message, error
    assert "the listing" not in error.message and "more of the session id" in error.hint
