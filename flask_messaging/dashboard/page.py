"""The messaging page: subscribers, queue depths, outbox backlog, failures."""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Response,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as BaseResponse

from .._rq.dashboard import text
from .._rq.status import (
    Failure,
    QueueStatus,
    queue_status,
    recent_failures,
    requeue_failed_job,
)
from ..outbox import outbox_backlog
from ..redaction import one_line
from ..state import get_state
from ..subscription import describe_subscription

__all__ = ["PAGE_BLUEPRINT", "page"]

logger = logging.getLogger("flask_messaging")

PAGE_BLUEPRINT = "messaging_dashboard"

#: Failed jobs listed, most recent first.
FAILURES_SHOWN = 50

page = Blueprint(
    PAGE_BLUEPRINT, __name__, template_folder="templates", static_folder="static"
)

# The page needs no script and loads nothing from elsewhere: its style sheet
# is a file of this blueprint.
_PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none';"
    " frame-ancestors 'none'"
)


@page.get("/")
def index() -> Response:
    """Subscribers, queue depths, outbox backlog and recent failures."""
    state = get_state()
    queues: list[QueueStatus] = []
    failures: list[Failure] = []
    redis_error = outbox_error = None
    try:
        queues = queue_status(state)
        failures = recent_failures(state, FAILURES_SHOWN)
    except RedisError as exc:
        redis_error = one_line(str(exc))
    try:
        backlog = outbox_backlog(state)
    except Exception as exc:
        logger.warning("The dashboard could not count the outbox.", exc_info=True)
        backlog, outbox_error = None, one_line(str(exc))
    rows = sorted(
        (describe_subscription(s) for s in state.registry),
        key=lambda r: str(r["message_type"]),
    )
    response = make_response(
        render_template(
            "messaging/dashboard.html",
            subscribers=rows,
            queues=queues,
            failures=failures,
            redis_error=redis_error,
            outbox_enabled=state.outbox is not None,
            backlog=backlog,
            outbox_error=outbox_error,
        )
    )
    response.headers["Content-Security-Policy"] = _PAGE_POLICY
    return response


@page.post("/failed/requeue")
def requeue() -> BaseResponse:
    """Move a failed job back onto its queue.

    The queue and the job id are form fields (``queue``, ``job``), not parts
    of the path: either may hold a ``/``.
    """
    state = get_state()
    queue_name = request.form.get("queue", "")
    job_id = request.form.get("job", "")
    if queue_name not in state.queue_names():
        return text(404, "There is no queue of that name among the app's queues.")
    if not job_id or not requeue_failed_job(state, queue_name, job_id):
        return text(404, "There is no failed job with that id in that queue.")
    return redirect(url_for(".index"), 303)
