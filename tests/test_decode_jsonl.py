"""Tests of the incremental JSONL decoder (remote_sync.decode.jsonl)."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any
from unittest import mock

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remote_sync.decode import jsonl
from remote_sync.decode.jsonl import (
    DEFAULT_MAX_LINE_BYTES,
    JsonlDecoder,
    LineError,
    Record,
    decode_all,
)
from remote_sync.decode.salvage import MAX_REMOVALS

MiB = 1024 * 1024
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark

Item = Record[Any] | LineError


class View(msgspec.Struct):
    """A small view: unknown fields are ignored (msgspec's default)."""

    type: str
    id: int | None = None


class Loose(msgspec.Struct):
    """Every field optional, so any JSON object decodes: exercises the Struct UTF-8 path."""

    a: Any = None


def feed_chunks(decoder: JsonlDecoder[Any], data: bytes, cuts: list[int]) -> list[Item]:
    """Feed ``data`` cut at ``cuts`` (sorted, may repeat: empty chunks), checking invariants."""
    out: list[Item] = []
    start = decoder.committed_offset + decoder.pending_bytes
    prev = 0
    for cut in [*cuts, len(data)]:
        out.extend(decoder.feed(data[prev:cut]))
        prev = cut
        fed = start + cut
        assert decoder.committed_offset + decoder.pending_bytes == fed
        if decoder.skipping:
            assert decoder.pending() == b""
        else:
            first = decoder.committed_offset - start
            assert decoder.pending() == data[first:cut]
            assert b"\n" not in decoder.pending()
    return out


def reference(
    data: bytes, tp: Any, max_line_bytes: int, start_offset: int = 0
) -> tuple[list[tuple[Any, ...]], int]:
    """An independent, obviously-right model: split on newlines, judge each line alone."""
    decode = msgspec.json.Decoder(tp).decode
    lines = data.split(b"\n")
    lines.pop()  # the partial tail (or b"" after a final newline)
    model: list[tuple[Any, ...]] = []
    offset = start_offset
    for whole in lines:
        length = len(whole) + 1
        # The file's byte order mark is not JSON; one anywhere else is a byte like others.
        line = whole.removeprefix(BOM) if offset == 0 else whole
        if len(whole) > max_line_bytes:
            model.append(("too_long", offset, length))
        elif line.strip(b" \t\r"):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                model.append(("error", offset, length, "invalid UTF-8"))
            else:
                try:
                    model.append(("record", offset, length, decode(line)))
                except (msgspec.DecodeError, RecursionError):
                    model.append(_with_lone_surrogates(line, decode, offset, length))
        offset += length
    return model, offset


def _replaced(value: Any) -> Any:
    """``value`` with every lone surrogate (as Python's json reads one) made U+FFFD."""
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    if isinstance(value, dict):
        return {_replaced(k): _replaced(v) for k, v in value.items()}
    return value


def _with_lone_surrogates(line: bytes, decode: Any, offset: int, length: int) -> tuple[Any, ...]:
    """The model of a line msgspec refuses: a record when Python's json reads it with lone
    surrogates and msgspec reads it once they are U+FFFD; else an error."""
    try:
        # As text: given bytes, json.loads would skip a byte order mark anywhere.
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return ("error", offset, length, None)
    fixed = _replaced(value)
    if fixed == value:
        return ("error", offset, length, None)
    try:
        return ("record", offset, length, decode(json.dumps(fixed).encode()))
    except (msgspec.DecodeError, RecursionError):
        return ("error", offset, length, None)


def as_model(items: list[Item], max_line_bytes: int) -> list[tuple[Any, ...]]:
    model: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, Record):
            model.append(("record", item.offset, item.length, item.value))
        elif item.reason.startswith("line longer than"):
            assert item.reason == f"line longer than {max_line_bytes} bytes ({item.length} bytes)"
            model.append(("too_long", item.offset, item.length))
        elif item.reason == "invalid UTF-8":
            model.append(("error", item.offset, item.length, item.reason))
        else:
            prefixes = ("invalid JSON: ", "expected ", "schema mismatch: ", "cannot decode: ")
            assert item.reason.startswith(prefixes), item.reason
            model.append(("error", item.offset, item.length, None))
    return model


# --------------------------------------------------------------------------- examples


def test_offsets_and_lengths() -> None:
    data = b'{"a":1}\n{"bb":22}\n{"c":"\xc3\xa9"}\n'
    items, committed = decode_all(data)
    assert items == [
        Record(0, 8, {"a": 1}),
        Record(8, 10, {"bb": 22}),
        Record(18, 11, {"c": "é"}),
    ]
    assert committed == len(data)
    for item in items:
        assert data[item.offset + item.length - 1 : item.offset + item.length] == b"\n"


