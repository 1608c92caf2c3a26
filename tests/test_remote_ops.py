"""The listing and fetch remote operations: their parsers, and their scripts run for real.

- Property tests: the parsers give the same result however the output is cut into chunks.
- Local runs of the sh scripts (through the same ``wrapped_command`` quoting sshd gets) over a
  tree of hostile names, once with dash + GNU tools and once with nothing but BusyBox applets.
- Local runs with wrapper tools or a racing thread: a read error (head), files vanishing
  during the listing, real errors kept; a sparse file beyond 4 GiB; files that grew or shrank.
- Real sshd (non-root login user): permissions, symlinks, a missing root, deleted files.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from bbtools import applet_dir, with_cksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sshfleet import SSHFleet

from remote_sync.errors import ConfigError, ProtocolError, RemoteCommandError, TooMuchOutputError
from remote_sync.mirror import fetch_script, remote_ops, remote_sh
from remote_sync.mirror import listing as listing_module
from remote_sync.mirror.digests import Digest, Hasher
from remote_sync.mirror.fetch_events import Begin, Data, FrameEvent, HeadDigest, Short
from remote_sync.mirror.fetch_frames import FetchRequest, FrameParser
from remote_sync.mirror.fetch_script import fetch_argv, fetch_stdin, round_fetch_stdin
from remote_sync.mirror.listing import MAX_LISTING_RECORD, ListingParser, RemoteFile
from remote_sync.mirror.plan import Transfer
from remote_sync.mirror.remote_ops import (
    PROBE_TOOLS,
    listing_argv,
    listing_end_marker,
    new_marker,
    round_argv,
)
from remote_sync.mirror.state import FileState
from remote_sync.ssh.endpoint import Endpoint
from remote_sync.ssh.pool import SSHPool
from remote_sync.ssh.remote import (
    PID_MARKER,
    STDERR_TAIL_BYTES,
    compact_sh,
    kill_group_command,
    sh_script,
    wrapped_command,
)
from remote_sync.ssh.stream import exec_streaming

MARKER = "0123456789abcdef" * 2
MB = MARKER.encode()
END = MB + b" E\n"
TO_EOF = 1 << 62

# ----------------------------------------------------------------------------- helpers

Merged = tuple[object, ...]


def merge(events: Sequence[FrameEvent]) -> list[Merged]:
    """Events with each file's Data joined into one item, so chunking does not matter."""
    out: list[Merged] = []
    for event in events:
        if isinstance(event, Data):
            last = out[-1] if out else None
            if last is not None and last[:2] == ("data", event.index):
                out[-1] = ("data", event.index, bytes(last[2]) + bytes(event.data))  # type: ignore[call-overload]
            else:
                out.append(("data", event.index, bytes(event.data)))
        else:
            out.append((type(event).__name__, *vars_of(event)))
    return out


def vars_of(event: FrameEvent) -> tuple[object, ...]:
    if isinstance(event, Short):
        return (event.index, event.received)
    if isinstance(event, HeadDigest):
        return (event.indices, event.digest)
    return (event.index,)


def feed_frames(parser: FrameParser, stream: bytes, cuts: Sequence[int]) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    last = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(stream[last:cut])
        last = cut
    events += parser.feed(stream[last:])
    events += parser.close()
    return events


def check_data_bounds(events: Sequence[FrameEvent], requests: Sequence[FetchRequest]) -> None:
    got: dict[int, int] = {}
    for event in events:
        if isinstance(event, Data):
            assert len(event.data) > 0
            got[event.index] = got.get(event.index, 0) + len(event.data)
            assert got[event.index] <= requests[event.index].length


def collect(events: Sequence[FrameEvent]) -> dict[int, tuple[str, bytes]]:
    """index -> (outcome, bytes) where outcome is End/Short/Gone/Denied."""
    out: dict[int, tuple[str, bytes]] = {}
    data: dict[int, bytearray] = {}
    for event in events:
        if isinstance(event, Begin):
            data[event.index] = bytearray()
        elif isinstance(event, Data):
            data[event.index] += event.data
        else:
            out[event.index] = (type(event).__name__, bytes(data.get(event.index, b"")))
    return out


# ----------------------------------------------------------------------------- FrameParser

# Data full of near-misses: marker prefixes, marker lines other than the end lines, newlines.
_pieces = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\n",
            b" ",
            b" E",
            b" E\r\n",
            MB,
            MB + b" ",
            MB + b" E",
            MB + b" X",
            MB + b" X\r\n",
            MB + b" B\n",
            MB + b" G\n",
            MB + b" T\n",
        ]
    ),
    st.integers(1, len(MB)).map(lambda k: MB[:k]),
    st.integers(1, len(MB)).map(lambda k: MB[-k:] + b" E\n"),
    st.integers(1, len(MB)).map(lambda k: MB[-k:] + b" X\n"),
)
FAILED_END = MB + b" X\n"
_data = (
    st.lists(_pieces, max_size=12)
    .map(b"".join)
    .filter(lambda d: END not in d and FAILED_END not in d)
)

_frame = st.one_of(
    st.tuples(st.just("G"), st.integers(1, 100), st.just(b"")),
    st.tuples(st.just("D"), st.integers(1, 100), st.just(b"")),
    # a complete range: length == len(data)
    _data.filter(bool).map(lambda d: ("B", len(d), d)),
    # a short one: the file shrank, the end line comes early
    st.tuples(st.just("S"), st.integers(1, 50), _data),
    # the read failed on the host after some bytes (up to the whole length)
    st.tuples(st.just("X"), st.integers(0, 50), _data),
    # detect_growth: the host read one byte more than listed, and it came
    _data.filter(lambda d: len(d) > 1).map(lambda d: ("C", 0, d)),
    # detect_growth: exactly the listed length, or fewer
    st.tuples(st.just("W"), st.integers(0, 50), _data.filter(bool)),
    # checked: a complete range, or a short one, then the host's digest of the head
    _data.filter(bool).map(lambda d: ("K", len(d), d)),
    st.tuples(st.just("k"), st.integers(1, 50), _data),
    # checked at the batch's end (check_batched): complete or short; the digest comes later
    _data.filter(bool).map(lambda d: ("E", len(d), d)),
    st.tuples(st.just("e"), st.integers(1, 50), _data),
)


def head_digest_line(i: int) -> tuple[bytes, Digest | None]:
    """The K line of request ``i`` and its digest: ``-`` (no tool to hash) for every third,
    else an md5 or a POSIX cksum (a host without md5sum) in turn."""
    if i % 3 == 0:
        return MB + b" K -\n", None
    hasher = Hasher()
    hasher.update(b"%d" % i)
    digest = hasher.digest("md5" if i % 3 == 1 else "cksum")
    return MB + b" K " + str(digest).encode() + b"\n", digest


def build_stream(
    frames: Sequence[tuple[str, int, bytes]],
) -> tuple[bytes, list[FetchRequest], list[Merged]]:
    """The host's output for ``frames``, with a batch's digest after every fourth frame (and
    the last) when check_batched ranges of it were read."""
    parts: list[bytes] = []
    requests: list[FetchRequest] = []
    expected: list[Merged] = []
    read_in_batch: list[int] = []
    for i, (kind, extra, data) in enumerate(frames):
        if i % 4 == 0 and read_in_batch:
            line, digest = head_digest_line(i + 1000)
            parts.append(line)
            expected.append(("HeadDigest", tuple(read_in_batch), digest))
            read_in_batch = []
        if kind in "GD":
            requests.append(FetchRequest(b"f%d" % i, 0, extra))
            parts.append(MB + b" " + kind.encode() + b"\n")
            expected.append(("Gone" if kind == "G" else "Denied", i))
            continue
        length = {"B": len(data), "C": len(data) - 1, "K": len(data), "E": len(data)}.get(
            kind, len(data) + extra
        )
        length = max(1, length)
        checked = kind in "Kk"
        request = FetchRequest(
            b"dir/f:%d" % i,
            i,
            length,
            detect_growth=kind in "CW",
            check=checked,
            check_batched=kind in "Ee",
        )
        requests.append(request)
        parts += [MB + b" B\n", data, FAILED_END if kind == "X" else END]
        expected.append(("Begin", i))
        if data[:length]:
            expected.append(("data", i, data[:length]))  # never the byte beyond the length
        if kind == "X":
            expected.append(("Failed", i))
        elif kind == "C":
            expected.append(("Changed", i))
        elif len(data) == length:
            expected.append(("End", i))
        else:
            expected.append(("Short", i, len(data)))
        if checked:
            line, digest = head_digest_line(i)
            parts.append(line)
            expected.append(("HeadDigest", (i,), digest))
        if request.check_batched and kind != "X":
            read_in_batch.append(i)
    if read_in_batch:
        line, digest = head_digest_line(len(frames) + 1000)
        parts.append(line)
        expected.append(("HeadDigest", tuple(read_in_batch), digest))
    return b"".join(parts), requests, expected


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frame, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_frame_parser_is_independent_of_chunking(
    frames: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    stream, requests, expected = build_stream(frames)
    whole = FrameParser("h", MB, requests)
    whole_events = whole.feed(stream) + whole.close()
    assert merge(whole_events) == expected
    cut_events = feed_frames(
        FrameParser("h", MB, requests), stream, [c for c in cuts if c < len(stream)]
    )
    assert merge(cut_events) == expected
    check_data_bounds(cut_events, requests)


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(_frame, min_size=1, max_size=6), data=st.data())
def test_frame_parser_byte_by_byte_and_truncated(
    frames: list[tuple[str, int, bytes]], data: st.DataObject
) -> None:
    stream, requests, expected = build_stream(frames)
    parser = FrameParser("h", MB, requests)
    events: list[FrameEvent] = []
    for i in range(len(stream)):
        assert not parser.complete  # the engine stops reading once it is
        events += parser.feed(stream[i : i + 1])
    assert parser.complete
    events += parser.close()
    assert merge(events) == expected
    # Any strict prefix of the stream is an error at close(), never a silent success.
    cut = data.draw(st.integers(0, len(stream) - 1))
    parser = FrameParser("h", MB, requests)
    parser.feed(stream[:cut])
    assert not parser.complete
    with pytest.raises(ProtocolError):
        parser.close()


def test_frame_parser_streams_large_ranges_without_buffering() -> None:
    size = 4 * 1024 * 1024
    payload = os.urandom(size)
    requests = [FetchRequest(b"big", 0, size)]
    stream = MB + b" B\n" + payload + END
    parser = FrameParser("h", MB, requests)
    chunk = 64 * 1024
    total = 0
    for offset in range(0, len(stream), chunk):
        events = parser.feed(stream[offset : offset + chunk])
        got = sum(len(e.data) for e in events if isinstance(e, Data))
        total += got
        # Each chunk's data comes out at once, less at most a marker line held back.
        assert total >= min(offset + chunk - len(MB) - 3, size) - len(END)
    assert total == size
    assert parser.close() == []


def test_frame_parser_resyncs_after_a_short_frame() -> None:
    requests = [FetchRequest(b"a", 0, 100), FetchRequest(b"b", 5, 3)]
    stream = MB + b" B\nonly this" + END + MB + b" B\nxyz" + END
    events = FrameParser("h", MB, requests).feed(stream)
    assert merge(events) == [
        ("Begin", 0),
        ("data", 0, b"only this"),
        ("Short", 0, 9),
        ("Begin", 1),
        ("data", 1, b"xyz"),
        ("End", 1),
    ]


@pytest.mark.parametrize(
    ("stream", "what"),
    [
        (b"garbage\n", "expected a frame marker"),
        (MB + b" X\n", "expected a frame marker"),
        (MB + b" E\n", "expected a frame marker"),
        (b"x123", "expected a frame marker"),
        (b"0123", "ended inside a frame"),  # a marker's start, then nothing
        (MB + b" B\n0123456789" + END, "longer than requested"),
        (MB + b" B\nabcd" + b"junk" * 20, "longer than requested"),
        (MB + b" G\n" + MB + b" G\n", "after the last frame"),
    ],
)
def test_frame_parser_rejects_bad_output(stream: bytes, what: str) -> None:
    requests = [FetchRequest(b"odd\nname\xff", 0, 4)]
    parser = FrameParser("kitchen", MB, requests)
    with pytest.raises(ProtocolError) as info:
        parser.feed(stream)
        parser.close()
    assert what in info.value.message
    assert info.value.host == "kitchen"
    assert info.value.path == "odd\nname\\xff"
    assert "kitchen" in str(info.value)


def test_frame_parser_close_reports_unanswered_requests() -> None:
    requests = [FetchRequest(b"a", 0, 4), FetchRequest(b"b", 0, 4)]
    parser = FrameParser("h", MB, requests)
    parser.feed(MB + b" B\nabcd" + END)
    with pytest.raises(ProtocolError, match="1 of 2 requests unanswered") as info:
        parser.close()
    assert info.value.path == "b"


@pytest.mark.parametrize(
    "after",
    [
        b"",  # the output ends where the digest should come
        MB + b" K \n",
        MB + b" K md5:" + b"0" * 31 + b"\n",
        MB + b" K md5:" + b"0" * 33 + b"\n",
        MB + b" K md5:" + b"G" * 32 + b"\n",
        MB + b" K md5:" + b"A" * 32 + b"\n",
        MB + b" K " + b"0" * 32 + b"\n",  # a digest that does not name its tool
        MB + b" K sha1:" + b"0" * 40 + b"\n",
        MB + b" K cksum:123\n",
        MB + b" K cksum:123:\n",
        MB + b" K cksum::4\n",
        MB + b" K cksum:4294967296:4\n",  # more than 32 bits
        MB + b" K cksum:1:" + b"1" * 21 + b"\n",
        MB + b" K cksum:-1:4\n",
        MB + b" K md5:" + b"0" * 40,  # no newline where one must be
        MB + b" E\n",
        MB + b" G\n",
    ],
)
def test_frame_parser_rejects_a_bad_or_missing_head_digest(after: bytes) -> None:
    requests = [FetchRequest(b"s.jsonl", 0, 4, check=True)]
    parser = FrameParser("kitchen", MB, requests)
    with pytest.raises(ProtocolError) as info:
        parser.feed(MB + b" B\nabcd" + END + after)
        parser.close()
    assert info.value.host == "kitchen" and info.value.path == "s.jsonl"


def test_frame_parser_has_no_head_digest_after_a_failed_read() -> None:
    """The host hashes the head only after a read that succeeded (E), never after X."""
    requests = [FetchRequest(b"a", 0, 4, check=True), FetchRequest(b"b", 0, 2, check=True)]
    stream = MB + b" B\nab" + FAILED_END + MB + b" B\nxy" + END + MB + b" K -\n"
    parser = FrameParser("h", MB, requests)
    assert merge(parser.feed(stream) + parser.close()) == [
        ("Begin", 0),
        ("data", 0, b"ab"),
        ("Failed", 0),
        ("Begin", 1),
        ("data", 1, b"xy"),
        ("End", 1),
        ("HeadDigest", (1,), None),
    ]


def test_fetch_request_and_marker_validation() -> None:
    for path in (b"", b"/etc/passwd", b"a/../b", b"../a", b"a//b", b"./a", b"a/", b"a\x00b"):
        with pytest.raises(ValueError):
            FetchRequest(path, 0, 1)
    with pytest.raises(ValueError):
        FetchRequest(b"a", 0, 0)
    with pytest.raises(ValueError):
        FetchRequest(b"a", -1, 1)
    with pytest.raises(ValueError):
        FrameParser("h", b"short", [])
    with pytest.raises(ValueError):
        fetch_stdin([], "NOT-HEX" * 5)
    for checks in ({"check": True}, {"archive": True}):
        with pytest.raises(ValueError):
            FetchRequest(b"a", 0, 1, check_whole=True, **checks)
    assert fetch_stdin([FetchRequest(b"i.json", 0, 70000, detect_growth=True, check_whole=True)])
    marker = new_marker()
    assert len(marker) == 32 and marker != new_marker()
    requests = [FetchRequest(b"a:b\nc", 7, 9), FetchRequest(b"\xff", 0, 1)]
    assert fetch_stdin(requests) == b"0+7:9:a:b\nc\x000+0:1:\xff\x00"
    assert fetch_stdin(requests, marker) == marker.encode() + b"\n0+7:9:a:b\nc\x000+0:1:\xff\x00"


