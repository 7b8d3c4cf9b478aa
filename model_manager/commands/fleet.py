"""`model-manager fleet NAME`: which client runs which version of each symbol, read offline from the
data dir (what every server sharing it has recorded, within a second or two)."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from model_manager.commands import DataDirOption, JsonOption, app, open_manager, print_json
from model_manager.errors import PathError
from model_manager.fleet import fleet_cells


@app.command()
def fleet(
    name: str,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Show every client × symbol of a model: the version it last received (200) or confirmed (304),
    the live version, and whether it is current, behind (since when) or never fetched.

    A client is an API key's name, or `session` for password sessions. Servers write what they see
    to the data dir every second or so, so this works while they run and after they stop."""
    with open_manager(data_dir) as manager:
        if not manager.has_database():
            raise PathError(f"no database in {manager.settings.data_dir}: nothing has been recorded there yet "
                            "(check --data-dir or MODEL_MANAGER_DATA_DIR)")
        report = manager.fleet_report(name)
    if as_json:
        print_json(report)
        return
    console = Console(highlight=False)
    if not report["clients"]:
        console.print(f"no client has fetched a model of {escape(name)} yet ({len(report['groups'])} symbols live)")
        return
    table = Table(title=f"fleet of {escape(name)}", title_justify="left")
    for column in ("client", "address", "symbol", "version", "live", "state", "behind since (UTC)", "last seen (UTC)"):
        table.add_column(column, justify="right" if column in ("version", "live") else "left")
    for cell in fleet_cells(report):
        state = {"current": "[green]current[/]", "behind": "[red]behind[/]"}.get(cell["state"], "[dim]never fetched[/]")
        fetched, confirmed = cell["fetched_at"], cell["confirmed_at"]
        seen = "-" if not (fetched or confirmed) else \
            f"{_time(confirmed)} (304)" if confirmed and (not fetched or confirmed > fetched) else f"{_time(fetched)} (200)"
        table.add_row(escape(cell["client"]), escape(cell["address"] or "-"), escape(cell["symbol"]),
                      _number(cell["version"]), _number(cell["live_version"]), state,
                      _time(cell["behind_since"]) if cell["state"] == "behind" else "", seen)
    console.print(table)
    count, behind = len(report["clients"]), sum(1 for c in report["clients"] if c["behind"])
    clients = f"{count} client{'s' if count != 1 else ''}"
    console.print(f"{clients}, [red]{behind} behind[/] on some symbol" if behind else f"{clients}, all current on what they fetched")


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _time(iso: str | None) -> str:
    """`2026-05-01T12:00:00+00:00` as `2026-05-01 12:00:00` (the columns say UTC)."""
    return iso.replace("T", " ").removesuffix("+00:00") if iso else "-"
