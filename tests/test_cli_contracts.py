"""The CLI's contracts with scripts and people, and the library's with programs.

One test (or a few) per audited defect: a reader closing the pipe is no error and never costs
a sync its work (``sync --json | head``, ``sessions show | head -1``); data is never read as
rich markup or terminal control; an empty ``--dest`` is a usage error; out-of-range values are
usage errors (or bounded), not tracebacks; ``index rebuild`` leaves out a file it cannot read
and says so; undecodable bytes in names never break ``--json``; a host that cannot be listed
costs the others nothing; and the library applies ``sessions list``'s filters to remote rows.

Most run without SSH (an index written directly, remote listings replaced by a stand-in);
the end-to-end checks use the ``fleet`` / ``ssh_fleet`` fixtures (real sshd on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from sshfleet import SSHFleet
from synchelp import (
    cli,
    expected_tree,
    make_openclaw_tree,
    mirror_tree,
    until_running,
    write_inventory,
)
from test_agent import add_stuck_host

from remote_sync import api
from remote_sync.cli import main
from remote_sync.errors import (
    ConfigError,
    ConnectionLostError,
    HostUnreachableError,
    MirrorError,
    RemoteSyncError,
    TransferCancelledError,
    path_bytes,
    path_text,
    refetch_hint,
)
from remote_sync.events import (
    ErrorEvent,
    FileCounts,
    HostDone,
    Planned,
    Progress,
    Summary,
    decode_event,
    encode_event,
    guarded,
    json_lines_renderer,
    json_safe,
)
from remote_sync.index import remote as remote_index
from remote_sync.index.facts import SessionFacts
from remote_sync.index.query import SessionRow, iso_instant, open_index, query_sessions
from remote_sync.index.store import mark_before
from remote_sync.index.update import IndexUpdate, rebuild_index
from remote_sync.inventory import Host, load_inventory
from remote_sync.logformat import ShowableFormatter
from remote_sync.mirror.state import FileState, MirrorState, fingerprint_of
from remote_sync.render import RichRenderer, plain

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HOSTILE_TITLE = "[/x] [bold]loud[/bold] \x1b[2J\x1b]0;owned\x07 :smile:"


def process(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", *args],
        capture_output=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def into_closed_pipe(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with a stdout whose reader is already gone (``| head -0``): every write
    fails with EPIPE. Returns the exit code and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "remote_sync.cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr.decode("utf-8", "replace")


def transcript(sid: str, messages: int, *, text: str = "hello", pad: int = 100) -> bytes:
    """An OpenClaw transcript: a header, then user/assistant messages."""
    lines = [
        {
            "type": "session",
            "version": 3,
            "id": sid,
            "timestamp": "2026-11-20T09:00:00.000Z",
            "cwd": "/w",
        }
    ]
    for i in range(messages):
        lines.append(
            {
                "type": "message",
                "id": f"m{i}",
                "parentId": None,
                "timestamp": "2026-11-20T10:00:00.000Z",
                "message": {
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": [{"type": "text", "text": f"{text} {i} " + "y" * pad}],
                },
            }
        )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def make_mirror(dest: Path, files: dict[bytes, bytes], host: str = "h0") -> None:
    """Files as a sync leaves them (bytes and checkpoints), then indexed by a rebuild."""
    with MirrorState(dest) as state:
        state.set_host(host, "openclaw", "/data", host)
        rows = []
        for i, (rel, data) in enumerate(files.items()):
            local = state.local_path(host, rel)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            rows.append(FileState(host, rel, "append", len(data), len(data), 0.0, 1, i, b""))
        state.commit(rows)
    rebuild_index(dest)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    dest = tmp_path / "mirror"
    make_mirror(
        dest,
        {
            b"agents/a1/sessions/[draft] s.jsonl": transcript("draft", 3, text=HOSTILE_TITLE),
            b"agents/a1/sessions/long.jsonl": transcript("long", 2000, pad=300),
            b"agents/a1/sessions/old.jsonl": transcript("old", 4),
        },
    )
    return dest


def write_facts_index(dest: Path, rows: list[tuple[str, bytes, SessionFacts]]) -> None:
    """An index written directly (no transcript files), for what only the index shows."""
    with MirrorState(dest) as state:
        for host in sorted({h for h, _, _ in rows}):
            state.set_host(host, "openclaw", "/data", host)
        files = [
            FileState(h, p, "append", f.bytes, f.bytes, NOW.timestamp(), 1, i, b"")
            for i, (h, p, f) in enumerate(rows)
        ]

        def sessions() -> None:
            for h, p, f in rows:
                IndexUpdate(h, p, "openclaw", f).write(state.db)

        state.commit(files, also=sessions)


# -- 1. sync --json | head: the sync goes on -----------------------------------------------------


class ClosedPipe(io.RawIOBase):
    """A stream whose reader has gone: every write fails like a pipe's (EPIPE)."""

    def __init__(self) -> None:
        self.writes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_json_renderer_stops_quietly_when_the_reader_is_gone() -> None:
    stream = ClosedPipe()
    emit = json_lines_renderer(stream)  # type: ignore[arg-type]
    for _ in range(3):
        emit(Progress("h0", "listing", 0, 0, 0, 0))  # never raises
    assert stream.writes == 1  # after the first failure it stops writing


def test_guarded_sink_never_raises_into_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[object] = []

    def sink(event: object) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("renderer bug")
        if len(seen) == 2:
            raise SystemExit(1)  # what rich's default does on a closed pipe

    emit = guarded(sink)
    for _ in range(3):
        emit(Progress("h0", "listing", 0, 0, 0, 0))
    assert len(seen) == 3  # later events still reach the sink
    assert "renderer bug" in caplog.text


def test_sync_json_into_a_closed_pipe_completes_the_mirror(fleet: SSHFleet, tmp_path: Path) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0", sessions=4)
    make_openclaw_tree(fleet, "h1", sessions=3, seed=1)
    dest = tmp_path / "mirror"
    code, err = into_closed_pipe(["sync", "-I", str(inv), "-d", str(dest), "--json"])
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    for name in ("h0", "h1"):
        assert mirror_tree(dest, name) == expected_tree(fleet.path(name))
    # The state is whole too: a second run finds nothing to do.
    done = process(["sync", "-I", str(inv), "-d", str(dest), "--json"])
    summary = decode_event(done.stdout.splitlines()[-1])
    assert done.returncode == 0 and isinstance(summary, Summary)
    assert summary.files.new == summary.files.grown == 0
    # Without --json the recap goes to the closed pipe: the same.
    code, err = into_closed_pipe(["sync", "-I", str(inv), "-d", str(dest)])
    assert code == 0 and "Traceback" not in err, err


def test_sync_into_a_closed_pipe_keeps_its_own_exit_code(tmp_path: Path) -> None:
    # No sshd needed: a closed port fails the host; the exit code stays the sync's (1).
    dest = tmp_path / "mirror"
    for extra in (["--json"], []):
        code, err = into_closed_pipe(["sync", "rs@127.0.0.1:1", "-d", str(dest), *extra])
        assert code == 1, err
        assert "Traceback" not in err and "ExceptionGroup" not in err


# -- 2. data is never markup -----------------------------------------------------------------


def test_recap_and_error_lines_print_hostile_names_as_they_are() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = RichRenderer(Console(file=out, width=200), Console(file=err, width=200))
    renderer(
        ErrorEvent(
            "[draft]", "agents/a1/sessions/d[/x].jsonl", "file_failed", "bad [/b] line", "[hint]"
        )
    )
    renderer(Progress("[bold]h", "fetching", 1, 2, 3, 4))
    done = HostDone("[draft]", "partial", FileCounts(new=1), 10)
    renderer(Summary([done], FileCounts(new=1), 10, 0, 1, 1, False, 0.1))
    assert "error [draft]: agents/a1/sessions/d[/x].jsonl: bad [/b] line" in err.getvalue()
    assert "[hint]" in err.getvalue()
    # Not a terminal: the recap's rules are ASCII (logs, cron mail).
    assert "| [draft] " in out.getvalue()
    assert out.getvalue().isascii()
    # An error is one line however long, and its hint another: logs stay greppable.
    narrow = io.StringIO()
    RichRenderer(Console(file=io.StringIO()), Console(file=narrow, width=40))(
        ErrorEvent("h", "p", "file_failed", "word " * 30, "hint " * 20)
    )
    assert len(narrow.getvalue().splitlines()) == 2


