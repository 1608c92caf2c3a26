"""The archive frame of a fetch: a tar stream read by FrameParser through ArchiveReader.

- Property tests: GNU and pax archives of hostile names and contents give the same events
  however the output is cut into chunks, with files that grew, shrank or were skipped.
- A tar stopped at any byte (then the end marker, then the next batch's frames): no byte after
  the cut is taken for data, every deferred request ends, the next frames still parse.
- Entries that are not regular files, unknown entries, pax and base-256 fields, garbage.
- GNU tar's NUL padding after a failed or short read: such an entry is never End.
The real scripts (GNU tar, BusyBox tar, no tar) run in ``test_remote_ops.py``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_remote_ops import END, MB, Merged, check_data_bounds, feed_frames, merge

from remote_sync.errors import ProtocolError, TooMuchOutputError
from remote_sync.mirror import fetch_frames
from remote_sync.mirror.archive import BLOCK, parse_header
from remote_sync.mirror.durable import discard
from remote_sync.mirror.fetch_events import Begin, Data, End, FrameEvent, Short
from remote_sync.mirror.fetch_frames import FetchRequest, FrameParser
from remote_sync.mirror.fetch_script import fetch_stdin
from remote_sync.mirror.state import FileState, MirrorState
from remote_sync.mirror.writer import WholeWriter

Entry = tuple[bytes, bytes]  # (path, content)


def tar_bytes(
    entries: Sequence[Entry], fmt: int = tarfile.GNU_FORMAT, *, record: bool = False
) -> bytes:
    """An archive of regular files named ``./<path>``, as ``tar -cf - ./<path>...`` writes it."""
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for path, data in entries:
            info = tarfile.TarInfo("./" + path.decode("utf-8", "surrogateescape"))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        end = archive.offset
    # tarfile pads the archive to 10 KiB records like GNU tar; BusyBox tar does not.
    return out.getvalue() if record else out.getvalue()[: end + 2 * BLOCK]


def run(stream: bytes, requests: Sequence[FetchRequest], cuts: Sequence[int] = ()) -> list[Merged]:
    events = feed_frames(FrameParser("h", MB, requests), stream, cuts)
    check_data_bounds(events, requests)
    return merge(events)


# ----------------------------------------------------------------------------- properties

_names = st.one_of(
    st.sampled_from(
        [b"a.jsonl", b"new\nline", b"\xff\xfe.jsonl", b"sp ace/$(x)", b"-rf", b"agents/a/s/x"]
    ),
    # long enough for a GNU long name or a pax path (and for ustar's prefix field)
    st.integers(90, 300).map(lambda n: b"d/" + b"n" * n),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b and b"/" not in b),
).filter(lambda b: b not in (b".", b".."))

# Contents full of near-misses: marker prefixes, marker lines, NULs, tar magic.
_contents = (
    st.lists(
        st.one_of(
            st.binary(max_size=700),
            st.sampled_from([b"\n", MB[:7], MB + b" E", MB + b" A\n", b"ustar\x00", bytes(512)]),
        ),
        max_size=5,
    )
    .map(b"".join)
    .filter(lambda d: END not in d)
)  # the marker is secret: no file holds it

# How each deferred request relates to its entry: exact, the file grew since the listing (we
# asked for less), it shrank (we asked for more), or tar skipped it.
_fates = st.sampled_from(["exact", "grew", "shrank", "skipped"])


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(st.tuples(_names, _contents, _fates), max_size=6, unique_by=lambda f: f[0]),
    pax=st.booleans(),
    record=st.booleans(),
    cuts=st.lists(st.integers(0, 20000), max_size=10),
)
def test_archive_frame_is_independent_of_chunking(
    files: list[tuple[bytes, bytes, str]], pax: bool, record: bool, cuts: list[int]
) -> None:
    requests = [FetchRequest(b"before", 3, 4)]
    stream = [MB + b" B\n", b"abcd", END]
    expected: list[Merged] = [("Begin", 0), ("data", 0, b"abcd"), ("End", 0)]
    entries: list[Entry] = []
    skipped: list[Merged] = []  # reported when a later entry shows tar passed them, or at the end
    for path, data, fate in files:
        index = len(requests)
        length = {"grew": len(data) - 3, "shrank": len(data) + 5}.get(fate, len(data))
        length = max(1, length)
        requests.append(FetchRequest(path, 0, length, archive=True))
        stream.append(MB + b" T\n")
        if fate == "skipped":
            skipped.append(("Short", index, 0))
            continue
        entries.append((path, data))
        got = data[:length]
        expected += [*skipped, ("Begin", index)]
        skipped = []
        if got:
            expected.append(("data", index, got))
        # A NUL last byte is what GNU tar's padding after a failed read looks like: Short.
        complete = len(got) == length and not got.endswith(b"\x00")
        expected.append(("End", index) if complete else ("Short", index, len(got)))
    expected += skipped
    if files:
        tar = tar_bytes(entries, tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT, record=record)
        stream += [MB + b" A\n", tar, END]
    requests.append(FetchRequest(b"after", 0, 2))
    stream += [MB + b" B\n", b"xy", END]
    expected += [("Begin", len(requests) - 1), ("data", len(requests) - 1, b"xy")]
    expected.append(("End", len(requests) - 1))
    whole = b"".join(stream)
    assert run(whole, requests) == expected
    assert run(whole, requests, [c for c in cuts if c < len(whole)]) == expected


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(st.tuples(_names, _contents), min_size=1, max_size=5, unique_by=lambda f: f[0]),
    pax=st.booleans(),
    data=st.data(),
)
def test_a_tar_stopped_anywhere_loses_no_frame_and_invents_no_byte(
    files: list[Entry], pax: bool, data: st.DataObject
) -> None:
    tar = tar_bytes(files, tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT)
    cut = data.draw(st.integers(0, len(tar)))
    requests = [FetchRequest(path, 0, max(1, len(body)), archive=True) for path, body in files]
    after = len(requests)
    requests.append(FetchRequest(b"next batch", 0, 3))
    stream = b"".join(
        [MB + b" T\n"] * len(files) + [MB + b" A\n", tar[:cut], END, MB + b" B\n", b"xyz", END]
    )
    chunking = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    events = feed_frames(FrameParser("h", MB, requests), stream, chunking)
    check_data_bounds(events, requests)
    got: dict[int, bytearray] = {}
    ends: dict[int, FrameEvent] = {}
    for event in events:
        if isinstance(event, Begin):
            got[event.index] = bytearray()
        elif isinstance(event, Data):
            got[event.index] += event.data
        else:
            assert event.index not in ends, "a request answered twice"
            ends[event.index] = event
    assert set(ends) == set(range(len(requests)))
    for index, (_path, body) in enumerate(files):
        received = bytes(got.get(index, b""))
        assert body.startswith(received)  # only true bytes, in order
        if isinstance(ends[index], End):
            assert received == body and body
        else:
            assert isinstance(ends[index], Short)
            assert ends[index].received == len(received)  # type: ignore[union-attr]
    assert bytes(got[after]) == b"xyz" and isinstance(ends[after], End)
    if cut == len(tar):
        whole = [i for i, (_p, body) in enumerate(files) if body and body[-1] != 0]
        assert all(isinstance(ends[i], End) for i in whole)


# ----------------------------------------------------------------------------- entries


def test_entries_that_are_not_regular_files_or_not_asked_for() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, kind, target in [
            ("./link", tarfile.SYMTYPE, "/etc/passwd"),
            ("./hard", tarfile.LNKTYPE, "./first"),
            ("./dir", tarfile.DIRTYPE, ""),
            ("./not-asked", tarfile.REGTYPE, ""),
            ("./ok", tarfile.REGTYPE, ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            body = b"x" * 700 if name != "./ok" else b"fine\n"
            if kind == tarfile.REGTYPE:
                info.size = len(body)
            archive.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)
    names = [b"link", b"hard", b"dir", b"ok"]
    requests = [FetchRequest(n, 0, 5, archive=True) for n in names]
    stream = b"".join(MB + b" T\n" for _ in names)
    stream += MB + b" A\n" + out.getvalue() + END
    assert run(stream, requests) == [
        ("Short", 0, 0),
        ("Short", 1, 0),
        ("Short", 2, 0),
        ("Begin", 3),
        ("data", 3, b"fine\n"),
        ("End", 3),
    ]


def test_pax_size_and_sparse_records_and_base256_sizes() -> None:
    def pax_entry(name: str, size: int, records: dict[str, str], body: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.pax_headers = records
        return info.tobuf(tarfile.PAX_FORMAT) + body + bytes(-len(body) % BLOCK)

    body = b"0123456789"
    # The pax size wins over the ustar field (which tar sets to 0 beyond 8 GiB).
    with_size = pax_entry("./sized", 0, {"size": str(len(body))}, body)
    sparse = pax_entry("./sparse", len(body), {"GNU.sparse.major": "1"}, body)
    requests = [
        FetchRequest(b"sized", 0, 10, archive=True),
        FetchRequest(b"sparse", 0, 10, archive=True),
    ]
    stream = MB + b" T\n" + MB + b" T\n" + MB + b" A\n" + with_size + sparse + bytes(1024) + END
    assert run(stream, requests) == [
        ("Begin", 0),
        ("data", 0, body),
        ("End", 0),
        ("Short", 1, 0),
    ]
    # GNU base-256 size field
    header = bytearray(tarfile.TarInfo("./big").tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (9 << 30).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    assert parse_header(bytes(header)) == (b"./big", 9 << 30, ord("0"))
    header[0] ^= 1  # a wrong checksum
    assert parse_header(bytes(header)) is None


@settings(max_examples=200, deadline=None)
@given(
    length=st.one_of(st.integers(0, 10**30).map(b"%d".__mod__), st.just(b"9" * 5000)),
    key=st.sampled_from([b"size", b"path", b"other"]),
    value=st.one_of(st.binary(max_size=30), st.just(b"9" * 5000)),
)
def test_any_pax_record_reads_as_an_entry_or_a_short_one(
    length: bytes, key: bytes, value: bytes
) -> None:
    """A lying tar's pax header, numbers of thousands of digits included (int() refuses more
    than 4300: that was an internal error), never gives more than the requested bytes,
    and the entry after it is read, or Short (fetched again with head)."""
    meta = b"%s %s=%s\n" % (length, key, value)
    info = tarfile.TarInfo("././@PaxHeader")
    info.size = len(meta)
    info.type = tarfile.XHDTYPE
    body = b"0123456789"
    entry = tarfile.TarInfo("./a")
    entry.size = len(body)
    tar = info.tobuf(tarfile.USTAR_FORMAT) + meta + bytes(-len(meta) % BLOCK)
    tar += entry.tobuf(tarfile.USTAR_FORMAT) + body + bytes(BLOCK - len(body)) + bytes(1024)
    requests = [FetchRequest(b"a", 0, 10, archive=True)]
    try:
        events = run(MB + b" T\n" + MB + b" A\n" + tar + END, requests)
    except ProtocolError:
        return  # a size that runs past the end marker: said, naming the host
    assert events[-1] in (("End", 0), ("Short", 0, 0), ("Short", 0, 10))


@pytest.mark.parametrize(
    ("tail", "what"),
    [
        (b"not a tar header at all" * 40 + END, "malformed tar header"),
        (bytes(1024) + b"garbage after the trailer" * 30 + END, "after the end of the archive"),
    ],
)
def test_garbage_in_an_archive_frame_is_an_error_naming_the_host(tail: bytes, what: str) -> None:
    requests = [FetchRequest(b"odd\nname", 0, 4, archive=True)]
    parser = FrameParser("kitchen", MB, requests)
    with pytest.raises(ProtocolError) as info:
        parser.feed(MB + b" T\n" + MB + b" A\n" + tail)
        parser.close()
    assert what in info.value.message and info.value.host == "kitchen"


def test_archive_frame_misuse_and_truncation_are_errors() -> None:
    ranged = [FetchRequest(b"r", 0, 4)]
    with pytest.raises(ProtocolError, match="deferred to an archive"):
        FrameParser("h", MB, ranged).feed(MB + b" T\n")
    with pytest.raises(ProtocolError, match="no request deferred"):
        FrameParser("h", MB, ranged).feed(MB + b" A\n")
    asked = [FetchRequest(b"a", 0, 4, archive=True)]
    for stream in (MB + b" T\n", MB + b" T\n" + MB + b" A\n" + tar_bytes([(b"a", b"abcd")])):
        parser = FrameParser("h", MB, asked)
        parser.feed(stream)
        with pytest.raises(ProtocolError, match="ended") as info:
            parser.close()
        assert info.value.path == "a"
    with pytest.raises(ValueError):
        FetchRequest(b"a", 5, 4, archive=True)
    assert fetch_stdin(asked + ranged) == b"a:4:a\x00" + b"0+0:4:r\x00"


def test_short_and_end_are_the_only_outcomes_of_deferred_requests() -> None:
    # A tar with more data than asked (the file grew): the rest is skipped, not delivered.
    body = b"line\n" * 300
    requests = [FetchRequest(b"g", 0, 7, archive=True), FetchRequest(b"h", 0, 3, archive=True)]
    stream = MB + b" T\n" + MB + b" T\n"
    stream += MB + b" A\n" + tar_bytes([(b"g", body), (b"h", b"abc")], record=True) + END
    events = FrameParser("h", MB, requests).feed(stream)
    assert merge(events) == [
        ("Begin", 0),
        ("data", 0, body[:7]),
        ("End", 0),
        ("Begin", 1),
        ("data", 1, b"abc"),
        ("End", 1),
    ]
    assert not any(isinstance(e, Short) for e in events)


def test_gnu_tar_padding_after_a_failed_or_short_read_is_not_trusted() -> None:
    """GNU tar does not stop when a read fails (EIO) or a file shrinks under it: it pads the
    entry with NULs to the size it announced and exits 2 or 1, which nobody sees. An entry
    whose delivered bytes end with a NUL is Short (fetched again with head); padding beyond the
    requested length does not matter (the bytes delivered are real); the next entries are
    unaffected."""
    lines = b'{"n":1}\n' * 100
    entries = [
        (b"eio.jsonl", lines[:512] + bytes(len(lines) - 512)),  # failed at byte 512
        (b"zero.jsonl", bytes(300)),  # failed at once
        (b"ok.jsonl", lines),
        (b"late.jsonl", lines[:600] + bytes(200)),  # failed beyond what we asked for
    ]
    requests = [
        FetchRequest(b"eio.jsonl", 0, len(lines), archive=True),
        FetchRequest(b"zero.jsonl", 0, 300, archive=True),
        FetchRequest(b"ok.jsonl", 0, len(lines), archive=True),
        FetchRequest(b"late.jsonl", 0, 600, archive=True),
    ]
    stream = b"".join([MB + b" T\n"] * 4) + MB + b" A\n" + tar_bytes(entries) + END
    assert run(stream, requests, range(0, len(stream), 100)) == [
        ("Begin", 0),
        ("data", 0, entries[0][1]),
        ("Short", 0, len(lines)),
        ("Begin", 1),
        ("data", 1, bytes(300)),
        ("Short", 1, 300),
        ("Begin", 2),
        ("data", 2, lines),
        ("End", 2),
        ("Begin", 3),
        ("data", 3, lines[:600]),
        ("End", 3),
    ]


# ----------------------------------------------------------------------------- the budget

# Paths as deep and long as a host may have them (PATH_MAX, 4 KiB; NAME_MAX, 255 a part):
# GNU long names and pax headers of every size.
_deep_names = st.lists(st.integers(1, 255), min_size=1, max_size=16).map(
    lambda parts: b"/".join(b"%c" % (97 + n % 26) * n for n in parts)[:4000].rstrip(b"/")
)


# The patched slack is the same for every example.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(
        st.tuples(_deep_names, st.integers(0, 3000)),
        min_size=1,
        max_size=5,
        unique_by=lambda f: f[0],
    ),
    pax=st.booleans(),
    checked=st.booleans(),
    extra=st.sampled_from(["none", "fits", "one block too many"]),
    data=st.data(),
)
def test_zero_blocks_after_an_archive_are_refused_past_the_budget(
    monkeypatch: pytest.MonkeyPatch,
    files: list[tuple[bytes, int]],
    pax: bool,
    checked: bool,
    extra: str,
    data: st.DataObject,
) -> None:
    """An archive as tar writes it (long names, pax headers, padding to tar's 10 KiB record,
    the digest line of its checked entries) fits in under 20 KiB a request beyond its bytes,
    as FETCH_ITEM_SLACK's comment says; a tar that goes on sending zero blocks after the
    archive's end is read up to the budget and refused one block past it, however the
    output is cut, where it used to be read for ever."""
    monkeypatch.setattr(fetch_frames, "FETCH_ITEM_SLACK", 20 * 1024)
    monkeypatch.setattr(fetch_frames, "FETCH_GROWTH_SLACK", 0)
    entries = [(path, b"x" * (size - 1) + b"\n" if size else b"") for path, size in files]
    requests = [
        FetchRequest(path, 0, max(1, len(body)), archive=True, check=checked)
        for path, body in entries
    ]
    tar = tar_bytes(entries, tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT, record=True)
    digest = MB + b" K md5:" + b"0" * 32 + b" 18446744073709551615" * len(entries) + b"\n"
    after = END + (digest if checked else b"")
    head = (MB + b" T\n") * len(entries) + MB + b" A\n" + tar
    budget = fetch_frames.fetch_budget(requests)
    room = budget - len(head) - len(after)
    assert room >= 0
    blocks = {"none": 0, "fits": room // BLOCK, "one block too many": room // BLOCK + 1}[extra]
    stream = head + bytes(BLOCK * blocks) + after
    chunking = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    parser = FrameParser("kitchen", MB, requests)
    if extra == "one block too many":
        with pytest.raises(TooMuchOutputError) as raised:
            feed_frames(parser, stream, chunking)
        assert raised.value.host == "kitchen" and str(budget) in raised.value.message
        return
    events = feed_frames(parser, stream, chunking)
    ends = [e for e in events if isinstance(e, (End, Short))]
    assert [e.index for e in ends] == list(range(len(entries)))


@pytest.mark.parametrize("where", ["unasked entry", "range past its length"])
def test_more_than_asked_is_refused_naming_the_host_and_the_file(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An entry nobody asked for is read past, and a range's bytes past its length are
    not data: either, of any size, ends at the budget, naming the file being read."""
    monkeypatch.setattr(fetch_frames, "FETCH_GROWTH_SLACK", 0)
    if where == "unasked entry":
        requests = [FetchRequest(b"asked.jsonl", 0, 10, archive=True)]
        tar = tar_bytes([(b"other", bytes(1 << 20)), (b"asked.jsonl", b"123456789\n")])
        stream = MB + b" T\n" + MB + b" A\n" + tar + END
    else:
        requests = [FetchRequest(b"r.jsonl", 0, 10)]
        # Long enough that no end line is found where the parser looks for one first.
        stream = MB + b" B\n" + bytes(1 << 20) + END
    parser = FrameParser("kitchen", MB, requests)
    assert parser.budget == 10 + fetch_frames.FETCH_ITEM_SLACK
    with pytest.raises(ProtocolError) as raised:
        for at in range(0, len(stream), 16384):
            parser.feed(stream[at : at + 16384])
    assert raised.value.host == "kitchen"
    assert raised.value.path == ("asked.jsonl" if where == "unasked entry" else "r.jsonl")
    if where == "unasked entry":  # the parser alone would have read past it
        assert isinstance(raised.value, TooMuchOutputError)


# ----------------------------------------------------------------------------- the writer


def test_nul_padding_of_a_file_that_shrank_under_tar_is_never_committed(tmp_path: Path) -> None:
    """GNU tar pads a file that shrank while it read it with NULs up to the size it announced.
    Only line-committed files come through tar, and the writer commits them up to their last
    newline: the padding (no newline in it) never reaches the mirror."""
    lines = b'{"type":"message","n":1}\n{"type":"message","n":2}\n'
    with MirrorState(tmp_path / "dest") as state:
        state.recover()  # as a sync does before its rounds: makes the temp directory
        row = FileState("h", b"agents/a/sessions/s.jsonl", "append", 0, 200, 1.0, 1, 7, b"")
        writer = WholeWriter(state, row, lines_only=True, category="new")
        writer.write(lines + b'{"type":"mess')  # the file was cut mid-line by a rewrite...
        writer.write(memoryview(bytes(200 - len(lines) - 13)))  # ...and tar padded it
        pending = writer.finish()
        assert pending.bytes == len(lines) and pending.row.size == len(lines)
        assert os.pread(pending.fd, len(lines) + 1, 0) == lines
        discard([pending])  # what a failed flush does with finished files
