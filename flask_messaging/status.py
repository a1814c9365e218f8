"""What an operator wants to know: queues, workers, failures, the outbox."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rq import Queue, Worker
from rq.registry import (
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from .dispatch import MessagingJob
from .serializer import JSONSerializer

if TYPE_CHECKING:
    from .extension import MessagingState

__all__ = [
    "Failure",
    "QueueStatus",
    "WorkerStatus",
    "outbox_backlog",
    "queue_status",
    "recent_failures",
    "requeue_failed",
    "worker_status",
]


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


def _queue(state: MessagingState, name: str) -> Queue:
    return Queue(
        name, connection=state.redis, serializer=JSONSerializer, job_class=MessagingJob
    )


def _failed(state: MessagingState, name: str) -> FailedJobRegistry:
    return FailedJobRegistry(
        name, connection=state.redis, serializer=JSONSerializer, job_class=MessagingJob
    )


def queue_status(state: MessagingState) -> list[QueueStatus]:
    """Job counts of each queue workers listen on, highest priority first."""
    rows = []
    for name in state.queue_names():
        queue = _queue(state, name)
        rows.append(
            QueueStatus(
                name=name,
                queued=queue.count,
                started=StartedJobRegistry(queue=queue).count,
                scheduled=ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
                failed=FailedJobRegistry(queue=queue).count,
                finished=FinishedJobRegistry(queue=queue).count,
            )
        )
    return rows


def worker_status(state: MessagingState) -> list[WorkerStatus]:
    """Workers registered on the app's Redis."""
    workers = Worker.all(connection=state.redis, serializer=JSONSerializer)
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


def recent_failures(state: MessagingState, limit: int = 20) -> list[Failure]:
    """The latest failed jobs over all queues, newest first."""
    failures = []
    for name in state.queue_names():
        registry = _failed(state, name)
        for job_id in registry.get_job_ids(0, limit - 1, desc=True):
            job = MessagingJob.fetch(
                job_id, connection=state.redis, serializer=JSONSerializer
            )
            result = job.latest_result()
            error = (result.exc_string if result else None) or ""
            failures.append(
                Failure(
                    job_id=job_id,
                    queue=name,
                    description=job.description or "",
                    error=error.strip().splitlines()[-1] if error.strip() else "",
                    failed_at=job.ended_at,
                )
            )
    epoch = datetime.datetime.min
    failures.sort(key=lambda f: f.failed_at or epoch, reverse=True)
    return failures[:limit]


def requeue_failed(state: MessagingState, queues: tuple[str, ...] = ()) -> int:
    """Put every failed job of ``queues`` (default: all) back on its queue."""
    count = 0
    for name in queues or state.queue_names():
        registry = _failed(state, name)
        for job_id in registry.get_job_ids():
            registry.requeue(job_id)
            count += 1
    return count


def outbox_backlog(state: MessagingState) -> int | None:
    """Outbox rows not relayed yet; ``None`` without an outbox."""
    if state.outbox is None:
        return None
    from .outbox import Relay

    return Relay(state).backlog()
