"""``flask messaging …`` commands."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import asdict

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo

from ._rq.status import (
    queue_status,
    recent_failures,
    requeue_failed,
    worker_status,
)
from .database_errors import UNREACHABLE, describe_unreachable
from .outbox import Backlog, Deferred, Relay, outbox_backlog
from .outbox_cli import outbox_cli
from .redaction import redact, redact_url
from .state import MessagingState, get_state
from .subscription import describe_subscription
from .tables import utcnow
from .worker import run_workers

__all__ = ["messaging_cli"]


class _RedactingGroup(AppGroup):
    """A command group whose error messages never show a credential.

    Its commands run in the app's context (Flask's ``AppGroup``).

    Every command's one-line error quotes what went wrong, often an exception
    that names the Redis or database URL; all pass through
    :func:`~flask_messaging.redaction.redact` here, whoever raised them. A
    database that cannot be reached is one such line, not a traceback
    (:mod:`flask_messaging.database_errors`).
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = redact(exc.message)  # type: ignore[misc]
            raise
        except UNREACHABLE as exc:
            # A database down or missing is the operator's to fix: one line.
            app = ctx.find_object(ScriptInfo)
            raise click.ClickException(
                describe_unreachable(app.load_app() if app else None, exc)
            ) from None


@click.group(
    "messaging",
    cls=_RedactingGroup,
    help="Inspect subscribers and run messaging workers.",
)
def messaging_cli() -> None:
    pass


def _server_state(purpose: str) -> MessagingState:
    """The app's state, refusing ``memory://``, which no other process sees."""
    state = get_state()
    if state.is_embedded:
        raise click.UsageError(
            "MESSAGING_REDIS_URL is 'memory://': jobs live inside the app's process"
            " and its own worker thread runs them. Set MESSAGING_REDIS_URL to a"
            f" Redis server (redis://…) for {purpose}."
        )
    return state


def _require_signing_key(state: MessagingState) -> None:
    """Refuse to start a process whose every job would fail unsigned."""
    try:
        state.signer  # noqa: B018 (made on first use; raises without a key)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _echo_listing(
    as_json: bool,
    rows: Sequence[object],
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    nothing: str,
) -> bool:
    """Print ``rows`` as JSON, or ``nothing`` when there are none, or a table.

    :return: whether the table was printed.
    """
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return False
    if not rows:
        click.echo(nothing)
        return False
    click.echo(_table([header, *body]))
    return True


