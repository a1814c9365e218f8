"""``@idempotent``: a handler runs once per message, however often it arrives."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from rq.registry import FailedJobRegistry
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import DeliveryError, Message, Messaging, get_message_broker
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.coroutines import HandlerLoop, run_to_completion
from flask_messaging.dispatch import run_delivery
from flask_messaging.envelope import (
    current_envelope,
    decode,
    decode_envelope,
    encode,
    handling,
)
from flask_messaging.idempotency import (
    DatabaseMarks,
    HandlingInProgressError,
    RedisMarks,
    idempotent,
)
from flask_messaging.state import get_state
from flask_messaging.subscription import handler_key
from flask_messaging.transaction import register_event
from flask_messaging.worker import make_worker

from .servers import RedisServer

messaging = Messaging()
db = SQLAlchemy()
marks = DatabaseMarks(db, table="test_handled")

RUNS = "test:idempotency:runs"
EFFECTS = "test:idempotency:effects"
QUEUE = "idempotency"


@dataclass(frozen=True)
class Credit(Message, name="tests.idempotency.credit"):
    account: str
    amount: int
    fail_first: bool = False


@dataclass(frozen=True)
class Booked(Message, name="tests.idempotency.booked"):
    account: str


@dataclass(frozen=True)
class AsyncCredit(Message, name="tests.idempotency.async_credit"):
    account: str
    amount: int
    fail_first: bool = False


class Entry(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "test_idempotency_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[str]
    amount: Mapped[int]


def _redis() -> Redis:
    return get_state().redis


@messaging.subscribe_async(queue_name=QUEUE, retry=1)
@idempotent
def credit(event: Credit) -> str:
    """Counts its runs and its effects in the app's Redis."""
    redis = _redis()
    runs = redis.incr(RUNS)
    if event.fail_first and runs == 1:
        raise RuntimeError("fails on its first run")
    redis.incr(EFFECTS)
    return "credited"


def booked_in_db(event: Credit) -> None:
    _redis().incr(RUNS)
    db.session.add(Entry(account=event.account, amount=event.amount))
    if event.fail_first and int(_redis().get(RUNS) or 0) == 1:
        raise RuntimeError("fails on its first run, after its insert")
    register_event(Booked(event.account))


book = idempotent(store=marks)(booked_in_db)

#: What the async handlers saw of their own mark while they ran.
marks_while_running: list[object] = []


def _mark_key(handler: str) -> str:
    envelope = current_envelope()
    assert envelope is not None
    return f"flask_messaging:handled:{handler}:{envelope.id}"


@messaging.subscribe_async(queue_name=QUEUE, retry=1)
@idempotent
async def credit_async(event: AsyncCredit) -> str:
    """The async twin of ``credit``."""
    redis = _redis()
    runs = redis.incr(RUNS)
    await asyncio.sleep(0)
    marks_while_running.append(
        redis.get(_mark_key("tests.test_idempotency:credit_async"))
    )
    if event.fail_first and runs == 1:
        raise RuntimeError("fails on its first run")
    redis.incr(EFFECTS)
    return "credited"


async def booked_in_db_async(event: AsyncCredit) -> None:
    _redis().incr(RUNS)
    db.session.add(Entry(account=event.account, amount=event.amount))
    await asyncio.sleep(0)
    with db.engine.connect() as connection:  # what others see: no mark yet
        marks_while_running.append(
            connection.execute(
                sa.select(sa.func.count()).select_from(marks.table)
            ).scalar_one()
        )
    if event.fail_first and int(_redis().get(RUNS) or 0) == 1:
        raise RuntimeError("fails on its first run, after its insert")
    register_event(Booked(event.account))


book_async = idempotent(store=marks)(booked_in_db_async)


# --------------------------------------------------------------------------
# The wrapper is the handler, as far as subscriptions can tell.


