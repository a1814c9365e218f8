"""The ``MESSAGING_*`` configuration keys: defaults and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .queue_names import PRIORITY_ORDER
from .redaction import redact

__all__ = ["DEFAULTS", "JobOptions", "OutboxSettings", "Settings"]


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The app's defaults for async jobs (``MESSAGING_RETRY`` and friends).

    A subscription's own ``retry`` and ``timeout`` win over these.
    """

    #: Retries of a failed job (0: none).
    retry: int = 3
    #: Seconds before each retry; the last repeats for further retries.
    retry_intervals: tuple[int, ...] = (10, 60, 300)
    #: Seconds a job may run before it is failed.
    timeout: int = 180
    #: Seconds a finished job and its result are kept (-1: for ever, 0: none).
    result_ttl: int = 500
    #: Seconds a failed job is kept in the failed registry.
    failure_ttl: int = 60 * 60 * 24 * 365
    #: Seconds a job may wait in its queue before it expires (None: for ever).
    ttl: int | None = None


_DEFAULT_JOBS = JobOptions()

#: Every key and its default; ``init_app`` sets each with ``setdefault``.
#: ``MESSAGING_ASYNC`` defaults to ``not app.testing``.
DEFAULTS: Mapping[str, Any] = {
    "MESSAGING_REDIS_URL": "redis://localhost:6379/0",
    "MESSAGING_QUEUES": list(PRIORITY_ORDER),
    "MESSAGING_RETRY": _DEFAULT_JOBS.retry,
    "MESSAGING_RETRY_INTERVALS": list(_DEFAULT_JOBS.retry_intervals),
    "MESSAGING_JOB_TIMEOUT": _DEFAULT_JOBS.timeout,
    "MESSAGING_RESULT_TTL": _DEFAULT_JOBS.result_ttl,
    "MESSAGING_FAILURE_TTL": _DEFAULT_JOBS.failure_ttl,
    "MESSAGING_JOB_TTL": _DEFAULT_JOBS.ttl,
    "MESSAGING_MAX_MESSAGE_BYTES": 1024 * 1024,
    "MESSAGING_EMBEDDED_WORKER": True,
    "MESSAGING_WORKER_THREADS": 1,
    "MESSAGING_WORKER_ASYNC_LIMIT": 100,
    "MESSAGING_SIGNING_KEY": None,
    "MESSAGING_SIGNING_FALLBACK_KEYS": None,
    "MESSAGING_OUTBOX": True,
    "MESSAGING_OUTBOX_TABLE": "messaging_outbox",
    "MESSAGING_OUTBOX_RETENTION": 7 * 24 * 3600,
    "MESSAGING_RELAY_DELAY": 10,
    "MESSAGING_RELAY_INTERVAL": 1.0,
    "MESSAGING_RELAY_BATCH_SIZE": 500,
    "MESSAGING_DASHBOARD_URL_PREFIX": "/rq",
    "MESSAGING_DASHBOARD_AUTH": None,
}


@dataclass(frozen=True)
class OutboxSettings:
    """How the outbox is kept and relayed: the ``MESSAGING_OUTBOX*`` and
    ``MESSAGING_RELAY_*`` keys."""

    #: Committed events are stored in the outbox table (with a database bound).
    enabled: bool
    #: The outbox table's name.
    table: str
    #: Seconds relayed rows are kept before the relay deletes them.
    retention: int
    #: Seconds the relay leaves a new row to the process that committed it.
    relay_delay: float
    #: Seconds the relay sleeps when there is nothing to do.
    relay_interval: float
    #: Rows one relay transaction claims, at most.
    relay_batch_size: int


@dataclass(frozen=True)
class Settings:
    """The validated ``MESSAGING_*`` values of one app."""

    #: Left out of ``repr()``: it may hold a password.
    redis_url: str = field(repr=False)
    #: The queues workers listen on by default, highest priority first.
    queues: tuple[str, ...]
    #: False: async subscribers run at once, in the publishing thread.
    is_async: bool
    jobs: JobOptions
    #: The largest encoded message, in bytes (None: no limit).
    max_message_bytes: int | None
    outbox: OutboxSettings
    #: With ``memory://``: run jobs in a worker thread of the app's process.
    embedded_worker: bool
    #: Jobs a ``flask messaging worker`` process runs at once (``--threads``).
    worker_threads: int = 1
    #: ``async def`` handlers a threaded worker process runs at once.
    worker_async_limit: int = 100

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return cls(
            redis_url=_string(config, "MESSAGING_REDIS_URL"),
            queues=_names(config, "MESSAGING_QUEUES"),
            is_async=_boolean(config, "MESSAGING_ASYNC"),
            jobs=JobOptions(
                retry=_count(config, "MESSAGING_RETRY", minimum=0),
                retry_intervals=_intervals(config, "MESSAGING_RETRY_INTERVALS"),
                timeout=_count(config, "MESSAGING_JOB_TIMEOUT", minimum=1),
                result_ttl=_count(config, "MESSAGING_RESULT_TTL", minimum=-1),
                failure_ttl=_count(config, "MESSAGING_FAILURE_TTL", minimum=1),
                ttl=_optional_count(config, "MESSAGING_JOB_TTL", minimum=1),
            ),
            max_message_bytes=_optional_count(
                config, "MESSAGING_MAX_MESSAGE_BYTES", minimum=1
            ),
            embedded_worker=_boolean(config, "MESSAGING_EMBEDDED_WORKER"),
            worker_threads=_count(config, "MESSAGING_WORKER_THREADS", minimum=1),
            worker_async_limit=_count(
                config, "MESSAGING_WORKER_ASYNC_LIMIT", minimum=1
            ),
            outbox=OutboxSettings(
                enabled=_boolean(config, "MESSAGING_OUTBOX"),
                table=_string(config, "MESSAGING_OUTBOX_TABLE"),
                retention=_count(config, "MESSAGING_OUTBOX_RETENTION", minimum=0),
                relay_delay=_seconds(config, "MESSAGING_RELAY_DELAY"),
                relay_interval=_seconds(config, "MESSAGING_RELAY_INTERVAL"),
                relay_batch_size=_count(
                    config, "MESSAGING_RELAY_BATCH_SIZE", minimum=1
                ),
            ),
        )


def _bad(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{key} must be {expected}, not {redact(repr(value))}.")


def _string(config: Mapping[str, Any], key: str) -> str:
    value = config[key]
    if not isinstance(value, str) or not value:
        raise _bad(key, value, "a non-empty string")
    return value


def _boolean(config: Mapping[str, Any], key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise _bad(key, value, "True or False")
    return value


def _count(config: Mapping[str, Any], key: str, minimum: int) -> int:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}")
    return value


def _seconds(config: Mapping[str, Any], key: str) -> float:
    value = config[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise _bad(key, value, "a number of seconds >= 0")
    return float(value)


def _optional_count(config: Mapping[str, Any], key: str, minimum: int) -> int | None:
    return None if config[key] is None else _count(config, key, minimum)


def _names(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = config[key]
    if isinstance(value, str) or not value:
        raise _bad(key, value, "a non-empty list of queue names")
    names = tuple(value)
    if not all(isinstance(name, str) and name for name in names):
        raise _bad(key, value, "a non-empty list of queue names")
    return names


def _intervals(config: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = config[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _bad(key, value, "a list of seconds >= 0")
    return tuple(value)
