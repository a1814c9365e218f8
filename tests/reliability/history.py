"""What was committed, what was handled, and the checker that compares them.

Jepsen's "total queue" check, for messages: every message a publisher
committed must be handled (else it is **lost**), nothing else may be handled
(else it is **unexpected**; **leaked** if its transaction rolled back), and a
handler promised to run once must not run twice (else it is **duplicated**).

Publishers and handlers run in several processes, so the history lives in a
Redis server the faults never touch (not the one a test restarts). Each
message carries a token of the test's own, unique per message; handlers count
every run per token, so a second run is seen even when it has no effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis import Redis

__all__ = ["History", "Report", "check"]


@dataclass(frozen=True)
class Report:
    """The outcome of a run, as the checker sees it."""

    committed: int
    #: Distinct messages handled at least once.
    handled: int
    #: Committed, never handled.
    lost: frozenset[str] = frozenset()
    #: Handled, never committed.
    unexpected: frozenset[str] = frozenset()
    #: Handled although their transaction rolled back (within ``unexpected``).
    leaked: frozenset[str] = frozenset()
    #: Handled more than once: token -> how many times.
    duplicated: Mapping[str, int] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        """Handler runs in all, repeats included."""
        return self.handled + sum(n - 1 for n in self.duplicated.values())

    def __str__(self) -> str:
        return (
            f"committed={self.committed} handled={self.handled} runs={self.runs}"
            f" lost={len(self.lost)} unexpected={len(self.unexpected)}"
            f" leaked={len(self.leaked)} duplicated={len(self.duplicated)}"
            + (f" e.g. lost {sorted(self.lost)[:3]}" if self.lost else "")
            + (
                f" e.g. unexpected {sorted(self.unexpected)[:3]}"
                if self.unexpected
                else ""
            )
        )


def check(
    committed: Iterable[str],
    handled: Mapping[str, int],
    rolled_back: Iterable[str] = (),
) -> Report:
    """Compare what was committed with what was handled.

    :param committed: the tokens of the messages whose transactions committed.
    :param handled: token -> how many times a handler ran for it.
    :param rolled_back: tokens of messages whose transactions rolled back.
    """
    committed = frozenset(committed)
    seen = frozenset(token for token, runs in handled.items() if runs > 0)
    unexpected = seen - committed
    return Report(
        committed=len(committed),
        handled=len(seen),
        lost=committed - seen,
        unexpected=unexpected,
        leaked=unexpected & frozenset(rolled_back),
        duplicated={t: n for t, n in handled.items() if n > 1},
    )


class History:
    """The history of a run, recorded in Redis by every process taking part.

    :param redis: a client of a server the test does not fault.
    :param prefix: the keys' prefix.
    """

    def __init__(self, redis: Redis, prefix: str = "history:") -> None:
        self.redis = redis
        self.prefix = prefix

    def committed(self, *tokens: str) -> None:
        """Record tokens whose transaction committed."""
        if tokens:
            self.redis.sadd(f"{self.prefix}committed", *tokens)

    def rolled_back(self, *tokens: str) -> None:
        """Record tokens whose transaction rolled back."""
        if tokens:
            self.redis.sadd(f"{self.prefix}rolled_back", *tokens)

    def handled(self, handler: str, token: str) -> int:
        """Record one run of ``handler`` for ``token``; return its runs so far."""
        return int(self.redis.hincrby(f"{self.prefix}handled:{handler}", token, 1))

    def note(self, topic: str, value: str) -> None:
        """Record a fact for the test to read (a pid, a phase)."""
        self.redis.rpush(f"{self.prefix}notes:{topic}", value)

    def notes(self, topic: str) -> list[str]:
        return [
            v.decode() for v in self.redis.lrange(f"{self.prefix}notes:{topic}", 0, -1)
        ]

    def committed_tokens(self) -> set[str]:
        return {t.decode() for t in self.redis.smembers(f"{self.prefix}committed")}

    def rolled_back_tokens(self) -> set[str]:
        return {t.decode() for t in self.redis.smembers(f"{self.prefix}rolled_back")}

    def runs(self, handler: str) -> dict[str, int]:
        """Token -> how many times ``handler`` ran for it."""
        counts = self.redis.hgetall(f"{self.prefix}handled:{handler}")
        return {token.decode(): int(n) for token, n in counts.items()}

    def check(self, handler: str, committed: Iterable[str] | None = None) -> Report:
        """Check ``handler``'s runs against the recorded (or given) commits."""
        return check(
            self.committed_tokens() if committed is None else committed,
            self.runs(handler),
            self.rolled_back_tokens(),
        )
