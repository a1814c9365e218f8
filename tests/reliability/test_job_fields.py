"""A worker acts only on the job-hash fields our enqueue writes.

Someone who can write to Redis adds fields RQ acts on (webhooks, repeats,
dependencies, callbacks), copies a signed job under another id or onto
another queue, or changes its arguments: each such job is refused at once,
into the failed registry with a reason, never retried, and the worker goes
on to the next job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import get_message_broker
from flask_messaging._rq.records import latest_result
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.queue_names import HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from .. import worker_app
from ..worker_app import Ping, handled

pytestmark = pytest.mark.reliability


@pytest.fixture
def app(make_app: Callable[..., Flask], real_redis_url: str) -> Flask:
    return make_app(
        worker_app.messaging, MESSAGING_RETRY=3, MESSAGING_RETRY_INTERVALS=[0]
    )


def publish(app: Flask, *values: int) -> tuple[Redis, list[str]]:
    """Publish one Ping per value; return Redis and the job ids, in order."""
    redis = get_state(app).redis
    ids: list[str] = []
    with app.app_context():
        for value in values:
            get_message_broker().publish(Ping(value))
            (key,) = {k.decode() for k in redis.keys("rq:job:*")} - {
                f"rq:job:{i}" for i in ids
            }
            ids.append(key.removeprefix("rq:job:"))
    return redis, ids


def drain(app: Flask) -> None:
    make_worker(app).work(burst=True, logging_level="CRITICAL")


def failed(redis: Redis, queue: str = LOW_PRIORITY) -> list[str]:
    registry = FailedJobRegistry(queue, connection=redis, serializer=JSONSerializer)
    return registry.get_job_ids(cleanup=False)


def reason(redis: Redis, job_id: str) -> str:
    result = latest_result(redis, job_id, 1024 * 1024)
    assert result is not None and result.type == "FAILED"
    return result.text


def reasons(redis: Redis, job_id: str) -> str:
    """Every failure text recorded for ``job_id``, oldest first."""
    texts = []
    for _, entry in redis.xrange(f"rq:results:{job_id}"):
        if b"exc_string" in entry:
            texts.append(zlib.decompress(base64.b64decode(entry[b"exc_string"])))
    return b"\n".join(texts).decode()


def read_call(redis: Redis, job_id: str) -> list:  # type: ignore[type-arg]
    return json.loads(zlib.decompress(redis.hget(f"rq:job:{job_id}", "data")))  # type: ignore[no-any-return]


def write_call(redis: Redis, job_id: str, call: object) -> None:
    redis.hset(f"rq:job:{job_id}", "data", zlib.compress(json.dumps(call).encode()))


class Requests:
    """An HTTP server on a free port that records every request it gets."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Record(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Record)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def requests() -> Iterator[Requests]:
    requests = Requests()
    thread = threading.Thread(target=requests.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        requests.server.shutdown()
        requests.server.server_close()


def test_webhooks_added_to_a_signed_job_are_never_sent(
    app: Flask, requests: Requests
) -> None:
    redis, (bad, good) = publish(app, 1, 2)
    hooks = [
        {
            "url": f"{requests.url}/{status}",
            "job_status": status,
            "method": "POST",
            "headers": {"X-Internal": "yes"},
        }
        for status in ("finished", "failed")
    ]
    redis.hset(f"rq:job:{bad}", "webhooks", json.dumps(hooks))
    drain(app)
    assert requests.seen == []
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "it has a field 'webhooks'" in reason(redis, bad)


def test_repeats_left_added_to_a_signed_job_runs_it_not_even_once(
    app: Flask,
) -> None:
    redis, (bad, good) = publish(app, 1, 2)
    redis.hset(f"rq:job:{bad}", "repeats_left", 5)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "it has a field 'repeats_left'" in reason(redis, bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("repeat_intervals", "[0]"),
        ("dependency_ids", '["other"]'),
        ("allow_dependency_failures", "1"),
        ("success_callback_timeout", "5"),
        ("rate_limit_key", "x"),
        ("enqueue_at_front", "1"),
        ("enqueue_at_front_on_retry", "1"),
        ("meta", "{}"),
        ("result", "null"),
        ("group_id", "a-group"),
        ("success_callback_name", "os.system"),
        ("retry_intervals", '["x"]'),
        ("retries_left", "-1"),
        ("status", "<garbage>"),
    ],
)
def test_any_other_field_or_value_is_refused_and_the_next_job_runs(
    app: Flask, field: str, value: str
) -> None:
    redis, (bad, good) = publish(app, 1, 2)
    redis.hset(f"rq:job:{bad}", field, value)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert f"field {field!r}" in reason(redis, bad)
    if field != "retries_left":
        assert redis.hget(f"rq:job:{bad}", "retries_left") == b"3"  # not retried


