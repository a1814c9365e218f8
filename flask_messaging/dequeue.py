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

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.utils import as_text

from .errors import InvalidJobError
from .lua import LuaScript

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.serializers import Serializer
    from rq.timeouts import BaseDeathPenalty

__all__ = ["WAKE_POLL", "MessagingQueue", "wake_key"]

#: Longest wait, in seconds, for a job pushed without a wake token.
WAKE_POLL = 1

WAKE_PREFIX = "flask_messaging:wake:"


def wake_key(queue_name: str) -> str:
    """The list an idle worker of ``queue_name`` blocks on."""
    return WAKE_PREFIX + queue_name


# KEYS: per queue, in priority order: the queue, its intermediate list, its
# wake list. ARGV: the job key prefix. Takes the first waiting id and one
# token of its queue, and returns the job's hash with it (a round trip fewer
# per job), or Redis's error when the job's key is not a hash; when every
# queue is empty, drops their tokens (no job is left to wake for).
_TAKE = LuaScript("""
for i = 1, #KEYS, 3 do
  local job_id = redis.call('LPOP', KEYS[i])
  if job_id then
    redis.call('RPUSH', KEYS[i + 1], job_id)
    redis.call('LPOP', KEYS[i + 2])
    local fields = redis.pcall('HGETALL', ARGV[1] .. job_id)
    if fields.err then
      return {KEYS[i], job_id, {}, fields.err}
    end
    return {KEYS[i], job_id, fields}
  end
end
for i = 3, #KEYS, 3 do
  redis.call('DEL', KEYS[i])
end
return false
""")


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
        keys: list[str] = []
        for queue in queues:
            keys += (queue.key, queue.intermediate_queue_key, wake_key(queue.name))
        wake_keys = keys[2::3]
        deadline = None if timeout is None else time.monotonic() + timeout
        job_cls: type[Job] = job_class or Job
        prefix = [job_cls.redis_job_namespace_prefix]
        while True:
            taken = _TAKE.run(connection, keys, prefix)
            if taken:
                queue_key, job_id = as_text(taken[0]), as_text(taken[1])
                queue = cls.from_queue_key(
                    queue_key,
                    connection=connection,
                    job_class=job_cls,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
                fields = taken[2]
                if len(taken) > 3:
                    exc = InvalidJobError(
                        f"Refused job {job_id}: its key is not a job hash"
                        f" ({as_text(taken[3])})."
                    )
                    exc.job_id = job_id  # type: ignore[attr-defined]
                    exc.queue = queue  # type: ignore[attr-defined]
                    raise exc
                if not fields:
                    # Expired or deleted while it waited: nothing to run.
                    connection.lrem(queue.intermediate_queue_key, 1, job_id)
                    continue
                try:
                    # What Job.fetch does with the hash it reads (an id RQ
                    # refuses raises here, at once).
                    job = job_cls(job_id, connection=connection, serializer=serializer)
                    job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
                    if job.origin != queue.name:
                        raise InvalidJobError(
                            f"Refused job {job_id}: it was taken from queue"
                            f" {queue.name!r} but belongs to {job.origin!r}"
                            " (pushed onto another queue in Redis)."
                        )
                except Exception as exc:
                    # As RQ does: say which job could not be read, for the
                    # worker to fail it (see worker._MessagingWorkerMixin).
                    exc.job_id = job_id  # type: ignore[attr-defined]
                    exc.queue = queue  # type: ignore[attr-defined]
                    raise
                return job, queue
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DequeueTimeout(timeout, [queue.key for queue in queues])
            connection.blpop(wake_keys, WAKE_POLL)
