"""Every example of the messaging specification, as written, imports mapped.

``shared.messaging`` is ``flask_messaging``, ``shared.queuing.queue_names`` is
``flask_messaging.queue_names``. Code inside the examples is kept as the
specification has it; what it leaves undefined (``email_service``,
``register_user`` ...) is defined here. The transaction example lives with the
transaction tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from flask import Flask

from flask_messaging import Message
from flask_messaging.broker import (
    NullBroker,
    TestBroker,
    get_message_broker,
    override_message_broker,
)
from flask_messaging.envelope import round_trip
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

# -- Messages ---------------------------------------------------------------


@dataclass(frozen=True)
class UserRegistered(Message):
    user_id: str
    email: str


@dataclass(frozen=True)
class OrderPlaced(Message):
    order_id: str
    customer_id: str
    total_amount: float


# -- What the examples use without defining ---------------------------------


class EmailServiceError(Exception):
    pass


class EmailService:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failing = False

    def send_welcome_email(self, email: str) -> None:
        if self.failing:
            raise EmailServiceError("SMTP is down")
        self.sent.append(email)


email_service = EmailService()
current_logger = logging.getLogger("tests.spec")


def register_user(email: str) -> None:
    get_message_broker().publish(UserRegistered(user_id="1", email=email))


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    email_service.sent.clear()
    email_service.failing = False
    app = make_app()
    with app.app_context():
        yield app


# -- Usage --------------------------------------------------------------------


def test_basic_publishing(app: Flask) -> None:
    received: list[UserRegistered] = []
    get_message_broker().subscribe(UserRegistered, received.append)

    # Get the global broker instance
    message_broker = get_message_broker()

    # Publish a message
    user_registered = UserRegistered(user_id="123", email="john@example.com")
    message_broker.publish(user_registered)

    assert received == [user_registered]


def test_synchronous_subscription(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    message_broker = get_message_broker()

    def handle_user_registration(event: UserRegistered):  # type: ignore[no-untyped-def]
        print(f"User {event.email} registered with ID {event.user_id}")

    # Subscribe to the message type
    message_broker.subscribe(UserRegistered, handle_user_registration)

    message_broker.publish(UserRegistered(user_id="123", email="john@example.com"))
    assert capsys.readouterr().out == "User john@example.com registered with ID 123\n"


def send_welcome_email(event: UserRegistered):  # type: ignore[no-untyped-def]
    # This will run in a background job
    email_service.send_welcome_email(event.email)


def test_asynchronous_subscription(app: Flask) -> None:
    message_broker = get_message_broker()

    # Subscribe with a queue name
    message_broker.subscribe_async(
        UserRegistered, send_welcome_email, queue_name=LOW_PRIORITY
    )

    message_broker.publish(UserRegistered(user_id="123", email="john@example.com"))
    assert email_service.sent == []  # queued, not run
    make_worker(app, [LOW_PRIORITY]).work(burst=True, logging_level="WARNING")
    assert email_service.sent == ["john@example.com"]


def test_message_filtering_with_predicates(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    message_broker = get_message_broker()

    def handle_premium_orders(event: OrderPlaced):  # type: ignore[no-untyped-def]
        print(f"Processing premium order: {event.order_id}")

    # Only process orders above $100
    message_broker.subscribe(
        OrderPlaced,
        handle_premium_orders,
        predicate=lambda order: order.total_amount > 100,
    )

    message_broker.publish(OrderPlaced("cheap", "c1", 20.0))
    message_broker.publish(OrderPlaced("pricey", "c1", 250.0))
    assert capsys.readouterr().out == "Processing premium order: pricey\n"


def premium_async(event: OrderPlaced) -> None:
    email_service.send_welcome_email(event.order_id)


def test_predicates_spawn_no_job_for_filtered_messages(app: Flask) -> None:
    message_broker = get_message_broker()
    message_broker.subscribe_async(
        OrderPlaced,
        premium_async,
        queue_name=LOW_PRIORITY,
        predicate=lambda order: order.total_amount > 100,
    )
    message_broker.publish(OrderPlaced("cheap", "c1", 20.0))
    assert get_state().redis.keys("rq:job:*") == []


# -- Message patterns ---------------------------------------------------------


@dataclass(frozen=True)
class PolicyActivated(Message):
    policy_id: str
    member_id: str
    activation_date: datetime


@dataclass(frozen=True)
class ClaimSubmitted(Message):
    claim_id: str
    policy_id: str
    amount: float


@dataclass(frozen=True)
class GenerateInvoice(Message):
    subscription_id: str
    billing_period: str


@dataclass(frozen=True)
class SendNotification(Message):
    recipient_id: str
    template: str
    data: dict  # type: ignore[type-arg]


@dataclass(frozen=True)
class UserProfileUpdated(Message):
    user_id: str
    changes: dict  # type: ignore[type-arg]


@dataclass(frozen=True)
class AccountCreated(Message):
    account_id: str
    initial_balance: float


@dataclass(frozen=True)
class MoneyDeposited(Message):
    account_id: str
    amount: float


@dataclass(frozen=True)
class MoneyWithdrawn(Message):
    account_id: str
    amount: float


@pytest.mark.parametrize(
    "message",
    [
        PolicyActivated("p1", "m1", datetime(2026, 1, 1, tzinfo=UTC)),
        ClaimSubmitted("c1", "p1", 99.5),
        GenerateInvoice("s1", "2026-11"),
        SendNotification("r1", "welcome", {"name": "Ada", "tags": ["a", "b"]}),
        UserProfileUpdated("u1", {"email": "new@example.com"}),
        AccountCreated("a1", 0.0),
        MoneyDeposited("a1", 10.0),
        MoneyWithdrawn("a1", 5.0),
    ],
)
def test_pattern_messages_travel_intact(message: Message) -> None:
    _, decoded = round_trip(message)
    assert decoded == message


class RecommendationEngine:
    def __init__(self) -> None:
        self.refreshed: list[str] = []

    def refresh_user_data(self, user_id: str) -> None:
        self.refreshed.append(user_id)


recommendation_engine = RecommendationEngine()


# Component B subscribes
def update_recommendations(event: UserProfileUpdated):  # type: ignore[no-untyped-def]
    recommendation_engine.refresh_user_data(event.user_id)


def test_cross_component_communication(app: Flask) -> None:
    get_message_broker().subscribe_async(UserProfileUpdated, update_recommendations)
    get_message_broker().publish(UserProfileUpdated("u7", {"name": "Ada"}))
    make_worker(app).work(burst=True, logging_level="WARNING")
    assert recommendation_engine.refreshed == ["u7"]


def test_event_sourcing_replays_in_order() -> None:
    broker = TestBroker()
    balances: dict[str, float] = {}
    broker.subscribe(
        AccountCreated, lambda e: balances.__setitem__(e.account_id, e.initial_balance)
    )
    broker.subscribe(
        MoneyDeposited,
        lambda e: balances.__setitem__(e.account_id, balances[e.account_id] + e.amount),
    )
    broker.subscribe(
        MoneyWithdrawn,
        lambda e: balances.__setitem__(e.account_id, balances[e.account_id] - e.amount),
    )
    for event in (
        AccountCreated("a", 10.0),
        MoneyDeposited("a", 5.0),
        MoneyWithdrawn("a", 3.0),
    ):
        broker.publish(event)
    broker.process_messages()
    assert balances == {"a": 12.0}


# -- Testing ------------------------------------------------------------------


def test_user_registration_publishes_event(app: Flask) -> None:
    null_broker = NullBroker()

    with override_message_broker(null_broker):
        # Your code that publishes messages
        register_user("john@example.com")

    # Verify the message was published
    assert len(null_broker.published) == 1
    assert isinstance(null_broker.published[0], UserRegistered)
    assert null_broker.published[0].email == "john@example.com"


def test_full_message_flow(app: Flask) -> None:
    test_broker = TestBroker()

    # Set up subscriber
    processed_messages = []

    def handler(event: UserRegistered):  # type: ignore[no-untyped-def]
        processed_messages.append(event)

    test_broker.subscribe(UserRegistered, handler)

    with override_message_broker(test_broker):
        # Publish message
        register_user("john@example.com")

        # Manually process the queue
        test_broker.process_messages()

    # Verify handler was called
    assert len(processed_messages) == 1


# -- Error handling -----------------------------------------------------------


def safe_email_handler(event: UserRegistered):  # type: ignore[no-untyped-def]
    try:
        email_service.send_welcome_email(event.email)
    except EmailServiceError as e:
        current_logger.error(f"Failed to send welcome email: {e}")
        # Could retry, send to DLQ, etc.


def test_error_handling(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    email_service.failing = True
    get_message_broker().subscribe_async(UserRegistered, safe_email_handler)
    register_user("john@example.com")
    with caplog.at_level(logging.ERROR, "tests.spec"):
        make_worker(app).work(burst=True, logging_level="WARNING")
    assert "Failed to send welcome email: SMTP is down" in caplog.text
    assert get_state().redis.keys("rq:failed:*") == []  # handled, not failed
