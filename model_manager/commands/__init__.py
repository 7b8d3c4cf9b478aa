"""The Typer application. Each command lives in its own module and registers itself on `app`;
errors from the core become one red line on stderr here, and nowhere else."""
from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from model_manager import __version__
from model_manager.errors import ModelManagerError

app = typer.Typer(
    help="Inspect, convert and serve per-symbol XGBoost model directories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines its command(s) with `@app.command()` on import (order = order in --help).
COMMAND_MODULES = ["inspect", "convert", "demo", "register", "password", "serve", "audit"]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"model-manager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Inspect, convert and serve per-symbol XGBoost model directories."""


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one red line on stderr and return the Exit to raise."""
    err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"model_manager.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command still being written must not break the others
        if exc.name != f"model_manager.commands.{_name}":
            raise


def main() -> None:
    try:
        app()
    except ModelManagerError as exc:
        err_console.print(f"[red]error:[/red] {rich_escape(str(exc))}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def rich_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
