"""Credentials never shown: CLI errors, log lines, dashboard pages, exceptions."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry

from flask_messaging import Messaging, get_message_broker
from flask_messaging.connection import connect
from flask_messaging.extension import get_state
from flask_messaging.queue_names import HIGH_PRIORITY
from flask_messaging.redaction import LOGGERS, RedactingFilter, redact

from . import worker_app
from .conftest import RedisServer, free_port
from .test_cli import run
from .test_dashboard import AUTH, SAME_ORIGIN, Jobs, basic, page_paths, page_routes
from .worker_app import Boom

SECRET = "s3cret"
#: What a handler's exception might say, quoting a database URL.
DATABASE_URL = f"postgresql://app:{SECRET}@db.internal:5432/app"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:s3cret@host/0", "redis://:***@host/0"),
        ("rediss://default:s3cret@host:6380/1", "rediss://default:***@host:6380/1"),
        (
            f"Error: {DATABASE_URL} down",
            "Error: postgresql://app:***@db.internal:5432/app down",
        ),
        ("mysql+pymysql://u:p%40ss@h/d", "mysql+pymysql://u:***@h/d"),
        ("redis://:s3/cr@t#x@host/0", "redis://:***@host/0"),
        ("https://s3cret@api.example/x", "https://***@api.example/x"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=***&db=1"),
        (
            "unix:///run/redis.sock?db=0&password=s3cret",
            "unix:///run/redis.sock?db=0&password=***",
        ),
        ("host=db password=s3cret user=app", "host=db password=*** user=app"),
        ("dsn: password='s3 cret' host=db", "dsn: password=*** host=db"),
        (
            "https://x.example/?token=s3cret&api_key=s3cret",
            "https://x.example/?token=***&api_key=***",
        ),
        (
            "['redis://:s3cret@a/0', 'redis://:s3cret@b/0']",
            "['redis://:***@a/0', 'redis://:***@b/0']",
        ),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("https://example.com/users/@ada", "https://example.com/users/@ada"),
        ("mail ada@example.com at 9:30", "mail ada@example.com at 9:30"),
    ],
)
def test_redact_masks_the_credentials_of_every_url_in_a_text(
    text: str, shown: str
) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize(
    "noise",
    ["a://" * 250_000, "a-" * 500_000, "password='" * 100_000, "@" * 1_000_000],
    ids=["schemes", "dashes", "open-quotes", "ats"],
)
def test_redact_reads_a_large_hostile_text_once(noise: str) -> None:
    # Patterns that backtracked over the rest of the text at every start
    # would take hours on a megabyte; these read it in one pass.
    text = f"{noise} redis://:{SECRET}@host/0"
    assert redact(text).endswith(" redis://:***@host/0")


def test_the_log_filter_never_raises_for_arguments_that_do_not_fit() -> None:
    record = logging.LogRecord(
        "rq.worker", logging.ERROR, __file__, 1, "%d jobs", ("many",), None
    )
    assert RedactingFilter().filter(record)
    assert record.args == ("many",)


def test_the_log_filter_masks_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord(
        "rq.worker", logging.ERROR, __file__, 1, "Lost %s", (DATABASE_URL,), None
    )
    try:
        raise ConnectionError(f"cannot reach {DATABASE_URL}")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    line = logging.Formatter().format(record)
    assert SECRET not in line
    assert "Lost postgresql://app:***@db.internal" in line
    assert "ConnectionError: cannot reach postgresql://app:***@" in line


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@host:notaport/0",
        f"redis://:{SECRET[:2]}/{SECRET[2:]}@host/0",
        f"redis://:{SECRET[:3]}#{SECRET[3:]}@host/0",
    ],
)
def test_a_redis_url_that_does_not_parse_is_refused_without_its_password(
    url: str,
) -> None:
    with pytest.raises(ValueError, match="percent-encoded") as caught:
        connect(url)
    message = str(caught.value)
    assert SECRET not in message and SECRET[:2] not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_bad_config_value_is_quoted_without_its_password() -> None:
    app = Flask("bad")
    app.config["MESSAGING_REDIS_URL"] = f"redis://:{SECRET}@host/0".encode()
    with pytest.raises(ValueError, match="MESSAGING_REDIS_URL must be") as caught:
        Messaging(app)
    assert SECRET not in str(caught.value)
    assert "redis://:***@host/0" in str(caught.value)


def test_cli_errors_never_print_the_redis_password() -> None:
    # Nothing listens on this port: every command fails to reach Redis.
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    for command in (["status"], ["worker", "--burst"], ["requeue-failed"]):
        status, output = run(url, *command)
        assert status != 0, (command, output)
        assert SECRET not in output, (command, output)
        assert "Error" in output, (command, output)
    status, output = run(url, "status")
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in output


@pytest.fixture
def locked_redis(private_redis: RedisServer) -> str:
    """A redis-server that wants a password, and its URL with the password."""
    client = Redis.from_url(private_redis.url)
    client.config_set("requirepass", SECRET)
    client.close()
    return f"redis://:{SECRET}@127.0.0.1:{private_redis.port}/0"


def test_the_password_is_on_no_page_log_line_or_command_output(
    make_app: Callable[..., Flask],
    locked_redis: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(
        worker_app.messaging,
        MESSAGING_REDIS_URL=locked_redis,
        MESSAGING_DASHBOARD_AUTH=AUTH,
        MESSAGING_EMBEDDED_WORKER=False,
        MESSAGING_RETRY_INTERVALS=[0],
    )
    with app.app_context():
        get_message_broker().publish(Boom(f"cannot reach {DATABASE_URL}"))

    # A real worker process: RQ logs the handler's traceback as it fails.
    status, output = run(locked_redis, "worker", "--burst", "--no-scheduler")
    assert status == 0, output
    assert "cannot reach postgresql://app:***@db.internal" in output
    assert SECRET not in output
    status, output = run(locked_redis, "status")
    assert status == 0, output
    assert SECRET not in output

    redis = get_state(app).redis
    (failed,) = FailedJobRegistry(HIGH_PRIORITY, connection=redis).get_job_ids()

    client = app.test_client()
    jobs = Jobs(failed=failed, queued=failed)
    paths = (
        page_routes(app, jobs)
        | set(page_paths(jobs))
        | {
            f"/rq/0/data/job/{failed}.json",
            f"/rq/0/data/jobs/{HIGH_PRIORITY}/failed/8/asc/1.json",
        }
    )
    shown = []
    for path in sorted(paths):
        response = client.get(path, headers={**basic(), **SAME_ORIGIN})
        assert response.status_code in (200, 308), path
        shown.append(response.data.decode(errors="replace"))
        response.close()
    every = "\n".join(shown)
    assert SECRET not in every
    assert f"redis://:***@127.0.0.1:{locked_redis.rsplit(':', 1)[1]}" in every
    assert "postgresql://app:***@db.internal" in every  # the exception, masked

    # In this process too: a worker's log records, filtered at their logger.
    from flask_messaging.worker import make_worker

    with app.app_context():
        get_message_broker().publish(Boom(f"cannot reach {DATABASE_URL}"))
    caplog.set_level(logging.INFO)
    make_worker(app, [HIGH_PRIORITY]).work(burst=True, logging_level="INFO")
    assert "cannot reach postgresql://app:***@db.internal" in caplog.text
    assert SECRET not in caplog.text
    assert re.search(r"rq\.worker", " ".join(r.name for r in caplog.records))
    assert SECRET not in repr(get_state(app).settings)
    assert {"flask_messaging", "rq.worker", "rq.job"} <= set(LOGGERS)
