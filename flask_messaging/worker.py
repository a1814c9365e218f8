"""Running workers: ``flask messaging worker``, one process or several.

:func:`run_workers` runs a worker (or, with ``processes`` above 1, a
:class:`~flask_messaging.supervisor.Supervisor` of worker processes) until it
is asked to stop, replacing a worker whose loop gives up, and relays the
outbox from a thread. The worker classes themselves are RQ's, with our
changes (:mod:`flask_messaging._rq.workers`); they are importable from here.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from flask import Flask
from redis.exceptions import RedisError

from . import stop_signals
from ._rq.factory import make_worker
from ._rq.threaded import ThreadedMessagingWorker
from ._rq.workers import ForkingMessagingWorker, MessagingWorker, stop_was_asked
from .outbox import Relay
from .parent_death import stop_with_parent
from .restart_pause import RestartPause
from .state import get_state
from .supervisor import Supervisor

__all__ = [
    "ForkingMessagingWorker",
    "MessagingWorker",
    "RestartPause",
    "ThreadedMessagingWorker",
    "make_worker",
    "run_workers",
]

logger = logging.getLogger("flask_messaging")


def run_workers(
    app: Flask,
    queues: Sequence[str] = (),
    *,
    processes: int = 1,
    threads: int = 1,
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
    :class:`~flask_messaging.supervisor.Supervisor`): 128 + the signal's
    number for a child killed by a signal, as shells report it (137 for
    ``kill -9``). Each child stops warm
    if this process dies (:mod:`flask_messaging.parent_death`).

    :param threads: jobs each process runs at once (see
        :class:`~flask_messaging._rq.threaded.ThreadedMessagingWorker`).
    :param relay: also relay the outbox from this process: one pass before a
        burst, else in a thread for as long as the workers run.
    """
    if fork and threads > 1:
        raise ValueError(
            "A forking worker runs one job at a time, in its work horse: use"
            " --threads 1 with --fork, or --threads without --fork."
        )
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
            _work(app, queues, fork, threads, work_kwargs)
        return 0

    # One worker per child process; the parent relays signals, waits, and
    # replaces a child that dies unasked.
    context = multiprocessing.get_context("fork")
    parent_pid = os.getpid()
    supervisor = Supervisor(
        lambda n: context.Process(
            target=_child,
            args=(app, queues, fork, threads, work_kwargs, parent_pid),
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
    threads: int,
    work_kwargs: dict[str, Any],
    parent_pid: int,
) -> None:
    # Until RQ installs its own handlers, a stop asked for (or the parent's
    # death) ends the child cleanly; the parent's handler, inherited by a
    # replacement, belongs to the parent. The Supervisor forked this process
    # with the stop signals held: one sent since is delivered now.
    for sig in stop_signals.STOP_SIGNALS:
        signal.signal(sig, _exit_asked)
    stop_signals.release()
    # An orphan would work on unsupervised, without the parent's relay.
    stop_with_parent(parent_pid)
    # A group of its own: what it leaves running if it dies is stopped with
    # it (_stop_group); the parent passes on SIGTERM and SIGINT.
    os.setpgid(0, 0)
    get_state(app).reset_after_fork()
    _work(app, queues, fork, threads, work_kwargs)


def _exit_asked(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _work(
    app: Flask,
    queues: Sequence[str],
    fork: bool,
    threads: int,
    work_kwargs: dict[str, Any],
) -> None:
    """Run a worker until asked to stop, replacing it if RQ's loop gives up.

    RQ's work loop quits, as if done, when Redis is unreachable at the wrong
    moment (as a job ends, say): a worker that nobody asked to stop is
    replaced after a pause (:class:`RestartPause`), so a Redis restart does
    not leave the queues without workers.
    """
    pauses = RestartPause()
    while True:
        started = time.monotonic()
        worker: MessagingWorker | ForkingMessagingWorker | None = None
        if threading.current_thread() is threading.main_thread():
            # Until the new worker installs its own: the last one's handlers
            # would raise its StopRequested here, out of this loop.
            for sig in stop_signals.STOP_SIGNALS:
                signal.signal(sig, _exit_asked)
        try:
            # Made inside: RQ's worker talks to Redis as it is made, and a
            # Redis still down must pause and retry, not end the process.
            worker = make_worker(app, queues, fork=fork, threads=threads)
            worker.work(**work_kwargs)
        except (RedisError, OSError):
            if work_kwargs["burst"]:
                raise
            if worker is not None and stop_was_asked(worker):
                # Asked to stop, it could not deregister (RQ's teardown
                # writes to Redis): its record expires with its heartbeat.
                logger.warning(
                    "The worker stopped as asked, without Redis to record it.",
                    exc_info=True,
                )
                return
            logger.warning("The worker lost Redis.", exc_info=True)
        else:
            assert worker is not None
            if (
                stop_was_asked(worker)
                or work_kwargs["burst"]
                or work_kwargs["max_jobs"]
            ):
                return
        pause = pauses.after_run(time.monotonic() - started)
        logger.warning(
            "The worker stopped unasked (Redis unreachable?); a new one starts"
            " in %.0f s.",
            pause,
        )
        if _pause(pause):
            return


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
