"""The generic ``jsonl`` format, and the small helpers every format reader shares.

What it owns: :class:`GenericReader` (any ``*.jsonl`` file of chat-like objects, read
leniently) and the shared helpers of :mod:`remote_sync.formats`: timestamp normalisation
(:func:`iso_utc`, :func:`iso_from_epoch`), text of content blocks, tool-call argument
shortening (:func:`tool_call`), injected-text detection (:func:`is_injected`) and paths
(:func:`split_path`; :func:`jsonl_file`, a transcript for the formats that take any
``*.jsonl``).

Timestamps everywhere are normalised to one sortable form: ISO 8601 in UTC with exactly
three fractional digits and ``Z`` (``2026-11-21T10:00:00.000Z``). Finer fractions are
truncated (not rounded) to milliseconds; a time without an offset is taken as UTC; a value
that cannot be read as a time is dropped.

The generic reader: a line is a message when it has a ``role`` (top level, or in a nested
``message`` object); its time is the first of ``timestamp``, ``created_at``, ``time`` (ISO
string, or epoch seconds / milliseconds as a number: values above 10^11 are milliseconds);
its text is ``content``, ``text`` or ``message.content`` (a string, or a list of blocks whose
``text`` fields are joined). ``model`` (top level or in ``message``) is recorded, and OpenAI
style ``tool_calls`` lists are counted. A line without a role only contributes its time. Any
JSON object is a line: fields of unexpected shapes (a ``message`` that is not an object, a
``tool_calls`` that is not a list) are ignored, never malformed. The session id is the path
without ``.jsonl``; there is no agent. The reader registered as ``jsonl`` extends this one
with gemini-cli's records, which have no role (:mod:`remote_sync.formats.gemini`).

Line views keep bulky text raw (``msgspec.Raw``) and decode it only for a title or for
``show``: decoding every text of every line costs more than all the rest of the indexing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ..index.facts import Message, SessionFacts, ToolCall

__all__ = [
    "HARNESS_TAGS",
    "NO_RAW",
    "TOOL_ARGS_CHARS",
    "GenericInner",
    "GenericLine",
    "GenericReader",
    "blocks_text",
    "canonical_role",
    "is_injected",
    "iso_from_epoch",
    "iso_utc",
    "jsonl_file",
    "jsonl_name",
    "raw_json_text",
    "shorten",
    "split_path",
    "tool_call",
    "typed_text",
]

#: Tool-call arguments shown by ``message()`` are shortened to this many characters.
TOOL_ARGS_CHARS = 200

#: The default of an absent raw field (msgspec.Raw cannot be in a union with None); falsy.
NO_RAW = msgspec.Raw()

_EPOCH = datetime(1970, 1, 1)  # naive UTC
_fromisoformat = datetime.fromisoformat
_str_decode = msgspec.json.Decoder(str).decode
_any_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode


# --- timestamps -----------------------------------------------------------------------------


def iso_utc(value: str) -> str | None:
    """``value`` (an ISO 8601 / RFC 3339 time) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, or None."""
    # Fast path: JavaScript's toISOString(), Rust's and Claude Code's form is already ours.
    size = len(value)
    if (
        size == 24
        and value[23] == "Z"
        and value[19] == "."
        and value[10] == "T"
        and value[20:23].isdigit()  # the shape is trusted, not each field
    ):
        return value
    if size > 20 and value[-1] == "Z" and value[19] == "." and value[10] == "T":
        fraction = value[20:-1]  # Go's RFC3339Nano in UTC: 1 to 9 digits
        if fraction.isdigit():
            return value[:20] + (fraction + "00")[:3] + "Z"
    try:
        dt = _fromisoformat(value)
        if dt.tzinfo is not None:
            offset = dt.utcoffset()
            if offset:
                dt = dt - offset
    except (ValueError, OverflowError):
        return None
    return _format(dt)


def iso_from_epoch(value: float, *, millis: bool | None = None) -> str | None:
    """Epoch seconds or milliseconds as an ISO string; ``millis=None`` guesses by magnitude."""
    if value != value or value in (float("inf"), float("-inf")):  # NaN / infinities
        return None
    if millis is None:
        millis = abs(value) >= 1e11
    # Seconds are rounded to the millisecond (a float like 1767225600.123 is not exact in
    # binary); milliseconds are truncated like finer ISO fractions.
    ms = int(value) if millis else round(value * 1000)
    seconds, ms = divmod(ms, 1000)
    try:
        return _format(_EPOCH + timedelta(0, seconds), ms)
    except OverflowError:
        return None


_D2 = [f"{i:02d}" for i in range(100)]
_D3 = [f"{i:03d}" for i in range(1000)]


def _format(dt: datetime, ms: int | None = None) -> str:
    """``dt``'s fields (taken as UTC) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, truncated to the ms
    (``ms`` replaces the milliseconds of ``dt``).

    Built from lookup tables: ``isoformat(timespec=...)`` and format specs cost ~10x more.
    """
    year = dt.year
    if ms is None:
        ms = dt.microsecond // 1000
    return (
        f"{year if year >= 1000 else f'{year:04d}'}-{_D2[dt.month]}-{_D2[dt.day]}"
        f"T{_D2[dt.hour]}:{_D2[dt.minute]}:{_D2[dt.second]}.{_D3[ms]}Z"
    )


def any_time(value: object) -> str | None:
    """A timestamp that may be an ISO string or epoch seconds/milliseconds."""
    if isinstance(value, str):
        return iso_utc(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso_from_epoch(value)
    return None


# --- text and tool calls --------------------------------------------------------------------


def shorten(text: str, limit: int = TOOL_ARGS_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raw_json_text(raw: msgspec.Raw | None) -> str:
    """The JSON text of a raw value as it appears in the line (``""`` when absent or null)."""
    if raw is None or not raw or bytes(raw) == b"null":
        return ""
    return bytes(raw).decode("utf-8", "replace")


def raw_string(raw: msgspec.Raw | None) -> str:
    """A raw value shown as text: a JSON string decoded, text blocks joined, other JSON as is."""
    if raw is None or not raw:
        return ""
    first = memoryview(raw)[0]
    if first == 0x22:  # a string: the common case
        return _str_decode(raw)
    if first == 0x5B:  # "[": blocks
        value = _any_decode(raw)
        if isinstance(value, list):
            return any_text(value)
    data = bytes(raw)
    return "" if data == b"null" else data.decode("utf-8", "replace")


def tool_call(name: Any, arguments: msgspec.Raw | str | Any) -> ToolCall:
    """A :class:`ToolCall` with its arguments as (shortened) JSON text.

    ``arguments`` is raw JSON (shown as written; a JSON string, such as the patch of Codex's
    ``apply_patch``, as its text), a string that already holds JSON (Codex and OpenAI
    ``function.arguments``: shown as is) or any other value (JSON-encoded).
    """
    if isinstance(arguments, msgspec.Raw):
        if arguments and memoryview(arguments)[0] == 0x22:  # '"'
            text = _str_decode(arguments)
        else:
            text = raw_json_text(arguments)
    elif isinstance(arguments, str):
        text = arguments
    elif arguments is None:
        text = ""
    else:
        text = _encode(arguments).decode("utf-8", "replace")
    return ToolCall(name if isinstance(name, str) and name else "?", shorten(text))


def blocks_text(content: Any, kinds: tuple[str, ...] = ("text",)) -> str:
    """Text of a content value: a string as is; of a list of blocks (Structs with ``type``
    and a raw ``text``), the text of the blocks whose type is in ``kinds``, joined by
    newlines. Block texts are kept raw by the line views (decoding every text of every line
    would cost more than all the rest of the indexing) and decoded here, on demand."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [raw_string(b.text) for b in content if b.type in kinds and b.text]
    return "\n".join(part for part in parts if part)


