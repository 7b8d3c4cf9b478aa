"""Tables that lose no data, on a terminal of any width and through a pipe.

Rich's own tables shrink every column to fit the console and cut what does not fit (`+0.29…`,
`realized_vo…`). These are laid out here instead, in plain aligned text:
- when a table is wider than the console, decoration goes first (a bar), then, on a terminal, the
  columns marked as expendable (a note names them and points to --json), then, on a terminal, the
  columns marked `fold` wrap inside their cell; a name or a number is never cut, even when a line
  ends up wider than the console;
- piped (not a terminal), every data column stays, nothing wraps, and no line has trailing spaces,
  so grep, awk and cut see whole values.
"""
from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

GAP = "  "
MIN_FOLD = 8  # a folded column keeps at least this many cells


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"        # "left" | "right"
    style: str | None = None     # applied to every cell (shown on a terminal only)
    drop: int = 0                # > 0: left out when the table is too wide, highest first
    decoration: bool = False     # leaving it out loses no data (a bar), so it goes when piped too
    fold: bool = False           # on a terminal, may wrap inside its cell (a name, a message)


def short_time(iso: str | None) -> str:
    """`2026-12-01T10:00:00+00:00` → `2026-12-01 10:00:00` (the columns say UTC); None → ``."""
    return iso.replace("T", " ").removesuffix("+00:00") if iso else ""


def stdout_console() -> Console:
    """The console commands print to: on a pipe it never wraps a line (soft wrap)."""
    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def print_table(console: Console, columns: list[Column], rows: list[list[str | Text]], *,
                title: str | None = None, header: bool = True, indent: int = 0) -> None:
    """Print `rows` under `columns`, fitted to the console as the module docstring describes."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    widths = [max([cell_len(col.header) if header else 0] + [row[i].cell_len for row in cells])
              for i, col in enumerate(columns)]
    keep = _fit(console, columns, widths, indent)
    hidden = [columns[i].header for i in range(len(columns)) if i not in keep and not columns[i].decoration]
    if console.is_terminal:
        _fold(console.width, columns, widths, keep, indent)
    if title:
        console.print(Text(title, style="bold"), soft_wrap=True)
    lines: list[Text] = []
    if header:
        lines += _row_lines(console, [Text(columns[i].header, style="bold") for i in keep],
                            [columns[i] for i in keep], [widths[i] for i in keep])
    for row in cells:
        styled = [row[i].copy() for i in keep]
        for text, i in zip(styled, keep):
            if columns[i].style:
                text.stylize(columns[i].style)
        lines += _row_lines(console, styled, [columns[i] for i in keep], [widths[i] for i in keep])
    for line in lines:
        console.print(Text(" " * indent) + line if indent else line, soft_wrap=True)
    if hidden:
        console.print(Text(f"(not shown at {console.width} columns: {', '.join(hidden)}; widen the terminal or use --json)",
                           style="dim"), soft_wrap=True)


def _width(widths: list[int], keep: list[int], indent: int) -> int:
    return indent + sum(widths[i] for i in keep) + len(GAP) * (len(keep) - 1)


def _fit(console: Console, columns: list[Column], widths: list[int], indent: int) -> list[int]:
    """The columns that stay: expendable ones leave, highest `drop` (then rightmost) first, while the
    table is too wide; on a pipe only decoration may leave."""
    keep = list(range(len(columns)))
    order = sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: (-columns[i].drop, -i))
    for i in order:
        if _width(widths, keep, indent) <= console.width:
            break
        if columns[i].decoration or console.is_terminal:
            keep.remove(i)
    return keep


def _fold(width: int, columns: list[Column], widths: list[int], keep: list[int], indent: int) -> None:
    """Narrow the `fold` columns (widest first, never below MIN_FOLD) until the table fits."""
    foldable = [i for i in keep if columns[i].fold]
    excess = _width(widths, keep, indent) - width
    while excess > 0:
        widest = max(foldable, key=lambda i: widths[i], default=None)
        if widest is None or widths[widest] <= MIN_FOLD:
            return
        widths[widest] -= 1
        excess -= 1


def _row_lines(console: Console, texts: list[Text], columns: list[Column], widths: list[int]) -> list[Text]:
    """One table row as one or more lines (more when a folded cell wraps), right-trimmed."""
    parts = [text.wrap(console, width, overflow="fold") if text.cell_len > width else [text]
             for text, width in zip(texts, widths)]
    lines = []
    for n in range(max(len(p) for p in parts)):
        line = Text()
        for k, (part, column, width) in enumerate(zip(parts, columns, widths)):
            piece = part[n].copy() if n < len(part) else Text()
            piece.rstrip()
            pad = " " * max(0, width - piece.cell_len)
            line.append_text(Text(GAP) if k else Text())
            line.append_text(Text(pad) + piece if column.justify == "right" else piece + Text(pad))
        line.rstrip()
        lines.append(line)
    return lines
