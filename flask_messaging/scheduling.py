"""RQ's scheduler, kept running while any worker of a queue lives.

One scheduler per queue moves due retries (``Retry(interval=...)``) back onto
the queue: the worker whose scheduler holds the queue's lock,
``rq:scheduler-lock:<queue>``. RQ's scheduler renews that lock every second
and gives it ``interval + 60`` seconds to live; the other workers only try
for it in their maintenance, every ten minutes. So when the holder left
(SIGTERM, ``kill -9``, a lost machine), retries waited ten minutes or more.

Our workers look at the locks every :data:`CHECK_INTERVAL` seconds while
idle (:func:`keep_scheduling`): a free lock is taken at once, and a lock
that has not been renewed for :data:`STALE_AFTER` seconds (its holder is
gone or stuck) is released first. A stuck holder that comes back finds the
lock taken and stops scheduling that queue (RQ's scheduler checks its
ownership on every renewal), so a queue never has two schedulers for long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lua import LuaScript

if TYPE_CHECKING:
    from rq.scheduler import RQScheduler

__all__ = ["CHECK_INTERVAL", "STALE_AFTER", "keep_scheduling", "release_stale_locks"]

#: Seconds between an idle worker's looks at the scheduler locks.
CHECK_INTERVAL = 2

#: Seconds without renewal after which a scheduler lock is released. RQ's
#: scheduler renews its locks every second.
STALE_AFTER = 10

# KEYS: a scheduler lock. ARGV: our scheduler's name; the lock's remaining
# time to live, in ms, below which it has not been renewed for STALE_AFTER.
# Releases the lock of another scheduler that stopped renewing it.
_RELEASE_STALE = LuaScript("""
local owner = redis.call('GET', KEYS[1])
if not owner or owner == ARGV[1] then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
""")


def release_stale_locks(scheduler: RQScheduler) -> list[str]:
    """Release the locks of ``scheduler``'s queues whose holder stopped renewing.

    A lock lives ``scheduler.interval + 60`` seconds from its last renewal
    (RQ's scheduler, 2.x and 3.x), so one with less than that minus
    :data:`STALE_AFTER` left was last renewed longer ago than that.

    :return: the names of the queues whose lock was released.
    """
    below_ms = int((scheduler.interval + 60 - STALE_AFTER) * 1000)
    released = []
    for name in sorted(scheduler._queue_names):
        key = scheduler.get_locking_key(name)
        if _RELEASE_STALE.run(scheduler.connection, [key], [scheduler.name, below_ms]):
            released.append(name)
    return released


def keep_scheduling(scheduler: RQScheduler) -> bool:
    """Start ``scheduler`` if it is not running and a lock of its is free.

    Called in the worker process that made ``scheduler`` (RQ's
    ``worker.scheduler``). Stale locks are released first
    (:func:`release_stale_locks`).

    :return: whether the scheduler runs now.
    """
    process = scheduler._process
    if process is not None and process.is_alive():
        return True
    release_stale_locks(scheduler)
    scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]
    process = scheduler._process
    return process is not None and process.is_alive()