def test_frame_parser_throughput() -> None:
    """Hot path sanity check (the report quotes the numbers; this only catches regressions)."""
    chunk = 256 * 1024
    payload = os.urandom(1024 * 1024)
    requests = [FetchRequest(b"f%d" % i, 0, len(payload)) for i in range(16)]
    stream = (MB + b" B\n" + payload + END) * len(requests)
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    parser = FrameParser("h", MB, requests)
    started = time.perf_counter()
    total = 0
    for piece in chunks:
        total += sum(len(e.data) for e in parser.feed(piece) if isinstance(e, Data))
    elapsed = time.perf_counter() - started
    parser.close()
    assert total == 16 * len(payload)
    assert total / elapsed > 100e6  # measured: several GB/s


# ----------------------------------------------------------------------------- ListingParser

_component = (
    st.binary(min_size=1, max_size=12)
    .map(lambda b: b.replace(b"\x00", b"0").replace(b"/", b"_"))
    .filter(lambda b: b not in (b".", b".."))
)
_path = st.lists(_component, min_size=1, max_size=4).map(b"/".join)
_mtime_text = st.one_of(
    st.integers(0, 2**33).map(str),  # BusyBox stat: whole seconds
    st.tuples(st.integers(0, 2**33), st.integers(0, 10**10 - 1)).map(
        lambda t: f"{t[0]}.{t[1]:010d}"  # GNU find %T@
    ),
)
_record = st.tuples(
    _path,
    st.integers(0, 2**40),
    _mtime_text,
    st.integers(0, 2**32),
    st.integers(0, 2**63 - 1),  # past it, only the low 63 bits are kept (tested apart)
    st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_record, max_size=10), cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_listing_parser_is_independent_of_chunking(
    records: list[tuple[bytes, int, str, int, int, bool]], cuts: list[int]
) -> None:
    stream = b"".join(
        b"%d %s %d %d\n%s%s\x00" % (size, mtime.encode(), dev, ino, b"./" if dot else b"", path)
        for path, size, mtime, dev, ino, dot in records
    )
    expected = [
        RemoteFile(path, size, float(mtime), dev, ino) for path, size, mtime, dev, ino, _ in records
    ]
    for sent in (stream, gzip.compress(stream, compresslevel=1)):
        parser = ListingParser("h")
        got: list[RemoteFile] = []
        last = 0
        for cut in sorted(c for c in set(cuts) if c < len(sent)):
            got += parser.feed(sent[last:cut])
            last = cut
        got += parser.feed(sent[last:])
        parser.close()
        assert got == expected
        assert parser.count == len(expected)


def test_compressed_listing_is_inflated_in_bounded_steps() -> None:
    # A tiny stream inflating to 64 MiB without a terminator: refused after the first steps.
    bomb = gzip.compress(b"1 2 3 4\n" + b"x" * (64 << 20))
    assert len(bomb) < 100_000
    with pytest.raises(ProtocolError, match="without terminator"):
        ListingParser("h").feed(bomb)
    good = gzip.compress(b"5 6 7 8\n./a\x00")
    parser = ListingParser("h")
    assert parser.feed(good[:-3]) == [RemoteFile(b"a", 5, 6.0, 7, 8)]
    with pytest.raises(ProtocolError, match="ended early"):
        parser.close()
    with pytest.raises(ProtocolError, match="corrupt compressed listing"):
        ListingParser("h").feed(good[:10] + b"\xff" * 20)
    with pytest.raises(ProtocolError, match="after the end"):
        ListingParser("h").feed(good + b"5 6 7 8\n./b\x00")
    parser = ListingParser("h")  # the magic split across chunks
    assert parser.feed(good[:1]) == []
    assert parser.feed(good[1:]) == [RemoteFile(b"a", 5, 6.0, 7, 8)]
    parser.close()


# The one patch is the same for every example.
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(1, 12),
    compressed=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_a_listing_of_more_files_than_the_bound_is_refused_naming_the_globs(
    monkeypatch: pytest.MonkeyPatch, count: int, compressed: bool, cuts: list[int]
) -> None:
    """A host that prints records without end (a broken find, a hostile host) would hold
    its round, and the client's memory, for ever: past MAX_LISTING_FILES records the
    listing is refused, however it is cut or compressed; up to it, it is read whole."""
    monkeypatch.setattr(listing_module, "MAX_LISTING_FILES", 6)
    plain = b"".join(b"5 6 7 %d\n./s%d.jsonl\x00" % (i, i) for i in range(count))
    sent = gzip.compress(plain) if compressed else plain
    parser = ListingParser("h9", trailer=True)
    got: list[RemoteFile] = []
    last = 0
    pieces = []
    for cut in sorted(c for c in set(cuts) if c < len(sent)):
        pieces.append(sent[last:cut])
        last = cut
    pieces += [sent[last:], b"L 0 0\n"]
    if count > 6:
        with pytest.raises(TooMuchOutputError) as raised:
            for piece in pieces:
                got += parser.feed(piece)
        assert raised.value.host == "h9" and raised.value.kind == "too_much_output"
        assert "more than 6 files" in raised.value.message
        assert "include globs" in raised.value.hint
    else:
        for piece in pieces:
            got += parser.feed(piece)
        assert len(got) == count and parser.end == (0, False)


