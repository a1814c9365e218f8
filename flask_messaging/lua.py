"""Lua scripts run on the Redis server, by hash once the server knows them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["LuaScript"]


class LuaScript:
    """A script sent by EVALSHA, and loaded when the server does not know it.

    redis-py's ``Script`` does the same but is bound to a client when built;
    these are built before any client exists (at import, or when a job
    template is recorded) and run on whichever connection is at hand.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(
        self, connection: Redis, keys: Sequence[str], args: Sequence[Any] = ()
    ) -> Any:
        """Run the script once; return its reply."""
        try:
            return connection.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted or flushed server: nothing ran; load and run again.
            connection.script_load(self.source)
            return connection.evalsha(self.sha, len(keys), *keys, *args)
