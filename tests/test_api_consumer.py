"""A small UI built on the async library API, against real sshd hosts (the fleet's h0 and h1),
one that refuses connections and one that hangs in its handshake.

What a UI relies on: the rows come in small batches as hosts send them, each host's progress
events end with ``done`` however the host ended (an error event first when it failed or was
cancelled), a cancel through the registry stops a listing (remote or of the mirror) or a sync
in the middle, or a listing before it began, and leaves no transfer registered and the mirror
consistent, a short connect timeout bounds a hung host, and a host that fails costs the
others nothing.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
from synchelp import make_openclaw_tree
from test_index_worker import assert_index_is_a_rebuild, assert_state_matches_disk
from test_sessions_remote_concurrent import inventory, silent_host

from remote_sync import api
from remote_sync.cancel import CancelRegistry
from remote_sync.errors import HostUnreachableError, TransferCancelledError
from remote_sync.events import ErrorEvent, HostDone, Progress
from remote_sync.index.query import SessionRow
from remote_sync.inventory import Host
from remote_sync.ssh.pool import PoolSettings

REFUSED = '[[hosts]]\nname = "refused"\naddress = "127.0.0.1"\nport = 9\nroot = "/srv"\n\n'


class UI:
    """What a UI keeps from the events: each host's last progress phase and its errors."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    def phase(self, host: str) -> str | None:
        phases = [e.phase for e in self.events if isinstance(e, Progress) and e.host == host]
        return phases[-1] if phases else None

    def errors(self, host: str) -> list[str]:
        return [e.kind for e in self.events if isinstance(e, ErrorEvent) and e.host == host]


def keys(rows: list[SessionRow]) -> set[tuple[str, str]]:
    return {(row.host, row.path) for row in rows}


async def listing_cancelled_once_the_live_hosts_gave_their_rows(
    hosts: list[Host], ui: UI, registry: CancelRegistry, live_rows: int
) -> tuple[list[SessionRow], list[Any], BaseException | None]:
    rows: list[SessionRow] = []
    errors: list[Any] = []
    stream = api.stream_sessions(
        remote=True,
        hosts=hosts,
        batch_size=2,
        emit=ui.emit,
        registry=registry,
        transfer_id="listing",
        errors=errors,
    )
    try:
        async with aclosing(stream) as batches:
            async for batch in batches:
                assert 0 < len(batch) <= 2 and len({row.host for row in batch}) == 1
                rows.extend(batch)
                if len(rows) == live_rows:  # the hung host still in its handshake
                    assert registry.cancel("listing")
    except TransferCancelledError as exc:
        return rows, errors, exc
    return rows, errors, None


