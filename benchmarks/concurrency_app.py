"""Our side of the concurrency benchmark: one message type per job of ``stamps``.

The harness publishes from this app; its workers load it with ``flask --app
benchmarks.concurrency_app:create_app``. Configured from the environment:
``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flask import Flask

from flask_messaging import Message, Messaging

from . import stamps

messaging = Messaging()


@dataclass(frozen=True)
class Noop(Message, name="bench.noop"):
    n: int


@dataclass(frozen=True)
class Sleep(Message, name="bench.sleep"):
    n: int


@dataclass(frozen=True)
class AsyncSleep(Message, name="bench.async_sleep"):
    n: int


@messaging.subscribe_async
def on_noop(event: Noop) -> None:
    stamps.noop_job(event.n)


@messaging.subscribe_async
def on_sleep(event: Sleep) -> None:
    stamps.sleep_job(event.n)


@messaging.subscribe_async
async def on_async_sleep(event: AsyncSleep) -> None:
    await stamps.async_sleep_job(event.n)


def create_app() -> Flask:
    app = Flask("bench_concurrency")
    app.config.update(
        SECRET_KEY="bench", MESSAGING_REDIS_URL=os.environ["BENCH_REDIS_URL"]
    )
    messaging.init_app(app)
    return app