def test_a_piped_recap_ends_no_line_in_spaces(tmp_path: Path) -> None:
    """rich padded the recap's title and caption to the table's width: piped into a journal
    or a log, those lines ended in spaces. Piped, none does; a terminal's recap is as it was."""
    hosts = [HostDone("h0", "ok", FileCounts(new=3), 1234)]
    summary = Summary(hosts, FileCounts(new=3), 1234, 1, 0, 0, False, 0.1)
    piped, terminal = io.StringIO(), io.StringIO()
    RichRenderer(Console(file=piped, width=200), Console(), dest="m")(summary)
    lines = piped.getvalue().splitlines()
    assert lines[0] == "sync recap" and "hosts: 1 ok, 0 failed" in lines, lines
    assert [line for line in lines if line != line.rstrip()] == [], lines
    assert "| h0    | ok     |   3 |" in piped.getvalue()
    shown = Console(file=terminal, width=100, force_terminal=True, color_system=None)
    RichRenderer(shown, Console(), dest="m")(summary)
    assert terminal.getvalue().startswith("sync recap  ")  # rich's own layout
    # The command itself, its stdout a pipe (a host on a closed port fails: no sshd needed).
    proc = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "sync", "rs@127.0.0.1:1", "-d", str(tmp_path)],
        capture_output=True,
        env=dict(os.environ, HOME=str(tmp_path)),
        timeout=60,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "sync recap" in out, (out, proc.stderr)
    assert [line for line in out.splitlines() if line != line.rstrip()] == [], out


def test_narrow_terminals_and_pipes_cut_no_host_name_nor_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An 80-column terminal showed "pi-kit…" for both hosts of the recap; a piped listing
    (a fixed width) cut host names, states and titles; a piped dry run folded a long path."""
    out = io.StringIO()
    terminal = Console(file=out, width=80, force_terminal=True, color_system=None)
    renderer = RichRenderer(terminal, Console())
    hosts = [
        HostDone("pi-kitchen", "ok", FileCounts(new=3), 12345),
        HostDone("pi-kitchen-claude", "partial", FileCounts(new=300, failed=1), 123456789),
    ]
    renderer(Summary(hosts, FileCounts(new=303, failed=1), 123469134, 1, 0, 1, False, 1.0, 1))
    text = out.getvalue()
    assert "pi-kitchen-claude" in text and "117.7 MiB" in text and "partial" in text
    assert "hosts: 1 ok, 1 partial, 0 failed" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    piped = io.StringIO()
    long_path = "agents/main/sessions/" + "x" * 200 + ".jsonl"
    RichRenderer(Console(file=piped, width=80), Console())(Planned("h", long_path, "new", 5))
    assert len(piped.getvalue().splitlines()) == 1 and long_path in piped.getvalue()
    dest = tmp_path / "mirror"
    title = "a title long enough to be cut at any fixed width " * 2
    facts = SessionFacts(session_id="s1", bytes=5000, lines=2, user=1, title=title[:60])
    host = "a-host-name-long-enough-to-be-cut-" + "h" * 30
    write_facts_index(dest, [(host, b"agents/main/sessions/s1.jsonl", facts)])
    code, listed, err = cli(["sessions", "list", "-d", str(dest)], capsys)
    assert code == 0, err
    assert host in listed and title[:59] in listed and "…" not in listed


def test_a_terminal_shows_each_host_s_progress_and_the_total() -> None:
    """On a terminal, the renderer ``sync`` draws with shows a line per host and one for the
    total, each with its bytes done of the total and its files done of the total."""
    out = io.StringIO()
    terminal = Console(file=out, width=120, force_terminal=True, color_system=None)
    with RichRenderer(terminal, Console(file=io.StringIO())) as renderer:
        renderer(Progress("h0", "fetching", 3, 10, 1_500_000, 4_000_000))
        renderer(Progress("h1", "fetching", 1, 5, 500_000, 2_000_000))
        renderer.progress.refresh()
        # The last frame drawn: the lines after the last cursor movement.
        frame = re.split(r"\x1b\[\d*[A-Za-z]", out.getvalue())[-1].splitlines()
    shown = {line.split()[0]: line for line in frame if line.strip()}
    assert set(shown) == {"total", "h0", "h1"}, frame
    assert "1.5/4.0 MB" in shown["h0"] and "3/10 files" in shown["h0"]
    assert "0.5/2.0 MB" in shown["h1"] and "1/5 files" in shown["h1"]
    assert "2.0/6.0 MB" in shown["total"] and "4/15 files" in shown["total"]


def test_an_80_column_terminal_cuts_only_a_sessions_title_and_no_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an 80-column terminal rich fitted the tables by cutting every column: the session
    listing showed "…" for a host name, the stats "82…" for 829 B and "…" for a cost. The
    title alone is cut; a table wider than the terminal wraps its rows instead."""
    from remote_sync.cli import human
    from remote_sync.render import PipeConsole

    screen = io.StringIO()
    monkeypatch.setattr(
        human,
        "_console",
        lambda: PipeConsole(
            file=screen, width=80, force_terminal=True, color_system=None, highlight=False
        ),
    )
    dest = tmp_path / "mirror"
    title = "a title long enough to be cut at any width " * 2
    rows = [
        (
            "pi-kitchen",
            b"projects/-home-user-src-github-com-someone-project/s1.jsonl",
            SessionFacts(
                session_id="s1",
                agent="-home-user-src-github-com-someone-project",
                bytes=829,
                lines=2,
                user=1,
                assistant=1,
                cost=0.0264,
                models=["claude-sonnet-4-5-20250929"],
                last_ts="2026-11-21T12:00:00.000Z",
                title=title[:60],
            ),
        )
    ]
    write_facts_index(dest, rows)
    code, _, err = cli(["sessions", "list", "-d", str(dest)], capsys)
    listed = screen.getvalue()
    assert code == 0, err
    assert "pi-kitchen" in listed and "-home-user-src-github-com-someone-project" in listed
    assert "valuable" in listed and "2026-11-21 12:00" in listed and "a title" in listed
    screen.truncate(0)
    screen.seek(0)
    for by in ("host", "model"):
        code, _, err = cli(["sessions", "stats", "-d", str(dest), "--by", by], capsys)
        shown = screen.getvalue()
        assert code == 0, err
        assert "829 B" in shown and "$0.03" in shown and "…" not in shown, shown
        assert "claude-sonnet-4-5-20250929" in shown or by == "host"
        screen.truncate(0)
        screen.seek(0)


def test_plain_escapes_control_characters_and_surrogates() -> None:
    assert plain("a\x1b[2Jb\rc\udcff").plain == "a\\x1b[2Jb\\x0dc\\xff"
    assert plain("one\ntwo\tx", lines=True).plain == "one\ntwo\tx"
    assert plain("one\ntwo").plain == "one\\x0atwo"
    assert plain("txt.\u202egpj.exe", lines=True).plain == "txt.\\u202egpj.exe"


#: Names that list alike when a backslash is shown as it is: a backslash and "xff" typed,
#: and the byte 0xff; the text "\u0085" and the character U+0085 (a C1 control, which a
#: terminal shows escaped) and its UTF-8 bytes' first one alone; a backslash before a
#: control character or an undecodable byte; other backslashes, which show as typed.
BACKSLASHED = [
    b"a\\xff.jsonl",
    b"a\xff.jsonl",
    b"a\\x5cxff.jsonl",
    b"b\\u0085.jsonl",
    b"b\xc2\x85.jsonl",
    b"b\x85.jsonl",
    b"c\\\x1b.jsonl",
    b"c\\\xfe.jsonl",
    b"c\\x1.jsonl",
    b"d\\.jsonl",
    b"d\\\\xff.jsonl",
    b"e\\xFF\\n\\u12.jsonl",
    b"f\xe2\x80\xae\\u202e.jsonl",
]


def test_every_name_shows_alone_and_reads_back_to_its_bytes() -> None:
    """A path shown (in events, listings, errors: path_text; on a terminal, through plain's
    escapes as well) names one file: a backslash that would read as an escape is shown as \\x5c, as
    rsync shows a "\\#" as "\\#134"; other backslashes show as typed."""
    for shown_form in (path_text, lambda name: plain(path_text(name)).plain):
        shown = [shown_form(name) for name in BACKSLASHED]
        assert len(set(shown)) == len(shown), shown
        assert [path_bytes(text) for text in shown] == BACKSLASHED
    assert path_text(b"a\\xff.jsonl") == "a\\x5cxff.jsonl"
    assert path_text(b"a\xff.jsonl") == "a\\xff.jsonl"
    assert plain(path_text(b"b\xc2\x85.jsonl")).plain == "b\\u0085.jsonl"
    for typed in (b"d\\.jsonl", b"e\\xFF\\n\\u12.jsonl", b"plain name.jsonl"):
        assert path_text(typed) == typed.decode() and path_bytes(typed.decode()) == typed
    # An error names its path in the same form, on one line.
    error = MirrorError("cannot", host="h", path=path_text(b"a\\xff\n.jsonl"))
    assert str(error).startswith("h: a\\x5cxff\\x0a.jsonl: cannot")


