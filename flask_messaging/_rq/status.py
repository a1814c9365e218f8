"""What an operator wants to know of RQ: queues, workers, failures; requeueing."""

from __future__ import annotations

import datetime
import logging
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import (
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.utils import as_text
from rq.worker import BaseWorker

from ..errors import JobTooLargeError
from ..redaction import one_line, redact
from .job import MessagingJob, job_class_for
from .job_faults import describe
from .job_hash import inflate
from .redis_entries import decoded, is_wrong_type, members, page_of_members, shown
from .serializer import JSONSerializer, ReadOnlySerializer
from .stored_ids import purge_ids

if TYPE_CHECKING:
    from redis import Redis

    from ..state import MessagingState

__all__ = [
    "Failure",
    "LatestResult",
    "QueueStatus",
    "TooLargeJob",
    "UnreadableJob",
    "UnreadableWorker",
    "WorkerStatus",
    "failed_job_ids",
    "fetch_jobs",
    "latest_result",
    "queue_names_in_redis",
    "queue_status",
    "read_workers",
    "recent_failures",
    "requeue_failed",
    "requeue_failed_job",
    "worker_keys",
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


@dataclass(frozen=True)
class UnreadableJob:
    """A job hash that is refused or RQ cannot parse (rewritten by hand, or by
    a foreign tool)."""

    id: str
    #: Why it cannot be read: the refusal, or RQ's complaint.
    error: str

    description = "(a job RQ cannot read)"


@dataclass(frozen=True)
class TooLargeJob(UnreadableJob):
    """A job with a field larger, stored or inflated, than any job of ours:
    not read, only named."""

    description = "(too large to show)"


@dataclass(frozen=True)
class LatestResult:
    """A job's latest result, read with bounded memory."""

    #: RQ's ``Result.Type``: SUCCESSFUL, FAILED, STOPPED, ...
    type: str
    #: The exception text of a failure; a note instead when it is too large.
    text: str
    created_at: datetime.datetime


def latest_result(connection: Redis, job_id: str, limit: int) -> LatestResult | None:
    """The latest result RQ stored for ``job_id``, with its text bounded.

    RQ's own ``Result`` inflates a failure's text whole; here it is
    inflated up to ``limit`` bytes (the job class's ``max_field_bytes``).
    None without a result, or if its key is not RQ's stream.
    """
    key = Result.get_key(job_id)  # type: ignore[no-untyped-call]
    try:
        entries: Any = connection.xrevrange(key, "+", "-", count=1)
    except RedisError as exc:
        if not is_wrong_type(exc):
            raise
        return None
    if not entries:
        return None
    entry_id, payload = entries[0]
    created_at = datetime.datetime.fromtimestamp(
        int(as_text(entry_id).partition("-")[0]) / 1000, tz=datetime.UTC
    )
    try:
        kind = Result.Type(int(payload.get(b"type", b"0"))).name
    except ValueError:
        kind = "UNKNOWN"
    text = ""
    stored = payload.get(b"exc_string")
    if stored:
        try:
            inflated = inflate(b64decode(stored), limit, "The failure text")
            text = "" if inflated is None else inflated.decode(errors="replace")
        except JobTooLargeError:
            text = f"(a failure text of more than {limit:,} bytes, too large to show)"
        except ValueError:
            text = "(a failure text that cannot be read)"
    return LatestResult(kind, text, created_at)


def fetch_jobs(
    connection: Redis,
    ids: Sequence[str],
    job_class: type[MessagingJob] = MessagingJob,
) -> list[Job | UnreadableJob]:
    """The jobs of ``ids`` that still exist, read without unpickling anything.

    A hash that is refused or RQ cannot parse comes back as an
    :class:`UnreadableJob`, one too large as a :class:`TooLargeJob`, instead
    of failing the whole list; no field is ever inflated past
    ``job_class.max_field_bytes``.
    """
    try:
        jobs = job_class.fetch_many(
            ids, connection=connection, serializer=ReadOnlySerializer
        )
        return [job for job in jobs if job is not None]
    except RedisError as exc:
        if not is_wrong_type(exc):
            raise
    except Exception:
        pass  # at least one is unreadable: read them one by one
    readable: list[Job | UnreadableJob] = []
    for job_id in ids:
        try:
            readable.append(
                job_class.fetch(
                    job_id, connection=connection, serializer=ReadOnlySerializer
                )
            )
        except NoSuchJobError:
            continue
        except RedisError as exc:
            if not is_wrong_type(exc):
                raise
            readable.append(UnreadableJob(job_id, "The job's key is not a hash."))
        except Exception as exc:  # RQ raises anything, AssertionError included
            unreadable = (
                TooLargeJob if isinstance(exc, JobTooLargeError) else UnreadableJob
            )
            readable.append(unreadable(job_id, _describe(exc)))
    return readable


@dataclass(frozen=True)
class UnreadableWorker:
    """A worker entry RQ cannot read: a key or hash written by something else."""

    name: str
    #: RQ's complaint.
    error: str

    state = "unreadable"


def queue_names_in_redis(connection: Redis) -> list[str]:
    """The queue names Redis lists in ``rq:queues``, sorted.

    An entry that is not a queue key (``rq:queue:<name>``), which makes RQ's
    ``Queue.all`` raise, or is not UTF-8 text, is left out; so is the whole
    set if ``rq:queues`` is not a set.
    """
    prefix = Queue.redis_queue_namespace_prefix
    names = (decoded(key) for key in members(connection, Queue.redis_queues_keys))
    return sorted(
        name[len(prefix) :] for name in names if name and name.startswith(prefix)
    )


def worker_keys(connection: Redis) -> list[bytes]:
    """The entries of ``rq:workers`` (none if it is not a set), sorted."""
    return sorted(members(connection, Worker.redis_workers_keys))


def read_workers(
    connection: Redis, keys: Sequence[bytes] | None = None
) -> list[BaseWorker | UnreadableWorker]:
    """The workers Redis lists in ``rq:workers``, each read on its own.

    RQ's ``Worker.all`` raises for the whole list when one entry is not a
    worker key, its key is not a hash or its hash does not parse; such an
    entry comes back as an :class:`UnreadableWorker` instead. Jobs are read
    without unpickling.

    :param keys: the entries to read (a page of :func:`worker_keys`);
        default all.
    """
    prefix = Worker.redis_worker_namespace_prefix
    found: list[BaseWorker | UnreadableWorker] = []
    for raw in worker_keys(connection) if keys is None else keys:
        key = decoded(raw)
        name = shown(raw).removeprefix(prefix)
        if key is None:
            found.append(UnreadableWorker(name, "not UTF-8 text"))
            continue
        if not key.startswith(prefix):
            found.append(UnreadableWorker(name, "not a worker key"))
            continue
        try:
            worker = Worker.find_by_key(
                key,
                connection=connection,
                job_class=MessagingJob,
                serializer=ReadOnlySerializer,
            )
        except RedisError as exc:
            if not is_wrong_type(exc):
                raise
            found.append(UnreadableWorker(name, "The worker's key is not a hash."))
            continue
        except Exception as exc:  # a hash RQ cannot parse
            found.append(UnreadableWorker(name, _describe(exc)))
            continue
        if worker is not None:  # None: gone meanwhile
            found.append(worker)
    return found


def _describe(exc: BaseException) -> str:
    return redact(describe(exc))


def _queue(state: MessagingState, name: str) -> Queue:
    job_class = job_class_for(state.settings.max_message_bytes)
    return Queue(
        name, connection=state.redis, serializer=JSONSerializer, job_class=job_class
    )


def _failed(state: MessagingState, name: str) -> FailedJobRegistry:
    job_class = job_class_for(state.settings.max_message_bytes)
    return FailedJobRegistry(
        name, connection=state.redis, serializer=JSONSerializer, job_class=job_class
    )


def queue_status(state: MessagingState) -> list[QueueStatus]:
    """Job counts of each queue workers listen on, highest priority first.

    Counts only: registries are not cleaned up, so reading changes nothing.
    """
    rows = []
    for name in state.queue_names():
        queue = _queue(state, name)

        def count(key: str) -> int | None:
            found = page_of_members(state.redis, key, 0, 0)
            return None if found is None else found[0]

        rows.append(
            QueueStatus(
                name=name,
                queued=count(queue.key),
                started=count(StartedJobRegistry(queue=queue).key),
                scheduled=count(ScheduledJobRegistry(queue=queue).key),  # type: ignore[no-untyped-call]
                failed=count(FailedJobRegistry(queue=queue).key),
                finished=count(FinishedJobRegistry(queue=queue).key),
            )
        )
    return rows


def worker_status(state: MessagingState) -> list[WorkerStatus]:
    """Workers registered on the app's Redis (unreadable ones included)."""
    rows = []
    for worker in read_workers(state.redis):
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
        page = page_of_members(state.redis, registry.key, 0, limit, descending=True)
        ids = []
        for raw in page[1] if page else []:
            job_id = decoded(raw)
            if job_id is None:
                failures.append(_unreadable_failure(shown(raw), name, _NOT_TEXT))
            else:
                ids.append(job_id)
        job_class = job_class_for(state.settings.max_message_bytes, for_display=True)
        for job in fetch_jobs(state.redis, ids, job_class):
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
            result = latest_result(state.redis, job.id, job_class.max_field_bytes)
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
    page = page_of_members(state.redis, _failed(state, name).key, 0, 2**62)
    ids = (decoded(raw) for raw in (page[1] if page else ()))
    return [job_id for job_id in ids if job_id is not None]


def requeue_failed(state: MessagingState, queues: tuple[str, ...] = ()) -> int:
    """Put every failed job of ``queues`` (default: all) back on its queue.

    Entries of a failed registry that are not UTF-8 name no job: they are
    removed and logged (:func:`~flask_messaging._rq.stored_ids.purge_ids`), and
    the real failed jobs are requeued. A failed registry of another type
    than a sorted set is logged and skipped.
    """
    count = 0
    for name in queues or state.queue_names():
        registry = _failed(state, name)
        if purge_ids(state.redis, registry.key, "zset").wrong_type:
            continue
        ids = failed_job_ids(state, name)
        count += sum(_requeue(registry, job_id) for job_id in ids)
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
            _describe(exc),
        )
        return False
    return True
