"""Human rendering of engine events with rich: live progress on a TTY and a recap table.

What it owns: everything a person sees from ``remote-sync sync`` without ``--json``: a progress
bar per host and one for the total (bytes and files), errors as they happen (on stderr), and
the recap table at the end (host, status, files new/grown/rewritten/unchanged/deleted/failed,
bytes), like Ansible's PLAY RECAP. Also the pieces the ``sessions`` commands print with:
:class:`PipeConsole`, :func:`plain`, :func:`human_size` and :func:`print_problem` (a
remote listing's warnings, as the sync prints them).

Every piece of data shown (host names, paths, messages, session titles) is hostile: it goes
into rich as a :class:`~rich.text.Text` made by :func:`plain`, never into a markup string, so
``[`` in a path is printed as is, and control characters cannot drive the terminal.
"""

from __future__ import annotations

import os
import shlex
import sys
from types import TracebackType
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import events as ev
from .errors import showable

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class PipeConsole(Console):
    """A rich Console for which a reader closing the pipe (``| head``) is not an error.

    rich's default raises ``SystemExit(1)``; we go quiet instead and the command finishes with
    its own exit code, as ``git log | head`` does. Its file descriptor is pointed at /dev/null
    so the interpreter's last flush does not fail either.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        if self.file is sys.stdout:
            ev.stdout_to_devnull()


_ACTION_STYLE = {"new": "green", "grown": "cyan", "rewritten": "magenta", "deleted": "red"}


def plain(text: str | None, style: str = "", *, lines: bool = False) -> Text:
    """``text`` as rich Text printed exactly as it is: no markup, no emoji codes, and control
    characters (escape sequences, carriage returns) and undecodable bytes shown as ``\\xNN``.
    ``lines`` keeps newlines and tabs (message text); otherwise they are escaped too."""
    if not text:
        return Text("", style=style)
    return Text(showable(text, lines=lines), style=style)


class RichRenderer:
    """An ``Emit`` that draws progress (on a TTY) and prints the recap."""

    def __init__(
        self,
        console: Console | None = None,
        err_console: Console | None = None,
        dest: str | None = None,
    ) -> None:
        # rich.progress is imported here, not with the module: `sessions` prints with the
        # module's other pieces and has no use for it.
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        # Piped output has no width to honour: use one wide enough for the recap's columns.
        self.console = console or PipeConsole()
        if not self.console.is_terminal and console is None:
            self.console = PipeConsole(width=120)
        self.err = err_console or PipeConsole(stderr=True)
        self.live = self.console.is_terminal
        # Host names are data: the description column must not read them as markup.
        self.progress: Progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}", markup=False),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.live,
        )
        self.dest = dest  # named below the recap: where the files went, how to read them
        self.tasks: dict[str, TaskID] = {}
        self.done: dict[str, ev.Progress] = {}
        self.total = self.progress.add_task("total", total=None, files="")

    def __enter__(self) -> RichRenderer:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            self._progress(event)
        elif isinstance(event, ev.ErrorEvent | ev.WarningEvent):
            print_problem(self.err, event)
        elif isinstance(event, ev.Planned):
            # rsync -n's list: one line per file a sync would move (above the progress bars).
            size = f"{event.bytes:>12,}" if event.action != "deleted" else " " * 12
            line = Text.assemble(
                (f"{event.action:<9}", _ACTION_STYLE.get(event.action, "")),
                f" {size}  ",
                plain(event.host),
                ": ",
                plain(event.path),
            )
            # soft_wrap: one file, one line, also piped (a long path is not folded in two).
            self.console.print(line, highlight=False, soft_wrap=True)
        elif isinstance(event, ev.Summary):
            self.progress.stop()
            # Piped (a log, cron's mail): ASCII rules, which every pager and mailer shows.
            table = recap_table(event, ascii_rules=not self.live)
            if self.live:
                self.console.print(table)
            else:
                # Nor the spaces rich pads the title and caption to the table's width with,
                # which a journal or a log keeps at the end of their lines.
                self.console.print(stripped_lines(self.console, table), highlight=False)
            if self.dest is not None and not event.dry_run and event.hosts_ok + event.hosts_partial:
                # The mirror's layout and the next command, which the table does not show.
                command = f"remote-sync sessions list --dest {shlex.quote(self.dest)}"
                note = f"mirror: {os.path.join(self.dest, '<host>', '')}; sessions: {command}"
                self.console.print(plain(note), highlight=False, soft_wrap=True)

    def _progress(self, event: ev.Progress) -> None:
        task = self.tasks.get(event.host)
        if task is None:
            shown = plain(event.host).plain
            task = self.tasks[event.host] = self.progress.add_task(shown, total=None, files="")
        self.progress.update(
            task,
            completed=event.bytes_done,
            total=event.bytes_total or None,
            files=f"{event.files_done}/{event.files_total} files",
            visible=event.phase != "done",
        )
        self.done[event.host] = event
        files = sum(p.files_done for p in self.done.values())
        files_total = sum(p.files_total for p in self.done.values())
        self.progress.update(
            self.total,
            completed=sum(p.bytes_done for p in self.done.values()),
            total=sum(p.bytes_total for p in self.done.values()) or None,
            files=f"{files}/{files_total} files",
        )


def stripped_lines(console: Console, renderable: Table) -> Text:
    """``renderable`` as ``console`` lays it out, styles kept, without the spaces that end
    its lines."""
    shown: list[Text] = []
    for line in console.render_lines(renderable, pad=False):
        text = Text.assemble(*((s.text, s.style or "") for s in line if not s.control))
        text.rstrip()
        shown.append(text)
    return Text("\n").join(shown)


def print_problem(err: Console, event: ev.ErrorEvent | ev.WarningEvent) -> None:
    """An error or warning event as ``sync`` prints it on ``err`` (stderr): ``error`` or
    ``warning``, the host and path, the message, then its hint below it."""
    where = ": ".join(p for p in (event.host, event.path) if p)
    label = ("error", "red") if isinstance(event, ev.ErrorEvent) else ("warning", "yellow")
    line = Text.assemble(label, " ", plain(where), ": ", plain(event.message))
    # soft_wrap: one error, one line (a terminal wraps it; a log keeps it greppable).
    err.print(line, highlight=False, soft_wrap=True)
    if event.hint:
        hint = Text.assemble("  ", plain(event.hint, "dim"))
        err.print(hint, highlight=False, soft_wrap=True)


def recap_table(summary: ev.Summary, *, ascii_rules: bool = False) -> Table:
    title = "dry run: what would move" if summary.dry_run else "sync recap"
    rules = box.ASCII if ascii_rules else box.HEAVY_HEAD
    hosts = f"hosts: {summary.hosts_ok} ok, " + (
        f"{summary.hosts_partial} partial, " if summary.hosts_partial else ""
    )
    # The hosts' tally goes below the table, not in its total row, whose widest cell it was.
    table = Table(
        title=title,
        title_justify="left",
        caption=f"{hosts}{summary.hosts_failed} failed",
        caption_justify="left",
        box=rules,
    )
    # A terminal too narrow for the table folds the counts' headers; host names, statuses
    # and sizes stay whole (rich would cut the widest column first: the host names).
    table.add_column("host", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name in ("new", "grown", "rewritten", "unchanged", "deleted", "failed"):
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("bytes", justify="right", no_wrap=True)
    style = {"ok": "green", "partial": "yellow", "failed": "red", "cancelled": "magenta"}
    for h in summary.hosts:
        f = h.files
        table.add_row(
            plain(h.host),
            plain(h.status, style.get(h.status, "")),
            str(f.new),
            str(f.grown),
            str(f.rewritten),
            str(f.unchanged),
            str(f.deleted),
            str(f.failed),
            human_size(h.bytes),
        )
    t = summary.files
    table.add_section()  # a rule between the hosts and their total
    table.add_row(
        Text("total", style="bold"),
        "",
        str(t.new),
        str(t.grown),
        str(t.rewritten),
        str(t.unchanged),
        str(t.deleted),
        str(t.failed),
        human_size(summary.bytes),
    )
    return table


def human_size(n: int) -> str:
    """``n`` bytes for a person: ``512 B``, ``1.5 KiB``, up to GiB (the recap's and ``sessions
    stats``' bytes, what a ``sessions show`` read)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
