"""Turning async deliveries into RQ jobs, many per Redis round trip."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import WatchError
from rq import Queue, Retry
from rq.utils import now as utcnow
from rq.utils import utcformat

from ..config import JobOptions
from ..dispatch import DISPATCH_FUNCTION, Delivery
from ..lua import LuaScript
from ..signing import JobBinding, Signer
from ..subscription import Subscription
from .compat import RQ_VERSION, TESTED_RQ_RANGE
from .dequeue import MessagingQueue
from .job_template import (
    PROTOTYPE_DESCRIPTION,
    PROTOTYPE_ID,
    JobTemplate,
    Recording,
    RecordingMismatch,
)
from .serializer import JSONSerializer

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.queue import EnqueueData

__all__ = ["MARKER_PREFIX", "RQJobs", "job_description", "retry_for"]

logger = logging.getLogger("flask_messaging")


def retry_for(options: JobOptions, subscription: Subscription) -> Retry | None:
    """RQ's ``Retry`` for a subscription's jobs: its own, or the app's default."""
    retry = subscription.retry
    if isinstance(retry, Retry):
        return retry
    count = options.retry if retry is None else retry
    if count == 0:
        return None
    return Retry(max=count, interval=list(options.retry_intervals) or 0)


def job_description(delivery: Delivery) -> str:
    # Shown by RQ's tools and dashboards, some of which do not escape it: built
    # from names only, never from message data.
    return f"{delivery.message_type} -> {delivery.subscription.key}"


Messages = Sequence[tuple[str, Sequence[Delivery]]]


