"""The pytest plugin, as an app's own test suite would use it."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

APP_TESTS = r"""
from dataclasses import dataclass

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging import (
    Message,
    MessageEncodeError,
    Messaging,
    NullBroker,
    TestBroker,
    get_message_broker,
)
from flask_messaging.state import active_override
from flask_messaging.transaction import register_event, transactional

db = SQLAlchemy()
messaging = Messaging()
handled = []


@dataclass(frozen=True)
class Signed(Message, name="plugin.signed"):
    email: str


@messaging.subscribe
def remember(event: Signed) -> None:
    handled.append(event.email)


@transactional
def sign_up(session, email):
    register_event(Signed(email))


@pytest.fixture
def app():
    app = Flask("plugin_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        SECRET_KEY="x",
        MESSAGING_MAX_MESSAGE_BYTES=1000,
    )
    db.init_app(app)
    messaging.init_app(app, db=db)
    with app.app_context():
        yield app
    handled.clear()


def test_nothing_is_installed_by_default(app):
    assert active_override() is None


def test_null_broker(app, null_broker):
    assert isinstance(null_broker, NullBroker)
    sign_up("ada@example.com")
    assert null_broker.published == [Signed("ada@example.com")]
    assert handled == []


def test_test_broker_has_the_apps_subscriptions(app, test_broker):
    assert isinstance(test_broker, TestBroker)
    sign_up("bob@example.com")
    assert handled == []
    assert test_broker.process_messages() == 1
    assert handled == ["bob@example.com"]


def test_capture_events_without_commit(app, capture_events):
    with capture_events() as events:
        register_event(Signed("cy@example.com"))  # never committed
        get_message_broker().publish(Signed("dee@example.com"))
    assert events == [Signed("cy@example.com"), Signed("dee@example.com")]
    assert handled == []
    db.session.rollback()


def test_capture_events_execute(app, capture_events):
    with capture_events(execute=True) as events:
        sign_up("eve@example.com")
    assert events == [Signed("eve@example.com")]
    assert handled == ["eve@example.com"]


def test_capture_events_refuses_bad_messages(app, capture_events):
    with capture_events():
        with pytest.raises(TypeError):
            register_event("not a message")


TOO_LARGE = Signed("x" * 2000)  # over the app's MESSAGING_MAX_MESSAGE_BYTES


def test_every_double_applies_the_apps_size_limit(app, null_broker, capture_events):
    with pytest.raises(MessageEncodeError, match="over MESSAGING_MAX_MESSAGE_BYTES"):
        null_broker.publish(TOO_LARGE)
    with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
        NullBroker().publish(TOO_LARGE)
    with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
        sign_up(TOO_LARGE.email)  # register_event under the override
    with capture_events() as events:
        with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
            register_event(TOO_LARGE)
        with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
            get_message_broker().publish(TOO_LARGE)
    assert events == [] and null_broker.published == []
    db.session.rollback()


def test_test_broker_applies_the_apps_size_limit(app, test_broker):
    with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
        test_broker.publish(TOO_LARGE)
    outside = TestBroker.from_app(app)
    with pytest.raises(MessageEncodeError, match=r"\(1,000\)"):
        outside.publish(TOO_LARGE)
    assert test_broker.published == [] and outside.published == []
"""


def test_fixtures_work_in_an_apps_test_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=8)


def test_plugin_is_registered_by_the_package() -> None:
    from importlib.metadata import entry_points

    plugins = entry_points(group="pytest11")
    assert any(ep.value == "flask_messaging.pytest_plugin" for ep in plugins)
