"""``flask messaging outbox …``: rows a relay cannot finish, and what to do.

See :mod:`flask_messaging.outbox_admin` for what each command changes.
"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from . import outbox_admin
from .state import MessagingState, get_state

__all__ = ["outbox_cli"]


def _state() -> MessagingState:
    state = get_state()
    if state.outbox is None:
        raise click.UsageError(
            "The outbox is off: bind a database (messaging.init_app(app, db=db))"
            " and keep MESSAGING_OUTBOX = True."
        )
    return state


@click.group("outbox", cls=AppGroup)
def outbox_cli() -> None:
    """Outbox rows that failed to relay: list, drop a subscriber, discard."""


@outbox_cli.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_command(limit: int) -> None:
    """List pending rows that failed to relay, with what they wait for."""
    rows = outbox_admin.stuck_rows(_state(), limit)
    if not rows:
        click.echo("No outbox row has failed to relay.")
        return
    for row in rows:
        waits = "its type" if row.pending is None else ", ".join(row.pending)
        due = row.available_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{row.message_id} {row.message_type}: waits for {waits};"
            f" {row.attempts} attempt(s), next at {due} UTC;"
            f" last error: {row.last_error}"
        )


@outbox_cli.command("drop-subscriber")
@click.argument("key")
@click.option("--dry-run", is_flag=True, help="Say which rows, change nothing.")
def drop_subscriber_command(key: str, dry_run: bool) -> None:
    """Stop waiting for subscriber KEY (removed from the code) in every row.

    Rows left with nobody to wait for are marked relayed; the others are
    due at once for their remaining subscribers.
    """
    changed = outbox_admin.drop_subscriber(_state(), key, dry_run=dry_run)
    verb = "Would drop" if dry_run else "Dropped"
    click.echo(f"{verb} {key!r} from {len(changed)} pending row(s).")
    for message_id in changed:
        click.echo(f"  {message_id}")


@outbox_cli.command("discard")
@click.argument("message_id")
@click.option("--dry-run", is_flag=True, help="Say whether it exists, change nothing.")
def discard_command(message_id: str, dry_run: bool) -> None:
    """Mark the pending row MESSAGE_ID relayed, delivering nothing more."""
    found = outbox_admin.discard(_state(), message_id, dry_run=dry_run)
    if not found:
        raise click.ClickException(
            f"No pending outbox row {message_id!r}: see 'flask messaging outbox list'."
        )
    click.echo(f"{'Would discard' if dry_run else 'Discarded'} {message_id}.")
