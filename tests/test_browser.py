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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, free_port

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
