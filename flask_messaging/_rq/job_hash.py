"""What a job hash of ours may hold, read with bounded memory.

Whoever can write to Redis can add fields to a job hash, and RQ acts on
many: ``webhooks`` (HTTP requests sent when the job ends), ``repeats_left``
(the job runs again), dependencies, callbacks, groups, rate limits. It also
inflates ``data`` and ``exc_info`` (zlib) whole: half a megabyte can become
gigabytes. :func:`check_job_hash` runs before RQ reads a hash: it accepts
only the fields our enqueue and RQ's handling of such a job write, with
values of the shapes they write, and inflates with a bound.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from rq.job import JobStatus

from ..dispatch import DISPATCH_FUNCTION
from ..errors import InvalidJobError, JobTooLargeError

__all__ = [
    "ALLOWED_FIELDS",
    "UNLIMITED_MESSAGE_BYTES",
    "check_job_hash",
    "field_limit",
    "inflate",
]

#: The message size the bound is derived from when
#: ``MESSAGING_MAX_MESSAGE_BYTES`` is ``None``.
UNLIMITED_MESSAGE_BYTES = 64 * 1024 * 1024

#: Room for what a job adds to its message: handler key, signature, the call.
_JOB_OVERHEAD = 64 * 1024


def field_limit(max_message_bytes: int | None) -> int:
    """The most bytes a job field may hold, raw or inflated.

    Twice the largest message (``MESSAGING_MAX_MESSAGE_BYTES``, or
    :data:`UNLIMITED_MESSAGE_BYTES` without one): the envelope travels as a
    JSON string inside the job's data, where escaping at most doubles it.
    """
    size = UNLIMITED_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
    return 2 * size + _JOB_OVERHEAD


def inflate(raw: bytes, limit: int, what: str) -> bytes | None:
    """Inflate zlib data ``raw`` if it is zlib, never past ``limit`` bytes.

    :return: the inflated bytes; ``None`` when ``raw`` is not a complete zlib
        stream (RQ then reads it as it is).
    :raises JobTooLargeError: it inflates to more than ``limit`` bytes.
    """
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(raw, limit + 1)
    except zlib.error:
        return None
    if len(data) > limit or inflater.unconsumed_tail:
        raise JobTooLargeError(
            f"{what} inflates to more than {limit:,} bytes (twice"
            " MESSAGING_MAX_MESSAGE_BYTES, plus room for the job): not read."
        )
    return data if inflater.eof else None


def _empty(value: bytes) -> bool:
    return value == b""


def _text(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _count(minimum: int) -> Callable[[bytes], bool]:
    """A check for a whole number, in decimal digits, of at least ``minimum``."""

    def check(value: bytes) -> bool:
        digits = value[1:] if value.startswith(b"-") else value
        return digits.isdigit() and int(value) >= minimum

    return check


def _intervals(value: bytes) -> bool:
    try:
        intervals = json.loads(value)
    except ValueError:
        return False
    return (
        isinstance(intervals, list)
        and bool(intervals)
        and all(type(i) is int and 0 <= i <= 10**9 for i in intervals)
    )


_STATUSES = frozenset(status.value.encode() for status in JobStatus)

#: Each field a job of ours may have, and a check of its raw value. ``data``
#: and ``exc_info`` are checked by :func:`check_job_hash` itself; dates are
#: left to RQ, which refuses what it cannot parse as it reads them.
ALLOWED_FIELDS: Mapping[str, Callable[[bytes], bool] | None] = {
    # Written by our enqueue (RQ's enqueue_many, recorded).
    "data": None,
    "created_at": _text,
    "enqueued_at": _text,
    "started_at": _text,
    "ended_at": _text,
    "last_heartbeat": _text,
    "origin": lambda v: bool(v) and _text(v),
    "description": _text,
    "worker_name": _text,
    "status": _STATUSES.__contains__,
    "timeout": _count(1),
    "result_ttl": _count(-1),
    "failure_ttl": _count(1),
    "ttl": _count(1),
    "retries_left": _count(0),
    "retry_intervals": _intervals,
    "success_callback_name": _empty,
    "failure_callback_name": _empty,
    "stopped_callback_name": _empty,
    "group_id": _empty,
    # Written by RQ as it handles such a job (retries, abandoned jobs).
    "number_of_retries": _count(0),
    "exc_info": None,
}


def check_job_hash(
    job_id: str, fields: Mapping[Any, bytes], limit: int
) -> dict[str, bytes]:
    """Check a job hash as read from Redis; return it ready for RQ to restore.

    ``data`` comes back inflated (RQ reads data that is not zlib as it is).

    :param limit: the most bytes of any field, raw or inflated
        (:func:`field_limit`).
    :raises InvalidJobError: a field our jobs never have, a value of a shape
        they never hold, or data that is not a call of our dispatch function
        with three strings.
    :raises JobTooLargeError: a field larger than ``limit``, raw or inflated.
    """
    checked: dict[str, bytes] = {}
    for name, value in fields.items():
        field = name.decode(errors="replace") if isinstance(name, bytes) else name
        if field not in ALLOWED_FIELDS:
            raise InvalidJobError(
                f"Refused job {job_id}: it has a field {field!r}, which"
                " flask-messaging jobs never have (added in Redis by someone"
                " else?). Delete it; if it was a message of yours, publish it"
                " again."
            )
        if len(value) > limit:
            raise JobTooLargeError(
                f"Refused job {job_id}: its field {field!r} holds {len(value):,}"
                f" bytes, over the {limit:,} that twice MESSAGING_MAX_MESSAGE_BYTES"
                " allows."
            )
        check = ALLOWED_FIELDS[field]
        if check is not None and not check(value):
            raise InvalidJobError(
                f"Refused job {job_id}: its field {field!r} holds"
                f" {value[:80]!r}, which flask-messaging jobs never hold."
            )
        checked[field] = value
    if "data" in checked:
        checked["data"] = _checked_data(job_id, checked["data"], limit)
    if "exc_info" in checked:
        # Inflated again by RQ, whole: checked here, and left compressed, so
        # that RQ's one inflation is the one bounded here.
        inflate(checked["exc_info"], limit, f"Job {job_id}'s exc_info")
    return checked


def _checked_data(job_id: str, raw: bytes, limit: int) -> bytes:
    data = inflate(raw, limit, f"Refused job {job_id}: its data")
    if data is None:
        data = raw
    try:
        call = msgspec.json.decode(data)
    except msgspec.DecodeError:
        call = None
    if (
        not isinstance(call, list)
        or len(call) != 4
        or call[0] != DISPATCH_FUNCTION
        or call[1] is not None
        or call[3] != {}
        or not isinstance(call[2], list)
        or len(call[2]) != 3
        or not all(isinstance(arg, str) for arg in call[2])
    ):
        what = call[0] if isinstance(call, list) and call else None
        if isinstance(what, str) and what != DISPATCH_FUNCTION:
            detail = f"it names {what!r}; workers of flask-messaging only run"
            detail += f" {DISPATCH_FUNCTION}"
        else:
            detail = (
                f"its data is not a call of {DISPATCH_FUNCTION} with a handler"
                " key, an envelope and a signature"
            )
        raise InvalidJobError(f"Refused job {job_id}: {detail}.")
    # JSON text starts with "[" or a space, never with a zlib header: RQ's own
    # attempt to inflate it fails at once, and it reads these bytes as they are.
    return data