def test_a_ui_follows_listings_and_syncs_through_failures_hangs_and_cancels(
    fleet: Any, tmp_path: Path
) -> None:
    for name in ("h0", "h1"):
        make_openclaw_tree(fleet, name, agents=2, sessions=5)
    live_rows = 20
    with silent_host() as (_listener, mute):
        hosts = inventory(fleet, tmp_path, ["h0", "h1"], first=REFUSED + mute)
        assert [h.name for h in hosts] == ["refused", "mute", "h0", "h1"]
        dest = tmp_path / "mirror"
        registry = CancelRegistry()

        async def run() -> None:
            # A remote listing, cancelled in the middle: the hung host has not answered.
            ui = UI()
            rows, errors, raised = await listing_cancelled_once_the_live_hosts_gave_their_rows(
                hosts, ui, registry, live_rows
            )
            assert raised is not None and raised.host is None, raised  # the listing's cancel
            assert len(rows) == live_rows and {r.host for r in rows} == {"h0", "h1"}
            assert [type(e) for e in errors] == [HostUnreachableError]
            assert registry.active() == []
            assert ui.errors("refused") == ["unreachable"] and ui.errors("mute") == ["cancelled"]
            for host in hosts:  # no host left "listing" or "fetching"
                assert ui.phase(host.name) == "done", (host.name, ui.events)

            # A sync, cancelled through the registry once h0's files are on their way.
            ui = UI()

            def cancel_on_fetching(event: Any) -> None:
                ui.emit(event)
                if isinstance(event, Progress) and event.phase == "fetching":
                    registry.cancel("sync")

            summary = await api.sync(
                hosts, dest, emit=cancel_on_fetching, registry=registry, transfer_id="sync"
            )
            assert summary.exit_code == 130 and registry.active() == []
            assert {h.host for h in summary.hosts} == {h.name for h in hosts}
            assert ui.errors("mute") == ["cancelled"]
            assert sorted(e.host for e in ui.events if isinstance(e, HostDone)) == sorted(
                h.name for h in hosts
            )
            for host in hosts:
                assert ui.phase(host.name) == "done", (host.name, ui.events)
            assert_state_matches_disk(dest, "h0")
            assert_state_matches_disk(dest, "h1")

            # Again to the end; the hung host fails at its connect timeout, the others sync.
            ui = UI()
            summary = await api.sync(
                hosts, dest, emit=ui.emit, pool=PoolSettings(connect_timeout=1.0)
            )
            assert (summary.exit_code, summary.hosts_ok, summary.hosts_failed) == (1, 2, 2)
            assert ui.errors("refused") == ["unreachable"] and ui.errors("mute")
            for name in ("h0", "h1"):
                assert_state_matches_disk(dest, name)
            assert_index_is_a_rebuild(dest)

            # A listing whose pool bounds the handshake: the hung host fails instead of hanging.
            ui = UI()
            errors: list[Any] = []
            short = PoolSettings(connect_timeout=1.0)
            listed = await api.list_sessions(
                remote=True, hosts=hosts, emit=ui.emit, errors=errors, pool=short
            )
            assert keys(listed) == keys(rows)
            assert [type(e) for e in errors] == [HostUnreachableError] * 2
            for host in hosts:
                assert ui.phase(host.name) == "done", (host.name, ui.events)

            # "Stop" clicked before the first batch: kept, no host contacted.
            ui = UI()
            stream = api.stream_sessions(
                remote=True, hosts=hosts, emit=ui.emit, registry=registry, transfer_id="listing"
            )
            assert registry.cancel("listing")
            with pytest.raises(TransferCancelledError):
                async with aclosing(stream) as batches:
                    async for _batch in batches:
                        pass
            assert registry.active() == [] and ui.events == []

            # The mirror's listing, stopped after its first batch: its error, then its end.
            ui = UI()
            with pytest.raises(TransferCancelledError):
                async for _batch in api.stream_sessions(
                    dest=dest, emit=ui.emit, registry=registry, transfer_id="mirror"
                ):
                    assert registry.cancel("mirror")
            assert ui.errors("") == ["cancelled"] and ui.phase("") == "done"

            # The mirror's listing, in small batches: the same sessions as the hosts gave.
            ui = UI()
            local: list[SessionRow] = []
            async for batch in api.stream_sessions(dest=dest, batch_size=3, emit=ui.emit):
                local.extend(batch)
            assert keys(local) == keys(rows)
            counts = [e.files_done for e in ui.events if isinstance(e, Progress)]
            assert counts == [*range(3, live_rows, 3), live_rows, live_rows]
            assert ui.phase("") == "done"

            # A show from a host that refuses: its error and its end, then the exception.
            ui = UI()
            with pytest.raises(HostUnreachableError):
                await api.read_session(hosts[0], "sess-0-1", emit=ui.emit)
            assert ui.errors("refused") == ["unreachable"] and ui.phase("refused") == "done"
            shown = await api.show_session(hosts[2], "sess-0-1", tail=2, emit=ui.emit)
            assert len(shown) == 2 and ui.phase("h0") == "done"

        anyio.run(run)
