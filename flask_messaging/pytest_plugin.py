"""pytest fixtures for apps using flask-messaging (opt-in: none is autouse).

Installed as a ``pytest11`` plugin with the package:

- ``null_broker``: a :class:`~flask_messaging.broker.NullBroker` installed with
  :func:`~flask_messaging.broker.override_message_broker` for the test.
  Both brokers apply the app's ``MESSAGING_MAX_MESSAGE_BYTES``.
- ``test_broker``: a :class:`~flask_messaging.broker.TestBroker` holding the
  subscriptions of the current app (or of your ``app`` fixture), installed for
  the test; call ``test_broker.process_messages()`` to deliver.
- ``capture_events``: :func:`flask_messaging.testing.capture_events`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, current_app, has_app_context

from .state import get_state, override_message_broker
from .testing import NullBroker, TestBroker
from .testing import capture_events as _capture_events


@pytest.fixture
def null_broker(request: pytest.FixtureRequest) -> Iterator[NullBroker]:
    app = _find_app(request)
    broker = NullBroker()
    if app is not None:  # its size limit, also outside its app context
        broker.max_message_bytes = get_state(app).settings.max_message_bytes
    with override_message_broker(broker):
        yield broker


@pytest.fixture
def test_broker(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    app = _find_app(request)
    broker = TestBroker.from_app(app) if app is not None else TestBroker()
    with override_message_broker(broker):
        yield broker


@pytest.fixture
def capture_events() -> Callable[..., Any]:
    return _capture_events


def _find_app(request: pytest.FixtureRequest) -> Flask | None:
    if has_app_context():
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return app if "messaging" in app.extensions else None
    if "app" in request.fixturenames:
        candidate = request.getfixturevalue("app")
        if isinstance(candidate, Flask) and "messaging" in candidate.extensions:
            return candidate
    return None
