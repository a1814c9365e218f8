"""A worker that runs several jobs at once: ``flask messaging worker --threads N``.

One worker process, one registration in RQ's tools, up to ``threads`` jobs
in hand, each with its own execution in the started registry:

- the main thread runs RQ's work loop (heartbeats, maintenance, scheduling,
  signals); it takes a job only while an executor thread is free, through
  :class:`~.dequeue.MessagingQueue` (no job lost by a dying worker), and
  records its start (:func:`.lifecycle.start`);
- ``threads`` executor threads run the handlers, each job in an app context
  of its own; an ``async def`` handler is handed to the process's event loop
  (:class:`~flask_messaging.coroutines.HandlerLoop`) and its thread is free
  at once, so up to ``async_limit`` coroutines wait at once beside the
  threads (the worker holds at most ``async_limit`` jobs, coroutines
  included, so each finds a place on the loop at once);
- a recorder thread writes the jobs' ends: the successes that end together
  in one pipeline, failures through RQ's failure handling (retries, failed
  registry);
- a watchdog keeps the executions of long jobs alive and fails a job past
  its timeout at once, per its retry policy, while the others go on (see
  :meth:`ThreadedMessagingWorker._write_off`).

A warm shutdown (SIGTERM, Ctrl+C) stops taking jobs and lets those in hand
finish; a second signal stops at once, and the jobs in hand are failed (and
retried, per policy) before the process exits. RQ's
``send_stop_job_command`` stops the job it names, whichever thread runs
it: STOPPED, not retried.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import queue as queues
import threading
import time
from functools import partial
from typing import Any

from rq import timeouts
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from ..coroutines import HandlerLoop
from ..dispatch import deferring_coroutines
from ..errors import LOST_REDIS
from . import lifecycle
from .dequeue import MessagingQueue
from .job_faults import describe, fail_job
from .lifecycle import ExcInfo, Running
from .workers import STOP_COMMANDS, MessagingWorker

__all__ = ["ThreadedMessagingWorker"]

logger = logging.getLogger("flask_messaging")

#: Seconds between the watchdog's looks at the jobs in hand.
WATCH_INTERVAL = 0.2

#: Most job ends the recorder writes in one pipeline.
RECORD_BATCH = 100

#: Seconds a cold shutdown waits for the failures of the jobs in hand.
COLD_RECORD_WAIT = 5.0

#: Most ``async def`` handlers in flight at once per process, by default.
ASYNC_LIMIT = 100

#: Seconds past its deadline after which a coroutine the event loop did not
#: time out (the loop blocked, or the handler swallowed its cancellation)
#: is failed by the watchdog.
ASYNC_GRACE = 5.0

#: Why the jobs in hand failed, in a cold shutdown.
COLD_SHUTDOWN = "the worker was stopped at once (cold shutdown)"

_Ended = tuple[Running, ExcInfo | None]


class JobTimeoutException(timeouts.JobTimeoutException):
    """RQ's, with a message of its own.

    RQ's ``TimerDeathPenalty`` (the embedded worker's) replaces
    ``JobTimeoutException.__init__`` for the whole process, so that every
    later instance says its own timeout, whatever the job's.
    """

    def __init__(self, message: str = "Task exceeded its timeout") -> None:
        Exception.__init__(self, message)


class ThreadedMessagingWorker(MessagingWorker):
    """Runs up to ``threads`` jobs at once in one process (see the module)."""

    def __init__(
        self, *args: Any, threads: int, async_limit: int = ASYNC_LIMIT, **kwargs: Any
    ) -> None:
        if threads < 2:
            raise ValueError(
                f"A threaded worker runs 2 or more threads, not {threads}:"
                " use MessagingWorker for one."
            )
        super().__init__(*args, **kwargs)
        self.threads = threads
        self.async_limit = async_limit
        #: Made in the worker's own process, as it starts (after any fork).
        self._handler_loop: HandlerLoop | None = None
        self._lock = threading.Condition()
        self._free = threading.Semaphore(threads)
        self._todo: queues.SimpleQueue[Running | None] = queues.SimpleQueue()
        self._ended: queues.SimpleQueue[_Ended | None] = queues.SimpleQueue()
        #: Jobs started and not yet recorded as ended, by execution id.
        self._in_hand: dict[str, Running] = {}
        self._executors: set[threading.Thread] = set()
        #: Executors whose job was written off: they end when it returns.
        self._stuck: set[threading.Thread] = set()
        self._recorder: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._watching = threading.Event()
        self._max_jobs: int | None = None
        #: Jobs taken by this worker (for ``max_jobs``).
        self._taken = 0

    # -- the main thread: RQ's work loop ----------------------------------

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self._handler_loop = HandlerLoop(self.async_limit)
        for _ in range(self.threads):
            self._start_executor()
        self._recorder = _thread(self._record, "flask-messaging-recorder")
        self._watchdog = _thread(self._watch, "flask-messaging-watchdog")

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if not self._take_slot():
            return None
        result = None
        try:
            while True:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                # In a burst, a job in hand may still put itself back on a
                # queue (a retry): the burst ends when none is in hand.
                if result is not None or timeout is not None:
                    return result
                if not self._wait_for_ends():
                    return None
        finally:
            if result is None:
                self._free.release()

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop, with ``max_jobs`` counting every job taken."""
        self._max_jobs = kwargs.get("max_jobs")
        return bool(super().work(*args, **kwargs))

    def execute_job(self, job: Job, queue: Queue) -> None:
        # RQ's loop hands over one job; take as many more as threads are
        # free, in the same round trip as far as Redis goes.
        taken = [(job, queue), *self._take_more()]
        self._taken += len(taken)
        if self._max_jobs is not None and self._taken >= self._max_jobs:
            self._stop_requested = True  # RQ's loop counts one job a call
        try:
            started, refused = lifecycle.start(self, taken)
        except LOST_REDIS:
            self._release(len(taken))
            raise  # the jobs wait on the intermediate list for the clean-up
        except Exception as error:
            started, refused = [], [(job, queue, error) for job, queue in taken]
        self._release(len(refused))
        for job, queue, why in refused:
            reason = (
                f"The worker could not start job {job.id}: {describe(why)}."
                " It was moved to the failed registry; its handler did not"
                " run."
            )
            logger.error("%s", reason, exc_info=why)
            fail_job(
                self.connection, queue, job.id, reason, self._failure_ttl(), self.name
            )
        with self._lock:
            for running in started:
                self._in_hand[running.execution.id] = running
        for running in started:
            self._todo.put(running)

    def _handle_command(self, payload: dict[str, Any]) -> None:
        # RQ stops "the" current job by killing a work horse; here several
        # jobs run, in threads: find the one named (on the pub/sub thread).
        if payload["command"] in STOP_COMMANDS:
            self._stop_job(payload.get("job_id"), payload.get("execution_id"))
        else:
            super()._handle_command(payload)

    def _stop_job(self, job_id: str | None, execution_id: str | None) -> None:
        """Fail the job in hand named, as STOPPED (see :meth:`_write_off`)."""
        with self._lock:
            found = [
                r
                for r in self._in_hand.values()
                if r.job.id == job_id
                and execution_id in (None, r.execution.id)
                and not r.claimed
            ]
        if not found:
            logger.warning(
                "Worker %s is not running job %s: stop command ignored.",
                self.name,
                job_id,
            )
            return
        for running in found:
            running.stopped = True
            self._write_off(running, _error(RuntimeError("stopped on request")))
        logger.info("Job %s stopped on request.", job_id)

    def _take_more(self) -> list[tuple[Job, Queue]]:
        """Take a job for each executor free now (a slot each), in one round trip."""
        wanted = self.threads - 1
        if self._max_jobs is not None:
            wanted = min(wanted, self._max_jobs - self._taken - 1)
        with self._lock:  # the job in hand already counts one
            wanted = min(wanted, self.async_limit - len(self._in_hand) - 1)
        slots = 0
        while slots < wanted and self._free.acquire(blocking=False):
            slots += 1
        if not slots:
            return []
        jobs: list[tuple[Job, Queue]] = []
        try:
            taken = MessagingQueue.take(
                self._ordered_queues,
                slots,
                self.connection,
                self.job_class,
                self.serializer,
            )
            for job, queue in taken.jobs:
                if isinstance(job, Exception):
                    self._fail_unreadable(job.job_id, queue, job)  # type: ignore[attr-defined]
                else:
                    jobs.append((job, queue))
        except LOST_REDIS:
            # Taken or not, the first job goes on; any taken here waits on
            # its intermediate list for the clean-up.
            logger.warning("Could not take more jobs.", exc_info=True)
        self._release(slots - len(jobs))
        return jobs

    def _release(self, slots: int) -> None:
        for _ in range(slots):
            self._free.release()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ sets "idle" at each dequeue: not while jobs are in hand.
        if state == WorkerStatus.IDLE and pipeline is None and self._in_hand:
            return
        super().set_state(state, pipeline)

    def teardown(self) -> None:
        try:
            if not self._cold:
                try:
                    self._finish_in_hand()
                except SystemExit:
                    # The usual cold shutdown: the second signal comes while
                    # the first one's warm shutdown waits here for the jobs in
                    # hand, and RQ raises SystemExit in this wait. Left to
                    # propagate, the process exited with those jobs "started",
                    # found abandoned only when their executions expired,
                    # minutes later.
                    if not self._cold:
                        raise
                    self._write_off_all(COLD_SHUTDOWN)
                    raise
            else:
                self._write_off_all(COLD_SHUTDOWN)
        finally:
            super().teardown()  # type: ignore[no-untyped-call]

    def _take_slot(self) -> bool:
        """Wait for a free executor and room for one more job in hand.

        Room: fewer jobs in hand, coroutines on the event loop included, than
        ``async_limit``, so that an ``async def`` handler taken now finds a
        place on the loop at once (an executor waiting for one would see its
        job's timeout run out before the handler started).

        :return: False if a stop is asked meanwhile.
        """
        while True:
            if self._free.acquire(timeout=0.5):
                with self._lock:
                    if self._lock.wait_for(self._has_room, timeout=0.5):
                        return True
                self._free.release()
            if self._stop_requested:
                return False
            self.heartbeat()

    def _has_room(self, more: int = 1) -> bool:
        """Whether ``more`` jobs may join those in hand (the lock is held)."""
        return len(self._in_hand) + more <= self.async_limit

    def _wait_for_ends(self) -> bool:
        """Wait until no job is in hand; False if none was."""
        with self._lock:
            if not self._in_hand:
                return False
            self._lock.wait_for(lambda: not self._in_hand)
        return True

    def _finish_in_hand(self) -> None:
        """Let the jobs in hand end and their ends be recorded; stop the threads."""
        with self._lock:
            executors = list(self._executors)
        for _ in executors:
            self._todo.put(None)
        for thread in executors:
            # One written off meanwhile may never return (blocked in C):
            # its replacement took its place, and the wait ends.
            while thread.is_alive() and thread not in self._stuck:
                thread.join(0.5)
        if self._handler_loop is not None:
            self._handler_loop.close()  # lets the coroutines in flight end
        self._stop_threads()

    def _stop_threads(self, recorder_wait: float | None = None) -> None:
        self._ended.put(None)
        if self._recorder is not None:
            self._recorder.join(recorder_wait)
        self._watching.set()
        if self._watchdog is not None:
            self._watchdog.join(1)

    # -- executor threads -------------------------------------------------

    def _start_executor(self) -> None:
        with self._lock:
            n = len(self._executors) + len(self._stuck) + 1
            thread = _thread(self._execute, f"flask-messaging-executor-{n}")
            self._executors.add(thread)

    def _execute(self) -> None:
        me = threading.current_thread()
        try:
            while (running := self._todo.get()) is not None:
                try:
                    ended = self._perform(running, me)
                except JobTimeoutException:
                    ended = None  # late: the job was written off already
                if ended is None:
                    if me in self._stuck:
                        return  # written off and replaced
                    continue
                self._ended.put(ended)
                self._free.release()
        except JobTimeoutException:
            # Raised in this thread as its job was written off, but only
            # after the handler had returned: the thread was replaced.
            pass
        finally:
            with self._lock:
                self._executors.discard(me)
                self._stuck.discard(me)

    def _perform(self, running: Running, me: threading.Thread) -> _Ended | None:
        """Run the job's handler; its end, or None if it was written off or
        handed to the event loop (its end comes from there)."""
        job = running.job
        exc_info: ExcInfo | None = None
        result = None
        with self._lock:
            if running.claimed:
                # Failed before it ran (a cold shutdown, a stop command).
                self._free.release()
                return None
            running.thread = me
        try:
            assert self._handler_loop is not None
            timeout = job.timeout or running.queue.DEFAULT_TIMEOUT
            with self.app.app_context():
                with deferring_coroutines(
                    self._handler_loop, None if timeout < 0 else timeout
                ):
                    result = job.perform()
        except BaseException:
            exc_info = lifecycle.current_exc_info()
        finally:
            with self._lock:
                running.thread = None
                written_off = running.claimed
                if not written_off:
                    if isinstance(result, concurrent.futures.Future):
                        running.future = result  # for _write_off from now on
                    else:
                        running.claimed = True
        if written_off:
            if isinstance(result, concurrent.futures.Future):
                result.cancel()
            return None
        if isinstance(result, concurrent.futures.Future):
            # Its end comes from the loop; this thread takes the next job.
            job._result = None
            result.add_done_callback(partial(self._coroutine_ended, running))
            self._free.release()
            return None
        job.ended_at = now()
        return running, exc_info

    def _coroutine_ended(
        self, running: Running, future: concurrent.futures.Future[None]
    ) -> None:
        """Pass on the end of an ``async def`` handler (on the loop's thread)."""
        running.job.ended_at = now()
        exc: BaseException | None
        if future.cancelled():
            exc = concurrent.futures.CancelledError("the handler was cancelled")
        else:
            exc = future.exception()
        if isinstance(exc, TimeoutError):
            exc_info: ExcInfo | None = _timed_out(running)
        elif exc is not None:
            exc_info = (type(exc), exc, exc.__traceback__)
        else:
            exc_info = None
        with self._lock:
            if running.claimed:
                return  # failed by a cold shutdown meanwhile
            running.claimed = True
        self._ended.put((running, exc_info))

    # -- the recorder thread ----------------------------------------------

    def _record(self) -> None:
        while (first := self._ended.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < RECORD_BATCH:
                try:
                    item = self._ended.get_nowait()
                except queues.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._record_batch(batch)
            if stop:
                return

    def _record_batch(self, batch: list[_Ended]) -> None:
        successes = [running for running, exc_info in batch if exc_info is None]
        try:
            if successes:
                _persist(partial(lifecycle.record_successes, self, successes))
            for running, exc_info in batch:
                if exc_info is not None:
                    _persist(partial(lifecycle.record_failure, self, running, exc_info))
        except Exception:
            logger.exception(
                "Could not record the end of %d job(s); RQ's clean-up finds them"
                " abandoned when their executions expire.",
                len(batch),
            )
        finally:
            with self._lock:
                for running, _ in batch:
                    self._in_hand.pop(running.execution.id, None)
                idle = not self._in_hand and self._waiting_for_job
                self._lock.notify_all()
        if idle:
            # The last job in hand ended while the worker waits for more:
            # idle in RQ's tools, and a stop asked for now ends the wait.
            try:
                lifecycle.become_idle(self)
            except Exception:
                logger.warning("Could not record the worker idle.", exc_info=True)

    # -- the watchdog thread ----------------------------------------------

    def _watch(self) -> None:
        interval = self.job_monitoring_interval
        while not self._watching.wait(WATCH_INTERVAL):
            moment = time.monotonic()
            with self._lock:
                in_hand = list(self._in_hand.values())
            for running in in_hand:
                deadline = running.deadline
                if deadline is None or moment <= deadline:
                    continue
                if running.future is None:
                    self._write_off(running, _timed_out(running))
                elif moment > deadline + ASYNC_GRACE and not running.claimed:
                    # The loop's own timeout cancels a coroutine at its
                    # deadline: the loop is blocked (a synchronous call in
                    # some coroutine) or the handler swallowed its
                    # cancellation.
                    logger.error(
                        "Job %s's async def handler ran past its timeout"
                        " without being cancelled: the event loop is blocked"
                        " (a synchronous call in a coroutine?) or the handler"
                        " swallows CancelledError. Failed.",
                        running.job.id,
                    )
                    self._write_off(running, _timed_out(running))
            stale = [
                r
                for r in in_hand
                if not r.claimed and moment - r.extended_at >= interval
            ]
            try:
                lifecycle.extend(self, stale)
            except Exception:
                logger.warning("Could not keep the jobs in hand alive.", exc_info=True)

    def _write_off(self, running: Running, exc_info: ExcInfo) -> None:
        """Record ``running``'s job as failed now, without waiting for its handler.

        Python cannot stop a thread: the handler's thread gets the exception
        (``JobTimeoutException``) raised in it at its next Python
        instruction, and a new executor takes its place, so the other jobs
        go on. A handler blocked in C code runs on unseen; its thread ends
        when it returns. An ``async def`` handler on the event loop is
        cancelled; a job no executor has taken yet never runs.
        """
        with self._lock:
            if running.claimed:
                return
            running.claimed = True
            thread = running.thread
            if thread is not None:
                self._executors.discard(thread)
                self._stuck.add(thread)
            stuck = len(self._stuck)
        self._ended.put((running, exc_info))
        if thread is None:
            if running.future is not None:
                running.future.cancel()
            return
        if thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(JobTimeoutException)
            )
        self._start_executor()
        self._free.release()
        if stuck > self.threads:
            logger.error(
                "%d handlers past their timeout still run in worker %s (blocked"
                " in C code, or catching every exception?); each holds a thread.",
                stuck,
                self.name,
            )

    def _write_off_all(self, why: str) -> None:
        """Fail every job in hand now, per its retry policy (a cold shutdown)."""
        with self._lock:
            in_hand = list(self._in_hand.values())
        for running in in_hand:
            # A job whose handler has returned is claimed already, and
            # skipped: its end waits for the recorder (long, when Redis is
            # slow), which would otherwise record it finished, then failed
            # and retried.
            self._write_off(running, _error(RuntimeError(why)))
        if self._handler_loop is not None:
            self._handler_loop.close(timeout=0)  # cancels the coroutines
        self._stop_threads(COLD_RECORD_WAIT)


def _thread(target: Any, name: str) -> threading.Thread:
    # Daemons: a cold shutdown must not wait for a handler.
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _timed_out(running: Running) -> ExcInfo:
    timeout = running.job.timeout or running.queue.DEFAULT_TIMEOUT
    return _error(
        JobTimeoutException(f"Task exceeded maximum timeout value ({timeout} seconds)")
    )


def _error(exc: BaseException) -> ExcInfo:
    return type(exc), exc, None


def _persist(write: Any) -> None:
    """Run ``write``, again while Redis is unreachable (up to about a minute)."""
    pause = 0.5
    for attempt in range(8):
        try:
            write()
            return
        except LOST_REDIS:
            if attempt == 7:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 10)