def test_partial_tail_held_then_completed() -> None:
    decoder = JsonlDecoder()
    assert decoder.feed(b'{"a":1}\n{"b":') == [Record(0, 8, {"a": 1})]
    assert decoder.committed_offset == 8
    assert decoder.pending_bytes == 5
    assert decoder.pending() == b'{"b":'
    assert decoder.feed(b"") == []
    assert decoder.feed(b"2") == []
    assert decoder.pending() == b'{"b":2'
    assert decoder.feed(b"}") == []
    assert decoder.committed_offset == 8
    assert decoder.feed(b"\n") == [Record(8, 8, {"b": 2})]
    assert decoder.committed_offset == 16
    assert decoder.pending_bytes == 0
    assert decoder.pending() == b""


def test_decode_all_leaves_partial_tail_uncommitted() -> None:
    items, committed = decode_all(b'{"a":1}\n{"b":2}')
    assert items == [Record(0, 8, {"a": 1})]
    assert committed == 8


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = JsonlDecoder()
    buf = bytearray(b'{"a":1}\n{"b"')
    assert decoder.feed(buf) == [Record(0, 8, {"a": 1})]
    buf[:] = b"XXXXXXXXXXXXX"  # the caller reuses its buffer: the held tail must not change
    assert decoder.feed(memoryview(b"xx:2}\n")[2:]) == [Record(8, 8, {"b": 2})]


def test_malformed_json_reported_and_decoding_continues() -> None:
    data = b'{"a":1}\n{"a":\n{nope}\n{"a":1} trailing\n{"b":2}\n'
    items, committed = decode_all(data)
    assert items[0] == Record(0, 8, {"a": 1})
    errors = items[1:4]
    assert [(e.offset, e.length) for e in errors] == [(8, 6), (14, 7), (21, 17)]
    for error in errors:
        assert isinstance(error, LineError)
        assert error.reason.startswith("invalid JSON: ")
    assert items[4] == Record(38, 8, {"b": 2})
    assert committed == len(data)


@pytest.mark.parametrize("tp", [dict[str, Any], View, Loose])
def test_invalid_utf8(tp: Any) -> None:
    lines = [
        b'{"type":"x","s":"\xff"}',  # invalid byte inside a string (skipped by View)
        b'{"type":"x","\xc3":1}',  # truncated sequence in a key
        b'{"type":"x","s":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'{"type":"x","s":"\xc0\x80"}',  # overlong NUL
        b'{"type":"x"} \xe2\x82',  # truncated sequence after the value
    ]
    good = b'{"type":"ok","s":"\xe2\x82\xac"}'
    data = b"\n".join([good, *lines, good]) + b"\n"
    items, _ = decode_all(data, tp)
    assert isinstance(items[0], Record)
    assert isinstance(items[-1], Record)
    assert len(items) == len(lines) + 2
    offset = len(good) + 1
    for item, line in zip(items[1:-1], lines, strict=True):
        assert item == LineError(offset, len(line) + 1, "invalid UTF-8")
        offset += len(line) + 1
    # The same lines fed one byte at a time go through the partial-line path.
    decoder = JsonlDecoder(tp)
    assert feed_chunks(decoder, data, list(range(len(data)))) == items


def test_wrong_type() -> None:
    data = b'[1,2]\n"s"\n3\nnull\n{"a":[]}\n'
    items, _ = decode_all(data)
    assert items[:4] == [
        LineError(0, 6, "expected object, got array"),
        LineError(6, 4, "expected object, got str"),
        LineError(10, 2, "expected object, got int"),
        LineError(12, 5, "expected object, got null"),
    ]
    assert items[4] == Record(17, 9, {"a": []})


def test_struct_tolerates_unknown_fields_and_reports_schema_mismatch() -> None:
    data = (
        b'{"type":"message","id":7,"message":{"content":[{"x":1}]},"extra":null}\n'
        b'{"id":1}\n'
        b'{"type":5}\n'
        b'{"type":"m"}\n'
    )
    items, _ = decode_all(data, View)
    first = data.index(b"\n") + 1
    assert items[0] == Record(0, first, View(type="message", id=7))
    assert isinstance(items[1], LineError)
    assert items[1].reason.startswith("schema mismatch: ")
    assert "type" in items[1].reason
    assert isinstance(items[2], LineError)
    assert items[2].reason.startswith("schema mismatch: ")
    assert items[3] == Record(len(data) - 13, 13, View(type="m"))


def test_a_lone_surrogate_escape_is_read_as_the_replacement_character() -> None:
    """JavaScript agents cut long texts by UTF-16 units: a cut inside an emoji leaves a lone
    surrogate, which JSON.stringify writes as an escape. The line is valid JSON, not lost."""
    data = (
        b'{"type":"t","text":"cut \\ud83d"}\n'  # a lone high surrogate
        b'{"type":"t","text":"\\\\ud83d"}\n'  # an escaped backslash, then plain text
        b'{"type":"t","text":"\\ud83d\\ude00 \\ude00"}\n'  # a pair, then a lone low one
    )
    items, _ = decode_all(data)
    assert [i.value["text"] for i in items if isinstance(i, Record)] == [
        "cut \ufffd",
        "\\ud83d",
        "\U0001f600 \ufffd",
    ]
    fed = JsonlDecoder(View).feed_values(data)
    assert (len(fed.values), fed.malformed) == (3, 0)


