"""`model-manager convert`: pickled models → XGBoost JSON, offline, verified."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from model_manager.commands import app, open_manager

STYLE = {"converted": "green", "skipped": "yellow", "failed": "red"}


@app.command()
def convert(
    path: Path = typer.Argument(..., help="A *_model.pkl file, or a directory: every *_model.pkl in it."),
    output: Path = typer.Option(None, "--output", "-o", help="Directory for the JSON files (default: next to each pickle)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite JSON files that already exist."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Prove the JSON predicts bit-identically before writing it."),
) -> None:
    """Convert pickled XGBoost models ({group}_model.pkl) to XGBoost JSON ({group}_model.json).

    Pickles are loaded through the allow-list unpickler, so a hostile file is refused, never run. Each
    JSON is written atomically, and with --verify (the default) only after it predicted random inputs
    bit-identically to the pickle. Existing JSON files are skipped unless --force. Exit codes: 0 all
    converted or skipped, 1 any failure, 2 bad path.
    """
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress, open_manager() as manager:
        task = progress.add_task("converting", total=None)

        def step(done: int, total: int, src: Path) -> None:
            progress.update(task, description=f"converting {src.name}", completed=done, total=total)

        results = manager.convert(path, output, force=force, verify=verify, progress=step)
    table = Table(title="convert", title_justify="left")
    for col in ("model", "result", "features", "JSON size", "detail"):
        table.add_column(col, justify="right" if col in ("features", "JSON size") else "left")
    for r in results:
        detail = r.message + ("; " + "; ".join(r.warnings) if r.warnings else "")
        table.add_row(escape(r.source.name), f"[{STYLE[r.status]}]{r.status}[/]",
                      str(r.num_features or "-"), f"{r.size / 1024:.0f} KiB" if r.size else "-", escape(detail))
    Console().print(table)
    counts = {s: sum(r.status == s for r in results) for s in STYLE}
    Console().print(f"{counts['converted']} converted, {counts['skipped']} skipped, {counts['failed']} failed"
                    + (f" → {output}" if output else ""))
    if counts["failed"]:
        raise typer.Exit(1)
