"""Tests of ``sessions list/show --remote``: sessions straight from a host, no mirror.

- :class:`FrameStream`: the same frames however the output is cut into chunks; anything but a
  frame where one is expected is a protocol error.
- The two ``sh`` scripts run locally over hostile file names, once with dash + GNU tools and
  once with nothing but BusyBox applets.
- Real sshd: ``list --remote`` gives the rows a mirror's index gives (every format, hostile
  names, empty, unreadable and side files; the class of sessions without timestamps, judged
  by the file's mtime); ``show --remote`` by id or path takes one remote command (head, tail,
  page), resolves a unique id prefix and reports ambiguous and unknown ids as ``show`` over a
  mirror does (glob characters and quotes in them are data), and reads little of a big
  session; a remote listing's memory does not grow with the number of sessions.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import anyio
import msgspec
import pytest
import sessiongen
from hypothesis import given, settings
from hypothesis import strategies as st
from synchelp import cli, write_inventory
from test_sessions_cli import expected_row, generated, openclaw_session, shown, text_numbers

from remote_sync import api
from remote_sync.cli import main
from remote_sync.errors import ConfigError, ProtocolError, TooMuchOutputError
from remote_sync.events import Progress, decode_event
from remote_sync.index import remote as remote_module
from remote_sync.index.facts import Message
from remote_sync.index.query import SessionRow
from remote_sync.index.remote import stream_remote_sessions
from remote_sync.index.remote_frames import FrameStream, Header
from remote_sync.index.remote_scripts import list_argv, show_argv
from remote_sync.index.remote_show import read_remote_session
from remote_sync.index.show import show_session
from remote_sync.inventory import Host, Source, load_inventory
from remote_sync.mirror import fetch_frames
from remote_sync.mirror import listing as listing_module
from remote_sync.mirror.remote_ops import new_marker
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import PoolSettings, SSHPool
from remote_sync.ssh.remote import PID_MARKER, wrapped_command

MiB = 1024 * 1024
SESSIONS = "agents/main/sessions"

# ----------------------------------------------------------------------------- frames


def frames(marker: bytes, out: bytes, step: int) -> list[Any]:
    """Parsed frames with consecutive data joined (so chunking does not show)."""
    parser = FrameStream("h", marker)
    items: list[Any] = []
    for at in range(0, len(out), step):
        for item in parser.feed(out[at : at + step]):
            if isinstance(item, Header):
                items.append(item)
            elif items and isinstance(items[-1], bytes):
                items[-1] += bytes(item)
            else:
                items.append(bytes(item))
    parser.close()
    return items


def test_frames_any_chunking() -> None:
    m = new_marker().encode()
    # Data that looks like frames with another marker, and a prefix of ours at a chunk's end.
    fake = b"0123456789abcdef0123456789abcdef E\n" + m[:20]
    out = (
        m + b" F 1795302230.6779972420 76 ./a/b.jsonl\x00" + fake + b"\n" + m + b" E\n"
        + m + b" U ./-x\x00"
        + m + b" F 12 0 ./new\nline\xff\x00" + m + b" X\n"
        + m + b" F -5 3 ./with space 7\x00" + m + b" E\n"
        + m + b" C ./c\x00" + m + b" S 12\n" + m + b" K 4\n" + b"12345678" + m + b" E\n"
        + m + b" G\n" + m + b" D\n" + m + b" B\n" + m + b" E\n"
    )  # fmt: skip
    want = [
        Header("F", b"a/b.jsonl", 1795302230.677997242, 76),
        fake + b"\n",
        Header("E"),
        Header("U", b"-x"),
        Header("F", b"new\nline\xff", 12.0, 0),
        Header("X"),
        Header("F", b"with space 7", -5.0, 3),
        Header("E"),
        Header("C", b"c"),
        Header("S", b"12", size=12),
        Header("K", b"4"),
        b"12345678",
        Header("E"),
        Header("G"),
        Header("D"),
        Header("B"),
        Header("E"),
    ]
    for step in (1, 2, 3, 7, 33, 34, 35, 100, len(out)):
        assert frames(m, out, step) == want, step


@pytest.mark.parametrize(
    "out",
    [
        b"garbage",
        b"%(m)s Q\n",
        b"%(m)s F 1 2 /etc/passwd\x00",
        b"%(m)s F 1 2 ./a/../../x\x00",
        b"%(m)s F ./a\x00",  # no mtime
        b"%(m)s F 1 ./a\x00",  # no size
        b"%(m)s F 1e9 2 ./a\x00",
        b"%(m)s F 1. 2 ./a\x00",
        b"%(m)s F 1 -2 ./a\x00",
        b"%(m)s S 123456789012345678901\n",  # more digits than any size
        b"%(m)s F 1 4 ./a\x00data%(m)s Z\n",  # our marker inside the data: refused
        b"%(m)s S x\n",
        b"%(m)s E\n",  # an end mark outside data
    ],
)
def test_frame_errors(out: bytes) -> None:
    m = new_marker().encode()
    with pytest.raises(ProtocolError):
        frames(m, out % {b"m": m}, 5)


def test_unfinished_frame_is_an_error() -> None:
    m = new_marker().encode()
    parser = FrameStream("h", m)
    parser.feed(m + b" B\nsome data")
    with pytest.raises(ProtocolError, match="inside a frame"):
        parser.close()


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), min_size=1, max_size=6),
    max_files=st.integers(1, 6),
    growth=st.integers(0, 12),
    step=st.integers(1, 80),
)
def test_frame_bounds_hold_however_the_output_is_cut(
    files: list[tuple[int, int]], max_files: int, growth: int, step: int
) -> None:
    """Files of given sizes, each sent with a few bytes more (grown while read): the frames
    pass while there are at most ``MAX_LISTING_FILES`` files and their bytes are at most their
    sizes plus ``FETCH_GROWTH_SLACK``; past either, a TooMuchOutputError naming the file it
    came at, however the output is cut, every frame before it given first."""
    m = b"0123456789abcdef0123456789abcdef"
    out = b"".join(
        m + b" F 1 %d ./f%d\x00" % (size, i) + b"x" * (size + more) + m + b" E\n"
        for i, (size, more) in enumerate(files)
    )
    over: int | None = None  # the file at which a bound is passed
    sent = asked = 0
    for i, (size, more) in enumerate(files):
        sent, asked = sent + size + more, asked + size
        if i >= max_files or sent > asked + growth:
            over = i
            break
    with (
        patch.object(listing_module, "MAX_LISTING_FILES", max_files),
        patch.object(fetch_frames, "FETCH_GROWTH_SLACK", growth),
    ):
        parser = FrameStream("h", m, "kept")
    ends: list[Header] = []
    try:
        for at in range(0, len(out), step):
            items = parser.feed(out[at : at + step])
            ends += [item for item in items if isinstance(item, Header) and item.kind == "E"]
            parser.check()
        parser.close()
    except TooMuchOutputError as exc:
        assert over is not None and exc.host == "h" and exc.path == f"f{over}", (exc, over)
        assert len(ends) == over  # every file before it whole
    else:
        assert over is None and len(ends) == len(files)


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(
        st.tuples(
            st.lists(
                st.binary(min_size=1, max_size=40).filter(
                    lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b"..")
                ),
                min_size=1,
                max_size=3,
            ),
            st.integers(0, 2**40),  # size
            st.sampled_from([b"1", b"1700000000", b"1700000000.1234567890", b"-5.5"]),
            st.integers(0, 2**32),  # device
            st.integers(0, 2**40),  # inode
            st.booleans(),  # readable
        ),
        min_size=1,
        max_size=8,
    ),
    step=st.integers(1, 200),
)
def test_a_remote_listing_holds_every_file_a_syncs_listing_holds(
    files: list[tuple[list[bytes], int, bytes, int, int, bool]], step: int
) -> None:
    """The header-bytes bound counted the markers, 33 bytes of each header and of each end
    mark that a sync's listing record does not have: at 256 MiB a remote listing refused
    some 890,000 files of 200-byte paths where a sync takes 1,000,000. With the bound set to
    exactly the bytes of a sync's listing of the same files, the remote listing's frames
    (however cut) are all taken: a file's header and end mark, unmarked, are never longer
    than its sync record, which has a device and an inode number more."""
    m = b"0123456789abcdef0123456789abcdef"
    sync = remote = b""
    for parts, size, mtime, dev, ino, readable in files:
        path = b"./" + b"/".join(parts)
        sync += b"%d %s %d %d\n%s\0" % (size, mtime, dev, ino, path)
        if readable:
            remote += m + b" F %s %d %s\0" % (mtime, size, path) + m + b" E\n"
        else:
            remote += m + b" U %s\0" % path
    with (
        patch.object(listing_module, "MAX_LISTING_BYTES", len(sync)),
        patch.object(fetch_frames, "FETCH_GROWTH_SLACK", 0),
    ):
        listing = listing_module.ListingParser("h")
        parser = FrameStream("h", m, "kept")
    assert len(listing.feed(sync)) == len(files)  # the sync's listing is within the bound
    listing.close()
    headers = 0
    for at in range(0, len(remote), step):
        headers += sum(isinstance(item, Header) for item in parser.feed(remote[at : at + step]))
        parser.check()
    parser.close()
    assert headers == sum(2 if readable else 1 for *_, readable in files)


def test_a_show_past_the_file_bound_says_so_in_a_shows_words() -> None:
    """A show by id whose name patterns match more files than a listing may hold said "the
    listing holds more than 2 files, the most a host's listing may", and pointed to the
    include globs alone: the show names the session's candidates and says to give more of
    the id (or its path). A listing past the bound keeps its own words."""
    m = new_marker().encode()
    out = b"".join(m + b" C ./agents/s%d.jsonl\0" % i for i in range(3))
    with patch.object(listing_module, "MAX_LISTING_FILES", 2):
        show, listing = FrameStream("h", m), FrameStream("h", m, "the rest is listed")
    assert len(show.feed(out)) == 2
    with pytest.raises(TooMuchOutputError) as shown_error:
        show.check()
    error = shown_error.value
    assert error.message == (
        "the host found more than 2 candidate files for the session, the most a show takes: "
        "nothing is shown"
    )
    assert (error.host, error.path) == ("h", "agents/s2.jsonl")
    assert error.hint.startswith("give more of the session id, or the session's path")
    listing.feed(out)
    with pytest.raises(TooMuchOutputError, match="the listing holds more than 2 files"):
        listing.check()


# ----------------------------------------------------------------------------- local runs

HOSTILE = [
    b"plain.jsonl",
    b"with space.jsonl",
    b"new\nline.jsonl",
    b"quote'double\".jsonl",
    b"$(touch pwned).jsonl",
    b"`touch pwned`.jsonl",
    b"-rf.jsonl",
    b"--help.jsonl",
    b"\xff\xfe.jsonl",
    b"tab\tback\\slash.jsonl",
    b"*.jsonl",
    b"[a].jsonl",
    b"\x01\x1b[31mctl.jsonl",
]


def hostile_tree(sessions: Path, outside: Path) -> dict[bytes, bytes]:
    """Transcripts with hostile names (name -> content) plus side files, in ``sessions``; a
    symlink among them points to a transcript in ``outside`` (outside the listing's start)."""
    sessions.mkdir(parents=True, exist_ok=True)
    base = os.fsencode(sessions)
    files: dict[bytes, bytes] = {}
    for i, name in enumerate(HOSTILE):
        data = openclaw_session(f"s{i}", 3 + i) + b"tail without newline " + name
        with open(base + b"/" + name, "wb") as fh:
            fh.write(data)
        files[name] = data
    (sessions / "sessions.json").write_text("{}")
    (sessions / "plain.trajectory.jsonl").write_text('{"type":"event"}\n')
    (sessions / "empty.jsonl").write_bytes(b"")
    outside.mkdir(parents=True)
    (outside / "secret.jsonl").write_text("outside the sessions directory\n")
    os.symlink(outside / "secret.jsonl", sessions / "link.jsonl")
    return files


@pytest.fixture(params=["gnu", "busybox", "busybox without -exec +"])
def toolset(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(shell, environment): dash with GNU tools, or BusyBox applets alone on PATH, with a
    find that knows "-exec ... {} +" or, as some BusyBox builds (FEATURE_FIND_EXEC_PLUS
    off), only "-exec ... ;"."""
    home = tmp_path / "home"
    home.mkdir()
    if request.param == "gnu":
        yield "sh", {"PATH": os.environ["PATH"], "HOME": str(home)}
        return
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    bindir = tmp_path / "bb"
    bindir.mkdir()
    for applet in ("sh", "find", "head", "tail", "xargs", "printf", "cat", "wc", "stat", "dd"):
        os.symlink(busybox, bindir / applet)
    if request.param == "busybox without -exec +":
        (bindir / "find").unlink()
        (bindir / "find").write_text(
            f"#!{bindir / 'sh'}\n"
            'for a do [ "$a" = + ] && { echo "find: unrecognized: +" >&2; exit 1; }; done\n'
            f'exec {busybox} find "$@"\n'
        )
        (bindir / "find").chmod(0o755)
    yield str(bindir / "sh"), {"PATH": str(bindir), "HOME": str(home)}


def run_local(
    toolset: tuple[str, dict[str, str]], argv: list[str], stdin: bytes
) -> tuple[bytes, bytes]:
    shell, env = toolset
    r = subprocess.run(
        [shell, "-c", wrapped_command(argv)],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=env["HOME"],
        timeout=60,
        check=False,
    )
    first, _, rest = r.stderr.partition(b"\n")
    assert r.returncode == 0 and first.startswith(PID_MARKER), r.stderr
    return r.stdout, rest


def local_host(root: Path) -> Host:
    return Host(
        "h", Endpoint("localhost"), Source("openclaw", str(root), ("agents/*/sessions/**",))
    )


def test_local_list_script_streams_hostile_names(
    toolset: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    files = hostile_tree(root / SESSIONS, tmp_path / "outside")
    base = os.fsencode(root / SESSIONS) + b"/"
    for i, name in enumerate([*files, b"empty.jsonl"]):
        os.utime(base + name, ns=(0, 1_600_000_000_250_000_000 + i * 10**9))
    marker = new_marker()
    out, err = run_local(toolset, list_argv(local_host(root)), marker.encode() + b"\n")
    assert err == b""
    got: dict[bytes, bytes] = {}
    mtimes: dict[bytes, float | None] = {}
    sizes: dict[bytes, int | None] = {}
    path = b""
    for item in frames(marker.encode(), out, 4096):
        if isinstance(item, bytes):
            got[path] += item
        elif item.kind == "F":
            path = item.arg
            got[path] = b""
            mtimes[path] = item.mtime
            sizes[path] = item.size
        else:
            assert item.kind == "E", item
    prefix = SESSIONS.encode() + b"/"
    # Transcript names only (by name; the side files and the symlink are not streamed).
    assert got == {prefix + k: v for k, v in files.items()} | {prefix + b"empty.jsonl": b""}
    assert sizes == {path: len(data) for path, data in got.items()}  # find's, or stat's
    # Each file's mtime as the mirror's listing has it: GNU find's with its fraction,
    # BusyBox stat's in whole seconds.
    fraction = 0.25 if toolset[0] == "sh" else 0.0
    assert mtimes == {
        prefix + name: 1_600_000_000 + i + fraction
        for i, name in enumerate([*files, b"empty.jsonl"])
    }
    assert not list(tmp_path.rglob("pwned"))


def test_local_show_script_by_id_and_path(
    toolset: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    files = hostile_tree(root / SESSIONS, tmp_path / "outside")
    host = local_host(root)
    data = files[b"-rf.jsonl"]
    for session, stdin_path in (("-rf", None), (None, b"./" + SESSIONS.encode() + b"/-rf.jsonl")):
        marker = new_marker()
        stdin = marker.encode() + b"\n" + (stdin_path + b"\x00" if stdin_path else b"")
        out, _ = run_local(toolset, show_argv(host, session, "tail", 16), stdin)
        items = frames(marker.encode(), out, 999)
        assert items[:2] == [
            Header("C", SESSIONS.encode() + b"/-rf.jsonl"),
            Header("S", b"%d" % len(data), size=len(data)),
        ]
        # Blocks backwards from the end (16, 32, 64... bytes) make up the file.
        blocks = []
        for head, body, end in zip(items[2::3], items[3::3], items[4::3], strict=True):
            assert head.kind == "K" and end == Header("E")
            blocks.append((int(head.arg), body))
        assert [len(b) for _, b in blocks[:3]] == [16, 32, 64]
        assert b"".join(b for _, b in reversed(blocks)) == data and blocks[-1][0] == 0
    # An id whose name patterns hold glob characters matches only itself.
    marker = new_marker()
    out, _ = run_local(toolset, show_argv(host, "*", "head"), marker.encode() + b"\n")
    assert frames(marker.encode(), out, 999) == [
        Header("C", SESSIONS.encode() + b"/*.jsonl"),
        Header("S", b"%d" % len(files[b"*.jsonl"]), size=len(files[b"*.jsonl"])),
        Header("B"),
        files[b"*.jsonl"],
        Header("E"),
    ]
    marker = new_marker()
    out, _ = run_local(toolset, show_argv(host, "nothing", "head"), marker.encode() + b"\n")
    assert out == b""
    assert not list(tmp_path.rglob("pwned"))


# ----------------------------------------------------------------------------- real sshd


def rows_of(out: str) -> dict[tuple[str, str], SessionRow]:
    rows = [msgspec.json.decode(line, type=SessionRow) for line in out.splitlines()]
    return {(r.host, r.path): r for r in rows}


def mirrored_and_remote_rows(
    inventory: Path, dest: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[tuple[str, str], SessionRow], dict[tuple[str, str], SessionRow]]:
    """``sessions list --json`` of a fresh mirror of the inventory, and of the hosts asked."""
    assert main(["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]) == 0
    capsys.readouterr()
    code, out, err = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
    assert code == 0, err
    local = rows_of(out)
    code, out, err = cli(["sessions", "list", "--json", "--remote", "-I", str(inventory)], capsys)
    assert code == 0, err
    return local, rows_of(out)


def test_list_remote_equals_the_mirror_every_format(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(5)
    name = fleet.names[0]
    lines = [
        "[defaults]",
        f'ssh_config = "{fleet.ssh_config}"',
        f'known_hosts = "{fleet.known_hosts}"',
    ]
    trees = {}
    for fmt in sessiongen.FORMATS:
        root = fleet.path(name) / fmt
        trees[fmt] = sessiongen.build_tree(
            fmt, root, 5, rng, messages=20, cost_usd=fmt == "claude-code"
        )
        lines += [f'[[hosts]]\nname = "{name}-{fmt}"\naddress = "{name}"\nformat = "{fmt}"']
        lines.append(f'root = "{root}"')
        if fmt == "jsonl":
            lines.append('include = ["**/*.jsonl"]')
    # Hostile names, an empty transcript and side files next to OpenClaw's sessions, and a
    # transcript whose first line is still being written (no session yet, either way).
    hostile = hostile_tree(
        fleet.path(name) / "openclaw" / "agents" / "hostile" / "sessions",
        fleet.path(name) / "elsewhere",
    )
    midwrite = fleet.path(name) / "openclaw" / "agents" / "main" / "sessions" / "midwrite.jsonl"
    midwrite.write_bytes(b'{"type":"session","version":3,"id":"midwrite","timest')
    subprocess.run(["chmod", "-R", "a+rX", str(fleet.path(name))], check=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text("\n".join(lines) + "\n")
    local, remote = mirrored_and_remote_rows(inventory, tmp_path / "mirror", capsys)
    assert remote == local
    assert (f"{name}-openclaw", "agents/main/sessions/midwrite.jsonl") not in remote
    assert sum(1 for host, _ in remote if host.endswith("-openclaw")) >= len(hostile)
    want = {
        (f"{name}-{fmt}", entry.rel.decode())
        for fmt, tree in trees.items()
        for entry in tree.transcripts
    }
    assert want <= set(remote)

    # Show straight from the host, by path and by id, agrees with the generated messages.
    hosts = {h.name: h for h in load_inventory(inventory).hosts}
    for fmt, tree in trees.items():
        entry = max(tree.transcripts, key=lambda e: len(e.session.messages))
        everything = generated(entry.session.messages)
        host = hosts[f"{name}-{fmt}"]
        session_id = remote[(host.name, entry.rel.decode())].session_id
        for session in (entry.rel.decode(), session_id):
            for how, part in (
                ({"tail": 5}, everything[-5:]),
                ({"head": 3}, everything[:3]),
                ({"page": 2, "page_size": 4}, everything[4:8]),
                ({"page": 1, "page_size": 1000}, everything),
            ):
                result = anyio.run(lambda: api.read_session(host, session, **how))  # noqa: B023
                assert shown(result.messages) == part, (fmt, session, how)


def test_show_remote_takes_one_command(fleet: Any, tmp_path: Path) -> None:
    name = fleet.names[0]
    fleet.write(name, f"{SESSIONS}/alpha.jsonl", openclaw_session("alpha", 40))
    fleet.write(name, f"{SESSIONS}/beta.jsonl", openclaw_session("beta", 7))
    fleet.write(
        name, f"{SESSIONS}/beta.jsonl.reset.2026-11-20T10:00:00Z", openclaw_session("beta", 3)
    )
    fleet.write(name, f"{SESSIONS}/gamma-x.jsonl", openclaw_session("gamma-x", 5))
    fleet.write(name, "agents/other/sessions/alpha.jsonl.bak-1", openclaw_session("alpha", 2))
    fleet.write(name, "agents/other/notes/gamma.jsonl", openclaw_session("gamma", 2))
    fleet.write(name, "agents/other/notes/delta.jsonl", openclaw_session("delta", 2))
    (host,) = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [name])).hosts

    async def show(session: str, **how: Any) -> tuple[Any, int]:
        async with SSHPool() as pool:
            try:
                result: Any = await read_remote_session(pool, host, session, **how)
            except ConfigError as exc:
                result = exc
            return result, pool.stats(host.endpoint).operations

    for session in ("alpha", f"{SESSIONS}/alpha.jsonl"):
        result, commands = anyio.run(lambda: show(session, tail=4))  # noqa: B023
        assert (text_numbers(result.messages), commands) == ([36, 37, 38, 39], 1)
        assert result.first is None or result.first == 36
        result, commands = anyio.run(lambda: show(session, page=3, page_size=7))  # noqa: B023
        assert (text_numbers(result.messages), result.first, commands) == (
            list(range(14, 21)),
            14,
            1,
        )
    # The whole file read by a tail: the first message's number is known.
    result, _ = anyio.run(lambda: show("gamma-x", tail=50))
    assert (text_numbers(result.messages), result.first) == (list(range(5)), 0)
    # Past the end: nothing, the end reached.
    result, _ = anyio.run(lambda: show("alpha", page=9, page_size=7))
    assert (result.messages, result.at_end) == ([], True)
    # The live file and its archive both hold session "beta": ambiguous, named by path instead.
    error, commands = anyio.run(lambda: show("beta", head=2))
    assert isinstance(error, ConfigError) and "matches 2 sessions" in str(error)
    assert "beta.jsonl.reset" in str(error) and commands == 1
    result, commands = anyio.run(lambda: show(f"{SESSIONS}/beta.jsonl.reset.2026-11-20T10:00:00Z"))
    assert (text_numbers(result.messages), commands) == ([0, 1, 2], 1)
    # A name pattern may match a file the format does not count (not in a sessions dir):
    # "gamma" is no session but the prefix of one (fetched by path: the patterns found two
    # files), "delta" neither.
    result, commands = anyio.run(lambda: show("gamma", head=1))
    assert (text_numbers(result.messages), commands) == ([0], 2)
    error, commands = anyio.run(lambda: show("delta"))
    assert isinstance(error, ConfigError) and "no session 'delta'" in str(error)
    error, _ = anyio.run(lambda: show("nothing"))
    assert isinstance(error, ConfigError) and "no session 'nothing'" in str(error)
    # The hint serves a caller of the CLI and one of the library alike.
    assert "`remote-sync sessions list --remote`" in error.hint
    assert "list_sessions(remote=True)" in error.hint
    error, _ = anyio.run(lambda: show(f"{SESSIONS}/missing.jsonl"))
    assert isinstance(error, ConfigError) and "missing.jsonl" in str(error)


def test_show_remote_footer_has_the_total_when_the_whole_file_was_read(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The footer said "6 messages" where the mirror's says "6 of 6 messages": a read that
    decoded the whole file anyway (a page or head that reached the end, a tail that reached
    the start) counted every message and kept no total. Not read any further to count
    them: a big session's head or tail still says only what it shows."""
    name = fleet.names[0]
    six = openclaw_session("six", 6)
    fleet.write(name, f"{SESSIONS}/six.jsonl", six)
    fleet.write(name, f"{SESSIONS}/big.jsonl", openclaw_session("big", 20_000, pad=120))
    inventory = write_inventory(fleet, tmp_path / "inv.toml", [name])
    (host,) = load_inventory(inventory).hosts
    show = ["sessions", "show", name, "--remote", "-I", str(inventory)]
    for how, footer in (
        ([], "page 1 of 1 (6 messages)"),
        (["--head", "10"], "6 of 6 messages"),
        (["--tail", "6"], "6 of 6 messages"),
        (["--tail", "2"], "2 of 6 messages"),
        (["--page", "2", "--page-size", "4"], "page 2 of 2 (6 messages)"),
        # Full with the last message: the read stops there, before it could see the end.
        (["--page", "3", "--page-size", "2"], "page 3: 2 messages"),
        (["--page", "4", "--page-size", "2"], "page 4 is past the end (6 messages, 3 pages)"),
    ):
        code, _out, err = cli([*show, "six", *how], capsys)
        assert code == 0 and f"\n{footer}; read " in err, (how, err)
    result = anyio.run(lambda: api.read_session(host, "six", tail=2))
    assert (result.total, result.first, result.bytes_read) == (6, 4, len(six))
    for how in ({"head": 2}, {"tail": 2}, {"page": 2, "page_size": 5}):
        result = anyio.run(lambda: api.read_session(host, "big", **how))  # noqa: B023
        assert result.total is None and result.bytes_read <= 2 * MiB, how
    code, _out, err = cli([*show, "big", "--head", "2"], capsys)
    assert code == 0 and "\n2 messages; read " in err, err


def test_show_remote_hostile_names_and_cli(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    sessions = fleet.path(name) / SESSIONS
    hostile_tree(sessions, fleet.path(name) / "elsewhere")
    subprocess.run(["chmod", "-R", "a+rX", str(fleet.path(name))], check=True)
    inventory = write_inventory(fleet, tmp_path / "inv.toml", [name])
    (host,) = load_inventory(inventory).hosts
    for i, raw in enumerate(HOSTILE):
        path = (SESSIONS.encode() + b"/" + raw).decode("utf-8", "surrogateescape")
        result = anyio.run(lambda: api.read_session(host, path, tail=2))  # noqa: B023
        assert text_numbers(result.messages) == [1 + i, 2 + i], raw
        if raw.endswith(b".jsonl") and b"\xff" not in raw:
            # by id: the id is the file name, whatever it holds
            stem = raw[: -len(b".jsonl")].decode()
            result = anyio.run(lambda: api.read_session(host, stem, head=1))  # noqa: B023
            assert text_numbers(result.messages) == [0], raw
    remote = ["--remote", "-I", str(inventory), "--json"]
    page = ["--page", "2", "--page-size", "2"]
    code, out, err = cli(["sessions", "show", *page, *remote, "--", name, "-rf"], capsys)
    assert code == 0, err
    messages = [msgspec.json.decode(line, type=Message) for line in out.splitlines()]
    assert text_numbers(messages) == [2, 3]
    code, out, err = cli(
        ["sessions", "show", "--tail", "1", *remote[:-1], "--", name, "--help"], capsys
    )
    assert code == 0 and "#10 assistant" in out and "msg 9 " in out, err
    assert "1 of 10 messages; read" in err  # the whole (small) file was read anyway
    code, _, err = cli(["sessions", "show", name, "nope", *remote], capsys)
    assert code == 2 and "no session 'nope'" in err


def untimed_session(sid: str, messages: int) -> bytes:
    """An OpenClaw transcript without any timestamp (its class falls back on the mtime)."""
    return re.sub(rb',"timestamp":"[^"]*"', b"", openclaw_session(sid, messages, pad=300))


def test_list_remote_and_mirror_agree_on_class(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    now = time.time()
    # (file, content, mtime, class): without timestamps the mtime judges a session with at
    # most one user message; with timestamps or more user messages it does not matter.
    cases = [
        ("old-untimed", untimed_session("old-untimed", 2), now - 30 * 86400 + 0.375, "low"),
        ("new-untimed", untimed_session("new-untimed", 2), now - 3600 + 0.5, "valuable"),
        ("busy-untimed", untimed_session("busy-untimed", 9), now - 30 * 86400, "valuable"),
        ("timed", openclaw_session("timed", 2, pad=300), now - 30 * 86400, None),
        ("tiny", untimed_session("tiny", 0)[:100], now, "empty"),
    ]
    for stem, data, mtime, _ in cases:
        path = fleet.write(name, f"{SESSIONS}/{stem}.jsonl", data)
        os.utime(path, (mtime, mtime))
    inventory = write_inventory(fleet, tmp_path / "inv.toml", [name])
    local, remote = mirrored_and_remote_rows(inventory, tmp_path / "mirror", capsys)
    assert remote == local  # every field, class included
    for stem, _, _, klass in cases:
        row = remote[(name, f"{SESSIONS}/{stem}.jsonl")]
        assert klass is None or row.klass == klass, (stem, row)
    assert remote[(name, f"{SESSIONS}/old-untimed.jsonl")].last_ts is None


def test_show_remote_resolves_prefixes_like_the_mirror(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = fleet.names[0]
    stems = [
        "alpha-one",
        "alpha-two",
        "dup",
        "dup-more",
        "star*name",
        "starXname",
        "q'\"$(touch pwned)x",
        "[s]tar",
        "s",
    ]
    for i, stem in enumerate(stems):
        fleet.write(name, f"{SESSIONS}/{stem}.jsonl", openclaw_session(stem, 2, start=i * 2))
    inventory = write_inventory(fleet, tmp_path / "inv.toml", [name])
    (host,) = load_inventory(inventory).hosts
    dest = tmp_path / "mirror"
    assert main(["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]) == 0
    capsys.readouterr()

    def both(session: str) -> tuple[int, str, str]:
        """Show ``session`` from the mirror and from the host: the same outcome."""
        local = cli(["sessions", "show", "--json", "-d", str(dest), "--", name, session], capsys)
        remote = cli(
            ["sessions", "show", "--json", "--remote", "-I", str(inventory), "--", name, session],
            capsys,
        )
        assert remote[0] == local[0], (session, local, remote)
        if local[0] == 0:
            assert remote[1] == local[1], (session, local, remote)
        else:  # the same error (the hints say where to look: the mirror or the host)
            said = [decode_event(out.splitlines()[0]) for out in (local[1], remote[1])]
            assert [(e.kind, e.host, e.message) for e in said] == [
                ("config", name, said[0].message)
            ] * 2, (session, local, remote)
        return remote

    def first(out: str) -> int:
        return text_numbers([msgspec.json.decode(out.splitlines()[0], type=Message)])[0]

    # A unique prefix, glob characters and quotes in it matching themselves.
    for session, stem in (
        ("alpha-o", "alpha-one"),
        ("alpha-t", "alpha-two"),
        ("dup", "dup"),  # an exact id wins over the ids it starts
        ("dup-", "dup-more"),
        ("star*", "star*name"),
        ("starX", "starXname"),
        ("q'\"$(touch pwned)", "q'\"$(touch pwned)x"),
        ("[s]", "[s]tar"),
        ("s", "s"),
    ):
        code, out, err = both(session)
        assert (code, first(out)) == (0, stems.index(stem) * 2), (session, err)
    # Ambiguous: exit 2 and the matches listed, as over the mirror.
    for session, count in (("alpha", 2), ("st", 2), ("d", 2)):
        code, _, err = both(session)
        assert code == 2 and f"{session!r} matches {count} sessions" in err, err
        assert "(session " in err and "name one by its path" in err, err
    code, _, err = both("al")
    assert "alpha-one.jsonl  (session alpha-one)" in err and "alpha-two.jsonl" in err
    # Glob characters match only themselves; a quote or a command is a name, nothing runs.
    for session in ("st?r", "[s]t*r", "sta[r]", "*", "?", "'; touch pwned; '", "$(touch pwned)"):
        code, _, err = both(session)
        assert code == 2 and f"no session {session!r}" in err, (session, err)
    assert not list(fleet.path(name).rglob("pwned")) and not list(tmp_path.rglob("pwned"))

    async def commands(session: str) -> int:
        async with SSHPool() as pool:
            await read_remote_session(pool, host, session, head=1)
            return pool.stats(host.endpoint).operations

    # One command for a unique prefix; a second (by path) when the patterns found several.
    assert anyio.run(commands, "alpha-o") == 1
    assert anyio.run(commands, "dup") == 2


def picoclaw_session(messages: int, start: int) -> bytes:
    """A picoclaw transcript whose message texts start with ``msg <number>``."""
    return b"".join(
        b'{"role":"%s","content":"msg %d","created_at":"2026-11-20T09:00:%02dZ"}\n'
        % (b"user" if i % 2 == 0 else b"assistant", i, i % 60)
        for i in range(start, start + messages)
    )


def test_show_finds_a_picoclaw_session_by_its_key(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """picoclaw names a session's files after its key with ':', '/' and '\\' replaced by
    '_': ``show`` takes the key (or a prefix of it) as well as the file's id, over a mirror
    and straight from the host alike."""
    name = fleet.names[0]
    keys = ["telegram:123456", "agent:main:main", "cli/default\\7"]
    for i, key in enumerate(keys):
        stem = key.replace(":", "_").replace("/", "_").replace("\\", "_")
        fleet.write(name, f"sessions/{stem}.jsonl", picoclaw_session(2, i * 10))
        fleet.write(name, f"sessions/{stem}.meta.json", b'{"key": "%s"}' % key.encode())
    subprocess.run(["chmod", "-R", "a+rX", str(fleet.path(name))], check=True)
    inventory = write_inventory(fleet, tmp_path / "inv.toml", [name], 'format = "picoclaw"')
    dest = tmp_path / "mirror"
    assert main(["sync", "--inventory", str(inventory), "--dest", str(dest), "--json"]) == 0
    capsys.readouterr()
    where = {"mirror": ["-d", str(dest)], "remote": ["--remote", "-I", str(inventory)]}
    for how, options in where.items():
        for session, first in (
            ("telegram:123456", 0),  # the key
            ("telegram_123456", 0),  # the file's id
            ("telegram:12", 0),  # a unique prefix of the key
            ("agent:main:main", 10),
            ("cli/default\\7", 20),
            ("cli/default", 20),
        ):
            code, out, err = cli(
                ["sessions", "show", "--json", *options, "--", name, session], capsys
            )
            assert code == 0, (how, session, err)
            found = [msgspec.json.decode(line, type=Message) for line in out.splitlines()]
            assert text_numbers(found) == [first, first + 1], (how, session)
        code, _, err = cli(["sessions", "show", *options, "--", name, "telegram:9"], capsys)
        assert code == 2 and "no session 'telegram:9'" in err, (how, err)


def test_show_remote_reads_little_of_a_big_session(fleet: Any, tmp_path: Path) -> None:
    name = fleet.names[0]
    count = 60_000  # about 14 MB
    fleet.write(name, f"{SESSIONS}/big.jsonl", openclaw_session("big", count, pad=120))
    (host,) = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", [name])).hosts

    events: list[Progress] = []
    tail = anyio.run(lambda: api.read_session(host, "big", tail=100, emit=events.append))
    assert text_numbers(tail.messages) == list(range(count - 100, count))
    assert tail.bytes_read <= 256 * 1024  # the first block held them
    assert events == [
        Progress(name, "fetching", 0, 0, 0, 0),
        Progress(name, "done", 100, 100, tail.bytes_read, tail.bytes_read),
    ]
    head = anyio.run(lambda: api.read_session(host, "big", page=2, page_size=50))
    assert text_numbers(head.messages) == list(range(50, 100)) and head.first == 50
    # The command is stopped once the page is complete: what was read beyond it is what was
    # in flight (a window, the stream's buffers), not the rest of the file.
    assert head.bytes_read <= 2 * MiB, head.bytes_read
    middle = anyio.run(lambda: api.read_session(host, "big", page=300, page_size=100))
    assert text_numbers(middle.messages) == list(range(29_900, 30_000))


def test_remote_list_memory_does_not_grow_with_sessions(
    fleet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What is buffered is bounded by the window and the stream's chunks, whatever the number
    # of sessions; with small ones both listings fill that bound, and what is left to grow
    # is what is kept per file (nothing). The benchmark measures the real settings.
    monkeypatch.setattr(remote_module, "LIST_CHUNK", 64 * 1024)
    window = 128 * 1024
    name = fleet.names[0]
    one = openclaw_session("x", 30, pad=400)  # about 17 KB
    hosts = {}
    for count in (100, 800):  # 1.7 and 14 MB
        for i in range(count):
            fleet.write(name, f"n{count}/{SESSIONS}/s{i:05d}.jsonl", one)
        extra = f'root = "{fleet.path(name) / f"n{count}"}"'
        inventory = write_inventory(fleet, tmp_path / f"inv{count}.toml", [name])
        text = inventory.read_text().replace(f'root = "{fleet.path(name)}"', extra)
        inventory.write_text(text)
        (hosts[count],) = load_inventory(inventory).hosts

    async def peak(host: Host) -> tuple[int, int]:
        seen = 0
        async with SSHPool(PoolSettings(window=window)) as pool:
            tracemalloc.start()
            try:
                async for batch in stream_remote_sessions(pool, host, batch_size=50):
                    seen += len(batch)
                return seen, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    anyio.run(peak, hosts[100])  # warm-up: lazy imports, first-use caches
    small_seen, small = anyio.run(peak, hosts[100])
    large_seen, large = anyio.run(peak, hosts[800])
    assert (small_seen, large_seen) == (100, 800)
    assert large - small < MiB // 2, (small, large)


def test_byte_order_marks_and_old_codex_rollouts_read_alike_everywhere(
    fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Transcripts that start with a UTF-8 byte order mark (every format), and Codex
    rollouts written before the ``{timestamp, type, payload}`` wrapper, give the rows they
    were generated with whether the index was built by the sync, by ``index rebuild`` or by
    a remote listing; ``show`` over the mirror and from the host give their messages; the
    mirror keeps every byte (the mark too), and an old whole-JSON rollout is mirrored, not
    listed."""
    rng = random.Random(29)
    name = fleet.names[0]
    lines = [
        "[defaults]",
        f'ssh_config = "{fleet.ssh_config}"',
        f'known_hosts = "{fleet.known_hosts}"',
    ]
    trees: dict[str, sessiongen.Tree] = {}
    kinds = [(fmt, fmt, {"bom": True}) for fmt in sessiongen.FORMATS]
    kinds.append(("codex-old", "codex", {"legacy_codex": True}))
    kinds.append(("codex-old-bom", "codex", {"legacy_codex": True, "bom": True}))
    for label, fmt, knobs in kinds:
        root = fleet.path(name) / label
        trees[label] = sessiongen.build_tree(fmt, root, 3, rng, messages=16, **knobs)
        lines += [f'[[hosts]]\nname = "{name}-{label}"\naddress = "{name}"\nformat = "{fmt}"']
        lines.append(f'root = "{root}"')
        if fmt == "jsonl":
            lines.append('include = ["**/*.jsonl"]')
    # The TypeScript CLI's whole-JSON rollout: mirrored as a file, no session.
    whole_json = b"sessions/rollout-2025-04-20-5973b6c0-94b8-487b-a530-2aeb6098ae0e.json"
    whole = b'{\n  "session": {\n    "id": "5973b6c0",\n    "timestamp": "2025-04-20"\n  },\n'
    whole += b'  "items": []\n}'
    (fleet.path(name) / "codex-old" / whole_json.decode()).write_bytes(whole)
    subprocess.run(["chmod", "-R", "a+rX", str(fleet.path(name))], check=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "mirror"
    local, remote = mirrored_and_remote_rows(inventory, dest, capsys)
    assert remote == local
    want = {
        (f"{name}-{label}", entry.rel.decode()): entry
        for label, tree in trees.items()
        for entry in tree.transcripts
    }
    assert set(local) == set(want)
    for key, entry in want.items():
        got = msgspec.structs.asdict(local[key])
        expected = expected_row(entry.expected)
        assert {k: got[k] for k in expected} == expected, key
        assert (dest / key[0] / key[1]).read_bytes() == entry.session.data, key
    old_title = [local[k].title for k in want if k[0].endswith("-codex-old")]
    assert all(old_title) and all(local[k].messages for k in want)
    assert (dest / f"{name}-codex-old" / whole_json.decode()).read_bytes() == whole
    assert main(["index", "rebuild", "--dest", str(dest)]) == 0
    capsys.readouterr()
    code, out, err = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
    assert code == 0, err
    assert rows_of(out) == local

    hosts = {h.name: h for h in load_inventory(inventory).hosts}
    for label, tree in trees.items():
        entry = max(tree.transcripts, key=lambda e: len(e.session.messages))
        everything = generated(entry.session.messages)
        host = hosts[f"{name}-{label}"]
        for how, part in (
            ({"tail": 5}, everything[-5:]),
            ({"head": 3}, everything[:3]),
            ({"page": 2, "page_size": 4}, everything[4:8]),
            ({"tail": 1000}, everything),
        ):
            _row, mirrored = show_session(dest, host.name, entry.rel.decode(), **how)
            assert shown(mirrored.messages) == part, (label, "mirror", how)
            result = anyio.run(lambda: api.read_session(host, entry.rel.decode(), **how))  # noqa: B023
            assert shown(result.messages) == part, (label, "remote", how)


def test_the_remote_listing_and_show_go_on_the_wire_compact(tmp_path: Path) -> None:
    """As a sync's round, the list and show commands carry their scripts (their own and the
    batch's they give xargs) without comment lines, blank lines or indentation; the local
    tests above run them so sent under dash and BusyBox."""
    host = local_host(tmp_path)
    for argv in (
        list_argv(host),
        show_argv(host, None, "tail"),
        show_argv(host, "0123", "head"),
    ):
        scripts = [word for word in shlex.split(wrapped_command(argv)) if "\n" in word]
        assert len(scripts) == 2
        for script in scripts:
            for line in script.split("\n")[:-1]:
                assert line and line == line.lstrip() and not line.startswith("#"), line


def test_the_show_script_doubles_its_tail_blocks_up_to_the_clients_largest() -> None:
    """The client checks each tail block's start against the blocks it expects, doubling up
    to ``TAIL_MAX_BLOCK``; the script's own limit is that constant, put in when the script
    is made, never a second copy of the number that could drift from it (every tail of a
    file over twice the largest block would then fail as a protocol error)."""
    from remote_sync.index import remote_scripts
    from remote_sync.index.show import TAIL_MAX_BLOCK

    assert f'[ "$blk" -ge {TAIL_MAX_BLOCK} ]' in remote_scripts._SHOW_BATCH
    assert "@MAX_BLOCK@" not in remote_scripts._SHOW_BATCH