def test_crlf_lines() -> None:
    data = b'{"a":1}\r\n\r\n{"b":2}\r\n{"c":'
    decoder = JsonlDecoder()
    items = decoder.feed(data)
    assert items == [Record(0, 9, {"a": 1}), Record(11, 9, {"b": 2})]
    assert decoder.committed_offset == 20
    # A lone \r is neither a line end nor valid inside a value.
    items, _ = decode_all(b'{"a":1}\r{"b":2}\n')
    assert len(items) == 1
    assert isinstance(items[0], LineError)


def test_blank_lines_skipped_but_counted() -> None:
    data = b'\n  \n\t\r\n{"a":1}\n\n \n'
    decoder = JsonlDecoder()
    assert decoder.feed(data) == [Record(7, 8, {"a": 1})]
    assert decoder.committed_offset == len(data)
    assert decoder.feed(b"\n\n") == []
    assert decoder.committed_offset == len(data) + 2
    # Other ASCII whitespace (form feed) is not JSON whitespace: an error, not a blank line.
    (error,), _ = decode_all(b"\x0c\n")
    assert isinstance(error, LineError)
    assert (error.offset, error.length) == (0, 2)
    assert error.reason.startswith("invalid JSON: ")


def test_start_offset() -> None:
    data = b'{"a":1}\n\n[1]\n{"b":'
    decoder = JsonlDecoder(start_offset=1000)
    items = decoder.feed(data)
    assert items == [
        Record(1000, 8, {"a": 1}),
        LineError(1009, 4, "expected object, got array"),
    ]
    assert decoder.committed_offset == 1013
    assert decoder.pending_bytes == 5
    assert decoder.feed(b"2}\n") == [Record(1013, 8, {"b": 2})]
    assert decode_all(data, start_offset=7)[1] == 20


@pytest.mark.parametrize("tp", [dict[str, Any], Loose])
def test_a_byte_order_mark_starting_the_file_is_not_part_of_its_json(tp: Any) -> None:
    """Only at offset 0 of the file; the offsets and lengths count its bytes all the same."""
    data = BOM + b'{"a":1}\n' + BOM + b'{"a":2}\n{"a":3}\n'
    items, committed = decode_all(data, tp)
    assert [type(i).__name__ for i in items] == ["Record", "LineError", "Record"]
    assert [(i.offset, i.length) for i in items] == [(0, 11), (11, 11), (22, 8)]
    assert committed == len(data)
    # A decoder that starts further on never sees the file's first line.
    assert isinstance(decode_all(data[11:], tp, start_offset=11)[0][0], LineError)
    # A mark and nothing else is a blank line; one before a line that is no JSON is counted
    # in that line's error.
    assert decode_all(BOM + b"\r\n" + b'{"a":1}\n', tp)[0] == [
        Record(5, 8, tp(a=1) if tp is Loose else {"a": 1})
    ]
    (error,) = decode_all(BOM + b"nope\n", tp)[0]
    assert isinstance(error, LineError) and (error.offset, error.length) == (0, 8)
    assert error.reason.startswith("invalid JSON")


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_byte_order_mark_cut_by_the_chunks_is_still_the_files(cut: int) -> None:
    data = BOM + b'{"a":1}\n{"a":2}\n'
    for feed in ("feed", "feed_values"):
        decoder: JsonlDecoder[Any] = JsonlDecoder()
        first = getattr(decoder, feed)(data[:cut])
        rest = getattr(decoder, feed)(data[cut:])
        if feed == "feed":
            got = [(r.offset, r.value) for r in [*first, *rest] if isinstance(r, Record)]
        else:
            got = list(zip(first.offsets + rest.offsets, first.values + rest.values, strict=True))
            assert first.malformed + rest.malformed == 0
        assert got == [(0, {"a": 1}), (11, {"a": 2})], feed
        assert decoder.committed_offset == len(data)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        JsonlDecoder(max_line_bytes=-1)
    with pytest.raises(ValueError):
        JsonlDecoder(start_offset=-1)


def test_default_limit() -> None:
    assert 64 * MiB == DEFAULT_MAX_LINE_BYTES


def test_too_long_line_in_one_chunk() -> None:
    data = b'{"a":"' + b"x" * 20 + b'"}\n{"b":2}\n'
    items, committed = decode_all(data, max_line_bytes=16)
    assert items == [
        LineError(0, 29, "line longer than 16 bytes (29 bytes)"),
        Record(29, 8, {"b": 2}),
    ]
    assert committed == len(data)


