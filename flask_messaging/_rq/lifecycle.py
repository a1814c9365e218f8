"""A job's bookkeeping in Redis: one pipeline as it starts, one as it ends.

RQ's worker writes a job's start in two pipelines (its execution, then its
fields) and its end in a transaction that WATCHes the job's dependents, with
heartbeats before and after: about ten round trips for a trivial job. Our
jobs have no dependents, callbacks, repeats or rate limits (``job_hash``
refuses those fields), so the same writes, made with RQ's own building
blocks, fit in one pipeline as jobs start and one as they end; a worker
running several jobs at once (:mod:`.threaded`) shares each pipeline among
the jobs that start or end together. What RQ's tools read stays as RQ
leaves it: the execution in the started registry while the job runs, the
job's status, the result stream, the finished or failed registry, and the
worker's counters.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

__all__ = [
    "FAILURE_TAKES_EXECUTION",
    "ExcInfo",
    "Running",
    "current_exc_info",
    "become_idle",
    "extend",
    "record_failure",
    "record_successes",
    "start",
]

logger = logging.getLogger("flask_messaging")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# rq 3 passes the execution to handle_job_failure; rq 2 keeps it on the
# worker (one at a time).
FAILURE_TAKES_EXECUTION = (
    "execution" in inspect.signature(BaseWorker.handle_job_failure).parameters
)

# rq 2 keeps the job in hand in the worker's hash (current_job), rq 3 its
# executions in a set of their own.
_KEEPS_CURRENT_JOB = hasattr(BaseWorker, "set_current_job_id")


@dataclass(eq=False)
class Running:
    """A job this worker has started, until its end is recorded."""

    job: Job
    queue: Queue
    execution: Execution
    #: ``time.monotonic()`` past which the job is failed as timed out, or
    #: None (no timeout).
    deadline: float | None
    #: The thread running the handler, while it does (for the watchdog).
    thread: threading.Thread | None = None
    #: An ``async def`` handler's coroutine, once handed to the event loop.
    future: concurrent.futures.Future[None] | None = None
    #: How it ended is decided, and recorded once, by whoever decided: its
    #: thread, the event loop, or the watchdog that wrote it off.
    claimed: bool = False
    #: Stopped on request (RQ's ``send_stop_job_command``): recorded as
    #: STOPPED, not retried.
    stopped: bool = False
    #: When its execution was last kept alive (``time.monotonic()``).
    extended_at: float = field(default_factory=time.monotonic)


def start(
    worker: BaseWorker, taken: Sequence[tuple[Job, Queue]]
) -> tuple[list[Running], list[tuple[Job, Queue, Exception]]]:
    """Record ``taken`` jobs as started, in one transaction.

    Each gets RQ's execution (in the queue's started registry and the
    worker's executions), the job's status, start and worker fields, its key
    made persistent, and its id taken off the queue's intermediate list, as
    RQ's ``prepare_execution`` and ``prepare_job_execution`` write them.
    The worker becomes busy if it was not.

    :return: the jobs started, and those whose start Redis refused (a key
        of another type, written there by someone else), each with why: the
        others' starts are written all the same.
    :raises redis.RedisError: Redis refused the worker's own writes, or
        could not be reached.
    """
    running: list[Running] = []
    spans: list[tuple[int, int]] = []
    started = time.monotonic()
    with worker.connection.pipeline() as pipe:
        for job, queue in taken:
            first = len(pipe)
            ttl = worker.get_heartbeat_ttl(job)
            execution = Execution.create(
                job, ttl, pipeline=pipe, worker_name=worker.name
            )
            job.prepare_for_execution(worker.name, pipe)
            pipe.persist(job.key)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            spans.append((first, len(pipe)))
            timeout = job.timeout or queue.DEFAULT_TIMEOUT
            deadline = None if timeout < 0 else started + timeout
            running.append(Running(job, queue, execution, deadline))
        own = len(pipe)
        if _KEEPS_CURRENT_JOB:
            # rq 2 names one job in the worker's hash: the latest started.
            rq2: Any = worker
            rq2.set_current_job_id(job.id, pipeline=pipe)
            rq2.set_current_job_working_time(0, pipeline=pipe)
        if worker.get_state() != WorkerStatus.BUSY:
            worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        # Redis runs every command of the transaction even when one fails:
        # one job's key of another type must not fail the others with it.
        replies = pipe.execute(raise_on_error=False)
    for reply in replies[own:]:
        if isinstance(reply, Exception):
            raise reply
    refused: list[tuple[Job, Queue, Exception]] = []
    kept: list[Running] = []
    for r, (first, last) in zip(running, spans, strict=True):
        error = next((x for x in replies[first:last] if isinstance(x, Exception)), None)
        if error is None:
            kept.append(r)
        else:
            refused.append((r.job, r.queue, error))
    executions = getattr(worker, "executions", None)
    if isinstance(executions, dict):  # rq 3 keeps every execution in hand
        for r in kept:
            executions[r.execution.id] = r.execution
    return kept, refused


def record_successes(
    worker: BaseWorker, done: Sequence[Running], idle: bool = False
) -> None:
    """Record ``done`` jobs as finished, in one transaction.

    Each job's result (RQ's result stream) and place in the finished registry
    are kept for its result TTL, its execution is removed from the started
    registry, and the worker's counters grow, as RQ's ``handle_job_success``
    writes them; with ``idle``, the worker becomes idle too.
    """
    with worker.connection.pipeline() as pipe:
        for r in done:
            job = r.job
            worker.increment_successful_job_count(pipeline=pipe)
            worker.increment_total_working_time(
                job.ended_at - job.started_at,  # type: ignore[operator]
                pipe,
            )
            result_ttl = job.get_result_ttl(worker.default_result_ttl)
            if result_ttl != 0:
                # RQ's job._handle_success, less its job.save(): that writes
                # every field again (and compresses the payload again) where
                # only the status and the end changed.
                job.set_status(JobStatus.FINISHED, pipeline=pipe)
                pipe.hset(job.key, "ended_at", utcformat(job.ended_at or now()))
                Result.create(
                    job,
                    Result.Type.SUCCESSFUL,
                    ttl=result_ttl,
                    return_value=job._result,
                    worker_name=worker.name,
                    pipeline=pipe,
                    execution_id=r.execution.id,
                    execution_started_at=r.execution.created_at,
                    execution_ended_at=job.ended_at,
                )
                job.finished_job_registry.add(job, result_ttl, pipe)
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            r.execution.delete(job, pipe)
        if _KEEPS_CURRENT_JOB:
            rq2: Any = worker
            rq2.set_current_job_id(None, pipeline=pipe)
        if idle:
            # Not set_state: it makes the worker idle in memory at once, and
            # a stop asked for before the pipeline runs would then be raised
            # out of it (RQ stops an idle worker where it is), the jobs'
            # ends unwritten.
            pipe.hset(worker.key, "state", WorkerStatus.IDLE)
        pipe.execute()
    if idle:
        worker._state = WorkerStatus.IDLE
    _forget(worker, done)
    for r in done:
        worker.log.info("%s: Job OK (%s)", r.job.origin, r.job.id)


def record_failure(worker: BaseWorker, r: Running, exc_info: ExcInfo) -> None:
    """Record ``r``'s job as failed by ``exc_info``: retried or failed, per policy.

    Through RQ's ``handle_exception`` (logs, exception handlers) and
    ``handle_job_failure`` (retry or failed registry; STOPPED for a job
    stopped on request). One caller at a time: rq 2 reads the execution
    from the worker, and both read the stopped job from it.
    """
    job = r.job
    job.ended_at = job.ended_at or now()
    if r.stopped:
        # RQ's mark of a job stopped on request: STOPPED, never retried.
        worker._stopped_job_id = job.id
    worker.handle_exception(job, *exc_info)
    exc_string = "".join(traceback.format_exception(*exc_info))
    if FAILURE_TAKES_EXECUTION:
        worker.handle_job_failure(
            job=job,
            queue=r.queue,
            started_job_registry=r.queue.started_job_registry,
            exc_string=exc_string,
            execution=r.execution,
        )
    else:
        worker.execution = r.execution
        try:
            worker.handle_job_failure(
                job=job,
                queue=r.queue,
                started_job_registry=r.queue.started_job_registry,
                exc_string=exc_string,
            )
        finally:
            worker.execution = None
    _forget(worker, [r])


def become_idle(worker: BaseWorker) -> None:
    """Record the worker idle (its last job in hand has ended)."""
    worker.set_state(WorkerStatus.IDLE)


def extend(worker: BaseWorker, running: Sequence[Running]) -> None:
    """Keep the executions of long jobs alive, as RQ's work horse monitor does.

    Without it, a job running longer than about its heartbeat TTL (RQ's
    ``job_monitoring_interval`` plus a minute) would look abandoned to the
    clean-up of every other worker.
    """
    if not running:
        return
    with worker.connection.pipeline() as pipe:
        worker.heartbeat(worker.worker_ttl + 60, pipeline=pipe)
        for r in running:
            job = r.job
            working = (now() - job.started_at).total_seconds() if job.started_at else 0
            ttl = int(worker.get_heartbeat_ttl(job, working_time=working))
            r.execution.heartbeat(job.started_job_registry, ttl, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
        pipe.execute()
    extended = time.monotonic()
    for r in running:
        r.extended_at = extended


def current_exc_info() -> ExcInfo:
    """``sys.exc_info()`` inside an ``except`` block, typed as never empty."""
    exc_type, exc, tb = sys.exc_info()
    assert exc_type is not None and exc is not None
    return exc_type, exc, tb


def _forget(worker: BaseWorker, done: Sequence[Running]) -> None:
    executions: Any = getattr(worker, "executions", None)
    if isinstance(executions, dict):
        for r in done:
            executions.pop(r.execution.id, None)
