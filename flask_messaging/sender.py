"""The after-commit enqueue, off the committing thread (outbox on).

With the outbox on, a committed event is already safe in its outbox row,
written in the same transaction; writing its jobs to Redis after the commit
is only the fast path. Done by the committing thread, that write is a Redis
round trip and the building of every job, which cost as much as the
transaction itself. So each commit hands its messages to the app's
:class:`Sender` and returns: a daemon thread writes them, the messages of
every commit waiting at that moment in one ``enqueue_once`` call. When Redis
cannot take them, their rows are made due at once for the relay, as the
committing thread did before; what a crash leaves unsent is relayed after
``MESSAGING_RELAY_DELAY``, as before.

Each app's :class:`~flask_messaging.state.MessagingState` owns one sender per
process, made by the first commit that needs it (:func:`send_committed`):
no thread is started in a process that never commits with the outbox on. A
forked child makes its own (the parent's thread does not exist there, and its
lock may have been held at the fork). The process flushes its senders when it
exits, within :data:`EXIT_TIMEOUT` seconds; :func:`wait_for_sent` waits for
them on demand (tests, scripts).

With ``memory://`` the jobs are written by the committing thread, as before:
that Redis is in the process, so there is no round trip to take off it, only
work that a thread would do under the same interpreter lock.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence

from flask import Flask

from ._rq.enqueue import SCRIPT_BATCH
from .dispatch import Delivery
from .outbox import RELAYED_KEY, make_due
from .state import MessagingState, get_state

__all__ = [
    "EXIT_TIMEOUT",
    "MAX_UNSENT",
    "Sender",
    "send_committed",
    "send_now",
    "wait_for_sent",
]

logger = logging.getLogger("flask_messaging")

#: What one commit hands over: its message ids, each with its deliveries.
Messages = Sequence[tuple[str, Sequence[Delivery]]]

#: The most messages one ``enqueue_once`` call of a sender takes: one script
#: call's worth (a commit with more still goes whole, in script-sized parts).
MAX_MESSAGES_PER_SEND = SCRIPT_BATCH

#: Seconds a process that exits waits for its senders; messages still unsent
#: then are relayed from the outbox after ``MESSAGING_RELAY_DELAY``.
EXIT_TIMEOUT = 5.0

#: Messages a sender holds at most. Redis slow to answer (or hung: redis-py
#: waits as long as it takes) must not fill the memory: a commit that finds
#: this many waiting leaves its events to the relay, which takes them after
#: ``MESSAGING_RELAY_DELAY``. One commit with more is taken when the sender
#: holds nothing.
MAX_UNSENT = 10_000


def send_committed(state: MessagingState, messages: Messages) -> None:
    """Have the jobs of a commit's ``messages`` written, with the outbox on.

    Hands them to the app's sender thread and returns; with ``memory://``
    writes them at once (see the module's documentation). Never raises: what
    cannot be written is left to the relay (:func:`send_now`).
    """
    if state.is_embedded:
        send_now(state, messages)
    else:
        _sender_of(state).send(messages)


def send_now(state: MessagingState, messages: Messages) -> None:
    """Write the jobs of committed ``messages``, or leave them to the relay.

    Each message is enqueued once (``enqueue_once``: a relay that comes
    first or second enqueues nothing more) and listed for the relay to mark
    its row. When that fails (Redis down), a warning names the messages and
    their rows are made due, so that a relay takes them at once rather than
    after ``MESSAGING_RELAY_DELAY``. Never raises.
    """
    jobs = state.durable_jobs
    assert jobs is not None  # the outbox is written only for such a sink
    try:
        jobs.enqueue_once(messages, relayed_key=RELAYED_KEY)
    except Exception:
        logger.warning(
            "Could not enqueue %d committed message(s) (%s); they wait in the"
            " outbox for 'flask messaging relay' (or a worker's relay).",
            len(messages),
            ", ".join(m for m, _ in messages),
            exc_info=True,
        )
        _make_due(state, [m for m, _ in messages])


def _make_due(state: MessagingState, message_ids: list[str]) -> None:
    # Nobody else will enqueue these rows: a relay need not leave them to
    # this process for MESSAGING_RELAY_DELAY.
    try:
        # Flask-SQLAlchemy finds the app's engine through an app context,
        # which a sender thread does not have.
        with state.app.app_context():
            make_due(state, message_ids)
    except Exception:
        logger.warning(
            "Could not mark %d outbox row(s) due at once; a relay takes them"
            " after MESSAGING_RELAY_DELAY.",
            len(message_ids),
            exc_info=True,
        )


class Sender:
    """A daemon thread that writes the jobs of committed messages.

    :meth:`send` queues a commit's messages and returns. The thread takes
    every commit waiting (up to :data:`MAX_MESSAGES_PER_SEND` messages, and
    at least one commit) and writes them with one :func:`send_now`. Made by
    :func:`send_committed` for one app in one process; the thread starts
    with the first :meth:`send`.
    """

    def __init__(self, state: MessagingState) -> None:
        #: The process this sender belongs to: in a forked child it is dead.
        self.pid = os.getpid()
        self._state = state
        lock = threading.Lock()
        # Two conditions on one lock: a commit wakes the thread, never a
        # waiter of wait(); the thread's progress wakes the waiters.
        self._work = threading.Condition(lock)
        self._progress = threading.Condition(lock)
        self._queue: deque[Messages] = deque()
        #: Commits handed over, and commits sent (or left to the relay).
        self._handed = 0
        self._done = 0
        #: Messages handed over and not sent yet, those in hand included.
        self._unsent = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Commits are left to the relay (MAX_UNSENT messages wait).
        self._full = False

    def send(self, messages: Messages) -> None:
        """Queue a commit's messages for the thread; returns at once.

        Once the sender is closed (the process exits, the state is closed),
        writes them in the calling thread instead.
        """
        with self._work:
            if self._unsent and self._unsent + len(messages) > MAX_UNSENT:
                self._shed(messages)
                return
            if not self._closed:
                self._queue.append(messages)
                self._handed += 1
                self._unsent += len(messages)
                if self._thread is not None:
                    self._work.notify()
                    return
                if self._start():
                    return
                # No thread could start: the interpreter is shutting down.
                self._queue.pop()
                self._handed -= 1
                self._unsent -= len(messages)
                self._closed = True
        send_now(self._state, messages)

    def _shed(self, messages: Messages) -> None:
        """Leave a commit's messages to the relay: the sender is full."""
        if not self._full:  # once per stall, not once per commit
            self._full = True
            logger.warning(
                "%d committed message(s) wait for Redis (slow or unreachable?):"
                " the events of commits made meanwhile (%s first) are left to"
                " the relay, which enqueues them after MESSAGING_RELAY_DELAY.",
                self._unsent,
                ", ".join(m for m, _ in messages),
            )

    @property
    def handed(self) -> int:
        """How many commits were handed over to this sender so far."""
        return self._handed

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every commit handed over before this call is sent.

        Sent means written to Redis, or, where that failed, left to the
        relay (rows made due).

        :param timeout: seconds; None waits as long as it takes.
        :return: messages still unsent when the wait ended (0: all sent).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._work:
            target = self._handed
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._unsent
                self._progress.wait(remaining)
            return 0

    def close(self, timeout: float | None = None) -> int:
        """Send what was handed over, then stop the thread.

        Later :meth:`send` calls write in the calling thread.

        :param timeout: seconds to wait; None waits as long as it takes.
        :return: messages still unsent at the end of the wait (0: all sent);
            the thread goes on with them, as a daemon thread, while the
            process lives.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._work:
            self._closed = True
            self._work.notify()
            thread = self._thread
        left = self.wait(timeout)
        if thread is not None and not left:
            thread.join(None if deadline is None else deadline - time.monotonic())
        return left

    def _start(self) -> bool:
        """Start the thread (the lock is held); False if none can start."""
        thread = threading.Thread(
            target=self._run, name="flask-messaging-sender", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return False
        self._thread = thread
        _live.add(self)
        _flush_at_exit_once()
        return True

    def _run(self) -> None:
        while True:
            with self._work:
                while not self._queue:
                    if self._closed:
                        return
                    self._work.wait()
                batch = self._take()
            try:
                send_now(self._state, [m for commit in batch for m in commit])
            except Exception:
                # send_now logs what it cannot do; this is a bug of ours, and
                # the thread must live on for the commits that follow.
                logger.exception("The sender of committed messages failed.")
            finally:
                with self._work:
                    self._done += len(batch)
                    self._unsent -= sum(len(commit) for commit in batch)
                    if not self._unsent:
                        self._full = False
                    self._progress.notify_all()

    def _take(self) -> list[Messages]:
        """The commits waiting, up to MAX_MESSAGES_PER_SEND messages."""
        queue = self._queue
        batch = [queue.popleft()]
        count = len(batch[0])
        while queue and count + len(queue[0]) <= MAX_MESSAGES_PER_SEND:
            count += len(queue[0])
            batch.append(queue.popleft())
        return batch


def _sender_of(state: MessagingState) -> Sender:
    """The sender of ``state`` in this process, made on first use."""
    sender = state.sender
    pid = os.getpid()
    if isinstance(sender, Sender) and sender.pid == pid:
        return sender
    with _making:
        sender = state.sender
        if not isinstance(sender, Sender) or sender.pid != pid:
            # An inherited sender is never touched: its thread is not in
            # this process, and its lock may have been held at the fork.
            sender = Sender(state)
            state.sender = sender
        return sender


def wait_for_sent(timeout: float = 10.0, *, app: Flask | None = None) -> None:
    """Wait until the jobs of every event committed so far are written.

    With the outbox on, ``commit()`` returns before the jobs of its events
    exist: a sender thread writes them just after (see :mod:`this module
    <flask_messaging.sender>`). Call this where the jobs must exist: in a
    test before it runs a worker or looks at the queues, in a script
    before it stops Redis. Events whose jobs could not be written (Redis
    down) count as sent once their outbox rows are due for the relay.

    Returns at once where nothing is waiting: ``MESSAGING_ASYNC = False``,
    ``MESSAGING_OUTBOX = False`` or ``memory://``, whose commits write (or
    run) their jobs before they return.

    .. code-block:: python

        db.session.commit()
        wait_for_sent()
        assert len(Queue("default", connection=redis)) == 1

    :param timeout: seconds to wait, in all.
    :param app: wait for this app's commits only; by default those of every
        app of this process.
    :raises TimeoutError: commits were still unsent after ``timeout``; the
        message says how many messages, and their outbox rows are relayed
        after ``MESSAGING_RELAY_DELAY`` if they are never sent.
    """
    if app is None:
        senders = [s for s in list(_live) if s.pid == os.getpid()]
    else:
        sender = get_state(app).sender
        ours = isinstance(sender, Sender) and sender.pid == os.getpid()
        senders = [sender] if isinstance(sender, Sender) and ours else []
    deadline = time.monotonic() + timeout
    unsent = sum(s.wait(max(0.0, deadline - time.monotonic())) for s in senders)
    if unsent:
        raise TimeoutError(
            f"{unsent} committed message(s) still had no job after {timeout:g} s:"
            " Redis is slow or unreachable (their outbox rows are relayed after"
            " MESSAGING_RELAY_DELAY), or wait_for_sent(timeout=...) is too short."
        )


#: Senders whose thread started, for the flush at exit and wait_for_sent().
_live: weakref.WeakSet[Sender] = weakref.WeakSet()
_making = threading.Lock()
_registered_at_exit = False


def _flush_at_exit_once() -> None:
    global _registered_at_exit
    if _registered_at_exit:
        return
    _registered_at_exit = True
    # threading's own exit hooks run before the interpreter waits for its
    # threads, at the end of the main program and at the end of a
    # multiprocessing child (which ends with os._exit, past atexit's hooks);
    # concurrent.futures relies on them the same way.
    register = getattr(threading, "_register_atexit", atexit.register)
    try:
        register(_flush_at_exit)
    except RuntimeError:  # the interpreter is already shutting down
        atexit.register(_flush_at_exit)


def _flush_at_exit() -> None:
    """Close this process's senders, waiting EXIT_TIMEOUT seconds in all."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    for sender in [s for s in list(_live) if s.pid == os.getpid()]:
        left = sender.close(max(0.0, deadline - time.monotonic()))
        if left:
            logger.warning(
                "The process exits with %d committed message(s) not enqueued"
                " after %g s (Redis slow or unreachable?): a relay enqueues"
                " them from the outbox after MESSAGING_RELAY_DELAY (%g s).",
                left,
                EXIT_TIMEOUT,
                sender._state.settings.outbox.relay_delay,
            )


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at the fork.
    # (The exit hook, if registered, is inherited with the rest: it flushes
    # the senders of the process it runs in.)
    global _making
    _making = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
