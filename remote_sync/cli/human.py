"""What the read commands print for a person: tables of sessions, versions and stats, a
session's messages, a check's problems and a prune's removals.

What it owns: the consoles they print on (a listing piped keeps every row whole), the cells'
forms (times in UTC to the minute, counts shortened, a title or a session id cut), and each
command's printing. rich (and :mod:`remote_sync.render`, whose pieces it prints with) is
imported inside the functions, so a ``--json`` listing never loads it; every piece of data
goes into it as plain Text (:func:`remote_sync.render.plain`), never markup. The sync's own
display is :mod:`remote_sync.render`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import EXIT_OK
from .common import counted

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from ..index.query import SessionRow, StatsRow
    from ..index.show import ShowResult
    from ..mirror.check import CheckSummary, Problem
    from ..mirror.versions import PruneResult, VersionRow


def _console() -> Console:
    from ..render import PipeConsole

    console = PipeConsole(highlight=False)
    # Piped output has no width to honour: one wide enough for the columns.
    return console if console.is_terminal else PipeConsole(width=160, highlight=False)


def _listing_console() -> Console:
    """The console of a listing: piped (grep, a log), every row whole, as wide as its widest
    cell needs."""
    from ..render import PipeConsole

    console = _console()
    return console if console.is_terminal else PipeConsole(width=1 << 20, highlight=False)


def _print_whole(console: Console, table: Any) -> None:
    """``table`` with every cell as its columns allow (a title cut to its ``max_width``):
    rich fits a table to the terminal by cutting every column, so on an 80-column terminal a
    host name became ``…`` and a size of 829 B ``82…``. A terminal narrower than the columns
    need wraps the rows instead; nothing shown is cut short."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1 << 20), table).maximum
    if needed > console.width:
        console.width = needed
    console.print(table)


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _when(ts: str | None) -> str:
    """An index time (UTC) to the minute. The tables say UTC in their heading and ``show``
    after each time: the hosts' own offsets are gone by then, and ``--since`` and ``stats
    --by day`` count in UTC too."""
    return f"{ts[:10]} {ts[11:16]}" if ts else "-"


def _cut(text: str | None, width: int) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _cut_session_id(session_id: str, width: int = 14) -> str:
    """A session id for the table: cut at its end, or, for an id with a ``/`` (a Claude Code
    sub-agent's ``<parent uuid>/agent-<id>``), in its middle, so that its last part shows and
    a sub-agent does not read as its parent."""
    head, slash, tail = session_id.rpartition("/")
    if not slash or len(session_id) <= width:
        return _cut(session_id, width)
    cut = f"{head[:8]}…/{tail if len(tail) <= width + 2 else '…' + tail[-(width + 1) :]}"
    # The tail's end is kept: sub-agents of one parent differ there (agent-<hex id>).
    return session_id if len(session_id) <= len(cut) else cut


def print_sessions(rows: list[SessionRow], *, quiet: bool = False) -> int:
    """The table of sessions; ``quiet``: no "no sessions match" (errors were said instead)."""
    from rich.table import Table
    from rich.text import Text

    from ..render import plain

    console = _listing_console()
    class_style = {"empty": "dim", "low": "yellow", "valuable": "green"}
    state_style = {
        "live": "",
        "archived": "blue",
        "deleted": "red",
        "rewritten": "magenta",
        "renamed": "dim",
    }
    cells = [
        (
            plain(r.host),
            plain(r.agent or "-"),
            plain(_cut_session_id(r.session_id)),
            plain(r.klass, class_style.get(r.klass, "")),
            plain(r.state, state_style.get(r.state, "")),
            Text(str(r.messages)),
            Text(_count(r.tokens_in + r.tokens_out)),
            plain(_when(r.last_ts)),
        )
        for r in rows
    ]
    heads = (
        "host",
        "agent",
        "session",
        "class",
        "state",
        "messages",
        "tokens",
        "last activity (UTC)",
    )
    # The title gets what the other columns leave (rich alone would squeeze them all, host
    # names first): on a narrow terminal it is the one cut.
    widths = [len(head) for head in heads]
    for row_cells in cells:
        widths = [max(w, cell.cell_len) for w, cell in zip(widths, row_cells, strict=True)]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for head in heads:
        table.add_column(
            head, no_wrap=True, justify="right" if head in ("messages", "tokens") else "left"
        )
    left = console.width - sum(widths) - 2 * len(widths)
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=max(left, 10))
    for r, row_cells in zip(rows, cells, strict=True):
        table.add_row(*row_cells, plain(_cut(r.title, 60)))
    _print_whole(console, table)
    if not rows and not quiet:
        print("no sessions match", file=sys.stderr)
    return EXIT_OK


