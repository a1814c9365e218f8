"""Dramatiq's side of the concurrency benchmark: its Redis broker, one actor per job.

Loaded by ``dramatiq benchmarks.anchors.dramatiq_app`` and by the harness,
which sends from it. Configured from the environment: ``BENCH_REDIS_URL``.
Dramatiq's defaults otherwise: its default middleware (retries, time and age
limits), a prefetch of twice the threads.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .. import stamps

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor
def noop(n: int) -> None:
    stamps.noop_job(n)


@dramatiq.actor
def sleep(n: int) -> None:
    stamps.sleep_job(n)
