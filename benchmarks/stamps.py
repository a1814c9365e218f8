"""The jobs of the concurrency benchmark, and how each one records itself.

Every system runs these same functions from its own task or handler, so that
the work and its recording are identical: one ``RPUSH`` to ``STAMPS`` of
``"<n> <start> <end>"`` (``time.time()`` before and after the work), one
Redis round trip per job. Worker processes find the server in
``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import time
from functools import cache

from redis import Redis

#: The list every job pushes its stamp to.
STAMPS = "bench:stamps"

#: How long a sleeping job sleeps, in seconds.
SLEEP = 0.02


@cache
def _client() -> Redis:
    # One client per process, shared by its threads (redis-py's pool is
    # thread-safe); made at the first job, once the environment is set.
    return Redis.from_url(os.environ["BENCH_REDIS_URL"])


def record(n: int, started: float) -> None:
    """Push job ``n``'s stamp: it started at ``started`` and ends now."""
    _client().rpush(STAMPS, f"{n} {started!r} {time.time()!r}")


def noop_job(n: int) -> None:
    """A job that does nothing but record itself."""
    record(n, time.time())


def sleep_job(n: int) -> None:
    """A job that blocks its thread for ``SLEEP`` seconds."""
    started = time.time()
    time.sleep(SLEEP)
    record(n, started)


async def async_sleep_job(n: int) -> None:
    """A coroutine that awaits ``SLEEP`` seconds.

    The recording is the same blocking call as the other jobs': one round
    trip to a local server, short enough not to matter to the event loop.
    """
    started = time.time()
    await asyncio.sleep(SLEEP)
    record(n, started)
