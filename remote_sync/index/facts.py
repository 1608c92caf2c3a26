"""Per-session facts, and the contract every format's reader fulfils.

What it owns: :class:`SessionFacts`, the accumulator the index stores per session and extends
line by line (so a sync only decodes the *new* bytes of a transcript and adds them to the facts
it already had), :class:`Message`, one shown message of ``sessions show``, :class:`ShowResult`,
what a show read (from a mirror or straight from a host), and the :class:`FormatReader`
protocol that each module in :mod:`remote_sync.formats` implements.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import msgspec

#: Titles are the first user text, shortened to this many characters.
TITLE_CHARS = 80
#: How many recent usage keys are remembered across syncs to count a response's usage once.
RECENT_USAGE_KEYS = 32
#: SQLite's INTEGER range, which the token sums are held to (see :meth:`SessionFacts.bound`).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Message roles counted as ``tool`` and as ``system`` (``user`` and ``assistant`` are
#: themselves; any other role is ``other``).
TOOL_ROLES = frozenset({"tool", "toolResult", "tool_result", "function"})
SYSTEM_ROLES = frozenset({"system", "developer"})


class SessionFacts(msgspec.Struct, kw_only=True):
    """What the index knows about one session; extended record by record.

    Every field is a sum, a max/min, a set, a first value or the state a reader carries from
    one record to the next (kept here, never in the reader), so facts of a file's prefix plus
    the records of its new bytes equal the facts of the whole file.
    """

    session_id: str | None = None
    agent: str | None = None  # agent id or project, when the format has one
    bytes: int = 0  # bytes of complete lines seen
    lines: int = 0  # complete lines seen (blank ones included)
    malformed: int = 0  # lines that were not JSON objects of the format
    user: int = 0  # messages by role
    assistant: int = 0
    tool: int = 0
    system: int = 0
    other: int = 0
    #: Lines ``show`` renders as messages that are not counted as messages: the same message
    #: written again (gemini-cli rewrites its last record under the same id), or a Codex
    #: fork's copy of its parent's history. They are numbered by ``show`` and by the page
    #: marks like the rest (see :attr:`shown`).
    repeated: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cache_read: int = 0
    tokens_cache_write: int = 0
    cost: float | None = None  # in USD when the format records it
    models: list[str] = msgspec.field(default_factory=list)
    first_ts: str | None = None  # ISO 8601 UTC, e.g. 2026-11-21T10:00:00.000Z
    last_ts: str | None = None
    title: str | None = None
    #: Claude Code repeats one response's usage (and ``costUSD``) on each of its lines:
    #: remember recent ``message.id:requestId`` keys (across syncs) to count each once.
    recent_usage_keys: list[str] = msgspec.field(default_factory=list)
    #: The most output tokens and cost counted for each of :attr:`recent_usage_keys`, in its
    #: order. Claude Code writes a response's lines as it streams it, so the usage of its
    #: first lines holds the output tokens so far and only its last line holds them all; the
    #: rest of the usage is the same on every line. None: nothing to go by (no cost on the
    #: key's first line; facts kept by a version that did not record these).
    recent_usage_out: list[int | None] = msgspec.field(default_factory=list)
    recent_usage_cost: list[float | None] = msgspec.field(default_factory=list)
    #: gemini-cli writes a message record again, whole, under the same id when its tokens or
    #: tool calls arrive: the id of the last record and what it added (tool calls, tokens in,
    #: out, cache read), replaced when the record comes again. Only the last one is kept
    #: (bounded memory); gemini-cli rewrites only its last message.
    last_record_id: str | None = None
    last_record_counts: list[int] = msgspec.field(default_factory=list)
    #: The session this one was forked from (Codex's ``forked_from_id``), when it is a fork.
    forked_from: str | None = None
    #: While a fork's copy of its parent's history is read: when the fork was created (epoch
    #: ms); turns begun before it are copied ones. None otherwise (not a fork, or past the
    #: copy).
    copied_before_ms: int | None = None
    #: A fork's cumulative token totals (input, cached input, output) as its parent left them:
    #: what its own totals grow from (empty until known). See ``formats/codex_fork.py``.
    token_base: list[int] = msgspec.field(default_factory=list)

    @property
    def messages(self) -> int:
        return self.user + self.assistant + self.tool + self.system + self.other

    @property
    def shown(self) -> int:
        """The messages ``show`` renders: those counted and those :attr:`repeated`."""
        return self.user + self.assistant + self.tool + self.system + self.other + self.repeated

    def add_message(self, role: str | None) -> None:
        if role == "user":
            self.user += 1
        elif role == "assistant":
            self.assistant += 1
        elif role in TOOL_ROLES:
            self.tool += 1
        elif role in SYSTEM_ROLES:
            self.system += 1
        else:
            self.other += 1

    def add_model(self, model: str | None) -> None:
        if model and model not in self.models:
            self.models.append(model)

    def add_time(self, ts: str | None) -> None:
        if not ts:
            return
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def add_title(self, text: str | None) -> None:
        if self.title is None and text:
            flat = " ".join(text.split())
            if flat:
                self.title = flat if len(flat) <= TITLE_CHARS else flat[: TITLE_CHARS - 1] + "…"

    def bound(self) -> None:
        """Hold the token sums to SQLite's integer range (saturating). A transcript may claim
        any count up to 2**64 - 1 (a corrupt or hostile usage line), and its session must still
        be stored. For counts that are not negative, saturating the facts of a prefix and
        then adding the rest gives what saturating the whole file's facts gives."""
        for name in ("tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write"):
            value = getattr(self, name)
            if not INT64_MIN <= value <= INT64_MAX:
                setattr(self, name, min(max(value, INT64_MIN), INT64_MAX))

    def add_cost(self, cost: float | None) -> None:
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost

    def usage_growth(
        self, key: str, out: int | None, cost: float | None
    ) -> tuple[int, float] | None:
        """None if no line of usage key ``key`` was counted yet: it is recorded with this
        line's output tokens ``out`` and ``cost``, and the caller counts the line's usage
        whole. Otherwise the output tokens and cost this line has beyond the most counted
        for the key (0 when it has no more), which are counted from now on."""
        keys, outs, costs = self.recent_usage_keys, self.recent_usage_out, self.recent_usage_cost
        if len(outs) != len(keys) or len(costs) != len(keys):
            # Facts kept before these were recorded: what their keys counted is not known.
            outs[:] = [None] * len(keys)
            costs[:] = [None] * len(keys)
        try:
            at = keys.index(key)
        except ValueError:
            keys.append(key)
            outs.append(out)
            costs.append(cost)
            if len(keys) > RECENT_USAGE_KEYS:
                del keys[0], outs[0], costs[0]
            return None
        more_out, more_cost = 0, 0.0
        counted_out = outs[at]
        if counted_out is not None and out is not None and out > counted_out:
            more_out, outs[at] = out - counted_out, out
        counted_cost = costs[at]
        if counted_cost is not None and cost is not None and cost > counted_cost:
            more_cost, costs[at] = cost - counted_cost, cost
        return more_out, more_cost


