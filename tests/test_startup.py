"""Start-up and exit of the command-line process: the quick asyncssh import, the quick exit."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sshfleet import SSHFleet
from synchelp import make_openclaw_tree, write_inventory

from remote_sync.mirror.state import MirrorState
from remote_sync.ssh.fastimport import find_library_quickly, import_asyncssh


def test_quick_library_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("z", "ssl", "crypto"):
        expected = ctypes.util.find_library(name)
        found = find_library_quickly(name)
        if expected is None:
            continue
        assert found is not None and Path(found).name.startswith(f"lib{name}.so."), found
        ctypes.CDLL(found)  # a real, loadable library
    assert find_library_quickly("no-such-library-anywhere") is None
    (tmp_path / "libfake.so").write_bytes(b"")
    (tmp_path / "libfake.so.3").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{tmp_path}:/nonexistent")
    assert find_library_quickly("fake") == str(tmp_path / "libfake.so.3")


def test_import_asyncssh_restores_find_library() -> None:
    original = ctypes.util.find_library
    import_asyncssh()
    assert ctypes.util.find_library is original
    assert "asyncssh" in sys.modules
    code = (
        "import ctypes.util, sys\n"
        "from remote_sync.ssh.fastimport import import_asyncssh\n"
        "before = ctypes.util.find_library\n"
        "import_asyncssh()\n"
        "import asyncssh.crypto.pq as pq\n"
        "assert ctypes.util.find_library is before\n"
        "print(pq.mlkem_available, pq.sntrup_available)\n"
    )
    quick = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plain = subprocess.run(
        [sys.executable, "-c", "import asyncssh.crypto.pq as pq\n"
         "print(pq.mlkem_available, pq.sntrup_available)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert quick.stdout == plain.stdout  # the same key exchanges available either way


def test_console_entry_flushes_and_keeps_the_exit_code(tmp_path: Path) -> None:
    # Output piped (fully buffered) must be complete although the process leaves with _exit.
    run = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "sessions", "list", "--json",
         "--dest", str(tmp_path / "none")],
        capture_output=True, env={**os.environ, "PYTHONWARNINGS": "error"}, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert b"remote-sync:" in run.stderr
    with MirrorState(tmp_path / "mirror"):
        pass  # an empty mirror
    ok = subprocess.run(
        [sys.executable, "-m", "remote_sync.cli", "index", "rebuild", "--json",
         "--dest", str(tmp_path / "mirror")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "remote_sync", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("remote-sync ")


#: The command line's modules loaded after each of its start-up-only runs, then after a read.
_COMMAND_MODULES_LOADED = """
import sys
from remote_sync.cli import main

def loaded():
    return sorted(m for m in sys.modules if m.startswith("remote_sync.cli."))

for words in (["--version"], ["--help"], ["sync", "--help"], ["sessions", "list", "--bogus"]):
    try:
        main(words)
    except SystemExit:
        pass
print("loaded", loaded(), file=sys.stderr)
main(["sessions", "list", "--json", "--dest", sys.argv[1]])
print("loaded", loaded(), file=sys.stderr)
"""


def test_help_version_and_a_usage_error_load_no_commands_module(tmp_path: Path) -> None:
    # Each command's code is a module of its own, imported when that command runs: the
    # version, the help and a usage error cost only the parser's imports, and a listing
    # loads its own module and what every command shares, not the sync's.
    done = subprocess.run(
        [sys.executable, "-c", _COMMAND_MODULES_LOADED, str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    loaded = [line for line in done.stderr.splitlines() if line.startswith("loaded ")]
    assert loaded == [
        "loaded []",
        "loaded ['remote_sync.cli.common', 'remote_sync.cli.sessions']",
    ], done.stderr


#: A sync in a process of its own, then the number of glibc malloc arenas ("heaps") it made.
_SYNC_THEN_COUNT_ARENAS = """
import asyncio, ctypes, sys

def arenas():
    libc = ctypes.CDLL(None)
    libc.open_memstream.restype = ctypes.c_void_p
    text, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(text), ctypes.byref(size)))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    return ctypes.string_at(text, size.value).count(b"<heap nr=")

inventory, dest, how = sys.argv[1:]
if how == "cli":
    from remote_sync.cli import main
    assert main(["sync", "--inventory", inventory, "--dest", dest, "--json"]) == 0
elif how == "agent":  # serves until SIGTERM: the test syncs through it meanwhile
    from remote_sync.cli import main
    assert main(["agent", "--inventory", inventory, "--dest", dest]) == 0
else:
    from remote_sync import api
    from remote_sync.inventory import load_inventory
    hosts = load_inventory(inventory).select([], [])
    assert asyncio.run(api.sync(hosts, dest)).exit_code == 0
