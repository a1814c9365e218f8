"""How the apps of the tests, the reliability tests and the benchmarks are built.

Worker and relay processes load these apps with ``flask --app
tests.X:create_app``, so that what a process needs comes from its
environment: ``MESSAGING_REDIS_URL``, ``DATABASE_URL`` and ``FLASK_*``
overrides (``FLASK_MESSAGING_RELAY_DELAY=10`` sets ``MESSAGING_RELAY_DELAY``).

The deploy-skew tests load ``tests.tx_app`` and ``tests.worker_app``, and so
this module, on the package as it was many versions ago: only ``Messaging``
and its ``init_app(app, db=...)`` are used here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging import Messaging


def build_app(
    import_name: str,
    messaging: Messaging,
    db: SQLAlchemy | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    **config: Any,
) -> Flask:
    """A Flask app with ``messaging``, and ``db`` if given, set up on it.

    Its configuration, each layer over the one before: ``SECRET_KEY``;
    ``MESSAGING_REDIS_URL`` from the environment (default ``memory://``);
    with ``db``, ``SQLALCHEMY_DATABASE_URI`` from ``DATABASE_URL`` (default
    ``sqlite://``); the app's ``defaults``; ``FLASK_*`` environment
    variables; ``config``.

    :param import_name: the app's name (``Flask(import_name)``).
    :param db: a Flask-SQLAlchemy object, set up on the app before
        ``messaging`` so that the outbox and transactions follow it.
    """
    app = Flask(import_name)
    app.config.update(
        SECRET_KEY="test secret",
        MESSAGING_REDIS_URL=os.environ.get("MESSAGING_REDIS_URL", "memory://"),
    )
    if db is not None:
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
            "DATABASE_URL", "sqlite://"
        )
    app.config.update(defaults or {})
    app.config.from_prefixed_env()
    app.config.update(config)
    if db is not None:
        db.init_app(app)
    messaging.init_app(app, db=db)
    return app