def test_sessions_list_show_and_stats_print_hostile_text_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "mirror"
    hostile = SessionFacts(
        session_id="[red]sid",
        agent="[/agent]",
        bytes=5000,
        lines=3,
        user=2,
        assistant=1,
        models=["[bold]m"],
        last_ts="2026-11-20T10:00:00.000Z",
        title=HOSTILE_TITLE,
    )
    write_facts_index(dest, [("h0", b"agents/[x]/sessions/[draft] s.jsonl", hostile)])
    code, out, err = cli(["sessions", "list", "-d", str(dest)], capsys)
    assert code == 0, err
    assert "[/agent]" in out and "[red]sid" in out and "[/x] [bold]loud[/bold]" in out
    assert "\x1b" not in out and "\\x1b[2J" in out
    for by in ("agent", "model"):
        code, out, err = cli(["sessions", "stats", "--by", by, "-d", str(dest)], capsys)
        assert code == 0 and ("[/agent]" in out or "[bold]m" in out), err


def test_sessions_show_prints_hostile_paths_and_text_as_is(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # OpenClaw's session id is the file's name (its header says "draft").
    code, out, err = cli(["sessions", "show", "h0", "[draft] s", "-d", str(mirror)], capsys)
    assert code == 0, err
    assert "agents/a1/sessions/[draft] s.jsonl" in out
    assert "[/x] [bold]loud[/bold]" in out and ":smile:" in out
    assert "\x1b" not in out and "\x07" not in out


def _recovery_noting(tmp_path: Path, rel: bytes) -> str:
    """A sync of a mirror whose file ``rel`` holds a killed run's bytes past its checkpoint:
    its recovery cuts them back and logs a note naming the file (the host cannot be reached
    after). Its stderr."""
    dest = tmp_path / "mirror"
    committed = transcript("s", 1)
    with MirrorState(dest) as state:
        state.set_host("h0", "openclaw", "/data", "h0")
        local = state.local_path("h0", rel)
        local.parent.mkdir(parents=True)
        # A killed run's bytes past the checkpoint: the next sync cuts them back, and says so.
        local.write_bytes(committed + b'{"type":"mess')
        row = FileState(
            "h0",
            rel,
            "append",
            len(committed),
            len(committed),
            0.0,
            1,
            5,
            fingerprint_of(committed),
        )
        state.commit([row])
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "h0"\naddress = "127.0.0.1:1"\nroot = "/data"\n')
    done = process(["sync", "--inventory", str(inventory), "--dest", str(dest)])
    err = done.stderr.decode()
    assert done.returncode == 1, err  # the host cannot be reached; the recovery ran before
    assert local.stat().st_size == len(committed)
    return err


def test_a_log_line_naming_a_hostile_file_is_escaped(tmp_path: Path) -> None:
    """The warnings a command logs on stderr are escaped like its other lines: the note of
    a recovery names a mirrored file, whose name the host chose. An OSC 52 in it, printed
    raw, wrote the user's clipboard; a CSI 2J cleared the screen."""
    rel = b"agents/a/sessions/s\x1b]52;c;aGk=\x07\x1b[2J\xe2\x80\xae.jsonl"
    err = _recovery_noting(tmp_path, rel)
    assert "s\\x1b]52;c;aGk=\\x07\\x1b[2J\\u202e.jsonl: cut back to the checkpoint" in err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err


def test_a_log_line_naming_a_file_with_line_breaks_stays_one_line(tmp_path: Path) -> None:
    """A mirrored file's name holding a newline (or a carriage return) does not start a
    log line of its own: the note naming it is one line, its breaks escaped, where the
    name's second half stood on a line of its own and could pass for another record."""
    fake = "WARNING remote_sync.mirror.engine: h0: all 12 files synced"
    rel = f"agents/a/sessions/s\n{fake}\r\n.jsonl".encode()
    err = _recovery_noting(tmp_path, rel)
    assert not any(line.startswith(fake) for line in err.splitlines()), err
    (note,) = [line for line in err.splitlines() if "cut back to the checkpoint" in line]
    assert f"sessions/s\\x0a{fake}\\x0d\\x0a.jsonl: cut back" in note


def test_a_log_records_traceback_keeps_its_lines() -> None:
    """The formatter escapes the message's line breaks, not those of the traceback it
    appends (a debug log's exception), which stays readable line by line."""
    formatter = ShowableFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "a\nb %s", ("c\td",), None)
        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    head, *rest = text.splitlines()
    assert head == "ERROR x: a\\x0ab c\\x09d"
    assert rest[0] == "Traceback (most recent call last):" and rest[-2:] == [
        "ValueError: bad",
        "value",
    ]
    assert record.getMessage() == "a\nb c\td" and record.message == "a\nb c\td"


def test_the_commands_hints_give_are_quoted_to_be_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hint's command, copied into a shell, names the host and the mirror it was about,
    also when their names hold a space (a host name may: it is a directory's name)."""
    dest = tmp_path / "my mirror"
    facts = SessionFacts(session_id="s", bytes=10, lines=1, user=1)
    write_facts_index(dest, [("pi kitchen", b"agents/a/sessions/s.jsonl", facts)])
    code, _, err = cli(["sessions", "show", "pi kitchen", "nosuch", "-d", str(dest)], capsys)
    assert code == 2, err
    listed = re.search(r"`(remote-sync sessions list [^`]*)`", err)
    assert listed, err
    assert shlex.split(listed[1]) == ["remote-sync", "sessions", "list", "--host", "pi kitchen"]
    synced = re.search(r"`(remote-sync sync [^`]*)`", refetch_hint("pi kitchen", dest))
    assert synced
    assert shlex.split(synced[1]) == ["remote-sync", "sync", "pi kitchen", "--dest", str(dest)]


# -- 4. an empty --dest --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "rs@127.0.0.1:1"],
        ["sync", "rs@127.0.0.1:1", "--json"],
        ["sessions", "list"],
        ["sessions", "show", "h0", "x"],
        ["sessions", "stats"],
        ["index", "rebuild"],
        ["versions", "list"],
        ["versions", "list", "--json"],
        ["versions", "restore", "h0", "x", "1", "--to", "out"],
        ["check"],
        ["check", "--json"],
    ],
)
def test_an_empty_dest_is_a_usage_error(
    args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli([*args, "--dest", ""], capsys)
    assert code == 2 and "--dest is empty" in (err + out)
    assert list(tmp_path.iterdir()) == []  # nothing made in the current directory
    if "--json" in args:
        event = decode_event(out.splitlines()[0])
        assert isinstance(event, ErrorEvent) and event.kind == "config"


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list", "--since", "yesterday"],
        ["sessions", "list", "--sort", "nosuchfield"],
        ["sessions", "list", "--inventory", "inv.toml"],  # without --remote
        ["sessions", "show", "h0", "x", "--page-size", "0"],
        ["sessions", "show", "h0", "x"],  # no mirror there
        ["sessions", "stats"],
        ["index", "rebuild"],
        ["versions", "list"],
        ["check"],
    ],
)
def test_errors_found_after_parsing_under_json_print_an_error_line_too(
    args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only argparse's: a bad value found later, or no mirror, is a JSON line too."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli([*args, "--dest", str(tmp_path / "none"), "--json"], capsys)
    assert code == 2 and err.startswith("remote-sync: ")
    lines = out.splitlines()
    assert len(lines) == 1, out
    event = decode_event(lines[0])
    assert isinstance(event, ErrorEvent) and event.kind == "config"
    assert event.message in err


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "--dest", "m", "--concurrency", "many", "--json"],
        ["sync", "--json"],  # --dest missing
        ["sessions", "list", "--json", "--limit"],
        ["sessions", "list", "--json", "--class", "gold"],
        ["sessions", "stats", "--json", "--by", "year"],
        ["index", "rebuild", "--json", "--bogus"],
        ["sessions", "--json"],  # no subcommand
    ],
)
def test_usage_errors_under_json_print_an_error_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A script that asked for --json gets the usage error as JSON too (argparse alone writes
    only to stderr), and still exit 2."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and "usage:" in err
    lines = out.splitlines()
    assert len(lines) == 1, out
    event = decode_event(lines[0])
    assert isinstance(event, ErrorEvent) and event.kind == "config"
    assert "error" not in event.message.split(":")[0] and event.hint.endswith("--help")
    # Without --json: stderr only, as before.
    with pytest.raises(SystemExit):
        main([a for a in args if a != "--json"] or ["sync"])
    assert capsys.readouterr().out == ""