@messaging_cli.command("subscribers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def subscribers_command(as_json: bool) -> None:
    """List every subscription: message type, handler, mode, queue, predicate."""
    rows = [describe_subscription(s) for s in get_state().registry]
    rows.sort(key=lambda row: str(row["message_type"]))
    columns = ("message_type", "handler", "mode", "queue", "predicate")
    _echo_listing(
        as_json,
        rows,
        ["MESSAGE TYPE", "HANDLER", "MODE", "QUEUE", "PREDICATE"],
        [[str(row[k] or "-") for k in columns] for row in rows],
        "No subscribers.",
    )


@messaging_cli.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Quit once the queues are empty.")
@click.option(
    "-n",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many worker processes to run.",
)
@click.option(
    "-t",
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs each process runs at once, each in a thread of its own."
    "  [default: MESSAGING_WORKER_THREADS, 1]",
)
@click.option(
    "--fork/--no-fork",
    default=False,
    show_default=True,
    help="Run each job in a forked process, as 'rq worker' does (slower, isolated).",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run RQ's scheduler, which requeues retries that have an interval.",
)
@click.option(
    "--max-jobs", type=click.IntRange(min=1), help="Quit after this many jobs."
)
@click.option(
    "--relay/--no-relay",
    default=None,
    help="Also relay the outbox from this process (see 'flask messaging relay')."
    "  [default: on when the app has an outbox]",
)
@click.option(
    "--logging-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="How much RQ logs about each job.",
)
def worker_command(
    queues: tuple[str, ...],
    burst: bool,
    processes: int,
    threads: int | None,
    fork: bool,
    scheduler: bool,
    max_jobs: int | None,
    relay: bool | None,
    logging_level: str,
) -> None:
    """Run workers that deliver async messages.

    QUEUES default to MESSAGING_QUEUES (highest priority first) followed by any
    other queue a subscriber uses. SIGTERM or Ctrl+C lets the job in hand
    finish; a second one stops at once. With an outbox, the worker also relays
    it (any number of workers on PostgreSQL; on SQLite, one worker without
    --no-relay), unless --no-relay.
    """

    state = _server_state("separate workers")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if threads is None:
        threads = state.settings.worker_threads
    if fork and threads > 1:
        raise click.UsageError(
            f"--fork runs one job at a time, in a work horse process: it cannot"
            f" run {threads} threads. Use --threads 1 with --fork, or --threads"
            " without --fork (MESSAGING_WORKER_THREADS sets the default)."
        )
    try:
        state.redis.ping()
    except Exception as exc:
        raise click.ClickException(
            f"Cannot reach Redis at {redact_url(state.settings.redis_url)}: {exc}"
        ) from None
    _require_signing_key(state)
    outbox_relay = None
    if relay is None:
        relay = state.writes_outbox
    if relay:
        try:
            outbox_relay = Relay(state)
        except RuntimeError as exc:
            raise click.UsageError(str(exc)) from None
        if burst:
            # One pass before the burst, reported as 'relay --once' reports
            # it: rows not due yet are not relayed by this burst.
            _relay_once(outbox_relay)
            outbox_relay = None
    status = run_workers(
        app,
        queues,
        processes=processes,
        threads=threads,
        burst=burst,
        with_scheduler=scheduler,
        fork=fork,
        max_jobs=max_jobs,
        logging_level=logging_level.upper(),
        relay=outbox_relay,
    )
    if status:
        raise SystemExit(status)


@messaging_cli.command("relay")
@click.option("--once", is_flag=True, help="Relay what is due, then exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    help="Seconds between passes (default MESSAGING_RELAY_INTERVAL).",
)
def relay_command(once: bool, interval: float | None) -> None:
    """Enqueue outbox events that were committed but not enqueued.

    Events are enqueued right after their commit; this finds those left behind
    by a Redis outage or a crash, marks relayed rows and prunes old ones. Run
    one or more beside the workers (PostgreSQL: any number; SQLite: one).
    """
    try:
        relay = Relay(get_state())
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    _require_signing_key(get_state())
    if once:
        _relay_once(relay)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo("Relaying the outbox; Ctrl+C to stop.")
    relay.run(stop, interval)


def _relay_once(relay: Relay) -> None:
    """One relay pass; print what it enqueued and what it left, and why."""
    try:
        count = relay.run_once()
        deferred = relay.deferred()
    except Exception as exc:
        raise click.ClickException(f"Relay failed: {exc}") from None
    click.echo(f"Relayed {count} message(s).")
    if deferred.total:
        click.echo(_describe_deferred(deferred, relay.settings.relay_delay))


def _describe_deferred(deferred: Deferred, relay_delay: float) -> str:
    """What a relay pass left pending, why, and when it is next due."""
    reasons = []
    if deferred.not_yet_due:
        reasons.append(
            f"{deferred.not_yet_due} not yet due (committed less than"
            f" MESSAGING_RELAY_DELAY = {relay_delay:g} s ago: left to the process"
            " that committed them)"
        )
    if deferred.backing_off:
        reasons.append(
            f"{deferred.backing_off} backing off after failed attempts (last"
            f" error: {deferred.last_error})"
        )
    text = f"Left {deferred.total} row(s): {'; '.join(reasons)}."
    if deferred.next_due_at is not None:
        wait = max(0.0, (deferred.next_due_at - utcnow()).total_seconds())
        text += (
            f" Next due in {wait:.1f} s"
            f" ({deferred.next_due_at.isoformat(timespec='seconds')} UTC)."
        )
    return text


def _describe_backlog(backlog: Backlog | None) -> str:
    if backlog is None:
        return "Outbox: off"
    if backlog.enqueued is None:
        text = (
            f"Outbox: {backlog.waiting} row(s) not marked relayed (Redis cannot"
            " be read to tell those enqueued at commit)"
        )
    else:
        text = (
            f"Outbox: {backlog.waiting} row(s) waiting for the relay,"
            f" {backlog.enqueued} enqueued at commit (not yet marked by a relay)"
        )
    age = backlog.oldest_waiting_age
    if age is not None:
        text += f"; oldest waiting row committed {age:.1f} s ago"
    if backlog.approximate:
        text += (
            " (approximate: more rows were enqueued at commit than are read to"
            " tell them apart; a relay pass marks them)"
        )
    return text + "."


@messaging_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status_command(as_json: bool) -> None:
    """Show queues, workers, failed jobs and the outbox backlog."""

    state = _server_state("a status another process can see (the dashboard shows it)")
    try:
        queues = queue_status(state)
        workers = worker_status(state)
    except Exception as exc:
        raise click.ClickException(
            f"Cannot read Redis at {redact_url(state.settings.redis_url)}: {exc}"
        ) from None
    try:
        backlog = outbox_backlog(state)
    except UNREACHABLE:
        raise  # one line naming the database, from the group
    except Exception as exc:
        raise click.ClickException(f"Cannot read the outbox: {exc}") from None
    if as_json:
        report = {
            "queues": [asdict(q) for q in queues],
            "workers": [asdict(w) for w in workers],
            "outbox_backlog": None
            if backlog is None
            else {
                "waiting": backlog.waiting,
                "enqueued": backlog.enqueued,
                "oldest_waiting_age": backlog.oldest_waiting_age,
            },
        }
        click.echo(json.dumps(report, indent=2))
        return
    header = ["QUEUE", "QUEUED", "STARTED", "SCHEDULED", "FAILED", "FINISHED"]
    body = [
        [
            q.name,
            *(
                "unreadable" if n is None else str(n)
                for n in (q.queued, q.started, q.scheduled, q.failed, q.finished)
            ),
        ]
        for q in queues
    ]
    click.echo(_table([header, *body]))
    click.echo()
    if workers:
        click.echo(
            _table(
                [
                    ["WORKER", "STATE", "QUEUES", "CURRENT JOB"],
                    *(
                        [w.name, w.state, ",".join(w.queues), w.current_job or "-"]
                        for w in workers
                    ),
                ]
            )
        )
    else:
        click.echo("No workers.")
    click.echo()
    click.echo(_describe_backlog(backlog))


def _warn_unknown_queues(state: MessagingState, queues: Sequence[str]) -> None:
    """Say on stderr which of ``queues`` the app does not know (a typo?).

    Not an error: failed jobs of a queue the app no longer uses may remain.
    """
    known = state.queue_names()
    for name in dict.fromkeys(q for q in queues if q not in known):
        click.echo(
            f"Warning: the app has no queue {name!r} (its queues: "
            f"{', '.join(known)}); a job there is listed only if one was left.",
            err=True,
        )


#: ``-q/--queue``, repeatable, of the commands on failed jobs.
_queues_option = click.option(
    "-q",
    "--queue",
    "queues",
    multiple=True,
    help="Only this queue (repeatable); default: every queue.",
)


@messaging_cli.command("failed")
@_queues_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="List at most this many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def failed_command(queues: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List failed jobs, newest first, with the error each failed with."""

    state = _server_state("failures another process can see (the dashboard shows them)")
    _warn_unknown_queues(state, queues)
    try:
        failures = recent_failures(state, limit, queues)
    except Exception as exc:
        raise click.ClickException(
            f"Cannot read Redis at {state.settings.redis_url}: {exc}"
        ) from None
    rows = [
        {
            "job_id": f.job_id,
            "queue": f.queue,
            "failed_at": f.failed_at.isoformat() if f.failed_at else None,
            "description": f.description,
            "error": f.error,
        }
        for f in failures
    ]
    body = [
        [
            f.failed_at.strftime("%Y-%m-%d %H:%M:%S") if f.failed_at else "-",
            f.queue,
            f.job_id,
            f.description or "-",
            f.error or "-",
        ]
        for f in failures
    ]
    header = ["FAILED AT (UTC)", "QUEUE", "JOB", "DESCRIPTION", "ERROR"]
    if _echo_listing(as_json, rows, header, body, "No failed jobs."):
        click.echo()
        click.echo("Requeue them with 'flask messaging requeue-failed'.")


@messaging_cli.command("requeue-failed")
@_queues_option
def requeue_failed_command(queues: tuple[str, ...]) -> None:
    """Put failed jobs back on their queues, to be run again."""

    state = _server_state("requeueing from another process (use the dashboard)")
    _warn_unknown_queues(state, queues)
    try:
        count = requeue_failed(state, queues)
    except Exception as exc:
        raise click.ClickException(f"Requeue failed: {exc}") from None
    click.echo(f"Requeued {count} job(s).")


messaging_cli.add_command(outbox_cli)