def test_limit_is_exclusive_of_newline() -> None:
    line = b'{"a":"xy"}'  # 10 bytes
    assert isinstance(decode_all(line + b"\n", max_line_bytes=10)[0][0], Record)
    assert isinstance(decode_all(line + b"\n", max_line_bytes=9)[0][0], LineError)
    decoder = JsonlDecoder(max_line_bytes=10)
    assert decoder.feed(line) == []
    assert not decoder.skipping
    assert decoder.feed(b"\n") == [Record(0, 11, {"a": "xy"})]


def test_too_long_line_skipped_across_chunks() -> None:
    decoder = JsonlDecoder(max_line_bytes=10, start_offset=5)
    assert decoder.feed(b'{"a":1}\n{"long":"') == [Record(5, 8, {"a": 1})]
    assert not decoder.skipping
    assert decoder.feed(b"xxxxx") == []
    assert decoder.skipping
    assert decoder.pending() == b""
    assert decoder.pending_bytes == 14
    assert decoder.committed_offset == 13
    assert decoder.feed(b"y" * 100) == []
    assert decoder.pending_bytes == 114
    assert decoder.feed(b'"}\n{"b":2}\n') == [
        LineError(13, 117, "line longer than 10 bytes (117 bytes)"),
        Record(130, 8, {"b": 2}),
    ]
    assert not decoder.skipping
    assert decoder.committed_offset == 138
    assert decoder.pending_bytes == 0


def test_too_long_line_not_buffered() -> None:
    """A 200 MiB line with a 1 MiB limit, fed in 1 MiB chunks, never holds more than a chunk."""
    chunk = bytearray(b"x" * MiB)
    decoder = JsonlDecoder(max_line_bytes=MiB)
    n_chunks = 200
    tracemalloc.start()
    try:
        results: list[Item] = []
        for _ in range(n_chunks):
            results += decoder.feed(memoryview(chunk))  # copied to bytes by feed: 1 MiB each
        assert decoder.skipping
        assert decoder.pending_bytes == n_chunks * MiB
        results += decoder.feed(b'\n{"a":1}\n')
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    length = n_chunks * MiB + 1
    assert results == [
        LineError(0, length, f"line longer than {MiB} bytes ({length} bytes)"),
        Record(length, 8, {"a": 1}),
    ]
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_long_line_in_small_chunks_is_linear() -> None:
    """A 4 MiB line fed in 64-byte chunks: joining the pieces once keeps it O(n)."""
    text = b"y" * (4 * MiB)
    data = b'{"a":"' + text + b'"}\n'
    decoder = JsonlDecoder()
    started = time.perf_counter()
    items: list[Item] = []
    for i in range(0, len(data), 64):
        items += decoder.feed(data[i : i + 64])
    elapsed = time.perf_counter() - started
    assert items == [Record(0, len(data), {"a": text.decode()})]
    assert elapsed < 10, f"{elapsed:.1f} s: quadratic buffering?"


class SkipsA(msgspec.Struct):
    """Reads ``id`` only: msgspec skips ``a`` unread, so the decoder checks its UTF-8."""

    id: int | None = None


@pytest.mark.parametrize("values", [False, True], ids=["feed", "feed_values"])
@pytest.mark.parametrize(
    ("tp", "tail"),
    [
        # One emoji makes the text of a whole line UCS-4: 16 MiB for this 4 MiB line.
        (SkipsA, "\U0001f600".encode()),
        # msgspec makes the 4 MiB string itself; the line's pieces must be gone by then.
        (dict[str, Any], b"x"),
    ],
    ids=["skipped-field", "decoded-field"],
)
def test_long_line_across_chunks_is_held_once(tp: Any, tail: bytes, values: bool) -> None:
    """A 4 MiB line (a tool's output) fed in 256 KiB chunks, as a sync feeds the index: its
    UTF-8 check never makes its whole text, and its pieces go once they are joined, so at
    most about two copies of it are held at a time (its pieces and the joined line, then
    the line and its decoded value)."""
    size = 4 * MiB
    data = b'{"a":"' + b"x" * size + tail + b'"}\n{"id":1}\n'
    step = 256 * 1024
    decoder: JsonlDecoder[Any] = JsonlDecoder(tp)
    feed = decoder.feed_values if values else decoder.feed
    tracemalloc.start()
    try:
        done = 0
        for at in range(0, len(data), step):
            fed = feed(data[at : at + step])  # each chunk a new bytes, as a stream's
            done += len(fed.values) if isinstance(fed, jsonl.FedLines) else len(fed)
            del fed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == 2
    assert decoder.committed_offset == len(data)
    assert peak < 2.5 * size, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB line"


