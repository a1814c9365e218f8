"""``async def`` handlers: awaited wherever a handler is called, never dropped.

Sync subscribers' coroutines run to their end inside ``publish`` (and after a
commit, and in the test brokers); async subscribers' run in the job, whether
a worker, the embedded worker or inline delivery runs it, or on a worker's
:class:`~flask_messaging.coroutines.HandlerLoop` inside
:func:`~flask_messaging.dispatch.deferring_coroutines`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from flask.globals import app_ctx
from flask_sqlalchemy import SQLAlchemy
from rq.registry import FailedJobRegistry
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import (
    DeliveryError,
    Message,
    Messaging,
    current_envelope,
    get_message_broker,
)
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.broker import TestBroker, override_message_broker
from flask_messaging.coroutines import HandlerLoop
from flask_messaging.dispatch import deferring_coroutines
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event
from flask_messaging.worker import make_worker

messaging = Messaging()
db = SQLAlchemy()

QUEUE = "async-handlers"

caller_value: contextvars.ContextVar[str] = contextvars.ContextVar(
    "tests_async_handlers_caller", default="unset"
)

#: What handlers saw, in this process (the workers here are threads of it).
seen: list[dict[str, Any]] = []
attempts: Counter[str] = Counter()


@dataclass(frozen=True)
class Greeted(Message, name="tests.async_handlers.greeted"):
    value: int


@dataclass(frozen=True)
class Failed(Message, name="tests.async_handlers.failed"):
    reason: str


@dataclass(frozen=True)
class Dawdled(Message, name="tests.async_handlers.dawdled"):
    seconds: float


@dataclass(frozen=True)
class Overdue(Message, name="tests.async_handlers.overdue"):
    pass


@dataclass(frozen=True)
class Held(Message, name="tests.async_handlers.held"):
    pass


@dataclass(frozen=True)
class Written(Message, name="tests.async_handlers.written"):
    text: str


@dataclass(frozen=True)
class Lazy(Message, name="tests.async_handlers.lazy"):
    value: int


class Note(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "test_async_handlers_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


def note(handler: str, **extra: object) -> None:
    envelope = current_envelope()
    seen.append(
        {
            "handler": handler,
            "app": current_app.name,
            "app_context": id(app_ctx._get_current_object()),
            "message_id": envelope.id if envelope else None,
            "thread": threading.current_thread().name,
            "caller": caller_value.get(),
            **extra,
        }
    )


# Async subscribers, found by workers under their module-level names.


@messaging.subscribe_async(queue_name=QUEUE)
async def on_greeted(event: Greeted) -> None:
    await asyncio.sleep(0)
    note("on_greeted", value=event.value)


@messaging.subscribe_async(queue_name=QUEUE)
def on_greeted_plainly(event: Greeted) -> None:
    note("on_greeted_plainly", value=event.value)


@messaging.subscribe_async(queue_name=QUEUE, retry=1)
async def on_failed(event: Failed) -> None:
    attempts["on_failed"] += 1
    await asyncio.sleep(0)
    raise RuntimeError(f"failed: {event.reason}")


@messaging.subscribe_async(queue_name=QUEUE)
async def on_dawdled(event: Dawdled) -> None:
    try:
        await asyncio.sleep(event.seconds)
    except asyncio.CancelledError:
        note("on_dawdled", outcome="cancelled")
        raise


@messaging.subscribe_async(queue_name=QUEUE, timeout=1, retry=0)
async def on_overdue(event: Overdue) -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        note("on_overdue", outcome="cancelled")
        raise


#: Opened by a test to let every on_held coroutine end.
release = threading.Event()


@messaging.subscribe_async(queue_name=QUEUE)
async def on_held(event: Held) -> None:
    while not release.is_set():
        await asyncio.sleep(0.005)


@messaging.subscribe_async(queue_name=QUEUE)
async def on_written(event: Written) -> None:
    await asyncio.sleep(0)
    db.session.add(Note(text=event.text))
    db.session.commit()
    # The session itself, kept: an id alone could be a dead session's.
    note("on_written", session=db.session())


async def _later(handler: str, value: int) -> None:
    await asyncio.sleep(0)
    note(handler, value=value)


@messaging.subscribe_async(queue_name=QUEUE)
def on_lazy(event: Lazy) -> Coroutine[Any, Any, None]:
    """A plain function that returns a coroutine: awaited like an async def."""
    return _later("on_lazy", event.value)


# Sync subscribers, subscribed per test on an app's own broker.


async def greet_in_process(event: Greeted) -> None:
    await asyncio.sleep(0)
    note("greet_in_process", value=event.value)


async def fail_in_process(event: Greeted) -> None:
    await asyncio.sleep(0)
    raise ValueError(f"no greeting for {event.value}")


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    seen.clear()
    attempts.clear()
    release.clear()
    yield
    release.set()
    seen.clear()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(messaging, MESSAGING_RETRY_INTERVALS=[0])


def drain(app: Flask) -> None:
    make_worker(app, [QUEUE]).work(burst=True, logging_level="CRITICAL")


def by(handler: str) -> list[dict[str, Any]]:
    return [entry for entry in seen if entry["handler"] == handler]


def wait_for(condition: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --------------------------------------------------------------------------
# Sync subscribers: the coroutine has run when publish returns.


def test_an_async_def_sync_subscriber_runs_before_publish_returns(app: Flask) -> None:
    get_state(app).broker.subscribe(Greeted, greet_in_process)
    with app.app_context():
        token = caller_value.set("the publisher's")
        try:
            get_message_broker().publish(Greeted(1))
        finally:
            caller_value.reset(token)
    (entry,) = by("greet_in_process")
    assert entry["value"] == 1
    assert entry["app"] == app.name
    assert entry["caller"] == "the publisher's"  # the caller's context vars
    assert entry["thread"] == threading.current_thread().name


def test_a_failing_async_def_sync_subscriber_raises_with_the_others(
    app: Flask,
) -> None:
    broker = get_state(app).broker
    broker.subscribe(Greeted, fail_in_process)
    broker.subscribe(Greeted, greet_in_process)
    with app.app_context(), pytest.raises(DeliveryError) as info:
        get_message_broker().publish(Greeted(2))
    (error,) = info.value.exceptions
    assert isinstance(error, ValueError) and str(error) == "no greeting for 2"
    assert any("fail_in_process" in note for note in error.__notes__)
    assert len(by("greet_in_process")) == 1  # the next subscriber still ran


def test_a_plain_subscriber_that_returns_a_coroutine_has_it_awaited(
    app: Flask,
) -> None:
    get_state(app).broker.subscribe(Greeted, lambda event: greet_in_process(event))
    with app.app_context():
        get_message_broker().publish(Greeted(3))
    assert [e["value"] for e in by("greet_in_process")] == [3]


def test_other_return_values_are_ignored_as_before(app: Flask) -> None:
    ran: list[str] = []

    def generator(event: Greeted) -> Iterator[None]:
        ran.append("generator body")
        yield

    broker = get_state(app).broker
    broker.subscribe(Greeted, generator)
    broker.subscribe(Greeted, lambda event: "a value")
    with app.app_context():
        get_message_broker().publish(Greeted(4))
    assert ran == []


def test_publish_inside_a_running_event_loop_runs_async_sync_subscribers(
    app: Flask,
) -> None:
    get_state(app).broker.subscribe(Greeted, greet_in_process)

    async def main() -> None:
        caller_value.set("set inside the loop")
        with app.app_context():
            get_message_broker().publish(Greeted(5))

    asyncio.run(main())
    (entry,) = by("greet_in_process")
    assert entry["caller"] == "set inside the loop"
    assert entry["app"] == app.name


def test_an_async_sync_subscriber_may_publish_to_another(app: Flask) -> None:
    async def chain(event: Lazy) -> None:
        await asyncio.sleep(0)
        get_message_broker().publish(Greeted(event.value + 1))

    broker = get_state(app).broker
    broker.subscribe(Lazy, chain)
    broker.subscribe(Greeted, greet_in_process)
    with app.app_context():
        # The inner publish happens inside the outer coroutine's running
        # loop: its coroutine runs on a thread of its own.
        broker.publish(Lazy(6))
    assert [e["value"] for e in by("greet_in_process")] == [7]


def test_the_test_broker_runs_async_def_subscribers_of_both_kinds(
    app: Flask,
) -> None:
    get_state(app).broker.subscribe(Greeted, greet_in_process)
    with app.app_context():
        broker = TestBroker.from_app()
        with override_message_broker(broker):
            get_message_broker().publish(Greeted(8))
            assert seen == []  # queued until processed
            broker.process_messages()
    assert [e["handler"] for e in seen] == [
        "greet_in_process",
        "on_greeted",
        "on_greeted_plainly",
    ]
    assert by("on_greeted")[0]["message_id"]  # delivered with its envelope


# --------------------------------------------------------------------------
# Async subscribers, run by every kind of job runner.


def test_a_real_worker_runs_the_coroutine_in_the_app_context(app: Flask) -> None:
    with app.app_context():
        get_message_broker().publish(Greeted(10))
    drain(app)
    (entry,) = by("on_greeted")
    assert entry["value"] == 10
    assert entry["app"] == app.name
    assert entry["message_id"] and len(entry["message_id"]) == 32


def test_a_failing_coroutine_fails_its_job_which_is_retried(app: Flask) -> None:
    with app.app_context():
        get_message_broker().publish(Failed("always"))
    drain(app)
    assert attempts["on_failed"] == 2  # retry=1: two runs
    redis = get_state(app).redis
    registry = FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    (job_id,) = registry.get_job_ids()
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result()
    assert result is not None and "RuntimeError: failed: always" in str(
        result.exc_string
    )


def test_a_coroutine_past_its_jobs_timeout_is_cancelled_and_its_job_fails(
    app: Flask,
) -> None:
    with app.app_context():
        get_message_broker().publish(Overdue())
    drain(app)
    assert [e["outcome"] for e in by("on_overdue")] == ["cancelled"]
    redis = get_state(app).redis
    registry = FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    (job_id,) = registry.get_job_ids()
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result()
    assert result is not None and "JobTimeoutException" in str(result.exc_string)


def test_inline_delivery_awaits_the_coroutine_at_publish(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(messaging, MESSAGING_ASYNC=False)
    with app.app_context():
        get_message_broker().publish(Greeted(11))
        assert [e["value"] for e in by("on_greeted")] == [11]
        with pytest.raises(DeliveryError) as info:
            get_message_broker().publish(Failed("inline"))
    (error,) = info.value.exceptions
    assert str(error) == "failed: inline"


def test_the_embedded_worker_runs_the_coroutine(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        messaging, MESSAGING_REDIS_URL="memory://", MESSAGING_EMBEDDED_WORKER=True
    )
    with app.app_context():
        get_message_broker().publish(Greeted(12))
    wait_for(lambda: by("on_greeted"))
    (entry,) = by("on_greeted")
    assert entry["thread"] == "flask-messaging-worker"
    assert entry["app"] == app.name and entry["message_id"]


def test_a_plain_async_subscriber_that_returns_a_coroutine_has_it_awaited(
    app: Flask,
) -> None:
    with app.app_context():
        get_message_broker().publish(Lazy(13))
    drain(app)
    assert [e["value"] for e in by("on_lazy")] == [13]


# --------------------------------------------------------------------------
# The database inside a coroutine.


@pytest.fixture
def db_app(
    make_app: Callable[..., Flask],
    fresh_tables: Callable[[Flask], Flask],
    database_url: str,
) -> Flask:
    return fresh_tables(
        make_app(
            messaging,
            db=db,
            SQLALCHEMY_DATABASE_URI=database_url,
            MESSAGING_OUTBOX_TABLE="test_async_handlers_outbox",
        )
    )


def notes(app: Flask) -> list[str]:
    with app.app_context(), db.engine.connect() as connection:
        return list(
            connection.execute(sa.select(Note.text).order_by(Note.id)).scalars()
        )


def test_the_session_is_usable_inside_a_coroutine_run_by_a_worker(
    db_app: Flask,
) -> None:
    with db_app.app_context():
        get_message_broker().publish(Written("from a coroutine"))
    drain(db_app)
    assert notes(db_app) == ["from a coroutine"]


def test_async_def_sync_subscribers_run_after_a_commit(db_app: Flask) -> None:
    get_state(db_app).broker.subscribe(Greeted, greet_in_process)
    with db_app.app_context():
        db.session.add(Note(text="with an event"))
        register_event(Greeted(14))
        assert seen == []
        db.session.commit()
        assert [e["value"] for e in by("greet_in_process")] == [14]


# --------------------------------------------------------------------------
# deferring_coroutines: a worker's many coroutines on one loop.


@pytest.fixture
def handler_loop() -> Iterator[HandlerLoop]:
    loop = HandlerLoop(20)
    yield loop
    loop.close(timeout=10)


def jobs(app: Flask) -> list[MessagingJob]:
    """The jobs waiting on the test queue, in order."""
    redis = get_state(app).redis
    queue = get_state(app).jobs.queue(QUEUE)  # type: ignore[attr-defined]
    return [
        MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
        for job_id in queue.get_job_ids()
    ]


def perform_deferred(
    app: Flask, loop: HandlerLoop, timeout: float | None = None
) -> tuple[list[Any], int]:
    """Perform every waiting job as a worker would, deferring coroutines.

    :return: what each job's dispatch returned, and the id of the app
        context the jobs were performed in.
    """
    with app.app_context():
        token = caller_value.set("the worker's")
        try:
            with deferring_coroutines(loop, timeout):
                results = [job.perform() for job in jobs(app)]
            return results, id(app_ctx._get_current_object())
        finally:
            caller_value.reset(token)


def test_deferred_dispatch_returns_a_future_for_coroutines_and_none_otherwise(
    app: Flask, handler_loop: HandlerLoop
) -> None:
    with app.app_context():
        get_message_broker().publish(Greeted(20))
    results, worker_context = perform_deferred(app, handler_loop)
    # Jobs in publish order: on_greeted, then on_greeted_plainly.
    future, nothing = results
    assert isinstance(future, concurrent.futures.Future)
    assert nothing is None
    assert future.result(timeout=30) is None
    deferred, plain = by("on_greeted"), by("on_greeted_plainly")
    (entry,) = deferred
    assert entry["thread"] == "flask-messaging-asyncio"
    assert entry["app"] == app.name and entry["message_id"]
    assert entry["caller"] == "the worker's"  # the worker's context vars
    assert entry["app_context"] != worker_context  # a new app context of its own
    (ran_in_place,) = plain
    assert ran_in_place["thread"] == threading.current_thread().name
    assert ran_in_place["app_context"] == worker_context


def test_deferred_coroutines_run_at_once_on_the_loop(
    app: Flask, handler_loop: HandlerLoop
) -> None:
    with app.app_context():
        for _ in range(10):
            get_message_broker().publish(Held())
    try:
        results, _ = perform_deferred(app, handler_loop)
        # Every job was taken while every coroutine still waits.
        assert handler_loop.in_flight == 10
        assert all(not future.done() for future in results)
    finally:
        release.set()
    for future in results:
        assert future.result(timeout=30) is None


def test_a_deferred_coroutine_that_fails_raises_from_its_future(
    app: Flask, handler_loop: HandlerLoop
) -> None:
    with app.app_context():
        get_message_broker().publish(Failed("deferred"))
    (future,), _ = perform_deferred(app, handler_loop)
    error = future.exception(timeout=30)
    assert isinstance(error, RuntimeError) and str(error) == "failed: deferred"


def test_a_deferred_coroutine_past_the_timeout_is_cancelled(
    app: Flask, handler_loop: HandlerLoop
) -> None:
    with app.app_context():
        get_message_broker().publish(Dawdled(30))
    (future,), _ = perform_deferred(app, handler_loop, timeout=0.05)
    with pytest.raises(TimeoutError):
        future.result(timeout=30)
    assert [e["outcome"] for e in by("on_dawdled")] == ["cancelled"]


def test_a_plain_handler_returning_a_coroutine_is_deferred_too(
    app: Flask, handler_loop: HandlerLoop
) -> None:
    with app.app_context():
        get_message_broker().publish(Lazy(21))
    (future,), worker_context = perform_deferred(app, handler_loop)
    assert future.result(timeout=30) is None
    (entry,) = by("on_lazy")
    assert entry["thread"] == "flask-messaging-asyncio"
    assert entry["app_context"] != worker_context and entry["message_id"]


def test_a_closed_loop_refuses_the_job(app: Flask, handler_loop: HandlerLoop) -> None:
    handler_loop.close()
    with app.app_context():
        get_message_broker().publish(Lazy(22))
    with pytest.raises(RuntimeError, match="HandlerLoop is closed"):
        perform_deferred(app, handler_loop)


def test_each_deferred_coroutine_has_its_own_session_removed_when_it_ends(
    db_app: Flask, handler_loop: HandlerLoop
) -> None:
    with db_app.app_context():
        for text in ("one", "two", "three"):
            get_message_broker().publish(Written(text))
    with db_app.app_context():
        worker_session = db.session()
        results, _ = perform_deferred(db_app, handler_loop)
        for future in results:
            assert future.result(timeout=30) is None
        sessions = [e["session"] for e in by("on_written")]
        assert len({id(session) for session in sessions}) == 3
        assert worker_session not in sessions
        # Only the worker's own session is left: the tasks' were removed.
        assert list(db.session.registry.registry.values()) == [worker_session]
    assert sorted(notes(db_app)) == ["one", "three", "two"]


def test_the_subscription_knows_its_handler_is_a_coroutine_function(
    app: Flask,
) -> None:
    registry = get_state(app).registry
    greeted = registry.async_subscription(f"{__name__}:on_greeted", Greeted)
    plainly = registry.async_subscription(f"{__name__}:on_greeted_plainly", Greeted)
    assert greeted is not None and greeted.is_coroutine
    assert plainly is not None and not plainly.is_coroutine
