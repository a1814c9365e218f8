"""Worker drain of trivial jobs: ``rq worker`` (forking, simple), Flask-RQ's, ours."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.worker import BaseWorker

from flask_messaging import Message, Messaging
from flask_messaging.state import get_state
from flask_messaging.worker import MessagingWorker, make_worker

from ._support import Row, rate, redis_server

ROOT = Path(__file__).resolve().parent.parent


def noop(n: int) -> None:
    """The anchor's job."""


@dataclass(frozen=True)
class Tick(Message, name="bench.tick"):
    n: int


def on_tick(event: Tick) -> None:
    """Our handler."""


def _fill_rq(connection: Redis, count: int) -> Queue:
    connection.flushdb()
    queue = Queue("default", connection=connection)
    for start in range(0, count, 500):
        queue.enqueue_many(
            [Queue.prepare_data(noop, args=(n,)) for n in range(start, start + 500)]
        )
    return queue


def _burst(worker: BaseWorker, count: int) -> float:
    """Jobs per second of ``worker`` draining ``count`` queued jobs."""
    return rate(count, lambda: worker.work(burst=True, logging_level="WARNING"))


def run(
    repeat: int, count: int = 2000, fork_count: int = 200, flask_rq_count: int = 30
) -> list[Row]:
    with redis_server() as url:
        connection = Redis.from_url(url)
        app = Flask("bench")
        app.config.update(SECRET_KEY="bench", MESSAGING_REDIS_URL=url)
        Messaging(app)
        state = get_state(app)
        state.broker.subscribe_async(Tick, on_tick)

        def fill_ours(n: int) -> None:
            connection.flushdb()
            for i in range(n):
                state.broker.publish(Tick(i))

        def drain_rq(worker_class: type[BaseWorker], n: int) -> float:
            queue = _fill_rq(connection, n)
            return _burst(worker_class([queue], connection=connection), n)

        def drain_ours(n: int) -> float:
            fill_ours(n)
            worker: MessagingWorker = make_worker(app, ["default"])
            return _burst(worker, n)

        simple, forking, ours, ours_small = [], [], [], []
        for _ in range(repeat):
            simple.append(drain_rq(SimpleWorker, count))
            ours.append(drain_ours(count))
            forking.append(drain_rq(Worker, fork_count))
            ours_small.append(drain_ours(fork_count))
        rows = [
            Row(
                f"worker drain, {count:,} trivial jobs, 1 process",
                "jobs/s",
                "rq SimpleWorker",
                simple,
                ours,
                target=2.0,
            ),
            Row(
                f"worker drain, {fork_count:,} trivial jobs, 1 process",
                "jobs/s",
                "rq Worker (fork per job)",
                forking,
                ours_small,
                target=3.0,
            ),
        ]
        flask_rq = _flask_rq(repeat, flask_rq_count, url, connection)
        if flask_rq is not None:
            ours_tiny = [drain_ours(flask_rq_count) for _ in range(repeat)]
            rows.append(
                Row(
                    f"worker drain, {flask_rq_count:,} trivial jobs, 1 process",
                    "jobs/s",
                    "Flask-RQ worker (process per job)",
                    flask_rq,
                    ours_tiny,
                    target=20.0,
                )
            )
        connection.close()
    return rows


def _flask_rq(
    repeat: int, count: int, url: str, connection: Redis
) -> list[float] | None:
    """Drain rates of Flask-RQ 1.0's worker, or None when it is not installed.

    Its worker runs every job in a new ``flask rq work-horse`` process that
    loads the app: the cost measured here, as a Flask-RQ user pays it.
    """
    try:
        from .flask_rq_app import create_app, noop, rq
    except ImportError:
        print(
            "Skipping the Flask-RQ worker drain: install flask-messaging[bench].",
            file=sys.stderr,
        )
        return None
    results = []
    with _environment(
        BENCH_RQ_URL=url,
        # How the work horses find the app: the worker was not started by
        # ``flask rq worker``.
        FLASK_APP="benchmarks.flask_rq_app:create_app",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    ):
        app = create_app()
        with app.app_context():
            for _ in range(repeat):
                connection.flushdb()
                for n in range(count):
                    noop.enqueue(n)
                results.append(_burst(rq.make_worker(["default"]), count))
                finished = rq.queue.finished_job_registry.count
                if finished != count:
                    raise RuntimeError(f"Flask-RQ finished {finished} of {count} jobs.")
    return results


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
