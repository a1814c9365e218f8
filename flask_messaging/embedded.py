"""``MESSAGING_REDIS_URL = "memory://"``: Redis and a worker inside the app.

The app's Redis is an in-process fakeredis server and its jobs are run by a
worker thread, started by the first job. Messages take the same path as in
production (encode, sign, RQ job, verify, decode, handler in the app context),
with no server to install. Nothing survives the process: for development,
demos and tests only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from ._rq.enqueue import RQJobs
from ._rq.factory import make_worker
from ._rq.workers import ThreadScheduler, ThreadWorker
from .dispatch import Delivery
from .outbox import Relay
from .restart_pause import RestartPause
from .state import MessagingState

__all__ = ["EmbeddedJobs", "EmbeddedWorker"]

logger = logging.getLogger("flask_messaging")


class EmbeddedWorker:
    """A worker thread, and a thread that schedules retries and relays."""

    #: Seconds between checks for a stop request and for due retries.
    poll_interval = ThreadWorker.poll_interval

    def __init__(self, state: MessagingState) -> None:
        self._state = state
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.worker: ThreadWorker | None = None

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        if self._threads:
            return
        self.worker = make_worker(self._state.app, worker_class=ThreadWorker)
        self._threads = [
            threading.Thread(
                target=self._serve, name="flask-messaging-worker", daemon=True
            ),
            threading.Thread(
                target=self._schedule, name="flask-messaging-scheduler", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Let the job in hand finish, then stop both threads.

        :param timeout: seconds to wait for each thread; one still running
            then (a long job) is left to end on its own, as a daemon thread.
        """
        self._stop.set()
        if self.worker is not None:
            self.worker.request_stop()
        for thread in self._threads:
            thread.join(timeout)

    def _serve(self) -> None:
        # This thread is the app's only worker: if RQ's work loop quits
        # unasked, a new worker takes over, as 'flask messaging worker' does.
        pauses = RestartPause()
        while True:
            started = time.monotonic()
            try:
                assert self.worker is not None
                self.worker.work(logging_level="WARNING")
            except Exception:
                logger.exception("The embedded worker failed.")
            if self._stop.is_set():
                return
            pause = pauses.after_run(time.monotonic() - started)
            logger.warning(
                "The embedded worker stopped unasked; a new one starts in %.0f s.",
                pause,
            )
            if self._stop.wait(pause):
                return
            self.worker = make_worker(self._state.app, worker_class=ThreadWorker)

    def _schedule(self) -> None:
        # RQ's scheduler runs in a forked process, which cannot share an
        # in-process Redis: move due retries onto their queues from here.
        state = self._state
        scheduler = ThreadScheduler(state)
        relay = None
        last_full_pass = time.monotonic()
        while not self._stop.wait(self.poll_interval):
            try:
                scheduler.move_due()
                if state.writes_outbox:
                    # Be the outbox's relay too: nothing else shares this Redis.
                    with state.app.app_context():
                        relay = relay or Relay(state)
                        if time.monotonic() - last_full_pass > 60:
                            relay.run_once()
                            last_full_pass = time.monotonic()
                        else:
                            relay.mark_relayed()
            except Exception:
                logger.exception("The embedded scheduler failed; retrying.")


class EmbeddedJobs(RQJobs):
    """Jobs on the in-process Redis; the first one starts the worker thread."""

    def __init__(self, state: MessagingState) -> None:
        super().__init__(lambda: state.redis, lambda: state.signer, state.settings.jobs)
        self._state = state
        self._lock = threading.Lock()

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        super().enqueue(deliveries)
        self._start_worker()

    def enqueue_once(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
        relayed_key: str | None = None,
    ) -> list[bool]:
        enqueued = super().enqueue_once(messages, relayed_key)
        self._start_worker()
        return enqueued

    def _start_worker(self) -> None:
        state = self._state
        if not state.settings.embedded_worker:
            return  # jobs wait for make_worker(app).work(), run by hand
        with self._lock:
            if state.embedded_worker is None:
                state.embedded_worker = EmbeddedWorker(state)
                state.embedded_worker.start()
