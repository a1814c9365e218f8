"""Typed domain events for Flask: sync subscribers, RQ jobs, transactions."""

from .broker import (
    MemoryBroker,
    NullBroker,
    TestBroker,
    get_message_broker,
    override_message_broker,
)
from .envelope import Envelope, current_envelope
from .errors import (
    DeliveryError,
    EnqueueError,
    InvalidJobError,
    JobTooLargeError,
    MessageDecodeError,
    MessageEncodeError,
    MessagingError,
    UnknownHandlerError,
)
from .extension import Messaging
from .idempotency import idempotent
from .message import Message
from .sender import wait_for_sent
from .transaction import register_event, transactional

__version__ = "0.1.0.dev0"

__all__ = [
    "DeliveryError",
    "EnqueueError",
    "Envelope",
    "InvalidJobError",
    "JobTooLargeError",
    "MemoryBroker",
    "Message",
    "MessageDecodeError",
    "MessageEncodeError",
    "Messaging",
    "MessagingError",
    "NullBroker",
    "TestBroker",
    "UnknownHandlerError",
    "current_envelope",
    "get_message_broker",
    "idempotent",
    "override_message_broker",
    "register_event",
    "transactional",
    "wait_for_sent",
]
