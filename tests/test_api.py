"""Tests of the async library API's contract (``remote_sync.api``).

Covers what a program relies on beyond the CLI's behaviour: type hints that resolve at run
time, explicit keyword options (a misspelt one is a TypeError before anything is read, written
or contacted, and an error for mypy), the reads of a mirror (``read_session`` with ``dest``,
``session_stats``) giving what the CLI's ``sessions show`` and ``stats`` give, in a worker
thread that a cancel stops waiting for, and error messages that name the argument a library
caller passed as well as the CLI's option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import typing
from collections.abc import Callable, Coroutine
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import pytest
import test_sessions_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from synchelp import make_openclaw_tree, write_inventory
from test_sessions_cli import NOW, make_mirror, openclaw_session

import remote_sync
from remote_sync import api, apicall, sessionread
from remote_sync.cancel import CancelRegistry
from remote_sync.cli import main
from remote_sync.errors import (
    ArgumentError,
    ConfigError,
    DestinationError,
    HostUnreachableError,
    LockedError,
    TransferCancelledError,
)
from remote_sync.events import ErrorEvent, Progress
from remote_sync.formats import FORMATS
from remote_sync.index import query
from remote_sync.index.facts import Message
from remote_sync.index.show import ShowResult, show_session
from remote_sync.index.update import rebuild_index
from remote_sync.inventory import Host, Source, load_inventory
from remote_sync.mirror.control import LockHolder
from remote_sync.mirror.state import MirrorState
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import PoolSettings
from remote_sync.ssh.remote import checked_idle_timeout

LONG = "agents/main/sessions/long-0001.jsonl"

#: The fixture of an index written directly (that module's ``specs()``), shared.
index_dest = test_sessions_cli.index_dest


def nowhere(name: str = "nowhere") -> Host:
    """A host nothing listens for (the discard port): contacting it would fail the test."""
    return Host(name, Endpoint("127.0.0.1", port=9), Source("openclaw", "/x", ("*",)))


@pytest.fixture
def show_dest(tmp_path: Path) -> Path:
    dest = tmp_path / "mirror"
    files = {
        LONG: openclaw_session("long-0001", 1000),
        "agents/main/sessions/short.jsonl": openclaw_session("short", 3),
    }
    make_mirror(dest, "h0", "openclaw", files)
    rebuild_index(dest)
    return dest


# -- signatures ---------------------------------------------------------------------------------


def test_every_public_function_has_type_hints_that_resolve() -> None:
    """``typing.get_type_hints`` (pydantic, typer, docs tools) on each public function: no name
    is left to the type checker alone."""
    for name in api.__all__:
        public = getattr(api, name)
        hints = typing.get_type_hints(public)
        assert isinstance(public, type) or "return" in hints, name
    assert typing.get_type_hints(api.read_session)["return"] is ShowResult
    assert typing.get_type_hints(api.list_sessions)["return"] == list[query.SessionRow]


def test_the_api_and_a_sync_import_no_reader_of_a_show() -> None:
    """Importing the API leaves the engine, the readers of a listing or show and the CLI's
    renderer unimported, and importing the fleet's run a sync starts leaves the readers and
    the renderer so (start-up time): the result types live in light modules."""
    code = textwrap.dedent(
        """
        import sys
        import remote_sync.api
        late = (
            "remote_sync.index.show",
            "remote_sync.index.remote",
            "remote_sync.index.remote_show",
            "rich",
        )
        engine = ("remote_sync.mirror.fleet", "remote_sync.mirror.engine", *late)
        print(sorted(m for m in engine if m in sys.modules))
        import remote_sync.mirror.fleet
        print(sorted(m for m in late if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[]", "[]"]


def keywords(function: Any) -> dict[str, Any]:
    """The keyword parameters of ``function`` and their defaults."""
    parameters = inspect.signature(function).parameters.values()
    assert all(p.kind is not p.VAR_KEYWORD for p in parameters), function
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def test_options_are_explicit_keywords_named_and_defaulted_as_the_engine_and_index() -> None:
    """No ``**options``: each option has its name and default where the engine (SyncOptions)
    and the index's queries define them, so the two cannot drift apart."""
    from remote_sync.mirror.engine import SyncOptions

    engine = {
        f.name: PoolSettings() if f.name == "pool" else f.default
        for f in dataclasses.fields(SyncOptions)
        if f.name != "dest"
    }
    sync = keywords(api.sync)
    assert {name: sync[name] for name in engine} == {**engine, "pool": None}
    assert dataclasses.fields(SyncOptions)[0].name == "dest"

    listing = keywords(api.stream_sessions)
    index = keywords(query.query_sessions)
    # Over the index, no sort means the index's default; from hosts, the order they arrive in.
    assert index.pop("sort") == query.DEFAULT_SORT and listing["sort"] is None
    assert {name: listing[name] for name in index} == index
    assert keywords(api.list_sessions) == listing

    stats = keywords(api.session_stats)
    index_stats = keywords(query.session_stats)
    assert {name: stats[name] for name in index_stats} == index_stats
    assert stats["by"] == inspect.signature(query.session_stats).parameters["by"].default

    shown, read = (inspect.signature(f).parameters for f in (api.show_session, api.read_session))
    assert [(p.name, p.kind, p.default) for p in shown.values()] == [
        (p.name, p.kind, p.default) for p in read.values()
    ]
    hints = typing.get_type_hints(api.read_session)
    assert typing.get_type_hints(api.show_session) == {**hints, "return": list[Message]}

    # The remote reads take the pool's settings as sync does (they had no say in them).
    pool = typing.get_type_hints(api.sync)["pool"]
    for function in (api.stream_sessions, api.list_sessions, api.read_session, api.show_session):
        assert keywords(function)["pool"] is None, function
        assert typing.get_type_hints(function)["pool"] == pool, function


def test_a_misspelt_keyword_is_a_type_error_at_the_call(tmp_path: Path) -> None:
    """For every entry point, as for a plain ``async def``: at the call, before a coroutine or
    generator exists (nothing to await, no "never awaited" warning); no host is contacted,
    nothing is written. The functions derived from others (``list_sessions``,
    ``show_session``) raised it only once awaited, and they and ``session_stats`` name
    themselves in it."""
    host = nowhere()
    dest = tmp_path / "mirror"
    calls: list[tuple[str, str, Any]] = [
        ("sync", "concurency", lambda: api.sync([host], dest, concurency=2)),
        ("stream_sessions", "hots", lambda: api.stream_sessions(remote=True, hots="x")),
        ("list_sessions", "limt", lambda: api.list_sessions(remote=True, hosts=[host], limt=1)),
        ("read_session", "haed", lambda: api.read_session(host, "s", haed=1)),
        ("show_session", "haed", lambda: api.show_session(host, "s", haed=1)),
        ("session_stats", "hots", lambda: api.session_stats(dest=dest, hots="h0")),
        ("list_sessions", "positional", lambda: api.list_sessions(dest)),
    ]
    for name, typo, call in calls:
        with pytest.raises(TypeError, match=typo) as info:
            call()
        assert str(info.value).startswith(f"{name}()"), info.value
    assert not dest.exists()


def test_the_filters_are_defined_once_and_spelt_out_as_keywords() -> None:
    """``SessionFilters`` (and ``ListingOptions``, with sort and limit) define the filter
    keywords once; each function that takes them shows them as keyword-only parameters
    (default None, the TypedDict's type), so ``help`` and ``inspect`` show what to pass. A
    derived function stays a coroutine function (where Python can say so: 3.12+)."""
    filters = typing.get_type_hints(api.SessionFilters)
    listing = typing.get_type_hints(api.ListingOptions)
    assert set(listing) - set(filters) == {"sort", "limit"}
    for function, options in (
        (api.stream_sessions, listing),
        (api.list_sessions, listing),
        (api.session_stats, filters),
    ):
        parameters = inspect.signature(function).parameters
        hints = typing.get_type_hints(function)
        for name, hint in options.items():
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (function, name)
            assert parameters[name].default is None and hints[name] == hint, (function, name)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(api.list_sessions)
        assert inspect.iscoroutinefunction(api.show_session)


def test_mypy_flags_a_misspelt_keyword(tmp_path: Path) -> None:
    """The point of explicit keywords: the type checker catches the typo."""
    pytest.importorskip("mypy")
    (tmp_path / "caller.py").write_text(
        textwrap.dedent(
            """
            from remote_sync import api


            async def main() -> None:
                await api.sync([], "m", concurency=2)
                await api.list_sessions(dest="m", limt=3)
                await api.show_session("h0", "s", dest="m", haed=3)
                await api.session_stats(dest="m", hots="h0")
                rows = await api.list_sessions(dest="m", limit=3, sort="-cost")
                reveal_type(rows)
                await api.list_sessions(dest="m", limit="3")
                async for _ in api.stream_sessions(dest="m", klass=1):
                    pass
                await api.session_stats(dest="m", since=7, state=None, now=None)
                filters: api.SessionFilters = {"host": "h0", "since": "7d"}
                await api.session_stats(dest="m", **filters)
                await api.list_sessions(dest="m", sort="-cost", **filters)
            """
        )
    )
    root = Path(remote_sync.__file__).parent.parent
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(
        [*command, "caller.py"],
        cwd=tmp_path,  # not the project's configuration: this file alone
        env={**os.environ, "MYPYPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["6", "7", "8", "9", "12", "13", "15"], (
        done.stdout
    )
    # (mypy before 1.11 spells it "builtins.list")
    revealed = r'Revealed type is "(builtins\.)?list\[remote_sync\.index\.query\.SessionRow\]"'
    assert re.search(revealed, done.stdout), done.stdout


# -- reading a mirror -----------------------------------------------------------------------------


async def test_read_session_from_a_mirror_is_what_sessions_show_reads(show_dest: Path) -> None:
    """With ``dest``: the mirror's copy, as ``sessions show --dest`` reads it (page 1 when no
    part is chosen), for a host named or given as a Host; progress as for a remote read."""
    for how in ({"page": 1}, {"head": 5}, {"tail": 7}, {"page": 3, "page_size": 40}):
        _row, expected = show_session(show_dest, "h0", "long-0001", **how)
        assert await api.read_session("h0", "long-0001", dest=show_dest, **how) == expected
    _row, first_page = show_session(show_dest, "h0", LONG, page=1)
    events: list[Progress] = []
    result = await api.read_session("h0", LONG, dest=show_dest, emit=events.append)
    assert result == first_page and (result.first, result.total) == (0, 1000)
    read = result.bytes_read
    assert events == [
        Progress("h0", "fetching", 0, 0, 0, 0),
        Progress("h0", "done", 50, 50, read, read),
    ]
    messages = await api.show_session(nowhere("h0"), "short", dest=show_dest, tail=2)
    assert [m.text.split()[:2] for m in messages] == [["msg", "1"], ["msg", "2"]]


async def test_a_mirror_read_runs_in_a_worker_thread_that_a_cancel_leaves(
    show_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the file is read the event loop goes on (here: it cancels the read through the
    registry), and the cancel returns at once, without waiting for the read to end."""
    from remote_sync.index import show

    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = show.show_session

    def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(60)
        try:
            return real(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(show, "show_session", held)
    registry = CancelRegistry()
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await api.read_session(
                "h0", "short", dest=show_dest, registry=registry, transfer_id="t"
            )
        except TransferCancelledError as exc:
            outcome.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            assert await anyio.to_thread.run_sync(started.wait, 60)
            assert registry.cancel("t")
        assert len(outcome) == 1 and not release.is_set() and len(registry) == 0
    finally:
        release.set()
    assert await anyio.to_thread.run_sync(finished.wait, 60)


async def test_a_host_name_without_a_mirror_is_refused(show_dest: Path) -> None:
    """A name is no address: without ``dest`` the Host is needed. A ConfigError, as every
    other misuse of the API (it was a plain ValueError, which one ``except RemoteSyncError``
    let through), naming the host and saying what to pass."""
    for call in (api.read_session, api.show_session):
        with pytest.raises(ConfigError) as refused:
            await call("h0", "short")
        assert refused.value.host == "h0"
        assert "no dest was given" in refused.value.message
        assert refused.value.hint.startswith("pass dest (--dest), the mirror")
        assert "or the Host itself" in refused.value.hint


def test_a_mirror_listing_runs_under_trio_too(show_dest: Path) -> None:
    """Only what reaches hosts needs asyncio (asyncssh); a mirror's listing is anyio's, and
    ran under trio until its first imports moved to asyncio's executor. Its reads go through
    anyio's worker threads, which pass trio the ``abandon_on_cancel`` of trio 0.23 on."""
    pytest.importorskip("trio", minversion="0.23")

    async def listing() -> int:
        return len(await api.list_sessions(dest=show_dest))

    assert anyio.run(listing, backend="trio") == 2


async def test_a_sync_with_no_concurrency_is_refused_as_a_listing_is(tmp_path: Path) -> None:
    """A listing refused concurrency=0 while a sync took it as 1 without a word."""
    for call in (
        lambda: api.sync([nowhere()], tmp_path / "m", concurrency=0),
        lambda: api.list_sessions(remote=True, hosts=[nowhere()], concurrency=0),
    ):
        with pytest.raises(ConfigError, match="concurrency must be"):
            await call()
    assert not (tmp_path / "m").exists()


async def test_a_sync_of_no_hosts_is_refused_as_a_listing_of_none_and_touches_nothing(
    tmp_path: Path,
) -> None:
    """A sync given no hosts made the destination and returned exit 0, where a remote
    listing of none is a ConfigError and the CLI refuses a sync that selects no host (exit
    2): nothing to do touches nothing, and says so."""
    dest = tmp_path / "m"
    for hosts in ([], ()):
        with pytest.raises(ConfigError) as refused:
            await api.sync(hosts, dest)
        assert refused.value.message == "no hosts to sync: hosts is empty"
        assert refused.value.hint.startswith("pass hosts, the Hosts to mirror")
    assert not dest.exists()


BAD_POOL_SETTINGS = [
    ("connect_timeout", -1),
    ("connect_timeout", float("nan")),
    ("login_timeout", "30"),
    ("keepalive_interval", -0.5),
    ("keepalive_count_max", 0),
    ("idle_close", float("-inf")),
    ("channels_per_host", 0),
    ("channels_per_host", 2.0),
    ("max_handshakes", True),
    ("window", 0),
    ("window", 2**32),
    ("window_budget", -1),
    ("min_window", 0),
    ("window_rate", -1),
    ("window_floor", 1.5),
    ("max_pktsize", 0),
    ("compression", 1),
    ("reconnect_backoff", float("inf")),
    ("record_new_host_keys", None),
]


@pytest.mark.parametrize(("name", "bad"), BAD_POOL_SETTINGS)
async def test_a_bad_pool_setting_is_refused_before_any_host_is_contacted(
    tmp_path: Path, name: str, bad: Any
) -> None:
    """``sync(hosts, dest, pool=PoolSettings(connect_timeout=-1))`` ran and exited 0: no
    field of the pool's settings was checked. Each is now, as the settings are made (so
    before any call, and at ``dataclasses.replace`` too): a ConfigError naming the field and
    what it takes."""
    default = getattr(PoolSettings(), name)
    for make in (
        lambda: PoolSettings(**{name: bad}),
        lambda: dataclasses.replace(PoolSettings(), **{name: bad}),
    ):
        with pytest.raises(ConfigError) as refused:
            await api.sync([nowhere()], tmp_path / "m", pool=make())
        assert refused.value.message.startswith(f"PoolSettings.{name} must be "), refused.value
        assert refused.value.message.endswith(f", not {bad!r}")
        assert refused.value.hint.endswith(f"leave it out for the default ({default!r})")
    assert not (tmp_path / "m").exists()


def test_the_pool_settings_take_what_means_something() -> None:
    """0 where it means something (asyncssh: no connect or login timeout, no keepalives;
    the pool: no idle close, no window sharing or sizing, no pause before a reconnect),
    ints for seconds, and the largest window SSH can say."""
    zeros = ("connect_timeout", "login_timeout", "keepalive_interval", "idle_close")
    PoolSettings(**dict.fromkeys(zeros, 0), window_budget=0, window_rate=0, reconnect_backoff=0)
    PoolSettings(connect_timeout=5, idle_close=float("inf"), window=2**32 - 1)


async def test_a_pool_that_is_not_pool_settings_is_refused_at_the_call(tmp_path: Path) -> None:
    """A dict given as ``pool`` failed each host later, on its first missing attribute."""
    bad: Any = {"connect_timeout": 1.0}
    for call in (
        lambda: api.sync([nowhere()], tmp_path / "m", pool=bad),
        lambda: api.list_sessions(remote=True, hosts=[nowhere()], pool=bad),
        lambda: api.read_session(nowhere(), "s", pool=bad),
    ):
        with pytest.raises(ConfigError, match="pool must be a PoolSettings or None, not dict"):
            await call()
    assert not (tmp_path / "m").exists()


#: A process that holds a destination's lock until its stdin closes, having written its
#: second argument into the lock file: another run, whatever pid it says it has.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, sys.argv[2].encode(), 0)
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_by_another_process(dest: Path, says: str) -> Any:
    """``dest``'s lock held by a child process whose lock file says ``says``."""
    with MirrorState(dest):  # a mirror, with its control directory
        pass
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(dest / ".remote-sync" / "lock"), says],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)


@pytest.mark.parametrize(
    ("says", "named"),
    [
        # Another pid namespace (a container sharing the volume, both pid 1) or another
        # machine of a network file system: our pid, another process's token.
        ("{pid} 0123456789abcdef0123456789abcdef other-box\n", "pid {pid} on other-box"),
        # An older remote-sync, which wrote its pid alone: never this process (this one
        # writes its token), whatever the pid.
        ("{pid}\n", "pid {pid}"),
        ("", "pid ?"),  # a holder that has not written itself in yet
    ],
)
async def test_a_holder_with_our_pid_elsewhere_is_another_run(
    tmp_path: Path, says: str, named: str
) -> None:
    """The lock file held a bare pid, and a holder with ours was taken for this process:
    two containers sharing a destination (both pid 1), or a run on another machine of a
    network file system, were told "another sync in this process". Only a holder with this
    process's token and pid is this process; any other is another run, named by its pid
    and host."""
    dest = tmp_path / "m"
    pid = os.getpid()
    with lock_held_by_another_process(dest, says.format(pid=pid)):
        with pytest.raises(LockedError) as refused:
            await api.sync([nowhere()], dest)
        with pytest.raises(LockedError) as refused_again:
            MirrorState(dest).open()
    expected = f"another remote-sync run ({named.format(pid=pid)}) is using this destination"
    assert refused.value.message == refused_again.value.message == expected
    assert refused.value.hint.startswith("wait for the other run to finish")


def test_the_lock_file_names_the_process_and_its_host_while_held(tmp_path: Path) -> None:
    """Its pid, a token of this process (drawn at import: what tells it from a process of
    another pid namespace or machine with the same pid) and the host's name; emptied as the
    lock is let go, so that a run finding the lock taken by one that has not written itself
    in yet is not told the lock is its own process's."""
    lock = tmp_path / "m" / ".remote-sync" / "lock"
    with MirrorState(tmp_path / "m"):
        pid, token, host = lock.read_text().rstrip("\n").split(" ")
        assert (pid, host) == (str(os.getpid()), "".join(socket.gethostname().split()))
        assert re.fullmatch("[0-9a-f]{32}", token)
    assert lock.read_bytes() == b""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_lock_file_reads_as_a_holder_that_is_not_this_process(data: bytes) -> None:
    """Whatever a lock file holds (another version's, a hand edit, a half-written line), it
    reads as a holder to name, never as this process nor an error; a line this version
    writes reads back as written."""
    holder = LockHolder.parse(data)
    assert holder.pid and not holder.is_this_process()
    message = holder.locked_error(Path("/m")).message
    assert message.startswith("another remote-sync run (pid ") and "\n" not in message
    ours = LockHolder.this_process()
    assert LockHolder.parse(ours.line() + data) == ours and ours.is_this_process()


async def test_a_second_sync_in_this_process_is_told_so(tmp_path: Path) -> None:
    """A library caller's second sync on a destination while its first runs was told
    "another remote-sync run (pid <its own pid>)", as if another process held the lock: it
    is told the run is its own."""
    dest = tmp_path / "m"
    # The state held open is what a first sync in this process holds while it runs.
    with MirrorState(dest), pytest.raises(LockedError) as refused:
        await api.sync([nowhere()], dest)
    assert refused.value.message == "another sync in this process is using this destination"
    assert refused.value.hint.startswith("await the first sync")
    assert str(os.getpid()) not in str(refused.value)


async def test_two_hosts_of_one_name_are_refused_before_anything_is_touched(
    tmp_path: Path,
) -> None:
    """Each host is a directory of the mirror and rows of its state: a sync given two Hosts
    of one name ran both rounds at once into that directory, each taking the other's files
    for rewrites (two sources under one name mixed, the state left holding whichever root
    came last, so that the next sync of the first was refused), and a listing gave every
    row twice. The inventory refuses such names (compared ignoring case, as a mirror on a
    case-insensitive disk would); a library caller is told the same, before any host is
    contacted or the destination made."""
    other = dataclasses.replace(nowhere("Nowhere"), source=Source("openclaw", "/y", ("*",)))
    for hosts in ([nowhere(), nowhere()], [nowhere(), other]):
        for call in (
            api.sync(hosts, tmp_path / "m"),
            api.list_sessions(remote=True, hosts=hosts),
        ):
            with pytest.raises(ConfigError, match="two hosts named") as refused:
                await call
            assert refused.value.host == hosts[1].name
            assert "hosts[0] and hosts[1]" in refused.value.message
            assert "a name of its own" in refused.value.hint
    assert not (tmp_path / "m").exists()


async def test_every_call_that_reaches_hosts_refuses_what_is_not_a_host(tmp_path: Path) -> None:
    """A sync or a remote listing given a name where a Host goes (``["box"]``, or ``"box"``,
    a sequence of one-letter "hosts") failed with an AttributeError from deep inside their
    checks; a show given no Host and no dest was told its host "is a name". Each is refused
    by the one check every call that reaches hosts makes, naming what to pass."""
    refusals = {
        "hosts[1] must be a Host, not str": (
            lambda: api.sync([nowhere(), "box"], tmp_path / "m"),  # type: ignore[list-item]
            lambda: api.list_sessions(remote=True, hosts=[nowhere(), "box"]),  # type: ignore[list-item]
        ),
        "hosts must be a sequence of Host, not str": (
            lambda: api.sync("box", tmp_path / "m"),
            lambda: api.list_sessions(remote=True, hosts="box"),
        ),
        "hosts must be a sequence of Host, not Host": (
            lambda: api.sync(nowhere(), tmp_path / "m"),  # type: ignore[arg-type]
            lambda: api.list_sessions(remote=True, hosts=nowhere()),  # type: ignore[arg-type]
        ),
        "host must be a Host, not NoneType": (
            lambda: api.read_session(None, "s"),  # type: ignore[arg-type]
            lambda: api.show_session(None, "s"),  # type: ignore[arg-type]
        ),
    }
    for message, calls in refusals.items():
        for call in calls:
            with pytest.raises(ArgumentError) as refused:
                await call()
            assert refused.value.message == message
            assert "load_inventory(path).hosts" in refused.value.hint
    assert not (tmp_path / "m").exists()


async def test_hosts_given_as_an_iterator_are_all_asked(tmp_path: Path) -> None:
    """The checks went through an iterator of hosts before the call read it: a sync or a
    listing of ``(h for h in hosts if ...)`` found it used up and did nothing, saying
    nothing was wrong. It is read once, and every host is asked (here: refused)."""
    summary = await api.sync((host for host in [nowhere()]), tmp_path / "m")
    assert (summary.exit_code, summary.hosts_failed) == (1, 1), summary
    errors: list[Any] = []
    rows = await api.list_sessions(remote=True, hosts=(host for host in [nowhere()]), errors=errors)
    assert rows == [] and [type(error) for error in errors] == [HostUnreachableError]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "60", math.inf, -math.inf, 10**400])
