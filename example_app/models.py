"""The shop's tables: its data, and what each subscriber did."""

from __future__ import annotations

import datetime

from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class User(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str]


class Order(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(db.ForeignKey("user.id"))
    total: Mapped[float]


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    """Written by a sync subscriber, right after each commit."""

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class SentEmail(db.Model):  # type: ignore[name-defined,misc]
    """Written by the async welcome-email subscriber, once per message."""

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(unique=True)
    to: Mapped[str]
    subject: Mapped[str]
    at: Mapped[datetime.datetime] = mapped_column(default=utcnow)


class PremiumOrder(db.Model):  # type: ignore[name-defined,misc]
    """Written by the async premium-order subscriber (orders over 100 only)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(unique=True)
    total: Mapped[float]
    at: Mapped[datetime.datetime] = mapped_column(default=utcnow)