def test_pending_join_does_not_lose_bytes() -> None:
    decoder = JsonlDecoder()
    for piece in (b'{"a"', b":", b'"b', b'c"'):
        assert decoder.feed(piece) == []
        assert decoder.pending() == b'{"a":"bc"'[: decoder.pending_bytes]
    assert decoder.feed(b"}\n") == [Record(0, 11, {"a": "bc"})]


def test_deeply_nested_line_is_an_error() -> None:
    data = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b'}\n{"b":1}\n'
    items, _ = decode_all(data)
    assert isinstance(items[0], LineError)
    assert items[0].reason.startswith("invalid JSON")
    assert items[1] == Record(len(data) - 8, 8, {"b": 1})


class Usage(msgspec.Struct):
    input: int | None = None
    output: int | None = None
    cost: float | None = None


class Block(msgspec.Struct):
    type: str | None = None
    text: str | None = None


class Typed(msgspec.Struct):
    """A line view with typed fields, as the format readers have."""

    role: str | None = None
    model: str | None = None
    usage: Usage | None = None
    content: list[Block] | None = None


def test_fields_of_the_wrong_shape_are_left_out_not_the_line() -> None:
    """Writers that are not strict: a count as a float or a string, a model as an object, one
    odd block. The line keeps its message; only what cannot be read is left out."""
    cases = [
        (
            b'{"role":"a","usage":{"input":5.0,"output":"10","cost":"0.5"}}',
            Typed(role="a", usage=Usage(5, 10, 0.5)),
        ),
        (b'{"role":"a","usage":{"input":1e3,"output":2.5}}', Typed(role="a", usage=Usage(1000))),
        (b'{"role":"a","model":{"id":"m"},"usage":{"input":1}}', Typed(role="a", usage=Usage(1))),
        (
            b'{"role":"a","content":[{"type":"text","text":"hi"},{"type":7},"x",'
            b'{"type":"text","text":"yo"}]}',
            # the block's bad field goes; a block that is no object goes whole
            Typed(role="a", content=[Block("text", "hi"), Block(), Block("text", "yo")]),
        ),
        (b'{"role":["user"],"model":"m"}', Typed(model="m")),
        (b'{"role":"a","usage":[1,2]}', Typed(role="a")),
    ]
    data = b"".join(line + b"\n" for line, _ in cases)
    items, _ = decode_all(data, Typed)
    assert [i.value for i in items] == [want for _, want in cases]  # type: ignore[union-attr]
    fed = JsonlDecoder(Typed).feed_values(data)
    assert (fed.values, fed.malformed) == ([want for _, want in cases], 0)


def test_a_line_that_cannot_be_salvaged_stays_malformed() -> None:
    many_bad = b'{"content":[' + b",".join([b"1"] * (MAX_REMOVALS + 1)) + b"]}"
    data = b"[1,2]\n" + many_bad + b"\n" + b'{"role":"a","usage":{"input":\n'
    items, _ = decode_all(data, Typed)
    assert [type(i) for i in items] == [LineError, LineError, LineError]
    assert items[1].reason.startswith("schema mismatch: ")  # type: ignore[union-attr]
    fewer = b'{"content":[' + b",".join([b"1"] * MAX_REMOVALS) + b"]}\n"
    assert decode_all(fewer, Typed)[0] == [Record(0, len(fewer), Typed(content=[]))]


def test_a_key_holding_dots_and_brackets_is_found() -> None:
    """msgspec names a field ``$.a.b`` whether ``a.b`` is one key or two: both are tried."""

    class Dotted(msgspec.Struct, rename={"n": "x.y[0]"}):
        n: int | None = None
        keep: str | None = None

    line = b'{"x.y[0]":"no","keep":"k"}\n'
    assert decode_all(line, Dotted)[0] == [Record(0, len(line), Dotted(keep="k"))]


def test_post_init_failure_is_an_error() -> None:
    class Checked(msgspec.Struct):
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n must be >= 0")

    items, _ = decode_all(b'{"n":-1}\n{"n":1}\n', Checked)
    assert isinstance(items[0], LineError)
    assert "n must be >= 0" in items[0].reason
    assert items[1] == Record(9, 8, Checked(1))


# --------------------------------------------------------------------------- properties

