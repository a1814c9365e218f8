"""Processes, waiting, and RQ's abandoned-job repair, for the reliability tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.utils import parse_composite_key
from rq.worker import BaseWorker

from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer

from ..conftest import flask_messaging_command

APP = "tests.reliability.app:create_app"


def wait_until(
    condition: Callable[[], object], what: str, limit: float = 120.0
) -> None:
    """Poll ``condition`` until it holds; fail, saying ``what``, after ``limit`` s.

    The limit only keeps a broken run from hanging the suite: no test asserts
    how long anything took.
    """
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Gave up after {limit:.0f} s waiting for {what}.")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _current_workers(redis: Redis) -> dict[bytes, bytes]:
    """Process id -> name of the newest worker registered by that process.

    ``flask messaging worker`` replaces, in the same process, a worker whose
    loop quit when Redis went away; the old one's record may outlive it (its
    clean-up could not reach Redis), with the same, live, process id. Only
    the newest worker of a process is alive.
    """
    newest: dict[bytes, tuple[bytes, bytes]] = {}
    for key in redis.smembers("rq:workers"):  # type: ignore[union-attr]
        pid, birth = redis.hmget(key, "pid", "birth")
        if pid is None:
            continue
        name = key.removeprefix(b"rq:worker:")
        if pid not in newest or (birth or b"") > newest[pid][0]:
            newest[pid] = (birth or b"", name)
    return {pid: name for pid, (_, name) in newest.items()}


class Processes:
    """``flask messaging …`` processes of one test, each in a session of its own.

    Each command's output goes to ``<directory>/<name>.log``. :meth:`stop_all`
    (called by the fixture's teardown) stops every process group started,
    so that work horses, schedulers and ``--processes`` children go too.
    """

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.started: dict[str, subprocess.Popen[str]] = {}

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        with open(self.directory / f"{name}.log", "a") as log:
            process = flask_messaging_command(
                APP,
                *args,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # A name may be reused (a restarted worker): keep the old group too.
        self.started[f"{name}#{process.pid}"] = process
        return process

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text() if path.exists() else ""

    @staticmethod
    def kill(process: subprocess.Popen[str]) -> None:
        """``kill -9`` the process itself (not its group), and reap it."""
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.started.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.started.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.started.values():
            _signal_group(process.pid, signal.SIGKILL)
            if process.poll() is None:
                process.wait(10)
        self.started.clear()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def rescue_abandoned(redis: Redis, queue: str) -> int:
    """Hand RQ the jobs whose worker died, now instead of minutes later.

    RQ treats a started job as abandoned once its execution's heartbeat
    expires (about 90 s) and some worker's maintenance pass (every 10 min)
    runs ``StartedJobRegistry.cleanup()``, which retries it or moves it to
    the failed registry with ``AbandonedJobError``. This does the same at
    once for executions whose worker process is gone: it rewrites their
    scores into the past and runs that cleanup (see NOTES, RQ section).
    Executions of live workers are left alone.

    :return: how many executions were handed over.
    """
    registry = StartedJobRegistry(
        queue, connection=redis, job_class=MessagingJob, serializer=JSONSerializer
    )
    current = _current_workers(redis)
    dead: dict[bytes, float] = {}
    for member in redis.zrange(registry.key, 0, -1):
        job_id, execution_id = parse_composite_key(member.decode())
        worker = redis.hget(f"rq:execution:{job_id}:{execution_id}", "worker_name")
        pid = redis.hget(f"rq:worker:{worker.decode()}", "pid") if worker else None
        if pid is None or not alive(int(pid)) or current.get(pid) != worker:
            dead[member] = 1
    if not dead:
        return 0
    # xx: an execution that ended meanwhile (its record gone with it) stays gone.
    moved = int(redis.zadd(registry.key, dead, xx=True, ch=True))  # type: ignore[arg-type]
    registry.cleanup(timestamp=1)
    return moved


def rescue_stranded(
    redis: Redis, worker: BaseWorker, queue: str, seen: set[str]
) -> int:
    """Hand RQ the jobs stranded in ``queue``'s intermediate list, now.

    A worker on one queue moves each job it takes to an intermediate list
    (LMOVE), and off it once the job is registered as started. A job left
    there (the worker died, or Redis went down before the reply reached it)
    is failed (so retried) by RQ's maintenance when it sees it twice, a minute
    apart. This does the same for jobs seen on two calls (``seen`` carries
    the first sighting over): it dates their first sighting back and runs
    RQ's own cleanup.

    :return: how many jobs were handed over.
    """
    intermediate = IntermediateQueue(f"rq:queue:{queue}", redis)
    stranded = set(intermediate.get_job_ids())
    again = stranded & seen
    seen.clear()
    seen.update(stranded - again)
    for job_id in again:
        redis.set(intermediate.get_first_seen_key(job_id), 0, ex=3600)
    if again:
        rq_queue = Queue(
            queue, connection=redis, job_class=MessagingJob, serializer=JSONSerializer
        )
        intermediate.cleanup(worker, rq_queue)
    return len(again)


def settled(redis: Redis, queue: str) -> bool:
    """Nothing queued, running, scheduled or stranded on ``queue``."""
    return not any(
        (
            redis.llen(f"rq:queue:{queue}"),
            redis.llen(f"rq:queue:{queue}:intermediate"),
            redis.zcard(StartedJobRegistry(queue, connection=redis).key),
            redis.zcard(ScheduledJobRegistry(queue, connection=redis).key),
        )
    )
