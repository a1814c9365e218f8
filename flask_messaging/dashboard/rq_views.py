"""rq-dashboard's views, replaced or kept, on the app's Redis.

rq-dashboard 0.9 reads jobs with pickle, shows job arguments (the message
payloads) and inserts job fields into its pages as raw HTML. The views here
read with JSON only (:class:`~flask_messaging.serializer.ReadOnlySerializer`)
and never show arguments. Their answers are JSON with the values as Redis
holds them (credentials redacted): the pages of :mod:`.rq_pages` insert them
as text, never as HTML.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from math import ceil
from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    url_for,
)
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.worker import BaseWorker
from rq_dashboard import web

from ..dispatch import MessagingJob, job_class_for
from ..extension import get_state
from ..redaction import redact
from ..serializer import JSONSerializer, ReadOnlySerializer
from ..status import (
    UnreadableJob,
    UnreadableWorker,
    fetch_jobs,
    latest_result,
    queue_names_in_redis,
    read_workers,
    requeue_failed,
    requeue_failed_job,
)

if TYPE_CHECKING:
    from redis import Redis

RQ_BLUEPRINT = "rq_dashboard"

_REGISTRIES: dict[str, type[BaseRegistry]] = {
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}


def text(status: int, message: str) -> Response:
    return Response(message + "\n", status, mimetype="text/plain")


def use_app_redis() -> None:
    # rq-dashboard's views read the connection from this app attribute.
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    app.redis_conn = get_state().redis


def _redis() -> Redis:
    return get_state().redis


def rq_endpoints(app: Flask) -> set[str]:
    return {
        rule.endpoint.partition(".")[2]
        for rule in app.url_map.iter_rules()
        if rule.endpoint.partition(".")[0] == RQ_BLUEPRINT
    }


#: The most jobs a page of the job list reads (rq-dashboard offers 5 to 100).
MAX_PAGE_SIZE = 100


def _job_class() -> type[MessagingJob]:
    """The app's job class for reading: bounded, keeping no payload."""
    return job_class_for(get_state().settings.max_message_bytes, for_display=True)


