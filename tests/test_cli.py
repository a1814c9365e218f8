"""``flask messaging`` commands, run as a user would: in real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from flask_messaging import get_message_broker
from flask_messaging.state import get_state

from . import worker_app
from .conftest import flask_messaging_command
from .worker_app import Ping, Slow, handled


def flask_command(redis_url: str, *args: str) -> subprocess.Popen[str]:
    return flask_messaging_command(
        "tests.worker_app:create_app",
        *args,
        env={"MESSAGING_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def run(redis_url: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    process = flask_command(redis_url, *args)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def publish(redis_url: str, make_app: Callable[..., Flask], *messages: Any) -> Redis:
    app = make_app(worker_app.messaging, MESSAGING_RETRY_INTERVALS=[0])
    with app.app_context():
        for message in messages:
            get_message_broker().publish(message)
    return get_state(app).redis


def test_subscribers_table(real_redis_url: str) -> None:
    status, output = run(real_redis_url, "subscribers")
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0].split() == [
        "MESSAGE",
        "TYPE",
        "HANDLER",
        "MODE",
        "QUEUE",
        "PREDICATE",
    ]
    assert set(lines[1]) <= {"-", " "}
    rows = [line.split() for line in lines[2:]]
    assert ["tests.ping", "tests.worker_app:on_ping", "async", "low", "-"] in rows
    assert ["tests.boom", "tests.worker_app:on_boom", "async", "high", "-"] in rows


def test_subscribers_json(real_redis_url: str) -> None:
    status, output = run(real_redis_url, "subscribers", "--json")
    assert status == 0, output
    rows = json.loads(output)
    assert {
        "message_type": "tests.slow",
        "handler": "tests.worker_app:on_slow",
        "mode": "async",
        "queue": "default",
        "predicate": None,
    } in rows


def test_worker_burst_in_another_process_handles_published_messages(
    real_redis_url: str, make_app: Callable[..., Flask]
) -> None:
    redis = publish(real_redis_url, make_app, Ping(1), Ping(2), Ping(3))
    for key in redis.keys("rq:job:*"):
        data = json.loads(zlib.decompress(redis.hget(key, "data")))
        assert data[0] == "flask_messaging.dispatch.dispatch"
    status, output = run(real_redis_url, "worker", "--burst")
    assert status == 0, output
    entries = handled(redis)
    assert sorted(e["value"] for e in entries) == [1, 2, 3]
    assert {e["app"] for e in entries} == {"worker_app"}


def test_worker_with_several_processes(
    real_redis_url: str, make_app: Callable[..., Flask]
) -> None:
    redis = publish(real_redis_url, make_app, *(Ping(n) for n in range(40)))
    status, output = run(real_redis_url, "worker", "--burst", "--processes", "2")
    assert status == 0, output
    assert sorted(e["value"] for e in handled(redis)) == list(range(40))
    assert output.count("started with PID") == 2


def test_worker_only_listens_to_named_queues(
    real_redis_url: str, make_app: Callable[..., Flask]
) -> None:
    redis = publish(real_redis_url, make_app, Ping(1))  # on the "low" queue
    status, output = run(real_redis_url, "worker", "--burst", "high")
    assert status == 0, output
    assert handled(redis) == []
    status, output = run(real_redis_url, "worker", "--burst", "low")
    assert [e["value"] for e in handled(redis)] == [1]


def test_sigterm_lets_the_running_handler_finish(
    real_redis_url: str, make_app: Callable[..., Flask]
) -> None:
    redis = publish(real_redis_url, make_app, Slow(1.5), Slow(0))
    process = flask_command(real_redis_url, "worker")
    deadline = time.monotonic() + 30
    while not handled(redis):
        assert time.monotonic() < deadline, "the handler never started"
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    phases = [e["phase"] for e in handled(redis)]
    assert phases == ["start", "end"]  # finished the job in hand, took no other
    assert "warm shut down" in output.lower()


def test_worker_refuses_memory_url() -> None:
    status, output = run("memory://", "worker", "--burst")
    assert status != 0
    assert "memory://" in output and "Set MESSAGING_REDIS_URL" in output
    assert "Traceback" not in output


def test_worker_reports_an_unreachable_redis_in_one_line() -> None:
    status, output = run("redis://127.0.0.1:1/0", "worker", "--burst")
    assert status == 1
    assert "Cannot reach Redis at redis://127.0.0.1:1/0" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("processes", ["0", "x"])
def test_worker_rejects_bad_process_counts(real_redis_url: str, processes: str) -> None:
    status, output = run(real_redis_url, "worker", "--processes", processes)
    assert status == 2
    assert "--processes" in output


def test_status_and_requeue_failed(
    real_redis_url: str, make_app: Callable[..., Flask]
) -> None:
    redis = publish(real_redis_url, make_app, worker_app.Boom("x"), Ping(1))
    status, output = run(real_redis_url, "worker", "--burst", "high")
    assert status == 0, output
    status, output = run(real_redis_url, "status", "--json")
    assert status == 0, output
    report = json.loads(output)
    queues = {q["name"]: q for q in report["queues"]}
    assert queues["high"]["failed"] == 1
    assert queues["low"]["queued"] == 1
    assert report["workers"] == [] and report["outbox_backlog"] is None
    status, output = run(real_redis_url, "status")
    assert status == 0, output
    assert output.splitlines()[0].split() == [
        "QUEUE",
        "QUEUED",
        "STARTED",
        "SCHEDULED",
        "FAILED",
        "FINISHED",
    ]
    assert "No workers." in output and "Outbox: off" in output
    status, output = run(real_redis_url, "requeue-failed", "--queue", "low")
    assert output.strip() == "Requeued 0 job(s)."
    status, output = run(real_redis_url, "requeue-failed")
    assert status == 0 and output.strip() == "Requeued 1 job(s)."
    assert redis.llen("rq:queue:high") == 1


def test_status_reports_an_unreachable_redis_in_one_line() -> None:
    status, output = run("redis://127.0.0.1:1/0", "status")
    assert status == 1
    assert "Cannot read Redis at redis://127.0.0.1:1/0" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("command", ["failed", "requeue-failed"])
def test_a_queue_the_app_does_not_know_is_warned_about(
    real_redis_url: str, command: str
) -> None:
    process = flask_messaging_command(
        "tests.worker_app:create_app",
        command,
        "--queue",
        "nope",
        "--queue",
        "low",
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "the app has no queue 'nope' (its queues: high, default, low)" in err
    assert "'low'" not in err
    assert "nope" not in out
