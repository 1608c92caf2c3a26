"""Generators of realistic agent sessions, with the facts the index must derive from them.

What it owns: synthetic but realistic transcripts for every format the index reads
(``openclaw``, ``claude-code``, ``codex``, ``picoclaw``, ``pi`` and the generic ``jsonl``),
whole on-disk trees of a format's store including its side files, and for every transcript the
EXPECTED facts and messages, computed from what was generated (not by parsing it back).

API (all deterministic for a given ``random.Random``):

* :func:`generate` ``(format, rng, *, messages=40, ...) -> Session``: one transcript.
  ``Session`` unpacks as ``data, expected = generate(...)``; it also has ``messages`` (the
  :class:`ExpectedMessage` of every line a reader's ``message()`` must render, with offsets)
  and ``line_offsets`` (the start of every line). Knobs: ``malformed`` (that many noise
  lines: truncated JSON, non-objects, invalid UTF-8, NUL runs, all malformed; and shape
  mismatches, which are read without their bad field and add nothing),
  ``blank_lines``, ``huge_line_bytes`` (one tool output of about that many bytes),
  ``unicode`` (CJK, RTL, emoji, combining marks, U+2028 in texts), ``split_responses``
  (Claude Code: one line per content block, repeating the response's usage, with the
  output tokens so far on all but the last, as Claude Code writes them while it streams),
  ``session_id`` (the header's / file's id), ``subagent`` (a Claude Code sidechain),
  ``cost_usd`` (Claude Code: write older versions' top-level ``costUSD`` on every assistant
  line, repeated on the lines of one response; without it a Claude Code session has no cost),
  ``migrated`` (picoclaw: that many first messages carry Go's zero time as ``created_at``, as
  messages imported from a legacy session do; they have no time),
  ``start_ns`` (the start time, epoch nanoseconds).
* ``expected`` is a dict keyed like :class:`remote_sync.index.facts.SessionFacts` fields:
  ``session_id agent bytes lines malformed user assistant tool system other tool_calls
  tokens_in tokens_out tokens_cache_read tokens_cache_write cost models first_ts last_ts
  title``. ``lines`` counts every newline-terminated line (blank ones too) and ``bytes`` is
  ``len(data)``. ``session_id``/``agent`` are what the lines alone give (pi's header id,
  Codex's ``cwd``; not OpenClaw's header id, as its id is the file name's), None otherwise:
  with a path, use :class:`Tree` entries, whose expected values include what ``identify()``
  gives.
* :func:`facts_dict` ``(facts) -> dict``: a ``SessionFacts`` in the same shape, to compare.
* :func:`compact_picoclaw` ``(session, keep_last) -> Session``: the file picoclaw's Compact
  rewrites (the last ``keep_last`` messages; malformed and blank lines are dropped).
* :func:`build_tree` ``(format, root, sessions, rng, *, messages=40, ...) -> Tree``: a whole
  store under ``root``: transcripts plus the side files the format has (OpenClaw
  ``sessions.json``, topic files, ``.reset.``/``.deleted.`` archives, ClawPal's
  ``sessions_archive/``, trajectory side files and ``.bak-`` backups; Claude Code
  sub-agents, ``tool-results/`` and ``history.jsonl``;
  Codex ``session_index.jsonl``, ``archived_sessions/`` and ``history.jsonl``; picoclaw
  ``.meta.json`` files, compacted sessions (``compacted`` fraction) and legacy
  ``.json.migrated`` files; pi per-cwd directories). ``Tree.transcripts`` lists
  :class:`TreeFile` entries (absolute ``path``, ``rel`` bytes, ``session``, ``expected`` with
  agent and session id as the index reports them, ``previous``: the pre-compaction session of
  a compacted picoclaw file); ``Tree.side_files`` the paths that are NOT transcripts. Other
  keyword arguments go to :func:`generate`.
* :func:`write_tree` ``(...) -> list[Path]``: ``build_tree`` returning the transcript paths.
* :func:`iso_ms` ``(ns) -> str``: the index's timestamp form of epoch nanoseconds.

Malformed lines carry no facts; the realistic lines never fail the readers' line views.

Semantics the expectations encode (documented in :mod:`remote_sync.formats`): Claude Code
counts usage and ``costUSD`` once per ``message.id:requestId`` (the output tokens and price
the most of the key's lines have) and every assistant line as one message; a
``user`` line of ``tool_result`` blocks is a ``tool`` message; Codex tokens are the last
cumulative ``total_token_usage`` (in = input - cached, cache read = cached, out = output);
Codex function calls are assistant messages; timestamps are ISO UTC with milliseconds
(finer fractions truncated); titles are the first user text that is not harness-injected
(only blocks of the harness's own tags are: a prompt of pasted markup is the user's).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

FORMATS = ("openclaw", "claude-code", "codex", "picoclaw", "pi", "jsonl")
TITLE_CHARS = 80  # as remote_sync.index.facts.TITLE_CHARS

FACT_KEYS = (
    "session_id",
    "agent",
    "bytes",
    "lines",
    "malformed",
    "user",
    "assistant",
    "tool",
    "system",
    "other",
    "tool_calls",
    "tokens_in",
    "tokens_out",
    "tokens_cache_read",
    "tokens_cache_write",
    "cost",
    "models",
    "first_ts",
    "last_ts",
    "title",
)

# --- results --------------------------------------------------------------------------------


@dataclass
class ExpectedMessage:
    """What ``reader.message(line, offset)`` must return for one line."""

    offset: int
    role: str
    timestamp: str | None
    text: str
    tool_calls: list[tuple[str, str]]  # (name, full JSON arguments; the reader shortens them)
    model: str | None = None


@dataclass
class Session:
    """One generated transcript. Unpacks as ``data, expected``."""

    data: bytes
    expected: dict[str, Any]
    messages: list[ExpectedMessage]
    line_offsets: list[int]
    _lines: list[_Line] = field(repr=False, default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.data, self.expected))


@dataclass
class TreeFile:
    path: Path
    rel: bytes
    session: Session
    expected: dict[str, Any]
    previous: Session | None = None


@dataclass
class Tree:
    root: Path
    format: str
    transcripts: list[TreeFile]
    side_files: list[Path]


def facts_dict(facts: Any) -> dict[str, Any]:
    """A SessionFacts (or anything with its attributes) as an ``expected``-shaped dict."""
    out = {key: getattr(facts, key) for key in FACT_KEYS}
    out["models"] = list(out["models"])
    return out


# --- per-line effects and their fold -------------------------------------------------------


@dataclass
class _Eff:
    """What one generated line must contribute to the facts."""

    malformed: bool = False
    role: str | None = None  # facts bucket: user / assistant / tool / system / other
    tool_calls: int = 0
    usage: tuple[int, int, int, int] | None = None  # in, out, cache read, cache write
    usage_key: str | None = None
    codex_total: tuple[int, int, int] | None = None  # in (non-cached), cache read, out
    cost: float | None = None
    models: tuple[str, ...] = ()
    ts: str | None = None
    title: str | None = None  # a title candidate (eligible user text)
    session_id: str | None = None
    agent: str | None = None
    message: ExpectedMessage | None = None  # offset filled in at assembly


@dataclass
class _Line:
    data: bytes  # without the newline
    eff: _Eff


def _title(text: str) -> str | None:
    flat = " ".join(text.split())
    if not flat:
        return None
    return flat if len(flat) <= TITLE_CHARS else flat[: TITLE_CHARS - 1] + "…"


def _fold(lines: list[_Line]) -> dict[str, Any]:
    exp: dict[str, Any] = dict.fromkeys(FACT_KEYS, 0)
    exp.update(
        session_id=None,
        agent=None,
        cost=None,
        models=[],
        first_ts=None,
        last_ts=None,
        title=None,
    )
    exp["lines"] = len(lines)
    exp["bytes"] = sum(len(line.data) + 1 for line in lines)
    #: per usage key: the most output tokens and cost counted
    seen: dict[str, tuple[int | None, float | None]] = {}
    for line in lines:
        e = line.eff
        if e.malformed:
            exp["malformed"] += 1
            continue
        if e.role:
            exp[e.role] += 1
        exp["tool_calls"] += e.tool_calls
        # A response's usage and cost count once per key (Claude Code repeats both on each
        # line of a response, its output tokens growing as it streams: the most counts);
        # without a key, every line's count.
        out = e.usage[1] if e.usage is not None else None
        if e.usage_key is not None and e.usage_key in seen:
            most_out, most_cost = seen[e.usage_key]
            if most_out is not None and out is not None and out > most_out:
                exp["tokens_out"] += out - most_out
                most_out = out
            if most_cost is not None and e.cost is not None and e.cost > most_cost:
                exp["cost"] += e.cost - most_cost
                most_cost = e.cost
            seen[e.usage_key] = (most_out, most_cost)
        elif e.usage is not None or e.cost is not None:
            if e.usage_key is not None:
                seen[e.usage_key] = (out, e.cost)
            if e.usage is not None:
                exp["tokens_in"] += e.usage[0]
                exp["tokens_out"] += e.usage[1]
                exp["tokens_cache_read"] += e.usage[2]
                exp["tokens_cache_write"] += e.usage[3]
            if e.cost is not None:
                exp["cost"] = (exp["cost"] or 0.0) + e.cost
        if e.codex_total is not None:
            exp["tokens_in"], exp["tokens_cache_read"], exp["tokens_out"] = e.codex_total
        for model in e.models:
            if model and model not in exp["models"]:
                exp["models"].append(model)
        if e.ts is not None:
            if exp["first_ts"] is None or e.ts < exp["first_ts"]:
                exp["first_ts"] = e.ts
            if exp["last_ts"] is None or e.ts > exp["last_ts"]:
                exp["last_ts"] = e.ts
        if exp["title"] is None and e.title:
            exp["title"] = _title(e.title)
        if e.session_id is not None:
            exp["session_id"] = e.session_id
        if e.agent is not None and exp["agent"] is None:
            exp["agent"] = e.agent
    return exp


def _assemble(lines: list[_Line]) -> Session:
    out: list[bytes] = []
    offsets: list[int] = []
    messages: list[ExpectedMessage] = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        msg = line.eff.message
        if msg is not None and not line.eff.malformed:
            msg.offset = pos
            messages.append(msg)
        out.append(line.data)
        out.append(b"\n")
        pos += len(line.data) + 1
    return Session(b"".join(out), _fold(lines), messages, offsets, lines)


# --- text, ids, time -----------------------------------------------------------------------

_WORDS = tuple(
    " ".join(
        (
            "the a to of and in is it that for on with this we can should be function file",
            "test error value return config session index sync remote host path line offset",
            "buffer decode parse stream chunk retry timeout token cache model agent tool call",
            "output please check why fails when running after update build deploy server",
            "client request response database query schema migration refactor module import",
            "class method type list dict string bytes async await lock queue worker thread",
            "process signal exit",
        )
    ).split(" ")
)
_CODE = (
    "def main(argv: list[str]) -> int:",
    "    return 0",
    "import os, sys",
    "for i, item in enumerate(items):",
    '    print(f"{i}: {item!r}")',
    'if __name__ == "__main__":',
    "\tindented = True  # a tab",
    "// TODO: handle the error path",
    "const res = await fetch(url, { method: 'POST' });",
    "SELECT host, path FROM sessions WHERE last_ts > ?;",
    'path = "C:\\\\Users\\\\dev\\\\file.txt"',
    '    raise ValueError("bad value: %s" % value)',
    "}",
    "fn main() -> Result<(), Box<dyn Error>> {",
    '<div class="card">&nbsp;</div>',
)
_UNICODE = (
    "café",
    "naïve",
    "日本語のテキスト",
    "中文测试",
    "Ελληνικά",
    "עברית",
    "العربية",
    "тест",
    "한국어",
    "🚀",
    "✨",
    "👩\u200d💻",
    "e\u0301",
    "ß",
    "a\u2028b",
    "\U0001f600",
)


class _Text:
    def __init__(self, rng: random.Random, unicode: bool) -> None:
        self.rng = rng
        self.unicode = unicode

    def words(self, lo: int, hi: int) -> str:
        rng = self.rng
        words = rng.choices(_WORDS, k=rng.randint(lo, hi))
        if self.unicode and rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(_UNICODE))
        return " ".join(words)

    def prose(self, lo: int, hi: int) -> str:
        rng = self.rng
        parts: list[str] = []
        total = rng.randint(lo, hi)
        while total > 0:
            n = min(total, rng.randint(5, 25))
            total -= n
            sentence = self.words(n, n)
            parts.append(sentence[:1].upper() + sentence[1:] + rng.choice(".?!."))
            if rng.random() < 0.15:
                parts.append("\n\n")
            if rng.random() < 0.05:
                parts.append('\n"quoted \\ text"\t')
        return " ".join(parts)

    def code(self, lo: int, hi: int) -> str:
        return "\n".join(self.rng.choices(_CODE, k=self.rng.randint(lo, hi)))

    def output(self, size: int) -> str:
        """Tool output of about ``size`` characters (code, logs, text)."""
        rng = self.rng
        parts: list[str] = []
        got = 0
        while got < size:
            roll = rng.random()
            if roll < 0.5:
                piece = self.code(3, 12)
            elif roll < 0.8:
                piece = f"[{rng.randint(0, 99999):05d}] INFO {self.words(4, 12)}"
            else:
                piece = self.prose(10, 30)
            parts.append(piece)
            got += len(piece) + 1
        return "\n".join(parts)[: max(size, 1)]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b62(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_B62, k=n))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_START_LO = int((datetime(2025, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
_START_SPAN = 640 * 86400


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def iso_ms(ns: int) -> str:
    """``ns`` (epoch nanoseconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (JavaScript's toISOString)."""
    dt = _dt(ns)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{(ns // 1_000_000) % 1000:03d}Z"


def _rfc3339nano(ns: int, offset_min: int) -> str:
    """Go's time.RFC3339Nano in a zone ``offset_min`` minutes east of UTC."""
    local = _dt(ns) + timedelta(minutes=offset_min)
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "")
    if offset_min == 0:
        return text + "Z"
    sign = "+" if offset_min > 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


class _Clock:
    def __init__(self, rng: random.Random, start_ns: int | None = None) -> None:
        self.rng = rng
        if start_ns is None:
            start_ns = (_START_LO + rng.randrange(_START_SPAN)) * 10**9
            start_ns += rng.randrange(10**9)
        self.ns = start_ns

    def tick(self, lo_ms: int = 5, hi_ms: int = 4000) -> int:
        self.ns += self.rng.randint(lo_ms, hi_ms) * 1_000_000 + self.rng.randrange(1_000_000)
        return self.ns


def _json(value: Any) -> bytes:
    """Compact JSON with raw UTF-8, like JSON.stringify and serde_json."""
    return orjson.dumps(value)


def _go_json(value: Any) -> bytes:
    """Go encoding/json: compact, HTML characters and U+2028/2029 escaped."""
    data = orjson.dumps(value)
    return (
        data.replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
        .replace("\u2028".encode(), b"\\u2028")
        .replace("\u2029".encode(), b"\\u2029")
    )


def _args_text(args: Any) -> str:
    return orjson.dumps(args).decode()


def _chat_tool_calls(calls: list[_Call]) -> list[dict[str, Any]]:
    """``calls`` as an OpenAI chat message's ``tool_calls``: picoclaw's and the generic
    JSONL's."""
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": _args_text(c.args)},
        }
        for c in calls
    ]


# --- the abstract conversation -------------------------------------------------------------


@dataclass
class _Call:
    id: str
    name: str
    args: Any  # a dict; a str for Codex custom tools
    output: str
    is_error: bool = False
    kind: str = "function"  # Codex: function / custom / local_shell


@dataclass
class _User:
    text: str
    ns: int


@dataclass
class _Resp:
    model: str
    thinking: str | None
    text: str | None
    calls: list[_Call]
    usage: tuple[int, int, int, int]  # in, out, cache read, cache write
    ns: int


@dataclass
class _Result:
    call: _Call
    ns: int


_Step = _User | _Resp | _Result
_ToolMaker = Callable[["_Text", random.Random], tuple[str, Any, str]]


def _cmd(rng: random.Random) -> str:
    return rng.choice(
        (
            "ls -la src",
            "git status --short",
            "pytest -q tests/test_sync.py -k resume",
            'rg -n "def update" remote_sync',
            "cat pyproject.toml",
            "python -m mypy --strict remote_sync",
            "du -sh ~/.cache && echo done",
        )
    )


def _file(rng: random.Random, unicode: bool) -> str:
    name = rng.choice(("engine.py", "state.py", "main.rs", "index.ts", "README.md", "app.go"))
    if unicode and rng.random() < 0.2:
        name = "données_été.py"
    return f"/home/dev/project/{rng.choice(('src', 'lib', 'tests', 'docs'))}/{name}"


def _tools(family: str) -> list[_ToolMaker]:
    def bash(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        names = {"claude": "Bash", "pi": "bash", "openclaw": "exec", "picoclaw": "exec"}
        args: dict[str, Any] = {"command": _cmd(rng)}
        if family == "claude":
            args["description"] = t.words(3, 8)
        if family == "pi":
            args["timeout"] = 120
        return names.get(family, "bash"), args, t.output(rng.randint(40, 3000))

    def read(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        names = {"claude": "Read", "picoclaw": "read_file"}
        key = "file_path" if family == "claude" else "path"
        return (
            names.get(family, "read"),
            {key: _file(rng, t.unicode)},
            t.output(rng.randint(200, 8000)),
        )

    def edit(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        if family == "claude":
            args = {
                "file_path": _file(rng, t.unicode),
                "old_string": t.code(1, 6),
                "new_string": t.code(1, 8),
            }
            return "Edit", args, "The file has been updated successfully."
        if family == "picoclaw":
            args = {
                "path": _file(rng, t.unicode),
                "old_text": t.code(1, 4),
                "new_text": t.code(1, 5),
            }
            return "edit_file", args, "File edited successfully"
        args = {"path": _file(rng, t.unicode), "oldText": t.code(1, 6), "newText": t.code(1, 8)}
        return "edit", args, f"Successfully replaced text in {args['path']}."

    def write(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        names = {"claude": "Write", "picoclaw": "write_file"}
        key = "file_path" if family == "claude" else "path"
        args = {key: _file(rng, t.unicode), "content": t.code(5, 60)}
        return names.get(family, "write"), args, f"Wrote {len(args['content'])} bytes"

    def search(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        if family == "claude":
            return (
                "Grep",
                {"pattern": rng.choice(_WORDS), "output_mode": "content"},
                t.output(rng.randint(50, 1500)),
            )
        return "web_search", {"query": t.words(2, 6), "count": 5}, t.output(rng.randint(200, 2500))

    def todo(t: _Text, rng: random.Random) -> tuple[str, Any, str]:
        todos = [
            {
                "content": t.words(3, 8),
                "status": rng.choice(("pending", "in_progress")),
                "activeForm": t.words(2, 5),
            }
            for _ in range(rng.randint(1, 5))
        ]
        return "TodoWrite", {"todos": todos}, "Todos have been modified successfully."

    makers: list[_ToolMaker] = [bash, bash, read, read, edit, write, search]
    if family == "claude":
        makers.append(todo)
    return makers


_MODELS = {
    "openclaw": (
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("openai", "gpt-5"),
    ),
    "pi": (("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro")),
    "claude": (
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("anthropic", "claude-opus-4-1-20250805"),
        ("anthropic", "claude-haiku-4-5-20251001"),
    ),
    "codex": (("openai", "gpt-5-codex"), ("openai", "gpt-5")),
    "picoclaw": (("openrouter", "anthropic/claude-sonnet-4.5"), ("zhipu", "glm-4.6")),
    "jsonl": (("openai", "gpt-4o"), ("openai", "gpt-4.1-mini")),
}


def _conversation(
    rng: random.Random,
    text: _Text,
    clock: _Clock,
    family: str,
    messages: int,
    huge_line_bytes: int,
) -> list[_Step]:
    steps: list[_Step] = []
    makers = _tools(family)
    models = _MODELS[family]
    model = models[0][1]
    count = 0
    while count < messages:
        prompt = text.prose(3, 60) if rng.random() < 0.8 else text.code(2, 10) + "\nwhy?"
        steps.append(_User(prompt, clock.tick(2000, 600_000)))
        count += 1
        rounds = rng.randint(1, 4)
        for r in range(rounds):
            if rng.random() < 0.06:
                model = rng.choice(models)[1]
            ncalls = 0 if r == rounds - 1 else rng.choice((1, 1, 1, 2, 3))
            calls = []
            for _ in range(ncalls):
                name, args, output = rng.choice(makers)(text, rng)
                call_id = {
                    "claude": "toolu_01" + _b62(rng, 22),
                    "codex": "call_" + _b62(rng, 24),
                    "picoclaw": "call_" + _b62(rng, 24),
                }.get(family, "toolu_" + _b62(rng, 24))
                calls.append(_Call(call_id, name, args, output, rng.random() < 0.05))
            thinking = text.prose(10, 120) if rng.random() < 0.5 else None
            reply = text.prose(5, 150) if (not calls or rng.random() < 0.4) else None
            usage = (
                rng.randint(3, 2500),
                rng.randint(10, 2500),
                rng.randint(0, 150_000),
                rng.randint(0, 6000),
            )
            steps.append(_Resp(model, thinking, reply, calls, usage, clock.tick(500, 60_000)))
            count += 1
            for call in calls:
                steps.append(_Result(call, clock.tick(20, 30_000)))
                count += 1
            if count >= messages:
                break
    if huge_line_bytes > 0:
        for step in steps:
            if isinstance(step, _Result):
                step.call.output = text.output(huge_line_bytes)
                break
        else:
            steps.append(_User(text.output(huge_line_bytes), clock.tick()))
    return steps


# --- malformed lines -----------------------------------------------------------------------

# Valid JSON with a known field of the wrong shape: the decoder leaves that field out (see
# remote_sync.decode.salvage), and what is left is no message. Not malformed, no effect.
_MISMATCH = {
    "openclaw": b'{"type":"message","id":"0badf00d","message":"not an object"}',
    "pi": b'{"type":"message","id":"0badf00d","message":["not","an","object"]}',
    "claude-code": b'{"type":"assistant","message":"oops"}',
    "codex": b'{"type":"response_item","payload":"x"}',
    "picoclaw": b'{"role":["user"],"content":"a role that is not a string"}',
}


def _malformed(rng: random.Random, fmt: str) -> tuple[bytes, bool]:
    """A noise line, and whether it is malformed (else it is read but adds nothing)."""
    kinds: list[bytes] = [
        b'{"type":"message","id":"ab12cd34","timestamp":"2026-01-0',  # a crash mid-write
        b"[1,2,3]",
        b'"just a string"',
        b"42",
        b"null",
        b'{"text":"\xff\xfe broken utf-8"}',
        b"\x00" * rng.randint(1, 64),  # preallocated zeros after a crash
        b'{"a":1}{"b":2}',
        b"not json at all",
    ]
    if fmt in _MISMATCH:
        kinds.append(_MISMATCH[fmt])
    line = rng.choice(kinds)
    return line, line != _MISMATCH.get(fmt)


def _insert_noise(
    rng: random.Random, fmt: str, lines: list[_Line], malformed: int, blank_lines: int
) -> None:
    for _ in range(malformed):
        line, is_malformed = _malformed(rng, fmt)
        lines.insert(rng.randint(0, len(lines)), _Line(line, _Eff(malformed=is_malformed)))
    for _ in range(blank_lines):
        blank = rng.choice((b"", b"   ", b"\t", b"\r"))
        lines.insert(rng.randint(0, len(lines)), _Line(blank, _Eff()))


# --- v3: OpenClaw and pi ------------------------------------------------------------------


def _v3(
    fmt: str,
    rng: random.Random,
    text: _Text,
    clock: _Clock,
    steps: list[_Step],
    session_id: str,
) -> list[_Line]:
    family = fmt
    lines: list[_Line] = []
    parent: str | None = None
    models = {m: p for p, m in _MODELS[family]}

    def entry(kind: str, ns: int, body: dict[str, Any], eff: _Eff) -> None:
        nonlocal parent
        eid = _hex(rng, 8)
        record = {"type": kind, "id": eid, "parentId": parent, "timestamp": iso_ms(ns), **body}
        parent = eid
        eff.ts = iso_ms(ns)
        lines.append(_Line(_json(record), eff))

    start = clock.ns
    cwd = "/home/dev/project" if fmt == "pi" else "/home/dev/.openclaw/workspace"
    header = {
        "type": "session",
        "version": 3,
        "id": session_id,
        "timestamp": iso_ms(start),
        "cwd": cwd,
    }
    # pi's id is its header's; OpenClaw's is its file name's (a path, not the lines, gives it).
    header_id = session_id if fmt == "pi" else None
    lines.append(_Line(_json(header), _Eff(ts=iso_ms(start), session_id=header_id)))
    current: str | None = None
    for step in steps:
        if isinstance(step, _User):
            text_blocks = [{"type": "text", "text": step.text}]
            content: Any = step.text if rng.random() < 0.3 else text_blocks
            msg = {
                "role": "user",
                "content": content,
                "timestamp": step.ns // 1_000_000 - rng.randint(0, 400),
            }
            entry(
                "message",
                step.ns,
                {"message": msg},
                _Eff(
                    role="user",
                    title=step.text,
                    message=ExpectedMessage(0, "user", iso_ms(step.ns), step.text, []),
                ),
            )
            if fmt == "openclaw" and rng.random() < 0.1:
                entry(
                    "custom",
                    step.ns + 1_000_000,
                    {
                        "customType": "openclaw.cache-ttl",
                        "data": {"timestamp": step.ns // 1_000_000, "provider": "anthropic"},
                    },
                    _Eff(),
                )
            if fmt == "pi" and rng.random() < 0.1:
                out = text.output(rng.randint(20, 400))
                cmd = _cmd(rng)
                bash = {
                    "role": "bashExecution",
                    "command": cmd,
                    "output": out,
                    "exitCode": 0,
                    "cancelled": False,
                    "truncated": False,
                    "timestamp": step.ns // 1_000_000 + 5,
                }
                ts = step.ns + 7_000_000
                entry(
                    "message",
                    ts,
                    {"message": bash},
                    _Eff(
                        role="other",
                        message=ExpectedMessage(
                            0, "bashExecution", iso_ms(ts), f"$ {cmd}\n{out}", []
                        ),
                    ),
                )
        elif isinstance(step, _Resp):
            if step.model != current:
                current = step.model
                entry(
                    "model_change",
                    step.ns - 1_000_000,
                    {"provider": models[step.model], "modelId": step.model},
                    _Eff(models=(step.model,)),
                )
                if rng.random() < 0.3:
                    entry(
                        "thinking_level_change",
                        step.ns - 900_000,
                        {"thinkingLevel": rng.choice(("low", "medium", "high"))},
                        _Eff(),
                    )
            blocks: list[dict[str, Any]] = []
            if step.thinking:
                blocks.append(
                    {
                        "type": "thinking",
                        "thinking": step.thinking,
                        "thinkingSignature": _b62(rng, 80),
                    }
                )
            if step.text:
                blocks.append({"type": "text", "text": step.text})
            for call in step.calls:
                blocks.append(
                    {"type": "toolCall", "id": call.id, "name": call.name, "arguments": call.args}
                )
            i, o, cr, cw = step.usage
            cost = {
                "input": round(i * 3e-6, 9),
                "output": round(o * 15e-6, 9),
                "cacheRead": round(cr * 0.3e-6, 9),
                "cacheWrite": round(cw * 3.75e-6, 9),
            }
            total = round(sum(cost.values()), 9)
            cost["total"] = total
            msg = {
                "role": "assistant",
                "content": blocks,
                "api": "anthropic-messages",
                "provider": models[step.model],
                "model": step.model,
                "usage": {
                    "input": i,
                    "output": o,
                    "cacheRead": cr,
                    "cacheWrite": cw,
                    "totalTokens": i + o + cr + cw,
                    "cost": cost,
                },
                "stopReason": "toolUse" if step.calls else "stop",
                "timestamp": step.ns // 1_000_000,
            }
            entry(
                "message",
                step.ns,
                {"message": msg},
                _Eff(
                    role="assistant",
                    tool_calls=len(step.calls),
                    usage=step.usage,
                    cost=total,
                    models=(step.model,),
                    message=ExpectedMessage(
                        0,
                        "assistant",
                        iso_ms(step.ns),
                        step.text or "",
                        [(c.name, _args_text(c.args)) for c in step.calls],
                        step.model,
                    ),
                ),
            )
        else:
            call = step.call
            msg = {
                "role": "toolResult",
                "toolCallId": call.id,
                "toolName": call.name,
                "content": [{"type": "text", "text": call.output}],
                "details": {"exitCode": 1 if call.is_error else 0},
                "isError": call.is_error,
                "timestamp": step.ns // 1_000_000,
            }
            entry(
                "message",
                step.ns,
                {"message": msg},
                _Eff(
                    role="tool",
                    message=ExpectedMessage(0, "tool", iso_ms(step.ns), call.output, []),
                ),
            )
            if rng.random() < 0.02:
                entry(
                    "compaction",
                    step.ns + 2_000_000,
                    {
                        "summary": text.prose(20, 80),
                        "firstKeptEntryId": _hex(rng, 8),
                        "tokensBefore": rng.randint(50_000, 180_000),
                    },
                    _Eff(),
                )
    if fmt == "openclaw" and rng.random() < 0.5:
        entry("session_info", steps[-1].ns + 1_000_000, {"name": text.words(2, 5)}, _Eff())
    return lines


# --- Claude Code ---------------------------------------------------------------------------


def _claude(
    rng: random.Random,
    text: _Text,
    clock: _Clock,
    steps: list[_Step],
    session_id: str,
    *,
    split_responses: bool,
    subagent: bool,
    cost_usd: bool,
) -> list[_Line]:
    lines: list[_Line] = []
    parent: str | None = None
    agent_id = _hex(rng, 8)
    hosted = random.Random(session_id)  # hosted tool calls, apart from the main stream
    base: dict[str, Any] = {
        "isSidechain": subagent,
        "userType": "external",
        "cwd": "/home/dev/project",
        "sessionId": session_id,
        "version": "1.0.43" if cost_usd else "2.0.31",  # costUSD is from the 1.0 era
        "gitBranch": "main",
    }
    if subagent:
        base["agentId"] = agent_id

    def add(kind: str, ns: int, body: dict[str, Any], eff: _Eff) -> None:
        nonlocal parent
        uid = _uuid(rng)
        record = {
            "parentUuid": parent,
            **base,
            "type": kind,
            **body,
            "uuid": uid,
            "timestamp": iso_ms(ns),
        }
        parent = uid
        eff.ts = iso_ms(ns)
        lines.append(_Line(_json(record), eff))

    def user(
        ns: int,
        content: Any,
        shown: str,
        *,
        title: bool,
        extra: dict[str, Any] | None = None,
        role: str = "user",
    ) -> None:
        body = {"message": {"role": "user", "content": content}, **(extra or {})}
        add(
            "user",
            ns,
            body,
            _Eff(
                role=role,
                title=shown if title else None,
                message=ExpectedMessage(0, role, iso_ms(ns), shown, []),
            ),
        )

    if not subagent and rng.random() < 0.2:  # a resumed session starts with summaries
        lines.append(
            _Line(
                _json({"type": "summary", "summary": text.words(3, 9), "leafUuid": _uuid(rng)}),
                _Eff(),
            )
        )
    if not subagent and rng.random() < 0.4:  # a slash command before the first prompt
        ns = steps[0].ns - 10_000_000_000
        caveat = (
            "Caveat: The messages below were generated by the user while running local "
            "commands. DO NOT respond to these messages."
        )
        user(ns, caveat, caveat, title=False, extra={"isMeta": True}, role="system")
        cmd = (
            "<command-name>/model</command-name>\n<command-message>model</command-message>\n"
            "<command-args></command-args>"
        )
        user(ns + 1_000_000, cmd, cmd, title=False, role="system")  # Claude Code's record
        out = "<local-command-stdout>Set model to \x1b[1mSonnet 4.5\x1b[22m</local-command-stdout>"
        user(ns + 2_000_000, out, out, title=False, role="system")
    for step in steps:
        if isinstance(step, _User):
            if not subagent:
                mid = _uuid(rng)
                lines.append(
                    _Line(
                        _json(
                            {
                                "type": "file-history-snapshot",
                                "messageId": mid,
                                "snapshot": {
                                    "messageId": mid,
                                    "trackedFileBackups": {},
                                    "timestamp": iso_ms(step.ns),
                                },
                                "isSnapshotUpdate": False,
                            }
                        ),
                        _Eff(),
                    )
                )
            content: Any = (
                step.text if rng.random() < 0.7 else [{"type": "text", "text": step.text}]
            )
            user(step.ns, content, step.text, title=True)
            if rng.random() < 0.03:
                stop = "[Request interrupted by user]"
                stop_line = [{"type": "text", "text": stop}]
                user(step.ns + 3_000_000, stop_line, stop, title=False, role="system")
        elif isinstance(step, _Resp):
            msg_id = "msg_01" + _b62(rng, 22)
            req_id = "req_011C" + _b62(rng, 20)
            i, o, cr, cw = step.usage
            usage = {
                "input_tokens": i,
                "cache_creation_input_tokens": cw,
                "cache_read_input_tokens": cr,
                "cache_creation": {"ephemeral_5m_input_tokens": cw, "ephemeral_1h_input_tokens": 0},
                "output_tokens": o,
                "service_tier": "standard",
            }
            blocks: list[tuple[dict[str, Any], str, list[tuple[str, str]]]] = []
            if step.thinking:
                blocks.append(
                    (
                        {
                            "type": "thinking",
                            "thinking": step.thinking,
                            "signature": _b62(rng, 120),
                        },
                        "",
                        [],
                    )
                )
            if step.text:
                blocks.append(({"type": "text", "text": step.text}, step.text, []))
            for call in step.calls:
                blocks.append(
                    (
                        {"type": "tool_use", "id": call.id, "name": call.name, "input": call.args},
                        "",
                        [(call.name, _args_text(call.args))],
                    )
                )
            if hosted.random() < 0.1:  # a search the API runs itself: a tool call all the same
                query = {"query": " ".join(hosted.choices(_WORDS, k=3))}
                search_id = "srvtoolu_01" + _b62(hosted, 22)
                use = {"type": "server_tool_use", "id": search_id, "name": "web_search"}
                blocks.append(({**use, "input": query}, "", [("web_search", _args_text(query))]))
                found = {"type": "web_search_tool_result", "tool_use_id": search_id, "content": []}
                blocks.append((found, "", []))
            groups = [[b] for b in blocks] if split_responses else [blocks]
            # Older versions price each response; every line of it repeats the price.
            price = round(i * 3e-6 + o * 15e-6 + cr * 0.3e-6 + cw * 3.75e-6, 9)
            priced = {"costUSD": price, "durationMs": 1000 + o} if cost_usd else {}
            for n, group in enumerate(groups):
                last = n == len(groups) - 1
                # Written as the response streams: before its last line, the output so far.
                so_far = o if last else min(o, 1 + 4 * n)
                message = {
                    "model": step.model,
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [b[0] for b in group],
                    "stop_reason": ("tool_use" if step.calls else "end_turn") if last else None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": so_far},
                }
                ns = step.ns + n * 1_000_000
                shown = "\n".join(b[1] for b in group if b[1])
                calls = [c for b in group for c in b[2]]
                add(
                    "assistant",
                    ns,
                    {"message": message, "requestId": req_id, **priced},
                    _Eff(
                        role="assistant",
                        tool_calls=len(calls),
                        usage=(i, so_far, cr, cw),
                        usage_key=f"{msg_id}:{req_id}",
                        cost=price if cost_usd else None,
                        models=(step.model,),
                        message=ExpectedMessage(
                            0, "assistant", iso_ms(ns), shown, calls, step.model
                        ),
                    ),
                )
            if rng.random() < 0.1:
                lines.append(
                    _Line(
                        _json(
                            {
                                "parentUuid": parent,
                                **base,
                                "type": "system",
                                "subtype": "turn_duration",
                                "durationMs": rng.randint(1000, 90_000),
                                "uuid": _uuid(rng),
                                "timestamp": iso_ms(step.ns + 9_000_000),
                                "isMeta": False,
                            }
                        ),
                        _Eff(ts=iso_ms(step.ns + 9_000_000)),
                    )
                )
        else:
            call = step.call
            as_blocks = rng.random() < 0.2
            content = [{"type": "text", "text": call.output}] if as_blocks else call.output
            result = {
                "tool_use_id": call.id,
                "type": "tool_result",
                "content": content,
                "is_error": call.is_error,
            }
            extra = {
                "toolUseResult": {
                    "stdout": call.output,
                    "stderr": "",
                    "interrupted": False,
                    "isImage": False,
                }
            }
            user(step.ns, [result], call.output, title=False, extra=extra, role="tool")
            if rng.random() < 0.01:  # an auto-compaction
                ns = step.ns + 5_000_000
                lines.append(
                    _Line(
                        _json(
                            {
                                "parentUuid": None,
                                "logicalParentUuid": parent,
                                **base,
                                "type": "system",
                                "subtype": "compact_boundary",
                                "content": "Conversation compacted",
                                "isMeta": False,
                                "timestamp": iso_ms(ns),
                                "uuid": _uuid(rng),
                                "level": "info",
                                "compactMetadata": {"trigger": "auto", "preTokens": 155_000},
                            }
                        ),
                        _Eff(ts=iso_ms(ns)),
                    )
                )
                summary = "This session is being continued from a previous conversation. " + (
                    text.prose(30, 120)
                )
                user(
                    ns + 1_000_000,
                    summary,
                    summary,
                    title=False,
                    extra={"isCompactSummary": True, "isVisibleInTranscriptOnly": True},
                    role="system",
                )
    if not subagent and rng.random() < 0.3:  # a synthetic reply (no API call)
        ns = clock.tick()
        msg = {
            "id": _uuid(rng),
            "model": "<synthetic>",
            "role": "assistant",
            "stop_reason": "stop_sequence",
            "stop_sequence": "",
            "type": "message",
            "usage": {
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            "content": [{"type": "text", "text": "No response requested."}],
        }
        add(
            "assistant",
            ns,
            {"message": msg, "isApiErrorMessage": False, **({"costUSD": 0} if cost_usd else {})},
            _Eff(
                role="assistant",
                usage=(0, 0, 0, 0),
                usage_key=f"{msg['id']}:None",  # no requestId: keyed by the id alone
                cost=0.0 if cost_usd else None,
                message=ExpectedMessage(0, "assistant", iso_ms(ns), "No response requested.", []),
            ),
        )
    return lines


# --- Codex ---------------------------------------------------------------------------------


def _codex(
    rng: random.Random,
    text: _Text,
    clock: _Clock,
    steps: list[_Step],
    session_id: str,
    legacy: bool = False,
) -> list[_Line]:
    """A Codex rollout; ``legacy``: as Codex wrote it before the ``{timestamp, type,
    payload}`` wrapper (mid 2025): a bare session meta first, bare response items with no
    time, ``record_type`` state lines, and no events, turn contexts or token counts."""
    lines: list[_Line] = []
    cwd = "/home/dev/project"
    hosted = random.Random(session_id)  # hosted tool calls, apart from the main stream
    # Early legacy metas had no cwd; later ones had cwd, originator and cli_version.
    legacy_cwd = legacy and rng.random() < 0.5

    def add(ns: int, kind: str, payload: dict[str, Any], eff: _Eff) -> None:
        if not legacy:
            eff.ts = iso_ms(ns)
            line = {"timestamp": iso_ms(ns), "type": kind, "payload": payload}
            lines.append(_Line(_json(line), eff))
        elif kind == "session_meta":
            meta = {"id": payload["id"], "timestamp": payload["timestamp"]}
            if legacy_cwd:
                meta.update(cwd=cwd, originator="codex_cli_rs", cli_version="0.9.0")
            else:
                eff.agent = None
            meta.update(instructions=None, git=payload["git"])
            eff.ts = payload["timestamp"]
            lines.append(_Line(_json(meta), eff))
        elif kind == "response_item":
            if eff.message is not None:
                eff.message.timestamp = None  # a bare item has no time
            lines.append(_Line(_json(payload), eff))
            if eff.role == "assistant" and rng.random() < 0.5:
                state = {"record_type": "state", "previous_response_id": "resp_" + _hex(rng, 48)}
                lines.append(_Line(_json(state), _Eff()))

    def item(ns: int, payload: dict[str, Any], eff: _Eff) -> None:
        add(ns, "response_item", payload, eff)

    def msg(
        ns: int, role: str, kind: str, body: str, *, title: bool, injected: bool = False
    ) -> None:
        # Injected context in a user turn counts (and shows) as a system message.
        bucket = "system" if injected else {"developer": "system"}.get(role, role)
        item(
            ns,
            {"type": "message", "role": role, "content": [{"type": kind, "text": body}]},
            _Eff(
                role=bucket,
                title=body if title else None,
                message=ExpectedMessage(0, bucket, iso_ms(ns), body, []),
            ),
        )

    def call_item(ns: int, payload: dict[str, Any], name: str, args: str) -> None:
        # A tool call item is an assistant message of its own, with no text.
        eff = _Eff(
            role="assistant",
            tool_calls=1,
            message=ExpectedMessage(0, "assistant", iso_ms(ns), "", [(name, args)]),
        )
        item(ns, payload, eff)

    ns = clock.ns
    meta = {
        "id": session_id,
        "timestamp": iso_ms(ns),
        "cwd": cwd,
        "originator": "codex_cli_rs",
        "cli_version": "0.46.0",
        "instructions": None,
        "source": "cli",
        "model_provider": "openai",
        "git": {
            "commit_hash": _hex(rng, 40),
            "branch": "main",
            "repository_url": "git@github.com:acme/project.git",
        },
    }
    add(ns, "session_meta", meta, _Eff(session_id=session_id, agent=cwd))
    if rng.random() < 0.5 and not legacy:
        msg(
            ns + 1,
            "developer",
            "input_text",
            "<permissions instructions>\nFilesystem sandboxing: workspace-write.\n"
            "</permissions instructions>",
            title=False,
        )
    instructions = text.prose(20, 80)
    agents = (
        f"# AGENTS.md instructions for {cwd}\n\n<INSTRUCTIONS>\n{instructions}\n</INSTRUCTIONS>"
    )
    msg(ns + 2_000_000, "user", "input_text", agents, title=False, injected=True)
    env = (
        f"<environment_context>\n  <cwd>{cwd}</cwd>\n  <approval_policy>on-request"
        "</approval_policy>\n  <sandbox_mode>workspace-write</sandbox_mode>\n  "
        "<network_access>restricted</network_access>\n  <shell>bash</shell>\n"
        "</environment_context>"
    )
    msg(ns + 3_000_000, "user", "input_text", env, title=False, injected=True)
    turn_model: dict[int, str] = {}  # id of a prompt -> model of the response after it
    upcoming = _MODELS["codex"][0][1]
    for step in reversed(steps):
        if isinstance(step, _Resp):
            upcoming = step.model
        elif isinstance(step, _User):
            turn_model[id(step)] = upcoming
    totals = [0, 0, 0, 0]  # input (incl. cached), cached, output, reasoning
    first_count = True
    for step in steps:
        if isinstance(step, _User):
            add(
                step.ns - 1_000_000,
                "turn_context",
                {
                    "cwd": cwd,
                    "approval_policy": "on-request",
                    "sandbox_policy": {
                        "type": "workspace-write",
                        "network_access": False,
                        "exclude_tmpdir_env_var": False,
                        "exclude_slash_tmp": False,
                    },
                    "model": turn_model[id(step)],
                    "effort": "medium",
                    "summary": "auto",
                },
                _Eff(models=(turn_model[id(step)],)),
            )
            msg(step.ns, "user", "input_text", step.text, title=True)
            add(
                step.ns + 1,
                "event_msg",
                {"type": "user_message", "message": step.text, "images": []},
                _Eff(),
            )
            if first_count:
                first_count = False
                add(
                    step.ns + 2,
                    "event_msg",
                    {"type": "token_count", "info": None, "rate_limits": None},
                    _Eff(),
                )
        elif isinstance(step, _Resp):
            ns = step.ns
            if step.thinking:
                item(
                    ns,
                    {
                        "type": "reasoning",
                        "summary": [
                            {
                                "type": "summary_text",
                                "text": "**Planning**\n\n" + step.thinking[:200],
                            }
                        ],
                        "content": None,
                        "encrypted_content": "gAAAAB" + _b62(rng, 400),
                    },
                    _Eff(),
                )
                add(
                    ns + 1,
                    "event_msg",
                    {"type": "agent_reasoning", "text": step.thinking[:200]},
                    _Eff(),
                )
            for n, call in enumerate(step.calls):
                cns = ns + (n + 1) * 1_000_000
                roll = rng.random()
                if legacy and 0.6 <= roll < 0.85:
                    roll = 0.9  # no custom tool calls then: a local shell call
                if roll < 0.6:
                    args = {
                        "command": ["bash", "-lc", call.args.get("command", _cmd(rng))],
                        "workdir": cwd,
                        "timeout_ms": 120_000,
                    }
                    arguments = _args_text(args)
                    call.kind, call.name = "function", "shell"
                    call_item(
                        cns,
                        {
                            "type": "function_call",
                            "name": "shell",
                            "arguments": arguments,
                            "call_id": call.id,
                        },
                        "shell",
                        arguments,
                    )
                elif roll < 0.85:
                    patch = (
                        "*** Begin Patch\n*** Update File: src/app.py\n@@\n-"
                        + text.code(1, 3).replace("\n", "\n-")
                        + "\n+"
                        + text.code(1, 3).replace("\n", "\n+")
                        + "\n*** End Patch"
                    )
                    call.kind, call.name = "custom", "apply_patch"
                    call_item(
                        cns,
                        {
                            "type": "custom_tool_call",
                            "status": "completed",
                            "call_id": call.id,
                            "name": "apply_patch",
                            "input": patch,
                        },
                        "apply_patch",
                        patch,  # a string's text, unquoted
                    )
                else:
                    action = {
                        "type": "exec",
                        "command": ["bash", "-lc", _cmd(rng)],
                        "timeout_ms": 60_000,
                        "working_directory": cwd,
                    }
                    call.kind, call.name = "local_shell", "local_shell"
                    call_item(
                        cns,
                        {
                            "type": "local_shell_call",
                            "call_id": call.id,
                            "status": "completed",
                            "action": action,
                        },
                        "local_shell",
                        _args_text(action),
                    )
            if hosted.random() < 0.1 and not legacy:  # a search the API runs itself
                sns = ns + 800_000_000
                action = {"type": "search", "query": " ".join(hosted.choices(_WORDS, k=3))}
                call_item(
                    sns,
                    {"type": "web_search_call", "status": "completed", "action": action},
                    "web_search",
                    _args_text(action),
                )
            if step.text:
                tns = ns + 900_000_000
                msg(tns, "assistant", "output_text", step.text, title=False)
                add(tns + 1, "event_msg", {"type": "agent_message", "message": step.text}, _Eff())
            i, o, cr, _cw = step.usage
            reasoning = o // 3
            last = {
                "input_tokens": i + cr,
                "cached_input_tokens": cr,
                "output_tokens": o,
                "reasoning_output_tokens": reasoning,
                "total_tokens": i + cr + o,
            }
            totals = [totals[0] + i + cr, totals[1] + cr, totals[2] + o, totals[3] + reasoning]
            total = {
                "input_tokens": totals[0],
                "cached_input_tokens": totals[1],
                "output_tokens": totals[2],
                "reasoning_output_tokens": totals[3],
                "total_tokens": totals[0] + totals[2],
            }
            add(
                ns + 950_000_000,
                "event_msg",
                {
                    "type": "token_count",
                    "info": {
                        "total_token_usage": total,
                        "last_token_usage": last,
                        "model_context_window": 272_000,
                    },
                    "rate_limits": {
                        "primary": {
                            "used_percent": 12.0,
                            "window_minutes": 299,
                            "resets_in_seconds": 9000,
                        }
                    },
                },
                _Eff(codex_total=(totals[0] - totals[1], totals[1], totals[2])),
            )
        else:
            call = step.call
            if call.kind == "custom":
                shown = "Success. Updated the following files:\nM src/app.py\n"
                output = _args_text(
                    {"output": shown, "metadata": {"exit_code": 0, "duration_seconds": 0.1}}
                )
                item(
                    step.ns,
                    {"type": "custom_tool_call_output", "call_id": call.id, "output": output},
                    _Eff(
                        role="tool", message=ExpectedMessage(0, "tool", iso_ms(step.ns), shown, [])
                    ),
                )
            else:
                if rng.random() < 0.5:
                    shown = call.output
                    output = _args_text(
                        {
                            "output": shown,
                            "metadata": {
                                "exit_code": 1 if call.is_error else 0,
                                "duration_seconds": 0.4,
                            },
                        }
                    )
                else:
                    output = shown = (
                        f"Exit code: {1 if call.is_error else 0}\nWall time: 0.4 "
                        f"seconds\nOutput:\n{call.output}"
                    )
                item(
                    step.ns,
                    {"type": "function_call_output", "call_id": call.id, "output": output},
                    _Eff(
                        role="tool", message=ExpectedMessage(0, "tool", iso_ms(step.ns), shown, [])
                    ),
                )
    return lines


# --- picoclaw ------------------------------------------------------------------------------


#: Go's zero time.Time as encoding/json writes it: picoclaw's created_at when it was unset.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def _picoclaw(
    rng: random.Random, text: _Text, clock: _Clock, steps: list[_Step], migrated: int
) -> list[_Line]:
    lines: list[_Line] = []
    offset = rng.choice((0, 480, -300, 330, 60))
    with_model = rng.random() < 0.7

    def add(record: dict[str, Any], ns: int, eff: _Eff) -> None:
        if len(lines) < migrated:  # imported from a legacy session: no time, Go's zero one
            record["created_at"] = GO_ZERO_TIME
            if eff.message is not None:
                eff.message.timestamp = None
        else:
            record["created_at"] = _rfc3339nano(ns, offset)
            eff.ts = iso_ms(ns)
        lines.append(_Line(_go_json(record), eff))

    for step in steps:
        if isinstance(step, _User):
            add(
                {"role": "user", "content": step.text},
                step.ns,
                _Eff(
                    role="user",
                    title=step.text,
                    message=ExpectedMessage(0, "user", iso_ms(step.ns), step.text, []),
                ),
            )
        elif isinstance(step, _Resp):
            record: dict[str, Any] = {"role": "assistant", "content": step.text or ""}
            if step.thinking:
                record["reasoning_content"] = step.thinking
            calls = [(c.name, _args_text(c.args)) for c in step.calls]
            if step.calls:
                record["tool_calls"] = _chat_tool_calls(step.calls)
            if with_model:
                record["model_name"] = step.model
            add(
                record,
                step.ns,
                _Eff(
                    role="assistant",
                    tool_calls=len(step.calls),
                    models=(step.model,) if with_model else (),
                    message=ExpectedMessage(
                        0,
                        "assistant",
                        iso_ms(step.ns),
                        step.text or "",
                        calls,
                        step.model if with_model else None,
                    ),
                ),
            )
        else:
            call = step.call
            add(
                {"role": "tool", "content": call.output, "tool_call_id": call.id},
                step.ns,
                _Eff(
                    role="tool",
                    message=ExpectedMessage(0, "tool", iso_ms(step.ns), call.output, []),
                ),
            )
    return lines


def compact_picoclaw(session: Session, keep_last: int) -> Session:
    """The file picoclaw's Compact leaves: the last ``keep_last`` messages, rewritten."""
    kept = [line for line in session._lines if line.eff.role is not None]
    kept = kept[-keep_last:] if keep_last > 0 else []
    fresh = [_Line(line.data, _copy_eff(line.eff)) for line in kept]
    return _assemble(fresh)


def _copy_eff(eff: _Eff) -> _Eff:
    out = _Eff(**{**eff.__dict__})
    if eff.message is not None:
        m = eff.message
        out.message = ExpectedMessage(0, m.role, m.timestamp, m.text, list(m.tool_calls), m.model)
    return out


# --- generic jsonl -------------------------------------------------------------------------


def _generic(rng: random.Random, text: _Text, clock: _Clock, steps: list[_Step]) -> list[_Line]:
    lines: list[_Line] = []

    def stamp(record: dict[str, Any], ns: int) -> None:
        roll = rng.random()
        if roll < 0.5:
            record["timestamp"] = iso_ms(ns)
        elif roll < 0.7:
            record["created_at"] = ns // 1_000_000  # epoch milliseconds
        else:
            record["time"] = (ns // 1_000_000) / 1000  # epoch seconds

    for step in steps:
        if rng.random() < 0.05:
            ns = step.ns - 1_000_000
            event = {"type": "event", "name": "heartbeat"}
            stamp(event, ns)
            lines.append(_Line(_json(event), _Eff(ts=iso_ms(ns))))
        if isinstance(step, _User):
            record: dict[str, Any]
            if rng.random() < 0.5:
                record = {"role": "user", "content": step.text}
            else:
                record = {
                    "message": {"role": "user", "content": [{"type": "text", "text": step.text}]}
                }
            stamp(record, step.ns)
            lines.append(
                _Line(
                    _json(record),
                    _Eff(
                        role="user",
                        title=step.text,
                        ts=iso_ms(step.ns),
                        message=ExpectedMessage(0, "user", iso_ms(step.ns), step.text, []),
                    ),
                )
            )
        elif isinstance(step, _Resp):
            record = {"role": "assistant", "content": step.text or "", "model": step.model}
            calls = [(c.name, _args_text(c.args)) for c in step.calls]
            if step.calls:
                record["tool_calls"] = _chat_tool_calls(step.calls)
            stamp(record, step.ns)
            lines.append(
                _Line(
                    _json(record),
                    _Eff(
                        role="assistant",
                        tool_calls=len(step.calls),
                        models=(step.model,),
                        ts=iso_ms(step.ns),
                        message=ExpectedMessage(
                            0, "assistant", iso_ms(step.ns), step.text or "", calls, step.model
                        ),
                    ),
                )
            )
        else:
            call = step.call
            record = {"role": "tool", "tool_call_id": call.id, "text": call.output}
            stamp(record, step.ns)
            lines.append(
                _Line(
                    _json(record),
                    _Eff(
                        role="tool",
                        ts=iso_ms(step.ns),
                        message=ExpectedMessage(0, "tool", iso_ms(step.ns), call.output, []),
                    ),
                )
            )
    return lines


# --- generate ------------------------------------------------------------------------------


def generate(
    format: str,
    rng: random.Random,
    *,
    messages: int = 40,
    session_id: str | None = None,
    malformed: int = 0,
    blank_lines: int = 0,
    huge_line_bytes: int = 0,
    unicode: bool = True,
    split_responses: bool = True,
    subagent: bool = False,
    cost_usd: bool = False,
    migrated: int = 0,
    start_ns: int | None = None,
    legacy_codex: bool = False,
    bom: bool = False,
) -> Session:
    """One realistic transcript of ``format`` with about ``messages`` messages.

    ``legacy_codex``: a Codex rollout as written before the wrapper (see ``_codex``).
    ``bom``: the file starts with a UTF-8 byte order mark (not part of the first line's JSON).

    ``messages`` counts abstract turns (user prompts, model responses, tool results); the
    lines a format writes for them differ (Claude Code splits responses; Codex adds events).
    ``start_ns`` fixes the session's start (epoch nanoseconds); by default a random time in
    2025-2026.
    """
    text = _Text(rng, unicode)
    clock = _Clock(rng, start_ns)
    sid = session_id or _uuid(rng)
    family = {"claude-code": "claude"}.get(format, format)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    steps = _conversation(rng, text, clock, family, max(messages, 1), huge_line_bytes)
    # Some prompts are markup the user pasted: still the user's text (only the harness's own
    # tags are injected). Drawn apart from rng, so the rest of a session stays as it was.
    markup = random.Random(f"markup-{sid}")
    for step in steps:
        if isinstance(step, _User) and markup.random() < 0.08:
            step.text = f'<div class="card">{step.text}</div>'
    if format in ("openclaw", "pi"):
        lines = _v3(format, rng, text, _Clock(rng, steps[0].ns - 5_000_000_000), steps, sid)
    elif format == "claude-code":
        lines = _claude(
            rng,
            text,
            clock,
            steps,
            sid,
            split_responses=split_responses,
            subagent=subagent,
            cost_usd=cost_usd,
        )
    elif format == "codex":
        codex_clock = _Clock(rng, steps[0].ns - 20_000_000_000)
        lines = _codex(rng, text, codex_clock, steps, sid, legacy=legacy_codex)
    elif format == "picoclaw":
        lines = _picoclaw(rng, text, clock, steps, migrated)
    else:
        lines = _generic(rng, text, clock, steps)
    _insert_noise(rng, format, lines, malformed, blank_lines)
    if bom:
        lines[0] = _Line(b"\xef\xbb\xbf" + lines[0].data, lines[0].eff)
    return _assemble(lines)


# --- trees ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _compact_ts(ns: int) -> str:
    """OpenClaw's archive suffix time: ISO with ``:`` replaced by ``-``."""
    return iso_ms(ns).replace(":", "-")


def build_tree(
    format: str,
    root: Path,
    sessions: int,
    rng: random.Random,
    *,
    messages: int = 40,
    compacted: float = 0.3,
    **knobs: Any,
) -> Tree:
    """Write ``sessions`` sessions of ``format`` (plus side files) under ``root``.

    Each session gets ``messages`` ±50 %. ``compacted``: the share of picoclaw sessions
    rewritten by Compact. ``knobs`` go to :func:`generate` for every transcript.
    """
    tree = Tree(root, format, [], [])

    def transcript(
        rel: str, session: Session, agent: str | None, sid: str, previous: Session | None = None
    ) -> None:
        path = _write(root / rel, session.data)
        expected = dict(session.expected, agent=agent, session_id=sid)
        tree.transcripts.append(TreeFile(path, rel.encode(), session, expected, previous))

    def side(rel: str, data: bytes) -> None:
        tree.side_files.append(_write(root / rel, data))

    def count() -> int:
        return max(1, rng.randint(messages // 2, messages * 3 // 2))

    if format == "openclaw":
        agents = ["main", "work", "ops"][: rng.randint(1, 3)]
        index: dict[str, dict[str, dict[str, Any]]] = {a: {} for a in agents}
        for n in range(sessions):
            agent = rng.choice(agents)
            sid = _uuid(rng)
            d = f"agents/{agent}/sessions"
            session = generate("openclaw", rng, messages=count(), session_id=sid, **knobs)
            roll = rng.random()
            if roll < 0.15:
                rel = f"{d}/{sid}.jsonl.reset.{_compact_ts(_last_ns(session))}"
            elif roll < 0.22:
                rel = f"{d}/{sid}.jsonl.deleted.{_compact_ts(_last_ns(session))}"
            elif roll < 0.27:  # archived by ClawPal into the sibling directory
                rel = f"agents/{agent}/sessions_archive/{sid}.jsonl"
            else:
                rel = f"{d}/{sid}.jsonl"
                key = f"agent:{agent}:" + ("main" if n == 0 else f"telegram:group:{n}")
                index[agent][key] = {
                    "sessionId": sid,
                    "updatedAt": rng.randint(1_760_000_000_000, 1_790_000_000_000),
                    "chatType": "direct",
                    "inputTokens": session.expected["tokens_in"],
                    "outputTokens": session.expected["tokens_out"],
                    "totalTokens": session.expected["tokens_in"] + session.expected["tokens_out"],
                    "model": (session.expected["models"] or ["?"])[-1],
                    "compactionCount": 0,
                }
            transcript(rel, session, agent, sid)
            if rng.random() < 0.2:  # a Telegram topic of this session (same header id)
                topic = f"{sid}-topic-{rng.randint(2, 999)}"
                tsession = generate("openclaw", rng, messages=count(), session_id=sid, **knobs)
                transcript(f"{d}/{topic}.jsonl", tsession, agent, topic)
            if rng.random() < 0.5:
                events = b"".join(
                    _json(
                        {
                            "ts": iso_ms(_last_ns(session)),
                            "kind": "tool.start",
                            "runId": _uuid(rng),
                            "data": {"name": "exec"},
                        }
                    )
                    + b"\n"
                    for _ in range(rng.randint(1, 5))
                )
                side(f"{d}/{sid}.trajectory.jsonl", events)
                side(
                    f"{d}/{sid}.trajectory-path.json",
                    _json({"path": f"{d}/{sid}.trajectory.jsonl"}),
                )
            if rng.random() < 0.05:
                side(f"{d}/{sid}.jsonl.bak-{rng.randint(10**12, 10**13)}", session.data[:200])
        for agent in agents:
            side(
                f"agents/{agent}/sessions/sessions.json",
                orjson.dumps(index[agent], option=orjson.OPT_INDENT_2),
            )
            side(f"agents/{agent}/agent/auth-profiles.json", b'{"version":1,"profiles":{}}')
    elif format == "claude-code":
        slugs = ["-home-dev-project", "-home-dev-other-repo", "-srv-app"]

        def subagent(sid: str) -> Session:
            return generate(
                "claude-code",
                rng,
                messages=max(2, count() // 3),
                session_id=sid,
                subagent=True,
                **knobs,
            )

        for _ in range(sessions):
            slug = rng.choice(slugs)
            sid = _uuid(rng)
            session = generate("claude-code", rng, messages=count(), session_id=sid, **knobs)
            transcript(f"projects/{slug}/{sid}.jsonl", session, slug, sid)
            if rng.random() < 0.3:
                aid = _hex(rng, 8)
                sub = subagent(sid)
                transcript(
                    f"projects/{slug}/{sid}/subagents/agent-{aid}.jsonl",
                    sub,
                    slug,
                    f"{sid}/agent-{aid}",
                )
            if rng.random() < 0.1:
                aid = _hex(rng, 8)
                sub = subagent(sid)
                transcript(f"projects/{slug}/agent-{aid}.jsonl", sub, slug, f"agent-{aid}")
            if rng.random() < 0.2:
                side(
                    f"projects/{slug}/{sid}/tool-results/toolu_01{_b62(rng, 22)}.txt",
                    b"large tool output\n" * 50,
                )
        side(
            "history.jsonl",
            b"".join(
                _json(
                    {
                        "display": "fix the tests",
                        "pastedContents": {},
                        "timestamp": 1760000000000,
                        "project": "/home/dev/project",
                    }
                )
                + b"\n"
                for _ in range(3)
            ),
        )
        for slug in slugs:
            if (root / "projects" / slug).exists():
                side(f"projects/{slug}/sessions-index.json", b'{"version":1,"entries":[]}')
    elif format == "codex":
        index_lines: list[bytes] = []
        for _ in range(sessions):
            sid = _uuid(rng)
            session = generate("codex", rng, messages=count(), session_id=sid, **knobs)
            first = session.expected["first_ts"] or "2026-01-01T00:00:00.000Z"
            stamp = first[:19].replace(":", "-")
            name = f"rollout-{stamp}-{sid}.jsonl"
            if rng.random() < 0.15:
                rel = f"archived_sessions/{name}"
            else:
                rel = f"sessions/{first[:4]}/{first[5:7]}/{first[8:10]}/{name}"
            transcript(rel, session, session.expected["agent"], sid)
            index_lines.append(
                _json(
                    {
                        "id": sid,
                        "thread_name": "a thread",
                        "updated_at": session.expected["last_ts"],
                    }
                )
                + b"\n"
            )
        side("session_index.jsonl", b"".join(index_lines))
        side(
            "history.jsonl",
            _json({"session_id": _uuid(rng), "ts": 1760000000, "text": "fix the build"}) + b"\n",
        )
        side("config.toml", b'model = "gpt-5-codex"\n')
    elif format == "picoclaw":
        for n in range(sessions):
            key = rng.choice(
                (
                    "agent:main:main",
                    f"telegram:{rng.randint(10**8, 10**9)}",
                    f"discord:{rng.randint(10**17, 10**18)}",
                    f"cli:default:{n}",
                )
            )
            key = f"{key}:{n}"
            stem = key.replace(":", "_").replace("/", "_").replace("\\", "_")
            session = generate("picoclaw", rng, messages=count(), **knobs)
            previous = None
            if rng.random() < compacted:
                previous = session
                session = compact_picoclaw(session, rng.randint(4, 20))
            transcript(f"sessions/{stem}.jsonl", session, None, stem, previous)
            meta = {
                "key": key,
                "summary": "" if previous is None else "Earlier: setup",
                "skip": 0,
                "count": session.expected["user"]
                + session.expected["assistant"]
                + session.expected["tool"],
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-02T00:00:00Z",
                "scope": {"kind": "direct"},
                "aliases": [],
            }
            side(f"sessions/{stem}.meta.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        side("sessions/old_chat.json.migrated", b'{"key":"old:chat","messages":[]}')
    elif format == "pi":
        cwds = ["--home-dev-project--", "--home-dev-other--", "--srv-app--"]
        if knobs.get("unicode", True):
            cwds.append("--home-dev-projets-été--")
        for _ in range(sessions):
            cwd = rng.choice(cwds)
            sid = _uuid(rng)
            session = generate("pi", rng, messages=count(), session_id=sid, **knobs)
            first = session.expected["first_ts"] or "2026-01-01T00:00:00.000Z"
            stamp = first.replace(":", "-").replace(".", "-")
            transcript(f"sessions/{cwd}/{stamp}_{sid}.jsonl", session, cwd, sid)
        side("settings.json", b'{"defaultProvider":"anthropic"}')
    elif format == "jsonl":
        for n in range(sessions):
            rel = f"logs/{rng.choice(('bot', 'chat', 'runs'))}/session-{n:04d}.jsonl"
            session = generate("jsonl", rng, messages=count(), **knobs)
            transcript(rel, session, None, rel.removesuffix(".jsonl"))
        side("logs/README.txt", b"not a transcript\n")
    else:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    return tree


def _last_ns(session: Session) -> int:
    last = session.expected["last_ts"] or "2026-01-01T00:00:00.000Z"
    dt = datetime.strptime(last, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int((dt - _EPOCH).total_seconds()) * 10**9


def write_tree(
    format: str, root: Path, sessions: int, rng: random.Random, **kwargs: Any
) -> list[Path]:
    """:func:`build_tree`, returning only the transcript paths."""
    return [entry.path for entry in build_tree(format, root, sessions, rng, **kwargs).transcripts]
