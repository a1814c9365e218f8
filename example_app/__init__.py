"""A small shop that talks through events: the flask-messaging example app.

Run it with no server at all (SQLite and the in-process ``memory://`` Redis)::

    flask --app example_app run

Production shape: a real database and Redis, a secret key and dashboard
credentials of your own, the tables created once, and workers (which also
relay the outbox) beside the app. With the virtual environment activated
(``. .venv/bin/activate``)::

    export DATABASE_URL=postgresql+psycopg://localhost/shop
    export MESSAGING_REDIS_URL=redis://localhost:6379/0
    export SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
    export DASHBOARD_USER=ops DASHBOARD_PASSWORD='a long passphrase'
    flask --app example_app init-db
    flask --app example_app run
    flask --app example_app messaging worker

The development key and the ``admin``/``admin`` dashboard login are used
only with ``memory://``, where nothing outside the one process can see them;
with a real Redis the app refuses to start without ``SECRET_KEY``,
``DASHBOARD_USER`` and ``DASHBOARD_PASSWORD``.
"""

from __future__ import annotations

import os
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from flask_messaging.database_errors import UNREACHABLE, describe_unreachable
from flask_messaging.redaction import redact_url
from flask_messaging.state import get_state

from .extensions import db, messaging

#: The development key: public, for the embedded ``memory://`` default only.
DEVELOPMENT_KEY = "example-app-development-key"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY"),
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "DATABASE_URL", f"sqlite:///{os.path.join(app.instance_path, 'shop.db')}"
        ),
        MESSAGING_REDIS_URL=os.environ.get("MESSAGING_REDIS_URL", "memory://"),
        MESSAGING_DASHBOARD_AUTH=_dashboard_auth(),
    )
    app.config.from_prefixed_env()  # FLASK_MESSAGING_QUEUES='["high"]' and so on
    app.config.update(config or {})
    _development_defaults(app)

    db.init_app(app)
    messaging.init_app(app, db=db)

    from . import handlers  # noqa: F401  (subscribes the handlers)
    from .views import shop

    app.register_blueprint(shop)
    app.cli.add_command(init_db_command)
    if get_state(app).is_embedded:
        # memory:// runs the whole shop in this one process: nothing can race
        # it, and the README's single command needs no set-up step. With a
        # real Redis, the web app, workers and relays start side by side and
        # would all race to create the tables: 'flask init-db' does it once.
        with app.app_context():
            db.create_all()
    return app


def _dashboard_auth() -> tuple[str, str] | None:
    user, password = (
        os.environ.get("DASHBOARD_USER"),
        os.environ.get("DASHBOARD_PASSWORD"),
    )
    return (user, password) if user and password else None


def _development_defaults(app: Flask) -> None:
    """Fill in the public development key and login, for ``memory://`` only.

    With a real Redis, jobs signed with a key anyone can read this file for
    would be accepted, and the dashboard would open to ``admin``/``admin``:
    the app refuses to start instead (:class:`RuntimeError`).
    """
    if app.config["MESSAGING_REDIS_URL"] == "memory://":
        app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or DEVELOPMENT_KEY
        app.config["MESSAGING_DASHBOARD_AUTH"] = app.config[
            "MESSAGING_DASHBOARD_AUTH"
        ] or ("admin", "admin")
        return
    missing = [
        name
        for name, value in (
            ("SECRET_KEY", app.config["SECRET_KEY"]),
            (
                "DASHBOARD_USER and DASHBOARD_PASSWORD",
                app.config["MESSAGING_DASHBOARD_AUTH"],
            ),
        )
        if not value
    ]
    if missing:
        raise RuntimeError(
            "MESSAGING_REDIS_URL is a real Redis server, so the example app"
            " uses no development defaults: set "
            + " and ".join(missing)
            + " in the environment (SECRET_KEY: a long random value, e.g."
            " python -c 'import secrets; print(secrets.token_hex(32))')."
        )


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the shop's tables (and the outbox) once, before starting it."""
    try:
        db.create_all()
    except UNREACHABLE as exc:
        raise click.ClickException(describe_unreachable(current_app, exc)) from None
    click.echo(
        f"Created the tables in {redact_url(db.engine.url.render_as_string(False))}."
    )
