"""OpenClaw's JSONL session store: which files are transcripts and whose.

What it owns: :class:`OpenClawReader`. OpenClaw embeds pi-coding-agent's SessionManager, so
its lines are session version 3 and are folded and rendered by
:class:`remote_sync.formats.pi.V3Reader` (see there for what each line contributes).

Transcripts live in ``agents/<agentId>/sessions/`` (or ClawPal's sibling
``sessions_archive/``), directly in that directory:

* ``<sessionId>.jsonl``: a session;
* ``<sessionId>-topic-<threadId>.jsonl``: a Telegram topic of it. Its session id keeps the
  ``-topic-<n>`` suffix, so each topic is a session of its own;
* ``<sessionId>.jsonl.reset.<ts>`` and ``<sessionId>.jsonl.deleted.<ts>``: archives left by
  ``/new``, ``/reset`` and deletion. Their session id is ``<sessionId>``: the index tells them
  apart from the live file by path. A ``.reset.`` archive, like every transcript in
  ``sessions_archive/``, is archived by the agent (``archived_by_agent``: listed as
  ``archived``); a ``.deleted.`` one is its tombstone (``deleted_by_agent``: ``deleted``).

Not transcripts: ``sessions.json`` (the index), trajectory side files
``*.trajectory.jsonl`` / ``*.trajectory-path.json`` (runtime events), repair backups
``*.bak-*`` and anything in subdirectories (``cold/*.jsonl.zst``).

Identity: the agent is ``<agentId>`` (the directory above ``sessions/``); the session id is
the file name without ``.jsonl`` and without an archive suffix. A path of a single segment
(a root set to one sessions directory) has no agent. The header line's ``id`` is not used
(unlike pi's): OpenClaw's ``sessionId`` is the file's name, the one ``sessions.json`` points
to and archives keep, while a header may name another session (a topic file carries its base
session's, a repaired or copied file its original's).
"""

from __future__ import annotations

from ..index.facts import SessionFacts
from .generic import split_path
from .pi import V3Reader

__all__ = ["OpenClawReader"]

_ARCHIVE_DIR = "sessions_archive"
_ARCHIVE_DIR_BYTES = _ARCHIVE_DIR.encode()
_SESSION_DIRS = ("sessions", _ARCHIVE_DIR)
_DELETED = ".jsonl.deleted."
_DELETED_BYTES = _DELETED.encode()
_RESET = ".jsonl.reset."
_RESET_BYTES = _RESET.encode()
_ARCHIVES = (_RESET, _DELETED)


def _session_stem(name: str) -> str | None:
    """The session id in a transcript's file name, or None if the name is not a transcript."""
    named = _transcript_name(name)
    return named[0] if named else None


def _transcript_name(name: str) -> tuple[str, str | None] | None:
    """(session id, archive marker or None for a live file) of a transcript's file name."""
    if ".trajectory.jsonl" in name:
        return None
    if name.endswith(".jsonl"):
        stem = name[: -len(".jsonl")]
        return (stem, None) if stem else None
    for marker in _ARCHIVES:
        at = name.find(marker)
        if at > 0 and len(name) > at + len(marker):
            return name[:at], marker
    return None


class OpenClawReader(V3Reader):
    """OpenClaw (JSONL era) transcripts under ``agents/<agent>/sessions/``."""

    name = "openclaw"

    def is_transcript(self, path: bytes) -> bool:
        segs = split_path(path)
        if not segs or (len(segs) > 1 and segs[-2] not in _SESSION_DIRS):
            return False
        return _session_stem(segs[-1]) is not None

    def identify(self, path: bytes) -> tuple[str | None, str]:
        segs = split_path(path)
        name = segs[-1] if segs else ""
        stem = _session_stem(name) or name
        agent = segs[-3] if len(segs) >= 3 and segs[-2] in _SESSION_DIRS else None
        return agent, stem

    def deleted_by_agent(self, path: bytes) -> bool:
        if _DELETED_BYTES not in path:
            return False  # the common case, answered without decoding the path
        segs = split_path(path)
        name = segs[-1] if segs else ""
        named = _transcript_name(name)
        return named is not None and named[1] == _DELETED

    def archived_by_agent(self, path: bytes) -> bool:
        # A /new or /reset archive, or a transcript ClawPal moved to sessions_archive/ (a
        # tombstone is deleted_by_agent, which the index asks first).
        if _RESET_BYTES not in path and _ARCHIVE_DIR_BYTES not in path:
            return False  # the common case, answered without decoding the path
        segs = split_path(path)
        if len(segs) > 1 and segs[-2] == _ARCHIVE_DIR:
            return True
        named = _transcript_name(segs[-1]) if segs else None
        return named is not None and named[1] == _RESET

    def _header_id(self, facts: SessionFacts, header_id: str) -> None:
        pass  # the id is the file name's (see the module docstring)
