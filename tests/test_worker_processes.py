"""Worker processes killed outright: nothing runs on unsupervised, nothing hides.

``kill -9`` (or the OOM killer) of a ``--processes`` child, of the parent, or
of a worker beside its RQ scheduler process, with real processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq import Worker

from flask_messaging import get_message_broker
from flask_messaging._rq.serializer import ReadOnlySerializer
from flask_messaging.state import get_state

from . import exit_app, worker_app
from .conftest import flask_messaging_command
from .exit_app import Exit
from .reliability.harness import alive, wait_until

Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start(tmp_path: Path, real_redis_url: str) -> Iterator[Start]:
    """Start ``flask messaging worker ARGS`` of the exit app; kill what is left."""
    started: list[subprocess.Popen[str]] = []
    pids: list[int] = []

    def run(*args: str) -> subprocess.Popen[str]:
        with open(tmp_path / f"worker-{len(started)}.log", "w") as log:
            process = flask_messaging_command(
                "tests.exit_app:create_app",
                "worker",
                "--no-relay",
                *args,
                env={"MESSAGING_REDIS_URL": real_redis_url},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    run.pids = pids  # type: ignore[attr-defined]
    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    for pid in pids:  # children in groups of their own, if the test failed
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The exit app in this process, on the Redis of the workers ``start`` starts."""
    return exit_app.subscribe(make_app(worker_app.messaging))


def workers(redis: Redis) -> list[Worker]:
    return Worker.all(connection=redis, serializer=ReadOnlySerializer)


def start_pool(
    start: Start, redis: Redis
) -> tuple[subprocess.Popen[str], list[Worker]]:
    """Start a worker with two children; return it once both children have
    registered, with them."""
    process = start("--processes", "2")
    wait_until(lambda: len(workers(redis)) == 2, "two workers to register")
    children = workers(redis)
    start.pids.extend(w.pid for w in children)  # type: ignore[attr-defined]
    return process, children


def publish(app: Flask, message: Exit) -> None:
    with app.app_context():
        get_message_broker().publish(message)


def test_the_status_of_a_pool_shows_a_child_killed_while_it_stops(
    app: Flask, start: Start
) -> None:
    redis = get_state(app).redis
    publish(app, Exit("hang"))
    process = start("--processes", "2")
    wait_until(
        lambda: [w for w in workers(redis) if w.get_state() == "busy"],
        "a worker to take the job",
    )
    (busy,) = [w for w in workers(redis) if w.get_state() == "busy"]
    start.pids.extend(w.pid for w in workers(redis))  # type: ignore[attr-defined]
    process.send_signal(signal.SIGTERM)
    # The idle one leaves at once; the busy one waits for its job (a minute).
    wait_until(lambda: len(workers(redis)) == 1, "the idle worker to stop")
    os.kill(busy.pid, signal.SIGKILL)
    assert process.wait(60) == 128 + signal.SIGKILL


def test_the_children_stop_when_the_parent_is_killed(app: Flask, start: Start) -> None:
    redis = get_state(app).redis
    process, children = start_pool(start, redis)
    pids = [w.pid for w in children]
    process.kill()
    process.wait(30)
    # Warm: each deregisters as it leaves, so status shows no orphan.
    wait_until(lambda: not any(alive(pid) for pid in pids), "the children to stop")
    assert workers(redis) == []


def scheduler_pid(log: Path) -> int | None:
    found = re.search(r"Scheduler for .* started with PID (\d+)", log.read_text())
    return int(found.group(1)) if found else None


def test_the_scheduler_process_stops_when_its_worker_is_killed(
    app: Flask, start: Start, tmp_path: Path
) -> None:
    redis = get_state(app).redis
    process = start()
    log = tmp_path / "worker-0.log"
    wait_until(lambda: scheduler_pid(log), "the scheduler to start")
    pid = scheduler_pid(log)
    assert pid is not None
    start.pids.append(pid)  # type: ignore[attr-defined]
    assert redis.keys("rq:scheduler-lock:*")
    process.kill()
    process.wait(30)
    wait_until(lambda: not alive(pid), "the scheduler to stop")
    # It stopped warm: its locks are free for another worker at once.
    assert redis.keys("rq:scheduler-lock:*") == []


def test_a_child_killed_unasked_is_replaced_and_the_pool_stops_with_0(
    app: Flask, start: Start
) -> None:
    redis = get_state(app).redis
    process, first = start_pool(start, redis)
    os.kill(first[0].pid, signal.SIGKILL)
    # The killed one's record stays until it expires: look for a new pid.
    wait_until(
        lambda: {w.pid for w in workers(redis)} - {w.pid for w in first},
        "a new worker in the killed one's place",
    )
    start.pids.extend(w.pid for w in workers(redis))  # type: ignore[attr-defined]
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0  # replaced: the pool was whole when it stopped
