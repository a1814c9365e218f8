"""Many events committed in one transaction.

1,000 events against RQ's own ``Queue.enqueue_many`` of the same jobs, the
fastest way RQ has to enqueue; then 10,000 events, for the rate and the peak
memory of a transaction that large. Needs PostgreSQL and redis-server, as
``transactions`` does.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import sqlalchemy as sa
from flask import Flask
from redis import Redis
from rq import Queue

from flask_messaging import wait_for_sent
from flask_messaging.queue_names import DEFAULT_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from ._support import Row, database_url, redis_server
from .app import AccountOpened, create_app, db, stamp_rq


def run(repeat: int, count: int = 1000, large: int = 10_000) -> list[Row]:
    url = database_url()
    with redis_server() as redis_url:
        os.environ["MESSAGING_REDIS_URL"] = redis_url
        os.environ["DATABASE_URL"] = url
        redis = Redis.from_url(redis_url)
        outbox = create_app()  # MESSAGING_OUTBOX is on by default
        direct = create_app(MESSAGING_OUTBOX=False)
        with outbox.app_context():
            db.drop_all()
            db.create_all()
        try:
            rows = _versus_rq(repeat, count, redis, outbox, direct)
            with outbox.app_context():
                rows += _large(repeat, large, redis)
        finally:
            with direct.app_context():
                db.session.remove()
                db.engine.dispose()
            with outbox.app_context():
                db.session.remove()
                db.drop_all()
                db.engine.dispose()
            redis.close()
    return rows


def _reset(redis: Redis) -> None:
    redis.flushdb()
    outbox = db.metadata.tables.get(get_state().settings.outbox.table)
    if outbox is not None:
        with db.engine.begin() as connection:
            connection.execute(sa.delete(outbox))


def _commit(count: int, redis: Redis) -> float:
    """Seconds from the first ``register_event`` until the jobs are in Redis.

    With the outbox on, ``commit`` returns before its jobs exist (the
    sender writes them): the time runs until ``wait_for_sent`` returns.
    """
    start = time.perf_counter()
    for n in range(count):
        register_event(AccountOpened(n, f"{n}@example.com"))
    db.session.commit()
    wait_for_sent()
    elapsed = time.perf_counter() - start
    # Fast and wrong is easy: an unreachable Redis leaves events in the outbox.
    queued = Queue(DEFAULT_PRIORITY, connection=redis).count
    if queued != count:
        raise RuntimeError(f"{queued} jobs queued after committing {count} events.")
    return elapsed


def _versus_rq(
    repeat: int, count: int, redis: Redis, outbox: Flask, direct: Flask
) -> list[Row]:
    queue = Queue("default", connection=redis)

    def enqueue_many() -> float:
        start = time.perf_counter()
        queue.enqueue_many(
            [
                Queue.prepare_data(stamp_rq, args=(n, f"{n}@example.com"))
                for n in range(count)
            ]
        )
        return time.perf_counter() - start

    def ours(app: Flask) -> float:
        with app.app_context():
            _reset(redis)
            return count / _commit(count, redis)

    for app in (outbox, direct):  # the first commit records the job template
        with app.app_context():
            _commit(10, redis)
            _reset(redis)
    anchor, with_outbox, without = [], [], []
    for _ in range(repeat):
        redis.flushdb()
        anchor.append(count / enqueue_many())
        with_outbox.append(ours(outbox))
        without.append(ours(direct))
    with outbox.app_context():
        _reset(redis)
    return [
        Row(
            f"{count:,} events in one commit, outbox on (default)",
            "jobs/s",
            "RQ enqueue_many, same jobs",
            anchor,
            with_outbox,
            target=2.0,
        ),
        Row(
            f"{count:,} events in one commit, outbox off",
            "jobs/s",
            "RQ enqueue_many, same jobs",
            anchor,
            without,
            target=2.0,
        ),
    ]


def _large(repeat: int, count: int, redis: Redis) -> list[Row]:
    rates, peaks = [], []
    for _ in range(repeat):
        _reset(redis)
        rates.append(count / _commit(count, redis))
        # Traced separately: tracemalloc slows every allocation down.
        _reset(redis)
        tracemalloc.start()
        _commit(count, redis)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    _reset(redis)
    # No anchor: figures to watch, not ratios.
    return [
        Row(
            f"{count:,} events in one commit, outbox on",
            "events/s",
            "-",
            [],
            rates,
        ),
        Row(
            f"{count:,} events in one commit, peak Python heap",
            "MiB",
            "-",
            [],
            peaks,
            lower_is_better=True,
        ),
    ]
