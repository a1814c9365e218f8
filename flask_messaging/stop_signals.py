"""Stop signals held across a fork, so that a forked child never loses one.

CPython forgets, in a forked child, a signal that reaches it before the
interpreter has reset its signal state after the fork (CPython issue 9535):
a SIGTERM sent to a child the moment it was forked is lost, and whoever
waits for that child to stop (the pool stopping, a worker joining its
scheduler process) waits for ever. A signal that is *blocked* stays pending
in the kernel instead. So the parent forks inside :func:`held_for_fork`,
the child inherits SIGTERM and SIGINT blocked, and it lets them through
with :func:`release` once its own handlers are in place: a stop sent in
between is delivered then, to the right handler.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "held_for_fork", "release"]

#: The signals that ask a worker, a scheduler or the pool to stop.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@contextmanager
def held_for_fork() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread inside the block.

    Fork inside it; the parent gets its previous mask back (and any stop
    that arrived meanwhile) as the block ends, the child must call
    :func:`release`.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def release() -> None:
    """Unblock :data:`STOP_SIGNALS` in a child forked by :func:`held_for_fork`.

    Call it once the child's own signal handlers are installed: a stop sent
    since the fork is handled by them at once.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
