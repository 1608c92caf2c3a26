"""The agent's side of its protocol's requests: decoded with msgspec, each field checked.

What it owns: :class:`SyncRequest` and :class:`CancelRequest` as the agent reads them, and
:func:`decode_request`. Apart from :mod:`remote_sync.agent_link` so
that a client, which only writes a request (:func:`~remote_sync.agent_link.sync_request`),
never imports msgspec. The protocol itself is described in :mod:`remote_sync.agent_link`.
"""

from __future__ import annotations

import msgspec

from .agent_link import PROTOCOL_VERSION
from .errors import AgentRefusedError
from .ssh.remote import CONCURRENCY, IDLE_TIMEOUT


class SyncRequest(
    msgspec.Struct, tag="sync", tag_field="type", kw_only=True, forbid_unknown_fields=True
):
    """What ``remote-sync sync`` asks the agent for (see the module's protocol). A field this
    agent does not know is refused, never dropped: a newer client's option would otherwise
    be left out of its sync without a word (refused, the client runs the sync itself)."""

    version: int = PROTOCOL_VERSION
    inventory: str
    hosts: list[str] = []
    tags: list[str] = []
    dry_run: bool = False
    index: bool = True
    concurrency: int = CONCURRENCY
    idle_timeout: float | None = IDLE_TIMEOUT
    compress: bool | None = None


class CancelRequest(msgspec.Struct, tag="cancel", tag_field="type"):
    """Cancel the sync this connection asked for."""


class _Versioned(msgspec.Struct):
    """A request's type and version, read before the rest (another version may differ)."""

    type: str = ""
    version: int = 0


def decode_request(line: bytes) -> SyncRequest:
    """The sync request on ``line``; an :class:`AgentRefusedError` saying why it is none."""
    try:
        head = msgspec.json.decode(line, type=_Versioned)
    except msgspec.DecodeError as exc:
        raise AgentRefusedError(f"the request is not a JSON object: {exc}") from None
    if head.type != "sync":
        raise AgentRefusedError(f"unknown request type {head.type!r}: the agent serves 'sync'")
    if head.version != PROTOCOL_VERSION:
        raise AgentRefusedError(
            f"the request speaks protocol version {head.version}, this agent "
            f"{PROTOCOL_VERSION}: the client and the agent are different releases",
            hint="restart the agent after an upgrade; meanwhile the sync runs in this process",
        )
    try:
        return msgspec.json.decode(line, type=SyncRequest)
    except msgspec.ValidationError as exc:
        raise AgentRefusedError(f"the request is not valid: {exc}") from None
