"""An app with two databases (Flask-SQLAlchemy binds), for the binds tests.

The default database holds the outbox and ``Account``; the ``other`` bind
holds ``Parent`` and ``Child``. Both databases also have a child table whose
foreign key is ``DEFERRABLE INITIALLY DEFERRED``: a row pointing nowhere is
accepted until COMMIT, which then fails.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import Messaging

from .app_factory import build_app

db = SQLAlchemy()
messaging = Messaging()


class Account(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]


class AccountNote(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        sa.ForeignKey("account.id", deferrable=True, initially="DEFERRED")
    )


class Parent(db.Model):  # type: ignore[name-defined,misc]
    __bind_key__ = "other"
    id: Mapped[int] = mapped_column(primary_key=True)


class Child(db.Model):  # type: ignore[name-defined,misc]
    __bind_key__ = "other"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        sa.ForeignKey("parent.id", deferrable=True, initially="DEFERRED")
    )


def create_app(database_url: str, other_url: str, redis_url: str) -> Flask:
    return build_app(
        "binds_app",
        messaging,
        db,
        defaults={"MESSAGING_RETRY": 0, "MESSAGING_RELAY_DELAY": 0},
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_BINDS={"other": other_url},
        MESSAGING_REDIS_URL=redis_url,
    )