async def test_a_bad_idle_timeout_is_refused_before_any_host_is_contacted(
    tmp_path: Path, bad: Any
) -> None:
    """A negative idle_timeout failed every host with "no output for -1 s", and a NaN with
    an internal error from deep inside each host's round: a bad value is a ConfigError
    naming the argument and the option, before any host is contacted. Infinity is one too,
    as the CLI's ``--timeout inf`` is (the library took it, the CLI refused it): 0 is the
    one way to say "no limit", and the error says so."""
    for call in (
        lambda: api.sync([nowhere()], tmp_path / "m", idle_timeout=bad),
        lambda: api.list_sessions(remote=True, hosts=[nowhere()], idle_timeout=bad),
        lambda: api.read_session(nowhere(), "s", idle_timeout=bad),
    ):
        with pytest.raises(ConfigError, match=r"idle_timeout \(--timeout\) must be") as refused:
            await call()
        assert "or 0 for no limit" in refused.value.hint
    assert not (tmp_path / "m").exists()


async def test_a_mirror_read_refuses_the_tuning_a_host_read_refuses(show_dest: Path) -> None:
    """A listing or show of a mirror took any ``idle_timeout``, ``concurrency`` and ``pool``
    (it uses none of them): a program that passes its one set of settings to every call got
    its NaN timeout, its concurrency of 0 or its dict of pool settings refused only the day
    it read a host. Each call refuses them now, whatever it reads, as the README says."""
    calls = {
        "list": lambda **bad: api.list_sessions(dest=show_dest, **bad),
        "stream": lambda **bad: anext(api.stream_sessions(dest=show_dest, **bad)),
        "read": lambda **bad: api.read_session("h0", "short", dest=show_dest, **bad),
        "show": lambda **bad: api.show_session("h0", "short", dest=show_dest, **bad),
    }
    bad_values: list[tuple[str, Any, str]] = [
        ("idle_timeout", float("nan"), r"idle_timeout \(--timeout\) must be"),
        ("idle_timeout", -1, r"idle_timeout \(--timeout\) must be"),
        ("concurrency", 0, "concurrency must be a whole number"),
        ("pool", {"connect_timeout": 5}, "pool must be a PoolSettings"),
    ]
    for name, call in calls.items():
        for keyword, value, says in bad_values:
            if keyword == "concurrency" and name in ("read", "show"):
                continue  # a show has no concurrency
            with pytest.raises(ArgumentError, match=says):
                await call(**{keyword: value})
        assert await call(idle_timeout=0, pool=PoolSettings(connect_timeout=5)), name


