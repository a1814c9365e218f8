"""Read the dashboard's pages in a process of their own: ``python -m
tests.reliability.display REDIS_URL PATH...``.

Prints one JSON line per path: its status code and body. The peak-memory
tests run it so that the process's peak RSS is the pages' alone.
"""

from __future__ import annotations

import base64
import json
import sys

from flask_messaging.queue_names import PRIORITY_ORDER

from .. import worker_app
from ..app_factory import build_app

AUTH = ("admin", "correct horse")


def main(url: str, *paths: str) -> None:
    app = build_app(
        "display",
        worker_app.messaging,
        MESSAGING_REDIS_URL=url,
        MESSAGING_QUEUES=list(PRIORITY_ORDER),
        MESSAGING_DASHBOARD_AUTH=AUTH,
    )
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    client = app.test_client()
    for path in paths:
        response = client.get(path, headers={"Authorization": f"Basic {token}"})
        print(json.dumps({"status": response.status_code, "body": response.text}))


if __name__ == "__main__":
    main(*sys.argv[1:])