class RQJobs:
    """Writes one RQ job per delivery, in one atomic script per batch.

    Jobs are exactly what RQ's own ``Queue.enqueue_many`` writes: the commands
    it sends for a job are recorded once per subscription, as a template with
    slots for the job id, data, description and timestamps
    (:mod:`.job_template`). The template travels once per script call and the
    server fills it in per job, so a job costs its four values on the wire
    instead of some sixty arguments, and no RQ ``Job`` object is ever built.

    Where a recording does not match what :mod:`.job_template` knows (a
    newer RQ writing jobs differently), one warning names the difference and
    those jobs are written by RQ's own ``enqueue_many`` instead, with the same
    guarantees and more slowly (see :meth:`_enqueue_with_rq`).
    """

    #: The queue class jobs are written with: its pushes wake idle workers.
    queue_class: type[MessagingQueue] = MessagingQueue

    def __init__(
        self,
        connection: Callable[[], Redis],
        signer: Callable[[], Signer],
        options: JobOptions,
    ) -> None:
        self._connection = connection
        self._signer = signer
        self.options = options
        self._queues: dict[str, Queue] = {}
        #: None for a subscription whose recording did not match.
        self._templates: dict[Subscription, JobTemplate | None] = {}
        self._script = _enqueue_script(())
        self._recording = threading.Lock()
        self._mismatch_logged = False

    def queue(self, name: str) -> Queue:
        """RQ's queue ``name`` on the app's current Redis client."""
        connection = self._connection()
        queue = self._queues.get(name)
        # Made again for a new client (MessagingState.use_redis, close).
        if queue is None or queue.connection is not connection:
            queue = self._queues[name] = self.queue_class(
                name, connection=connection, serializer=JSONSerializer
            )
        return queue

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Enqueue ``deliveries``: atomically up to :data:`SCRIPT_BATCH`."""
        self._run([("", (d,)) for d in deliveries], once=False, relayed_key=None)

    def enqueue_once(
        self,
        messages: Messages,
        relayed_key: str | None = None,
    ) -> list[bool]:
        """Enqueue each message's deliveries unless that message was already.

        ``messages`` pairs a message id with its deliveries (possibly none). A
        marker per message id, set in the same atomic step as the jobs,
        makes a second attempt (a relay racing the committing process, two
        relays) enqueue nothing. With ``relayed_key``, each message id is also
        appended to that list, for the relay to mark its outbox row.

        :return: per message, whether this call enqueued it.
        """
        return self._run(messages, once=True, relayed_key=relayed_key)

    def _run(
        self,
        messages: Messages,
        *,
        once: bool,
        relayed_key: str | None,
    ) -> list[bool]:
        # One round trip per SCRIPT_BATCH messages (or jobs), each built just
        # before it is sent: memory stays bounded by the batch.
        connection = self._connection()
        signer = self._signer()
        now = utcformat(utcnow())
        flags: list[bool] = []
        for batch in _batches(messages):
            built = self._script_arguments(batch, signer, now, once=once)
            if built is None:  # a recording did not match: RQ writes them
                flags += self._enqueue_with_rq(
                    connection, batch, signer, once=once, relayed_key=relayed_key
                )
                continue
            keys, args = built
            if relayed_key is not None:
                keys.append(relayed_key)
            flags += map(bool, self._script.run(connection, keys, args))
        return flags

    def _script_arguments(
        self,
        messages: Messages,
        signer: Signer,
        now: str,
        *,
        once: bool,
    ) -> tuple[list[str], list[Any]] | None:
        """The script's keys and arguments; None if a delivery has no template."""
        args: list[Any] = [MARKER_TTL if once else "", now, len(messages)]
        for message_id, deliveries in messages:
            args += (message_id, len(deliveries))
            for delivery in deliveries:
                template = self._template(delivery.subscription)
                if template is None:
                    return None
                args += (
                    template.number,
                    delivery.job_id,
                    _job_data(delivery, signer),
                    job_description(delivery),
                )
        if not once:
            return [], args
        return [MARKER_PREFIX + message_id for message_id, _ in messages], args

    def _template(self, subscription: Subscription) -> JobTemplate | None:
        """The subscription's template, recorded on first use; None if RQ's
        recording did not match."""
        template = self._templates.get(subscription, _UNSEEN)
        if template is not _UNSEEN:
            return template
        with self._recording:
            template = self._templates.get(subscription, _UNSEEN)
            if template is not _UNSEEN:
                return template
            template = self._compile(subscription, len(self._templates) + 1)
            if template is not None:
                # The script first: a template is used as soon as it is
                # seen, and the script must know it by then.
                templates = [t for t in self._templates.values() if t is not None]
                self._script = _enqueue_script((*templates, template))
            self._templates[subscription] = template
        return template

    def record(self, subscription: Subscription) -> Recording:
        """RQ's enqueue of a prototype job of ``subscription``, recorded unsent.

        The commands RQ's ``Queue.enqueue_many`` sends through the pipeline
        it is given, on the queue class jobs are written with.
        """
        queue = self.queue(_queue_name(subscription))
        recorder = self._connection().pipeline(transaction=False)
        queue.enqueue_many(
            [self._prepare(subscription, PROTOTYPE_ID, (), PROTOTYPE_DESCRIPTION)],
            pipeline=recorder,
        )
        commands = [args for args, _ in recorder.command_stack]
        recorder.reset()
        return Recording(commands, queue.job_class.key_for(PROTOTYPE_ID), queue.key)

    def _compile(self, subscription: Subscription, number: int) -> JobTemplate | None:
        """Record and compile the template of ``subscription``'s jobs.

        :return: None if RQ's recording does not match (logged once).
        """
        try:
            return JobTemplate.from_recording(number, self.record(subscription))
        except RecordingMismatch as mismatch:
            if not self._mismatch_logged:
                self._mismatch_logged = True
                logger.warning(
                    "RQ %s writes jobs differently from the RQ versions"
                    " flask-messaging is tested with (rq%s): %s. Jobs of %s, and"
                    " of any other subscription where it differs, are written"
                    " with RQ's own Queue.enqueue_many instead: the same jobs,"
                    " more slowly (more round trips per batch, an RQ Job per"
                    " job).",
                    RQ_VERSION,
                    TESTED_RQ_RANGE,
                    mismatch,
                    subscription.key,
                )
            return None

    def _prepare(
        self,
        subscription: Subscription,
        job_id: str,
        args: tuple[str, ...],
        description: str,
    ) -> EnqueueData:
        """RQ's enqueue data for one of ``subscription``'s jobs."""
        options = self.options
        return Queue.prepare_data(
            DISPATCH_FUNCTION,
            args=args,
            timeout=subscription.timeout or options.timeout,
            result_ttl=options.result_ttl,
            failure_ttl=options.failure_ttl,
            ttl=options.ttl,
            description=description,
            job_id=job_id,
            retry=retry_for(options, subscription),
        )

    def _enqueue_with_rq(
        self,
        connection: Redis,
        messages: Messages,
        signer: Signer,
        *,
        once: bool,
        relayed_key: str | None,
    ) -> list[bool]:
        """Write ``messages``' jobs with RQ's own ``Queue.enqueue_many``.

        The path for deliveries whose recorded enqueue did not match: jobs
        as RQ writes them (our serializer, job ids, data, descriptions and
        signatures), the markers and the relayed list as the script writes
        them, all in one MULTI/EXEC transaction per batch. The markers are
        read first under WATCH: a marker set by another process before the
        transaction runs makes it fail, and it is tried again with what was
        set, so a message is still enqueued once.

        What this path cannot keep: a batch with markers costs three round
        trips instead of one, and the jobs are in the transaction only as
        long as RQ's ``enqueue_many`` writes through the pipeline it is
        given (RQ 2.12 and 3.x do).

        :return: per message, whether this call enqueued it.
        """
        markers = [MARKER_PREFIX + message_id for message_id, _ in messages]
        jobs = [
            [
                (
                    _queue_name(delivery.subscription),
                    self._prepare(
                        delivery.subscription,
                        delivery.job_id,
                        _call_args(delivery, signer),
                        job_description(delivery),
                    ),
                )
                for delivery in deliveries
            ]
            for _, deliveries in messages
        ]
        with connection.pipeline(transaction=True) as pipe:
            while True:
                try:
                    fresh = _unmarked(pipe, markers) if once else [True] * len(jobs)
                    self._write(
                        pipe, messages, jobs, fresh, once=once, relayed_key=relayed_key
                    )
                    return fresh
                except WatchError:
                    continue  # another process marked one meanwhile: read again

    def _write(
        self,
        pipe: Pipeline,
        messages: Messages,
        jobs: list[list[tuple[str, EnqueueData]]],
        fresh: list[bool],
        *,
        once: bool,
        relayed_key: str | None,
    ) -> None:
        """Queue the writes of the fresh messages on ``pipe``, then run them."""
        by_queue: dict[str, list[EnqueueData]] = {}
        relayed = []
        for (message_id, _), message_jobs, new in zip(
            messages, jobs, fresh, strict=True
        ):
            if not new:
                continue
            if once:
                pipe.set(MARKER_PREFIX + message_id, "1", ex=MARKER_TTL)
            for queue_name, data in message_jobs:
                by_queue.setdefault(queue_name, []).append(data)
            relayed.append(message_id)
        for queue_name, datas in by_queue.items():
            queue = self.queue(queue_name)
            for part in _without_repeats(datas):
                queue.enqueue_many(part, pipeline=pipe)
        if relayed_key is not None and relayed:
            pipe.rpush(relayed_key, *relayed)
        pipe.execute()


