"""A person's view: the example app and its dashboards in headless Chromium.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the
``playwright`` package, which drives it (no browser download). Skipped
without them, unless ``MESSAGING_TEST_REQUIRE_BROWSER=1`` (set by CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask

from flask_messaging.queue_names import HIGH_PRIORITY
from flask_messaging.state import get_state

from .conftest import ROOT
from .servers import free_port
from .test_dashboard import publish_notes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("MESSAGING_TEST_REQUIRE_BROWSER") == "1"
#: Where screenshots are kept; the test's temporary folder by default.
SCREENSHOTS = os.environ.get("MESSAGING_TEST_SCREENSHOTS")


@pytest.fixture
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        reason = "needs Debian's chromium and the playwright package"
        if REQUIRED:
            pytest.fail(f"{reason} (MESSAGING_TEST_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shop_url(tmp_path: Path) -> Iterator[str]:
    """The example app served by ``flask run`` on a free port, on memory://."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}",
        "MESSAGING_REDIS_URL": "memory://",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "example_app",
            "run",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, "the example app did not start"
            assert time.monotonic() < deadline, "the example app did not start"
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def test_sign_in_and_see_events_flow(
    browser: object, shop_url: str, tmp_path: Path
) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)

    # A page load would stop at the browser's login prompt: ask directly.
    stranger = browser.new_context()  # type: ignore[attr-defined]
    response = stranger.request.get(f"{shop_url}/rq/messaging/")
    assert response.status == 401
    assert "Basic" in response.headers["www-authenticate"]
    stranger.close()

    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "admin", "password": "admin"},
        viewport={"width": 1280, "height": 900},
    )
    page = context.new_page()
    page.goto(shop_url)
    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=name]", "Ada")
    page.click("button:has-text('Register')")
    page.wait_for_selector("text=Registered user 1.")
    page.fill("input[name=total]", "250")
    page.click("button:has-text('Order')")
    page.wait_for_selector("text=Placed order 1.")
    # The async subscribers' work shows up once the worker thread ran them.
    for _ in range(50):
        page.reload()
        if page.locator("text=Welcome, Ada!").count():
            break
        time.sleep(0.2)
    assert page.locator("text=Welcome, Ada!").count() == 1
    page.screenshot(path=str(folder / "shop.png"), full_page=True)

    response = page.goto(f"{shop_url}/rq/messaging/")
    assert response is not None and response.status == 200
    page.wait_for_selector("text=shop.user_registered")
    page.screenshot(path=str(folder / "messaging.png"), full_page=True)

    response = page.goto(f"{shop_url}/rq/")
    assert response is not None and response.status == 200
    page.screenshot(path=str(folder / "rq-dashboard.png"), full_page=True)
    context.close()
    for name in ("shop.png", "messaging.png", "rq-dashboard.png"):
        assert (folder / name).stat().st_size > 10_000


# -- Hostile values from the URL and from Redis ----------------------------------

#: Written for rq-dashboard's jobs.js, which put the queue name into a script.
SCRIPT_BREAKER = "x');}});window.__x=1;$('#y').on('z',function(){if(1){$(this).val('"
HOSTILE = [
    SCRIPT_BREAKER,
    '<img src=x onerror="window.__x=2">',
    "</script><script>window.__x=3</script>",
    '"><svg onload=window.__x=4>',
    "javascript:window.__x=5",
]


@pytest.fixture
def dashboard(
    make_app: Callable[..., Flask], real_redis_url: str
) -> Iterator[tuple[Flask, str]]:
    """The test dashboard app and its URL, served from a thread, on real Redis."""
    from werkzeug.serving import make_server

    from .test_dashboard import AUTH, messaging

    app = make_app(messaging, MESSAGING_DASHBOARD_AUTH=AUTH)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def plant_hostile_values(app: Flask) -> dict[str, str]:
    """Hostile queue names, job ids, origins, worker names and exception texts.

    All are written the way anyone who can write to Redis could; returns the
    ids of the jobs they are in.
    """
    from rq.registry import FailedJobRegistry

    jobs = publish_notes(app, *HOSTILE)  # each text ends in an exception
    redis = get_state(app).redis
    for name in HOSTILE:
        redis.sadd("rq:queues", f"rq:queue:{name}")
        redis.hset(
            f"rq:worker:{name}",
            mapping={"queues": name, "state": "idle", "birth": "", "pid": 1},
        )
        redis.sadd("rq:workers", f"rq:worker:{name}")
    # Entries that are not a queue or worker key at all.
    redis.sadd("rq:queues", HOSTILE[1])
    redis.sadd("rq:workers", HOSTILE[2])
    # A job id RQ would never make, in a registry and in a queue.
    bad_id = HOSTILE[1]
    redis.hset(f"rq:job:{bad_id}", mapping={"status": "failed", "origin": bad_id})
    redis.zadd(FailedJobRegistry(HIGH_PRIORITY, connection=redis).key, {bad_id: 9e9})
    redis.rpush(f"rq:queue:{SCRIPT_BREAKER}", bad_id)
    redis.hset(f"rq:job:{jobs.failed}", "origin", SCRIPT_BREAKER)
    return {"failed": jobs.failed, "bad": bad_id}


