"""RQ's jobs, their results and its workers, read whatever Redis holds.

RQ's own readers raise for a whole listing when one entry was written by
something else (a hash RQ cannot parse, a key of another type, a name that
is not UTF-8), and unpickle what they read. Those here read with the
app's objects for display (:class:`~.objects.RQObjects`), never unpickle,
bound what they inflate, and return an entry they cannot read as
an :class:`UnreadableJob` or :class:`UnreadableWorker`, for the dashboard
and ``flask messaging status`` to list and an operator to delete.
"""

from __future__ import annotations

import datetime
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.results import Result
from rq.utils import as_text
from rq.worker import BaseWorker

from ..errors import JobTooLargeError
from ..redaction import redact
from .job_faults import describe
from .job_hash import inflate
from .objects import RQObjects
from .redis_entries import decoded, is_wrong_type, members, shown

if TYPE_CHECKING:
    from redis import Redis

__all__ = [
    "LatestResult",
    "TooLargeJob",
    "UnreadableJob",
    "UnreadableWorker",
    "fetch_jobs",
    "latest_result",
    "queue_names_in_redis",
    "read_workers",
    "worker_keys",
]


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


def fetch_jobs(display: RQObjects, ids: Sequence[str]) -> list[Job | UnreadableJob]:
    """The jobs of ``ids`` that still exist, read without unpickling anything.

    A hash that is refused or RQ cannot parse comes back as an
    :class:`UnreadableJob`, one too large as a :class:`TooLargeJob`, instead
    of failing the whole list; no field is ever inflated past
    ``display.job_class.max_field_bytes``.

    :param display: the app's objects for display.
    """
    try:
        return [job for job in display.fetch_many(ids) if job is not None]
    except RedisError as exc:
        if not is_wrong_type(exc):
            raise
    except Exception:
        pass  # at least one is unreadable: read them one by one
    readable: list[Job | UnreadableJob] = []
    for job_id in ids:
        try:
            readable.append(display.fetch(job_id))
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
    display: RQObjects, keys: Sequence[bytes] | None = None
) -> list[BaseWorker | UnreadableWorker]:
    """The workers Redis lists in ``rq:workers``, each read on its own.

    RQ's ``Worker.all`` raises for the whole list when one entry is not a
    worker key, its key is not a hash or its hash does not parse; such an
    entry comes back as an :class:`UnreadableWorker` instead. Jobs are read
    without unpickling.

    :param display: the app's objects for display.
    :param keys: the entries to read (a page of :func:`worker_keys`);
        default all.
    """
    prefix = Worker.redis_worker_namespace_prefix
    found: list[BaseWorker | UnreadableWorker] = []
    for raw in worker_keys(display.connection) if keys is None else keys:
        key = decoded(raw)
        name = shown(raw).removeprefix(prefix)
        if key is None:
            found.append(UnreadableWorker(name, "not UTF-8 text"))
            continue
        if not key.startswith(prefix):
            found.append(UnreadableWorker(name, "not a worker key"))
            continue
        try:
            worker = display.find_worker(key)
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
