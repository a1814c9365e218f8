"""The example shop, end to end: embedded, and with a real Redis and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy.engine import make_url

from example_app import DEVELOPMENT_KEY, create_app
from example_app.extensions import db
from flask_messaging.state import get_state

from .conftest import ROOT, flask_messaging_command
from .servers import free_port

#: What the shop needs besides a real Redis: it has no defaults for them then.
SECRETS = {
    "SECRET_KEY": "production-shape test key",
    "DASHBOARD_USER": "ops",
    "DASHBOARD_PASSWORD": "a test passphrase",
}
SECRET_CONFIG = {
    "SECRET_KEY": SECRETS["SECRET_KEY"],
    "MESSAGING_DASHBOARD_AUTH": (
        SECRETS["DASHBOARD_USER"],
        SECRETS["DASHBOARD_PASSWORD"],
    ),
}


@pytest.fixture
def make_shop(tmp_path: Path) -> Iterator[Any]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = create_app(
            {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shop.db'}", **config}
        )
        apps.append(app)
        if not get_state(app).is_embedded:
            # With a real Redis the shop is several processes: its tables are
            # created once, by the set-up command.
            result = app.test_cli_runner().invoke(args=["init-db"])
            assert result.exit_code == 0, result.output
        return app

    yield make
    for app in apps:
        state = get_state(app)
        if state.embedded_worker is not None:
            state.embedded_worker.stop()
        with app.app_context():
            db.engine.dispose()


def shop_flow(client: FlaskClient) -> None:
    assert (
        client.post(
            "/api/users", json={"email": "ada@example.com", "name": "Ada"}
        ).status_code
        == 201
    )
    assert (
        client.post("/api/orders", json={"user_id": 1, "total": 150}).status_code == 201
    )
    assert (
        client.post("/api/orders", json={"user_id": 1, "total": 20}).status_code == 201
    )
    # The sync subscriber ran in the request, right after each commit.
    audit = [entry["text"] for entry in client.get("/api/activity").json["audit_log"]]
    assert audit == [
        "order 2 placed: 20.00",
        "order 1 placed: 150.00",
        "user 1 registered (ada@example.com)",
    ]


def wait_for_async_effects(client: FlaskClient) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        activity: dict[str, Any] = client.get("/api/activity").json
        if activity["welcome_emails"] and activity["premium_orders"]:
            return activity
        assert time.monotonic() < deadline, activity
        time.sleep(0.05)


def check_async_effects(activity: dict[str, Any]) -> None:
    assert [e["to"] for e in activity["welcome_emails"]] == ["ada@example.com"]
    # Only the order above 100 reached the premium subscriber.
    assert [p["order_id"] for p in activity["premium_orders"]] == [1]


def test_shop_on_embedded_defaults(make_shop: Any) -> None:
    app = make_shop()
    assert app.config["MESSAGING_REDIS_URL"] == "memory://"
    client = app.test_client()
    shop_flow(client)
    check_async_effects(wait_for_async_effects(client))
    page = client.get("/")
    assert page.status_code == 200
    assert b"Welcome, Ada!" in page.data


def test_shop_with_real_redis_and_a_worker_process(
    make_shop: Any, real_redis_url: str, tmp_path: Path
) -> None:
    app = make_shop(MESSAGING_REDIS_URL=real_redis_url, **SECRET_CONFIG)
    client = app.test_client()
    shop_flow(client)
    assert client.get("/api/activity").json["welcome_emails"] == []  # not yet
    worker = flask_messaging_command(
        "example_app",
        "worker",
        "--burst",
        env={
            "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}",
            "MESSAGING_REDIS_URL": real_redis_url,
            **SECRETS,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    check_async_effects(client.get("/api/activity").json)


def test_forms_and_bad_input(make_shop: Any) -> None:
    client = make_shop().test_client()
    page = client.post(
        "/users",
        data={"email": "bob@example.com", "name": "Bob"},
        follow_redirects=True,
    )
    assert b"Registered user 1." in page.data
    again = client.post(
        "/users",
        data={"email": "bob@example.com", "name": "Bob"},
        follow_redirects=True,
    )
    assert b"bob@example.com is already registered." in again.data
    assert client.post("/api/users", json={"email": 3}).status_code == 400
    assert (
        client.post("/api/orders", json={"user_id": 99, "total": 1}).status_code == 404
    )
    missing = client.post("/orders", data={}, follow_redirects=True)
    assert b"Choose a user and give a total." in missing.data


def test_the_production_shape_creates_tables_once_then_starts_side_by_side(
    postgres_url: str, real_redis_url: str
) -> None:
    # As docs/getting-started.md shows it: an empty PostgreSQL database, the
    # tables created by one command, then the web app and a worker (which
    # also relays) started at once. No process but init-db creates tables,
    # so none races another on them.
    env = {
        "DATABASE_URL": postgres_url,
        "MESSAGING_REDIS_URL": real_redis_url,
        **SECRETS,
    }
    app = create_app({"SQLALCHEMY_DATABASE_URI": postgres_url})
    with app.app_context():
        db.drop_all()
        assert sa.inspect(db.engine).get_table_names() == []
        db.engine.dispose()
    try:
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": postgres_url,
                "MESSAGING_REDIS_URL": real_redis_url,
                **SECRET_CONFIG,
            }
        )
        with app.app_context():
            assert sa.inspect(db.engine).get_table_names() == []  # untouched
            db.engine.dispose()
        init = flask_app_command("init-db", env=env)
        assert init.wait(60) == 0
        port = free_port()
        processes = [
            flask_app_command("run", "--port", str(port), env=env),
            flask_messaging_command(
                "example_app",
                "worker",
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
        ]
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: http(f"{base}/api/activity") is not None)
            created = http(
                f"{base}/api/users", {"email": "ada@example.com", "name": "Ada"}
            )
            assert created is not None and created["id"] == 1
            wait_until(
                lambda: (http(f"{base}/api/activity") or {}).get("welcome_emails")
            )
            for process in processes:
                assert process.poll() is None
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=60)
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()
        get_state(app).redis.close()


def flask_app_command(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def http(url: str, payload: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``payload`` as JSON) and decode the answer; None if down."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def run_shop_command(
    command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``flask --app example_app COMMAND`` to its end, in exactly ``env`` (and
    this checkout on ``PYTHONPATH``)."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", *command],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(condition: Callable[[], object]) -> None:
    # Waits for the processes, does not time them: the bound only ends a run
    # that would otherwise hang.
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "unset, named",
    [
        (["SECRET_KEY"], "set SECRET_KEY in the environment"),
        (["DASHBOARD_PASSWORD"], "set DASHBOARD_USER and DASHBOARD_PASSWORD"),
        (["DASHBOARD_USER", "DASHBOARD_PASSWORD"], "DASHBOARD_PASSWORD"),
    ],
)
@pytest.mark.parametrize("command", [["messaging", "worker", "--burst"], ["init-db"]])
def test_the_shop_on_a_real_redis_refuses_the_public_development_defaults(
    real_redis_url: str,
    tmp_path: Path,
    unset: list[str],
    named: str,
    command: list[str],
) -> None:
    env = {**os.environ, **SECRETS, "MESSAGING_REDIS_URL": real_redis_url}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'shop.db'}"
    for name in unset:
        env.pop(name)
    result = run_shop_command(command, env)
    assert result.returncode != 0, result.stdout
    assert named in result.stderr
    assert not Redis.from_url(real_redis_url).keys("rq:worker:*")


def test_the_embedded_shop_keeps_its_development_defaults(
    monkeypatch: pytest.MonkeyPatch, make_shop: Any
) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    app = make_shop()
    assert app.config["SECRET_KEY"] == DEVELOPMENT_KEY
    assert app.config["MESSAGING_DASHBOARD_AUTH"] == ("admin", "admin")


@pytest.mark.parametrize(
    "command",
    [
        ["init-db"],
        ["messaging", "worker", "--burst"],
        ["messaging", "worker", "--processes", "2"],
        ["messaging", "relay", "--once"],
        ["messaging", "outbox", "list"],
        ["messaging", "status"],
    ],
)
def test_a_command_without_its_database_says_so_in_one_line(
    postgres_url: str, real_redis_url: str, command: list[str]
) -> None:
    url = make_url(postgres_url).set(
        password="hunter2secret", database="fm_opsfix_no_such_database"
    )
    env = {
        **os.environ,
        **SECRETS,
        "MESSAGING_REDIS_URL": real_redis_url,
        "DATABASE_URL": url.render_as_string(False),
    }
    result = run_shop_command(command, env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "fm_opsfix_no_such_database" in line
    assert "hunter2secret" not in line
    assert "create the database" in line
