"""A transcript truncated and rewritten in place *while it is being read* (OpenClaw's
overwrite of a transcript on every turn, a copy-truncate): the host's reader goes on at its
offset in the new content, so the bytes read are the old head and the new tail. The host
hashes the head once the read is over; the client holds the file until that digest agrees,
so a spliced copy is never committed: the file is fetched whole again instead.

The read is paused deterministically: small SSH windows, and a client that rewrites the file
on the host when the first bytes of it arrive, before it takes any more (the host's reader is
then blocked by the window, far from the end of the file)."""

from __future__ import annotations

import gc
import os
import random
import shutil
from pathlib import Path

import anyio
import pytest
from sshfleet import SSHFleet
from synchelp import big_session, expected_tree, mirror_tree, write_inventory

from remote_sync.errors import MirrorError
from remote_sync.events import ErrorEvent, Summary
from remote_sync.inventory import load_inventory
from remote_sync.mirror import commits, engine, frames
from remote_sync.mirror import fleet as fleet_run
from remote_sync.mirror.durable import Pending, discard
from remote_sync.mirror.fetch_events import Data
from remote_sync.ssh.pool import PoolSettings

REL = "agents/a/sessions/s.jsonl"
SMALL_WINDOWS = PoolSettings(
    window=256 * 1024, window_budget=256 * 1024, min_window=256 * 1024, window_rate=0
)


def run_sync(inv: Path, dest: Path) -> Summary:
    hosts = load_inventory(inv).hosts
    options = engine.SyncOptions(dest=dest, pool=SMALL_WINDOWS)
    return anyio.run(lambda: fleet_run.sync_fleet(hosts, options, lambda _event: None))


def rewrite_on_first_data(
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    new: bytearray,
    times: int = 1,
    *,
    rel: str = REL,
    by_rename: bool = False,
) -> list[int]:
    """When the first bytes of ``rel`` arrive, rewrite it on the host in place (same inode),
    or with ``by_rename`` replace it by a renamed new file (as agents save their JSON
    indexes), in the first ``times`` fetches of it; returns the list the rewrites are counted
    in."""
    real = frames.FrameHandler.handle
    rewrites: list[int] = []
    seen: list[frames.FrameHandler] = []  # kept alive: a freed handler's id() is reused

    async def handle(self: frames.FrameHandler, event: object) -> None:
        if (
            len(rewrites) < times
            and isinstance(event, Data)
            and not any(handler is self for handler in seen)
            and self.transfers[event.index].remote.path == rel.encode()
        ):
            seen.append(self)
            new[:1] = b"{" if len(rewrites) % 2 else b" "  # each rewrite another head
            if by_rename:
                path.with_name(path.name + ".tmp").write_bytes(new)
                path.with_name(path.name + ".tmp").replace(path)
            else:
                # Overwritten from its start, then cut to the new length: the same rewrite as
                # a truncate and a write, without the instant in which the file is shorter
                # than the reader's offset (the reader would see its end there: a short read,
                # not a splice).
                rewrite(path, bytes(new))
            rewrites.append(len(new))
        await real(self, event)

    monkeypatch.setattr(frames.FrameHandler, "handle", handle)
    return rewrites


def other_session(size: int, seed: int) -> bytes:
    """Other content of about ``size`` bytes, with its own first line."""
    rng = random.Random(seed)
    header = b'{"type":"session","id":"%08x"}\n' % rng.getrandbits(32)
    return header + big_session(size)


@pytest.mark.parametrize("how", ["new file (tar)", "append (dd)"])
def test_a_file_rewritten_in_place_while_read_is_never_committed_spliced(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    first = other_session(1024 * 1024, 1)
    path = fleet.write("h0", REL, first)
    if how == "append (dd)":
        assert run_sync(inv, dest).exit_code == 0
        with open(path, "ab") as f:  # a grown file: an append read by dd
            f.write(big_session(6 * 1024 * 1024))
    else:  # a new file of 7 MiB: read by tar
        path.write_bytes(first + big_session(6 * 1024 * 1024))
    new = bytearray(other_session(8 * 1024 * 1024, 2))
    rewrites = rewrite_on_first_data(monkeypatch, path, new)
    summary = run_sync(inv, dest)
    assert len(rewrites) == 1
    assert summary.exit_code == 0, summary
    mirrored = (dest / "h0" / REL).read_bytes()
    assert mirrored == new  # fetched whole again, not the old head with the new tail
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))
    kept = dest / ".remote-sync/versions/h0" / f"{REL}.v1"
    if how == "append (dd)":
        assert kept.read_bytes() == first  # the copy as it was committed, nothing of the read
        assert summary.files.rewritten == 1
    else:
        assert not kept.exists()
        assert summary.files.new == 1