class ToolCall(msgspec.Struct):
    name: str
    arguments: str  # shortened JSON of the arguments


class Message(msgspec.Struct, kw_only=True):
    """One message as ``sessions show`` prints it."""

    offset: int  # byte offset of its line in the transcript
    role: str
    timestamp: str | None = None
    text: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    model: str | None = None


@dataclasses.dataclass(slots=True)
class ShowResult:
    """The messages read, where they are in the session, and what reading them cost.

    Kept here, with :class:`Message`, rather than with the readers that fill it: the library
    API names it in its signatures, and importing it must not import those readers."""

    messages: list[Message] = dataclasses.field(default_factory=list)
    #: Number (0-based) of the first message returned; None when unknown (a tail).
    first: int | None = None
    #: Bytes read from the file (the benchmark and the tests bound this).
    bytes_read: int = 0
    #: True when the end of the file (or of ``end``) was reached.
    at_end: bool = False
    #: Messages the whole session shows (counted ones and repeated ones,
    #: ``SessionFacts.shown``): from the index, or from a read straight from a host that
    #: decoded the whole file anyway (a page or head that reached its end, a tail that reached
    #: its start); None when unknown (the rest of the file was not read, to count it).
    total: int | None = None


class FormatReader(Protocol):
    """What a format module provides to the index (one instance per format, stateless)."""

    #: The format's name (the inventory's ``format`` key).
    name: str
    #: msgspec type each transcript line is decoded into (lenient: unknown fields ignored).
    line_type: type[Any]

    def is_transcript(self, path: bytes) -> bool:
        """Is this mirrored file (path relative to the root) a session transcript?"""
        ...

    def identify(self, path: bytes) -> tuple[str | None, str]:
        """(agent or project, session id) from the path alone."""
        ...

    def id_of_key(self, key: str) -> str:
        """The session id of the session the agent knows by ``key`` (what a user may type to
        name it): ``key`` itself, except in a format whose file names spell keys otherwise."""
        ...

    def deleted_by_agent(self, path: bytes) -> bool:
        """Is this transcript one the agent deleted, kept by it under a tombstone's name?"""
        ...

    def archived_by_agent(self, path: bytes) -> bool:
        """Is this transcript one the agent archived: moved out of its live sessions under an
        archive's name or into an archive directory (and not deleted)?"""
        ...

    def update(self, facts: SessionFacts, line: Any) -> None:
        """Fold one decoded line into the facts (the caller counts lines and bytes).

        A reader may also have ``fold_many(facts, lines, offset_of, marks, mark_every)``: the
        same for a list of lines, appending ``(messages shown before, offset_of(i))`` to
        ``marks`` for a line ``i`` that ``message`` renders when the count before it is a
        multiple of ``mark_every``. The indexer then calls it once per chunk instead of
        ``update`` once per line.
        """
        ...

    def message(self, line: Any, offset: int) -> Message | None:
        """The line as a shown message, or None when it is not a message (headers, events)."""
        ...