def copy_job(redis: Redis, job_id: str, new_id: str, queue: str, origin: str) -> None:
    fields = redis.hgetall(f"rq:job:{job_id}")
    redis.hset(f"rq:job:{new_id}", mapping={**fields, b"origin": origin.encode()})
    redis.rpush(f"rq:queue:{queue}", new_id)


@pytest.mark.parametrize(
    ("new_id", "queue", "origin", "says"),
    [
        ("copy", HIGH_PRIORITY, HIGH_PRIORITY, "signature does not match"),
        ("copy", LOW_PRIORITY, LOW_PRIORITY, "signature does not match"),
        (None, HIGH_PRIORITY, LOW_PRIORITY, "belongs to 'low'"),
        ("copy", HIGH_PRIORITY, LOW_PRIORITY, "belongs to 'low'"),
    ],
    ids=["new-id-other-queue", "new-id-same-queue", "same-id-other-queue", "origin"],
)
def test_a_copy_of_a_signed_job_is_refused_and_the_original_runs_once(
    app: Flask, new_id: str | None, queue: str, origin: str, says: str
) -> None:
    redis, (original,) = publish(app, 1)
    copy = original if new_id is None else original[:-4] + new_id
    copy_job(redis, original, copy, queue, origin)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [1]
    assert failed(redis, queue) == [copy]
    # With the same id, the original's later success is recorded after.
    assert says in reasons(redis, copy)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda call: call[2].pop(), id="two-arguments"),
        pytest.param(lambda call: call[2].append("x"), id="four-arguments"),
        pytest.param(lambda call: call[3].update(x=1), id="extra-kwargs"),
        pytest.param(lambda call: call.__setitem__(2, []), id="no-arguments"),
    ],
)
def test_arguments_that_do_not_fit_dispatch_are_refused_not_retried(
    app: Flask,
    change: Callable[[list], None],  # type: ignore[type-arg]
) -> None:
    redis, (bad, good) = publish(app, 1, 2)
    call = read_call(redis, bad)
    change(call)
    write_call(redis, bad, call)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    assert "its data is not a call of" in reason(redis, bad)
    assert redis.hget(f"rq:job:{bad}", "retries_left") == b"3"


def older_signature(secret: str, handler_key: str, envelope: bytes) -> str:
    """A signature as written before it bound a job's id and queue."""
    key = hmac.new(
        secret.encode(), b"flask-messaging job signature v1", hashlib.sha256
    ).digest()
    mac = hmac.new(key, handler_key.encode(), hashlib.sha256)
    mac.update(b"\x00")
    mac.update(envelope)
    return mac.hexdigest()


def test_a_job_signed_by_an_older_version_is_refused_with_what_to_do(
    app: Flask,
) -> None:
    redis, (old, good) = publish(app, 1, 2)
    call = read_call(redis, old)
    key, envelope, _ = call[2]
    call[2][2] = older_signature("test secret", key, envelope.encode())
    write_call(redis, old, call)
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [old]
    text = reason(redis, old)
    assert "older flask-messaging" in text and "drain queues" in text
    assert redis.hget(f"rq:job:{old}", "retries_left") == b"0"  # not retried
