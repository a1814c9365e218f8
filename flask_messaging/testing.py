"""Test helpers: capture the events a block registers or publishes.

The pytest plugin (:mod:`flask_messaging.pytest_plugin`, installed with the
package) wraps these in fixtures.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from . import envelope as codec
from .broker import (
    NullBroker,
    current_message_limit,
    get_message_broker,
    override_message_broker,
)
from .message import Message

__all__ = ["capture_events"]

_capturing: contextvars.ContextVar[list[Message] | None] = contextvars.ContextVar(
    "flask_messaging_capture", default=None
)


def captured_registration(message: Message) -> bool:
    """Record ``message`` if a :func:`capture_events` block is active."""
    captured = _capturing.get()
    if captured is None:
        return False
    # A bad or too large message fails here as it would for real.
    codec.encode(message, max_bytes=current_message_limit())
    captured.append(message)
    return True


@contextmanager
def capture_events(*, execute: bool = False) -> Iterator[list[Message]]:
    """Collect the messages registered or published inside the block.

    Like Django's ``captureOnCommitCallbacks``: events passed to
    :func:`~flask_messaging.transaction.register_event` are captured when they
    are registered, whether or not the transaction commits (so the helper also
    works in tests that roll every transaction back), and messages published
    with ``get_message_broker().publish`` are captured instead of delivered.

    .. code-block:: python

        with capture_events() as events:
            create_user("ada@example.com")
        assert events == [UserRegistered(user_id="1", email="ada@example.com")]

    Messages are checked as for a real publish, against the current app's
    ``MESSAGING_MAX_MESSAGE_BYTES`` (that key's default, 1 MiB, with no app).

    :param execute: publish the captured messages to the app's broker when the
        block ends without error, delivering them to its subscribers.
    """
    broker = NullBroker()
    token = _capturing.set(broker.published)
    try:
        with override_message_broker(broker):
            yield broker.published
    finally:
        _capturing.reset(token)
    if execute:
        target = get_message_broker()
        for message in list(broker.published):
            target.publish(message)
