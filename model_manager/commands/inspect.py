"""`model-manager inspect`: what is in a model directory, group by group."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from model_manager.artifacts import DirectorySnapshot, GroupSnapshot
from model_manager.commands import JsonOption, app, open_manager, print_json
from model_manager.commands.matrix import directory_matrix, render_importance, render_matrix
from model_manager.errors import NotFoundError, PathError, UsageError

STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "red"}


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Model directory to read (never modified)."),
    symbol: str = typer.Option(None, "--symbol", "-s", help="Show one symbol: metadata, IC table and factors."),
    group_key: str = typer.Option(None, "--group-key", "-g", help="Pick the group when a symbol is in several."),
    sort: str = typer.Option("kendall_tau", "--sort", help="IC table order: a metric (by |value|, largest first), 'dim' or 'factor'."),
    top: int = typer.Option(0, "--top", min=0, help="Show only the first N IC rows (0: all)."),
    matrix: str = typer.Option(None, "--matrix", "-m", metavar="METRIC",
                               help="Each factor across all symbols for an IC column or gain/total_gain/cover/weight "
                                    "(factors by mean |value|; with --top N the first N)."),
    as_json: JsonOption = False,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any group has an error (for CI and scripts)."),
) -> None:
    """Show every group of a model directory: symbol, return, dim, factors, model source and status.

    With --symbol, show that group's training metadata, issues, IC table (with a bar per factor), the
    model's importance per factor and the factor list. With --matrix METRIC, each factor across all
    symbols (IC values from ic.csv; importance only for groups without errors).
    Exit codes: 0 ok, 1 errors found with --strict, 2 bad path or unknown symbol.
    """
    with open_manager() as manager:
        snap = manager.inspect(path)
    if not snap.groups:
        raise PathError(f"no model groups in {path} (expected files like SYMBOL_RETURN_factors.txt)")
    console = Console()
    model_name = snap.path.name
    if matrix:
        _matrix(console, snap, matrix, top, as_json)
        failed = any(g.status == "error" for g in snap.groups.values())
    elif symbol:
        group = _pick(snap, symbol, group_key)
        if as_json:
            print_json(group.detail(model_name))
        else:
            _render_detail(console, group, sort, top)
        failed = group.status == "error"
    else:
        dupes = snap.duplicate_symbols()
        if as_json:
            print_json({
                "model_name": model_name, "path": str(snap.path), "group_count": len(snap.groups),
                "symbol_count": len({g.symbol for g in snap.groups.values()}),
                "symbols": [g.summary() for g in snap.groups.values()], "duplicate_symbols": dupes,
                "ignored_files": snap.ignored,
            })
        else:
            _render_table(console, snap, dupes)
        failed = any(g.status == "error" for g in snap.groups.values()) or bool(dupes)
    if strict and failed:
        raise typer.Exit(1)


def _pick(snap: DirectorySnapshot, symbol: str, group_key: str | None) -> GroupSnapshot:
    if group_key:
        group = snap.groups.get(group_key)
        if group is None or group.symbol != symbol:
            raise NotFoundError(f"no group {group_key} for symbol {symbol} in {snap.path}")
        return group
    matches = snap.by_symbol(symbol)
    if not matches:
        known = ", ".join(sorted({g.symbol for g in snap.groups.values()}))
        raise NotFoundError(f"symbol {symbol} is not in {snap.path} (symbols: {known})")
    if len(matches) > 1:
        raise UsageError(f"symbol {symbol} is in several groups ({', '.join(g.group_key for g in matches)}): pick one with --group-key")
    return matches[0]


def _status(group: GroupSnapshot) -> Text:
    label = group.status + (f" ({len(group.issues)})" if group.issues else "")
    return Text(label, style=STATUS_STYLE[group.status])


def _render_table(console: Console, snap: DirectorySnapshot, dupes: dict[str, list[str]]) -> None:
    table = Table(title=f"{snap.path}", title_justify="left")
    for col, kw in [("Symbol", {"style": "bold"}), ("Return", {}), ("Dim", {"justify": "right"}),
                    ("Factors", {"justify": "right"}), ("Source", {}), ("Status", {})]:
        table.add_column(col, **kw)
    for g in snap.groups.values():
        table.add_row(escape(g.symbol), escape(g.return_name), str(g.dim if g.dim is not None else "-"),
                      str(len(g.factors)), g.model_source or "-", _status(g))
    console.print(table)
    for g in snap.groups.values():
        for issue in g.issues:
            console.print(Text.assemble((f"  {issue.severity:7} ", STATUS_STYLE[issue.severity]), (g.group_key, "bold"), f": {issue.message}"))
    for sym, keys in dupes.items():
        console.print(Text(f"  error   symbol {sym} is in several groups ({', '.join(keys)}): the server refuses this directory", style="red"))
    counts = {s: sum(1 for g in snap.groups.values() if g.status == s) for s in ("ok", "warning", "error")}
    console.print(f"{len(snap.groups)} groups: [green]{counts['ok']} ok[/green], "
                  f"[yellow]{counts['warning']} warning[/yellow], [red]{counts['error']} error[/red]")
    if snap.ignored:
        console.print(f"[yellow]ignored {len(snap.ignored)} file(s) whose names are not UTF-8[/yellow]")


def _render_detail(console: Console, g: GroupSnapshot, sort: str, top: int) -> None:
    console.print(Text.assemble((g.symbol, "bold"), f"  {g.group_key}  ", ("return ", "dim"), g.return_name,
                                ("  dim ", "dim"), str(g.dim), ("  source ", "dim"), g.model_source or "-", "  ", _status(g)))
    files = Table.grid(padding=(0, 2))
    for kind, name in g.files.items():
        files.add_row(Text(kind, style="dim"), escape(name))
    console.print(files)
    if g.issues:
        console.rule("Issues", align="left")
        for issue in g.issues:
            console.print(Text.assemble((f"{issue.severity:7} ", STATUS_STYLE[issue.severity]), (f"{issue.code}: ", "bold"), issue.message))
    if g.info:
        console.rule("Training metadata", align="left")
        meta = Table.grid(padding=(0, 2))
        for key, value in g.info.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            meta.add_row(Text(str(key), style="cyan"), Text(shown if len(shown) < 300 else shown[:297] + "..."))
        console.print(meta)
    console.rule("IC", align="left")
    if g.ic:
        console.print(_ic_table(g, sort, top))
    else:
        console.print("[dim]no ic.csv[/dim]")
    render_importance(console, g, top)
    console.rule("Factors (dimension order)", align="left")
    tau = g.kendall_by_factor()
    cols = Table(show_header=True, box=None, padding=(0, 2))
    cols.add_column("dim", justify="right", style="dim")
    cols.add_column("factor")
    cols.add_column("kendall_tau", justify="right")
    for i, name in enumerate(g.factors):
        value = tau.get(name)
        cols.add_row(str(i), escape(name), "-" if value is None else f"{value:+.4f}")
    console.print(cols)


def _ic_table(g: GroupSnapshot, sort: str, top: int) -> Table:
    columns, rows = g.ic["columns"], list(g.ic["rows"])
    metric = sort.lower()
    if metric == "factor":
        rows.sort(key=lambda r: r[0])
    elif metric == "dim":
        order = {f: i for i, f in enumerate(g.factors)}
        rows.sort(key=lambda r: order.get(r[0], len(order)))
    elif metric in columns[1:]:
        idx = columns.index(metric)
        rows.sort(key=lambda r: -abs(r[idx]) if r[idx] is not None else 1)
    else:
        raise UsageError(f"--sort {sort}: not a column of {g.group_key}_ic.csv (columns: {', '.join(columns[1:])}; or dim, factor)")
    if top:
        rows = rows[:top]
    bar_col = columns.index(metric) if metric in columns[1:] else (columns.index("kendall_tau") if "kendall_tau" in columns else None)
    scale = max((abs(r[bar_col]) for r in rows if r[bar_col] is not None), default=0) if bar_col else 0
    table = Table(box=None, padding=(0, 2))
    table.add_column("factor")
    for c in columns[1:]:
        table.add_column(c, justify="right", style="bold" if c == metric else None)
    if bar_col:
        table.add_column(f"|{columns[bar_col]}|")
    for r in rows:
        cells = [escape(str(r[0]))] + ["-" if v is None else f"{v:+.4f}" for v in r[1:]]
        if bar_col:
            v = r[bar_col]
            width = 0 if v is None or not scale else round(abs(v) / scale * 20)
            cells.append(Text("█" * width, style="green" if (v or 0) >= 0 else "red"))
        table.add_row(*cells)
    return table


def _matrix(console: Console, snap: DirectorySnapshot, metric: str, top: int, as_json: bool) -> None:
    built, shown = directory_matrix(snap, metric, top)
    if as_json:
        print_json(shown)
    else:
        render_matrix(console, built, shown)
