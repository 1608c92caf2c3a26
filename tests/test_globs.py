"""Tests of remote_sync.globs: the glob dialect on byte paths and the listing start points."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_sync.errors import ConfigError
from remote_sync.globs import compile_globs, start_points


def matches(glob: str, path: bytes) -> bool:
    return compile_globs([glob]).match(path)


@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        # * and ? stay within one segment
        ("a/*", b"a/x", True),
        ("a/*", b"a/", True),
        ("a/*", b"a/x/y", False),
        ("a/*.txt", b"a/.hidden.txt", True),
        ("a/?", b"a/x", True),
        ("a/?", b"a/xy", False),
        ("a?b", b"a/b", False),
        ("a*b", b"a/b", False),
        # ** as a whole segment
        ("agents/*/sessions/**", b"agents/a/sessions/x.jsonl", True),
        ("agents/*/sessions/**", b"agents/a/sessions/sub/y", True),
        ("agents/*/sessions/**", b"agents/a/sessions", False),
        ("agents/*/sessions/**", b"agents/a/b/sessions/x", False),
        ("agents/*/sessions/**", b"x/agents/a/sessions/y", False),
        ("a/**/b", b"a/b", True),
        ("a/**/b", b"a/x/b", True),
        ("a/**/b", b"a/x/y/b", True),
        ("a/**/b", b"a/x/y/c", False),
        ("**/b", b"b", True),
        ("**/b", b"x/y/b", True),
        ("**", b"anything/at/all", True),
        ("a/**/**/b", b"a/b", True),
        ("a**b", b"axxb", True),
        ("a**b", b"ax/xb", False),
        # basename globs at any depth
        ("*.jsonl", b"x.jsonl", True),
        ("*.jsonl", b"a/b/c/x.jsonl", True),
        ("*.jsonl", b"a/b/x.json", False),
        ("*.jsonl", b"x.jsonl/child", False),
        ("*.jsonl.reset.*", b"agents/a/sessions/s1.jsonl.reset.2025-01-01T00-00-00", True),
        ("*.jsonl.deleted.*", b"s.jsonl.deleted.1", True),
        ("*.jsonl.reset.*", b"s.jsonl", False),
        # a literal name without '/' is anchored at the root
        ("session_index.jsonl", b"session_index.jsonl", True),
        ("session_index.jsonl", b"sessions/session_index.jsonl", False),
        ("**/sessions.json", b"agents/a/sessions/sessions.json", True),
        # anchoring and normalisation
        ("/*.jsonl", b"x.jsonl", True),
        ("/*.jsonl", b"a/x.jsonl", False),
        ("./a/*", b"a/x", True),
        ("sessions/", b"sessions/x/y", True),
        ("sessions/", b"sessions", False),
        ("./", b"x/y", True),  # "everything inside the root"
        ("a//b", b"a/b", True),
        ("a/./b", b"a/b", True),
        # classes
        ("[ab].txt", b"a.txt", True),
        ("[ab].txt", b"c.txt", False),
        ("[a-c]", b"b", True),
        ("[!a-c]", b"d", True),
        ("[!a-c]", b"b", False),
        ("[^a]", b"b", True),
        ("[!a]", b"\xff", True),
        ("x/[!a]", b"x//", False),
        ("[]]", b"]", True),
        ("[!]]", b"]", False),
        ("[!]]", b"x", True),
        ("[é]", "é".encode(), True),
        ("[é]", b"e", False),
        ("[", b"[", True),
        ("a[b", b"a[b", True),
        # escapes and regex metacharacters are literal
        ("\\*.txt", b"*.txt", True),
        ("\\*.txt", b"a.txt", False),
        ("a+b(c)|d.txt", b"a+b(c)|d.txt", True),
        ("a.txt", b"abtxt", False),
        # non-ASCII and non-UTF-8 bytes
        ("*.jsonl", b"\xff\xfe\x80.jsonl", True),
        ("*.jsonl", b"dir\xc3/\n\r.jsonl", True),
        ("caf\u00e9/*", "café/x".encode(), True),
        ("d\udcff/*", b"d\xff/x", True),  # a surrogate escape stands for its raw byte
    ],
)
def test_match(glob: str, path: bytes, expected: bool) -> None:
    assert matches(glob, path) is expected


def test_set_matches_any_and_empty_set_matches_nothing() -> None:
    globs = compile_globs(["*.jsonl", "*.jsonl.reset.*", "*.jsonl.deleted.*"])
    assert globs.match(b"a/b.jsonl")
    assert globs.match(b"a/b.jsonl.deleted.7")
    assert not globs.match(b"a/sessions.json")
    assert globs.globs == ("*.jsonl", "*.jsonl.reset.*", "*.jsonl.deleted.*")
    assert not compile_globs([]).match(b"")
    assert not compile_globs([]).match(b"x")


def test_compile_rejects_a_single_string() -> None:
    with pytest.raises(TypeError):
        compile_globs("*.jsonl")


@pytest.mark.parametrize(
    "glob",
    ["", "a/../b", "..", ".", "a\\", "[z-a]", "[é-z]", "[!é]", "a\x00b", "\ud800"],
)
def test_bad_globs(glob: str) -> None:
    with pytest.raises(ConfigError):
        compile_globs([glob])


@pytest.mark.parametrize(
    ("globs", "expected"),
    [
        (["agents/*/sessions/**"], ["agents"]),
        (
            ["sessions/**", "archived_sessions/**", "session_index.jsonl"],
            ["sessions", "archived_sessions", "session_index.jsonl"],
        ),
        (["projects/**"], ["projects"]),
        (["*.jsonl"], ["."]),
        (["*/sessions/**"], ["."]),
        (["**/x"], ["."]),
        (["/*.jsonl"], ["."]),
        (["a/**", "*.jsonl"], ["."]),
        (["a/b/**", "a/**", "a/b/c"], ["a"]),
        (["a/b/**", "a/c/**"], ["a/b", "a/c"]),
        (["a/**", "a/**"], ["a"]),
        (["ab/**", "a/**"], ["ab", "a"]),
        (["-rf/**"], ["./-rf"]),
        (["./x/**"], ["x"]),
        (["a/\\*/b"], ["a/*/b"]),
        (["caf\u00e9/**"], ["caf\u00e9"]),
        ([], []),
    ],
)
def test_start_points(globs: list[str], expected: list[str]) -> None:
    assert start_points(globs) == expected


def test_start_points_reject_dotdot() -> None:
    with pytest.raises(ConfigError):
        start_points(["../etc/**"])
    with pytest.raises(ConfigError):
        start_points(["a/../../b"])


# Globs over a small alphabet (so matches actually happen) and paths of any bytes.
_GLOB_CHARS = st.sampled_from([*"ab.*?/[]!-\\", "**", "é", "x"])
_PATH_BYTES = st.sampled_from([b"a", b"b", b".", b"/", b"\xff", b"\x00", b"\n", b"*", b"x"])


@given(st.binary(max_size=200))
def test_arbitrary_paths_never_crash(path: bytes) -> None:
    globs = compile_globs(["*.jsonl", "agents/*/sessions/**", "[!a-z]?/**/x", "**"])
    assert isinstance(globs.match(path), bool)


@given(st.binary(max_size=100))
def test_any_bytes_ending_in_jsonl_match(stem: bytes) -> None:
    path = stem.replace(b"/", b"") + b".jsonl"
    assert compile_globs(["*.jsonl"]).match(path)
    assert compile_globs(["*.jsonl"]).match(b"dir/" + path)


@given(st.text(max_size=30), st.binary(max_size=60))
def test_arbitrary_globs_compile_or_raise_config_error(glob: str, path: bytes) -> None:
    try:
        globs = compile_globs([glob])
        points = start_points([glob])
    except ConfigError:
        return
    assert isinstance(globs.match(path), bool)
    assert all(not p.startswith("-") and ".." not in p.split("/") for p in points)


@given(st.lists(_GLOB_CHARS, max_size=8).map("".join), st.lists(_PATH_BYTES, max_size=10))
def test_every_match_lies_under_a_start_point(glob: str, parts: list[bytes]) -> None:
    path = b"".join(parts)
    try:
        globs = compile_globs([glob])
        points = start_points([glob])
    except ConfigError:
        return
    if not globs.match(path):
        return
    roots = [p.removeprefix("./").encode() for p in points]
    assert any(r == b"." or path == r or path.startswith(r + b"/") for r in roots), (
        glob,
        path,
        points,
    )


@given(
    st.lists(st.sampled_from(list("ab.*?")), min_size=1, max_size=6).map("".join),
    st.lists(st.sampled_from(list("ab.")), min_size=1, max_size=6).map("".join),  # never empty
)
def test_basename_globs_agree_with_fnmatch(glob: str, name: str) -> None:
    if not any(c in glob for c in "*?"):
        return  # literal names are anchored at the root, not basename globs
    expected = fnmatch.fnmatchcase(name, glob)
    assert matches(glob, name.encode()) is expected
    assert matches(glob, b"some/dir/" + name.encode()) is expected


def test_the_same_globs_are_compiled_once() -> None:
    """An inventory is read again for every sync of the agent, each host's globs compiled
    again (some 20 us a set): the same globs, in a list or a tuple, now give the one
    GlobSet compiled first; other globs or another order another one; a glob that does not
    compile is refused every time."""
    first = compile_globs(["agents/*/sessions/**", "*.jsonl.cached-test"])
    assert compile_globs(("agents/*/sessions/**", "*.jsonl.cached-test")) is first
    again = compile_globs(["*.jsonl.cached-test", "agents/*/sessions/**"])
    assert again is not first and again.match(b"a.jsonl.cached-test")
    for _ in range(2):
        with pytest.raises(ConfigError):
            compile_globs(["a/../b"])
    with pytest.raises(TypeError):
        compile_globs("*.jsonl")
