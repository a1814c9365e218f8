"""``async def`` handlers: running coroutines from the synchronous code around them.

Publishing, the outbox and RQ's workers are synchronous; a handler may be an
``async def``. Two ways to run one:

:func:`run_to_completion`
    Runs a coroutine to its end in the calling thread, on an event loop the
    thread keeps, and returns its result: a sync subscriber's coroutine, and
    an async subscriber's when its job runs in a thread of its own.

:class:`HandlerLoop`
    One event loop in a thread of its own, on which a worker starts many
    coroutines and goes on taking jobs while they wait: back-pressure,
    timeouts and a clean shutdown included.

Both run a coroutine in a copy of the caller's :mod:`contextvars` context, as
:func:`asyncio.run` and :func:`asyncio.to_thread` do, so that it sees what the
caller set: Flask's app context, a broker override, the envelope being
handled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

__all__ = [
    "HandlerLoop",
    "is_coroutine_function",
    "run_if_awaitable",
    "run_to_completion",
]

T = TypeVar("T")


def is_coroutine_function(fn: object) -> bool:
    """Whether calling ``fn`` makes a coroutine, as far as can be told unrun.

    True for ``async def`` functions and methods, :func:`functools.partial`
    objects of them, objects whose ``__call__`` is ``async def``, and
    decorators' wrappers that keep the original in ``__wrapped__`` (as
    :func:`functools.wraps` does). A plain function that returns a coroutine
    cannot be told from its signature: it gives False.
    """
    for _ in range(100):  # a bound, not a depth any real wrapper reaches
        if inspect.iscoroutinefunction(fn):
            return True
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__wrapped__"):
            # A wrapper that is not async itself may still return the
            # wrapped coroutine; one that is would have answered above.
            fn = fn.__wrapped__
        elif not inspect.isroutine(fn) and not isinstance(fn, type) and callable(fn):
            fn = type(fn).__call__  # a callable object
        else:
            return False
    return False


# --------------------------------------------------------------------------
# One coroutine at a time, in the calling thread.


class _ThreadRunner:
    """The :class:`asyncio.Runner` of one thread, closed when the thread ends."""

    def __init__(self) -> None:
        # No set_event_loop: the thread's "current" loop stays what it was,
        # so code that asks for it does not find an idle loop of ours.
        self.runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self.pid = os.getpid()

    def run(self, coro: Coroutine[Any, Any, T], context: contextvars.Context) -> T:
        try:
            return self.runner.run(coro, context=context)
        finally:
            _cancel_leftovers(self.runner.get_loop())

    def __del__(self) -> None:
        # Runs as the thread's locals are dropped, when it ends. Only close
        # the loop: running it there is not worth the risk, and nothing is
        # left on it (see _cancel_leftovers).
        try:
            if self.pid == os.getpid():
                self.runner.get_loop().close()
        except Exception:  # a closed runner; the interpreter shutting down
            pass


def _cancel_leftovers(
    loop: asyncio.AbstractEventLoop, timeout: float | None = None
) -> None:
    """Cancel the tasks a coroutine started and left, as :func:`asyncio.run` does.

    Otherwise they would sit on a loop that only runs again at this
    thread's next coroutine, if ever.

    :param timeout: seconds to wait for them to end; ``None``: no limit.
    """
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    done, _ = loop.run_until_complete(asyncio.wait(leftovers, timeout=timeout))
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio logs nothing about it


_local = threading.local()
#: Runners a forked child inherited: never used, and never closed either,
#: since closing one would unregister its file descriptors from the epoll
#: instance the parent shares with the child.
_inherited: list[object] = []


def _forget_runners() -> None:
    global _local
    _inherited.append(_local)
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_runners)


def run_to_completion(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to its end from synchronous code; return its result.

    It runs in the calling thread, on an event loop the thread keeps for its
    next calls, in a copy of the caller's :mod:`contextvars` context (so it
    sees Flask's app context, a broker override, the envelope being
    handled). Tasks it starts and leaves behind are cancelled when it
    returns, as :func:`asyncio.run` does. When the calling thread is itself
    running an event loop (synchronous code called from a coroutine), it
    runs on a new thread with a loop of its own, and the caller waits:
    that loop, and every coroutine on it, stands still meanwhile.

    :raises: whatever the awaitable raises, unchanged.
    """
    coro: Coroutine[Any, Any, T] = (
        cast("Coroutine[Any, Any, T]", awaitable)
        if inspect.iscoroutine(awaitable)
        else _await(awaitable)
    )
    context = contextvars.copy_context()
    # _get_running_loop() is asyncio's public, non-raising probe.
    if asyncio._get_running_loop() is not None:
        return _run_in_new_thread(coro, context)
    runner: _ThreadRunner | None = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = _ThreadRunner()
    return runner.run(coro, context)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _run_in_new_thread(coro: Coroutine[Any, Any, T], context: contextvars.Context) -> T:
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
                results.append(runner.run(coro, context=context))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="flask-messaging-run-to-completion")
    thread.start()
    thread.join()
    if results:
        return results[0]
    try:
        raise errors[0]
    finally:
        errors.clear()  # no reference cycle through the traceback


