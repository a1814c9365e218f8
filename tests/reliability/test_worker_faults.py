"""Workers killed, stalled or stopped mid-handler: nothing is lost.

Never silently gone: after each fault the message is either handled (by a
retry) or sits in the failed job registry, from where a requeue handles it.
Each fault is tried on a worker running one job at a time and on one
running several at once (``--threads``), with as many jobs in hand as it has
threads; ``--fork`` runs one job at a time, so its faults are tried with one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.outbox import Relay
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from ..servers import RedisServer
from .app import QUEUE, Hold, Nap, Overrun, Work, commit, sampled
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

#: Jobs a worker runs at once: one (RQ's way), or several (``--threads``).
THREADS = [pytest.param(1, id="1-thread"), pytest.param(4, id="4-threads")]

RETRIES = [pytest.param(1, id="retried"), pytest.param(0, id="failed-then-requeued")]


def threads_option(threads: int) -> tuple[str, ...]:
    return ("--threads", str(threads))


def failed_registry(redis: Redis) -> FailedJobRegistry:
    return FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)


def started_registry(redis: Redis) -> StartedJobRegistry:
    return StartedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)


def finished_registry(redis: Redis) -> FinishedJobRegistry:
    return FinishedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)


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


def held(n: int) -> list[str]:
    """The tokens of ``n`` held messages."""
    return [f"h{k}" for k in range(n)]


def start_held_worker(
    app: Flask,
    processes: Processes,
    history: History,
    *options: str,
    jobs: int = 1,
    seconds: float = 60,
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a worker with ``options``, commit ``jobs`` messages whose first
    runs hold for ``seconds`` (a minute: to be killed in the meantime), and
    wait until every one of them has started.

    :return: the worker, and the messages' tokens.
    """
    worker = processes.start("worker", "worker", *options, *QUIET)
    tokens = held(jobs)
    with app.app_context():
        commit([Hold(token, seconds=seconds) for token in tokens])
    for token in tokens:
        first_pid(history, token)
    return worker, tokens


def handled_once_more(history: History, redis: Redis, tokens: Sequence[str]) -> None:
    """Wait for the killed ``Hold`` messages to be handled again, then check
    that each ran once more and had one effect, and that no job is left
    failed."""
    wait_until(lambda: len(history.runs("hold")) == len(tokens), "the effects")
    wait_until(lambda: settled(redis, QUEUE), "the queue to settle")
    assert history.runs("hold:runs") == {t: 2 for t in tokens}  # killed, and again
    report = history.check("hold", tokens)
    assert (report.lost, report.duplicated) == (frozenset(), {})  # one effect each
    assert failed_registry(redis).count == 0


