"""``flask messaging worker --threads N``: several jobs at once in one process.

Each test runs a real threaded worker in a burst against the suite's Redis.
Concurrency is shown with barriers (a job that waits for the others can only
finish if they run at the same time), never with timings.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask, current_app, g
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.timeouts import JobTimeoutException, TimerDeathPenalty

from flask_messaging import Message, Messaging
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.state import get_state
from flask_messaging.worker import ThreadedMessagingWorker, make_worker

QUEUE = "default"


@dataclass(frozen=True)
class Meet(Message, name="tests.threads.meet"):
    n: int


@dataclass(frozen=True)
class Stall(Message, name="tests.threads.stall"):
    seconds: float


@dataclass(frozen=True)
class Flaky(Message, name="tests.threads.flaky"):
    n: int


#: What the handlers saw, for the test to read (same process).
seen: dict[str, Any] = {}


def reset(**values: Any) -> None:
    seen.clear()
    seen.update(values)
    seen["lock"] = threading.Lock()


def note(key: str, value: Any) -> None:
    with seen["lock"]:
        seen.setdefault(key, []).append(value)


def on_meet(event: Meet) -> None:
    # Every job of the barrier must be in flight at once for any to pass.
    assert not hasattr(g, "mine"), "another job's app context leaked in"
    g.mine = event.n
    note("contexts", id(current_app._get_current_object()))
    note("app_contexts", id(g._get_current_object()))
    seen["barrier"].wait(timeout=30)
    assert g.mine == event.n


def count_started() -> None:
    """Run by the last job to meet the others, before any goes on."""
    redis = get_state().redis
    started = Queue(QUEUE, connection=redis).started_job_registry
    note("started", len(started.get_job_ids(cleanup=False)))


def on_stall(event: Stall) -> None:
    note("stall", "start")
    if seen.get("in_c"):
        time.sleep(event.seconds)  # one call in C: no Python instruction
    else:
        deadline = time.monotonic() + event.seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    note("stall", "end")


def on_flaky(event: Flaky) -> None:
    note("flaky", event.n)
    if len([n for n in seen["flaky"] if n == event.n]) == 1:
        raise RuntimeError(f"first attempt of {event.n} fails")


@dataclass(frozen=True)
class Gather(Message, name="tests.threads.gather"):
    n: int
    fail: bool = False
    seconds: float = 0
    block: float = 0
    bail: str = ""


async def on_gather(event: Gather) -> None:
    # All on the worker's one event loop: each waits until every one of
    # them is in flight, far more than there are threads.
    if "all_in" not in seen:
        seen["all_in"] = asyncio.Event()
    with seen["lock"]:
        seen["in_flight"] = seen.get("in_flight", 0) + 1
        seen["most"] = max(seen.get("most", 0), seen["in_flight"])
    try:
        await gather(event)
    finally:
        with seen["lock"]:
            seen["in_flight"] -= 1


async def gather(event: Gather) -> None:
    note("gathered", event.n)
    note("gather_contexts", id(g._get_current_object()))
    if len(seen["gathered"]) == seen["expected"]:
        seen["all_in"].set()
    await asyncio.wait_for(seen["all_in"].wait(), timeout=30)
    if event.bail == "exit":
        sys.exit(4)
    if event.bail == "interrupt":
        raise KeyboardInterrupt
    time.sleep(event.block)  # holds up the whole event loop
    await asyncio.sleep(event.seconds)
    if event.fail:
        raise RuntimeError(f"gather {event.n} failed")


@dataclass(frozen=True)
class Linger(Message, name="tests.threads.linger"):
    seconds: float
    asynchronous: bool = False


def on_linger(event: Linger) -> Any:
    note("linger", "start")
    if event.asynchronous:
        return asyncio.sleep(event.seconds)  # a coroutine, as async def's
    deadline = time.monotonic() + event.seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    note("linger", "end")
    return None


def app_with(make_app: Callable[..., Flask], **config: Any) -> Flask:
    messaging = Messaging()
    messaging.subscribe_async(queue_name=QUEUE, timeout=60, retry=1)(on_linger)
    messaging.subscribe_async(queue_name=QUEUE, timeout=1)(on_gather)
    messaging.subscribe_async(queue_name=QUEUE)(on_meet)
    messaging.subscribe_async(queue_name=QUEUE, timeout=1)(on_stall)
    messaging.subscribe_async(queue_name=QUEUE, retry=1)(on_flaky)
    return make_app(messaging, **config)


def publish(app: Flask, *messages: Message) -> None:
    with app.app_context():
        broker = get_state().broker
        for message in messages:
            broker.publish(message)


def burst(app: Flask, threads: int, **work: Any) -> ThreadedMessagingWorker:
    worker: ThreadedMessagingWorker = make_worker(app, [QUEUE], threads=threads)
    worker.work(burst=True, logging_level="WARNING", **work)
    return worker


def registries(app: Flask) -> dict[str, int]:
    queue = Queue(QUEUE, connection=get_state(app).redis)
    return {
        "queued": queue.count,
        "started": len(queue.started_job_registry.get_job_ids(cleanup=False)),
        "finished": queue.finished_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "intermediate": get_state(app).redis.llen(queue.intermediate_queue_key),
    }


def failure_texts(app: Flask) -> list[str]:
    redis: Redis = get_state(app).redis
    queue = Queue(QUEUE, connection=redis)
    texts = []
    for job_id in queue.failed_job_registry.get_job_ids():
        job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
        result = job.latest_result()
        texts.append("" if result is None else str(result.exc_string))
    return texts


def test_n_threads_run_n_jobs_at_once_each_in_its_own_app_context(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(barrier=threading.Barrier(4, action=count_started))
    publish(app, *(Meet(n) for n in range(8)))
    burst(app, threads=4)
    assert registries(app) == {
        "queued": 0,
        "started": 0,
        "finished": 8,
        "failed": 0,
        "intermediate": 0,
    }
    # Each job in an app context of its own; while 4 met, 4 were started
    # (the second time, maybe with ends of the first 4 not yet written).
    assert len(seen["app_contexts"]) == 8
    first, second = seen["started"]
    assert first == 4 and 4 <= second <= 8


def test_a_handler_past_its_timeout_is_failed_while_the_others_go_on(
    make_app: Callable[..., Flask],
) -> None:
    # RQ's TimerDeathPenalty (the embedded worker's) rewrites the message of
    # every JobTimeoutException in the process: ours says the job's timeout.
    TimerDeathPenalty(180, JobTimeoutException)
    app = app_with(make_app)
    reset(barrier=threading.Barrier(3))
    publish(app, Stall(60), *(Meet(n) for n in range(6)))
    burst(app, threads=4)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (6, 1, 0)
    (text,) = failure_texts(app)
    assert "JobTimeoutException" in text
    assert "exceeded maximum timeout value (1 seconds)" in text
    # The handler was stopped (its thread got the exception), not left to
    # run its minute out.
    assert seen["stall"] == ["start"]


def test_a_handler_blocked_in_c_past_its_timeout_is_written_off(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(barrier=threading.Barrier(2), in_c=True)
    publish(app, Stall(30), *(Meet(n) for n in range(4)))
    burst(app, threads=2)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (4, 1, 0)
    assert "JobTimeoutException" in failure_texts(app)[0]
    # The burst ended without waiting for the handler: it still sleeps.
    assert seen["stall"] == ["start"]


def test_a_failed_job_is_retried_within_the_burst(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app, MESSAGING_RETRY_INTERVALS=[0])
    reset()
    publish(app, *(Flaky(n) for n in range(5)))
    burst(app, threads=3)
    assert sorted(seen["flaky"]) == sorted([*range(5), *range(5)])
    assert registries(app)["finished"] == 5
    assert registries(app)["failed"] == 0


def test_max_jobs_counts_every_job_taken(make_app: Callable[..., Flask]) -> None:
    app = app_with(make_app)
    reset(barrier=threading.Barrier(1))
    publish(app, *(Meet(n) for n in range(10)))
    burst(app, threads=4, max_jobs=5)
    counts = registries(app)
    assert (counts["finished"], counts["queued"], counts["intermediate"]) == (5, 5, 0)


def test_a_job_refused_at_the_take_is_failed_and_the_others_run(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(barrier=threading.Barrier(1))
    publish(app, *(Meet(n) for n in range(6)))
    redis = get_state(app).redis
    job_ids = [i.decode() for i in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    # A field our enqueue never writes: the job is refused, unread.
    redis.hset(f"rq:job:{job_ids[3]}", "webhooks", "[]")
    burst(app, threads=4)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["intermediate"]) == (5, 1, 0)


@pytest.mark.parametrize("threads", [1, 4])
def test_a_job_whose_start_redis_refuses_fails_alone(
    make_app: Callable[..., Flask], threads: int
) -> None:
    app = app_with(make_app)
    reset(barrier=threading.Barrier(1))
    publish(app, *(Meet(n) for n in range(6)))
    redis = get_state(app).redis
    job_ids = [i.decode() for i in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    # Someone else's string where RQ keeps the job's executions: the
    # transaction that starts a batch of jobs fails for this one only.
    redis.set(f"rq:executions:{job_ids[1]}", "x")
    worker = make_worker(app, [QUEUE], threads=threads)
    worker.work(burst=True, logging_level="WARNING")
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["intermediate"]) == (5, 1, 0)
    assert counts["started"] == 0


def test_fork_and_threads_are_refused_together(make_app: Callable[..., Flask]) -> None:
    app = app_with(make_app)
    with pytest.raises(ValueError, match="--threads 1 with --fork"):
        make_worker(app, [QUEUE], fork=True, threads=2)
    with pytest.raises(ValueError, match="1 thread or more"):
        make_worker(app, [QUEUE], threads=0)


def test_worker_threads_is_validated(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ValueError, match="MESSAGING_WORKER_THREADS"):
        make_app(MESSAGING_WORKER_THREADS=0)
    with pytest.raises(ValueError, match="MESSAGING_WORKER_ASYNC_LIMIT"):
        make_app(MESSAGING_WORKER_ASYNC_LIMIT=0)


def test_async_handlers_in_flight_stay_within_the_async_limit(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app, MESSAGING_WORKER_ASYNC_LIMIT=3)
    reset(expected=1)  # none waits for the others
    publish(app, *(Gather(n, seconds=0.3) for n in range(8)))
    worker = burst(app, threads=2)
    assert worker.async_limit == 3
    assert registries(app)["finished"] == 8
    assert seen["most"] == 3  # 8 with the default limit: the threads are free


def test_async_handlers_run_many_at_once_beside_the_threads(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(expected=20)
    publish(app, *(Gather(n, fail=n == 7) for n in range(20)))
    burst(app, threads=2)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (19, 1, 0)
    assert "gather 7 failed" in failure_texts(app)[0]
    # Each coroutine in an app context of its own.
    assert len(set(seen["gather_contexts"])) == 20


def test_an_async_handler_past_its_timeout_is_cancelled_and_failed(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(expected=2)
    publish(app, Gather(0, seconds=60), Gather(1))
    burst(app, threads=2)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (1, 1, 0)
    assert "exceeded maximum timeout value (1 seconds)" in failure_texts(app)[0]


@pytest.mark.parametrize("bail", ["exit", "interrupt"])
def test_an_async_handler_raising_systemexit_fails_only_its_job(
    make_app: Callable[..., Flask], bail: str
) -> None:
    app = app_with(make_app)
    reset(expected=1)
    publish(app, Gather(0, bail=bail))
    burst(app, threads=2)
    reset(expected=5)
    publish(app, *(Gather(n) for n in range(1, 6)))
    burst(app, threads=2)
    counts = registries(app)
    assert (counts["finished"], counts["failed"]) == (5, 1)
    assert "The handler raised" in failure_texts(app)[0]


def test_an_async_handler_blocking_the_loop_past_its_timeout_is_failed(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(expected=1)
    publish(app, Gather(0, block=7))
    burst(app, threads=2)
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (0, 1, 0)
    assert "exceeded maximum timeout value (1 seconds)" in failure_texts(app)[0]


@pytest.mark.parametrize("bail", [SystemExit, KeyboardInterrupt])
def test_a_handlers_own_systemexit_fails_only_its_job_on_one_thread(
    make_app: Callable[..., Flask], bail: type[BaseException]
) -> None:
    messaging = Messaging()

    @messaging.subscribe_async(queue_name=QUEUE, name="tests.threads.bail")
    def on_flaky(event: Flaky) -> None:
        if event.n == 0:
            raise bail()

    app = make_app(messaging)
    publish(app, Flaky(0), Flaky(1))
    worker = make_worker(app, [QUEUE])
    worker.work(burst=True, logging_level="WARNING")
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["queued"]) == (1, 1, 0)


def test_a_shutdown_does_not_wait_for_a_handler_written_off_meanwhile(
    make_app: Callable[..., Flask],
) -> None:
    app = app_with(make_app)
    reset(in_c=True)
    publish(app, Stall(30))
    # max_jobs=1: the worker stops taking jobs at once, and waits for the one
    # in hand, which is written off at its timeout while it waits.
    burst(app, threads=2, max_jobs=1)
    counts = registries(app)
    assert (counts["failed"], counts["started"]) == (1, 0)
    # The worker is done while the handler's thread still sleeps.
    assert any(
        t.name.startswith("flask-messaging-executor") and t.is_alive()
        for t in threading.enumerate()
    )


@pytest.mark.parametrize("asynchronous", [False, True])
def test_rqs_stop_job_command_stops_the_job_named_while_the_others_go_on(
    make_app: Callable[..., Flask], asynchronous: bool
) -> None:
    app = app_with(make_app)
    redis: Redis = get_state(app).redis
    reset(barrier=threading.Barrier(3))
    publish(app, Linger(30, asynchronous), *(Meet(n) for n in range(6)))
    started = Queue(QUEUE, connection=redis).started_job_registry

    def stop_the_lingering_job() -> None:
        deadline = time.monotonic() + 30
        while "linger" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        for job_id in started.get_job_ids(cleanup=False):
            job = MessagingJob.fetch(
                job_id, connection=redis, serializer=JSONSerializer
            )
            if "linger" in str(job.kwargs) or "linger" in str(job.args):
                # Anyone who can write to Redis may publish on the worker's
                # channel: what is not a command is logged and ignored.
                channel = f"rq:pubsub:{job.worker_name}"
                for junk in (b"not json", b"[1]", b'{"command": 5}', b"\xff"):
                    redis.publish(channel, junk)
                send_stop_job_command(redis, job_id, serializer=JSONSerializer)
                seen["stopped"] = job_id

    stopper = threading.Thread(target=stop_the_lingering_job)
    stopper.start()
    started_at = time.monotonic()
    burst(app, threads=4)
    stopper.join()
    assert time.monotonic() - started_at < 25  # not the 30 s it lingers
    counts = registries(app)
    assert (counts["finished"], counts["failed"], counts["started"]) == (6, 1, 0)
    stopped = MessagingJob.fetch(
        seen["stopped"], connection=redis, serializer=JSONSerializer
    )
    # RQ's mark of a job stopped on request: not retried (retry=1).
    assert stopped.get_status() == "stopped"
    assert seen["linger"] == ["start"]


def test_a_one_thread_worker_lets_a_job_asked_to_stop_run_to_its_end(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    # Its handler runs in the worker's own thread: RQ's SimpleWorker marks
    # the job stopped and lets it run on, and a failure of its own was then
    # not retried. Ours says so and leaves the job alone.
    app = app_with(make_app)
    redis: Redis = get_state(app).redis
    reset()
    publish(app, Linger(1.5))
    started = Queue(QUEUE, connection=redis).started_job_registry

    def stop_it() -> None:
        deadline = time.monotonic() + 30
        while "linger" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        (job_id,) = started.get_job_ids(cleanup=False)
        send_stop_job_command(redis, job_id, serializer=JSONSerializer)

    stopper = threading.Thread(target=stop_it)
    stopper.start()
    with caplog.at_level(logging.WARNING, "flask_messaging"):
        worker = make_worker(app, [QUEUE], threads=1)
        worker.work(burst=True, logging_level="WARNING")
    stopper.join()
    assert seen["linger"] == ["start", "end"]
    assert registries(app)["finished"] == 1
    assert "cannot be stopped" in caplog.text


def test_an_async_handler_waiting_for_a_place_on_the_loop_is_not_timed_out(
    make_app: Callable[..., Flask],
) -> None:
    # One place, four threads: the worker holds one job at a time, instead of
    # letting three wait for the place while their 1 s timeouts ran out.
    app = app_with(make_app, MESSAGING_WORKER_ASYNC_LIMIT=1)
    reset(expected=1)
    publish(app, *(Gather(n, seconds=0.6) for n in range(4)))
    burst(app, threads=4)
    counts = registries(app)
    assert (counts["finished"], counts["failed"]) == (4, 0)