def print_versions(rows: list[VersionRow]) -> int:
    """The table of kept versions (paths whole: they are what restore takes)."""
    from rich.table import Table
    from rich.text import Text

    from ..render import human_size, plain

    console = _listing_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for head in ("host", "path", "version", "bytes", "kept (UTC)", "session"):
        table.add_column(
            head, no_wrap=True, justify="right" if head in ("version", "bytes") else "left"
        )
    for r in rows:
        table.add_row(
            plain(r.host),
            plain(r.path),
            Text(str(r.version)),
            Text(human_size(r.bytes)),
            plain(_kept_when(r)),
            plain(_cut_session_id(r.session_id) if r.session_id else "-"),
        )
    _print_whole(console, table)
    if not rows:
        print("no kept versions", file=sys.stderr)
    return EXIT_OK


def print_check_problem(problem: Problem) -> None:
    """One line a problem: damage or note, where, and what."""
    from ..errors import showable

    where = f"{problem.host}: {problem.path}" if problem.host else problem.path
    if problem.version is not None:
        where += f" v{problem.version}"
    print(f"{problem.type:6}  {showable(where)}: {showable(problem.what)}", flush=True)


def print_check_end(dest: Path, summary: CheckSummary, hints: Iterable[str]) -> None:
    """What to do (each hint once), then the counts."""
    from ..errors import showable

    for hint in hints:
        print(f"what to do: {showable(hint)}")
    found = f"{counted(summary.damaged, 'damaged item')}, " if summary.damaged else ""
    notes = f"{counted(summary.notes, 'note')}" if summary.notes else "no notes"
    state = "intact" if summary.intact else "DAMAGED"
    print(
        f"checked {counted(summary.files, 'file')} and {counted(summary.versions, 'version')} "
        f"in {showable(str(dest))}: {state} ({found}{notes})",
        flush=True,
    )


def _kept_when(row: VersionRow) -> str:
    """When a version was kept, or, with no keep time recorded, when its copy was last
    written (no later than it was kept), said so."""
    return _when(row.kept_at) if row.kept_at else f"{_when(row.modified)} (written)"


def print_pruned(result: PruneResult) -> int:
    """One line per version removed (or, in a dry run, to be), stderr for those left, and a
    total."""
    from ..errors import showable
    from ..render import human_size

    verb = "would remove" if result.dry_run else "removed"
    for r in result.removed:
        print(
            f"{verb} {showable(r.host)}: {showable(r.path)} v{r.version} "
            f"({human_size(r.bytes)}, kept {_kept_when(r)})"
        )
    for r in result.left:
        print(
            f"remote-sync: {showable(r.host)}: {showable(r.path)}: version {r.version} "
            f"({showable(r.file)}) is reached through a symbolic link or changed meanwhile: "
            "left in place (look at it; remove it by hand if it is yours to remove)",
            file=sys.stderr,
        )
    freed = "would free" if result.dry_run else "freed"
    tail = "; nothing removed (dry run)" if result.dry_run else ""
    print(
        f"{verb} {counted(len(result.removed), 'version')} ({human_size(result.bytes_freed)} "
        f"{freed}); {counted(result.kept, 'version')} kept{tail}",
        flush=True,
    )
    return EXIT_OK


_TEXT_CHARS = 1200
_TEXT_LINES = 16


def _message_text(text: str) -> str:
    lines = text.strip().splitlines()
    cut = len(lines) > _TEXT_LINES
    shown = "\n".join(lines[:_TEXT_LINES])
    if len(shown) > _TEXT_CHARS:
        shown, cut = shown[:_TEXT_CHARS], True
    return shown + (" …" if cut else "")


