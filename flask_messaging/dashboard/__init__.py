"""The dashboard: rq-dashboard and a messaging page, behind the app's own auth.

``init_app`` mounts rq-dashboard at ``MESSAGING_DASHBOARD_URL_PREFIX`` (default
``/rq``; ``None`` mounts nothing) and the messaging page (subscribers, queue
depths, outbox backlog, recent failures) at ``<prefix>/messaging/``.

rq-dashboard 0.9 is a module-global blueprint with no authentication; it
connects to ``RQ_DASHBOARD_REDIS_URL`` on each request, reads jobs with pickle,
changes state on a GET (``/requeue/<queue>``) and inserts job fields into its
pages as raw HTML. Nothing global is changed here; on each app:

- every request to either blueprint passes the ``MESSAGING_DASHBOARD_AUTH``
  check first;
- every endpoint that accepts POST (rq-dashboard's delete, requeue,
  requeue-all, empty and compact; the page's requeue) accepts nothing else,
  and only from the same origin;
- rq-dashboard's connection hook is replaced by one giving the app's Redis;
- its views that read jobs are replaced (in ``app.view_functions``) by views
  that read with JSON, never pickle, never show job arguments (the message
  payloads) and escape what its templates insert as HTML.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask, Response, request
from rq_dashboard import web

from .page import PAGE_BLUEPRINT, page
from .rq_views import (
    RQ_BLUEPRINT,
    RQ_KEPT,
    RQ_VIEWS,
    redacted,
    rq_endpoints,
    text,
    unreviewed,
    use_app_redis,
)

if TYPE_CHECKING:
    from ..extension import MessagingState

__all__ = ["init_dashboard"]

_REALM = 'Basic realm="flask-messaging dashboard", charset="UTF-8"'

_LOCKED = (
    "The messaging dashboard is locked: MESSAGING_DASHBOARD_AUTH is not set. Set"
    ' it to a ("user", "password") pair for HTTP basic auth, or to a function'
    " that returns True for the requests to allow (it is called with no"
    " arguments, inside the request). To leave the dashboard out, set"
    " MESSAGING_DASHBOARD_URL_PREFIX = None."
)


def init_dashboard(app: Flask, state: MessagingState) -> None:
    """Mount rq-dashboard and the messaging page on ``app``, if configured."""
    prefix = app.config["MESSAGING_DASHBOARD_URL_PREFIX"]
    if prefix is None:
        return
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
        raise ValueError(
            "MESSAGING_DASHBOARD_URL_PREFIX must be a path such as '/rq', or None"
            f" to leave the dashboard out, not {prefix!r}."
        )
    check = _auth_check(app.config["MESSAGING_DASHBOARD_AUTH"])
    if RQ_BLUEPRINT in app.blueprints:
        raise RuntimeError(
            f"rq-dashboard is already registered on the app {app.name!r}."
            " flask-messaging mounts it at MESSAGING_DASHBOARD_URL_PREFIX, on the"
            " app's Redis, behind MESSAGING_DASHBOARD_AUTH: remove your"
            " registration, or set MESSAGING_DASHBOARD_URL_PREFIX = None."
        )
    prefix = prefix.rstrip("/")
    app.register_blueprint(web.blueprint, url_prefix=prefix)
    app.register_blueprint(page, url_prefix=f"{prefix}/messaging")

    hooks = app.before_request_funcs.setdefault(RQ_BLUEPRINT, [])
    hooks[:] = [use_app_redis, *(f for f in hooks if f is not web.push_rq_connection)]
    # Only shown, in its navigation bar: no connection is made from it.
    app.config["RQ_DASHBOARD_REDIS_URL"] = (redacted(state.settings.redis_url),)
    for name in rq_endpoints(app) - RQ_KEPT:
        # Views of a newer rq-dashboard are refused until reviewed here.
        view = RQ_VIEWS.get(name, unreviewed)
        app.view_functions[f"{RQ_BLUEPRINT}.{name}"] = view

    actions = frozenset(
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.partition(".")[0] in (RQ_BLUEPRINT, PAGE_BLUEPRINT)
        and "POST" in (rule.methods or ())
    )
    app.before_request(_guard(check, actions))
    app.after_request(_secure_headers)


# -- Access -------------------------------------------------------------------

Check = Callable[[], Response | None]


def _auth_check(auth: object) -> Check:
    """The check ``MESSAGING_DASHBOARD_AUTH`` asks for: None lets a request in."""
    if auth is None:
        return lambda: text(403, _LOCKED)
    if callable(auth):
        refused = "You are not allowed to see the messaging dashboard."
        return lambda: None if auth() else text(403, refused)
    if not (
        isinstance(auth, tuple | list)
        and len(auth) == 2
        and all(isinstance(value, str) and value for value in auth)
    ):
        # Never repr() it: it may hold a password.
        raise TypeError(
            'MESSAGING_DASHBOARD_AUTH must be a ("user", "password") pair of'
            " non-empty strings, a function returning True for the requests to"
            f" allow, or None, not a {type(auth).__name__}."
        )
    user, password = (value.encode() for value in auth)

    def basic_auth() -> Response | None:
        given = request.authorization
        if given is not None and given.type == "basic":
            # Both compared, always: no timing hint of which one is wrong.
            user_ok = hmac.compare_digest((given.username or "").encode(), user)
            password_ok = hmac.compare_digest((given.password or "").encode(), password)
            if user_ok & password_ok:
                return None
        response = text(401, "Log in to see the messaging dashboard.")
        response.headers["WWW-Authenticate"] = _REALM
        return response

    return basic_auth


def _guard(check: Check, actions: frozenset[str]) -> Callable[[], Response | None]:
    def guard() -> Response | None:
        if request.blueprint not in (RQ_BLUEPRINT, PAGE_BLUEPRINT):
            return None
        refused = check()
        if refused is not None:
            return refused
        if request.endpoint in actions:
            if request.method != "POST":
                response = text(405, "This action only accepts POST.")
                response.headers["Allow"] = "POST"
                return response
            if not _same_origin():
                # Browsers send basic auth credentials with cross-site requests.
                return text(403, "Refused an action that came from another site.")
        if (request.view_args or {}).get("instance_number", 0) != 0:
            return text(404, "This dashboard shows one Redis: instance 0.")
        return None

    return guard


def _same_origin() -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return (
        parts.scheme in ("http", "https")
        and parts.netloc.lower() == request.host.lower()
    )


def _secure_headers(response: Response) -> Response:
    if request.blueprint in (RQ_BLUEPRINT, PAGE_BLUEPRINT):
        response.headers["X-Frame-Options"] = "DENY"  # no clickjacked buttons
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        if request.endpoint != f"{RQ_BLUEPRINT}.static":
            response.headers["Cache-Control"] = "no-store"
    return response
