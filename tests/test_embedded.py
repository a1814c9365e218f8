"""MESSAGING_REDIS_URL = "memory://": the whole async path in one process."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import DeliveryError, get_message_broker
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.queue_names import HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state

from . import worker_app
from .worker_app import ATTEMPTS, Boom, Ping, handled


def wait_for(condition: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def make_embedded_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """Build the worker app on the in-process Redis, with its worker thread."""
    return functools.partial(
        make_app,
        worker_app.messaging,
        MESSAGING_REDIS_URL="memory://",
        MESSAGING_EMBEDDED_WORKER=True,
    )


def test_messages_flow_through_rq_in_a_worker_thread(
    make_embedded_app: Callable[..., Flask],
) -> None:
    app = make_embedded_app()
    state = get_state(app)
    assert state.embedded_worker is None  # started by the first job
    with app.app_context():
        get_message_broker().publish(Ping(1))
        get_message_broker().publish(Ping(2))
    wait_for(lambda: len(handled(state.redis)) == 2)
    entries = handled(state.redis)
    assert [e["value"] for e in entries] == [1, 2]
    assert all(e["app"] == app.name and e["message_id"] for e in entries)
    assert state.embedded_worker is not None and state.embedded_worker.running
    names = {thread.name for thread in threading.enumerate()}
    assert "flask-messaging-worker" in names
    state.embedded_worker.stop()
    assert not state.embedded_worker.running


def test_retries_with_an_interval_are_scheduled_in_process(
    make_embedded_app: Callable[..., Flask],
) -> None:
    app = make_embedded_app(MESSAGING_RETRY_INTERVALS=[1])
    state = get_state(app)
    with app.app_context():
        get_message_broker().publish(Boom("later"))
    registry = FailedJobRegistry(
        HIGH_PRIORITY, connection=state.redis, serializer=JSONSerializer
    )
    wait_for(lambda: registry.count == 1)
    assert int(state.redis.get(ATTEMPTS) or 0) == 2


def test_apps_on_memory_do_not_share_data(make_app: Callable[..., Flask]) -> None:
    first = make_app(MESSAGING_REDIS_URL="memory://")
    second = make_app(MESSAGING_REDIS_URL="memory://")
    get_state(first).redis.set("k", "1")
    assert get_state(second).redis.get("k") is None


def test_committed_events_flow_and_the_outbox_is_kept_in_process(
    tmp_path: Path,
) -> None:
    import sqlalchemy as sa

    from flask_messaging.transaction import register_event

    from .tx_app import UserRegistered, create_app, db

    app = create_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}",
        MESSAGING_REDIS_URL="memory://",
    )
    state = get_state(app)
    with app.app_context():
        db.create_all()
        register_event(UserRegistered(user_id=1, email="a@example.com"))
        db.session.commit()
        wait_for(lambda: handled(state.redis))
        assert [e["email"] for e in handled(state.redis)] == ["a@example.com"]

        def relayed() -> bool:
            with db.engine.connect() as connection:
                return (
                    connection.execute(sa.select(state.outbox.c.relayed_at)).scalar()
                    is not None
                )

        wait_for(relayed)
        assert state.embedded_worker is not None
        state.embedded_worker.stop()
        db.engine.dispose()


def test_after_close_the_next_job_starts_a_new_worker_on_a_new_server(
    make_embedded_app: Callable[..., Flask],
) -> None:
    app = make_embedded_app()
    state = get_state(app)
    with app.app_context():
        get_message_broker().publish(Ping(1))
        wait_for(lambda: len(handled(state.redis)) == 1)
        first = state.redis
        state.close()
        assert state.embedded_worker is None
        get_message_broker().publish(Ping(2))
        assert state.redis is not first  # a new, empty server
        wait_for(lambda: [e["value"] for e in handled(state.redis)] == [2])
    state.close()


def test_use_redis_reaches_the_queues_jobs_are_written_to(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging, MESSAGING_EMBEDDED_WORKER=False)
    state = get_state(app)
    good = state.redis
    with app.app_context():
        state.use_redis(Redis(port=1))  # nothing listens there
        with pytest.raises(DeliveryError):  # holding an EnqueueError
            get_message_broker().publish(Ping(3))
        state.use_redis(good)
        get_message_broker().publish(Ping(4))
    assert good.llen(f"rq:queue:{LOW_PRIORITY}") == 1
