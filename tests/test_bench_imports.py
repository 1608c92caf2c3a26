"""The benchmark scripts in ``bench/`` still name what exists: each ``from X import Y`` in
them, at the top or inside a function, resolves. The benchmarks themselves are not run here
(they take minutes); a name a refactor removed made one fail only when it got there, as
``bench_sessions.py`` did with ``put_session``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _imported_names(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from module import name`` of ``script`` (relative ones and
    ``*`` aside)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        for alias in node.names
        if alias.name != "*"
    ]


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_exists(
    script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # _common, as the scripts find it beside them
    missing = []
    for module, name in _imported_names(script):
        if module == "__future__":
            continue
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:  # a submodule, not an attribute until imported
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"from {module} import {name}")
    assert not missing, f"{script.name}: {missing}"


def test_every_phase_the_sync_profile_wraps_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench_sync.py --profile`` wraps the engine's steps by name; one a refactor renamed
    was skipped unsaid (the fetch stream, after the engine's split). ``phase_target`` now
    raises for it, and this finds it without running the benchmark."""
    monkeypatch.syspath_prepend(str(BENCH))
    bench_sync = importlib.import_module("bench_sync")
    for module, name, _label in bench_sync.PHASES:
        bench_sync.phase_target(module, name)
    with pytest.raises(RuntimeError, match=r"HostSync\._fetch "):
        bench_sync.phase_target("remote_sync.mirror.engine", "HostSync._fetch")
