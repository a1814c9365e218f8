"""What flask-messaging assumes of RQ's internals, checked on the installed RQ.

Every use of RQ is in ``flask_messaging/_rq/``, and much of it rests on
parts RQ does not promise to keep: methods overridden, private attributes
read, jobs written as RQ writes them. Should a newer RQ rename a method we
override, the override would silently stop being called and a guarantee
would be lost while every other test still passed. Each case here names one
assumption and where we rely on it; CI runs them on the newest tested RQ and
on rq 2.12 (the range is :data:`flask_messaging._rq.compat.TESTED_RQ`).

RQ's scheduler locks (their names, owner and time to live) are checked in
``tests/test_scheduling.py``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rq
from flask import Flask
from redis import Redis
from rq import Queue, Retry, SimpleWorker, Worker, worker_registration
from rq import registry as rq_registry
from rq import scheduler as rq_scheduler
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker
from rq_dashboard import web

from flask_messaging._rq.dashboard.pages import RQ_PAGES
from flask_messaging._rq.dashboard.views import RQ_BLUEPRINT, RQ_KEPT, RQ_VIEWS
from flask_messaging._rq.dequeue import MessagingQueue, wake_key
from flask_messaging._rq.enqueue import MARKER_PREFIX, job_description
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.job_faults import CheckedScheduler, JobFaultsMixin
from flask_messaging._rq.job_hash import ALLOWED_FIELDS
from flask_messaging._rq.job_template import (
    KNOWN_COMMANDS,
    PROTOTYPE_ID,
    TIME_FIELDS,
    JobTemplate,
)
from flask_messaging._rq.queue_cleanup import id_keys
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging._rq.status import latest_result
from flask_messaging._rq.threaded import ThreadedMessagingWorker
from flask_messaging._rq.workers import (
    ForkingMessagingWorker,
    MessagingWorker,
    ThreadWorker,
    _LeanJobs,
    _MessagingWorkerMixin,
)
from flask_messaging.dispatch import DISPATCH_FUNCTION, Delivery
from flask_messaging.envelope import encode as codec_encode
from flask_messaging.errors import InvalidJobError
from flask_messaging.queue_names import LOW_PRIORITY
from flask_messaging.redaction import LOGGERS
from flask_messaging.signing import JobBinding
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from . import worker_app
from .worker_app import ATTEMPTS, Boom, Ping

RQ_SOURCE = Path(rq.__file__).resolve().parent


# -- Methods of RQ we override ------------------------------------------------

#: Per (class of ours, the RQ class it extends): each member of ours that
#: replaces one of RQ's, and what we rely on it for (in _rq/).
OVERRIDES: dict[tuple[type, type], dict[str, str]] = {
    (MessagingQueue, Queue): {
        "push_job_id": "each push wakes an idle worker at once (dequeue.py)",
        "dequeue_any": (
            "jobs are taken onto the intermediate list: no job lost by a worker"
            " dying mid-take (dequeue.py)"
        ),
    },
    (MessagingJob, Job): {
        "restore": "every job hash is checked before RQ reads it (job.py)",
        "save": "a job read for display is never written back (job.py)",
        "func": "a job naming another function is refused (job.py)",
        "success_callback": "callbacks in a job hash are never imported (job.py)",
        "failure_callback": "callbacks in a job hash are never imported (job.py)",
        "stopped_callback": "callbacks in a job hash are never imported (job.py)",
        "perform": "a job runs bound to its id and queue (job.py)",
    },
    (_MessagingWorkerMixin, BaseWorker): {
        "heartbeat": (
            "repeated heartbeats are skipped; a worker Redis lost registers"
            " again; a worker key of another type is replaced; a stop whose"
            " exception was lost ends the idle wait (workers.py)"
        ),
        "request_stop": (
            "a stop asked for is kept as a flag, should RQ's exception be"
            " lost (workers.py)"
        ),
        "_shutdown": (
            "a stop between a take and the start of the jobs taken waits for"
            " their start (workers.py)"
        ),
        "bootstrap": "a worker logs the subscribers it serves (workers.py)",
        "request_force_stop": (
            "a cold shutdown is told from a handler's own SystemExit (workers.py)"
        ),
        "check_for_suspension": (
            "'rq suspend' is looked for once a second, not before every job"
            " (workers.py)"
        ),
        "unsubscribe": "an exit does not wait a second for pub/sub (workers.py)",
        "handle_payload": (
            "a message that is not a command is logged, not left to end the"
            " listening thread; stop-job is carried out per kind of worker"
            " (workers.py, threaded.py)"
        ),
        "set_state": (
            "a state the worker has is not written again; a worker key of"
            " another type is replaced (workers.py)"
        ),
        "perform_job": "each job runs inside the Flask app context (workers.py)",
        "prepare_job_execution": (
            "the id leaves the intermediate list, whatever the number of queues"
            " (workers.py)"
        ),
        "dequeue_job_and_maintain_ttl": (
            "a job the take refuses is failed, not fatal to the worker; the"
            " idle loop takes scheduling over (workers.py)"
        ),
    },
    (JobFaultsMixin, BaseWorker): {
        "handle_job_failure": (
            "the failure text is made valid UTF-8, so that it is recorded"
            " (job_faults.py)"
        ),
        "execute_job": "one job's fault fails that job, not the worker",
        "clean_registries": "no entry stops a queue's clean-up (queue_cleanup.py)",
        "_start_scheduler": "the worker's scheduler is a CheckedScheduler",
    },
    (JobFaultsMixin, Worker): {
        "monitor_work_horse": (
            "a work horse that exited 0 with its job started fails the job"
            " (job_faults.py)"
        ),
    },
    (_LeanJobs, BaseWorker): {
        "execute_job": (
            "a job's start and end are written in one pipeline each, with RQ's"
            " building blocks (lifecycle.py)"
        ),
    },
    (ThreadedMessagingWorker, BaseWorker): {
        "bootstrap": "executors, recorder, watchdog and event loop start (threaded.py)",
        "work": "max_jobs counts every job taken (threaded.py)",
        "dequeue_job_and_maintain_ttl": (
            "a job is taken only while a thread is free; a burst ends with no"
            " job in hand (threaded.py)"
        ),
        "execute_job": "jobs are handed to executor threads (threaded.py)",
        "set_state": "idle only with no job in hand (threaded.py)",
        "teardown": "the jobs in hand end before the worker deregisters (threaded.py)",
    },
    (ForkingMessagingWorker, Worker): {
        "main_work_horse": "each work horse opens its own connections (workers.py)",
        "perform_job": (
            "a work horse writes the jobs of the events its handler committed"
            " before RQ's os._exit (workers.py)"
        ),
    },
    (ThreadWorker, BaseWorker): {
        "death_penalty_class": "job timeouts without signals (workers.py)",
        "_install_signal_handlers": "no signal handler in a thread (workers.py)",
        "request_stop": "a stop asked from another thread (workers.py)",
        "procline": "the process title stays the app's (workers.py)",
        "dequeue_job_and_maintain_ttl": "a stop is seen within a second",
    },
    (CheckedScheduler, RQScheduler): {
        "start": (
            "the scheduler knows its worker's process, and is forked with"
            " the stop signals held (job_faults.py)"
        ),
        "work": (
            "a scheduler ends with its worker, and gets a stop sent as it was"
            " forked (job_faults.py)"
        ),
        "enqueue_scheduled_jobs": (
            "due jobs are read with our job class, one by one; one that cannot"
            " be read is failed (job_faults.py)"
        ),
    },
}

#: Overrides taking ``*args, **kwargs`` that read some of RQ's arguments:
#: those read by position (from the first), and those read by name.
READ_ARGUMENTS: dict[tuple[type, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    (JobFaultsMixin, "handle_job_failure"): (("job",), ("job", "exc_string")),
    (JobFaultsMixin, "monitor_work_horse"): (("job", "queue"), ()),
    (ThreadedMessagingWorker, "work"): ((), ("max_jobs",)),
}

OVERRIDE_ROWS = [
    pytest.param(ours, rq_class, name, why, id=f"{ours.__name__}.{name}")
    for (ours, rq_class), members in OVERRIDES.items()
    for name, why in members.items()
]


def rq_member(cls: type, name: str) -> Any:
    """The member ``name`` of the nearest RQ class in ``cls``'s MRO, or None."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("rq.") and name in vars(klass):
            return vars(klass)[name]
    return None


