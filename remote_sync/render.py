"""Human rendering of engine events with rich: live progress on a TTY and a recap table.

What it owns: everything a person sees from ``remote-sync sync`` without ``--json``: a progress
bar per host and one for the total (bytes and files), errors as they happen (on stderr), and
the recap table at the end (host, status, files new/grown/rewritten/unchanged/deleted/failed,
bytes), like Ansible's PLAY RECAP.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from . import events as ev


class RichRenderer:
    """An ``Emit`` that draws progress (on a TTY) and prints the recap."""

    def __init__(self, console: Console | None = None, err_console: Console | None = None) -> None:
        # Piped output has no width to honour: use one wide enough for the recap's columns.
        self.console = console or Console()
        if not self.console.is_terminal and console is None:
            self.console = Console(width=120)
        self.err = err_console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.live,
        )
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
        elif isinstance(event, ev.ErrorEvent):
            where = ": ".join(p for p in (event.host, event.path) if p)
            self.err.print(f"[red]error[/red] {where}: {event.message}", highlight=False)
            if event.hint:
                self.err.print(f"  [dim]{event.hint}[/dim]", highlight=False)
        elif isinstance(event, ev.Summary):
            self.progress.stop()
            self.console.print(recap_table(event))

    def _progress(self, event: ev.Progress) -> None:
        task = self.tasks.get(event.host)
        if task is None:
            task = self.tasks[event.host] = self.progress.add_task(event.host, total=None, files="")
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


def recap_table(summary: ev.Summary) -> Table:
    title = "dry run: what would move" if summary.dry_run else "sync recap"
    table = Table(title=title, title_justify="left")
    for name in ("host", "status", "new", "grown", "rewritten", "unchanged", "deleted", "failed"):
        table.add_column(name, justify="left" if name in ("host", "status") else "right")
    table.add_column("bytes", justify="right")
    style = {"ok": "green", "partial": "yellow", "failed": "red", "cancelled": "magenta"}
    for h in summary.hosts:
        f = h.files
        table.add_row(
            h.host,
            f"[{style.get(h.status, '')}]{h.status}[/]",
            str(f.new),
            str(f.grown),
            str(f.rewritten),
            str(f.unchanged),
            str(f.deleted),
            str(f.failed),
            _size(h.bytes),
        )
    t = summary.files
    table.add_row(
        "[bold]total",
        f"{summary.hosts_ok} ok / {summary.hosts_failed} failed",
        str(t.new),
        str(t.grown),
        str(t.rewritten),
        str(t.unchanged),
        str(t.deleted),
        str(t.failed),
        _size(summary.bytes),
        end_section=True,
    )
    return table


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