def typed_text(content: Any, kinds: tuple[str, ...] = ("text",)) -> str:
    """:func:`blocks_text` without the blocks a harness put in (:func:`is_injected`), such as
    the ``<ide_opened_file>`` block Claude Code puts before what the user typed: a title."""
    if isinstance(content, list):
        parts = [raw_string(b.text) for b in content if b.type in kinds and b.text]
        return "\n".join(part for part in parts if part and not is_injected(part))
    text = blocks_text(content, kinds)
    return "" if is_injected(text) else text


def any_text(content: Any) -> str:
    """Text of a loosely typed content value (strings, lists of blocks as dicts or strings)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str) and text:
                    parts.append(text)
        return "\n".join(parts)
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    return ""


#: Tags of the blocks Claude Code and Codex write into a user turn themselves: slash-command
#: records and their output, ``!`` shell passthroughs, hook and IDE context, reminders, and
#: Codex's injected context. Only text made of these blocks is the harness's: a prompt that
#: merely looks like markup (``<div>…</div>``) is the user's.
HARNESS_TAGS = frozenset(
    {
        # Claude Code
        "command-name",
        "command-message",
        "command-args",
        "local-command-stdout",
        "local-command-stderr",
        "local-command-caveat",
        "system-reminder",
        "user-prompt-submit-hook",
        "ide_opened_file",
        "ide_selection",
        "bash-input",
        "bash-stdout",
        "bash-stderr",
        "task-notification",
        # Codex
        "environment_context",
        "user_instructions",
        "turn_aborted",
        "user_shell_command",
        "subagent_notification",
        "skill",
    }
)

#: An opening (or self-closing) tag at a position: its name, and ``/`` if self-closing.
_OPEN_TAG = re.compile(r"<([A-Za-z_][\w.-]*)(?:\s[^<>]*?)?(/?)>")


def _harness_blocks_only(s: str) -> bool:
    """Is ``s`` (stripped, starting with ``<``) one or more whole harness blocks, separated
    by whitespace only?"""
    pos, end = 0, len(s)
    while pos < end:
        tag = _OPEN_TAG.match(s, pos)
        if tag is None or tag.group(1) not in HARNESS_TAGS:
            return False
        if tag.group(2):
            pos = tag.end()
        else:
            close = f"</{tag.group(1)}>"
            at = s.find(close, tag.end())
            if at < 0:
                return False
            pos = at + len(close)
        while pos < end and s[pos].isspace():
            pos += 1
    return True


def is_injected(text: str) -> bool:
    """Text a harness put into a user turn rather than what the user typed.

    Text made only of whole blocks of :data:`HARNESS_TAGS`
    (``<environment_context>…</environment_context>``, ``<command-name>…</command-name>``
    followed by ``<command-args>…``, ``<system-reminder>…``), Codex's ``# AGENTS.md
    instructions`` and Claude Code's ``[Request interrupted by user…]`` markers. Blank text
    is no one's prompt either.
    """
    s = text.strip()
    if not s:
        return True
    if s[0] == "<":
        return _harness_blocks_only(s)
    return s.startswith(("# AGENTS.md instructions", "[Request interrupted by user"))


def canonical_role(role: str | None) -> str:
    """The role name ``message()`` shows: the facts' buckets, other roles as written."""
    if role in ("user", "assistant"):
        return role
    if role in ("tool", "toolResult", "tool_result", "function"):
        return "tool"
    if role in ("system", "developer"):
        return "system"
    return role or "other"


