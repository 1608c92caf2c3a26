"""Start-up and exit of the command-line process: the quick asyncssh import, the quick exit."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
