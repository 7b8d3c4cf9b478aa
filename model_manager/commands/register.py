"""`model-manager register`: add, list and remove registered model directories."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from model_manager.commands import DataDirOption, JsonOption, app, open_manager, print_json
from model_manager.errors import UsageError


@app.command()
def register(
    name: str = typer.Argument(None, help="Name to register the directory under (letters, digits, . _ -)."),
    path: str = typer.Argument(None, help="The model directory."),
    list_: bool = typer.Option(False, "--list", "-l", help="List registered models."),
    remove: str = typer.Option(None, "--remove", "-r", metavar="NAME", help="Unregister NAME (its files are not touched)."),
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Register a model directory with the service (the same rules as POST /api/models).

    The directory must hold at least one group and no symbol may be in several groups. The
    registration is written to the data dir; a running server picks it up within one watch interval.
    """
    console = Console()
    with open_manager(data_dir) as manager:
        if list_:
            rows = manager.registered()
            if as_json:
                print_json({"models": [r.__dict__ for r in rows]})
                return
            table = Table("name", "path", "registered_at", title=f"registered models ({manager.settings.db_path})",
                          title_justify="left")
            for r in rows:
                table.add_row(escape(r.name), escape(r.path), r.registered_at)
            console.print(table if rows else "no models registered")
            return
        if remove:
            manager.unregister(remove, client="cli")
            console.print(f"removed {escape(remove)}")
            return
        if not name or not path:
            raise UsageError("give NAME and PATH (or --list, or --remove NAME); see model-manager register --help")
        with console.status(f"reading {escape(path)}..."):
            done = manager.register(name, path, client="cli")
    if not done.created:
        console.print(f"{escape(name)} is already registered for {escape(done.path)}")
        return
    errors = done.error_groups
    console.print(f"registered {escape(name)} -> {escape(done.path)}: {len(done.snapshot.groups)} groups"
                  + (f", [red]{len(errors)} with errors[/red] (see model-manager inspect {escape(done.path)})" if errors else ""))
