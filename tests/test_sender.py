"""The sender: committed events' jobs are written off the committing thread.

Redis's ``CLIENT PAUSE ... WRITE`` holds the sender's script on the server
for as long as a test needs: commits (which no longer touch Redis) pile up
meanwhile, and a process can be made to exit with its jobs still unsent.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from redis import Redis
from rq import Queue

import flask_messaging
from flask_messaging import wait_for_sent
from flask_messaging.outbox import Relay, available_at
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.sender import Sender
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from .conftest import ROOT
from .servers import RedisServer
from .test_outbox import outbox_rows
from .tx_app import User, UserRegistered, db

MakeApp = Callable[..., Flask]


@pytest.fixture
def redis(private_redis: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(private_redis.url)
    yield client
    client.close()


@pytest.fixture
def app(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> Iterator[Flask]:
    app = make_tx_app(database_url, private_redis.url)
    with app.app_context():
        yield app


def sign_up(n: int) -> None:
    """One transaction: a user and its event, committed."""
    user = User(email=f"u{n}@example.com")
    db.session.add(user)
    db.session.flush()
    register_event(UserRegistered(user_id=user.id, email=user.email))
    db.session.commit()


def jobs(redis: Redis) -> int:
    return Queue(LOW_PRIORITY, connection=redis).count


def script_calls(redis: Redis) -> int:
    """The enqueue script's runs on this server since its statistics were reset."""
    stats = redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@contextmanager
def writes_paused(redis: Redis) -> Iterator[None]:
    """Redis holds every write and script until the block ends."""
    redis.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    try:
        yield
    finally:
        redis.execute_command("CLIENT", "UNPAUSE")


def test_commit_returns_before_the_jobs_exist_and_wait_for_sent_waits(
    app: Flask, redis: Redis
) -> None:
    with writes_paused(redis):
        sign_up(0)  # returns though Redis takes nothing
        assert len(outbox_rows()) == 1
    wait_for_sent()
    assert jobs(redis) == 1


