"""How results reach the user: rich tables on a terminal, or JSON / Markdown / CSV for scripts.

Commands describe their result as rows (dicts) plus :class:`Column` specs and call :func:`emit`;
nothing else in the package prints tables.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "markdown", "csv")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="Output format.")


def console() -> Console:
    """The terminal's width on a terminal; wide enough for every table when piped to a file
    (``COLUMNS`` sets the width there too)."""
    probe = Console()
    if probe.is_terminal:
        return probe
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 20 else 240)


def err_console() -> Console:
    return Console(stderr=True)


def warn(text: str) -> None:
    """Something the user should know that does not stop the command (one line on stderr)."""
    err_console().print(f"Warning: {text}", highlight=False, markup=False, soft_wrap=True)


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = str
    justify: str = "right"
    wrap: bool = False  # only long free-text columns should wrap on a narrow terminal


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``, ``1,281,167 images``, ``10 classes``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{'es' if word.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def integer(v) -> str:
    return "" if v is None else f"{v:,}"


def millions(v) -> str:
    return "" if v is None else f"{v / 1e6:,.2f}M"


def giga(v) -> str:
    return "" if v is None else f"{v / 1e9:.3f}"


def human_bytes(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def emit(rows: list[dict], columns: list[Column], fmt: str, *, title: str | None = None,
         notes: list[str] = (), document: Any = None, footer: dict | None = None) -> None:
    """Print ``rows`` as ``fmt``. JSON prints ``document`` when given (else the rows, unformatted)."""
    out = console()
    if fmt == "json":
        click.echo(json.dumps(rows if document is None else document, indent=2))
        return
    body = rows + ([footer] if footer else [])
    cells = [[c.fmt(r.get(c.key)) if r.get(c.key) is not None else "" for c in columns] for r in body]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c.header for c in columns])
        writer.writerows([[r.get(c.key, "") for c in columns] for r in rows])
        click.echo(buf.getvalue(), nl=False)
    elif fmt == "markdown":
        if title:
            click.echo(f"### {title}\n")
        click.echo("| " + " | ".join(c.header for c in columns) + " |")
        click.echo("|" + "|".join(" ---: " if c.justify == "right" else " --- " for c in columns) + "|")
        for row in cells:
            click.echo("| " + " | ".join(row) + " |")
        for note in notes:
            click.echo(f"\n- {note}", nl=False)
        click.echo("")
    else:
        widths = _widths(columns, cells)
        if sum(widths) + 3 * len(columns) + 1 > out.width:
            _vertical(out, title, columns, cells, len(rows))
        else:
            table = Table(title=title, show_footer=False, header_style="bold")
            for c, width in zip(columns, widths):
                # a number keeps its whole width (never "83.…"); headers and free text wrap instead
                table.add_column(Text(c.header, overflow="fold"), justify=c.justify, no_wrap=not c.wrap,
                                 min_width=None if c.wrap else width)
            for i, row in enumerate(cells):
                table.add_row(*row, end_section=(footer is not None and i == len(rows) - 1),
                              style="bold" if (footer is not None and i == len(rows)) else None)
            out.print(table)
        for note in notes:
            out.print(f"• {note}", highlight=False)


WRAPPED_MIN = 12  # the narrowest a wrapping (free-text) column becomes before the layout turns vertical


def _widths(columns: list[Column], cells: list[list[str]]) -> list[int]:
    """The narrowest each column can be: its longest value (free text: up to ``WRAPPED_MIN``), and
    at least its header's longest word."""
    widths = []
    for i, c in enumerate(columns):
        longest = max((len(row[i]) for row in cells), default=0)
        word = max((len(w) for w in c.header.split()), default=0)
        widths.append(max(min(longest, WRAPPED_MIN) if c.wrap else longest, word))
    return widths


def _vertical(out: Console, title: str | None, columns: list[Column], cells: list[list[str]], rows: int) -> None:
    """Too narrow a terminal for the table: one block per row, ``header  value`` per line."""
    if title:
        out.print(Text(title, style="bold"))
    label = max(len(c.header) for c in columns)
    for i, row in enumerate(cells):
        out.print(Text("─" * min(out.width, 40) + (" total" if i == rows else ""), style="dim"))
        for c, value in zip(columns, row):
            if value:
                out.print(Text(f"{c.header:<{label}}  ", style="bold") + Text(value), overflow="fold")
