"""The format readers: one stateless :class:`~remote_sync.index.facts.FormatReader` per format.

What it owns: :data:`READERS` (format name → reader, the same names as
:data:`remote_sync.formats.FORMATS`) and :func:`get_reader`.

Contract shared by every reader, which the index relies on:

* ``line_type`` is a lenient msgspec view: unknown fields are ignored and every field is
  optional, so any JSON object of the format decodes. A line that is not a JSON object fails
  decoding and is counted as malformed by the caller; one whose known fields have the wrong
  shape is read without them (:mod:`remote_sync.decode.salvage`).
* ``update`` keeps no state outside the :class:`~remote_sync.index.facts.SessionFacts` it is
  given, so folding a file's prefix and then the rest into the same facts equals folding the
  whole file, however the bytes were chunked.
* ``update`` counts exactly one message for every line ``message`` renders (and none for the
  lines it returns None for), or, for a line that renders a message counted already (the
  same record written again), one ``repeated``: so message numbers from the facts
  (``SessionFacts.shown``) and from ``show`` agree.
* Timestamps are ISO 8601 UTC with milliseconds and ``Z`` in every format.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..index.facts import FormatReader
from .claude_code import ClaudeCodeReader
from .codex import CodexReader
from .gemini import JsonlReader
from .openclaw import OpenClawReader
from .pi import PiReader
from .picoclaw import PicoclawReader

__all__ = ["READERS", "get_reader"]

READERS: dict[str, FormatReader] = {
    reader.name: reader
    for reader in (
        OpenClawReader(),
        ClaudeCodeReader(),
        CodexReader(),
        PicoclawReader(),
        PiReader(),
        JsonlReader(),
    )
}


def get_reader(format_name: str) -> FormatReader:
    """The reader of ``format_name``; a ``ConfigError`` naming the known formats otherwise."""
    try:
        return READERS[format_name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(READERS))
        raise ConfigError(
            f"unknown format {format_name!r}", hint=f"known formats: {known}"
        ) from None