@pytest.mark.parametrize("bad", [{}, "default", object()])
async def test_a_registry_that_is_no_cancel_registry_is_refused_at_the_call(
    show_dest: Path, tmp_path: Path, bad: Any
) -> None:
    """A ``registry=`` of the wrong type failed with an AttributeError about ``reserve``, a
    name the caller never wrote: it is an ArgumentError naming the argument, raised at the
    call as a misspelt keyword is, before any host is contacted or the mirror touched."""
    calls = [
        lambda: api.sync([nowhere()], tmp_path / "m", registry=bad),
        lambda: api.list_sessions(dest=show_dest, registry=bad),
        lambda: api.stream_sessions(dest=show_dest, registry=bad),
        lambda: api.read_session("h0", "short", dest=show_dest, registry=bad),
        lambda: api.show_session(nowhere(), "short", registry=bad),
    ]
    for call in calls:
        with pytest.raises(ArgumentError, match="registry must be a CancelRegistry or None"):
            call()  # not awaited: refused at the call
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("bad", [date(2026, 11, 21), 1_790_000_000.0, "2026-11-21"])
async def test_a_now_that_is_no_datetime_is_an_argument_error(show_dest: Path, bad: Any) -> None:
    """``now=`` of another type failed in a subtraction or in ``astimezone`` (a TypeError or
    an AttributeError naming neither the argument nor what to pass), over the index and
    straight from hosts alike: each is an ArgumentError naming ``now``."""
    calls = [
        lambda: api.list_sessions(dest=show_dest, now=bad),
        lambda: api.session_stats(dest=show_dest, now=bad),
        lambda: api.list_sessions(remote=True, hosts=[nowhere()], now=bad),
    ]
    for call in calls:
        with pytest.raises(ArgumentError, match="now must be a datetime or None"):
            await call()
    assert await api.list_sessions(dest=show_dest, now=NOW)


