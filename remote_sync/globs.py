"""Glob matching on relative byte paths, and the directories a remote listing starts from.

This module owns the glob dialect used by formats and inventories (``include``, ``exclude``,
``append_only``): :func:`compile_globs` turns globs into one bytes regex wrapped in a
:class:`GlobSet` (kept per set of globs: an inventory is read again for every sync), and
:func:`start_points` derives the static directory prefixes a remote ``find`` has to walk
so that every path the globs can match is listed.

Paths are relative to a source root, given as ``bytes``: a remote file name may hold any byte
but NUL, and ``/`` separates segments. Globs are ``str`` and are matched as their UTF-8 bytes
(characters from :func:`os.fsdecode` surrogate escapes stand for their raw byte), so paths
that are not valid UTF-8 still match: ``*.jsonl`` matches ``b"\\xff\\xfe.jsonl"``.

The dialect (rsync/gitignore-like):

* ``*`` matches any run of bytes except ``/`` (including none, and a leading ``.``);
  ``?`` matches exactly one byte except ``/``.
* ``[...]`` is a class of one byte: ``[abc]``, ranges ``[a-z]``, negation ``[!...]`` or
  ``[^...]``; a ``]`` right after the opening ``[`` (or ``[!``) is literal; it never matches
  ``/``. A ``[`` without a closing ``]`` is literal. Range ends must be single bytes (ASCII);
  a non-ASCII character in a plain class matches its UTF-8 bytes; in a negated class it is an
  error.
* ``\\`` makes the next character literal (``\\*``, ``\\[``).
* ``**`` as a whole segment matches zero or more segments: ``a/**/b`` matches ``a/b`` and
  ``a/x/y/b``; ``**/x`` matches ``x`` at any depth; a trailing ``a/**`` matches everything
  inside ``a`` (not ``a`` itself). ``**`` inside a segment (``a**b``) is just ``*``.
* A glob containing ``/`` is anchored at the root: ``agents/*/sessions/**``. A leading ``/``
  only anchors (``/*.jsonl`` matches top-level files only), a leading ``./`` is dropped, a
  trailing ``/`` means everything inside (``sessions/`` is ``sessions/**``), empty and ``.``
  segments are dropped, and a ``..`` segment is an error.
* A glob without ``/`` that has a wildcard matches the last segment (the basename) at any
  depth: ``*.jsonl``, ``*.jsonl.reset.*``. A plain name without wildcards names that entry at
  the root (``session_index.jsonl``); write ``**/name`` to match a fixed name at any depth.
* A ``/`` always separates segments, even inside ``[...]``.

Invalid globs raise :class:`~remote_sync.errors.ConfigError`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from .errors import ConfigError

__all__ = ["GlobSet", "compile_globs", "start_points"]

_SLASH = ord("/")
_HINT = (
    "globs use * ? [...] and ** (a whole segment: any depth); "
    "escape a special character with a backslash"
)

# Token kinds of one parsed segment.
_LIT = "lit"  # payload: the literal bytes
_STAR = "star"  # any run of bytes except '/'
_ONE = "one"  # one byte except '/'
_CLASS = "class"  # payload: the regex of a one-byte class (maybe an alternation)

_Token = tuple[str, bytes]


@dataclass(frozen=True)
class GlobSet:
    """A compiled set of globs: :meth:`match` is true when any of them matches the path."""

    globs: tuple[str, ...]
    regex: re.Pattern[bytes] | None = field(repr=False, compare=False)

    def match(self, path: bytes) -> bool:
        """Whether any glob matches ``path`` (relative, ``/``-separated, any bytes)."""
        return self.regex is not None and self.regex.fullmatch(path) is not None


class _Glob(msgspec.Struct, frozen=True):
    """One normalised glob: its segments' tokens and whether it matches at any depth."""

    text: str
    segments: tuple[tuple[_Token, ...], ...]
    anywhere: bool


