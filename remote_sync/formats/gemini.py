"""The generic ``jsonl`` format's reader, which also reads gemini-cli's JSONL chat records.

What it owns: :class:`JsonlLine` (the generic line view plus the fields of a gemini-cli
record) and :class:`JsonlReader`, the reader registered as ``jsonl``: the generic reader
(:mod:`remote_sync.formats.generic`) for chat-like lines, and gemini-cli's records, which
have no ``role``.

gemini-cli (``~/.gemini/tmp/<project hash>/chats/session-<time>-<id8>.jsonl``, an
append-only log; src: google-gemini/gemini-cli packages/core/src/services/
chatRecordingService.ts) writes a metadata line first (``sessionId``, ``projectHash``,
``startTime``...), then message records ``{id, timestamp, type, content, toolCalls,
thoughts, tokens, model}``, ``{"$set": {...}}`` metadata patches and ``{"$rewindTo": id}``
truncations. A line is such a record when it has no ``role`` (nor a ``message`` object), a
string ``id`` and a ``type`` of ``user`` (a user message), ``gemini`` (an assistant message)
or ``info``, ``error``, ``warning`` (the CLI's own notes: system messages). Of a record:

* ``content``: its text (a string, a part ``{text}`` or a list of strings and parts); the
  first user text is the title;
* ``toolCalls``: each entry is a tool call (``name``, ``args``);
* ``tokens`` (per response, not cumulative): ``input`` less ``cached`` plus ``tool`` (the
  tool-use prompt) is input, ``cached`` is cache read, ``output`` plus ``thoughts`` is
  output (as Codex's output includes reasoning);
* ``model`` is a model, ``timestamp`` its time.

gemini-cli writes its last message again, whole and under the same id, when its tokens or
tool calls arrive (``recordMessageTokens``, ``recordToolCalls``). A record with the id of the
record before it is that message again: it is not counted again, its tool calls and tokens
replace the earlier version's (``SessionFacts.last_record_id``), and ``show`` renders it as a
repeated message. Only the last record is remembered (bounded memory): a record written
again after another record came in between would count twice, which gemini-cli does not do.
``$rewindTo`` and ``$set.messages`` (which rewrite the conversation's history) are not
applied: like picoclaw's logical truncation, the index counts what the file holds.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..index.facts import Message, SessionFacts, ToolCall
from .generic import (
    NO_RAW,
    GenericLine,
    GenericReader,
    any_text,
    any_time,
    raw_list,
    raw_string,
    tool_call,
)

__all__ = ["JsonlLine", "JsonlReader"]

#: A gemini-cli record's ``type`` → the role it is counted and shown as.
_ROLES = {
    "user": "user",
    "gemini": "assistant",
    "info": "system",
    "error": "system",
    "warning": "system",
}


class JsonlLine(GenericLine, gc=False):
    """A generic line view (:class:`~remote_sync.formats.generic.GenericLine`) with the fields
    of a gemini-cli record; every one optional and of any shape, bulky ones kept raw."""

    id: Any = None
    type: Any = None
    gemini_calls: msgspec.Raw = msgspec.field(default=NO_RAW, name="toolCalls")
    tokens: msgspec.Raw = NO_RAW


class _Tokens(msgspec.Struct, gc=False):
    input: Any = None
    output: Any = None
    cached: Any = None
    thoughts: Any = None
    tool: Any = None


class _Call(msgspec.Struct, gc=False):
    name: Any = None
    args: msgspec.Raw = NO_RAW


_entries_decode = msgspec.json.Decoder(list[msgspec.Raw]).decode
_tokens_decode = msgspec.json.Decoder(_Tokens).decode
_call_decode = msgspec.json.Decoder(_Call).decode
_any_decode = msgspec.json.Decoder().decode


def _role(line: JsonlLine) -> str | None:
    """The role of a gemini-cli record, None for any other line."""
    kind = line.type
    if line.role is not None or line.message or not isinstance(kind, str):
        return None
    if not isinstance(line.id, str):
        return None
    return _ROLES.get(kind)


def _entries(raw: msgspec.Raw) -> list[msgspec.Raw]:
    """The entries of a raw JSON list, each kept raw (none when it is not a list)."""
    return raw_list(raw, _entries_decode)


def _count(value: Any) -> int:
    """A token count as written: a whole number of at least 0, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _tokens(raw: msgspec.Raw) -> tuple[int, int, int]:
    """(input, output, cache read) of a record's ``tokens``."""
    if not raw or memoryview(raw)[0] != 0x7B:  # "{"
        return 0, 0, 0
    try:
        t = _tokens_decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0, 0, 0
    cached = _count(t.cached)
    fresh = max(_count(t.input) - cached, 0) + _count(t.tool)
    return fresh, _count(t.output) + _count(t.thoughts), cached


def _text(raw: msgspec.Raw) -> str:
    """A record's ``content`` as text: a string, a part's text, the texts of a list."""
    if raw and memoryview(raw)[0] == 0x7B:  # "{": one part
        try:
            return any_text(_any_decode(raw))
        except msgspec.DecodeError:
            return ""
    return raw_string(raw)


def _shown_call(raw: msgspec.Raw) -> ToolCall:
    try:
        call = _call_decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return tool_call(None, None)  # every entry shows, as counted
    return tool_call(call.name, call.args)


class JsonlReader(GenericReader):
    """The ``jsonl`` format: generic chat lines and gemini-cli records (see the docstring)."""

    line_type: type[Any] = JsonlLine

    def update(self, facts: SessionFacts, line: GenericLine) -> None:
        role = _role(line) if isinstance(line, JsonlLine) else None
        if role is None or not isinstance(line, JsonlLine):
            super().update(facts, line)
            return
        calls = len(_entries(line.gemini_calls))
        fresh, out, cached = _tokens(line.tokens)
        record_id: str = line.id
        before = facts.last_record_counts
        if record_id == facts.last_record_id and len(before) == 4:
            # The last message written again: its new version replaces the old one's counts.
            facts.repeated += 1
            facts.tool_calls += calls - before[0]
            facts.tokens_in += fresh - before[1]
            facts.tokens_out += out - before[2]
            facts.tokens_cache_read += cached - before[3]
        else:
            facts.add_message(role)
            facts.tool_calls += calls
            facts.tokens_in += fresh
            facts.tokens_out += out
            facts.tokens_cache_read += cached
            facts.last_record_id = record_id
            if role == "user" and facts.title is None:
                facts.add_title(_text(line.content))
        facts.last_record_counts = [calls, fresh, out, cached]
        if isinstance(line.model, str):
            facts.add_model(line.model)
        if line.timestamp is not None:
            facts.add_time(any_time(line.timestamp))

    def message(self, line: GenericLine, offset: int) -> Message | None:
        role = _role(line) if isinstance(line, JsonlLine) else None
        if role is None or not isinstance(line, JsonlLine):
            return super().message(line, offset)
        return Message(
            offset=offset,
            role=role,
            timestamp=any_time(line.timestamp) if line.timestamp is not None else None,
            text=_text(line.content),
            tool_calls=[_shown_call(entry) for entry in _entries(line.gemini_calls)],
            model=line.model if isinstance(line.model, str) else None,
        )
