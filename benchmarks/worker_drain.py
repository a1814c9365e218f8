"""Worker drain of trivial jobs: ``rq worker`` (forking and simple) vs ours."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from redis import Redis
from rq import Queue, SimpleWorker, Worker

from flask_messaging import Message, Messaging
from flask_messaging.extension import get_state
from flask_messaging.worker import make_worker

from ._support import Row, rate, redis_server


def noop(n: int) -> None:
    """The anchor's job."""


@dataclass(frozen=True)
class Tick(Message, name="bench.tick"):
    n: int


def on_tick(event: Tick) -> None:
    """Our handler."""


def _fill_rq(connection: Redis, count: int) -> Queue:
    connection.flushdb()
    queue = Queue("default", connection=connection)
    for start in range(0, count, 500):
        queue.enqueue_many(
            [Queue.prepare_data(noop, args=(n,)) for n in range(start, start + 500)]
        )
    return queue


def run(repeat: int, count: int = 2000, fork_count: int = 200) -> list[Row]:
    with redis_server() as url:
        connection = Redis.from_url(url)
        app = Flask("bench")
        app.config.update(SECRET_KEY="bench", MESSAGING_REDIS_URL=url)
        Messaging(app)
        state = get_state(app)
        state.broker.subscribe_async(Tick, on_tick)

        def fill_ours(n: int) -> None:
            connection.flushdb()
            for i in range(n):
                state.broker.publish(Tick(i))

        def drain_rq(worker_class: type[Worker], n: int) -> float:
            queue = _fill_rq(connection, n)
            worker = worker_class([queue], connection=connection)
            return rate(n, lambda: worker.work(burst=True, logging_level="WARNING"))

        def drain_ours(n: int) -> float:
            fill_ours(n)
            worker = make_worker(app, ["default"])
            return rate(n, lambda: worker.work(burst=True, logging_level="WARNING"))

        simple, forking, ours, ours_small = [], [], [], []
        for _ in range(repeat):
            simple.append(drain_rq(SimpleWorker, count))
            ours.append(drain_ours(count))
            forking.append(drain_rq(Worker, fork_count))
            ours_small.append(drain_ours(fork_count))
        connection.close()
    return [
        Row(
            f"worker drain, {count} trivial jobs, 1 process",
            "jobs/s",
            "rq SimpleWorker",
            simple,
            ours,
            target=1.0,
        ),
        Row(
            f"worker drain, {fork_count} trivial jobs, 1 process",
            "jobs/s",
            "rq Worker (fork per job)",
            forking,
            ours_small,
            target=3.0,
        ),
    ]
