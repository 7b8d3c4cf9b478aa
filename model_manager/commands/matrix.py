"""Rendering of the research views for `inspect` (SPEC §11): the factor × symbol matrix
(`inspect DIR --matrix METRIC`) and a group's importance beside its IC (`inspect DIR --symbol S`).

The matrix is printed in blocks of as many symbol columns as the console is wide (80 columns when
piped), each block repeating the factor names, so it reads the same in a terminal, a pager or a file.
Colour says the sign (green positive, red negative) and the size (bold: the top third of the
largest |value|, dim: the bottom third); without colour the sign is in the text.
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from model_manager.artifacts import DirectorySnapshot, GroupSnapshot
from model_manager.commands.tables import Column, print_table
from model_manager.conversion import IMPORTANCE_TYPES
from model_manager.research import Matrix, build_index

FACTOR_WIDTH = 32


def directory_matrix(snap: DirectorySnapshot, metric: str, top: int) -> tuple[Matrix, dict]:
    """The matrix of a directory read by the CLI: every group's importance is its own model's."""
    index = build_index((g, g if g.importance is not None else None) for g in snap.groups.values())
    matrix = index.matrix(metric)
    return matrix, matrix.to_dict(snap.path.name, top)


def render_matrix(console: Console, matrix: Matrix, shown: dict) -> None:
    factors, rows, symbols = shown["factors"], shown["values"], shown["symbols"]
    total = len(matrix.factors)
    head = f"{matrix.metric}: {len(factors)} of {total} factors × {len(symbols)} symbols, by mean |value| (largest first)"
    console.print(Text(head, style="bold"))
    if not factors:
        console.print(Text(f"no values for {matrix.metric} in any group", style="dim"))
        return
    scale = max((abs(v) for row in rows for v in row if v is not None), default=0.0) or 1.0
    fw = min(max(len(f) for f in factors), FACTOR_WIDTH)
    cw = max(8, min(max((len(s) for s in symbols), default=7), 12))
    per_block = max(1, (console.width - fw - 10) // (cw + 1))
    for start in range(0, len(symbols), per_block):
        block = range(start, min(start + per_block, len(symbols)))
        table = Table(box=None, padding=(0, 0, 0, 1), show_edge=False, pad_edge=False,
                      title=f"symbols {start + 1}–{block[-1] + 1} of {len(symbols)}" if len(symbols) > per_block else None,
                      title_justify="left", title_style="dim")
        table.add_column("factor", no_wrap=True, max_width=fw, overflow="ellipsis")
        table.add_column("mean|v|", justify="right", no_wrap=True, style="dim")
        for j in block:
            table.add_column(escape(symbols[j]), justify="right", no_wrap=True, width=cw, overflow="ellipsis")
        for i, factor in enumerate(factors):
            cells = [_cell(rows[i][j], scale, matrix.metric) for j in block]
            table.add_row(escape(factor), _number(matrix.mean_abs[i], None), *cells)
        console.print(table)


def _number(value: float, metric: str | None) -> str:
    """At most 8 characters: 3 significant digits, signed for IC values (None: an unsigned mean)."""
    signed = metric is not None and metric not in IMPORTANCE_TYPES
    text = f"{value:+.3g}" if signed else f"{value:.3g}"
    if len(text) > 8:
        text = f"{value:+.1e}" if signed else f"{value:.1e}"
    return text


def _cell(value: float | None, scale: float, metric: str) -> Text:
    if value is None:
        return Text("·", style="dim")
    share = abs(value) / scale
    colour = "red" if value < 0 else "green"
    style = f"bold {colour}" if share > 2 / 3 else colour if share > 1 / 3 else f"dim {colour}"
    return Text(_number(value, metric), style=style)


def render_importance(console: Console, g: GroupSnapshot, top: int) -> None:
    """The model's importance per factor, with the IC's kendall_tau and both ranks side by side:
    where the ranks differ most, the model leans on a factor the IC does not rate (or the reverse)."""
    console.rule("Importance (from the model)", align="left")
    if g.importance is None:
        console.print("[dim]no importance: the group has errors, so its model is not served[/dim]")
        return
    gain = g.importance.get("gain", {})
    if not gain:
        console.print("[dim]the model splits on no factor (a constant model)[/dim]")
        return
    tau = g.kendall_by_factor()
    by_gain = sorted(gain, key=lambda f: (-gain[f], f))
    by_tau = sorted((f for f in g.factors if tau.get(f) is not None), key=lambda f: (-abs(tau[f]), f))
    tau_rank = {f: i + 1 for i, f in enumerate(by_tau)}
    columns = [Column("factor", fold=True), Column("gain", justify="right", style="bold")]
    columns += [Column(t, justify="right", drop=1) for t in IMPORTANCE_TYPES if t != "gain"]
    columns += [Column("kendall_tau", justify="right"), Column("gain rank", justify="right", drop=2),
                Column("|τ| rank", justify="right", drop=2)]
    rows = []
    for rank, factor in enumerate(by_gain[:top] if top else by_gain, start=1):
        values = {t: g.importance.get(t, {}).get(factor) for t in IMPORTANCE_TYPES}
        t = tau.get(factor)
        other = tau_rank.get(factor)
        far = other is not None and abs(other - rank) > max(3, len(by_gain) // 3)
        rows.append([factor, *["-" if values[k] is None else f"{values[k]:.4g}" for k in ("gain", *[x for x in IMPORTANCE_TYPES if x != "gain"])],
                     "-" if t is None else f"{t:+.4f}", str(rank), Text("-" if other is None else str(other), style="yellow" if far else "")])
    print_table(console, columns, rows, indent=2)
    unused = len(set(g.factors) - set(gain))
    note = f"{len(gain)} of {len(set(g.factors))} factors used by the trees"
    console.print(f"[dim]{note}{f'; {unused} never split on' if unused else ''}; "
                  "yellow: the |kendall_tau| rank is far from the gain rank[/dim]")
