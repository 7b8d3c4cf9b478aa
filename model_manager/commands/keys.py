"""`model-manager keys create|list|revoke`: API keys for trading engines (SPEC §7)."""
from __future__ import annotations

from enum import Enum

import typer
from rich.text import Text

from model_manager.commands import DataDirOption, JsonOption, app, err_console, example, open_existing, print_json
from model_manager.commands.tables import Column, print_table, short_time, stdout_console
from model_manager.keys import MAX_EXPIRES_IN_DAYS

KEYS_HELP = "API keys for trading engines: a read key may only GET /api/models/**; revoked at once."
keys_app = typer.Typer(help=KEYS_HELP, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys", short_help=KEYS_HELP)


class Scope(str, Enum):
    read = "read"
    admin = "admin"


# keys belong in the data dir a server uses, which it makes when it first starts
FIRST_START = "check --data-dir or MODEL_MANAGER_DATA_DIR; model-manager serve makes it when it first starts"
SCOPE_HELP = "read: GET /api/models/** only (for trading engines); admin: everything a password session may do."


@keys_app.command("create", epilog=example("model-manager keys create engine-1 --expires-in-days 90"))
def keys_create(
    name: str = typer.Argument(..., help="The key's name (letters, digits, . _ -), e.g. the engine it is for."),
    scope: Scope = typer.Option(Scope.read, "--scope", "-s", help=SCOPE_HELP),
    expires_in_days: int = typer.Option(None, "--expires-in-days", "-e", min=1, max=MAX_EXPIRES_IN_DAYS,
                                        help="Lifetime in days (default: the key does not expire)."),
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key and print it once: it is stored only hashed and cannot be shown again.

    Send it as `Authorization: Bearer <key>`. A running server accepts it at once.
    """
    with open_existing(data_dir, hint=FIRST_START) as manager:
        created = manager.create_key(name, scope.value, expires_in_days, client="cli", by="cli")
    if as_json:
        print_json(created)
        return
    typer.echo(created["key"])
    until = f"expires {created['expires_at']}" if created["expires_at"] else "does not expire"
    err_console.print(Text(f"API key {name} ({created['scope']} scope, {until}). Copy it now: it will not be shown again."))


@keys_app.command("list", epilog=example("model-manager keys list --json"))
def keys_list(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """List API keys (never the keys themselves): scope, creation, expiry, last use, revocation."""
    with open_existing(data_dir) as manager:
        keys = manager.list_keys()
    if as_json:
        print_json({"keys": keys})
        return
    console = stdout_console()
    if not keys:
        console.print("no API keys: create one with `model-manager keys create NAME`")
        return
    columns = [Column("name"), Column("scope"), Column("created (UTC)", drop=2), Column("expires (UTC)"),
               Column("last used (UTC)", drop=1), Column("state")]
    print_table(console, columns, [[key["name"], key["scope"], short_time(key["created_at"]), short_time(key["expires_at"]) or "never",
                                    short_time(key["last_used_at"]) or "-", _state(key)] for key in keys], title="API keys")


def _state(key: dict) -> Text:
    if key["revoked"]:
        return Text("revoked", style="red")
    return Text("expired", style="yellow") if key["expired"] else Text("live", style="green")


@keys_app.command("revoke", epilog=example("model-manager keys revoke engine-1"))
def keys_revoke(
    name: str = typer.Argument(..., help="The key to revoke."),
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key: running servers refuse it within a second. Its name may then be reused."""
    with open_existing(data_dir) as manager:
        revoked = manager.revoke_key(name, client="cli", by="cli")
    stdout_console().print(Text(f"revoked {name}" if revoked else f"{name} was already revoked"))
