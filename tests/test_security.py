"""Workers run only signed jobs of this package, whatever Redis holds."""

from __future__ import annotations

import json
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import Message, get_message_broker
from flask_messaging._rq.records import latest_result
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from . import worker_app
from .worker_app import Ping, handled

#: What an operator is told about a job for a handler or type the app lacks.
UNKNOWN_HERE = "unknown to this app (another app on the same Redis, or older code)"


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(worker_app.messaging)


def only_job_key(redis: Redis) -> str:
    (key,) = redis.keys("rq:job:*")
    return key.decode()


def read_data(redis: Redis, key: str) -> list:  # type: ignore[type-arg]
    return json.loads(zlib.decompress(redis.hget(key, "data")))  # type: ignore[no-any-return]


def write_data(redis: Redis, key: str, data: object) -> None:
    redis.hset(key, "data", zlib.compress(json.dumps(data).encode()))


def drain(app: Flask) -> None:
    make_worker(app).work(burst=True, logging_level="CRITICAL")


def failure_of(app: Flask, queue: str = LOW_PRIORITY) -> str:
    """The failure text of the one failed job of ``queue``."""
    redis = get_state(app).redis
    registry = FailedJobRegistry(queue, connection=redis, serializer=JSONSerializer)
    (job_id,) = registry.get_job_ids()
    result = latest_result(redis, job_id, 1024 * 1024)
    assert result is not None and result.type == "FAILED"
    return result.text


def publish_ping(app: Flask, value: int = 1) -> tuple[Redis, str]:
    with app.app_context():
        get_message_broker().publish(Ping(value))
    redis = get_state(app).redis
    return redis, only_job_key(redis)


def test_tampered_payload_is_refused_and_not_retried(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        worker_app.messaging, MESSAGING_RETRY=3, MESSAGING_RETRY_INTERVALS=[0]
    )
    redis, key = publish_ping(app, 1)
    data = read_data(redis, key)
    data[2][1] = data[2][1].replace('"value":1', '"value":1000')
    write_data(redis, key, data)
    drain(app)
    assert handled(redis) == []
    failure = failure_of(app)
    assert "InvalidJobError" in failure and "signature does not match" in failure


def test_unsigned_job_is_refused(app: Flask) -> None:
    redis, key = publish_ping(app)
    data = read_data(redis, key)
    data[2][2] = ""
    write_data(redis, key, data)
    drain(app)
    assert handled(redis) == []
    assert "signature does not match" in failure_of(app)


def test_job_signed_with_another_key_is_refused(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    publisher = make_app(worker_app.messaging, SECRET_KEY="attacker")
    worker = make_app(worker_app.messaging, SECRET_KEY="ours")
    redis, _ = publish_ping(publisher)
    drain(worker)
    assert handled(redis) == []
    assert "signature does not match" in failure_of(worker)


@pytest.mark.parametrize("function", ["os.system", "builtins.exec", "subprocess.call"])
def test_swapped_job_function_is_never_imported_or_run(
    app: Flask, tmp_path: Path, function: str
) -> None:
    sentinel = tmp_path / "pwned"
    redis, key = publish_ping(app)
    command = (
        f"touch {sentinel}"
        if function != "builtins.exec"
        else (f"open({str(sentinel)!r}, 'w').close()")
    )
    write_data(redis, key, [function, None, [command], {}])
    drain(app)
    assert not sentinel.exists()
    assert handled(redis) == []
    failure = failure_of(app)
    assert f"it names {function!r}" in failure


def test_callbacks_added_to_a_job_are_refused(app: Flask, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    redis, key = publish_ping(app)
    redis.hset(
        key,
        mapping={
            "success_callback_name": "os.system",
            "failure_callback_name": "os.system",
            "stopped_callback_name": "os.system",
        },
    )
    drain(app)
    assert not sentinel.exists()
    assert handled(redis) == []
    assert "callback_name' holds b'os.system'" in failure_of(app)


class Boobytrap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.path),))  # type: ignore[return-value]


def test_pickle_injected_in_data_and_meta_is_never_unpickled(
    app: Flask, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    redis, key = publish_ping(app)
    payload = pickle.dumps(Boobytrap(str(sentinel)))
    redis.hset(key, mapping={"data": zlib.compress(payload), "meta": payload})
    drain(app)
    assert not sentinel.exists()
    assert handled(redis) == []
    assert "Refused job" in failure_of(app)


def test_unknown_handler_fails_clearly_then_succeeds_after_requeue(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    publisher = make_app(worker_app.messaging)
    old_worker = make_app()  # older code: no subscription to Ping at all
    redis, _ = publish_ping(publisher, 5)
    drain(old_worker)
    assert handled(redis) == []
    failure = failure_of(old_worker)
    assert "UnknownHandlerError" in failure
    assert "tests.worker_app:on_ping" in failure
    assert UNKNOWN_HERE in failure

    # "Deploy": the worker learns the handler, and the job is requeued.
    get_state(old_worker).broker.subscribe_async(
        Ping, worker_app.on_ping, queue_name=LOW_PRIORITY
    )
    registry = FailedJobRegistry(
        LOW_PRIORITY, connection=redis, serializer=JSONSerializer
    )
    for job_id in registry.get_job_ids():
        registry.requeue(job_id)
    drain(old_worker)
    assert [entry["value"] for entry in handled(redis)] == [5]
    assert registry.count == 0


@dataclass(frozen=True)
class FutureEvent(Message, name="tests.future_event"):
    detail: str


def on_future(event: FutureEvent) -> None:
    worker_app.record("on_future", detail=event.detail)


def test_unknown_message_type_fails_clearly_then_succeeds_after_requeue(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    get_state(app).broker.subscribe_async(FutureEvent, on_future)
    with app.app_context():
        get_message_broker().publish(FutureEvent("x"))
    # A worker on older code has never imported the message class.
    from flask_messaging import message

    monkeypatch.delitem(message._types_by_name, "tests.future_event")
    drain(app)
    redis = get_state(app).redis
    failure = failure_of(app, "default")
    assert "Unknown message type 'tests.future_event'" in failure
    assert UNKNOWN_HERE in failure
    monkeypatch.undo()
    registry = FailedJobRegistry("default", connection=redis, serializer=JSONSerializer)
    registry.requeue(registry.get_job_ids()[0])
    drain(app)
    assert [entry["detail"] for entry in handled(redis)] == ["x"]


def test_malformed_arguments_are_refused(app: Flask) -> None:
    redis, key = publish_ping(app)
    data = read_data(redis, key)
    data[2] = [1, {"not": "a string"}, None]
    write_data(redis, key, data)
    drain(app)
    assert handled(redis) == []
    assert "its data is not a call of" in failure_of(app)
