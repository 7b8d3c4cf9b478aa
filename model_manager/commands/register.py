"""`model-manager register`: add, list and remove registered model directories."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from model_manager.commands import app, fail
from model_manager.conversion import ConversionCache
from model_manager.registration import check_name, validate_registration
from model_manager.settings import Settings
from model_manager.store import Store


@app.command()
def register(
    name: str = typer.Argument(None, help="Name to register the directory under (letters, digits, . _ -)."),
    path: str = typer.Argument(None, help="The model directory."),
    list_: bool = typer.Option(False, "--list", "-l", help="List registered models."),
    remove: str = typer.Option(None, "--remove", "-r", metavar="NAME", help="Unregister NAME (its files are not touched)."),
    as_json: bool = typer.Option(False, "--json", help="With --list: print JSON."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="MODEL_MANAGER_DATA_DIR", help="Data directory (sqlite db, cache)."),
) -> None:
    """Register a model directory with the service (the same rules as POST /api/models).

    The directory must hold at least one group and no symbol may be in several groups. The
    registration is written to the data dir; a running server picks it up within one watch interval.
    """
    settings = Settings.from_env().replace(data_dir=data_dir)
    store = Store(settings.db_path)
    console = Console()
    if list_:
        rows = store.list_models()
        if as_json:
            typer.echo(json.dumps({"models": [r.__dict__ for r in rows]}, indent=2))
            return
        table = Table("name", "path", "registered_at", title=f"registered models ({settings.db_path})", title_justify="left")
        for r in rows:
            table.add_row(escape(r.name), escape(r.path), r.registered_at)
        console.print(table if rows else "no models registered")
        return
    if remove:
        check_name(remove)
        if not store.remove_model(remove, client="cli"):
            raise fail(f"no model named {remove!r} is registered (see model-manager register --list)", 2)
        console.print(f"removed {remove}")
        return
    if not name or not path:
        raise fail("give NAME and PATH (or --list, or --remove NAME); see model-manager register --help", 2)
    cache = ConversionCache(settings.cache_dir)
    with console.status(f"reading {path}..."):
        abspath, snap = validate_registration(store, name, path, max_bytes=settings.max_artifact_bytes, cache=cache)
    if snap is None:
        console.print(f"{name} is already registered for {abspath}")
        return
    store.add_model(name, abspath, client="cli", detail=f"{name} -> {abspath} ({len(snap.groups)} groups)")
    errors = sum(1 for g in snap.groups.values() if g.status == "error")
    console.print(f"registered {name} -> {abspath}: {len(snap.groups)} groups"
                  + (f", [red]{errors} with errors[/red] (see model-manager inspect {abspath})" if errors else ""))
