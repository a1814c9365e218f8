"""The parent process of ``flask messaging worker --processes N``."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

from . import stop_signals
from .restart_pause import RestartPause

__all__ = ["Supervisor"]

logger = logging.getLogger("flask_messaging")


class Supervisor:
    """The parent of ``--processes N``: one worker process per slot.

    A child that ends without being asked to (a handler that kills its own
    process or calls ``os._exit``, the interpreter crashing) is reaped and
    replaced after the pause of
    :class:`~flask_messaging.worker.RestartPause`, per slot, as
    :func:`~flask_messaging.worker.run_workers` replaces a worker that stops
    unasked. A burst or
    ``max_jobs`` child that exits with status 0 has ended its run; one
    killed by a signal is replaced, to finish the run; one that exits with
    an error ends its slot with that status.

    The status of :meth:`wait` never hides a child killed by a signal: it is
    128 + the signal's number (as shells report it) for a child killed while
    the pool stops, or whose replacement had not started yet.

    Each stop signal the parent receives reaches every child once, the
    second one too (a cold shutdown): :meth:`forward` only notes it, and
    :meth:`wait` passes it on between spawns, so a child being forked as
    the signal arrives gets it as well. A child starts with the stop
    signals held (:mod:`~flask_messaging.stop_signals`) and must release
    them once its handlers are in place.
    """

    def __init__(
        self,
        make: Callable[[int], multiprocessing.process.BaseProcess],
        ends_on_its_own: bool,
    ) -> None:
        self._make = make
        self._ends_on_its_own = ends_on_its_own
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._started_at: dict[int, float] = {}
        self._due: dict[int, float] = {}
        self._pauses: dict[int, RestartPause] = {}
        self._codes: dict[int, int] = {}
        self._stopping = False
        #: Stop signals received and not yet passed on, in order.
        self._signals: list[int] = []
        # Written to by forward() to end the wait for children at once.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def start(self, processes: int) -> None:
        for slot in range(processes):
            self._pauses[slot] = RestartPause()
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._codes.pop(slot, None)  # the replaced child's; the new one's counts
        child = self._make(slot)
        with stop_signals.held_for_fork():
            child.start()
        self._children[slot] = child
        self._started_at[slot] = time.monotonic()

    def forward(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: pass SIGTERM or SIGINT on to every child (in
        :meth:`wait`); replace none from now on."""
        self._stopping = True
        self._signals.append(signum)
        if self._wake_write < 0:
            return  # wait() has returned: no child left to pass it on to
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _pass_on_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            for child in list(self._children.values()):
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signum)

    def wait(self) -> int:
        """Supervise until every slot has ended; return the highest status."""
        try:
            return self._supervise()
        finally:
            wake_write, self._wake_write = self._wake_write, -1
            os.close(wake_write)
            os.close(self._wake_read)

    def _supervise(self) -> int:
        while self._children or self._due:
            self._pass_on_signals()
            if self._stopping:
                self._due.clear()
            timeout = 1.0
            if self._due:
                timeout = min(
                    timeout, max(0.0, min(self._due.values()) - time.monotonic())
                )
            waited: list[int] = [self._wake_read]
            waited += [child.sentinel for child in self._children.values()]
            if self._wake_read in multiprocessing.connection.wait(waited, timeout):
                os.read(self._wake_read, 512)
            for slot, child in list(self._children.items()):
                if child.exitcode is None:
                    continue
                child.join()  # reaped: no zombie
                del self._children[slot]
                self._ended(slot, child.exitcode)
                _stop_group(child.pid)
            now = time.monotonic()
            for slot, at in list(self._due.items()):
                if now >= at and not self._stopping:
                    del self._due[slot]
                    self._spawn(slot)
        return max(self._codes.values(), default=0)

    def _ended(self, slot: int, code: int) -> None:
        killed = code < 0
        # multiprocessing gives -N for a signal: max() with 0 would hide it.
        self._codes[slot] = 128 - code if killed else code
        if self._stopping or (self._ends_on_its_own and not killed):
            return
        pause = self._pauses[slot].after_run(time.monotonic() - self._started_at[slot])
        logger.error(
            "Worker process %d ended unasked (%s); a new one starts in %.0f s.",
            slot,
            f"killed by signal {-code}" if killed else f"exit status {code}",
            pause,
        )
        self._due[slot] = time.monotonic() + pause


def _stop_group(pid: int | None) -> None:
    """SIGTERM what is left of a worker process's group once it has ended.

    A worker killed outright leaves its scheduler process (and a work horse)
    running, holding the scheduler's locks: a replacement could not
    schedule. Each child leads a group of its own.
    """
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left
