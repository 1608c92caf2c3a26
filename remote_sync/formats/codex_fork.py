"""Codex forks: where the parent's copied history ends, and the tokens that are the fork's own.

What it owns: the helpers :mod:`remote_sync.formats.codex` folds a forked rollout with.

A fork (``codex fork``, a backtrack, a sub-agent spawned with its parent's context) is a new
rollout whose first line is its own ``session_meta``, naming the parent in
``forked_from_id``. Codex then writes the parent's rollout items into it, as they were
(src: openai/codex codex-rs/core, ``InitialHistory::Forked``: ``persist_rollout_items``),
stamped with the time of the copy: the parent's ``session_meta`` lines, messages, tool calls,
``turn_context`` lines and ``token_count`` events. Then come the fork's own turns. No line
marks where the copy ends, and the copy's timestamps say nothing (they are all the fork's).

What does: turn ids. Since UUIDv7 turn ids, a ``turn_context`` (and a ``task_started`` /
``turn_started`` event) carries the ``turn_id`` minted when the turn began, and a UUIDv7
begins with its creation time in milliseconds. A copied turn began before the fork was
created, a turn of the fork's own at or after it. So the copy ends at the first turn start
whose UUIDv7 turn id is not older than the fork: its id's time when the fork's id is a
UUIDv7 (it is minted when the fork is created), else its ``session_meta`` ``timestamp``.
(Other public readers of rollouts settled on the same marker.) A turn start without a UUIDv7
turn id (older Codex: none, or a random UUID) cannot be placed so: it ends the copy only when
it was written :data:`LATE_TURN_MS` or more after the fork's creation, since Codex writes the
whole copy as the fork is created; an own turn begun sooner is taken for the copy (and not
counted) until a later one. A fork whose creation time cannot be read (no UUIDv7 id, no
times) is counted whole, as any rollout. Lines the fork writes just before its first turn
context (context Codex injects, system messages) are taken for the copy.

Tokens: Codex seeds a fork's token counter with its parent's last totals, so the fork's
cumulative ``total_token_usage`` goes on from there. Its own usage is its totals less that
base: the last total in the copy, or, when the copy held none (a sub-agent's), the first own
total less that event's own ``last_token_usage``. A total below the base means the counter
restarted: the base is dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["LATE_TURN_MS", "fork_created_ms", "iso_ms", "own_totals", "turn_id_ms", "uuid7_ms"]

#: A turn start without a UUIDv7 turn id ends a fork's copied history when it was written this
#: long after the fork was created (the copy is written at once, as the fork is created).
LATE_TURN_MS = 5_000

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
_HEX = frozenset(b"0123456789abcdefABCDEF")


def uuid7_ms(text: bytes) -> int | None:
    """The creation time (epoch ms) of a UUIDv7 in its text form, None for anything else."""
    if len(text) != 36 or text[14] != 0x37 or text[8] != 0x2D or text[13] != 0x2D:  # "7", "-"
        return None
    head = text[:8] + text[9:13]
    if not _HEX.issuperset(head):
        return None
    return int(head, 16)


def turn_id_ms(raw: bytes) -> int | None:
    """The time of a raw JSON ``turn_id`` that is a UUIDv7 string, None otherwise."""
    if len(raw) != 38 or raw[0] != 0x22 or raw[37] != 0x22:  # '"'
        return None
    return uuid7_ms(raw[1:37])


def iso_ms(iso: str | None) -> int | None:
    """Epoch milliseconds of an ISO time in the index's form (``…T…:…:….mmmZ``)."""
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso.removesuffix("Z"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        return None  # the index's form is naive UTC
    return (moment - _EPOCH) // _MS


def fork_created_ms(session_id: str | None, *times: str | None) -> int | None:
    """When a fork was created: its UUIDv7 id's time, else the first of ``times`` (ISO, in
    the index's form) that can be read."""
    if session_id:
        found = uuid7_ms(session_id.encode("ascii", "replace"))
        if found is not None:
            return found
    for iso in times:
        found = iso_ms(iso)
        if found is not None:
            return found
    return None


def own_totals(
    base: list[int], totals: tuple[int, int, int], last: tuple[int, int, int] | None
) -> tuple[list[int], tuple[int, int, int]]:
    """(the base, updated; the fork's own cumulative totals) for a fork's token totals
    (input, cached input, output). ``base`` is empty until the first own total is seen
    (``last``: that event's own usage, None when it records none)."""
    if not base:
        base = [max(t - s, 0) for t, s in zip(totals, last, strict=True)] if last else [0, 0, 0]
    if any(t < b for t, b in zip(totals, base, strict=True)):
        base = [0, 0, 0]  # the counter restarted: its totals are the fork's own
    own = (totals[0] - base[0], totals[1] - base[1], totals[2] - base[2])
    return base, own
