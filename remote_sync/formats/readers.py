"""The format readers: one stateless :class:`~remote_sync.index.facts.FormatReader` per format.

What it owns: :func:`get_reader` and :func:`find_reader` (a format's reader by its name, the
names of :data:`remote_sync.formats.FORMATS`), which import only the module of the reader
asked for.

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

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..index.facts import FormatReader

__all__ = ["find_reader", "get_reader"]

#: Format name -> the module and class of its reader. A sync imports only the readers of its
#: hosts' formats: the six modules (and their msgspec line types) cost start-up time a
#: one-format sync does not need.
_READER_CLASSES: dict[str, tuple[str, str]] = {
    "openclaw": (".openclaw", "OpenClawReader"),
    "claude-code": (".claude_code", "ClaudeCodeReader"),
    "codex": (".codex", "CodexReader"),
    "picoclaw": (".picoclaw", "PicoclawReader"),
    "pi": (".pi", "PiReader"),
    "jsonl": (".gemini", "JsonlReader"),
}

_loaded: dict[str, FormatReader] = {}


def get_reader(format_name: str) -> FormatReader:
    """The reader of ``format_name``; a ``ConfigError`` naming the known formats otherwise."""
    try:
        return _loaded[format_name]
    except (KeyError, TypeError):
        pass
    try:
        module, class_name = _READER_CLASSES[format_name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_READER_CLASSES))
        raise ConfigError(
            f"unknown format {format_name!r}", hint=f"known formats: {known}"
        ) from None
    reader: FormatReader = getattr(importlib.import_module(module, __package__), class_name)()
    _loaded[format_name] = reader
    return reader


def find_reader(format_name: str) -> FormatReader | None:
    """The reader of ``format_name``, or None for a name this version knows no format of (a
    state written by another version, a misspelt filter)."""
    return get_reader(format_name) if format_name in _READER_CLASSES else None
