"""Redis restarted twice during a run of 5,000 events, on PostgreSQL.

A publisher commits transactions of :data:`PER_TRANSACTION` events (every
:data:`ROLLBACK_EVERY`-th rolls back) through ``register_event`` and the
outbox; four ``flask messaging worker`` processes (each running one job at a
time, or four at once with ``--threads 4``) and two ``flask messaging
relay`` processes run throughout. Redis (append-only file, fsync on every
write) is stopped with SIGTERM and started again on the same port: once while
the publisher commits, once while the workers drain. Then the checker:
nothing lost, nothing unexpected, and repeats only where an idempotency
guard absorbs them.

Two things stand in for an operator, and are counted: workers that quit when
Redis went away mid-job are started again (as a process supervisor would;
``test_worker_faults.py`` has that bug), and jobs such workers left behind are
handed to RQ's own recovery at once instead of minutes later
(:func:`~.harness.rescue_abandoned`, :func:`~.harness.rescue_stranded`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from flask import Flask

from ..servers import RedisServer
from .app import Work, commit, db, sampled
from .fleet import Fleet, diagnose, reports, wait_for_quiet
from .harness import Processes, wait_until
from .history import History

pytestmark = pytest.mark.reliability

EVENTS = 5_000
PER_TRANSACTION = 5
ROLLBACK_EVERY = 10
#: How long Redis stays down each time: long enough for commits, relays and
#: jobs to fail against it.
DOWNTIME = 1.0

# Workers on the default queues (all of the app's): a job whose worker, or
# Redis, died before it started waits on its queue's intermediate list.
# Each runs one job at a time, or four at once (``--threads``).
WORKERS = [
    pytest.param((), id="1-thread"),
    pytest.param(("--threads", "4"), id="4-threads"),
]


def fleet_commands(workers: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Four ``flask messaging worker`` commands with ``workers``, two relays."""
    return {
        **{
            f"worker-{n}": ("worker", *workers, "--logging-level", "WARNING")
            for n in range(4)
        },
        **{f"relay-{n}": ("relay", "--interval", "0.2") for n in range(2)},
    }


class Publisher(threading.Thread):
    """Commits :data:`EVENTS` events, rolling back every tenth transaction."""

    def __init__(self, app: Flask, history: History) -> None:
        super().__init__(name="publisher")
        self.app = app
        self.history = history
        self.committed = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            with self.app.app_context():
                n = 0
                while self.committed < EVENTS:
                    tokens = [f"t{n:04d}-{k}" for k in range(PER_TRANSACTION)]
                    rollback = n % ROLLBACK_EVERY == ROLLBACK_EVERY - 1
                    commit([Work(token) for token in tokens], rollback=rollback)
                    if rollback:
                        self.history.rolled_back(*tokens)
                    else:
                        self.committed += len(tokens)
                    n += 1
                db.session.remove()
        except BaseException as exc:
            self.errors.append(exc)


def restart_after_downtime(server: RedisServer) -> None:
    """SIGTERM (Redis writes its AOF and exits), wait, start on the same port."""
    server.stop()
    time.sleep(DOWNTIME)
    server.start()


@pytest.mark.parametrize("workers", WORKERS)
def test_redis_restarted_twice_mid_run_loses_nothing(
    make_rel_app: Callable[..., Flask],
    aof_redis: RedisServer,
    processes: Processes,
    history: History,
    capsys: pytest.CaptureFixture[str],
    workers: tuple[str, ...],
) -> None:
    app = make_rel_app(aof_redis.url)
    processes.env["MESSAGING_REDIS_URL"] = aof_redis.url
    fleet = Fleet(processes, fleet_commands(workers))
    publisher = Publisher(app, history)
    started = time.monotonic()
    publisher.start()
    try:
        # While the publisher commits and the workers work.
        wait_until(lambda: publisher.committed >= EVENTS // 3, "a third committed")
        restart_after_downtime(aof_redis)
        publisher.join(240)
        assert not publisher.is_alive() and publisher.errors == []
        published = time.monotonic() - started
        # While only the workers and relays are busy.
        wait_until(
            lambda: (
                fleet.keep_up()
                or len(history.runs("apply_work:runs")) >= EVENTS * 2 // 3
            ),
            "two thirds handled",
        )
        restart_after_downtime(aof_redis)
        rescued = wait_for_quiet(app, fleet, history)
    finally:
        publisher.join(60)
    elapsed = time.monotonic() - started

    results = reports(app, history, filter(sampled, history.runs("apply_work:runs")))
    with capsys.disabled():
        print(
            f"\n{' '.join(workers) or '--threads 1'}: Redis restarted twice:"
            f" {EVENTS} events committed in {published:.1f} s,"
            f" all handled in {elapsed:.1f} s; rolled back:"
            f" {len(history.rolled_back_tokens())} events; restarts: {fleet.restarts};"
            f" rescued jobs: {rescued}"
        )
        for name, report in results.items():
            print(f"  {name}: {report}")

    assert results["apply_work runs"].committed == EVENTS
    for name, report in results.items():
        assert not report.lost, f"{name}: {report}\n{diagnose(app, report.lost)}"
        assert not report.unexpected, f"{name}: {report}"
    # Exactly once where the mark commits with the effect ...
    assert not results["apply_work effects (database marks)"].duplicated
    # ... and with Redis marks, an effect repeats only where a run did.
    assert set(results["count_work effects (Redis marks)"].duplicated) <= set(
        results["count_work runs"].duplicated
    )
