"""Turning async deliveries into RQ jobs, many per Redis round trip."""

from __future__ import annotations

import enum
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from rq import Queue, Retry
from rq.utils import now as utcnow
from rq.utils import utcformat

from ..config import JobOptions
from ..dispatch import DISPATCH_FUNCTION, Delivery
from ..lua import LuaScript
from ..signing import JobBinding, Signer
from ..subscription import Subscription
from .dequeue import MessagingQueue
from .serializer import JSONSerializer

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["MARKER_PREFIX", "RQJobs", "job_description", "retry_for"]


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


class RQJobs:
    """Writes one RQ job per delivery, in one atomic script per batch.

    Jobs are exactly what RQ's own ``Queue.enqueue_many`` writes: the commands
    it sends for a job are recorded once per subscription, as a template with
    slots for the job id, data, description and timestamps. The template
    travels once per script call and the server fills it in per job, so a job
    costs its four values on the wire instead of some sixty arguments, and
    no RQ ``Job`` object is ever built.
    """

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
        self._templates: dict[Subscription, _JobTemplate] = {}
        self._script = _enqueue_script(())
        self._recording = threading.Lock()

    def queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = MessagingQueue(
                name, connection=self._connection(), serializer=JSONSerializer
            )
        return queue

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Enqueue ``deliveries``: atomically up to :data:`SCRIPT_BATCH`."""
        self._run([("", (d,)) for d in deliveries], once=False, relayed_key=None)

    def enqueue_once(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
        relayed_key: str | None = None,
    ) -> list[bool]:
        """Enqueue each message's deliveries unless that message was already.

        ``messages`` pairs a message id with its deliveries (possibly none). A
        marker per message id, set in the same atomic script as the jobs,
        makes a second attempt (a relay racing the committing process, two
        relays) enqueue nothing. With ``relayed_key``, each message id is also
        appended to that list, for the relay to mark its outbox row.

        :return: per message, whether this call enqueued it.
        """
        return self._run(messages, once=True, relayed_key=relayed_key)

    def _run(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
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
            keys, args = self._script_arguments(batch, signer, now, once=once)
            if relayed_key is not None:
                keys.append(relayed_key)
            flags += map(bool, self._script.run(connection, keys, args))
        return flags

    def _script_arguments(
        self,
        messages: Sequence[tuple[str, Sequence[Delivery]]],
        signer: Signer,
        now: str,
        *,
        once: bool,
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [MARKER_TTL if once else "", now, len(messages)]
        for message_id, deliveries in messages:
            args += (message_id, len(deliveries))
            for delivery in deliveries:
                args += (
                    self._template(delivery.subscription).number,
                    delivery.job_id,
                    _job_data(delivery, signer),
                    job_description(delivery),
                )
        if not once:
            return [], args
        return [MARKER_PREFIX + message_id for message_id, _ in messages], args

    def _template(self, subscription: Subscription) -> _JobTemplate:
        template = self._templates.get(subscription)
        if template is None:
            with self._recording:
                template = self._templates.get(subscription)
                if template is None:
                    template = self._record(subscription, len(self._templates) + 1)
                    # The script first: a template is used as soon as it is
                    # seen, and the script must know it by then.
                    templates = (*self._templates.values(), template)
                    self._script = _enqueue_script(templates)
                    self._templates[subscription] = template
        return template

    def _record(self, subscription: Subscription, number: int) -> _JobTemplate:
        assert subscription.queue_name is not None
        options = self.options
        recorder = self._connection().pipeline(transaction=False)
        self.queue(subscription.queue_name).enqueue_many(
            [
                Queue.prepare_data(
                    DISPATCH_FUNCTION,
                    args=(),
                    timeout=subscription.timeout or options.timeout,
                    result_ttl=options.result_ttl,
                    failure_ttl=options.failure_ttl,
                    ttl=options.ttl,
                    description=_PROTOTYPE_DESCRIPTION,
                    job_id=_PROTOTYPE_ID,
                    retry=retry_for(options, subscription),
                )
            ],
            pipeline=recorder,
        )
        commands = [args for args, _ in recorder.command_stack]
        recorder.reset()
        return _JobTemplate.from_recording(number, commands)


def _job_data(delivery: Delivery, signer: Signer) -> bytes:
    """The job's ``data`` field, as RQ's JSON serializer would write it."""
    subscription = delivery.subscription
    key = subscription.key
    envelope = delivery.envelope
    assert subscription.queue_name is not None
    binding = JobBinding(delivery.job_id, subscription.queue_name)
    call: tuple[Any, ...] = (
        DISPATCH_FUNCTION,
        None,
        (key, envelope.decode(), signer.sign(binding, key, envelope)),
        {},
    )
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


_PROTOTYPE_ID = "flask-messaging-prototype"
_PROTOTYPE_DESCRIPTION = "flask-messaging prototype description"
_data_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class _JobTemplate:
    """RQ's commands for one job, as a Lua function of what differs per job.

    Compiled once by Redis into the enqueue script: each call then carries a
    job's id, data and description, and the server runs RQ's commands as
    recorded.
    """

    number: int
    #: ``templates[<number>] = function(job_id, data, description) ... end``
    lua: str

    @classmethod
    def from_recording(
        cls, number: int, commands: list[tuple[Any, ...]]
    ) -> _JobTemplate:
        lines = [f"templates[{number}] = function(job_id, data, description)"]
        for command in commands:
            args = []
            for i, arg in enumerate(command):
                previous = command[i - 1] if i else None
                if isinstance(arg, enum.Enum):
                    arg = arg.value
                if arg == _PROTOTYPE_DESCRIPTION:
                    args.append("description")
                elif isinstance(arg, str) and _PROTOTYPE_ID in arg:
                    before, after = arg.split(_PROTOTYPE_ID, 1)
                    parts = [_lua_string(before), "job_id", _lua_string(after)]
                    args.append(" .. ".join(p for p in parts if p != '""'))
                elif previous == "data" and isinstance(arg, bytes):
                    args.append("data")
                elif previous in ("created_at", "enqueued_at"):
                    args.append("now")
                else:
                    args.append(_lua_string(_literal(arg)))
            lines.append(f"  redis.call({', '.join(args)})")
        lines.append("end")
        return cls(number, "\n".join(lines))


def _literal(arg: object) -> bytes:
    """``arg`` as redis-py would send it."""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return repr(arg).encode()
    raise TypeError(f"unexpected argument {arg!r} in RQ's enqueue commands")


def _lua_string(value: str | bytes) -> str:
    """A Lua string literal of ``value``'s bytes."""
    data = value.encode() if isinstance(value, str) else value
    return (
        '"'
        + "".join(
            chr(byte) if 32 <= byte < 127 and byte not in (34, 92) else f"\\{byte:03d}"
            for byte in data
        )
        + '"'
    )


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


def _enqueue_script(templates: tuple[_JobTemplate, ...]) -> LuaScript:
    """The enqueue script with these templates compiled in."""
    source = "\n".join(template.lua for template in templates)
    return LuaScript(_ENQUEUE % {"templates": source})