# --- paths ----------------------------------------------------------------------------------


def split_path(path: bytes) -> list[str]:
    """A relative byte path's non-empty segments as text (undecodable bytes replaced)."""
    return [s for s in path.decode("utf-8", "replace").split("/") if s and s != "."]


def jsonl_name(name: str) -> bool:
    """Whether the file name ``name`` is ``<stem>.jsonl`` with a stem (a bare ``.jsonl``
    names no session)."""
    return name.endswith(".jsonl") and len(name) > len(".jsonl")


def jsonl_file(path: bytes) -> bool:
    """Whether ``path``'s last segment is a :func:`jsonl_name`: the transcripts of the
    formats that take any such file under their root (generic, pi, picoclaw)."""
    segs = split_path(path)
    return bool(segs) and jsonl_name(segs[-1])


# --- the generic reader ---------------------------------------------------------------------


class GenericInner(msgspec.Struct, gc=False):
    """A nested ``message`` object of a generic line."""

    role: Any = None
    timestamp: Any = None
    created_at: Any = None
    time: Any = None
    content: msgspec.Raw = NO_RAW
    text: msgspec.Raw = NO_RAW
    model: Any = None
    tool_calls: msgspec.Raw = NO_RAW


class GenericLine(GenericInner, gc=False):
    """A lenient view of a chat-like JSONL line: every field optional and of any shape.

    Bulky fields stay raw and are decoded only when needed, so a line whose fields have
    unexpected shapes is still a line (not malformed), just not a message. Its fields are
    those of a nested ``message`` object plus that object itself, kept raw.
    """

    message: msgspec.Raw = NO_RAW