def kind(member: Any) -> str:
    for kind_, name in (
        (property, "property"),
        (classmethod, "classmethod"),
        (staticmethod, "staticmethod"),
    ):
        if isinstance(member, kind_):
            return name
    return "method" if inspect.isfunction(member) else "attribute"


def parameters(member: Any) -> list[inspect.Parameter]:
    """A method's parameters, without ``self`` or ``cls``."""
    if isinstance(member, staticmethod):
        return list(inspect.signature(member.__func__).parameters.values())
    function = member.__func__ if isinstance(member, classmethod) else member
    return list(inspect.signature(function).parameters.values())[1:]


POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def incompatibility(ours: Any, theirs: Any) -> str | None:
    """How our method fails to take every call RQ's takes, or None."""
    mine = parameters(ours)
    names = [p.name for p in mine if p.kind in POSITIONAL]
    kinds = {p.kind for p in mine}
    at = 0
    for param in parameters(theirs):
        if param.kind in POSITIONAL:
            if at < len(names) and names[at] != param.name:
                return f"its parameter {at + 1} is {names[at]!r}, not {param.name!r}"
            if at >= len(names) and inspect.Parameter.VAR_POSITIONAL not in kinds:
                return f"it does not take RQ's parameter {param.name!r}"
            at += 1
        elif param.kind is inspect.Parameter.KEYWORD_ONLY:
            if param.name not in {p.name for p in mine} and (
                inspect.Parameter.VAR_KEYWORD not in kinds
            ):
                return f"it does not take RQ's keyword {param.name!r}"
    theirs_names = {p.name for p in parameters(theirs)}
    for param in mine:
        if (
            param.kind not in VARIADIC
            and param.name not in theirs_names
            and param.default is inspect.Parameter.empty
        ):
            return f"it needs {param.name!r}, which RQ never passes"
    return None


@pytest.mark.parametrize(("ours", "rq_class", "name", "why"), OVERRIDE_ROWS)
def test_each_override_replaces_a_member_of_rq(
    ours: type, rq_class: type, name: str, why: str
) -> None:
    mine, theirs = vars(ours)[name], rq_member(rq_class, name)
    where = f"{ours.__name__}.{name}, relied on as: {why}"
    assert theirs is not None, (
        f"RQ's {rq_class.__name__} has no {name!r} any more, so RQ never calls {where}."
    )
    assert kind(mine) == kind(theirs), (
        f"RQ's {rq_class.__name__}.{name} is a {kind(theirs)}, ours a"
        f" {kind(mine)}: {where}."
    )
    if kind(mine) == "attribute" or kind(mine) == "property":
        return
    problem = incompatibility(mine, theirs)
    assert problem is None, (
        f"Ours does not take what RQ's {rq_class.__name__}.{name} takes:"
        f" {problem}. {where}."
    )
    leading, named = READ_ARGUMENTS.get((ours, name), ((), ()))
    rq_params = [p.name for p in parameters(theirs)]
    assert rq_params[: len(leading)] == list(leading), (
        f"RQ's {rq_class.__name__}.{name} starts with {rq_params}, not"
        f" {list(leading)} as ours reads them: {where}."
    )
    missing = sorted(set(named) - set(rq_params))
    assert not missing, (
        f"RQ's {rq_class.__name__}.{name} has no {missing}, which ours reads"
        f" by name: {where}."
    )


def test_every_member_of_ours_that_rq_also_has_is_a_listed_override() -> None:
    # A new RQ method named as one of ours would be replaced by accident; one
    # of ours that RQ no longer has replaces nothing.
    found = set()
    for cls in (
        MessagingQueue,
        MessagingJob,
        MessagingWorker,
        ForkingMessagingWorker,
        ThreadWorker,
        ThreadedMessagingWorker,
        CheckedScheduler,
    ):
        for klass in cls.__mro__:
            if klass.__module__.startswith("flask_messaging."):
                found |= {
                    f"{klass.__name__}.{name}"
                    for name in vars(klass)
                    if not name.startswith("__") and rq_member(cls, name) is not None
                }
    listed = {row.id for row in OVERRIDE_ROWS}
    assert found - listed == set(), (
        f"{sorted(found - listed)} replace RQ's members of that name without"
        " being in OVERRIDES: list each with what we rely on it for, or rename"
        " it."
    )
    assert listed - found == set(), (
        f"{sorted(listed - found)} no longer replace anything of RQ's."
    )


# -- Methods of RQ we call ----------------------------------------------------