@pytest.fixture
def operator(browser: object) -> Iterator[tuple[object, Callable[[], None]]]:
    """A logged-in page, and a check that no planted script ran in it."""
    from .test_dashboard import AUTH

    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": AUTH[0], "password": AUTH[1]}
    )
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def no_script_ran() -> None:
        assert page.evaluate("typeof window.__x") == "undefined", page.url
        assert dialogs == []

    yield page, no_script_ran
    context.close()


def test_hostile_names_in_the_url_run_no_script(
    operator: tuple[Any, Callable[[], None]], dashboard: tuple[Flask, str]
) -> None:
    page, no_script_ran = operator
    rq = f"{dashboard[1]}/rq"
    publish_notes(dashboard[0], "a note")
    for name in HOSTILE:
        for path in (
            f"/0/view/jobs/{quote(name, safe='')}/queued/8/asc/1",
            f"/0/view/jobs/{quote(name, safe='')}/failed/8/dsc/1",
            f"/0/view/job/{quote(name, safe='')}",
            f"/0/view/jobs/{HIGH_PRIORITY}/{quote(name, safe='')}/8/asc/1",
        ):
            response = page.goto(rq + path)
            no_script_ran()
            # Not held by Redis: refused before any page is made.
            assert response is not None and response.status == 404, path


def test_hostile_values_in_redis_run_no_script(
    operator: tuple[Any, Callable[[], None]],
    dashboard: tuple[Flask, str],
    tmp_path: Path,
) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page, no_script_ran = operator
    app, url = dashboard
    rq = f"{url}/rq"
    ids = plant_hostile_values(app)

    # Listed on the queues page as text, and followed by a click.
    page.goto(f"{rq}/")
    for name in HOSTILE:
        page.locator("table#queues tbody tr", has_text=name).first.wait_for()
    no_script_ran()
    row = page.locator("table#queues tbody tr", has_text=SCRIPT_BREAKER).first
    row.locator("a").first.click()
    page.wait_for_load_state()
    no_script_ran()
    # Its one job, listed as text.
    page.locator("table#jobs .job-id", has_text=ids["bad"]).wait_for()
    assert page.locator("#queue-name").inner_text() == SCRIPT_BREAKER
    page.locator("#select-queue").hover()  # rq-dashboard's script ran on hover
    page.mouse.move(400, 400)
    no_script_ran()

    # Exception texts and a job id RQ never makes, in the failed registry.
    page.goto(f"{rq}/0/view/jobs/{HIGH_PRIORITY}/failed/8/asc/1")
    page.wait_for_selector("pre.exc_info")
    texts = page.locator("table#jobs").inner_text()
    for name in HOSTILE:
        assert f"RuntimeError: refused {name}" in texts
    assert ids["bad"] in texts
    no_script_ran()
    page.screenshot(path=str(folder / "rq-failed-jobs.png"), full_page=True)
    page.locator("a", has_text=ids["failed"]).click()
    page.wait_for_selector("#job-data dd")
    assert SCRIPT_BREAKER in page.locator("#job-data").inner_text()  # its origin
    no_script_ran()
    page.goto(f"{rq}/0/view/job/{quote(ids['bad'], safe='')}")
    page.wait_for_selector("#job-data dd")
    assert "unreadable" in page.locator("#job-data").inner_text()
    no_script_ran()

    # Workers with hostile names and queues.
    page.goto(f"{rq}/0/view/workers")
    for name in HOSTILE:
        page.locator("table#workers tbody tr", has_text=name).first.wait_for()
    no_script_ran()
    page.screenshot(path=str(folder / "rq-workers.png"), full_page=True)

    page.goto(f"{rq}/messaging/")
    no_script_ran()


