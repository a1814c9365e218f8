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

from ..lua import LuaScript

if TYPE_CHECKING:
    from rq.scheduler import RQScheduler

__all__ = ["CHECK_INTERVAL", "STALE_AFTER", "keep_scheduling", "release_stale_locks"]

#: Seconds between an idle worker's looks at the scheduler locks.
CHECK_INTERVAL = 2

#: Seconds without renewal after which a scheduler lock is released. RQ's
#: scheduler renews its locks every second.
STALE_AFTER = 10

# KEYS: the scheduler locks of a worker's queues. ARGV: its scheduler's
# name; the remaining time to live, in ms, below which a lock has not been
# renewed for STALE_AFTER. Releases the locks of other schedulers that
# stopped renewing them. Per lock: 0 held by a live scheduler, 1 free or
# ours, 2 released now.
_LOOK_AT_LOCKS = LuaScript("""
local states = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if not owner or owner == ARGV[1] then
    states[i] = 1
  else
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 and ttl < tonumber(ARGV[2]) then
      redis.call('DEL', key)
      states[i] = 2
    else
      states[i] = 0
    end
  end
end
return states
""")

HELD, FREE, RELEASED = 0, 1, 2


def _look_at_locks(scheduler: RQScheduler) -> dict[str, int]:
    """Release stale locks of ``scheduler``'s queues; each queue's lock state.

    A lock lives ``scheduler.interval + 60`` seconds from its last renewal
    (RQ's scheduler, 2.x and 3.x), so one with less than that minus
    :data:`STALE_AFTER` left was last renewed longer ago than that.
    """
    names = sorted(scheduler._queue_names)
    below_ms = int((scheduler.interval + 60 - STALE_AFTER) * 1000)
    keys = [scheduler.get_locking_key(name) for name in names]
    states = _LOOK_AT_LOCKS.run(scheduler.connection, keys, [scheduler.name, below_ms])
    return dict(zip(names, states, strict=True))


def release_stale_locks(scheduler: RQScheduler) -> list[str]:
    """Release the locks of ``scheduler``'s queues whose holder stopped renewing.

    :return: the names of the queues whose lock was released.
    """
    return [n for n, state in _look_at_locks(scheduler).items() if state == RELEASED]


def keep_scheduling(scheduler: RQScheduler) -> bool:
    """Start ``scheduler`` if it is not running and a lock of its is free.

    Called in the worker process that made ``scheduler`` (RQ's
    ``worker.scheduler``). Stale locks are released first. While live
    schedulers hold every lock this costs one round trip.

    :return: whether the scheduler runs now.
    """
    process = scheduler._process
    if process is not None and process.is_alive():
        return True
    if all(state == HELD for state in _look_at_locks(scheduler).values()):
        return False
    scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]
    process = scheduler._process
    return process is not None and process.is_alive()
