"""The dashboard and ``status`` on whatever Redis holds.

Names with a ``/``, keys of another type than RQ's, ids that are not UTF-8
text, listings of thousands and page numbers of thousands of digits: each
page, JSON view and action answers, lists what it cannot read, and can
remove it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from flask import Flask
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry

from flask_messaging import Message, Messaging, get_message_broker
from flask_messaging._rq.dashboard.pages import MAX_PER_PAGE, QUEUES_IN_MENU
from flask_messaging._rq.dashboard.views import LISTED_PER_PAGE
from flask_messaging._rq.records import UnreadableJob
from flask_messaging.queue_names import HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from .test_dashboard import AUTH, SAME_ORIGIN, basic, publish_notes, routes
from .test_dashboard import app as app  # noqa: F401 (the fixture)

SLASHED = "emails/high"
ACT = {**basic(), **SAME_ORIGIN}
NOT_TEXT = b"\xff\xfe"

slashed = Messaging()


@dataclass(frozen=True)
class Mail(Message, name="tests.dashboard_entries.mail"):
    to: str


@slashed.subscribe_async(queue_name=SLASHED, retry=0)
def send_mail(event: Mail) -> None:
    raise RuntimeError("smtp down")


def fail_mail(app: Flask) -> str:
    """Publish a mail; its job on ``emails/high`` fails. Its id."""
    with app.app_context():
        get_message_broker().publish(Mail(to="ada@example.com"))
    make_worker(app, [SLASHED]).work(burst=True, logging_level="CRITICAL")
    redis = get_state(app).redis
    return FailedJobRegistry(SLASHED, connection=redis).get_job_ids()[-1]


@pytest.fixture
def slashed_app(make_app: Callable[..., Flask], real_redis_url: str) -> Flask:
    return make_app(slashed, MESSAGING_DASHBOARD_AUTH=AUTH)


# -- Names with a "/" -----------------------------------------------------------


def test_a_queue_name_with_a_slash_opens_and_is_acted_on_everywhere(
    slashed_app: Flask,
) -> None:
    app = slashed_app
    redis = get_state(app).redis
    failed = FailedJobRegistry(SLASHED, connection=redis)
    queued = Queue(SLASHED, connection=redis)
    job_id = fail_mail(app)
    client = app.test_client()
    encoded = quote(SLASHED, safe="")

    # The messaging page's own Requeue form, as a browser would send it.
    page = client.get("/rq/messaging/", headers=basic()).text
    (form,) = re.findall(r"<form method=\"post\".*?</form>", page, re.S)
    action = html.unescape(re.search(r'action="([^"]+)"', form)[1])
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form))
    fields = {name: html.unescape(value) for name, value in fields.items()}
    assert client.post(action, data=fields, headers=ACT).status_code == 303
    assert (failed.get_job_ids(), queued.get_job_ids()) == ([], [job_id])

    make_worker(app, [SLASHED]).work(burst=True, logging_level="CRITICAL")
    queues = client.get("/rq/0/data/queues.json", headers=basic()).json["queues"]
    (row,) = [row for row in queues if row["name"] == SLASHED]
    assert row["failed_job_registry_count"] == 1
    for path in (
        row["failed_url"],
        f"/rq/0/view/jobs/{encoded}/failed/8/asc/1",
        f"/rq/0/view/job/{job_id}",
    ):
        assert client.get(path, headers=basic()).status_code == 200, path
    listed = client.get(
        f"/rq/0/data/jobs/{encoded}/failed/8/asc/1.json", headers=basic()
    )
    assert [job["id"] for job in listed.json["jobs"]] == [job_id]

    requeued = client.post(f"/rq/requeue/{encoded}", headers=ACT)
    assert requeued.json == {"status": "OK", "count": 1}
    assert queued.get_job_ids() == [job_id]
    emptied = client.post(f"/rq/queue/{encoded}/queued/empty", headers=ACT)
    assert emptied.json == {"status": "OK"}
    assert queued.get_job_ids() == [] and not redis.exists(f"rq:job:{job_id}")
    compacted = client.post(f"/rq/queue/{encoded}/compact", headers=ACT)
    assert compacted.status_code == 200


def test_a_job_id_with_a_slash_opens_and_is_deleted(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    registry = FailedJobRegistry(HIGH_PRIORITY, connection=redis)
    for hostile in ("a/b", "../../x", "c/requeue"):
        redis.copy(f"rq:job:{jobs.failed}", f"rq:job:{hostile}")
        redis.zadd(registry.key, {hostile: 9e9})
    client = app.test_client()

    for hostile in ("a/b", "../../x", "c/requeue"):
        encoded = quote(hostile, safe="")
        info = client.get(f"/rq/0/data/job/{encoded}.json", headers=basic())
        assert info.status_code == 200 and info.json["id"] == hostile, hostile
        view = client.get(f"/rq/0/view/job/{encoded}", headers=basic())
        assert view.status_code == 200, hostile
        deleted = client.post(f"/rq/job/{encoded}/delete", headers=ACT)
        assert deleted.json == {"status": "OK"}, hostile
        assert not redis.exists(f"rq:job:{hostile}")
        assert hostile not in registry.get_job_ids()
    assert registry.get_job_ids() == [jobs.failed]


# -- Keys of another type, ids that are not text ----------------------------------


def json_of(client: object, path: str) -> dict[str, object]:
    response = client.get(path, headers=basic())  # type: ignore[attr-defined]
    assert response.status_code == 200, (path, response.text)
    return dict(response.json)


def test_a_job_key_of_another_type_is_listed_and_deleted(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    registry = FailedJobRegistry(HIGH_PRIORITY, connection=redis)
    for job_id in ("j", "k"):
        redis.set(f"rq:job:{job_id}", "a string")
        redis.zadd(registry.key, {job_id: 9e9})
    redis.set(f"rq:results:{jobs.failed}", "not a stream")
    client = app.test_client()

    listed = json_of(client, f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json")
    rows = {row["id"]: row for row in listed["jobs"]}  # type: ignore[attr-defined]
    assert rows["j"]["description"] == UnreadableJob.description
    assert rows[jobs.failed]["exc_info"] is None  # its results are not readable
    assert json_of(client, "/rq/0/data/job/j.json")["status"] == "unreadable"
    assert json_of(client, f"/rq/0/data/job/{jobs.failed}.json")["status"] == "failed"
    assert client.get("/rq/messaging/", headers=basic()).status_code == 200

    refused = client.post("/rq/job/j/requeue", headers=ACT)
    assert refused.status_code == 409 and "delete it" in refused.json["error"]
    requeued = client.post(f"/rq/requeue/{HIGH_PRIORITY}", headers=ACT)
    assert requeued.status_code == 200
    assert client.post("/rq/job/j/delete", headers=ACT).json == {"status": "OK"}
    assert not redis.exists("rq:job:j") and "j" not in registry.get_job_ids()
    emptied = client.post(f"/rq/queue/{HIGH_PRIORITY}/failed/empty", headers=ACT)
    assert emptied.json == {"status": "OK"}
    assert not redis.exists("rq:job:k") and registry.get_job_ids() == []


def test_ids_that_are_not_text_are_listed_and_emptied(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    failed_key = FailedJobRegistry(HIGH_PRIORITY, connection=redis).key
    queued_key = Queue(LOW_PRIORITY, connection=redis).key
    redis.zadd(failed_key, {NOT_TEXT: 9e9})
    redis.rpush(queued_key, NOT_TEXT)
    redis.sadd("rq:workers", b"rq:worker:" + NOT_TEXT)
    redis.sadd("rq:queues", b"rq:queue:" + NOT_TEXT)
    client = app.test_client()

    workers = json_of(client, "/rq/0/data/workers.json")["workers"]
    assert [(w["name"], w["state"]) for w in workers] == [("\\xff\\xfe", "unreadable")]  # type: ignore[attr-defined]
    queues = json_of(client, "/rq/0/data/queues.json")["queues"]
    assert [q["name"] for q in queues] == [HIGH_PRIORITY, LOW_PRIORITY]  # type: ignore[attr-defined]
    status = app.test_cli_runner().invoke(args=["messaging", "status"])
    assert status.exit_code == 0 and "\\xff\\xfe" in status.output, status.output

    page = client.get("/rq/messaging/", headers=basic())
    assert page.status_code == 200 and "\\xff\\xfe" in page.text
    for path in (
        f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/queued/8/dsc/1.json",
    ):
        rows = json_of(client, path)["jobs"]
        (unlisted,) = [row for row in rows if row.get("unlisted")]  # type: ignore[attr-defined]
        assert unlisted["id"] == "\\xff\\xfe"
        assert "not UTF-8 text" in unlisted["exc_info"]
    assert client.post(f"/rq/requeue/{HIGH_PRIORITY}", headers=ACT).json == {
        "status": "OK",
        "count": 1,
    }
    for name, registry_name in ((HIGH_PRIORITY, "failed"), (LOW_PRIORITY, "queued")):
        emptied = client.post(f"/rq/queue/{name}/{registry_name}/empty", headers=ACT)
        assert emptied.json == {"status": "OK"}
    assert redis.zrange(failed_key, 0, -1) == [] and redis.llen(queued_key) == 0
    assert not redis.exists(f"rq:job:{jobs.queued}")


def test_listing_keys_of_another_type_answer_and_are_emptied(app: Flask) -> None:
    publish_notes(app, "note")
    redis = get_state(app).redis
    failed_key = FailedJobRegistry(HIGH_PRIORITY, connection=redis).key
    queued_key = Queue(LOW_PRIORITY, connection=redis).key
    redis.delete(failed_key, queued_key)
    redis.set(failed_key, "a string")
    redis.hset(queued_key, "a", "hash")
    redis.sadd("rq:workers", "rq:worker:w")
    redis.set("rq:worker:w", "a string")
    client = app.test_client()

    rows = {
        row["name"]: row for row in json_of(client, "/rq/0/data/queues.json")["queues"]
    }  # type: ignore[attr-defined]
    assert rows[HIGH_PRIORITY]["failed_job_registry_count"] == "unreadable"
    assert rows[LOW_PRIORITY]["count"] == "unreadable"
    workers = json_of(client, "/rq/0/data/workers.json")["workers"]
    assert [(w["name"], w["state"]) for w in workers] == [("w", "unreadable")]  # type: ignore[attr-defined]
    status = app.test_cli_runner().invoke(args=["messaging", "status"])
    assert status.exit_code == 0, status.output
    for name, registry_name, key in (
        (HIGH_PRIORITY, "failed", failed_key),
        (LOW_PRIORITY, "queued", queued_key),
    ):
        listed = json_of(client, f"/rq/0/data/jobs/{name}/{registry_name}/8/asc/1.json")
        assert listed["jobs"] == [] and "Empty deletes it" in str(listed["error"])
        view = f"/rq/0/view/jobs/{name}/{registry_name}/8/asc/1"
        assert client.get(view, headers=basic()).status_code == 200
        emptied = client.post(f"/rq/queue/{name}/{registry_name}/empty", headers=ACT)
        assert emptied.json == {"status": "OK"} and not redis.exists(key)

    redis.delete("rq:queues", "rq:workers")
    redis.set("rq:queues", "a string")
    redis.hset("rq:workers", "a", "hash")
    assert json_of(client, "/rq/0/data/workers.json")["workers"] == []
    names = [row["name"] for row in json_of(client, "/rq/0/data/queues.json")["queues"]]  # type: ignore[attr-defined]
    assert names == []
    for path in (
        "/rq/",
        "/rq/0/view/jobs",
        f"/rq/0/view/jobs/{HIGH_PRIORITY}/failed/8/asc/1",
    ):
        assert client.get(path, headers=basic()).status_code == 200, path
    assert app.test_cli_runner().invoke(args=["messaging", "status"]).exit_code == 0


# -- Compact --------------------------------------------------------------------


def test_compact_on_an_empty_queue_and_on_ids_of_gone_jobs(app: Flask) -> None:
    redis = get_state(app).redis
    client = app.test_client()
    path = f"/rq/queue/{LOW_PRIORITY}/compact"
    assert client.post(path, headers=ACT).json == {"status": "OK", "count": 0}

    jobs = publish_notes(app, "note")
    queued_key = Queue(LOW_PRIORITY, connection=redis).key
    redis.rpush(queued_key, "gone", NOT_TEXT, "gone")
    assert client.post(path, headers=ACT).json == {"status": "OK", "count": 2}
    assert redis.lrange(queued_key, 0, -1) == [jobs.queued.encode()]

    redis.delete(queued_key)
    redis.set(queued_key, "a string")
    refused = client.post(path, headers=ACT)
    assert refused.status_code == 409 and "Empty deletes it" in refused.json["error"]
    assert redis.get(queued_key) == b"a string"


# -- Long listings, page numbers --------------------------------------------------


def test_queue_and_worker_listings_come_in_pages(app: Flask) -> None:
    redis = get_state(app).redis
    many = 20_000
    with redis.pipeline(transaction=False) as pipe:
        for start in range(0, many, 1000):
            names = [f"rq:queue:q{n:05}" for n in range(start, start + 1000)]
            pipe.sadd("rq:queues", *names)
            pipe.sadd(
                "rq:workers",
                *(f"not-a-worker-key-{n:05}" for n in range(start, start + 1000)),
            )
        pipe.execute()
    client = app.test_client()

    first = json_of(client, "/rq/0/data/queues.json")
    assert len(first["queues"]) == LISTED_PER_PAGE  # type: ignore[arg-type]
    pagination = first["pagination"]
    assert pagination["total"] == many  # type: ignore[index]
    assert "prev_page" not in pagination  # type: ignore[operator]
    second = json_of(client, pagination["next_page"]["url"])  # type: ignore[index]
    assert second["queues"][0]["name"] == f"q{LISTED_PER_PAGE:05}"  # type: ignore[index]
    workers = json_of(client, "/rq/0/data/workers.json?page=400")
    assert len(workers["workers"]) == LISTED_PER_PAGE  # type: ignore[arg-type]
    assert workers["pagination"]["num_pages"] == many // LISTED_PER_PAGE  # type: ignore[index]
    for nonsense in ("0", "-1", "x", "9" * 5000):
        for path in ("/rq/0/data/queues.json", "/rq/0/data/workers.json"):
            response = client.get(f"{path}?page={nonsense}", headers=basic())
            assert response.status_code == 404, (path, nonsense[:10])

    page = client.get("/rq/0/view/jobs", headers=basic()).text
    menu = page.partition('id="select-queue"')[2].partition("</select>")[0]
    assert menu.count("<option") == QUEUES_IN_MENU + 3  # and the app's queues
    assert len(page) < 100_000


@pytest.mark.parametrize(
    ("per_page", "page"),
    [
        ("9" * 5000, "1"),
        ("8", "9" * 5000),
        ("8", "1" + "0" * 4400),
        (str(MAX_PER_PAGE + 1), "1"),
        ("0", "1"),
        ("8", "0"),
        ("８", "1"),
    ],
)
def test_page_numbers_and_sizes_out_of_bounds_answer_404(
    app: Flask, per_page: str, page: str
) -> None:
    client = app.test_client()
    for path in (
        f"/rq/0/view/jobs/{HIGH_PRIORITY}/failed/{per_page}/asc/{page}",
        f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/{per_page}/asc/{page}.json",
    ):
        response = client.get(path, headers=basic())
        assert response.status_code == 404, path[:80]
        assert response.mimetype == "text/plain"
    largest = f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/{MAX_PER_PAGE}/dsc/1.json"
    assert client.get(largest, headers=basic()).status_code == 200


def test_a_redis_shared_with_another_program_is_left_alone(app: Flask) -> None:
    # Reading never deletes: only Empty, Delete and Compact change Redis.
    redis: Redis = get_state(app).redis
    publish_notes(app, "note")
    redis.zadd(FailedJobRegistry(HIGH_PRIORITY, connection=redis).key, {NOT_TEXT: 1})
    redis.set("rq:job:j", "a string")
    before = {key: redis.dump(key) for key in redis.keys("*")}
    client = app.test_client()
    for path in (
        "/rq/messaging/",
        "/rq/0/data/queues.json",
        "/rq/0/data/workers.json",
        f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json",
        "/rq/0/data/job/j.json",
    ):
        assert client.get(path, headers=basic()).status_code == 200, path
    assert {key: redis.dump(key) for key in redis.keys("*")} == before


@pytest.mark.parametrize("state", ["empty", "every key a string"])
def test_no_route_answers_500_on_an_empty_redis_or_one_of_strings(
    app: Flask, state: str
) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    if state == "empty":
        redis.flushdb()
    else:
        for key in redis.keys("rq:*"):
            redis.delete(key)
            redis.set(key, "not RQ's")
    client = app.test_client()
    answers = {}
    for endpoint, method, path in routes(app, jobs):
        if method in ("GET", "POST") and "static" not in endpoint:
            headers = ACT if method == "POST" else basic()
            response = client.open(path, method=method, headers=headers)
            answers[method, path] = response.status_code
            response.close()
    assert answers and max(answers.values()) < 500, answers
    for path in ("/rq/messaging/", "/rq/0/data/queues.json?page=1"):
        assert client.get(path, headers=basic()).status_code == 200, path
    status = app.test_cli_runner().invoke(args=["messaging", "status"])
    assert status.exit_code == 0, status.output
