"""`model-manager inspect`: what is in a model directory, group by group."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from model_manager.artifacts import DirectorySnapshot, GroupSnapshot
from model_manager.commands import JsonOption, app, example, open_manager, print_json, refuse_together
from model_manager.commands.matrix import directory_matrix, render_importance, render_matrix
from model_manager.commands.tables import Column, print_table, stdout_console
from model_manager.errors import NotFoundError, PathError, UsageError

STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "red"}
BAR_WIDTH = 20
LONG_VALUE = 300  # metadata values longer than this are shortened on a terminal (--json has them whole)


@app.command(epilog=example("model-manager inspect ./models --symbol SOLUSDT"))
def inspect(
    path: Path = typer.Argument(..., help="Model directory to read (never modified)."),
    symbol: str = typer.Option(None, "--symbol", "-s", help="Show one symbol: metadata, IC table and factors."),
    group_key: str = typer.Option(None, "--group-key", "-g", help="Pick the group when a symbol is in several."),
    sort: str = typer.Option(None, "--sort", help="IC row order with --symbol: a metric (by |value|, largest first), 'dim' "
                                                  "or 'factor' (default: kendall_tau in tables, file order in --json)."),
    top: int = typer.Option(0, "--top", min=0, help="With --symbol, only the first N IC and importance rows; with --matrix, "
                                                    "the first N factors (0: all); also in --json."),
    matrix: str = typer.Option(None, "--matrix", "-m", metavar="METRIC",
                               help="Each factor across all symbols for an IC column or gain/total_gain/cover/weight "
                                    "(factors by mean |value|)."),
    as_json: JsonOption = False,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when the directory has an error: a group with an error, "
                                                        "or a problem that makes the server refuse it (for CI and scripts)."),
) -> None:
    """Show every group of a model directory: symbol, return, dim, factors, model source and status.

    Below the table: each issue, directory problems (a symbol in two groups), a summary and the files
    that belong to no group, with a did-you-mean for near misses. With --symbol, show that group's
    training metadata, issues, IC table (with a bar per factor), the model's importance per factor and
    the factor list. With --matrix METRIC, each factor across all symbols (IC values from ic.csv;
    importance only for groups without errors). Exit codes: 0 ok, 1 errors found with --strict, 2 bad
    path, unknown symbol, unknown --sort or --matrix metric.
    """
    _check_options(symbol, group_key, sort, matrix, top)
    with open_manager() as manager:
        snap = manager.inspect(path)
    if not snap.groups:
        raise PathError(f"no model groups in {path} (expected files like SYMBOL_RETURN_factors.txt)")
    console = stdout_console()
    if matrix:
        built, shown = directory_matrix(snap, matrix, top)
        if as_json:
            print_json(shown)
        else:
            render_matrix(console, built, shown)
        failed = snap.status == "error"
    elif symbol:
        group = _pick(snap, symbol, group_key)
        ic, metric = ordered_ic(group, sort if sort or as_json else "kendall_tau" if _has(group, "kendall_tau") else None, top)
        if as_json:
            print_json({**group.detail(snap.path.name), "ic": ic})
        else:
            _render_detail(console, group, ic, metric, top)
        failed = group.status == "error"
    else:
        if as_json:
            print_json(_listing(snap))
        else:
            _render_table(console, snap)
        failed = snap.status == "error"
    if strict and failed:
        raise typer.Exit(1)


def _check_options(symbol: str | None, group_key: str | None, sort: str | None, matrix: str | None, top: int) -> None:
    """Refuse what would be silently ignored: options that only go with --symbol (or --matrix), and
    --symbol with --matrix."""
    refuse_together({"--symbol": symbol, "--matrix": matrix})
    for option, value in (("--group-key", group_key), ("--sort", sort)):
        if value and not symbol:
            raise UsageError(f"{option} {value} goes with --symbol SYMBOL, which was not given")
    if top and not (symbol or matrix):
        raise UsageError(f"--top {top} goes with --symbol SYMBOL or --matrix METRIC, neither of which was given")


def _listing(snap: DirectorySnapshot) -> dict:
    return {
        "model_name": snap.path.name, "path": str(snap.path), "group_count": len(snap.groups),
        "symbol_count": len({g.symbol for g in snap.groups.values()}), "status": snap.status,
        "symbols": [g.summary() for g in snap.groups.values()], "duplicate_symbols": snap.duplicate_symbols(),
        "problems": [p.to_dict() for p in snap.problems], "ignored_files": snap.ignored,
    }


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


def _has(g: GroupSnapshot, column: str) -> bool:
    return bool(g.ic) and column in g.ic["columns"]


def ordered_ic(g: GroupSnapshot, sort: str | None, top: int) -> tuple[dict | None, str | None]:
    """The group's IC table ordered by `sort` (None: file order) and cut to `top` rows (0: all), with
    the metric sorted by (None for file, factor or dim order). An unknown metric is a UsageError,
    raised before anything is printed."""
    if not g.ic:
        return g.ic, None
    columns, rows = g.ic["columns"], list(g.ic["rows"])
    metric = sort.lower() if sort else None
    if metric == "factor":
        rows.sort(key=lambda r: str(r[0]))
    elif metric == "dim":
        order = {f: i for i, f in enumerate(g.factors)}
        rows.sort(key=lambda r: order.get(r[0], len(order)))
    elif metric in columns[1:]:
        idx = columns.index(metric)
        rows.sort(key=lambda r: -abs(r[idx]) if isinstance(r[idx], int | float) else 1)
    elif metric is not None:
        raise UsageError(f"--sort {sort}: not a column of {g.group_key}_ic.csv (columns: {', '.join(columns[1:])}; or dim, factor)")
    return {**g.ic, "rows": rows[:top] if top else rows}, metric if metric in columns[1:] else None


def _status(group: GroupSnapshot) -> Text:
    label = group.status + (f" ({len(group.issues)})" if group.issues else "")
    return Text(label, style=STATUS_STYLE[group.status])


def _render_table(console: Console, snap: DirectorySnapshot) -> None:
    columns = [Column("symbol", style="bold", fold=True), Column("return", fold=True), Column("dim", justify="right"),
               Column("factors", justify="right", drop=2), Column("source", drop=1), Column("status")]
    rows = [[g.symbol, g.return_name, "-" if g.dim is None else str(g.dim), str(len(g.factors)), g.model_source or "-", _status(g)]
            for g in snap.groups.values()]
    print_table(console, columns, rows, title=str(snap.path))
    for g in snap.groups.values():
        for issue in g.issues:
            console.print(Text.assemble((f"  {issue.severity:7} ", STATUS_STYLE[issue.severity]), (g.group_key, "bold"),
                                        f": {issue.message}"))
    for problem in snap.problems:
        console.print(Text(f"  error   {problem.message}", style="red"))
    counts = snap.counts()
    summary = Text.assemble(f"{len(snap.groups)} groups: ", (f"{counts['ok']} ok", "green"), ", ",
                            (f"{counts['warning']} warning", "yellow"), ", ", (f"{counts['error']} error", "red"))
    if counts["problems"]:
        n = counts["problems"]
        summary.append(f"; {n} directory problem{'s' if n > 1 else ''} (the server refuses this directory)", style="red")
    console.print(summary)
    if snap.ignored:
        console.print(Text(f"{len(snap.ignored)} unused file(s), not part of any group:", style="yellow"))
        print_table(console, [Column("file", fold=True), Column("hint", style="dim", fold=True)],
                    [[f["file"], f["hint"] or ""] for f in snap.ignored], header=False, indent=2)


def _render_detail(console: Console, g: GroupSnapshot, ic: dict | None, metric: str | None, top: int) -> None:
    console.print(Text.assemble((g.symbol, "bold"), f"  {g.group_key}  ", ("return ", "dim"), g.return_name,
                                ("  dim ", "dim"), "-" if g.dim is None else str(g.dim), ("  source ", "dim"),
                                g.model_source or "-", "  ", _status(g)))
    print_table(console, [Column("kind", style="dim"), Column("file", fold=True)],
                [[kind, name] for kind, name in g.files.items()], header=False)
    if g.issues:
        console.rule("Issues", align="left")
        for issue in g.issues:
            console.print(Text.assemble((f"{issue.severity:7} ", STATUS_STYLE[issue.severity]), (f"{issue.code}: ", "bold"), issue.message))
    if g.info:
        console.rule("Training metadata", align="left")
        rows = []
        for key, value in g.info.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if console.is_terminal and len(shown) > LONG_VALUE:
                shown = shown[: LONG_VALUE - 3] + "..."
            rows.append([str(key), shown])
        print_table(console, [Column("key", style="cyan"), Column("value", fold=True)], rows, header=False)
    console.rule("IC", align="left")
    if ic:
        _print_ic(console, ic, metric)
    else:
        console.print("[dim]no ic.csv[/dim]")
    render_importance(console, g, top)
    console.rule("Factors (dimension order)", align="left")
    tau = g.kendall_by_factor()
    print_table(console, [Column("dim", justify="right", style="dim"), Column("factor", fold=True), Column("kendall_tau", justify="right")],
                [[str(i), name, _number(tau.get(name))] for i, name in enumerate(g.factors)], indent=2)


def _number(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:+.4f}"
    return "-" if value is None else str(value)


def _print_ic(console: Console, ic: dict, metric: str | None) -> None:
    """The IC table with a bar per factor for the sorted metric (or kendall_tau). When it is too wide the
    bar goes first, then the metrics other than the sorted one and kendall_tau (see tables.py)."""
    names, rows = ic["columns"], ic["rows"]
    bar = metric or ("kendall_tau" if "kendall_tau" in names else None)
    bar_idx = names.index(bar) if bar else None
    columns = [Column("factor", fold=True)] + [
        Column(c, justify="right", style="bold" if c == metric else None, drop=0 if c in (metric, "kendall_tau") else 1)
        for c in names[1:]]
    cells = [[str(r[0])] + [_number(v) for v in r[1:]] for r in rows]
    if bar_idx is not None:
        values = [r[bar_idx] if isinstance(r[bar_idx], int | float) else None for r in rows]
        scale = max((abs(v) for v in values if v is not None), default=0)
        columns.append(Column(f"|{bar}|", drop=2, decoration=True))
        for row, v in zip(cells, values):
            width = 0 if v is None or not scale else round(abs(v) / scale * BAR_WIDTH)
            row.append(Text("█" * width, style="green" if (v or 0) >= 0 else "red"))
    print_table(console, columns, cells, indent=2)
