"""Workers killed or stalled mid-handler: the job is retried or fails visibly.

Never silently gone: after each fault the message is either handled (by a
retry) or sits in the failed job registry, from where a requeue handles it.
SIGTERM (warm shutdown) is covered by
``tests/test_cli.py::test_sigterm_lets_the_running_handler_finish``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry, StartedJobRegistry

from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.outbox import Relay
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from ..servers import RedisServer
from .app import QUEUE, Hold, Overrun, Work, commit
from .harness import (
    Processes,
    rescue_abandoned,
    rescue_stranded,
    settled,
    wait_until,
)
from .history import History

pytestmark = pytest.mark.reliability

QUIET = ("--logging-level", "WARNING")


def failed_registry(redis: Redis) -> FailedJobRegistry:
    return FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)


def failure(redis: Redis, job_id: str) -> str:
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result()
    return "" if result is None else str(result.exc_string)


def requeue_failed(redis: Redis) -> list[str]:
    registry = failed_registry(redis)
    job_ids = registry.get_job_ids()
    for job_id in job_ids:
        registry.requeue(job_id)
    return job_ids


def first_pid(history: History, token: str) -> int:
    wait_until(lambda: history.notes(f"pid:{token}"), f"{token}'s handler to start")
    return int(history.notes(f"pid:{token}")[0])


def start_held_worker(
    app: Flask, processes: Processes, *options: str
) -> subprocess.Popen[str]:
    """Start a worker with ``options``, and commit ``Hold("h")``, whose first
    run holds it for a minute (to be killed in the meantime)."""
    worker = processes.start("worker", "worker", *options, *QUIET)
    with app.app_context():
        commit([Hold("h", seconds=60)])
    return worker


def handled_once_more(history: History, redis: Redis) -> None:
    """Wait for the killed ``Hold("h")`` to be handled again, then check that
    it ran once more and had one effect, and that no job is left failed."""
    wait_until(lambda: history.runs("hold"), "the handler's effect")
    wait_until(lambda: settled(redis, QUEUE), "the queue to settle")
    assert history.runs("hold:runs") == {"h": 2}  # the killed run and one more
    assert history.check("hold", {"h"}).duplicated == {}  # one effect
    assert failed_registry(redis).count == 0


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed-then-requeued"])
def test_kill_9_of_the_work_horse_mid_handler(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker = start_held_worker(app, processes, "--fork")
    horse = first_pid(history, "h")
    assert horse != worker.pid  # the handler runs in a forked work horse
    os.kill(horse, signal.SIGKILL)

    redis = get_state(app).redis
    if not retries:
        wait_until(lambda: failed_registry(redis).count == 1, "the failed job")
        (job_id,) = requeue_failed(redis)
        assert "Work-horse terminated unexpectedly" in failure(redis, job_id)
    handled_once_more(history, redis)
    assert worker.poll() is None  # the worker outlived its horse


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed-then-requeued"])
def test_kill_9_of_the_whole_worker_mid_handler(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker = start_held_worker(app, processes)
    assert first_pid(history, "h") == worker.pid  # no fork: the worker itself
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its scheduler
    worker.wait(10)

    redis = get_state(app).redis
    started = StartedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    (job_id,) = started.get_job_ids(cleanup=False)  # not gone: still "started"
    assert rescue_abandoned(redis, QUEUE) == 1
    if not retries:
        assert failed_registry(redis).get_job_ids() == [job_id]
        assert "AbandonedJobError" in failure(redis, job_id)
        requeue_failed(redis)
    processes.start("worker-2", "worker", *QUIET)
    handled_once_more(history, redis)


@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed"])
def test_a_handler_past_its_timeout_is_stopped_and_the_worker_serves_on(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker = processes.start("worker", "worker", *QUIET)
    with app.app_context():
        commit([Overrun("o", seconds=60)])
        commit([Work(f"w{n}") for n in range(5)])
    redis = get_state(app).redis
    wait_until(lambda: len(history.runs("apply_work:runs")) == 5, "the later messages")
    if retries:
        wait_until(lambda: history.runs("overrun"), "the retry's effect")
        assert history.runs("overrun:runs") == {"o": 2}
    else:
        wait_until(lambda: failed_registry(redis).count == 1, "the failed job")
        (job_id,) = failed_registry(redis).get_job_ids()
        assert "JobTimeoutException" in failure(redis, job_id)
        assert history.runs("overrun:runs") == {"o": 1}
        assert history.runs("overrun") == {}
    wait_until(lambda: settled(redis, QUEUE), "the queue to settle")
    # One process did it all: stopped the handler, retried, served the rest.
    assert worker.poll() is None
    assert set(history.notes("overrun")) == {str(worker.pid)}


@pytest.mark.parametrize(
    "queues",
    [
        pytest.param((), id="default-queues"),
        pytest.param((QUEUE,), id="one-queue"),
    ],
)
def test_a_worker_that_dies_right_after_taking_a_job_loses_nothing(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    queues: tuple[str, ...],
) -> None:
    app = make_rel_app()
    with app.app_context():
        commit([Work("w")])
    crash = {"RELIABILITY_CRASH_AFTER_TAKING_A_JOB": "1"}
    doomed = processes.start("doomed", "worker", *queues, "--burst", *QUIET, env=crash)
    assert doomed.wait(60) == 3  # died holding a job it had not started
    # Every net there is: RQ's recovery of abandoned and stranded jobs (at
    # once, not minutes later), a relay pass, then a worker's own maintenance.
    redis = get_state(app).redis
    rescue_abandoned(redis, QUEUE)
    seen: set[str] = set()
    for _ in range(2):  # RQ acts on a second sighting
        rescue_stranded(redis, make_worker(app, [QUEUE]), QUEUE, seen)
    with app.app_context():
        Relay(get_state()).run_once()
    worker = processes.start("worker", "worker", *queues, "--burst", *QUIET)
    assert worker.wait(60) == 0
    assert history.check("apply_work:runs", {"w"}).lost == frozenset()


def test_a_worker_outlives_redis_going_away_during_a_job(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    aof_redis: RedisServer,
) -> None:
    app = make_rel_app(aof_redis.url)
    processes.env["MESSAGING_REDIS_URL"] = aof_redis.url
    worker = processes.start("worker", "worker", *QUIET)
    with app.app_context():
        commit([Hold("h", seconds=2)])
    first_pid(history, "h")
    aof_redis.stop()  # down when the handler returns
    wait_until(lambda: history.runs("hold"), "the handler to finish")
    aof_redis.start()
    with app.app_context():
        commit([Work("after")])
    wait_until(
        lambda: worker.poll() is not None or history.runs("apply_work:runs"),
        "the worker to handle the next message, or to exit",
    )
    assert worker.poll() is None, processes.log("worker")[-2000:]
