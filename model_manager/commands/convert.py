"""`model-manager convert`: pickled models → XGBoost JSON, offline, verified."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from model_manager.commands import JsonOption, app, err_console, example, open_manager, print_json
from model_manager.commands.tables import Column, print_table, stdout_console
from model_manager.converter import ConvertResult

STYLE = {"converted": "green", "skipped": "yellow", "failed": "red"}


@app.command(epilog=example("model-manager convert ./models -o ./models-json"))
def convert(
    path: Path = typer.Argument(..., help="A *_model.pkl file, or a directory: every *_model.pkl in it."),
    output: Path = typer.Option(None, "--output", "-o", help="Directory for the JSON files (default: next to each pickle)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite JSON files that already exist."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Prove the JSON predicts bit-identically before writing it."),
    as_json: JsonOption = False,
) -> None:
    """Convert pickled XGBoost models ({group}_model.pkl) to XGBoost JSON ({group}_model.json).

    Pickles are loaded through the allow-list unpickler, so a hostile file is refused, never run. Each
    JSON is written atomically, and with --verify (the default) only after it predicted random inputs
    bit-identically to the pickle. Existing JSON files are skipped unless --force. Prints one line per
    file and a count; --json prints {"results": [{"source", "target", "status", "features",
    "json_bytes", "message", "warnings"}], "converted", "skipped", "failed"}. Exit codes: 0 all
    converted or skipped, 1 any failure, 2 bad path.
    """
    # on a terminal only: rich would leave an empty line on a redirected stderr
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as progress, open_manager() as manager:
        task = progress.add_task("converting", total=None)

        def step(done: int, total: int, src: Path) -> None:
            progress.update(task, description=f"converting {src.name}", completed=done, total=total)

        results = manager.convert(path, output, force=force, verify=verify, progress=step)
    counts = {s: sum(r.status == s for r in results) for s in STYLE}
    if as_json:
        print_json({"results": [_as_dict(r) for r in results], **counts})
    else:
        console = stdout_console()
        print_table(console, [Column("result"), Column("what", fold=True)],
                    [[Text(r.status, style=STYLE[r.status]), _line(r)] for r in results], header=False)
        console.print(f"{counts['converted']} converted, {counts['skipped']} skipped, {counts['failed']} failed"
                      + (f" → {output}" if output else ""), markup=False)
    if counts["failed"]:
        raise typer.Exit(1)


def _as_dict(r: ConvertResult) -> dict:
    return {"source": str(r.source), "target": str(r.target), "status": r.status, "features": r.num_features,
            "json_bytes": r.size, "message": r.message, "warnings": list(r.warnings)}


def _line(r: ConvertResult) -> str:
    """`X_model.pkl → X_model.json: 16 features, 23 KiB, verified …` (or the reason it was not written)."""
    if r.status != "converted":
        return f"{r.source.name}: {r.message}"
    facts = [f"{r.num_features} features" if r.num_features else None, f"{r.size / 1024:.0f} KiB" if r.size else None,
             r.message, *r.warnings]
    return f"{r.source.name} → {r.target.name}: " + ", ".join(f for f in facts if f)
