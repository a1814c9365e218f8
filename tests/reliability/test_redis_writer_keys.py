"""What a Redis writer can put where a worker reads ids and writes keys.

Entries that are not UTF-8 (anywhere an id is read), keys of another type
(anywhere the take, the clean-up or a job's handling writes), sizes no job
of ours has, and handlers that end their process: each is removed or
refused with a log naming the key, and the worker, its scheduler and its
clean-up go on with the other queues and jobs. Each case ran against real
Redis; the ones marked in docs/reliability.md failed before.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq import Worker

from flask_messaging import get_message_broker
from flask_messaging._rq.records import latest_result
from flask_messaging._rq.status import requeue_failed
from flask_messaging._rq.stored_ids import PURGE_CHUNK, purge_ids
from flask_messaging.queue_names import HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from .. import exit_app, worker_app
from ..conftest import flask_messaging_command
from ..exit_app import Exit
from ..worker_app import Boom, Ping, handled
from .harness import alive, wait_until

pytestmark = pytest.mark.reliability

BAD = b"\xff\xfe-bad"
LOW = f"rq:queue:{LOW_PRIORITY}"
HIGH = f"rq:queue:{HIGH_PRIORITY}"


def publish(app: Flask, *messages: object) -> list[str]:
    """Publish each message; return its job's id (the newest on its queue)."""
    redis = get_state(app).redis
    ids = []
    with app.app_context():
        for message in messages:
            get_message_broker().publish(message)  # type: ignore[arg-type]
            queue = HIGH if isinstance(message, Boom) else LOW
            ids.append(redis.lrange(queue, -1, -1)[0].decode())
    return ids


def drain(app: Flask, **kwargs: object) -> None:
    make_worker(app).work(burst=True, logging_level="CRITICAL", **kwargs)


def reason(redis: Redis, job_id: str) -> str:
    result = latest_result(redis, job_id, 1024 * 1024)
    assert result is not None and result.type == "FAILED"
    return result.text


def failed_ids(redis: Redis, queue: str = LOW_PRIORITY) -> list[bytes]:
    return redis.zrange(f"rq:failed:{queue}", 0, -1)


# (A) entries that are not UTF-8