def test_buttons_act_and_a_page_elsewhere_cannot(
    operator: tuple[Any, Callable[[], None]], dashboard: tuple[Flask, str]
) -> None:
    from rq.registry import FailedJobRegistry
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    page, no_script_ran = operator
    app, url = dashboard
    publish_notes(app, "one", "two")
    failed = FailedJobRegistry(HIGH_PRIORITY, connection=get_state(app).redis)
    first, second = failed.get_job_ids()

    # A page of the same host on another port: same site, another origin.
    hostile = f"""<!doctype html><form id="f" method="post"
        action="{url}/rq/requeue/{HIGH_PRIORITY}"></form>
        <script>
        var post = {{method: "POST", mode: "no-cors", credentials: "include"}};
        Promise.allSettled([
          fetch("{url}/rq/job/{first}/delete", post),
          fetch("{url}/rq/queue/{HIGH_PRIORITY}/failed/empty", post),
        ]).then(function () {{ document.getElementById("f").submit(); }});
        </script>"""
    elsewhere = make_server(
        "127.0.0.1", free_port(), Response(hostile, mimetype="text/html")
    )
    thread = threading.Thread(target=elsewhere.serve_forever, daemon=True)
    thread.start()
    try:
        with page.expect_navigation(url=f"{url}/rq/requeue/{HIGH_PRIORITY}"):
            page.goto(f"http://127.0.0.1:{elsewhere.server_port}/")
        assert "Refused an action sent from another site" in page.content()
    finally:
        elsewhere.shutdown()
        thread.join(10)
    assert failed.get_job_ids() == [first, second]

    # The dashboard's own button: its POST passes the origin checks.
    page.goto(f"{url}/rq/0/view/jobs/{HIGH_PRIORITY}/failed/8/asc/1")
    row = page.locator("table#jobs tbody tr", has_text=first)
    row.locator("button[data-job-action=requeue]").click()
    row.wait_for(state="detached")
    assert failed.get_job_ids() == [second]
    # And the messaging page's form.
    page.goto(f"{url}/rq/messaging/")
    with page.expect_navigation(url=f"{url}/rq/messaging/"):
        page.locator("tr", has_text=second).locator("button").click()
    assert failed.get_job_ids() == []
    no_script_ran()


def test_a_queue_named_with_a_slash_is_opened_and_acted_on_and_queues_page(
    operator: tuple[Any, Callable[[], None]], dashboard: tuple[Flask, str]
) -> None:
    from rq import Queue
    from rq.registry import FailedJobRegistry

    page, no_script_ran = operator
    app, url = dashboard
    jobs = publish_notes(app, "note")
    redis = get_state(app).redis
    # RQ takes any queue name: a job that failed on "a/b".
    failed = FailedJobRegistry("a/b", connection=redis)
    redis.copy(f"rq:job:{jobs.failed}", "rq:job:slashed")
    redis.copy(f"rq:results:{jobs.failed}", "rq:results:slashed")
    redis.hset("rq:job:slashed", "origin", "a/b")
    redis.zadd(failed.key, {"slashed": 9e9})
    redis.sadd("rq:queues", "rq:queue:a/b")
    redis.sadd("rq:queues", *(f"rq:queue:z{n:03}" for n in range(60)))

    page.goto(f"{url}/rq/")
    row = page.locator("table#queues tbody tr", has_text="a/b")
    row.locator("td").nth(6).locator("a").click()  # its failed count
    page.wait_for_url(f"{url}/rq/0/view/jobs/a/b/failed/8/asc/1")
    job = page.locator("table#jobs tbody tr", has_text="slashed")
    job.locator("button[data-job-action=requeue]").click()
    job.wait_for(state="detached")
    assert failed.get_job_ids() == []
    assert Queue("a/b", connection=redis).get_job_ids() == ["slashed"]

    page.goto(f"{url}/rq/")
    page.locator("table#queues tbody tr", has_text="a/b").wait_for()
    assert page.locator("table#queues tbody tr").count() == 50
    page.locator("#pages button", has_text="\u203a").click()
    page.locator("table#queues tbody tr", has_text="z059").wait_for()
    assert page.locator("table#queues tbody tr", has_text="a/b").count() == 0
    assert "Page 2 of 2" in page.locator("#pages").inner_text()
    no_script_ran()
