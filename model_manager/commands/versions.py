"""`model-manager versions / pin / unpin / rollback / hold / release / diff`: the versions of a group
(SPEC §6), read and changed offline in the data dir. A running server on the same data dir serves
the new live versions within a second or two (it follows `versions.state_seq`)."""
from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from model_manager.commands import DataDirOption, JsonOption, ModelName, app, example, open_existing, print_json, refuse_together
from model_manager.commands.diffview import render_diff
from model_manager.commands.tables import Column, print_table, short_time, stdout_console

Symbol = Annotated[str, typer.Argument(help="The symbol, e.g. SOLUSDT.")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why: kept in the audit trail (model-manager audit).")]

STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "red"}


@app.command(epilog=example("model-manager versions demo SOLUSDT"))
def versions(name: ModelName, symbol: Symbol, as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Show every version of a symbol's model, newest first.

    For each: whether it is live or pinned, when it was created and served (live from–until, UTC),
    its dim, factor count, model source, status, and whether its bytes were pruned.

    Versions are recorded by the server (at registration, refresh and watcher reloads); with
    --json the object of GET /api/models/NAME/symbols/SYMBOL/versions is printed as is.
    """
    with open_existing(data_dir) as manager:
        state = manager.version_history(name, symbol)
    if as_json:
        print_json(state)
        return
    console = stdout_console()
    console.print(_state_line(state))
    print_table(console, VERSION_COLUMNS, [_version_row(v, state["held"]) for v in state["versions"]])


# on a narrow terminal the factor count, the source, then the creation time make way (--json has them)
VERSION_COLUMNS = [Column("version"), Column("created", drop=1), Column("live from"), Column("live until"),
                   Column("dim", justify="right"), Column("factors", justify="right", drop=3), Column("source", drop=2),
                   Column("status"), Column("pruned")]


def _version_row(v: dict, held: bool) -> list[str | Text]:
    until = short_time(v["live_until"]) or ("now" if v["live"] else "")
    return [Text(f"v{v['version']} ").append_text(_badges(v, held)), short_time(v["created_at"]), short_time(v["live_from"]),
            until, _dash(v["dim"]), _dash(v["factor_count"]), v["model_source"] or "-",
            Text(v["status"], style=STATUS_STYLE.get(v["status"], "")), Text("yes", style="dim") if v.get("pruned") else ""]


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _badges(v: dict, held: bool) -> Text:
    """`live` (or `held` while a hold keeps it live) and `pinned`, as coloured labels."""
    text = Text()
    if v["live"]:
        text.append("held" if held and not v["pinned"] else "live", style="bold green")
    if v["pinned"]:
        text.append(" " if v["live"] else "").append("pinned", style="bold yellow")
    return text


def _state_line(state: dict) -> Text:
    line = Text.assemble((f"{state['model_name']} / {state['symbol']}", "bold"), f" ({state['group_key']})  ",
                         ("live ", "dim"), _v(state["live_version"]), ("  latest ", "dim"), _v(state["latest_version"]))
    pin = state.get("pin")
    if pin:
        line.append("  pinned ", style="dim").append(f"v{pin['version']}", style="yellow")
        line.append(f" since {short_time(pin['pinned_at'])}" + (f" ({pin['reason']})" if pin["reason"] else ""))
    hold = state.get("hold")
    if hold:
        line.append("  held", style="bold yellow")
        line.append(f" since {short_time(hold['held_at'])}" + (f" ({hold['reason']})" if hold["reason"] else ""))
    return line


def _v(number: int | None) -> str:
    return "-" if number is None else f"v{number}"


def _why_live(state: dict) -> str:
    """Why the live version is live: pinned, held or latest."""
    live = state["live_version"]
    if live is not None and state["pinned_version"] == live:
        return "pinned"
    if state["held"] and live != state["latest_version"]:
        return f"held; v{state['latest_version']} is waiting"
    return "latest"


def _serves(state: dict) -> str:
    live = state["live_version"]
    return "no version" if live is None else f"v{live} ({_why_live(state)})"


def _changed(symbol: str, before: dict, after: dict, verb: str = "now serves") -> str:
    """`SOLUSDT now serves v1 (pinned; was v2)`."""
    was, live = before["live_version"], after["live_version"]
    if live is None:
        return f"{symbol} serves no version"
    since = f"was v{was}" if was is not None and was != live else "unchanged"
    return f"{symbol} {verb} v{live} ({_why_live(after)}; {since})"


@app.command(epilog=example("model-manager pin demo SOLUSDT 1 --reason 'bad fills'"))
def pin(
    name: ModelName,
    symbol: Symbol,
    version: Annotated[int, typer.Argument(min=1, help="The version to serve (see model-manager versions NAME SYMBOL).")],
    reason: ReasonOption = "",
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Serve VERSION of a symbol's model until it is unpinned, whatever is recorded or held meanwhile.

    A pruned version cannot be pinned (its bytes are gone). A running server on the same data dir
    serves the pinned version within a second or two.
    """
    with open_existing(data_dir) as manager:
        before = manager.version_history(name, symbol)
        after = manager.pin(name, symbol, version, reason=reason, client="cli")
    _confirm(as_json, after, _changed(symbol, before, after))


@app.command(epilog=example("model-manager unpin demo SOLUSDT"))
def unpin(name: ModelName, symbol: Symbol, reason: ReasonOption = "", as_json: JsonOption = False,
          data_dir: DataDirOption = None) -> None:
    """Drop a symbol's pin: it serves its latest version again.

    While the model is held, it serves the version it is held at instead."""
    with open_existing(data_dir) as manager:
        before = manager.version_history(name, symbol)
        after = manager.unpin(name, symbol, reason=reason, client="cli")
    if before["pinned_version"] is None:
        message = f"{symbol} was not pinned; it serves {_serves(after)}"
    else:
        message = _changed(symbol, before, after)
    _confirm(as_json, after, message)


@app.command(epilog=example("model-manager rollback demo SOLUSDT --reason 'bad fills'"))
def rollback(name: ModelName, symbol: Symbol, reason: ReasonOption = "", as_json: JsonOption = False,
             data_dir: DataDirOption = None) -> None:
    """Pin the version that was live before the current one.

    Rolling back twice goes back twice, never forward to the version just rolled away from.
    Exits 1 when no older version has been served. Undo it with model-manager unpin NAME SYMBOL.
    """
    with open_existing(data_dir) as manager:
        before = manager.version_history(name, symbol)
        after = manager.rollback(name, symbol, reason=reason, client="cli")
    _confirm(as_json, after, _changed(symbol, before, after, verb="rolled back: now serves"))


@app.command(epilog=example("model-manager hold demo --reason 'review the retrain'"))
def hold(name: ModelName, reason: ReasonOption = "", as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """Hold a model: new versions are recorded but not served until it is released.

    Every group keeps serving its live version while retrains are recorded, until
    model-manager release NAME. Pins still win."""
    with open_existing(data_dir) as manager:
        was = manager.versions.hold_info(name) if manager.store.get_model(name) else None
        model = manager.hold(name, reason=reason, client="cli")
    if was is not None:
        message = f"{name} was already held (since {short_time(was['held_at'])})"
    else:
        message = f"{name} held: new versions are recorded but not served until `model-manager release {name}`"
    _confirm(as_json, model, message)


@app.command(epilog=example("model-manager release demo"))
def release(name: ModelName, reason: ReasonOption = "", as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """End a hold: every group serves its latest version again (pinned groups stay pinned)."""
    with open_existing(data_dir) as manager:
        was = manager.versions.hold_info(name) if manager.store.get_model(name) else None
        model = manager.release(name, reason=reason, client="cli")
    message = f"{name} released: each group serves its latest version (pins still win)" if was else f"{name} was not held"
    _confirm(as_json, model, message)


def _confirm(as_json: bool, data: dict, message: str) -> None:
    if as_json:
        print_json(data)
    else:
        stdout_console().print(Text(message))


@app.command(epilog=example("model-manager diff demo SOLUSDT --from 1 --to 2"))
def diff(
    name: ModelName,
    symbol: Symbol,
    from_version: Annotated[int, typer.Option("--from", min=1, help="The older version (default: the one before --to).")] = None,
    to_version: Annotated[int, typer.Option("--to", min=1, help="The newer version (default: the latest).")] = None,
    metric: Annotated[str, typer.Option("--metric", "-m", help="The IC metric of the delta bars [default: kendall_tau].",
                                        show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Show only the N largest IC deltas (0: all).")] = 0,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Compare two versions of a symbol's model.

    Shows factors added, removed and moved, dim, the IC delta per factor (bars for --metric),
    training metadata keys changed, tree count and changed parameters, and how closely both models
    agree on the same fixed pseudo-random inputs (mean and max absolute difference, correlation of
    the predictions; when both have the same dim).
    """
    if as_json:  # (the diff object has every metric and every row: these only shape the table)
        refuse_together({"--json": as_json, "--metric": metric})
        refuse_together({"--json": as_json, "--top": top})
    with open_existing(data_dir) as manager:
        result = manager.diff(name, symbol, from_version, to_version)
    if as_json:
        print_json(result)
        return
    render_diff(stdout_console(), symbol, result, metric or "kendall_tau", top)
