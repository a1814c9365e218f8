"""The app the reliability tests put under faults.

``create_app()`` reads ``DATABASE_URL``, ``MESSAGING_REDIS_URL`` and
``HISTORY_REDIS_URL`` (where handlers record their runs: a Redis server the
tests never fault) from the environment, and ``FLASK_MESSAGING_*`` overrides,
so that worker and relay processes load the same app.

Every handler records each of its runs (:func:`observed`), before any
idempotency guard, so the history shows repeats even when the guard absorbs
them; the guarded effect is recorded separately.
"""

from __future__ import annotations

import functools
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from rq import Retry
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from flask_messaging import Message, Messaging
from flask_messaging.idempotency import DatabaseMarks, idempotent
from flask_messaging.transaction import register_event

from ..app_factory import build_app
from .history import History

db = SQLAlchemy()
messaging = Messaging()
#: Marks committed with the effects of :func:`apply_work`.
marks = DatabaseMarks(db, table="reliability_handled")

#: The one queue of these handlers (workers listen on the default queues too).
QUEUE = "reliability"
OUTBOX_TABLE = "reliability_outbox"

F = TypeVar("F", bound=Callable[..., Any])


class Published(db.Model):  # type: ignore[name-defined,misc]
    """One row per message, in the publishing transaction: what committed."""

    __tablename__ = "reliability_published"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)


class Effect(db.Model):  # type: ignore[name-defined,misc]
    """What :func:`apply_work` did; no unique key, so repeats would show."""

    __tablename__ = "reliability_effects"
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), index=True)


@dataclass(frozen=True)
class Work(Message, name="tests.reliability.work"):
    token: str


@dataclass(frozen=True)
class Hold(Message, name="tests.reliability.hold"):
    """Its handler notes its pid, and its first run holds for ``seconds``."""

    token: str
    seconds: float


@dataclass(frozen=True)
class Nap(Message, name="tests.reliability.nap"):
    """Its handler sleeps ``seconds`` and writes nothing to the app's Redis."""

    token: str
    seconds: float


@dataclass(frozen=True)
class Overrun(Message, name="tests.reliability.overrun"):
    """Its handler's first run takes ``seconds``, past its 1 s timeout.

    It sleeps in one call (in C, where no exception raised from another
    thread reaches it), or, with ``step``, in a Python loop of naps that long.
    """

    token: str
    seconds: float
    step: float = 0.0


@dataclass(frozen=True)
class Query(Message, name="tests.reliability.query"):
    """Its handler asks the database for ``n``, over and over, on every bind."""

    token: str
    n: int


@dataclass(frozen=True)
class Flaky(Message, name="tests.reliability.flaky"):
    """Its handler fails on the first run; the retry waits 2 s in RQ's scheduler."""

    token: str


#: The second bind of the app, with RELIABILITY_SECOND_BIND set.
SECOND_BIND = "second"

_history: History | None = None


def history() -> History:
    """This process's recorder, on ``HISTORY_REDIS_URL``."""
    global _history
    if _history is None:
        _history = History(Redis.from_url(os.environ["HISTORY_REDIS_URL"]))
    return _history


def observed(handler: F) -> F:
    """Record every run of ``handler``, as ``<name>:runs``, then call it."""

    @functools.wraps(handler)
    def wrapper(event: Any) -> Any:
        history().handled(f"{handler.__name__}:runs", event.token)
        return handler(event)

    return wrapper  # type: ignore[return-value]


@messaging.subscribe_async(queue_name=QUEUE)
@observed
@idempotent(store=marks)
def apply_work(event: Work) -> None:
    """Exactly once: its effect row commits with its idempotency mark."""
    db.session.add(Effect(token=event.token))


def sampled(token: str) -> bool:
    """One token in five, the same in every process."""
    return zlib.crc32(token.encode()) % 5 == 0


def is_sampled(event: Work) -> bool:
    return sampled(event.token)


@messaging.subscribe_async(queue_name=QUEUE, predicate=is_sampled)
@observed
@idempotent
def count_work(event: Work) -> None:
    """Once, best effort: Redis marks, its effect in the history's Redis.

    Subscribed to a sample of the messages, to keep runs short.
    """
    history().handled("count_work", event.token)


@messaging.subscribe_async(queue_name=QUEUE)
@observed
@idempotent
def hold(event: Hold) -> None:
    history().note(f"pid:{event.token}", str(os.getpid()))
    if history().runs("hold:runs").get(event.token) == 1:
        time.sleep(event.seconds)  # the first run waits there to be killed
    history().handled("hold", event.token)