def test_json_after_the_operands_marker_is_not_an_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["sync", "--concurrency", "x", "--", "--json"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", ["sync", "sync-start", "sessions"])
def test_ctrl_c_before_the_rounds_still_says_so_under_json(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C before the sync's own signal handler is in place (imports, inventory, state)
    exits 130, and under --json says so in an error line."""
    from remote_sync.cli import sessions as sessions_cli
    from remote_sync.cli import sync as sync_cli

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    async def interrupted_at_start(*_args: object) -> int:
        raise KeyboardInterrupt

    if command == "sync":
        monkeypatch.setattr(sync_cli, "_select_hosts", interrupted)
        args = ["sync", "me@box.invalid", "--dest", str(tmp_path / "m"), "--json"]
    elif command == "sync-start":
        monkeypatch.setattr(sync_cli, "_sync_main", interrupted_at_start)
        args = ["sync", "me@box.invalid", "--dest", str(tmp_path / "m"), "--json"]
    else:
        monkeypatch.setattr(sessions_cli, "dest_or_default", interrupted)
        args = ["sessions", "list", "--json"]
    code, out, _err = cli(args, capsys)
    assert code == 130
    event = decode_event(out.splitlines()[-1])
    assert isinstance(event, ErrorEvent) and event.kind == "cancelled"


def _stuck_sync_argv(tmp_path: Path) -> list[str]:
    """A --json sync of the host "stuck" alone, with an empty ssh_config: it runs until a
    signal ends it."""
    (tmp_path / "ssh_config").write_text("")
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'[defaults]\nssh_config = "{tmp_path / "ssh_config"}"\n')
    add_stuck_host(inventory)
    return ["sync", "-I", str(inventory), "-d", str(tmp_path / "m"), "--json"]


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_a_cancel_names_the_signal_to_send_again(tmp_path: Path, sent: signal.Signals) -> None:
    """systemctl stop sends SIGTERM, and the journal read "cancelling (Ctrl-C again to abort
    at once)": the line names the signal that came. No sshd: a host whose ProxyCommand never
    answers keeps the round waiting until the signal."""
    argv = _stuck_sync_argv(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_sync.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert proc.stdout is not None
    assert b'"phase":"listing"' in proc.stdout.readline()  # the round has started
    # Its ProxyCommand runs (its argv "sleep 60", split, NUL-separated in /proc): the round
    # has waited on its pre-flight's thread since it began (a sleep of a fixed length could
    # come before that on a loaded machine), so the signal receiver, started before the
    # round, is open.
    until_running(proc.pid, b"sleep\x0060\x00")
    proc.send_signal(sent)
    _out, err = proc.communicate(timeout=30)
    again = "Ctrl-C" if sent == signal.SIGINT else "SIGTERM"
    assert proc.returncode == 130, err
    assert f"cancelling ({again} again to abort at once)" in err.decode(), err
    # Not a terminal (a journal, a log): no empty line before it, as "\ncancelling" gave.
    lines = err.decode().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("cancelling (")]
    assert at == 0 or lines[at - 1] != "", lines


def test_a_cancel_on_a_terminal_ends_the_line_the_terminal_echoed_first(tmp_path: Path) -> None:
    """On a terminal the cancel's line still starts on a line of its own (after the "^C"
    the terminal echoed), as it did before it left the newline out in journals."""
    argv = _stuck_sync_argv(tmp_path)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_sync.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    os.close(slave)
    try:
        assert proc.stdout is not None
        assert b'"phase":"listing"' in proc.stdout.readline()  # the round has started
        until_running(proc.pid, b"sleep\x0060\x00")  # its signal receiver is open (see above)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(master)
    assert proc.returncode == 130, err
    assert b"\ncancelling (Ctrl-C again to abort at once)" in err.replace(b"\r\n", b"\n"), err


#: Runs the console script's target, with a real SIGINT arriving while ``remote_sync.cli``
#: is being imported (the first tens of milliseconds of every run).
_CTRL_C_WHILE_LOADING = """
import os, signal, sys

class CtrlCOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "remote_sync.cli":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCOnImport())
sys.argv = ["remote-sync", *sys.argv[1:]]
from remote_sync.__main__ import run
run()
"""


def _assert_cancelled_at_start(
    done: subprocess.CompletedProcess[bytes], dest: Path, json_wanted: bool
) -> None:
    """``done`` was cancelled before its work started: exit 130, one line (an error event
    under --json), no traceback, ``dest`` not made."""
    err = done.stderr.decode()
    assert done.returncode == 130, (done.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not dest.exists()
    if json_wanted:
        event = decode_event(done.stdout.decode().splitlines()[-1])
        assert isinstance(event, ErrorEvent) and event.kind == "cancelled"
    else:
        assert done.stdout == b""
        assert err.startswith("remote-sync: cancelled by a signal"), err


@pytest.mark.parametrize("json_wanted", [False, True])
def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback(
    json_wanted: bool, tmp_path: Path
) -> None:
    """The ``remote-sync`` script's target catches a Ctrl-C during its own imports: exit 130,
    one line (an error event under --json), no traceback, nothing started."""
    args = ["sync", "me@box.invalid", "--dest", str(tmp_path / "m")]
    argv = [sys.executable, "-c", _CTRL_C_WHILE_LOADING, *args, *(["--json"] * json_wanted)]
    done = subprocess.run(argv, capture_output=True, timeout=60)
    _assert_cancelled_at_start(done, tmp_path / "m", json_wanted)


#: A sitecustomize for ``python -m remote_sync``: a real SIGTERM sent to the process while
#: ``remote_sync.cli`` is being imported ("load") or while argparse parses the words ("parse"),
#: as ``timeout`` or systemd may send it to a run that has just started.
_SIGTERM_AT_START = """
import argparse, os, signal, sys

at = os.environ.pop("RS_TEST_SIGTERM_AT", "")

class TermOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "remote_sync.cli":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

if at == "load":
    sys.meta_path.insert(0, TermOnImport())
elif at == "parse":
    real_parse = argparse.ArgumentParser.parse_args

    def parse_args(self, *args, **kwargs):
        argparse.ArgumentParser.parse_args = real_parse
        os.kill(os.getpid(), signal.SIGTERM)
        return real_parse(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = parse_args
"""


def _start_terminated(
    tmp_path: Path, at: str, words: list[str], *, ignored: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """``python -m remote_sync WORDS``, sent SIGTERM ``at`` its start (see above); with
    ``ignored``, started with SIGTERM ignored, as a parent may start it."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SIGTERM_AT_START)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, RS_TEST_SIGTERM_AT=at)

    def ignore_sigterm() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-m", "remote_sync", *words],
        capture_output=True,
        timeout=60,
        env=env,
        preexec_fn=ignore_sigterm if ignored else None,
    )


@pytest.mark.parametrize("at", ["load", "parse"])
@pytest.mark.parametrize("json_wanted", [False, True])
def test_sigterm_while_the_command_line_starts_exits_130_without_a_traceback(
    at: str, json_wanted: bool, tmp_path: Path
) -> None:
    """SIGTERM is taken as a Ctrl-C from the console script's first line on: one arriving
    while the command line's modules are imported or its words parsed exits 130, one line
    (an error event under --json), where it killed the process (-15) before the command
    installed its own handler."""
    words = ["sync", "me@box.invalid", "--dest", str(tmp_path / "m")]
    done = _start_terminated(tmp_path, at, words + ["--json"] * json_wanted)
    _assert_cancelled_at_start(done, tmp_path / "m", json_wanted)


#: A sitecustomize for ``python -m remote_sync.cli``: a real SIGINT sent to the process while
#: runpy imports the ``remote_sync.cli`` package, before its ``__main__`` runs: at the first
#: module that package's import looks for past the guard's own.
_CTRL_C_WHILE_THE_PACKAGE_LOADS = """
import os, signal, sys

class CtrlCInsideThePackage:
    armed = False

    def find_spec(self, name, path=None, target=None):
        if name == "remote_sync.cli":
            self.armed = True
        elif self.armed and name not in ("remote_sync.__main__", "remote_sync.interrupt"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCInsideThePackage())
"""


@pytest.mark.parametrize("json_wanted", [False, True])
def test_ctrl_c_while_python_m_imports_the_cli_package_exits_130_without_a_traceback(
    json_wanted: bool, tmp_path: Path
) -> None:
    """``python -m remote_sync.cli``: runpy imports the package (most of the command line's
    load) before its ``__main__`` runs the guarded entry; a Ctrl-C then ended in a traceback
    and death by SIGINT. The package's first import installs the same guard: exit 130, one
    line (an error event under --json)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CTRL_C_WHILE_THE_PACKAGE_LOADS)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    words = ["sync", "me@box.invalid", "--dest", str(tmp_path / "m"), *["--json"] * json_wanted]
    done = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", *words],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=path),
    )
    _assert_cancelled_at_start(done, tmp_path / "m", json_wanted)


def test_python_m_of_another_package_that_imports_the_cli_keeps_its_handlers(
    tmp_path: Path,
) -> None:
    """The guard of ``python -m remote_sync.cli``'s package import is for that command
    alone: a program run as ``python -m`` whose own package imports the command line (a
    wrapper of it) keeps its SIGTERM and its excepthook, where it had a Ctrl-C end it with
    remote-sync's "cancelled" line and exit 130, past its own cleanup."""
    package = tmp_path / "wrapper"
    package.mkdir()
    (package / "__init__.py").write_text("import remote_sync.cli\n")
    (package / "__main__.py").write_text(
        "import signal, sys\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,"
        " sys.excepthook is sys.__excepthook__)\n"
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "wrapper", "sync"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=path),
    )
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


