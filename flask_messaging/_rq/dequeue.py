"""Taking jobs off queues with no moment where a dying worker loses one.

RQ takes a job off several queues with ``BLPOP``: between the pop and the
job's entry in the started registry, the id is in no Redis structure at all,
and a worker that dies there (``kill -9``, a lost machine, a reply lost on
its way back) loses the job for good (rq#2236). Only a worker on a single
queue is safe: it moves the id to the queue's intermediate list with
``BLMOVE``, and RQ's maintenance fails (so retries) a job left there.

:class:`MessagingQueue` gives every worker, on any number of queues, that
second behaviour: one Lua script moves the first waiting id, in priority
order, onto its queue's intermediate list. Redis cannot block on several
lists and move, so an idle worker blocks on a *wake list* per queue instead:
every push of a job through this class also pushes a token there. Pushes
that bypass it (RQ's scheduler, a requeue by RQ's own tools) wake no one
and are seen within :data:`WAKE_POLL` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.utils import as_text

from ..errors import InvalidJobError, JobTooLargeError
from ..lua import LuaScript
from .redis_entries import decoded
from .stored_ids import log_wrong_type

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.serializers import Serializer
    from rq.timeouts import BaseDeathPenalty

__all__ = [
    "WAKE_POLL",
    "MessagingQueue",
    "Taken",
    "Taker",
    "current_taker",
    "wake_key",
]

#: Longest wait, in seconds, for a job pushed without a wake token.
WAKE_POLL = 1

WAKE_PREFIX = "flask_messaging:wake:"

logger = logging.getLogger("flask_messaging")

_NO_BOUND = 2**53


def wake_key(queue_name: str) -> str:
    """The list an idle worker of ``queue_name`` blocks on."""
    return WAKE_PREFIX + queue_name


class Taker(Protocol):
    """The worker waiting in :meth:`MessagingQueue.dequeue_any`, told of each take.

    From a take's start to the start of the jobs it brings, those jobs are
    on the intermediate list only: a stop raised into the worker then
    (RQ raises ``StopRequested`` out of its signal handler whenever the
    worker is not busy) would leave them there until RQ's clean-up fails
    them, minutes later. The worker defers a stop in that span.
    """

    def taking(self) -> None:
        """A take is about to run: jobs may be in hand from now on."""

    def took_none(self) -> None:
        """The take brought no job, or failed: none is in hand.

        :raises rq.exceptions.StopRequested: a stop was asked meanwhile.
        """


#: The worker waiting for a job in this context (RQ calls ``dequeue_any``
#: with no reference to it); set by the worker around RQ's dequeue.
current_taker: ContextVar[Taker | None] = ContextVar("current_taker", default=None)


# KEYS: per queue, in priority order: the queue, its intermediate list, its
# wake list, its started and failed registries. ARGV: the job key prefix,
# the most fields and the most bytes of a field a job hash may hold, the most
# jobs to take. Takes waiting ids in priority order, each with one token of
# its queue, and returns {keys of another type, then per id taken: {queue
# key, job id, the job's hash, why it is refused ("" if not), "large" if
# refused for its size}}: the hash comes with the id (a round trip fewer per
# job) unless it is not a hash or too large to read. Every key this writes,
# or that handling the job writes, is checked for its type first: Redis does
# not undo the writes of a script that fails half-way, and a job popped then
# not pushed would be in no list at all. A queue with such a key is skipped.
# When no queue has a job, drops their tokens.
_TAKE = LuaScript("""
local wrong = {}
local function usable(key, kind, queue)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == kind then
    return true
  end
  wrong[#wrong + 1] = {key, found, kind, queue}
  return false
end
local function read(queue_key, job_id)
  local key = ARGV[1] .. job_id
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    return {queue_key, job_id, {}, '', ''}
  end
  if kind ~= 'hash' then
    return {queue_key, job_id, {}, 'its key is a ' .. kind ..
      ', not a job hash', ''}
  end
  local count = redis.call('HLEN', key)
  if count > tonumber(ARGV[2]) then
    return {queue_key, job_id, {}, 'its hash has ' .. count ..
      ' fields; flask-messaging jobs have at most ' .. ARGV[2], 'large'}
  end
  for _, name in ipairs(redis.call('HKEYS', key)) do
    local size = redis.call('HSTRLEN', key, name)
    if size > tonumber(ARGV[3]) then
      return {queue_key, job_id, {}, 'its field ' .. name .. ' holds ' ..
        size .. ' bytes, over the ' .. ARGV[3] ..
        ' that twice MESSAGING_MAX_MESSAGE_BYTES allows', 'large'}
    end
  end
  return {queue_key, job_id, redis.call('HGETALL', key), '', ''}
end
local usable_queues = {}
for i = 1, #KEYS, 5 do
  local ok = usable(KEYS[i], 'list', KEYS[i])
  ok = usable(KEYS[i + 1], 'list', KEYS[i]) and ok
  ok = usable(KEYS[i + 2], 'list', KEYS[i]) and ok
  ok = usable(KEYS[i + 3], 'zset', KEYS[i]) and ok
  ok = usable(KEYS[i + 4], 'zset', KEYS[i]) and ok
  usable_queues[i] = ok
end
local taken = {wrong}
local limit = tonumber(ARGV[4]) + 1
for i = 1, #KEYS, 5 do
  while usable_queues[i] and #taken < limit do
    local job_id = redis.call('LPOP', KEYS[i])
    if not job_id then
      break
    end
    redis.call('RPUSH', KEYS[i + 1], job_id)
    redis.call('LPOP', KEYS[i + 2])
    taken[#taken + 1] = read(KEYS[i], job_id)
  end
end
if #taken == 1 then
  for i = 1, #KEYS, 5 do
    if usable_queues[i] then
      redis.call('DEL', KEYS[i + 2])
    end
  end
end
return taken
""")


class Taken(NamedTuple):
    """What one take found."""

    #: Per job taken, the job (or why it is refused, see
    #: :meth:`MessagingQueue.take`) and its queue.
    jobs: list[tuple[Job | Exception, Queue]]
    #: Keys of the queues skipped for a key of another type (logged).
    skipped: set[str]
    #: How many ids were taken off the queues, including those that named
    #: no job.
    popped: int


class MessagingQueue(Queue):
    """An RQ queue whose workers never hold a job outside Redis's lists."""

    @property
    def wake_key(self) -> str:
        return wake_key(self.name)

    def push_job_id(
        self, job_id: str, pipeline: Pipeline | None = None, at_front: bool = False
    ) -> None:
        super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
        connection = pipeline if pipeline is not None else self.connection
        connection.rpush(self.wake_key, 1)

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Serializer | str | None = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> tuple[Job, Queue] | None:
        """Take the first waiting job of ``queues`` (in order), as RQ does.

        The job's id moves to its queue's intermediate list in the same step;
        the worker takes it off once the job is registered as started.

        :param timeout: block up to this many seconds when every queue is
            empty, then raise :class:`~rq.exceptions.DequeueTimeout`; ``None``
            returns ``None`` at once.
        """
        queues = list(queues)
        deadline = None if timeout is None else time.monotonic() + timeout
        taker = current_taker.get()
        while True:
            if taker is not None:
                taker.taking()
            try:
                taken = cls.take(
                    queues, 1, connection, job_class, serializer, death_penalty_class
                )
            except Exception:
                if taker is not None:
                    # Nothing usable in hand (Redis unreachable, say): a stop
                    # asked meanwhile goes first.
                    taker.took_none()
                raise
            if taken.jobs:
                job, queue = taken.jobs[0]
                if isinstance(job, Exception):
                    raise job
                return job, queue
            if taker is not None:
                taker.took_none()
            if taken.popped:
                continue  # an id that named no job: look again
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DequeueTimeout(timeout, [queue.key for queue in queues])
            wake_keys = [
                wake_key(queue.name)
                for queue in queues
                if queue.key not in taken.skipped
            ]
            if wake_keys:
                connection.blpop(wake_keys, WAKE_POLL)
            else:
                time.sleep(WAKE_POLL)

    @classmethod
    def take(
        cls,
        queues: Sequence[Queue],
        count: int,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Serializer | str | None = None,
        death_penalty_class: type[BaseDeathPenalty] | None = None,
    ) -> Taken:
        """Take up to ``count`` waiting jobs of ``queues``, in order, in one round trip.

        Each id moves to its queue's intermediate list in the same step. A
        job refused or unreadable comes as the exception saying why, with
        ``job_id`` and ``queue`` set on it, for the worker to fail it.

        :return: the jobs taken (see :class:`Taken`).
        """
        keys: list[str] = []
        for queue in queues:
            keys += (
                queue.key,
                queue.intermediate_queue_key,
                wake_key(queue.name),
                queue.started_job_registry.key,
                queue.failed_job_registry.key,
            )
        job_cls: type[Job] = job_class or Job
        bounds = [
            job_cls.redis_job_namespace_prefix,
            # Bounds of MessagingJob (job.py); RQ's Job has none.
            getattr(job_cls, "max_fields", _NO_BOUND),
            getattr(job_cls, "max_field_bytes", _NO_BOUND),
            count,
        ]
        reply = _TAKE.run(connection, keys, bounds)
        skipped = _skipped_queue_keys(reply[0])
        taken: list[tuple[Job | Exception, Queue]] = []
        for entry in reply[1:]:
            queue = cls.from_queue_key(
                as_text(entry[0]),
                connection=connection,
                job_class=job_cls,
                serializer=serializer,
                death_penalty_class=death_penalty_class,
            )
            job_id = decoded(entry[1])
            if job_id is None:
                # Names no job, and the failed registry cannot hold it.
                connection.lrem(queue.intermediate_queue_key, 1, entry[1])
                logger.error(
                    "Removed %r from %s: it is not UTF-8, so it names no"
                    " job (written there by someone else).",
                    entry[1][:200],
                    queue.key,
                )
                continue
            try:
                job = _read_taken(job_cls, job_id, queue, entry, serializer)
            except Exception as exc:
                taken.append((exc, queue))
                continue
            if job is None:
                # Expired or deleted while it waited: nothing to run.
                connection.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            taken.append((job, queue))
        return Taken(taken, skipped, len(reply) - 1)


def _skipped_queue_keys(wrong: list[list[bytes]]) -> set[str]:
    """Log each key of another type the take found; return their queues' keys."""
    skipped: set[str] = set()
    for key, found, expected, queue_key in wrong:
        log_wrong_type(as_text(key), as_text(found), as_text(expected))
        skipped.add(as_text(queue_key))
    return skipped


def _read_taken(
    job_cls: type[Job],
    job_id: str,
    queue: Queue,
    taken: list[Any],
    serializer: Serializer | str | None,
) -> Job | None:
    """The job the take script returned, or ``None`` if its key was gone.

    :raises Exception: the job is refused or cannot be read, with ``job_id``
        and ``queue`` set on it, for the worker to fail that job
        (see ``workers._MessagingWorkerMixin``), as RQ does.
    """
    refused = taken[3].decode(errors="backslashreplace")
    try:
        if refused:
            error = JobTooLargeError if taken[4] else InvalidJobError
            raise error(f"Refused job {job_id}: {refused}.")
        fields = taken[2]
        if not fields:
            return None
        # What Job.fetch does with the hash it reads (an id RQ refuses
        # raises here, at once).
        job = job_cls(job_id, connection=queue.connection, serializer=serializer)
        job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
        if job.origin != queue.name:
            raise InvalidJobError(
                f"Refused job {job_id}: it was taken from queue"
                f" {queue.name!r} but belongs to {job.origin!r}"
                " (pushed onto another queue in Redis)."
            )
    except Exception as exc:
        exc.job_id = job_id  # type: ignore[attr-defined]
        exc.queue = queue  # type: ignore[attr-defined]
        raise
    return job