_inner_decode = msgspec.json.Decoder(GenericInner).decode
_list_decode = msgspec.json.Decoder(list[Any]).decode


def _inner(raw: msgspec.Raw) -> GenericInner | None:
    if not raw or memoryview(raw)[0] != 0x7B:  # "{"
        return None
    try:
        return _inner_decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _first_time(*values: Any) -> str | None:
    for value in values:
        if value is not None:
            return any_time(value)
    return None


def raw_list(
    raw: msgspec.Raw, decode: Callable[[msgspec.Raw], list[Any]] = _list_decode
) -> list[Any]:
    """The entries of a raw JSON list, as ``decode`` makes them (none when it is not a list)."""
    if not raw or memoryview(raw)[0] != 0x5B:  # "["
        return []
    try:
        return decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


class GenericReader:
    """Reader of the generic ``jsonl`` format (see the module docstring)."""

    name = "jsonl"
    line_type: type[Any] = GenericLine

    def is_transcript(self, path: bytes) -> bool:
        return jsonl_file(path)

    def identify(self, path: bytes) -> tuple[str | None, str]:
        text = path.decode("utf-8", "replace")
        return None, text.removesuffix(".jsonl")

    def id_of_key(self, key: str) -> str:
        return key  # ids are spelled as the agent spells them

    def deleted_by_agent(self, path: bytes) -> bool:
        return False  # no tombstone names are known in generic JSONL

    def archived_by_agent(self, path: bytes) -> bool:
        return False  # nor archive names

    def _parts(
        self, line: GenericLine
    ) -> tuple[str | None, msgspec.Raw, Any, msgspec.Raw, str | None]:
        """(role, raw content, model, raw tool calls, time), from the line or its message."""
        role = line.role if isinstance(line.role, str) else None
        content = line.content or line.text
        model = line.model
        calls = line.tool_calls
        ts = _first_time(line.timestamp, line.created_at, line.time)
        if line.message and (role is None or not content or ts is None):
            inner = _inner(line.message)
            if inner is not None:
                if role is None and isinstance(inner.role, str):
                    role = inner.role
                content = content or inner.content or inner.text
                model = model if model is not None else inner.model
                calls = calls or inner.tool_calls
                if ts is None:
                    ts = _first_time(inner.timestamp, inner.created_at, inner.time)
        return role, content, model, calls, ts

    def update(self, facts: SessionFacts, line: GenericLine) -> None:
        role, content, model, calls, ts = self._parts(line)
        if role is not None:
            facts.add_message(role)
            if calls:
                facts.tool_calls += len(raw_list(calls))
            if isinstance(model, str):
                facts.add_model(model)
            if role == "user" and facts.title is None:
                facts.add_title(raw_string(content))
        if ts is not None:
            facts.add_time(ts)

    def message(self, line: GenericLine, offset: int) -> Message | None:
        role, content, model, calls, ts = self._parts(line)
        if role is None:
            return None
        tool_calls: list[ToolCall] = []
        for call in raw_list(calls):
            if not isinstance(call, dict):
                continue
            fn = call.get("function")
            if isinstance(fn, dict):
                tool_calls.append(tool_call(fn.get("name"), fn.get("arguments")))
            else:
                tool_calls.append(tool_call(call.get("name"), call.get("arguments")))
        return Message(
            offset=offset,
            role=canonical_role(role),
            timestamp=ts,
            text=raw_string(content),
            tool_calls=tool_calls,
            model=model if isinstance(model, str) else None,
        )