def _without_repeats(datas: list[EnqueueData]) -> Iterator[list[EnqueueData]]:
    """``datas`` in order, cut wherever a job id comes again.

    One handler subscribed to a class and to its subclass gets one job id
    for both deliveries of a message, written twice as the script writes it;
    RQ refuses an id twice in one ``enqueue_many`` call.
    """
    part: list[EnqueueData] = []
    ids: set[str | None] = set()
    for data in datas:
        if data.job_id in ids:
            yield part
            part, ids = [], set()
        part.append(data)
        ids.add(data.job_id)
    if part:
        yield part


def _unmarked(pipe: Pipeline, markers: list[str]) -> list[bool]:
    """Watch ``markers`` and say which are not set (a repeated one is set)."""
    pipe.watch(*markers)  # type: ignore[no-untyped-call]
    values = pipe.mget(markers)
    seen: set[str] = set()
    fresh = []
    for marker, value in zip(markers, values, strict=True):
        fresh.append(value is None and marker not in seen)
        seen.add(marker)
    pipe.multi()
    return fresh


def _queue_name(subscription: Subscription) -> str:
    name = subscription.queue_name
    assert name is not None  # an async subscription's
    return name


def _call_args(delivery: Delivery, signer: Signer) -> tuple[str, str, str]:
    """The arguments of a job's call of dispatch: key, envelope, signature."""
    key = delivery.subscription.key
    envelope = delivery.envelope
    binding = JobBinding(delivery.job_id, _queue_name(delivery.subscription))
    return key, envelope.decode(), signer.sign(binding, key, envelope)


