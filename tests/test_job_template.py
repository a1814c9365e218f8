"""The check of RQ's recorded enqueue, and RQ's own enqueue when it fails.

A newer RQ may write jobs differently from what the enqueue script was
compiled from: the recording is checked, and jobs whose recording does not
match are written by RQ's ``Queue.enqueue_many``, with the same markers and
relayed list as the script writes.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from rq import Queue

from flask_messaging._rq.dequeue import MessagingQueue, wake_key
from flask_messaging._rq.enqueue import (
    MARKER_PREFIX,
    MARKER_TTL,
    RQJobs,
    job_description,
)
from flask_messaging._rq.job_template import (
    PROTOTYPE_DESCRIPTION,
    PROTOTYPE_ID,
    JobTemplate,
    Recording,
    RecordingMismatch,
)
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.dispatch import DISPATCH_FUNCTION, Delivery
from flask_messaging.envelope import encode as codec_encode
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.signing import JobBinding
from flask_messaging.state import MessagingState, get_state
from flask_messaging.worker import make_worker

from . import worker_app
from .test_rq_contract import redis_contents
from .worker_app import Ping, handled

RELAYED = "test:relayed"

# -- The check ----------------------------------------------------------------


@pytest.fixture
def recording(make_app: Callable[..., Flask]) -> Recording:
    """RQ's recorded enqueue of a job of on_ping, with a time to live."""
    state = get_state(make_app(worker_app.messaging, MESSAGING_JOB_TTL=600))
    return state.jobs.record(on_ping(state))  # type: ignore[attr-defined, no-any-return]


def on_ping(state: MessagingState) -> Any:
    (subscription,) = [s for s in state.registry if s.key.endswith(":on_ping")]
    return subscription


def job_hash(recording: Recording) -> tuple[Any, ...]:
    """The HSET that writes most of the job's fields."""
    return max((c for c in recording.commands if c[0] == "HSET"), key=lambda c: len(c))


def doctored(
    recording: Recording, change: Callable[[tuple[Any, ...]], tuple[Any, ...]]
) -> Recording:
    """``recording`` with its main HSET replaced by ``change(HSET)``."""
    main = job_hash(recording)
    commands = [change(c) if c is main else c for c in recording.commands]
    return dataclasses.replace(recording, commands=commands)


def with_field(command: tuple[Any, ...], field: str, value: Any) -> tuple[Any, ...]:
    return (*command, field, value)


def without_field(command: tuple[Any, ...], field: str) -> tuple[Any, ...]:
    at = command.index(field, 2)
    return command[:at] + command[at + 2 :]


def replaced_field(command: tuple[Any, ...], field: str, value: Any) -> tuple[Any, ...]:
    return with_field(without_field(command, field), field, value)


DOCTORED: dict[str, tuple[Callable[[Recording], Recording], str]] = {
    "a command it does not know": (
        lambda r: dataclasses.replace(
            r, commands=[*r.commands, ("ZADD", "rq:enqueued", 0, PROTOTYPE_ID)]
        ),
        "RQ sent ZADD",
    ),
    "a second data field": (
        lambda r: doctored(r, lambda c: with_field(c, "data", c[c.index("data") + 1])),
        "data field 2 times",
    ),
    "no enqueued_at": (
        lambda r: doctored(r, lambda c: without_field(c, "enqueued_at")),
        "enqueued_at field 0 times",
    ),
    "a time in another field": (
        lambda r: doctored(
            r, lambda c: replaced_field(c, "started_at", c[c.index("created_at") + 1])
        ),
        "a time in field started_at",
    ),
    "the id in a field": (
        lambda r: doctored(r, lambda c: with_field(c, "parent_id", PROTOTYPE_ID)),
        "in field parent_id",
    ),
    "the description in a list": (
        lambda r: dataclasses.replace(
            r, commands=[*r.commands, ("RPUSH", "rq:log", PROTOTYPE_DESCRIPTION)]
        ),
        "in RPUSH rq:log",
    ),
    "an argument of another kind": (
        lambda r: doctored(r, lambda c: with_field(c, "meta", None)),
        "kind NoneType",
    ),
    "data that is not zlib": (
        lambda r: doctored(r, lambda c: replaced_field(c, "data", b"\x80\x05N.")),
        "not zlib of JSON",
    ),
    "another call in the data": (
        lambda r: doctored(
            r,
            lambda c: replaced_field(
                c, "data", zlib.compress(b'["os.getcwd", null, [], {}]')
            ),
        ),
        "call as ['os.getcwd'",
    ),
    "two pushes onto the queue": (
        lambda r: dataclasses.replace(
            r, commands=[*r.commands, ("RPUSH", r.queue_key, PROTOTYPE_ID)]
        ),
        "onto its queue 2 times",
    ),
    "another job's hash": (
        lambda r: dataclasses.replace(
            r, commands=[*r.commands, ("HSET", "rq:job:other", "status", "queued")]
        ),
        "not the job's own hash",
    ),
    "a time to live on another key": (
        lambda r: dataclasses.replace(
            r, commands=[*r.commands, ("EXPIRE", r.queue_key, 600)]
        ),
        "not a job key",
    ),
}


