"""Transactions with the outbox, the relay, and commit-to-handler latency.

Needs PostgreSQL (``BENCH_DATABASE_URL``, default: a ``flask_messaging_bench``
database on the local server, created if missing) and redis-server.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from redis import Redis
from rq import Queue

from flask_messaging import wait_for_sent
from flask_messaging.outbox import Relay
from flask_messaging.state import get_state
from flask_messaging.transaction import register_event

from ._support import Row, database_url, rate, redis_server
from .app import STARTS, Account, AccountOpened, create_app, db

ROOT = Path(__file__).resolve().parent.parent


def run(repeat: int, transactions: int = 1000, relay_events: int = 10_000) -> list[Row]:
    url = database_url()
    with redis_server() as redis_url:
        os.environ["MESSAGING_REDIS_URL"] = redis_url
        os.environ["DATABASE_URL"] = url
        app = create_app()
        with app.app_context():
            db.drop_all()
            db.create_all()
            rows = [
                _throughput(repeat, transactions),
                _relay(repeat, relay_events),
                *_latency(repeat, redis_url, url),
            ]
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
    return rows


def _throughput(repeat: int, count: int) -> Row:
    def plain_block(count: int) -> None:
        for n in range(count):
            db.session.add(Account(email=f"{n}@example.com"))
            db.session.flush()
            db.session.commit()

    def ours_block(count: int) -> None:
        for n in range(count):
            account = Account(email=f"{n}@example.com")
            db.session.add(account)
            db.session.flush()
            register_event(AccountOpened(account.id, account.email))
            db.session.commit()
        # The sender thread writes the jobs after each commit: the block
        # ends when every job is in Redis, so its time counts too.
        wait_for_sent()

    # Alternate short blocks, so that both sides see the same machine noise.
    anchor, ours = [], []
    block = 100
    for _ in range(repeat):
        plain_time = ours_time = 0.0
        for _ in range(count // block):
            plain_time += block / rate(block, lambda: plain_block(block))
            ours_time += block / rate(block, lambda: ours_block(block))
        anchor.append(count / plain_time)
        ours.append(count / ours_time)
        get_state().redis.flushdb()
    return Row(
        "transaction + 1 event, outbox on (PostgreSQL)",
        "tx/s",
        "same transaction, no messaging",
        anchor,
        ours,
        target=0.75,
    )


def _relay(repeat: int, count: int) -> Row:
    state = get_state()
    real = state.redis
    logger = logging.getLogger("flask_messaging")
    results = []
    for _ in range(repeat):
        # Redis unreachable at commit: every event waits in the outbox.
        state.use_redis(Redis(port=1))
        logger.disabled = True
        for start in range(0, count, 1000):
            for n in range(start, start + 1000):
                register_event(AccountOpened(n, f"{n}@example.com"))
            db.session.commit()
        # The sender fails on this client (redis-py retries a refused
        # connection for seconds), then makes the rows due.
        wait_for_sent(timeout=300)
        logger.disabled = False
        state.use_redis(real)
        relay = Relay(state)
        results.append(rate(count, relay.run_once))
        real.flushdb()
    # No anchor: the target is absolute (events per second).
    return Row(
        f"outbox relay of {count:,} events (PostgreSQL)",
        "events/s",
        "target: 5,000 events/s",
        [5000.0] * repeat,
        results,
        target=1.0,
    )


def _latency(repeat: int, redis_url: str, url: str) -> list[Row]:
    samples = 100 * repeat
    redis = Redis.from_url(redis_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def measure(worker: list[str], send: object) -> list[float]:
        redis.flushdb()
        process = subprocess.Popen(
            worker,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # let it start and go idle
            delays = []
            for n in range(samples):
                started = send(n)  # type: ignore[operator]
                _, value = redis.blpop([STARTS], timeout=10)  # type: ignore[misc]
                delays.append(float(value) - started)
                time.sleep(0.005)
            return delays
        finally:
            process.terminate()
            process.wait(10)

    queue = Queue("default", connection=redis)

    def rq_enqueue(n: int) -> float:
        started = time.time()
        queue.enqueue("benchmarks.app.stamp_rq", n)
        return started

    def commit_event(n: int) -> float:
        account = Account(email=f"{n}@example.com")
        db.session.add(account)
        db.session.flush()
        register_event(AccountOpened(account.id, account.email))
        # From the moment the database has committed (SQLAlchemy's
        # after_commit): what follows, the enqueue included, is ours.
        committed: list[float] = []
        sa.event.listen(
            db.session(),
            "after_commit",
            lambda _: committed.append(time.time()),
            once=True,
        )
        db.session.commit()
        return committed[0]

    anchor = measure(
        [
            sys.executable,
            "-c",
            "import sys; from redis import Redis; from rq import SimpleWorker;"
            f" SimpleWorker(['default'], connection=Redis.from_url({redis_url!r}))"
            ".work(logging_level='WARNING')",
        ],
        rq_enqueue,
    )
    ours = measure(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "benchmarks.app:create_app",
            "messaging",
            "worker",
            "--logging-level",
            "WARNING",
        ],
        commit_event,
    )
    redis.close()

    def ms(values: list[float], q: int) -> list[float]:
        # One percentile per repetition of 100 samples.
        return [
            statistics.quantiles(values[i : i + 100], n=100)[q - 1] * 1000
            for i in range(0, len(values), 100)
        ]

    return [
        Row(
            "commit -> async handler start, p50",
            "ms",
            "RQ enqueue -> job start",
            ms(anchor, 50),
            ms(ours, 50),
            target=1.0,
            lower_is_better=True,
        ),
        Row(
            "commit -> async handler start, p99",
            "ms",
            "RQ enqueue -> job start",
            ms(anchor, 99),
            ms(ours, 99),
            lower_is_better=True,
        ),
    ]
