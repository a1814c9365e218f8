"""How an application's code uses the package, checked by mypy (strict) in CI.

Not a test module: mypy reads it (``[tool.mypy] files``), pytest does not
collect it. Each line is a call the documentation shows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging import Message, Messaging, register_event, transactional
from flask_messaging.broker import NullBroker, TestBroker, override_message_broker
from flask_messaging.coroutines import (
    HandlerLoop,
    is_coroutine_function,
    run_to_completion,
)
from flask_messaging.dispatch import deferring_coroutines
from flask_messaging.idempotency import DatabaseMarks, idempotent
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state

app = Flask(__name__)
db = SQLAlchemy()
messaging = Messaging()
# Flask-SQLAlchemy's object, with its own Session class, is accepted as is.
messaging.init_app(app, db=db)
Messaging(Flask("other"), db=db)

with app.app_context():
    state = get_state()
    with override_message_broker(NullBroker()), override_message_broker(TestBroker()):
        pass

_ = (register_event, transactional)


# ``async def`` handlers: every subscribe API takes them, and keeps their type.


@dataclass(frozen=True)
class UserRegistered(Message, name="typed.user_registered"):
    email: str


@messaging.subscribe
async def greet(event: UserRegistered) -> None:
    await asyncio.sleep(0)


@messaging.subscribe_async(queue_name=LOW_PRIORITY)
async def welcome(event: UserRegistered) -> None:
    await asyncio.sleep(0)


@messaging.subscribe(UserRegistered, queue_name=LOW_PRIORITY)
@idempotent
async def charge(event: UserRegistered) -> int:
    return 1


@idempotent(store=DatabaseMarks(db))
async def book(event: UserRegistered) -> str:
    return event.email


@idempotent
def plain(event: UserRegistered) -> int:
    return 1


def sync_audit(event: UserRegistered) -> None:
    pass


async def async_audit(event: UserRegistered) -> None:
    pass


with app.app_context():
    broker = get_state().broker
    broker.subscribe(UserRegistered, sync_audit)
    broker.subscribe(UserRegistered, async_audit, predicate=lambda e: e.email)
    broker.subscribe_async(UserRegistered, async_audit, queue_name=LOW_PRIORITY)

greeting: Coroutine[Any, Any, None] = greet(UserRegistered("a@example.com"))
charged: Coroutine[Any, Any, int | None] = charge(UserRegistered("a@example.com"))
booked: Coroutine[Any, Any, str | None] = book(UserRegistered("a@example.com"))
counted: int | None = plain(UserRegistered("a@example.com"))

# The parts a worker runs async def handlers with.
handler_loop = HandlerLoop(limit=100)
future: concurrent.futures.Future[None] = handler_loop.submit(
    lambda: asyncio.sleep(0.1), timeout=5.0
)
with deferring_coroutines(handler_loop, timeout=30.0):
    pass
handler_loop.close(timeout=10)
slept: None = run_to_completion(asyncio.sleep(0))
is_async: bool = is_coroutine_function(welcome)
