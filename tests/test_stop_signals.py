"""A stop signal sent to a process the moment it is forked is not lost.

CPython drops a signal that reaches a forked child before its signal state
is reset after the fork; :mod:`flask_messaging.stop_signals` holds the stop
signals across the fork instead, until the child's handlers are in place.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from flask_messaging import stop_signals
from flask_messaging._rq.job_faults import CheckedScheduler

HANDLED = 7


def test_a_stop_sent_right_after_the_fork_reaches_the_handler_installed_later() -> None:
    with stop_signals.held_for_fork():
        pid = os.fork()
        if pid == 0:  # the child
            try:
                time.sleep(0.3)  # the SIGTERM arrives here, held
                signal.signal(signal.SIGTERM, lambda *_: os._exit(HANDLED))
                stop_signals.release()
                time.sleep(10)
            finally:
                os._exit(0)
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    # Neither lost (0, after 10 s) nor handled by the default action (killed).
    assert os.waitstatus_to_exitcode(status) == HANDLED


def test_the_parent_gets_its_signals_back_after_the_fork() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with stop_signals.held_for_fork():
        assert stop_signals.STOP_SIGNALS <= signal.pthread_sigmask(
            signal.SIG_BLOCK, set()
        )
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


@pytest.fixture
def redis(real_redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(real_redis_url)
    yield client
    client.close()


@pytest.mark.parametrize("attempt", range(5))
def test_a_scheduler_process_stopped_as_it_starts_stops_and_frees_its_locks(
    redis: Redis, attempt: int
) -> None:
    # What a worker asked to stop as it starts does (RQ's stop_scheduler):
    # SIGTERM at once, then join. A lost signal joined for ever.
    scheduler = CheckedScheduler(["default"], connection=redis)
    assert scheduler.acquire_locks() == {"default"}
    process = scheduler.start()
    os.kill(process.pid, signal.SIGTERM)
    process.join(20)
    assert process.exitcode == 0
    assert redis.keys("rq:scheduler-lock:*") == []
