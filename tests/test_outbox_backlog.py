"""The outbox backlog as operators see it, and who relays it.

``relay --once`` right after an outage relays what was left and says what it
left and why; ``status`` and the messaging page tell rows waiting for the
relay from rows the committing process already enqueued; ``flask messaging
worker`` relays (and prunes) by default.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from flask import Flask
from redis import Redis

from flask_messaging.cli import _describe_backlog
from flask_messaging.outbox import BACKLOG_LISTED_READ, RELAYED_KEY, Relay, utcnow
from flask_messaging.state import get_state

from .conftest import ROOT, flask_messaging_command
from .servers import RedisServer
from .test_outbox import (
    KILL_AFTER_COMMIT,
    TX_APP,
    MakeApp,
    _quiet,
    commit_while_redis_is_down,
    flask,
    outbox_rows,
    register_users,
)
from .tx_app import create_app, db
from .worker_app import handled

UNREACHABLE = "redis://127.0.0.1:1/0"

#: The production default: rows are left to their committing process for 10 s.
DELAY = {"FLASK_MESSAGING_RELAY_DELAY": "10"}


def test_relay_once_right_after_an_outage_relays_the_rows_left_behind(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_tx_app(database_url, private_redis.url, MESSAGING_RELAY_DELAY=10)
    commit_while_redis_is_down(app, private_redis, 3)
    relay = flask(database_url, private_redis.url, "relay", "--once", **DELAY)
    assert relay.returncode == 0, relay.stderr
    assert relay.stdout.strip() == "Relayed 3 message(s)."


def test_relay_once_says_what_it_left_and_when_it_is_due(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    # A process dies right after its commit: its rows are not due for
    # MESSAGING_RELAY_DELAY, in case it was only slow.
    app = make_tx_app(database_url, real_redis_url)
    died = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_COMMIT],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "MESSAGING_REDIS_URL": real_redis_url,
            "PYTHONPATH": str(ROOT),
            **DELAY,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 0, died.stderr
    relay = flask(database_url, real_redis_url, "relay", "--once", **DELAY)
    assert relay.returncode == 0, relay.stderr
    first, second = relay.stdout.strip().splitlines()
    assert first == "Relayed 0 message(s)."
    assert second.startswith(
        "Left 2 row(s): 2 not yet due (committed less than"
        " MESSAGING_RELAY_DELAY = 10 s ago: left to the process that committed"
        " them). Next due in "
    )
    # A burst worker's relay pass says the same: this burst leaves them.
    worker = flask(database_url, real_redis_url, "worker", "--burst", **DELAY)
    assert worker.returncode == 0, worker.stderr
    assert "Relayed 0 message(s).\nLeft 2 row(s): 2 not yet due" in worker.stdout
    with app.app_context():
        assert [row.relayed_at for row in outbox_rows()] == [None, None]


def commit_cut_off(database_url: str, count: int, start: int) -> None:
    """Commit ``count`` events from a process that cannot reach Redis."""
    cut_off = create_app(
        SQLALCHEMY_DATABASE_URI=database_url, MESSAGING_REDIS_URL=UNREACHABLE
    )
    with cut_off.app_context(), _quiet():
        register_users(count, start=start)
        db.session.remove()
        db.engine.dispose()


def test_status_tells_waiting_rows_from_rows_enqueued_at_commit(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(database_url, real_redis_url)
    with app.app_context():
        register_users(2)  # enqueued at commit; no relay has marked them
        db.session.remove()
    commit_cut_off(database_url, 1, start=2)
    with app.app_context():
        backlog = Relay(get_state()).backlog()
        assert (backlog.waiting, backlog.enqueued) == (1, 2)
        oldest = outbox_rows()[2].created_at
        assert backlog.oldest_waiting_at == oldest
    status = flask(database_url, real_redis_url, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["outbox_backlog"]
    assert (report["waiting"], report["enqueued"]) == (1, 2)
    assert report["oldest_waiting_age"] >= 0
    text = flask(database_url, real_redis_url, "status")
    assert (
        "Outbox: 1 row(s) waiting for the relay, 2 enqueued at commit (not yet"
        " marked by a relay); oldest waiting row committed "
    ) in text.stdout
    with app.app_context():
        Relay(get_state()).run_once()
        backlog = Relay(get_state()).backlog()
        assert (backlog.waiting, backlog.enqueued) == (0, 0)
        assert backlog.oldest_waiting_at is None and backlog.oldest_waiting_age is None


def test_the_messaging_page_shows_waiting_enqueued_and_the_oldest_age(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(
        database_url, real_redis_url, MESSAGING_DASHBOARD_AUTH=("admin", "pw")
    )
    with app.app_context():
        register_users(1)
        db.session.remove()
    commit_cut_off(database_url, 2, start=1)
    headers = {"Authorization": "Basic YWRtaW46cHc="}  # admin:pw
    page = app.test_client().get("/rq/messaging/", headers=headers).text
    assert '<strong id="outbox-waiting">2</strong>' in page
    assert '<strong id="outbox-enqueued">1</strong>' in page
    assert '<strong id="outbox-oldest-age">' in page


def test_the_worker_relays_by_default_and_not_with_no_relay(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_tx_app(database_url, private_redis.url)
    commit_while_redis_is_down(app, private_redis, 2)
    redis = Redis.from_url(private_redis.url)
    opted_out = flask(
        database_url, private_redis.url, "worker", "--burst", "--no-relay"
    )
    assert opted_out.returncode == 0, opted_out.stderr
    assert "Relayed" not in opted_out.stdout
    assert handled(redis) == []
    with app.app_context():
        assert [row.relayed_at for row in outbox_rows()] == [None, None]
    worker = flask(database_url, private_redis.url, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.startswith("Relayed 2 message(s).\n")
    assert sorted(e["email"] for e in handled(redis)) == [
        "u0@example.com",
        "u1@example.com",
    ]
    redis.close()


def test_a_running_worker_marks_and_prunes_the_outbox(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_tx_app(database_url, real_redis_url, MESSAGING_OUTBOX_RETENTION=0)
    with app.app_context():
        register_users(3)  # enqueued at commit
        db.session.remove()
    worker = flask_messaging_command(
        TX_APP,
        "worker",
        env={
            "DATABASE_URL": database_url,
            "MESSAGING_REDIS_URL": real_redis_url,
            "FLASK_MESSAGING_OUTBOX_RETENTION": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with app.app_context():
            # Waiting for the worker, not timing it: the bound only ends a
            # test that would otherwise hang.
            redis = get_state(app).redis
            deadline = time.monotonic() + 60
            while outbox_rows() or len(handled(redis)) < 3:
                assert worker.poll() is None, worker.communicate()[0]
                assert time.monotonic() < deadline, "the worker never pruned"
                time.sleep(0.1)
                db.session.remove()
        assert len(handled(redis)) == 3
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output


def test_a_worker_refuses_to_start_without_the_outbox_table(
    database_url: str, real_redis_url: str, app_without_tables: Flask
) -> None:
    worker = flask(database_url, real_redis_url, "worker", "--burst")
    assert worker.returncode == 2
    assert "does not exist: create it once" in worker.stderr
    assert "Traceback" not in worker.stderr


@pytest.fixture
def app_without_tables(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> Flask:
    app = make_tx_app(database_url, real_redis_url)
    with app.app_context():
        db.drop_all()
    return app


def test_the_backlog_is_still_counted_when_redis_cannot_be_read(
    make_tx_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_tx_app(
        database_url, private_redis.url, MESSAGING_DASHBOARD_AUTH=("admin", "pw")
    )
    with app.app_context():
        register_users(2)  # enqueued at commit, listed in Redis
        db.session.remove()
        private_redis.stop()
        backlog = Relay(get_state()).backlog()
        assert (backlog.waiting, backlog.enqueued) == (2, None)
        assert backlog.oldest_waiting_at == outbox_rows()[0].created_at
    headers = {"Authorization": "Basic YWRtaW46cHc="}  # admin:pw
    page = app.test_client().get("/rq/messaging/", headers=headers).text
    assert '<strong id="outbox-waiting">2</strong>' in page
    assert "Redis cannot be read: some of them may have been enqueued" in page
    assert _describe_backlog(backlog).startswith(
        "Outbox: 2 row(s) not marked relayed (Redis cannot be read to tell those"
        " enqueued at commit); oldest waiting row committed "
    )


def test_the_backlog_reads_a_bounded_part_of_a_long_list(
    make_tx_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    # Rows enqueued at commit and never marked (no relay for a while), more
    # than the backlog reads, and one row nobody enqueued, the newest. Before,
    # the whole list was read and every listed row paged through (1.8 s with
    # 50,000 rows): 14 queries for 3 times the bound; now at most 4.
    listed = 3 * BACKLOG_LISTED_READ
    app = make_tx_app(database_url, real_redis_url)
    with app.app_context():
        state = get_state()
        table = state.outbox
        assert table is not None
        now = utcnow()
        rows = [
            {
                "message_id": f"{n:032x}",
                "message_type": "tests.tx.noted",
                "envelope": "{}",
                "subscribers": "[]",
                "created_at": now,
                "available_at": now,
                "attempts": 0,
            }
            for n in range(listed + 1)
        ]
        with db.engine.begin() as connection:
            connection.execute(sa.insert(table), rows)
        state.redis.rpush(RELAYED_KEY, *[row["message_id"] for row in rows[:-1]])
        statements: list[str] = []

        def count(*args: object) -> None:
            if str(args[2]).startswith("SELECT"):
                statements.append(str(args[2]))

        relay = Relay(state)
        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            backlog = relay.backlog()
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
        assert len(statements) <= 4, statements
        assert (backlog.waiting, backlog.enqueued) == (1, listed)
        assert backlog.approximate
        assert "approximate" in _describe_backlog(backlog)
        # Under the bound, the count is exact and says nothing of the kind.
        state.redis.ltrim(RELAYED_KEY, 0, BACKLOG_LISTED_READ - 2)
        backlog = Relay(state).backlog()
        assert (backlog.waiting, backlog.enqueued) == (
            listed + 1 - (BACKLOG_LISTED_READ - 1),
            BACKLOG_LISTED_READ - 1,
        )
        assert not backlog.approximate
        assert "approximate" not in _describe_backlog(backlog)