_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_object_line = st.builds(
    lambda obj, pad, cr: pad + orjson.dumps(obj) + pad + cr,
    st.dictionaries(st.text(max_size=6), _json_value, max_size=4),
    st.sampled_from([b"", b" ", b"\t"]),
    st.sampled_from([b"", b"\r"]),
)
_invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\x80", b"\x80", b"\xf4\x90\x80\x80"]
)
_hostile_line = st.one_of(
    st.binary(max_size=24),  # anything at all, including newlines, NULs and lone \r
    st.builds(lambda b: b'{"a":"' + b + b'"}', _invalid_utf8),
    st.builds(lambda b: b'{"a":1,"z":["' + b + b'"]}', _invalid_utf8),
    st.sampled_from([b"[1,2]", b"1", b'"s"', b"null", b"{", b"}", b"\x00", b"\r", b"\x0c"]),
    st.sampled_from([b"", b" ", b"\t\r", b"\r"]),
)
# Lone surrogate escapes (JavaScript cut a string inside a surrogate pair), next to pairs,
# escaped backslashes and plain text; in values and in keys.
_surrogate_text = st.lists(
    st.sampled_from(["\ud83d", "\ude00", "\udbff", "x", "\\", "\\u", "\ud83d\ude00", "é"]),
    max_size=5,
).map("".join)
_surrogate_line = st.builds(
    lambda key, value: json.dumps({key: value, "a": [value]}).encode(),
    _surrogate_text,
    _surrogate_text,
)
_long_line = st.builds(lambda n: b'{"a":"' + b"L" * n + b'"}', st.integers(10, 80))
_bom_line = st.builds(lambda line: BOM + line, st.one_of(_object_line, _hostile_line))
_line = st.one_of(_object_line, _object_line, _hostile_line, _long_line, _surrogate_line, _bom_line)


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_line, max_size=12))
    data = b"\n".join(lines)
    if draw(st.integers(0, 3)) == 0:  # a file that starts with a byte order mark
        data = BOM + data
    ending = draw(st.sampled_from(["newline", "newline", "partial", "none"]))
    if ending == "newline" and lines:
        data += b"\n"
    elif ending == "partial":
        data += b"\n" + draw(st.one_of(_object_line, _long_line)).rstrip(b"\n")
    return data


@st.composite
def _cuts(draw: st.DrawFn, data: bytes) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))


_types = st.sampled_from([dict[str, Any], Loose])
_limits = st.sampled_from([DEFAULT_MAX_LINE_BYTES, 40, 16, 1, 0])
_fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(data=_streams(), tp=_types, limit=_limits, start=st.integers(0, 2**40), seed=st.data())
def test_any_chunking_matches_whole_decode(
    data: bytes, tp: Any, limit: int, start: int, seed: st.DataObject
) -> None:
    whole, committed = decode_all(data, tp, max_line_bytes=limit, start_offset=start)
    cuts = seed.draw(_cuts(data))
    decoder: JsonlDecoder[Any] = JsonlDecoder(tp, max_line_bytes=limit, start_offset=start)
    assert feed_chunks(decoder, data, cuts) == whole
    assert decoder.committed_offset == committed


@_fast
@given(data=_streams(), tp=_types, limit=_limits)
def test_one_byte_chunks_match_whole_decode(data: bytes, tp: Any, limit: int) -> None:
    whole, committed = decode_all(data, tp, max_line_bytes=limit)
    decoder: JsonlDecoder[Any] = JsonlDecoder(tp, max_line_bytes=limit)
    assert feed_chunks(decoder, data, list(range(len(data)))) == whole
    assert decoder.committed_offset == committed


@_fast
@given(data=_streams(), tp=_types, limit=_limits, start=st.integers(0, 2**20))
def test_whole_decode_matches_reference_model(data: bytes, tp: Any, limit: int, start: int) -> None:
    items, committed = decode_all(data, tp, max_line_bytes=limit, start_offset=start)
    model, model_committed = reference(data, tp, limit, start)
    assert as_model(items, limit) == model
    assert committed == model_committed
    tail = data[committed - start :]
    assert b"\n" not in tail


@_fast
@given(data=_streams(), limit=_limits, window=st.integers(1, 64))
def test_windowed_utf8_check_matches_reference_model(data: bytes, limit: int, window: int) -> None:
    """Struct types get their UTF-8 checked in windows of whole lines: shrink the window."""
    with mock.patch.object(jsonl, "_UTF8_WINDOW", window):
        items, committed = decode_all(data, Loose, max_line_bytes=limit)
    model, model_committed = reference(data, Loose, limit)
    assert as_model(items, limit) == model
    assert committed == model_committed


@_fast
@given(
    data=st.lists(
        st.one_of(
            st.text(max_size=8).map(str.encode),  # valid sequences of every length
            st.binary(max_size=4),  # anything, including a sequence cut short
        ),
        max_size=12,
    ).map(b"".join),
    step=st.integers(1, 9),
)
def test_utf8_run_check_in_steps_matches_python(data: bytes, step: int) -> None:
    """A run decoded at once is checked a step at a time; a step may cut any sequence."""
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    with mock.patch.object(jsonl, "_UTF8_WINDOW", step):
        assert jsonl._is_utf8_run(memoryview(data)) is valid


