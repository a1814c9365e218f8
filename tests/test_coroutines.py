"""Running coroutines from synchronous code: one to its end, or many on a loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import gc
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flask_messaging.coroutines import (
    HandlerLoop,
    is_coroutine_function,
    run_if_awaitable,
    run_to_completion,
)

caller_value: contextvars.ContextVar[str] = contextvars.ContextVar(
    "tests_caller_value", default="unset"
)


# --------------------------------------------------------------------------
# is_coroutine_function


async def async_function(event: object) -> None:
    pass


def plain_function(event: object) -> None:
    pass


class AsyncCallable:
    async def __call__(self, event: object) -> None:
        pass

    async def method(self, event: object) -> None:
        pass


class PlainCallable:
    def __call__(self, event: object) -> None:
        pass


def keeps_wrapped(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        return func(*args)  # returns the coroutine, not awaited here

    return wrapper


@pytest.mark.parametrize(
    "handler",
    [
        async_function,
        AsyncCallable().method,
        functools.partial(async_function),
        AsyncCallable(),
        keeps_wrapped(async_function),
        functools.partial(keeps_wrapped(AsyncCallable())),
    ],
    ids=["function", "method", "partial", "callable", "wrapper", "partial-wrapper"],
)
def test_async_def_handlers_in_every_shape_are_told_apart(handler: object) -> None:
    assert is_coroutine_function(handler)


@pytest.mark.parametrize(
    "handler",
    [
        plain_function,
        PlainCallable(),
        functools.partial(plain_function),
        keeps_wrapped(plain_function),
        print,
        AsyncCallable,  # calling the class makes an instance, not a coroutine
        lambda event: async_function(event),  # cannot be told unrun
    ],
    ids=["function", "callable", "partial", "wrapper", "builtin", "class", "lambda"],
)
def test_plain_handlers_are_not_coroutine_functions(handler: object) -> None:
    assert not is_coroutine_function(handler)


# --------------------------------------------------------------------------
# run_to_completion


async def describe() -> tuple[str, str, int]:
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    return caller_value.get(), threading.current_thread().name, id(loop)


def test_runs_in_the_calling_thread_on_a_loop_it_keeps_seeing_the_callers_context() -> (
    None
):
    token = caller_value.set("the caller's")
    try:
        first = run_to_completion(describe())
        second = run_to_completion(describe())
    finally:
        caller_value.reset(token)
    assert first[:2] == ("the caller's", threading.current_thread().name)
    assert first[2] == second[2]  # one loop per thread, not one per call


def test_what_the_coroutine_sets_stays_in_its_copy_of_the_context() -> None:
    async def set_value() -> None:
        caller_value.set("inside")

    run_to_completion(set_value())
    assert caller_value.get() == "unset"


def test_its_exception_reaches_the_caller_unchanged() -> None:
    error = ValueError("the handler's own")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    with pytest.raises(ValueError) as info:
        run_to_completion(fail())
    assert info.value is error


def test_awaitables_that_are_not_coroutines_are_run_too() -> None:
    class Ready:
        def __await__(self) -> Iterator[None]:
            yield from asyncio.sleep(0).__await__()
            return None

    assert run_to_completion(Ready()) is None


def test_tasks_left_behind_are_cancelled_as_asyncio_run_does() -> None:
    ended: list[str] = []

    async def background() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def fire_and_forget() -> asyncio.Task[None]:
        task = asyncio.create_task(background())
        await asyncio.sleep(0)
        return task

    task = run_to_completion(fire_and_forget())
    assert task.cancelled() and ended == ["cancelled"]


def test_inside_a_running_loop_it_runs_on_a_thread_of_its_own() -> None:
    async def caller() -> tuple[str, str, int]:
        caller_value.set("set by a coroutine")
        # Synchronous code called from a coroutine: publish(), say.
        return run_to_completion(describe())

    value, thread, _ = asyncio.run(caller())
    assert value == "set by a coroutine"
    assert thread == "flask-messaging-run-to-completion"


def test_inside_a_running_loop_its_exception_reaches_the_caller_unchanged() -> None:
    error = KeyError("inner")

    async def fail() -> None:
        raise error

    async def caller() -> None:
        run_to_completion(fail())

    with pytest.raises(KeyError) as info:
        asyncio.run(caller())
    assert info.value is error


def test_a_thread_that_ends_closes_its_loop(recwarn: pytest.WarningsRecorder) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def keep_loop() -> None:
        loops.append(asyncio.get_running_loop())

    thread = threading.Thread(target=lambda: run_to_completion(keep_loop()))
    thread.start()
    thread.join()
    gc.collect()
    (loop,) = loops
    assert loop.is_closed()
    # No "unclosed event loop" ResourceWarning from the dropped runner.
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


def test_run_if_awaitable_runs_coroutines_and_ignores_other_values() -> None:
    ran: list[str] = []

    async def coroutine() -> None:
        ran.append("coroutine")

    def generator() -> Iterator[None]:
        ran.append("generator")
        yield

    run_if_awaitable(coroutine())
    run_if_awaitable(generator())  # not run: a handler's odd return value
    run_if_awaitable("a value")
    assert ran == ["coroutine"]


# --------------------------------------------------------------------------
# HandlerLoop


@pytest.fixture
def make_loop() -> Iterator[Callable[[int], HandlerLoop]]:
    loops: list[HandlerLoop] = []

    def make(limit: int) -> HandlerLoop:
        loops.append(HandlerLoop(limit))
        return loops[-1]

    yield make
    for loop in loops:
        loop.close(timeout=5)


class InFlight:
    """Counts the coroutines running at once, on the loop's thread."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.started = 0

    async def sleep(self, seconds: float) -> None:
        self.now += 1
        self.started += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1

    async def wait_for(self, event: asyncio.Event) -> None:
        self.now += 1
        self.started += 1
        self.most = max(self.most, self.now)
        try:
            await event.wait()
        finally:
            self.now -= 1

    async def wait_until(self, gate: threading.Event) -> None:
        self.now += 1
        self.started += 1
        self.most = max(self.most, self.now)
        try:
            while not gate.is_set():
                await asyncio.sleep(0.005)
        finally:
            self.now -= 1


