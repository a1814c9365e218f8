"""A small shop that talks through events: the flask-messaging example app.

Run it with no server at all (SQLite and the in-process ``memory://`` Redis)::

    flask --app example_app run

Production shape: a real database and Redis, the tables created once, and
workers (which also relay the outbox) beside the app::

    export DATABASE_URL=postgresql+psycopg://localhost/shop
    export MESSAGING_REDIS_URL=redis://localhost:6379/0
    flask --app example_app init-db
    flask --app example_app run
    flask --app example_app messaging worker
"""

from __future__ import annotations

import os
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext

from flask_messaging.extension import get_state

from .extensions import db, messaging


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        # Development defaults: replace every one of them in production.
        SECRET_KEY=os.environ.get("SECRET_KEY", "example-app-development-key"),
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "DATABASE_URL", f"sqlite:///{os.path.join(app.instance_path, 'shop.db')}"
        ),
        MESSAGING_REDIS_URL=os.environ.get("MESSAGING_REDIS_URL", "memory://"),
        MESSAGING_DASHBOARD_AUTH=(
            os.environ.get("DASHBOARD_USER", "admin"),
            os.environ.get("DASHBOARD_PASSWORD", "admin"),
        ),
    )
    app.config.from_prefixed_env()  # FLASK_MESSAGING_QUEUES='["high"]' and so on
    app.config.update(config or {})

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


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the shop's tables (and the outbox) once, before starting it."""
    db.create_all()
    click.echo(f"Created the tables in {db.engine.url.render_as_string()}.")
