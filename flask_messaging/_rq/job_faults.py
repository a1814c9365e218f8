"""One job's fault never stops a worker: the job fails, the worker goes on.

RQ's work loop quits ("found an unhandled exception") when anything raises
while it handles a job outside the job function itself: recording a failure
whose text is not valid UTF-8, a retry setting it cannot use, a job it
cannot read during the clean-up of abandoned jobs. A worker of this package
catches each such error around the step of that one job, moves the job to
the failed registry with a readable reason, and takes the next job. Jobs
left behind (abandoned, stranded, or due in a scheduled registry) that
cannot be read are failed before RQ's clean-up or scheduler reads them.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import NoSuchJobError, StopRequested
from rq.job import JobStatus
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.utils import as_text, current_timestamp, now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from .. import stop_signals
from ..errors import LOST_REDIS
from ..parent_death import stop_with_parent
from .dequeue import MessagingQueue
from .objects import RQObjects
from .queue_cleanup import clean_queue
from .serializer import JSONSerializer
from .stored_ids import purge_ids

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

__all__ = [
    "CheckedScheduler",
    "JobFaultsMixin",
    "describe",
    "fail_job",
    "fail_unreadable",
    "readable",
    "replace_foreign_results_key",
]

logger = logging.getLogger("flask_messaging")


#: Most ids of an intermediate list a clean-up pass reads itself.
LEFT_BEHIND_LIMIT = 1000

# rq 3 passes the execution to clean up; rq 2 keeps it on the worker.
_CLEANUP_TAKES_EXECUTION = (
    "execution" in inspect.signature(BaseWorker.cleanup_execution).parameters
)


def readable(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates (from a file name that is not
    UTF-8, say) written as ``\\udce9``, which RQ can store."""
    return text.encode("utf-8", "backslashreplace").decode()


