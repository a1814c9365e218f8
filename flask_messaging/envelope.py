"""The wire format: a JSON envelope around a message, and its codec.

A message travels as::

    {"id": "…", "type": "users.registered", "version": 1,
     "occurred_at": "2026-11-26T08:00:00.123456Z",
     "correlation_id": "…", "causation_id": "…", "payload": {…}}

The payload is the message's dataclass fields encoded by msgspec; decoding
validates every field against the class's annotations.
"""

from __future__ import annotations

import contextvars
import datetime
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import msgspec

from .errors import MessageDecodeError, MessageEncodeError
from .message import Message, message_type_by_name, payload_codec

__all__ = ["Encoded", "Envelope", "current_envelope", "decode", "encode"]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A message on the wire, with the metadata a consumer needs."""

    #: Unique per published message: the key for idempotent consumers.
    id: str
    #: The message class's stable name (``Message`` ``name=``).
    type: str
    version: int
    occurred_at: datetime.datetime
    #: The id of the first message of the chain this one belongs to.
    correlation_id: str | None = None
    #: The id of the message whose handler published this one.
    causation_id: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"{}")


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_current: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "flask_messaging_envelope", default=None
)


class Encoded(NamedTuple):
    """An encoded envelope and the id of the message inside."""

    id: str
    data: bytes


# Every publish pays for these lookups: bound once. A NamedTuple's own
# ``__new__`` is Python code, twice the cost of building the tuple directly.
_new_tuple = tuple.__new__
_now = datetime.datetime.now
_UTC = datetime.UTC


# Ids need uniqueness, not secrecy. Within a millisecond a process shares its
# random tail and counts up: the id's text is then two joins, not a 128-bit
# integer built and formatted (about 0.3 us instead of 0.7 us).
_random_bits = random.getrandbits
_time_ns = time.time_ns
_HEX3 = [f"{n:03x}" for n in range(0x1000)]
_id_lock = threading.Lock()
_last_ms = 0
_sequence = 0
_head = ""  # the millisecond and the version digit
_tail = ""  # the variant and 62 random bits


def _forget_millisecond() -> None:
    # A forked child must not continue its parent's sequence and tail.
    global _last_ms
    _last_ms = 0


os.register_at_fork(after_in_child=_forget_millisecond)


def new_message_id() -> str:
    """A new message id: 32 hex digits of a UUIDv7 (RFC 9562).

    Ids start with the millisecond they were made in, so a table keyed by them
    (the outbox) is appended to in order; a per-process counter (12 bits, from
    a random start each millisecond) keeps ids of one process increasing
    within a millisecond, and 62 random bits drawn each millisecond (and in a
    forked child) keep processes apart.
    """
    global _last_ms, _sequence, _head, _tail
    with _id_lock:
        ms = _time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _sequence = ms, _random_bits(9)
            _head = f"{ms:012x}7"
            _tail = f"{_random_bits(62) | 0x8000000000000000:016x}"
        else:  # same millisecond, or the clock went back: keep increasing
            _sequence += 1
            if _sequence > 0xFFF:
                _last_ms, _sequence = _last_ms + 1, 0
                _head = f"{_last_ms:012x}7"
        return _head + _HEX3[_sequence] + _tail


def current_envelope() -> Envelope | None:
    """Return the envelope of the message being handled, if any.

    Inside an async handler (in a worker, inline with ``MESSAGING_ASYNC =
    False``, or in :meth:`~flask_messaging.broker.TestBroker.process_messages`)
    this gives the message id, its type and version, when it occurred, and its
    correlation and causation ids; messages published meanwhile record it as
    their cause. Sync subscribers run inside the publisher's call and see the
    publisher's own envelope, if any: usually ``None``.
    """
    return _current.get()


@contextmanager
def handling(envelope: Envelope) -> Iterator[None]:
    """Make ``envelope`` the one :func:`current_envelope` returns."""
    token = _current.set(envelope)
    try:
        yield
    finally:
        _current.reset(token)


def encode(message: Message, *, max_bytes: int | None = None) -> Encoded:
    """Encode ``message`` in a new envelope, checking it decodes back.

    :raises TypeError: the class cannot be sent (not a frozen dataclass, a
        field type the codec does not carry, or defined inside a function
        without ``name=``).
    :raises MessageEncodeError: a field value cannot be encoded, would not
        decode back into the class (a wrong type, NaN for a float, ...), would
        decode to a different value (a tuple in an ``Any`` field arrives as a
        list), nests deeper than :data:`~flask_messaging.payload.MAX_DEPTH`, or
        the result is larger than ``max_bytes``.

    :param max_bytes: the largest encoded envelope, in bytes; ``None`` for no
        limit.
    """
    cls = type(message)
    payload = payload_codec(cls).encode(message)
    cause = _current.get()
    message_id = new_message_id()
    data = _encoder.encode(
        Envelope(
            id=message_id,
            type=cls.__message_name__,
            version=cls.__message_version__,
            occurred_at=_now(_UTC),
            correlation_id=(cause.correlation_id or cause.id) if cause else message_id,
            causation_id=cause.id if cause else None,
            payload=msgspec.Raw(payload),
        )
    )
    if max_bytes is not None and len(data) > max_bytes:
        raise MessageEncodeError(
            f"{cls.__message_name__}: the encoded message is {len(data):,} bytes,"
            f" over MESSAGING_MAX_MESSAGE_BYTES ({max_bytes:,}); send a reference"
            " (an id or a URL) instead of the data, or raise the limit."
        )
    return _new_tuple(Encoded, (message_id, data))


def decode_envelope(data: bytes | str) -> Envelope:
    try:
        return _envelope_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        # Nothing we encode nests that deep (MAX_DEPTH): refuse, never crash.
        raise MessageDecodeError(f"Malformed message envelope: {exc}.") from exc


#: Why a worker meets a message type or handler it does not know.
UNKNOWN_HERE = "unknown to this app (another app on the same Redis, or older code)"


def decode(envelope: Envelope) -> Message:
    """Return the message an envelope carries, validated against its class."""
    cls = message_type_by_name(envelope.type)
    if cls is None:
        raise MessageDecodeError(
            f"Unknown message type {envelope.type!r}: {UNKNOWN_HERE}; no Message"
            " subclass of that name is imported in this process."
        )
    message: Message = payload_codec(cls).decode(envelope.payload)
    return message


def round_trip(message: Message) -> tuple[Envelope, Message]:
    """Encode then decode ``message``, as a worker would receive it."""
    envelope = decode_envelope(encode(message).data)
    return envelope, decode(envelope)
