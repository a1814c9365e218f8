"""Nothing about one job stops a worker, at any step of RQ's handling.

Each fault leaves its job in the failed registry with a readable reason and
the worker serving the next job: a burst worker drains the queue, the
``memory://`` worker thread lives on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry, StartedJobRegistry

from flask_messaging import Message, get_message_broker
from flask_messaging._rq.records import latest_result
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging._rq.status import recent_failures
from flask_messaging.embedded import EmbeddedWorker
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import RestartPause, make_worker

from .. import worker_app
from ..worker_app import Ping, handled

pytestmark = pytest.mark.reliability

#: A file name from os.listdir that is not UTF-8.
ODD_NAME = b"caf\xe9.txt".decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class OpenFile(Message, name="tests.reliability.open_file"):
    path: str


def open_file(event: OpenFile) -> None:
    raise OSError("cannot open " + ODD_NAME)


def subscribe(app: Flask) -> None:
    get_state(app).broker.subscribe_async(OpenFile, open_file, queue_name=LOW_PRIORITY)


def publish(app: Flask, *messages: Message) -> list[str]:
    """Publish each message; return the id of each one's job, in order."""
    redis = get_state(app).redis
    ids: list[str] = []
    with app.app_context():
        for message in messages:
            get_message_broker().publish(message)
            (job_id,) = redis.lrange(f"rq:queue:{LOW_PRIORITY}", -1, -1)
            ids.append(job_id.decode())
    return ids


def drain(app: Flask) -> None:
    make_worker(app).work(burst=True, logging_level="CRITICAL")


def failed(redis: Redis) -> list[str]:
    registry = FailedJobRegistry(
        LOW_PRIORITY, connection=redis, serializer=JSONSerializer
    )
    return registry.get_job_ids(cleanup=False)


def reason(redis: Redis, job_id: str) -> str:
    result = latest_result(redis, job_id, 1024 * 1024)
    assert result is not None and result.type == "FAILED"
    return result.text


@pytest.mark.parametrize("retries", [0, 1])
def test_a_failure_text_that_is_not_utf8_is_stored_readably(
    make_app: Callable[..., Flask], real_redis_url: str, retries: int
) -> None:
    app = make_app(
        worker_app.messaging, MESSAGING_RETRY=retries, MESSAGING_RETRY_INTERVALS=[0]
    )
    subscribe(app)
    odd, _ = publish(app, OpenFile("x"), Ping(2))
    drain(app)
    redis = get_state(app).redis
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [odd]
    assert "OSError: cannot open caf\\udce9.txt" in reason(redis, odd)
    assert redis.llen(f"rq:queue:{LOW_PRIORITY}") == 0
    # The operator's view shows it too.
    (failure,) = recent_failures(get_state(app))
    assert failure.error == "OSError: cannot open caf\\udce9.txt"


@pytest.mark.parametrize("value", ['["x"]', '{"a": 1}', "[-5]", "not json"])
def test_retry_intervals_rq_cannot_use_on_a_failing_job(
    make_app: Callable[..., Flask], real_redis_url: str, value: str
) -> None:
    app = make_app(worker_app.messaging, MESSAGING_RETRY=2)
    subscribe(app)
    bad, _ = publish(app, OpenFile("x"), Ping(2))
    redis = get_state(app).redis
    redis.hset(f"rq:job:{bad}", "retry_intervals", value)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "field 'retry_intervals'" in reason(redis, bad)


def test_a_value_redis_refuses_as_rq_starts_the_job(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    bad, _ = publish(app, Ping(1), Ping(2))
    redis = get_state(app).redis
    # A whole number of seconds, as ours are, too large for Redis's EXPIRE
    # (RQ sets the job's heartbeat from it, outside the handler's run).
    redis.hset(f"rq:job:{bad}", "timeout", 10**30)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "The worker could not finish handling" in reason(redis, bad)


def test_a_job_key_of_another_type_on_a_queue(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    bad, _ = publish(app, Ping(1), Ping(2))
    redis = get_state(app).redis
    redis.delete(f"rq:job:{bad}")
    redis.set(f"rq:job:{bad}", "not a hash")
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "not a job hash" in reason(redis, bad)


@pytest.mark.parametrize("with_hash", [True, False], ids=["hash", "no-hash"])
def test_a_job_id_rq_refuses_on_a_queue(
    make_app: Callable[..., Flask], real_redis_url: str, with_hash: bool
) -> None:
    app = make_app(worker_app.messaging)
    (good,) = publish(app, Ping(2))
    redis = get_state(app).redis
    if with_hash:
        redis.hset("rq:job:bad.id", mapping=redis.hgetall(f"rq:job:{good}"))
    redis.lpush(f"rq:queue:{LOW_PRIORITY}", "bad.id")
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert redis.llen(f"rq:queue:{LOW_PRIORITY}") == 0
    if with_hash:
        assert failed(redis) == ["bad.id"]
        assert "bad.id" in reason(redis, "bad.id")
        (failure,) = recent_failures(get_state(app))
        assert failure.job_id == "bad.id" and failure.error
    else:
        assert failed(redis) == []  # nothing to run, nothing to keep


@pytest.mark.parametrize("entry", ["bad.id", "refused"])
def test_an_abandoned_job_that_cannot_be_read_does_not_stop_the_clean_up(
    make_app: Callable[..., Flask], real_redis_url: str, entry: str
) -> None:
    app = make_app(worker_app.messaging)
    refused, abandoned, good = publish(app, Ping(1), Ping(2), Ping(3))
    redis = get_state(app).redis
    bad = refused if entry == "refused" else "bad.id"
    if entry == "refused":
        redis.hset(f"rq:job:{refused}", "webhooks", "[]")
    else:
        redis.delete(f"rq:job:{refused}")
        redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, refused)
        redis.hset("rq:job:bad.id", mapping=redis.hgetall(f"rq:job:{good}"))
    for job_id in (bad, abandoned):
        redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, job_id)
        redis.hset(f"rq:job:{job_id}", "status", "started")
    # Both abandoned long ago: RQ's clean-up (run as the worker starts)
    # fails them; the unreadable one first, and it must not stop the other.
    started = StartedJobRegistry(LOW_PRIORITY, connection=redis)
    # Entries name the job and its execution, as RQ writes them.
    redis.zadd(started.key, {f"{bad}:e1": 1, f"{abandoned}:e2": 2})
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [3]
    assert sorted(failed(redis)) == sorted([bad, abandoned])
    assert "cannot be read" in reason(redis, bad)
    assert "AbandonedJobError" in reason(redis, abandoned)
    assert redis.zcard(started.key) == 0


