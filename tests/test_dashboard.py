"""The dashboard: rq-dashboard and the messaging page, behind auth, on our Redis."""

from __future__ import annotations

import base64
import html
import pickle
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import rq_dashboard
from flask import Flask, request, template_rendered
from markupsafe import escape
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from rq_dashboard import web

from flask_messaging import Message, Messaging, get_message_broker
from flask_messaging._rq.records import UnreadableJob
from flask_messaging.queue_names import DEFAULT_PRIORITY, HIGH_PRIORITY, LOW_PRIORITY
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

AUTH = ("admin", "correct horse")
XSS = "<img src=x onerror=alert(1)>"
SAME_ORIGIN = {"Origin": "http://localhost"}  # the test client's host

messaging = Messaging()


@dataclass(frozen=True)
class Note(Message, name="tests.dashboard.note"):
    text: str


@dataclass(frozen=True)
class Hold(Message, name="tests.dashboard.hold"):
    text: str


def is_long(event: Note) -> bool:
    return len(event.text) > 3


@messaging.subscribe(predicate=is_long)
def log_note(event: Note) -> None:
    pass


@messaging.subscribe_async(queue_name=HIGH_PRIORITY, retry=0)
def refuse_note(event: Note) -> None:
    # The payload in the exception: how it could reach a page through RQ.
    raise RuntimeError(f"refused {event.text}")


@messaging.subscribe_async(queue_name=LOW_PRIORITY)
def keep_note(event: Note) -> None:
    pass


release = threading.Event()


@messaging.subscribe_async(queue_name=DEFAULT_PRIORITY)
def hold(event: Hold) -> None:
    release.wait(10)


REFUSE_DESCRIPTION = "tests.dashboard.note -> tests.test_dashboard:refuse_note"


def basic(user: str = AUTH[0], password: str = AUTH[1]) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def app(make_app: Callable[..., Flask], real_redis_url: str) -> Flask:
    return make_app(messaging, MESSAGING_DASHBOARD_AUTH=AUTH)


@dataclass(frozen=True)
class Jobs:
    failed: str
    queued: str


def publish_notes(app: Flask, *texts: str) -> Jobs:
    """Publish notes; each one's high job fails, its low job stays queued."""
    with app.app_context():
        for text in texts:
            get_message_broker().publish(Note(text))
    make_worker(app, [HIGH_PRIORITY]).work(burst=True, logging_level="CRITICAL")
    redis = get_state(app).redis
    failed = FailedJobRegistry(HIGH_PRIORITY, connection=redis).get_job_ids()
    queued = Queue(LOW_PRIORITY, connection=redis).get_job_ids()
    return Jobs(failed=failed[-1], queued=queued[-1])


def snapshot(redis: Redis) -> dict[bytes, bytes]:
    return {key: redis.dump(key) for key in redis.keys("*")}


def routes(app: Flask, jobs: Jobs, prefix: str = "/rq") -> list[tuple[str, str, str]]:
    """(endpoint, method, path) of every dashboard route, on real names."""
    values = {
        "instance_number": "0",
        "queue_name": HIGH_PRIORITY,
        "registry_name": "failed",
        "per_page": "8",
        "order": "asc",
        "page": "1",
        "job_id": jobs.failed,
        "filename": "js/jquery-3.5.1.min.js",
    }
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefix + "/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)
            for method in sorted(rule.methods or ()):
                found.append((rule.endpoint, method, path))
    return found


def action_routes(app: Flask, jobs: Jobs) -> list[tuple[str, str]]:
    return [(e, p) for e, m, p in routes(app, jobs) if m == "POST"]


def page_routes(app: Flask, jobs: Jobs) -> set[str]:
    """Paths of the pages and JSON views (not actions, not static files)."""
    actions = {path for _, path in action_routes(app, jobs)}
    return {
        path
        for endpoint, method, path in routes(app, jobs)
        if method == "GET" and path not in actions and "static" not in endpoint
    }


# -- Access -------------------------------------------------------------------


def deny() -> bool:
    return False


