"""`model-manager demo`: a small realistic model directory to try everything on."""
from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.markup import escape

from model_manager.commands import JsonOption, app, err_console, example, print_json
from model_manager.commands.tables import stdout_console
from model_manager.errors import PathError


@app.command(epilog=example("model-manager demo ./demo-models"))
def demo(
    directory: Path = typer.Argument(..., help="Where to write the demo model directory (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Write even if the directory already has files."),
    as_json: JsonOption = False,
) -> None:
    """Write a demo model directory to try everything on.

    Several symbols with trained XGBoost models (sklearn API, raw Booster, classifier, JSON-only, one
    trained with feature names), factor lists, IC tables with kendall_tau and training metadata.
    With --json: {"path", "groups": [group keys]}.
    """
    if directory.exists() and not directory.is_dir():
        raise PathError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise PathError(f"{directory} is not empty: pick a new directory or pass --force")
    with err_console.status("training demo models..."):
        from model_manager.demo import write_demo  # numpy, pandas, xgboost: only for this command

        groups = write_demo(directory)
    if as_json:
        print_json({"path": str(directory.absolute()), "groups": list(groups)})
        return
    console = stdout_console()
    console.print(f"wrote {len(groups)} groups to {escape(str(directory))}: {', '.join(groups)}")
    console.print(f"next: [bold]model-manager inspect {escape(shlex.quote(str(directory)))}[/bold]")
