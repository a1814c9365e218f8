"""RQ's enqueue of one job, recorded once and compiled into a Lua function.

:class:`~.enqueue.RQJobs` writes jobs exactly as RQ's ``Queue.enqueue_many``
does, without building an RQ ``Job`` per job: it records the commands RQ
sends for a prototype job, once per subscription, and :class:`JobTemplate`
compiles them into a Lua function of what differs from job to job (its id,
data, description and the time).

Before compiling, the recording is checked against what RQ 2.12 and 3.x
send: only the commands of :data:`KNOWN_COMMANDS`, arguments of the kinds
redis-py sends as they are, one ``data`` field holding the prototype's call
as RQ writes it with our serializer, one ``description``, the two times of
:data:`TIME_FIELDS` and no other time, and the prototype's id only in the
job's keys and in the one push onto its queue. A recording that does not
match (a newer RQ writing jobs differently) raises :class:`RecordingMismatch`
naming what differs; the jobs are then written by RQ's own
``enqueue_many`` (see :meth:`~.enqueue.RQJobs.enqueue_once`).
"""

from __future__ import annotations

import enum
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..dispatch import DISPATCH_FUNCTION
from .serializer import JSONSerializer

__all__ = [
    "KNOWN_COMMANDS",
    "PROTOTYPE_CALL",
    "PROTOTYPE_DESCRIPTION",
    "PROTOTYPE_ID",
    "TIME_FIELDS",
    "JobTemplate",
    "Recording",
    "RecordingMismatch",
]

#: The id and description of the job whose enqueue is recorded: each is
#: replaced by the real job's in the template.
PROTOTYPE_ID = "flask-messaging-prototype"
PROTOTYPE_DESCRIPTION = "flask-messaging prototype description"

#: The commands RQ 2.12 and 3.x send to enqueue one of our jobs: the queue
#: into ``rq:queues`` (SADD), the job hash (HSET), its time to live
#: (EXPIRE), its id onto the queue and a wake token (RPUSH).
KNOWN_COMMANDS = frozenset({"SADD", "HSET", "EXPIRE", "RPUSH"})

#: The job-hash fields RQ sets to the time of enqueueing: the template writes
#: the time of the script call there.
TIME_FIELDS = ("created_at", "enqueued_at")

#: The call a prototype job's ``data`` holds: (function, instance, args,
#: kwargs), as our JSON serializer writes it.
PROTOTYPE_CALL: list[Any] = [DISPATCH_FUNCTION, None, [], {}]

# How RQ writes a time (rq.utils.utcformat): 2026-11-30T12:00:00.000000Z.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@dataclass(frozen=True)
class Recording:
    """The commands RQ sent to enqueue the prototype job, unsent."""

    #: Each command's arguments, name first, as redis-py's
    #: ``Pipeline.command_stack`` holds them.
    commands: list[tuple[Any, ...]]
    #: The prototype job's hash key (``Job.key_for``).
    job_key: str
    #: The key of the queue it was enqueued on.
    queue_key: str


class RecordingMismatch(Exception):
    """RQ's recorded enqueue is not what :class:`JobTemplate` can compile.

    Its message names the difference.
    """


@dataclass(frozen=True, slots=True)
class JobTemplate:
    """RQ's commands for one job, as a Lua function of what differs per job.

    Compiled once by Redis into the enqueue script: each call then carries a
    job's id, data and description, and the server runs RQ's commands as
    recorded.
    """

    number: int
    #: ``templates[<number>] = function(job_id, data, description) ... end``
    lua: str

    @classmethod
    def from_recording(cls, number: int, recording: Recording) -> JobTemplate:
        """Compile the commands RQ sent to enqueue the prototype job.

        :raises RecordingMismatch: the commands are not what RQ 2.12 and 3.x
            send (see the module's docstring); the message names how.
        """
        compiler = _Compiler(recording.job_key, recording.queue_key)
        lines = [f"templates[{number}] = function(job_id, data, description)"]
        lines += [f"  redis.call({compiler.command(c)})" for c in recording.commands]
        lines.append("end")
        compiler.check_totals()
        return cls(number, "\n".join(lines))


