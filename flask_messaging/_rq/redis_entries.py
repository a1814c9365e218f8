"""Reading Redis entries that another program may have written.

RQ's keys hold what RQ wrote, until something else writes them: a string
where a job hash should be, a set where a queue's list should be, an id
that is not UTF-8 text. RQ then raises (``WRONGTYPE``, ``UnicodeDecodeError``)
for a whole listing. The readers here never raise for such an entry: they
tell it apart, so that the dashboard and ``flask messaging status`` list it
as unreadable and an operator can delete it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from redis import Redis

__all__ = [
    "decoded",
    "is_wrong_type",
    "key_type",
    "members",
    "page_of_members",
    "shown",
]


def is_wrong_type(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command for the key's type."""
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


def decoded(raw: bytes | str) -> str | None:
    """``raw`` as text; None if it is not UTF-8 (no RQ id or name can be)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def shown(raw: bytes | str) -> str:
    """``raw`` as text to show, bytes that are not UTF-8 as ``\\xff`` escapes."""
    return raw if isinstance(raw, str) else raw.decode(errors="backslashreplace")


def key_type(connection: Redis, key: str) -> str:
    """Redis's type of ``key``: "list", "zset", "set", "hash", "none"…"""
    found = connection.type(key)
    return found.decode() if isinstance(found, bytes) else str(found)


def members(connection: Redis, key: str) -> list[bytes]:
    """The members of the set ``key``, as bytes; none if it is not a set."""
    if key_type(connection, key) != "set":
        return []
    try:
        return list(connection.smembers(key))  # type: ignore[arg-type]
    except ResponseError as exc:
        if is_wrong_type(exc):  # replaced meanwhile
            return []
        raise


def page_of_members(
    connection: Redis, key: str, start: int, stop: int, *, descending: bool = False
) -> tuple[int, list[bytes]] | None:
    """How many ids the list or sorted set ``key`` holds, and those of a page.

    ``start`` and ``stop`` are 0-based positions, ``stop`` excluded, counted
    from the end when ``descending`` (the page then comes newest first).
    A missing key holds none; a key of another type gives None.
    """
    kind = key_type(connection, key)
    if kind == "none":
        return 0, []
    if kind not in ("list", "zset"):
        return None
    try:
        if kind == "list":
            total = int(connection.llen(key))
        else:
            total = int(connection.zcard(key))
        first, last = start, stop - 1
        if descending:
            first, last = total - stop, total - start - 1
        first = max(first, 0)
        if last < first:
            return total, []
        if kind == "list":
            ids: list[bytes] = connection.lrange(key, first, last)  # type: ignore[assignment]
        else:
            ids = connection.zrange(key, first, last)  # type: ignore[assignment]
    except ResponseError as exc:
        if is_wrong_type(exc):  # replaced meanwhile
            return None
        raise
    return total, ids[::-1] if descending else ids