@pytest.mark.parametrize(
    ("auth", "status", "says"),
    [
        (None, 403, "MESSAGING_DASHBOARD_AUTH is not set"),
        (AUTH, 401, "Log in"),
        (deny, 403, "not allowed"),
    ],
    ids=["unconfigured", "basic", "callable"],
)
def test_every_route_refuses_requests_without_credentials(
    make_app: Callable[..., Flask],
    real_redis_url: str,
    auth: object,
    status: int,
    says: str,
) -> None:
    app = make_app(messaging, MESSAGING_DASHBOARD_AUTH=auth)
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    before = snapshot(redis)
    client = app.test_client()
    checked = routes(app, jobs)
    endpoints = {endpoint for endpoint, _, _ in checked}
    assert {
        "rq_dashboard.static",
        "rq_dashboard.requeue_all",
        "rq_dashboard.job_info",
        "messaging_dashboard.index",
        "messaging_dashboard.requeue",
    } <= endpoints
    for _, method, path in checked:
        # Paths that only spell out a default are redirected (308) first.
        response = client.open(
            path, method=method, headers=SAME_ORIGIN, follow_redirects=True
        )
        assert response.status_code == status, (method, path)
        if method != "HEAD":
            assert says in response.text
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert snapshot(redis) == before


@pytest.mark.parametrize(
    "headers",
    [basic(password="wrong"), basic(user="root"), {"Authorization": "Bearer x"}],
)
def test_basic_auth_needs_the_right_pair(app: Flask, headers: dict[str, str]) -> None:
    client = app.test_client()
    assert client.get("/rq/messaging/", headers=headers).status_code == 401
    assert client.get("/rq/messaging/", headers=basic()).status_code == 200


def test_callable_auth_decides_per_request(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        messaging,
        MESSAGING_DASHBOARD_AUTH=lambda: request.headers.get("X-Admin") == "yes",
    )
    client = app.test_client()
    assert client.get("/rq/", headers={"X-Admin": "yes"}).status_code == 200
    assert client.get("/rq/", headers={"X-Admin": "no"}).status_code == 403
    assert client.get("/rq/messaging/").status_code == 403


