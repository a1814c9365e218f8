"""HMAC signatures that let a worker trust a job's contents."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["Signer"]

# Jobs are signed with a key derived from the configured secret, so the app's
# SECRET_KEY itself is never used to sign anything a Redis reader can see.
_PURPOSE = b"flask-messaging job signature v1"


def _derive(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


class Signer:
    """Signs a (handler key, envelope) pair; verifies with fallback keys too.

    :param secret: signs and verifies.
    :param fallbacks: older secrets still accepted when verifying, so that keys
        can be rotated without failing jobs already queued.
    """

    def __init__(
        self, secret: str | bytes, fallbacks: Iterable[str | bytes] = ()
    ) -> None:
        if not secret:
            raise ValueError("The signing secret is empty.")
        self._key = _derive(secret)
        self._keys = (self._key, *(_derive(f) for f in fallbacks if f))

    def sign(self, handler_key: str, envelope: bytes) -> str:
        return self._sign(self._key, handler_key, envelope)

    def verify(self, handler_key: str, envelope: bytes, signature: object) -> bool:
        if not isinstance(signature, str) or not signature.isascii():
            return False
        return any(
            hmac.compare_digest(self._sign(key, handler_key, envelope), signature)
            for key in self._keys
        )

    @staticmethod
    def _sign(key: bytes, handler_key: str, envelope: bytes) -> str:
        mac = hmac.new(key, handler_key.encode(), hashlib.sha256)
        mac.update(b"\x00")
        mac.update(envelope)
        return mac.hexdigest()
