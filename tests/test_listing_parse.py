"""The listing parser's records against a model of the record format, hostile paths included,
and the quick path its ordinary records take (see ``remote_sync.mirror.listing``)."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from remote_sync.errors import ProtocolError
from remote_sync.mirror import listing as listing_module
from remote_sync.mirror.listing import ListingParser, RemoteFile, path_problem

# Paths made of the bytes that matter to the checks: slashes and dots make empty, "." and
# ".." parts and hidden names, "\n" and "L" look like a stat line's end and the end line.
_path = st.binary(max_size=14).map(
    lambda b: bytes(b"a./\nL \xff"[byte % 7] for byte in b)
) | st.sampled_from([b"", b".", b"..", b"./", b"/x", b"a/", b".a/..b", b"a/.b/c", b"a//b"])
_good_line = st.tuples(
    st.integers(0, 2**40), st.integers(0, 2**33), st.integers(0, 2**32), st.integers(0, 2**40)
).map(lambda t: b"%d %d.%010d %d %d" % (t[0], t[1], t[0] % 10**10, t[2], t[3]))
_bad_line = st.sampled_from([b"", b"1 2 3", b"x 2 3 4", b"1 2.x 3 4", b"1  2 3 4", b"1 2 3 4\r"])
_record = st.tuples(st.one_of(_good_line, _good_line, _good_line, _bad_line), st.booleans(), _path)


def _model(line: bytes, listed: bytes) -> RemoteFile | str:
    """What one record is, by the format's rules: a file, or the error it is."""
    fields = line.split(b" ")
    if len(fields) != 4 or not all(
        f and all(48 <= c <= 57 for c in f.replace(b".", b"", 1 if n == 1 else 0))
        for n, f in enumerate(fields)
    ):
        return "malformed listing record"
    if fields[1].startswith(b".") or fields[1].endswith(b"."):
        return "malformed listing record"
    name = listed.removeprefix(b"./")
    if not name or name.startswith(b"/") or {b"", b".", b".."} & set(name.split(b"/")):
        return "unsafe path"
    size, mtime, dev, ino = fields
    return RemoteFile(name, int(size), float(mtime), int(dev), int(ino))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_record, max_size=8), cuts=st.lists(st.integers(0, 400), max_size=6))
@example(records=[(b"1 2 3 4", True, b"a/./b")], cuts=[]).via("a '.' part")
@example(records=[(b"1 2 3 4", False, b"a/..")], cuts=[]).via("a '..' part")
@example(records=[(b"1 2 3 4", True, b"./x")], cuts=[]).via("'./' twice")
def test_the_parser_takes_each_record_as_the_model_does(
    records: list[tuple[bytes, bool, bytes]], cuts: list[int]
) -> None:
    """Every record is a file or the first error, as the model says, whatever the chunks and
    whether the listing came compressed; nothing after a bad record is taken."""
    listed = [(line, (b"./" if dot else b"") + path) for line, dot, path in records]
    stream = b"".join(line + b"\n" + path + b"\x00" for line, path in listed)
    said = [_model(line, path) for line, path in listed]
    error = next((s for s in said if isinstance(s, str)), None)
    good = [s for s in said[: said.index(error) if error else None] if not isinstance(s, str)]
    for sent in (stream, gzip.compress(stream, compresslevel=1)):
        parser = ListingParser("h")
        got: list[RemoteFile] = []
        last = 0
        try:
            for cut in [*sorted(c for c in set(cuts) if c < len(sent)), len(sent)]:
                got += parser.feed(sent[last:cut])
                last = cut
            parser.close()
        except ProtocolError as exc:
            assert error is not None and error in exc.message, (exc.message, said)
            assert got == good[: len(got)]
        else:
            assert error is None, said
            assert got == good


def test_path_problem_takes_ordinary_paths_at_a_glance_and_splits_the_rest() -> None:
    """A round parses every listed file every round: a path with no empty part and no part
    that starts with a dot is safe at a glance; one with such a part is split, where a
    hidden name is fine and an empty, "." or ".." part is not."""
    for fine in (b"agents/a-1/sessions/s1.jsonl", b"agents/.trash/x.jsonl", b".x", b"a/..b"):
        assert path_problem(fine) is None, fine
    for bad in (b"", b"/a", b"a//b", b"a/", b".", b"..", b"a/./b", b"a/../b", b"a/..", b"a\x00b"):
        assert path_problem(bad) is not None, bad
    with pytest.raises(ProtocolError, match="unsafe path"):
        ListingParser("h").feed(b"7 1700000000 64768 99\n./agents/../x\x00")


def test_a_long_record_sent_in_small_pieces_is_matched_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record is whole only once its NUL has come: a piece without one adds to the record
    left over and is not matched again, else a host sending a long path a few bytes at a time
    made the parser scan it once per piece (seconds of CPU for each 64 KiB record)."""
    scanned: list[int] = []
    real = listing_module._RECORD

    class Counting:
        def match(self, buf: bytes, pos: int) -> object:
            scanned.append(len(buf) - pos)
            return real.match(buf, pos)

    monkeypatch.setattr(listing_module, "_RECORD", Counting())
    record = b"5 1700000000.5 64768 7\n./" + b"d/" * 20_000 + b"s.jsonl\x00"
    parser = ListingParser("h")
    got: list[RemoteFile] = []
    for at in range(0, len(record), 256):
        got += parser.feed(memoryview(record)[at : at + 256])
    parser.close()
    assert [f.path for f in got] == [record[25:-1]]
    assert sum(scanned) < 3 * len(record), sum(scanned)
