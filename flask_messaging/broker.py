"""Brokers, and the one to publish to: the names applications import.

:class:`MemoryBroker` is the production broker (defined in
``flask_messaging.message_broker``); :class:`NullBroker` and
:class:`TestBroker` are test doubles (:mod:`.testing`), installed with
:func:`override_message_broker`; :func:`get_message_broker` returns the
broker of the current app, or the one a test installed (:mod:`.state`).
"""

from .message_broker import MemoryBroker, MessageBroker
from .state import get_message_broker, override_message_broker
from .testing import NullBroker, TestBroker

__all__ = [
    "MemoryBroker",
    "MessageBroker",
    "NullBroker",
    "TestBroker",
    "get_message_broker",
    "override_message_broker",
]
