"""`model-manager fleet NAME`: which client runs which version of each symbol, read offline from the
data dir (what every server sharing it has recorded, within a second or two)."""
from __future__ import annotations

from rich.text import Text

from model_manager.commands import DataDirOption, JsonOption, ModelName, app, example, open_existing, print_json
from model_manager.commands.tables import Column, print_table, short_time, stdout_console
from model_manager.fleet import fleet_cells

STATE = {"current": Text("current", style="green"), "behind": Text("behind", style="red")}
# on a narrow terminal the last-seen time, then the address make way (--json has them)
COLUMNS = [Column("client"), Column("address", drop=1), Column("symbol"), Column("version", justify="right"),
           Column("live", justify="right"), Column("state"), Column("behind since (UTC)"), Column("last seen (UTC)", drop=2)]


@app.command(epilog=example("model-manager fleet demo"))
def fleet(
    name: ModelName,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Show every client × symbol of a model: the version it last received (200) or confirmed (304),
    the live version, and whether it is current, behind (since when) or never fetched.

    A client is an API key's name, or `session` for password sessions. Servers write what they see
    to the data dir every second or so, so this works while they run and after they stop."""
    with open_existing(data_dir) as manager:
        report = manager.fleet_report(name)
    if as_json:
        print_json(report)
        return
    console = stdout_console()
    if not report["clients"]:
        console.print(Text(f"no client has fetched a model of {name} yet ({len(report['groups'])} symbols live)"))
        return
    print_table(console, COLUMNS, [_row(cell) for cell in fleet_cells(report)], title=f"fleet of {name}")
    count, behind = len(report["clients"]), sum(1 for c in report["clients"] if c["behind"])
    clients = f"{count} client{'s' if count != 1 else ''}"
    console.print(Text.assemble(clients, ", ", (f"{behind} behind", "red"), " on some symbol") if behind
                  else Text(f"{clients}, all current on what they fetched"))


def _row(cell: dict) -> list[str | Text]:
    fetched, confirmed = cell["fetched_at"], cell["confirmed_at"]
    seen = "-" if not (fetched or confirmed) else \
        f"{short_time(confirmed)} (304)" if confirmed and (not fetched or confirmed > fetched) else f"{short_time(fetched)} (200)"
    return [cell["client"], cell["address"] or "-", cell["symbol"], _number(cell["version"]), _number(cell["live_version"]),
            STATE.get(cell["state"], Text("never fetched", style="dim")),
            short_time(cell["behind_since"]) or "-" if cell["state"] == "behind" else "", seen]


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)
