"""Keeping a JSONL line whose known fields have the wrong shape, minus those fields.

What it owns: :class:`Salvage`, which the decoder asks about a line that is valid JSON but
failed its type (a msgspec ``ValidationError``). Agents' writers are not all strict: a usage
count written as ``5.0``, ``1e3`` or ``"10"``, a model given as an object, one tool-call block
of an odd shape. Refusing the whole line would lose its message (role, text, time, tokens)
for one field; the agents themselves read such a line and ignore what they do not understand.

So, in order:

1. the line is decoded again with msgspec's lax rules (``strict=False``): a number written as
   a string, or an integral float where an integer is expected, is read as that number;
2. while that fails, the value the error names (``at `$.message.usage.output` ``) is removed
   from the line's JSON (a key of an object, an element of an array; a value under an
   object typed as a mapping takes its whole mapping with it, since msgspec does not say which
   key it was), and the rest is decoded again, at most :data:`MAX_REMOVALS` times.

A line whose top level is the wrong kind (an array where an object is expected), that is
not JSON, or that still fails after the removals stays malformed.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = ["MAX_REMOVALS", "Salvage"]

#: Values removed from one line at most before it is given up as malformed.
MAX_REMOVALS = 8

_AT = re.compile(r" - at `\$(.*)`\Z", re.DOTALL)
_INDEX = re.compile(r"\[(\d+)\]")


class Salvage:
    """Salvage lines of one type (see the module docstring); built on first use."""

    __slots__ = ("_lax", "_type")

    def __init__(self, type: Any) -> None:
        self._type = type
        self._lax: msgspec.json.Decoder[Any] | None = None

    def __call__(self, line: bytes) -> tuple[Any] | None:
        """``(value,)`` of ``line`` decoded with its bad fields left out, or None."""
        if self._lax is None:
            self._lax = msgspec.json.Decoder(self._type, strict=False)
        decode = self._lax.decode
        try:
            return (decode(line),)
        except msgspec.ValidationError as exc:
            error = exc
        except Exception:
            return None
        try:
            tree = msgspec.json.decode(line)
        except Exception:
            return None
        for _ in range(MAX_REMOVALS):
            if not _remove_at(tree, _error_path(error)):
                return None
            try:
                return (decode(msgspec.json.encode(tree)),)
            except msgspec.ValidationError as exc:
                error = exc
            except Exception:
                return None
        return None


def _error_path(error: msgspec.ValidationError) -> str | None:
    """The JSON path msgspec's message names, without its ``$``; None when it names none (the
    top-level value is the wrong kind)."""
    found = _AT.search(str(error))
    return found[1] if found else None


def _remove_at(tree: Any, path: str | None) -> bool:
    """Remove the value at ``path`` from ``tree``; False when the path names nothing there."""
    if not path:
        return False  # the whole line: nothing smaller to remove
    where = _locate(tree, path)
    if where is None:
        return False
    container, key = where  # a dict and its key, or a list and its index
    del container[key]
    return True


def _locate(node: Any, path: str) -> tuple[Any, Any] | None:
    """(container, key or index) of the value ``path`` names below ``node``, or None.

    A key may itself hold ``.`` or ``[`` (msgspec writes it as it is), so each step tries the
    keys present, longest first. ``[...]`` (a mapping's key, not named) locates the mapping.
    """
    if path.startswith("[...]"):
        return None  # the caller's step removes the mapping itself
    if path.startswith("["):
        index = _INDEX.match(path)
        if index is None or not isinstance(node, list) or int(index[1]) >= len(node):
            return None
        at = int(index[1])
        rest = path[index.end() :]
        if not rest:
            return node, at
        return _locate_or_here(node, at, rest)
    if not path.startswith(".") or not isinstance(node, dict):
        return None
    name = path[1:]
    for key in sorted((k for k in node if name.startswith(k)), key=len, reverse=True):
        rest = name[len(key) :]
        if not rest:
            return node, key
        if rest[0] in ".[":
            found = _locate_or_here(node, key, rest)
            if found is not None:
                return found
    return None


def _locate_or_here(container: Any, key: Any, rest: str) -> tuple[Any, Any] | None:
    """Locate ``rest`` below ``container[key]``; a mapping's unnamed key means ``key`` itself."""
    if rest.startswith("[...]"):
        return container, key
    return _locate(container[key], rest)
