"""The HTML pages of rq-dashboard's views, with templates and a script of ours.

rq-dashboard 0.9 renders its pages' JavaScript from templates whose names end
in ``.js``, which Flask renders with autoescaping off: a queue name in the URL
or in Redis's ``rq:queues`` set was written into a script as it was. Its
pages also run inline scripts and fill tables through underscore templates
that insert fields as raw HTML. None of its templates is rendered here.

Our pages are autoescaped HTML; what the script needs (the URLs of the JSON
views) is in ``data-`` attributes of ``<main id="rq">``; the script,
``static/rq.js``, is a file (no template), loaded with the response's CSP
nonce, and puts every value from Redis into the page as text. A queue or job
that Redis does not hold answers 404 before any view runs (:func:`missing`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, make_response, render_template
from redis.exceptions import ResponseError
from rq import Queue
from rq.job import Job
from rq.version import VERSION as RQ_VERSION
from rq_dashboard.version import VERSION as RQ_DASHBOARD_VERSION

from ...redaction import redact_url
from ...state import get_state
from ..objects import queue_key
from ..records import queue_names_in_redis
from ..redis_entries import is_wrong_type

__all__ = [
    "MAX_PAGE",
    "MAX_PER_PAGE",
    "ORDERS",
    "QUEUES_IN_MENU",
    "REGISTRY_NAMES",
    "RQ_PAGES",
    "job_exists",
    "known_queues",
    "missing",
    "queue_exists",
    "script_policy",
]

#: The registries a job list can show, as rq-dashboard names them.
REGISTRY_NAMES = (
    "queued",
    "scheduled",
    "deferred",
    "started",
    "finished",
    "failed",
    "canceled",
)
ORDERS = ("asc", "dsc")
#: The largest page size a job list shows (its page's input allows as much):
#: a page of jobs just under the size bound each is read one job at a time,
#: but no more than this many ids.
MAX_PER_PAGE = 100
#: The largest page number a URL may ask for.
MAX_PAGE = 10**9


def script_policy(nonce: str) -> str:
    """The Content-Security-Policy of a page that runs our script only."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self';"
        " img-src 'self' data:; connect-src 'self'; form-action 'self';"
        " base-uri 'none'; frame-ancestors 'none'"
    )


#: Queue names offered in the jobs page's menu, at most (the app's own and
#: the one shown always are).
QUEUES_IN_MENU = 200


def known_queues(current: str) -> list[str]:
    """The jobs page's menu: the app's queues, ``current`` and the first
    :data:`QUEUES_IN_MENU` names of ``rq:queues``, sorted."""
    state = get_state()
    listed = queue_names_in_redis(state.redis)[:QUEUES_IN_MENU]
    return sorted({*listed, *state.queue_names(), current})


def queue_exists(name: str) -> bool:
    """Whether ``name`` is one of the app's queues or a queue Redis holds."""
    state = get_state()
    if name in state.queue_names():
        return True
    try:
        return bool(state.redis.sismember(Queue.redis_queues_keys, queue_key(name)))
    except ResponseError as exc:
        if is_wrong_type(exc):  # rq:queues is not a set: it lists nothing
            return False
        raise


def job_exists(job_id: str) -> bool:
    """Whether Redis holds a job hash for ``job_id`` (nothing is read from it)."""
    return bool(get_state().redis.exists(Job.key_for(job_id)))


def _render(page_name: str, **context: Any) -> Response:
    nonce = secrets.token_urlsafe(18)
    config = current_app.config
    response = make_response(
        render_template(
            f"messaging/rq/{page_name}.html",
            page_name=page_name,
            csp_nonce=nonce,
            redis_url=redact_url(get_state().settings.redis_url),
            rq_version=RQ_VERSION,
            rq_dashboard_version=RQ_DASHBOARD_VERSION,
            poll_interval=int(config.get("RQ_DASHBOARD_POLL_INTERVAL", 2500)),
            enable_delete=not config.get("RQ_DASHBOARD_DISABLE_DELETE"),
            **context,
        )
    )
    response.headers["Content-Security-Policy"] = script_policy(nonce)
    return response


def _queues_view(instance_number: int) -> Response:
    return _render("queues", active="queues")


def _workers_view(instance_number: int) -> Response:
    return _render("workers", active="workers")


def _jobs_view(
    instance_number: int,
    queue_name: str | None,
    registry_name: str,
    per_page: int,
    order: str,
    page: int,
) -> Response:
    queue_name = queue_name or get_state().queue_names()[0]
    return _render(
        "jobs",
        active="jobs",
        queue_name=queue_name,
        queues=known_queues(queue_name),
        registry_name=registry_name,
        registry_names=REGISTRY_NAMES,
        per_page=per_page,
        order=order,
        page=page,
    )


def _job_view(instance_number: int, job_id: str) -> Response:
    return _render("job", active="jobs", job_id=job_id)


def missing(view_args: dict[str, Any]) -> str | None:
    """Why the URL's queue, job, registry or page is not there, or None.

    Checked before any view runs: a queue or job that Redis does not hold
    never reaches a template or a JSON answer.
    """
    queue_name = view_args.get("queue_name")
    if queue_name is not None and not queue_exists(queue_name):
        return "There is no queue of that name in Redis."
    job_id = view_args.get("job_id")
    if job_id is not None and not job_exists(job_id):
        return "There is no job with that id in Redis."
    if view_args.get("registry_name", "queued") not in REGISTRY_NAMES:
        return f"A job list is one of: {', '.join(REGISTRY_NAMES)}."
    if view_args.get("order", "asc") not in ORDERS:
        return "Jobs are listed in 'asc' or 'dsc' order."
    if not _whole_number(view_args.get("per_page", 1), MAX_PER_PAGE):
        return f"A page size is a whole number from 1 to {MAX_PER_PAGE}."
    if not _whole_number(view_args.get("page", 1), MAX_PAGE):
        return f"A page number is a whole number from 1 to {MAX_PAGE}."
    return None


def _whole_number(value: object, top: int) -> bool:
    # Length first: int() of a text of more than 4300 digits raises.
    if isinstance(value, int):
        return 1 <= value <= top
    text = str(value)
    return (
        text.isascii()
        and text.isdigit()
        and len(text) <= len(str(top))
        and 1 <= int(text) <= top
    )


#: rq-dashboard 0.9 page views, by endpoint name, replaced by ours.
RQ_PAGES: dict[str, Callable[..., Response]] = {
    "queues_overview": _queues_view,
    "workers_overview": _workers_view,
    "jobs_overview": _jobs_view,
    "job_view": _job_view,
}