#: Per RQ class or module: each method we call, written as
#: ``name(what we pass by position, *, what we pass by name)``, and where.
CALLED: dict[Any, dict[str, str]] = {
    Queue: {
        "prepare_data(func, *, args, timeout, result_ttl, failure_ttl, ttl,"
        " description, job_id, retry)": "enqueue.py",
        "enqueue_many(job_datas, *, pipeline)": "enqueue.py",
        "_enqueue_job(job, *, pipeline, at_front)": "job_faults.py (scheduler)",
        "from_queue_key(queue_key, *, connection, job_class, serializer,"
        " death_penalty_class)": "dequeue.py",
        "acquire_maintenance_lock()": "queue_cleanup.py",
        "release_maintenance_lock()": "queue_cleanup.py",
    },
    IntermediateQueue: {"cleanup(worker, queue)": "queue_cleanup.py"},
    rq_registry: {"clean_registries(queue, exception_handlers)": "queue_cleanup.py"},
    worker_registration: {"clean_worker_registry(queue)": "queue_cleanup.py"},
    Job: {
        "__init__(id, *, connection, serializer)": "dequeue.py",
        "fetch(id, *, connection, serializer)": "job_faults.py, status.py",
        "fetch_many(job_ids, *, connection, serializer)": "status.py",
        "key_for(job_id)": "dashboard",
        "dependents_key_for(job_id)": "dashboard/views.py",
        "get_status(*, refresh)": "job_faults.py",
        "should_enqueue_at_front()": "job_faults.py",
    },
    BaseWorker: {
        "__init__(queues, *, name, connection, job_class, queue_class,"
        " serializer, default_result_ttl)": "workers.py (make_worker)",
        "work(*, burst, logging_level, with_scheduler, max_jobs)": "worker.py",
        "cleanup_execution(job, pipeline)": "job_faults.py",
        "register_birth()": "workers.py, job_faults.py",
        "queue_names()": "workers.py, status.py",
        "get_state()": "status.py",
        "get_current_job_id()": "status.py",
        "find_by_key(worker_key, *, connection, job_class, serializer)": ("status.py"),
    },
    RQScheduler: {
        "__init__(queues, *, connection, logging_level, date_format,"
        " log_format, serializer)": "job_faults.py, workers.py",
        "acquire_locks(*, auto_start)": "scheduling.py",
        "get_locking_key(name)": "scheduling.py",
        "prepare_registries()": "job_faults.py",
        "release_locks()": "job_faults.py",
        "register_birth()": "job_faults.py",
        "register_death()": "job_faults.py",
        "heartbeat()": "scheduling.py (it renews the locks)",
    },
    ScheduledJobRegistry: {"get_jobs_to_schedule(timestamp)": "job_faults.py"},
    BaseRegistry: {
        "__init__(name, *, connection, job_class, serializer, queue)": "status.py",
        "remove(job, *, pipeline)": "job_faults.py",
        "requeue(job_or_id)": "status.py",
    },
    StartedJobRegistry: {
        "get_expired_job_ids()": "job_faults.py",
        "parse_job_id(entry)": "job_faults.py, dashboard/views.py",
    },
    FailedJobRegistry: {"parse_job_id(entry)": "dashboard/views.py"},
    Result: {
        "__init__(job_id, type, connection, *, exc_string, worker_name,"
        " serializer)": "job_faults.py",
        "save(ttl, *, pipeline)": "job_faults.py",
        "get_key(job_id)": "status.py, job_faults.py",
    },
    Retry: {"__init__(*, max, interval)": "enqueue.py"},
    web: {
        "pagination_window(total_items, cur_page, per_page)": "dashboard/views.py",
        "serialize_date(dt)": "dashboard/views.py",
    },
}

CALLED_ROWS = [
    pytest.param(owner, call, where, id=f"{owner.__name__}.{call.partition('(')[0]}")
    for owner, calls in CALLED.items()
    for call, where in calls.items()
]


@pytest.mark.parametrize(("owner", "call", "where"), CALLED_ROWS)
def test_each_rq_method_we_call_takes_what_we_pass(
    owner: Any, call: str, where: str
) -> None:
    name, _, passed = call.partition("(")
    leading, _, named = passed.rstrip(")").partition("*")
    leading_names = [p.strip() for p in leading.split(",") if p.strip()]
    named_names = {p.strip() for p in named.split(",") if p.strip()}
    qualified = f"{owner.__name__}.{name}"
    if isinstance(owner, type):
        member = inspect.getattr_static(owner, name, None)
        assert member is not None, f"RQ has no {qualified} any more ({where})."
        found = [p.name for p in parameters(member)]
    else:
        member = getattr(owner, name, None)
        assert member is not None, f"RQ has no {qualified} any more ({where})."
        found = list(inspect.signature(member).parameters)
    assert found[: len(leading_names)] == leading_names, (
        f"RQ's {qualified} starts with {found}, not {leading_names} as we pass"
        f" them ({where})."
    )
    assert named_names <= set(found), (
        f"RQ's {qualified} takes no {sorted(named_names - set(found))} any more;"
        f" we pass them ({where})."
    )


# -- What RQ's code calls, reads and writes -----------------------------------