@pytest.mark.parametrize("with_hash", [True, False], ids=["hash", "no-hash"])
def test_an_id_that_is_not_utf8_on_a_queue_is_removed_and_the_queue_drains(
    make_app: Callable[..., Flask],
    real_redis_url: str,
    with_hash: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(worker_app.messaging)
    (model,) = publish(app, Ping(1))
    redis = get_state(app).redis
    if with_hash:
        redis.hset(b"rq:job:" + BAD, mapping=redis.hgetall(f"rq:job:{model}"))
    redis.lpush(LOW, BAD)
    publish(app, Ping(2))
    with caplog.at_level(logging.ERROR, "flask_messaging"):
        drain(app)
    assert sorted(entry["value"] for entry in handled(redis)) == [1, 2]
    assert redis.llen(LOW) == 0
    assert redis.llen(f"{LOW}:intermediate") == 0
    assert f"from {LOW}: it is not UTF-8" in caplog.text


@pytest.mark.parametrize(
    "key",
    [
        f"{LOW}:intermediate",
        f"rq:wip:{LOW_PRIORITY}",
        f"rq:failed:{LOW_PRIORITY}",
        f"rq:finished:{LOW_PRIORITY}",
        f"rq:deferred:{LOW_PRIORITY}",
        f"rq:canceled:{LOW_PRIORITY}",
        f"rq:scheduled:{LOW_PRIORITY}",
    ],
)
def test_an_entry_that_is_not_utf8_in_a_list_or_registry_does_not_stop_the_clean_up(
    make_app: Callable[..., Flask], real_redis_url: str, key: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    # A stranded job that cannot be read, on the queue cleaned last: the
    # clean-up of the first queue must not stop the others'.
    (stranded,) = publish(app, Ping(0))
    redis.lrem(LOW, 0, stranded)
    redis.hset(f"rq:job:{stranded}", "webhooks", "[]")
    redis.rpush(f"{LOW}:intermediate", stranded)
    if key.endswith(":intermediate"):
        redis.rpush(key, BAD)
    else:
        redis.zadd(key, {BAD: 1})
    (good,) = publish(app, Ping(2))
    drain(app, with_scheduler=True)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert BAD not in redis.lrange(f"{LOW}:intermediate", 0, -1)
    for registry in ("wip", "failed", "finished", "deferred", "canceled", "scheduled"):
        assert redis.zscore(f"rq:{registry}:{LOW_PRIORITY}", BAD) is None
    assert failed_ids(redis) == [stranded.encode()]
    assert "cannot be read" in reason(redis, stranded)
    # Its lock is released: the next worker cleans again.
    assert redis.keys("rq:clean_registries:*") == []


def test_an_id_that_is_not_utf8_on_an_earlier_queue_does_not_stop_the_later_ones(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    redis.rpush(f"{HIGH}:intermediate", BAD)
    (stranded,) = publish(app, Ping(0))
    redis.lrem(LOW, 0, stranded)
    redis.hset(f"rq:job:{stranded}", "webhooks", "[]")
    redis.rpush(f"{LOW}:intermediate", stranded)
    drain(app)
    assert redis.llen(f"{HIGH}:intermediate") == 0
    assert failed_ids(redis) == [stranded.encode()]
    assert redis.keys("rq:clean_registries:*") == []


def test_a_due_entry_that_is_not_utf8_does_not_stop_the_scheduler(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    due, queued = publish(app, Ping(1), Ping(2))
    redis.lrem(LOW, 0, due)
    redis.hset(f"rq:job:{due}", "status", "scheduled")
    redis.zadd(f"rq:scheduled:{LOW_PRIORITY}", {BAD: 1, due: 1})
    drain(app, with_scheduler=True)
    assert sorted(entry["value"] for entry in handled(redis)) == [1, 2]
    assert redis.zcard(f"rq:scheduled:{LOW_PRIORITY}") == 0


def test_a_scheduled_registry_of_another_type_does_not_stop_a_burst_worker(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    redis.set(f"rq:scheduled:{HIGH_PRIORITY}", "x")
    publish(app, Ping(1))
    drain(app, with_scheduler=True)
    assert [entry["value"] for entry in handled(redis)] == [1]
    assert redis.get(f"rq:scheduled:{HIGH_PRIORITY}") == b"x"  # left to a person


def test_requeue_failed_removes_entries_that_are_not_utf8_and_requeues_the_rest(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging, MESSAGING_RETRY_INTERVALS=[0])
    redis = get_state(app).redis
    (job_id,) = publish(app, Boom("x"))
    drain(app)
    assert failed_ids(redis, HIGH_PRIORITY) == [job_id.encode()]
    redis.zadd(f"rq:failed:{HIGH_PRIORITY}", {BAD: 1})
    assert requeue_failed(get_state(app)) == 1
    assert failed_ids(redis, HIGH_PRIORITY) == []
    assert redis.lrange(HIGH, 0, -1) == [job_id.encode()]


def test_purge_removes_bad_entries_and_ghosts_in_bounded_chunks_keeping_order(
    real_redis_url: str,
) -> None:
    redis = Redis.from_url(real_redis_url)
    redis.hset("rq:job:real-1", "status", "queued")
    redis.hset("rq:job:real-2", "status", "queued")
    ghosts = [f"ghost-{n}" for n in range(2 * PURGE_CHUNK + 500)]
    redis.rpush(
        "list", "real-1", BAD, *ghosts, b"caf\xc3\xa9", b"\xed\xa0\x80", "real-2"
    )
    purged = purge_ids(redis, "list", "list", job_prefix="rq:job:")
    assert purged.wrong_type is None and purged.complete
    assert purged.undecodable == [BAD, b"\xed\xa0\x80"]  # a surrogate: not UTF-8
    assert purged.ghosts == len(ghosts) + 1  # "café" names no job either
    assert redis.lrange("list", 0, -1) == [b"real-1", b"real-2"]
    # Bounded: a pass checks at most `limit` entries, and says so.
    redis.rpush("list", *ghosts)
    partial = purge_ids(redis, "list", "list", job_prefix="rq:job:", limit=1000)
    assert not partial.complete and partial.ghosts == 1000 - 2  # 2 real ones
    assert redis.llen("list") == 2 + len(ghosts) - 998
    redis.zadd("zset", {BAD: 1, "ok": 2})
    assert purge_ids(redis, "zset", "zset").undecodable == [BAD]
    assert redis.zrange("zset", 0, -1) == [b"ok"]
    assert purge_ids(redis, "list", "zset").wrong_type == "list"


# (B) keys of another type on the take path


@pytest.mark.parametrize(
    ("key", "write"),
    [
        (HIGH, "hset"),
        (f"{HIGH}:intermediate", "set"),
        (f"flask_messaging:wake:{HIGH_PRIORITY}", "hset"),
        (f"rq:wip:{HIGH_PRIORITY}", "set"),
        (f"rq:failed:{HIGH_PRIORITY}", "set"),
    ],
)
def test_a_queue_key_of_another_type_skips_that_queue_and_loses_no_job(
    make_app: Callable[..., Flask],
    real_redis_url: str,
    key: str,
    write: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    waiting = None if key == HIGH else publish(app, Boom("kept"))[0]
    if write == "hset":
        redis.delete(key)
        redis.hset(key, "x", "y")
    else:
        redis.set(key, "x")
    publish(app, Ping(1), Ping(2))
    with caplog.at_level(logging.ERROR, "flask_messaging"):
        drain(app)
    assert [entry["value"] for entry in handled(redis)] == [1, 2]
    if waiting is not None:
        # Not taken: still on its queue, not lost between two lists.
        assert redis.lrange(HIGH, 0, -1) == [waiting.encode()]
    assert f"Redis key {key} is a " in caplog.text
    assert f"DEL {key}" in caplog.text


def test_a_results_key_of_another_type_does_not_lose_the_failure_reason(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging, MESSAGING_RETRY_INTERVALS=[0])
    redis = get_state(app).redis
    (job_id,) = publish(app, Boom("why"))
    redis.set(f"rq:results:{job_id}", "x")
    drain(app)
    assert failed_ids(redis, HIGH_PRIORITY) == [job_id.encode()]
    assert "boom: why" in reason(redis, job_id)


def test_the_worker_key_of_another_type_is_written_again(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    worker = make_worker(app)
    worker.register_birth()
    redis.delete(worker.key)
    redis.set(worker.key, "x")
    worker.heartbeat()
    worker.set_state("busy")
    assert redis.type(worker.key) == b"hash"
    assert redis.hget(worker.key, "state") == b"busy"


# (D) bounds on what a take reads


def test_a_job_hash_with_too_many_fields_is_refused_before_it_is_read(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    bad, _ = publish(app, Ping(1), Ping(2))
    redis.hset(f"rq:job:{bad}", mapping={f"f{n}": "" for n in range(10_000)})
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed_ids(redis) == [bad.encode()]
    assert "fields; flask-messaging jobs have at most" in reason(redis, bad)


# (C) and (E): handlers that end their process


def test_a_fork_work_horse_that_exits_0_fails_its_job_with_a_reason(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = exit_app.subscribe(make_app(worker_app.messaging))
    redis = get_state(app).redis
    ended, _ = publish(app, Exit("exit0"), Ping(2))
    make_worker(app, fork=True).work(burst=True, logging_level="CRITICAL")
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed_ids(redis) == [ended.encode()]
    assert "exited before the job ended" in reason(redis, ended)
    assert redis.zcard(f"rq:wip:{LOW_PRIORITY}") == 0


def test_a_worker_process_killed_by_its_handler_is_replaced(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = exit_app.subscribe(make_app(worker_app.messaging))
    redis = get_state(app).redis
    publish(app, Exit("kill"), Exit("kill"), Ping(1))
    process = flask_messaging_command(
        "tests.exit_app:create_app",
        "worker",
        "--processes",
        "2",
        "--no-relay",
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not handled(redis) and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.1)
        assert [entry["value"] for entry in handled(redis)] == [1]
        # Both slots filled again: a slot still waiting for its replacement
        # would make the pool's status 137 (the kill it has not made up for).
        wait_until(
            lambda: (
                redis.llen(LOW) == 0
                and sum(alive(w.pid) for w in Worker.all(connection=redis)) == 2
            ),
            "both killed processes to be replaced",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("ended unasked (killed by signal 9)") == 2
