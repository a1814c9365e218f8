"""The example shop, end to end: embedded, and with a real Redis and worker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app.extensions import db
from flask_messaging.extension import get_state

from .conftest import flask_messaging_command


@pytest.fixture
def make_shop(tmp_path: Path) -> Iterator[Any]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = create_app(
            {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shop.db'}", **config}
        )
        apps.append(app)
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
    app = make_shop(MESSAGING_REDIS_URL=real_redis_url)
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