def used_names(function: Callable[..., Any]) -> dict[str, set[str]]:
    """The names ``function``'s source calls, reads and writes (attributes;
    plain names it reads count as reads)."""
    function = getattr(function, "__func__", function)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    used: dict[str, set[str]] = {"calls": set(), "reads": set(), "writes": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = node.func
            if isinstance(target, ast.Attribute):
                used["calls"].add(target.attr)
            elif isinstance(target, ast.Name):
                used["calls"].add(target.id)
        if isinstance(node, ast.Attribute):
            what = "writes" if isinstance(node.ctx, ast.Store) else "reads"
            used[what].add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            used["reads"].add(node.id)
    return used


#: RQ's code that must call, read or write a name for our override or read
#: of it to matter: (RQ's function, "calls"/"reads"/"writes", the name).
USES = [
    (BaseWorker.work, "calls", "bootstrap"),
    (BaseWorker.work, "calls", "_start_scheduler"),
    (BaseWorker.work, "calls", "_install_signal_handlers"),
    (BaseWorker.work, "calls", "dequeue_job_and_maintain_ttl"),
    (BaseWorker.work, "calls", "execute_job"),
    (BaseWorker.work, "reads", "_stop_requested"),
    (BaseWorker.dequeue_job_and_maintain_ttl, "calls", "dequeue_any"),
    (BaseWorker.dequeue_job_and_maintain_ttl, "calls", "heartbeat"),
    (BaseWorker.dequeue_job_and_maintain_ttl, "calls", "set_state"),
    (BaseWorker.dequeue_job_and_maintain_ttl, "reads", "DequeueTimeout"),
    (IntermediateQueue.cleanup, "calls", "handle_job_failure"),
    (BaseWorker.run_maintenance_tasks, "calls", "clean_registries"),
    (SimpleWorker.execute_job, "calls", "perform_job"),
    (Worker.execute_job, "calls", "monitor_work_horse"),
    (Worker.fork_work_horse, "calls", "main_work_horse"),
    (BaseWorker.perform_job, "calls", "prepare_job_execution"),
    (BaseWorker.perform_job, "calls", "perform"),
    (BaseWorker.prepare_job_execution, "calls", "lrem"),
    (BaseWorker.teardown, "calls", "unsubscribe"),
    (BaseWorker.subscribe, "writes", "pubsub_thread"),
    (BaseWorker.set_state, "writes", "_state"),
    (BaseWorker.request_stop, "writes", "_shutdown_requested_date"),
    (BaseWorker._shutdown, "writes", "_stop_requested"),
    (BaseWorker._shutdown, "reads", "StopRequested"),
    (BaseWorker.request_stop, "calls", "_shutdown"),
    (BaseWorker.dequeue_job_and_maintain_ttl, "calls", "dequeue_any"),
    (rq_scheduler.run, "calls", "work"),
    (RQScheduler.start, "writes", "_process"),
    (RQScheduler.work, "calls", "enqueue_scheduled_jobs"),
    (RQScheduler.enqueue_scheduled_jobs, "writes", "_status"),
]

#: Why we rely on a name of USES that no override is named after.
USED_FOR = {
    "_stop_requested": (
        "ThreadWorker.request_stop and a stop asked for at start-up set it;"
        " stop_was_asked reads it"
    ),
    "_shutdown_requested_date": "stop_was_asked (workers.py)",
    "lrem": "our prepare_job_execution asks RQ's to take the id off (workers.py)",
    "pubsub_thread": "our unsubscribe stops it first (workers.py)",
    "_state": "our set_state skips a state the worker has (workers.py)",
    "_process": "keep_scheduling tells whether the scheduler runs (scheduling.py)",
    "_status": "CheckedScheduler.enqueue_scheduled_jobs sets it as RQ's does",
    "perform": "MessagingJob.perform binds the job and stops retries (job.py)",
    "DequeueTimeout": (
        "MessagingQueue.dequeue_any raises it when no job came, and RQ's idle"
        " loop goes on (dequeue.py)"
    ),
    "handle_job_failure": (
        "a job left on an intermediate list by a worker that died is failed,"
        " so retried, by RQ's clean-up: MessagingQueue.dequeue_any puts every"
        " taken id there (dequeue.py)"
    ),
}


def used_for(name: str) -> str:
    if name in USED_FOR:
        return USED_FOR[name]
    return "; ".join(
        f"{ours.__name__}.{name}: {members[name]}"
        for (ours, _), members in OVERRIDES.items()
        if name in members
    )


@pytest.mark.parametrize(
    ("function", "how", "name"),
    [pytest.param(*use, id=f"{use[0].__qualname__} {use[1]} {use[2]}") for use in USES],
)
def test_rq_calls_our_overrides_on_the_path_we_rely_on(
    function: Callable[..., Any], how: str, name: str
) -> None:
    assert name in used_names(function)[how], (
        f"RQ's {function.__qualname__} no longer {how} {name!r}; we rely on it:"
        f" {used_for(name)}."
    )


#: RQ methods we replace whole, with every step RQ's takes (rq 2.12 and 3.x:
#: the names its body calls), and ours.
REPLACED = [
    (
        BaseWorker.clean_registries,
        "acquire_maintenance_lock clean_registries clean_worker_registry cleanup"
        " release_maintenance_lock now info",
        "JobFaultsMixin.clean_registries (queue_cleanup.py)",
    ),
    (
        BaseWorker._start_scheduler,
        "RQScheduler acquire_locks enqueue_scheduled_jobs register_birth"
        " register_death release_locks start",
        "JobFaultsMixin._start_scheduler",
    ),
    (
        BaseWorker.unsubscribe,
        "close info join stop unsubscribe",
        "_MessagingWorkerMixin.unsubscribe",
    ),
    (
        RQScheduler.enqueue_scheduled_jobs,
        # _enqueue_rate_limited_job (rq 3): our jobs never have a rate limit.
        "Queue _enqueue_job _enqueue_rate_limited_job append current_timestamp"
        " execute fetch_many get_jobs_to_schedule pipeline prepare_registries"
        " remove should_enqueue_at_front zip",
        "CheckedScheduler.enqueue_scheduled_jobs",
    ),
    (
        Queue.dequeue_any,
        "_fetch_dequeued_job backend_class fetch from_queue_key get_version len"
        " lmove lpop map",
        "MessagingQueue.dequeue_any",
    ),
]


@pytest.mark.parametrize(
    ("function", "steps", "ours"),
    [pytest.param(*row, id=row[0].__qualname__) for row in REPLACED],
)
def test_rq_methods_we_replace_whole_take_no_step_ours_lacks(
    function: Callable[..., Any], steps: str, ours: str
) -> None:
    new = used_names(function)["calls"] - set(steps.split())
    assert not new, (
        f"RQ's {function.__qualname__} now also calls {sorted(new)}: {ours},"
        " which replaces it, does not. Review ours and take those steps too (or"
        " say here why it needs none)."
    )


def test_rq_passes_the_job_and_failure_text_of_handle_job_failure_as_we_read_them() -> (
    None
):
    # JobFaultsMixin.handle_job_failure takes *args, **kwargs: it finds the job
    # first or as job=, and makes the failure text readable only as
    # exc_string=.
    wrong = []
    for path in sorted(RQ_SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "handle_job_failure"
            ):
                continue
            keywords = {keyword.arg for keyword in node.keywords}
            if len(node.args) > 3 or (not node.args and "job" not in keywords):
                wrong.append(f"{path.relative_to(RQ_SOURCE)}:{node.lineno}")
    assert not wrong, (
        f"RQ calls handle_job_failure at {wrong} with the job or the failure"
        " text where JobFaultsMixin.handle_job_failure does not read them:"
        " the text would not be made valid UTF-8 (_rq/job_faults.py)."
    )


def test_every_logger_rq_writes_to_is_redacted() -> None:
    # A logging filter sees only the records of its own logger, not of its
    # children: flask_messaging.redaction names each of RQ's.
    names = set()
    for path in sorted(RQ_SOURCE.rglob("*.py")):
        module = "rq." + ".".join(path.relative_to(RQ_SOURCE).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
            ):
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.Name) and arg.id == "__name__":
                    names.add(module)
    missing = {name for name in names if not name.startswith("rq.cli")} - set(LOGGERS)
    assert not missing, (
        f"RQ logs through {sorted(missing)}, which flask_messaging.redaction"
        " does not filter: add them to its LOGGERS."
    )