@pytest.mark.parametrize("bad", [True, "3", 2.0])
async def test_a_count_that_is_no_whole_number_is_refused_as_a_config_error(
    show_dest: Path, bad: Any
) -> None:
    """A listing's ``limit`` and a show's ``head``, ``tail``, ``page`` and ``page_size`` took
    ``True`` for 1, and a string or a float failed in a comparison's TypeError (from a
    remote show, before its check). Each is refused as ``batch_size`` is: a ConfigError
    naming it, before any host is contacted (the host below does not exist)."""
    calls = [
        lambda: api.list_sessions(dest=show_dest, limit=bad),
        lambda: api.list_sessions(remote=True, hosts=[nowhere()], limit=bad),
    ]
    for name in ("head", "tail", "page", "page_size"):
        calls += [
            lambda name=name: api.read_session("h0", "short", dest=show_dest, **{name: bad}),
            lambda name=name: api.read_session(nowhere(), "short", **{name: bad}),
        ]
    for call in calls:
        with pytest.raises(ConfigError, match="must be a whole number"):
            await call()


IDLE_TIMEOUTS = ["0", "0.0", "0.5", "120", "1e300", "inf", "-inf", "infinity", "nan", "-1", "1e999"]


@pytest.mark.parametrize("text", IDLE_TIMEOUTS)
def test_the_cli_and_the_library_take_the_same_idle_timeouts(text: str) -> None:
    """One rule for both, written once (``checked_idle_timeout``): 0 is no limit, any other
    finite number of seconds a limit; infinity, NaN and negatives are refused. The CLI
    refused ``--timeout inf`` while ``idle_timeout=math.inf`` was taken."""
    from remote_sync.cli import _seconds

    value = float(text)
    try:
        taken_by_the_cli = _seconds(text) == value
    except argparse.ArgumentTypeError as exc:
        taken_by_the_cli = False
        assert "must be 0 (no limit) or a finite number of seconds" in str(exc)
    try:
        taken_by_the_library = checked_idle_timeout(value) == value
    except ArgumentError:
        taken_by_the_library = False
    assert taken_by_the_cli == taken_by_the_library == (0 <= value < math.inf), text


@pytest.mark.parametrize("text", ["inf", "-1", "nan", "-2.50"])
def test_a_refused_timeout_tells_the_cli_user_to_pass_0_for_no_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """Refused by the library's rule, in the CLI's words: it said "idle_timeout (--timeout)
    must be ..., not -1.0 (... or 0 for no limit (None too, in the library))", a keyword
    and a None the CLI user has not, and a float they did not type."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sync", "me@box", "--dest", str(tmp_path / "m"), "--timeout", text])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (
        "argument --timeout: must be 0 (no limit) or a finite number of seconds, "
        f"not {text!r} (give how many seconds a remote command may send nothing, or 0 for no "
        "limit)\n"
    ) in err, err
    assert "idle_timeout" not in err and "None" not in err and "library" not in err
    assert not (tmp_path / "m").exists()


async def test_a_host_read_checks_its_tuning_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote listing and a show from a host checked their concurrency, idle timeout and
    pool twice: once themselves, then again among the checks of every call that reaches
    hosts. Once now, as in sync; a read of a mirror checks them once too."""
    calls: list[str] = []
    real = apicall.checked_tuning

    def counted(**tuning: Any) -> Any:
        calls.append("checked")
        return real(**tuning)

    async def no_listing(*args: Any) -> Any:
        return
        yield

    async def no_show(*args: Any) -> Any:
        raise ConfigError("not read: the test stops here")

    # Counted where each caller looks it up: the entry points' own calls, and reaching_hosts'.
    monkeypatch.setattr(api, "checked_tuning", counted)
    monkeypatch.setattr(apicall, "checked_tuning", counted)
    monkeypatch.setattr(api, "remote_sessions", no_listing)
    monkeypatch.setattr(api, "read_remote", no_show)
    assert await api.list_sessions(remote=True, hosts=[nowhere()], idle_timeout=5) == []
    assert calls == ["checked"]
    calls.clear()
    with pytest.raises(ConfigError, match="the test stops here"):
        await api.read_session(nowhere(), "s", idle_timeout=5)
    assert calls == ["checked"]


