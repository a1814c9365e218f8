"""RQ workers that run handlers inside the Flask app.

Each job runs in an app context; jobs are taken through
:class:`~.dequeue.MessagingQueue` and read as :class:`~.job.MessagingJob`;
the faults of one job fail that job (:mod:`.job_faults`). Every method of
RQ's ``Worker`` overridden here is named in ``tests/test_rq_contract.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from flask import Flask
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.command import handle_command, parse_payload
from rq.exceptions import StopRequested
from rq.job import Job
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from ..state import MessagingState, get_state
from . import lifecycle
from .dequeue import current_taker
from .job_faults import CheckedScheduler, JobFaultsMixin, describe, fail_job
from .objects import RQObjects
from .redis_entries import is_wrong_type, key_type
from .scheduling import CHECK_INTERVAL, keep_scheduling

__all__ = [
    "ForkingMessagingWorker",
    "MessagingWorker",
    "ThreadScheduler",
    "ThreadWorker",
    "stop_was_asked",
]

logger = logging.getLogger("flask_messaging")

#: RQ's commands that stop one job (rq 3 adds stop-execution).
STOP_COMMANDS = ("stop-job", "stop-execution")

#: Seconds a burst that found the queues empty waits for the jobs of events
#: its handlers committed (the sender writes them just after each commit).
BURST_SEND_TIMEOUT = 10.0


class _MessagingWorkerMixin:
    """What our workers add to RQ's.

    Each job runs inside an app context, as a request would; jobs are taken
    through :class:`~.dequeue.MessagingQueue`; a job RQ cannot read is
    failed instead of stopping the worker; the worker's own key is written
    again when Redis lost it or something else replaced it; and RQ's
    bookkeeping writes that change nothing are skipped (about a fifth of a
    trivial job's Redis round trips).
    """

    #: Seconds: a heartbeat with RQ's default TTL this recent is not repeated.
    HEARTBEAT_INTERVAL = 1.0

    #: Seconds between looks at whether ``rq suspend`` suspended the workers.
    SUSPENSION_CHECK_INTERVAL = 1.0

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        self.app = app
        self._default_heartbeat_at: float | None = None
        #: When this worker last looked at the scheduler locks (monotonic);
        #: None while it does not (in a burst, or without a scheduler).
        self._scheduling_checked_at: float | None = None
        #: True while RQ's idle loop waits for a job (see request_stop).
        self._waiting_for_job = False
        self._suspension_checked_at: float | None = None
        #: A cold shutdown was asked for (a second signal).
        self._cold = False
        #: From a take's start until the worker turns busy: jobs taken may
        #: be in hand, and a stop must not be raised here (see _shutdown).
        self._holding = False
        #: The sender and its count of commits when a burst last found the
        #: queues empty (see _sender_sent_more).
        self._sender_seen: tuple[int, int] | None = None
        super().__init__(*args, **kwargs)

    def request_stop(self, signum: Any, frame: Any) -> None:
        # RQ raises StopRequested out of this handler when the worker is idle.
        # Raised while a finalizer or a logging handler runs, Python drops it
        # ("Exception ignored in ...") and the worker waits on, an orphan if
        # its parent died: the flag stays, and the idle loop looks at it at
        # its next turn (heartbeat, below).
        self._stop_requested = True
        super().request_stop(signum, frame)  # type: ignore[misc]

    def _shutdown(self) -> None:
        # RQ raises StopRequested here whenever the worker is not busy,
        # wherever it is: between a take and the start of the jobs it took
        # (the take's reply on its way, say), those jobs would stay on the
        # intermediate list until RQ's clean-up failed them, minutes later.
        # There, the stop waits: the jobs in hand start and finish (a warm
        # shutdown), then the loop ends; a take that found nothing raises
        # it (took_none).
        if self._holding and self.get_state() != WorkerStatus.BUSY:  # type: ignore[attr-defined]
            return  # request_stop set _stop_requested
        super()._shutdown()  # type: ignore[misc]

    def taking(self) -> None:
        self._holding = True

    def took_none(self) -> None:
        self._holding = False
        if self._stop_requested:
            raise StopRequested()

    def request_force_stop(self, signum: Any, frame: Any) -> None:
        # RQ raises SystemExit here, where the worker happens to be: a job
        # that sees it must know it is the worker's stop, not its handler's.
        self._cold = True
        super().request_force_stop(signum, frame)  # type: ignore[misc]

    def check_for_suspension(self, burst: bool) -> None:
        # RQ looks before every job, a round trip each: once a second is soon
        # enough for an operator's 'rq suspend'.
        moment = time.monotonic()
        checked_at = self._suspension_checked_at
        if (
            checked_at is not None
            and moment - checked_at < self.SUSPENSION_CHECK_INTERVAL
        ):
            return
        self._suspension_checked_at = moment
        try:
            super().check_for_suspension(burst)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError):
            # RQ's loop would quit on it, and the worker be replaced under
            # another name: the wait for a job that follows rides out a
            # Redis restart (RQ retries there), and registers again.
            logger.warning("Could not ask Redis whether workers are suspended.")

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if self._waiting_for_job and self._stop_requested and not self._holding:
            raise StopRequested()
        if pipeline is None:
            self._keep_scheduling()
        # RQ sends one before and one after every dequeue (three round trips
        # each), extending the worker's key by minutes. Skip one that would
        # only repeat the last, when that one set the same (default) TTL.
        default = timeout is None
        recent = self._default_heartbeat_at
        if default and pipeline is None and recent is not None:
            if time.monotonic() - recent < self.HEARTBEAT_INTERVAL:
                return
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        else:
            # One round trip instead of two or three; the reply of RQ's first
            # command (HSET last_heartbeat) says whether our hash was there.
            try:
                with self.connection.pipeline() as pipe:  # type: ignore[attr-defined]
                    super().heartbeat(timeout, pipe)  # type: ignore[misc]
                    created = pipe.execute()[0]
            except ResponseError as exc:
                # Our key was of another type, now written anew: register
                # it again below, its state with it.
                if not self._replaced_foreign_worker_key(exc):
                    raise
                created = True
            if created:
                self._register_again()
        self._default_heartbeat_at = time.monotonic() if default else None

    def _register_again(self) -> None:
        """Register this worker anew: Redis lost its record (a restart, a flush).

        Without it ``flask messaging status``, the dashboard and RQ's own
        tools would say there are no workers while this one works on.
        """
        logger.warning(
            "Worker %s was no longer registered on Redis (restarted or"
            " flushed?): registering it again.",
            self.name,  # type: ignore[attr-defined]
        )
        self.connection.delete(self.key)  # type: ignore[attr-defined]
        self.register_birth()  # type: ignore[attr-defined]
        with self.connection.pipeline() as pipe:  # type: ignore[attr-defined]
            super().set_state(self._state, pipe)  # type: ignore[attr-defined,misc]
            pipe.execute()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if state == WorkerStatus.BUSY:
            self._holding = False  # the jobs taken are started: RQ defers a stop
        # RQ sets "idle" at each dequeue, whether or not it already is.
        if pipeline is None and state == self._state:  # type: ignore[attr-defined]
            return
        try:
            super().set_state(state, pipeline)  # type: ignore[misc]
        except ResponseError as exc:
            if not self._replaced_foreign_worker_key(exc):
                raise
            super().set_state(state, pipeline)  # type: ignore[misc]

    def _replaced_foreign_worker_key(self, exc: Exception) -> bool:
        """Write the worker's own key again if it is of another type.

        RQ writes it as a hash at each heartbeat and state change; a key of
        another type there (written by someone else) would make that raise
        and end the work loop, with a job in hand.

        :return: whether the key was replaced (the write can be tried again).
        """
        worker: Any = self
        if not is_wrong_type(exc):
            return False
        found = key_type(worker.connection, worker.key)
        if found in ("none", "hash"):
            return False
        logger.error(
            "Redis key %s, this worker's own, was a %s (written there by"
            " someone else?): written again as RQ's worker hash.",
            worker.key,
            found,
        )
        worker.connection.delete(worker.key)
        worker.register_birth()
        return True

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        # RQ registers the worker here, starts its scheduler process, and only
        # then installs its own SIGTERM and SIGINT handlers. A stop asked for
        # in between (the parent of --processes N dying at start-up) ended the
        # process with its record left in Redis, a worker that status showed
        # for minutes: stop warm instead, at the work loop's first look.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._stop_when_started)
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._log_subscribers()

    def _stop_when_started(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True

    def _log_subscribers(self) -> None:
        """Say, at start-up, which async subscribers this worker serves."""
        queues = self.queue_names()  # type: ignore[attr-defined]
        subscriptions = [s for s in get_state(self.app).registry if s.is_async]
        served = [s for s in subscriptions if s.queue_name in queues]
        for s in sorted(served, key=lambda s: (queues.index(s.queue_name), s.key)):
            self.log.info(  # type: ignore[attr-defined]
                "Serving %s -> %s on queue %s",
                s.message_type.__message_name__,
                s.key,
                s.queue_name,
            )
        if not served:
            self.log.warning(  # type: ignore[attr-defined]
                "No async subscriber of app %r uses queues %s: every job taken"
                " there will fail as unknown to this app.",
                self.app.name,
                ", ".join(queues),
            )
        for s in subscriptions:
            if s.queue_name not in queues:
                self.log.info(  # type: ignore[attr-defined]
                    "Not serving %s -> %s: queue %s is not one of this worker's",
                    s.message_type.__message_name__,
                    s.key,
                    s.queue_name,
                )

    def handle_payload(self, message: Any) -> None:
        # RQ's lets an error out, which ends its listening thread: after one
        # message on the worker's channel that is not a command (anyone who
        # can write to Redis may publish there), every later stop-job or
        # shutdown command went unheard.
        try:
            payload = parse_payload(message)
            if not isinstance(payload, dict) or not isinstance(
                payload.get("command"), str
            ):
                raise ValueError("not a JSON object with a command")
        except Exception as exc:
            data = message.get("data") if isinstance(message, dict) else message
            logger.error(
                "Worker %s ignored a message on its command channel that is not"
                " an RQ command (%s): %.200r",
                self.name,  # type: ignore[attr-defined]
                describe(exc),
                data,
            )
            return
        try:
            self._handle_command(payload)
        except Exception:
            logger.exception(
                "Worker %s could not carry out command %r.",
                self.name,  # type: ignore[attr-defined]
                payload["command"],
            )

    def _handle_command(self, payload: dict[str, Any]) -> None:
        """Carry out an RQ command sent to this worker (on the pub/sub thread)."""
        handle_command(self, payload)  # type: ignore[arg-type]

    def unsubscribe(self) -> None:
        # RQ unsubscribes, then stops its listening thread: a thread that
        # reads the reply first waits for another message, and every exit
        # waits a second for it. Stopped first, the reply lets it go at once.
        thread = self.pubsub_thread  # type: ignore[attr-defined]
        if thread:
            thread.stop()
            self.pubsub.unsubscribe()  # type: ignore[attr-defined]
            thread.join(timeout=1)
            self.pubsub.close()  # type: ignore[attr-defined]

    def perform_job(self, *args: Any, **kwargs: Any) -> Any:
        with self.app.app_context():
            return super().perform_job(*args, **kwargs)  # type: ignore[misc]

    def prepare_job_execution(
        self, job: Job, remove_from_intermediate_queue: bool = False
    ) -> None:
        # MessagingQueue moves every job it hands out to the intermediate
        # list, whatever the number of queues: always take it off there.
        super().prepare_job_execution(job, True)  # type: ignore[misc]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if timeout is not None and self.scheduler is not None:  # type: ignore[attr-defined]
            # RQ's idle loop comes round (and heartbeats) once per timeout,
            # minutes by default: often enough to take over scheduling.
            timeout = min(timeout, CHECK_INTERVAL)
            if self._scheduling_checked_at is None:
                self._scheduling_checked_at = time.monotonic()
        # RQ's work loop quits on an error it did not expect, such as a job
        # hash it cannot parse: fail that job instead, and take the next.
        while True:
            self._waiting_for_job = True
            told = current_taker.set(self)
            try:
                result = super().dequeue_job_and_maintain_ttl(  # type: ignore[misc]
                    timeout, max_idle_time
                )
                if result is None and timeout is None and self._sender_sent_more():
                    continue  # a burst: look again for the jobs just written
                return result  # type: ignore[no-any-return]
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                queue = getattr(exc, "queue", None)
                if job_id is None or not isinstance(queue, Queue):
                    raise
                self._fail_unreadable(job_id, queue, exc)
            finally:
                current_taker.reset(told)
                self._waiting_for_job = False

    def _sender_sent_more(self) -> bool:
        """Wait for the jobs of events this process's handlers committed.

        The sender writes them just after each commit: a burst that found
        the queues empty meanwhile would end before them. True if commits
        were handed to the sender since the burst last found the queues
        empty (so it looks again).
        """
        sender = get_state(self.app).sender
        if sender is None or sender.pid != os.getpid():
            return False
        seen = (id(sender), sender.handed)
        if seen == self._sender_seen:
            return False
        self._sender_seen = seen
        sender.wait(BURST_SEND_TIMEOUT)
        return True

    def _keep_scheduling(self) -> None:
        """Run RQ's scheduler here if no live worker does (see :mod:`.scheduling`).

        Only in the worker process itself, between jobs, and not once a
        shutdown was asked for: RQ stops the scheduler then.
        """
        checked_at = self._scheduling_checked_at
        if checked_at is None or time.monotonic() - checked_at < CHECK_INTERVAL:
            return
        if self.is_horse or self._stop_requested:  # type: ignore[attr-defined]
            return
        self._scheduling_checked_at = time.monotonic()
        keep_scheduling(self.scheduler)  # type: ignore[attr-defined]

    def _fail_unreadable(self, job_id: str, queue: Queue, exc: Exception) -> None:
        """Move a job that is refused or cannot be read to the failed registry."""
        reason = f"Job {job_id} was not run: {describe(exc)}"
        logger.error(
            "%s. It is moved to the failed registry, for a person to look at"
            " and delete.",
            reason,
            exc_info=exc,
        )
        fail_job(queue.connection, queue, job_id, reason, self._failure_ttl())

    def _failure_ttl(self) -> int:
        return get_state(self.app).settings.jobs.failure_ttl

    def _objects(self) -> RQObjects:
        max_message_bytes = get_state(self.app).settings.max_message_bytes
        return RQObjects(self.connection, max_message_bytes)  # type: ignore[attr-defined]


class _LeanJobs:
    """Runs each job in the worker's thread, with its bookkeeping in two round trips.

    RQ's ``SimpleWorker`` spends about ten Redis round trips on a trivial
    job; :mod:`.lifecycle` writes the same records in one pipeline as the
    job starts and one as it ends (the worker turns busy and idle in them).
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        worker: Any = self
        started, refused = lifecycle.start(worker, [(job, queue)])
        if refused:
            raise refused[0][2]  # failed as any fault of this job is
        (running,) = started
        if not lifecycle.FAILURE_TAKES_EXECUTION:
            worker.execution = running.execution  # rq 2 reads it from here
        try:
            timeout = job.timeout or queue.DEFAULT_TIMEOUT
            with worker.app.app_context():
                with worker.death_penalty_class(
                    timeout, JobTimeoutException, job_id=job.id
                ):
                    job.perform()
            job.ended_at = now()
        except BaseException:
            # A cold shutdown (SystemExit) fails the job in hand, per its
            # retry policy, before it ends the worker; a handler's own
            # SystemExit or KeyboardInterrupt fails only its job, as in RQ.
            lifecycle.record_failure(worker, running, lifecycle.current_exc_info())
            if worker._cold:
                raise
        else:
            lifecycle.record_successes(worker, [running], idle=True)
        finally:
            if not lifecycle.FAILURE_TAKES_EXECUTION:
                worker.execution = None


class MessagingWorker(_MessagingWorkerMixin, JobFaultsMixin, _LeanJobs, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job.

    A fork per job costs about four times the work of a trivial handler; a
    handler that leaks state or crashes the interpreter is the price. Use
    :class:`ForkingMessagingWorker` (``--fork``) for that isolation.
    """

    def _handle_command(self, payload: dict[str, Any]) -> None:
        if payload["command"] in STOP_COMMANDS:
            # RQ's SimpleWorker marks the job stopped and lets it run on: it
            # ran to its end, and a failure of its own was then not retried.
            logger.warning(
                "Worker %s runs its job in its own thread, which cannot be"
                " stopped: job %s runs to its end (stop jobs with --threads or"
                " --fork workers).",
                self.name,
                payload.get("job_id"),
            )
            return
        super()._handle_command(payload)


class ForkingMessagingWorker(_MessagingWorkerMixin, JobFaultsMixin, Worker):
    """Forks a work horse per job, as ``rq worker`` does.

    Each work horse opens its own database and Redis connections
    (:meth:`~flask_messaging.state.MessagingState.reset_after_fork`).
    """

    #: Seconds a work horse waits, once its job is done, for the jobs of
    #: the events its handler committed to be written (the rest are relayed).
    HORSE_SEND_TIMEOUT = 5.0

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        get_state(self.app).reset_after_fork(self.connection)
        super().main_work_horse(job, queue)

    def perform_job(self, *args: Any, **kwargs: Any) -> Any:
        # Run in the work horse, which RQ ends with os._exit, past the exit
        # hook that flushes the sender: events its handler committed would
        # wait for the relay (MESSAGING_RELAY_DELAY) instead.
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            get_state(self.app).close_sender(self.HORSE_SEND_TIMEOUT)


class ThreadWorker(MessagingWorker):
    """A worker that can live in a non-main thread: no signals anywhere.

    It waits for jobs in slices of :attr:`poll_interval` seconds, so that a
    stop asked for with :meth:`request_stop` is seen within one.
    """

    death_penalty_class = TimerDeathPenalty

    #: Seconds between checks for a stop request while idle.
    poll_interval = 1

    def _install_signal_handlers(self) -> None:
        pass

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        self._stop_requested = True

    def procline(self, message: str) -> None:
        pass  # the process title belongs to the app

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        # RQ's blocking pop only gives up for an idle limit; wait in short
        # slices so that a stop request is seen within a second.
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(
                self.poll_interval, max_idle_time=self.poll_interval
            )
            if result is not None:
                return result
        return None


def stop_was_asked(worker: BaseWorker) -> bool:
    """Whether ``worker`` ended its work loop because a stop was asked for.

    RQ's loop also ends, as if done, when Redis is unreachable at the wrong
    moment; a caller replaces the worker then.
    """
    return bool(worker._stop_requested or worker._shutdown_requested_date is not None)


class ThreadScheduler:
    """RQ's scheduler for an app's queues, run from a thread of the app.

    RQ's scheduler runs in a forked process, which cannot share an
    in-process Redis (``memory://``): :meth:`move_due` does its work once.
    """

    def __init__(self, state: MessagingState) -> None:
        objects = RQObjects.of(state)
        scheduler = CheckedScheduler(
            list(state.queue_names()),
            connection=objects.connection,
            serializer=objects.serializer,
        )
        scheduler.max_message_bytes = objects.max_message_bytes
        scheduler.failure_ttl = state.settings.jobs.failure_ttl
        self._scheduler = scheduler

    def move_due(self) -> None:
        """Move due retries and scheduled jobs onto their queues."""
        self._scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        self._scheduler.enqueue_scheduled_jobs()
