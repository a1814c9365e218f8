"""The serializer RQ uses for our jobs: JSON, never pickle."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["JSONSerializer", "ReadOnlySerializer"]

_encoder = msgspec.json.Encoder()


class JSONSerializer:
    """RQ serializer for job data, meta and results, as JSON.

    RQ's default is pickle, which would run whatever code a Redis writer put in
    a job. JSON decoding never does.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj)

    @staticmethod
    def loads(data: bytes | str) -> Any:
        return msgspec.json.decode(data)


class ReadOnlySerializer:
    """Reads job data, meta and results as JSON, for display only.

    What is not JSON (pickle written by someone else) becomes a placeholder:
    never unpickled, and no error page for it.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        raise TypeError("The dashboard does not write jobs with its reader.")

    @staticmethod
    def loads(data: bytes | str) -> Any:
        try:
            return JSONSerializer.loads(data)
        except Exception:
            return f"({len(data)} bytes that are not JSON, not shown)"