def test_windowed_utf8_check_at_the_limit() -> None:
    line = b'{"a":1,"z":"\xff"}'  # invalid UTF-8 in a field the Struct skips
    data = line + b"\n" + line + b"x\n"
    with mock.patch.object(jsonl, "_UTF8_WINDOW", 4):
        items, _ = decode_all(data, Loose, max_line_bytes=len(line))
    n = len(line)
    assert items == [
        LineError(0, n + 1, "invalid UTF-8"),
        LineError(n + 1, n + 2, f"line longer than {n} bytes ({n + 2} bytes)"),
    ]


# --------------------------------------------------------------------------- feed_values

# Runs of lines built to pass some of the fast path's line checks while not being one object
# per line: decode_lines would read them differently from line by line.
_brace_run = st.sampled_from(
    [
        [b'{"a":1}{"b":2}'],  # two objects on one line
        [b'{"a":1} {"b":2}\r'],
        [b'{"a":{}', b"}{}"],  # an object over two lines, then another: 2 values, 2 lines
        [b'{"x":0}{"a":', b"{}}"],
        [b'{"x":0}{"a":[', b"{}]}"],
        [b'{"x":0},{"a":1', b'"b":2}'],
        [b'{"a":1,', b'"b":{}}'],
        [b'{"a":"}', b'{"}'],  # a string cannot hold a newline: errors
        [b'{"a":{"b":1}'],
        [b"}"],
        [b"{}"],
        [b"{}\r"],
        [b'{"a":1,"z":"\xff"}'],  # invalid UTF-8 in a field Loose skips
        [b'{"z":["\xed\xa0\x80"],"a":2}'],
        [b"[]"],
        [b'{"a":1}}'],
        [b"{{}"],
    ]
)
# Objects with nothing around them: the lines the fast path takes.
_tight_object_line = st.builds(
    lambda obj, cr: orjson.dumps(obj) + cr,
    st.dictionaries(st.text(max_size=6), _json_value, max_size=4),
    st.sampled_from([b"", b"", b"\r"]),
)


@st.composite
def _brace_streams(draw: st.DrawFn) -> bytes:
    """Mostly lines that pass the fast path's line checks, sometimes one that does not."""
    runs = draw(st.lists(st.one_of(_tight_object_line.map(lambda x: [x]), _brace_run), max_size=8))
    lines = [line for run in runs for line in run]
    if lines and draw(st.integers(0, 3)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(_line))
    crlf = draw(st.booleans())
    data = (b"\r\n" if crlf else b"\n").join(lines)
    if draw(st.integers(0, 3)) == 0:  # a file that starts with a byte order mark
        data = BOM + data
    if lines and draw(st.integers(0, 3)) > 0:
        data += b"\r\n" if crlf else b"\n"
    return data


# The default limit mostly, so that whole runs of lines can take the fast path.
_fast_limits = st.sampled_from([DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_LINE_BYTES, 64, 16, 0])


def values_model(items: list[Item]) -> tuple[list[tuple[int, Any]], int]:
    """What feed_values must give for these items: (offset, value) of records, errors."""
    good = [(item.offset, item.value) for item in items if isinstance(item, Record)]
    return good, sum(isinstance(item, LineError) for item in items)


def feed_values_chunks(
    decoder: JsonlDecoder[Any], data: bytes, cuts: list[int]
) -> tuple[list[tuple[int, Any]], int, int, list[tuple[int, int, bytes]]]:
    """feed_values over ``data`` cut at ``cuts``: (offset, value) pairs, malformed, lines and
    the decoder's state after each chunk."""
    good: list[tuple[int, Any]] = []
    malformed = lines = 0
    states: list[tuple[int, int, bytes]] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        fed = decoder.feed_values(data[prev:cut])
        assert len(fed.values) == len(fed.offsets)
        good.extend(zip(fed.offsets, fed.values, strict=True))
        malformed += fed.malformed
        lines += fed.lines
        assert lines == data[:cut].count(b"\n")
        states.append((decoder.committed_offset, decoder.pending_bytes, decoder.pending()))
        prev = cut
    return good, malformed, lines, states


def record_states(
    decoder: JsonlDecoder[Any], data: bytes, cuts: list[int]
) -> tuple[list[Item], list[tuple[int, int, bytes]]]:
    items: list[Item] = []
    states: list[tuple[int, int, bytes]] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        items.extend(decoder.feed(data[prev:cut]))
        states.append((decoder.committed_offset, decoder.pending_bytes, decoder.pending()))
        prev = cut
    return items, states


@_fast
@given(
    data=st.one_of(_streams(), _brace_streams(), _brace_streams()),
    tp=_types,
    limit=_fast_limits,
    start=st.integers(0, 2**40),
    seed=st.data(),
)
def test_feed_values_matches_feed(
    data: bytes, tp: Any, limit: int, start: int, seed: st.DataObject
) -> None:
    """Same values, offsets, malformed count and decoder state as the Record path, for any
    chunking (the fast path sees whichever runs of whole lines the cuts leave)."""
    cuts = seed.draw(_cuts(data))
    items, states = record_states(
        JsonlDecoder(tp, max_line_bytes=limit, start_offset=start), data, cuts
    )
    fast = JsonlDecoder(tp, max_line_bytes=limit, start_offset=start)
    good, malformed, _lines, fast_states = feed_values_chunks(fast, data, cuts)
    assert (good, malformed) == values_model(items)
    assert fast_states == states