def test_commits_from_several_threads_share_enqueue_calls_and_every_job_arrives(
    app: Flask, redis: Redis
) -> None:
    sign_up(0)  # the script loaded, the job template recorded
    wait_for_sent()
    redis.config_resetstat()
    threads, commits = 4, 10

    def commit_some(first: int) -> None:
        with app.app_context():
            for n in range(first, first + commits):
                sign_up(n)

    with writes_paused(redis):
        workers = [
            threading.Thread(target=commit_some, args=(1 + t * commits,))
            for t in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    wait_for_sent()
    assert jobs(redis) == 1 + threads * commits
    # At most one call was held by the pause; all the others waited for it
    # and went together.
    assert 1 <= script_calls(redis) <= 2


def test_a_full_sender_leaves_the_commits_that_follow_to_the_relay(
    app: Flask,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(flask_messaging.sender, "MAX_UNSENT", 2)
    with writes_paused(redis):
        sign_up(0)
        sign_up(1)  # the sender holds 2: full
        with caplog.at_level(logging.WARNING, "flask_messaging"):
            sign_up(2)
            sign_up(3)
        assert caplog.text.count("2 committed message(s) wait for Redis") == 1
        assert "left to the relay" in caplog.text
    wait_for_sent()
    assert jobs(redis) == 2
    assert Relay(get_state()).run_once() == 2
    assert jobs(redis) == 4
    sign_up(4)  # emptied: it takes commits again
    wait_for_sent()
    assert jobs(redis) == 5


def test_redis_down_at_send_time_makes_the_rows_due_and_a_relay_sends_them(
    make_tx_app: MakeApp,
    database_url: str,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_tx_app(database_url, private_redis.url, MESSAGING_RELAY_DELAY=3600)
    with app.app_context():
        private_redis.stop()
        with caplog.at_level(logging.WARNING, "flask_messaging"):
            sign_up(0)
            sign_up(1)
            wait_for_sent()  # sent means: left to the relay, rows due
        assert "wait in the outbox for 'flask messaging relay'" in caplog.text
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        rows = outbox_rows()
        assert len(rows) == 2
        assert all(available_at(r.available_at, r.subscribers) <= now for r in rows)
        private_redis.start()
        assert Relay(get_state()).run_once() == 2
        assert jobs(get_state().redis) == 2


EXIT_RIGHT_AFTER_COMMIT = """
import sys
import flask_messaging.sender
from flask_messaging.transaction import register_event
from tests.tx_app import User, UserRegistered, create_app, db

flask_messaging.sender.EXIT_TIMEOUT = float(sys.argv[1])
app = create_app()
with app.app_context():
    user = User(email="last@example.com")
    db.session.add(user)
    db.session.flush()
    register_event(UserRegistered(user_id=user.id, email=user.email))
    db.session.commit()
print("committed", flush=True)
"""


def exit_right_after_commit(
    database_url: str, redis_url: str, exit_timeout: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", EXIT_RIGHT_AFTER_COMMIT, str(exit_timeout)],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "MESSAGING_REDIS_URL": redis_url,
            "PYTHONPATH": str(ROOT),
        },
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_process_that_exits_right_after_its_commit_sends_its_jobs_first(
    app: Flask, database_url: str, private_redis: RedisServer, redis: Redis
) -> None:
    with writes_paused(redis):
        process = exit_right_after_commit(database_url, private_redis.url, 60)
        assert process.stdout is not None
        # Committed, and the main program is over: only the exit flush,
        # held by the pause, keeps the process alive now.
        assert process.stdout.readline() == "committed\n"
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert jobs(redis) == 1
    assert "not enqueued" not in stderr


def test_the_exit_flush_gives_up_after_its_timeout_and_says_what_is_left(
    app: Flask, database_url: str, private_redis: RedisServer, redis: Redis
) -> None:
    with writes_paused(redis):
        process = exit_right_after_commit(database_url, private_redis.url, 0.2)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "The process exits with 1 committed message(s) not enqueued" in stderr
        assert "after MESSAGING_RELAY_DELAY" in stderr
    (row,) = outbox_rows()  # the relay's to send
    assert row.relayed_at is None
    assert Relay(get_state()).run_once() == 1
    assert jobs(redis) == 1


def _commit_in_child(app: Flask, reset: bool) -> None:
    state = get_state(app)
    inherited = state.sender
    if reset:
        state.reset_after_fork()
        assert state.sender is None
    else:
        # Only what SQLAlchemy asks of any fork: messaging is left as it was.
        with app.app_context():
            db.engine.dispose(close=False)
    with app.app_context():
        sign_up(100)
    sender = state.sender
    assert isinstance(sender, Sender) and sender.pid == os.getpid()
    assert sender is not inherited
    # No wait: the end of a multiprocessing child runs the exit flush.


@pytest.mark.parametrize("reset", [True, False], ids=["reset_after_fork", "plain"])
def test_a_forked_child_commits_with_a_sender_of_its_own(
    app: Flask, redis: Redis, reset: bool
) -> None:
    sign_up(0)
    wait_for_sent()  # the parent's sender thread runs
    parent_sender = get_state().sender
    child = multiprocessing.get_context("fork").Process(
        target=_commit_in_child, args=(app, reset)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert jobs(redis) == 2
    assert get_state().sender is parent_sender
    sign_up(1)  # the parent's sender still works
    wait_for_sent()
    assert jobs(redis) == 3


def test_wait_for_sent_raises_on_timeout_and_names_what_is_left(
    app: Flask, redis: Redis
) -> None:
    with writes_paused(redis):
        sign_up(0)
        sign_up(1)
        with pytest.raises(TimeoutError) as error:
            wait_for_sent(timeout=0.1)
        assert "2 committed message(s) still had no job after 0.1 s" in str(error.value)
        assert "relayed after MESSAGING_RELAY_DELAY" in str(error.value)
    wait_for_sent()
    assert jobs(redis) == 2


def test_closing_the_state_sends_what_it_holds_and_the_next_commit_starts_again(
    app: Flask, redis: Redis
) -> None:
    state = get_state()
    with writes_paused(redis):
        sign_up(0)
        unpause = threading.Timer(0.2, redis.execute_command, ("CLIENT", "UNPAUSE"))
        unpause.start()
        state.close()  # waits for the pause to end
        unpause.join()
    assert state.sender is None
    assert jobs(redis) == 1
    sign_up(1)
    wait_for_sent()
    assert jobs(redis) == 2
    assert isinstance(state.sender, Sender)


def test_closing_the_state_gives_up_after_its_timeout_with_a_warning(
    app: Flask, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with writes_paused(redis):
        sign_up(0)
        with caplog.at_level(logging.WARNING, "flask_messaging"):
            get_state().close(timeout=0.1)
    assert "1 committed message(s) not enqueued after 0.1 s" in caplog.text
    # close() went on to drop the Redis client, cutting the sender's call:
    # the row is the relay's (unless Redis ran the script before it knew).
    wait_for_sent()
    Relay(get_state()).run_once()
    assert jobs(redis) == 1


def test_each_app_has_its_own_sender_and_can_be_waited_for_alone(
    make_tx_app: MakeApp,
    database_url: str,
    private_redis: RedisServer,
    real_redis_url: str,
    redis: Redis,
) -> None:
    paused = make_tx_app(database_url, private_redis.url)
    other = make_tx_app(database_url, real_redis_url)
    with writes_paused(redis):
        with paused.app_context():
            sign_up(0)
        with other.app_context():
            sign_up(1)
        wait_for_sent(app=other)
        assert jobs(get_state(other).redis) == 1
        with pytest.raises(TimeoutError):
            wait_for_sent(timeout=0.1)  # every app's: the paused one's too
        with pytest.raises(TimeoutError):
            wait_for_sent(timeout=0.1, app=paused)
    wait_for_sent(app=paused)
    assert jobs(redis) == 1
    assert get_state(paused).sender is not get_state(other).sender


def test_no_sender_where_commits_enqueue_or_run_their_jobs_themselves(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    cases = {
        "outbox off": make_tx_app(database_url, real_redis_url, MESSAGING_OUTBOX=False),
        "memory://": make_tx_app(
            database_url, "memory://", MESSAGING_EMBEDDED_WORKER=False
        ),
    }
    for name, app in cases.items():
        with app.app_context():
            sign_up(0)
            # No wait: the job is there when commit() returns.
            assert jobs(get_state().redis) == 1, name
            assert get_state().sender is None, name
        wait_for_sent(timeout=0)  # nothing to wait for


def test_no_sender_with_inline_delivery(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(database_url, real_redis_url, MESSAGING_ASYNC=False)
    with app.app_context():
        sign_up(0)
        assert get_state().sender is None


def test_wait_for_sent_is_exported() -> None:
    assert flask_messaging.wait_for_sent is wait_for_sent
