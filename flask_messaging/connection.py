"""Redis connections, including the embedded ``memory://`` stand-in."""

from __future__ import annotations

from redis import Redis

from .redaction import redact_url

__all__ = ["MEMORY_URL", "connect", "is_memory_url"]

#: ``MESSAGING_REDIS_URL`` for an in-process Redis stand-in (fakeredis) with a
#: worker thread: the whole async path without a Redis server.
MEMORY_URL = "memory://"


def is_memory_url(url: str) -> bool:
    return url.startswith(MEMORY_URL)


def connect(url: str) -> Redis:
    """A Redis client for ``url``; ``memory://`` gives a new in-process server."""
    if is_memory_url(url):
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        return Redis.from_url(url)
    except ValueError:
        # Not chained, and the parser's words left out: a password with an
        # unencoded "/" or "#" makes it quote a piece of that password.
        raise ValueError(
            f"MESSAGING_REDIS_URL {redact_url(url)!r} is not a Redis URL that can be"
            " parsed; use 'redis://[[user]:password@]host:6379/0', 'rediss://…',"
            " 'unix://…' or 'memory://', with any '/', '@', ':' or '#' in the user"
            " name or password percent-encoded."
        ) from None
