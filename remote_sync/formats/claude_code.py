"""Claude Code's transcripts (``~/.claude/projects``).

What it owns: the line view of a Claude Code transcript (:class:`ClaudeLine`) and
:class:`ClaudeCodeReader`.

Files: ``projects/<slug>/<session-uuid>.jsonl`` (the slug is the session's cwd with ``/``
replaced by ``-``), sub-agents in ``projects/<slug>/<uuid>/subagents/agent-<id>.jsonl`` and,
from older versions, ``projects/<slug>/agent-<id>.jsonl``. Not transcripts: tool output in
``<uuid>/tool-results/``, ``sessions-index.json`` and anything else. Paths may also be given
relative to the ``projects`` directory itself. Identity: the project is the slug; the session
id is the uuid, ``<uuid>/agent-<id>`` for a sub-agent of the new layout and ``agent-<id>``
for the old one. Lines carry a ``sessionId`` too, but it is not used: a sub-agent's lines
carry its parent's.

What is read from a line (types ``user`` and ``assistant`` with a ``message`` are messages;
``system``, ``summary``, ``file-history-snapshot``, ``progress``... are lines only):

* role: ``message.role`` (the line's ``type`` if absent). A ``user`` line whose content holds
  a ``tool_result`` block is a **tool** message: that is how Claude Code records tool output.
  A ``user`` line marked ``isMeta`` (text the harness injected) or ``isCompactSummary`` (the
  summary that replaces a compacted history) is a **system** message: the user typed neither.
  So is a ``user`` line whose whole text is what Claude Code writes around a turn (a slash
  command's ``<command-name>…`` record, ``<local-command-stdout>…``, the ``[Request
  interrupted by user]`` marker; see :func:`~remote_sync.formats.generic.is_injected`), as
  Codex's injected context is: otherwise an interrupted one-prompt session would count two
  user messages and never be of low value.
* One API response is written as several ``assistant`` lines (one per content block), each
  repeating the response's ``usage``. Each line counts as an assistant message (so that
  every line ``message()`` renders is one counted message), but the usage is counted once per
  ``message.id:requestId`` key (:meth:`SessionFacts.usage_growth`). Tokens: ``input_tokens``
  → in, ``output_tokens`` → out, ``cache_read_input_tokens`` → cache read,
  ``cache_creation_input_tokens`` → cache write. The lines are written as the response
  streams, so ``output_tokens`` grows from line to line (often 1 on the first, all of them
  on the last): a key's output is the most any of its lines has, the rest of its usage is
  its first line's. Older versions also write the response's price in USD as a top-level
  ``costUSD`` on each of these lines (ccusage reads it): it is the cost, counted once per
  key like the output tokens (the most of the key's lines, when its first line has one).
  A session none of whose lines has one has no cost (not a cost of 0).
* each ``tool_use`` block is a tool call, and so is each ``server_tool_use`` block (a tool the
  API runs itself, such as ``web_search``: the model called it all the same);
  ``message.model`` is a model (except Claude Code's ``<synthetic>`` placeholder).
* title: the first text of a user message as counted above.
* ``timestamp`` (ISO) of every line that has one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..index.facts import Message, SessionFacts, ToolCall
from .generic import (
    NO_RAW,
    blocks_text,
    canonical_role,
    is_injected,
    iso_utc,
    jsonl_name,
    raw_string,
    split_path,
    typed_text,
)
from .generic import tool_call as make_tool_call

__all__ = ["ClaudeCodeReader", "ClaudeLine"]

#: Content blocks that are a tool call: the client's tools and the API's own (``web_search``).
_CALL_BLOCKS = frozenset({"tool_use", "server_tool_use"})


class ClaudeBlock(msgspec.Struct, gc=False):
    type: str | None = None
    text: msgspec.Raw = NO_RAW  # decoded on demand (see generic.blocks_text)
    name: str | None = None  # tool_use
    input: msgspec.Raw = NO_RAW  # tool_use arguments, kept raw (only shown)
    content: msgspec.Raw = NO_RAW  # tool_result output (a string or blocks), kept raw


class ClaudeUsage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class ClaudeMessage(msgspec.Struct, gc=False):
    id: str | None = None
    role: str | None = None
    model: str | None = None
    content: str | list[ClaudeBlock] | None = None
    usage: ClaudeUsage | None = None


class ClaudeLine(msgspec.Struct, gc=False):
    """The fields of a Claude Code line that the index and ``show`` use."""

    type: str | None = None
    timestamp: str | None = None
    message: ClaudeMessage | None = None
    requestId: str | None = None  # camelCase names as the format spells them
    isMeta: bool | None = None
    isCompactSummary: bool | None = None
    costUSD: float | None = None  # older versions only: the response's price in USD


def _is_tool_result(content: str | list[ClaudeBlock] | None) -> bool:
    if isinstance(content, list):
        for block in content:
            if block.type == "tool_result":
                return True
    return False


class ClaudeCodeReader:
    """Claude Code transcripts (see the module docstring)."""

    name = "claude-code"
    line_type: type[Any] = ClaudeLine

    @staticmethod
    def _under_projects(path: bytes) -> list[str]:
        segs = split_path(path)
        if "projects" in segs[:-1]:
            segs = segs[segs.index("projects") + 1 :]
        return segs

    def is_transcript(self, path: bytes) -> bool:
        segs = self._under_projects(path)
        name = segs[-1] if segs else ""
        if not jsonl_name(name):
            return False
        if len(segs) == 2:
            return True
        return len(segs) == 4 and segs[2] == "subagents" and name.startswith("agent-")

    def identify(self, path: bytes) -> tuple[str | None, str]:
        segs = self._under_projects(path)
        stem = segs[-1].removesuffix(".jsonl") if segs else ""
        if len(segs) == 4 and segs[2] == "subagents":
            return segs[0], f"{segs[1]}/{stem}"
        return (segs[0] if len(segs) >= 2 else None), stem

    def id_of_key(self, key: str) -> str:
        return key  # ids are spelled as the agent spells them

    def deleted_by_agent(self, path: bytes) -> bool:
        return False  # this agent deletes a transcript by removing its file

    def archived_by_agent(self, path: bytes) -> bool:
        return False  # Claude Code has no archive: old transcripts are deleted

    def update(self, facts: SessionFacts, line: ClaudeLine) -> None:
        msg = line.message
        kind = line.type
        if msg is not None and (kind == "assistant" or kind == "user"):
            role = msg.role or kind
            content = msg.content
            if role == "assistant":
                facts.assistant += 1
                if isinstance(content, list):
                    for block in content:
                        if block.type in _CALL_BLOCKS:
                            facts.tool_calls += 1
                usage = msg.usage
                cost = line.costUSD
                if usage is not None or cost is not None:
                    # Usage and cost are the response's, repeated on each of its lines as it
                    # streams: the first line of a key counts them, and a later one only the
                    # output tokens and cost it has beyond the most counted (the last line
                    # has them all, the first only the output so far).
                    out = (usage.output_tokens or 0) if usage is not None else None
                    grown = (
                        None
                        if msg.id is None and line.requestId is None
                        else facts.usage_growth(f"{msg.id}:{line.requestId}", out, cost)
                    )
                    if grown is None:  # the key's first line, or a line without a key
                        if usage is not None:
                            facts.tokens_in += usage.input_tokens or 0
                            facts.tokens_out += out or 0
                            facts.tokens_cache_read += usage.cache_read_input_tokens or 0
                            facts.tokens_cache_write += usage.cache_creation_input_tokens or 0
                        facts.add_cost(cost)
                    else:
                        more_out, more_cost = grown
                        facts.tokens_out += more_out
                        if more_cost:
                            facts.add_cost(more_cost)
                model = msg.model
                if model and model != "<synthetic>":
                    facts.add_model(model)
            elif role == "user":
                if _is_tool_result(content):
                    facts.tool += 1
                elif line.isMeta or line.isCompactSummary:
                    facts.system += 1
                else:
                    text = blocks_text(content)
                    if text and is_injected(text):
                        facts.system += 1
                    else:
                        facts.user += 1
                        if facts.title is None and text:
                            facts.add_title(typed_text(content) or text)
            else:
                facts.add_message(role)
        ts = line.timestamp
        if ts:
            facts.add_time(iso_utc(ts))

    def message(self, line: ClaudeLine, offset: int) -> Message | None:
        msg = line.message
        kind = line.type
        if msg is None or (kind != "assistant" and kind != "user"):
            return None
        role = msg.role or kind
        content = msg.content
        calls: list[ToolCall] = []
        if role == "user" and _is_tool_result(content):
            role = "tool"
            assert isinstance(content, list)
            text = "\n".join(
                raw_string(b.content) for b in content if b.type == "tool_result" and b.content
            )
        else:
            text = blocks_text(content)
            if isinstance(content, list):
                calls = [make_tool_call(b.name, b.input) for b in content if b.type in _CALL_BLOCKS]
            if role == "user" and (
                line.isMeta or line.isCompactSummary or (text and is_injected(text))
            ):
                role = "system"  # as counted (see update)
        model = msg.model if msg.model != "<synthetic>" else None
        return Message(
            offset=offset,
            role=canonical_role(role),
            timestamp=iso_utc(line.timestamp) if line.timestamp else None,
            text=text,
            tool_calls=calls,
            model=model,
        )
