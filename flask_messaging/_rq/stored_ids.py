"""Job ids read from Redis lists and sorted sets, with bounded work.

RQ decodes every id it reads from a queue, an intermediate list or a
registry as strict UTF-8, in the middle of its loops: one entry of other
bytes (written by anyone who can write to Redis) raises there and stops
the worker's take, its clean-up of every later queue, the scheduler, or a
requeue. Such an entry names no job RQ could read; it cannot be recorded in
the failed registry either (every reader of that registry would stop on
it). :func:`purge_ids` removes those entries from where they are, each
logged with its key, before anything of RQ reads the key; it also reports
a key of another type than RQ writes there, which no read can use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..lua import LuaScript
from .redis_entries import decoded

if TYPE_CHECKING:
    from redis import Redis

__all__ = [
    "PURGE_CHUNK",
    "PURGE_LIMIT",
    "Purged",
    "log_wrong_type",
    "purge_ids",
]

logger = logging.getLogger("flask_messaging")

#: Entries checked per script run (one round trip, the server busy for
#: about a millisecond).
PURGE_CHUNK = 1000

#: Most entries of one key checked per pass: the work of one clean-up pass
#: stays bounded whatever a key holds; the rest is checked at the next pass.
PURGE_LIMIT = 100_000

# Any byte string that is not one (an id never holds a NUL byte).
_REMOVED = "\0flask-messaging-removed\0"

# KEYS: the key. ARGV: the type RQ writes there ("list" or "zset"), the
# first index, how many entries to check, and a job key prefix (empty: keep
# ids whose job is gone). Removes each entry that is not UTF-8 (and, with a
# prefix, each id whose job key does not exist) and returns
# {type, entries checked, entries removed...}; only {type} when the key is
# of another type.
_PURGE = LuaScript("""
local function utf8_ok(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 128 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 194 and c <= 223 then len, lo, hi = 1, 128, 191
      elseif c == 224 then len, lo, hi = 2, 160, 191
      elseif c == 237 then len, lo, hi = 2, 128, 159
      elseif c >= 225 and c <= 239 then len, lo, hi = 2, 128, 191
      elseif c == 240 then len, lo, hi = 3, 144, 191
      elseif c >= 241 and c <= 243 then len, lo, hi = 3, 128, 191
      elseif c == 244 then len, lo, hi = 3, 128, 143
      else return false end
      if i + len > n then return false end
      local c2 = string.byte(s, i + 1)
      if c2 < lo or c2 > hi then return false end
      for j = i + 2, i + len do
        local cj = string.byte(s, j)
        if cj < 128 or cj > 191 then return false end
      end
      i = i + len + 1
    end
  end
  return true
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= ARGV[1] then
  return {kind}
end
local first = tonumber(ARGV[2])
local last = first + tonumber(ARGV[3]) - 1
local entries
if kind == 'list' then
  entries = redis.call('LRANGE', KEYS[1], first, last)
else
  entries = redis.call('ZRANGE', KEYS[1], first, last)
end
local removed = {}
for i, entry in ipairs(entries) do
  local bad = string.find(entry, '[\\128-\\255]') and not utf8_ok(entry)
  if not bad and ARGV[4] ~= '' then
    bad = redis.call('EXISTS', ARGV[4] .. entry) == 0
  end
  if bad then
    removed[#removed + 1] = entry
    if kind == 'list' then
      redis.call('LSET', KEYS[1], first + i - 1, ARGV[5])
    else
      redis.call('ZREM', KEYS[1], entry)
    end
  end
end
if kind == 'list' and #removed > 0 then
  redis.call('LREM', KEYS[1], 0, ARGV[5])
end
local reply = {kind, #entries}
for _, entry in ipairs(removed) do
  reply[#reply + 1] = entry
end
return reply
""")


@dataclass
class Purged:
    """What :func:`purge_ids` did to one key."""

    #: The key's type when it is not the one RQ writes there, else ``None``.
    wrong_type: str | None = None
    #: Entries that were not UTF-8, as stored (removed).
    undecodable: list[bytes] = field(default_factory=list)
    #: Ids whose job was gone (removed; only when asked).
    ghosts: int = 0
    #: Whether every entry was checked (``False``: the rest next pass).
    complete: bool = True


def purge_ids(
    connection: Redis,
    key: str,
    kind: str,
    *,
    job_prefix: str = "",
    limit: int = PURGE_LIMIT,
) -> Purged:
    """Remove the entries of list or sorted set ``key`` that are not UTF-8.

    Each is logged with ``key`` as an error. At most ``limit`` entries are
    checked, :data:`PURGE_CHUNK` a round trip.

    :param kind: ``"list"`` or ``"zset"``, the type RQ writes at ``key``. A
        key of another type is left as it is and reported (see
        :func:`log_wrong_type`); a missing key is nothing to do.
    :param job_prefix: when given, also remove each id whose job key
        (``job_prefix`` + id) does not exist: nothing is left to run or
        fail (the intermediate lists, where RQ's clean-up would read each).
    """
    purged = Purged()
    first = 0
    checked = 0
    while checked < limit:
        count = min(PURGE_CHUNK, limit - checked)
        reply = _PURGE.run(
            connection, [key], [kind, first, count, job_prefix, _REMOVED]
        )
        found = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if found != kind:
            if found != "none":
                purged.wrong_type = found
                log_wrong_type(key, found, kind)
            return purged
        scanned = int(reply[1])
        removed: list[bytes] = list(reply[2:])
        for entry in removed:
            if decoded(entry) is None:
                purged.undecodable.append(entry)
                logger.error(
                    "Removed %r from %s: it is not UTF-8, so it names no job"
                    " (written there by someone else).",
                    entry[:200],
                    key,
                )
            else:
                purged.ghosts += 1
        checked += scanned
        first += scanned - len(removed)
        if scanned < count:
            break
    else:
        purged.complete = False
    if purged.ghosts:
        logger.warning(
            "Removed %d ids of jobs that no longer exist from %s.", purged.ghosts, key
        )
    return purged


#: Seconds between two logs of the same key of the wrong type.
_LOG_EVERY = 60.0
_logged_at: dict[str, float] = {}


def log_wrong_type(key: str, found: str, expected: str) -> None:
    """Log, once a minute at most per key, that ``key`` is of another type.

    The message names the key, what it should be, and the fix.
    """
    now = time.monotonic()
    last = _logged_at.get(key)
    if last is not None and now - last < _LOG_EVERY:
        return
    _logged_at[key] = now
    logger.error(
        "Redis key %s is a %s, where RQ keeps a %s (written there by someone"
        " else?): its queue is skipped until it is fixed. Look at it, then"
        " delete it (DEL %s); workers go on with it from the next take.",
        key,
        found,
        expected,
        key,
    )
