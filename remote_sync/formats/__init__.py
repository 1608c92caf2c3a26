"""The format registry: which files each agent's session store has, and how they change.

This package owns :class:`FormatSpec`, the per-format defaults an inventory entry starts from
(the remote root, which files to mirror, which of them grow only by appends), and the
:data:`FORMATS` registry with :func:`get_format`. Globs follow :mod:`remote_sync.globs`;
``include`` and ``exclude`` are relative to the root, ``append_only`` globs without ``/``
match a file's name at any depth. Files matched by ``append_only`` are pulled by their new
tail; everything else is copied whole when its size or mtime changes.

Where the formats keep their sessions:

* ``openclaw`` (``~/.openclaw``): ``agents/<agentId>/sessions/`` holds ``sessions.json`` (the
  index), one ``<sessionId>.jsonl`` transcript per session plus per-topic files, and archives
  renamed to ``*.jsonl.reset.<ts>`` / ``*.jsonl.deleted.<ts>`` on reset and delete. ClawPal
  keeps archived transcripts in the sibling ``agents/<agentId>/sessions_archive/``, which is
  mirrored too (its ``*.jsonl`` are append-only like the others).
* ``claude-code`` (``~/.claude``): ``projects/<cwd-slug>/<session-uuid>.jsonl``, with
  sub-agent transcripts under ``projects/<slug>/<uuid>/subagents/``.
* ``codex`` (``~/.codex``): ``sessions/YYYY/MM/DD/rollout-*.jsonl``, moved to
  ``archived_sessions/`` when archived, and the ``session_index.jsonl`` index. The first
  (TypeScript) Codex CLI's ``sessions/rollout-*.json``, one JSON document rewritten whole, is
  mirrored whole too but is no transcript (see :mod:`remote_sync.formats.codex`).
* ``picoclaw`` (``~/.picoclaw/workspace``): ``sessions/<key>.jsonl`` with a
  ``<key>.meta.json`` beside each. Its JSONL files are rewritten in place on compaction, so
  "append-only" is only the common case: the mirror detects a rewrite and copies the file anew.
* ``pi`` (``~/.pi/agent``): ``sessions/`` (per-cwd directories of ``*.jsonl`` sessions).
* ``jsonl``: generic; no default root or include globs, the inventory must give both. It
  also reads gemini-cli's ``.jsonl`` chats (``~/.gemini/tmp/<hash>/chats/``).

How each format's transcripts are read (which files are transcripts, their identity, and
the facts and messages of their lines) is in :mod:`remote_sync.formats.readers` and the
per-format modules it registers.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["FORMATS", "FormatSpec", "get_format"]


class FormatSpec(NamedTuple):
    """One agent format's defaults. A NamedTuple (immutable, as cheap to make as a msgspec
    Struct): the command line's parser names the formats in its help, and a sync forwarded
    to the agent would otherwise import msgspec for that alone (a fifth of its start-up)."""

    name: str
    #: Remote directory; may start with ``~``. ``None``: the inventory must give it.
    default_root: str | None
    #: Globs of the files to mirror, relative to the root (empty: the inventory must give them).
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    #: Globs of files that grow by appends (JSONL transcripts); the rest is copied whole.
    append_only: tuple[str, ...]
    #: Globs of files whose presence shows that the agent keeps its sessions where this
    #: format does not read them (a newer store), and what to tell the user then: a warning
    #: on each sync that lists one. Such files are never copied.
    moved_to: tuple[str, ...] = ()
    moved_note: str = ""
    moved_hint: str = ""


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="openclaw",
            default_root="~/.openclaw",
            include=("agents/*/sessions/**", "agents/*/sessions_archive/**"),
            exclude=(),
            append_only=("*.jsonl", "*.jsonl.reset.*", "*.jsonl.deleted.*"),
            # OpenClaw 2026.7.2 and later keep sessions and transcripts in one SQLite
            # database per agent; a live database is never copied (OpenClaw's own advice).
            moved_to=("agents/*/agent/openclaw-agent.sqlite",),
            moved_note="this OpenClaw keeps its sessions in SQLite (2026.7.2 and later); "
            "remote-sync mirrors and indexes the JSONL store only, so sessions written since "
            "the move are not in the mirror",
            moved_hint="the JSONL files left under agents/*/sessions/ are still mirrored; for "
            "the rest, use OpenClaw's own backup on the host (openclaw backup create)",
        ),
        FormatSpec(
            name="claude-code",
            default_root="~/.claude",
            include=("projects/**",),
            exclude=(),
            append_only=("*.jsonl",),
        ),
        FormatSpec(
            name="codex",
            default_root="~/.codex",
            include=("sessions/**", "archived_sessions/**", "session_index.jsonl"),
            exclude=(),
            append_only=("*.jsonl",),
        ),
        FormatSpec(
            name="picoclaw",
            default_root="~/.picoclaw/workspace",
            include=("sessions/**",),
            exclude=(),
            append_only=("*.jsonl",),
        ),
        FormatSpec(
            name="pi",
            default_root="~/.pi/agent",
            include=("sessions/**",),
            exclude=(),
            append_only=("*.jsonl",),
        ),
        FormatSpec(
            name="jsonl",
            default_root=None,
            include=(),
            exclude=(),
            append_only=("*.jsonl",),
        ),
    )
}


def get_format(name: str) -> FormatSpec:
    """The format called ``name``; a ``ConfigError`` naming the known formats otherwise."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(FORMATS))
        raise ConfigError(f"unknown format {name!r}", hint=f"known formats: {known}") from None
