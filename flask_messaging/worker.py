"""RQ workers that run handlers inside the Flask app."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from types import FrameType
from typing import Any, TypeVar

from flask import Flask
from rq import SimpleWorker, Worker
from rq.worker import BaseWorker

from .dispatch import MessagingJob
from .extension import get_state
from .serializer import JSONSerializer

__all__ = ["ForkingMessagingWorker", "MessagingWorker", "make_worker", "run_workers"]

W = TypeVar("W", bound=BaseWorker)


class _AppContextMixin:
    """Runs each job inside an app context, as a request would be."""

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        self.app = app
        super().__init__(*args, **kwargs)

    def perform_job(self, *args: Any, **kwargs: Any) -> Any:
        with self.app.app_context():
            return super().perform_job(*args, **kwargs)  # type: ignore[misc]


class MessagingWorker(_AppContextMixin, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job.

    A fork per job costs about four times the work of a trivial handler; a
    handler that leaks state or crashes the interpreter is the price. Use
    :class:`ForkingMessagingWorker` (``--fork``) for that isolation.
    """


class ForkingMessagingWorker(_AppContextMixin, Worker):
    """Forks a work horse per job, as ``rq worker`` does."""


def make_worker(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    fork: bool = False,
    name: str | None = None,
    worker_class: type[W] | None = None,
    **kwargs: Any,
) -> W:
    """Build a worker for ``app`` on ``queues`` (default ``MESSAGING_QUEUES``).

    Only jobs of this package run: every job is fetched as a
    :class:`~flask_messaging.dispatch.MessagingJob` and decoded as JSON.
    """
    state = get_state(app)
    cls: type[Any] = worker_class or (
        ForkingMessagingWorker if fork else MessagingWorker
    )
    worker: W = cls(
        list(queues or state.queue_names()),
        name=name,
        connection=state.redis,
        job_class=MessagingJob,
        serializer=JSONSerializer,
        default_result_ttl=state.settings.jobs.result_ttl,
        app=app,
        **kwargs,
    )
    return worker


def run_workers(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    processes: int = 1,
    burst: bool = False,
    with_scheduler: bool = True,
    fork: bool = False,
    max_jobs: int | None = None,
    logging_level: str = "INFO",
) -> int:
    """Run ``processes`` workers until they stop; return an exit status.

    SIGTERM or SIGINT asks each worker for a warm shutdown: it finishes the
    job in hand, then exits. A second one stops it at once.
    """
    work_kwargs: dict[str, Any] = {
        "burst": burst,
        "with_scheduler": with_scheduler,
        "max_jobs": max_jobs,
        "logging_level": logging_level,
    }
    if processes == 1:
        make_worker(app, queues, fork=fork).work(**work_kwargs)
        return 0

    # One worker per child process; the parent only relays signals and waits.
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(
            target=_child, args=(app, queues, fork, work_kwargs), name=f"worker-{n}"
        )
        for n in range(processes)
    ]
    for child in children:
        child.start()

    def relay(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    previous = {
        sig: signal.signal(sig, relay) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        for child in children:
            child.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((child.exitcode or 0) for child in children)


def _child(
    app: Flask, queues: Sequence[str], fork: bool, work_kwargs: dict[str, Any]
) -> None:
    # The parent's Redis connections must not be shared: a fresh client.
    state = get_state(app)
    state.__dict__.pop("redis", None)
    make_worker(app, queues, fork=fork).work(**work_kwargs)
