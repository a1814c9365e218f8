"""rq-dashboard on an app: its blueprint, with our pages and views in its place.

:func:`mount_rq_dashboard` registers rq-dashboard's blueprint and replaces its
connection hook and every view that reads Redis (:mod:`.pages`,
:mod:`.views`); :mod:`flask_messaging.dashboard` puts the app's
authentication, origin checks and security headers in front of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from rq_dashboard import web

from ...redaction import redact_url
from ...state import MessagingState
from .pages import RQ_PAGES, missing
from .routes import add_slash_rules
from .views import (
    RQ_BLUEPRINT,
    RQ_KEPT,
    RQ_VIEWS,
    rq_endpoints,
    text,
    unreviewed,
    use_app_redis,
)

__all__ = ["RQ_BLUEPRINT", "missing", "mount_rq_dashboard", "text"]


def mount_rq_dashboard(app: Flask, prefix: str, state: MessagingState) -> None:
    """Register rq-dashboard at ``prefix`` on ``app``, on the app's Redis.

    Its pages, JSON views and actions are ours; views of a newer
    rq-dashboard, not reviewed here, answer 404.
    """
    app.register_blueprint(web.blueprint, url_prefix=prefix)
    add_slash_rules(app, RQ_BLUEPRINT)
    hooks = app.before_request_funcs.setdefault(RQ_BLUEPRINT, [])
    hooks[:] = [use_app_redis, *(f for f in hooks if f is not web.push_rq_connection)]
    # Only shown, in its navigation bar: no connection is made from it.
    app.config["RQ_DASHBOARD_REDIS_URL"] = (redact_url(state.settings.redis_url),)
    replaced: dict[str, Callable[..., Any]] = {**RQ_VIEWS, **RQ_PAGES}
    for name in rq_endpoints(app) - RQ_KEPT:
        # Views of a newer rq-dashboard are refused until reviewed here.
        view = replaced.get(name, unreviewed)
        app.view_functions[f"{RQ_BLUEPRINT}.{name}"] = view
