"""HMAC signatures that let a worker trust a job's contents and place."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["JobBinding", "Signer", "SIGNATURE_PREFIX"]

# Jobs are signed with a key derived from the configured secret, so the app's
# SECRET_KEY itself is never used to sign anything a Redis reader can see.
_PURPOSE = b"flask-messaging job signature v2"

#: Starts every signature made by this version. Older signatures (a bare hex
#: digest) covered the handler and the envelope only: a copy of such a job
#: under another id or on another queue verified too, so they are refused.
SIGNATURE_PREFIX = "v2:"


class JobBinding(NamedTuple):
    """Where a job lives: its RQ job id and the queue it was enqueued on.

    Signed with the contents, so a copy under another id or pushed onto
    another queue is refused.
    """

    job_id: str
    queue: str


def _derive(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


class Signer:
    """Signs a job's (id, queue, handler key, envelope); verifies with fallbacks.

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

    def sign(self, binding: JobBinding, handler_key: str, envelope: bytes) -> str:
        """The signature of a job: ``"v2:"`` and 64 hex digits."""
        return SIGNATURE_PREFIX + self._sign(self._key, binding, handler_key, envelope)

    def verify(
        self,
        binding: JobBinding,
        handler_key: str,
        envelope: bytes,
        signature: object,
    ) -> bool:
        if not isinstance(signature, str) or not signature.isascii():
            return False
        if not signature.startswith(SIGNATURE_PREFIX):
            return False
        digest = signature[len(SIGNATURE_PREFIX) :]
        return any(
            hmac.compare_digest(self._sign(key, binding, handler_key, envelope), digest)
            for key in self._keys
        )

    @staticmethod
    def _sign(
        key: bytes, binding: JobBinding, handler_key: str, envelope: bytes
    ) -> str:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        # Each part prefixed by its length: no two different jobs sign the
        # same bytes, whatever characters their ids or queue names hold.
        for part in (
            binding.job_id.encode(),
            binding.queue.encode(),
            handler_key.encode(),
        ):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        mac.update(envelope)
        return mac.hexdigest()