def _job_data(delivery: Delivery, signer: Signer) -> bytes:
    """The job's ``data`` field, as RQ's JSON serializer would write it."""
    call: tuple[Any, ...] = (DISPATCH_FUNCTION, None, _call_args(delivery, signer), {})
    return _compress(_data_encoder.encode(call))


def _compress(data: bytes) -> bytes:
    """zlib, as RQ stores job data, with a small window and state.

    Setting up zlib's default 256 KiB of state is most of the cost for a
    payload of a few hundred bytes; any zlib reader decodes the result.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, 9, 2)
    return compressor.compress(data) + compressor.flush()


def _batches(
    messages: Sequence[tuple[str, Sequence[Delivery]]],
) -> Iterator[Sequence[tuple[str, Sequence[Delivery]]]]:
    """Up to SCRIPT_BATCH messages, and about as many jobs, per batch.

    A message's jobs are never split: its marker covers all of them.
    """
    batch: list[tuple[str, Sequence[Delivery]]] = []
    jobs = 0
    for message in messages:
        size = len(message[1])
        if batch and (len(batch) == SCRIPT_BATCH or jobs + size > SCRIPT_BATCH):
            yield batch
            batch, jobs = [], 0
        batch.append(message)
        jobs += size
    if batch:
        yield batch


_data_encoder = msgspec.json.Encoder()

# A subscription not recorded yet (None: recorded, and it did not match).
_UNSEEN = JobTemplate(0, "")


#: Messages, and about as many jobs, per script call: bounds the size of one
#: call and the memory it takes to build.
SCRIPT_BATCH = 200

#: Seconds a "this message was enqueued" marker lives: far longer than any
#: pause between a commit and its enqueue, or than a relay pass.
MARKER_TTL = 3600

MARKER_PREFIX = "flask_messaging:enqueued:"

_ENQUEUE = """
-- KEYS: with a marker ttl, one marker key per message; then, optionally,
-- the relayed list.
-- ARGV: marker ttl ('' for no markers), the time of enqueueing, the message
-- count, and per message: its id, its job count, and per job: its template
-- number, id, data and description.
local ttl, now = ARGV[1], ARGV[2]
local templates = {}
%(templates)s
local count = tonumber(ARGV[3])
local relayed = nil
if ttl ~= '' then relayed = KEYS[count + 1] end
local at = 4
local result = {}
for m = 1, count do
  local message_id, jobs = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local fresh = true
  if ttl ~= '' then
    fresh = redis.call('SET', KEYS[m], '1', 'NX', 'EX', ttl)
  end
  for j = 1, jobs do
    if fresh then
      templates[tonumber(ARGV[at])](ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
    end
    at = at + 4
  end
  if fresh and relayed then
    redis.call('RPUSH', relayed, message_id)
  end
  result[m] = fresh and 1 or 0
end
return result
"""


def _enqueue_script(templates: tuple[JobTemplate, ...]) -> LuaScript:
    """The enqueue script with these templates compiled in."""
    source = "\n".join(template.lua for template in templates)
    return LuaScript(_ENQUEUE % {"templates": source})