INDEX_REL = "agents/a/sessions/sessions.json"


def sessions_index(size: int, seed: int) -> bytes:
    """A pretty-printed JSON index of exactly ``size`` bytes (copied whole, not by lines)."""
    rng = random.Random(seed)
    body = b"{\n" + b"".join(
        b'  "agent:a:%08x": {"sessionId": "%032x", "updatedAt": %d},\n'
        % (rng.getrandbits(32), rng.getrandbits(128), rng.getrandbits(40))
        for _ in range(size // 90 + 1)
    )
    return body[: size - 2] + b"}\n"


@pytest.mark.parametrize("how", ["in place", "by rename"])
def test_a_file_copied_whole_is_never_committed_spliced(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A JSON index (copied whole: no overlap, no line ends to check) rewritten *in place to
    the same size* while it is read would come as its old start and its new end. The host
    hashes the whole file after the read, from a descriptor opened with the reader's: in
    place, that differs from the bytes read, and the file is fetched again. Replaced by a
    rename (how agents save such files), the descriptor still holds the copy that was read,
    which is consistent: it is committed as read, and the next run fetches the new file."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    size = 3 * 1024 * 1024
    old = sessions_index(size, 1)
    path = fleet.write("h0", INDEX_REL, old)
    new = bytearray(sessions_index(size, 2))
    rewrites = rewrite_on_first_data(
        monkeypatch, path, new, rel=INDEX_REL, by_rename=how == "by rename"
    )
    summary = run_sync(inv, dest)
    assert len(rewrites) == 1 and len(new) == size
    assert summary.exit_code == 0, summary
    mirrored = (dest / "h0" / INDEX_REL).read_bytes()
    if how == "in place":
        assert mirrored == new  # fetched again, not the old start with the new end
    else:
        assert mirrored == old  # the file that was open, whole; nothing fetched twice
        monkeypatch.undo()
        assert run_sync(inv, dest).exit_code == 0
        assert (dest / "h0" / INDEX_REL).read_bytes() == new
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))