def test_many_coroutines_are_in_flight_at_once(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(50)
    counter = InFlight()
    futures = [loop.submit(lambda: counter.sleep(0.05)) for _ in range(50)]
    assert [f.result(timeout=30) for f in futures] == [None] * 50
    # Not one after another (test below: all 50 at once).
    assert counter.most > 1
    assert loop.in_flight == 0


def test_all_of_them_wait_together_when_each_waits_for_the_last() -> None:
    loop = HandlerLoop(50)
    try:
        counter = InFlight()
        everyone = asyncio.Event()

        async def meet() -> None:
            if counter.started == 49:
                everyone.set()
            await counter.wait_for(everyone)  # only ends once all 50 run

        futures = [loop.submit(meet) for _ in range(50)]
        for future in futures:
            future.result(timeout=30)
        assert counter.most == 50
    finally:
        loop.close(timeout=1)


def test_submit_waits_while_limit_coroutines_are_in_flight(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(3)
    counter = InFlight()
    gate = threading.Event()
    submitted: list[concurrent.futures.Future[None]] = []

    def submit_ten() -> None:
        for _ in range(10):
            submitted.append(loop.submit(lambda: counter.wait_until(gate)))

    submitter = threading.Thread(target=submit_ten)
    submitter.start()
    deadline = time.monotonic() + 30
    while counter.started < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    submitter.join(0.2)
    # Three in flight, the fourth submit() still waiting for a place.
    assert submitter.is_alive()
    assert len(submitted) == 3 and loop.in_flight == 3
    gate.set()
    submitter.join(30)
    for future in submitted:
        future.result(timeout=30)
    assert len(submitted) == 10
    assert counter.most == 3


def test_a_coroutine_past_its_timeout_is_cancelled_and_its_future_raises(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(5)
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    future = loop.submit(slow, timeout=0.05)
    with pytest.raises(TimeoutError):
        future.result(timeout=30)
    assert seen == ["cancelled"]
    assert loop.in_flight == 0


def test_the_futures_carry_results_and_the_coroutines_own_exceptions(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(5)
    error = LookupError("from the coroutine")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    async def answer() -> int:
        return 42

    assert loop.submit(answer).result(timeout=30) == 42
    assert loop.submit(fail).exception(timeout=30) is error


def test_coroutines_run_on_the_loops_thread_in_the_callers_context(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(5)
    token = caller_value.set("submitted with")
    try:
        value, thread, _ = loop.submit(describe).result(timeout=30)
        given = contextvars.Context()
        other, _, _ = loop.submit(describe, context=given).result(timeout=30)
    finally:
        caller_value.reset(token)
    assert (value, thread) == ("submitted with", "flask-messaging-asyncio")
    assert other == "unset"


def test_cancelling_a_future_cancels_its_coroutine(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(5)
    started, ended = threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            ended.set()

    future = loop.submit(slow)
    assert started.wait(30)
    assert future.cancel()
    assert ended.wait(30)


def test_close_waits_for_coroutines_in_flight_then_refuses_more() -> None:
    loop = HandlerLoop(5)
    finished: list[str] = []

    async def work() -> None:
        await asyncio.sleep(0.1)
        finished.append("done")

    futures = [loop.submit(work) for _ in range(3)]
    loop.close()
    assert finished == ["done"] * 3
    assert all(f.done() and f.exception() is None for f in futures)
    assert not any(t.name == "flask-messaging-asyncio" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="HandlerLoop is closed"):
        loop.submit(work)
    loop.close()  # again: nothing more to do


def test_close_with_a_timeout_cancels_what_is_still_running() -> None:
    loop = HandlerLoop(5)
    started, cleaned = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    future = loop.submit(forever)
    assert started.wait(30)
    loop.close(timeout=0.05)
    assert future.cancelled()
    assert cleaned.is_set()


def test_a_loop_from_before_a_fork_refuses_work_in_the_child() -> None:
    loop = HandlerLoop(2)
    try:
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:
            try:
                try:
                    loop.submit(describe)
                    answer = "accepted"
                except RuntimeError as exc:
                    answer = str(exc)
                loop.close()  # does not wait for a thread the child lacks
                os.write(write, answer.encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
        assert "made in the parent process, before a fork" in answer
        # The parent's loop works on.
        assert loop.submit(describe).result(timeout=30)[1] == "flask-messaging-asyncio"
    finally:
        loop.close()


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_limit_must_be_a_positive_integer(limit: Any) -> None:
    with pytest.raises(ValueError, match="HandlerLoop limit must be an integer >= 1"):
        HandlerLoop(limit)


def test_a_coroutine_of_a_full_loop_cannot_wait_for_a_place_on_it(
    make_loop: Callable[[int], HandlerLoop],
) -> None:
    loop = make_loop(1)

    async def nested() -> None:
        loop.submit(describe)

    with pytest.raises(RuntimeError, match="HandlerLoop is full"):
        loop.submit(nested).result(timeout=30)


def test_a_second_close_with_a_timeout_stops_a_close_that_waits() -> None:
    # A cold shutdown interrupts a warm one waiting in close(): the second
    # close cancels what runs and returns within its timeout.
    loop = HandlerLoop(2)
    future = loop.submit(lambda: asyncio.sleep(60))
    waiting = threading.Thread(target=loop.close, daemon=True)
    waiting.start()
    deadline = time.monotonic() + 10
    while not loop.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.close(timeout=0.5)
    assert future.cancelled()
    waiting.join(5)
    assert not waiting.is_alive()
