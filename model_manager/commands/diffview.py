"""How `model-manager diff` shows a SPEC §6 diff object with rich: factor changes, dim, IC delta bars,
training metadata changes, the model's trees and parameters, and prediction agreement."""
from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.text import Text

from model_manager.commands.tables import Column, print_table, short_time
from model_manager.errors import UsageError

BAR_WIDTH = 12  # characters on each side of the zero line


def render_diff(console: Console, symbol: str, diff: dict, metric: str, top: int) -> None:
    """Print a diff object; UsageError when `metric` is not a metric either version's IC table has."""
    rows = _ic_rows(diff["ic"], metric)
    a, b = diff["from"], diff["to"]
    console.print(Text.assemble((symbol, "bold"), "  ", (f"v{a['version']}", "cyan"), " → ", (f"v{b['version']}", "cyan"),
                                ("   created ", "dim"), short_time(a["created_at"]), " → ", short_time(b["created_at"])))
    _factors(console, diff["factors"], diff["dim"])
    _ic(console, rows, metric, top)
    _info(console, diff["info"])
    _model(console, diff["model"])
    _predictions(console, diff.get("predictions"), diff.get("predictions_note"))


def _ic_rows(entries: list[dict], metric: str) -> list[dict]:
    metrics = list(dict.fromkeys(e["metric"] for e in entries))
    if entries and metric.lower() not in metrics:
        raise UsageError(f"--metric {metric}: neither version's IC table has it (metrics: {', '.join(metrics)})")
    return [e for e in entries if e["metric"] == metric.lower()]


def _factors(console: Console, factors: dict, dim: dict) -> None:
    console.rule("Factors", align="left")
    dims = f"dim {_plain(dim['from'])} → {_plain(dim['to'])}" if dim["from"] != dim["to"] else f"dim {_plain(dim['to'])} (unchanged)"
    console.print(Text(dims, style="bold" if dim["from"] != dim["to"] else ""))
    if not (factors["added"] or factors["removed"] or factors["moved"]):
        console.print("[dim]the same factors in the same dimension order[/dim]")
        return
    for name in factors["added"]:
        console.print(Text.assemble(("  + ", "green"), name, (" added", "dim")))
    for name in factors["removed"]:
        console.print(Text.assemble(("  - ", "red"), name, (" removed", "dim")))
    for move in factors["moved"]:
        console.print(Text.assemble(("  ~ ", "yellow"), move["factor"], ("  dim ", "dim"), f"{move['from_dim']} → {move['to_dim']}"))


def _ic(console: Console, rows: list[dict], metric: str, top: int) -> None:
    console.rule(f"IC: {metric} per factor (to − from)", align="left")
    if not rows:
        console.print("[dim]no IC table in either version[/dim]")
        return
    rows = sorted(rows, key=lambda e: -abs(e["delta"]) if e["delta"] is not None else 1)
    if top:
        rows = rows[:top]
    scale = max((abs(e["delta"]) for e in rows if e["delta"] is not None), default=0.0)
    columns = [Column("factor", fold=True), Column("from", justify="right"), Column("to", justify="right"),
               Column("delta", justify="right"), Column("", drop=1, decoration=True)]
    print_table(console, columns, [[str(e["factor"]), _num(e["from"]), _num(e["to"]), _num(e["delta"]), _bar(e["delta"], scale)]
                                   for e in rows])


def _bar(delta: float | None, scale: float) -> Text:
    """A bar either side of a zero line: red to the left for a drop, green to the right for a rise."""
    if delta is None:
        return Text(" " * BAR_WIDTH + "│" + " n/a", style="dim")
    width = round(abs(delta) / scale * BAR_WIDTH) if scale else 0
    left = ("█" * width).rjust(BAR_WIDTH) if delta < 0 else " " * BAR_WIDTH
    right = "█" * width if delta > 0 else ""
    return Text.assemble((left, "red"), ("│", "dim"), (right, "green"))


def _info(console: Console, info: dict) -> None:
    console.rule("Training metadata", align="left")
    if not (info["changed"] or info["added"] or info["removed"]):
        console.print("[dim]no key changed[/dim]")
        return
    rows = [[Text(f"~ {key}", style="yellow"), _change(change)] for key, change in _flat_changes(info["changed"])]
    rows += [[Text(f"+ {key}", style="green"), Text("added", style="dim")] for key in info["added"]]
    rows += [[Text(f"- {key}", style="red"), Text("removed", style="dim")] for key in info["removed"]]
    _pairs(console, rows)


def _flat_changes(changed: dict) -> list[tuple[str, dict]]:
    """Changed keys; a dict value (params, metrics) is shown by the sub-keys that changed."""
    out = []
    for key, change in changed.items():
        a, b = change["from"], change["to"]
        if isinstance(a, dict) and isinstance(b, dict):
            out += [(f"{key}.{sub}", {"from": a.get(sub), "to": b.get(sub)})
                    for sub in dict.fromkeys([*a, *b]) if a.get(sub) != b.get(sub)]
        else:
            out.append((key, change))
    return out


def _model(console: Console, model: dict) -> None:
    console.rule("Model", align="left")
    trees = model["num_trees"]
    console.print(f"trees {_plain(trees['from'])} → {_plain(trees['to'])}" if trees["from"] != trees["to"]
                  else f"trees {_plain(trees['to'])} (unchanged)")
    changed = model["params"]["changed"]
    if not changed:
        console.print("[dim]no parameter changed[/dim]")
        return
    _pairs(console, [[Text(key, style="cyan"), _change(change)] for key, change in changed.items()])


def _pairs(console: Console, rows: list[list[str | Text]]) -> None:
    """Key → change rows: the keys whole; on a narrow terminal the changes wrap in their column."""
    print_table(console, [Column("key"), Column("change", fold=True)], rows, header=False)


def _change(change: dict) -> str:
    return f"{_plain(change['from'])} → {_plain(change['to'])}"


def _predictions(console: Console, predictions: dict | None, note: str | None) -> None:
    console.rule("Prediction agreement", align="left")
    if predictions is None:
        console.print(Text(f"not compared: {note}" if note else "not compared", style="dim"))
        return
    corr = predictions["correlation"]
    console.print(Text.assemble(f"{predictions['rows']} fixed pseudo-random rows:  ",
                                ("mean |diff| ", "dim"), _num(predictions["mean_abs_diff"], sign=False),
                                ("  max |diff| ", "dim"), _num(predictions["max_abs_diff"], sign=False),
                                ("  correlation ", "dim"), (_num(corr, sign=False), _agreement(corr))))


def _agreement(corr: float | None) -> str:
    if corr is None:
        return "dim"
    return "green" if corr >= 0.95 else "yellow" if corr >= 0.8 else "red"


def _num(value: Any, *, sign: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4g}"


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
