"""`model-manager register`: add, list and remove registered model directories."""
from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.text import Text

from model_manager.commands import DataDirOption, JsonOption, app, err_console, example, open_existing, open_manager, print_json, refuse_together
from model_manager.commands.tables import Column, print_table, stdout_console
from model_manager.errors import UsageError
from model_manager.service import Registration


@app.command(epilog=example("model-manager register demo ./demo-models"))
def register(
    name: str = typer.Argument(None, help="Name to register the directory under (letters, digits, . _ -)."),
    path: str = typer.Argument(None, help="The model directory."),
    list_: bool = typer.Option(False, "--list", "-l", help="List registered models."),
    remove: str = typer.Option(None, "--remove", "-r", metavar="NAME", help="Unregister NAME (its files are not touched)."),
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Register a model directory with the service (the same rules as POST /api/models).

    The directory must hold at least one group and no symbol may be in several groups. Groups with
    errors are registered too (the server serves them once they are fixed), with a warning that counts
    them; but a directory in which every group has an error is refused with exit 1, since nothing in
    it could be served. The registration is written to the data dir; a running server picks it up
    within one watch interval. With --json: the registration as {"name", "path", "created",
    "group_count", "error_groups"}, with --list {"models": [...]}, with --remove {"name", "removed": true}.
    """
    refuse_together({"--list": list_, "--remove NAME": remove, "NAME PATH": name or path})
    if list_:
        _list(as_json, data_dir)
    elif remove:
        with open_existing(data_dir) as manager:
            manager.unregister(remove, client="cli")
        if as_json:
            print_json({"name": remove, "removed": True})
        else:
            stdout_console().print(Text(f"removed {remove}"))
    elif not name or not path:
        raise UsageError("give NAME and PATH (or --list, or --remove NAME); see model-manager register --help")
    else:
        with open_manager(data_dir) as manager, err_console.status(f"reading {path}..."):
            done = manager.register(name, path, client="cli", require_servable=True)
        _report(done, as_json)


def _report(done: Registration, as_json: bool) -> None:
    groups = len(done.snapshot.groups) if done.snapshot else None
    if as_json:
        print_json({"name": done.name, "path": done.path, "created": done.created, "group_count": groups,
                    "error_groups": done.error_groups})
    elif not done.created:
        stdout_console().print(Text(f"{done.name} is already registered for {done.path}"))
    else:
        stdout_console().print(Text(f"registered {done.name} -> {done.path}: {groups} groups"))
    if done.error_groups:
        err_console.print(Text(f"warning: {len(done.error_groups)} of {groups} groups have errors and are not served until "
                               f"fixed ({', '.join(done.error_groups)}; see model-manager inspect {shlex.quote(done.path)})",
                               style="yellow"))


def _list(as_json: bool, data_dir: Path | None) -> None:
    with open_existing(data_dir) as manager:
        rows, db_path = manager.registered(), manager.settings.db_path
    if as_json:
        print_json({"models": [r.__dict__ for r in rows]})
    elif rows:
        print_table(stdout_console(), [Column("name"), Column("path", fold=True), Column("registered_at")],
                    [[r.name, r.path, r.registered_at] for r in rows], title=f"registered models ({db_path})")
    else:
        stdout_console().print("no models registered")
