"""The outbox: a committed event is never lost, and is enqueued once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from redis import Redis
from rq import Queue

from flask_messaging import wait_for_sent
from flask_messaging.outbox import RELAYED_KEY, Relay
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from .conftest import ROOT, flask_messaging_command
from .servers import RedisServer
from .tx_app import User, UserRegistered, db
from .worker_app import handled

MakeApp = Callable[..., Flask]
TX_APP = "tests.tx_app:create_app"


@pytest.fixture
def app(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> Iterator[Flask]:
    app = make_tx_app(database_url, real_redis_url)
    with app.app_context():
        yield app


def register_users(count: int, start: int = 0) -> None:
    """Commit ``count`` sign-ups, then wait for their jobs (or their relay).

    The jobs are written by the sender thread after the commit: tests that
    look at them, or stop Redis next, wait for it.
    """
    for n in range(start, start + count):
        user = User(email=f"u{n}@example.com")
        db.session.add(user)
        db.session.flush()
        register_event(UserRegistered(user_id=user.id, email=user.email))
    db.session.commit()
    wait_for_sent()


def outbox_rows() -> list[sa.Row]:  # type: ignore[type-arg]
    # On a connection of its own, closed at once: SQLite would otherwise keep
    # a read lock that the relay's writes wait on.
    table = get_state().outbox
    with db.engine.connect() as connection:
        return list(connection.execute(sa.select(table).order_by(table.c.message_id)))


def queued(redis: Redis, queue: str = LOW_PRIORITY) -> int:
    return Queue(queue, connection=redis).count


class _quiet:
    """Silence the expected "wait in the outbox" warnings."""

    def __enter__(self) -> None:
        logging.getLogger("flask_messaging").disabled = True

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("flask_messaging").disabled = False


def commit_while_redis_is_down(app: Flask, redis: RedisServer, users: int) -> None:
    """Commit ``users`` sign-ups while ``redis`` is down, then start it again.

    Their rows wait in the outbox for a relay; Redis comes back empty.
    """
    redis.stop()
    with app.app_context():
        with _quiet():
            register_users(users)
        db.session.remove()
    redis.start()


def flask(
    database_url: str, redis_url: str, *args: str, app: str = TX_APP, **env: str
) -> subprocess.CompletedProcess[str]:
    """``flask --app APP messaging ARGS`` on the database and Redis, to its end."""
    process = flask_messaging_command(
        app,
        *args,
        env={"DATABASE_URL": database_url, "MESSAGING_REDIS_URL": redis_url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_commit_writes_one_row_per_event_and_the_sender_enqueues_it(app: Flask) -> None:
    register_users(2)
    rows = outbox_rows()
    assert [row.message_type for row in rows] == ["tests.tx.user_registered"] * 2
    assert all(row.envelope.startswith("{") for row in rows)
    redis = get_state().redis
    assert queued(redis) == 2
    # Marked relayed by the relay, from the list the commit appended to.
    assert redis.llen(RELAYED_KEY) == 2
    assert all(row.relayed_at is None for row in rows)
    assert Relay(get_state()).run_once() == 0  # nothing left to enqueue
    assert all(row.relayed_at is not None for row in outbox_rows())
    assert queued(redis) == 2


def test_rolled_back_events_leave_no_row_and_no_job(app: Flask) -> None:
    db.session.add(User(email="a@example.com"))
    register_event(UserRegistered(user_id=1, email="a@example.com"))
    db.session.rollback()
    assert outbox_rows() == []
    assert queued(get_state().redis) == 0


def test_redis_down_at_commit_then_relay_then_worker(
    make_tx_app: MakeApp,
    database_url: str,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_tx_app(database_url, private_redis.url)
    private_redis.stop()
    with app.app_context():
        with caplog.at_level(logging.WARNING, "flask_messaging"):
            register_users(1)
        assert "wait in the outbox" in caplog.text
        (row,) = outbox_rows()
        assert row.relayed_at is None
        db.session.remove()
    private_redis.start()
    relay = flask(database_url, private_redis.url, "relay", "--once")
    assert relay.returncode == 0, relay.stderr
    assert "Relayed 1 message(s)." in relay.stdout
    again = flask(database_url, private_redis.url, "relay", "--once")
    assert "Relayed 0 message(s)." in again.stdout
    worker = flask(database_url, private_redis.url, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    redis = Redis.from_url(private_redis.url)
    assert [e["email"] for e in handled(redis)] == ["u0@example.com"]  # once
    with app.app_context():
        assert outbox_rows()[0].relayed_at is not None


KILL_AFTER_COMMIT = """
import os
from tests.tx_app import Noted, create_app, db, messaging
from flask_messaging.transaction import register_event

app = create_app()

@messaging.subscribe
def die(event: Noted) -> None:
    os._exit(0)  # right after the commit, before anything is enqueued

with app.app_context():
    register_event(Noted("last words"))
    from tests.tx_app import UserRegistered
    register_event(UserRegistered(user_id=7, email="ghost@example.com"))
    db.session.commit()