def _fetch(job_id: str) -> Job | UnreadableJob:
    """The job, or what can be said of one refused, unreadable or too large."""
    jobs = fetch_jobs(_redis(), [job_id], _job_class())
    if not jobs:
        abort(404)
    return jobs[0]


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with enum members (RQ's states) as their plain values."""
    return {
        key: value.value if isinstance(value, Enum) else value
        for key, value in values.items()
    }


def _redacted(text: str | None) -> str | None:
    return None if text is None else redact(text)


def _json(data: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(data)
    response.status_code = status
    return response


def _job_info(instance_number: int, job_id: str) -> Response:
    # Read as the job lists read it: a hash refused or RQ cannot parse is
    # shown, not a 500.
    job = _fetch(job_id)
    if isinstance(job, UnreadableJob):
        return _json(
            {
                **dict.fromkeys(("created_at", "enqueued_at", "started_at")),
                **dict.fromkeys(("ended_at", "origin", "result", "metadata")),
                "id": job.id,
                "status": "unreadable",
                "exc_info": _redacted(job.error),
                "description": job.description,
            }
        )
    # The text is read with a bound; dispatch returns nothing worth showing.
    result = latest_result(_redis(), job.id, _job_class().max_field_bytes)
    failed = result is not None and result.type != "SUCCESSFUL"
    return _json(
        {
            "id": job.id,
            "created_at": web.serialize_date(job.created_at),
            "enqueued_at": web.serialize_date(job.enqueued_at),
            "started_at": web.serialize_date(job.started_at),
            "ended_at": web.serialize_date(job.ended_at),
            "origin": job.origin,
            "status": job.get_status(),
            "result": None,
            "exc_info": _redacted(
                result.text if result is not None and failed else None
            ),
            "description": job.description,
            "metadata": redact(json.dumps(job.meta, default=repr)),
        }
    )


def _list_jobs(
    instance_number: int,
    queue_name: str,
    registry_name: str,
    per_page: str,
    order: str,
    page: str,
) -> Response:
    try:
        size, current = int(per_page), int(page)
    except ValueError:
        abort(404)
    if not 1 <= size <= MAX_PAGE_SIZE or current < 1:
        abort(404)
    connection = _redis()
    queue = Queue(queue_name, connection=connection, serializer=ReadOnlySerializer)
    total, ids = _page_of_ids(queue, registry_name, size, current, order == "dsc")
    jobs = fetch_jobs(connection, ids, _job_class())

    def link(number: int) -> dict[str, Any]:
        return {
            "url": url_for(
                f"{RQ_BLUEPRINT}.jobs_overview",
                instance_number=instance_number,
                queue_name=queue_name,
                registry_name=registry_name,
                per_page=size,
                order=order,
                page=number,
            )
        }

    last = ceil(total / size)
    pagination = {
        "current_page": current,
        "num_pages": last,
        "pages_in_window": [
            {"number": number, **link(number)}
            for number in web.pagination_window(total, current, size)
        ],
        "first_page": link(1),
        "last_page": link(last),
        **({"prev_page": link(current - 1)} if current > 1 else {}),
        **({"next_page": link(current + 1)} if current < last else {}),
    }
    return _json(
        {
            "name": queue_name,
            "registry_name": registry_name,
            "jobs": [_job_row(job) for job in jobs],
            "pagination": pagination,
        }
    )


def _page_of_ids(
    queue: Queue, registry_name: str, size: int, page: int, descending: bool
) -> tuple[int, list[str]]:
    registry: Queue | BaseRegistry = queue
    if registry_name != "queued":
        registry_class = _REGISTRIES.get(registry_name)
        if registry_class is None:
            abort(404)
        registry = registry_class(queue=queue, job_class=_job_class())
    if isinstance(registry, BaseRegistry):
        total = registry.get_job_count(cleanup=False)
    else:
        total = registry.count
    offset = (page - 1) * size
    if descending:
        start, end = max(0, total - offset - size), total - offset
    else:
        start, end = offset, min(total, offset + size)
    if end <= start:
        return total, []
    if isinstance(registry, BaseRegistry):
        ids = registry.get_job_ids(start, end - 1, cleanup=False)
    else:
        ids = registry.get_job_ids(start, end - start)
    return total, ids[::-1] if descending else ids


def _job_row(job: Job | UnreadableJob) -> dict[str, Any]:
    if isinstance(job, UnreadableJob):
        return {
            "id": job.id,
            "created_at": None,
            "started_at": None,
            "ended_at": None,
            "exc_info": _redacted(job.error),
            "description": job.description,
        }
    result = latest_result(job.connection, job.id, _job_class().max_field_bytes)
    failed = result is not None and result.type != "SUCCESSFUL"
    return {
        "id": job.id,
        "created_at": web.serialize_date(job.created_at),
        "started_at": web.serialize_date(job.started_at),
        "ended_at": web.serialize_date(job.ended_at),
        "exc_info": _redacted(result.text if result is not None and failed else None),
        "description": job.description,
    }


def _list_workers(instance_number: int) -> Response:
    workers = [_worker_row(worker) for worker in read_workers(_redis())]
    workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return _json({"workers": workers})


def _worker_row(worker: BaseWorker | UnreadableWorker) -> dict[str, Any]:
    if isinstance(worker, UnreadableWorker):
        return {
            "name": worker.name,
            "state": worker.state,
            "queues": [],
            "current_job": _redacted(worker.error),
        }
    current: Any = "idle"
    job = _current_job(worker)
    if job is not None:
        # rq-dashboard shows the call string, message payload included.
        created = None if isinstance(job, UnreadableJob) else job.created_at
        current = {
            "job_id": job.id,
            "description": job.description,
            "created_at": created and web.serialize_date(created),
            "call_string": job.description,
        }
    row = _plain(
        {
            "name": worker.name,
            "pid": worker.pid,
            "state": worker.get_state(),
            "last_heartbeat": worker.last_heartbeat,
            "birth_date": worker.birth_date,
            "successful_job_count": worker.successful_job_count,
            "failed_job_count": worker.failed_job_count,
            "total_working_time": worker.total_working_time,
            "version": getattr(worker, "version", ""),
            "python_version": getattr(worker, "python_version", ""),
        }
    )
    row["queues"] = [queue.name for queue in worker.queues]
    row["current_job"] = current
    return row


def _current_job(worker: BaseWorker) -> Job | UnreadableJob | None:
    job_id = worker.get_current_job_id()
    if job_id is None:
        return None
    jobs = fetch_jobs(_redis(), [job_id], _job_class())
    return jobs[0] if jobs else None


def _list_queues(instance_number: int) -> Response:
    # Not Queue.all(): one entry of rq:queues that is not a queue key made
    # it, and the whole page, fail.
    connection = _redis()
    queues = [
        Queue(name, connection=connection) for name in queue_names_in_redis(connection)
    ]
    return _json({"queues": web.serialize_queues(instance_number, queues)})


def _delete_job_view(job_id: str) -> Response:
    if current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"):
        return _json({"status": "DISABLED"})
    return _json({"status": "OK" if _delete(job_id) else "ERROR"})


def _delete(job_id: str, registry: BaseRegistry | None = None) -> bool:
    connection = _redis()
    try:
        job = _job_class().fetch(
            job_id, connection=connection, serializer=JSONSerializer
        )
    except NoSuchJobError:
        if registry is not None and not isinstance(registry, StartedJobRegistry):
            registry.remove(job_id)  # an id whose job expired
        return False
    except RedisError:
        raise
    except Exception:  # refused, unreadable, too large, or an id RQ refuses
        return _delete_unreadable(job_id, registry)
    job.delete()
    return True


def _delete_unreadable(job_id: str, registry: BaseRegistry | None) -> bool:
    """Delete a job that is refused, unreadable or too large, unread.

    Only its origin is read (a plain string, at most the field bound): it
    names the queue and registries that may list the job, besides the
    registry it was found in.
    """
    connection = _redis()
    key = MessagingJob.key_for(job_id)
    origin: Any = connection.hget(key, "origin")
    registries = [] if registry is None else [registry]
    if origin is not None and len(origin) <= _job_class().max_field_bytes:
        queue = Queue(
            origin.decode(errors="replace"),
            connection=connection,
            serializer=JSONSerializer,
        )
        registries += [cls(queue=queue) for cls in _REGISTRIES.values()]
        connection.lrem(queue.key, 0, job_id)
    for each in registries:
        connection.zrem(each.key, job_id)
    results = Result.get_key(job_id)  # type: ignore[no-untyped-call]
    return bool(
        connection.delete(key, MessagingJob.dependents_key_for(job_id), results)
    )


def _requeue_job_view(job_id: str) -> Response:
    job = _fetch(job_id)
    if isinstance(job, UnreadableJob):  # a worker would refuse it again
        return _json(
            {
                "status": "ERROR",
                "error": f"This job cannot be read ({_redacted(job.error)}), so it"
                " cannot be requeued; delete it.",
            },
            409,
        )
    if not requeue_failed_job(get_state(), job.origin, job_id):
        return _json({"status": "ERROR"}, 404)
    return _json({"status": "OK"})


def _requeue_all(queue_name: str) -> Response:
    count = requeue_failed(get_state(), (queue_name,))
    return _json({"status": "OK", "count": count})


def _empty_queue(queue_name: str, registry_name: str) -> Response:
    if current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"):
        return _json({"status": "DISABLED"})
    connection = _redis()
    if registry_name == "queued":
        queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
        queue.empty()  # type: ignore[no-untyped-call]
        return _json({"status": "OK"})
    registry_class = _REGISTRIES.get(registry_name)
    if registry_class is None:
        abort(404)
    registry = registry_class(
        queue_name, connection=connection, serializer=JSONSerializer
    )
    for job_id in registry.get_job_ids(cleanup=False):
        _delete(job_id, registry)
    return _json({"status": "OK"})


def unreviewed(**kwargs: Any) -> Response:
    return text(404, "This rq-dashboard view is not enabled by flask-messaging.")


#: rq-dashboard 0.9 views kept: they read no job (compact only checks which
#: job keys exist) and render no template.
RQ_KEPT = frozenset({"static", "favicon", "compact_queue"})

#: rq-dashboard 0.9 JSON views and actions replaced: the originals unpickle
#: jobs or show job arguments. Its pages are replaced by :data:`.rq_pages.RQ_PAGES`.
RQ_VIEWS: dict[str, Callable[..., Any]] = {
    "job_info": _job_info,
    "list_jobs": _list_jobs,
    "list_workers": _list_workers,
    "list_queues": _list_queues,
    "delete_job_view": _delete_job_view,
    "requeue_job_view": _requeue_job_view,
    "requeue_all": _requeue_all,
    "empty_queue": _empty_queue,
}
