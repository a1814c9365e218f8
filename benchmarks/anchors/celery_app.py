"""Celery's side of the concurrency benchmark: a Redis broker, one task per job.

Loaded by ``celery -A benchmarks.anchors.celery_app worker`` and by the
harness, which sends from it. Configured from the environment:
``BENCH_REDIS_URL``.

``task_acks_late``: a job is acknowledged once it has run, as RQ, Dramatiq and
ours do, so that a worker that dies mid-job loses nothing (Celery's default
acknowledges a job when it is received, before it runs). No result backend,
results ignored: none of the others stores a return value here either. The
prefetch is Celery's default (4 messages per thread).
"""

from __future__ import annotations

import os

from celery import Celery

from .. import stamps

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task
def noop(n: int) -> None:
    stamps.noop_job(n)


@app.task
def sleep(n: int) -> None:
    stamps.sleep_job(n)
