from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask

from flask_messaging import (
    DeliveryError,
    MemoryBroker,
    Message,
    MessageEncodeError,
    Messaging,
    NullBroker,
    TestBroker,
    current_envelope,
    get_message_broker,
    override_message_broker,
)


class UserEvent(Message):
    """An abstract base: not a dataclass, still subscribable."""


@dataclass(frozen=True)
class UserRegistered(UserEvent, name="tests.broker.user_registered"):
    user_id: str
    email: str


@dataclass(frozen=True)
class UserDeleted(UserEvent, name="tests.broker.user_deleted"):
    user_id: str


@dataclass(frozen=True)
class Price(Message, name="tests.broker.price"):
    amount: float


def test_sync_subscribers_run_in_subscription_order() -> None:
    broker = MemoryBroker()
    calls: list[str] = []
    broker.subscribe(UserRegistered, lambda e: calls.append("first"))
    broker.subscribe(UserEvent, lambda e: calls.append("base"))
    broker.subscribe(Message, lambda e: calls.append("any"))
    broker.subscribe(UserRegistered, lambda e: calls.append("last"))
    broker.publish(UserRegistered("1", "a@example.com"))
    assert calls == ["first", "base", "any", "last"]


def test_dispatch_follows_the_class_hierarchy() -> None:
    broker = MemoryBroker()
    seen: list[Message] = []
    broker.subscribe(UserEvent, seen.append)
    broker.publish(UserRegistered("1", "a@example.com"))
    broker.publish(UserDeleted("1"))
    broker.publish(Price(1.0))
    assert [type(m) for m in seen] == [UserRegistered, UserDeleted]


def test_route_is_computed_once_per_type_and_refreshed_on_subscribe() -> None:
    broker = MemoryBroker()
    seen: list[str] = []
    broker.subscribe(UserEvent, lambda e: seen.append("base"))
    broker.publish(UserDeleted("1"))
    route = broker.registry.route(UserDeleted)
    broker.publish(UserDeleted("2"))
    assert broker.registry.route(UserDeleted) is route
    broker.subscribe(UserDeleted, lambda e: seen.append("exact"))
    broker.publish(UserDeleted("3"))
    assert seen == ["base", "base", "base", "exact"]


def test_predicate_filters_before_the_handler() -> None:
    broker = MemoryBroker()
    premium: list[float] = []
    broker.subscribe(
        Price, lambda e: premium.append(e.amount), predicate=lambda e: e.amount > 100
    )
    for amount in (50.0, 150.0, 100.0, 101.0):
        broker.publish(Price(amount))
    assert premium == [150.0, 101.0]


def test_every_subscriber_receives_the_message_and_failures_are_raised_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    received: list[str] = []

    def fails_value(event: Price) -> None:
        received.append("value")
        raise ValueError("bad value")

    def works(event: Price) -> None:
        received.append("works")

    def fails_key(event: Price) -> None:
        received.append("key")
        raise KeyError("missing")

    broker.subscribe(Price, fails_value)
    broker.subscribe(Price, works)
    broker.subscribe(Price, fails_key)
    with caplog.at_level(logging.ERROR, "flask_messaging"):
        with pytest.raises(DeliveryError) as info:
            broker.publish(Price(1.0))
    assert received == ["value", "works", "key"]
    group = info.value
    assert isinstance(group, ExceptionGroup)
    assert str(group).startswith("2 subscribers failed on tests.broker.price")
    assert [type(e) for e in group.exceptions] == [ValueError, KeyError]
    assert "fails_value" in group.exceptions[0].__notes__[0]
    logged = [r for r in caplog.records if r.name == "flask_messaging"]
    assert len(logged) == 2
    assert "fails_value" in logged[0].getMessage()
    assert logged[0].exc_info is not None


def test_failing_predicate_counts_as_that_subscribers_failure() -> None:
    broker = MemoryBroker()
    received: list[float] = []

    def broken(event: Price) -> bool:
        raise ZeroDivisionError

    broker.subscribe(Price, received.append, predicate=broken)
    broker.subscribe(Price, lambda e: received.append(e.amount))
    with pytest.raises(DeliveryError) as info:
        broker.publish(Price(2.0))
    assert received == [2.0]
    assert isinstance(info.value.exceptions[0], ZeroDivisionError)