def test_rqs_own_recording_compiles(recording: Recording) -> None:
    template = JobTemplate.from_recording(7, recording)
    assert template.lua.startswith("templates[7] = function(job_id, data, description)")
    assert PROTOTYPE_ID not in template.lua
    assert PROTOTYPE_DESCRIPTION not in template.lua


@pytest.mark.parametrize(
    ("doctor", "named"), DOCTORED.values(), ids=list(DOCTORED.keys())
)
def test_a_recording_unlike_rqs_is_refused_with_what_differs(
    recording: Recording, doctor: Callable[[Recording], Recording], named: str
) -> None:
    with pytest.raises(RecordingMismatch, match=named.replace("[", r"\[")):
        JobTemplate.from_recording(1, doctor(recording))


# -- RQ's own enqueue, when the recording does not match ----------------------


class NewerRQQueue(MessagingQueue):
    """A queue whose enqueue writes one command more, as a newer RQ might."""

    def push_job_id(
        self, job_id: str, pipeline: Any = None, at_front: bool = False
    ) -> None:
        super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
        connection = pipeline if pipeline is not None else self.connection
        connection.zadd(f"rq:enqueued:{self.name}", {job_id: 0})


class NewerRQJobs(RQJobs):
    queue_class = NewerRQQueue


def newer_rq_jobs(state: MessagingState) -> NewerRQJobs:
    return NewerRQJobs(lambda: state.redis, lambda: state.signer, state.settings.jobs)


def pings(state: MessagingState, *values: int) -> list[tuple[str, list[Delivery]]]:
    """Per Ping(value): its message id and its deliveries (one, to on_ping)."""
    messages = []
    for value in values:
        message = Ping(value)
        message_id, data = codec_encode(message)
        deliveries, _ = state.broker.async_deliveries(message, message_id, data)
        messages.append((message_id, deliveries))
    return messages


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(worker_app.messaging, MESSAGING_EMBEDDED_WORKER=False)


def drain(app: Flask) -> None:
    make_worker(app, [LOW_PRIORITY]).work(burst=True, logging_level="WARNING")


