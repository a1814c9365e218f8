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
  and only from the same origin (scheme, host and port; ``Sec-Fetch-Site``
  where the browser sends it);
- a queue, job, registry or page in the URL that Redis does not hold answers
  404 before any view runs;
- rq-dashboard's connection hook is replaced by one giving the app's Redis;
- its views are replaced (in ``app.view_functions``): its pages by
  :mod:`flask_messaging._rq.dashboard.pages` (our templates and one static
  script; none of its templates, which write URL and Redis values into
  scripts unescaped, is rendered), its JSON views and actions by
  :mod:`flask_messaging._rq.dashboard.views` (read with JSON, never pickle,
  never job arguments, credentials redacted);
- every response carries a Content-Security-Policy without inline script:
  pages allow only the script loaded with their nonce, the rest no script.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, Response, request

from .._rq.dashboard import RQ_BLUEPRINT, missing, mount_rq_dashboard, text
from ..state import MessagingState
from .page import PAGE_BLUEPRINT, page

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
    mount_rq_dashboard(app, prefix, state)
    app.register_blueprint(page, url_prefix=f"{prefix}/messaging")

    actions = frozenset(
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.partition(".")[0] in (RQ_BLUEPRINT, PAGE_BLUEPRINT)
        and "POST" in (rule.methods or ())
    )
    app.before_request(_guard(check, actions))
    app.after_request(_secure_headers(prefix))


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
            why = _cross_origin()
            if why is not None:
                # Browsers send basic auth credentials with cross-site requests.
                return text(403, why)
        view_args = request.view_args or {}
        if view_args.get("instance_number", 0) != 0:
            return text(404, "This dashboard shows one Redis: instance 0.")
        absent = missing(view_args)
        if absent is not None:
            return text(404, absent)
        return None

    return guard


_ORIGIN_HELP = (
    " If the app is behind a proxy that terminates HTTPS, have it send"
    " X-Forwarded-Proto and X-Forwarded-Host and wrap the app in werkzeug's"
    " ProxyFix, so that it knows the address the browser sees."
)


def _cross_origin() -> str | None:
    """Why this POST is not from one of the dashboard's pages, or None.

    The origin is compared whole (scheme, host and port): ``http://host``
    may not act on ``https://host``. ``Sec-Fetch-Site``, where the browser
    sends it, must say ``same-origin`` too.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return f"Refused an action sent from another site (Sec-Fetch-Site: {site})."
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return "Refused an action with neither an Origin nor a Referer header."
    mine = _origin(request.host_url)
    if mine is None or _origin(source) != mine:
        return (
            f"Refused an action from another origin ({source[:200]}): only the"
            f" dashboard's own pages, at {request.host_url.rstrip('/')}, may send"
            " it." + _ORIGIN_HELP
        )
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``url``; None for "null" or anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


#: Answers other than our pages (JSON, text, static files) run no script.
_NO_SCRIPT_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none';"
    " form-action 'none'; frame-ancestors 'none'"
)


def _secure_headers(prefix: str) -> Callable[[Response], Response]:
    def secure_headers(response: Response) -> Response:
        # By path too: the router's redirects, 404s and 405s have no blueprint.
        if request.blueprint in (RQ_BLUEPRINT, PAGE_BLUEPRINT) or (
            request.path == prefix or request.path.startswith(prefix + "/")
        ):
            response.headers["X-Frame-Options"] = "DENY"  # no clickjacked buttons
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers.setdefault("Content-Security-Policy", _NO_SCRIPT_POLICY)
            if request.endpoint not in _STATIC:
                response.headers["Cache-Control"] = "no-store"
        return response

    return secure_headers


_STATIC = frozenset({f"{RQ_BLUEPRINT}.static", f"{PAGE_BLUEPRINT}.static"})
