"""`model-manager keys create|list|revoke`: API keys for trading engines (SPEC §7)."""
from __future__ import annotations

from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from model_manager.commands import DataDirOption, JsonOption, app, open_manager, print_json
from model_manager.keys import MAX_EXPIRES_IN_DAYS

KEYS_HELP = "API keys for trading engines: a read key may only GET /api/models/**; revoked at once."
keys_app = typer.Typer(help=KEYS_HELP, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys", short_help=KEYS_HELP)



class Scope(str, Enum):
    read = "read"
    admin = "admin"


SCOPE_HELP = "read: GET /api/models/** only (for trading engines); admin: everything a password session may do."


@keys_app.command("create")
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
    with open_manager(data_dir) as manager:
        created = manager.create_key(name, scope.value, expires_in_days, client="cli", by="cli")
    if as_json:
        print_json(created)
        return
    typer.echo(created["key"])
    until = f"expires {created['expires_at']}" if created["expires_at"] else "does not expire"
    Console(stderr=True, highlight=False).print(
        f"API key {escape(name)} ({created['scope']} scope, {until}). Copy it now: it will not be shown again.")


@keys_app.command("list")
def keys_list(as_json: JsonOption = False, data_dir: DataDirOption = None) -> None:
    """List API keys (never the keys themselves): scope, creation, expiry, last use, revocation."""
    with open_manager(data_dir) as manager:
        keys = manager.list_keys()
    if as_json:
        print_json({"keys": keys})
        return
    console = Console(highlight=False)
    if not keys:
        console.print("no API keys: create one with `model-manager keys create NAME`")
        return
    table = Table("name", "scope", "created (UTC)", "expires (UTC)", "last used (UTC)", "state", title="API keys",
                  title_justify="left")
    for key in keys:
        state = "[red]revoked[/red]" if key["revoked"] else "[yellow]expired[/yellow]" if key["expired"] else "[green]live[/green]"
        table.add_row(escape(key["name"]), key["scope"], key["created_at"], key["expires_at"] or "never",
                      key["last_used_at"] or "-", state)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="The key to revoke."),
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key: running servers refuse it within a second. Its name may then be reused."""
    with open_manager(data_dir) as manager:
        revoked = manager.revoke_key(name, client="cli", by="cli")
    Console(highlight=False).print(f"revoked {escape(name)}" if revoked else f"{escape(name)} was already revoked")
