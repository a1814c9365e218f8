"""The transaction test app at two versions, for deploy-skew tests.

``SKEW_APP_NEWER=1`` in the environment makes the newer version: it has one
more async subscriber of :class:`~tests.tx_app.UserRegistered` than the older
one. Both load in processes of their own, like two deploys.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from flask_messaging.broker import get_message_broker
from flask_messaging.queue_names import LOW_PRIORITY

from .tx_app import UserRegistered
from .tx_app import create_app as create_tx_app
from .worker_app import record

#: The key of the subscriber only the newer version has.
ARCHIVE_KEY = "tests.skew.archive"


def archive(event: UserRegistered) -> None:
    record("archive", user_id=event.user_id, email=event.email)


def create_app(**config: Any) -> Flask:
    app = create_tx_app(**config)
    if os.environ.get("SKEW_APP_NEWER") == "1":
        with app.app_context():
            get_message_broker().subscribe_async(
                UserRegistered, archive, queue_name=LOW_PRIORITY, name=ARCHIVE_KEY
            )
    return app
