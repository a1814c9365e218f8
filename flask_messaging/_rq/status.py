"""What an operator wants to know of RQ: queues, workers, failures; requeueing.

What ``flask messaging status``, ``failed`` and ``requeue-failed`` and the
messaging page show and do. Jobs and workers are read with
:mod:`.records`, which lists an entry written by something else instead of
failing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.registry import BaseRegistry

from ..redaction import one_line, redact
from .job_faults import describe
from .objects import RQObjects, queue_key, registry_key
from .records import (
    UnreadableJob,
    UnreadableWorker,
    fetch_jobs,
    latest_result,
    read_workers,
)
from .redis_entries import decoded, is_wrong_type, page_of_members, shown
from .stored_ids import purge_ids

if TYPE_CHECKING:
    from ..state import MessagingState

__all__ = [
    "Failure",
    "QueueStatus",
    "WorkerStatus",
    "failed_job_ids",
    "queue_status",
    "recent_failures",
    "requeue_failed",
    "requeue_failed_job",
    "worker_status",
]

logger = logging.getLogger("flask_messaging")


@dataclass(frozen=True)
class QueueStatus:
    """Job counts of a queue; None where the key is not of RQ's type."""

    name: str
    queued: int | None
    started: int | None
    scheduled: int | None
    failed: int | None
    finished: int | None


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


def queue_status(state: MessagingState) -> list[QueueStatus]:
    """Job counts of each queue workers listen on, highest priority first.

    Counts only: registries are not cleaned up, so reading changes nothing.
    """

    def count(key: str) -> int | None:
        found = page_of_members(state.redis, key, 0, 0)
        return None if found is None else found[0]

    return [
        QueueStatus(
            name=name,
            queued=count(queue_key(name)),
            started=count(registry_key("started", name)),
            scheduled=count(registry_key("scheduled", name)),
            failed=count(registry_key("failed", name)),
            finished=count(registry_key("finished", name)),
        )
        for name in state.queue_names()
    ]


def worker_status(state: MessagingState) -> list[WorkerStatus]:
    """Workers registered on the app's Redis (unreadable ones included)."""
    rows = []
    for worker in read_workers(RQObjects.of(state, for_display=True)):
        if isinstance(worker, UnreadableWorker):
            rows.append(WorkerStatus(worker.name, worker.state, (), None))
            continue
        rows.append(
            WorkerStatus(
                name=worker.name,
                state=str(getattr(worker.get_state(), "value", worker.get_state())),
                queues=tuple(worker.queue_names()),
                current_job=worker.get_current_job_id(),
            )
        )
    return sorted(rows, key=lambda w: w.name)


def recent_failures(
    state: MessagingState, limit: int = 50, queues: Sequence[str] = ()
) -> list[Failure]:
    """The latest failed jobs over ``queues`` (default: all), newest first.

    Jobs are read for display (:func:`~.records.fetch_jobs`): whatever a
    failed job holds, nothing is unpickled to show it. ``error`` is the last
    line of the exception the job failed with.
    """
    display = RQObjects.of(state, for_display=True)
    failures = []
    for name in queues or state.queue_names():
        # Scored by expiry: failure time plus the same TTL for every job.
        key = registry_key("failed", name)
        page = page_of_members(state.redis, key, 0, limit, descending=True)
        ids = []
        for raw in page[1] if page else []:
            job_id = decoded(raw)
            if job_id is None:
                failures.append(_unreadable_failure(shown(raw), name, _NOT_TEXT))
            else:
                ids.append(job_id)
        for job in fetch_jobs(display, ids):
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
            bound = display.job_class.max_field_bytes
            result = latest_result(state.redis, job.id, bound)
            failures.append(
                Failure(
                    job_id=job.id,
                    queue=name,
                    description=job.description or "",
                    error=one_line(result.text if result else None, last=True),
                    failed_at=job.ended_at or (result.created_at if result else None),
                )
            )
    failures.sort(
        key=lambda f: f.failed_at.timestamp() if f.failed_at else 0, reverse=True
    )
    return failures[:limit]


_NOT_TEXT = "The job id is not UTF-8 text: empty the failed list to remove it."


def _unreadable_failure(job_id: str, queue: str, error: str) -> Failure:
    return Failure(job_id, queue, UnreadableJob.description, error, None)


def failed_job_ids(state: MessagingState, name: str) -> list[str]:
    """The ids in queue ``name``'s failed list that can be ids (UTF-8 text)."""
    page = page_of_members(state.redis, registry_key("failed", name), 0, 2**62)
    ids = (decoded(raw) for raw in (page[1] if page else ()))
    return [job_id for job_id in ids if job_id is not None]


def requeue_failed(state: MessagingState, queues: tuple[str, ...] = ()) -> int:
    """Put every failed job of ``queues`` (default: all) back on its queue.

    Entries of a failed registry that are not UTF-8 name no job: they are
    removed and logged (:func:`~.stored_ids.purge_ids`), and the real failed
    jobs are requeued. A failed registry of another type than a sorted set
    is logged and skipped.
    """
    objects = RQObjects.of(state)
    count = 0
    for name in queues or state.queue_names():
        registry = objects.registry("failed", name)
        if purge_ids(state.redis, registry.key, "zset").wrong_type:
            continue
        ids = failed_job_ids(state, name)
        count += sum(_requeue(registry, job_id) for job_id in ids)
    return count


def requeue_failed_job(state: MessagingState, queue: str, job_id: str) -> bool:
    """Put one failed job back on its queue; False if it is not failed there."""
    return _requeue(RQObjects.of(state).registry("failed", queue), job_id)


def _requeue(registry: BaseRegistry, job_id: str) -> bool:
    """Requeue one failed job; False if it cannot be (and it stays failed)."""
    try:
        registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperation):
        return False  # expired or requeued meanwhile
    except RedisError as exc:
        if not is_wrong_type(exc):
            raise
        logger.warning(
            "Failed job %s is not a job hash: it stays failed; delete it.", job_id
        )
        return False
    except Exception as exc:  # a hash RQ cannot parse
        logger.warning(
            "Failed job %s cannot be read (%s): it stays failed; delete it.",
            job_id,
            redact(describe(exc)),
        )
        return False
    return True
