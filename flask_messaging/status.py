"""What an operator wants to know: queues, workers, failures, the outbox."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from .dispatch import MessagingJob
from .serializer import JSONSerializer, ReadOnlySerializer

if TYPE_CHECKING:
    from redis import Redis

    from .extension import MessagingState

__all__ = [
    "Failure",
    "QueueStatus",
    "UnreadableJob",
    "WorkerStatus",
    "fetch_jobs",
    "outbox_backlog",
    "queue_status",
    "recent_failures",
    "requeue_failed",
    "requeue_failed_job",
    "worker_status",
]

logger = logging.getLogger("flask_messaging")


@dataclass(frozen=True)
class QueueStatus:
    name: str
    queued: int
    started: int
    scheduled: int
    failed: int
    finished: int


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    state: str
    queues: tuple[str, ...]
    current_job: str | None


@dataclass(frozen=True)
class Failure:
    job_id: str
    queue: str
    description: str
    error: str
    failed_at: datetime.datetime | None


@dataclass(frozen=True)
class UnreadableJob:
    """A job hash RQ cannot parse (rewritten by hand, or by a foreign tool)."""

    id: str
    #: RQ's complaint.
    error: str

    description = "(a job RQ cannot read)"


def fetch_jobs(connection: Redis, ids: Sequence[str]) -> list[Job | UnreadableJob]:
    """The jobs of ``ids`` that still exist, read without unpickling anything.

    A hash RQ cannot parse comes back as an :class:`UnreadableJob` instead of
    failing the whole list.
    """
    try:
        jobs = MessagingJob.fetch_many(
            ids, connection=connection, serializer=ReadOnlySerializer
        )
        return [job for job in jobs if job is not None]
    except RedisError:
        raise
    except Exception:
        pass  # at least one is unreadable: read them one by one
    readable: list[Job | UnreadableJob] = []
    for job_id in ids:
        try:
            readable.append(
                MessagingJob.fetch(
                    job_id, connection=connection, serializer=ReadOnlySerializer
                )
            )
        except NoSuchJobError:
            continue
        except RedisError:
            raise
        except Exception as exc:  # RQ raises anything, AssertionError included
            readable.append(UnreadableJob(job_id, _describe(exc)))
    return readable


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _queue(state: MessagingState, name: str) -> Queue:
    return Queue(
        name, connection=state.redis, serializer=JSONSerializer, job_class=MessagingJob
    )


def _failed(state: MessagingState, name: str) -> FailedJobRegistry:
    return FailedJobRegistry(
        name, connection=state.redis, serializer=JSONSerializer, job_class=MessagingJob
    )


def queue_status(state: MessagingState) -> list[QueueStatus]:
    """Job counts of each queue workers listen on, highest priority first.

    Counts only: registries are not cleaned up, so reading changes nothing.
    """
    rows = []
    for name in state.queue_names():
        queue = _queue(state, name)

        def count(registry: BaseRegistry) -> int:
            return registry.get_job_count(cleanup=False)

        rows.append(
            QueueStatus(
                name=name,
                queued=queue.count,
                started=count(StartedJobRegistry(queue=queue)),
                scheduled=count(ScheduledJobRegistry(queue=queue)),  # type: ignore[no-untyped-call]
                failed=count(FailedJobRegistry(queue=queue)),
                finished=count(FinishedJobRegistry(queue=queue)),
            )
        )
    return rows


def worker_status(state: MessagingState) -> list[WorkerStatus]:
    """Workers registered on the app's Redis."""
    workers = Worker.all(connection=state.redis, serializer=ReadOnlySerializer)
    return sorted(
        (
            WorkerStatus(
                name=worker.name,
                state=str(getattr(worker.get_state(), "value", worker.get_state())),
                queues=tuple(worker.queue_names()),
                current_job=worker.get_current_job_id(),
            )
            for worker in workers
        ),
        key=lambda w: w.name,
    )


def recent_failures(
    state: MessagingState, limit: int = 50, queues: Sequence[str] = ()
) -> list[Failure]:
    """The latest failed jobs over ``queues`` (default: all), newest first.

    Jobs are read with :class:`ReadOnlySerializer`: whatever a failed job holds,
    nothing is unpickled to show it. ``error`` is the last line of the
    exception the job failed with.
    """
    failures = []
    for name in queues or state.queue_names():
        registry = FailedJobRegistry(
            name, connection=state.redis, serializer=ReadOnlySerializer
        )
        # Scored by expiry: failure time plus the same TTL for every job.
        ids = registry.get_job_ids(0, limit - 1, desc=True, cleanup=False)
        for job in fetch_jobs(state.redis, ids):
            if isinstance(job, UnreadableJob):
                failures.append(
                    Failure(
                        job_id=job.id,
                        queue=name,
                        description=job.description,
                        error=job.error,
                        failed_at=None,
                    )
                )
                continue
            result = job.latest_result()
            failures.append(
                Failure(
                    job_id=job.id,
                    queue=name,
                    description=job.description or "",
                    error=_last_line(result.exc_string if result else None),
                    failed_at=job.ended_at or (result.created_at if result else None),
                )
            )
    failures.sort(
        key=lambda f: f.failed_at.timestamp() if f.failed_at else 0, reverse=True
    )
    return failures[:limit]


def requeue_failed(state: MessagingState, queues: tuple[str, ...] = ()) -> int:
    """Put every failed job of ``queues`` (default: all) back on its queue."""
    count = 0
    for name in queues or state.queue_names():
        registry = _failed(state, name)
        count += sum(
            _requeue(registry, job_id) for job_id in registry.get_job_ids(cleanup=False)
        )
    return count


def requeue_failed_job(state: MessagingState, queue: str, job_id: str) -> bool:
    """Put one failed job back on its queue; False if it is not failed there."""
    return _requeue(_failed(state, queue), job_id)


def _requeue(registry: FailedJobRegistry, job_id: str) -> bool:
    """Requeue one failed job; False if it cannot be (and it stays failed)."""
    try:
        registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperation):
        return False  # expired or requeued meanwhile
    except RedisError:
        raise
    except Exception as exc:  # a hash RQ cannot parse
        logger.warning(
            "Failed job %s cannot be read (%s): it stays failed; delete it.",
            job_id,
            _describe(exc),
        )
        return False
    return True


def outbox_backlog(state: MessagingState) -> int | None:
    """Outbox rows not relayed yet; ``None`` without an outbox."""
    if state.outbox is None:
        return None
    from .outbox import Relay

    return Relay(state).backlog()


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:300] if lines else ""
