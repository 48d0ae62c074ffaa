"""What the command shows: results on stdout (tables, key-value lists, or the API's JSON with
`--json`), progress and status on stderr. On a terminal: rich bars, spinners and colour;
without one (a pipe, a file, CI): no bars, no colour, plain lines."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def interactive() -> bool:
    """Bars and spinners only where a person watches a terminal."""
    return err.is_terminal and not err.is_dumb_terminal


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def info(line: str) -> None:
    """A status line (stderr), markup-free."""
    err.print(line, markup=False)


def result(line: str) -> None:
    out.print(line, markup=False)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    if out.is_terminal:
        t = Table(*columns, title=title, title_justify="left", header_style="bold")
        for row in rows:
            t.add_row(*row)
        out.print(t)
        return
    if title:
        result(title)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [list(columns), *rows]:
        result("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """`key: value` lines, skipping empty values."""
    pairs = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        if out.is_terminal:
            out.print(f"[bold]{key.ljust(width)}[/bold]  {_escape(str(value))}")
        else:
            result(f"{key.ljust(width)}  {value}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def when(timestamp: str | None) -> str:
    """An API timestamp shortened to the second, as `YYYY-MM-DD HH:MM:SS`."""
    if not timestamp:
        return ""
    return re.sub(r"(\.\d+)?(Z|[+-]\d\d:\d\d)?$", "", timestamp).replace("T", " ")
