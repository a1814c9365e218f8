"""Our lean job lifecycle leaves in Redis what RQ's own leaves.

Each case runs one job through RQ's ``SimpleWorker.execute_job`` (the
anchor), through our one-thread worker and through a threaded one, and
compares everything left in Redis: every key, its type and whether it
expires, the fields of every hash and stream entry, and the values RQ's
tools read (statuses, registries, counters). What a person sees in RQ's
dashboard, ``rq info`` or ``Job.fetch`` is the same whichever worker ran it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from rq import SimpleWorker

from flask_messaging import Message, Messaging
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.workers import MessagingWorker
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

QUEUE = "default"


@dataclass(frozen=True)
class Step(Message, name="tests.lifecycle.step"):
    fail: bool


def on_step(event: Step) -> None:
    if event.fail:
        raise RuntimeError("the step failed")


class RQLifecycleWorker(MessagingWorker):
    """Our worker with RQ's own job lifecycle: the anchor."""

    def execute_job(self, job: MessagingJob, queue: Any) -> None:
        SimpleWorker.execute_job(self, job, queue)


#: Values that differ between runs by nature (times, ids, pids, addresses).
VARYING = {
    "birth",
    "death",
    "last_heartbeat",
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "pid",
    "ip_address",
    "total_working_time",
    "execution_started_at",
    "execution_ended_at",
    "data",
    "exc_info",
    "exc_string",
}


def snapshot(redis: Redis, job_id: str) -> dict[str, Any]:
    """Everything in Redis, with ids and varying values replaced."""

    def name(raw: bytes) -> str:
        text = raw.decode().replace(job_id, "JOB")
        return re.sub(r"[0-9a-f]{32}", "EXECUTION", text)

    out: dict[str, Any] = {}
    for key in redis.keys("*"):
        kind = redis.type(key).decode()
        expires = redis.ttl(key) > 0
        value: Any
        if kind == "hash":
            value = {
                name(field): "~" if field.decode() in VARYING else name(raw)
                for field, raw in redis.hgetall(key).items()
            }
        elif kind == "zset":
            value = sorted(name(member) for member in redis.zrange(key, 0, -1))
        elif kind == "set":
            value = sorted(name(member) for member in redis.smembers(key))
        elif kind == "list":
            value = [name(item) for item in redis.lrange(key, 0, -1)]
        elif kind == "stream":
            value = [
                {
                    field.decode(): "~" if field.decode() in VARYING else name(raw)
                    for field, raw in fields.items()
                }
                for _, fields in redis.xrange(key)
            ]
        else:
            value = redis.get(key)
        out[name(key)] = (kind, expires, value)
    return out


def run_one(
    make_app: Callable[..., Flask], fail: bool, worker: dict[str, Any], **config: Any
) -> dict[str, Any]:
    messaging = Messaging()
    messaging.subscribe_async(queue_name=QUEUE)(on_step)
    app = make_app(messaging, **config)
    with app.app_context():
        get_state().broker.publish(Step(fail))
        redis = get_state().redis
        (job_id,) = [i.decode() for i in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]
        make_worker(app, [QUEUE], name="w1", **worker).work(
            burst=True, logging_level="WARNING"
        )
        state = snapshot(redis, job_id)
        redis.flushdb()
    return state


WORKERS = {
    "one-thread": {},
    "threads": {"threads": 2},
}


@pytest.mark.parametrize("worker", WORKERS.values(), ids=WORKERS.keys())
@pytest.mark.parametrize(
    ("fail", "config"),
    [
        pytest.param(False, {}, id="success"),
        pytest.param(True, {}, id="failure"),
        pytest.param(True, {"MESSAGING_RETRY": 1}, id="retry"),
        pytest.param(False, {"MESSAGING_RESULT_TTL": 0}, id="result-not-kept"),
    ],
)
def test_a_job_leaves_what_rqs_own_worker_leaves(
    make_app: Callable[..., Flask],
    worker: dict[str, Any],
    fail: bool,
    config: dict[str, Any],
) -> None:
    anchor = run_one(make_app, fail, {"worker_class": RQLifecycleWorker}, **config)
    ours = run_one(make_app, fail, worker, **config)
    assert ours == anchor