raise SystemExit("not reached")
"""


def test_process_killed_right_after_commit_loses_nothing(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(database_url, real_redis_url)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MESSAGING_REDIS_URL": real_redis_url,
        "PYTHONPATH": str(ROOT),
    }
    died = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_COMMIT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 0, died.stderr
    redis = Redis.from_url(real_redis_url)
    assert queued(redis) == 0
    with app.app_context():
        assert len(outbox_rows()) == 2
        assert Relay(get_state()).run_once() == 2
        assert queued(redis) == 1  # the one async subscriber's job


def test_two_relays_at_once_enqueue_each_job_once(
    make_tx_app: MakeApp, postgres_url: str, private_redis: RedisServer
) -> None:
    database_url = postgres_url  # SQLite supports one relay at a time
    app = make_tx_app(database_url, private_redis.url, MESSAGING_RELAY_BATCH_SIZE=100)
    commit_while_redis_is_down(app, private_redis, 1000)
    relays = [
        flask_messaging_command(
            TX_APP,
            "relay",
            "--once",
            env={
                "DATABASE_URL": database_url,
                "MESSAGING_REDIS_URL": private_redis.url,
                "FLASK_MESSAGING_RELAY_BATCH_SIZE": "100",  # ten claims each
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [relay.communicate(timeout=120) for relay in relays]
    assert all(relay.returncode == 0 for relay in relays), outputs
    counts = [int(out.split()[1]) for out, _ in outputs]
    assert sum(counts) == 1000
    redis = Redis.from_url(private_redis.url)
    job_ids = [i.decode() for i in redis.lrange(f"rq:queue:{LOW_PRIORITY}", 0, -1)]
    assert len(job_ids) == 1000 == len(set(job_ids))
    with app.app_context():
        assert all(row.relayed_at is not None for row in outbox_rows())


def test_a_second_pass_over_the_same_rows_enqueues_nothing(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_tx_app(database_url, private_redis.url)
    commit_while_redis_is_down(app, private_redis, 3)
    with app.app_context():
        relay = Relay(get_state())
        assert relay.run_once() == 3
        # A relay that died after enqueueing, before its commit: rows pending again.
        table = get_state().outbox
        db.session.execute(table.update().values(relayed_at=None))
        db.session.commit()
        assert relay.run_once() == 0
        assert queued(get_state().redis) == 3
        assert all(row.relayed_at is not None for row in outbox_rows())


def test_ten_thousand_events_in_one_transaction(app: Flask) -> None:
    users = [User(email=f"u{n}@example.com") for n in range(10_000)]
    db.session.add_all(users)
    db.session.flush()
    tracemalloc.start()
    try:
        for user in users:
            register_event(UserRegistered(user_id=user.id, email=user.email))
        db.session.commit()
        wait_for_sent()  # the sender's jobs count too
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(outbox_rows()) == 10_000
    redis = get_state().redis
    assert queued(redis) == 10_000
    assert Relay(get_state()).run_once() == 0
    assert all(row.relayed_at is not None for row in outbox_rows())
    # Bounded: a few KB per event (the event, its row, its job), no more.
    assert peak < 10_000 * 20_000, f"peak {peak:,} bytes"


def test_outbox_off_enqueues_after_commit_and_logs_failures(
    make_tx_app: MakeApp,
    database_url: str,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_tx_app(database_url, private_redis.url, MESSAGING_OUTBOX=False)
    with app.app_context():
        assert get_state().outbox is None
        register_users(2)
        assert queued(get_state().redis) == 2
        private_redis.stop()
        with caplog.at_level(logging.ERROR, "flask_messaging"):
            register_users(1, start=2)
        assert "Lost 1 committed message(s)" in caplog.text
        assert "MESSAGING_OUTBOX is off" in caplog.text


def test_undecodable_rows_back_off_without_blocking_others(app: Flask) -> None:
    state = get_state()
    register_users(1)
    table = state.outbox
    db.session.execute(
        table.update().values(
            relayed_at=None,
            envelope='{"id":"x","type":"gone.away","version":1,'
            '"occurred_at":"2026-01-01T00:00:00Z","payload":{}}',
        )
    )
    db.session.commit()
    state.redis.delete(RELAYED_KEY)
    register_users(1, start=1)
    state.redis.delete(RELAYED_KEY)
    db.session.execute(
        table.update().where(table.c.envelope.like("%u1@%")).values(relayed_at=None)
    )
    db.session.commit()
    state.redis.flushdb()
    assert Relay(state).run_once() == 1  # the good one, despite the bad one first
    bad, good = outbox_rows()
    assert bad.relayed_at is None and bad.attempts == 1
    assert "Unknown message type 'gone.away'" in bad.last_error
    assert bad.available_at > bad.created_at
    assert good.relayed_at is not None


def test_relayed_rows_are_pruned_after_the_retention(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(database_url, real_redis_url, MESSAGING_OUTBOX_RETENTION=0)
    with app.app_context():
        register_users(2)
        relay = Relay(get_state())
        relay.mark_relayed()
        assert relay.prune() == 2
        assert outbox_rows() == []


@pytest.mark.parametrize(
    "command",
    [("relay", "--once"), ("worker", "--burst", "--relay")],
    ids=["relay", "worker-relay"],
)
def test_relaying_without_an_outbox_is_a_clear_error(
    real_redis_url: str, command: tuple[str, ...]
) -> None:
    process = flask_messaging_command(
        "tests.worker_app:create_app",
        *command,
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stderr=subprocess.PIPE,
    )
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "bind a database" in stderr
    assert "Traceback" not in stderr


def test_relay_says_how_to_create_a_missing_table(app: Flask) -> None:
    db.drop_all()
    with pytest.raises(RuntimeError, match=r"db.create_all\(\)"):
        Relay(get_state())


def test_worker_relays_the_outbox_before_a_burst(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_tx_app(database_url, private_redis.url)
    commit_while_redis_is_down(app, private_redis, 2)
    worker = flask(database_url, private_redis.url, "worker", "--burst", "--relay")
    assert worker.returncode == 0, worker.stderr
    redis = Redis.from_url(private_redis.url)
    assert sorted(e["email"] for e in handled(redis)) == [
        "u0@example.com",
        "u1@example.com",
    ]
    redis.close()