def print_messages(
    row: SessionRow | None, result: ShowResult, page: int | None, page_size: int
) -> int:
    """Messages for a person; ``row`` is None for a session read straight from its host."""
    from rich.text import Text

    from ..render import plain

    console = _console()
    if row is not None:
        console.print(
            Text.assemble(
                plain(row.host, "bold"),
                " ",
                plain(row.path, "bold"),
                "  session ",
                plain(row.session_id),
                f"  {counted(row.messages, 'message')}  ",
                plain(row.state),
            ),
            # One line however long the path: a terminal wraps it, a pipe keeps it whole.
            soft_wrap=True,
        )
    role_style = {"user": "bold cyan", "assistant": "bold green", "tool": "bold magenta"}
    for i, message in enumerate(result.messages):
        number = f"#{result.first + i + 1} " if result.first is not None else ""
        header = Text.assemble(
            (number, "dim"),
            plain(message.role, role_style.get(message.role, "bold")),
            plain(f"  {_when(message.timestamp)} UTC" if message.timestamp else "", "dim"),
            plain(f"  {message.model}" if message.model else "", "dim"),
        )
        console.print()
        console.print(header)
        if message.text:
            console.print(plain(_message_text(message.text), lines=True), soft_wrap=False)
        for call in message.tool_calls:
            shown = f"→ {call.name}({_cut(call.arguments, 160)})"
            # Not folded at the console's width: rich broke a call after "→ " when its
            # arguments filled their 160 characters, leaving the name on the next line.
            console.print(plain(shown, "yellow"), soft_wrap=True)
    _print_footer(row, result, page, page_size)
    return EXIT_OK


def _print_footer(
    row: SessionRow | None, result: ShowResult, page: int | None, page_size: int
) -> None:
    from ..render import human_size

    shown = len(result.messages)
    # Straight from the host, the total is known when the read decoded the whole file anyway
    # (a page that reached the end, a tail that reached the start); reading the rest of the
    # file only to count its messages would cost what a show is built not to read.
    total = result.total if result.total is not None or row is None else row.messages
    if total is None:
        messages = counted(shown, "message")
        note = f"page {page}: {messages}" if page is not None else messages
        print(f"\n{note}; read {human_size(result.bytes_read)}", file=sys.stderr)
        return
    # Pages number every message shown, a record written again too (counted once in the row).
    count = counted(total, "message")
    if row is not None and total != row.messages:
        count += f", {total - row.messages} of them repeated"
    if page is not None:
        pages = max(1, -(-total // page_size))
        if not shown:
            note = f"page {page} is past the end ({count}, {counted(pages, 'page')})"
        else:
            note = f"page {page} of {pages} ({count})"
            if page < pages:
                note += f"; --page {page + 1} for more"
    else:
        note = f"{shown} of {count}"
    print(f"\n{note}; read {human_size(result.bytes_read)}", file=sys.stderr)


def print_stats(by: str, groups: list[StatsRow]) -> int:
    from rich.table import Table
    from rich.text import Text

    from ..render import plain

    console = _console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(by, no_wrap=True)
    heads = ("sessions", "messages", "tool calls", "tokens in", "tokens out", "cache read")
    for name in (*heads, "cache write", "cost", "bytes"):
        table.add_column(name, justify="right", no_wrap=True)
    for g in groups:
        table.add_row(*_stats_cells(plain(g.key or "-"), g))
    if groups and by != "model":
        total = _total(groups)
        table.add_row(*_stats_cells(Text("total", style="bold"), total), end_section=True)
    _print_whole(console, table)
    return EXIT_OK


def _stats_cells(key: Text, g: StatsRow) -> Iterator[Text | str]:
    from ..render import human_size

    yield key
    yield str(g.sessions)
    yield str(g.messages)
    yield str(g.tool_calls)
    for n in (g.tokens_in, g.tokens_out, g.tokens_cache_read, g.tokens_cache_write):
        yield _count(n)
    yield "-" if g.cost is None else f"${g.cost:.2f}"
    yield human_size(g.bytes)


def _total(groups: list[StatsRow]) -> StatsRow:
    from ..index.query import StatsRow

    costs = [g.cost for g in groups if g.cost is not None]
    return StatsRow(
        groups[0].by,
        None,
        sum(g.sessions for g in groups),
        sum(g.messages for g in groups),
        sum(g.tool_calls for g in groups),
        sum(g.tokens_in for g in groups),
        sum(g.tokens_out for g in groups),
        sum(g.tokens_cache_read for g in groups),
        sum(g.tokens_cache_write for g in groups),
        sum(costs) if costs else None,
        sum(g.bytes for g in groups),
    )
