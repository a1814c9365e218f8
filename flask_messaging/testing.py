"""Test doubles and helpers: brokers that record, and event capture.

:class:`NullBroker` and :class:`TestBroker` stand in for the app's broker,
installed with :func:`~flask_messaging.broker.override_message_broker` (both
are also importable from :mod:`flask_messaging.broker`);
:func:`capture_events` collects what a block registers or publishes. The
pytest plugin (:mod:`flask_messaging.pytest_plugin`, installed with the
package) wraps these in fixtures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from . import envelope as codec
from .dispatch import run_delivery
from .errors import raise_failures, record_failure
from .message import Message
from .message_broker import MessageBroker
from .state import (
    current_message_limit,
    get_message_broker,
    get_state,
    override_message_broker,
)
from .subscription import SubscriptionRegistry
from .transaction import capturing_registrations

__all__ = ["NullBroker", "TestBroker", "capture_events"]


class _TestDouble(MessageBroker):
    """What the test brokers share: the size limit of the app they stand in for.

    :param max_message_bytes: the largest envelope accepted, in bytes; by
        default the current app's ``MESSAGING_MAX_MESSAGE_BYTES``, read at each
        publish, or that key's default (1 MiB) when no app is active, so a
        message too large for production fails in the test too. ``None``
        means no limit.
    """

    _follows_app = True
    _limit: int | None = None

    @property
    def max_message_bytes(self) -> int | None:
        """The size limit in bytes a publish applies now (``None``: no limit)."""
        return current_message_limit() if self._follows_app else self._limit

    @max_message_bytes.setter
    def max_message_bytes(self, value: int | None) -> None:
        self._follows_app = False
        self._limit = value


class NullBroker(_TestDouble):
    """Records published messages in :attr:`published` and delivers nothing.

    Each message is still encoded and checked as for a real publish, so a
    message no worker could receive fails here too (``TypeError`` or
    :class:`~flask_messaging.errors.MessageEncodeError`), and is not recorded.
    The size limit is the current app's (see :attr:`max_message_bytes`).
    """

    def __init__(self, registry: SubscriptionRegistry | None = None) -> None:
        super().__init__(registry)
        #: Every message published, in order.
        self.published: list[Message] = []

    def publish(self, message: Message) -> None:
        codec.encode(message, max_bytes=self.max_message_bytes)
        self.published.append(message)


class TestBroker(_TestDouble):
    """Queues published messages until :meth:`process_messages` delivers them.

    Delivery goes through the real encode and decode path, so a message that a
    worker could not receive fails here too. Async subscribers run inline and
    receive the decoded copy, as from a worker; sync subscribers receive the
    published object, as in production. The size limit is the app's (see
    :attr:`max_message_bytes`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, registry: SubscriptionRegistry | None = None) -> None:
        super().__init__(registry)
        #: Every message published, in order, processed or not.
        self.published: list[Message] = []
        self._pending: deque[tuple[Message, bytes]] = deque()

    @classmethod
    def from_app(cls, app: Flask | None = None) -> TestBroker:
        """A TestBroker with a copy of the subscriptions of ``app``.

        :param app: a Flask app set up with Messaging; defaults to the current one.
            Its ``MESSAGING_MAX_MESSAGE_BYTES`` becomes the broker's size limit.
        """
        state = get_state(app)
        broker = cls(state.broker.registry.copy())
        broker.max_message_bytes = state.settings.max_message_bytes
        return broker

    @property
    def pending(self) -> list[Message]:
        """Messages published and not processed yet."""
        return [message for message, _ in self._pending]

    def publish(self, message: Message) -> None:
        # Encode now: a bad message fails where it is published, as it would in
        # production.
        data = codec.encode(message, max_bytes=self.max_message_bytes).data
        self.published.append(message)
        self._pending.append((message, data))

    def process_messages(self, limit: int = 10_000) -> int:
        """Deliver pending messages, including those published meanwhile.

        :param limit: stop with an error after this many messages, a guard
            against handlers that publish each other in a loop.
        :return: how many messages were delivered.
        :raises DeliveryError: subscribers failed; the other subscribers of that
            message still received it, and later messages stay pending.
        """
        count = 0
        while self._pending:
            if count >= limit:
                raise RuntimeError(
                    f"process_messages delivered {limit} messages and more keep"
                    " coming: do handlers publish each other in a loop?"
                )
            original, data = self._pending.popleft()
            count += 1
            self._deliver(original, data)
        return count

    def _deliver(self, original: Message, data: bytes) -> None:
        envelope = codec.decode_envelope(data)
        route = self.registry.route(type(original))
        # Decoded for the check alone: sync subscribers get the object that
        # was published, as they do in production.
        codec.decode(envelope)
        errors = self.deliver_sync(original, route.sync, envelope.id, None)
        for subscription in route.async_:
            try:
                # Predicates see the published object, as in the publishing
                # process; the handler gets what a worker would decode.
                if subscription.matches(original):
                    run_delivery(subscription, data)
            except Exception as exc:
                errors = record_failure(
                    errors, subscription, envelope.type, envelope.id, exc
                )
        if errors:
            raise_failures(envelope.type, errors)


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
    with capturing_registrations(broker.published), override_message_broker(broker):
        yield broker.published
    if execute:
        target = get_message_broker()
        for message in list(broker.published):
            target.publish(message)
