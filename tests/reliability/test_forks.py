"""Forked workers get database and Redis connections of their own.

An app factory that touches the database leaves connections in the pools of
its engines. The work horses of ``--fork`` and the children of
``--processes N`` are forks of that process: sharing those connections
(psycopg 3, PostgreSQL) they failed with ``DuplicatePreparedStatement``, or
read another process's answer. Each handler here asks every bind for its own
number, past psycopg's prepare threshold, and notes any other answer; with
``--fork`` the worker also relays the outbox from a thread, on the pool the
work horses inherit. With ``--threads 4`` each child runs four handlers at
once, beside the parent's relay thread, on the pools they share.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from flask import Flask

from flask_messaging.state import get_state

from .app import Query, commit
from .harness import Processes, settled, wait_until
from .history import History
from .test_worker_faults import QUIET, failed_registry

pytestmark = pytest.mark.reliability

JOBS = 40

#: The worker's app factory creates the tables and queries every bind.
FACTORY_TOUCHES_DATABASE = {
    "RELIABILITY_FACTORY_TOUCHES_DATABASE": "1",
    "RELIABILITY_SECOND_BIND": "1",
}


@pytest.mark.parametrize(
    "forking",
    [
        ("--fork", "--relay"),
        ("--processes", "2"),
        ("--processes", "2", "--fork"),
        ("--processes", "2", "--threads", "4", "--relay"),
    ],
    ids=[
        "work-horses",
        "processes",
        "processes-and-work-horses",
        "processes-and-threads",
    ],
)
def test_forked_workers_query_the_database_on_connections_of_their_own(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    forking: tuple[str, ...],
) -> None:
    app = make_rel_app(MESSAGING_RETRY=0)  # a failure shows, not a retry
    worker = processes.start(
        "worker", "worker", *forking, *QUIET, env=FACTORY_TOUCHES_DATABASE
    )
    with app.app_context():
        for n in range(JOBS):
            commit([Query(f"q{n}", n=1000 + n)])
    redis = get_state(app).redis

    def done() -> bool:
        runs = sum(history.runs("check_query:runs").values())
        return runs >= JOBS and settled(redis, "reliability")

    wait_until(done, "every handler to run")
    assert history.notes("check_query:wrong") == []
    assert failed_registry(redis).count == 0, processes.log("worker")[-2000:]
    assert history.runs("check_query") == {f"q{n}": 1 for n in range(JOBS)}

    # Warm shutdown: every process exits, none hangs on a shared connection.
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