print(arenas())
"""


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.fixture
def arena_host(
    ssh_fleet: Callable[..., SSHFleet], tmp_path: Path
) -> tuple[SSHFleet, Path, dict[str, str]]:
    """One host with two agents' sessions, its inventory, and an environment with no malloc
    setting of the user's (glibc's defaults unless the command line sets its own)."""
    fleet = ssh_fleet(1)
    make_openclaw_tree(fleet, "h0", agents=2, sessions=12)
    inventory = write_inventory(fleet, tmp_path / "inv.toml")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    return fleet, inventory, env


@pytest.mark.skipif(not _glibc(), reason="malloc arenas are glibc's")
def test_the_command_line_sync_keeps_one_malloc_arena(
    arena_host: tuple[SSHFleet, Path, dict[str, str]], tmp_path: Path
) -> None:
    # The threads of a sync (flushes, state writes, the resolver) would each get an arena of
    # their own, whose freed memory the main thread cannot reuse: the command line limits
    # glibc to one (a lower peak RSS). A library caller's process keeps glibc's defaults,
    # and so does one whose user set a limit.
    _, inventory, env = arena_host

    def arenas(how: str, dest: str, **extra: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _SYNC_THEN_COUNT_ARENAS, str(inventory), str(tmp_path / dest),
             how],
            capture_output=True, text=True, env={**env, **extra}, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    assert arenas("cli", "by-cli") == 1
    assert arenas("api", "by-api") > 1
    assert arenas("cli", "by-cli-limited", MALLOC_ARENA_MAX="4") > 1


@pytest.mark.skipif(not _glibc(), reason="malloc arenas are glibc's")
def test_the_agent_keeps_one_malloc_arena(
    arena_host: tuple[SSHFleet, Path, dict[str, str]], tmp_path: Path
) -> None:
    # The agent's syncs start the threads a direct sync starts, round after round: its
    # command line limits glibc to one arena too (the library's serve_agent does not).
    fleet, inventory, env = arena_host
    dest = tmp_path / "m"
    agent = subprocess.Popen(
        [sys.executable, "-c", _SYNC_THEN_COUNT_ARENAS, str(inventory), str(dest), "agent"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert agent.stderr is not None
        line = agent.stderr.readline()  # "remote-sync agent: serving ..." once it listens
        assert b"serving" in line, line + agent.stderr.read()
        for _ in range(2):
            synced = subprocess.run(
                [sys.executable, "-m", "remote_sync", "sync", "-I", str(inventory), "-d",
                 str(dest), "--json"],
                capture_output=True, env=env, timeout=120, check=False,
            )  # fmt: skip
            assert synced.returncode == 0, synced.stderr
        # Both through the agent, on its one connection: its threads, not a client's.
        assert fleet.host("h0").log_path.read_text().count("Accepted publickey") == 1
    finally:
        agent.terminate()
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert int(out.split()[-1]) == 1


def test_difflib_is_imported_for_a_mistyped_name_only(tmp_path: Path) -> None:
    # A sync loads the modules that word "did you mean" errors (the inventory's, the index's
    # queries); difflib, 0.2 MB of its peak RSS, waits until a name is mistyped.
    (tmp_path / "inv.toml").write_text('[[hosts]]\nname = "one"\nadress = "one"\n')
    code = (
        "import sys\n"
        "import remote_sync.cli, remote_sync.mirror.engine, remote_sync.index.query\n"
        "from remote_sync.errors import ConfigError\n"
        "from remote_sync.inventory import load_inventory\n"
        "print('difflib' in sys.modules)\n"
        "try:\n"
        "    load_inventory(sys.argv[1])\n"
        "except ConfigError as exc:\n"
        "    print('difflib' in sys.modules, exc.hint)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "inv.toml")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines() == ["False", "True did you mean 'address'?"]


#: What importing the modules of a sync run here leaves loaded: the stdlib and reader modules
#: a sync of openclaw hosts with nothing to index does not use, and the dataclasses made.
_SYNC_START_UP = """
import sys
import remote_sync.cli.sync, remote_sync.mirror.fleet
from remote_sync.formats.readers import get_reader
get_reader("openclaw")
print([m for m in sys.argv[1:] if m in sys.modules])
ours = [(n, m) for n, m in list(sys.modules.items()) if n.startswith("remote_sync")]
print(sorted(
    f"{n}.{cls}" for n, module in ours for cls, value in vars(module).items()
    if isinstance(value, type) and value.__module__ == n and "__dataclass_fields__" in vars(value)
))
"""


def test_a_sync_start_up_loads_its_own_reader_alone_and_few_dataclasses() -> None:
    # Start-up is most of the CPU of a sync that finds nothing to do: a sync imports only
    # the reader of its hosts' format, the index worker when it has something to index, json
    # for one error's hint; and each dataclass costs 0.1-0.3 ms to make where a msgspec Struct
    # costs 0.01, so the internal ones are Structs (public types, and those the API or the
    # tests take to dataclasses.replace, stay dataclasses).
    unused = (
        "json",
        "remote_sync.index.worker",
        "remote_sync.formats.claude_code",
        "remote_sync.formats.codex",
        "remote_sync.formats.gemini",
        "remote_sync.formats.picoclaw",
    )
    done = subprocess.run(
        [sys.executable, "-c", _SYNC_START_UP, *unused], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    loaded, dataclasses = (eval(line) for line in done.stdout.splitlines())
    assert loaded == []
    # A new internal record type on the sync's path: a msgspec Struct, or raise this with
    # the reason it must be a dataclass.
    assert len(dataclasses) <= 20, dataclasses


def test_the_index_and_the_check_load_no_reader_until_one_is_asked_for() -> None:
    # sessions list, show, stats and check import the index's queries and the check: a
    # format's reader is imported when a row of that format needs it, never all six at once.
    code = (
        "import sys\n"
        "import remote_sync.index.query, remote_sync.mirror.check\n"
        "from remote_sync.formats.readers import find_reader\n"
        "before = sorted(m for m in sys.modules if m.startswith('remote_sync.formats.'))\n"
        "find_reader('codex')\n"
        "after = sorted(m for m in sys.modules if m.startswith('remote_sync.formats.'))\n"
        "print(before, after)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = done.stdout.rsplit("] [", 1)
    assert eval(before + "]") == ["remote_sync.formats.readers"]
    loaded = {name.rsplit(".", 1)[1] for name in eval("[" + after)}
    assert "codex" in loaded and not loaded & {"claude_code", "gemini", "openclaw", "picoclaw"}
