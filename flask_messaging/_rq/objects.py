"""RQ's queues, registries, jobs and workers, as this package makes them.

:class:`RQObjects` makes them with the app's job class and the serializer
that goes with it, for one of two sides, so that no reader pairs them
wrongly:

- the workers' (and whatever writes a job back, such as a requeue): jobs
  read whole, as :class:`~.job.MessagingJob` bounded by
  ``MESSAGING_MAX_MESSAGE_BYTES``, decoded as JSON
  (:class:`~.serializer.JSONSerializer`);
- the display's (``flask messaging status``, the dashboard): the same bound,
  no payload kept, and what is not JSON shown as a placeholder
  (:class:`~.serializer.ReadOnlySerializer`).

Where only a key is needed, :func:`queue_key` and :func:`registry_key` give
it without making an object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rq import Queue, Worker
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker import BaseWorker

from .job import MessagingJob, job_class_for
from .serializer import JSONSerializer, ReadOnlySerializer

if TYPE_CHECKING:
    from redis import Redis

    from ..state import MessagingState

__all__ = ["REGISTRIES", "RQObjects", "queue_key", "registry_key"]

#: RQ's registries of a queue (sorted sets of job ids), by the name
#: rq-dashboard gives each.
REGISTRIES: dict[str, type[BaseRegistry]] = {
    "started": StartedJobRegistry,
    "failed": FailedJobRegistry,
    "finished": FinishedJobRegistry,
    "deferred": DeferredJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}


def queue_key(name: str) -> str:
    """The Redis key of queue ``name``'s list of waiting job ids."""
    return f"{Queue.redis_queue_namespace_prefix}{name}"


def registry_key(kind: str, queue_name: str) -> str:
    """The Redis key of queue ``queue_name``'s registry ``kind``.

    :raises KeyError: ``kind`` is not one of :data:`REGISTRIES`.
    """
    return REGISTRIES[kind].key_template.format(queue_name)


@dataclass(frozen=True)
class RQObjects:
    """RQ's objects on ``connection``, for the workers or for display.

    :param max_message_bytes: ``MESSAGING_MAX_MESSAGE_BYTES``, which bounds
        every field of a job read (:func:`~.job.job_class_for`).
    :param for_display: read jobs keeping no payload, and meta and results
        that are not JSON as a placeholder; such jobs are never written back.
    """

    connection: Redis
    max_message_bytes: int | None
    for_display: bool = False

    @classmethod
    def of(cls, state: MessagingState, *, for_display: bool = False) -> RQObjects:
        """The objects of an app, on its Redis."""
        return cls(state.redis, state.settings.max_message_bytes, for_display)

    @property
    def job_class(self) -> type[MessagingJob]:
        return job_class_for(self.max_message_bytes, for_display=self.for_display)

    @property
    def serializer(self) -> type[JSONSerializer] | type[ReadOnlySerializer]:
        return ReadOnlySerializer if self.for_display else JSONSerializer

    def queue(self, name: str, queue_class: type[Queue] = Queue) -> Queue:
        """Queue ``name``, of ``queue_class``."""
        return queue_class(
            name,
            connection=self.connection,
            serializer=self.serializer,
            job_class=self.job_class,
        )

    def registry(self, kind: str, queue_name: str) -> BaseRegistry:
        """Queue ``queue_name``'s registry ``kind`` (one of :data:`REGISTRIES`).

        :raises KeyError: an unknown ``kind``.
        """
        registry: BaseRegistry = REGISTRIES[kind](
            queue_name,
            connection=self.connection,
            serializer=self.serializer,
            job_class=self.job_class,
        )
        return registry

    def fetch(self, job_id: str, *, strict: bool = False) -> Job:
        """Job ``job_id``, read with this side's bound.

        :param strict: read meta and results as JSON on the display's side
            too, so that a job holding anything else raises (the dashboard
            deletes such a job unread, by its keys).
        :raises NoSuchJobError: no job hash at that id.
        :raises Exception: whatever the job class refuses or RQ cannot parse
            (:class:`~flask_messaging.errors.InvalidJobError`,
            :class:`~flask_messaging.errors.JobTooLargeError`, a
            ``WRONGTYPE`` ``ResponseError``, ...).
        """
        serializer = JSONSerializer if strict else self.serializer
        job: Job = self.job_class.fetch(
            job_id, connection=self.connection, serializer=serializer
        )
        return job

    def fetch_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """The jobs of ``job_ids`` in one round trip; None where one is gone.

        :raises Exception: as :meth:`fetch`, for the first job that cannot be
            read.
        """
        jobs: list[Job | None] = self.job_class.fetch_many(
            job_ids, connection=self.connection, serializer=self.serializer
        )
        return jobs

    def find_worker(self, key: str) -> BaseWorker | None:
        """The worker registered at ``key``; None if its hash is gone.

        :raises Exception: the hash is of another type or RQ cannot parse it.
        """
        worker: BaseWorker | None = Worker.find_by_key(
            key,
            connection=self.connection,
            job_class=self.job_class,
            serializer=self.serializer,
        )
        return worker