def test_a_listing_of_more_bytes_than_the_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes are bounded too, as they came (compressed bytes that inflate to nothing, empty
    deflate blocks, are bytes all the same) and inflated."""
    monkeypatch.setattr(listing_module, "MAX_LISTING_BYTES", 4096)
    record = b"5 6 7 8\n./" + b"d/" * 40 + b"s.jsonl\x00"
    plain = record * (4096 // len(record))
    parser = ListingParser("h", trailer=True)
    assert len(parser.feed(plain)) == 4096 // len(record)
    parser.feed(b"L 0 0\n")
    with pytest.raises(TooMuchOutputError, match="more than 4096 bytes"):
        ListingParser("h").feed(plain + record)
    # Inflated past the bound, from a few hundred bytes.
    with pytest.raises(TooMuchOutputError, match="more than 4096 bytes"):
        ListingParser("h").feed(gzip.compress(plain * 2))
    # A deflate stream of empty stored blocks inflates to nothing, without end.
    empty_block = b"\x00\x00\x00\xff\xff"  # stored, not the last, 0 bytes long
    stream = gzip.compress(b"")[:10] + empty_block * 2000
    parser = ListingParser("h")
    with pytest.raises(TooMuchOutputError, match="more than 4096 bytes"):
        for at in range(0, len(stream), 512):
            assert parser.feed(stream[at : at + 512]) == []


@pytest.mark.parametrize("cut", [None, 1000, 70_000])
def test_a_compressed_listing_longer_than_an_inflate_step_ends_at_its_end_line(
    cut: int | None,
) -> None:
    """A round's listing of 20,000 files inflates to more than one step: what follows its
    compressed stream (the end line, then the fetch's frames) comes once, however it is cut.
    It came twice when the stream ended in a capped step, and every file of such a host's
    round failed on the second copy of the end line."""
    plain = b"".join(
        b"300 1767225600.0000000000 2049 %d\n./agents/main/sessions/s%06d.jsonl\x00" % (i, i)
        for i in range(20_000)
    )
    assert len(plain) > listing_module._INFLATE_STEP
    sent = gzip.compress(plain) + b"L 0 0\nFRAMES"
    parser = ListingParser("h", trailer=True)
    pieces = [sent] if cut is None else [sent[:cut], sent[cut:]]
    files = [f for piece in pieces for f in parser.feed(piece)]
    assert len(files) == 20_000 and files[-1].path == b"agents/main/sessions/s019999.jsonl"
    assert (parser.end, parser.rest) == ((0, False), b"FRAMES")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(_record, max_size=6),
    end=st.tuples(st.integers(0, 255), st.booleans()),
    after=st.binary(max_size=40),
    compressed=st.booleans(),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_a_rounds_listing_ends_at_its_end_line_whatever_the_chunks(
    records: list[tuple[bytes, int, str, int, int, bool]],
    end: tuple[int, bool],
    after: bytes,
    compressed: bool,
    cuts: list[int],
) -> None:
    """The listing (plain or gzip) of a round, its end line, then the fetch's bytes: the
    parser yields the records, the end, and every byte after the end line, untouched."""
    listing = b"".join(
        b"%d %s %d %d\n%s%s\x00" % (size, mtime.encode(), dev, ino, b"./" if dot else b"", path)
        for path, size, mtime, dev, ino, dot in records
    )
    if compressed:
        listing = gzip.compress(listing, compresslevel=1)
    stream = listing + b"L %d %d\n" % (end[0], end[1]) + after
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *sorted(set(cuts)), len(stream)])]
    parser = ListingParser("h", trailer=True)
    got: list[RemoteFile] = []
    for i, chunk in enumerate(chunks):
        got += parser.feed(chunk)
        if parser.end is not None:
            assert parser.rest + b"".join(chunks[i + 1 :]) == after
            break
    parser.close()
    assert parser.end == end
    assert got == [RemoteFile(p, size, float(m), dev, ino) for p, size, m, dev, ino, _ in records]
    with pytest.raises(ValueError):
        parser.feed(b"x")


def test_a_rounds_listing_rejects_a_bad_or_missing_end_line() -> None:
    record = b"5 6 7 8\n./a\x00"
    for bad in (b"L 0\n", b"L 0 2\n", b"L -1 0\n", b"L 1000 0\n", b"Lx\n"):
        with pytest.raises(ProtocolError, match="malformed end of the listing"):
            ListingParser("h", trailer=True).feed(record + bad)
    # After a compressed listing only the end line may come, never more records.
    with pytest.raises(ProtocolError, match="after the end of the compressed listing"):
        ListingParser("h", trailer=True).feed(gzip.compress(record) + record)
    for cut_short in (record, record[:-2], gzip.compress(record), b"L 0 0"):
        parser = ListingParser("h", trailer=True)
        parser.feed(cut_short)
        with pytest.raises(ProtocolError, match=r"end line|inside a record|ended early"):
            parser.close()
    # Inside the compressed records an end line is a malformed record, never the end.
    hidden = gzip.compress(record + b"L 0 0\n" + b"9 9 9 9\n./smuggled\x00") + b"L 7 1\n"
    with pytest.raises(ProtocolError, match="malformed listing record"):
        ListingParser("h", trailer=True).feed(hidden)
    # Without trailer (the listing command), an end line is just a malformed record.
    with pytest.raises(ProtocolError, match="malformed listing record"):
        ListingParser("h").feed(record + b"L 0 0\nx\x00")


@pytest.mark.parametrize(
    "path",
    [b"", b"./", b"/etc/passwd", b"../up", b"a/../../b", b"a//b", b"a/./b", b"a/", b"./.", b".."],
)
def test_listing_parser_rejects_unsafe_paths(path: bytes) -> None:
    parser = ListingParser("kitchen")
    with pytest.raises(ProtocolError, match="unsafe path") as info:
        parser.feed(b"1 2 3 4\n" + path + b"\x00")
    assert info.value.host == "kitchen"
    assert repr(path.removeprefix(b"./")) in info.value.message


@pytest.mark.parametrize(
    "line",
    [b"", b"1 2 3", b"1 2 3 4 5", b"x 2 3 4", b"-1 2 3 4", b"1 2.x 3 4", b"1  2 3 4", b"1 2 3 4\r"],
)
def test_listing_parser_rejects_malformed_stat_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed listing record") as info:
        ListingParser("h").feed(line + b"\nname\x00")
    assert info.value.host == "h" and info.value.path == "name"


@settings(max_examples=200, deadline=None)
@given(numbers=st.tuples(*[st.integers(0, 10**20 - 1)] * 3))
def test_listing_numbers_fit_the_state_or_are_refused_naming_the_path(
    numbers: tuple[int, int, int],
) -> None:
    """A host may print any 20 digits (a lying find, or a 64-bit inode with its top bit set,
    as overlayfs makes): what the parser returns fits the state's signed 64-bit integers (a
    larger number once stopped the host's every round at the commit, as an internal error),
    and a size no file can have, or a number no 64-bit field holds, is refused."""
    size, dev, ino = numbers
    record = b"%d 1700000000 %d %d\n./a/b.jsonl\x00" % (size, dev, ino)
    if size >= 2**63 or dev >= 2**64 or ino >= 2**64:
        with pytest.raises(ProtocolError, match="impossible numbers") as info:
            ListingParser("h").feed(record)
        assert info.value.host == "h" and info.value.path == "a/b.jsonl"
        return
    (got,) = ListingParser("h").feed(record)
    assert got.size == size and 0 <= got.dev < 2**63 and 0 <= got.ino < 2**63
    # Only the top bit is dropped: the inodes after a digest by name agree with these.
    assert (got.dev, got.ino) == (dev % 2**63, ino % 2**63)


def test_listing_parser_bounds_its_buffer_and_detects_truncation() -> None:
    parser = ListingParser("h")
    assert parser.feed(b"1 2 3 4\nsome/pa") == []
    with pytest.raises(ProtocolError, match="ended inside a record"):
        parser.close()
    parser = ListingParser("h")
    with pytest.raises(ProtocolError, match="without terminator"):
        for _ in range(3):
            parser.feed(b"1 2 3 4\n" + b"x" * (MAX_LISTING_RECORD // 2))
    mtimes = ListingParser("h").feed(b"5 1700000000.1234567890 64768 12\n./x\x00")
    assert mtimes == [RemoteFile(b"x", 5, 1700000000.123456789, 64768, 12)]


def test_argv_validation() -> None:
    for bad in ("/abs", "a/../..", "", "x\x00"):
        with pytest.raises(ConfigError):
            listing_argv("root", [bad])
    with pytest.raises(ConfigError):
        listing_argv("", ["."])
    with pytest.raises(ConfigError):
        fetch_argv("")
    argv = listing_argv("r", ["a//b/", "./a/b", ".", "./"])
    assert argv[0] == "sh" and argv[-3:] == ["r", "a/b", "."]


# ----------------------------------------------------------------------------- local runs

HOSTILE_NAMES = [
    b"plain.jsonl",
    b"with space.jsonl",
    b"new\nline.jsonl",
    b"quote'double\"",
    b"$(touch pwned)",
    b"`touch pwned`",
    b"-rf",
    b"--help",
    b"\xff\xfe.jsonl",
    b"co:lon:1:2",
    b"tab\tback\\slash",
    b"!",
    b"(",
    b" lead",
    b"*",
    b"\x01\x1b[31mctl",
    b"agents/a/sessions/x.jsonl",
    b"agents/-d/$(x)/y:z",
    b"agents/a/\xc3(/deep\n",
]


def content(name: bytes, i: int) -> bytes:
    # Varied sizes; some contents carry marker-looking text and newlines.
    return (name + b"\n" + MB[: i * 3 % 33] + b" E\n") * (1 + i * 7) + bytes(range(i % 256))


def build_tree(root: Path) -> dict[bytes, bytes]:
    """The hostile tree under ``root``; returns rel path -> content of every regular file."""
    files: dict[bytes, bytes] = {}
    base = os.fsencode(root)
    for i, name in enumerate(HOSTILE_NAMES):
        full = base + b"/" + name
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = content(name, i)
        with open(full, "wb") as fh:
            fh.write(data)
        files[name] = data
    with open(base + b"/empty", "wb"):
        files[b"empty"] = b""
    outside = root.parent / f"{root.name}-outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"outside the root")
    (outside / "dir" / "inner.jsonl").write_bytes(b"also outside")
    os.symlink(outside / "secret.txt", root / "link-to-file")
    os.symlink(outside / "dir", root / "link-to-dir")
    os.symlink("missing-target", root / "dangling")
    return files


def walk_regular(root: Path, skip: Sequence[bytes] = ()) -> dict[bytes, os.stat_result]:
    """Regular files under ``root`` (symlinks not followed), by path relative to it."""
    base = os.fsencode(root)
    out: dict[bytes, os.stat_result] = {}
    for dirpath, _dirs, names in os.walk(base):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st_ = os.lstat(full)
            if stat.S_ISREG(st_.st_mode) and not any(rel.startswith(s) for s in skip):
                out[rel] = st_
    return out


Runner = tuple[list[str], dict[str, str]]


@pytest.fixture(params=["gnu", "busybox", "busybox-gzip"])
def toolset(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    """(shell argv prefix, environment) of a POSIX sh with GNU tools (gzip and tar among them),
    or BusyBox only: without gzip, tar, md5sum and cksum (the listing comes plain, archive
    requests as head ranges, no digests), or with its gzip, tar and md5sum applets. Asked for
    by name, "busybox-cksum": BusyBox with tar and a cksum but no md5sum (a cksum applet; this
    one is coreutils' where the BusyBox at hand is built without it)."""
    home = tmp_path / "home"
    home.mkdir()
    if request.param == "gnu":
        yield ["sh"], {"PATH": os.environ["PATH"], "HOME": str(home)}
    else:
        extra = {"busybox-gzip": ("gzip", "tar", "md5sum"), "busybox-cksum": ("tar",)}
        bindir = applet_dir(
            request.getfixturevalue("busybox"), tmp_path / "bb", extra.get(request.param, ())
        )
        if request.param == "busybox-cksum":
            with_cksum(bindir)
        yield [str(bindir / "sh")], {"PATH": str(bindir), "HOME": str(home)}


#: Every toolset, for the tests of the host's digests: "busybox-cksum" hashes with cksum.
DIGEST_TOOLSETS = pytest.mark.parametrize(
    "toolset", ["gnu", "busybox", "busybox-gzip", "busybox-cksum"], indirect=True
)


def run_local(
    runner: Runner, argv: list[str], stdin: bytes = b"", cwd: Path | None = None
) -> tuple[int, bytes, bytes]:
    """Run argv as sshd would (the same wrapped command line), return (rc, stdout, stderr)."""
    shell, env = runner
    r = subprocess.run(
        [*shell, "-c", wrapped_command(argv)],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd or env["HOME"],
        timeout=60,
        check=False,
    )
    first, _, rest = r.stderr.partition(b"\n")
    assert first.startswith(PID_MARKER), r.stderr
    return r.returncode, r.stdout, rest


def parse_listing(out: bytes, host: str = "h") -> dict[bytes, RemoteFile]:
    parser = ListingParser(host)
    files = parser.feed(out)
    parser.close()
    by_path = {f.path: f for f in files}
    assert len(by_path) == len(files), "a file was listed twice"
    return by_path


def run_fetch(
    runner: Runner, root: Path, requests: list[FetchRequest], *, in_argv: bool = False
) -> dict[int, tuple[str, bytes]]:
    marker = new_marker()
    argv = fetch_argv(str(root), marker if in_argv else None)
    stdin = fetch_stdin(requests, None if in_argv else marker)
    rc, out, err = run_local(runner, argv, stdin)
    assert rc == 0, err
    events = feed_frames(FrameParser("h", marker.encode(), requests), out, range(0, len(out), 997))
    check_data_bounds(events, requests)
    return collect(events)


def fetch_events(
    runner: Runner,
    root: Path,
    requests: list[FetchRequest],
    step: int,
    per_batch: int = 1000,
    batch_bytes: int = fetch_script.BATCH_BYTES,
) -> list[FrameEvent]:
    """The frame events of a local fetch of ``requests`` under ``root``, fed in ``step``-byte
    pieces (the marker on stdin)."""
    marker = new_marker()
    argv = fetch_argv(str(root), per_batch=per_batch)
    rc, out, err = run_local(runner, argv, fetch_stdin(requests, marker, batch_bytes=batch_bytes))
    assert rc == 0, err
    return feed_frames(FrameParser("h", marker.encode(), requests), out, range(0, len(out), step))


def has_tool(runner: Runner, name: str) -> bool:
    return any((Path(d) / name).exists() for d in runner[1]["PATH"].split(os.pathsep))


def host_digest(runner: Runner, data: bytes) -> Digest | None:
    """The digest of ``data`` the host of ``runner`` sends: md5, else POSIX cksum, else none."""
    hasher = Hasher()
    hasher.update(data)
    if has_tool(runner, "md5sum"):
        return hasher.digest("md5")
    return hasher.digest("cksum") if has_tool(runner, "cksum") else None


def test_local_listing_of_hostile_names(toolset: Runner, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    build_tree(root)
    rc, out, err = run_local(toolset, listing_argv(str(root), ["."]))
    assert (rc, err) == (0, b"")
    has_gzip = has_tool(toolset, "gzip")
    assert out.startswith(b"\x1f\x8b") == has_gzip
    listed = parse_listing(out)
    expected = walk_regular(root)
    assert set(listed) == set(expected)
    for path, f in listed.items():
        st_ = expected[path]
        assert (f.size, f.dev, f.ino) == (st_.st_size, st_.st_dev, st_.st_ino), path
        assert abs(f.mtime - st_.st_mtime) < 1.0
    assert not any(p.startswith(b"link-") or p == b"dangling" for p in listed)
    assert not list(tmp_path.rglob("pwned"))


def test_local_listing_with_a_find_that_knows_only_exec_semicolon(
    busybox: str, tmp_path: Path
) -> None:
    """BusyBox built without FEATURE_FIND_EXEC_PLUS refuses ``-exec ... {} +``: the listing
    runs its stat loop once per file instead, and lists the same files."""
    bindir = applet_dir(busybox, tmp_path / "bb")
    os.unlink(bindir / "find")
    (bindir / "find").write_text(
        f"#!{bindir}/sh\n"
        'for a do [ "$a" = + ] && { echo "find: unrecognized: +" >&2; exit 1; }; done\n'
        f'exec {busybox} find "$@"\n'
    )
    (bindir / "find").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    runner: Runner = ([str(bindir / "sh")], {"PATH": str(bindir), "HOME": str(home)})
    root = tmp_path / "root"
    root.mkdir()
    build_tree(root)
    rc, out, err = run_local(runner, listing_argv(str(root), ["."]))
    assert (rc, err) == (0, b"")
    assert set(parse_listing(out)) == set(walk_regular(root))
    assert not list(tmp_path.rglob("pwned"))


def test_local_listing_start_points_and_root(toolset: Runner, tmp_path: Path) -> None:
    home = Path(toolset[1]["HOME"])
    root = home / "sessions root"
    (root / "agents" / "a").mkdir(parents=True)
    (root / "agents" / "a" / "x.jsonl").write_bytes(b"x")
    (root / "-dash dir").mkdir()
    (root / "-dash dir" / "y").write_bytes(b"yy")
    (root / "top.jsonl").write_bytes(b"zzz")
    (home / "-odd root").mkdir()
    (home / "-odd root" / "f").write_bytes(b"f")
    os.symlink(root / "agents", root / "link-dir")
    os.symlink(root / "top.jsonl", root / "link-file")

    def listed(root_arg: str, points: list[str]) -> set[bytes]:
        rc, out, err = run_local(toolset, listing_argv(root_arg, points))
        assert (rc, err) == (0, b"")
        return set(parse_listing(out))

    everything = {b"agents/a/x.jsonl", b"-dash dir/y", b"top.jsonl"}
    assert listed(str(root), ["."]) == everything
    assert listed("~/sessions root", ["."]) == everything  # relative to $HOME
    assert listed("sessions root", ["agents/", "./agents", "nope", "top.jsonl"]) == {
        b"agents/a/x.jsonl",
        b"top.jsonl",
    }
    assert listed(str(root), ["-dash dir"]) == {b"-dash dir/y"}
    assert listed(str(root), ["missing", "also/missing"]) == set()
    # A symlink as start point is not followed. One to a file lists nothing, as a symlinked
    # file anywhere; one to a directory is skipped with a warning (the files mirrored from
    # there must not be taken for deleted).
    assert listed(str(root), ["link-file", "top.jsonl"]) == {b"top.jsonl"}
    for point in ("link-dir", "link-dir/"):
        rc, out, err = run_local(toolset, listing_argv(str(root), [point, "top.jsonl"]))
        assert (rc, set(parse_listing(out))) == (0, {b"top.jsonl"})
        assert b"start point ./link-dir is a symbolic link to a directory: skipped" in err
    # Below a symlinked directory: skipped, with a warning (find would leave the root).
    rc, out, err = run_local(toolset, listing_argv(str(root), ["link-dir/a", "top.jsonl"]))
    assert (rc, set(parse_listing(out))) == (0, {b"top.jsonl"})
    assert b"start point ./link-dir/a is under a symbolic link" in err
    assert listed(str(root), []) == set()
    assert listed("-odd root", ["."]) == {b"f"}
    assert b"sessions root/top.jsonl" in listed("~", ["."])

    for missing in (str(tmp_path / "nope"), str(root / "top.jsonl"), "~/nope"):
        rc, out, err = run_local(toolset, listing_argv(missing, ["."]))
        assert (rc, out) == (3, b""), err
        assert b"cannot enter the root directory" in err

    # "~user/...": that user's home, looked up by the shell (here the user running the test,
    # whose home is not the $HOME the runner sets).
    me = pwd.getpwuid(os.getuid())
    assert os.path.realpath(me.pw_dir) != os.path.realpath(home)
    mine = Path(tempfile.mkdtemp(prefix="remote-sync-test ", dir=me.pw_dir))
    try:
        (mine / "in home.jsonl").write_bytes(b"h")
        relative = mine.relative_to(me.pw_dir)
        assert listed(f"~{me.pw_name}/{relative}", ["."]) == {b"in home.jsonl"}
        assert listed(f"~{me.pw_name}", [str(relative)]) == {
            relative.as_posix().encode() + b"/in home.jsonl"
        }
    finally:
        shutil.rmtree(mine)
    # Unknown users, and anything but a plain user name, are never expanded (nor run).
    odd_roots = ("~no-such-user-here/x", "~$(touch pwned)", "~root;touch pwned", "~+", "~-", "~0")
    for odd in odd_roots:  # "~0" is bash's directory stack, no user name
        rc, out, err = run_local(toolset, listing_argv(odd, ["."]), cwd=tmp_path)
        assert (rc, out) == (3, b""), (odd, err)
        assert b"cannot enter the root directory " + odd.encode() in err
    assert not list(tmp_path.rglob("pwned"))


def round_events(
    runner: Runner,
    root: str,
    points: list[str],
    requests: list[FetchRequest],
    per_batch: int = fetch_script.PER_BATCH,
    batch_bytes: int = fetch_script.BATCH_BYTES,
) -> tuple[int, list[RemoteFile], tuple[int, bool] | None, list[FrameEvent], bytes]:
    """A whole round, its stdin given at once (the client sends the items after reading the
    listing, which the script does not notice): (rc, files, end, frame events, listing's
    stderr)."""
    marker = new_marker()
    stdin = fetch_stdin([], marker)
    stdin += round_fetch_stdin(requests, per_batch=per_batch, batch_bytes=batch_bytes)
    rc, out, err = run_local(runner, round_argv(root, points), stdin)
    parser = ListingParser("h", trailer=True)
    files = parser.feed(out) if out else []
    events: list[FrameEvent] = []
    if parser.end is not None:
        parser.close()
        if parser.end[0] == 0:
            events = feed_frames(FrameParser("h", marker.encode(), requests), parser.rest, [])
            check_data_bounds(events, requests)
        else:
            assert parser.rest == b""  # a failed listing fetches nothing
        messages, found, fetch_messages = err.partition(listing_end_marker(marker))
        assert found, err
        assert b"\n" + marker.encode() not in fetch_messages  # the boundary comes once
        err = messages
    return rc, files, parser.end, events, err


def run_round(
    runner: Runner,
    root: str,
    points: list[str],
    requests: list[FetchRequest],
    per_batch: int = fetch_script.PER_BATCH,
) -> tuple[int, list[RemoteFile], tuple[int, bool] | None, dict[int, tuple[str, bytes]], bytes]:
    """A whole round (:func:`round_events`): (rc, files, end, frames, listing's stderr)."""
    rc, files, end, events, err = round_events(runner, root, points, requests, per_batch)
    return rc, files, end, collect(events), err


def test_local_round_lists_then_fetches_in_one_command(toolset: Runner, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    files = build_tree(root)
    wanted = sorted(path for path, data in files.items() if data)[:6]
    requests = [FetchRequest(path, 1, len(files[path]) - 1) for path in wanted]
    rc, listed, end, frames, err = run_round(toolset, str(root), ["."], requests)
    assert (rc, end, err) == (0, (0, False), b"")
    assert {f.path: f.size for f in listed} == {
        path: st_.st_size for path, st_ in walk_regular(root).items()
    }
    assert [frames[i] for i in range(len(wanted))] == [("End", files[p][1:]) for p in wanted]
    assert not list(tmp_path.rglob("pwned"))

    # Nothing asked for (EOF right after the marker): the listing alone, exit 0.
    rc, listed, end, frames, err = run_round(toolset, str(root), ["."], [])
    assert (rc, end, frames, err) == (0, (0, False), {}, b"")
    # No start point exists: an empty listing, and the fetch still runs.
    rc, listed, end, frames, _ = run_round(toolset, str(root), ["missing"], requests[:1])
    assert (rc, listed, end, frames) == (0, [], (0, False), {0: ("End", files[wanted[0]][1:])})
    # A start point below a symlinked directory: its warning marks the listing incomplete.
    (root / "sub").mkdir()
    (root / "sub" / "plain").write_bytes(b"p")
    os.symlink("..", root / "sub" / "up")
    rc, listed, end, frames, err = run_round(toolset, str(root), ["sub/up/sub/plain", "."], [])
    assert (rc, end) == (0, (0, True))
    assert b"start point ./sub/up/sub/plain is under a symbolic link" in err
    # The root missing: status 3 before anything is printed.
    rc, listed, end, _, err = run_round(toolset, str(tmp_path / "nope"), ["."], requests)
    assert (rc, listed, end) == (3, [], None) and b"cannot enter the root directory" in err
    # A bad marker: refused before the listing.
    rc, out, err = run_local(toolset, round_argv(str(root), ["."]), b"not-hex\n")
    assert (rc, out) == (2, b"") and b"no valid fetch marker" in err


def _round_lists_and_fetches(shell_c: list[str], tmp_path: Path, fetched: int, path: str) -> bytes:
    """Run the round, sent as :func:`wrapped_command` sends it, under ``shell_c`` (a shell and
    its ``-c``) with ``path`` as PATH over a tree in ``tmp_path``: it lists the whole tree,
    fetches its first ``fetched`` non-empty files whole and runs nothing a name holds.
    Returns its stderr."""
    root = tmp_path / "root"
    root.mkdir()
    files = build_tree(root)
    wanted = sorted(p for p, data in files.items() if data)[:fetched]
    requests = [FetchRequest(p, 0, len(files[p])) for p in wanted]
    marker = new_marker()
    run = subprocess.run(
        [*shell_c, wrapped_command(round_argv(str(root), ["."]))],
        input=fetch_stdin([], marker) + round_fetch_stdin(requests),
        capture_output=True,
        env={"PATH": path, "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    parser = ListingParser("h", trailer=True)
    listed = parser.feed(run.stdout)
    assert parser.end == (0, False)
    assert {f.path for f in listed} == set(walk_regular(root))
    events = feed_frames(FrameParser("h", marker.encode(), requests), parser.rest, [])
    assert [collect(events)[i] for i in range(len(wanted))] == [("End", files[p]) for p in wanted]
    assert not list(tmp_path.rglob("pwned"))
    return run.stderr


@pytest.mark.parametrize("login", ["bash", "dash", "busybox", "zsh", "fish"])
def test_commands_run_under_each_login_shell(login: str, tmp_path: Path) -> None:
    """sshd runs a command as ``<login shell> -c <command line>``. Under each supported login
    shell the round lists and fetches, and the kill fallback stops a process group."""
    found = shutil.which(login)
    if found is None:
        pytest.skip(f"{login} is not installed (.ci/run installs it)")
    shell = [found, "sh"] if login == "busybox" else [found]
    stderr = _round_lists_and_fetches([*shell, "-c"], tmp_path, 4, os.environ["PATH"])
    assert stderr.startswith(PID_MARKER)

    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        subprocess.run([*shell, "-c", kill_group_command(sleeper.pid)], check=True, timeout=30)
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()


_HOSTILE_WORDS = [
    "a\\b",
    "\\",
    "\\\\",
    "end\\",
    "\\start",
    "x\\'y",
    "'\\'",
    "\\'\\\\\"",
    "$(touch pwned)\\",
    "`touch pwned`",
    "new\nline\\",
    "",
    "-n",
    "%self",
    "{a,b}",
    "~",
    "*",
    "a;b|c&d",
    "ünï\\cödé",
]


@pytest.mark.parametrize("login", ["bash", "dash", "busybox", "zsh", "fish"])
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    words=st.lists(st.text(st.sampled_from("ab \\'\"$`\n{}~*%;&|()!#é"), max_size=12), max_size=40)
)
def test_every_word_reaches_sh_intact_under_each_login_shell(
    login: str, tmp_path: Path, words: list[str]
) -> None:
    """A root or start point goes through the login shell's parser before sh sees it: under
    each login shell (fish reads backslashes in single quotes differently) every word,
    backslashes and quotes included, arrives unchanged, and nothing in it runs."""
    found = shutil.which(login)
    if found is None:
        pytest.skip(f"{login} is not installed (.ci/run installs it)")
    shell = [found, "sh"] if login == "busybox" else [found]
    argv = [*_HOSTILE_WORDS, *words]
    run = subprocess.run(
        [*shell, "-c", wrapped_command(["printf", "%s\\0", *argv])],
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == b"".join(word.encode() + b"\0" for word in argv)
    assert not list(tmp_path.rglob("pwned"))


def test_no_remote_script_has_what_fish_reads_as_an_escape() -> None:
    """fish takes backslash-backslash and backslash-quote inside single quotes as escapes:
    quoted by shlex.quote, a script holding either would reach fish's sh changed."""
    from remote_sync.index import remote_scripts
    from remote_sync.ssh import remote

    scripts = [
        value
        for module in (remote_ops, fetch_script, remote_sh, remote_scripts, remote)
        for value in vars(module).values()
        if isinstance(value, str) and ("\n" in value or "$" in value)
    ]
    assert len(scripts) > 8
    for script in scripts:
        assert "\\\\" not in script and "\\'" not in script, script[:200]


def wire_scripts(command: str) -> list[str]:
    """The sh scripts in a command line as :func:`wrapped_command` sends it: every word of it
    that holds a line break (what sh runs, and a batch script handed to xargs)."""
    return [word for word in shlex.split(command) if "\n" in word]


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_the_round_goes_on_the_wire_compact_and_runs(shell: str, tmp_path: Path) -> None:
    """A command's text travels with every round: its scripts go without comment lines,
    blank lines or indentation (about a fifth of a round's upload), and the round so sent
    lists and fetches under dash, bash and BusyBox as the host's sh (its batches run in the
    round's shell)."""
    found = shutil.which(shell)
    if found is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs it)")
    commands = {
        "round": wrapped_command(round_argv("/r", ["agents", "."], tools="rny")),
        "listing": wrapped_command(listing_argv("~/x", ["a"])),
        "fetch": wrapped_command(fetch_argv("/r")),
        "probe": wrapped_command(remote_ops.probe_roots_argv(["~/.pi"])),
    }
    for name, command in commands.items():
        scripts = wire_scripts(command)
        assert scripts, name
        for script in scripts:
            for line in script.split("\n")[:-1]:
                assert line and line == line.lstrip() and not line.startswith("#"), (name, line)
    # The round is one script, the text of the batch's functions in it once, which its own
    # shell evals and a big round's xargs hands each sh; the follow-up fetch is one too.
    for name in ("round", "fetch"):
        assert len(wire_scripts(commands[name])) == 1
        assert commands[name].count("fetch_batch() {") == 1
        assert commands[name].count("under_symlink() {") == 1
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if shell == "busybox":
        (bindir / "sh").write_text(f'#!/bin/sh\nexec {shlex.quote(found)} sh "$@"\n')
        (bindir / "sh").chmod(0o755)
    else:
        os.symlink(found, bindir / "sh")
    path = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    _round_lists_and_fetches([str(bindir / "sh"), "-c"], tmp_path, 6, path)


# Bytes a name may hold that a shell could take for more than data, and the pieces of its
# own quoting (round_fetch_stdin's: '\'' for a quote, '"$nl"' for a newline).
_HOSTILE_PIECES = [
    b"'", b'"', b"\\", b"$(touch pwned)", b"`touch pwned`", b"${x:-y}", b"$nl", b"$1", b"$@",
    b"\n", b"\r", b"\t", b" ", b"-", b"--", b"*", b"?", b"[a]", b"~", b"{a,b}", b";", b"&",
    b"|", b"<", b">", b"!", b"#", b"=", b"%", b"'\\''", b"'\"$nl\"'", b"\xff", b"\xc3(",
    b"\xe2\x82", b"\x01\x1b[31m", b"\x7f", "ünï".encode(), b"\x01", b"\xc2\x01\x01",
]  # fmt: skip
_HOSTILE_NAME = (
    st.lists(
        st.one_of(
            st.sampled_from(_HOSTILE_PIECES),
            st.binary(min_size=1, max_size=4).map(lambda b: b.replace(b"\x00", b"x")),
        ),
        min_size=1,
        max_size=8,
    )
    .map(lambda pieces: b"".join(pieces).replace(b"/", b"_"))
    .filter(
        lambda name: name not in (b".", b"..")  # no file's name: a fetch path refuses them
    )
)
# A batch that writes the items it was given, each NUL-terminated, then "-" for its end.
_ECHO_BATCH_SH = r"""fetch_batch() {
    printf '%s\0' "$@" -
}
"""


def _round_items(shell: list[str], tmp_path: Path, stdin: bytes) -> list[list[bytes]]:
    """The items each batch of a round run under ``shell`` (and its ``-c``) got from
    ``stdin`` (the marker line, then the items), its batch function replaced by one that
    writes them."""
    (tmp_path / "root").mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote_ops, "FETCH_BATCH_SH", _ECHO_BATCH_SH)
        argv = round_argv(str(tmp_path / "root"), ["."])
    run = subprocess.run(
        [*shell, *argv[1:]],
        input=stdin,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    parser = ListingParser("h", trailer=True)
    assert parser.feed(run.stdout) == [] and parser.end == (0, False)
    batches: list[list[bytes]] = [[]]
    for item in parser.rest.split(b"\0")[:-1]:
        if item == b"-":
            batches.append([])
        else:
            batches[-1].append(item)
    assert batches.pop() == []
    return batches


@pytest.mark.parametrize("way", ["lines", "xargs"])
@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(_HOSTILE_NAME, min_size=1, max_size=12), per_batch=st.integers(1, 5))
def test_a_rounds_items_reach_its_batches_as_data_under_each_sh(
    shell: str, way: str, tmp_path: Path, names: list[bytes], per_batch: int
) -> None:
    """A round's items come either as lines of shell words its sh evals into each batch's
    parameters ("lines", a small round) or NUL-terminated to xargs ("xargs", a round of many
    bytes of items): either way every name, whatever bytes it holds (quotes, expansions,
    newlines, leading dashes, globs, bytes that are not UTF-8, 5,000 bytes long), reaches
    the batch exactly as sent, nothing in it runs, and at most ``per_batch`` items go to a
    batch. A last line cut by a dropped connection (no newline) runs nothing, nor does a
    cut "-<n>" line; xargs with no items starts no batch, and a cut item reaches it as data.
    The shell starts in a UTF-8 locale, where bash read a \\001 after a byte that cannot
    start a character as its own quoting."""
    found = shutil.which(shell)
    if found is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs it)")
    sh = [found, "sh", "-c"] if shell == "busybox" else [found, "-c"]
    names = [*names, b"'" * 2500 + b"\n" * 2500, b"-" + b"x" * 4999]
    requests = [
        FetchRequest(name, n, 10 + n, check_batched=n % 2 == 1) for n, name in enumerate(names)
    ]
    items = fetch_stdin(requests).split(b"\0")[:-1]  # as xargs gets them
    with pytest.MonkeyPatch.context() as patch:  # the way, whatever the items' size
        patch.setattr(fetch_script, "XARGS_BYTES", 0 if way == "xargs" else 10**9)
        patch.setattr(fetch_script, "XARGS_LINE_BYTES", 0)
        sent = round_fetch_stdin(requests, per_batch=per_batch)
    assert sent.startswith(b"-%d\n" % per_batch) == (way == "xargs")
    stdin = fetch_stdin([], MARKER) + sent
    batches = _round_items(sh, tmp_path, stdin)
    assert [item for batch in batches for item in batch] == items
    assert not list(tmp_path.rglob("pwned"))
    if way == "lines":
        assert [len(batch) for batch in batches] == [
            min(per_batch, len(items) - at) for at in range(0, len(items), per_batch)
        ]
        last = stdin[stdin.rindex(b"\n", 0, -1) + 1 :]
        assert _round_items(sh, tmp_path, stdin + last[:-1]) == batches
        return
    # xargs may cut a batch sooner (its command line's limit), never later.
    assert all(0 < len(batch) <= per_batch for batch in batches)
    head = fetch_stdin([], MARKER) + b"-%d" % per_batch
    assert _round_items(sh, tmp_path, head) == []
    assert _round_items(sh, tmp_path, head + b"\n") == []
    cut = stdin[: len(stdin) - len(items[-1]) // 2 - 1]
    got = [item for batch in _round_items(sh, tmp_path, cut) for item in batch]
    assert got[:-1] == items[:-1] and items[-1].startswith(got[-1])
    assert not list(tmp_path.rglob("pwned"))


def test_a_round_sends_its_items_to_xargs_only_when_they_are_many_bytes() -> None:
    """A round's items go as lines the round's shell reads and evals (its batches in that
    shell: no xargs, no new sh) unless they are more bytes than XARGS_BYTES and
    XARGS_LINE_BYTES a line: then a line "-<per_batch>" and the items NUL-terminated, as
    the standalone fetch takes them, for xargs to read in blocks (a shell's read takes one
    byte a system call)."""
    appends = [
        FetchRequest(b"agents/main/sessions/%04d.jsonl" % n, 5000, 10240, check_batched=True)
        for n in range(10)
    ]
    small = round_fetch_stdin(appends)
    assert small == b" ".join(fetch_stdin(appends).split(b"\0")[:-1]) + b"\n"
    # A first sync of 20,000 files: 20 batches of 1,000, as xargs -n 1000 cuts them.
    first = [
        FetchRequest(b"agents/main-agent/sessions/%08d-0000-4000-8000-%012d.jsonl" % (n, n), 0, 900)
        for n in range(20000)
    ]
    big = round_fetch_stdin(first)
    assert big == b"-1000\n" + fetch_stdin(first)
    assert len(big) > 1_500_000
    assert round_fetch_stdin(first, per_batch=100).startswith(b"-100\n")
    # Batches of 7 items (540 B a line) cost less read by the shell than an sh each.
    assert not round_fetch_stdin(first, per_batch=7).startswith(b"-")
    assert round_fetch_stdin([]) == b""

    # The bar: XARGS_BYTES, and XARGS_LINE_BYTES for each line the items would make.
    def sized(size: int, count: int) -> list[FetchRequest]:
        path = b"x" * (size // count - len(b"0+0:1:") - 1)
        requests = [FetchRequest(path, 0, 1)] * count
        assert len(fetch_stdin(requests)) == size
        return requests

    bar = fetch_script.XARGS_BYTES + fetch_script.XARGS_LINE_BYTES
    assert not round_fetch_stdin(sized(bar, 8)).startswith(b"-")
    assert round_fetch_stdin(sized(bar + 8, 8)).startswith(b"-1000\n")
    # The same bytes in two lines of 4: the bar is a line's more.
    assert not round_fetch_stdin(sized(bar + 8, 8), per_batch=4).startswith(b"-")
    assert round_fetch_stdin(
        sized(bar + fetch_script.XARGS_LINE_BYTES + 8, 8), per_batch=4
    ).startswith(b"-4\n")


# Words of one line for the compaction's scripts: quotes, "#", "$" and blanks, never a line
# break (a script whose quoted data spans lines is not one compact_sh may take).
_SCRIPT_WORDS = st.text(st.sampled_from("ab #'\"$\\;{}~*\t"), max_size=10)


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["", " ", "    ", "\t", "  \t "]),
            st.sampled_from(["comment", "blank", "print", "strip", "if"]),
            _SCRIPT_WORDS,
            _SCRIPT_WORDS,
        ),
        max_size=12,
    )
)
def test_compact_sh_drops_comments_blanks_and_indentation_only(
    lines: list[tuple[str, str, str, str]],
) -> None:
    """Whatever the indentation, comment lines (quotes in them too) and blank lines, the
    compacted script prints what the script prints, "#" inside a word (``${x#...}``, a quoted
    "#") is kept, and no line of it is blank, indented or a comment."""
    text = []
    for indent, kind, a, b in lines:
        if kind == "comment":
            text.append(f"{indent}# {a} {b}")
        elif kind == "blank":
            text.append(indent)
        elif kind == "print":
            text.append(f"{indent}printf '[%s]\\n' {shlex.quote(a)} {shlex.quote(b)} # {b}")
        elif kind == "strip":
            text.append(f"{indent}x={shlex.quote(a + b)}")
            text.append(f"{indent}printf '<%s>\\n' \"${{x#{shlex.quote(a)}}}\"")
        else:
            text += [f"{indent}if [ -n {shlex.quote(a)} ]; then", f"{indent}  echo #{b}", "fi"]
    script = "\n".join(text) + "\n"
    compact = compact_sh(script)
    for line in compact.split("\n")[:-1]:
        assert line and line == line.lstrip() and not line.startswith("#"), line
    assert compact_sh(compact) == compact

    def run(body: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["sh", "-c", body], capture_output=True, timeout=30, check=False)

    before, after = run(script), run(compact)
    assert (after.returncode, after.stdout) == (before.returncode, before.stdout)


def test_every_remote_script_keeps_its_meaning_compacted() -> None:
    """compact_sh drops each line's indentation and every "#" line: right only while no
    script continues a line with a backslash (``a\\`` then an indented ``b`` would become
    one word) or carries a here-document (its text would lose its blanks and "#" lines).
    Every multi-line script constant of the modules that send them is held to that."""
    from remote_sync.index import remote_scripts
    from remote_sync.ssh import remote as ssh_remote

    scripts = {
        f"{module.__name__}.{name}": value
        for module in (remote_ops, fetch_script, remote_sh, remote_scripts, ssh_remote)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value.count("\n") > 1
    }
    assert len(scripts) >= 10, sorted(scripts)  # the walk finds them
    for name, script in scripts.items():
        for line in script.split("\n"):
            assert not line.rstrip().endswith("\\"), (name, line)
            assert not re.search(r"<<-?\s*['\"]?\w", line), (name, line)


def test_local_round_runs_its_batches_in_its_own_shell(toolset: Runner, tmp_path: Path) -> None:
    """A round the client sends no items (EOF after the marker) ends after its listing; one
    with few items runs each batch (a line) in its own shell: it starts neither xargs nor
    another sh, whose start and parse of the batch script cost a host about 2 ms a round.
    One with many bytes of items hands them to xargs, an sh a batch."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"data\n")
    (root / "g h").write_bytes(b"more data\n")
    started = tmp_path / "started"
    log = shlex.quote(str(started))
    runner = wrap_tools(
        toolset,
        tmp_path / "bin",
        {
            name: f'echo {name} >> {log}\nexec {real_tool(toolset, name)} "$@"\n'
            for name in ("xargs", "sh")
        },
    )
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], [])
    assert (rc, sorted(f.path for f in listed), end, frames, err) == (
        (0, [b"f", b"g h"], (0, False), {}, b"")
    )
    # The round's own (the runner's too where it is "sh", and the listing's where find
    # cannot print its records): the same in both rounds.
    shells = started.read_bytes()
    assert set(shells.splitlines()) == {b"sh"}
    started.unlink()
    requests = [FetchRequest(b"f", 1, 4), FetchRequest(b"g h", 5, 5), FetchRequest(b"f", 0, 2)]
    want = {0: ("End", b"ata\n"), 1: ("End", b"data\n"), 2: ("End", b"da")}
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], requests)
    assert (rc, end, err, frames) == (0, (0, False), b"", want)
    assert started.read_bytes() == shells
    started.unlink()
    # Two batches: the first in a subshell, the last in the round's shell.
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], requests, per_batch=2)
    assert (rc, end, err, frames) == (0, (0, False), b"", want)
    assert started.read_bytes() == shells
    # A malformed item ends the round with its batch's status; no later batch runs.
    stdin = fetch_stdin([], MARKER) + b"0+0:4:f x:1:f\n0+0:4:f\n"
    rc, out, err = run_local(runner, round_argv(str(root), ["."]), stdin)
    assert rc == 255 and b"malformed fetch request" in err
    assert out.endswith(MB + b" B\ndata" + MB + b" E\n")
    # A round of many bytes of items hands them to xargs.
    names = [b"s%04d-%s.jsonl" % (n, b"y" * 60) for n in range(300)]
    for n, name in enumerate(names):
        (root / name.decode()).write_bytes(b"%d\n" % n)
    many = [FetchRequest(name, 0, len(b"%d\n" % n)) for n, name in enumerate(names)]
    assert round_fetch_stdin(many, per_batch=100).startswith(b"-100\n")
    started.unlink()
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], many, per_batch=100)
    assert (rc, end, err) == (0, (0, False), b"")
    assert frames == {n: ("End", b"%d\n" % n) for n in range(300)}
    # (Where find cannot print its records, the listing's sh runs more often for more files.)
    assert started.read_bytes().splitlines().count(b"xargs") == 1
    # There a malformed item stops xargs (124), as the standalone fetch's does.
    stdin = fetch_stdin([], MARKER) + b"-2\n0+0:4:f\0x\0"
    rc, out, err = run_local(runner, round_argv(str(root), ["."]), stdin)
    assert rc == 124 and b"malformed fetch request" in err
    assert out.endswith(MB + b" B\ndata" + MB + b" E\n")


@pytest.mark.parametrize("toolset", ["gnu", "busybox-gzip"], indirect=True)
def test_local_round_whose_gzip_dies(toolset: Runner, tmp_path: Path) -> None:
    """A gzip that read the whole listing but died before its last block: the listing fails
    (status 5, gzip named), rather than passing a cut stream for a complete one."""
    root = tmp_path / "root"
    root.mkdir()
    for i in range(300):
        (root / f"session-{i:04d}.jsonl").write_bytes(b"{}\n")
    gzip_tool = real_tool(toolset, "gzip")
    scratch = tmp_path / "gz.out"
    dying = f'{gzip_tool} "$@" > {scratch}\nhead -c 200 {scratch}\nkill -9 $$\n'
    runner = wrap_tools(toolset, tmp_path / "dying", {"gzip": dying})
    marker = new_marker()
    stdin = fetch_stdin([], marker) + round_fetch_stdin([FetchRequest(b"x", 0, 1)])
    rc, out, err = run_local(runner, round_argv(str(root), ["."]), stdin)
    assert rc == 5 and out.endswith(b"L 5 1\n") and len(out) <= 200 + 6  # nothing fetched
    assert b"gzip failed (status 137)" in err


def test_local_round_whose_listing_fails(toolset: Runner, tmp_path: Path) -> None:
    """find failing outright (not status 1, "some directory unreadable"): the end line carries
    its status, the command exits with it, and nothing is fetched."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"data\n")
    find = 'echo "find: out of memory" >&2\nexit 2\n'
    runner = wrap_tools(toolset, tmp_path / "failbin", {"find": find})
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], [FetchRequest(b"f", 0, 5)])
    assert (rc, listed, end, frames) == (2, [], (2, True), {})
    assert b"out of memory" in err


