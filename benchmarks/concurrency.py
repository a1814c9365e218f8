"""Worker concurrency: ours against Dramatiq, Celery and RQ, jobs that wait or not.

The method, the same for every system: fill the queue with all the jobs while
no worker runs; start the system's own worker command as a subprocess, with
the same processes and threads on every side; each job (``benchmarks.stamps``,
the same functions everywhere) pushes its start and end time to Redis in one
``RPUSH``; once every job has, SIGTERM the worker and wait for it. The rate is
``jobs / (last end - first start)``, so process start-up is not counted. A job
missing or run twice fails the run. Everything runs on one private
redis-server, flushed between measurements.

The workers, as started here:

- ours: ``flask messaging worker --processes P --threads T --logging-level
  WARNING --no-relay``, otherwise its defaults (RQ's scheduler included).
- Dramatiq: ``dramatiq --processes P --threads T``, its Redis broker and
  default middleware, a prefetch of 2 x threads (its default).
- Celery: ``celery worker --pool threads --concurrency T --loglevel WARNING
  --without-gossip --without-mingle --without-heartbeat``. Gossip, mingle and
  heartbeats keep workers informed of each other, which no other system here
  does; turning them off only spares Celery work. No ``-O``: it tunes how the
  prefork pool hands jobs to its children, and the threads pool has none.
  Jobs are acknowledged late (``task_acks_late``), after they run, the
  guarantee the others give; prefetch is the default, 4 per thread. See
  ``benchmarks/anchors/celery_app.py``.
- RQ: ``rq worker --worker-class rq.worker.SimpleWorker``: one job at a time
  in the worker's process (RQ has no threads).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from importlib import import_module
from types import ModuleType

from flask import Flask
from redis import Redis
from rq import Queue

from flask_messaging import Message
from flask_messaging.state import get_state
from flask_messaging.testing import TestBroker

from . import stamps
from ._support import Row, drain_rate, redis_server
from .concurrency_app import AsyncSleep, Noop, Sleep, create_app

#: Jobs per measurement.
COUNT = 2000
#: Trivial jobs for the two-process row: at thousands of jobs per second,
#: 2,000 would be over in a fraction of a second.
MANY = 5000
THREADS = 8

Fill = Callable[[int], None]


def run(repeat: int) -> list[Row]:
    with redis_server() as url:
        # Read by the apps: ours here, the anchors' when imported.
        os.environ["BENCH_REDIS_URL"] = url
        app = create_app()
        dramatiq_app = _anchor("dramatiq", "benchmarks.anchors.dramatiq_app")
        celery_app = _anchor("celery", "benchmarks.anchors.celery_app")
        awaits = _awaits_coroutines(app, url, AsyncSleep)

        results: dict[str, list[float]] = {}

        def measure(key: str, rate: float) -> None:
            results.setdefault(key, []).append(rate)

        for _ in range(repeat):
            measure("ours sleep", _ours(app, url, Sleep, COUNT, 1, THREADS))
            if awaits:
                measure("ours async", _ours(app, url, AsyncSleep, COUNT, 1, THREADS))
            measure("rq sleep", _rq(url, stamps.sleep_job, COUNT))
            if dramatiq_app is not None:
                sleep = dramatiq_app.sleep.send
                measure("dramatiq sleep", _dramatiq(url, sleep, COUNT, 1, THREADS))
                noop = dramatiq_app.noop.send
                measure("dramatiq 2x8", _dramatiq(url, noop, MANY, 2, THREADS))
                measure("ours 2x8", _ours(app, url, Noop, MANY, 2, THREADS))
            if celery_app is not None:
                measure("celery sleep", _celery(url, celery_app.sleep.delay, COUNT))
    return _rows(results)


def _rows(results: dict[str, list[float]]) -> list[Row]:
    """The rows whose two sides were both measured (an anchor may be missing)."""
    sleeping = f"{COUNT:,} jobs sleeping 20 ms, 1 process x {THREADS} threads"
    rows = [
        # name, anchor's name, anchor's results, ours, target
        (sleeping, "Dramatiq", "dramatiq sleep", "ours sleep", 1.0),
        (sleeping, "Celery (threads pool)", "celery sleep", "ours sleep", 1.0),
        (
            f"{COUNT:,} jobs sleeping 20 ms, ours 1 process x {THREADS} threads",
            "rq SimpleWorker (1 process, 1 job at a time)",
            "rq sleep",
            "ours sleep",
            5.0,
        ),
        (
            f"{COUNT:,} async jobs awaiting 20 ms, 1 process x {THREADS} threads",
            "ours, sync jobs sleeping 20 ms",
            "ours sleep",
            "ours async",
            1.0,
        ),
        (
            f"{MANY:,} trivial jobs, 2 processes x {THREADS} threads",
            "Dramatiq",
            "dramatiq 2x8",
            "ours 2x8",
            None,
        ),
    ]
    return [
        Row(name, "jobs/s", anchor, results[theirs], results[ours], target)
        for name, anchor, theirs, ours, target in rows
        if theirs in results and ours in results
    ]


def _ours(
    app: Flask,
    url: str,
    message: Callable[[int], Message],
    count: int,
    processes: int,
    threads: int,
) -> float:
    broker = get_state(app).broker
    for n in range(count):
        broker.publish(message(n))
    command = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "benchmarks.concurrency_app:create_app",
        "messaging",
        "worker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--logging-level",
        "WARNING",
        "--no-relay",
    ]
    return drain_rate("flask-messaging", command, url, count)


def _dramatiq(url: str, send: Fill, count: int, processes: int, threads: int) -> float:
    for n in range(count):
        send(n)
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "benchmarks.anchors.dramatiq_app",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    return drain_rate("Dramatiq", command, url, count)


def _celery(url: str, delay: Fill, count: int) -> float:
    for n in range(count):
        delay(n)
    command = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "benchmarks.anchors.celery_app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(THREADS),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    return drain_rate("Celery", command, url, count)


def _rq(url: str, job: Callable[[int], None], count: int) -> float:
    with Redis.from_url(url) as connection:
        queue = Queue("default", connection=connection)
        for start in range(0, count, 500):
            batch = range(start, min(start + 500, count))
            queue.enqueue_many([Queue.prepare_data(job, args=(n,)) for n in batch])
    command = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "--url",
        url,
        "--logging_level",
        "WARNING",
        "default",
    ]
    return drain_rate("RQ", command, url, count)


def _anchor(package: str, module: str) -> ModuleType | None:
    """The anchor's app module, or None (and a skip line) without its package."""
    try:
        import_module(package)
    except ImportError:
        print(
            f"Skipping the {package.capitalize()} rows: install"
            " flask-messaging[bench].",
            file=sys.stderr,
        )
        return None
    return import_module(module)


def _awaits_coroutines(app: Flask, url: str, message: Callable[[int], Message]) -> bool:
    """Whether our async subscribers may be ``async def`` (a skip line if not).

    One message through the test broker, which runs async subscribers as a
    worker does: an ``async def`` handler that is called but not awaited
    leaves no stamp.
    """
    broker = TestBroker.from_app(app)
    failure = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited"
        try:
            broker.publish(message(0))
            broker.process_messages()
        except Exception as exc:
            failure = exc
    with Redis.from_url(url) as redis:
        ran = int(redis.llen(stamps.STAMPS)) == 1
        redis.flushdb()
    if not ran:
        print(
            "Skipping the async jobs row: this flask-messaging does not run"
            f" async def subscribers{f' ({failure})' if failure else ''}.",
            file=sys.stderr,
        )
    return ran
