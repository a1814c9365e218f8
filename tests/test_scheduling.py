"""Scheduler locks: what RQ does with them, and when a worker takes one over.

Whole workers leaving are in ``tests/reliability/test_scheduling.py``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from redis import Redis
from rq.scheduler import RQScheduler

from flask_messaging._rq.scheduling import (
    STALE_AFTER,
    keep_scheduling,
    release_stale_locks,
)

QUEUES = ["high", "low"]


@pytest.fixture
def redis(real_redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(real_redis_url)
    yield client
    client.close()


def scheduler(redis: Redis) -> RQScheduler:
    return RQScheduler(QUEUES, connection=redis)


def test_rq_names_each_queue_lock_and_gives_it_interval_plus_60_seconds(
    redis: Redis,
) -> None:
    # The assumptions release_stale_locks makes about RQ's locks.
    holder = scheduler(redis)
    assert holder.acquire_locks() == set(QUEUES)
    for name in QUEUES:
        key = f"rq:scheduler-lock:{name}"
        assert RQScheduler.get_locking_key(name) == key
        assert redis.get(key) == holder.name.encode()
        assert (
            (holder.interval + 59) * 1000
            < redis.pttl(key)
            <= (holder.interval + 60) * 1000
        )
    # Its heartbeat renews them to the full time again.
    redis.pexpire("rq:scheduler-lock:high", 1000)
    holder.heartbeat()
    assert redis.pttl("rq:scheduler-lock:high") > (holder.interval + 59) * 1000


def test_a_lock_not_renewed_for_a_while_is_released_and_taken(redis: Redis) -> None:
    holder, contender = scheduler(redis), scheduler(redis)
    holder.acquire_locks()
    assert release_stale_locks(contender) == []  # renewed just now
    assert contender.acquire_locks() == set()

    # "high" last renewed STALE_AFTER + 1 s ago: its holder is gone.
    stale_ttl = (holder.interval + 60 - STALE_AFTER - 1) * 1000
    redis.pexpire("rq:scheduler-lock:high", stale_ttl)
    assert release_stale_locks(contender) == ["high"]
    assert contender.acquire_locks() == {"high"}
    assert redis.get("rq:scheduler-lock:low") == holder.name.encode()

    # The holder's next renewal finds it taken and lets it go.
    holder.heartbeat()
    assert holder.acquired_locks == {"low"}


def test_a_scheduler_never_releases_its_own_lock_as_stale(redis: Redis) -> None:
    holder = scheduler(redis)
    holder.acquire_locks()
    redis.pexpire("rq:scheduler-lock:high", 1000)
    assert release_stale_locks(holder) == []
    assert holder.acquire_locks() == set(QUEUES)  # refreshed, still its own


def test_keep_scheduling_starts_the_scheduler_only_when_a_lock_is_free(
    redis: Redis,
) -> None:
    holder, waiting = scheduler(redis), scheduler(redis)
    holder.acquire_locks()
    assert keep_scheduling(waiting) is False  # every lock held by a live one
    assert waiting._process is None

    holder.release_locks()  # as a warm shutdown does
    assert keep_scheduling(waiting) is True
    process = waiting._process
    assert process is not None
    try:
        assert waiting.acquired_locks == set(QUEUES)
        assert keep_scheduling(waiting) is True  # running: nothing to do
        assert waiting._process is process
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