def test_publishing_a_non_message_is_refused() -> None:
    with pytest.raises(TypeError, match="not a Message subclass"):
        MemoryBroker().publish({"user_id": "1"})  # type: ignore[arg-type]


def test_subscribing_twice_is_refused() -> None:
    broker = MemoryBroker()

    def handler(event: Price) -> None:
        pass

    broker.subscribe(Price, handler)
    with pytest.raises(ValueError, match="already subscribed"):
        broker.subscribe(Price, handler)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"message_type": dict}, "subscribe to a Message subclass"),
        ({"handler": "not callable"}, "not callable"),
        ({"predicate": 3}, "Predicate 3 is not callable"),
    ],
)
def test_bad_subscribe_arguments_are_clear_errors(kwargs: dict, match: str) -> None:
    arguments = {"message_type": Price, "handler": print, **kwargs}
    with pytest.raises(TypeError, match=match):
        MemoryBroker().subscribe(
            arguments["message_type"],
            arguments["handler"],
            predicate=arguments.get("predicate"),
        )


def handle_price(event: Price) -> None:
    pass


def test_async_subscription_needs_a_stable_name() -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="lambdas, nested functions"):
        broker.subscribe_async(Price, lambda e: None)

    def nested(event: Price) -> None:
        pass

    with pytest.raises(ValueError, match="module-level function"):
        broker.subscribe_async(Price, nested)
    broker.subscribe_async(Price, nested, name="tests.nested")
    broker.subscribe_async(Price, handle_price)
    keys = [s.key for s in broker.registry]
    assert keys == ["tests.nested", "tests.test_broker:handle_price"]


def test_async_subscription_refuses_a_mutable_message_class() -> None:
    @dataclass
    class Mutable(Message):
        value: int

    with pytest.raises(TypeError, match="frozen=True"):
        MemoryBroker().subscribe_async(Mutable, handle_price)


def test_async_subscriber_without_a_job_queue_is_a_clear_error() -> None:
    broker = MemoryBroker()
    broker.subscribe_async(Price, handle_price)
    with pytest.raises(RuntimeError, match="no job queue"):
        broker.publish(Price(1.0))


def test_bad_message_for_an_async_subscriber_fails_before_any_handler() -> None:
    broker = MemoryBroker(jobs=NeverCalled())
    called: list[object] = []
    broker.subscribe(Price, called.append)
    broker.subscribe_async(Price, handle_price)
    with pytest.raises(MessageEncodeError):
        broker.publish(Price("oops"))  # type: ignore[arg-type]
    assert called == []


class NeverCalled:
    def enqueue(self, deliveries: object) -> None:
        raise AssertionError("enqueued a bad message")


# -- NullBroker and TestBroker ----------------------------------------------


def test_null_broker_records_and_runs_nothing() -> None:
    broker = NullBroker()
    called: list[object] = []
    broker.subscribe(Price, called.append)
    broker.publish(Price(1.0))
    assert broker.published == [Price(1.0)]
    assert called == []


def test_test_broker_delivers_on_process_through_the_codec() -> None:
    broker = TestBroker()
    received: list[Price] = []
    decoded: list[Price] = []
    broker.subscribe(Price, received.append)
    broker.subscribe_async(Price, decoded.append, name="tests.broker.decoded")
    message = Price(5.0)
    broker.publish(message)
    assert received == []
    assert broker.pending == [message]
    assert broker.process_messages() == 1
    assert received == [message] == decoded
    assert received[0] is message  # sync: the published object, as in production
    assert decoded[0] is not message  # async: decoded, as a worker would
    assert broker.pending == []
    assert broker.published == [message]


def test_test_broker_refuses_a_bad_message_at_publish() -> None:
    broker = TestBroker()
    with pytest.raises(MessageEncodeError):
        broker.publish(Price("oops"))  # type: ignore[arg-type]
    assert broker.pending == []


async_seen: list[tuple[float, str | None]] = []


