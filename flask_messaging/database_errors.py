"""One line, not a traceback, when a command cannot reach its database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError

from .redaction import redact, redact_url

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["UNREACHABLE", "describe_unreachable"]

#: What SQLAlchemy raises when the database server cannot be reached, the
#: database does not exist, or the login is refused.
UNREACHABLE = (OperationalError, InterfaceError)


def describe_unreachable(
    app: Flask | None, exc: OperationalError | InterfaceError
) -> str:
    """A one-line error for ``exc``: the database URL (masked) and the fix.

    :param app: the app whose Flask-SQLAlchemy engines are named (each bind's
        URL, credentials masked by :func:`~flask_messaging.redaction.redact_url`);
        ``None`` names none.
    """
    urls = _database_urls(app)
    where = f" at {', '.join(urls)}" if urls else ""
    cause = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return redact(
        f"Cannot use the database{where}: {cause[0] if cause else type(exc).__name__}."
        " Start its server and create the database, or set"
        " SQLALCHEMY_DATABASE_URI (SQLALCHEMY_BINDS) to one that exists."
    )


def _database_urls(app: Flask | None) -> list[str]:
    if app is None:
        return []
    db = app.extensions.get("sqlalchemy")
    if db is None:
        return []
    with app.app_context():
        engines = db.engines.values()
        return list(
            dict.fromkeys(redact_url(e.url.render_as_string(False)) for e in engines)
        )