def run_if_awaitable(value: object) -> None:
    """Run ``value`` to completion if it is awaitable; ignore anything else.

    What a handler returned: a coroutine (``async def``, or a plain function
    returning one) is run; any other value, generators included, is not
    looked at, as before handlers could be coroutines.
    """
    if inspect.isawaitable(value):
        run_to_completion(value)


# --------------------------------------------------------------------------
# Many coroutines at once, on the loop of a worker.

#: Every HandlerLoop alive, so that a forked child can disown them.
_loops: weakref.WeakSet[HandlerLoop] = weakref.WeakSet()


def _disown_loops() -> None:
    for loop in list(_loops):
        loop._forked = True
        _inherited.append(loop)  # its loop must never be closed in the child


os.register_at_fork(after_in_child=_disown_loops)


class HandlerLoop:
    """An asyncio event loop in a daemon thread, running coroutines handed to it.

    A worker hands each ``async def`` handler to :meth:`submit` and goes on
    taking jobs while it waits on I/O; at most ``limit`` coroutines are in
    flight at once. The thread, named ``flask-messaging-asyncio``, starts
    here, in ``__init__``.

    Everything a coroutine does between two ``await``\\ s holds up every
    other coroutine of the loop: a blocking call (``time.sleep``, a
    synchronous HTTP client, a database query through SQLAlchemy) should be
    awaited through :func:`asyncio.to_thread`, or kept short.

    A HandlerLoop belongs to the process that made it: in a child forked
    after it was made the thread does not exist, and :meth:`submit` raises
    :class:`RuntimeError`. A forking worker makes its loop after the fork.

    :param limit: the most coroutines in flight at once (>= 1); :meth:`submit`
        waits for a free place.
    :raises ValueError: ``limit`` is not a positive integer.
    """

    def __init__(self, limit: int) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(
                f"HandlerLoop limit must be an integer >= 1, not {limit!r}."
            )
        #: The most coroutines in flight at once.
        self.limit = limit
        self._slots = threading.Semaphore(limit)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._running: dict[concurrent.futures.Future[Any], asyncio.Task[Any] | None]
        self._running = {}
        self._closed = False
        self._forked = False
        #: Seconds the loop waits, as it stops, for the tasks left behind.
        self._stop_timeout: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="flask-messaging-asyncio", daemon=True
        )
        self._thread.start()
        _loops.add(self)

    @property
    def in_flight(self) -> int:
        """Coroutines submitted and not finished yet."""
        return len(self._running)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the loop died): submit raises."""
        return self._closed

    def submit(
        self,
        make: Callable[[], Awaitable[T]],
        *,
        timeout: float | None = None,
        context: contextvars.Context | None = None,
    ) -> concurrent.futures.Future[T]:
        """Run ``make()`` on the loop; return a future of its result.

        Waits, when ``limit`` coroutines are in flight, for one to finish.
        ``make`` is called on the loop's thread, inside the new task, so
        the coroutine is made and run in ``context``.

        :param make: called with no argument, returns the awaitable to run
            (an ``async def`` function's ``functools.partial``, say).
        :param timeout: seconds the coroutine may run; at the deadline it is
            cancelled, and the future raises :class:`TimeoutError`. ``None``:
            no limit.
        :param context: the :mod:`contextvars` context the task runs in;
            default: a copy of the caller's.
        :return: a :class:`concurrent.futures.Future` that gives what the
            coroutine returned, raises what it raised, or is cancelled when
            the coroutine was (by :meth:`close`, say). Cancelling the future
            cancels the coroutine.
        :raises RuntimeError: the loop was closed, made in another process,
            or is full and this call comes from one of its own coroutines
            (waiting there would stop the loop for good).
        :raises ValueError: ``timeout`` is not positive.
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(
                "timeout must be a positive number of seconds or None,"
                f" not {timeout!r}."
            )
        self._check_open()
        if threading.current_thread() is self._thread:
            if not self._slots.acquire(blocking=False):
                raise RuntimeError(
                    f"HandlerLoop is full ({self.limit} coroutines in flight) and"
                    " submit() was called from one of them: waiting would stop the"
                    " loop for good. Await the work directly instead."
                )
        else:
            self._slots.acquire()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                self._slots.release()
                self._check_open()
            self._running[future] = None
        if context is None:
            context = contextvars.copy_context()
        self._loop.call_soon_threadsafe(self._start, make, timeout, context, future)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Let the coroutines in flight finish, then stop the loop and its thread.

        :meth:`submit` raises from the moment ``close`` is called. Called
        again while a first call waits (a second signal interrupted it),
        with a ``timeout``: cancels what runs and stops within that time;
        without one, waits for the loop's thread.

        :param timeout: seconds to wait for coroutines in flight; those still
            running then are cancelled (their futures too), and waited for
            as long again. ``None``: wait as long as they take.
        :raises RuntimeError: called from one of the loop's own coroutines.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "HandlerLoop.close() was called from one of its own coroutines:"
                " it would wait for itself. Close it from another thread."
            )
        with self._lock:
            already, self._closed = self._closed, True
        if self._forked:
            return
        if already:
            if timeout is None:
                self._thread.join()
            else:
                # A close interrupted while it waited (a second signal during
                # a warm shutdown): stop now, within ``timeout``.
                self._cancel_and_stop(timeout)
                self._thread.join(timeout + 1)
            return
        with self._lock:
            finished = self._settled.wait_for(lambda: not self._running, timeout)
        if finished:
            self._stop_timeout = timeout
            self._call_soon(self._loop.stop)
        else:
            self._cancel_and_stop(timeout)
        self._thread.join()

    def _call_soon(self, callback: Callable[[], object]) -> None:
        # A second close (see close) may have stopped and closed the loop
        # while this one waited: then there is nothing left to do there.
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass

    def _cancel_and_stop(self, timeout: float | None) -> None:
        """Cancel the coroutines in flight, wait ``timeout`` for them, stop the loop."""
        self._call_soon(self._cancel_all)
        with self._lock:
            self._settled.wait_for(lambda: not self._running, timeout)
        # Those that ignore cancellation are left with the loop, and their
        # callers told, not left waiting.
        self._give_up()
        self._stop_timeout = timeout
        self._call_soon(self._loop.stop)

    # -- on the loop's thread ------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop
        try:
            loop.run_forever()
        finally:
            try:
                # Tasks the handlers started and left (fire and forget) end
                # with the loop, as asyncio.run ends them.
                _cancel_leftovers(loop, self._stop_timeout)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                # Only when the loop died of an exception (KeyboardInterrupt
                # or SystemExit out of a coroutine) is anything left here.
                self._closed = True
                self._give_up()

    def _start(
        self,
        make: Callable[[], Awaitable[T]],
        timeout: float | None,
        context: contextvars.Context,
        future: concurrent.futures.Future[T],
    ) -> None:
        if future.cancelled():  # by its caller, before it started
            self._release(future)
            return
        task = self._loop.create_task(_run(make, timeout), context=context)
        with self._lock:
            self._running[future] = task
        task.add_done_callback(functools.partial(self._settle, future))
        future.add_done_callback(functools.partial(self._cancel_task, task))

    def _settle(
        self, future: concurrent.futures.Future[T], task: asyncio.Task[T]
    ) -> None:
        try:
            if task.cancelled():
                future.cancel()
            elif future.set_running_or_notify_cancel():
                error = task.exception()
                if error is None:
                    future.set_result(task.result())
                else:
                    future.set_exception(error)
        finally:
            self._release(future)

    def _cancel_task(
        self, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]
    ) -> None:
        if future.cancelled() and not task.done():
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the task ended with it
                pass

    def _cancel_all(self) -> None:
        with self._lock:
            tasks = [task for task in self._running.values() if task is not None]
        for task in tasks:
            task.cancel()

    def _give_up(self) -> None:
        """Cancel the futures of coroutines still in flight and free their places."""
        with self._lock:
            futures = list(self._running)
        for future in futures:
            future.cancel()
            self._release(future)

    def _release(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if future not in self._running:
                return  # released already (close gave up on it)
            del self._running[future]
            self._settled.notify_all()
        self._slots.release()

    def _check_open(self) -> None:
        if self._forked:
            raise RuntimeError(
                "This HandlerLoop was made in the parent process, before a fork:"
                " its thread does not run here. Make a HandlerLoop in the child."
            )
        if self._closed:
            raise RuntimeError(
                "This HandlerLoop is closed: no coroutine can be submitted to it"
                " any more. Make a new HandlerLoop."
            )


async def _run(make: Callable[[], Awaitable[T]], timeout: float | None) -> T:
    async with asyncio.timeout(timeout):
        try:
            return await make()
        except (SystemExit, KeyboardInterrupt) as exc:
            # Out of a task, asyncio raises these out of the loop itself,
            # which would stop it for every later coroutine: fail this one.
            raise RuntimeError(
                f"The handler raised {type(exc).__name__}{exc.args!r}"
            ) from exc
