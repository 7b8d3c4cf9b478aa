"""`model-manager audit`: the audit trail kept in the data dir's database."""
from __future__ import annotations

import typer
from rich.text import Text

from model_manager.commands import DataDirOption, app, example, open_existing, print_json
from model_manager.commands.tables import Column, print_table, stdout_console
from model_manager.service import AUDIT_EVENTS, check_audit_event

EVENT_STYLE = {"login_failed": "red", "bootstrap_refused": "red", "password_change_failed": "red",
               "refresh_failed": "yellow", "password_changed": "bold", "bootstrap": "bold"}


@app.command(epilog=example("model-manager audit --event login_failed -n 20"))
def audit(
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=100_000, help="How many events to show, newest first."),
    event: str = typer.Option(None, "--event", "-e", help=f"Only this event: {', '.join(AUDIT_EVENTS)}."),
    as_json: bool = typer.Option(False, "--json", help='Print {"events": [...]} as GET /api/audit does.'),
    data_dir: DataDirOption = None,
) -> None:
    """Show the audit trail: logins, failed logins, first-password setup, logouts, password changes,
    registrations and refresh failures, with the client address and time (UTC).

    Exit codes: 0 shown (also when there is nothing to show), 2 unknown --event or no database.
    """
    check_audit_event(event)  # before the database: a typo is reported whatever the data dir holds
    with open_existing(data_dir) as manager:
        events = manager.audit_events(limit=limit, event=event)
    if as_json:
        print_json({"events": events})
        return
    console = stdout_console()
    if not events:
        console.print(f"no {event + ' ' if event else ''}events recorded")
        return
    rows = [[row["at"], Text(row["event"], style=EVENT_STYLE.get(row["event"], "")), row["client"] or "-", row["detail"] or ""]
            for row in events]
    print_table(console, [Column("time (UTC)"), Column("event"), Column("client"), Column("detail", fold=True)],
                rows, title=f"audit trail, newest first ({len(events)})")