@pytest.mark.parametrize("entry", ["bad.id", "refused"])
def test_a_stranded_job_that_cannot_be_read_does_not_stop_the_clean_up(
    make_app: Callable[..., Flask], real_redis_url: str, entry: str
) -> None:
    app = make_app(worker_app.messaging)
    stranded, good = publish(app, Ping(1), Ping(2))
    redis = get_state(app).redis
    redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, stranded)
    if entry == "refused":
        bad = stranded
        redis.hset(f"rq:job:{bad}", "webhooks", "[]")
    else:
        bad = "bad.id"
        redis.rename(f"rq:job:{stranded}", "rq:job:bad.id")
    # Left on the intermediate list by a worker that died holding it.
    redis.rpush(f"rq:queue:{LOW_PRIORITY}:intermediate", bad)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "cannot be read" in reason(redis, bad)
    assert redis.llen(f"rq:queue:{LOW_PRIORITY}:intermediate") == 0


def test_a_due_scheduled_job_that_cannot_be_read_does_not_stop_the_scheduler(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    bad, good = publish(app, Ping(1), Ping(2))
    redis = get_state(app).redis
    redis.hset(f"rq:job:{bad}", "created_at", "yesterday")
    for job_id in (bad, good):
        redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, job_id)
        redis.hset(f"rq:job:{job_id}", "status", "scheduled")
    redis.zadd(f"rq:scheduled:{LOW_PRIORITY}", {bad: 1, good: 1})
    # A burst worker runs RQ's scheduler once, in its own process, first.
    make_worker(app).work(burst=True, with_scheduler=True, logging_level="CRITICAL")
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "cannot be read" in reason(redis, bad)
    assert redis.zcard(f"rq:scheduled:{LOW_PRIORITY}") == 0


@pytest.mark.parametrize("fault", ["odd-name", "bad-id", "retry-intervals"])
def test_the_memory_worker_thread_outlives_a_bad_job(
    make_app: Callable[..., Flask], fault: str
) -> None:
    app = make_app(
        worker_app.messaging,
        MESSAGING_REDIS_URL="memory://",
        MESSAGING_EMBEDDED_WORKER=False,  # started below, once the fault is set
        MESSAGING_RETRY=1,
        MESSAGING_RETRY_INTERVALS=[0],
    )
    subscribe(app)
    state = get_state(app)
    redis = state.redis
    if fault == "odd-name":
        publish(app, OpenFile("x"))
    elif fault == "bad-id":
        (model,) = publish(app, Ping(0))
        redis.hset("rq:job:bad.id", mapping=redis.hgetall(f"rq:job:{model}"))
        redis.delete(f"rq:job:{model}")
        redis.lpush(f"rq:queue:{LOW_PRIORITY}", "bad.id")
    else:
        (bad,) = publish(app, OpenFile("x"))
        redis.hset(f"rq:job:{bad}", "retry_intervals", '["x"]')
    publish(app, Ping(1))
    state.embedded_worker = EmbeddedWorker(state)
    state.embedded_worker.start()
    deadline = time.monotonic() + 30
    while not handled(redis) and time.monotonic() < deadline:
        time.sleep(0.05)
    with app.app_context():
        get_message_broker().publish(Ping(2))
    while len(handled(redis)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [entry["value"] for entry in handled(redis)] == [1, 2]
    assert state.embedded_worker.running
    assert len(failed(redis)) == 1


def test_the_restart_pause_grows_then_resets_after_a_healthy_run() -> None:
    pauses = RestartPause()
    quick = [pauses.after_run(0.5) for _ in range(7)]
    assert quick == [1, 2, 4, 8, 16, 30, 30]
    assert pauses.after_run(RestartPause.HEALTHY) == 1
    assert pauses.after_run(0.5) == 2
