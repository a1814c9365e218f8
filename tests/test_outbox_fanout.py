"""The fan-out is decided at commit and stored with the outbox row.

A relay delivers exactly the stored list of subscribers; a relay that does not
know some of them (older code, or a subscriber removed) delivers the others
and keeps the row pending for those, backing off; rows written before the list
was stored are still relayed, and a relay of that version leaves new rows.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from redis import Redis

from flask_messaging.outbox import RELAYED_KEY, Relay, available_at
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state

from .conftest import ROOT
from .servers import RedisServer
from .skew_app import ARCHIVE_KEY
from .skew_app import create_app as create_skew_app
from .test_outbox import (
    MakeApp,
    _quiet,
    commit_while_redis_is_down,
    flask,
    outbox_rows,
    queued,
    register_users,
)
from .tx_app import User, UserRegistered, db
from .worker_app import handled

WELCOME_KEY = "tests.tx_app:welcome"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def make_skew_app(make_tx_app: MakeApp) -> MakeApp:
    """``make_tx_app`` of the skew app, older unless ``SKEW_APP_NEWER=1``."""
    return functools.partial(make_tx_app, factory=create_skew_app)


@pytest.fixture
def newer_app(
    make_skew_app: MakeApp,
    postgres_url: str,
    private_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Flask:
    """The newer version of the app, on PostgreSQL and the test's own Redis."""
    monkeypatch.setenv("SKEW_APP_NEWER", "1")
    return make_skew_app(postgres_url, private_redis.url, MESSAGING_RELAY_DELAY=10)


@pytest.fixture
def run(postgres_url: str, private_redis: RedisServer) -> Run:
    """``run(*ARGS, newer=...)``: ``flask messaging ARGS`` on the newer or the
    older version of the app, on PostgreSQL and the test's own Redis."""

    def run(*args: str, newer: bool) -> subprocess.CompletedProcess[str]:
        return flask(
            postgres_url,
            private_redis.url,
            *args,
            app="tests.skew_app:create_app",
            SKEW_APP_NEWER="1" if newer else "0",
            FLASK_MESSAGING_RELAY_DELAY="10",
        )

    return run


def make_all_due() -> None:
    """Let time pass for the relay: every pending row is due now."""
    table = get_state().outbox
    db.session.execute(
        table.update()
        .where(table.c.relayed_at.is_(None))
        .values(available_at=datetime.datetime(2000, 1, 1))
    )
    db.session.commit()


def test_an_older_relay_leaves_a_row_with_a_subscriber_it_lacks(
    newer_app: Flask, private_redis: RedisServer, run: Run
) -> None:
    # Newer code commits while Redis is down; an older relay runs first; then
    # the newer relay and a worker. The new subscriber must get the event,
    # and the one both have must not wait for it, nor run twice.
    commit_while_redis_is_down(newer_app, private_redis, 1)

    older = run("relay", "--once", newer=False)
    assert older.returncode == 0, older.stderr
    assert "Relayed 1 message(s)." in older.stdout
    assert "1 backing off after failed attempts" in older.stdout
    assert f"{ARCHIVE_KEY!r} of 'tests.tx.user_registered' are unknown" in older.stdout
    assert "older code than the one that committed" in older.stdout
    assert "removed from the code" in older.stdout
    assert f"flask messaging outbox drop-subscriber {ARCHIVE_KEY}" in older.stdout
    assert "Next due in" in older.stdout
    redis = Redis.from_url(private_redis.url)
    assert queued(redis) == 1  # the subscriber it knows does not wait
    with newer_app.app_context():
        (row,) = outbox_rows()
        assert row.relayed_at is None and row.attempts == 1
        assert ARCHIVE_KEY in row.last_error
        assert json.loads(row.subscribers) == {
            "delivered": [WELCOME_KEY],
            "pending": [ARCHIVE_KEY],
        }
        make_all_due()

    newer = run("relay", "--once", newer=True)
    assert newer.returncode == 0, newer.stderr
    assert "Relayed 1 message(s)." in newer.stdout
    assert queued(redis) == 2
    with newer_app.app_context():
        (row,) = outbox_rows()
        assert row.relayed_at is not None
    worker = run("worker", "--burst", "--no-relay", newer=True)
    assert worker.returncode == 0, worker.stderr
    assert sorted(e["handler"] for e in handled(redis)) == ["archive", "welcome"]
    redis.close()


