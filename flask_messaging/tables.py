"""The tables messaging keeps in the app's database, and their clock."""

from __future__ import annotations

import datetime

import sqlalchemy as sa

__all__ = ["table_on", "utcnow"]


def utcnow() -> datetime.datetime:
    """Now, in UTC, without a time zone: stored and compared the same way by
    every database (a ``TIMESTAMP`` column, no zone)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def table_on(
    metadata: sa.MetaData, name: str, *parts: sa.Column[object] | sa.Index
) -> sa.Table:
    """The table ``name`` of ``metadata``, defined by ``parts`` unless it is
    there already (made by ``create_all`` with the app's other tables)."""
    existing = metadata.tables.get(name)
    if existing is not None:
        return existing
    return sa.Table(name, metadata, *parts)