def test_a_file_copied_whole_that_keeps_growing_is_taken_as_read(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file copied whole that grows by appends all the while (a log): its whole-file md5
    covers bytes appended after the read, so it differs, and the file is read again to its
    end; that second read is taken as read (a prefix of the file), not failed as changed."""
    rel = "agents/a/sessions/events.log"
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    path = fleet.write("h0", rel, b"event\n" * 50_000)
    path.chmod(0o666)
    tools = fleet.root / "growing-md5sum"
    tools.mkdir()
    (tools / "md5sum").write_text(  # the log grows just before every hash
        f"#!/bin/sh\nprintf 'event\\n' >> {path}\nexec {shutil.which('md5sum')} \"$@\"\n"
    )
    (tools / "md5sum").chmod(0o755)
    for name in ("round_argv", "fetch_argv"):  # the round's command, then the follow-up's
        real = getattr(engine, name)
        monkeypatch.setattr(
            engine,
            name,
            lambda *args, real=real, **kwargs: [
                "env",
                f"PATH={tools}:/usr/bin:/bin",
                *real(*args, **kwargs),
            ],
        )
    summary = run_sync(inv, dest)
    assert summary.exit_code == 0, summary
    mirrored = (dest / "h0" / rel).read_bytes()
    assert len(mirrored) > 300_000 and path.read_bytes().startswith(mirrored)


def test_a_file_rewritten_during_every_read_fails_alone_and_the_next_run_gets_it(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewritten in place again while the follow-up reads it whole: that file fails this run
    (exit 1, named), its mirrored copy as it was; the next run fetches it."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    first = other_session(1024 * 1024, 1)
    path = fleet.write("h0", REL, first)
    fleet.write("h0", "agents/a/sessions/other.jsonl", other_session(100 * 1024, 3))
    assert run_sync(inv, dest).exit_code == 0
    with open(path, "ab") as f:
        f.write(big_session(6 * 1024 * 1024))
    new = bytearray(other_session(8 * 1024 * 1024, 2))
    rewrites = rewrite_on_first_data(monkeypatch, path, new, times=2)
    errors: list[ErrorEvent] = []
    hosts = load_inventory(inv).hosts
    options = engine.SyncOptions(dest=dest, pool=SMALL_WINDOWS)

    def keep(event: object) -> None:
        if isinstance(event, ErrorEvent):
            errors.append(event)

    summary = anyio.run(lambda: fleet_run.sync_fleet(hosts, options, keep))
    assert len(rewrites) == 2
    assert summary.exit_code == 1 and summary.files.failed == 1
    (error,) = errors
    assert (error.host, error.path) == ("h0", REL) and "changed again" in error.message
    assert (dest / "h0" / REL).read_bytes() == first
    monkeypatch.undo()
    assert run_sync(inv, dest).exit_code == 0
    assert mirror_tree(dest, "h0") == expected_tree(fleet.path("h0"))


def rewrite(path: Path, new: bytes) -> None:
    with open(path, "r+b") as f:  # same inode, never shorter than a reader's offset
        f.write(new)
        f.truncate(len(new))


def test_a_file_listed_small_is_checked_when_the_follow_up_reads_it(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follow-up exists because a file changed since the listing: its listed size says
    nothing of its read, so the follow-up checks every transcript. A file listed at 50 KiB,
    rewritten to 2 MiB after the listing and again during the follow-up's read, is never
    committed spliced: it fails this run, its copy as it was."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    first = other_session(40 * 1024, 1)
    path = fleet.write("h0", REL, first)
    assert run_sync(inv, dest).exit_code == 0
    with open(path, "ab") as f:
        f.write(big_session(10 * 1024))  # listed at about 50 KiB: an unchecked append
    real_plan = engine.make_plan

    def plan_then_rewrite(*args: object, **kwargs: object) -> object:
        plan = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        rewrite(path, other_session(2 * 1024 * 1024, 2))
        return plan

    monkeypatch.setattr(engine, "make_plan", plan_then_rewrite)
    rewrites = rewrite_on_first_data(
        monkeypatch, path, bytearray(other_session(2 * 1024 * 1024, 3)), times=2
    )
    summary = run_sync(inv, dest)
    assert len(rewrites) == 2  # the first fetch's overlap mismatch, then the follow-up
    assert summary.exit_code == 1 and summary.files.failed == 1
    assert (dest / "h0" / REL).read_bytes() == first


def test_a_small_file_appended_to_after_the_follow_up_read_is_not_a_rewrite(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follow-up read of fewer bytes than a head is one read, never spliced: the copy is
    committed even when the agent appends before the host hashes the head."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    path = fleet.write("h0", REL, big_session(100 * 1024))
    path.chmod(0o666)
    assert run_sync(inv, dest).exit_code == 0
    with open(path, "ab") as f:
        f.write(big_session(100 * 1024))
    reset = b'{"type":"session","id":"new"}\n' + b'{"type":"message","text":"hi"}\n' * 15
    real_plan = engine.make_plan

    def plan_then_reset(*args: object, **kwargs: object) -> object:
        plan = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        rewrite(path, reset)  # reset in place after the listing: smaller than a KiB
        return plan

    monkeypatch.setattr(engine, "make_plan", plan_then_reset)
    tools = fleet.root / "appending-head"
    tools.mkdir()
    (tools / "head").write_text(  # the agent appends just before the host hashes the head
        "#!/bin/sh\n"
        'if [ "$1" = -q ]; then\n'
        "    for last do :; done\n"
        '    printf \'{"type":"message","text":"appended"}\\n\' >> "$last"\n'
        "fi\n"
        f'exec {shutil.which("head")} "$@"\n'
    )
    (tools / "head").chmod(0o755)
    real_fetch_argv = engine.fetch_argv
    monkeypatch.setattr(
        engine,
        "fetch_argv",
        lambda root, *args, **kwargs: [
            "env",
            f"PATH={tools}:/usr/bin:/bin",
            *real_fetch_argv(root, *args, **kwargs),
        ],
    )
    summary = run_sync(inv, dest)
    assert summary.exit_code == 0, summary
    mirrored = (dest / "h0" / REL).read_bytes()
    assert mirrored == reset and path.read_bytes().startswith(reset)


def test_held_files_are_given_up_when_a_flush_fails(
    fleet: SSHFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that fails while held files are being committed: the files not yet committed
    are given up too, no temp file or descriptor left behind."""
    inv = write_inventory(fleet, tmp_path / "inventory.toml", ["h0"])
    dest = tmp_path / "m"
    for i in range(6):  # six new transcripts of 4 KiB: one archive, all checked
        fleet.write("h0", f"agents/a/sessions/s{i}.jsonl", big_session(4096))
    monkeypatch.setattr(engine, "FLUSH_SECONDS", 0.0)  # every finished file starts a flush

    def failing(state: object, items: list[Pending], numbers: object) -> object:
        discard(items)  # as the real one does when a sync fails
        raise MirrorError("cannot make 1 fetched files durable: Input/output error")

    monkeypatch.setattr(commits, "make_durable", failing)
    summary = run_sync(inv, dest)
    assert summary.exit_code == 1
    assert list((dest / ".remote-sync" / "tmp").iterdir()) == []
    gc.collect()
    fds = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
    targets = [os.readlink(fd) for fd in fds if os.path.exists(fd)]  # less listdir's own
    assert not [p for p in targets if "/.remote-sync/tmp/" in p]
