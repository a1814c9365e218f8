"""Names of the RQ queues async subscribers are delivered on.

Each constant is the RQ queue name used as it is, so ``rq info`` and the
dashboard show the same names. Workers started with ``flask messaging worker``
listen on :data:`PRIORITY_ORDER` by default (``MESSAGING_QUEUES``) and always
take a job from an earlier queue first.
"""

from typing import Final

#: For work a user is waiting on (a password-reset email).
HIGH_PRIORITY: Final = "high"

#: The queue of :meth:`~flask_messaging.broker.MessageBroker.subscribe_async`
#: when no ``queue_name`` is given.
DEFAULT_PRIORITY: Final = "default"

#: For work nobody waits on (analytics, digests, clean-ups).
LOW_PRIORITY: Final = "low"

#: The order workers drain queues in: highest priority first.
PRIORITY_ORDER: Final = (HIGH_PRIORITY, DEFAULT_PRIORITY, LOW_PRIORITY)
