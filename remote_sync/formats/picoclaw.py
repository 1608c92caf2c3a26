"""picoclaw's JSONL session store (``<workspace>/sessions``).

What it owns: the line view of a picoclaw session line (:class:`PicoLine`) and
:class:`PicoclawReader`.

Files: ``sessions/<key>.jsonl``, one provider message per line, beside a
``<key>.meta.json`` (not a transcript, nor are legacy ``*.json`` / ``*.json.migrated``
sessions). The file name is the session key with ``:``, ``/`` and ``\\`` replaced by ``_``;
it is the session id (the real key lives only in the meta file), and ``id_of_key`` maps a
key to it the same way, so that ``sessions show`` finds a session by its key too. There is
no agent.

Every line with a ``role`` is a message of that role (``tool`` for tool output); each entry
of ``tool_calls`` is a tool call; ``model_name`` is a model; ``created_at`` (RFC 3339, any
offset, up to nanoseconds) is its time; the first user ``content`` is the title. Lines record
no usage or cost. Go writes an unset time as its zero time, ``0001-01-01T00:00:00Z`` (a
message imported from a legacy session without one, for instance): that is no time, not
one in year 1.

picoclaw truncates history logically (``meta.skip``) and, on compaction, rewrites the JSONL
with only the kept lines. The index counts the lines in the file as it is: it does not apply
``skip``, and after a rewrite (which the mirror detects) the facts are built anew from the
rewritten file.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..index.facts import Message, SessionFacts
from .generic import NO_RAW, canonical_role, iso_utc, jsonl_file, raw_string, split_path, tool_call

__all__ = ["PicoLine", "PicoclawReader"]

#: How picoclaw turns a session key into its files' name (pkg/memory/jsonl.go).
_FILE_NAME_OF_KEY = str.maketrans({":": "_", "/": "_", "\\": "_"})

#: Go's zero ``time.Time`` as ``iso_utc`` gives it: an unset time, not a time.
_GO_ZERO_TIME = "0001-01-01T00:00:00.000Z"


def _time(value: str) -> str | None:
    """``created_at`` as an ISO time; None when it is unreadable or Go's zero time."""
    iso = iso_utc(value)
    return None if iso == _GO_ZERO_TIME else iso


class PicoFunction(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: msgspec.Raw = NO_RAW  # a JSON string, kept raw (only shown)


class PicoToolCall(msgspec.Struct, gc=False):
    function: PicoFunction | None = None


class PicoLine(msgspec.Struct, gc=False):
    """The fields of a picoclaw message line that the index and ``show`` use."""

    role: str | None = None
    content: msgspec.Raw = NO_RAW  # a string, decoded on demand (the bulk of a line)
    model_name: str | None = None
    created_at: str | None = None
    tool_calls: list[PicoToolCall] | None = None


class PicoclawReader:
    """picoclaw sessions (see the module docstring)."""

    name = "picoclaw"
    line_type: type[Any] = PicoLine

    def is_transcript(self, path: bytes) -> bool:
        return jsonl_file(path)

    def identify(self, path: bytes) -> tuple[str | None, str]:
        segs = split_path(path)
        return None, segs[-1].removesuffix(".jsonl") if segs else ""

    def id_of_key(self, key: str) -> str:
        # picoclaw names a session's files after its key with these replaced, so that
        # `telegram:123` is the session `telegram_123` (the key itself is only in the meta).
        return key.translate(_FILE_NAME_OF_KEY)

    def deleted_by_agent(self, path: bytes) -> bool:
        return False  # this agent deletes a transcript by removing its file

    def archived_by_agent(self, path: bytes) -> bool:
        return False  # picoclaw keeps no archive of sessions

    def update(self, facts: SessionFacts, line: PicoLine) -> None:
        role = line.role
        if role is not None:
            facts.add_message(role)
            calls = line.tool_calls
            if calls:
                facts.tool_calls += len(calls)
            if line.model_name:
                facts.add_model(line.model_name)
            if role == "user" and facts.title is None:
                facts.add_title(raw_string(line.content))
        ts = line.created_at
        if ts:
            facts.add_time(_time(ts))

    def message(self, line: PicoLine, offset: int) -> Message | None:
        role = line.role
        if role is None:
            return None
        # Every entry, as counted: one without its function shows as "?".
        calls = [
            tool_call(c.function.name, raw_string(c.function.arguments))
            if c.function is not None
            else tool_call(None, None)
            for c in line.tool_calls or ()
        ]
        return Message(
            offset=offset,
            role=canonical_role(role),
            timestamp=_time(line.created_at) if line.created_at else None,
            text=raw_string(line.content),
            tool_calls=calls,
            model=line.model_name,
        )