def describe(exc: BaseException) -> str:
    """One line: the exception's type and its readable message."""
    text = readable(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fail_job(
    connection: Redis,
    queue: Queue,
    job_id: str,
    reason: str,
    failure_ttl: int,
    worker_name: str = "",
) -> None:
    """Move job ``job_id`` of ``queue`` to its failed registry, with ``reason``.

    Writes only what a person needs to see and delete it: its place in the
    failed registry, ``status`` failed, and a failure result whose text is
    ``reason`` (what ``flask messaging status``, the messaging page and the
    job page show). It leaves the queue's intermediate list and the started
    registry. Nothing of the job itself is read, so this works on any job.
    """
    reason = readable(reason)
    replace_foreign_results_key(connection, job_id)
    with connection.pipeline() as pipe:
        pipe.zadd(queue.failed_job_registry.key, {job_id: time.time() + failure_ttl})
        pipe.hset(
            f"{queue.job_class.redis_job_namespace_prefix}{job_id}",
            mapping={"status": JobStatus.FAILED.value, "ended_at": utcformat(now())},
        )
        pipe.lrem(queue.intermediate_queue_key, 1, job_id)
        started = queue.started_job_registry
        # rq 3 keys its entries by job and execution: "<job id>:<execution>".
        entries: list[Any] = [
            entry
            for entry in connection.zrange(started.key, 0, -1)
            if started.parse_job_id(as_text(entry)) == job_id  # type: ignore[arg-type]
        ]
        if entries:
            pipe.zrem(started.key, *entries)
        Result(  # type: ignore[no-untyped-call]
            job_id=job_id,
            type=Result.Type.FAILED,
            connection=connection,
            exc_string=reason,
            worker_name=worker_name,
            serializer=JSONSerializer,
        ).save(ttl=failure_ttl, pipeline=pipe)
        # A key of another type (written by someone else) fails its own
        # command only: the rest is still written.
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                logger.warning("Failing job %s: %s", job_id, describe(reply))


def replace_foreign_results_key(connection: Redis, job_id: str) -> None:
    """Delete job ``job_id``'s results key if it is not a stream, with a log.

    RQ appends each result of a job to a stream at that key: a key of
    another type there (written by someone else) would refuse the failure
    reason, and the job would be failed with no reason anyone can read.
    """
    key = Result.get_key(job_id)  # type: ignore[no-untyped-call]
    found = as_text(connection.type(key))
    if found not in ("none", "stream"):
        logger.error(
            "Redis key %s was a %s, where RQ keeps job %s's results (written"
            " there by someone else?): deleted, to record the job's result.",
            key,
            found,
            job_id,
        )
        connection.delete(key)


class JobFaultsMixin:
    """Worker steps that fail the one job in hand instead of the worker."""

    def _failure_ttl(self) -> int:
        raise NotImplementedError

    def _objects(self) -> RQObjects:
        """This worker's RQ objects, on its connection."""
        raise NotImplementedError

    def handle_job_failure(self, *args: Any, **kwargs: Any) -> Any:
        # RQ stores the failure text as strict UTF-8; an exception naming a
        # file that is not UTF-8 would make that raise.
        if isinstance(kwargs.get("exc_string"), str):
            kwargs["exc_string"] = readable(kwargs["exc_string"])
        job = kwargs.get("job", args[0] if args else None)
        if job is not None:
            replace_foreign_results_key(self._connection(), job.id)
        return super().handle_job_failure(*args, **kwargs)  # type: ignore[misc]

    def _connection(self) -> Redis:
        worker: Any = self
        return worker.connection  # type: ignore[no-any-return]

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)  # type: ignore[misc]
        except (*LOST_REDIS, StopRequested):
            raise  # not the job's fault: the worker stops or is replaced
        except Exception as exc:
            self._fail_job_in_hand(job, queue, exc)

    def monitor_work_horse(self, job: Job, queue: Queue, *args: Any) -> None:
        super().monitor_work_horse(job, queue, *args)  # type: ignore[misc]
        # RQ takes a work horse's exit status 0 for a job handled: a handler
        # that ends its process (os._exit(0)) would leave its job started,
        # with no reason, until the clean-up finds it abandoned.
        if job.get_status(refresh=True) != JobStatus.STARTED:
            return
        worker: Any = self
        reason = (
            f"The work horse of job {job.id} exited before the job ended: its"
            " handler ended the process (os._exit?). It was moved to the"
            " failed registry, not retried; its handler may have done part of"
            " its work."
        )
        logger.error("%s", reason)
        fail_job(
            worker.connection, queue, job.id, reason, self._failure_ttl(), worker.name
        )

    def _fail_job_in_hand(self, job: Job, queue: Queue, exc: Exception) -> None:
        worker: Any = self
        reason = (
            f"The worker could not finish handling job {job.id}:"
            f" {describe(exc)}. It was moved to the failed registry; its"
            " handler may or may not have run."
        )
        logger.error("%s", reason, exc_info=exc)
        try:
            with worker.connection.pipeline() as pipe:
                if _CLEANUP_TAKES_EXECUTION:
                    worker.cleanup_execution(job, pipe, execution=worker.execution)
                else:
                    worker.cleanup_execution(job, pipe)
                pipe.execute()
        except LOST_REDIS:
            raise
        except Exception:
            logger.warning("Could not clean up job %s's execution.", job.id)
        fail_job(
            worker.connection, queue, job.id, reason, self._failure_ttl(), worker.name
        )
        worker.set_state(WorkerStatus.IDLE)

    def clean_registries(self) -> None:
        # RQ's stops at the first queue where anything raises, and leaves
        # its lock held (see queue_cleanup).
        worker: Any = self
        for queue in worker.queues:
            try:
                clean_queue(worker, queue, self._fail_unreadable_left_behind)
            except (*LOST_REDIS, StopRequested):
                raise
            except Exception:
                logger.exception(
                    "The clean-up of queue %s failed; it runs again.", queue.name
                )
        worker.last_cleaned_at = now()

    def _fail_unreadable_left_behind(self, queue: Queue) -> None:
        """Fail the jobs RQ's clean-up would read and could not.

        Those are the abandoned jobs of the started registry and the jobs
        left on the queue's intermediate list (the first
        :data:`LEFT_BEHIND_LIMIT` of it each pass).
        """
        worker: Any = self
        left = queue.started_job_registry.get_expired_job_ids()
        left += [
            as_text(job_id)
            for job_id in worker.connection.lrange(
                queue.intermediate_queue_key, 0, LEFT_BEHIND_LIMIT - 1
            )
        ]
        fail_unreadable(self._objects(), queue, left, self._failure_ttl())

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ's own (rq 2.12 and 3.0 alike), with a scheduler that fails the
        # due jobs it cannot read instead of reading them whole.
        worker: Any = self
        objects = self._objects()
        scheduler: Any = CheckedScheduler(
            worker.queues,
            connection=objects.connection,
            logging_level=logging_level
            if logging_level is not None
            else worker.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=objects.serializer,
        )
        scheduler.max_message_bytes = objects.max_message_bytes
        scheduler.failure_ttl = self._failure_ttl()
        worker.scheduler = scheduler
        scheduler.acquire_locks()
        if scheduler.acquired_locks:
            if burst:
                try:
                    scheduler.register_birth()
                    scheduler.enqueue_scheduled_jobs()
                finally:
                    scheduler.release_locks()
                    scheduler.register_death()
            else:
                scheduler.start()


