"""The worker app, plus a handler that ends the process it runs in."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from flask import Flask

from flask_messaging import Message
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state

from . import worker_app


@dataclass(frozen=True)
class Exit(Message, name="tests.exit"):
    #: "kill": SIGKILL its own process; "exit0": ``os._exit(0)``; "hang":
    #: hold the process for a minute, as a long job does.
    how: str


def on_exit(event: Exit) -> None:
    if event.how == "hang":
        time.sleep(60)
        return
    if event.how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


def subscribe(app: Flask) -> Flask:
    get_state(app).broker.subscribe_async(Exit, on_exit, queue_name=LOW_PRIORITY)
    return app


def create_app() -> Flask:
    return subscribe(worker_app.create_app())
