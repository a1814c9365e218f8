"""A warm stop that arrives between a take and the start of the jobs taken.

RQ raises ``StopRequested`` out of its signal handler wherever an idle
worker is. Raised as a take's reply comes back, it left the jobs taken on
their intermediate list, in no registry, until RQ's clean-up failed them 10
to 20 minutes later. The stop now waits for their start: they run to their
end (a warm shutdown), then the worker stops.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis

from flask_messaging import get_message_broker
from flask_messaging.state import get_state

from . import worker_app
from .conftest import flask_messaging_command


@pytest.mark.parametrize("threads", [1, 4])
def test_the_jobs_taken_as_a_stop_arrives_run_and_the_worker_stops(
    make_app: Callable[..., Flask], real_redis_url: str, threads: int
) -> None:
    app = make_app(worker_app.messaging)
    redis: Redis = get_state(app).redis
    with app.app_context():
        for value in range(threads):
            get_message_broker().publish(worker_app.Ping(value))
    process = flask_messaging_command(
        "tests.stop_app:create_app",
        "worker",
        "--no-relay",
        "--threads",
        str(threads),
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert sorted(e["value"] for e in worker_app.handled(redis)) == list(
        range(threads)
    ), output
    for queue_name in ("high", "default", "low"):
        assert redis.llen(f"rq:queue:{queue_name}") == 0
        assert redis.llen(f"rq:queue:{queue_name}:intermediate") == 0
        assert redis.zcard(f"rq:wip:{queue_name}") == 0
