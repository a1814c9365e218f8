"""Retries with an interval run when the worker holding RQ's scheduler leaves.

Two ``flask messaging worker`` processes; the first holds RQ's scheduler lock
of the queue. A handler subscribed with ``Retry(max=1, interval=2)`` fails
its first run, so its retry waits in RQ's scheduled registry for a scheduler
to move it. The holder leaves with a retry pending, and again before the
next message fails: the other worker must take over the scheduling (before:
only in its maintenance, ten minutes later).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq import Worker
from rq.registry import ScheduledJobRegistry

from flask_messaging.extension import get_state
from flask_messaging.scheduling import STALE_AFTER
from flask_messaging.serializer import ReadOnlySerializer

from .app import QUEUE, Flaky, commit
from .harness import Processes, wait_until
from .history import History
from .test_worker_faults import QUIET

pytestmark = pytest.mark.reliability

LOCK = f"rq:scheduler-lock:{QUEUE}"


def lock_holder(redis: Redis) -> bytes | None:
    return redis.get(LOCK)  # type: ignore[return-value]


def workers(redis: Redis) -> int:
    return len(Worker.all(connection=redis, serializer=ReadOnlySerializer))


def scheduled(redis: Redis) -> int:
    return ScheduledJobRegistry(QUEUE, connection=redis).count


@pytest.mark.parametrize("leaving", ["sigterm", "kill-9"])
def test_another_worker_takes_over_scheduling_when_the_holder_leaves(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    leaving: str,
) -> None:
    app = make_rel_app()
    redis = get_state(app).redis
    holder = processes.start("holder", "worker", *QUIET)
    wait_until(lambda: lock_holder(redis), "the first worker to take the lock")
    first_owner = lock_holder(redis)
    other = processes.start("other", "worker", *QUIET)
    wait_until(lambda: workers(redis) == 2, "the second worker to start")

    with app.app_context():
        commit([Flaky("pending")])
    wait_until(lambda: history.runs("flaky:runs"), "the first run")
    wait_until(lambda: scheduled(redis) or history.runs("flaky"), "the retry")
    if leaving == "sigterm":
        holder.send_signal(signal.SIGTERM)  # warm shutdown: the lock is released
        assert holder.wait(30) == 0
    else:
        os.killpg(holder.pid, signal.SIGKILL)  # the worker and its scheduler
        holder.wait(10)

    # Failed after the holder left: only a scheduler taken over can retry it.
    with app.app_context():
        commit([Flaky("after")])
    wait_until(
        lambda: history.runs("flaky") == {"pending": 1, "after": 1},
        "both retries to run",
        limit=STALE_AFTER + 60,
    )
    assert history.runs("flaky:runs") == {"pending": 2, "after": 2}
    assert lock_holder(redis) not in (None, first_owner)
    assert other.poll() is None