def test_a_subscriber_removed_from_the_code_is_dropped_by_the_operator(
    newer_app: Flask, private_redis: RedisServer, run: Run
) -> None:
    # Code with the archive subscriber commits while Redis is down; the code
    # deployed next has removed it. Before, the row blocked 'welcome' too,
    # for ever, and no command could release it.
    commit_while_redis_is_down(newer_app, private_redis, 2)
    relay = run("relay", "--once", newer=False)
    assert "Relayed 2 message(s)." in relay.stdout, relay.stderr
    listed = run("outbox", "list", newer=False)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(f"waits for {ARCHIVE_KEY};") == 2
    dry = run("outbox", "drop-subscriber", ARCHIVE_KEY, "--dry-run", newer=False)
    assert f"Would drop {ARCHIVE_KEY!r} from 2 pending row(s)." in dry.stdout
    with newer_app.app_context():
        assert [r.relayed_at for r in outbox_rows()] == [None, None]
    dropped = run("outbox", "drop-subscriber", ARCHIVE_KEY, newer=False)
    assert dropped.returncode == 0, dropped.stderr
    assert f"Dropped {ARCHIVE_KEY!r} from 2 pending row(s)." in dropped.stdout
    with newer_app.app_context():
        assert all(r.relayed_at is not None for r in outbox_rows())
    listed = run("outbox", "list", newer=False)
    assert "No outbox row has failed to relay." in listed.stdout
    worker = run("worker", "--burst", newer=False)
    assert worker.returncode == 0, worker.stderr
    redis = Redis.from_url(private_redis.url)
    assert sorted(e["handler"] for e in handled(redis)) == ["welcome", "welcome"]
    redis.close()


def test_an_operator_discards_a_row(
    newer_app: Flask, private_redis: RedisServer, run: Run
) -> None:
    commit_while_redis_is_down(newer_app, private_redis, 1)
    with newer_app.app_context():
        (row,) = outbox_rows()
    missing = run("outbox", "discard", "nope", newer=False)
    assert missing.returncode != 0
    assert "No pending outbox row 'nope'" in missing.stderr
    dry = run("outbox", "discard", row.message_id, "--dry-run", newer=False)
    assert f"Would discard {row.message_id}." in dry.stdout, dry.stderr
    with newer_app.app_context():
        assert outbox_rows()[0].relayed_at is None
    done = run("outbox", "discard", row.message_id, newer=False)
    assert f"Discarded {row.message_id}." in done.stdout, done.stderr
    with newer_app.app_context():
        assert outbox_rows()[0].relayed_at is not None
    relay = run("relay", "--once", newer=False)
    assert "Relayed 0 message(s)." in relay.stdout


