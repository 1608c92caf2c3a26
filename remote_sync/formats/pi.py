"""The pi coding agent's session format (pi-coding-agent SessionManager, session version 3).

What it owns: the line view of the v3 session JSONL (:class:`V3Line`), :class:`V3Reader` (the
folding and rendering OpenClaw shares, see :mod:`remote_sync.formats.openclaw`) and
:class:`PiReader`, which adds pi's paths: ``sessions/--<cwd>--/<timestamp>_<uuid>.jsonl``.

What is read from a line:

* ``type: "session"`` (the header): its ``id`` is pi's session id (OpenClaw keeps the file
  name's instead, see :mod:`remote_sync.formats.openclaw`).
* ``type: "message"``: one message of ``message.role`` (``toolResult`` counts as ``tool``;
  ``bashExecution``, ``custom`` and other roles count as ``other``). For assistants: each
  ``toolCall`` content block is a tool call; ``usage`` gives tokens (``input``, ``output``,
  ``cacheRead``, ``cacheWrite``) and cost (``usage.cost.total``); ``model`` is a model. The
  first user text is the title.
* ``type: "model_change"``: its ``modelId`` is a model.
* Every line's ``timestamp`` (ISO) is a time; a message line without one uses
  ``message.timestamp`` (epoch milliseconds).
* Other entry types (``compaction``, ``custom``, ``label``...) are lines and nothing more.

pi's identity from a path: the project is the ``--<cwd>--`` directory name as written, the
session id the part of the file name after the last ``_`` (the uuid; the whole stem if there
is no ``_``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..index.facts import SYSTEM_ROLES, TOOL_ROLES, Message, SessionFacts, ToolCall
from .generic import (
    NO_RAW,
    blocks_text,
    canonical_role,
    iso_from_epoch,
    iso_utc,
    jsonl_file,
    raw_string,
    split_path,
    tool_call,
)

__all__ = ["PiReader", "V3Line", "V3Reader"]


class V3Block(msgspec.Struct, gc=False):
    type: str | None = None
    text: msgspec.Raw = NO_RAW  # decoded on demand (see generic.blocks_text)
    name: str | None = None  # toolCall
    arguments: msgspec.Raw = NO_RAW  # toolCall; kept raw (only shown, never folded)


class V3Cost(msgspec.Struct, gc=False):
    total: float | None = None


class V3Usage(msgspec.Struct, gc=False):
    input: int | None = None
    output: int | None = None
    cacheRead: int | None = None  # camelCase names as the format spells them
    cacheWrite: int | None = None
    cost: V3Cost | None = None


class V3Message(msgspec.Struct, gc=False):
    role: str | None = None
    content: str | list[V3Block] | None = None
    model: str | None = None
    usage: V3Usage | None = None
    timestamp: int | float | str | None = None
    command: str | None = None  # bashExecution
    output: msgspec.Raw = NO_RAW  # bashExecution


class V3Line(msgspec.Struct, gc=False):
    """The fields of a v3 session line that the index and ``show`` use."""

    type: str | None = None
    id: str | None = None
    timestamp: str | int | float | None = None
    message: V3Message | None = None
    modelId: str | None = None  # model_change


def _no_offset(index: int) -> int:
    return 0  # update() of one line keeps no page marks


def _time(value: str | int | float) -> str | None:
    if isinstance(value, str):
        return iso_utc(value)
    return iso_from_epoch(value, millis=True)


class V3Reader:
    """Folding and rendering of v3 session lines; subclasses give the paths."""

    name = "v3"
    line_type: type[Any] = V3Line

    def is_transcript(self, path: bytes) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def identify(self, path: bytes) -> tuple[str | None, str]:  # pragma: no cover
        raise NotImplementedError

    def id_of_key(self, key: str) -> str:
        return key  # ids are spelled as the agent spells them

    def deleted_by_agent(self, path: bytes) -> bool:
        return False  # pi deletes a session by removing its file; OpenClaw overrides this

    def archived_by_agent(self, path: bytes) -> bool:
        return False  # pi keeps no archive of sessions; OpenClaw overrides this

    def _header_id(self, facts: SessionFacts, header_id: str) -> None:
        # pi names its file after the header's id: the header is the authority (OpenClaw,
        # whose id is the file name, overrides this).
        facts.session_id = header_id

    def update(self, facts: SessionFacts, line: V3Line) -> None:
        self.fold_many(facts, (line,), _no_offset, [], 1)

    def fold_many(
        self,
        facts: SessionFacts,
        lines: Sequence[V3Line],
        offset_of: Callable[[int], int],
        marks: list[tuple[int, int]],
        mark_every: int,
    ) -> None:
        """Fold ``lines`` into ``facts`` (see ``FormatReader.update``), one pass for a chunk.

        The hot loop of indexing (a sync folds every line it fetches here): the counters,
        token sums, cost and first and last times stay in local variables for the whole
        chunk, and an assistant message is folded inline, not by a call per line.
        """
        user, assistant, tool = facts.user, facts.assistant, facts.tool
        system, other = facts.system, facts.other
        messages = user + assistant + tool + system + other + facts.repeated  # as shown
        first, last = facts.first_ts, facts.last_ts
        tool_calls = facts.tool_calls
        tokens_in, tokens_out = facts.tokens_in, facts.tokens_out
        cache_read, cache_write = facts.tokens_cache_read, facts.tokens_cache_write
        cost = facts.cost
        models = facts.models
        for i, line in enumerate(lines):
            kind = line.type
            ts = line.timestamp
            if kind == "message":
                msg = line.message
                if msg is not None:
                    if messages % mark_every == 0:
                        marks.append((messages, offset_of(i)))
                    messages += 1
                    role = msg.role
                    if role == "assistant":
                        assistant += 1
                        content = msg.content
                        if isinstance(content, list):
                            for block in content:
                                if block.type == "toolCall":
                                    tool_calls += 1
                        usage = msg.usage
                        if usage is not None:
                            tokens_in += usage.input or 0
                            tokens_out += usage.output or 0
                            cache_read += usage.cacheRead or 0
                            cache_write += usage.cacheWrite or 0
                            if usage.cost is not None and usage.cost.total is not None:
                                cost = (cost or 0.0) + usage.cost.total  # as add_cost
                        model = msg.model
                        if model and model not in models:  # as add_model
                            models.append(model)
                    elif role == "user":
                        user += 1
                        if facts.title is None:
                            facts.add_title(blocks_text(msg.content))
                    elif role in TOOL_ROLES:
                        tool += 1
                    elif role in SYSTEM_ROLES:
                        system += 1
                    else:
                        other += 1
                    if ts is None:
                        ts = msg.timestamp
            elif kind == "session":
                if line.id:
                    self._header_id(facts, line.id)
            elif kind == "model_change":
                facts.add_model(line.modelId)
            if ts is not None:
                iso = _time(ts)
                if iso:
                    if first is None or iso < first:
                        first = iso
                    if last is None or iso > last:
                        last = iso
        facts.user, facts.assistant, facts.tool = user, assistant, tool
        facts.system, facts.other = system, other
        facts.first_ts, facts.last_ts = first, last
        facts.tool_calls = tool_calls
        facts.tokens_in, facts.tokens_out = tokens_in, tokens_out
        facts.tokens_cache_read, facts.tokens_cache_write = cache_read, cache_write
        facts.cost = cost

    def message(self, line: V3Line, offset: int) -> Message | None:
        msg = line.message
        if line.type != "message" or msg is None:
            return None
        role = msg.role
        calls: list[ToolCall] = []
        content = msg.content
        if role == "bashExecution":
            text = f"$ {msg.command or ''}"
            output = raw_string(msg.output)
            if output:
                text = f"{text}\n{output}"
        else:
            text = blocks_text(content)
            if isinstance(content, list):
                calls = [tool_call(b.name, b.arguments) for b in content if b.type == "toolCall"]
        ts = line.timestamp if line.timestamp is not None else msg.timestamp
        return Message(
            offset=offset,
            role=canonical_role(role),
            timestamp=_time(ts) if ts is not None else None,
            text=text,
            tool_calls=calls,
            model=msg.model,
        )


class PiReader(V3Reader):
    """pi's sessions: ``sessions/--<cwd>--/<timestamp>_<uuid>.jsonl``."""

    name = "pi"

    def is_transcript(self, path: bytes) -> bool:
        return jsonl_file(path)

    def identify(self, path: bytes) -> tuple[str | None, str]:
        segs = split_path(path)
        stem = segs[-1].removesuffix(".jsonl") if segs else ""
        session_id = stem.rpartition("_")[2] or stem
        project = segs[-2] if len(segs) >= 2 and segs[-2] != "sessions" else None
        return project, session_id
