"""Building the worker ``flask messaging worker`` runs: :func:`make_worker`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from flask import Flask
from rq.worker import BaseWorker

from ..state import get_state
from .dequeue import MessagingQueue
from .objects import RQObjects
from .threaded import ThreadedMessagingWorker
from .workers import ForkingMessagingWorker, MessagingWorker

__all__ = ["make_worker"]

W = TypeVar("W", bound=BaseWorker)


def make_worker(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    fork: bool = False,
    threads: int = 1,
    name: str | None = None,
    worker_class: type[W] | None = None,
    **kwargs: Any,
) -> W:
    """Build a worker for ``app`` on ``queues`` (default ``MESSAGING_QUEUES``).

    Only jobs of this package run: every job is fetched as a
    :class:`~flask_messaging._rq.job.MessagingJob` bounded by
    ``MESSAGING_MAX_MESSAGE_BYTES`` and decoded as JSON; a fault of one job
    fails that job, not the worker (:mod:`flask_messaging._rq.job_faults`).

    :param fork: a work horse process per job
        (:class:`~flask_messaging._rq.workers.ForkingMessagingWorker`).
    :param threads: jobs in hand at once; above 1, a
        :class:`~flask_messaging._rq.threaded.ThreadedMessagingWorker`.
    :raises ValueError: ``threads`` below 1, or above 1 with ``fork``.
    """
    if threads < 1:
        raise ValueError(f"A worker runs 1 thread or more, not {threads}.")
    if fork and threads > 1:
        raise ValueError(
            "A forking worker runs one job at a time, in its work horse: use"
            " --threads 1 with --fork, or --threads without --fork."
        )
    state = get_state(app)
    objects = RQObjects.of(state)
    cls: Any
    if worker_class is not None:
        cls = worker_class
    elif threads > 1:
        cls = ThreadedMessagingWorker
        kwargs["threads"] = threads
        kwargs.setdefault("async_limit", state.settings.worker_async_limit)
    else:
        cls = ForkingMessagingWorker if fork else MessagingWorker
    worker = cls(
        list(queues or state.queue_names()),
        name=name,
        connection=objects.connection,
        job_class=objects.job_class,
        queue_class=MessagingQueue,
        serializer=objects.serializer,
        default_result_ttl=state.settings.jobs.result_ttl,
        app=app,
        **kwargs,
    )
    return worker  # type: ignore[no-any-return]
