"""The Typer application. Each command lives in its own module and registers itself on `app`;
errors from the core become one red line on stderr here, and nowhere else."""
from __future__ import annotations

import importlib
import inspect as pyinspect
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from model_manager import __version__
from model_manager.errors import ModelManagerError, PathError, UsageError
from model_manager.service import ModelManager
from model_manager.settings import Settings

app = typer.Typer(
    help="Inspect, convert and serve per-symbol XGBoost model directories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help: it wraps each paragraph once to the terminal and never cuts a word (rich's
    # option table cut env var names at 80 columns)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines its command(s) with `@app.command()` on import (order = order in --help).
COMMAND_MODULES = ["inspect", "convert", "demo", "register", "versions", "password", "keys", "fleet", "serve", "audit"]

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


# Options shared by every command that takes them (declared once, in the manner of sqlite-utils).
DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="MODEL_MANAGER_DATA_DIR", show_envvar=False,
    help="Data dir: the sqlite db (password, tokens, registrations, audit) and the cache. "
         "[env MODEL_MANAGER_DATA_DIR; default: the per-user app dir]")]
ModelName = Annotated[str, typer.Argument(help="The registered model's name (see model-manager register --list).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the shapes of the HTTP API) instead of tables.")]


def example(command: str) -> str:
    """A command's help ends with one line showing it in use (the names match `serve --demo`)."""
    return f"Example: {command}"


def open_manager(data_dir: Path | None = None, **settings: object) -> ModelManager:
    """The service for this command: settings from the environment, then the flags given."""
    return ModelManager(Settings.from_env().replace(data_dir=data_dir, **settings))


def open_existing(data_dir: Path | None = None, *, hint: str = "check --data-dir or MODEL_MANAGER_DATA_DIR") -> ModelManager:
    """The service for a command that reads or changes what a data dir already holds: PathError when
    it has no database (a mistyped --data-dir), rather than a new empty one quietly made there."""
    manager = open_manager(data_dir)
    if not manager.has_database():
        raise PathError(f"no database in {manager.settings.data_dir}: nothing has been recorded there yet ({hint})")
    return manager


def refuse_together(given: dict[str, object]) -> None:
    """UsageError naming the first two of `given` ({"--list": value, ...}) that were set: each makes
    the other meaningless, so neither may be silently ignored."""
    named = [option for option, value in given.items() if value]
    if len(named) > 1:
        raise UsageError(f"{named[0]} and {named[1]} cannot be used together: pick one")


def print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


for _name in COMMAND_MODULES:
    importlib.import_module(f"model_manager.commands.{_name}")


def _short_helps(typer_app: typer.Typer) -> None:
    """A command's line in the list of commands is its docstring's first paragraph, whole (click would
    cut it at 45 characters with "...")."""
    for info in typer_app.registered_commands:
        if info.short_help is None and info.callback is not None:
            doc = pyinspect.getdoc(info.callback) or ""
            info.short_help = " ".join(doc.split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _short_helps(group.typer_instance)


_short_helps(app)


def main() -> None:
    """Run the CLI; every error the user can fix becomes one line on stderr and an exit code."""
    try:
        code = app(standalone_mode=False)
    except ModelManagerError as exc:
        _error_line(str(exc))
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # click's usage errors: bad option, missing argument...
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())  # the help, rendered once when the error was made
            sys.exit(2)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _error_line(message + hint)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        _error_line("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        _error_line("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _error_line(message: str) -> None:
    from rich.markup import escape

    text = " ".join(message.split())  # one line, whatever the message held
    err_console.print(f"[red]error:[/red] {escape(text)}", markup=True, highlight=False)