#: A status line as the round's listing sends its filter, under a marker not the round's.
_FORGED_STATUS = "0123456789abcdef0123456789abcdef s0"


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        # Some directory unreadable (find's status 1): incomplete, but the fetch goes on.
        ('echo "find: ./locked: Permission denied" >&2\nexit 1\n', (0, 0, True)),
        # The same message without its newline: the status line that follows it on the
        # filter's pipe is still read, and the message passed on as a line of its own.
        ('printf "find: ./locked: Permission denied" >&2\nexit 1\n', (0, 0, True)),
        # Listed part of the tree, then failed.
        ('echo "find: out of memory" >&2\nexit 2\n', (2, 2, True)),
        # Killed part-way: its status (and the shell's "Killed").
        ("kill -9 $$\n", (137, 137, True)),
        # The shell around find killed before it could pass find's status on; a message
        # made to look like that status, under another marker, is only a message.
        (f'echo "{_FORGED_STATUS}" >&2\nkill -9 $PPID\nexit 0\n', (2, 2, True)),
    ],
    ids=["unreadable", "unterminated", "failed", "killed", "shell-killed"],
)
def test_local_round_whose_listing_ends_badly_after_some_output(
    toolset: Runner, tmp_path: Path, then: str, expected: tuple[int, int, bool]
) -> None:
    """find lists the tree, then fails, is killed, or its shell is: the listing's end line
    carries a status that is not 0 (the command exits with it, nothing is fetched) or says
    the listing is incomplete; never a clean end of a listing that was cut."""
    root = tmp_path / "root"
    root.mkdir()
    for i in range(50):
        (root / f"session-{i:02d}.jsonl").write_bytes(b"{}\n")
    real_find = real_tool(toolset, "find")
    # The probes of what find can do run it too: only the listing ends badly.
    find = f"""case " $* " in
*" -type f "*) ;;
*) exec {real_find} "$@" ;;
esac
{real_find} "$@"
{then}"""
    runner = wrap_tools(toolset, tmp_path / "failbin", {"find": find})
    request = FetchRequest(b"session-00.jsonl", 0, 3)
    rc, listed, end, frames, err = run_round(runner, str(root), ["."], [request])
    status, rc_expected, warned = expected
    assert (rc, end) == (rc_expected, (status, warned)), err
    assert len(listed) == 50  # the records came before the failure
    assert frames == ({0: ("End", b"{}\n")} if status == 0 else {})
    assert (_FORGED_STATUS.encode() in err) == (_FORGED_STATUS in then)
    if b"Permission denied" in then.encode():
        assert err.endswith(b"find: ./locked: Permission denied\n"), err