class _Compiler:
    """Checks and translates recorded commands one by one."""

    def __init__(self, job_key: str, queue_key: str) -> None:
        self.job_key = job_key
        self.queue_key = queue_key
        self.fields: Counter[str] = Counter()
        self.pushes = 0

    def command(self, command: Sequence[Any]) -> str:
        """The Lua arguments of ``redis.call`` for one recorded command."""
        args = [_plain(arg) for arg in command]
        if len(args) < 2 or not isinstance(args[0], str | bytes):
            raise RecordingMismatch(f"RQ sent {_shown(args)}, which is not a command")
        name = _text(args[0]).upper()
        if name not in KNOWN_COMMANDS:
            raise RecordingMismatch(
                f"RQ sent {name} ({_shown(args)}), a command flask-messaging"
                f" does not know in an enqueue (it knows {_known()})"
            )
        key, rest = _text(args[1]), args[2:]
        if name == "HSET":
            return ", ".join([_lua(name), *self._hash(key, rest)])
        if name == "EXPIRE":
            return ", ".join([_lua(name), *self._expire(key, rest)])
        if name == "RPUSH" and key == self.queue_key:
            self.pushes += 1
            if rest != [PROTOTYPE_ID]:
                raise RecordingMismatch(
                    f"RQ pushed {_shown(rest)} onto queue {key}, not the job's id"
                )
            return ", ".join([_lua(name), _lua(key), "job_id"])
        # The queue into rq:queues, the wake token: the same for every job.
        for arg in args:
            self._refuse_prototype(arg, f"{name} {key}")
        return ", ".join(_lua(arg) for arg in args)

    def _hash(self, key: str, rest: list[Any]) -> list[str]:
        if key != self.job_key:
            raise RecordingMismatch(
                f"RQ wrote hash {key}, not the job's own hash {self.job_key}"
            )
        if not rest or len(rest) % 2:
            raise RecordingMismatch(
                f"RQ's HSET of {key} has {len(rest)} arguments, not field-value pairs"
            )
        out = [_with_job_id(key)]
        for raw_field, value in zip(rest[::2], rest[1::2], strict=True):
            field = _text(raw_field)
            self.fields[field] += 1
            out.append(_lua(field))
            if field == "data":
                _check_data(value)
                out.append("data")
            elif field == "description":
                if value != PROTOTYPE_DESCRIPTION:
                    raise RecordingMismatch(
                        f"RQ wrote description {_shown(value)}, not the job's"
                    )
                out.append("description")
            elif field in TIME_FIELDS:
                if not (isinstance(value, str) and _TIME.match(value)):
                    raise RecordingMismatch(
                        f"RQ wrote {_shown(value)} in {field}, not a time"
                    )
                out.append("now")
            else:
                if isinstance(value, str) and _TIME.match(value):
                    # The same time in every job: a slot this module lacks.
                    raise RecordingMismatch(
                        f"RQ wrote a time in field {field}; flask-messaging"
                        f" knows times in {', '.join(TIME_FIELDS)} only"
                    )
                self._refuse_prototype(value, f"field {field}")
                out.append(_lua(value))
        return out

    def _expire(self, key: str, rest: list[Any]) -> list[str]:
        # The job's keys (its hash, dependents, dependencies) live as long as
        # the job; every one of them names it.
        if PROTOTYPE_ID not in key:
            raise RecordingMismatch(f"RQ set a time to live on {key}, not a job key")
        if len(rest) != 1 or not isinstance(rest[0], int):
            raise RecordingMismatch(
                f"RQ's EXPIRE of {key} has {_shown(rest)}, not a number of seconds"
            )
        return [_with_job_id(key), _lua(rest[0])]

    def _refuse_prototype(self, arg: Any, where: str) -> None:
        text = arg if isinstance(arg, str) else None
        if isinstance(arg, bytes):
            text = arg.decode("latin-1")
        if text is not None and (PROTOTYPE_ID in text or PROTOTYPE_DESCRIPTION in text):
            raise RecordingMismatch(
                f"RQ wrote the job's id or description in {where}, where"
                " flask-messaging does not expect it"
            )

    def check_totals(self) -> None:
        for field in ("data", "description", *TIME_FIELDS):
            count = self.fields[field]
            if count != 1:
                raise RecordingMismatch(
                    f"RQ wrote the job's {field} field {count} times, not once"
                )
        if self.pushes != 1:
            raise RecordingMismatch(
                f"RQ pushed the job onto its queue {self.pushes} times, not once"
            )


def _check_data(value: Any) -> None:
    """Check that ``value`` is the prototype's call as RQ writes it.

    The template writes each job's own data in its place, made as
    :func:`~.enqueue._job_data` makes it: zlib of our serializer's
    (function, instance, args, kwargs).
    """
    try:
        call = JSONSerializer.loads(zlib.decompress(value))
    except Exception as exc:
        raise RecordingMismatch(
            f"RQ wrote the job's data as {_shown(value)}, which is not zlib of"
            f" JSON ({exc})"
        ) from exc
    if call != PROTOTYPE_CALL:
        raise RecordingMismatch(
            f"RQ wrote the job's call as {call!r}, not {PROTOTYPE_CALL!r}"
        )


def _with_job_id(key: str) -> str:
    """A Lua expression of ``key`` with the job's id for the prototype's."""
    before, after = key.split(PROTOTYPE_ID, 1)
    parts = [_lua(before), "job_id", _lua(after)]
    return " .. ".join(p for p in parts if p != '""')


def _plain(arg: Any) -> str | bytes | int | float:
    """``arg`` as one of the kinds redis-py sends as they are.

    :raises RecordingMismatch: an argument of another kind.
    """
    if isinstance(arg, enum.Enum):
        arg = arg.value
    if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float):
        raise RecordingMismatch(
            f"RQ sent an argument of kind {type(arg).__name__} ({arg!r}):"
            " flask-messaging knows text, bytes and numbers"
        )
    return arg


def _text(value: str | bytes | int | float) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _known() -> str:
    return ", ".join(sorted(KNOWN_COMMANDS))


def _lua(value: str | bytes | int | float) -> str:
    """A Lua string literal of ``value`` as redis-py would send it."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = repr(value).encode()
    return (
        '"'
        + "".join(
            chr(byte) if 32 <= byte < 127 and byte not in (34, 92) else f"\\{byte:03d}"
            for byte in data
        )
        + '"'
    )