def record_async(event: Price) -> None:
    envelope = current_envelope()
    async_seen.append((event.amount, envelope.id if envelope else None))


def test_test_broker_runs_async_subscribers_and_chained_messages() -> None:
    broker = TestBroker()
    async_seen.clear()
    broker.subscribe_async(Price, record_async, predicate=lambda e: e.amount > 0)

    def cascade(event: UserRegistered) -> None:
        get_message_broker().publish(Price(10.0))
        get_message_broker().publish(Price(-1.0))

    broker.subscribe(UserRegistered, cascade)
    with override_message_broker(broker):
        broker.publish(UserRegistered("1", "a@example.com"))
        assert broker.process_messages() == 3
    assert [amount for amount, _ in async_seen] == [10.0]
    assert async_seen[0][1] is not None


def test_test_broker_stops_a_publishing_loop() -> None:
    broker = TestBroker()
    broker.subscribe(Price, lambda e: broker.publish(Price(e.amount + 1)))
    broker.publish(Price(0.0))
    with pytest.raises(RuntimeError, match="in a loop"):
        broker.process_messages(limit=50)


# -- get_message_broker and override_message_broker ------------------------


def test_get_message_broker_without_app_or_override_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="needs an active Flask app context"):
        get_message_broker()


def test_get_message_broker_in_an_app_without_the_extension() -> None:
    from flask import Flask

    with Flask("bare").app_context():
        with pytest.raises(RuntimeError, match="call Messaging"):
            get_message_broker()


def test_override_nests_and_restores_even_on_error() -> None:
    outer, inner = NullBroker(), NullBroker()
    with override_message_broker(outer):
        assert get_message_broker() is outer
        with pytest.raises(KeyError):
            with override_message_broker(inner):
                assert get_message_broker() is inner
                raise KeyError
        assert get_message_broker() is outer
    with pytest.raises(RuntimeError):
        get_message_broker()


def test_override_refuses_a_non_broker() -> None:
    with pytest.raises(TypeError, match="needs a MessageBroker"):
        with override_message_broker(object()):  # type: ignore[arg-type]
            pass


def test_override_is_isolated_between_threads() -> None:
    mine = NullBroker()
    seen_in_thread: list[object] = []
    started, checked = threading.Event(), threading.Event()

    def other_thread() -> None:
        theirs = NullBroker()
        with override_message_broker(theirs):
            started.set()
            checked.wait(5)
            seen_in_thread.append(get_message_broker() is theirs)

    with override_message_broker(mine):
        thread = threading.Thread(target=other_thread)
        thread.start()
        started.wait(5)
        assert get_message_broker() is mine
        checked.set()
        thread.join(5)
        assert get_message_broker() is mine
    assert seen_in_thread == [True]


def test_override_is_isolated_between_asyncio_tasks() -> None:
    async def use(broker: NullBroker, pause: float) -> bool:
        with override_message_broker(broker):
            await asyncio.sleep(pause)
            return get_message_broker() is broker

    async def main() -> list[bool]:
        return list(await asyncio.gather(use(NullBroker(), 0.02), use(NullBroker(), 0)))

    assert asyncio.run(main()) == [True, True]


@dataclass(frozen=True)
class Blob(Message, name="tests.broker.blob"):
    data: str


def test_doubles_without_an_app_apply_the_default_size_limit() -> None:
    large = Blob("x" * (1024 * 1024))  # over 1 MiB once in its envelope
    for broker in (NullBroker(), TestBroker()):
        with pytest.raises(MessageEncodeError, match=r"\(1,048,576\)"):
            broker.publish(large)
        assert broker.published == []
    unlimited = NullBroker()
    unlimited.max_message_bytes = None
    unlimited.publish(large)
    assert unlimited.published == [large]


def test_test_broker_from_app_keeps_the_apps_limit_outside_its_context(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(Messaging(), MESSAGING_MAX_MESSAGE_BYTES=500)
    broker = TestBroker.from_app(app)
    with pytest.raises(MessageEncodeError, match=r"\(500\)"):
        broker.publish(Blob("x" * 600))
