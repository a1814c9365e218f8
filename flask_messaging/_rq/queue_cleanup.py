"""A worker's clean-up of one queue, that no entry and no key can stop.

RQ's clean-up (``BaseWorker.clean_registries``) runs every step of every
queue in one loop, under a lock per queue: the first step that raises (an
id that is not UTF-8, a registry of another type, a job it cannot read)
stops the clean-up of that queue and of every later one, and leaves the
lock held until it expires. Here each queue is cleaned on its own, each of
RQ's steps is tried on its own, and the lock is always released. Before RQ
reads a key, the entries no one can read are taken out of it
(:func:`~.stored_ids.purge_ids`), and ids whose job is gone
are taken off the intermediate list in bulk (RQ reads each in turn: about
4 ms each, minutes for a list of a hundred thousand).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rq import registry as rq_registry
from rq import worker_registration
from rq.exceptions import StopRequested

from ..errors import LOST_REDIS
from .objects import REGISTRIES, registry_key
from .stored_ids import purge_ids

if TYPE_CHECKING:
    from rq import Queue

__all__ = ["clean_queue", "id_keys"]

logger = logging.getLogger("flask_messaging")

#: rq 3's registry of jobs ready to run (rq 2 has none).
_READY = getattr(rq_registry, "ReadyJobRegistry", None)


def id_keys(queue: Queue) -> dict[str, str]:
    """Every key of ``queue`` that holds job ids, with its type in Redis."""
    keys = {queue.key: "list", queue.intermediate_queue_key: "list"}
    for kind in REGISTRIES:
        keys[registry_key(kind, queue.name)] = "zset"
    if _READY is not None:
        keys[_READY.key_template.format(queue.name)] = "zset"
    return keys


def purge_queue(queue: Queue) -> bool:
    """Take the entries no one can read out of every id key of ``queue``.

    :return: whether every key is of the type RQ writes there (a key of
        another type is logged, see
        :func:`~.stored_ids.log_wrong_type`).
    """
    usable = True
    prefix = queue.job_class.redis_job_namespace_prefix
    for key, kind in id_keys(queue).items():
        ghosts = prefix if key == queue.intermediate_queue_key else ""
        purged = purge_ids(queue.connection, key, kind, job_prefix=ghosts)
        usable = usable and purged.wrong_type is None
    return usable


def clean_queue(worker: Any, queue: Queue, fail_left_behind: Any) -> None:
    """Run RQ's clean-up of ``queue``, step by step, under its lock.

    :param fail_left_behind: called with ``queue`` before RQ's steps, to fail
        the jobs left behind that RQ could not read.
    """
    if not queue.acquire_maintenance_lock():
        return  # another worker cleans it
    try:
        if not purge_queue(queue):
            return  # RQ's steps would raise at that key; logged
        steps = (
            ("failing unreadable jobs left behind", lambda: fail_left_behind(queue)),
            (
                "cleaning its registries",
                lambda: rq_registry.clean_registries(queue, worker._exc_handlers),
            ),
            (
                "cleaning its worker registry",
                lambda: worker_registration.clean_worker_registry(queue),
            ),
            (
                "cleaning its intermediate list",
                lambda: queue.intermediate_queue.cleanup(worker, queue),
            ),
        )
        for what, step in steps:
            try:
                step()
            except (*LOST_REDIS, StopRequested):
                # A SIGTERM during the clean-up raises StopRequested in it:
                # swallowed, the worker would not stop.
                raise
            except Exception:
                logger.exception(
                    "The clean-up of queue %s failed %s; the other steps and"
                    " queues go on, and it runs again at the next maintenance.",
                    queue.name,
                    what,
                )
    finally:
        queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
