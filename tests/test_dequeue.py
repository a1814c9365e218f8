"""MessagingQueue: jobs taken off several queues are never outside Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.exceptions import DequeueTimeout

from flask_messaging._rq.dequeue import MessagingQueue, wake_key
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.queue_names import DEFAULT_PRIORITY, HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state

PRIORITIES = (HIGH_PRIORITY, DEFAULT_PRIORITY, LOW_PRIORITY)


@pytest.fixture
def redis(app: object) -> Iterator[Redis]:
    yield get_state().redis


def queues(redis: Redis, cls: type[Queue] = MessagingQueue) -> list[Queue]:
    return [
        cls(name, connection=redis, serializer=JSONSerializer) for name in PRIORITIES
    ]


def enqueue(queue: Queue, n: int) -> str:
    return queue.enqueue("builtins.print", n).id


def take(redis: Redis, timeout: int | None = None) -> tuple[str, str] | None:
    taken = MessagingQueue.dequeue_any(
        queues(redis), timeout, connection=redis, serializer=JSONSerializer
    )
    return None if taken is None else (taken[1].name, taken[0].id)


def test_jobs_are_taken_in_priority_order_onto_the_intermediate_list(
    redis: Redis,
) -> None:
    high, default, low = queues(redis)
    low_id = enqueue(low, 1)
    high_id = enqueue(high, 2)
    default_id = enqueue(default, 3)

    assert take(redis) == (HIGH_PRIORITY, high_id)
    # Held where RQ's maintenance looks for a job whose worker died.
    assert high.intermediate_queue.get_job_ids() == [high_id]
    assert (default.count, low.count) == (1, 1)
    assert take(redis) == (DEFAULT_PRIORITY, default_id)
    assert take(redis) == (LOW_PRIORITY, low_id)
    assert take(redis) is None


def test_every_push_leaves_a_wake_token_and_taking_spends_it(redis: Redis) -> None:
    high, default, _ = queues(redis)
    enqueue(high, 1)
    enqueue(high, 2)
    enqueue(default, 3)
    assert redis.llen(wake_key(HIGH_PRIORITY)) == 2
    assert redis.llen(wake_key(DEFAULT_PRIORITY)) == 1
    take(redis)
    assert redis.llen(wake_key(HIGH_PRIORITY)) == 1
    take(redis)
    take(redis)
    assert take(redis) is None
    # Nothing is left to wake for: no token outlives its queue's jobs.
    assert not redis.exists(*(wake_key(name) for name in PRIORITIES))


def take_while_pushing(
    redis: Redis, queue: Queue
) -> tuple[tuple[str, str] | None, str]:
    """Block in a take while another thread pushes a job onto ``queue``.

    :return: what the take returned, and the id of the pushed job.
    """
    pushed: list[str] = []
    timer = threading.Timer(0.2, lambda: pushed.append(enqueue(queue, 1)))
    timer.start()
    try:
        taken = take(redis, timeout=30)
    finally:
        timer.join()
    return taken, pushed[0]


def test_an_idle_taker_wakes_for_a_push_on_any_queue(redis: Redis) -> None:
    taken, pushed = take_while_pushing(redis, queues(redis)[2])
    assert taken == (LOW_PRIORITY, pushed)


def test_a_push_without_a_token_is_still_taken(redis: Redis) -> None:
    # RQ's scheduler and registries push through plain Queue objects.
    taken, pushed = take_while_pushing(redis, queues(redis, Queue)[1])
    assert taken == (DEFAULT_PRIORITY, pushed)


def test_an_empty_wait_ends_in_rq_s_timeout(redis: Redis) -> None:
    with pytest.raises(DequeueTimeout):
        take(redis, timeout=1)


def test_a_job_gone_from_redis_is_skipped_and_not_left_held(redis: Redis) -> None:
    high, default, _ = queues(redis)
    gone = enqueue(high, 1)
    kept = enqueue(default, 2)
    redis.delete(f"rq:job:{gone}")
    assert take(redis) == (DEFAULT_PRIORITY, kept)
    assert high.intermediate_queue.get_job_ids() == []
