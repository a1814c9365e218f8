"""Decompression bombs: no job field is inflated past a bound, anywhere.

RQ stores job ``data``, ``exc_info`` and failure texts compressed with zlib,
and inflates them whole: 0.4 MB stored here inflates to 400 MB. Each reader
(the worker, ``flask messaging status``, the messaging page, the dashboard's
job list and job page) runs in a process of its own, and that process's
peak RSS is what is checked.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import get_message_broker
from flask_messaging._rq.job_hash import field_limit
from flask_messaging._rq.records import TooLargeJob, latest_result
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.dispatch import DISPATCH_FUNCTION
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.state import get_state

from .. import worker_app
from ..conftest import ROOT, flask_messaging_command
from ..worker_app import Ping, handled

pytestmark = pytest.mark.reliability

#: What a bomb inflates to; about 0.4 MB stored.
BOMB_BYTES = 400 * 1024 * 1024

#: A reader's peak RSS must stay under this: well above a worker's own
#: (about 60 to 90 MB here), well below one inflated bomb.
PEAK_RSS_BOUND = 250 * 1024 * 1024


@pytest.fixture(scope="module")
def bomb() -> bytes:
    compressor = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(BOMB_BYTES >> 20)]
    return b"".join(parts) + compressor.flush()


def peak_rss(process: subprocess.Popen[str]) -> int:
    """Wait for ``process``; return its peak RSS in bytes."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.stdout is not None:
        process.stdout.close()
    return usage.ru_maxrss * 1024  # kilobytes on Linux


def publish(app: Flask, *values: int) -> list[str]:
    redis = get_state(app).redis
    ids = []
    with app.app_context():
        for value in values:
            get_message_broker().publish(Ping(value))
            (job_id,) = redis.lrange(f"rq:queue:{LOW_PRIORITY}", -1, -1)
            ids.append(job_id.decode())
    return ids


def failed(redis: Redis) -> list[str]:
    registry = FailedJobRegistry(
        LOW_PRIORITY, connection=redis, serializer=JSONSerializer
    )
    return registry.get_job_ids(cleanup=False)


def test_bombs_in_jobs_are_refused_and_shown_as_too_large_in_bounded_memory(
    make_app: Callable[..., Flask], real_redis_url: str, bomb: bytes
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    in_data, in_exc_info, good, in_result = publish(app, 1, 2, 3, 4)
    redis.hset(f"rq:job:{in_data}", "data", bomb)
    redis.hset(f"rq:job:{in_exc_info}", "exc_info", bomb)
    # A failed job whose failure text is the bomb: only readers inflate it.
    redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, in_result)
    redis.hset(f"rq:job:{in_result}", "status", "failed")
    redis.zadd(f"rq:failed:{LOW_PRIORITY}", {in_result: 2**40})
    redis.xadd(
        f"rq:results:{in_result}", {"type": 2, "exc_string": base64.b64encode(bomb)}
    )

    env = {"MESSAGING_REDIS_URL": real_redis_url}
    worker = flask_messaging_command(
        "tests.worker_app",
        *("worker", "--burst", "--no-scheduler", "--logging-level", "ERROR"),
        env=env,
        stderr=subprocess.DEVNULL,
    )
    worker_peak = peak_rss(worker)
    assert worker.returncode == 0
    assert [entry["value"] for entry in handled(redis)] == [3]
    assert sorted(failed(redis)) == sorted([in_data, in_exc_info, in_result])
    for job_id in (in_data, in_exc_info):
        result = latest_result(redis, job_id, 1024 * 1024)
        assert result is not None and "JobTooLargeError" in result.text

    status = flask_messaging_command(
        "tests.worker_app", "status", env=env, stdout=subprocess.PIPE
    )
    assert status.stdout is not None
    report = status.stdout.read()
    status_peak = peak_rss(status)
    assert status.returncode == 0 and "low" in report

    pages = {
        "messaging page": "/rq/messaging/",
        "job list": f"/rq/0/data/jobs/{LOW_PRIORITY}/failed/8/asc/1.json",
        "job page (data)": f"/rq/0/data/job/{in_data}.json",
        "job page (exc_info)": f"/rq/0/data/job/{in_exc_info}.json",
        "job page (result)": f"/rq/0/data/job/{in_result}.json",
    }
    display = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.display", real_redis_url]
        + list(pages.values()),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert display.stdout is not None
    responses = dict(zip(pages, map(json.loads, display.stdout), strict=True))
    display_peak = peak_rss(display)
    assert display.returncode == 0
    for name, response in responses.items():
        assert response["status"] == 200, name
        assert "too large" in response["body"], name
    assert TooLargeJob.description in responses["messaging page"]["body"]

    peaks = {"worker": worker_peak, "status": status_peak, "pages": display_peak}
    print({name: f"{peak / 2**20:.0f} MiB" for name, peak in peaks.items()})
    for name, peak in peaks.items():
        assert peak < PEAK_RSS_BOUND, name