def test_the_relay_delivers_the_stored_list_not_its_own_predicates(
    make_skew_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    wanted: list[int] = [1]
    app = make_skew_app(database_url, private_redis.url)
    with app.app_context():
        get_state().broker.subscribe_async(
            UserRegistered,
            record_picky,
            queue_name=LOW_PRIORITY,
            predicate=lambda event: event.user_id in wanted,
            name="tests.picky",
        )
        private_redis.stop()
        with _quiet():
            register_users(2)  # users 1 and 2: only 1 passes at commit
        rows = outbox_rows()
        assert [sorted(json.loads(r.subscribers)) for r in rows] == [
            sorted([WELCOME_KEY, "tests.picky"]),
            [WELCOME_KEY],
        ]
        wanted[:] = [2]  # the predicate now says the opposite
        private_redis.start()
        assert Relay(get_state()).run_once() == 2
        jobs = get_state().redis.lrange(f"rq:queue:{LOW_PRIORITY}", 0, -1)
        picky = [j for j in jobs if rows[0].message_id.encode() in j]
        assert len(jobs) == 3 and len(picky) == 2


def record_picky(event: UserRegistered) -> None:
    """Never run here: the test counts the jobs."""


def test_rows_written_without_a_stored_list_are_relayed_to_this_apps_subscribers(
    make_skew_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    # Rows committed by a version before the fan-out was stored have NULL.
    app = make_skew_app(database_url, private_redis.url)
    commit_while_redis_is_down(app, private_redis, 1)
    with app.app_context():
        table = get_state().outbox
        # As that version wrote them: available_at not shifted.
        db.session.execute(
            table.update().values(
                subscribers=None, available_at=datetime.datetime(2000, 1, 1)
            )
        )
        db.session.commit()
        assert Relay(get_state()).run_once() == 1
        assert queued(get_state().redis) == 1  # welcome, this app's subscriber
        assert outbox_rows()[0].relayed_at is not None


def test_a_failed_enqueue_at_commit_makes_its_rows_due_at_once(
    make_skew_app: MakeApp, database_url: str, private_redis: RedisServer
) -> None:
    app = make_skew_app(database_url, private_redis.url, MESSAGING_RELAY_DELAY=3600)
    with app.app_context():
        register_users(1)  # enqueued at commit: left to this process
        private_redis.stop()
        with _quiet():
            register_users(1, start=1)
        enqueued, failed = outbox_rows()
        due = [available_at(r.available_at, r.subscribers) for r in (enqueued, failed)]
        assert due[0] > enqueued.created_at
        assert due[1] <= datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        private_redis.start()
        get_state().redis.delete(RELAYED_KEY)  # this Redis lost its data too
        relay = Relay(get_state())
        assert relay.run_once() == 1
        deferred = relay.deferred()
        assert (deferred.not_yet_due, deferred.backing_off) == (1, 0)
        assert deferred.next_due_at == due[0]


def test_a_table_without_the_subscribers_column_gets_the_migration_to_run(
    make_skew_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_skew_app(database_url, real_redis_url)
    with app.app_context():
        table = get_state().outbox
        with db.engine.begin() as connection:
            connection.execute(
                sa.text(f"ALTER TABLE {table.name} DROP COLUMN subscribers")
            )
        with pytest.raises(RuntimeError) as error:
            Relay(get_state())
        assert "lacks the column(s) subscribers" in str(error.value)
        assert f"ALTER TABLE {table.name} ADD COLUMN subscribers TEXT" in str(
            error.value
        )
        # The committing process: the same error, and nothing committed.
        with pytest.raises(RuntimeError, match="ADD COLUMN subscribers"):
            register_users(1)
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_a_commit_without_the_outbox_table_says_how_to_create_it(
    make_skew_app: MakeApp, database_url: str, real_redis_url: str
) -> None:
    app = make_skew_app(database_url, real_redis_url)
    with app.app_context():
        get_state().outbox.drop(db.engine)
        with pytest.raises(RuntimeError, match="does not exist: create it once"):
            register_users(1)
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


#: The last version whose outbox table had no ``subscribers`` column: its
#: relay delivers every row to its own subscribers.
BEFORE_THE_COLUMN = "dfed9fc"


@pytest.fixture
def version_before_the_column(tmp_path: Path) -> Path:
    """That version's ``flask_messaging`` package, from the repository."""
    archive = subprocess.run(
        ["git", "archive", BEFORE_THE_COLUMN, "flask_messaging"],
        cwd=ROOT,
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_THE_COLUMN} is not in this checkout's history")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    return tmp_path


def test_a_relay_of_the_version_before_the_column_leaves_new_rows(
    make_skew_app: MakeApp,
    postgres_url: str,
    private_redis: RedisServer,
    version_before_the_column: Path,
) -> None:
    # Before, that relay enqueued the row for its own subscribers (dropping
    # those it lacks) and marked it relayed. Now it sees the row as not due;
    # this version's relay delivers it.
    app = make_skew_app(postgres_url, private_redis.url)
    commit_while_redis_is_down(app, private_redis, 1)
    old = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.tx_app:create_app"]
        + ["messaging", "relay", "--once"],
        # python -m puts the working directory first on sys.path.
        cwd=version_before_the_column,
        env={
            **os.environ,
            "PYTHONPATH": f"{version_before_the_column}{os.pathsep}{ROOT}",
            "DATABASE_URL": postgres_url,
            "MESSAGING_REDIS_URL": private_redis.url,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert old.returncode == 0, old.stderr
    assert "Relayed 0 message(s)." in old.stdout
    redis = Redis.from_url(private_redis.url)
    assert queued(redis) == 0
    with app.app_context():
        (row,) = outbox_rows()
        assert row.relayed_at is None and row.attempts == 0
        assert Relay(get_state()).run_once() == 1
    assert queued(redis) == 1
    redis.close()