def compile_globs(globs: Sequence[str]) -> GlobSet:
    """Compile ``globs`` into one :class:`GlobSet` (no globs: matches nothing)."""
    if isinstance(globs, str):
        raise TypeError("compile_globs takes a sequence of globs, not one string")
    texts = tuple(globs)
    if all(type(text) is str for text in texts):
        return _compiled(texts)
    return _compile(texts)  # what _parse says of a glob that is no string


@functools.lru_cache(maxsize=256)
def _compiled(texts: tuple[str, ...]) -> GlobSet:
    """:func:`_compile`, kept: an inventory is read again for every sync (the agent's), and
    each host's three sets of globs, the same ones host after host, cost some 20 us each to
    compile (1.2 ms a sync of 20 hosts). A GlobSet is never changed, so hosts share one; a
    glob that does not compile raises each time (lru_cache keeps no exception)."""
    return _compile(texts)


def _compile(texts: tuple[str, ...]) -> GlobSet:
    if not texts:
        return GlobSet(texts, None)
    alternatives = [b"(?:" + _glob_regex(_parse(text)) + b")" for text in texts]
    return GlobSet(texts, re.compile(b"(?s:" + b"|".join(alternatives) + b")"))


def start_points(globs: Sequence[str]) -> list[str]:
    """The static directory prefixes (relative to the root) a remote listing must start from.

    Every path some glob can match lies at or below one of them. Deduplicated and minimal (no
    point lies below another), in the order the globs first name them; ``["."]`` alone when
    some glob can match at the top level through a wildcard. A point never begins with ``-``
    (it gets ``./`` in front) and never holds ``..`` (a ``ConfigError``).
    """
    if isinstance(globs, str):
        raise TypeError("start_points takes a sequence of globs, not one string")
    points: list[tuple[str, ...]] = []
    for text in globs:
        glob = _parse(text)
        prefix: list[str] = []
        if not glob.anywhere:
            for tokens in glob.segments:
                if not all(kind == _LIT for kind, _ in tokens):
                    break
                prefix.append(b"".join(p for _, p in tokens).decode("utf-8", "surrogateescape"))
        if not prefix:
            return ["."]
        points.append(tuple(prefix))
    minimal: list[tuple[str, ...]] = []
    for point in points:
        if any(point[: len(other)] == other for other in points if len(other) < len(point)):
            continue
        if point not in minimal:
            minimal.append(point)
    out = []
    for point in minimal:
        text = "/".join(point)
        out.append(f"./{text}" if text.startswith("-") else text)
    return out