def test_a_bomb_due_in_a_scheduled_registry_is_refused_in_bounded_memory(
    make_app: Callable[..., Flask], real_redis_url: str, bomb: bytes
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    scheduled = publish(app, 1, 2)
    bad = scheduled[0]
    redis.hset(f"rq:job:{bad}", "data", bomb)
    # Both due now, as a retry with an interval would be: RQ's scheduler
    # (run by a burst worker in its own process) moves them onto the queue.
    for job_id in scheduled:
        redis.lrem(f"rq:queue:{LOW_PRIORITY}", 0, job_id)
        redis.hset(f"rq:job:{job_id}", "status", "scheduled")
    redis.zadd(f"rq:scheduled:{LOW_PRIORITY}", dict.fromkeys(scheduled, 1))
    worker = flask_messaging_command(
        "tests.worker_app",
        *("worker", "--burst", "--logging-level", "ERROR"),
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stderr=subprocess.DEVNULL,
    )
    peak = peak_rss(worker)
    assert worker.returncode == 0
    assert [entry["value"] for entry in handled(redis)] == [2]
    assert failed(redis) == [bad]
    result = latest_result(redis, bad, 1024 * 1024)
    assert result is not None and "JobTooLargeError" in result.text
    assert redis.zcard(f"rq:scheduled:{LOW_PRIORITY}") == 0
    print(f"worker with its scheduler: {peak / 2**20:.0f} MiB")
    assert peak < PEAK_RSS_BOUND


@pytest.mark.parametrize("fault", ["bomb", "webhooks"])
def test_the_dashboard_deletes_a_refused_job_without_reading_it(
    make_app: Callable[..., Flask], real_redis_url: str, bomb: bytes, fault: str
) -> None:
    auth = ("admin", "correct horse")
    app = make_app(worker_app.messaging, MESSAGING_DASHBOARD_AUTH=auth)
    redis = get_state(app).redis
    bad, good = publish(app, 1, 2)
    if fault == "bomb":
        redis.hset(f"rq:job:{bad}", "data", bomb)
    else:
        redis.hset(f"rq:job:{bad}", "webhooks", "[]")
    token = base64.b64encode(":".join(auth).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Origin": "http://localhost"}
    client = app.test_client()
    response = client.post(f"/rq/job/{bad}/delete", headers=headers)
    assert response.json == {"status": "OK"}
    assert not redis.exists(f"rq:job:{bad}")
    assert redis.lrange(f"rq:queue:{LOW_PRIORITY}", 0, -1) == [good.encode()]


def test_a_page_of_jobs_each_just_under_the_bound_is_read_in_bounded_memory(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    ids = publish(app, *range(100))
    # Data that passes every check, and a failure text, each inflating to
    # just under the bound: one is allowed, a page of them must not be held.
    limit = field_limit(1024 * 1024)
    call = json.dumps([DISPATCH_FUNCTION, None, ["k", "e", "s"], {}]).encode()
    padded = call[:1] + b" " * (limit - len(call) - 100) + call[1:]
    data = zlib.compress(padded, 9)
    exc_info = zlib.compress(b"x" * (limit - 100), 9)
    with redis.pipeline() as pipe:
        for job_id in ids:
            pipe.hset(f"rq:job:{job_id}", mapping={"data": data, "exc_info": exc_info})
            pipe.hset(f"rq:job:{job_id}", "status", "failed")
            pipe.zadd(f"rq:failed:{LOW_PRIORITY}", {job_id: 2**40})
        pipe.delete(f"rq:queue:{LOW_PRIORITY}")
        pipe.execute()
    pages = [
        "/rq/messaging/",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/failed/100/asc/1.json",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/failed/1000/asc/1.json",
    ]
    display = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.display", real_redis_url, *pages],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert display.stdout is not None
    statuses = [json.loads(line)["status"] for line in display.stdout]
    peak = peak_rss(display)
    assert display.returncode == 0
    # More than a page of 100 is not read at all.
    assert statuses == [200, 200, 404]
    print(f"pages of 50 and 100 jobs just under the bound: {peak / 2**20:.0f} MiB")
    assert peak < PEAK_RSS_BOUND


def test_many_due_jobs_just_under_the_bound_are_moved_in_bounded_memory(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(worker_app.messaging)
    redis = get_state(app).redis
    ids = publish(app, *range(200))
    limit = field_limit(1024 * 1024)
    with redis.pipeline() as pipe:
        for job_id in ids:
            # The job's own signed call, padded with JSON whitespace to just
            # under the bound: each one is allowed, and runs.
            call = zlib.decompress(redis.hget(f"rq:job:{job_id}", "data"))
            padded = call[:1] + b" " * (limit - len(call) - 100) + call[1:]
            pipe.hset(f"rq:job:{job_id}", mapping={"data": zlib.compress(padded, 9)})
            pipe.hset(f"rq:job:{job_id}", "status", "scheduled")
            pipe.zadd(f"rq:scheduled:{LOW_PRIORITY}", {job_id: 1})
        pipe.delete(f"rq:queue:{LOW_PRIORITY}")
        pipe.execute()
    worker = flask_messaging_command(
        "tests.worker_app",
        *("worker", "--burst", "--logging-level", "ERROR"),
        env={"MESSAGING_REDIS_URL": real_redis_url},
        stderr=subprocess.DEVNULL,
    )
    peak = peak_rss(worker)
    assert worker.returncode == 0
    assert sorted(entry["value"] for entry in handled(redis)) == list(range(200))
    print(f"worker moving 200 due jobs just under the bound: {peak / 2**20:.0f} MiB")
    assert peak < PEAK_RSS_BOUND
