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

    Unlike redis-py's ``register_script``, calls can share one pipeline round
    trip (:meth:`run_all`), and a server restarted or flushed between two
    calls costs one reload, not an error.
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

    def run_all(
        self,
        connection: Redis,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    ) -> list[Any]:
        """Run the script once per (keys, args), in one pipeline round trip."""
        for attempt in range(2):
            pipe = connection.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            try:
                return pipe.execute()
            except NoScriptError:
                # Nothing ran (every call names the same unknown script): load
                # it and send them all again.
                if attempt:
                    raise
                connection.script_load(self.source)
        raise AssertionError("unreachable")
