"""What operators and developers are told: true, and saying what to do.

A healthy system must not look broken (a worker that lost its registration
to a Redis restart), and a broken one must not look healthy (a worker that
starts without the key every job needs).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq import Worker

from flask_messaging import DeliveryError, EnqueueError, Message, get_message_broker
from flask_messaging._rq.serializer import ReadOnlySerializer
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event, transactional
from flask_messaging.worker import make_worker

from . import tx_app, worker_app
from .conftest import flask_messaging_command
from .reliability.harness import wait_until
from .servers import RedisServer, free_port
from .test_security import drain
from .worker_app import Ping, handled

WORKER_APP = "tests.worker_app:create_app"


def registered_workers(redis: Redis) -> list[Worker]:
    return Worker.all(connection=redis, serializer=ReadOnlySerializer)


@pytest.fixture
def worker_process(
    tmp_path: Path,
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``flask messaging worker`` processes; stop them after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(redis_url: str, *args: str) -> subprocess.Popen[str]:
        log = open(tmp_path / f"worker-{len(started)}.log", "w")  # noqa: SIM115
        process = flask_messaging_command(
            WORKER_APP,
            "worker",
            *args,
            env={"MESSAGING_REDIS_URL": redis_url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


def test_a_worker_registers_again_after_a_redis_restart(
    private_redis: RedisServer,
    worker_process: Callable[..., subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    process = worker_process(private_redis.url)
    redis = Redis.from_url(private_redis.url)
    wait_until(lambda: registered_workers(redis), "the worker to register")
    (name,) = [w.name for w in registered_workers(redis)]

    private_redis.restart()  # no persistence: the worker's records are gone
    wait_until(lambda: registered_workers(redis), "the worker to register again")
    # Registered again by its heartbeat, or (when RQ's loop quit on the lost
    # connection first) by the replacement _work makes: one worker, alive.
    (name,) = [w.name for w in registered_workers(redis)]
    assert process.poll() is None

    monkeypatch.setenv("MESSAGING_REDIS_URL", private_redis.url)
    app = worker_app.create_app()
    result = app.test_cli_runner().invoke(args=["messaging", "status"])
    assert result.exit_code == 0, result.output
    assert "No workers" not in result.output
    assert name in result.output
    # And it works on, as registered.
    with app.app_context():
        get_message_broker().publish(Ping(7))
    wait_until(lambda: handled(redis), "the worker to handle a message")
    redis.close()
    get_state(app).redis.close()


@pytest.mark.parametrize("threads", ["1", "4"])
def test_a_worker_asked_to_stop_while_redis_is_down_stops(
    private_redis: RedisServer,
    worker_process: Callable[..., subprocess.Popen[str]],
    threads: str,
) -> None:
    # RQ's teardown fails on the lost Redis: the stop was taken for the
    # loop giving up, and a new worker made, which ran on once Redis was back.
    process = worker_process(private_redis.url, "--threads", threads)
    redis = Redis.from_url(private_redis.url)
    wait_until(lambda: registered_workers(redis), "the worker to register")
    redis.close()
    private_redis.stop()
    time.sleep(2)  # the worker meets the lost Redis
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


@pytest.mark.parametrize("key", [None, ""], ids=["none", "empty"])
def test_a_worker_without_a_signing_key_refuses_to_start(
    make_app: Callable[..., Flask], real_redis_url: str, key: str | None
) -> None:
    app = make_app(worker_app.messaging, SECRET_KEY=key)
    result = app.test_cli_runner().invoke(args=["messaging", "worker", "--burst"])
    assert result.exit_code == 1, result.output
    assert "set SECRET_KEY (or MESSAGING_SIGNING_KEY)" in result.output
    assert "Traceback" not in result.output
    assert registered_workers(get_state(app).redis) == []


def test_a_relay_without_a_signing_key_refuses_to_start(real_redis_url: str) -> None:
    app = tx_app.create_app(SECRET_KEY=None, MESSAGING_REDIS_URL=real_redis_url)
    with app.app_context():
        tx_app.db.create_all()
    result = app.test_cli_runner().invoke(args=["messaging", "relay", "--once"])
    assert result.exit_code == 1, result.output
    assert "set SECRET_KEY (or MESSAGING_SIGNING_KEY)" in result.output
    get_state(app).redis.close()


def run_worker(redis_url: str, *args: str) -> str:
    process = flask_messaging_command(
        WORKER_APP,
        "worker",
        "--burst",
        *args,
        env={"MESSAGING_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def test_the_worker_start_up_log_names_the_subscribers_it_serves(
    real_redis_url: str,
) -> None:
    output = run_worker(real_redis_url)
    for line in (
        "Serving tests.boom -> tests.worker_app:on_boom on queue high",
        "Serving tests.slow -> tests.worker_app:on_slow on queue default",
        "Serving tests.ping -> tests.worker_app:on_ping on queue low",
    ):
        assert line in output
    assert "registering it again" not in output  # born registered: no repeat

    output = run_worker(real_redis_url, "high")
    assert "Serving tests.boom -> tests.worker_app:on_boom on queue high" in output
    assert (
        "Not serving tests.ping -> tests.worker_app:on_ping: queue low is not one"
        " of this worker's"
    ) in output

    output = run_worker(real_redis_url, "elsewhere")
    assert "No async subscriber of app 'worker_app' uses queues elsewhere" in output


def test_a_job_of_another_app_on_the_same_redis_says_so(
    make_app: Callable[..., Flask],
) -> None:
    # Two apps share a Redis and a queue; this one never subscribed on_ping.
    other_app = make_app(worker_app.messaging)
    this_app = make_app()
    get_state(this_app).broker.subscribe_async(Noted, keep, queue_name="low")
    with other_app.app_context():
        get_message_broker().publish(Ping(1))
    drain(this_app)
    with this_app.app_context():
        from flask_messaging._rq.status import recent_failures

        (failure,) = recent_failures(get_state())
    assert failure.error == (
        "flask_messaging.errors.UnknownHandlerError: Unknown handler"
        " 'tests.worker_app:on_ping' for 'tests.ping' messages: unknown to this"
        " app (another app on the same Redis, or older code). Requeue the job"
        " once a worker that knows it serves this queue."
    )


@dataclass(frozen=True)
class Noted(Message, name="tests.operator.noted"):
    text: str


def keep(event: Noted) -> None:
    pass


def keep_too(event: Noted) -> None:
    pass


def explode(event: Noted) -> None:
    raise RuntimeError(f"boom: {event.text}")


def test_publish_with_redis_down_reports_an_enqueue_failure(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(MESSAGING_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    broker = get_state(app).broker
    seen: list[Noted] = []
    broker.subscribe(Noted, seen.append)
    broker.subscribe_async(Noted, keep)
    broker.subscribe_async(Noted, keep_too, queue_name="low")
    with app.app_context(), caplog.at_level(logging.ERROR, "flask_messaging"):
        with pytest.raises(DeliveryError) as info:
            get_message_broker().publish(Noted("x"))
    assert seen == [Noted("x")]  # the sync subscriber had it
    group = info.value
    assert str(group).startswith("jobs could not be enqueued on tests.operator.noted")
    (error,) = group.exceptions
    assert isinstance(error, EnqueueError)
    assert "Could not enqueue 2 jobs of tests.operator.noted message" in str(error)
    assert (
        "tests.test_operator_messages:keep, tests.test_operator_messages:keep_too"
    ) in str(error)
    assert "ConnectionError" in str(error)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "failed" in m]
    assert len(messages) == 1 and messages[0].startswith("Could not enqueue")


def test_a_failing_subscriber_and_an_enqueue_failure_are_told_apart(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(MESSAGING_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    broker = get_state(app).broker

    def broken(event: Noted) -> None:
        raise ValueError("broken")

    broker.subscribe(Noted, broken)
    broker.subscribe_async(Noted, keep)
    with app.app_context(), pytest.raises(DeliveryError) as info:
        get_message_broker().publish(Noted("x"))
    assert str(info.value).startswith(
        "1 subscriber failed and jobs could not be enqueued on tests.operator.noted"
    )
    assert [type(e) for e in info.value.exceptions] == [ValueError, EnqueueError]


def test_register_event_outside_an_app_context_says_what_to_do() -> None:
    with pytest.raises(RuntimeError) as info:
        register_event(Noted("x"))
    assert str(info.value).startswith(
        "register_event() needs an active Flask app context"
    )
    assert "with app.app_context()" in str(info.value)


def test_a_transactional_function_outside_an_app_context_says_what_to_do() -> None:
    @transactional
    def create_user(session: object) -> None:
        raise AssertionError("never called")

    with pytest.raises(RuntimeError) as info:
        create_user()
    message = str(info.value)
    assert "@transactional" in message and "create_user()" in message
    assert "needs an active Flask app context" in message
    assert "with app.app_context()" in message


def test_failed_lists_failed_jobs_with_their_error(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app()
    get_state(app).broker.subscribe_async(Noted, explode, queue_name="high")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["messaging", "failed"])
    assert result.exit_code == 0, result.output
    assert result.output == "No failed jobs.\n"

    with app.app_context():
        get_message_broker().publish(Noted("disk full"))
    drain(app)
    result = runner.invoke(args=["messaging", "failed"])
    assert result.exit_code == 0, result.output
    header, rule, row, *rest = result.output.splitlines()
    assert header.split() == [
        "FAILED",
        "AT",
        "(UTC)",
        "QUEUE",
        "JOB",
        "DESCRIPTION",
        "ERROR",
    ]
    assert " high " in row
    assert "tests.operator.noted -> tests.test_operator_messages:explode" in row
    assert row.endswith("RuntimeError: boom: disk full")
    assert "Requeue them with 'flask messaging requeue-failed'." in rest

    result = runner.invoke(args=["messaging", "failed", "--queue", "low", "--json"])
    assert result.output.strip() == "[]"
    result = runner.invoke(args=["messaging", "failed", "--json"])
    (entry,) = json.loads(result.output)
    assert entry["queue"] == "high"
    assert entry["error"] == "RuntimeError: boom: disk full"
    assert entry["failed_at"] is not None


def test_a_worker_whose_record_redis_lost_registers_at_its_next_heartbeat(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    # RQ's contract this rests on: its heartbeat's first command sets the
    # worker hash's last_heartbeat (HSET says whether the field was new).
    app = make_app(worker_app.messaging)
    worker = make_worker(app)
    worker.register_birth()
    redis = get_state(app).redis
    assert [w.name for w in registered_workers(redis)] == [worker.name]
    redis.flushdb()
    assert registered_workers(redis) == []
    worker.heartbeat()
    (again,) = registered_workers(redis)
    assert again.name == worker.name
    assert again.queue_names() == list(get_state(app).queue_names())
    assert redis.ttl(worker.key) > 0
    worker.register_death()