#: Runs the console script's target (argv[3] "script"), or ``python -m remote_sync.cli`` as
#: runpy runs it (argv[3] "module"), with a real signal (argv[1]: INT or TERM) arriving
#: outside the load and before main's handling of a cancel begins: as the target reads the
#: words (the first read of sys.argv's words: "start"), as ``entry`` begins ("entry"), or as
#: ``main`` reads the words (the second read: "main").
_SIGNAL_BEFORE_MAIN = """
import os, signal, sys

import remote_sync.cli as cli

sig = getattr(signal, "SIG" + sys.argv[1])
spot = sys.argv[2]
sent = []

def send():
    sent.append(True)
    os.kill(os.getpid(), sig)

if spot == "entry":
    real_open = cli._open_closed_standard_descriptors

    def opened():
        send()
        real_open()

    cli._open_closed_standard_descriptors = opened

class Argv(list):
    reads = 0

    def __getitem__(self, at):
        if isinstance(at, slice):
            Argv.reads += 1
            if (spot, Argv.reads) in (("start", 1), ("main", 2)):
                send()
        return super().__getitem__(at)

how = sys.argv[3]
sys.argv = Argv(["remote-sync", *sys.argv[4:]])
if how == "module":
    import runpy

    runpy.run_module("remote_sync.cli", run_name="__main__", alter_sys=True)
else:
    from remote_sync.__main__ import run

    run()
"""


@pytest.mark.parametrize(
    ("spot", "sig"),
    [("start", "INT"), ("entry", "INT"), ("entry", "TERM"), ("main", "INT"), ("main", "TERM")],
)
@pytest.mark.parametrize("json_wanted", [False, True])
@pytest.mark.parametrize("how", ["script", "module"])
def test_a_signal_between_the_load_and_main_exits_130_without_a_traceback(
    spot: str, sig: str, json_wanted: bool, how: str, tmp_path: Path
) -> None:
    """A Ctrl-C or a SIGTERM arriving outside the command line's load and before ``main``
    handles a cancel (the few steps from the script's target into main's ``try``) exits
    130 with one line (an error event under --json), where it ended in a traceback. (At
    the start, SIGTERM is not taken yet: it ends the process as SIGTERM does.) So does one
    in ``python -m remote_sync.cli``, which had no guard at all: a traceback, and SIGTERM's
    death (-15) until main took it."""
    args = [sig, spot, how, "sync", "me@box.invalid", "--dest", str(tmp_path / "m")]
    argv = [sys.executable, "-c", _SIGNAL_BEFORE_MAIN, *args, *(["--json"] * json_wanted)]
    done = subprocess.run(argv, capture_output=True, timeout=60)
    _assert_cancelled_at_start(done, tmp_path / "m", json_wanted)


def test_sigterm_ignored_at_the_start_stays_ignored(tmp_path: Path) -> None:
    """Started with SIGTERM ignored, the command keeps ignoring it: the SIGTERM during its
    load changes nothing, and it runs to its own end (here: no mirror there, exit 2)."""
    words = ["sessions", "list", "--dest", str(tmp_path / "none")]
    done = _start_terminated(tmp_path, "load", words, ignored=True)
    assert done.returncode == 2, done.stderr
    assert b"cancelled" not in done.stderr


def test_sigterm_while_the_agent_starts_stops_it_as_sigterm_does(tmp_path: Path) -> None:
    """The agent's SIGTERM is its stop: while it loads, nothing serves yet, and SIGTERM's
    default action ends it (systemd counts a service killed by SIGTERM as stopped), no
    cancel reported."""
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[hosts]]\nname = "h0"\naddress = "127.0.0.1"\n')
    words = ["-v", "agent", "--inventory", str(inv), "--dest", str(tmp_path / "m")]
    done = _start_terminated(tmp_path, "load", words)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert b"cancelled" not in done.stderr


