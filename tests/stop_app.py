"""The worker app, in a worker that is sent SIGTERM as its first take returns.

The stop arrives after Redis moved the jobs onto the intermediate list and
before the worker started them: the span in which a stop raised at once
left them there until RQ's clean-up failed them, minutes later.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from flask import Flask

from flask_messaging._rq.dequeue import MessagingQueue, Taken

from . import worker_app

_take = MessagingQueue.take.__func__  # type: ignore[attr-defined]
_sent = False


def _take_then_stop(cls: type[MessagingQueue], *args: Any, **kwargs: Any) -> Taken:
    global _sent
    taken: Taken = _take(cls, *args, **kwargs)
    if taken.jobs and not _sent:
        _sent = True
        os.kill(os.getpid(), signal.SIGTERM)
    return taken


def create_app() -> Flask:
    MessagingQueue.take = classmethod(_take_then_stop)  # type: ignore[assignment,method-assign]
    return worker_app.create_app()
