"""``remote-sync agent``: the agent run in the foreground until a signal stops it.

What it owns: :func:`run_agent` (the process set up as a sync's, the agent built and served)
and what its signals do: SIGTERM stops it (exit 0, systemd's stop), Ctrl-C too (130), a
second one leaves at once, and a stop that has not ended ``CUT_OFF_GRACE`` seconds after
``--stop-timeout`` leaves at once (exit 1). The agent itself is :mod:`remote_sync.agent`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RemoteSyncError
from . import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from .common import fail, given_dest, say, setup_logging
from .running import freeze_imports, heeded_signals, one_malloc_arena, signals_received

if TYPE_CHECKING:
    from ..agent import Agent


def run_agent(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    one_malloc_arena()
    from ..ssh.fastimport import import_asyncssh

    import_asyncssh()
    import anyio

    from ..agent import Agent
    from ..agent_link import PERSIST, STOP_TIMEOUT
    from ..events import json_lines_renderer

    freeze_imports()
    out = json_lines_renderer() if args.json else None
    try:
        agent = Agent(
            Path(args.inventory),
            given_dest(args.dest),
            every=args.every or None,
            persist=PERSIST if args.persist is None else args.persist,
            stop_timeout=STOP_TIMEOUT if args.stop_timeout is None else args.stop_timeout,
            scheduled=out,
        )
        code: int = anyio.run(_agent_main, agent)
        return code
    except RemoteSyncError as exc:
        return fail(exc, args)
    except KeyboardInterrupt:
        return EXIT_CANCELLED


async def _agent_main(agent: Agent) -> int:
    """Serve until SIGTERM (exit 0: systemd's stop) or Ctrl-C (130); a second one leaves
    at once, and so does a stop still not done CUT_OFF_GRACE seconds after the agent's
    ``--stop-timeout`` (exit 1)."""
    import signal

    import anyio

    from ..agent_link import CUT_OFF_GRACE
    from ..errors import AgentError

    stopped_by: list[int] = []
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with signals_received(heeded_signals()) as signals:
                async for signum in signals:
                    if stopped_by:
                        os._exit(EXIT_CANCELLED)
                    stopped_by.append(signum)
                    agent.stop()
                    if agent.stop_timeout:
                        tg.start_soon(leave_if_stuck)

        async def leave_if_stuck() -> None:
            # The agent cuts off, after --stop-timeout, what its stop's cancel did not end;
            # what even that cannot end (work in a worker thread) must not keep the process
            # for ever: it leaves at once, as a second signal does.
            await anyio.sleep(agent.stop_timeout + CUT_OFF_GRACE)
            say(
                AgentError(
                    f"the agent did not stop {agent.stop_timeout + CUT_OFF_GRACE:g} s after "
                    "it was told to: leaving at once",
                    path=str(agent.dest),
                    hint="the mirror is consistent up to each host's last checkpoint and the "
                    "next sync resumes; the agent's socket stays until the next agent",
                )
            )
            os._exit(EXIT_FAILED)

        tg.start_soon(on_signals)
        # Raised after the task group closes, so callers see it unwrapped.
        error: RemoteSyncError | None = None
        try:

            def ready() -> None:
                with contextlib.suppress(OSError):
                    print(f"remote-sync agent: serving {agent.socket}", file=sys.stderr, flush=True)

            await agent.serve(ready)
        except RemoteSyncError as exc:
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return EXIT_CANCELLED if stopped_by[:1] == [signal.SIGINT] else EXIT_OK