async def test_an_idle_timeout_of_zero_is_no_limit_as_the_hint_and_the_cli_say(
    fleet: Any, tmp_path: Path
) -> None:
    """The idle timeout's hint says "idle_timeout in the library; 0 or None: no limit", as
    ``--timeout 0`` is; the library took 0 for a limit of 0 s, and every host failed at once
    with "no output for 0 s"."""
    make_openclaw_tree(fleet, "h0", agents=1, sessions=2)
    host = load_inventory(write_inventory(fleet, tmp_path / "inv.toml", ["h0"])).hosts[0]
    summary = await api.sync([host], tmp_path / "m", idle_timeout=0)
    assert (summary.exit_code, summary.files.new) == (0, 3), summary
    errors: list[Any] = []
    listed = await api.list_sessions(remote=True, hosts=[host], idle_timeout=0, errors=errors)
    assert (len(listed), errors) == (2, [])
    shown = await api.show_session(host, "sess-0-1", tail=1, idle_timeout=0)
    assert len(shown) == 1


async def test_session_stats_are_those_of_sessions_stats(index_dest: Path) -> None:
    registry = CancelRegistry()
    db = query.open_index(index_dest)
    try:
        for by in query.STATS_KEYS:
            for filters in ({}, {"klass": "valuable"}, {"host": "h1", "since": "25d"}):
                expected = query.session_stats(db, by, now=NOW, **filters)  # type: ignore[arg-type]
                groups = await api.session_stats(
                    dest=index_dest,
                    by=by,  # type: ignore[arg-type]
                    now=NOW,
                    registry=registry,
                    **filters,
                )
                assert groups == expected, (by, filters)
    finally:
        db.close()
    assert (await api.session_stats(dest=index_dest, now=NOW))[0].key == "h0"
    assert len(registry) == 0
    with pytest.raises(ConfigError, match="cannot group by"):
        await api.session_stats(dest=index_dest, by="week")  # type: ignore[arg-type]


# -- errors speak to both callers -----------------------------------------------------------------


async def test_a_negative_limit_names_the_argument_and_the_option(index_dest: Path) -> None:
    """Over the index and from hosts (before any is contacted)."""
    for where in ({"dest": index_dest}, {"remote": True, "hosts": [nowhere()]}):
        with pytest.raises(ConfigError) as info:
            await api.list_sessions(limit=-1, **where)  # type: ignore[arg-type]
        assert info.value.message == "limit (--limit) must not be negative, got -1"


async def test_dest_with_remote_names_both_arguments_and_options(index_dest: Path) -> None:
    """The mirror at dest was ignored without a word (the hosts were read), while the CLI's
    ``--dest`` with ``--remote`` is a usage error too. Refused before any host is contacted."""

    async def streamed() -> None:
        async for _batch in api.stream_sessions(dest=index_dest, remote=True, hosts=[nowhere()]):
            pass

    for reading in (
        streamed,
        lambda: api.list_sessions(dest=index_dest, remote=True, hosts=[nowhere()]),
    ):
        with pytest.raises(ConfigError) as info:
            await reading()
        assert info.value.message.startswith(
            "dest (--dest) does not apply with remote=True (--remote)"
        )
        assert "pass dest to read the mirror's index, or remote=True" in info.value.hint


async def test_a_remote_listing_without_hosts_names_what_to_pass() -> None:
    """It listed nothing without a word, as if no host had a session; the CLI says "no hosts
    to ask" when its inventory and options select none."""
    events: list[object] = []

    async def streamed() -> None:
        async for _batch in api.stream_sessions(remote=True, emit=events.append):
            pass

    for reading in (streamed, lambda: api.list_sessions(remote=True, hosts=[])):
        with pytest.raises(ConfigError) as info:
            await reading()
        assert info.value.message == "no hosts to ask: hosts is empty"
        assert info.value.hint.startswith("pass hosts, the Hosts to read over SSH")
        assert "--inventory FILE" in info.value.hint
    assert events == []


async def test_a_mirror_listing_given_hosts_or_no_dest_names_what_to_pass(
    index_dest: Path,
) -> None:
    """Hosts given without remote=True were ignored without a word (the mirror listed, not
    them: the CLI refuses --inventory without --remote), and neither dest nor remote=True
    was a bare ValueError, which a caller catching the API's errors missed. Both are
    ConfigErrors naming the arguments, the options and what to pass."""
    for call in (
        api.list_sessions(dest=index_dest, hosts=[nowhere()]),
        api.list_sessions(hosts=[nowhere()]),
    ):
        with pytest.raises(ConfigError) as given_hosts:
            await call
        assert given_hosts.value.message == (
            "hosts (--inventory) apply only with remote=True (--remote): without it the "
            "mirror at dest is read"
        )
        assert "pass remote=True" in given_hosts.value.hint
    with pytest.raises(ConfigError) as nothing:
        await api.list_sessions()
    assert nothing.value.message == (
        "nothing to list: no dest (--dest) and no remote=True (--remote)"
    )
    assert "pass dest" in nothing.value.hint and "remote=True" in nothing.value.hint


async def test_a_bad_argument_is_still_a_value_error(index_dest: Path, tmp_path: Path) -> None:
    """A host's name without dest, and a listing of neither dest nor remote=True, raised
    ValueError until they became ConfigErrors, and a caller catching ValueError for them
    missed them from then on. The API's argument errors are ArgumentErrors: ConfigErrors
    (one ``except RemoteSyncError`` catches them) that are ValueErrors too. A ConfigError of
    a configuration file is not one (code reading ssh_configs catches asyncssh's
    ValueErrors around it)."""
    for call in (
        lambda: api.read_session("h0", "s"),
        lambda: api.list_sessions(),
        lambda: api.list_sessions(dest=index_dest, hosts=[nowhere()]),
        lambda: api.list_sessions(dest=index_dest, remote=True, hosts=[nowhere()]),
        lambda: api.list_sessions(remote=True),
        lambda: api.sync([], tmp_path / "m"),
        lambda: api.sync([nowhere()], tmp_path / "m", concurrency=0),
        lambda: api.sync([nowhere(), nowhere()], tmp_path / "m"),
        lambda: api.sync([nowhere()], tmp_path / "m", pool={}),  # type: ignore[arg-type]
        lambda: api.sync([nowhere()], tmp_path / "m", idle_timeout=-1),
    ):
        with pytest.raises(ValueError) as refused:
            await call()
        assert isinstance(refused.value, ConfigError) and refused.value.kind == "config"
    assert not issubclass(ConfigError, ValueError)


async def test_an_unknown_format_is_refused_as_a_bad_class_is(index_dest: Path) -> None:
    """format="nope" matched nothing without a word, while klass="nope" is a ConfigError."""
    known = ", ".join(sorted(FORMATS))  # the inventory's formats are the readers' formats
    for where in ({"dest": index_dest}, {"remote": True, "hosts": [nowhere()]}):
        with pytest.raises(ConfigError) as info:
            await api.list_sessions(format="nope", **where)  # type: ignore[arg-type]
        assert info.value.message == "unknown format 'nope'"
        assert info.value.hint == f"use one of {known}"
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        await api.session_stats(dest=index_dest, format="nope")
    assert len(await api.list_sessions(dest=index_dest, format="codex", now=NOW)) == 3


async def test_no_mirror_at_dest_names_the_argument_and_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    for reading in (
        lambda: api.list_sessions(dest=missing),
        lambda: api.read_session("h0", "s", dest=missing),
        lambda: api.session_stats(dest=missing),
    ):
        with pytest.raises(ConfigError, match="no mirror at") as info:
            await reading()
        assert info.value.hint.startswith("give dest (--dest DIR, or REMOTE_SYNC_DEST) ")


