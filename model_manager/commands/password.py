"""`model-manager password init|set`: the single password of the HTTP API and UI."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from model_manager.commands import app
from model_manager.errors import ConflictError, ValidationError
from model_manager.settings import Settings
from model_manager.store import Store, check_password_strength

password_app = typer.Typer(
    help="Set the first password, or change it (which logs every client out).",
    no_args_is_help=True,
)
app.add_typer(password_app, name="password")

STDIN_HELP = "Read the password from stdin (one line) instead of prompting; for scripts."
DATA_DIR_HELP = "Data dir holding the database. \\[env MODEL_MANAGER_DATA_DIR]"


@password_app.command("init")
def password_init(
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Set the first password (at least 8 characters), prompted twice without echo.

    Fails with exit 1 when a password is already set: use `model-manager password set` to change it.
    """
    store = _open(data_dir)
    try:
        if store.is_initialized():
            raise ConflictError("a password is already set: change it with `model-manager password set`")
        store.init_password(_read_password(password_stdin))
        store.audit("bootstrap", client="cli")
    finally:
        store.close()
    Console().print("password set: log in with it in the UI or with POST /api/auth/login", highlight=False)


@password_app.command("set")
def password_set(
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Set a new password (at least 8 characters) and revoke every token, also on a running server:
    every client has to log in again. Works whether or not a password was set before."""
    store = _open(data_dir)
    try:
        revoked = store.set_password(_read_password(password_stdin))
        store.audit("password_changed", client="cli", detail=f"{revoked} token(s) revoked")
    finally:
        store.close()
    Console().print(f"password changed; {revoked} token(s) revoked: clients must log in again", highlight=False)


def _open(data_dir: Path | None) -> Store:
    return Store(Settings.from_env().replace(data_dir=data_dir).db_path)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        text = sys.stdin.read()
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
        if "\n" in password:
            raise ValidationError("stdin holds several lines: pass only the password, on one line")
        if not password:
            raise ValidationError("stdin was empty: pipe the password in, e.g. "
                                  "`printf '%s\\n' \"$PW\" | model-manager password set --password-stdin`")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    check_password_strength(password)
    return password
