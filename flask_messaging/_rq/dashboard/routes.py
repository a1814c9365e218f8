"""URL rules that let queue names and job ids hold a ``/``.

RQ accepts any queue name (``emails/high``) and any job id Redis holds; a
``%2F`` in a URL is decoded before routing, so rq-dashboard's rules
(``<queue_name>``, ``<job_id>``: one path segment) answered 404 for those
queues and jobs, and nothing could open, requeue, empty or delete them. Each
such rule gets a twin on the app (never on rq-dashboard's global blueprint)
whose queue name or job id takes the ``path`` converter, and whose page
numbers and sizes are read as text, to be checked by :func:`.pages.missing`.
"""

from __future__ import annotations

import re

from flask import Flask
from werkzeug.routing import Rule

__all__ = ["add_slash_rules"]

_NAME = re.compile(r"<(?:[a-z]+:)?(queue_name|job_id)>")
_NUMBER = re.compile(r"<int:(per_page|page)>")


def add_slash_rules(app: Flask, blueprint: str) -> None:
    """Give each rule of ``blueprint`` naming a queue or job a ``path`` twin."""
    for rule in list(app.url_map.iter_rules()):
        if rule.endpoint.partition(".")[0] != blueprint:
            continue
        if not _NAME.search(rule.rule):
            continue
        twin = _NUMBER.sub(r"<\1>", _NAME.sub(r"<path:\1>", rule.rule))
        app.url_map.add(
            Rule(
                twin,
                endpoint=rule.endpoint,
                methods=rule.methods,
                defaults=rule.defaults,
                strict_slashes=rule.strict_slashes,
            )
        )