def _parse(text: str) -> _Glob:
    """Normalise and tokenize one glob (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise ConfigError(f"glob {text!r} is not a string", hint=_HINT)
    if not text:
        raise ConfigError("empty glob", hint=_HINT)
    if "\x00" in text:
        raise ConfigError(f"glob {text!r} contains a NUL character", hint=_HINT)
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ConfigError(f"glob {text!r} is not encodable as UTF-8", hint=_HINT) from None
    body = text
    if body.endswith("/"):
        body += "**"
    anchored = "/" in body
    raw = [seg for seg in body.split("/") if seg not in ("", ".")]
    if ".." in raw:
        raise ConfigError(
            f"glob {text!r} has a '..' segment", hint="globs are relative to the root; drop '..'"
        )
    if not raw:
        raise ConfigError(f"glob {text!r} names the root itself", hint="use '**' for everything")
    segments: list[tuple[_Token, ...]] = []
    for seg in raw:
        if seg == "**" and segments and segments[-1] == ((_STAR, b"**"),):
            continue  # "**/**" is "**"
        segments.append(((_STAR, b"**"),) if seg == "**" else tuple(_tokenize(seg, text)))
    has_wildcard = any(kind != _LIT for kind, _ in segments[0])
    return _Glob(text, tuple(segments), anywhere=not anchored and has_wildcard)


def _tokenize(segment: str, glob: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(segment)
    while i < n:
        char = segment[i]
        if char == "\\":
            if i + 1 >= n:
                raise ConfigError(
                    f"glob {glob!r} has a backslash with nothing to escape", hint=_HINT
                )
            tokens.append((_LIT, _encode(segment[i + 1])))
            i += 2
        elif char == "*":
            while i < n and segment[i] == "*":
                i += 1
            tokens.append((_STAR, b"*"))
        elif char == "?":
            tokens.append((_ONE, b""))
            i += 1
        elif char == "[":
            parsed = _parse_class(segment, i, glob)
            if parsed is None:
                tokens.append((_LIT, b"["))
                i += 1
            else:
                regex, i = parsed
                tokens.append((_CLASS, regex))
        else:
            tokens.append((_LIT, _encode(char)))
            i += 1
    return tokens


def _parse_class(segment: str, start: int, glob: str) -> tuple[bytes, int] | None:
    """Parse ``[...]`` at ``start``: its regex and the index after ``]``, or None if unclosed."""
    i, n = start + 1, len(segment)
    negate = i < n and segment[i] in "!^"
    if negate:
        i += 1
    members: set[int] = set()
    multibyte: list[bytes] = []
    first = True
    while True:
        if i >= n:
            return None
        char = segment[i]
        if char == "]" and not first:
            i += 1
            break
        first = False
        low, i = _class_char(segment, i)
        if i + 1 < n and segment[i] == "-" and segment[i + 1] != "]":
            high, i = _class_char(segment, i + 1)
            lo, hi = _encode(low), _encode(high)
            if len(lo) != 1 or len(hi) != 1:
                raise ConfigError(
                    f"glob {glob!r}: range {low}-{high} must have single-byte (ASCII) ends",
                    hint=_HINT,
                )
            if lo[0] > hi[0]:
                raise ConfigError(f"glob {glob!r}: range {low}-{high} is reversed", hint=_HINT)
            members.update(range(lo[0], hi[0] + 1))
            continue
        encoded = _encode(low)
        if len(encoded) == 1:
            members.add(encoded[0])
        else:
            multibyte.append(encoded)
    if negate:
        if multibyte:
            raise ConfigError(
                f"glob {glob!r}: a negated class cannot hold non-ASCII characters", hint=_HINT
            )
        members = set(range(256)) - members
    members.discard(_SLASH)
    choices = [re.escape(m) for m in dict.fromkeys(multibyte)]
    if members:
        choices.insert(0, _byte_class(members))
    if not choices:
        return b"(?!)", i
    return b"(?:" + b"|".join(choices) + b")", i


def _class_char(segment: str, i: int) -> tuple[str, int]:
    if segment[i] == "\\" and i + 1 < len(segment):
        return segment[i + 1], i + 2
    return segment[i], i + 1


def _byte_class(members: set[int]) -> bytes:
    """A regex class of exactly these byte values, as compact ``\\xHH-\\xHH`` ranges."""
    parts: list[bytes] = []
    values = sorted(members)
    start = prev = values[0]
    for value in [*values[1:], -1]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
        start = prev = value
    return b"[" + b"".join(parts) + b"]"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _token_regex(token: _Token) -> bytes:
    kind, payload = token
    if kind == _LIT:
        return re.escape(payload)
    if kind == _STAR:
        return b"[^/]*"
    if kind == _ONE:
        return b"[^/]"
    return payload


def _glob_regex(glob: _Glob) -> bytes:
    out = [b"(?:.*/)?"] if glob.anywhere else []
    last = len(glob.segments) - 1
    for index, tokens in enumerate(glob.segments):
        if tokens == ((_STAR, b"**"),):
            # Zero or more whole segments; at the end, one or more (everything inside).
            out.append(b".+" if index == last else b"(?:.+/)?")
            continue
        out.append(b"".join(_token_regex(token) for token in tokens))
        if index != last:
            out.append(b"/")
    return b"".join(out)