@pytest.mark.parametrize(
    "words",
    [["--version"], [], ["sync"], ["sessions", "list", "--dest", "none"]],
    ids=["version", "no words", "usage error", "command"],
)
def test_sigterm_taken_while_loading_is_its_default_again_after_main(
    words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script takes SIGTERM as a Ctrl-C before it loads the command line (see
    remote_sync.interrupt); main gives SIGTERM its default action back once it is done, also
    when it ends before any command runs (the version, the help, a usage error). The handler
    left in place there turned a SIGTERM during the exit (the flush of stdout, the teardown)
    into a KeyboardInterrupt traceback."""
    from remote_sync.interrupt import take_sigterm_while_loading

    monkeypatch.chdir(Path(__file__).parent)  # "none": no mirror there
    previous = signal.getsignal(signal.SIGTERM)
    try:
        take_sigterm_while_loading(words)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        with contextlib.suppress(SystemExit):
            main(words)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    capsys.readouterr()


def test_ctrl_c_while_parsing_the_command_line_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import remote_sync.cli as cli_module

    def interrupted() -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "build_parser", interrupted)
    code, out, err = cli(["sessions", "list"], capsys)
    assert code == 130 and out == ""
    assert "cancelled by a signal" in err


@pytest.mark.parametrize(
    ("config", "blamed", "jump"),
    [
        ("HostName 127.0.0.1\n  ProxyJump me@jump.invalid:2222\n", "jump.invalid", True),
        (
            "HostName 127.0.0.1\n  ProxyJump hop\nHost hop\n  HostName hop.invalid\n",
            "hop.invalid",
            True,
        ),
        ("HostName target.invalid\n", "target.invalid", False),
        # The jump host refused (nothing listens on port 1): jump hosts are connected one
        # by one, so the message names the one that refused.
        (
            "HostName 127.0.0.1\n  ProxyJump me@127.0.0.1:1\n",
            "ProxyJump host 'me@127.0.0.1:1'",
            True,
        ),
    ],
)
@pytest.mark.parametrize("given", [True, False], ids=["ssh-config-given", "home-ssh-config"])
def test_connection_errors_name_the_hop(
    config: str,
    blamed: str,
    jump: bool,
    given: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ProxyJump host that did not resolve or refused was reported as the target's own failure."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):  # no DNS query leaves
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # Named on the command line, or read from ~/.ssh/config as ssh does when none is named.
    cfg = tmp_path / "ssh_config" if given else tmp_path / "home" / ".ssh" / "config"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"Host target\n  Port 1\n  {config}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    known = tmp_path / "known_hosts"
    known.write_text("")
    args = ["sync", "target", "--known-hosts", str(known)]
    args += ["--ssh-config", str(cfg)] if given else []
    code, out, _err = cli([*args, "--dest", str(tmp_path / "m"), "--json"], capsys)
    (event,) = [e for e in map(decode_event, out.splitlines()) if isinstance(e, ErrorEvent)]
    assert code == 1 and event.kind == "unreachable"
    assert event.host == "target", event
    assert (blamed if " " in blamed else repr(blamed)) in event.message, event.message
    assert ("ProxyJump" in event.message) == jump


@pytest.mark.parametrize(
    "case", ["jump host's key", "second jump host's line", "include", "ciphers", "jump loop"]
)
def test_a_problem_past_the_target_s_own_lines_leaves_the_destination_untouched(
    case: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A jump host's key that does not load or ssh_config line that does not parse, an
    Include'd file that cannot be read, a Ciphers line naming no cipher asyncssh has, a
    ProxyJump loop: the pre-flight finds them, so the run exits 2 as for any configuration
    error and creates nothing. They were found on connecting, after the destination and its
    state were created (the Include, the ciphers, the second jump host's line said as the
    host being unreachable)."""
    import errno

    import asyncssh

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = tmp_path / "ssh_config"
    target = "Host box\n  HostName 127.0.0.1\n  Port 1\n"
    hop = "Host gw hop\n  HostName 127.0.0.1\n  Port 1\n"
    if case == "jump host's key":
        key = tmp_path / "not_a_key"
        key.write_text("this is not a private key\n")
        key.chmod(0o600)
        text = f"{target}  ProxyJump hop\n{hop}  IdentityFile {key}\n"
        path, said = str(key), "ProxyJump host 'hop': cannot load a private key"
    elif case == "second jump host's line":
        text = f"{target}  ProxyJump gw,hop\nHost hop\n  Port twenty\n{hop}"
        path, said = str(cfg), "ProxyJump host 'hop': ssh_config line 6: Invalid Port"
    elif case == "include":
        included = tmp_path / "included.conf"
        included.write_text("Host box\n  User me\n")
        text = f"Include {included}\n{target}"
        path, said = str(included), "cannot read the ssh_config file"

        def refusing(name: Any, *args: Any, **kwargs: Any) -> Any:
            if str(name) == str(included):  # as for a mode 000 file when not root
                raise PermissionError(errno.EACCES, "Permission denied", str(name))
            return open(name, *args, **kwargs)

        monkeypatch.setattr(asyncssh.config, "open", refusing, raising=False)
    elif case == "ciphers":
        text = f"{target}  Ciphers nope-cipher@example.com\n"
        path, said = str(cfg), "the ssh_config's Ciphers 'nope-cipher@example.com'"
    else:
        text = f"{target}  ProxyJump gw\nHost gw\n  ProxyJump hop\nHost hop\n  ProxyJump gw\n{hop}"
        path, said = str(cfg), "ProxyJump hosts lead in a loop: gw -> hop -> gw"
    cfg.write_text(text)
    known = tmp_path / "known_hosts"
    known.write_text("")
    dest = tmp_path / "m"
    args = ["sync", "box", "--ssh-config", str(cfg), "--known-hosts", str(known), "--json"]
    code, out, _err = cli([*args, "--dest", str(dest)], capsys)
    (event,) = [e for e in map(decode_event, out.splitlines()) if isinstance(e, ErrorEvent)]
    assert code == 2 and not dest.exists(), event
    assert (event.kind, event.host, event.path) == ("config", "box", path), event
    assert said in event.message, event.message


@pytest.mark.parametrize("text", ["hosts = []\n", '[defaults]\nformat = "codex"\n', ""])
def test_an_inventory_without_hosts_is_named(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inventory.toml"
    inv.write_text(text)
    dest = tmp_path / "m"
    code, _out, err = cli(["sync", "--inventory", str(inv), "--dest", str(dest)], capsys)
    assert code == 2 and f"{inv}: the inventory lists no hosts" in err, err
    assert not dest.exists()
    code, _out, err = cli(["sync", "--dest", str(dest)], capsys)
    assert code == 2 and "no hosts to sync" in err and "--inventory" in err


@pytest.mark.parametrize(
    "extra",
    [["--format", "codex"], ["--format", "nope"], ["--root", "/x"], ["--identity", "k"]],
)
def test_ad_hoc_options_with_only_inventory_hosts_are_a_usage_error(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They would be ignored without a word: the inventory says how its hosts are reached."""
    inv = tmp_path / "inventory.toml"
    inv.write_text('[[hosts]]\nname = "pi"\naddress = "pi.invalid"\n')
    dest = tmp_path / "m"
    code, _out, err = cli(["sync", "--inventory", str(inv), "--dest", str(dest), *extra], capsys)
    assert code == 2 and "only to hosts that are not in the inventory" in err, err
    assert extra[0] in err and not dest.exists()


def test_read_commands_keep_their_default_dest(
    mirror: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_SYNC_DEST", str(mirror))
    code, out, _ = cli(["sessions", "list", "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 3
    monkeypatch.delenv("REMOTE_SYNC_DEST")
    monkeypatch.chdir(mirror.parent)  # ./mirror
    code, out, _ = cli(["sessions", "list", "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 3


# -- 5. out-of-range values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list", "--since", "99999999d"],
        ["sessions", "list", "--since", "9" * 5000 + "w"],
        ["sessions", "stats", "--since", "99999999d"],
        ["sessions", "list", "--since", "0001-01-01T00:00+01:00"],
        ["sessions", "list", "--since", "9999-12-31T23:59:59-01:00"],
        ["sessions", "stats", "--since", "0001-01-01T00:00+01:00"],
    ],
)
def test_out_of_range_times_exit_2(
    mirror: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = cli([*args, "-d", str(mirror)], capsys)
    assert code == 2 and out == "" and "out of range" in err


def test_huge_limit_and_page_are_bounded(mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = "99999999999999999999"
    code, out, err = cli(["sessions", "list", "--json", "--limit", huge, "-d", str(mirror)], capsys)
    assert code == 0 and len(out.splitlines()) == 3, err
    code, out, err = cli(
        ["sessions", "show", "h0", "long", "--page", huge, "-d", str(mirror)], capsys
    )
    assert code == 0 and "past the end" in err
    show = ["sessions", "show", "h0", "long", "--json", "-d", str(mirror)]
    code, out, err = cli([*show, "--page", "2", "--page-size", huge], capsys)
    assert code == 0 and out == "" and "Traceback" not in err
    code, out, err = cli([*show, "--head", huge], capsys)
    assert code == 0 and len(out.splitlines()) == 2000


def test_years_before_1000_sort_before_later_ones(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert iso_instant("0999-01-01") == "0999-01-01T00:00:00.000Z"
    assert iso_instant("0001-01-01T00:00Z") == "0001-01-01T00:00:00.000Z"
    code, out, _ = cli(
        ["sessions", "list", "--json", "--since", "0999-01-01", "-d", str(mirror)], capsys
    )
    assert code == 0 and len(out.splitlines()) == 3


def test_library_bounds(mirror: Path) -> None:
    db = open_index(mirror)
    try:
        assert len(list(query_sessions(db, limit=10**30))) == 3
        assert mark_before(db, "h0", b"agents/a1/sessions/long.jsonl", 10**30)[0] == 1792
        east = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
        with pytest.raises(ConfigError, match="out of range"):
            list(query_sessions(db, since=east))
        with pytest.raises(ConfigError, match="out of range"):
            iso_instant("99999999d")
    finally:
        db.close()


# -- 6. index rebuild with a file gone -----------------------------------------------------------


def test_index_rebuild_leaves_out_an_unreadable_file_and_exits_1(
    mirror: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (mirror / "h0" / "agents/a1/sessions/old.jsonl").unlink()
    draft = mirror / "h0" / "agents/a1/sessions/[draft] s.jsonl"
    draft.unlink()
    draft.mkdir()  # a directory where the file was: unreadable as a file
    code, out, err = cli(["index", "rebuild", "-d", str(mirror)], capsys)
    assert code == 1
    assert "1 session indexed" in out and "2 unreadable files left out" in out
    assert "h0: agents/a1/sessions/old.jsonl: cannot read the mirrored file" in err
    assert "h0: agents/a1/sessions/[draft] s.jsonl: cannot read" in err
    # Says what to do: a file removed from the mirror comes back by a sync (its recovery
    # fetches it again; a rebuild alone would report it every time, and the user has no copy
    # to restore); one a directory took the place of is the user's to fix.
    said = {line.split(": cannot read")[0]: line for line in err.splitlines()}
    gone = said["remote-sync: h0: agents/a1/sessions/old.jsonl"]
    assert f"run `remote-sync sync h0 --dest {mirror}`" in gone and "restore" not in gone
    assert "index rebuild` again" in said["remote-sync: h0: agents/a1/sessions/[draft] s.jsonl"]
    code, out, _ = cli(["sessions", "list", "--json", "-d", str(mirror)], capsys)
    assert [json.loads(line)["session_id"] for line in out.splitlines()] == ["long"]

    code, out, err = cli(["index", "rebuild", "-d", str(mirror), "--json"], capsys)
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [e["type"] for e in events] == ["error", "error", "index_rebuilt"]
    assert {e["path"] for e in events[:2]} == {
        "agents/a1/sessions/old.jsonl",
        "agents/a1/sessions/[draft] s.jsonl",
    }
    assert events[0]["host"] == "h0" and events[0]["kind"] == "mirror"
    assert events[2] == {"type": "index_rebuilt", "sessions": 1, "unreadable": 2}


def test_rebuild_index_reports_to_on_error(mirror: Path) -> None:
    (mirror / "h0" / "agents/a1/sessions/old.jsonl").unlink()
    errors: list[MirrorError] = []
    assert rebuild_index(mirror, on_error=errors.append) == 2
    assert [(e.host, e.path) for e in errors] == [("h0", "agents/a1/sessions/old.jsonl")]


# -- 10. undecodable bytes in event strings ------------------------------------------------------


def test_hints_after_a_cut_do_not_promise_a_resume_mid_file() -> None:
    """A file cut midway is fetched again whole: the hint must not say it resumes there."""
    for error in (ConnectionLostError("lost"), TransferCancelledError("stop")):
        assert "a file cut midway is fetched again" in error.hint
        assert "where it stopped" not in error.hint


def test_every_event_encodes_with_undecodable_bytes() -> None:
    exc = ConfigError("bad \udcfe", host="\udcffbox", path="/d/\udcff", hint="\ud800")
    event = ErrorEvent.from_exception(exc)
    assert (event.host, event.path, event.message) == ("\\xffbox", "/d/\\xff", "bad \\xfe")
    raw = ErrorEvent("\udcffh", "\udcff", "k", "m", "h")  # made directly: encoding copes
    assert json.loads(encode_event(raw))["host"] == "\\xffh"
    done = HostDone("\udcffh", "failed", FileCounts(), 0, error="\udcffh: down")
    for ev in (
        Progress("\udcffh", "listing", 0, 0, 0, 0),
        done,
        Summary([done], FileCounts(), 0, 0, 1, 1, False, 0.0),
    ):
        assert "\\xffh" in encode_event(ev).decode()
    assert json_safe("plain") == "plain"


@given(st.text())
def test_every_event_is_one_line_for_every_line_splitter(text: str) -> None:
    """``--json`` is one object per line also for Python's ``str.splitlines`` and JavaScript,
    which split at U+0085, U+2028 and U+2029 too: a host's file name or message may hold
    them, and ``sync --json``'s events wrote them raw."""
    shown = json_safe(text)
    for event in (
        Planned("h", text, "new", 1),
        ErrorEvent("h", text, "io", f"cannot read {text}", text),
    ):
        line = encode_event(event).decode()
        assert line.splitlines() == [line]
        back = decode_event(line)
        assert back.path == shown
        assert not isinstance(back, ErrorEvent) or back.hint == shown


def test_sessions_list_json_is_one_line_per_session_for_every_line_splitter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "mirror"
    title = "one\x85two\u2028three\u2029four"
    facts = SessionFacts(session_id="s", bytes=10, lines=1, user=1, title=title)
    write_facts_index(dest, [("h0", b"agents/a/sessions/s\xc2\x85.jsonl", facts)])
    code, out, err = cli(["sessions", "list", "--json", "-d", str(dest)], capsys)
    assert code == 0, err
    (line,) = out.splitlines()
    row = json.loads(line)
    assert row["title"] == title and row["path"] == "agents/a/sessions/s\x85.jsonl"


def test_sync_json_with_undecodable_host_and_dest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        ["sync", "\udcffbox", "--format", "jsonl", "--dest", str(tmp_path / "m"), "--json"], capsys
    )
    assert code == 2 and "\\xffbox" in err
    event = decode_event(out.splitlines()[0])
    assert isinstance(event, ErrorEvent) and event.host == "\\xffbox"
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    dest = os.fsdecode(os.fsencode(blocker) + b"/\xff")
    code, out, err = cli(["sync", "rs@127.0.0.1:1", "--dest", dest, "--json"], capsys)
    assert code == 2 and "Traceback" not in err  # an unusable destination: a usage error
    events = [decode_event(line) for line in out.splitlines()]
    assert isinstance(events[0], ErrorEvent) and events[0].path == f"{blocker}/\\xff"
    # The human output copes as well.
    code, out, err = cli(["sync", "\udcffbox", "--format", "jsonl", "--dest", "m"], capsys)
    assert code == 2 and "\\xffbox" in err


# -- 11. | head on every command that prints ---------------------------------------------------


PRINTING_COMMANDS = (
    ["sessions", "show", "h0", "long", "--page-size", "2000"],
    ["sessions", "show", "h0", "long", "--page-size", "2000", "--json"],
    ["sessions", "list"],
    ["sessions", "list", "--json"],
    ["sessions", "stats"],
    ["sessions", "stats", "--json"],
    ["index", "rebuild"],
    ["index", "rebuild", "--json"],
)


def test_commands_into_a_closed_pipe_exit_0(mirror: Path) -> None:
    dest = ["-d", str(mirror)]
    for args in PRINTING_COMMANDS:
        code, err = into_closed_pipe([*args, *dest])
        assert code == 0, (args, err)
        assert "Traceback" not in err and "BrokenPipe" not in err


def test_show_piped_to_head_exits_0(mirror: Path) -> None:
    argv = [sys.executable, "-m", "remote_sync.cli", "sessions", "show", "h0", "long"]
    proc = subprocess.Popen(
        [*argv, "--page-size", "2000", "-d", str(mirror)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"h0 ")
    proc.stdout.close()  # `| head -1`: far more than a pipe's buffer is still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err


def into_a_full_disk(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with its stdout on a full disk (``>>log`` on a full /var, as cron runs it):
    /dev/full, where every write fails with ENOSPC."""
    with open("/dev/full", "wb") as full:
        return subprocess.run(
            [sys.executable, "-m", "remote_sync.cli", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
            **kwargs,
        )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_commands_whose_output_cannot_be_written_exit_1_and_say_so(mirror: Path) -> None:
    """A listing written to a full disk ended in a traceback (OSError: No space left on
    device): unlike a reader that closed the pipe, the output a script reads is lost."""
    dest = ["-d", str(mirror)]
    for args in PRINTING_COMMANDS:
        done = into_a_full_disk([*args, *dest])
        err = done.stderr.decode()
        assert done.returncode == 1, (args, err)
        assert "Traceback" not in err, (args, err)
        assert "cannot write the output: No space left on device" in err, (args, err)
        assert "free space on the disk the output is redirected to" in err, (args, err)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_sync_whose_report_cannot_be_written_exits_1(fleet: SSHFleet, tmp_path: Path) -> None:
    """`sync --json >>log` on a full disk exited 0 with every event lost: a script (or cron's
    exit status check) read a success whose summary nobody could see. The mirror is still
    made whole (reporting never costs the run its work), and a failed sync keeps its code."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    make_openclaw_tree(fleet, "h0", sessions=3)
    dest = tmp_path / "mirror"
    for extra in (["--json"], []):
        done = into_a_full_disk(["sync", "-I", str(inv), "-d", str(dest), *extra])
        err = done.stderr.decode()
        assert done.returncode == 1, (extra, err)
        assert "Traceback" not in err and "cannot write the output" in err, (extra, err)
        assert "the sync went on to its end, but its report is incomplete" in err, err
        assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
    # A host that fails keeps the sync's own exit code, 1, and a usage error its 2.
    fleet.stop("h0")
    done = into_a_full_disk(["sync", "-I", str(inv), "-d", str(dest), "--json"])
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
    done = into_a_full_disk(["sync", "-I", str(inv), "-d", str(dest), "--concurrency", "0"])
    assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_json_usage_error_or_early_cancel_on_a_full_disk_keeps_its_exit_code() -> None:
    """The two error events written outside any command (a usage error's, under --json, and
    a Ctrl-C's during the load) ended in an OSError traceback when stdout was on a full disk,
    where every other error event is let go: the exit code and stderr still say it."""
    done = into_a_full_disk(["sync", "--json", "--no-such-option"])
    err = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert "remote-sync sync: error: " in err, err
    code = (
        "import os; from remote_sync.cli import report_cancelled_start; "
        "os._exit(report_cancelled_start(True))"
    )
    with open("/dev/full", "wb") as full:
        cancelled = subprocess.run(
            [sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    assert cancelled.returncode == 130, cancelled.stderr
    assert b"Traceback" not in cancelled.stderr, cancelled.stderr


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_a_locale_that_is_not_utf8_gets_escapes_not_a_traceback(
    tmp_path: Path, encoding: str
) -> None:
    """In an 8-bit locale (LANG=en_US.ISO-8859-1, which Python does not take for UTF-8 as it
    takes LANG=C), `sessions list` and `show` ended in a UnicodeEncodeError traceback at the
    first title with a character the locale has no byte for. Such a character is now written
    as an escape; what the locale can write is written in it, and --json stays UTF-8."""
    dest = tmp_path / "mirror"
    make_mirror(dest, {b"agents/a1/sessions/s.jsonl": transcript("s", 2, text="naïve ✓")})
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    listed = process(["sessions", "list", "-d", str(dest)], env=env)
    shown = process(["sessions", "show", "h0", "s", "-d", str(dest)], env=env)
    for done in (listed, shown):
        err = done.stderr.decode(encoding, "replace")
        assert done.returncode == 0 and "Traceback" not in err, err
        out = done.stdout.decode(encoding)
        assert "\\u2713" in out, out
        assert ("naïve" if encoding == "latin-1" else "na\\xefve") in out, out
    as_json = process(["sessions", "list", "--json", "-d", str(dest)], env=env)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["title"].startswith("naïve ✓ 0")


# -- 7a / 12. remote listings: failed hosts and filters ----------------------------------------


def fake_row(host: str, sid: str, *, messages: int = 3, last: str | None = None) -> SessionRow:
    return SessionRow(
        host, f"agents/a/sessions/{sid}.jsonl", "openclaw", "a", sid, 600 if messages else 10,
        messages + 1, messages, 1, messages - 1 if messages else 0, 0, 0, 0, 0, 0, 0, 0, 0,
        None, [], last, last, None, 0, "live", "valuable" if messages else "empty",
    )  # fmt: skip


@pytest.fixture
def fake_remote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[Host], Path]:
    """Three inventory hosts whose listings come from a stand-in: h0 and h2 answer, h1 is
    unreachable. Returns the hosts and the inventory file."""
    inv = tmp_path / "inventory.toml"
    inv.write_text(
        "".join(
            f'[[hosts]]\nname = "{h}"\naddress = "127.0.0.1"\nport = 1\nroot = "/r"\n'
            for h in ("h0", "h1", "h2")
        )
    )
    rows = {
        "h0": [
            fake_row("h0", "a", last="2026-11-20T10:00:00.000Z"),
            fake_row("h0", "b", messages=0),
        ],
        "h2": [fake_row("h2", "c", last="2026-11-21T10:00:00.000Z")],
    }

    async def batches(
        pool: Any,
        host: Host,
        *,
        batch_size: int,
        token: Any,
        now: datetime,
        idle_timeout: float | None,
    ) -> AsyncIterator[list[SessionRow]]:
        if host.name == "h1":
            raise HostUnreachableError("connection refused", host=host.name)
        for row in rows[host.name]:
            yield [row]

    monkeypatch.setattr(remote_index, "stream_remote_sessions", batches)
    return load_inventory(inv).hosts, inv


def test_library_remote_listing_keeps_the_other_hosts(
    fake_remote: tuple[list[Host], Path],
) -> None:
    hosts, _ = fake_remote
    events: list[object] = []
    errors: list[RemoteSyncError] = []
    rows = anyio.run(
        lambda: api.list_sessions(remote=True, hosts=hosts, emit=events.append, errors=errors)
    )
    assert sorted(r.session_id for r in rows) == ["a", "b", "c"]
    assert [e.host for e in errors] == ["h1"]
    failed = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.host, e.kind) for e in failed] == [("h1", "unreachable")]
    # Without `errors`, every host is still read, then the failure is raised.
    seen: list[SessionRow] = []

    async def stream() -> None:
        async for batch in api.stream_sessions(remote=True, hosts=hosts):
            seen.extend(batch)

    with pytest.raises(HostUnreachableError):
        anyio.run(stream)
    assert sorted(r.session_id for r in seen) == ["a", "b", "c"]


def test_library_remote_listing_applies_the_filters(
    fake_remote: tuple[list[Host], Path],
) -> None:
    hosts, _ = fake_remote

    def listing(**filters: Any) -> list[str]:
        rows = anyio.run(lambda: api.list_sessions(remote=True, hosts=hosts, errors=[], **filters))
        return [r.session_id for r in rows]

    assert listing(host="nope", klass="empty", limit=1) == []
    assert listing(host="h0") == ["a", "b"]
    assert listing(klass="empty") == ["b"]
    assert listing(since="2026-11-21") == ["c"]
    assert listing(sort="-last_ts") == ["c", "a", "b"]  # missing values last
    assert listing(limit=1) == ["c"]  # the most recent, as over the index
    assert listing(sort="session_id", limit=2) == ["a", "b"]
    with pytest.raises(ConfigError, match="cannot sort"):
        listing(sort="bogus")
    with pytest.raises(ConfigError, match="out of range"):
        listing(since="99999999d")


def test_a_remote_listing_works_out_its_filters_once_not_once_per_batch(
    fake_remote: tuple[list[Host], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instants a listing compares with (``since``'s, the class's age limit) are worked
    out once per listing, however many batches the hosts send (here one per row), with the
    same rows kept."""
    from remote_sync.index import query

    hosts, _ = fake_remote
    made: list[datetime] = []
    real = query.format_instant

    def counted(value: datetime) -> str:
        made.append(value)
        return real(value)

    monkeypatch.setattr(query, "format_instant", counted)

    def listing(**filters: Any) -> tuple[list[str], int]:
        made.clear()
        rows = anyio.run(
            lambda: api.list_sessions(
                remote=True, hosts=hosts, errors=[], since="2026-11-20", **filters
            )
        )
        return sorted(r.session_id for r in rows), len(made)

    one_batch, three_batches = listing(host="h2"), listing()
    assert one_batch[0] == ["c"] and three_batches[0] == ["a", "c"]
    assert three_batches[1] == one_batch[1]


def test_cli_remote_list_reports_a_failed_host_and_prints_the_others(
    fake_remote: tuple[list[Host], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, inv = fake_remote
    base = ["sessions", "list", "--remote", "-I", str(inv)]
    code, out, err = cli([*base, "--json"], capsys)
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x.get("session_id") for x in lines[:3]] == ["c", "a", "b"]
    assert lines[3]["type"] == "error" and lines[3]["host"] == "h1"
    assert lines[3]["kind"] == "unreachable" and len(lines) == 4
    assert "remote-sync: h1: connection refused" in err
    code, out, err = cli(base, capsys)
    assert code == 1 and "h0" in out and "h2" in out and "h1: connection refused" in err
    code, out, err = cli([*base, "--json", "--class", "empty", "--host", "h0"], capsys)
    assert code == 0 and [json.loads(line)["session_id"] for line in out.splitlines()] == ["b"]


def test_dest_with_remote_is_a_usage_error(
    fake_remote: tuple[list[Host], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was ignored without a word (the hosts were read, not that mirror), as the library's
    dest with remote=True; $REMOTE_SYNC_DEST, a default, is not in the way."""
    _, inv = fake_remote
    remote = ["--remote", "-I", str(inv), "--dest", str(tmp_path / "mirror")]
    for args in (["sessions", "list", *remote], ["sessions", "show", "h0", "a", *remote]):
        code, out, err = cli([*args, "--json"], capsys)
        assert code == 2 and "--dest does not apply with --remote" in err, err
        event = decode_event(out.splitlines()[0])
        assert isinstance(event, ErrorEvent) and event.kind == "config"
        assert "drop --dest to ask the hosts, or --remote to read the mirror" in err
    monkeypatch.setenv("REMOTE_SYNC_DEST", str(tmp_path / "mirror"))
    code, out, err = cli(["sessions", "list", "--remote", "-I", str(inv), "--host", "h0"], capsys)
    assert code == 0 and "h0" in out, err


def test_remote_list_with_an_unreachable_host_over_ssh(
    fleet: SSHFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml")
    make_openclaw_tree(fleet, "h0", sessions=3)
    fleet.stop("h1")
    code, out, err = cli(["sessions", "list", "--remote", "-I", str(inv), "--json"], capsys)
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    rows = [x for x in lines if "type" not in x]
    assert len(rows) == 6 and {r["host"] for r in rows} == {"h0"}
    assert [(x["host"], x["type"]) for x in lines if "type" in x] == [("h1", "error")]
    assert "h1" in err
    hosts = load_inventory(inv).hosts
    picked = anyio.run(
        lambda: api.list_sessions(remote=True, hosts=hosts[:1], host="nope", klass="empty", limit=1)
    )
    assert picked == []
    limited = anyio.run(lambda: api.list_sessions(remote=True, hosts=hosts[:1], limit=2))
    assert len(limited) == 2
    # Out-of-range counts (5.) straight from the host too: bounded, not an OverflowError.
    huge = "99999999999999999999"
    show = ["sessions", "show", "h0", "sess-0-0", "--remote", "-I", str(inv), "--json"]
    for extra in (["--tail", huge], ["--head", huge], ["--page", huge], ["--page-size", huge]):
        code, out, err = cli([*show, *extra], capsys)
        assert code == 0 and "Traceback" not in err, (extra, err)
        assert len(out.splitlines()) == (0 if extra[0] == "--page" else 20)


@pytest.fixture(autouse=True)
def _no_env_dest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("REMOTE_SYNC_DEST", raising=False)
    yield


def test_a_command_started_with_stdout_closed_writes_into_no_file_it_opens(
    mirror: Path, tmp_path: Path
) -> None:
    """Started with stdout closed (``>&-``), a listing ended in a traceback (Python leaves
    sys.stdout None), and a file the run opened could take descriptor 1, where whatever went
    to "stdout" landed. Descriptor 1 is /dev/null instead, as ssh makes it: the listing runs
    as with ``>/dev/null``, and an error is still said on stderr."""
    for args, code in (
        (["sessions", "list", "-d", str(mirror)], 0),
        (["sessions", "list", "--json", "-d", str(mirror)], 0),
        (["sessions", "list", "--json", "-d", str(tmp_path / "none")], 2),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "remote_sync.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.close(1),
            timeout=120,
            check=False,
        )
        err = done.stderr.decode()
        assert done.returncode == code, (args, err)
        assert "Traceback" not in err, (args, err)
        assert (code == 2) == ("no mirror at" in err), (args, err)
    # In the process itself: the descriptor is /dev/null, and the next file opened is not 1.
    probe = (
        "import os, sys; from remote_sync import cli; cli._open_closed_standard_descriptors();"
        "f = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY);"
        "print(f, os.readlink('/proc/self/fd/1'), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "opened")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=60,
        check=False,
    )
    number, target = done.stderr.decode().split()
    assert int(number) > 2 and target == os.devnull, done.stderr


def test_every_error_class_has_the_exit_code_its_class_says() -> None:
    """Exit codes go by an error's kind, which names its class exactly: a subclass of
    ConfigError (or of LockedError) without a kind of the same code would exit 1."""
    from remote_sync import errors
    from remote_sync.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_LOCKED, EXIT_USAGE
    from remote_sync.cli.common import exit_code

    def subclasses(cls: type[errors.RemoteSyncError]) -> Iterator[type[errors.RemoteSyncError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from subclasses(sub)

    for cls in subclasses(errors.RemoteSyncError):
        expected = (
            EXIT_USAGE
            if issubclass(cls, errors.ConfigError)
            else EXIT_LOCKED
            if issubclass(cls, errors.LockedError)
            else EXIT_CANCELLED
            if issubclass(cls, errors.TransferCancelledError)
            else EXIT_FAILED
        )
        assert exit_code(cls("x").kind) == expected, cls
