"""Whole runs: a fleet of workers and relays, waiting for quiet, the results."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from .app import QUEUE, Effect, Published, db
from .harness import Processes, rescue_abandoned, rescue_stranded, settled, wait_until
from .history import History, Report, check


class Fleet:
    """Long-running ``flask messaging`` processes, started again if one exits.

    :param commands: process name -> arguments of ``flask messaging``.
    """

    def __init__(
        self, processes: Processes, commands: Mapping[str, Sequence[str]]
    ) -> None:
        self.processes = processes
        self.commands = dict(commands)
        self.running = {
            name: processes.start(name, *args) for name, args in commands.items()
        }
        #: Process name -> how many times it exited and was started again.
        self.restarts: dict[str, int] = {}

    def keep_up(self) -> None:
        """Start again every process that exited, as a supervisor would."""
        for name, process in self.running.items():
            if process.poll() is not None:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.running[name] = self.processes.start(name, *self.commands[name])


def outbox_backlog(app: Flask) -> int:
    """Outbox rows not relayed yet."""
    with app.app_context(), db.engine.connect() as connection:
        table = get_state().outbox
        return int(
            connection.execute(
                sa.select(sa.func.count()).where(table.c.relayed_at.is_(None))
            ).scalar_one()
        )


#: Seconds between the two sightings that make a job stranded.
STRANDED_AFTER = 5.0


def wait_for_quiet(
    app: Flask, fleet: Fleet, history: History, limit: float = 240
) -> dict[str, int]:
    """Wait until every committed event's jobs have run.

    Meanwhile keep the fleet up and hand RQ the jobs dead workers left behind
    (:func:`~.harness.rescue_abandoned`, :func:`~.harness.rescue_stranded`).
    Quiet means: nothing queued, running, scheduled or stranded, no outbox
    backlog, and no new handler run between two such looks.

    :return: how many jobs were rescued, per kind.
    """
    redis = get_state(app).redis
    worker = make_worker(app, [QUEUE])  # RQ's cleanup needs a worker object
    rescued = {"abandoned": 0, "stranded": 0}
    seen: set[str] = set()
    snapshot: list[Any] = []

    looked_at: list[float] = []

    def quiet() -> bool:
        fleet.keep_up()
        rescued["abandoned"] += rescue_abandoned(redis, QUEUE)
        # A job is stranded if seen on the intermediate list twice, seconds
        # apart: a loaded machine may hold a worker a moment between its
        # take and the start that takes the job off that list.
        if not looked_at or time.monotonic() - looked_at[0] >= STRANDED_AFTER:
            looked_at[:] = [time.monotonic()]
            rescued["stranded"] += rescue_stranded(redis, worker, QUEUE, seen)
        runs = [
            sum(history.runs(f"{handler}:runs").values())
            for handler in ("apply_work", "count_work")
        ]
        calm = settled(redis, QUEUE) and outbox_backlog(app) == 0
        done = calm and snapshot == runs
        snapshot[:] = runs if calm else []
        if not done:
            time.sleep(0.3)  # the next look comes a while later
        return done

    wait_until(quiet, "the workers to handle everything", limit=limit)
    return rescued


def db_committed(app: Flask) -> set[str]:
    """Tokens whose transaction committed, as the database says."""
    with app.app_context(), db.engine.connect() as connection:
        return set(connection.execute(sa.select(Published.token)).scalars())


def db_effects(app: Flask) -> dict[str, int]:
    """Token -> how many effect rows :func:`~.app.apply_work` committed."""
    with app.app_context(), db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(Effect.token, sa.func.count()).group_by(Effect.token)
        )
        return {token: int(n) for token, n in rows}


def reports(
    app: Flask, history: History, count_work_tokens: Iterable[str]
) -> dict[str, Report]:
    """The checker's reports on both handlers' runs and effects.

    :param count_work_tokens: the committed tokens that ``count_work`` is
        subscribed to (its predicate takes some of them).
    """
    committed = db_committed(app)
    counted = set(count_work_tokens) & committed
    rolled_back = history.rolled_back_tokens()
    return {
        "apply_work runs": check(
            committed, history.runs("apply_work:runs"), rolled_back
        ),
        "apply_work effects (database marks)": check(
            committed, db_effects(app), rolled_back
        ),
        "count_work runs": check(counted, history.runs("count_work:runs"), rolled_back),
        "count_work effects (Redis marks)": check(
            counted, history.runs("count_work"), rolled_back
        ),
    }


def diagnose(app: Flask, tokens: Iterable[str]) -> str:
    """Where the jobs of (lost) ``tokens`` are, for an assertion message."""
    redis = get_state(app).redis
    lines = []
    with app.app_context(), db.engine.connect() as connection:
        table = get_state().outbox
        for token in sorted(tokens)[:5]:
            row = connection.execute(
                sa.select(table.c.message_id, table.c.relayed_at).where(
                    table.c.envelope.contains(f'"{token}"')
                )
            ).first()
            if row is None:
                lines.append(f"{token}: no outbox row")
                continue
            lines.append(f"{token}: message {row.message_id}, relayed {row.relayed_at}")
            for key in redis.keys(f"rq:job:msg-{row.message_id}-*"):
                job_id = key.decode().removeprefix("rq:job:")
                status, description = redis.hmget(key, "status", "description")
                lines.append(f"  {job_id}: {status!r} {description!r}")
    return "\n".join(lines)