def test_local_fetch_of_hostile_names(toolset: Runner, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    files = build_tree(root)
    (root / "a dir").mkdir()
    os.mkfifo(root / "fifo")
    requests: list[FetchRequest] = []
    expected: list[tuple[str, bytes]] = []
    for i, (path, data) in enumerate(sorted(files.items())):
        if not data:
            continue
        start = [0, 1, len(data) // 2, len(data) - 1][i % 4]
        length = len(data) - start if i % 3 else max(1, (len(data) - start) // 2)
        requests.append(FetchRequest(path, start, length))
        expected.append(("End", data[start : start + length]))
        if i % 5 == 0:  # asking for more than there is: a short frame with all there is
            requests.append(FetchRequest(path, start, len(data) + 10))
            expected.append(("Short", data[start:]))
    big = os.urandom(3 * 1024 * 1024 + 7)
    (root / "big").write_bytes(big)
    requests += [
        FetchRequest(b"big", 1000, len(big) - 2000),
        FetchRequest(b"big", 0, TO_EOF),
        FetchRequest(b"big", len(big), 5),  # at EOF: nothing
        FetchRequest(b"missing", 0, 1),
        FetchRequest(b"link-to-file", 0, 5),
        FetchRequest(b"link-to-dir/inner.jsonl", 0, 5),
        FetchRequest(b"a dir", 0, 5),
        FetchRequest(b"fifo", 0, 5),
    ]
    expected += [
        ("End", big[1000:-1000]),
        ("Short", big),
        ("Short", b""),
        ("Gone", b""),
        ("Gone", b""),
        ("Gone", b""),
        ("Gone", b""),
        ("Gone", b""),
    ]
    got = run_fetch(toolset, root, requests)
    assert [got[i] for i in range(len(requests))] == expected
    small = [r for r in requests if r.length < 1000]
    again = run_fetch(toolset, root, small, in_argv=True)
    assert [again[i] for i in range(len(small))] == [
        e for r, e in zip(requests, expected, strict=True) if r.length < 1000
    ]
    assert not list(tmp_path.rglob("pwned"))


def test_local_fetch_of_whole_files_through_tar(toolset: Runner, tmp_path: Path) -> None:
    """Archive requests: one tar per batch where the host has one, head ranges where not;
    the same bytes either way, but for a hard link to a file earlier in the same archive."""
    root = tmp_path / "root"
    root.mkdir()
    files = build_tree(root)
    deep = root.joinpath(*["d" * 200 + str(i) for i in range(8)])
    deep.mkdir(parents=True)
    long_names = []
    for i in range(250):
        (deep / f"{'f' * 200}:{i}").write_bytes(b"long %d\n" % i * 300)
        long_names.append(os.fsencode((deep / f"{'f' * 200}:{i}").relative_to(root)))
    os.link(root / "plain.jsonl", root / "hard.jsonl")
    (root / "a dir").mkdir()
    os.mkfifo(root / "fifo")
    has_tar = has_tool(toolset, "tar")
    requests: list[FetchRequest] = []
    expected: list[tuple[str, bytes]] = []
    for i, (path, data) in enumerate(sorted(files.items())):
        if not data:
            continue
        if i % 4 == 3:  # a range between archive requests
            requests.append(FetchRequest(path, 1, len(data) - 1))
            expected.append(("End", data[1:]))
        length = [len(data), len(data) - 1 or 1, len(data) + 10][i % 3]  # exact, grew, shrank
        requests.append(FetchRequest(path, 0, length, archive=True))
        # A last byte NUL looks like GNU tar's padding after a failed read: not trusted.
        padded = has_tar and data[:length].endswith(b"\x00")
        expected.append(("End" if length <= len(data) and not padded else "Short", data[:length]))
    requests += [FetchRequest(b"hard.jsonl", 0, len(files[b"plain.jsonl"]), archive=True)]
    expected += [("Short", b"") if has_tar else ("End", files[b"plain.jsonl"])]
    for path in (b"missing", b"link-to-file", b"link-to-dir/inner.jsonl", b"a dir", b"fifo"):
        requests.append(FetchRequest(path, 0, 5, archive=True))
        expected.append(("Gone", b""))
    # ~1.6 KiB per item: several xargs batches, each with its own tar, of GNU long names.
    # (One path twice in an archive would be a hard link to itself: a fetch never asks that.)
    for i, name in enumerate(long_names):
        requests.append(FetchRequest(name, 0, 1500, archive=True))
        expected.append(("End", (b"long %d\n" % i * 300)[:1500]))
    got = run_fetch(toolset, root, requests)
    assert [got[i] for i in range(len(requests))] == expected
    again = run_fetch(toolset, root, requests[:40], in_argv=True)
    assert [again[i] for i in range(40)] == expected[:40]
    assert not list(tmp_path.rglob("pwned"))


@DIGEST_TOOLSETS
def test_local_fetch_sends_the_digest_of_each_checked_head(toolset: Runner, tmp_path: Path) -> None:
    """After a checked range, and after an archive with checked entries (one digest of their
    heads one after another), the digest of the first KiB as it is on the host: md5, POSIX
    cksum where the host has no md5sum, ``None`` where it has neither. Small batches: each
    archive has its own digest."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    sizes = {b"d/big.jsonl": 200_000, b"d/a b.jsonl": 5000, b"d/small": 300, b"d/c.jsonl": 3000}
    for name, size in sizes.items():  # a NUL last byte would be taken for tar's padding
        (root / os.fsdecode(name)).write_bytes(os.urandom(size - 1) + b"\n")
    requests = [
        FetchRequest(b"d/big.jsonl", 0, 200_000, check=True),
        FetchRequest(b"d/big.jsonl", 100_000, 100_000, check=True),
        FetchRequest(b"d/a b.jsonl", 0, 5000, archive=True, check=True),
        FetchRequest(b"d/small", 0, 300, archive=True),
        FetchRequest(b"d/gone.jsonl", 0, 10, check=True),
        FetchRequest(b"d/c.jsonl", 0, 3000, archive=True, check=True),
        FetchRequest(b"d/a b.jsonl", 0, 5000, archive=True, check=True),
    ]
    events = fetch_events(toolset, root, requests, 61, per_batch=5)
    digests = [(e.indices, e.digest) for e in events if isinstance(e, HeadDigest)]
    has_tar = has_tool(toolset, "tar")

    def head(*names: bytes) -> Digest | None:
        heads = b"".join((root / os.fsdecode(n)).read_bytes()[:1024] for n in names)
        return host_digest(toolset, heads)

    big = head(b"d/big.jsonl")
    if has_tar:  # batch 1 archives "a b" (its digest after the archive), batch 2 "c" and "a b"
        want = [((0,), big), ((1,), big), ((2,), head(b"d/a b.jsonl"))]
        want.append(((5, 6), head(b"d/c.jsonl", b"d/a b.jsonl")))
    else:  # archive requests are ranges: a digest after each checked one
        want = [((0,), big), ((1,), big), ((2,), head(b"d/a b.jsonl"))]
        want += [((5,), head(b"d/c.jsonl")), ((6,), head(b"d/a b.jsonl"))]
    assert digests == want
    outcomes = collect([e for e in events if not isinstance(e, HeadDigest)])
    assert [outcomes[i][0] for i in range(len(requests))] == ["End"] * 4 + ["Gone"] + ["End"] * 2


@DIGEST_TOOLSETS
def test_local_fetch_sends_one_digest_of_the_appended_heads_per_batch(
    toolset: Runner, tmp_path: Path
) -> None:
    """Appends with ``check_batched`` share one digest after their batch's last item, before
    its archive: the digest of the first KiBs of those read, in order (not of one gone)."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    for name, size in {"a.jsonl": 5000, "b.jsonl": 3000, "x.jsonl": 2000}.items():
        (root / "d" / name).write_bytes(os.urandom(size - 1) + b"\n")
    requests = [
        FetchRequest(b"d/a.jsonl", 4000, 1000, check_batched=True),
        FetchRequest(b"d/gone.jsonl", 2000, 10, check_batched=True),
        FetchRequest(b"d/x.jsonl", 0, 2000, archive=True, check=True),
        FetchRequest(b"d/b.jsonl", 2500, 500, check_batched=True),
        FetchRequest(b"d/b.jsonl", 2000, 1000, check_batched=True),  # the second batch
    ]
    events = fetch_events(toolset, root, requests, 7, per_batch=4)
    has_tar = has_tool(toolset, "tar")

    def head(*names: str) -> Digest | None:
        heads = b"".join((root / "d" / n).read_bytes()[:1024] for n in names)
        return host_digest(toolset, heads)

    batch = [((0, 3), head("a.jsonl", "b.jsonl"))]
    x = [((2,), head("x.jsonl"))]
    last = [((4,), head("b.jsonl"))]
    # With tar, x comes in the archive after the batch's digest; else as a checked range.
    want = batch + x + last if has_tar else x + batch + last
    assert [(e.indices, e.digest) for e in events if isinstance(e, HeadDigest)] == want
    outcomes = collect([e for e in events if not isinstance(e, HeadDigest)])
    assert [outcomes[i][0] for i in range(len(requests))] == ["End", "Gone", "End", "End", "End"]


def test_fetch_stdin_ends_a_batch_before_it_holds_too_many_bytes() -> None:
    """What waits for a batch's end (its archive, its appends checked at its end) stays within
    the byte budget: an item ``-`` ends the batch before a request that would go over it, and
    a request larger than the budget is a batch of its own. Ranges checked on their own (and
    unchecked ones) are committed as they come, and count for nothing."""

    def archive(name: bytes, size: int) -> FetchRequest:
        return FetchRequest(name, 0, size, archive=True, check=True)

    requests = [
        archive(b"a", 3000),
        archive(b"b", 4000),  # 7000: the budget, not over it
        archive(b"c", 1),
        FetchRequest(b"r", 5, 50_000, check=True),  # its own digest: not held
        FetchRequest(b"x", 5, 20_000),
        archive(b"huge", 20_000),
        FetchRequest(b"e", 2000, 1500, check_batched=True),
        archive(b"d", 3000),
        archive(b"f", 3000),
    ]
    items = fetch_stdin(requests, batch_bytes=7000).split(b"\x00")
    assert items.pop() == b""
    names = [item.rpartition(b":")[2] if item != b"-" else b"|" for item in items]
    assert b"".join(names) == b"ab|crx|huge|ed|f"
    # The whole framing of the batches: two bytes an end.
    assert len(fetch_stdin(requests, batch_bytes=7000)) == len(fetch_stdin(requests)) + 8
    assert fetch_stdin(requests, batch_bytes=1).count(b"\x00-\x00") == 6
    with pytest.raises(ValueError, match="at least one byte"):
        fetch_stdin(requests, batch_bytes=0)
    # A round's batches are its lines, cut where those items are and every per_batch items;
    # the same bytes but for the line ends (a space between items, no item "-").
    lines = round_fetch_stdin(requests, per_batch=2, batch_bytes=7000).split(b"\n")
    assert lines.pop() == b""
    names = [b"".join(item.rpartition(b":")[2] for item in line.split()) for line in lines]
    assert names == [b"ab", b"cr", b"x", b"huge", b"ed", b"f"]
    assert len(b"\n".join(lines)) == len(fetch_stdin(requests)) - 1
    with pytest.raises(ValueError, match="at least one item"):
        round_fetch_stdin(requests, per_batch=0)


def test_local_fetch_cuts_batches_by_bytes_and_by_count(toolset: Runner, tmp_path: Path) -> None:
    """A batch ends where the client's ``-`` item says (its bytes) and where xargs cuts the
    items (their count, ``-`` items included), or in a round where its line ends: each batch
    sends its appends' digest and its archive, followed by that archive's digest, before the
    next batch's first frame. A file larger than the budget comes in an archive alone.
    Without tar, archive requests are checked ranges with a digest each."""
    root = tmp_path / "root"
    root.mkdir()
    sizes = {"a": 3000, "b": 3000, "huge": 20_000, "c": 3000, "e": 3000, "s": 1500, "t": 1500}
    data = {}
    for name, size in sizes.items():
        data[name] = os.urandom(size - 1) + b"\n"  # a NUL last byte would look like tar's padding
        (root / name).write_bytes(data[name])

    def archive(name: str) -> FetchRequest:
        return FetchRequest(name.encode(), 0, sizes[name], archive=True, check=True)

    requests = [
        archive("a"),
        archive("b"),
        archive("huge"),  # ends a batch, and the next: larger than the budget
        archive("c"),
        FetchRequest(b"e", 2000, 1000, check_batched=True),
        archive("s"),
        archive("t"),  # 7000 bytes of c, e, s, t: but xargs ends that batch before t
        archive("a"),  # 1500 + 3000 of t and a: over the budget
    ]
    # The items: a b - huge - c e s t - a, cut by xargs -n 4 after "huge" and after "s".
    events = fetch_events(toolset, root, requests, 101, per_batch=4, batch_bytes=7000)
    digests = [e.indices for e in events if isinstance(e, HeadDigest)]
    if has_tool(toolset, "tar"):
        assert digests == [(0, 1), (2,), (4,), (3, 5), (6,), (7,)]
    else:  # a digest after each checked range, the appends' at their batch's end
        assert digests == [(0,), (1,), (2,), (3,), (5,), (4,), (6,), (7,)]
    got = collect([e for e in events if not isinstance(e, HeadDigest)])
    names = ["a", "b", "huge", "c", "", "s", "t", "a"]
    want = [("End", data[n] if n else data["e"][2000:]) for n in names]
    assert [got[i] for i in range(len(requests))] == want

    # A round's lines: a b | huge | c e s t | a (by bytes; 4 items a line at most), its
    # batches in a subshell each, the last in the round's own shell.
    rc, _, end, events, err = round_events(
        toolset, str(root), ["."], requests, per_batch=4, batch_bytes=7000
    )
    assert (rc, end, err) == (0, (0, False), b"")
    digests = [e.indices for e in events if isinstance(e, HeadDigest)]
    if has_tool(toolset, "tar"):
        assert digests == [(0, 1), (2,), (4,), (3, 5, 6), (7,)]
    else:
        assert digests == [(0,), (1,), (2,), (3,), (5,), (6,), (4,), (7,)]
    got = collect([e for e in events if not isinstance(e, HeadDigest)])
    assert [got[i] for i in range(len(requests))] == want


def with_hooks_before_the_digests(
    monkeypatch: pytest.MonkeyPatch, batch: str, archive: str
) -> None:
    """Run shell text in the batch script just before its digests by name: ``batch`` before
    the one of the batch's appends, ``archive`` before the one of its archive."""
    script = fetch_script.FETCH_BATCH_SH
    for anchor, hook in (
        ('if [ -n "$read_checked" ]; then\n', batch),
        ('    if [ -n "$archived_checked" ]; then\n', archive),
    ):
        assert script.count(anchor) == 1
        script = script.replace(anchor, hook + "\n" + anchor)
    # Where fetch_argv and round_argv look it up.
    monkeypatch.setattr(fetch_script, "FETCH_BATCH_SH", script)
    monkeypatch.setattr(remote_ops, "FETCH_BATCH_SH", script)


@DIGEST_TOOLSETS
def test_local_fetch_names_the_inode_of_each_file_hashed_by_name(
    toolset: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digests that hash files by name (a batch's appends, an archive's checked entries)
    end with the inode each name has just after, in order, None for a name gone: a file
    replaced since its read shows there. None at all where the host cannot hash."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    for name, size in {"a.jsonl": 5000, "b.jsonl": 3000, "c.jsonl": 3000, "x.jsonl": 2000}.items():
        (root / "d" / name).write_bytes(os.urandom(size - 1) + b"\n")
    for name in ("b.new", "x.new"):
        (root / name).write_bytes(b"compacted\n" * 200)
    # b is compacted (renamed over) and c archived (renamed away) after their reads, x after
    # the archive read it.
    batch_hook = "mv -f b.new d/b.jsonl; mv -f d/c.jsonl d/c.jsonl.reset"
    with_hooks_before_the_digests(monkeypatch, batch_hook, "mv -f x.new d/x.jsonl")
    first = Path(toolset[1]["PATH"].split(os.pathsep)[0])
    if (first / "sh").is_symlink() and not (first / "mv").exists():  # BusyBox only: the hooks'
        os.symlink(os.readlink(first / "sh"), first / "mv")
    requests = [
        FetchRequest(b"d/a.jsonl", 4000, 1000, check_batched=True),
        FetchRequest(b"d/b.jsonl", 2500, 500, check_batched=True),
        FetchRequest(b"d/c.jsonl", 2000, 1000, check_batched=True),
        FetchRequest(b"d/x.jsonl", 0, 2000, archive=True, check=True),
    ]
    events = fetch_events(toolset, root, requests, 7)
    hashes = host_digest(toolset, b"") is not None

    def ino(name: str) -> int:
        return (root / "d" / name).stat().st_ino

    digests = {e.indices: e.inodes for e in events if isinstance(e, HeadDigest)}
    assert digests == {
        (0, 1, 2): (ino("a.jsonl"), ino("b.jsonl"), None) if hashes else None,
        (3,): (ino("x.jsonl"),) if hashes else None,
    }
    outcomes = collect([e for e in events if not isinstance(e, HeadDigest)])
    assert [outcomes[i][0] for i in range(len(requests))] == ["End"] * 4


def test_frame_parser_reads_the_inodes_after_a_digest_by_name() -> None:
    """Inodes end only a digest by name, one per file (``-`` for a name gone); a count that
    does not match is as if the host had sent none; anything else there is an error."""
    requests = [
        FetchRequest(b"a", 4, 4, check_batched=True),
        FetchRequest(b"b", 4, 2, check_batched=True),
    ]
    frames = MB + b" B\nabcd" + END + MB + b" B\nxy" + END
    digest = b"md5:" + b"0" * 32

    def parse(line: bytes, reqs: list[FetchRequest] = requests, data: bytes = frames) -> object:
        parser = FrameParser("h", MB, reqs)
        events = feed_frames(parser, data + MB + b" K " + line + b"\n", range(0, 200, 3))
        return next(e for e in events if isinstance(e, HeadDigest)).inodes

    assert parse(digest + b" 12 -") == (12, None)
    # The low 63 bits, as the listing keeps them (a signed 64-bit integer in the state).
    assert parse(b"- 12 18446744073709551615") == (12, 2**63 - 1)
    longest = b"cksum:4294967295:" + b"9" * 20  # the longest digest, with the longest inodes
    assert parse(longest + b" 18446744073709551615" * 2) == (2**63 - 1, 2**63 - 1)
    assert parse(digest) is None
    assert parse(digest + b" 12") is None  # stat lost count
    for bad in (b" 12 x", b" 12  13", b" 12 -1", b" " + b"1" * 40 + b" 2"):
        with pytest.raises(ProtocolError, match="head digest"):
            parse(digest + bad)
    single = [FetchRequest(b"a", 4, 4, check=True)]
    with pytest.raises(ProtocolError, match="head digest"):  # hashed from its descriptor
        parse(digest + b" 12", single, MB + b" B\nabcd" + END)


def test_frame_parser_wants_the_batch_digest_of_appends_that_were_read() -> None:
    requests = [FetchRequest(b"a", 4, 4, check_batched=True), FetchRequest(b"b", 0, 2)]
    parser = FrameParser("h", MB, requests)
    parser.feed(MB + b" B\nabcd" + END + MB + b" B\nxy" + END)
    with pytest.raises(ProtocolError, match="inside a frame"):
        parser.close()
    # A read that failed (X) is not hashed: no digest is due.
    failed = FrameParser("h", MB, requests)
    failed.feed(MB + b" B\nab" + FAILED_END + MB + b" B\nxy" + END)
    assert failed.close() == []


@DIGEST_TOOLSETS
def test_local_fetch_sends_the_digest_of_a_whole_file(toolset: Runner, tmp_path: Path) -> None:
    """After a range with ``check_whole``, the digest of the whole file as it is on the host
    (md5, else POSIX cksum, ``None`` with neither); a range without a check has no digest
    line."""
    root = tmp_path / "root"
    root.mkdir()
    index = os.urandom(200_000)
    (root / "sessions.json").write_bytes(index)
    (root / "meta.json").write_bytes(b"{}")
    requests = [
        FetchRequest(b"sessions.json", 0, 200_000, detect_growth=True, check_whole=True),
        FetchRequest(b"meta.json", 0, 2, detect_growth=True),
        FetchRequest(b"gone.json", 0, 2, detect_growth=True, check_whole=True),
    ]
    events = fetch_events(toolset, root, requests, 997)
    digests = [(e.indices, e.digest) for e in events if isinstance(e, HeadDigest)]
    assert digests == [((0,), host_digest(toolset, index))]
    outcomes = collect([e for e in events if not isinstance(e, HeadDigest)])
    assert outcomes == {0: ("End", index), 1: ("End", b"{}"), 2: ("Gone", b"")}


def test_local_fetch_batches_and_errors(toolset: Runner, tmp_path: Path) -> None:
    root = tmp_path / "root"
    deep = root.joinpath(*["d" * 200 + str(i) for i in range(8)])
    deep.mkdir(parents=True)
    name = "f" * 200 + ":x"
    (deep / name).write_bytes(b"0123456789")
    rel = os.fsencode(deep.relative_to(root) / name)
    # ~1.6 KiB per item, 250 items: more than one xargs batch with GNU and BusyBox
    requests = [FetchRequest(rel, i % 10, 10 - i % 10) for i in range(250)]
    got = run_fetch(toolset, root, requests)
    assert [got[i] for i in range(250)] == [("End", b"0123456789"[i % 10 :]) for i in range(250)]

    # A malformed item stops the fetch; the range read before it was sent whole, its end
    # line too (it waits in the batch for the next line the batch writes).
    marker = new_marker()
    stdin = fetch_stdin(requests[:1], marker) + b"0+x:1:" + rel + b"\x00"
    rc, out, err = run_local(toolset, fetch_argv(str(root)), stdin)
    assert rc != 0 and b"malformed fetch request" in err
    parser = FrameParser("h", marker.encode(), requests[:1])
    assert collect(parser.feed(out) + parser.close()) == {0: ("End", b"0123456789")}

    # No requests: nothing runs, nothing printed.
    assert run_local(toolset, fetch_argv(str(root)), fetch_stdin([], marker)) == (0, b"", b"")
    # Root missing: status 3 before anything is read.
    rc, out, err = run_local(toolset, fetch_argv(str(tmp_path / "nope")), fetch_stdin([], marker))
    assert (rc, out) == (3, b"") and b"cannot enter the root directory" in err
    # No marker anywhere, or a marker in both places: refused, nothing fetched.
    rc, out, _ = run_local(toolset, fetch_argv(str(root)), fetch_stdin(requests[:1]))
    assert rc == 2 and out == b""
    rc, out, _ = run_local(
        toolset, fetch_argv(str(root), marker), fetch_stdin(requests[:1], marker)
    )
    assert rc != 0 and out == b""


def real_tool(runner: Runner, name: str) -> str:
    """sh words running the real tool ``name`` of the runner's tool set (by absolute path)."""
    shell = runner[0][0]
    if shell == "sh":
        found = shutil.which(name)
        assert found is not None, name
        return shlex.quote(found)
    return f"{shlex.quote(os.path.realpath(shell))} {name}"


def wrap_tools(runner: Runner, where: Path, scripts: dict[str, str]) -> Runner:
    """The runner with ``where`` first on PATH, holding sh scripts that stand for tools."""
    where.mkdir()
    shell = shutil.which("sh") if runner[0][0] == "sh" else runner[0][0]
    for name, body in scripts.items():
        (where / name).write_text(f"#!{shell}\n{body}")
        (where / name).chmod(0o755)
    env = dict(runner[1])
    env["PATH"] = f"{where}{os.pathsep}{env['PATH']}"
    return runner[0], env


# A dd without iflag=skip_bytes,count_bytes (BusyBox before 1.33, other old dds): the fetch
# script falls back to dd's lseek plus head. "{fail}" is where a failing read goes.
_DD_WITHOUT_BYTE_FLAGS = """case " $* " in
*" iflag="*)
    echo "dd: invalid input flag" >&2
    exit 1
    ;;
esac
{fail}exec {dd} "$@"
"""


@pytest.fixture(params=["dd-bytes", "dd-seek-head"])
def dd_kind(request: pytest.FixtureRequest) -> str:
    """Which way the fetch script reads a range: one dd that counts bytes, or (with a dd that
    lacks those flags) a dd that seeks and a head that reads."""
    return str(request.param)


def with_dd(runner: Runner, dd_kind: str, fail: str = "") -> dict[str, str]:
    """Tool scripts for wrap_tools: a dd of the kind asked for, failing as ``fail`` says."""
    dd = real_tool(runner, "dd")
    if dd_kind == "dd-bytes":
        return {"dd": f'{fail}exec {dd} "$@"\n'} if fail else {}
    return {"dd": _DD_WITHOUT_BYTE_FLAGS.format(fail=fail, dd=dd)}


def test_local_fetch_beyond_4_gib(toolset: Runner, dd_kind: str, tmp_path: Path) -> None:
    """BusyBox's tail -c +N reads N as 32 bits: offsets from 4 GiB on must still work (a
    sparse file, so nothing is written but the few marked bytes)."""
    root = tmp_path / "root"
    root.mkdir()
    far = 5 * 2**30 + 12345
    marks = {2**31 - 1: b"AB", 2**32 - 5: b"ACROSS-4GiB\n", far: b"line far away\n"}
    with open(root / "huge.jsonl", "wb") as fh:
        for offset, data in marks.items():
            fh.seek(offset)
            fh.write(data)
    size = far + 14
    assert (root / "huge.jsonl").stat().st_size == size
    cases = [
        (FetchRequest(b"huge.jsonl", 2**31 - 1, 2), ("End", b"AB")),  # the last small offset
        (FetchRequest(b"huge.jsonl", 2**31, 1), ("End", b"B")),  # the first one in blocks
        (FetchRequest(b"huge.jsonl", 2**32 - 5, 12), ("End", b"ACROSS-4GiB\n")),
        (FetchRequest(b"huge.jsonl", 2**32, 3), ("End", b"S-4")),  # a whole number of blocks
        (FetchRequest(b"huge.jsonl", far - 2, 16), ("End", b"\x00\x00line far away\n")),
        (FetchRequest(b"huge.jsonl", far + 5, 100), ("Short", b"far away\n")),
        (FetchRequest(b"huge.jsonl", far + 5, 9, detect_growth=True), ("End", b"far away\n")),
        (FetchRequest(b"huge.jsonl", far + 5, 4, detect_growth=True), ("Changed", b"far ")),
        (FetchRequest(b"huge.jsonl", size, 5), ("Short", b"")),  # at the end
        (FetchRequest(b"huge.jsonl", size + 2**33, 5), ("Short", b"")),  # far beyond it
    ]
    requests = [request for request, _ in cases]
    runner = wrap_tools(toolset, tmp_path / "ddbin", with_dd(toolset, dd_kind))
    got = run_fetch(runner, root, requests)
    assert [got[i] for i in range(len(cases))] == [outcome for _, outcome in cases]


# Fails like a disk with a bad sector for the files under root/ named broken*: a few bytes,
# then an I/O error. The reader (dd or head) reads the file open on its stdin, so that is how
# it finds the name; a dd that only seeks (count=0) reads nothing and does not fail.
_FAILING_READ = """case $({readlink} /proc/$$/fd/0):" $* " in
*/root/broken*:*" count=0 "*) ;;
*/root/broken*)
    {head} -c 3
    echo "{tool}: error reading 'standard input': Input/output error" >&2
    exit 1
    ;;
esac
"""


def test_local_fetch_reports_a_failed_read(toolset: Runner, dd_kind: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "broken.json").write_bytes(b"0123456789")
    (root / "broken.jsonl").write_bytes(b"x" * 100_000)
    (root / "fine").write_bytes(b"fine data\n")
    readlink, head = real_tool(toolset, "readlink"), real_tool(toolset, "head")
    tools = with_dd(
        toolset, dd_kind, fail=_FAILING_READ.format(readlink=readlink, head=head, tool="dd")
    )
    tools["head"] = _FAILING_READ.format(readlink=readlink, head=head, tool="head")
    tools["head"] += f'exec {head} "$@"\n'
    runner = wrap_tools(toolset, tmp_path / "failbin", tools)
    requests = [
        FetchRequest(b"broken.json", 0, 10),
        FetchRequest(b"fine", 0, 10),
        FetchRequest(b"broken.jsonl", 70_000, 30_000),  # an append: one read, after a seek
        FetchRequest(b"fine", 5, 5, detect_growth=True),
        FetchRequest(b"broken.json", 0, 10, archive=True),  # a range where tar is missing
        FetchRequest(b"broken.jsonl", 1, 99_000),  # longer than one read: after a seek, head
    ]
    marker = new_marker()
    rc, out, err = run_local(runner, fetch_argv(str(root)), fetch_stdin(requests, marker))
    assert rc == 0, err
    events = feed_frames(FrameParser("h", marker.encode(), requests), out, range(0, len(out), 7))
    check_data_bounds(events, requests)
    got = collect(events)
    has_tar = has_tool(runner, "tar")
    assert [got[i] for i in range(len(requests))] == [
        ("Failed", b"012"),
        ("End", b"fine data\n"),
        ("Failed", b"xxx"),
        ("End", b"data\n"),
        ("End", b"0123456789") if has_tar else ("Failed", b"012"),
        ("Failed", b"xxx"),
    ]
    # The reader's own message, kept; it names the reader the script chose: dd, but for the
    # long range where dd cannot seek and read at once.
    by_head = 1 if dd_kind == "dd-seek-head" else 0
    assert err.count(b"head: error reading") == by_head
    assert err.count(b"dd: error reading") == 4 - has_tar - by_head


def test_local_fetch_of_files_that_grew_or_shrank(toolset: Runner, tmp_path: Path) -> None:
    """A whole file listed at one size: with detect_growth a longer file is Changed (not a
    cut-off End), a shorter one Short; without it (appends) a longer one is End."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "sessions.json").write_bytes(b'{"a": 1, "b": 22}')  # listed at 8 bytes
    (root / "empty.lock").write_bytes(b"")
    requests = [
        FetchRequest(b"sessions.json", 0, 8, detect_growth=True),
        FetchRequest(b"sessions.json", 0, 17, detect_growth=True),
        FetchRequest(b"sessions.json", 0, 30, detect_growth=True),
        FetchRequest(b"sessions.json", 0, 8),
        FetchRequest(b"sessions.json", 0, 30),
        FetchRequest(b"empty.lock", 0, 0, detect_growth=True),  # an empty file: 0 bytes
        FetchRequest(b"sessions.json", 0, 0, detect_growth=True),  # listed empty, now not
    ]
    got = run_fetch(toolset, root, requests)
    assert [got[i] for i in range(len(requests))] == [
        ("Changed", b'{"a": 1,'),
        ("End", b'{"a": 1, "b": 22}'),
        ("Short", b'{"a": 1, "b": 22}'),
        ("End", b'{"a": 1,'),
        ("Short", b'{"a": 1, "b": 22}'),
        ("End", b""),
        ("Changed", b""),
    ]
    with pytest.raises(ValueError):
        FetchRequest(b"sessions.json", 0, 0)  # a range of nothing is a bug


def test_local_listing_ignores_files_vanishing_mid_listing(toolset: Runner, tmp_path: Path) -> None:
    """Temporary files and directories come and go while find walks the tree (an agent's
    atomic saves): never a warning (that would make the round fail and skip deletions)."""
    root = tmp_path / "root"
    (root / "keep").mkdir(parents=True)
    kept = {b"keep/f%d.jsonl" % i for i in range(60)}
    for name in kept:
        (root / os.fsdecode(name)).write_bytes(b"x\n")
    stop = threading.Event()

    def churn() -> None:
        turn = 0
        while not stop.is_set():
            temp = root / f"tmpdir{turn % 3}"
            (temp / "sub").mkdir(parents=True, exist_ok=True)
            for k in range(5):
                (temp / "sub" / f"t{k}").write_bytes(b"t")
                (root / "keep" / f"save{k}.tmp").write_bytes(b"t")
            for k in range(5):
                os.unlink(root / "keep" / f"save{k}.tmp")
            shutil.rmtree(temp)
            turn += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(12):
            rc, out, err = run_local(toolset, listing_argv(str(root), ["."]))
            assert (rc, err) == (0, b"")
            assert kept <= set(parse_listing(out))
    finally:
        stop.set()
        thread.join()


def test_local_listing_drops_vanished_paths_but_keeps_real_errors(
    toolset: Runner, tmp_path: Path
) -> None:
    """find's and stat's messages, made up by wrappers (as root nothing is unreadable): one
    saying a path vanished (ENOENT) is dropped, any other stays. The wrapped find refuses
    -printf, so GNU tools take the stat path too."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "present").mkdir()
    for name in ("a.jsonl", "gone.vanish", "locked.noperm", "back.vanish"):
        (root / "present" / name).write_bytes(b"data\n")
    messages = tmp_path / "find-messages"
    real_lines = [
        b"find: ./locked: Permission denied",
        b"find: ./a dir: Input/output error",
        b"find: ./odd: No such file or directory, or so",
    ]
    vanished_lines = [
        b"find: ./gone dir: No such file or directory",  # BusyBox: the name as it is
        b"find: './gone too/x': No such file or directory",  # GNU: quoted
        b"find: './it\\'s': No such file or directory",
    ]
    messages.write_bytes(
        b"\n".join([*vanished_lines[:1], *real_lines, *vanished_lines[1:]]) + b"\n"
    )
    find = f"""for a do
    [ "$a" = -printf ] && exit 1
done
{real_tool(toolset, "cat")} {shlex.quote(str(messages))} >&2
exec {real_tool(toolset, "find")} "$@"
"""
    # The path is stat's last argument. "gone" vanishes just before stat looks at it; "back"
    # too, and is created again right after (a fixed temporary name saved anew).
    stat_ = f"""for f do :; done
case $f in
*gone.vanish) {real_tool(toolset, "rm")} -f -- "$f" ;;
*back.vanish)
    {real_tool(toolset, "rm")} -f -- "$f"
    {real_tool(toolset, "stat")} "$@"
    : >"$f"
    exit 1
    ;;
*.noperm)
    echo "stat: can't stat '$f': Permission denied" >&2
    exit 1
    ;;
esac
exec {real_tool(toolset, "stat")} "$@"
"""
    runner = wrap_tools(toolset, tmp_path / "wrappers", {"find": find, "stat": stat_})
    rc, out, err = run_local(runner, listing_argv(str(root), ["."]))
    assert rc == 0
    assert set(parse_listing(out)) == {b"present/a.jsonl"}
    assert err.splitlines() == [
        *real_lines,
        b"stat: can't stat './present/locked.noperm': Permission denied",
    ]


# ----------------------------------------------------------------------------- real sshd


def endpoint(fleet: SSHFleet, name: str) -> Endpoint:
    return Endpoint(
        address=fleet.host(name).alias,
        ssh_config=(str(fleet.ssh_config),),
        known_hosts=str(fleet.known_hosts),
    )


async def remote_run(
    pool: SSHPool,
    ep: Endpoint,
    argv: list[str],
    feed: ListingParser | FrameParser,
    stdin: bytes | None = None,
) -> tuple[list[object], bytes]:
    items: list[object] = []
    async with exec_streaming(pool, ep, argv, host="h0", stdin=stdin) as stream:
        async for chunk in stream:
            items += feed.feed(chunk)
    closed = feed.close()
    items += closed or []
    assert stream.exit_status == 0
    return items, stream.stderr_tail


@pytest.mark.parametrize("tools", ["gnu", "busybox"])
async def test_listing_and_fetch_over_ssh(
    ssh_fleet: Callable[..., SSHFleet], tools: str, request: pytest.FixtureRequest
) -> None:
    fleet = ssh_fleet(1)
    prefix: list[str] = []
    if tools == "busybox":
        busybox = request.getfixturevalue("busybox")
        bindir = applet_dir(busybox, fleet.root / "bb", ("tar",))
        login_home = pwd.getpwnam(fleet.user).pw_dir
        prefix = [busybox, "env", "-i", f"PATH={bindir}", f"HOME={login_home}"]
    files: dict[bytes, bytes] = {}
    for i, name in enumerate(HOSTILE_NAMES):
        data = content(name, i)
        fleet.write("h0", "root/" + os.fsdecode(name), data)
        files[name] = data
    big = os.urandom(2 * 1024 * 1024 + 3)
    fleet.write("h0", "root/big", big)
    fleet.write("h0", "root/secret.jsonl", b"top secret", mode=0o000)
    fleet.write("h0", "root/locked/hidden.jsonl", b"hidden")
    fleet.write("h0", "root/doomed.jsonl", b"soon gone")
    fleet.write("h0", "outside/secret.txt", b"outside")
    fleet.write("h0", "outside/dir/inner.jsonl", b"outside too")
    root = fleet.path("h0", "root")
    os.symlink(fleet.path("h0", "outside/secret.txt"), root / "link-to-file")
    os.symlink(fleet.path("h0", "outside/dir"), root / "link-to-dir")
    os.chmod(root / "locked", 0)
    home = Path(pwd.getpwnam(fleet.user).pw_dir)
    ep = endpoint(fleet, "h0")

    async with SSHPool() as pool:
        items, stderr = await remote_run(
            pool, ep, [*prefix, *listing_argv(str(root), ["."])], ListingParser("h0")
        )
        listed = {f.path: f for f in items if isinstance(f, RemoteFile)}
        expected = walk_regular(root, skip=[b"locked/"])
        assert set(listed) == set(expected)
        for path, f in listed.items():
            st_ = expected[path]
            assert (f.size, f.dev, f.ino) == (st_.st_size, st_.st_dev, st_.st_ino), path
            if tools == "gnu":
                assert abs(f.mtime - st_.st_mtime) < 1e-3
            else:
                assert f.mtime == int(st_.st_mtime)
        assert b"locked" in stderr and b"ermission denied" in stderr  # a warning, exit 0
        for pwned in (root / "pwned", home / "pwned", fleet.path("h0", "pwned")):
            assert not pwned.exists()

        with pytest.raises(RemoteCommandError) as info:
            await remote_run(
                pool, ep, [*prefix, *listing_argv(str(root / "nope"), ["."])], ListingParser("h")
            )
        assert info.value.exit_status == 3
        assert b"cannot enter the root directory" in info.value.stderr_tail

        os.unlink(root / "doomed.jsonl")
        requests: list[FetchRequest] = []
        wanted: list[tuple[str, bytes]] = []
        for i, (path, data) in enumerate(sorted(files.items())):
            start = 0 if i % 2 else len(data) // 3
            requests.append(FetchRequest(path, start, len(data) - start))
            wanted.append(("End", data[start:]))
            if i % 3 == 0:  # the same whole file through the batch's tar
                requests.append(FetchRequest(path, 0, len(data), archive=True))
                wanted.append(("End", data))
        requests += [
            FetchRequest(b"big", 0, len(big), archive=True),
            FetchRequest(b"secret.jsonl", 0, 10, archive=True),
            FetchRequest(b"link-to-file", 0, 7, archive=True),
            FetchRequest(b"big", 0, len(big)),
            FetchRequest(b"big", 12345, len(big)),
            FetchRequest(b"big", 1000, 1000),  # a range inside the file: dd seeks, head reads
            FetchRequest(b"secret.jsonl", 0, 10),
            FetchRequest(b"doomed.jsonl", 0, 9),
            FetchRequest(b"link-to-file", 0, 7),
            FetchRequest(b"link-to-dir/inner.jsonl", 0, 5),
        ]
        wanted += [
            ("End", big),
            ("Denied", b""),
            ("Gone", b""),
            ("End", big),
            ("Short", big[12345:]),
            ("End", big[1000:2000]),
            ("Denied", b""),
            ("Gone", b""),
            ("Gone", b""),
            ("Gone", b""),
        ]
        for in_argv in (False, True):
            marker = new_marker()
            argv = fetch_argv(str(root), marker if in_argv else None)
            stdin = fetch_stdin(requests, None if in_argv else marker)
            parser = FrameParser("h0", marker.encode(), requests)
            events, stderr = await remote_run(pool, ep, [*prefix, *argv], parser, stdin)
            got = collect(events)  # type: ignore[arg-type]
            assert [got[i] for i in range(len(requests))] == wanted
            assert stderr == b""

        # The round: one command lists, waits for the requests the client sends once it has
        # read the listing, and fetches them.
        marker = new_marker()
        async with exec_streaming(
            pool,
            ep,
            [*prefix, *round_argv(str(root), ["."])],
            host="h0",
            stdin=fetch_stdin([], marker),
            keep_stdin_open=True,
        ) as stream:
            lister = ListingParser("h0", trailer=True)
            seen: list[RemoteFile] = []
            async for chunk in stream:
                seen += lister.feed(chunk)
                if lister.end is not None:
                    break
            assert lister.end == (0, True)  # the locked directory: a warning
            assert {f.path for f in seen} == set(listed) - {b"doomed.jsonl"}
            stream.send(round_fetch_stdin(requests), end=True)
            parser = FrameParser("h0", marker.encode(), requests)
            events = parser.feed(lister.rest)
            async for chunk in stream:
                events += parser.feed(chunk)
            events += parser.close()
        assert stream.exit_status == 0
        with pytest.raises(RuntimeError):
            stream.send(b"more")  # stdin closed with the command
        got = collect(events)
        assert [got[i] for i in range(len(requests))] == wanted
        messages, found, after = stream.stderr_tail.partition(listing_end_marker(marker))
        assert found and b"locked" in messages and after == b""
        for pwned in (root / "pwned", home / "pwned"):
            assert not pwned.exists()


def _until_blocked_writing(pid: int, timeout: float = 60) -> None:
    """Wait until ``pid`` or a process below it sleeps in a write to a full pipe (its kernel
    wait channel). A sleep of a fixed length may end before that on a loaded machine, and
    a change made then tests nothing; the bytes the pipe holds do not tell, as a writer
    blocks once its pages are taken, however full each is."""
    started = time.monotonic()
    deadline = started + timeout
    shown = False  # a kernel may hide wait channels ("0", as for a process running)
    while True:
        tree, channels = [pid], []
        while tree:
            below = tree.pop()
            with contextlib.suppress(OSError):
                channels.append(Path(f"/proc/{below}/wchan").read_text())
                tree += map(int, Path(f"/proc/{below}/task/{below}/children").read_text().split())
        if any(channel.endswith("pipe_write") for channel in channels):
            return
        shown = shown or any(channel != "0" for channel in channels)
        if not shown and time.monotonic() - started > 2:
            return  # hidden: the fixed wait this replaced, and more
        assert time.monotonic() < deadline, f"none blocked writing: {channels}"
        time.sleep(0.005)


def _paused_fetch(
    root: Path, transfers: list[Transfer], change: Callable[[], None], env: dict[str, str]
) -> list[FrameEvent]:
    """Run the real fetch script locally with a reader that does not read (a closed SSH
    window) until ``change`` was made on the host; return the events."""
    requests = [t.request() for t in transfers]
    marker = new_marker()
    proc = subprocess.Popen(
        fetch_argv(str(root)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(fetch_stdin(requests, marker))
    proc.stdin.close()
    _until_blocked_writing(proc.pid)  # the host's reader: the pipe is full
    change()
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    parser = FrameParser("h", marker.encode(), requests)
    return parser.feed(out) + parser.close()


def _received(events: Sequence[FrameEvent], index: int) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, Data) and e.index == index)


@pytest.mark.parametrize("path", ["offset above 2 GiB", "dd without byte counts"])
def test_a_small_range_read_after_a_seek_is_one_read(path: str, tmp_path: Path) -> None:
    """An unchecked range (at most 64 KiB) is one read() on every path of the script, also
    where dd seeks and something else reads (offsets above 2**31, BusyBox before 1.33): a
    file rewritten in place while the reader waits gives its old bytes or its new ones,
    never both."""
    root = tmp_path / "root"
    root.mkdir()
    offset = 2**31 + 4096 if path == "offset above 2 GiB" else 1 << 20
    length = 40_000
    old, new = os.urandom(length), os.urandom(length)
    (root / "first.jsonl").write_bytes(os.urandom(53248))  # fills the pipe nearly full
    with open(root / "s.jsonl", "wb") as f:
        f.truncate(offset)  # sparse below the range
        f.seek(offset)
        f.write(old)
    env = dict(os.environ)
    if path == "dd without byte counts":
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "dd").write_text(
            "#!/bin/sh\nfor a do case $a in iflag=*) exit 1 ;; esac; done\n"
            f'exec {shutil.which("dd")} "$@"\n'
        )
        (fake / "dd").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"

    def row(path: bytes, size: int, ino: int) -> FileState:
        return FileState("h", path, "append", size, size, 1.0, 1, ino, b"")

    transfers = [
        Transfer(RemoteFile(b"first.jsonl", 53248, 2.0, 1, 3), "append", "append", "grown", 0,
                 53248, row(b"first.jsonl", 0, 3)),
        Transfer(RemoteFile(b"s.jsonl", offset + length, 2.0, 1, 2), "append", "append",
                 "grown", offset, length, row(b"s.jsonl", offset, 2)),
    ]  # fmt: skip
    assert not transfers[1].request().check

    def change() -> None:
        with open(root / "s.jsonl", "r+b") as f:
            f.seek(offset)
            f.write(new)

    events = _paused_fetch(root, transfers, change, env)
    assert _received(events, 1) in (old, new)


def test_a_small_tar_entry_that_may_straddle_two_records_comes_as_a_range(
    tmp_path: Path,
) -> None:
    """GNU tar reads a file up to the end of its 10 KiB record, then writes the record (and
    waits while the window is closed): a file of 513 to 1023 bytes, too small to check, whose two
    blocks lie in two records would be read twice. Such a file is asked for as a range."""
    if shutil.which("tar") is None:
        pytest.skip("no tar")

    def lines(tag: bytes, size: int) -> bytes:
        out = b"".join(b'{"t":"%s","i":%d,"pad":"%s"}\n' % (tag, i, b"y" * 40) for i in range(30))
        return out[: size - 1] + b"\n"

    root = tmp_path / "root"
    root.mkdir()
    old, new = lines(b"old", 900), lines(b"NEW", 900)
    filler = b"".join(lines(b"f%d" % i, 512) for i in range(137))  # small's data: blocks 139-140
    (root / "filler.jsonl").write_bytes(filler)
    (root / "small.jsonl").write_bytes(old)
    transfers = [
        Transfer(RemoteFile(b"filler.jsonl", len(filler), 1.0, 1, 1), "append", "whole", "new",
                 0, len(filler), None),
        Transfer(RemoteFile(b"small.jsonl", 900, 1.0, 1, 2), "append", "whole", "new", 0, 900,
                 None),
    ]  # fmt: skip
    assert [t.request().archive for t in transfers] == [True, False]
    for length, archive in ((512, True), (513, False), (1023, False), (1024, True)):
        t = Transfer(RemoteFile(b"x", length, 1.0, 1, 2), "append", "whole", "new", 0, length, None)
        assert t.request().archive == archive

    def change() -> None:
        with open(root / "small.jsonl", "r+b") as f:
            f.write(new)

    events = _paused_fetch(root, transfers, change, dict(os.environ))
    assert _received(events, 1) in (old, new)


def test_the_paths_find_could_not_read_are_taken_from_its_messages() -> None:
    """GNU find (C locale) quotes a path and escapes it as C does, BusyBox find writes it
    raw; either names it under the root's "./". Other lines stay as text."""
    messages = (
        b"find: './a/sessions': Permission denied\n"
        b"find: './it\\'s \\303\\251\\n\\\\x': Permission denied\n"
        b"find: ./raw: name\r: Permission denied\n"
        b"remote-sync: start point ./l is a symbolic link to a directory: skipped\n"
    )
    unread, other = listing_module.unread_paths(messages)
    assert unread == [
        (b"a/sessions", "Permission denied"),
        (b"it's \xc3\xa9\n\\x", "Permission denied"),
        (b"raw: name\r", "Permission denied"),
    ]
    assert other == ["remote-sync: start point ./l is a symbolic link to a directory: skipped"]
    assert listing_module.unread_paths(b"") == ([], [])


def test_a_message_cut_by_the_kept_tail_is_not_read_as_a_path() -> None:
    """A stream keeps its stderr's last 8 KiB: with a hundred unreadable directories the first
    line kept began mid-message ("ons': Permission denied") and came out as another reason
    the listing was incomplete, and nothing said the first directories were not named."""
    line = b"find: './agents/a%03d/sessions': Permission denied\n"
    messages = b"".join(line % i for i in range(200))
    kept = messages[-STDERR_TAIL_BYTES:]
    unread, other = listing_module.unread_paths(kept)
    assert other == [listing_module._EARLIER_NOT_KEPT]
    assert unread[-1] == (b"agents/a199/sessions", "Permission denied")
    assert len(unread) == kept.count(b"\n") - 1  # every whole message kept, none cut


# ----------------------------------------------------------------------------- told tools

#: The probes a round makes of its host's tools (see round_argv's ``tools``), as the logging
#: tool scripts below see their arguments. (A find that lists through stat is also asked
#: whether it knows "-exec ... {} +", every time: only BusyBox builds take that way.)
_TOOL_PROBES = (
    "-maxdepth 0 -ignore_readdir_race",
    "-maxdepth 0 -printf",
    "iflag=skip_bytes,count_bytes bs=1 count=0",
    "-q -c 1 /dev/null",
)


def logging_tools(runner: Runner, where: Path, log: Path) -> Runner:
    """The runner with find, dd and head that write their arguments to ``log``, then run."""
    return wrap_tools(
        runner,
        where,
        {name: f'echo "$*" >> {log}\nexec {real_tool(runner, name)} "$@"\n' for name in _TOOLS},
    )


_TOOLS = ("find", "dd", "head")


def told_round(
    runner: Runner, root: Path, requests: list[FetchRequest], tools: str
) -> tuple[int, ListingParser, list[FrameEvent], bytes]:
    """A round of ``root`` told ``tools``: (rc, its listing's parser, the frame events, stderr)."""
    marker = new_marker()
    stdin = fetch_stdin([], marker) + round_fetch_stdin(requests)
    rc, out, err = run_local(runner, round_argv(str(root), ["."], tools=tools), stdin)
    parser = ListingParser("h", trailer=True)
    parser.feed(out)
    parser.close()
    events = feed_frames(FrameParser("h", marker.encode(), requests), parser.rest, [])
    return rc, parser, events, err


def _a_transcript_and_logged_tools(
    toolset: Runner, tmp_path: Path
) -> tuple[Path, bytes, Path, Runner, list[FetchRequest]]:
    """A root holding one transcript, ``toolset`` with find, dd and head logging each start
    to a file, and a request for the transcript's bytes past 3,000, its head checked with
    its batch."""
    root = tmp_path / "root"
    root.mkdir()
    data = b"".join(b'{"n":%d}\n' % i for i in range(600))
    (root / "s.jsonl").write_bytes(data)
    log = tmp_path / "tools.log"
    runner = logging_tools(toolset, tmp_path / "bin", log)
    requests = [FetchRequest(b"s.jsonl", 3000, len(data) - 3000, check_batched=True)]
    return root, data, log, runner, requests


@pytest.mark.parametrize("toolset", ["gnu", "busybox"], indirect=True)
def test_local_round_told_its_tools_probes_none(toolset: Runner, tmp_path: Path) -> None:
    """A round probes find, dd and head and says what it found on its end line; told that, the
    next round starts none of those probes (three processes a round), and reads the same."""
    root, data, log, runner, requests = _a_transcript_and_logged_tools(toolset, tmp_path)
    seen = []
    for _ in range(2):
        log.write_text("")
        told = seen[0][0] if seen else PROBE_TOOLS  # first asked, then what it said
        rc, parser, events, err = told_round(runner, root, requests, told)
        assert rc == 0 and parser.end == (0, False), err
        probes = [p for p in _TOOL_PROBES if p in log.read_text()]
        frames = collect([e for e in events if not isinstance(e, HeadDigest)])
        seen.append((parser.tools, probes, frames[0], events[-1]))
    (found, probed, frame, digest), (again, none, frame_again, digest_again) = seen
    assert re.fullmatch("[prs][ny][ny]", found) and again == found
    assert probed and none == []
    assert frame == frame_again == ("End", data[3000:])
    assert isinstance(digest, HeadDigest) and digest_again == digest


@pytest.mark.parametrize("toolset", ["gnu", "busybox"], indirect=True)
def test_local_fetch_told_the_rounds_tools_probes_none(toolset: Runner, tmp_path: Path) -> None:
    """A fetch of its own (a round's follow-up) told what the round found of dd and head
    starts neither's probe, and reads what a fetch that probes them reads."""
    root, data, log, runner, requests = _a_transcript_and_logged_tools(toolset, tmp_path)
    found = told_round(runner, root, [], PROBE_TOOLS)[1].tools
    assert re.fullmatch("[prs][ny][ny]", found)
    read = []
    for tools in ("", found):
        log.write_text("")
        marker = new_marker()
        argv = fetch_argv(str(root), tools=tools)
        rc, out, err = run_local(runner, argv, fetch_stdin(requests, marker))
        assert rc == 0, err
        read.append(feed_frames(FrameParser("h", marker.encode(), requests), out, []))
        probes = [p for p in _TOOL_PROBES[2:] if p in log.read_text()]
        assert bool(probes) == (tools == ""), (tools, probes)
    assert read[0] == read[1]
    assert collect([e for e in read[1] if not isinstance(e, HeadDigest)])[0] == ("End", data[3000:])
    with pytest.raises(ValueError, match="bad tools word"):
        fetch_argv(str(root), tools=PROBE_TOOLS)  # a fetch reports nothing: it cannot probe


def test_local_round_told_wrong_tools_fails_safe(tmp_path: Path) -> None:
    """Tools that changed since the round that found them: a find without those options gives
    an incomplete listing (said, no deletions), a dd without the byte flags a failed read, never
    wrong bytes taken for good ones."""
    root = tmp_path / "root"
    root.mkdir()
    data = b"".join(b'{"n":%d}\n' % i for i in range(600))
    (root / "s.jsonl").write_bytes(data)
    gnu: Runner = (["sh"], {"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    old_find = (
        'case " $* " in *" -ignore_readdir_race "* | *" -printf "*)\n'
        '    echo "find: unknown predicate" >&2; exit 1 ;;\nesac\n'
        f'exec {real_tool(gnu, "find")} "$@"\n'
    )
    runner = wrap_tools(gnu, tmp_path / "find", {"find": old_find})
    rc, parser, _events, err = told_round(runner, root, [], "ryy")
    assert rc == 0 and parser.end == (0, True) and parser.count == 0
    assert b"unknown predicate" in err
    runner = wrap_tools(gnu, tmp_path / "dd", with_dd(gnu, "dd-seek-head"))
    request = FetchRequest(b"s.jsonl", 3000, len(data) - 3000, check_batched=True)
    rc, parser, events, err = told_round(runner, root, [request], "ryy")
    assert (
        rc == 0
        and parser.end == (0, False)
        and collect([e for e in events if not isinstance(e, HeadDigest)])[0] == ("Failed", b"")
    )
    for asked, said in ((PROBE_TOOLS, "rny"), ("", "")):  # probed: read well
        rc, parser, events, err = told_round(runner, root, [request], asked)
        assert parser.tools == said
        assert collect([e for e in events if not isinstance(e, HeadDigest)])[0] == (
            "End",
            data[3000:],
        )


@pytest.mark.parametrize("toolset", ["gnu", "busybox"], indirect=True)
def test_local_round_not_asked_for_its_tools_probes_dd_and_head_only_to_read(
    toolset: Runner, tmp_path: Path
) -> None:
    """A round whose caller keeps no answer (a sync in a process of its own) probes dd and head
    only in a batch that reads, as before the tools word: one that fetches nothing starts
    neither, and its end line says no tools."""
    root = tmp_path / "root"
    root.mkdir()
    data = b"".join(b'{"n":%d}\n' % i for i in range(600))
    (root / "s.jsonl").write_bytes(data)
    log = tmp_path / "tools.log"
    runner = logging_tools(toolset, tmp_path / "bin", log)
    rc, parser, events, err = told_round(runner, root, [], "")
    assert rc == 0 and parser.end == (0, False) and parser.tools == "" and events == [], err
    assert not any(p in log.read_text() for p in _TOOL_PROBES[2:])
    log.write_text("")
    request = FetchRequest(b"s.jsonl", 3000, len(data) - 3000, check_batched=True)
    rc, parser, events, err = told_round(runner, root, [request], "")
    assert rc == 0 and parser.tools == ""
    assert collect([e for e in events if not isinstance(e, HeadDigest)])[0] == (
        "End",
        data[3000:],
    )
    assert all(p in log.read_text() for p in _TOOL_PROBES[2:])


def test_a_script_runs_in_the_shell_that_reports_its_pid(tmp_path: Path) -> None:
    """The command sshd gets starts sh once for a script: it runs where the pid was reported."""
    real_sh = shutil.which("sh")
    assert real_sh is not None
    log = tmp_path / "starts"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").write_text(f'#!{real_sh}\necho start >> {log}\nexec {real_sh} "$@"\n')
    (tmp_path / "bin" / "sh").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    argv = sh_script('printf "%s %s %s" "$$" "$0" "$1"; exit 3', "a 'b\\")
    done = subprocess.run(
        [real_sh, "-c", wrapped_command(argv)], capture_output=True, env=env, check=False
    )
    assert done.returncode == 3 and log.read_text() == "start\n"
    pid, name, arg = done.stdout.decode().split(" ", 2)
    assert (name, arg) == ("sh", "a 'b\\")
    assert done.stderr == b"remote-sync-pid " + pid.encode() + b"\n"


@pytest.mark.parametrize(
    "check",
    [
        {"check_batched": True},  # head_digest, the batch's digest of its appends' heads
        {"check": True},  # opened_digest of the head, from the reader's descriptor
        {"check_whole": True},  # opened_digest of the whole file
    ],
)
def test_a_digest_line_ends_with_its_newline_whatever_the_hasher_prints(
    tmp_path: Path, check: dict[str, bool]
) -> None:
    """A hasher whose output holds a backslash sequence (``\\c``, which ends dash's echo
    and its line there): the K line holds the hasher's word whole and still ends with its
    newline, so the frame after it starts a line of its own and no marker is found inside a
    line. Each of the batch script's three kinds of digest."""
    home = tmp_path / "home"
    home.mkdir()
    runner = wrap_tools(
        (["sh"], {"PATH": os.environ["PATH"], "HOME": str(home)}),
        tmp_path / "tools",
        {"md5sum": "cat >/dev/null\nprintf '%s  -\\n' '0123\\c'\n"},
    )
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.jsonl").write_bytes(b"x" * 4999 + b"\n")
    requests = [FetchRequest(b"d/a.jsonl", 4000, 1000, **check)]
    marker = new_marker()
    argv = fetch_argv(str(root), per_batch=4)
    rc, out, err = run_local(runner, argv, fetch_stdin(requests, marker))
    assert rc == 0, err
    lines = out.split(b"\n")
    assert any(line.startswith(marker.encode() + b" K md5:0123\\c") for line in lines), out
    assert not any(marker.encode() in line[1:] for line in lines), out