# -- RQ's objects, live on a real Redis ---------------------------------------


@pytest.fixture
def app(make_app: Callable[..., Flask], real_redis_url: str) -> Iterator[Flask]:
    app = make_app(worker_app.messaging, MESSAGING_RETRY_INTERVALS=[0])
    with app.app_context():
        yield app


@pytest.fixture
def redis(app: Flask) -> Redis:
    return get_state(app).redis


def raised(call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised, if anything."""
    try:
        call()
    except Exception as exc:
        return exc
    return None


def enqueue_ping(app: Flask, value: int = 1) -> str:
    """Publish one Ping (one job on LOW_PRIORITY); return its job id."""
    state = get_state(app)
    state.broker.publish(Ping(value))
    (job_id,) = state.redis.lrange(
        Queue(LOW_PRIORITY, connection=state.redis).key, 0, -1
    )
    return str(job_id.decode())


LIVE_ATTRIBUTES = {
    "worker": [
        ("_state", "set_state skips a state the worker already has (workers.py)"),
        ("pubsub", "our unsubscribe (workers.py)"),
        ("pubsub_thread", "our unsubscribe stops it first (workers.py)"),
        ("_stop_requested", "ThreadWorker.request_stop, stop_was_asked"),
        ("_shutdown_requested_date", "stop_was_asked (workers.py)"),
        ("is_horse", "no scheduling from a work horse (workers.py)"),
        ("scheduler", "keep_scheduling (workers.py, scheduling.py)"),
        ("last_cleaned_at", "set by our clean-up (job_faults.py)"),
        ("_exc_handlers", "a step of our clean-up (queue_cleanup.py)"),
        ("queues", "our clean-up and scheduler (job_faults.py)"),
        ("job_class", "jobs read with our bounds (job_faults.py)"),
        ("serializer", "our scheduler reads with it (job_faults.py)"),
        ("connection", "job_faults.py, workers.py"),
        ("key", "a worker key of another type replaced (job_faults.py)"),
        ("name", "job_faults.py, status.py"),
        ("log", "workers.py, job_faults.py"),
        ("death_penalty_class", "ThreadWorker's timeouts (workers.py)"),
        *(
            (name, "the dashboard's list of workers (dashboard/views.py)")
            for name in (
                "pid",
                "last_heartbeat",
                "birth_date",
                "successful_job_count",
                "failed_job_count",
                "total_working_time",
            )
        ),
    ],
    "registry": [
        ("name", "the queue of due jobs (job_faults.py)"),
        ("key", "job_faults.py, status.py, dashboard"),
    ],
    "scheduler": [
        ("_queue_names", "the locks we look at (scheduling.py)"),
        ("interval", "when a lock is stale (scheduling.py)"),
        ("name", "the owner of a lock (scheduling.py)"),
        ("connection", "scheduling.py, job_faults.py"),
        ("_process", "whether the scheduler runs (scheduling.py)"),
        ("_status", "set by CheckedScheduler.enqueue_scheduled_jobs"),
        ("_scheduled_job_registries", "CheckedScheduler.enqueue_scheduled_jobs"),
        ("_acquired_locks", "CheckedScheduler.enqueue_scheduled_jobs"),
        ("acquired_locks", "JobFaultsMixin._start_scheduler"),
        ("Status", "CheckedScheduler sets WORKING, then STARTED"),
        (
            "_install_signal_handlers",
            "CheckedScheduler.work, before the held stop signals",
        ),
    ],
    "job": [
        ("_success_callback_name", "MessagingJob.func refuses callbacks"),
        ("_failure_callback_name", "MessagingJob.func refuses callbacks"),
        ("_stopped_callback_name", "MessagingJob.func refuses callbacks"),
        ("func_name", "MessagingJob.func runs dispatch only"),
        ("instance", "MessagingJob.func refuses a method call"),
        ("origin", "the taken job's queue (dequeue.py), its binding (job.py)"),
        ("retries_left", "a refused job is not retried (job.py)"),
        ("ended_at", "when a job failed (status.py)"),
        ("description", "status.py, dashboard"),
    ],
    "queue": [
        ("key", "the take script's keys (dequeue.py)"),
        ("intermediate_queue_key", "where the take moves an id (dequeue.py)"),
        ("intermediate_queue", "a step of our clean-up (queue_cleanup.py)"),
        ("started_job_registry", "the take script's keys (dequeue.py)"),
        ("failed_job_registry", "the take script's keys, fail_job"),
        ("job_class", "fail_job, purge_queue (job_faults.py, queue_cleanup.py)"),
        ("name", "dequeue.py, job_faults.py"),
    ],
}


@pytest.fixture
def live(app: Flask, redis: Redis) -> dict[str, Any]:
    """A worker, a scheduler, a fetched job, a queue and a registry."""
    job_id = enqueue_ping(app)
    worker = make_worker(app, [LOW_PRIORITY])
    scheduler = CheckedScheduler([LOW_PRIORITY], connection=redis)
    job = worker.job_class.fetch(job_id, connection=redis, serializer=JSONSerializer)
    queue = MessagingQueue(LOW_PRIORITY, connection=redis, serializer=JSONSerializer)
    registry = ScheduledJobRegistry(LOW_PRIORITY, connection=redis)
    return {
        "worker": worker,
        "scheduler": scheduler,
        "job": job,
        "queue": queue,
        "registry": registry,
    }


@pytest.mark.parametrize(
    ("what", "attribute", "why"),
    [
        (what, attribute, why)
        for what, rows in LIVE_ATTRIBUTES.items()
        for attribute, why in rows
    ],
    ids=[
        f"{what}.{attribute}"
        for what, rows in LIVE_ATTRIBUTES.items()
        for attribute, _ in rows
    ],
)
def test_each_attribute_we_read_is_on_rqs_live_objects(
    live: dict[str, Any], what: str, attribute: str, why: str
) -> None:
    assert hasattr(live[what], attribute), (
        f"An RQ {what} has no attribute {attribute!r} any more; we read it: {why}."
    )


def test_no_attribute_of_rqs_live_objects_hides_a_member_of_ours(
    live: dict[str, Any],
) -> None:
    # An attribute RQ sets on the instance wins over our class's member of
    # the same name: our method would silently never be called.
    for what in ("worker", "scheduler", "job", "queue", "registry"):
        obj = live[what]
        ours = {
            name
            for klass in type(obj).__mro__
            if klass.__module__.startswith("flask_messaging.")
            for name in vars(klass)
            if not name.startswith("__")
        }
        hidden = ours & set(vars(obj))
        assert not hidden, (
            f"RQ sets {sorted(hidden)} on a {what}, hiding the members of that"
            f" name of {type(obj).__name__}: rename ours."
        )


def test_rq_reads_and_writes_with_our_serializer(live: dict[str, Any]) -> None:
    # RQ's default is pickle: a job written into Redis by anyone could run
    # code in the worker (serializer.py).
    for what in ("worker", "job", "queue"):
        serializer = live[what].serializer
        assert (serializer.dumps, serializer.loads) == (
            JSONSerializer.dumps,
            JSONSerializer.loads,
        ), f"An RQ {what} given our JSONSerializer uses {serializer} instead."


def test_rq_says_a_job_is_gone_as_we_expect(redis: Redis) -> None:
    fetched = raised(lambda: MessagingJob.fetch("gone", connection=redis))
    assert isinstance(fetched, NoSuchJobError), (
        f"RQ's Job.fetch of a job that is gone raised {fetched!r}, not"
        " NoSuchJobError, on which fail_unreadable, the scheduler's move and the"
        " dashboard's delete skip it (_rq/job_faults.py, _rq/dashboard)."
    )
    assert MessagingJob.fetch_many(["gone"], connection=redis) == [None], (
        "RQ's Job.fetch_many no longer gives None for a job that is gone:"
        " status.py drops those."
    )
    requeued = raised(
        lambda: FailedJobRegistry(LOW_PRIORITY, connection=redis).requeue("gone")
    )
    assert isinstance(requeued, NoSuchJobError | InvalidJobOperation), (
        f"RQ's requeue of a job that is gone raised {requeued!r}, which"
        " status.py's requeue does not take for 'not failed there'."
    )


def test_rq_3_workers_keep_their_execution_where_we_clean_it_up(
    live: dict[str, Any],
) -> None:
    # JobFaultsMixin passes worker.execution to cleanup_execution when RQ's
    # takes it (rq 3); rq 2.12's takes none.
    params = inspect.signature(BaseWorker.cleanup_execution).parameters
    if "execution" in params:
        assert hasattr(live["worker"], "execution"), (
            "RQ's cleanup_execution takes an execution, but a worker has no"
            " 'execution' to give it (_rq/job_faults.py)."
        )


def test_rq_names_its_keys_as_we_do(redis: Redis) -> None:
    queue = Queue("contract", connection=redis)
    assert queue.key == Queue.redis_queue_namespace_prefix + "contract", (
        "A queue's key is not Queue.redis_queue_namespace_prefix + its name:"
        " status.py and the dashboard list queues by that prefix."
    )
    assert Job.key_for("an-id") == Job.redis_job_namespace_prefix + "an-id", (
        "A job's key is not Job.redis_job_namespace_prefix + its id: the take"
        " script (dequeue.py) and fail_job (job_faults.py) build it so."
    )
    assert queue.intermediate_queue_key == queue.intermediate_queue.key, (
        "The intermediate list the take script moves ids to is not the one"
        " RQ's clean-up reads (dequeue.py, queue_cleanup.py)."
    )
    registries = [
        cls
        for cls in vars(rq_registry).values()
        if isinstance(cls, type)
        and issubclass(cls, BaseRegistry)
        and cls is not BaseRegistry
        and cls.__module__ == rq_registry.__name__
    ]
    for registry_class in registries:
        registry = registry_class("contract", connection=redis)
        assert registry.key == registry_class.key_template.format("contract"), (
            f"{registry_class.__name__}'s key is not its key_template with the"
            " queue's name: our clean-up purges the keys it names so"
            " (queue_cleanup.id_keys)."
        )
    expected = {queue.key, queue.intermediate_queue_key}
    expected |= {cls("contract", connection=redis).key for cls in registries}
    assert set(id_keys(queue)) == expected, (
        f"RQ keeps job ids of a queue in {sorted(expected - set(id_keys(queue)))},"
        " which our clean-up does not purge of unreadable entries: add them to"
        " queue_cleanup._REGISTRIES."
    )


def test_a_registered_worker_is_found_where_status_looks(
    app: Flask, redis: Redis
) -> None:
    worker = make_worker(app, [LOW_PRIORITY])
    worker.register_birth()
    try:
        assert worker.key == Worker.redis_worker_namespace_prefix + worker.name, (
            "A worker's key is not Worker.redis_worker_namespace_prefix + its"
            " name: status.py reads worker names so."
        )
        assert worker.key.encode() in redis.smembers(Worker.redis_workers_keys), (
            "A registered worker is not in Worker.redis_workers_keys, where"
            " status.py and the dashboard list workers."
        )
        found = Worker.find_by_key(worker.key, connection=redis, job_class=MessagingJob)
        assert found is not None and found.name == worker.name
    finally:
        worker.register_death()


def test_rq_heartbeat_sets_last_heartbeat_first(app: Flask, redis: Redis) -> None:
    # _MessagingWorkerMixin.heartbeat reads the reply of RQ's first command
    # (HSET ... last_heartbeat: 1 if the field was new) to find a worker whose
    # record Redis lost.
    worker = make_worker(app, [LOW_PRIORITY])
    with redis.pipeline() as pipe:
        BaseWorker.heartbeat(worker, None, pipe)
        first = pipe.command_stack[0][0]
    assert first[:3] == ("HSET", worker.key, "last_heartbeat"), (
        f"RQ's heartbeat starts with {first[:3]}, not an HSET of the worker's"
        " last_heartbeat: a worker whose record Redis lost would not register"
        " again (_rq/workers.py)."
    )


def test_a_worker_takes_a_job_onto_its_intermediate_list_and_off_again(
    app: Flask, redis: Redis
) -> None:
    job_id = enqueue_ping(app)
    # Two queues: RQ's own take would BLPOP, with no intermediate list.
    worker = make_worker(app, ["urgent", LOW_PRIORITY])
    worker.register_birth()
    taken = worker.dequeue_job_and_maintain_ttl(None)
    assert taken is not None
    job, queue = taken
    assert (job.id, queue.name) == (job_id, LOW_PRIORITY)
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [job_id.encode()], (
        "RQ's worker did not take the job through MessagingQueue.dequeue_any"
        " (the id is not on the intermediate list): a dying worker could lose"
        " it (_rq/dequeue.py)."
    )
    assert redis.llen(wake_key(LOW_PRIORITY)) == 0
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    assert redis.llen(queue.intermediate_queue_key) == 0, (
        "RQ's prepare_job_execution, asked to, did not take the id off the"
        " intermediate list (_rq/workers.py)."
    )
    started = StartedJobRegistry(queue=queue)
    entries = [e.decode() for e in redis.zrange(started.key, 0, -1)]
    assert entries and {started.parse_job_id(e) for e in entries} == {job_id}, (
        f"The started registry holds {entries}, which parse_job_id does not read"
        f" back as job {job_id}: fail_job would leave it started"
        " (_rq/job_faults.py)."
    )
    worker.register_death()


def test_rq_reads_job_hashes_through_restore(app: Flask, redis: Redis) -> None:
    job_id = enqueue_ping(app)
    redis.hset(Job.key_for(job_id), "webhooks", "[]")
    for how, read in (
        ("fetch", lambda: MessagingJob.fetch(job_id, connection=redis)),
        ("fetch_many", lambda: MessagingJob.fetch_many([job_id], connection=redis)),
    ):
        refused = raised(read)
        assert isinstance(refused, InvalidJobError), (
            f"RQ's Job.{how} read a hash with a field our jobs never have"
            f" ({refused!r}): it no longer reads hashes through restore, and"
            " MessagingJob checks none (_rq/job.py, _rq/job_hash.py)."
        )


def test_the_fields_rq_writes_as_it_handles_a_job_are_ones_we_accept(
    app: Flask, redis: Redis
) -> None:
    # A job is read again after RQ wrote to its hash: when it is retried,
    # failed, requeued or found abandoned (job_hash.ALLOWED_FIELDS).
    get_state(app).broker.publish(Boom("contract"))  # fails; one retry
    make_worker(app).work(burst=True, logging_level="WARNING")
    (key,) = redis.keys(Job.redis_job_namespace_prefix + "*")
    fields = {field.decode() for field in redis.hkeys(key)}
    assert fields <= set(ALLOWED_FIELDS), (
        f"RQ writes {sorted(fields - set(ALLOWED_FIELDS))} as it handles a job:"
        " MessagingJob refuses such a job when it reads it again"
        " (_rq/job_hash.py)."
    )
    assert redis.get(ATTEMPTS) == b"2"
    assert redis.hget(key, "status") == b"failed"


def test_rq_reads_data_that_is_not_zlib_as_it_is(redis: Redis) -> None:
    # check_job_hash hands RQ the job's data inflated (job_hash.py).
    job = Job("plain", connection=redis, serializer=JSONSerializer)
    job.restore(
        {
            b"data": b'["%s", null, ["a", "b", "c"], {}]' % DISPATCH_FUNCTION.encode(),
            b"created_at": b"2026-01-01T00:00:00.000000Z",
            b"status": b"queued",
        }
    )
    assert (job.func_name, job.args) == (DISPATCH_FUNCTION, ["a", "b", "c"]), (
        "RQ no longer reads job data that is not zlib as it is: check_job_hash"
        " hands it inflated data (_rq/job_hash.py)."
    )


def test_rq_calls_our_func_when_it_performs_a_job(redis: Redis) -> None:
    job = MessagingJob.create(
        "os.getcwd", connection=redis, serializer=JSONSerializer, origin="low"
    )
    refused = raised(job.perform)
    assert isinstance(refused, InvalidJobError) and "os.getcwd" in str(refused), (
        f"RQ's Job.perform of a job naming os.getcwd raised {refused!r}: it no"
        " longer calls the job's func property, through which MessagingJob runs"
        " only dispatch (_rq/job.py)."
    )


def test_a_queue_push_through_rqs_enqueue_wakes_idle_workers(
    redis: Redis,
) -> None:
    queue = MessagingQueue(LOW_PRIORITY, connection=redis, serializer=JSONSerializer)
    job = queue.create_job(DISPATCH_FUNCTION, args=("a", "b", "c"))
    with redis.pipeline() as pipe:
        queue._enqueue_job(job, pipeline=pipe, at_front=False)
        pipe.execute()
    assert redis.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert redis.llen(wake_key(LOW_PRIORITY)) == 1, (
        "RQ's _enqueue_job did not push through MessagingQueue.push_job_id: a"
        " job the scheduler moves would not wake an idle worker"
        " (_rq/dequeue.py)."
    )


def test_a_result_rq_saves_is_read_by_latest_result(redis: Redis) -> None:
    Result(  # type: ignore[no-untyped-call]
        job_id="failed-one",
        type=Result.Type.FAILED,
        connection=redis,
        exc_string="RuntimeError: boom",
        worker_name="w",
        serializer=JSONSerializer,
    ).save(ttl=60)
    assert redis.type(Result.get_key("failed-one")) == b"stream"  # type: ignore[no-untyped-call]
    result = latest_result(redis, "failed-one", 1000)
    assert result is not None, (
        "latest_result found nothing at Result.get_key: status.py would show no"
        " failure reason."
    )
    assert (result.type, result.text) == ("FAILED", "RuntimeError: boom"), (
        "latest_result does not read RQ's result stream (its type and"
        " base64-zlib exc_string fields) as RQ writes it (_rq/status.py)."
    )


def test_rq_scheduler_statuses_are_what_checked_scheduler_sets() -> None:
    assert {"WORKING", "STARTED"} <= set(RQScheduler.Status.__members__), (
        "RQ's scheduler has no WORKING or STARTED status any more:"
        " CheckedScheduler.enqueue_scheduled_jobs sets them (_rq/job_faults.py)."
    )


# -- Jobs as RQ writes them ---------------------------------------------------


def handler(event: Ping) -> None:
    pass


OPTIONS = {
    "defaults": {},
    "no retry, a time to live": {"MESSAGING_RETRY": 0, "MESSAGING_JOB_TTL": 600},
    "retries, no interval": {"MESSAGING_RETRY": 2, "MESSAGING_RETRY_INTERVALS": []},
    "results kept for ever": {"MESSAGING_RESULT_TTL": -1},
}


@pytest.mark.parametrize("config", OPTIONS.values(), ids=OPTIONS.keys())
def test_rqs_enqueue_records_as_the_template_expects(
    make_app: Callable[..., Flask], config: dict[str, Any]
) -> None:
    app = make_app(**config)
    state = get_state(app)
    state.broker.subscribe_async(Ping, handler, queue_name=LOW_PRIORITY, timeout=42)
    (subscription,) = state.registry
    recording = state.jobs.record(subscription)  # type: ignore[attr-defined]
    names = [command[0] for command in recording.commands]
    assert set(names) <= KNOWN_COMMANDS, (
        f"RQ's enqueue sends {sorted(set(names) - KNOWN_COMMANDS)}: our jobs are"
        " written by RQ's own enqueue_many, more slowly (_rq/job_template.py)."
    )
    assert names[0] == "SADD" and recording.commands[0][1:] == (
        Queue.redis_queues_keys,
        recording.queue_key,
    ), "RQ no longer adds the queue to Queue.redis_queues_keys first (status.py)."
    assert names[-2:] == ["RPUSH", "RPUSH"], (
        "RQ's enqueue no longer ends with the push onto the queue, then ours of"
        " the wake token (dequeue.py)."
    )
    # Raises RecordingMismatch, naming it, if RQ's enqueue changed.
    template = JobTemplate.from_recording(1, recording)
    body = template.lua.splitlines()[1:-1]
    slots = {
        # The job's keys (each HSET and EXPIRE) and its push onto the queue.
        "job_id": len([c for c in recording.commands if c[0] in ("HSET", "EXPIRE")])
        + 1,
        ", data": 1,
        ", description": 1,
        ", now": len(TIME_FIELDS),
    }
    for slot, count in slots.items():
        found = sum(line.count(slot) for line in body)
        assert found == count, (
            f"The template has {found} {slot.lstrip(', ')} slots, not {count}:"
            f" the compiled enqueue of RQ's recording is\n{template.lua}"
        )
    fields = {
        str(field)
        for command in recording.commands
        if command[0] == "HSET"
        for field in command[2::2]
    }
    assert fields <= set(ALLOWED_FIELDS), (
        f"RQ writes job fields {sorted(fields - set(ALLOWED_FIELDS))}, which"
        " MessagingJob refuses: every job would be refused (_rq/job_hash.py)."
    )
    assert PROTOTYPE_ID in recording.job_key
    assert PROTOTYPE_ID not in template.lua


def redis_contents(redis: Redis) -> dict[bytes, Any]:
    """Every key with its value; job hashes with their data decompressed and
    their timestamps blanked."""
    contents: dict[bytes, Any] = {}
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"hash":
            value = redis.hgetall(key)
            for field in (b"created_at", b"enqueued_at"):
                if field in value:
                    value[field] = b"<now>"
            if b"data" in value:  # what RQ reads; compressors may differ
                value[b"data"] = zlib.decompress(value[b"data"])
        elif kind == b"list":
            value = redis.lrange(key, 0, -1)
        elif kind == b"set":
            value = redis.smembers(key)
        elif kind == b"zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        else:
            value = redis.get(key)
        contents[key] = (kind, value, redis.ttl(key) > 0)
    return contents


@pytest.mark.parametrize("once", [False, True], ids=["enqueue", "enqueue_once"])
def test_jobs_are_written_exactly_as_rq_writes_them(
    make_app: Callable[..., Flask], once: bool
) -> None:
    app = make_app(MESSAGING_RETRY=2, MESSAGING_JOB_TTL=600)
    state = get_state(app)
    state.broker.subscribe_async(Ping, handler, queue_name=LOW_PRIORITY, timeout=42)
    (subscription,) = state.registry
    redis = state.redis
    deliveries = []
    for n in range(3):
        message_id, data = codec_encode(Ping(n))
        deliveries.append(Delivery(subscription, "tests.ping", message_id, data))
    if once:
        state.jobs.enqueue_once([(d.message_id, [d]) for d in deliveries])  # type: ignore[attr-defined]
        for delivery in deliveries:
            assert redis.delete(MARKER_PREFIX + delivery.message_id) == 1
    else:
        state.jobs.enqueue(deliveries)
    ours = redis_contents(redis)
    redis.flushdb()

    # RQ's own enqueue_many, through the queue class our workers take jobs
    # with (its only addition: a wake token, see flask_messaging._rq.dequeue).
    queue = MessagingQueue(LOW_PRIORITY, connection=redis, serializer=JSONSerializer)
    queue.enqueue_many(
        [
            Queue.prepare_data(
                DISPATCH_FUNCTION,
                args=(
                    subscription.key,
                    delivery.envelope.decode(),
                    state.signer.sign(
                        JobBinding(delivery.job_id, LOW_PRIORITY),
                        subscription.key,
                        delivery.envelope,
                    ),
                ),
                timeout=42,
                result_ttl=500,
                failure_ttl=state.settings.jobs.failure_ttl,
                ttl=600,
                description=job_description(delivery),
                job_id=delivery.job_id,
                retry=Retry(max=2, interval=[10, 60, 300]),
            )
            for delivery in deliveries
        ]
    )
    theirs = redis_contents(redis)
    assert len(theirs) == 3 + 3  # 3 job hashes, the queue, rq:queues, the wake list
    assert ours == theirs


# -- rq-dashboard -------------------------------------------------------------


def test_rq_dashboard_has_the_views_and_hook_we_replace() -> None:
    app = Flask("contract")
    app.register_blueprint(web.blueprint, url_prefix="/rq")
    endpoints = {
        rule.endpoint.partition(".")[2]
        for rule in app.url_map.iter_rules()
        if rule.endpoint.partition(".")[0] == RQ_BLUEPRINT
    }
    replaced = set(RQ_VIEWS) | set(RQ_PAGES) | RQ_KEPT
    assert replaced <= endpoints, (
        f"rq-dashboard has no views {sorted(replaced - endpoints)} any more:"
        " review _rq/dashboard for its new ones."
    )
    hooks = app.before_request_funcs.get(RQ_BLUEPRINT, [])
    assert web.push_rq_connection in hooks, (
        "rq-dashboard's connection hook is not web.push_rq_connection: ours"
        " would run beside its own, which connects to RQ_DASHBOARD_REDIS_URL"
        " (_rq/dashboard/__init__.py)."
    )
