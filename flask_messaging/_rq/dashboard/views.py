"""rq-dashboard's views, replaced or kept, on the app's Redis.

rq-dashboard 0.9 reads jobs with pickle, shows job arguments (the message
payloads) and inserts job fields into its pages as raw HTML. The views here
read jobs for display (:class:`~flask_messaging._rq.objects.RQObjects`: JSON
only, no payload kept) and never show arguments. Their answers are JSON with
the values as Redis holds them (credentials redacted): the pages of
:mod:`.pages` insert them as text, never as HTML.
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
    request,
    url_for,
)
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import BaseRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import BaseWorker
from rq_dashboard import web

from ...redaction import redact, redact_data
from ...state import get_state
from ..objects import REGISTRIES, RQObjects, queue_key, registry_key
from ..records import (
    UnreadableJob,
    UnreadableWorker,
    fetch_jobs,
    latest_result,
    queue_names_in_redis,
    read_workers,
    worker_keys,
)
from ..redis_entries import (
    decoded,
    is_wrong_type,
    key_type,
    page_of_members,
    shown,
)
from ..status import requeue_failed, requeue_failed_job

if TYPE_CHECKING:
    from redis import Redis

RQ_BLUEPRINT = "rq_dashboard"


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


def _display() -> RQObjects:
    """The app's RQ objects for reading: bounded, keeping no payload."""
    return RQObjects.of(get_state(), for_display=True)


def _bound() -> int:
    """The most bytes a field of a job is read with, inflated or not."""
    return _display().job_class.max_field_bytes


def _fetch(job_id: str) -> Job | UnreadableJob:
    """The job, or what can be said of one refused, unreadable or too large."""
    jobs = fetch_jobs(_display(), [job_id])
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


def _shown_data(value: object) -> str:
    """JSON text of a job's meta or result, secret-named values masked."""
    return json.dumps(redact_data(value), default=lambda v: redact(repr(v)))


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
    result = latest_result(_redis(), job.id, _bound())
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
            "metadata": _shown_data(job.meta),
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
    # Bounds checked by pages.missing before this view runs.
    size, current = int(per_page), int(page)
    connection = _redis()
    key = _list_key(queue_name, registry_name)
    offset = (current - 1) * size
    found = page_of_members(
        connection, key, offset, offset + size, descending=order == "dsc"
    )
    total, raw_ids = found or (0, [])
    ids = [_job_id(registry_name, raw) for raw in raw_ids]
    rows = [_job_row(job) for job in fetch_jobs(_display(), _texts(ids))]
    rows += [
        {**_job_row(UnreadableJob(shown(raw), _NOT_TEXT)), "unlisted": True}
        for raw, job_id in zip(raw_ids, ids, strict=True)
        if job_id is None
    ]

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
            "jobs": rows,
            "pagination": pagination,
            **({} if found else {"error": _wrong_type(key, registry_name)}),
        }
    )


_NOT_TEXT = "The job id is not UTF-8 text: Empty removes it from this list."


def _job_id(registry_name: str, entry: bytes) -> str | None:
    """The job id of a list or registry entry; None if it is not UTF-8 text.

    The started registry's entries are ``<job id>:<execution id>``: RQ's own
    ``parse_job_id`` of each registry reads them.
    """
    text = decoded(entry)
    if text is None or registry_name == "queued":
        return text
    return REGISTRIES[registry_name].parse_job_id(text)


def _texts(ids: list[str | None]) -> list[str]:
    """``ids`` without the Nones, each once, in order."""
    return list(dict.fromkeys(job_id for job_id in ids if job_id is not None))


def _list_key(queue_name: str, registry_name: str) -> str:
    """The Redis key of a queue's list of jobs (``queued``) or of a registry."""
    if registry_name == "queued":
        return queue_key(queue_name)
    if registry_name not in REGISTRIES:
        abort(404)
    return registry_key(registry_name, queue_name)


def _wrong_type(key: str, registry_name: str) -> str:
    kind = "list" if registry_name == "queued" else "sorted set"
    return f"Redis key {key} is not a {kind}: Empty deletes it."


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
    result = latest_result(job.connection, job.id, _bound())
    failed = result is not None and result.type != "SUCCESSFUL"
    return {
        "id": job.id,
        "created_at": web.serialize_date(job.created_at),
        "started_at": web.serialize_date(job.started_at),
        "ended_at": web.serialize_date(job.ended_at),
        "exc_info": _redacted(result.text if result is not None and failed else None),
        "description": job.description,
    }