def test_get_on_an_action_changes_nothing(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    before = snapshot(redis)
    client = app.test_client()
    response = client.get(f"/rq/requeue/{HIGH_PRIORITY}", headers=basic())
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    for _, path in action_routes(app, jobs):
        for method in ("GET", "HEAD", "PUT"):
            response = client.open(path, method=method, headers=basic())
            assert response.status_code == 405, (method, path)
    assert snapshot(redis) == before


@pytest.mark.parametrize(
    "origin",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Referer": "http://evil.example/rq/"},
        {"Origin": "http://evil.example", "Referer": "http://localhost/rq/"},
        {},
        {"Origin": "https://localhost"},
        {"Origin": "http://localhost:8080"},
        {"Referer": "https://localhost/rq/"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-site"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "none"},
        {"Origin": "http://user@localhost:99999"},
    ],
    ids=[
        "origin",
        "null",
        "lookalike",
        "referer",
        "origin-wins",
        "none",
        "other-scheme",
        "other-port",
        "referer-other-scheme",
        "fetch-cross-site",
        "fetch-same-site",
        "fetch-typed",
        "bad-port",
    ],
)
def test_actions_refuse_posts_from_elsewhere(
    app: Flask, origin: dict[str, str]
) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    before = snapshot(redis)
    client = app.test_client()
    actions = action_routes(app, jobs)
    assert {e for e, _ in actions} == {
        "rq_dashboard.delete_job_view",
        "rq_dashboard.requeue_job_view",
        "rq_dashboard.requeue_all",
        "rq_dashboard.empty_queue",
        "rq_dashboard.compact_queue",
        "messaging_dashboard.requeue",
    }
    for _, path in actions:
        response = client.post(path, headers={**basic(), **origin})
        assert response.status_code == 403, path
    assert snapshot(redis) == before


def test_on_https_an_http_origin_of_the_same_host_is_refused(app: Flask) -> None:
    publish_notes(app, "one", "two")
    (first, second), _ = failed_and_queued(app)
    client = app.test_client()

    refused = client.post(
        f"/rq/job/{first}/requeue",
        base_url="https://localhost",
        headers={**basic(), **SAME_ORIGIN},
    )
    assert refused.status_code == 403
    assert "at https://localhost, may send it" in refused.text
    assert "ProxyFix" in refused.text
    assert failed_and_queued(app) == ([first, second], [])

    for origin, job in [
        ({"Origin": "https://localhost"}, first),
        ({"Origin": "https://LOCALHOST:443", "Sec-Fetch-Site": "same-origin"}, second),
    ]:
        response = client.post(
            f"/rq/job/{job}/requeue",
            base_url="https://localhost",
            headers={**basic(), **origin},
        )
        assert response.json == {"status": "OK"}, origin
    assert failed_and_queued(app) == ([], [first, second])


def failed_and_queued(app: Flask) -> tuple[list[str], list[str]]:
    redis = get_state(app).redis
    return (
        FailedJobRegistry(HIGH_PRIORITY, connection=redis).get_job_ids(),
        Queue(HIGH_PRIORITY, connection=redis).get_job_ids(),
    )


def test_same_origin_posts_requeue_and_delete(app: Flask) -> None:
    publish_notes(app, "one", "two", "three")
    (first, second, third), _ = failed_and_queued(app)
    client = app.test_client()
    headers = {**basic(), **SAME_ORIGIN}

    response = client.post(f"/rq/job/{first}/requeue", headers=headers)
    assert response.json == {"status": "OK"}
    assert failed_and_queued(app) == ([second, third], [first])

    referer = {**basic(), "Referer": "http://localhost/rq/0/view/jobs"}
    response = client.post(f"/rq/requeue/{HIGH_PRIORITY}", headers=referer)
    assert response.json == {"status": "OK", "count": 2}
    assert failed_and_queued(app) == ([], [first, second, third])

    response = client.post(f"/rq/job/{first}/delete", headers=headers)
    assert response.json == {"status": "OK"}
    response = client.post(f"/rq/queue/{HIGH_PRIORITY}/queued/empty", headers=headers)
    assert response.json == {"status": "OK"}
    assert failed_and_queued(app) == ([], [])
    redis = get_state(app).redis
    assert not any(redis.exists(f"rq:job:{job}") for job in (first, second, third))


def test_messaging_page_requeues_a_failed_job(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    client = app.test_client()
    path = "/rq/messaging/failed/requeue"
    form = {"queue": HIGH_PRIORITY, "job": jobs.failed}
    headers = {**basic(), **SAME_ORIGIN}
    response = client.post(path, data=form, headers=headers)
    assert response.status_code == 303
    assert response.headers["Location"] == "/rq/messaging/"
    assert failed_and_queued(app) == ([], [jobs.failed])
    assert client.post(path, data=form, headers=headers).status_code == 404
    unknown = {"queue": "elsewhere", "job": jobs.failed}
    assert client.post(path, data=unknown, headers=headers).status_code == 404


# -- Jobs are read safely -------------------------------------------------------


class Boobytrap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (Path(self.path),))


def test_pickle_in_a_job_is_never_unpickled(app: Flask, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    payload = pickle.dumps(Boobytrap(str(sentinel)))
    for job_id in (jobs.failed, jobs.queued):
        redis.hset(
            f"rq:job:{job_id}",
            mapping={
                "data": zlib.compress(payload),
                "meta": payload,
                "result": payload,
            },
        )
    redis.xadd(
        f"rq:results:{jobs.queued}",
        {"type": 1, "return_value": base64.b64encode(payload)},
    )
    client = app.test_client()
    paths = page_routes(app, jobs) | {
        f"/rq/0/view/job/{jobs.queued}",
        f"/rq/0/data/job/{jobs.queued}.json",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/queued/8/asc/1.json",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/queued/8/dsc/1.json",
    }
    for path in paths:
        response = client.get(path, headers=basic(), follow_redirects=True)
        assert response.status_code == 200, path
        response.close()  # the favicon is a file
    # Jobs of ours never have meta or a result field: shown as refused.
    info = client.get(f"/rq/0/data/job/{jobs.queued}.json", headers=basic()).json
    assert info is not None and "it has a field" in info["exc_info"]
    assert info["result"] is None
    # A requeue would be refused again: it is not done.
    response = client.post(
        f"/rq/job/{jobs.failed}/requeue", headers={**basic(), **SAME_ORIGIN}
    )
    assert response.status_code == 409
    assert response.json is not None and response.json["status"] == "ERROR"
    assert not sentinel.exists()
    assert redis.hget(f"rq:job:{jobs.failed}", "meta") == payload


def test_message_payload_reaches_pages_only_escaped_and_json_as_data(
    app: Flask,
) -> None:
    jobs = publish_notes(app, XSS)
    client = app.test_client()
    for path in page_routes(app, jobs) | {
        f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/dsc/1.json",
        f"/rq/0/view/job/{jobs.queued}",
        f"/rq/0/data/job/{jobs.queued}.json",
        f"/rq/0/data/jobs/{LOW_PRIORITY}/queued/8/asc/1.json",
    }:
        response = client.get(path, headers=basic(), follow_redirects=True)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in policy.partition("script-src")[2], path
        if response.is_json:
            # Data for our script, which inserts it as text; never run as a
            # page: a JSON type, no sniffing, a policy without script.
            assert response.mimetype == "application/json", path
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "script-src" not in policy, path
        else:
            assert XSS.encode() not in response.data, path
        response.close()

    info = client.get(f"/rq/0/data/job/{jobs.failed}.json", headers=basic()).json
    assert info is not None
    assert info["description"] == REFUSE_DESCRIPTION
    assert f"RuntimeError: refused {XSS}" in info["exc_info"]
    page = client.get("/rq/messaging/", headers=basic()).text
    assert str(escape(f"RuntimeError: refused {XSS}")) in page
    assert REFUSE_DESCRIPTION.replace(">", "&gt;") in page


def test_job_lists_page_through_queues_and_registries(app: Flask) -> None:
    publish_notes(app, "one", "two", "three")
    redis = get_state(app).redis
    queued = Queue(LOW_PRIORITY, connection=redis).get_job_ids()
    failed = FailedJobRegistry(HIGH_PRIORITY, connection=redis).get_job_ids()
    client = app.test_client()

    def ids(queue: str, registry: str, order: str, page: int) -> list[str]:
        path = f"/rq/0/data/jobs/{queue}/{registry}/2/{order}/{page}.json"
        data = client.get(path, headers=basic(), follow_redirects=True).json
        assert data is not None and data["pagination"]["num_pages"] == 2
        return [job["id"] for job in data["jobs"]]

    for queue, registry, expected in [
        (LOW_PRIORITY, "queued", queued),
        (HIGH_PRIORITY, "failed", failed),
    ]:
        assert ids(queue, registry, "asc", 1) == expected[:2]
        assert ids(queue, registry, "asc", 2) == expected[2:]
        assert ids(queue, registry, "dsc", 1) == expected[:0:-1]
        assert ids(queue, registry, "dsc", 2) == expected[:1]
    response = client.get(f"/rq/0/data/jobs/{LOW_PRIORITY}/nope/2/asc/1.json")
    assert response.status_code == 401
    response = client.get(
        f"/rq/0/data/jobs/{LOW_PRIORITY}/nope/2/asc/1.json", headers=basic()
    )
    assert response.status_code == 404


# -- Script injection -----------------------------------------------------------

#: Written for rq-dashboard's jobs.js, which put the queue name into a script.
SCRIPT_BREAKER = "x');}});window.__x=1;$('#y').on('z',function(){if(1){$(this).val('"


@contextmanager
def templates_rendered(app: Flask) -> Iterator[list[str]]:
    names: list[str] = []

    def record(sender: Flask, template: Any, context: Any, **extra: Any) -> None:
        names.append(template.name)

    template_rendered.connect(record, app)
    try:
        yield names
    finally:
        template_rendered.disconnect(record, app)


def test_what_redis_does_not_hold_answers_404_before_any_template(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    before = snapshot(redis)
    client = app.test_client()
    name = quote(SCRIPT_BREAKER, safe="")
    requests = [
        ("GET", f"/rq/0/view/jobs/{name}/queued/8/asc/1"),
        ("GET", f"/rq/0/view/jobs/{name}/failed/8/dsc/1"),
        ("GET", f"/rq/0/view/jobs/{HIGH_PRIORITY}/{name}/8/asc/1"),
        ("GET", f"/rq/0/view/jobs/{HIGH_PRIORITY}/queued/8/{name}/1"),
        ("GET", f"/rq/0/view/jobs/{HIGH_PRIORITY}/queued/0/asc/1"),
        ("GET", f"/rq/0/view/jobs/{HIGH_PRIORITY}/queued/8/asc/0"),
        ("GET", f"/rq/0/view/job/{name}"),
        ("GET", f"/rq/0/data/jobs/{name}/queued/8/asc/1.json"),
        ("GET", f"/rq/0/data/jobs/{HIGH_PRIORITY}/{name}/8/asc/1.json"),
        ("GET", f"/rq/0/data/jobs/{HIGH_PRIORITY}/queued/{name}/asc/1.json"),
        ("GET", f"/rq/0/data/jobs/{HIGH_PRIORITY}/queued/8/asc/%C2%B2.json"),
        ("GET", f"/rq/0/data/job/{name}.json"),
        ("POST", f"/rq/job/{name}/delete"),
        ("POST", f"/rq/job/{name}/requeue"),
        ("POST", f"/rq/requeue/{name}"),
        ("POST", f"/rq/queue/{name}/queued/empty"),
        ("POST", f"/rq/queue/{HIGH_PRIORITY}/{name}/empty"),
        ("POST", f"/rq/queue/{name}/compact"),
    ]
    requeue = "/rq/messaging/failed/requeue"
    forms = [
        {"queue": SCRIPT_BREAKER, "job": jobs.failed},
        {"queue": HIGH_PRIORITY, "job": SCRIPT_BREAKER},
    ]
    with templates_rendered(app) as rendered:
        for method, path, form in [
            *((method, path, None) for method, path in requests),
            *(("POST", requeue, form) for form in forms),
        ]:
            response = client.open(
                path, method=method, data=form, headers={**basic(), **SAME_ORIGIN}
            )
            assert response.status_code == 404, path
            assert response.mimetype == "text/plain", path
            assert "x')" not in response.text
    assert rendered == []
    assert snapshot(redis) == before


def page_paths(jobs: Jobs, queue: str = HIGH_PRIORITY) -> list[str]:
    return [
        "/rq/",
        "/rq/0/",
        "/rq/0/view",
        "/rq/0/view/queues",
        "/rq/0/view/workers",
        "/rq/0/view/jobs",
        f"/rq/0/view/jobs/{quote(queue, safe='')}/queued/8/asc/1",
        f"/rq/0/view/jobs/{HIGH_PRIORITY}/failed/8/dsc/2",
        f"/rq/0/view/job/{jobs.failed}",
    ]


def test_pages_load_one_script_file_with_a_fresh_nonce_and_no_inline_script(
    app: Flask,
) -> None:
    jobs = publish_notes(app, "note")
    # A hostile name Redis holds: listed in the jobs page's queue picker.
    get_state(app).redis.sadd("rq:queues", f"rq:queue:{SCRIPT_BREAKER}")
    client = app.test_client()
    nonces = set()
    with templates_rendered(app) as rendered:
        for path in page_paths(jobs, SCRIPT_BREAKER):
            response = client.get(path, headers=basic(), follow_redirects=True)
            assert response.status_code == 200, path
            policy = response.headers["Content-Security-Policy"]
            found = re.search(r"script-src 'nonce-([\w-]+)';", policy)
            assert found is not None, policy
            nonce = found.group(1)
            nonces.add(nonce)
            assert "unsafe" not in policy and "frame-ancestors 'none'" in policy
            scripts = re.findall(
                r"<script\b([^>]*)>(.*?)</script>", response.text, re.S
            )
            script = f' nonce="{nonce}" src="/rq/messaging/static/rq.js"'
            assert scripts == [(script, "")], path
            assert not re.search(r"\son\w+\s*=", response.text), path
            assert "x')" not in response.text, path  # only ever escaped
    assert len(nonces) == len(page_paths(jobs))
    assert rendered and all(name.startswith("messaging/rq/") for name in rendered)
    script = client.get("/rq/messaging/static/rq.js", headers=basic())
    assert script.mimetype in ("text/javascript", "application/javascript")
    assert "{{" not in script.text and "innerHTML" not in script.text
    script.close()


def test_every_dashboard_answer_forbids_inline_script(app: Flask) -> None:
    jobs = publish_notes(app, "note")
    client = app.test_client()
    for _, method, path in routes(app, jobs):
        if method == "OPTIONS":
            continue
        response = client.open(path, method=method, headers={**basic(), **SAME_ORIGIN})
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy, path
        script_src = re.search(r"script-src ([^;]*)", policy)
        if script_src is None:
            assert "default-src 'none'" in policy, path
        else:
            assert script_src.group(1).startswith("'nonce-"), path
            assert "'unsafe" not in script_src.group(1), path
        response.close()


def test_no_rq_dashboard_template_is_rendered_and_every_view_is_reviewed(
    app: Flask,
) -> None:
    from flask_messaging._rq.dashboard.views import RQ_KEPT

    jobs = publish_notes(app, "note")
    client = app.test_client()
    with templates_rendered(app) as rendered:
        for path in page_routes(app, jobs) | set(page_paths(jobs)):
            client.get(path, headers=basic(), follow_redirects=True).close()
    assert rendered
    assert not [name for name in rendered if name.startswith("rq_dashboard/")]
    kept = {
        endpoint.partition(".")[2]
        for endpoint, view in app.view_functions.items()
        if endpoint.startswith("rq_dashboard.")
        and not view.__module__.startswith("flask_messaging.")
    }
    assert kept == set(RQ_KEPT) == {"static", "favicon"}


def test_queue_and_worker_entries_rq_cannot_read_are_listed_not_a_failure(
    app: Flask,
) -> None:
    publish_notes(app, "note")
    redis = get_state(app).redis
    # Each made RQ's Queue.all or Worker.all, and so the whole page, fail.
    redis.sadd("rq:queues", "javascript:alert(1)", f"rq:queue:{SCRIPT_BREAKER}")
    redis.sadd("rq:workers", "<b>not a worker key</b>", "rq:worker:garbled")
    redis.hset("rq:worker:garbled", mapping={"birth": "yesterday", "queues": "high"})
    client = app.test_client()

    queues = client.get("/rq/0/data/queues.json", headers=basic()).json
    names = [queue["name"] for queue in queues["queues"]]
    assert names == sorted([HIGH_PRIORITY, LOW_PRIORITY, SCRIPT_BREAKER])
    workers = client.get("/rq/0/data/workers.json", headers=basic()).json
    rows = {w["name"]: w for w in workers["workers"]}
    assert rows["<b>not a worker key</b>"]["state"] == "unreadable"
    assert rows["garbled"]["state"] == "unreadable"
    assert "yesterday" in rows["garbled"]["current_job"]
    for path in ("/rq/", "/rq/0/view/workers", "/rq/0/view/jobs", "/rq/messaging/"):
        response = client.get(path, headers=basic())
        assert response.status_code == 200, path
        assert "<b>" not in response.text

    result = app.test_cli_runner().invoke(args=["messaging", "status"])
    assert result.exit_code == 0, result.output
    assert "garbled" in result.output and "unreadable" in result.output


def test_a_job_rq_cannot_read_can_be_deleted_not_requeued(app: Flask) -> None:
    jobs = publish_notes(app, "one", "two")
    redis = get_state(app).redis
    registry = FailedJobRegistry(HIGH_PRIORITY, connection=redis)
    readable, garbled = registry.get_job_ids()
    redis.hset(f"rq:job:{garbled}", "created_at", "yesterday")
    for bad in ("bad.id", "<img src=x onerror=alert(1)>"):
        redis.hset(f"rq:job:{bad}", mapping={"origin": HIGH_PRIORITY})
        redis.zadd(registry.key, {bad: 9e9})
        redis.rpush(f"rq:queue:{HIGH_PRIORITY}", bad)
    client = app.test_client()
    headers = {**basic(), **SAME_ORIGIN}

    info = client.get(f"/rq/0/data/job/{quote('bad.id')}.json", headers=basic())
    assert info.status_code == 200 and info.json["status"] == "unreadable"
    refused = client.post("/rq/job/bad.id/requeue", headers=headers)
    assert refused.status_code == 409
    assert "cannot be requeued; delete it" in refused.json["error"]
    response = client.post("/rq/job/bad.id/delete", headers=headers)
    assert response.json == {"status": "OK"}
    assert not redis.exists("rq:job:bad.id")
    assert "bad.id" not in registry.get_job_ids()
    assert b"bad.id" not in redis.lrange(f"rq:queue:{HIGH_PRIORITY}", 0, -1)

    response = client.post(f"/rq/queue/{HIGH_PRIORITY}/failed/empty", headers=headers)
    assert response.json == {"status": "OK"}
    assert registry.get_job_ids() == []
    assert not any(redis.exists(f"rq:job:{job}") for job in (readable, garbled))
    # Other queues are left as they were.
    assert jobs.queued in Queue(LOW_PRIORITY, connection=redis).get_job_ids()


# -- The messaging page ---------------------------------------------------------


def table_rows(page: str) -> list[list[str]]:
    """The text of each table cell, row by row."""
    return [
        [
            html.unescape(" ".join(re.sub(r"<[^>]+>", " ", cell).split()))
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)
    ]


def test_messaging_page_shows_subscribers_queues_and_failures(app: Flask) -> None:
    jobs = publish_notes(app, "a note")
    response = app.test_client().get("/rq/messaging/", headers=basic())
    assert response.status_code == 200
    page = response.text
    rows = table_rows(page)
    note = "tests.dashboard.note"
    module = "tests.test_dashboard"
    assert [note, f"{module}:log_note", "sync", "-", f"{module}:is_long"] in rows
    assert [note, f"{module}:keep_note", "async", LOW_PRIORITY, "-"] in rows
    assert [note, f"{module}:refuse_note", "async", HIGH_PRIORITY, "-"] in rows
    assert [HIGH_PRIORITY, "0", "0", "0", "1"] in rows
    assert [LOW_PRIORITY, "1", "0", "0", "0"] in rows
    (failure,) = [cells for cells in rows if cells[1:2] == [HIGH_PRIORITY]]
    assert failure[2] == f"{REFUSE_DESCRIPTION} {jobs.failed}"
    assert failure[3] == "RuntimeError: refused a note"
    row = next(r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if jobs.failed in r)
    assert 'action="/rq/messaging/failed/requeue"' in row
    assert f'name="queue" value="{HIGH_PRIORITY}"' in row
    assert f'name="job" value="{jobs.failed}"' in row
    assert 'method="post"' in row
    assert "No outbox" in page
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "base-uri 'none'" in policy
    assert "style-src 'self'" in policy and "unsafe-inline" not in policy
    (sheet,) = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    served = app.test_client().get(sheet, headers=basic())
    assert served.status_code == 200 and served.mimetype == "text/css"
    served.close()
    assert response.headers["Cache-Control"] == "no-store"


def test_outbox_backlog_on_the_messaging_page(
    tmp_path: Path, real_redis_url: str
) -> None:
    from flask_messaging import wait_for_sent
    from flask_messaging.transaction import register_event

    from .tx_app import User, UserRegistered, create_app, db

    app = create_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'outbox.db'}",
        MESSAGING_REDIS_URL=real_redis_url,
        MESSAGING_DASHBOARD_AUTH=AUTH,
    )
    client = app.test_client()
    try:
        page = client.get("/rq/messaging/", headers=basic()).text
        assert "The backlog cannot be counted" in page
        assert "does not exist" in page
        with app.app_context():
            db.create_all()
            user = User(email="u@example.com")
            db.session.add(user)
            db.session.flush()
            register_event(UserRegistered(user_id=user.id, email=user.email))
            db.session.commit()
        wait_for_sent()
        page = client.get("/rq/messaging/", headers=basic()).text
        # Enqueued at commit: not waiting for the relay, only for its mark.
        assert '<strong id="outbox-waiting">0</strong>' in page
        assert '<strong id="outbox-enqueued">1</strong>' in page
    finally:
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
        get_state(app).redis.close()


# -- Wiring -------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def embedded(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    release.clear()
    app = make_app(
        messaging,
        MESSAGING_REDIS_URL="memory://",
        MESSAGING_EMBEDDED_WORKER=True,
        MESSAGING_DASHBOARD_AUTH=AUTH,
    )
    yield app
    release.set()


def test_memory_url_dashboard_reads_the_in_process_redis(embedded: Flask) -> None:
    state = get_state(embedded)
    client = embedded.test_client()
    with embedded.app_context():
        get_message_broker().publish(Note("note"))
    registry = FailedJobRegistry(HIGH_PRIORITY, connection=state.redis)
    wait_for(lambda: registry.get_job_ids())
    (job_id,) = registry.get_job_ids()

    def json_of(path: str) -> Any:
        response = client.get(path, headers=basic(), follow_redirects=True)
        assert response.status_code == 200, path
        return response.json

    queues = {q["name"]: q for q in json_of("/rq/0/data/queues.json")["queues"]}
    assert queues[HIGH_PRIORITY]["failed_job_registry_count"] == 1
    listed = json_of(f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json")
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    info = json_of(f"/rq/0/data/job/{job_id}.json")
    assert info["description"] == REFUSE_DESCRIPTION
    assert info["status"] == "failed"
    assert client.get(f"/rq/0/view/job/{job_id}", headers=basic()).status_code == 200
    assert (
        "RuntimeError: refused note"
        in client.get("/rq/messaging/", headers=basic()).text
    )
    assert client.get("/rq/1/data/queues.json", headers=basic()).status_code == 404


def test_workers_page_shows_the_running_job_without_its_payload(
    embedded: Flask,
) -> None:
    client = embedded.test_client()
    with embedded.app_context():
        get_message_broker().publish(Hold(XSS))

    def busy() -> Any:
        data = client.get("/rq/0/data/workers.json", headers=basic()).json
        assert data is not None
        return [w for w in data["workers"] if w["current_job"] != "idle"]

    wait_for(busy)
    (worker,) = busy()
    description = "tests.dashboard.hold -> tests.test_dashboard:hold"
    assert worker["current_job"]["description"] == description
    assert worker["current_job"]["call_string"] == description
    response = client.get("/rq/0/data/workers.json", headers=basic())
    assert "<img" not in response.text
    # The started list names each job once, by id (RQ stores "id:execution").
    for order in ("asc", "dsc"):
        path = f"/rq/0/data/jobs/{DEFAULT_PRIORITY}/started/8/{order}/1.json"
        started = client.get(path, headers=basic()).json
        assert [job["id"] for job in started["jobs"]] == [
            worker["current_job"]["job_id"]
        ]
        assert started["jobs"][0]["description"] == description


def test_each_app_gets_its_own_redis_and_rq_dashboard_is_not_patched(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    on_server = make_app(messaging, MESSAGING_DASHBOARD_AUTH=AUTH)
    in_memory = make_app(MESSAGING_REDIS_URL="memory://", MESSAGING_DASHBOARD_AUTH=AUTH)
    publish_notes(on_server, "note")
    names = []
    for app in (on_server, in_memory):
        data = app.test_client().get("/rq/0/data/queues.json", headers=basic()).json
        assert data is not None
        names.append({queue["name"] for queue in data["queues"]})
    assert names == [{HIGH_PRIORITY, LOW_PRIORITY}, set()]

    plain = Flask("plain")
    plain.config["RQ_DASHBOARD_REDIS_URL"] = real_redis_url
    web.setup_rq_connection(plain)
    plain.register_blueprint(rq_dashboard.blueprint, url_prefix="/plain")
    assert plain.view_functions["rq_dashboard.job_view"] is web.job_view
    assert plain.before_request_funcs["rq_dashboard"] == [web.push_rq_connection]
    assert rq_dashboard.blueprint.before_request_funcs == {
        None: [web.push_rq_connection]
    }
    assert on_server.view_functions["rq_dashboard.job_view"] is not web.job_view
    response = plain.test_client().get("/plain/0/data/queues.json")
    assert response.status_code == 200  # rq-dashboard as it comes: no auth
    plain.redis_conn.close()  # type: ignore[attr-defined]


# -- Configuration ----------------------------------------------------------------


def test_prefix_moves_or_removes_the_dashboard(make_app: Callable[..., Flask]) -> None:
    moved = make_app(MESSAGING_DASHBOARD_URL_PREFIX="/admin/queues/")
    rules = {rule.rule for rule in moved.url_map.iter_rules()}
    assert {"/admin/queues/", "/admin/queues/messaging/"} <= rules
    assert not any(rule.startswith("/rq") for rule in rules)

    removed = make_app(MESSAGING_DASHBOARD_URL_PREFIX=None)
    assert [r.rule for r in removed.url_map.iter_rules()] == ["/static/<path:filename>"]
    assert removed.test_client().get("/rq/").status_code == 404


@pytest.mark.parametrize(
    ("config", "error", "says"),
    [
        ({"MESSAGING_DASHBOARD_AUTH": "hunter2"}, TypeError, "not a str"),
        ({"MESSAGING_DASHBOARD_AUTH": ("admin",)}, TypeError, '("user", "password")'),
        ({"MESSAGING_DASHBOARD_AUTH": ("admin", "")}, TypeError, "non-empty"),
        ({"MESSAGING_DASHBOARD_URL_PREFIX": "rq"}, ValueError, "such as '/rq'"),
        ({"MESSAGING_DASHBOARD_URL_PREFIX": "/"}, ValueError, "or None"),
    ],
)
def test_bad_dashboard_config_is_a_clear_error(
    config: dict[str, Any], error: type[Exception], says: str
) -> None:
    app = Flask("bad")
    app.config.update(MESSAGING_REDIS_URL="memory://", **config)
    with pytest.raises(error, match=re.escape(says)) as caught:
        Messaging(app)
    assert "hunter2" not in str(caught.value)


def test_an_rq_dashboard_already_mounted_is_a_clear_error() -> None:
    app = Flask("twice")
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/mine")
    with pytest.raises(RuntimeError, match="already registered"):
        Messaging(app, db=None)


def test_static_files_are_served_once_logged_in(app: Flask) -> None:
    response = app.test_client().get(
        "/rq/static/js/jquery-3.5.1.min.js", headers=basic()
    )
    assert response.status_code == 200
    assert "no-store" not in response.headers.get("Cache-Control", "")
    response.close()


def test_a_failed_job_rq_cannot_read_is_listed_not_a_crash(app: Flask) -> None:
    jobs = publish_notes(app, "a note")
    redis = get_state(app).redis
    redis.hset(f"rq:job:{jobs.failed}", "created_at", "yesterday")
    client = app.test_client()
    listed = client.get(
        f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json", headers=basic()
    )
    assert listed.status_code == 200
    (row,) = listed.json["jobs"]
    assert row["id"] == jobs.failed
    assert row["description"] == UnreadableJob.description
    assert row["exc_info"].startswith("ValueError: time data 'yesterday'")
    page = client.get("/rq/messaging/", headers=basic())
    assert page.status_code == 200
    assert UnreadableJob.description in page.text
