"""RQ workers that run handlers inside the Flask app."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask
from redis.exceptions import RedisError, ResponseError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.worker import BaseWorker

from .dequeue import MessagingQueue
from .dispatch import job_class_for
from .extension import get_state
from .forking import after_fork
from .job_faults import JobFaultsMixin, describe, fail_job
from .parent_death import stop_with_parent
from .scheduling import CHECK_INTERVAL, keep_scheduling
from .serializer import JSONSerializer

if TYPE_CHECKING:
    from .outbox import Relay

__all__ = [
    "ForkingMessagingWorker",
    "MessagingWorker",
    "RestartPause",
    "make_worker",
    "run_workers",
]

W = TypeVar("W", bound=BaseWorker)

logger = logging.getLogger("flask_messaging")


class _MessagingWorkerMixin:
    """What our workers add to RQ's.

    Each job runs inside an app context, as a request would; jobs are taken
    through :class:`~flask_messaging.dequeue.MessagingQueue`; a job RQ cannot
    read is failed instead of stopping the worker; and RQ's bookkeeping
    writes that change nothing are skipped (about a fifth of a trivial job's
    Redis round trips).
    """

    #: A heartbeat with RQ's default TTL this recent is not repeated.
    HEARTBEAT_INTERVAL = 1.0

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        self.app = app
        self._default_heartbeat_at: float | None = None
        #: When this worker last looked at the scheduler locks (monotonic);
        #: None while it does not (in a burst, or without a scheduler).
        self._scheduling_checked_at: float | None = None
        super().__init__(*args, **kwargs)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
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
                # Our key was of another type (JobFaultsMixin writes it anew).
                if not self._replaced_foreign_worker_key(exc):  # type: ignore[attr-defined]
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

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._log_subscribers()

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

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ sets "idle" at each dequeue, whether or not it already is.
        if pipeline is None and state == self._state:  # type: ignore[attr-defined]
            return
        super().set_state(state, pipeline)  # type: ignore[misc]

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
            try:
                return super().dequeue_job_and_maintain_ttl(  # type: ignore[misc,no-any-return]
                    timeout, max_idle_time
                )
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                queue = getattr(exc, "queue", None)
                if job_id is None or not isinstance(queue, Queue):
                    raise
                self._fail_unreadable(job_id, queue, exc)

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


class MessagingWorker(_MessagingWorkerMixin, JobFaultsMixin, SimpleWorker):
    """Runs jobs in the worker process itself: no fork per job.

    A fork per job costs about four times the work of a trivial handler; a
    handler that leaks state or crashes the interpreter is the price. Use
    :class:`ForkingMessagingWorker` (``--fork``) for that isolation.
    """


class ForkingMessagingWorker(_MessagingWorkerMixin, JobFaultsMixin, Worker):
    """Forks a work horse per job, as ``rq worker`` does.

    Each work horse opens its own database and Redis connections
    (:func:`~flask_messaging.forking.after_fork`).
    """

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        after_fork(self.app, self.connection)
        super().main_work_horse(job, queue)


def make_worker(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    fork: bool = False,
    name: str | None = None,
    worker_class: type[W] | None = None,
    **kwargs: Any,
) -> W:
    """Build a worker for ``app`` on ``queues`` (default ``MESSAGING_QUEUES``).

    Only jobs of this package run: every job is fetched as a
    :class:`~flask_messaging.dispatch.MessagingJob` bounded by
    ``MESSAGING_MAX_MESSAGE_BYTES`` and decoded as JSON; a fault of one job
    fails that job, not the worker (:mod:`flask_messaging.job_faults`).
    """
    state = get_state(app)
    cls: type[Any] = worker_class or (
        ForkingMessagingWorker if fork else MessagingWorker
    )
    worker: W = cls(
        list(queues or state.queue_names()),
        name=name,
        connection=state.redis,
        job_class=job_class_for(state.settings.max_message_bytes),
        queue_class=MessagingQueue,
        serializer=JSONSerializer,
        default_result_ttl=state.settings.jobs.result_ttl,
        app=app,
        **kwargs,
    )
    return worker


def run_workers(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    processes: int = 1,
    burst: bool = False,
    with_scheduler: bool = True,
    fork: bool = False,
    max_jobs: int | None = None,
    logging_level: str = "INFO",
    relay: Relay | None = None,
) -> int:
    """Run ``processes`` workers until they stop; return an exit status.

    SIGTERM or SIGINT asks each worker for a warm shutdown: it finishes the
    job in hand, then exits. A second one stops it at once. With
    ``processes`` above 1 the status is the highest of the children's (see
    :class:`_Supervisor`): 128 + the signal's number for a child killed by a
    signal, as shells report it (137 for ``kill -9``). Each child stops warm
    if this process dies (:mod:`flask_messaging.parent_death`).

    :param relay: also relay the outbox from this process: one pass before a
        burst, else in a thread for as long as the workers run.
    """
    work_kwargs: dict[str, Any] = {
        "burst": burst,
        "with_scheduler": with_scheduler,
        "max_jobs": max_jobs,
        "logging_level": logging_level,
    }
    if relay is not None and burst:
        with app.app_context():
            relay.run_once()
        relay = None
    if processes == 1:
        with _relaying(app, relay):
            _work(app, queues, fork, work_kwargs)
        return 0

    # One worker per child process; the parent relays signals, waits, and
    # replaces a child that dies unasked.
    context = multiprocessing.get_context("fork")
    parent_pid = os.getpid()
    supervisor = _Supervisor(
        lambda n: context.Process(
            target=_child,
            args=(app, queues, fork, work_kwargs, parent_pid),
            name=f"worker-{n}",
        ),
        ends_on_its_own=bool(burst or max_jobs),
    )
    supervisor.start(processes)
    # Threads start after the fork: a child must not inherit their locks.
    relaying = _relaying(app, relay)
    relaying.__enter__()
    previous = {
        sig: signal.signal(sig, supervisor.forward)
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return supervisor.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        relaying.__exit__(None, None, None)


def _stop_group(pid: int | None) -> None:
    """SIGTERM what is left of a worker process's group once it has ended.

    A worker killed outright leaves its scheduler process (and a work horse)
    running, holding the scheduler's locks: a replacement could not
    schedule. Each child leads a group of its own (see :func:`_child`).
    """
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


class _Supervisor:
    """The parent of ``--processes N``: one worker process per slot.

    A child that ends without being asked to (a handler that kills its own
    process or calls ``os._exit``, the interpreter crashing) is reaped and
    replaced after the pause of :class:`RestartPause`, per slot, as
    :func:`_work` replaces a worker that stops unasked. A burst or
    ``max_jobs`` child that exits with status 0 has ended its run; one
    killed by a signal is replaced, to finish the run; one that exits with
    an error ends its slot with that status.

    The status of :meth:`wait` never hides a child killed by a signal: it is
    128 + the signal's number (as shells report it) for a child killed while
    the pool stops, or whose replacement had not started yet.
    """

    def __init__(
        self,
        make: Callable[[int], multiprocessing.process.BaseProcess],
        ends_on_its_own: bool,
    ) -> None:
        self._make = make
        self._ends_on_its_own = ends_on_its_own
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._started_at: dict[int, float] = {}
        self._due: dict[int, float] = {}
        self._pauses: dict[int, RestartPause] = {}
        self._codes: dict[int, int] = {}
        self._stopping = False

    def start(self, processes: int) -> None:
        for slot in range(processes):
            self._pauses[slot] = RestartPause()
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._codes.pop(slot, None)  # the replaced child's; the new one's counts
        child = self._make(slot)
        child.start()
        self._children[slot] = child
        self._started_at[slot] = time.monotonic()

    def forward(self, signum: int, frame: FrameType | None) -> None:
        """Pass SIGTERM or SIGINT to every child; replace none from now on."""
        self._stopping = True
        for child in list(self._children.values()):
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    def wait(self) -> int:
        """Supervise until every slot has ended; return the highest status."""
        while self._children or self._due:
            if self._stopping:
                self._due.clear()
            timeout = 1.0
            if self._due:
                timeout = min(
                    timeout, max(0.0, min(self._due.values()) - time.monotonic())
                )
            sentinels = [child.sentinel for child in self._children.values()]
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout)
            else:
                time.sleep(timeout)
            for slot, child in list(self._children.items()):
                if child.exitcode is None:
                    continue
                child.join()  # reaped: no zombie
                del self._children[slot]
                self._ended(slot, child.exitcode)
                _stop_group(child.pid)
            now = time.monotonic()
            for slot, at in list(self._due.items()):
                if now >= at and not self._stopping:
                    del self._due[slot]
                    self._spawn(slot)
        return max(self._codes.values(), default=0)

    def _ended(self, slot: int, code: int) -> None:
        killed = code < 0
        # multiprocessing gives -N for a signal: max() with 0 would hide it.
        self._codes[slot] = 128 - code if killed else code
        if self._stopping or (self._ends_on_its_own and not killed):
            return
        pause = self._pauses[slot].after_run(time.monotonic() - self._started_at[slot])
        logger.error(
            "Worker process %d ended unasked (%s); a new one starts in %.0f s.",
            slot,
            f"killed by signal {-code}" if killed else f"exit status {code}",
            pause,
        )
        self._due[slot] = time.monotonic() + pause


@contextmanager
def _relaying(app: Flask, relay: Relay | None) -> Iterator[None]:
    """Run ``relay`` in a thread of this process inside the block."""
    if relay is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        with app.app_context():
            relay.run(stop)

    thread = threading.Thread(target=run, name="flask-messaging-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def _child(
    app: Flask,
    queues: Sequence[str],
    fork: bool,
    work_kwargs: dict[str, Any],
    parent_pid: int,
) -> None:
    # Until RQ installs its own handlers, a stop asked for (or the parent's
    # death) ends the child cleanly; the parent's handler, inherited by a
    # replacement, belongs to the parent.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_asked)
    # An orphan would work on unsupervised, without the parent's relay.
    stop_with_parent(parent_pid)
    # A group of its own: what it leaves running if it dies is stopped with
    # it (_stop_group); the parent passes on SIGTERM and SIGINT.
    os.setpgid(0, 0)
    after_fork(app)
    _work(app, queues, fork, work_kwargs)


def _exit_asked(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _work(
    app: Flask, queues: Sequence[str], fork: bool, work_kwargs: dict[str, Any]
) -> None:
    """Run a worker until asked to stop, replacing it if RQ's loop gives up.

    RQ's work loop quits, as if done, when Redis is unreachable at the wrong
    moment (as a job ends, say): a worker that nobody asked to stop is
    replaced after a pause (:class:`RestartPause`), so a Redis restart does
    not leave the queues without workers.
    """
    pauses = RestartPause()
    while True:
        worker: BaseWorker = make_worker(app, queues, fork=fork)
        started = time.monotonic()
        try:
            worker.work(**work_kwargs)
        except (RedisError, OSError):
            if work_kwargs["burst"]:
                raise
            logger.warning("The worker lost Redis.", exc_info=True)
        else:
            asked_to_stop = worker._stop_requested or (
                worker._shutdown_requested_date is not None
            )
            if asked_to_stop or work_kwargs["burst"] or work_kwargs["max_jobs"]:
                return
        pause = pauses.after_run(time.monotonic() - started)
        logger.warning(
            "The worker stopped unasked (Redis unreachable?); a new one starts"
            " in %.0f s.",
            pause,
        )
        if _pause(pause):
            return


class RestartPause:
    """Seconds to wait before replacing a worker that stopped unasked.

    The pause doubles from :attr:`FIRST` up to :attr:`LONGEST` while workers
    keep stopping soon after they start (Redis down for a while), and is back
    to :attr:`FIRST` once a worker has run :attr:`HEALTHY` seconds: a stop
    after a healthy run is a new incident, not the last one going on.
    """

    FIRST = 1.0
    LONGEST = 30.0
    HEALTHY = 60.0

    def __init__(self) -> None:
        self._next = self.FIRST

    def after_run(self, seconds: float) -> float:
        """The pause after a worker that ran ``seconds`` stopped unasked."""
        if seconds >= self.HEALTHY:
            self._next = self.FIRST
        pause = self._next
        self._next = min(pause * 2, self.LONGEST)
        return pause


def _pause(seconds: float) -> bool:
    """Sleep, or return True at once if SIGTERM or SIGINT arrives."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
