from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask

from flask_messaging import Message, Messaging, NullBroker, get_message_broker
from flask_messaging.queue_names import DEFAULT_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state


@dataclass(frozen=True)
class Signup(Message, name="tests.ext.signup"):
    email: str


@dataclass(frozen=True)
class Order(Message, name="tests.ext.order"):
    total: float


def test_init_app_sets_defaults_without_overriding() -> None:
    app = Flask(__name__)
    app.config["MESSAGING_QUEUES"] = ["only"]
    Messaging(app)
    assert app.config["MESSAGING_QUEUES"] == ["only"]
    assert app.config["MESSAGING_REDIS_URL"] == "redis://localhost:6379/0"
    assert app.config["MESSAGING_ASYNC"] is True
    assert app.extensions["messaging"] is get_state(app)


def test_testing_apps_run_async_subscribers_inline_by_default() -> None:
    app = Flask(__name__)
    app.testing = True
    Messaging(app)
    assert app.config["MESSAGING_ASYNC"] is False


def test_init_app_twice_is_refused() -> None:
    app = Flask(__name__)
    messaging = Messaging(app)
    with pytest.raises(RuntimeError, match="already set up"):
        messaging.init_app(app)


def test_bad_config_is_a_clear_error() -> None:
    app = Flask(__name__)
    app.config["MESSAGING_RETRY"] = "three"
    with pytest.raises(ValueError, match="MESSAGING_RETRY must be an integer >= 0"):
        Messaging(app)


def test_get_state_without_init_app_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="did you forget to call Messaging"):
        get_state(Flask(__name__))


def test_signing_needs_a_key() -> None:
    app = Flask(__name__)
    Messaging(app)
    with pytest.raises(RuntimeError, match="set SECRET_KEY"):
        get_state(app).signer  # noqa: B018


messaging = Messaging()
calls: list[tuple[str, object]] = []


@messaging.subscribe
def audit(event: Signup) -> None:
    calls.append(("audit", event))


@messaging.subscribe(Order, predicate=lambda order: order.total > 100)
def premium(event: Order) -> None:
    calls.append(("premium", event))


@messaging.subscribe(Signup, queue_name=LOW_PRIORITY)
def welcome(event: Signup) -> None:
    calls.append(("welcome", event))


@messaging.subscribe_async
def ship(event: Order) -> None:
    calls.append(("ship", event))


def test_decorators_return_the_handler_unchanged() -> None:
    assert audit.__name__ == "audit" and callable(audit)
    audit(Signup("direct@example.com"))
    assert calls.pop() == ("audit", Signup("direct@example.com"))


def test_declared_subscriptions_apply_to_every_app(
    make_app: Callable[..., Flask],
) -> None:
    first, second = make_app(messaging), make_app(messaging)
    for app in (first, second):
        rows = [
            (s.message_type, s.key.rsplit(":", 1)[1], s.queue_name)
            for s in get_state(app).registry
        ]
        assert rows == [
            (Signup, "audit", None),
            (Order, "premium", None),
            (Signup, "welcome", LOW_PRIORITY),
            (Order, "ship", DEFAULT_PRIORITY),
        ]


def test_subscriptions_declared_after_init_app_reach_existing_apps(
    make_app: Callable[..., Flask],
) -> None:
    late = Messaging()
    app = make_app(late)

    @late.subscribe(Signup)
    def late_handler(event: Signup) -> None:
        pass

    assert [s.handler for s in get_state(app).registry] == [late_handler]


def test_runtime_subscriptions_belong_to_one_app(
    make_app: Callable[..., Flask],
) -> None:
    shared = Messaging()
    first, second = make_app(shared), make_app(shared)
    seen: list[str] = []
    with first.app_context():
        get_message_broker().subscribe(Signup, lambda e: seen.append("first"))
    with second.app_context():
        get_message_broker().publish(Signup("x@example.com"))
    with first.app_context():
        get_message_broker().publish(Signup("y@example.com"))
    assert seen == ["first"]


def test_sync_decorated_subscribers_run_on_publish(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(messaging, MESSAGING_ASYNC=False)
    calls.clear()
    with app.app_context():
        get_message_broker().publish(Order(50.0))
        get_message_broker().publish(Order(500.0))
        get_message_broker().publish(Signup("a@example.com"))
    names = [name for name, _ in calls]
    # inline async subscribers run after the sync ones, as a worker would
    assert names == ["ship", "premium", "ship", "audit", "welcome"]


def test_retry_without_a_queue_is_refused() -> None:
    with pytest.raises(TypeError, match="apply to async subscribers"):

        @Messaging().subscribe(Signup, retry=3)
        def handler(event: Signup) -> None:
            pass


def test_message_type_inference_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="annotate its first parameter"):

        @Messaging().subscribe
        def untyped(event):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(TypeError, match="annotate its first parameter"):

        @Messaging().subscribe
        def wrong(event: int) -> None:
            pass


def test_override_wins_over_the_app_broker(app: Flask) -> None:
    broker = NullBroker()
    from flask_messaging import override_message_broker

    with override_message_broker(broker):
        get_message_broker().publish(Signup("z@example.com"))
    assert broker.published == [Signup("z@example.com")]
    assert get_message_broker() is get_state(app).broker
