"""`model-manager password init|set`: the single password of the HTTP API and UI."""
from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from model_manager.commands import DataDirOption, app, example, open_manager
from model_manager.errors import ConflictError, UsageError, ValidationError
from model_manager.store import check_password_strength

PASSWORD_HELP = "Set the first password, or change it (which logs every client out)."
password_app = typer.Typer(help=PASSWORD_HELP, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(password_app, name="password", short_help=PASSWORD_HELP)

STDIN_HELP = "Read the password from stdin (one line) instead of prompting; for scripts."


@password_app.command("init", epilog=example("model-manager password init"))
def password_init(
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
    data_dir: DataDirOption = None,
) -> None:
    """Set the first password (at least 8 characters), prompted twice without echo.

    Fails with exit 1 when a password is already set: use `model-manager password set` to change it.
    """
    with open_manager(data_dir) as manager:
        if manager.store.is_initialized():
            raise ConflictError("a password is already set: change it with `model-manager password set`")
        manager.init_password(_read_password(password_stdin, "init"), client="cli")
    Console().print("password set: log in with it in the UI or with POST /api/auth/login", highlight=False)


@password_app.command("set", epilog=example("model-manager password set --data-dir /srv/model-manager"))
def password_set(
    password_stdin: bool = typer.Option(False, "--password-stdin", help=STDIN_HELP),
    data_dir: DataDirOption = None,
) -> None:
    """Set a new password (at least 8 characters) and revoke every token, also on a running server:
    every client has to log in again. Works whether or not a password was set before (also on a new
    data dir, as start_model_manager.sh --set-password does when it provisions a machine)."""
    with open_manager(data_dir) as manager:
        revoked = manager.set_password(_read_password(password_stdin, "set"), client="cli")
    Console().print(f"password changed; {revoked} token(s) revoked: clients must log in again", highlight=False)


def _read_password(from_stdin: bool, command: str) -> str:
    if from_stdin:
        text = sys.stdin.read()
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
        if "\n" in password:
            raise ValidationError("stdin holds several lines: pass only the password, on one line")
        if not password:
            raise ValidationError(f"stdin was empty: pipe the password in, e.g. {_stdin_example(command)}")
    elif not _has_terminal():
        raise UsageError(f"no terminal to prompt for the password: pass it on stdin with --password-stdin, "
                         f"e.g. {_stdin_example(command)}")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    check_password_strength(password)
    return password


def _stdin_example(command: str) -> str:
    return f"`printf '%s\\n' \"$PW\" | model-manager password {command} --password-stdin`"


def _has_terminal() -> bool:
    """Whether a hidden prompt can work: getpass reads the controlling terminal, not stdin."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin.isatty()  # no /dev/tty (Windows): the console is stdin
    os.close(fd)
    return True