@pytest.mark.parametrize("retries", RETRIES)
def test_kill_9_of_the_work_horse_mid_handler(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker, tokens = start_held_worker(app, processes, history, "--fork")
    horse = first_pid(history, "h0")
    assert horse != worker.pid  # the handler runs in a forked work horse
    os.kill(horse, signal.SIGKILL)

    redis = get_state(app).redis
    if not retries:
        wait_until(lambda: failed_registry(redis).count == 1, "the failed job")
        (job_id,) = requeue_failed(redis)
        assert "Work-horse terminated unexpectedly" in failure(redis, job_id)
    handled_once_more(history, redis, tokens)
    assert worker.poll() is None  # the worker outlived its horse


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("retries", RETRIES)
def test_kill_9_of_the_whole_worker_mid_handler(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
    threads: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker, tokens = start_held_worker(
        app, processes, history, *threads_option(threads), jobs=threads
    )
    # No fork: every handler runs in the worker itself, all at once.
    assert {first_pid(history, t) for t in tokens} == {worker.pid}
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its scheduler
    worker.wait(10)

    redis = get_state(app).redis
    # Not gone: each is still "started", until RQ's clean-up finds it abandoned.
    job_ids = started_registry(redis).get_job_ids(cleanup=False)
    assert len(job_ids) == threads
    assert rescue_abandoned(redis, QUEUE) == threads
    if not retries:
        assert sorted(failed_registry(redis).get_job_ids()) == sorted(job_ids)
        for job_id in job_ids:
            assert "AbandonedJobError" in failure(redis, job_id)
        requeue_failed(redis)
    processes.start("worker-2", "worker", *threads_option(threads), *QUIET)
    handled_once_more(history, redis, tokens)


#: How an overrunning handler keeps busy: one call into C, where nothing
#: raised from another thread reaches it until the call returns, or a loop
#: of short naps in Python.
OVERRUNS = [
    pytest.param(1, 0.0, id="1-thread"),
    pytest.param(4, 0.0, id="4-threads-asleep-in-C"),
    pytest.param(4, 0.1, id="4-threads-in-a-Python-loop"),
]


@pytest.mark.parametrize(("threads", "step"), OVERRUNS)
@pytest.mark.parametrize("retries", [1, 0], ids=["retried", "failed"])
def test_a_handler_past_its_timeout_is_stopped_and_the_worker_serves_on(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
    threads: int,
    step: float,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker = processes.start("worker", "worker", *threads_option(threads), *QUIET)
    others = held(threads - 1)  # in flight beside it, past its deadline
    with app.app_context():
        commit([Overrun("o", seconds=60, step=step)])
        commit([Hold(token, seconds=2) for token in others])
        commit([Work(f"w{n}") for n in range(5)])
    redis = get_state(app).redis
    wait_until(lambda: len(history.runs("apply_work:runs")) == 5, "the later messages")
    wait_until(lambda: len(history.runs("hold")) == len(others), "the held messages")
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
    if threads > 1 and not step:
        # Failed at its deadline, and the rest done, while it still sleeps.
        assert history.notes("overrun:stopped") == []
    else:
        wait_until(lambda: history.notes("overrun:stopped"), "the handler to stop")
        assert history.notes("overrun:stopped") == ["JobTimeoutException"]
    assert history.runs("hold:runs") == {token: 1 for token in others}
    # One process did it all: stopped the handler, retried, served the rest.
    assert worker.poll() is None
    assert set(history.notes("overrun")) == {str(worker.pid)}


@pytest.mark.parametrize("threads", THREADS)
def test_a_warm_shutdown_lets_the_jobs_in_hand_finish(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    threads: int,
) -> None:
    app = make_rel_app()
    worker, tokens = start_held_worker(
        app, processes, history, *threads_option(threads), jobs=threads, seconds=3
    )
    with app.app_context():
        commit([Work("later")])  # no thread is free for it
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, processes.log("worker")[-2000:]

    redis = get_state(app).redis
    assert history.runs("hold:runs") == {t: 1 for t in tokens}
    assert history.check("hold", tokens).lost == frozenset()
    # Each end recorded as RQ records it; the later message left for others.
    assert started_registry(redis).get_job_ids(cleanup=False) == []
    assert len(finished_registry(redis).get_job_ids()) == threads
    assert failed_registry(redis).count == 0
    later_jobs = 2 if sampled("later") else 1  # count_work takes a sample
    assert redis.llen(f"rq:queue:{QUEUE}") == later_jobs
    assert history.runs("apply_work:runs") == {}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("retries", RETRIES)
def test_a_cold_shutdown_fails_the_jobs_in_hand_per_their_policy(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    retries: int,
    threads: int,
) -> None:
    app = make_rel_app(MESSAGING_RETRY=retries)
    worker, tokens = start_held_worker(
        app, processes, history, *threads_option(threads), jobs=threads
    )
    redis = get_state(app).redis
    worker.send_signal(signal.SIGTERM)  # warm: waits for the handlers
    worker_keys = redis.smembers("rq:workers")

    def warm_shutdown_recorded() -> bool:
        return any(redis.hget(key, "shutdown_requested_date") for key in worker_keys)

    wait_until(warm_shutdown_recorded, "the warm shutdown to begin")
    # RQ ignores a second signal within a second of the first (one signal
    # sent twice, by a pool and by the terminal); a person is slower.
    time.sleep(1.5)
    assert worker.poll() is None  # still waiting for the handlers
    worker.send_signal(signal.SIGTERM)  # cold: now
    # Promptly: the handlers would hold it for a minute.
    wait_until(lambda: worker.poll() is not None, "the worker to exit", limit=20)

    # None left "started" (for RQ's clean-up to find minutes later): each
    # is back on its queue for a retry, or failed.
    assert started_registry(redis).get_job_ids(cleanup=False) == []
    if retries:
        assert redis.llen(f"rq:queue:{QUEUE}") == threads
    else:
        assert failed_registry(redis).count == threads
        for job_id in requeue_failed(redis):
            # One thread: RQ's SystemExit, raised in the handler itself.
            why = "cold shutdown" if threads > 1 else "SystemExit"
            assert why in failure(redis, job_id)
    processes.start("worker-2", "worker", *threads_option(threads), *QUIET)
    handled_once_more(history, redis, tokens)


def test_a_cold_shutdown_fails_no_job_that_ended(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    aof_redis: RedisServer,
) -> None:
    """A job whose handler returned, its end not yet written, is left to end.

    Its end waits while Redis holds every write (``CLIENT PAUSE WRITE``, on
    this test's own server), as on a slow or distant Redis; the cold
    shutdown comes meanwhile, with another job still running.
    """
    app = make_rel_app(aof_redis.url)
    processes.env["MESSAGING_REDIS_URL"] = aof_redis.url
    worker = processes.start("worker", "worker", *threads_option(2), *QUIET)
    with app.app_context():
        commit([Hold("h", seconds=60), Nap("n", seconds=1)])
    first_pid(history, "h")
    first_pid(history, "n")
    redis = get_state(app).redis
    redis.client_pause(60_000, all=False)  # until the unpause below
    try:
        wait_until(lambda: history.runs("nap"), "the short handler to return")
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # RQ takes a second signal within a second as the same
        worker.send_signal(signal.SIGTERM)
        wait_until(
            lambda: "cold shut down" in processes.log("worker"), "the cold shutdown"
        )
    finally:
        redis.client_unpause()
    wait_until(lambda: worker.poll() is not None, "the worker to exit")

    # The job that ended is finished, and only that; the other is retried.
    (nap_job,) = finished_registry(redis).get_job_ids()
    assert failed_registry(redis).count == 0
    assert nap_job.encode() not in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)
    assert started_registry(redis).get_job_ids(cleanup=False) == []
    processes.start("worker-2", "worker", *threads_option(2), *QUIET)
    wait_until(lambda: history.runs("hold"), "the retry's effect")
    wait_until(lambda: settled(redis, QUEUE), "the queue to settle")
    assert history.runs("nap:runs") == {"n": 1}
    assert history.runs("hold:runs") == {"h": 2}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(
    "queues",
    [
        pytest.param((), id="default-queues"),
        pytest.param((QUEUE,), id="one-queue"),
    ],
)
def test_a_worker_that_dies_right_after_taking_jobs_loses_nothing(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    queues: tuple[str, ...],
    threads: int,
) -> None:
    app = make_rel_app()
    tokens = [f"w{n}" for n in range(threads + 1)]  # one more than it can take
    with app.app_context():
        commit([Work(token) for token in tokens])
    crash = {"RELIABILITY_CRASH_AFTER_TAKING_A_JOB": "1"}
    options = (*queues, *threads_option(threads), "--burst", *QUIET)
    doomed = processes.start("doomed", "worker", *options, env=crash)
    assert doomed.wait(60) == 3  # died holding jobs it had not started
    assert history.notes("crash:taken") == [str(threads)]  # a job per thread
    # Every net there is: RQ's recovery of abandoned and stranded jobs (at
    # once, not minutes later), a relay pass, then a worker's own maintenance.
    redis = get_state(app).redis
    rescue_abandoned(redis, QUEUE)
    seen: set[str] = set()
    for _ in range(2):  # RQ acts on a second sighting
        rescue_stranded(redis, make_worker(app, [QUEUE]), QUEUE, seen)
    with app.app_context():
        Relay(get_state()).run_once()
    worker = processes.start("worker", "worker", *options)
    assert worker.wait(60) == 0
    report = history.check("apply_work:runs", tokens)
    assert (report.lost, report.duplicated) == (frozenset(), {})


@pytest.mark.parametrize("threads", THREADS)
def test_a_worker_outlives_redis_going_away_during_jobs(
    make_rel_app: Callable[..., Flask],
    processes: Processes,
    history: History,
    aof_redis: RedisServer,
    threads: int,
) -> None:
    app = make_rel_app(aof_redis.url)
    processes.env["MESSAGING_REDIS_URL"] = aof_redis.url
    worker, tokens = start_held_worker(
        app, processes, history, *threads_option(threads), jobs=threads, seconds=2
    )
    aof_redis.stop()  # down when the handlers return
    wait_until(lambda: len(history.runs("hold")) == threads, "the handlers to finish")
    aof_redis.start()
    with app.app_context():
        commit([Work("after")])
    wait_until(
        lambda: worker.poll() is not None or history.runs("apply_work:runs"),
        "the worker to handle the next message, or to exit",
    )
    assert worker.poll() is None, processes.log("worker")[-2000:]
    # The jobs it held: recorded as ended once Redis was back, or (by a
    # worker of one thread, whose loop quit) found abandoned by RQ's
    # clean-up and retried.
    redis = get_state(app).redis
    wait_until(
        lambda: rescue_abandoned(redis, QUEUE) >= 0 and settled(redis, QUEUE),
        "the queue to settle",
    )
    assert history.check("hold:runs", tokens).lost == frozenset()
    assert failed_registry(redis).count == 0
    if threads > 1:
        # Its recorder wrote their ends once Redis was back: each ran once.
        assert history.runs("hold:runs") == {t: 1 for t in tokens}