def fail_unreadable(
    objects: RQObjects, queue: Queue, job_ids: Iterable[str], failure_ttl: int
) -> list[str]:
    """Fail each job of ``job_ids`` (of ``queue``) that ``objects`` cannot read.

    :return: the ids failed.
    """
    connection = queue.connection
    failed = []
    for job_id in dict.fromkeys(job_ids):
        try:
            objects.fetch(job_id)
        except NoSuchJobError:
            continue
        except (*LOST_REDIS, StopRequested):
            raise
        except Exception as exc:  # a key of another type too (ResponseError)
            reason = f"Job {job_id}, left behind, cannot be read: {describe(exc)}"
            logger.error("%s; moved to the failed registry.", reason)
            fail_job(connection, queue, job_id, reason, failure_ttl)
            failed.append(job_id)
    return failed


class CheckedScheduler(RQScheduler):
    """RQ's scheduler, moving due jobs one at a time, each read with a bound.

    RQ's reads every due job at once, whole, with its own ``Job`` class: a
    job refused or too large would be inflated, or raise and stop the
    scheduler, and a thousand jobs each just under the bound would all be
    held at once. This one reads each due job with the app's job class,
    fails one it cannot read, and moves the others onto their queue one by
    one, waking an idle worker (:class:`~.dequeue.MessagingQueue`).
    """

    #: ``MESSAGING_MAX_MESSAGE_BYTES`` of the app, which bounds each job read.
    max_message_bytes: int | None
    failure_ttl: int
    #: The worker process that started this scheduler's process.
    _worker_pid: int | None = None

    def start(self) -> Any:
        self._worker_pid = os.getpid()
        # The worker's SIGTERM to a process just forked would be lost, and
        # the worker join it for ever (see stop_signals): held until work().
        with stop_signals.held_for_fork():
            return super().start()  # type: ignore[no-untyped-call]

    def work(self) -> None:
        if self._worker_pid is not None and self._worker_pid != os.getpid():
            # Forked by start(): its own handlers first, then the stop
            # signals held since the fork (the worker's handlers, inherited,
            # must not run here).
            self._install_signal_handlers()  # type: ignore[no-untyped-call]
            stop_signals.release()
            # A scheduler outliving its worker (kill -9, the OOM killer)
            # would renew its locks for ever and keep every other worker
            # from taking scheduling over.
            stop_with_parent(self._worker_pid)
        super().work()  # type: ignore[no-untyped-call]

    def enqueue_scheduled_jobs(self) -> None:
        scheduler: Any = self
        scheduler._status = self.Status.WORKING
        if not scheduler._scheduled_job_registries and scheduler._acquired_locks:
            scheduler.prepare_registries()
        for registry in scheduler._scheduled_job_registries:
            # One registry's fault (an entry that is not UTF-8, a key of
            # another type) must not stop the others, nor the scheduler.
            try:
                self._enqueue_due(registry)
            except LOST_REDIS:
                raise
            except Exception:
                logger.exception(
                    "Could not move the due jobs of %s; it is tried again.",
                    registry.key,
                )
        # RQ's own pass would read every registry again; what it moves more
        # (rate-limited jobs) ours never are.
        scheduler._status = self.Status.STARTED

    def _objects(self) -> RQObjects:
        # On this scheduler's own connection: RQ's scheduler opens one, and
        # another in the process it forks.
        return RQObjects(self.connection, self.max_message_bytes)

    def _enqueue_due(self, registry: Any) -> None:
        if purge_ids(self.connection, registry.key, "zset").wrong_type:
            return  # logged; nothing of it can be read
        objects = self._objects()
        queue = objects.queue(registry.name, MessagingQueue)
        for job_id in registry.get_jobs_to_schedule(current_timestamp()):
            self._move(objects, queue, registry, job_id)

    def _move(
        self, objects: RQObjects, queue: Queue, registry: Any, job_id: str
    ) -> None:
        try:
            job = objects.fetch(job_id)
        except NoSuchJobError:
            registry.remove(job_id)
            return
        except LOST_REDIS:
            raise
        except Exception as exc:
            reason = f"Scheduled job {job_id} cannot be read: {describe(exc)}"
            logger.error("%s; moved to the failed registry.", reason)
            fail_job(self.connection, queue, job_id, reason, self.failure_ttl)
            registry.remove(job_id)
            return
        with self.connection.pipeline() as pipe:
            queue._enqueue_job(
                job, pipeline=pipe, at_front=job.should_enqueue_at_front()
            )
            registry.remove(job.id, pipeline=pipe)
            pipe.execute()
