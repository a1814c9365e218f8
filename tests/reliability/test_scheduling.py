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
import subprocess
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq import Worker
from rq.registry import ScheduledJobRegistry

from flask_messaging._rq.scheduling import STALE_AFTER
from flask_messaging._rq.serializer import ReadOnlySerializer
from flask_messaging.state import get_state

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


def scheduler_pid(redis: Redis, name: bytes) -> int:
    """The pid of RQ's scheduler process called ``name``."""
    pid = redis.hget(f"rq:scheduler:{name.decode()}", "pid")
    assert pid is not None
    return int(pid)


def start_two_workers(
    processes: Processes, redis: Redis
) -> tuple[subprocess.Popen[str], bytes | None, subprocess.Popen[str]]:
    """Start a worker, the holder of the scheduler lock, then another.

    :return: the holder, the lock's value (its scheduler), the other worker.
    """
    holder = processes.start("holder", "worker", *QUIET)
    wait_until(lambda: lock_holder(redis), "the first worker to take the lock")
    first_owner = lock_holder(redis)
    other = processes.start("other", "worker", *QUIET)
    wait_until(lambda: workers(redis) == 2, "the second worker to start")
    return holder, first_owner, other


@pytest.mark.parametrize("leaving", ["sigterm", "kill-9", "scheduler-kill-9"])
def test_another_worker_takes_over_scheduling_when_the_holder_leaves(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    leaving: str,
) -> None:
    app = make_rel_app()
    redis = get_state(app).redis
    holder, first_owner, other = start_two_workers(processes, redis)

    with app.app_context():
        commit([Flaky("pending")])
    wait_until(lambda: history.runs("flaky:runs"), "the first run")
    wait_until(lambda: scheduled(redis) or history.runs("flaky"), "the retry")
    if leaving == "sigterm":
        holder.send_signal(signal.SIGTERM)  # warm shutdown: the lock is released
        assert holder.wait(30) == 0
    elif leaving == "kill-9":
        os.killpg(holder.pid, signal.SIGKILL)  # the worker and its scheduler
        holder.wait(10)
    else:  # only the scheduler process: its worker lives on
        assert first_owner is not None
        os.kill(scheduler_pid(redis, first_owner), signal.SIGKILL)

    # Failed after the holder left: only a scheduler taken over can retry it.
    with app.app_context():
        commit([Flaky("after")])
    wait_until(
        lambda: history.runs("flaky") == {"pending": 1, "after": 1},
        "both retries to run",
        limit=STALE_AFTER + 60,
    )
    assert history.runs("flaky:runs") == {"pending": 2, "after": 2}
    assert lock_holder(redis) is not None
    if leaving != "scheduler-kill-9":
        assert lock_holder(redis) != first_owner
    else:
        assert holder.poll() is None
    assert other.poll() is None


def test_a_stopped_holder_is_taken_over_and_does_not_schedule_twice(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
) -> None:
    app = make_rel_app()
    redis = get_state(app).redis
    holder, first_owner, _ = start_two_workers(processes, redis)

    os.killpg(holder.pid, signal.SIGSTOP)  # stuck: alive, renewing nothing
    try:
        with app.app_context():
            commit([Flaky("stuck")])
        wait_until(
            lambda: history.runs("flaky") == {"stuck": 1},
            "the retry",
            limit=STALE_AFTER + 60,
        )
        assert lock_holder(redis) not in (None, first_owner)
    finally:
        os.killpg(holder.pid, signal.SIGCONT)
    # Back, the stuck scheduler finds its lock taken and schedules nothing.
    with app.app_context():
        commit([Flaky("later")])
    wait_until(lambda: history.runs("flaky").get("later"), "the next retry")
    assert history.runs("flaky:runs") == {"stuck": 2, "later": 2}
    assert lock_holder(redis) not in (None, first_owner)
    assert holder.poll() is None
