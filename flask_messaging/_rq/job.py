"""The RQ job class of our jobs: it only ever runs our dispatch function.

A worker started with ``flask messaging worker`` fetches jobs as
:class:`MessagingJob`, which reads only the job-hash fields our enqueue writes
(see :mod:`.job_hash`), with a bound on their size, and refuses to import any
other function or callback, so a job written into Redis by someone else cannot
make the worker run arbitrary code or act on anything else.
"""

from __future__ import annotations

import functools
from typing import Any

from rq.job import Job, get_current_job

from ..dispatch import DISPATCH_FUNCTION, dispatch, running_job
from ..errors import InvalidJobError
from ..signing import JobBinding
from .job_hash import ALLOWED_FIELDS, check_job_hash, field_limit

__all__ = ["MessagingJob", "current_job", "job_class_for"]


class MessagingJob(Job):
    """An RQ job that can only ever run :func:`~flask_messaging.dispatch.dispatch`.

    RQ imports whatever function and callbacks a job hash names, whatever the
    serializer, and acts on every field it knows: this class reads a hash
    only once :func:`~.job_hash.check_job_hash` has accepted
    every field (shape and size), refuses, before any import, every job that
    names something else, and such jobs fail at once, without retries.
    """

    #: The most bytes a field may hold, raw or inflated; per app, see
    #: :func:`job_class_for`.
    max_field_bytes = field_limit(1024 * 1024)

    #: The most fields a hash may have: a larger one is refused by the take
    #: before it is read (:mod:`.dequeue`).
    max_fields = len(ALLOWED_FIELDS)

    #: False for the displays' reads: ``data`` and ``exc_info`` are checked,
    #: then dropped, so that a page of jobs holds none of their payloads.
    #: Such a job is never saved.
    keeps_payload = True

    def restore(self, raw_data: Any) -> Any:
        """Read a job hash, refusing one that is not ours or too large.

        :raises InvalidJobError: a field our jobs never have or a value they
            never hold (:mod:`.job_hash`).
        :raises JobTooLargeError: a field over :attr:`max_field_bytes`.
        """
        if not raw_data or (b"data" not in raw_data and "data" not in raw_data):
            return super().restore(raw_data)  # RQ says: no such job
        checked = check_job_hash(self.id, raw_data, self.max_field_bytes)
        if not self.keeps_payload:
            checked["data"] = _PAYLOAD_NOT_KEPT
            checked.pop("exc_info", None)
        return super().restore(checked)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.keeps_payload:
            raise RuntimeError(
                f"Job {self.id} was read for display, without its payload:"
                " it cannot be saved."
            )
        super().save(*args, **kwargs)

    @property
    def func(self) -> Any:
        if self.func_name != DISPATCH_FUNCTION or self.instance is not None:
            raise InvalidJobError(
                f"Refused job {self.id}: it names {self.func_name!r}; workers of"
                f" flask-messaging only run {DISPATCH_FUNCTION}."
            )
        callbacks = [
            name
            for name in (
                self._success_callback_name,
                self._failure_callback_name,
                self._stopped_callback_name,
            )
            if name
        ]
        if callbacks:
            raise InvalidJobError(
                f"Refused job {self.id}: it names callbacks {callbacks!r}, which"
                " flask-messaging jobs never have."
            )
        return dispatch

    # Callbacks would be imported by name after the job ran: never.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def perform(self) -> Any:
        with running_job(JobBinding(self.id, self.origin)):
            try:
                return super().perform()
            except InvalidJobError:
                self.retries_left = 0  # a refused job would be refused again
                raise


#: What a job read for display holds instead of its call.
_PAYLOAD_NOT_KEPT = b'["(not kept)", null, [], {}]'


@functools.cache
def job_class_for(
    max_message_bytes: int | None, *, for_display: bool = False
) -> type[MessagingJob]:
    """:class:`MessagingJob` bounded for ``MESSAGING_MAX_MESSAGE_BYTES``.

    Workers, and whatever writes jobs back (a requeue), read jobs with it;
    ``flask messaging status`` and the dashboard read them with
    ``for_display=True``, which keeps no payload (see
    :attr:`MessagingJob.keeps_payload`).
    """
    return type(
        "MessagingJob",
        (MessagingJob,),
        {
            "max_field_bytes": field_limit(max_message_bytes),
            "keeps_payload": not for_display,
            "__module__": __name__,
        },
    )


def current_job() -> Job | None:
    """The RQ job this thread is running, if any (its ``id``, ``timeout``)."""
    job: Job | None = get_current_job()
    return job
