"""Credentials never shown: CLI errors, log lines, dashboard pages, exceptions."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable

import pytest
from flask import Flask
from redis import Redis
from rq.registry import FailedJobRegistry
from rq.results import Result

from flask_messaging import Messaging, get_message_broker
from flask_messaging._rq.job import MessagingJob
from flask_messaging._rq.serializer import JSONSerializer
from flask_messaging.connection import connect
from flask_messaging.queue_names import HIGH_PRIORITY
from flask_messaging.redaction import (
    LOGGERS,
    RedactingFilter,
    redact,
    redact_data,
    redact_url,
)
from flask_messaging.state import get_state
from flask_messaging.worker import make_worker

from . import worker_app
from .servers import RedisServer, free_port
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
        ("redis://:ab'cd@127.0.0.1:6918/0 down", "redis://:***@127.0.0.1:6918/0 down"),
        ('redis://:a"b c@h/0', "redis://:***@h/0"),
        ("<redis://:a<b>c`d@h/0>", "<redis://:***@h/0>"),
        ("redis://:12/34@h/0", "redis://:***@h/0"),
        ("redis://app:12/34@h/0", "redis://app:***@h/0"),
        ("redis://h/0?password=ab;cd&db=1", "redis://h/0?password=***&db=1"),
        ("redis://h/0?db=1&password=a,b)c", "redis://h/0?db=1&password=***"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("http://example.com:8080/users/@ada", "http://example.com:8080/users/@ada"),
        ("https://example.com/users/@ada", "https://example.com/users/@ada"),
        ("mail ada@example.com at 9:30", "mail ada@example.com at 9:30"),
    ],
)
def test_redact_masks_the_credentials_of_every_url_in_a_text(
    text: str, shown: str
) -> None:
    assert redact(text) == shown


#: Passwords redis-py accepts unencoded, each with a character that ended a
#: URL for the former text scan, or that looked like a port.
HOSTILE_PASSWORDS = ["ab'cd", 'ab"c d', "a<b>c`d", "12/34", "s;c,r)t"]


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_redact_url_masks_a_password_of_any_characters(password: str) -> None:
    for url, shown in [
        (f"redis://:{password}@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://app:{password}@h/0", "redis://app:***@h/0"),
        (f"redis://h/0?db=1&password={password}", "redis://h/0?db=1&password=***"),
        (f"postgresql://app:{password}@db/x?sslmode=require", None),
    ]:
        assert password not in redact_url(url)
        assert password not in redact(f"Error at {url}: refused")
        if shown is not None:
            assert redact_url(url) == shown
    assert redact_url("memory://") == "memory://"


def test_secret_named_values_are_masked_in_structured_data() -> None:
    data = {
        "password": "s3cret",
        "api_token": "tok123",
        "dsn": 'redis://:p"w@h/0',
        "nested": [{"Secret_Key": ["s3cret"]}, "redis://:p w@h/0", 3],
        "count": 2,
    }
    assert redact_data(data) == {
        "password": "***",
        "api_token": "***",
        "dsn": "***",
        "nested": [{"Secret_Key": "***"}, "redis://:***@h/0", 3],
        "count": 2,
    }


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


@pytest.mark.parametrize("password", ["ab'cd", 'ab"c d', "a<b>c`d", "s;c,r)t"])
def test_a_url_that_does_not_parse_is_quoted_masked_whatever_the_password_holds(
    password: str,
) -> None:
    with pytest.raises(ValueError, match="percent-encoded") as caught:
        connect(f"redis://:{password}@host:notaport/0")
    assert password not in str(caught.value)
    assert "'redis://:***@host:notaport/0'" in str(caught.value)


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

    with app.app_context():
        get_message_broker().publish(Boom(f"cannot reach {DATABASE_URL}"))
    caplog.set_level(logging.INFO)
    make_worker(app, [HIGH_PRIORITY]).work(burst=True, logging_level="INFO")
    assert "cannot reach postgresql://app:***@db.internal" in caplog.text
    assert SECRET not in caplog.text
    assert re.search(r"rq\.worker", " ".join(r.name for r in caplog.records))
    assert SECRET not in repr(get_state(app).settings)
    assert {"flask_messaging", "rq.worker", "rq.job"} <= set(LOGGERS)


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS[:4])
def test_cli_errors_show_the_url_masked_whatever_the_password_holds(
    password: str,
) -> None:
    # Nothing listens on this port: the commands print the URL they tried.
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    for command in (["status"], ["worker", "--burst"]):
        status, output = run(url, *command)
        assert status != 0, output
        assert password not in output, output
        assert f"redis://:***@127.0.0.1:{port}/0" in output, output


def test_a_password_with_quotes_and_spaces_is_masked_on_the_pages(
    make_app: Callable[..., Flask], private_redis: RedisServer
) -> None:
    password = "ab'c d<e"
    client = Redis.from_url(private_redis.url)
    client.config_set("requirepass", password)
    client.close()
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    app = make_app(
        worker_app.messaging, MESSAGING_REDIS_URL=url, MESSAGING_DASHBOARD_AUTH=AUTH
    )
    for path in ("/rq/", "/rq/0/view/workers", "/rq/0/view/jobs"):
        response = app.test_client().get(path, headers=basic())
        assert response.status_code == 200, path
        page = html.unescape(response.text)
        assert "c d<e" not in page and "ab'c" not in page, path
        assert f"redis://:***@127.0.0.1:{private_redis.port}/0" in page, path


def test_job_metadata_and_results_are_shown_with_secret_values_masked(
    make_app: Callable[..., Flask], real_redis_url: str
) -> None:
    app = make_app(
        worker_app.messaging,
        MESSAGING_DASHBOARD_AUTH=AUTH,
        MESSAGING_RETRY_INTERVALS=[0],
    )
    with app.app_context():
        get_message_broker().publish(Boom("boom"))
    redis = get_state(app).redis
    make_worker(app, [HIGH_PRIORITY]).work(burst=True, logging_level="CRITICAL")
    (job_id,) = FailedJobRegistry(HIGH_PRIORITY, connection=redis).get_job_ids()
    job = MessagingJob.fetch(job_id, connection=redis, serializer=JSONSerializer)
    secrets = {"password": "s3cret", "api_token": "tok123", "dsn": 'redis://:p"w@h/0'}
    job.meta.update({**secrets, "attempt": 2})
    job.save_meta()
    Result.create(job, Result.Type.SUCCESSFUL, ttl=100, return_value=secrets)

    info = app.test_client().get(f"/rq/0/data/job/{job_id}.json", headers=basic())
    assert info.status_code == 200
    shown = info.text
    for value in ("s3cret", "tok123", 'p\\"w', 'p"w'):
        assert value not in shown, value
    # Jobs of ours never have meta: this one is shown as refused, and its
    # reason names the field, not the values.
    assert info.json is not None and info.json["status"] == "unreadable"
    assert info.json["metadata"] is None and info.json["result"] is None
    # Without the meta it is read again; a result (dispatch returns nothing
    # of its own) is never shown.
    redis.hdel(f"rq:job:{job_id}", "meta")
    info = app.test_client().get(f"/rq/0/data/job/{job_id}.json", headers=basic())
    assert info.json is not None and info.json["status"] != "unreadable"
    for value in ("s3cret", "tok123", 'p\\"w', 'p"w'):
        assert value not in info.text, value
    assert info.json["result"] is None