#: Workers and queues listed per page of workers.json and queues.json.
LISTED_PER_PAGE = 50


def _listing_page() -> int:
    """The ``page`` query argument of a listing: 1 to MAX_PAGE, else 404."""
    value = request.args.get("page", "1")
    if not (value.isascii() and value.isdigit() and len(value) <= 9):
        abort(404)
    if int(value) < 1:
        abort(404)
    return int(value)


def _listing(names: list[Any], number: int, endpoint: str) -> dict[str, Any]:
    """Where page ``number`` of ``names`` (LISTED_PER_PAGE each) sits."""
    last = max(1, ceil(len(names) / LISTED_PER_PAGE))

    def link(page: int) -> str:
        return url_for(f"{RQ_BLUEPRINT}.{endpoint}", instance_number=0, page=page)

    return {
        "current_page": number,
        "num_pages": last,
        "total": len(names),
        **({"prev_page": {"url": link(number - 1)}} if number > 1 else {}),
        **({"next_page": {"url": link(number + 1)}} if number < last else {}),
    }


def _page_slice(names: list[Any], number: int) -> list[Any]:
    start = (number - 1) * LISTED_PER_PAGE
    return names[start : start + LISTED_PER_PAGE]


def _list_workers(instance_number: int) -> Response:
    # Names are sorted and paged before any worker hash is read.
    number = _listing_page()
    keys = worker_keys(_redis())
    workers = [
        _worker_row(worker)
        for worker in read_workers(_display(), _page_slice(keys, number))
    ]
    workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return _json(
        {"workers": workers, "pagination": _listing(keys, number, "list_workers")}
    )


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
    jobs = fetch_jobs(_display(), [job_id])
    return jobs[0] if jobs else None


def _list_queues(instance_number: int) -> Response:
    # Not Queue.all(): one entry of rq:queues that is not a queue key made
    # it, and the whole page, fail. Seven counts a queue: only a page's worth.
    number = _listing_page()
    connection = _redis()
    names = queue_names_in_redis(connection)
    rows = [
        _queue_row(instance_number, connection, name)
        for name in _page_slice(names, number)
    ]
    return _json({"queues": rows, "pagination": _listing(names, number, "list_queues")})


#: The counts of a queues.json row, by the job list each one links to.
_COUNTED = {
    "count": "queued",
    "deferred_job_registry_count": "deferred",
    "scheduled_job_registry_count": "scheduled",
    "started_job_registry_count": "started",
    "finished_job_registry_count": "finished",
    "failed_job_registry_count": "failed",
    "canceled_job_registry_count": "canceled",
}


def _queue_row(instance_number: int, connection: Redis, name: str) -> dict[str, Any]:
    """rq-dashboard's row of a queue; a key of another type counts "unreadable"."""
    row: dict[str, Any] = {"name": name}
    for field, registry_name in _COUNTED.items():
        key = _list_key(name, registry_name)
        found = page_of_members(connection, key, 0, 0)
        row[field] = "unreadable" if found is None else found[0]
        row[f"{registry_name}_url"] = url_for(
            f"{RQ_BLUEPRINT}.jobs_overview",
            instance_number=instance_number,
            queue_name=name,
            registry_name=registry_name,
            per_page=8,
            order="asc",
            page=1,
        )
    return row


def _delete_job_view(job_id: str) -> Response:
    if current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"):
        return _json({"status": "DISABLED"})
    return _json({"status": "OK" if _delete(job_id) else "ERROR"})


def _delete(job_id: str, registry: BaseRegistry | None = None) -> bool:
    try:
        job = _display().fetch(job_id, strict=True)
    except NoSuchJobError:
        if registry is not None and not isinstance(registry, StartedJobRegistry):
            registry.remove(job_id)  # an id whose job expired
        return False
    except RedisError as exc:
        if not is_wrong_type(exc):
            raise
        return _delete_unreadable(job_id, registry)  # a job key that is not a hash
    except Exception:  # refused, unreadable, too large, or an id RQ refuses
        return _delete_unreadable(job_id, registry)
    job.delete()
    return True


