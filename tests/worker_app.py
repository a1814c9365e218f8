"""An app for tests that run a real worker, in this process or another.

Handlers record what they did in the app's Redis, so tests in any process can
see it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from flask import Flask, current_app

from flask_messaging import Message, Messaging, current_envelope
from flask_messaging.queue_names import HIGH_PRIORITY, LOW_PRIORITY

from .app_factory import build_app

messaging = Messaging()

HANDLED = "test:handled"
ATTEMPTS = "test:attempts"


@dataclass(frozen=True)
class Ping(Message, name="tests.ping"):
    value: int


@dataclass(frozen=True)
class Boom(Message, name="tests.boom"):
    reason: str


@dataclass(frozen=True)
class Slow(Message, name="tests.slow"):
    seconds: float


def record(handler: str, **extra: object) -> None:
    envelope = current_envelope()
    entry = {
        "handler": handler,
        "app": current_app.name,
        "message_id": envelope.id if envelope else None,
        **extra,
    }
    _redis().rpush(HANDLED, json.dumps(entry))


def _redis():  # type: ignore[no-untyped-def]
    # Through the extension's key, not an import: this app also runs on the
    # package of earlier versions (the deploy skew tests).
    return current_app.extensions["messaging"].redis


def handled(redis) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(item) for item in redis.lrange(HANDLED, 0, -1)]


@messaging.subscribe_async(queue_name=LOW_PRIORITY)
def on_ping(event: Ping) -> None:
    record("on_ping", value=event.value)


@messaging.subscribe_async(queue_name=HIGH_PRIORITY, retry=1)
def on_boom(event: Boom) -> None:
    _redis().incr(ATTEMPTS)
    raise RuntimeError(f"boom: {event.reason}")


@messaging.subscribe_async
def on_slow(event: Slow) -> None:
    record("on_slow", phase="start")
    time.sleep(event.seconds)
    record("on_slow", phase="end")


def create_app() -> Flask:
    return build_app("worker_app", messaging, defaults={"MESSAGING_RETRY": 0})