async def test_an_unknown_session_points_to_the_listing_of_both_callers(show_dest: Path) -> None:
    with pytest.raises(ConfigError, match="no session 'nope'") as info:
        await api.read_session("h0", "nope", dest=show_dest)
    hint = info.value.hint
    assert "`remote-sync sessions list --host h0`" in hint and "list_sessions(host='h0')" in hint


async def test_a_destination_that_is_a_file_names_the_argument_and_the_option(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "a-file"
    dest.write_bytes(b"")
    with pytest.raises(DestinationError) as info:
        await api.sync([nowhere()], dest)
    assert info.value.hint.startswith("give dest (--dest) a directory")


# -- the event loop keeps ticking -----------------------------------------------------------------

#: A program on an event loop whose first call of each kind meets a slow first import (here
#: made 0.4 s slower, as on a cold disk or a busy machine): a heartbeat task on the loop records
#: its largest gap, the import hook how long the import took. The API is imported before the
#: loop starts, as a program does.
FIRST_IMPORT = textwrap.dedent(
    """
    import asyncio, importlib.machinery, json, sys, tempfile, time
    slow, call = sys.argv[1], sys.argv[2]
    took = []

    class Slow:
        def find_spec(self, name, path, target=None):
            if name != slow:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run = spec.loader.exec_module

            def exec_module(module):
                start = time.perf_counter()
                time.sleep(0.4)
                run(module)
                took.append(time.perf_counter() - start)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Slow())
    from remote_sync import api
    from remote_sync.inventory import Host, Source
    from remote_sync.ssh.endpoint import Endpoint

    host = Host("h0", Endpoint("127.0.0.1", port=9), Source("openclaw", "/x", ("*",)))
    dest = tempfile.mkdtemp()
    calls = {
        "sync": lambda: api.sync([host], dest + "/mirror"),
        "list": lambda: api.list_sessions(remote=True, hosts=[host], errors=[]),
        "show": lambda: api.read_session(host, "s"),
        "stats": lambda: api.session_stats(dest=dest + "/none"),
    }

    async def main():
        gaps, done = [0.0], asyncio.Event()

        async def beat():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps[0], last = max(gaps[0], now - last), now

        ticking = asyncio.create_task(beat())
        await asyncio.sleep(0.05)
        try:
            await calls[call]()
        except Exception as exc:  # the host refuses, there is no mirror: beside the point
            print(type(exc).__name__, exc, file=sys.stderr)
        done.set()
        await ticking
        print(json.dumps({"gap": gaps[0], "import": took}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("call", "module"),
    [
        ("sync", "remote_sync.mirror.fleet"),
        ("list", "remote_sync.index.remote"),
        ("show", "remote_sync.index.remote_show"),
        ("stats", "anyio._backends._asyncio"),
    ],
)
def test_a_first_call_imports_what_it_needs_without_holding_the_loop(
    call: str, module: str
) -> None:
    """The engine (sync), the remote readers (a remote listing or show), anyio's asyncio
    backend (anything that runs in a worker thread) were imported on the event loop by the
    first call that needed them: every other task of the program stopped for the import's
    whole time. Now they are imported in a worker thread: the largest heartbeat gap stays
    well under the import's own time (compared with it, not with a number of seconds). On a
    shared machine another process may hold the CPU through one run's import (a small one
    takes a few ms): the best of three runs is judged, as an import on the loop fails all."""
    tries = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", FIRST_IMPORT, module, call],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        measured = json.loads(done.stdout)
        assert len(measured["import"]) == 1, (measured, done.stderr)  # imported by that call
        tries.append(measured)
        if measured["gap"] < measured["import"][0] / 2:
            return
    raise AssertionError(f"the loop was held for half an import or more each time: {tries}")


class Ticker:
    """A task of the program's that wakes every few milliseconds: ``gap`` is the longest it was
    kept waiting past its sleep, the time something held the event loop."""

    def __init__(self) -> None:
        self.gap = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            self.gap, last = max(self.gap, now - last - 0.005), now


#: How long the ssh_config's lookup takes below (a ``Match exec`` whose command is slow, as
#: one that asks a VPN or a password manager is): the event loop held that long per lookup.
SLOW_LOOKUP = 0.4


async def test_a_remote_listing_or_show_looks_its_host_up_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote listing's or show's connection looked its host (and its ProxyJump host) up in
    the ssh_config on the event loop: a ``Match exec`` command, the files read, the keys
    loaded stopped every other task of the program (a UI's) for as long. Now that lookup runs
    in a worker thread: a ticker on the loop is never held for half of one, and the errors are
    those the hosts gave before (the jump host refuses)."""
    from remote_sync.ssh import jumps, options, pool

    config = tmp_path / "ssh_config"
    config.write_text(
        "Host slow\n    HostName 127.0.0.1\n    Port 9\n    ProxyJump jump\n"
        "Host jump\n    HostName 127.0.0.1\n    Port 9\n"
        f'Match exec "sleep {SLOW_LOOKUP}"\n    ConnectTimeout 5\n'
    )
    host = Host(
        "slow", Endpoint("slow", ssh_config=(str(config),)), Source("openclaw", "/x", ("*",))
    )
    on_loop: list[bool] = []
    real_prepare = options.prepare

    def recording(endpoint: Endpoint, name: str) -> Any:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real_prepare(endpoint, name)

    for looked_up_in in (pool, jumps):  # each module that calls it
        monkeypatch.setattr(looked_up_in, "prepare", recording)
    ticker = Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        errors: list[Any] = []
        assert await api.list_sessions(remote=True, hosts=[host], errors=errors) == []
        with pytest.raises(HostUnreachableError) as shown:
            await api.read_session(host, "s")
        tg.cancel_scope.cancel()
    for error in (*errors, shown.value):
        assert isinstance(error, HostUnreachableError), error
        assert error.host == "slow" and error.message.startswith("ProxyJump host 'jump': ")
    assert on_loop == [False] * 4  # the target's lookup and its jump host's, twice
    assert ticker.gap < SLOW_LOOKUP / 2, ticker.gap


# -- a mirror listing off the event loop ---------------------------------------------------------


@pytest.fixture(scope="module")
def many_dest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror whose index holds 20,000 sessions (written directly, shared by the module)."""
    dest = tmp_path_factory.mktemp("many") / "mirror"
    test_sessions_cli.build_many(dest, MANY)
    return dest


MANY = 20_000


class RowsMade:
    """The index's rows made into SessionRows so far (``query._row`` counted), and on which
    threads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.threads: set[threading.Thread] = set()
        real = query._row

        def counting(r: Any) -> query.SessionRow:
            self.count += 1
            self.threads.add(threading.current_thread())
            return real(r)

        monkeypatch.setattr(query, "_row", counting)


async def test_a_mirror_listing_reads_the_index_off_the_loop(
    many_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing of a mirror ran its query and made its rows on the event loop: over 20,000
    sessions the query's sort alone held every other task of the program (a UI's redraws)
    for a tenth of a second. Now each batch is read in a worker thread: a ticker on the loop
    is never held for 50 ms (a bound far above a batch's own time, for a noisy machine).
    The batches are counted, not kept, as a UI that renders them does: 20,000 rows kept
    would have the garbage collector's full passes, which no thread avoids, in the gaps."""
    made = RowsMade(monkeypatch)
    ticker = Ticker()
    listed = 0
    # What the test process holds already (the modules of every earlier test) moved out of
    # the collector's sight, as a program that cares for its latency does: a full pass over
    # it takes a tenth of a second, in whichever thread allocates when it comes due.
    gc.freeze()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await anyio.sleep(0.02)
            async for batch in api.stream_sessions(dest=many_dest):
                listed += len(batch)
            tg.cancel_scope.cancel()
    finally:
        gc.unfreeze()
    assert listed == MANY == made.count
    assert ticker.gap < 0.05, ticker.gap
    assert threading.main_thread() not in made.threads


async def test_a_mirror_listing_reads_one_batch_at_a_time(
    many_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch comes as soon as its own rows are made, not the listing's, and nothing
    is read ahead of the caller: while it holds a batch no further row is made, so the rows
    in memory stay at a batch however large the index."""
    made = RowsMade(monkeypatch)
    batches = api.stream_sessions(dest=many_dest, batch_size=100)
    async with contextlib.aclosing(batches):
        first = await anext(batches)
        assert len(first) == 100 and made.count == 100
        await anyio.sleep(0.1)  # time enough for a read ahead
        assert made.count == 100
        assert len(await anext(batches)) == 100 and made.count == 200
    assert made.count == 200


async def test_a_mirror_listing_cancelled_between_batches_reads_no_further(
    many_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel through the registry while the caller holds a batch: the next step raises
    before any thread reads another row, and the index's connection is closed."""
    made = RowsMade(monkeypatch)
    opened = ConnectionsOpened(monkeypatch)
    registry = CancelRegistry()
    with pytest.raises(TransferCancelledError, match="stop clicked"):
        async for _batch in api.stream_sessions(
            dest=many_dest, batch_size=100, registry=registry, transfer_id="t"
        ):
            assert registry.cancel("t", "stop clicked")
    assert made.count == 100 and len(registry) == 0
    opened.assert_closed()


async def test_a_cancel_during_a_mirror_listings_query_stops_the_query(
    many_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel while the worker thread runs the listing's query (its sort, made slow here:
    seconds over the index) returns at once, and the thread does not go on with a query no
    one waits for: SQLite aborts it within a few hundred rows, and the thread closes the
    connection. Before, the query ran on the event loop, and the cancel could not even be
    sent until it had read every row."""
    calls, started = [0], threading.Event()
    real = query._held_state

    def slow(*args: Any) -> str:
        calls[0] += 1
        started.set()
        time.sleep(0.0002)
        return real(*args)

    monkeypatch.setattr(query, "_held_state", slow)
    opened = ConnectionsOpened(monkeypatch)
    registry = CancelRegistry()
    sent: list[float] = []

    async def cancel_once_reading() -> None:
        assert await anyio.to_thread.run_sync(started.wait, 30)
        sent.append(time.perf_counter())
        assert registry.cancel("t", "stop clicked")

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_once_reading)
        with pytest.raises(TransferCancelledError, match="stop clicked"):
            await api.list_sessions(dest=many_dest, registry=registry, transfer_id="t")
    assert time.perf_counter() - sent[0] < 1
    seen = -1
    while calls[0] != seen:  # until the thread's query makes no more calls
        seen = calls[0]
        await anyio.sleep(0.1)
    assert calls[0] < MANY / 4, calls
    opened.assert_closed()


class ConnectionsOpened:
    """The index connections a listing opened (``query.open_index``, which the state's
    reader looks up at each open, recorded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connections: list[sqlite3.Connection] = []
        real = query.open_index

        def recording(dest: Path, **kwargs: Any) -> sqlite3.Connection:
            db = real(dest, **kwargs)
            self.connections.append(db)
            return db

        monkeypatch.setattr(query, "open_index", recording)

    def assert_closed(self) -> None:
        assert len(self.connections) == 1
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            self.connections[0].execute("SELECT 1")


# -- progress a UI can follow ---------------------------------------------------------------------


async def test_a_show_that_fails_or_is_cancelled_ends_its_progress() -> None:
    """``fetching`` was the last event of a show whose host failed or that was cancelled
    through the registry: a UI following the events kept the host "fetching". Now its error
    event and ``done`` come before the error is raised, as for a listing's host."""
    events: list[Any] = []
    with pytest.raises(HostUnreachableError):
        await api.read_session(nowhere("h0"), "s", emit=events.append)
    assert [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    assert events[1].kind == "unreachable" and events[2] == Progress("h0", "done", 0, 0, 0, 0)

    events.clear()
    registry = CancelRegistry()
    with socket.socket() as silent:  # accepts, never answers: the handshake hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        host = dataclasses.replace(
            nowhere("mute"), endpoint=Endpoint("127.0.0.1", port=silent.getsockname()[1])
        )
        async with anyio.create_task_group() as tg:

            async def cancel_once_fetching() -> None:
                while not events:
                    await anyio.sleep(0.01)
                assert registry.cancel("show")

            tg.start_soon(cancel_once_fetching)
            with pytest.raises(TransferCancelledError):
                await api.read_session(
                    host, "s", emit=events.append, registry=registry, transfer_id="show"
                )
    assert [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    assert events[1].kind == "cancelled" and events[2].phase == "done"
    assert len(registry) == 0


# -- a cancel sent right after the call -------------------------------------------------------


async def test_a_cancel_sent_right_after_the_call_is_kept(index_dest: Path) -> None:
    """A UI's "stop" before the first batch: the transfer was registered only once the stream
    was iterated or the coroutine awaited, so ``registry.cancel`` found nothing (False) and
    the listing ran to its end. Now every call registers at the call, and the run honours
    the cancel (a remote one before any host is contacted: the host below does not exist)."""
    registry = CancelRegistry()
    calls: list[Any] = [
        lambda: api.stream_sessions(dest=index_dest, registry=registry, transfer_id="t"),
        lambda: api.stream_sessions(
            remote=True, hosts=[nowhere()], registry=registry, transfer_id="t"
        ),
        lambda: api.list_sessions(dest=index_dest, registry=registry, transfer_id="t"),
        lambda: api.list_sessions(
            remote=True, hosts=[nowhere()], registry=registry, transfer_id="t"
        ),
        lambda: api.read_session("h0", "s", dest=index_dest, registry=registry, transfer_id="t"),
        lambda: api.show_session(nowhere(), "s", registry=registry, transfer_id="t"),
        lambda: api.session_stats(dest=index_dest, registry=registry, transfer_id="t"),
    ]
    for call in calls:
        work = call()
        assert registry.active() == ["t"]
        assert registry.cancel("t", "stop clicked")
        with pytest.raises(TransferCancelledError, match="stop clicked"):
            if inspect.isasyncgen(work):
                async for _batch in work:
                    pass
            else:
                await work
        assert len(registry) == 0
    # A sync returns its summary: the host it never contacted reported cancelled (130).
    work = api.sync([nowhere()], index_dest.parent / "m", registry=registry, transfer_id="t")
    assert registry.cancel("t")
    summary = await work
    assert (summary.exit_code, summary.hosts_failed, len(registry)) == (130, 1, 0)


async def test_a_cancelled_read_says_what_a_read_is_not_what_a_sync_is(show_dest: Path) -> None:
    """A read's cancel (a listing, a show, the stats, the versions) came with a sync's hint,
    "what was committed is kept, a file cut midway is fetched again", in the error and in its
    event, which a UI shows as the reason: a read commits and fetches nothing. It says that a
    read changes nothing now, raised and reported alike."""
    registry = CancelRegistry()
    events: list[Any] = []

    def cancel_on_progress(event: Any) -> None:
        events.append(event)
        if isinstance(event, Progress) and event.phase in ("listing", "fetching"):
            registry.cancel("t")

    reads: list[tuple[bool, Any]] = [
        (
            True,
            lambda: api.list_sessions(
                dest=show_dest,
                batch_size=1,
                emit=cancel_on_progress,
                registry=registry,
                transfer_id="t",
            ),
        ),
        (
            True,
            lambda: api.read_session(
                "h0",
                "short",
                dest=show_dest,
                emit=cancel_on_progress,
                registry=registry,
                transfer_id="t",
            ),
        ),
        (False, lambda: api.session_stats(dest=show_dest, registry=registry, transfer_id="t")),
        (False, lambda: api.list_versions(dest=show_dest, registry=registry, transfer_id="t")),
    ]
    for reports, read in reads:
        events.clear()
        work = read()
        if not reports:
            registry.cancel("t")  # no progress to cancel on: before it runs
        with pytest.raises(TransferCancelledError) as cancelled:
            await work
        hint = cancelled.value.hint
        assert "a read changes nothing" in hint and "committed" not in hint, hint
        reported = [e for e in events if isinstance(e, ErrorEvent)]
        assert [e.kind for e in reported] == (["cancelled"] if reports else [])
        assert all(e.hint == hint for e in reported), reported
    assert len(registry) == 0


async def test_a_call_never_run_leaves_no_transfer_and_a_duplicate_id_fails_at_the_call(
    index_dest: Path,
) -> None:
    """Registered at the call, the entry goes with the work even when it never runs: dropped,
    closed, or its task cancelled before its first step (the task kept). A second call with
    the id of one not yet run is refused at once, as one of a running transfer is: an
    ArgumentError (a RemoteSyncError, so a UI's one ``except`` shows it, and a ValueError
    still), saying what to do."""
    registry = CancelRegistry()

    def listing() -> Any:
        return api.stream_sessions(dest=index_dest, registry=registry, transfer_id="t")

    def eager() -> Any:
        return api.list_sessions(dest=index_dest, registry=registry, transfer_id="t")

    listing()  # dropped at once
    assert len(registry) == 0 and "t" not in registry and registry.active() == []
    stream = listing()
    with pytest.raises(ArgumentError, match="'t' is already running") as refused:
        eager()
    assert isinstance(refused.value, ValueError) and "an id of its own" in refused.value.hint
    await stream.aclose()
    assert registry.active() == [] and not registry.cancel("t")
    coroutine = eager()
    coroutine.close()
    assert registry.active() == []
    task = asyncio.get_running_loop().create_task(eager())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.active() == []
    assert len(await eager()) > 0 and registry.active() == []


def test_event_loops_in_two_threads_share_one_registry(
    index_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that runs an event loop per thread shares the process-wide registry (every
    call given none uses it). A call in one thread registering while a call in the other was
    purging the registry's entries made that one fail ("dictionary changed size during
    iteration", a RuntimeError out of an API call). The registry's entries are now locked:
    here the purge is held in the middle of its walk while the other thread calls, and both
    calls give their rows."""
    from remote_sync import cancel

    registry = CancelRegistry()
    purging, other_called = threading.Event(), threading.Event()
    real_stale = cancel._Entry.stale

    def stale(entry: Any) -> bool:
        if threading.current_thread().name == "first" and not purging.is_set():
            purging.set()  # in the middle of the walk: the other thread calls now
            other_called.wait(timeout=1.0)  # never set while the registry is locked
        return real_stale(entry)

    monkeypatch.setattr(cancel._Entry, "stale", stale)
    results: dict[str, Any] = {}

    def run(work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        name = threading.current_thread().name
        try:
            results[name] = asyncio.run(work())
        except BaseException as exc:
            results[name] = exc

    async def first_work() -> Any:
        held = api.stream_sessions(dest=index_dest, registry=registry)  # reserved: walked
        try:
            return await api.session_stats(dest=index_dest, registry=registry)
        finally:
            await held.aclose()

    async def second_work() -> Any:
        purging.wait(timeout=5)
        stats = api.session_stats(dest=index_dest, registry=registry)
        other_called.set()
        return await stats

    threads = [
        threading.Thread(target=run, args=(work,), name=name)
        for name, work in (("first", first_work), ("second", second_work))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert purging.is_set()
    for name in ("first", "second"):
        assert isinstance(results[name], list) and results[name], (name, results[name])
    assert registry.active() == []


# -- the pool of a remote read ----------------------------------------------------------------


async def test_a_remote_read_bounds_a_hung_handshake_by_the_pools_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing or a show could not set the SSH pool's settings: a host that hangs in its
    handshake held them for the default connect timeout (15 s). With ``pool`` a UI bounds
    that; the calls keep their own smaller channel windows unless ``pool`` sets one."""
    from remote_sync.index import remote, remote_show
    from remote_sync.ssh import pool as pool_module

    seen: list[PoolSettings] = []
    real_init = pool_module.SSHPool.__init__

    def recording(self: Any, settings: PoolSettings | None = None) -> None:
        seen.append(settings or PoolSettings())
        real_init(self, settings)

    monkeypatch.setattr(pool_module.SSHPool, "__init__", recording)
    short = PoolSettings(connect_timeout=0.5)
    with socket.socket() as silent:  # accepts, never answers: the handshake hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = dataclasses.replace(
            nowhere("mute"), endpoint=Endpoint("127.0.0.1", port=silent.getsockname()[1])
        )
        with anyio.fail_after(10):
            errors: list[Any] = []
            rows = await api.list_sessions(remote=True, hosts=[mute], pool=short, errors=errors)
            assert rows == [] and [type(e) for e in errors] == [HostUnreachableError]
            with pytest.raises(HostUnreachableError):
                await api.show_session(mute, "s", pool=short)
            wide = dataclasses.replace(short, window=4 * 1024 * 1024)
            with pytest.raises(HostUnreachableError):
                await api.read_session(mute, "s", pool=wide)
    assert [(s.connect_timeout, s.window) for s in seen] == [
        (0.5, remote.LIST_WINDOW),
        (0.5, remote_show.SHOW_WINDOW),
        (0.5, 4 * 1024 * 1024),
    ]


# -- a mirror listing's events ----------------------------------------------------------------


async def test_a_mirror_listing_stopped_by_a_registry_cancel_reports_it_and_its_end(
    index_dest: Path,
) -> None:
    """Its last event was the ``listing`` of the batch before the cancel: a UI following it
    kept the listing going. Now, as a remote listing's host: an error event of kind
    ``cancelled``, then ``done``, both under the host a mirror listing names (``""``); the
    error raised names no host."""
    registry = CancelRegistry()
    events: list[Any] = []
    with pytest.raises(TransferCancelledError) as raised:
        async for _batch in api.stream_sessions(
            dest=index_dest, batch_size=2, emit=events.append, registry=registry, transfer_id="t"
        ):
            assert registry.cancel("t", "stop clicked")
    assert raised.value.host is None and len(registry) == 0
    assert events[0] == Progress("", "listing", 2, 0, 0, 0)
    assert [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    error, end = events[1], events[2]
    assert (error.kind, error.host, error.message) == ("cancelled", "", "stop clicked")
    assert end == Progress("", "done", 2, 2, 0, 0) and api.MIRROR_HOST == ""


async def test_a_mirror_listing_cancelled_at_its_last_batch_stops_as_a_remote_one(
    index_dest: Path,
) -> None:
    """A cancel the registry accepted (True) while the caller held the last batch was
    ignored: the listing ended as if whole. A remote listing raises then; now so does this."""
    registry = CancelRegistry()
    events: list[Any] = []
    with pytest.raises(TransferCancelledError):
        async for _batch in api.stream_sessions(
            dest=index_dest, emit=events.append, registry=registry, transfer_id="t"
        ):
            assert registry.cancel("t")
    assert [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    assert events[1].kind == "cancelled" and events[2].phase == "done"


async def test_a_mirror_listing_cancelled_from_its_emit_stops_at_that_event(
    index_dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UI that cancels from inside ``emit`` (its "stop" handled as the event comes) still got
    the batch that event announced, and an eager listing read the next batch's rows from the
    index before the cancel was seen. Now the cancel acts at once: no batch is handed over
    and no further row is read; the error and the end are reported as for any cancel."""
    pulled: list[query.SessionRow] = []
    real_query = sessionread.query_sessions

    def counting(*args: Any, **kwargs: Any) -> Any:
        for row in real_query(*args, **kwargs):
            pulled.append(row)
            yield row

    monkeypatch.setattr(sessionread, "query_sessions", counting)
    registry = CancelRegistry()
    events: list[Any] = []

    def stop_on_listing(event: Any) -> None:
        events.append(event)
        if isinstance(event, Progress) and event.phase == "listing":
            assert registry.cancel("t", "stop clicked")

    received: list[list[query.SessionRow]] = []
    with pytest.raises(TransferCancelledError, match="stop clicked"):
        async for batch in api.stream_sessions(
            dest=index_dest, batch_size=2, emit=stop_on_listing, registry=registry, transfer_id="t"
        ):
            received.append(batch)
    assert received == [] and len(pulled) == 2
    assert [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    assert events[1].kind == "cancelled" and events[2] == Progress("", "done", 2, 2, 0, 0)

    pulled.clear()
    events.clear()
    with pytest.raises(TransferCancelledError, match="stop clicked"):
        await api.list_sessions(
            dest=index_dest, batch_size=2, emit=stop_on_listing, registry=registry, transfer_id="t"
        )
    assert len(pulled) == 2 and [type(e) for e in events] == [Progress, ErrorEvent, Progress]
    assert len(registry) == 0