def _delete_unreadable(job_id: str, registry: BaseRegistry | None) -> bool:
    """Delete a job that is refused, unreadable or too large, unread.

    Only its origin is read (a plain string, at most the field bound): it
    names the queue and registries that may list the job, besides the
    registry it was found in; without one (a key of another type), the app's
    queues.
    """
    connection = _redis()
    key = Job.key_for(job_id)
    origin = None
    if key_type(connection, key) == "hash":
        origin = connection.hget(key, "origin")
    names = {registry.name} if registry is not None else set()
    if not isinstance(origin, bytes) or len(origin) > _bound():
        names.update(get_state().queue_names())
    elif origin:
        names.add(origin.decode(errors="replace"))
    with connection.pipeline() as pipe:
        for name in names:
            pipe.lrem(queue_key(name), 0, job_id)
            for kind in REGISTRIES:
                pipe.zrem(registry_key(kind, name), job_id)
        results = Result.get_key(job_id)  # type: ignore[no-untyped-call]
        pipe.delete(key, Job.dependents_key_for(job_id), results)
        deleted = pipe.execute()[-1]
    return bool(deleted)


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
    key = _list_key(queue_name, registry_name)
    kind = key_type(connection, key)
    if kind not in ("none", "list" if registry_name == "queued" else "zset"):
        connection.delete(key)  # not RQ's: nothing in it can be read as a job
        return _json({"status": "OK"})
    # The workers' objects: these delete, and the display's never write.
    objects = RQObjects.of(get_state())
    if registry_name == "queued":
        objects.queue(queue_name).empty()  # type: ignore[no-untyped-call]
        return _json({"status": "OK"})
    registry = objects.registry(registry_name, queue_name)
    found = page_of_members(connection, key, 0, 2**62)
    for raw in found[1] if found else []:
        job_id = _job_id(registry_name, raw)
        if job_id is None:
            connection.zrem(key, raw)  # no job can have this id
        elif not _delete(job_id, registry):
            connection.zrem(key, raw)  # its job is gone: a stale entry
    return _json({"status": "OK"})


def _compact_queue(queue_name: str) -> Response:
    """Remove the ids of jobs that no longer exist from a queue's list.

    Not RQ's ``Queue.compact``: it renames the list first (an error on an
    empty queue) and stops at an id that is not UTF-8 text with the rest of
    the ids still in the renamed list.
    """
    connection = _redis()
    key = queue_key(queue_name)
    kind = key_type(connection, key)
    if kind not in ("none", "list"):
        return _json({"status": "ERROR", "error": _wrong_type(key, "queued")}, 409)
    found = page_of_members(connection, key, 0, 2**62)
    ids = found[1] if found else []
    prefix = Job.redis_job_namespace_prefix.encode()
    with connection.pipeline(transaction=False) as pipe:
        for raw in ids:
            pipe.exists(prefix + raw)
        exists = pipe.execute()
    gone = {raw for raw, there in zip(ids, exists, strict=True) if not there}
    if gone:
        with connection.pipeline(transaction=False) as pipe:
            for raw in gone:
                pipe.lrem(key, 0, raw)  # type: ignore[arg-type]
            pipe.execute()
    return _json({"status": "OK", "count": len(gone)})


def unreviewed(**kwargs: Any) -> Response:
    return text(404, "This rq-dashboard view is not enabled by flask-messaging.")


#: rq-dashboard 0.9 views kept: they read nothing from Redis.
RQ_KEPT = frozenset({"static", "favicon"})

#: rq-dashboard 0.9 JSON views and actions replaced: the originals unpickle
#: jobs or show job arguments. Its pages are replaced by :data:`.pages.RQ_PAGES`.
RQ_VIEWS: dict[str, Callable[..., Any]] = {
    "job_info": _job_info,
    "list_jobs": _list_jobs,
    "list_workers": _list_workers,
    "list_queues": _list_queues,
    "delete_job_view": _delete_job_view,
    "requeue_job_view": _requeue_job_view,
    "requeue_all": _requeue_all,
    "empty_queue": _empty_queue,
    "compact_queue": _compact_queue,
}
