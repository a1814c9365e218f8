"""A minimal Flask-RQ app: the anchor of the Flask-RQ worker drain.

Its worker starts ``flask rq work-horse`` for every job, which imports this
module and builds the app again; keep it as small as an app can be.
Configured from the environment: ``BENCH_RQ_URL``.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_rq import RQ

rq = RQ()


@rq.job
def noop(n: int) -> None:
    """The anchor's job."""


def create_app() -> Flask:
    app = Flask("bench_rq")
    app.config["RQ_CONNECTION"] = os.environ["BENCH_RQ_URL"]
    rq.init_app(app)
    return app