@messaging.subscribe_async(queue_name=QUEUE, timeout=1)
@observed
@idempotent
def overrun(event: Overrun) -> None:
    history().note("overrun", str(os.getpid()))
    if history().runs("overrun:runs").get(event.token) == 1:
        try:  # stopped by the job timeout
            if event.step:
                until = time.monotonic() + event.seconds
                while time.monotonic() < until:
                    time.sleep(event.step)
            else:
                time.sleep(event.seconds)
        except BaseException as exc:
            history().note("overrun:stopped", type(exc).__name__)
            raise
        history().note("overrun:stopped", "never")
    history().handled("overrun", event.token)


@messaging.subscribe_async(queue_name=QUEUE)
@observed
def nap(event: Nap) -> None:
    history().note(f"pid:{event.token}", str(os.getpid()))
    time.sleep(event.seconds)
    history().handled("nap", event.token)


#: Queries per bind in one run of :func:`check_query`: past psycopg's
#: ``prepare_threshold`` (5), so the statement is prepared on the server.
QUERIES_PER_RUN = 8


@messaging.subscribe_async(queue_name=QUEUE)
@observed
def check_query(event: Query) -> None:
    """Notes any answer of the database that is not the one it asked for."""
    query = sa.text("SELECT CAST(:n AS integer)")
    engines = [db.engine, *(e for k, e in db.engines.items() if k is not None)]
    for engine in engines:
        for _ in range(QUERIES_PER_RUN):
            if engine is db.engine:
                answer = db.session.execute(query, {"n": event.n}).scalar_one()
            else:
                with engine.connect() as connection:
                    answer = connection.execute(query, {"n": event.n}).scalar_one()
                    connection.commit()
            if answer != event.n:
                history().note("check_query:wrong", f"asked {event.n}, got {answer}")
    db.session.commit()  # as a handler that writes does: statements stay prepared
    history().handled("check_query", event.token)


@messaging.subscribe_async(queue_name=QUEUE, retry=Retry(max=1, interval=2))
@observed
def flaky(event: Flaky) -> None:
    if history().runs("flaky:runs").get(event.token) == 1:
        raise RuntimeError("the first run fails, for RQ's scheduler to retry")
    history().handled("flaky", event.token)


def commit(
    messages: Sequence[Work | Hold | Nap | Overrun | Query | Flaky],
    *,
    rollback: bool = False,
) -> None:
    """One transaction: a row and an event per message; commit or roll back."""
    for message in messages:
        db.session.add(Published(token=message.token))
        register_event(message)
    if rollback:
        db.session.rollback()
    else:
        db.session.commit()


def crash_after_taking_a_job() -> None:
    """Fault injection: this worker process dies right after taking jobs.

    Before it records them as started: the moment a ``kill -9``, a lost
    machine or a Redis reply lost on its way back would strike. A worker of
    one thread has taken one job there; one of several threads, a job per
    free thread.
    """
    from flask_messaging._rq import lifecycle

    def die(worker: Any, taken: Any) -> None:
        history().note("crash:taken", str(len(taken)))
        os._exit(3)

    lifecycle.start = die  # type: ignore[assignment]


def create_app(**config: Any) -> Flask:
    defaults: dict[str, Any] = {
        "MESSAGING_OUTBOX_TABLE": OUTBOX_TABLE,
        "MESSAGING_RETRY": 5,
        "MESSAGING_RETRY_INTERVALS": [0],
        "MESSAGING_RELAY_DELAY": 1,
        "MESSAGING_RELAY_INTERVAL": 0.2,
    }
    if os.environ.get("RELIABILITY_SECOND_BIND"):
        defaults["SQLALCHEMY_BINDS"] = {
            SECOND_BIND: os.environ.get("DATABASE_URL", "sqlite://")
        }
    app = build_app("reliability_app", messaging, db, defaults=defaults, **config)
    if os.environ.get("RELIABILITY_FACTORY_TOUCHES_DATABASE"):
        # As many factories do: the pools now hold connections a fork inherits.
        with app.app_context():
            db.create_all()
            for engine in db.engines.values():
                with engine.connect() as connection:
                    connection.execute(sa.text("SELECT 1"))
    if os.environ.get("RELIABILITY_CRASH_AFTER_TAKING_A_JOB"):
        crash_after_taking_a_job()
    return app
