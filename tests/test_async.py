"""Async delivery through RQ, against the suite's real Redis server."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from redis.connection import Connection
from rq import Queue, Retry
from rq.registry import FailedJobRegistry

from flask_messaging import DeliveryError, MessageEncodeError, get_message_broker
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.dispatch import DISPATCH_FUNCTION
from flask_messaging.queue_names import DEFAULT_PRIORITY, HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from . import worker_app
from .worker_app import ATTEMPTS, Boom, Ping, handled


@pytest.fixture
def worker_app_instance(make_app: Callable[..., Flask]) -> Flask:
    return make_app(worker_app.messaging, MESSAGING_RETRY_INTERVALS=[0])


def job_hashes(redis: Redis) -> list[dict[bytes, bytes]]:
    return [redis.hgetall(key) for key in sorted(redis.keys("rq:job:*"))]


def drain(app: Flask, *queues: str) -> None:
    make_worker(app, queues).work(burst=True, logging_level="WARNING")


def test_publish_enqueues_one_json_job_per_async_subscriber(
    worker_app_instance: Flask,
) -> None:
    app = worker_app_instance
    with app.app_context():
        get_message_broker().publish(Ping(1))
        redis = get_state().redis
        (job,) = job_hashes(redis)
        data = json.loads(zlib.decompress(job[b"data"]))
        func_name, instance, args, kwargs = data
        assert func_name == DISPATCH_FUNCTION
        assert instance is None and kwargs == {}
        handler_key, envelope, signature = args
        assert handler_key == "tests.worker_app:on_ping"
        assert json.loads(envelope)["payload"] == {"value": 1}
        assert signature.startswith("v2:") and len(signature) == 3 + 64
        # Names only, never payload data, in what dashboards display.
        assert job[b"description"] == b"tests.ping -> tests.worker_app:on_ping"
        assert job[b"origin"] == LOW_PRIORITY.encode()
        for value in job.values():
            assert b"\x80\x04" not in value and b"\x80\x05" not in value  # no pickle


def test_async_handler_runs_in_the_worker_inside_the_app(
    worker_app_instance: Flask,
) -> None:
    app = worker_app_instance
    with app.app_context():
        get_message_broker().publish(Ping(7))
        drain(app)
        (entry,) = handled(get_state().redis)
    assert entry["handler"] == "on_ping"
    assert entry["value"] == 7
    assert entry["app"] == app.name
    assert entry["message_id"]


class CountingConnection(Connection):
    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


def handle_a(event: Ping) -> None:
    pass


def handle_b(event: Ping) -> None:
    pass


def handle_c(event: Ping) -> None:
    pass


def test_all_jobs_of_one_publish_go_in_one_round_trip(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app()
    state = get_state(app)
    state.use_redis(Redis.from_url(real_redis_url, connection_class=CountingConnection))
    state.redis.ping()
    broker = state.broker
    broker.subscribe_async(Ping, handle_a, queue_name=HIGH_PRIORITY)
    broker.subscribe_async(Ping, handle_b, queue_name=LOW_PRIORITY)
    broker.subscribe_async(
        Ping, handle_c, queue_name=LOW_PRIORITY, predicate=lambda e: e.value > 1
    )
    broker.publish(Ping(2))  # RQ asks each queue's server version once
    CountingConnection.round_trips = 0
    broker.publish(Ping(2))
    assert CountingConnection.round_trips == 1
    assert Queue(HIGH_PRIORITY, connection=state.redis).count == 2
    assert Queue(LOW_PRIORITY, connection=state.redis).count == 4


def test_predicates_run_before_any_job_is_made(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    state = get_state(app)
    state.broker.subscribe_async(Ping, handle_a, predicate=lambda e: e.value > 10)
    state.broker.publish(Ping(1))
    assert state.redis.keys("rq:job:*") == []
    state.broker.publish(Ping(11))
    assert Queue(DEFAULT_PRIORITY, connection=state.redis).count == 1


def test_bad_message_is_rejected_before_anything_is_enqueued(
    worker_app_instance: Flask,
) -> None:
    with worker_app_instance.app_context():
        with pytest.raises(MessageEncodeError, match="tests.ping: invalid field value"):
            get_message_broker().publish(Ping("one"))  # type: ignore[arg-type]
        assert get_state().redis.keys("rq:*") == []


def test_failed_job_is_retried_then_lands_in_the_failed_registry(
    worker_app_instance: Flask,
) -> None:
    app = worker_app_instance
    with app.app_context():
        get_message_broker().publish(Boom("always"))
        drain(app)
        redis = get_state().redis
        assert int(redis.get(ATTEMPTS) or 0) == 2  # retry=1: two runs
        registry = FailedJobRegistry(
            HIGH_PRIORITY, connection=redis, serializer=JSONSerializer
        )
        (job_id,) = registry.get_job_ids()
        job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
        assert "RuntimeError: boom: always" in job.latest_result().exc_string


def test_per_subscription_retry_overrides_the_config(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(MESSAGING_RETRY=5, MESSAGING_RETRY_INTERVALS=[0])
    state = get_state(app)
    state.broker.subscribe_async(Ping, handle_a)
    state.broker.subscribe_async(Ping, handle_b, retry=Retry(max=2, interval=30))
    state.broker.subscribe_async(Ping, handle_c, retry=0)
    state.broker.publish(Ping(1))
    retries = {
        job[b"description"].split(b":")[-1]: (
            job.get(b"retries_left"),
            job.get(b"retry_intervals"),
        )
        for job in job_hashes(state.redis)
    }
    assert retries[b"handle_a"] == (b"5", b"[0]")
    assert retries[b"handle_b"] == (b"2", b"[30]")
    assert retries[b"handle_c"][0] in (None, b"")


def test_inline_mode_runs_async_subscribers_through_the_codec(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(worker_app.messaging, MESSAGING_ASYNC=False)
    with app.app_context():
        get_message_broker().publish(Ping(3))
        assert get_state().redis.keys("rq:*") == []  # no job was made
        (entry,) = handled(get_state().redis)
        assert entry["value"] == 3 and entry["message_id"]
        with pytest.raises(DeliveryError) as info:
            get_message_broker().publish(Boom("inline"))
        (error,) = info.value.exceptions
        assert str(error) == "boom: inline"
        assert "tests.worker_app:on_boom" in error.__notes__[0]


def test_worker_listens_on_configured_then_subscribed_queues(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(MESSAGING_QUEUES=["urgent", "default"])
    get_state(app).broker.subscribe_async(Ping, handle_a, queue_name="reports")
    worker = make_worker(app)
    assert worker.queue_names() == ["urgent", "default", "reports"]


def test_jobs_survive_a_signing_key_rotation(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    # Two apps sharing one Redis: a real server (memory:// is per app).
    old = make_app(worker_app.messaging, SECRET_KEY="old key")
    new = make_app(
        worker_app.messaging, SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"]
    )
    with old.app_context():
        get_message_broker().publish(Ping(5))
    with new.app_context():
        drain(new)
        assert [e["value"] for e in handled(get_state().redis)] == [5]


def test_missing_signing_key_is_a_configuration_error_not_a_delivery_failure(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(SECRET_KEY=None)
    state = get_state(app)
    state.broker.subscribe_async(Ping, handle_a)
    with pytest.raises(RuntimeError, match="set SECRET_KEY"):
        state.broker.publish(Ping(1))


def test_a_server_that_forgot_the_scripts_gets_them_again(
    worker_app_instance: Flask,
) -> None:
    app = worker_app_instance
    with app.app_context():
        redis = get_state().redis
        get_message_broker().publish(Ping(1))
        drain(app)
        redis.script_flush()  # as a restarted server without persistence
        get_message_broker().publish(Ping(2))
        drain(app)  # takes jobs with the other script
        assert sorted(e["value"] for e in handled(redis)) == [1, 2]