@_fast
@given(data=_brace_streams(), tp=_types, limit=_fast_limits)
def test_feed_values_whole_matches_reference_model(data: bytes, tp: Any, limit: int) -> None:
    fed = JsonlDecoder(tp, max_line_bytes=limit).feed_values(data)
    model, _ = reference(data, tp, limit)
    good = [(m[1], m[3]) for m in model if m[0] == "record"]
    assert list(zip(fed.offsets, fed.values, strict=True)) == good
    assert fed.malformed == len(model) - len(good)


@_fast
@given(data=_streams(), limit=_limits, window=st.integers(1, 64), seed=st.data())
def test_windowed_utf8_check_of_held_lines_matches_reference_model(
    data: bytes, limit: int, window: int, seed: st.DataObject
) -> None:
    """Lines completed across chunks are checked in windows too: shrink the window."""
    cuts = seed.draw(_cuts(data))
    with mock.patch.object(jsonl, "_UTF8_WINDOW", window):
        items = feed_chunks(JsonlDecoder(Loose, max_line_bytes=limit), data, cuts)
        fed = feed_values_chunks(JsonlDecoder(Loose, max_line_bytes=limit), data, cuts)
    model, _ = reference(data, Loose, limit)
    assert as_model(items, limit) == model
    assert fed[:2] == values_model(items)


def test_feed_values_takes_the_one_call_path_for_clean_lines() -> None:
    lines = [orjson.dumps({"type": "t", "id": i}) for i in range(50)]
    data = b"\n".join(lines) + b"\n"
    per_line = mock.patch.object(JsonlDecoder, "_values_by_line", side_effect=AssertionError)
    with per_line:
        fed = JsonlDecoder(View).feed_values(data)
    assert fed.values == [View("t", i) for i in range(50)]
    assert fed.offsets == [sum(len(x) + 1 for x in lines[:i]) for i in range(50)]
    assert (fed.malformed, fed.lines) == (0, 50)
    with per_line:
        assert JsonlDecoder(View).feed_values(data.replace(b"\n", b"\r\n")).values == fed.values


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"a"}{"type":"b"}\n\n',  # two on one line, then a blank line: 2 values, 2 lines
        b'{"type":"a","id":{}\n}{"type":"b"}\n',  # one object over two lines, then another
        b'{"type":"x"},{"type":"a"\n,"id":1}\n',
        b'{"type":"a","z":"\xff"}\n{"type":"b"}\n',  # invalid UTF-8 in a skipped field
        b'{"type":"a"}\n \n{"type":"b"}\n',
    ],
)
def test_feed_values_falls_back_where_decode_lines_differs(data: bytes) -> None:
    items, _ = decode_all(data, View)
    fed = JsonlDecoder(View).feed_values(data)
    assert (list(zip(fed.offsets, fed.values, strict=True)), fed.malformed) == values_model(items)
    assert fed.malformed >= 1 or b"\n \n" in data


# Objects with the fields of Typed, each of any shape: most lines need salvaging.
_typed_line = st.builds(
    lambda obj: orjson.dumps(obj),
    st.fixed_dictionaries(
        {},
        optional={
            "role": _json_value,
            "model": _json_value,
            "usage": st.one_of(
                _json_value, st.fixed_dictionaries({}, optional={"input": _json_value})
            ),
            "content": st.lists(
                st.one_of(_json_value, st.fixed_dictionaries({}, optional={"text": _json_value})),
                max_size=4,
            ),
        },
    ),
)


@_fast
@given(
    lines=st.lists(st.one_of(_typed_line, _typed_line, _hostile_line), max_size=10),
    seed=st.data(),
)
def test_salvage_is_the_same_for_any_chunking_and_both_paths(
    lines: list[bytes], seed: st.DataObject
) -> None:
    data = b"\n".join(lines) + b"\n"
    whole, _ = decode_all(data, Typed)
    cuts = seed.draw(_cuts(data))
    assert feed_chunks(JsonlDecoder(Typed), data, cuts) == whole
    good, malformed, _lines, _states = feed_values_chunks(JsonlDecoder(Typed), data, cuts)
    assert (good, malformed) == values_model(whole)


@_fast
@given(line=_typed_line)
def test_an_object_with_few_bad_fields_is_always_read(line: bytes) -> None:
    """At most 7 values of these lines can be of a wrong shape: each one is mended."""
    (item,), _ = decode_all(line + b"\n", Typed)
    assert isinstance(item, Record), (line, item)
