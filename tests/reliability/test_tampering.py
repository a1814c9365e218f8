"""Job hashes rewritten in Redis: nothing foreign runs, nothing valid is lost.

``tests/test_security.py`` covers the swapped job function (``os.system``,
``builtins.exec``, ``subprocess.call``), pickle in data and meta together,
an altered payload, unsigned and foreign-key jobs, added callbacks and
malformed arguments. These are the cases it leaves out.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import get_message_broker
from flask_messaging._rq.records import UnreadableJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging._rq.status import recent_failures, requeue_failed
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from .. import worker_app
from ..worker_app import Ping, handled

pytestmark = pytest.mark.reliability


class Boobytrap:
    """Unpickling it creates a file: proof that pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(worker_app.messaging)


def publish(app: Flask, *values: int) -> tuple[Redis, list[str]]:
    """Publish one Ping per value; return Redis and the job keys, in order."""
    redis = get_state(app).redis
    keys = []
    with app.app_context():
        for value in values:
            get_message_broker().publish(Ping(value))
            (key,) = set(redis.keys("rq:job:*")) - {k.encode() for k in keys}
            keys.append(key.decode())
    return redis, keys


def drain(app: Flask) -> None:
    make_worker(app).work(burst=True, logging_level="CRITICAL")


def test_pickle_in_meta_alone_is_never_unpickled_and_the_job_is_refused(
    app: Flask, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    redis, (key,) = publish(app, 1)
    redis.hset(key, "meta", pickle.dumps(Boobytrap(sentinel)))
    drain(app)
    assert not sentinel.exists()
    # Our jobs never have meta: the job is refused, not acted on.
    assert handled(redis) == []
    (failure,) = recent_failures(get_state(app))
    assert "it has a field 'meta'" in failure.error


def test_html_in_description_runs_nothing_and_delivers_once(app: Flask) -> None:
    redis, (key,) = publish(app, 1)
    redis.hset(key, "description", "<img src=x onerror=alert(1)>")
    drain(app)
    # Not signed, not used to find the handler: the message is delivered
    # once (the dashboard escapes it: tests/test_dashboard.py).
    assert [entry["value"] for entry in handled(redis)] == [1]
    assert redis.hget(key, "status") == b"finished"


def test_html_in_origin_is_refused_as_another_queue(app: Flask) -> None:
    redis, (key,) = publish(app, 1)
    redis.hset(key, "origin", "<script>alert(1)</script>")
    drain(app)
    # The origin is the queue the job is signed for: this one was taken
    # from another queue, so it is refused.
    assert handled(redis) == []
    (failure,) = recent_failures(get_state(app))
    assert "belongs to '<script>alert(1)</script>'" in failure.error


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "<garbage>"), ("timeout", "nope"), ("created_at", "yesterday")],
)
def test_a_job_hash_with_a_garbage_field_fails_alone(
    app: Flask, field: str, value: str
) -> None:
    redis, (bad, _) = publish(app, 1, 2)
    redis.hset(bad, field, value)
    drain(app)
    # The worker goes on to the next job ...
    assert [entry["value"] for entry in handled(redis)] == [2]
    # ... and the bad one is in the failed registry, for a person to see.
    failed = FailedJobRegistry(
        LOW_PRIORITY, connection=redis, serializer=JSONSerializer
    )
    bad_id = bad.removeprefix("rq:job:")
    assert failed.get_job_ids(cleanup=False) == [bad_id]
    # Operators' tools list it, and leave it failed rather than crash on it.
    state = get_state(app)
    (failure,) = recent_failures(state)
    assert failure.job_id == bad_id
    if field == "status":
        return  # now "failed": a readable job, which a requeue runs
    assert failure.description == UnreadableJob.description
    assert (
        "ValueError: time data 'yesterday'"
        if field == "created_at"
        else "its field 'timeout' holds b'nope'"
    ) in failure.error
    assert requeue_failed(state) == 0
    assert failed.get_job_ids(cleanup=False) == [bad_id]
