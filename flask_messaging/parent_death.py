"""A child process that stops, warm, when the process that started it dies.

A worker process of ``--processes N`` whose parent is killed outright
(``kill -9``, the OOM killer) would otherwise run on as an orphan: it takes
jobs and looks healthy in ``flask messaging status`` while the outbox relay,
a thread of the parent, is gone and nobody replaces a worker that dies. The
scheduler process RQ forks beside each worker would likewise keep renewing
its locks after its worker died, so that no other worker could take over
scheduling. :func:`stop_with_parent` makes such a child send itself SIGTERM,
the warm shutdown of RQ's workers and schedulers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

__all__ = ["POLL_INTERVAL", "stop_with_parent"]

#: Seconds between two looks at the parent, where Linux's prctl is missing.
POLL_INTERVAL = 1.0

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent(parent_pid: int) -> None:
    """Have SIGTERM sent to this process once ``parent_pid`` has ended.

    Call it first thing in a forked child, with the pid its parent had
    before the fork. On Linux the kernel sends the signal
    (``prctl(PR_SET_PDEATHSIG, SIGTERM)``); elsewhere a daemon thread looks
    at :func:`os.getppid` every :data:`POLL_INTERVAL` seconds. A parent that
    died before the call is noticed at once: the signal is sent now.
    """
    if not _kernel_signals_death():
        threading.Thread(
            target=_watch, args=(parent_pid,), name="parent-watch", daemon=True
        ).start()
    # The parent may have died between the fork and the prctl: the kernel
    # would then never signal, but the child has been re-parented already.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _kernel_signals_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_INTERVAL):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return