def test_the_wrapper_keeps_the_handler_key_signature_and_annotations(
    make_app: Callable[..., Flask],
) -> None:
    assert handler_key(credit) == "tests.test_idempotency:credit"
    assert credit.__doc__ == "Counts its runs and its effects in the app's Redis."
    assert list(inspect.signature(credit).parameters) == ["event"]
    registry = get_state(make_app(messaging)).registry
    # Subscribed under the handler's own key, its type read from the annotation.
    subscription = registry.async_subscription("tests.test_idempotency:credit", Credit)
    assert subscription is not None and subscription.handler is credit


def test_called_outside_a_delivery_it_refuses_and_wrapped_bypasses(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(messaging)
    with app.app_context():
        with pytest.raises(RuntimeError, match="outside the delivery of its message"):
            credit(Credit("a", 1))
        assert credit.__wrapped__(Credit("a", 1)) == "credited"  # type: ignore[attr-defined]
        assert _redis().get(EFFECTS) == b"1"


def test_as_a_sync_subscriber_inside_another_delivery_it_refuses(
    make_app: Callable[..., Flask],
) -> None:
    # A sync subscriber sees the envelope of the message being handled, not
    # one of its own: marking that id would wrongly skip later messages.
    app = make_app(messaging)
    get_state(app).broker.subscribe(Booked, idempotent(lambda event: None))
    envelope = decode_envelope(encode(Credit("a", 1)).data)
    with app.app_context(), handling(envelope):
        with pytest.raises(DeliveryError) as info:
            get_message_broker().publish(Booked("x"))
    (error,) = info.value.exceptions
    assert "outside the delivery of its message" in str(error)


# --------------------------------------------------------------------------
# Redis marks, through a real worker.


def publish(app: Flask, message: Message) -> str:
    with app.app_context():
        get_message_broker().publish(message)
    (key,) = get_state(app).redis.keys("rq:job:*")
    return key.decode().removeprefix("rq:job:")


def drain(app: Flask) -> None:
    make_worker(app, [QUEUE]).work(burst=True, logging_level="CRITICAL")


def counts(app: Flask) -> tuple[int, int]:
    redis = get_state(app).redis
    return int(redis.get(RUNS) or 0), int(redis.get(EFFECTS) or 0)


def redeliver(app: Flask, job_id: str) -> None:
    """Put a job that already ran back on its queue, as a duplicate would."""
    redis = get_state(app).redis
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    get_state(app).jobs.queue(QUEUE).enqueue_job(job)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(messaging, MESSAGING_RETRY_INTERVALS=[0])


def test_a_redelivered_message_is_skipped(app: Flask) -> None:
    job_id = publish(app, Credit("a", 5))
    drain(app)
    redeliver(app, job_id)
    drain(app)
    assert counts(app) == (1, 1)
    mark = f"flask_messaging:handled:tests.test_idempotency:credit:{job_id[4:36]}"
    assert get_state(app).redis.get(mark) == b"done"
    assert get_state(app).redis.ttl(mark) > 24 * 3600


def test_a_failed_run_releases_its_mark_so_the_retry_runs(app: Flask) -> None:
    publish(app, Credit("a", 5, fail_first=True))
    drain(app)
    assert counts(app) == (2, 1)  # the first run failed, the retry credited


def test_a_retry_of_the_same_job_takes_over_a_claim_left_by_a_killed_run(
    app: Flask,
) -> None:
    job_id = publish(app, Credit("a", 5))
    message_id = job_id[4:36]
    mark = f"flask_messaging:handled:tests.test_idempotency:credit:{message_id}"
    # What a work horse killed mid-handler leaves behind.
    get_state(app).redis.set(mark, f"running:{job_id}", ex=600)
    drain(app)
    assert counts(app) == (1, 1)


def test_a_claim_held_by_another_delivery_fails_the_job_until_released(
    app: Flask,
) -> None:
    job_id = publish(app, Credit("a", 5))
    mark = f"flask_messaging:handled:tests.test_idempotency:credit:{job_id[4:36]}"
    redis = get_state(app).redis
    redis.set(mark, "running:another-job", ex=600)
    drain(app)  # the job and its one retry both meet the claim
    assert counts(app) == (0, 0)
    failed = FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result()
    assert result is not None and "HandlingInProgressError" in str(result.exc_string)
    redis.delete(mark)  # the other delivery failed, and released it
    failed.requeue(job_id)
    drain(app)
    assert counts(app) == (1, 1)


def test_redis_lost_after_the_handler_ran_is_logged_not_raised(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisMarks(Redis.from_url(private_redis.url))
    with caplog.at_level(logging.ERROR, "flask_messaging"):
        result = store.run_once("h", "m1", lambda: private_redis.stop() or "done")
    assert result == "done"
    assert "could not mark it done" in caplog.text


def test_redis_lost_while_the_handler_failed_raises_the_handlers_error(
    private_redis: RedisServer,
) -> None:
    store = RedisMarks(Redis.from_url(private_redis.url))

    def fail() -> None:
        private_redis.stop()
        raise ValueError("the handler's own error")

    with pytest.raises(ValueError, match="the handler's own error") as info:
        store.run_once("h", "m1", fail)
    assert any("Could not release" in note for note in info.value.__notes__)


def test_inline_delivery_on_the_embedded_redis(make_app: Callable[..., Flask]) -> None:
    app = make_app(messaging, MESSAGING_REDIS_URL="memory://", MESSAGING_ASYNC=False)
    subscription = get_state(app).registry.async_subscription(
        "tests.test_idempotency:credit", Credit
    )
    assert subscription is not None
    data = encode(Credit("a", 1)).data
    with app.app_context():
        run_delivery(subscription, data)
        run_delivery(subscription, data)  # the same envelope again
        assert (_redis().get(RUNS), _redis().get(EFFECTS)) == (b"1", b"1")


# --------------------------------------------------------------------------
# Database marks: the mark commits with the handler's effects.


@pytest.fixture
def make_db_app(
    make_app: Callable[..., Flask],
    fresh_tables: Callable[[Flask], Flask],
    real_redis_url: str,
) -> Callable[[str], Flask]:
    """Build an app of ``db`` on ``database_url`` and Redis, with fresh tables."""

    def make(database_url: str) -> Flask:
        app = make_app(
            Messaging(),
            db=db,
            SQLALCHEMY_DATABASE_URI=database_url,
            MESSAGING_REDIS_URL=real_redis_url,
            MESSAGING_OUTBOX_TABLE="test_idempotency_outbox",
        )
        broker = get_state(app).broker
        broker.subscribe_async(Credit, book, queue_name=QUEUE)
        broker.subscribe_async(AsyncCredit, book_async, queue_name=QUEUE)
        return fresh_tables(app)

    return make


@pytest.fixture
def db_app(make_db_app: Callable[[str], Flask], database_url: str) -> Flask:
    return make_db_app(database_url)


def deliver_book(
    app: Flask,
    data: bytes,
    key: str = "tests.test_idempotency:booked_in_db",
    message_type: type[Message] = Credit,
) -> None:
    with app.app_context():
        subscription = get_state().registry.async_subscription(key, message_type)
        assert subscription is not None
        try:
            run_delivery(subscription, data)
        finally:
            db.session.remove()


def table_counts(app: Flask) -> tuple[int, int, int]:
    with app.app_context(), db.engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (Entry.__table__, marks.table, get_state().outbox)
        )


def test_database_marks_commit_with_the_effects_and_skip_repeats(
    db_app: Flask,
) -> None:
    data = encode(Credit("a", 7)).data
    deliver_book(db_app, data)
    deliver_book(db_app, data)
    # One entry, one mark, and one follow-up event in the outbox: the repeat
    # neither wrote nor published anything.
    assert table_counts(db_app) == (1, 1, 1)
    with db_app.app_context():
        assert int(get_state().redis.get(RUNS) or 0) == 1


def test_database_marks_roll_back_with_a_failing_handler(db_app: Flask) -> None:
    data = encode(Credit("a", 7, fail_first=True)).data
    with pytest.raises(RuntimeError, match="fails on its first run"):
        deliver_book(db_app, data)
    assert table_counts(db_app) == (0, 0, 0)  # its insert and its mark are gone
    deliver_book(db_app, data)
    assert table_counts(db_app) == (1, 1, 1)


def lock_waiters(app: Flask) -> int:
    """Sessions of this database waiting for a lock (a row's unique key)."""
    with app.app_context(), db.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                    " current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def wait_until(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)


def test_concurrent_deliveries_wait_on_the_mark_then_skip(
    make_db_app: Callable[[str], Flask], postgres_url: str
) -> None:
    app = make_db_app(postgres_url)
    data = encode(Credit("a", 7)).data
    inside, release = threading.Event(), threading.Event()
    ran: list[str] = []
    errors: list[BaseException] = []

    def slow(event: Credit) -> None:
        ran.append(event.account)
        db.session.add(Entry(account=event.account, amount=event.amount))
        inside.set()
        release.wait(30)

    guarded = idempotent(store=marks, name="tests.slow")(slow)

    def deliver() -> None:
        with app.app_context():
            try:
                envelope = decode_envelope(data)
                with handling(envelope):
                    guarded(decode(envelope))  # type: ignore[arg-type]
            except BaseException as exc:
                errors.append(exc)
            finally:
                db.session.remove()

    first = threading.Thread(target=deliver)
    second = threading.Thread(target=deliver)
    try:
        first.start()
        assert inside.wait(30)
        second.start()
        wait_until(lambda: lock_waiters(app) > 0, "the second delivery to wait")
    finally:
        release.set()
        first.join(30)
        second.join(30)
    assert errors == []
    assert ran == ["a"]  # the second delivery skipped once the first committed
    assert table_counts(app)[:2] == (1, 1)


def test_prune_deletes_old_marks(db_app: Flask) -> None:
    deliver_book(db_app, encode(Credit("a", 7)).data)
    with db_app.app_context():
        assert marks.prune(older_than=3600) == 0
        assert marks.prune(older_than=0) == 1


# --------------------------------------------------------------------------
# async def handlers: an async wrapper, the mark written once the coroutine
# completed.


@pytest.fixture
def forget_marks() -> None:
    marks_while_running.clear()


def test_the_wrapper_of_an_async_def_handler_is_async_def_too(
    make_app: Callable[..., Flask],
) -> None:
    assert inspect.iscoroutinefunction(credit_async)
    assert inspect.iscoroutinefunction(book_async)
    assert handler_key(credit_async) == "tests.test_idempotency:credit_async"
    assert credit_async.__doc__ == "The async twin of ``credit``."
    registry = get_state(make_app(messaging)).registry
    subscription = registry.async_subscription(
        "tests.test_idempotency:credit_async", AsyncCredit
    )
    assert subscription is not None and subscription.is_coroutine


def test_an_async_handler_redelivered_is_skipped_and_marked_only_when_done(
    app: Flask, forget_marks: None
) -> None:
    job_id = publish(app, AsyncCredit("a", 5))
    drain(app)
    redeliver(app, job_id)
    drain(app)
    assert counts(app) == (1, 1)
    # While the coroutine ran its mark was the job's claim; "done" after.
    assert marks_while_running == [f"running:{job_id}".encode()]
    key = "tests.test_idempotency:credit_async"
    mark = f"flask_messaging:handled:{key}:{job_id[4:36]}"
    assert get_state(app).redis.get(mark) == b"done"


def test_a_failed_async_run_releases_its_mark_so_the_retry_runs(
    app: Flask, forget_marks: None
) -> None:
    publish(app, AsyncCredit("a", 5, fail_first=True))
    drain(app)
    assert counts(app) == (2, 1)


def test_an_async_run_cancelled_at_its_timeout_releases_its_claim(
    real_redis_url: str,
) -> None:
    redis = Redis.from_url(real_redis_url)
    store = RedisMarks(redis)

    async def slow() -> str:
        await asyncio.sleep(30)
        return "never"

    async def within_deadline() -> str | None:
        async with asyncio.timeout(0.05):
            return await store.run_once_async("h", "m1", slow)

    with pytest.raises(TimeoutError):
        run_to_completion(within_deadline())
    assert redis.get("flask_messaging:handled:h:m1") is None
    redis.close()


def test_an_async_handler_called_outside_a_delivery_refuses(
    make_app: Callable[..., Flask],
) -> None:
    with make_app(messaging).app_context():
        with pytest.raises(RuntimeError, match="outside the delivery of its message"):
            run_to_completion(credit_async(AsyncCredit("a", 1)))


def test_a_store_without_run_once_async_cannot_guard_an_async_def_handler() -> None:
    class SyncOnly:
        def run_once(
            self, handler: str, message_id: str, call: Callable[[], object]
        ) -> object:
            return call()

    with pytest.raises(TypeError, match="has no run_once_async method"):
        idempotent(store=SyncOnly())(booked_in_db_async)


def test_database_marks_of_an_async_handler_commit_with_its_effects(
    db_app: Flask, forget_marks: None
) -> None:
    data = encode(AsyncCredit("a", 7)).data
    key = "tests.test_idempotency:booked_in_db_async"
    deliver_book(db_app, data, key, AsyncCredit)
    deliver_book(db_app, data, key, AsyncCredit)
    assert table_counts(db_app) == (1, 1, 1)
    assert marks_while_running == [0]  # not committed while the coroutine ran
    with db_app.app_context():
        assert int(get_state().redis.get(RUNS) or 0) == 1


def test_database_marks_of_a_failing_async_handler_roll_back(db_app: Flask) -> None:
    data = encode(AsyncCredit("a", 7, fail_first=True)).data
    key = "tests.test_idempotency:booked_in_db_async"
    with pytest.raises(RuntimeError, match="fails on its first run"):
        deliver_book(db_app, data, key, AsyncCredit)
    assert table_counts(db_app) == (0, 0, 0)
    deliver_book(db_app, data, key, AsyncCredit)
    assert table_counts(db_app) == (1, 1, 1)


def cancel_lock_waits(app: Flask) -> None:
    """Cancel this database's statements waiting for a lock (a stuck test)."""
    with app.app_context(), db.engine.connect() as connection:
        connection.execute(
            sa.text(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE"
                " datname = current_database() AND wait_event_type = 'Lock'"
            )
        )


def test_concurrent_async_deliveries_on_one_loop_do_not_wait_on_each_other(
    make_db_app: Callable[[str], Flask], postgres_url: str
) -> None:
    # Waiting on the first delivery's row would stop the loop the first
    # delivery needs to finish: the second fails at once, to be retried.
    app = make_db_app(postgres_url)
    envelope = decode_envelope(encode(AsyncCredit("a", 7)).data)
    inside, release = threading.Event(), threading.Event()
    ran: list[str] = []

    async def slow(event: AsyncCredit) -> None:
        ran.append(event.account)
        db.session.add(Entry(account=event.account, amount=event.amount))
        inside.set()
        while not release.is_set():
            await asyncio.sleep(0.005)

    guarded = idempotent(store=marks, name="tests.slow_async")(slow)

    async def deliver() -> None:
        with app.app_context():
            try:
                with handling(envelope):
                    await guarded(decode(envelope))  # type: ignore[arg-type]
            finally:
                db.session.remove()

    loop = HandlerLoop(5)
    try:
        first = loop.submit(deliver)
        assert inside.wait(30)
        second = loop.submit(deliver)
        error = second.exception(timeout=30)
        assert isinstance(error, HandlingInProgressError)
        release.set()
        assert first.result(timeout=30) is None
        # Once the first committed, a later delivery is skipped.
        assert loop.submit(deliver).result(timeout=30) is None
    finally:
        release.set()
        cancel_lock_waits(app)
        loop.close(timeout=10)
    assert ran == ["a"]
    assert table_counts(app)[:2] == (1, 1)