def test_jobs_rq_writes_itself_run_once_however_often_enqueued(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    state = get_state(app)
    redis = state.redis
    jobs = newer_rq_jobs(state)
    messages = pings(state, 1, 2)
    with caplog.at_level(logging.WARNING, logger="flask_messaging"):
        assert jobs.enqueue_once(messages, relayed_key=RELAYED) == [True, True]
        assert jobs.enqueue_once(messages, relayed_key=RELAYED) == [False, False]
    (warning,) = caplog.records
    assert "RQ sent ZADD" in warning.getMessage()
    assert "Queue.enqueue_many" in warning.getMessage()
    ids = [message_id for message_id, _ in messages]
    assert [i.decode() for i in redis.lrange(RELAYED, 0, -1)] == ids
    for message_id in ids:
        assert 0 < redis.ttl(MARKER_PREFIX + message_id) <= MARKER_TTL
    queue = Queue(LOW_PRIORITY, connection=redis)
    assert redis.llen(queue.key) == 2
    assert redis.llen(wake_key(LOW_PRIORITY)) == 2
    assert redis.zcard(f"rq:enqueued:{LOW_PRIORITY}") == 2  # the newer RQ's own

    drain(app)
    assert sorted(entry["value"] for entry in handled(redis)) == [1, 2]
    assert redis.llen(queue.key) == 0


def test_jobs_rq_writes_itself_without_markers_run(app: Flask) -> None:
    state = get_state(app)
    jobs = newer_rq_jobs(state)
    jobs.enqueue([d for _, deliveries in pings(state, 3, 4) for d in deliveries])
    assert state.redis.keys(MARKER_PREFIX + "*") == []
    drain(app)
    assert sorted(entry["value"] for entry in handled(state.redis)) == [3, 4]


def test_a_message_marked_elsewhere_is_not_enqueued_again(app: Flask) -> None:
    state = get_state(app)
    redis = state.redis
    jobs = newer_rq_jobs(state)
    (first, second) = pings(state, 5, 6)
    redis.set(MARKER_PREFIX + first[0], "1", ex=MARKER_TTL)
    nothing = ("0" * 32, [])  # a message whose subscribers all filtered out
    assert jobs.enqueue_once([first, second, second, nothing], RELAYED) == [
        False,
        True,
        False,  # the same message twice in one call: once
        True,
    ]
    assert [i.decode() for i in redis.lrange(RELAYED, 0, -1)] == [
        second[0],
        nothing[0],
    ]
    assert redis.exists(MARKER_PREFIX + nothing[0])
    drain(app)
    assert [entry["value"] for entry in handled(redis)] == [6]


class RacedQueue(NewerRQQueue):
    """Each job's message is marked by another process as the job is written
    (a relay racing the committing process)."""

    def push_job_id(
        self, job_id: str, pipeline: Any = None, at_front: bool = False
    ) -> None:
        super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
        message_id = job_id.split("-")[1]  # msg-<message id>-<subscriber>
        # At once, on a connection of its own: not in the transaction.
        self.connection.set(MARKER_PREFIX + message_id, "1", ex=MARKER_TTL)


def test_a_marker_set_while_the_jobs_are_written_cancels_them(app: Flask) -> None:
    state = get_state(app)
    redis = state.redis
    jobs = newer_rq_jobs(state)
    jobs.queue_class = RacedQueue
    messages = pings(state, 7)
    # The transaction fails (a watched marker changed), and the second try
    # finds the message enqueued by the other process.
    assert jobs.enqueue_once(messages, RELAYED) == [False]
    assert redis.llen(Queue(LOW_PRIORITY, connection=redis).key) == 0
    assert redis.llen(RELAYED) == 0


@pytest.mark.parametrize("once", [False, True], ids=["enqueue", "enqueue_once"])
def test_jobs_rq_writes_itself_are_rqs_own(app: Flask, once: bool) -> None:
    state = get_state(app)
    redis = state.redis
    messages = pings(state, 8, 9)
    deliveries = [d for _, ds in messages for d in ds]
    jobs = newer_rq_jobs(state)
    if once:
        jobs.enqueue_once(messages)
        redis.delete(*(MARKER_PREFIX + message_id for message_id, _ in messages))
    else:
        jobs.enqueue(deliveries)
    ours = redis_contents(redis)
    redis.flushdb()
    queue = NewerRQQueue(LOW_PRIORITY, connection=redis, serializer=JSONSerializer)
    queue.enqueue_many(
        [
            Queue.prepare_data(
                DISPATCH_FUNCTION,
                args=(
                    d.subscription.key,
                    d.envelope.decode(),
                    state.signer.sign(
                        JobBinding(d.job_id, LOW_PRIORITY),
                        d.subscription.key,
                        d.envelope,
                    ),
                ),
                timeout=state.settings.jobs.timeout,
                result_ttl=state.settings.jobs.result_ttl,
                failure_ttl=state.settings.jobs.failure_ttl,
                description=job_description(d),
                job_id=d.job_id,
            )
            for d in deliveries
        ]
    )
    assert ours == redis_contents(redis)


def test_the_embedded_redis_takes_rqs_own_enqueue_too(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        worker_app.messaging,
        MESSAGING_REDIS_URL="memory://",
        MESSAGING_EMBEDDED_WORKER=False,
    )
    state = get_state(app)
    jobs = newer_rq_jobs(state)
    messages = pings(state, 10)
    assert jobs.enqueue_once(messages, RELAYED) == [True]
    assert jobs.enqueue_once(messages, RELAYED) == [False]
    drain(app)
    assert [entry["value"] for entry in handled(state.redis)] == [10]


@pytest.mark.parametrize("once", [False, True], ids=["enqueue", "enqueue_once"])
def test_a_job_id_twice_in_one_batch_is_written_as_the_script_writes_it(
    app: Flask, once: bool
) -> None:
    # One handler subscribed to a class and to its subclass: both deliveries
    # of a message have one job id. RQ refuses an id twice in one
    # enqueue_many call; the fallback writes it as the script does.
    state = get_state(app)
    redis = state.redis
    ((message_id, (delivery,)),) = pings(state, 10)
    queue_key = Queue(LOW_PRIORITY, connection=redis).key
    written = {}
    for jobs in (
        RQJobs(lambda: redis, lambda: state.signer, state.settings.jobs),
        newer_rq_jobs(state),
    ):
        if once:
            assert jobs.enqueue_once([(message_id, [delivery, delivery])]) == [True]
        else:
            jobs.enqueue([delivery, delivery])
        data = redis.hget(f"rq:job:{delivery.job_id}", "data")
        assert data is not None
        # Compressed alike, not byte for byte (our script's zlib window).
        written[type(jobs)] = (redis.lrange(queue_key, 0, -1), zlib.decompress(data))
        redis.flushdb()
    assert written[RQJobs] == written[NewerRQJobs]
    assert written[RQJobs][0] == [delivery.job_id.encode()] * 2
