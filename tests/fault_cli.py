"""``remote-sync`` with a crash injected, for tests of recovery (run as a script).

``REMOTE_SYNC_TEST_FAULT`` picks the instant the process dies with ``os._exit(9)``, as a
``kill -9`` would leave it, but at a chosen point instead of a random one:

- ``before_commit``: a flush made its files durable and renamed them into place; the
  checkpoints of that batch are not committed.
- ``after_version_rename``: a rewrite moved the old copy into ``versions/``; the new copy is
  not yet renamed into place.
- ``in_seed_copy``: a transcript renamed on the host is being seeded from its old name's
  mirrored bytes; half of them are in the temp file.

``term_in_recovery`` and ``term_in_state_copy`` send the process a SIGTERM while it opens the
mirror (before the rounds' signal handler is installed): in recovery, or while a dry run
copies the state.

``sigint_in_commit`` does not crash: each commit of the rounds first sends the process a
SIGINT, as a Ctrl-C at that instant would.

``over_quota`` does not crash: the writer's files that find the disk full say EDQUOT, as
over this user's disk quota (see ``synchelp.over_quota_open``).

``sigint_in_check`` does not crash: ``check``, at its first file, sends the process a SIGINT,
as a Ctrl-C midway through a check would; ``term_in_check`` a SIGTERM, as ``timeout`` or
systemd would.

``term_in_prune`` does not crash: ``versions prune``, at the second file whose versions it
removes (the first file's gone), sends the process a SIGTERM.

``term_after_rounds`` does not crash: a sync, once its rounds have ended and their signal
handler is gone, sends the process a SIGTERM before it reports its exit code.

``deaf_agent_sync`` does not crash: the agent's syncs sleep an hour in a scope no cancel of
theirs reaches (they register nothing), so that only a ``--stop-timeout`` cut-off ends them;
each first says ``DEAF_SYNC_STARTED`` on stderr.

``hold_cancel`` does not crash: a cancelled round waits a minute before it winds down (a
commit that takes its time), so that only a second Ctrl-C ends the run soon.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from remote_sync.mirror import state as state_module

FAULT = os.environ.get("REMOTE_SYNC_TEST_FAULT", "")


def _before_each_commit(
    step: Callable[[list[state_module.FileState], Callable[[], None] | None], None],
) -> None:
    """Make each MirrorState.commit call ``step(rows, also)`` before it commits."""
    original_commit = state_module.MirrorState.commit

    def commit(
        self: state_module.MirrorState,
        rows: Iterable[state_module.FileState],
        also: Callable[[], None] | None = None,
        kept: Iterable[tuple[str, bytes, int]] = (),
    ) -> None:
        rows = list(rows)
        step(rows, also)
        original_commit(self, rows, also, kept)

    state_module.MirrorState.commit = commit  # type: ignore[method-assign]


if FAULT == "before_commit":

    def crash_at_a_flush(
        rows: list[state_module.FileState], also: Callable[[], None] | None
    ) -> None:
        if rows and also is not None:  # a flush's commit (deletions come without ``also``)
            os._exit(9)

    _before_each_commit(crash_at_a_flush)

elif FAULT == "after_version_rename":
    real_rename = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_rename(src, dst, *args, **kwargs)
        # A kept copy is renamed in by its name in its folder's descriptor.
        if "dst_dir_fd" in kwargs or f"{os.sep}versions{os.sep}" in os.fsdecode(dst):
            os._exit(9)

    os.rename = rename

elif FAULT == "in_seed_copy":
    from typing import BinaryIO

    from remote_sync.mirror import writer as writer_module

    def copy_half(source: BinaryIO, copy: BinaryIO, size: int) -> None:
        copy.write(source.read(size // 2))
        copy.flush()
        os._exit(9)

    writer_module._copy_prefix = copy_half

elif FAULT in ("term_in_recovery", "term_in_state_copy"):
    import signal

    from remote_sync.mirror import fleet

    def terminated(original: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            os.kill(os.getpid(), signal.SIGTERM)
            return original(*args, **kwargs)

        return step

    if FAULT == "term_in_recovery":
        state_module.MirrorState.recover = terminated(state_module.MirrorState.recover)  # type: ignore[method-assign]
    else:
        fleet.copy_state = terminated(fleet.copy_state)

elif FAULT == "sigint_in_commit":
    import signal
    import time

    def interrupt(rows: list[state_module.FileState], also: Callable[[], None] | None) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)  # the event loop's handler, if any, has taken it by then

    _before_each_commit(interrupt)

elif FAULT == "hold_cancel":
    import anyio

    from remote_sync.mirror import engine

    real_drain = engine.HostSync._drain

    async def _drain(self: engine.HostSync) -> None:
        if self.token.cancelled:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(60)
        await real_drain(self)

    engine.HostSync._drain = _drain  # type: ignore[method-assign]

elif FAULT in ("sigint_in_check", "term_in_check"):
    import signal
    import time

    from remote_sync.mirror import check as check_module

    real_judge = check_module._Checker._judge
    sent = signal.SIGINT if FAULT == "sigint_in_check" else signal.SIGTERM

    def judge(self: check_module._Checker, host: str, row: Any) -> Any:
        os.kill(os.getpid(), sent)
        time.sleep(0.3)  # Python's handler raises KeyboardInterrupt by then
        return real_judge(self, host, row)

    check_module._Checker._judge = judge  # type: ignore[method-assign]

elif FAULT == "term_in_prune":
    import signal
    import time

    from remote_sync.mirror import versions as versions_module

    real_remove = versions_module._remove
    groups: list[object] = []

    def remove(*args: Any, **kwargs: Any) -> None:
        groups.append(args)
        if len(groups) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the handler, if any, raises KeyboardInterrupt by then
        real_remove(*args, **kwargs)

    versions_module._remove = remove

elif FAULT == "term_after_rounds":
    import signal
    import time

    from remote_sync.cli import sync as sync_cli

    real_with_lost_output = sync_cli._with_lost_output

    def with_lost_output(code: int, watch: Any) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # the handler, if any, raises KeyboardInterrupt by then
        return real_with_lost_output(code, watch)

    sync_cli._with_lost_output = with_lost_output

elif FAULT == "deaf_agent_sync":
    import anyio
    from synchelp import DEAF_SYNC_STARTED

    from remote_sync import agent as agent_module

    async def deaf_sync(*args: Any, **kwargs: Any) -> Any:
        # Said, so that a test stops the agent once a sync is deaf, not after a guess at when.
        print(DEAF_SYNC_STARTED, file=sys.stderr, flush=True)
        await anyio.sleep(3600)  # registers nothing: the registry's cancel misses it
        raise AssertionError("a deaf sync ended of itself")

    agent_module.sync_fleet = deaf_sync  # type: ignore[assignment]

elif FAULT == "over_quota":
    from synchelp import over_quota_open

    from remote_sync.mirror import writer as writer_module

    writer_module.open = over_quota_open  # type: ignore[attr-defined]

elif FAULT:
    sys.exit(f"unknown REMOTE_SYNC_TEST_FAULT {FAULT!r}")

if __name__ == "__main__":
    from remote_sync.cli import main

    sys.exit(main(sys.argv[1:]))
