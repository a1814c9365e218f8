"""Credentials kept out of every message, log line and page.

Redis and database URLs carry passwords (``redis://:s3cret@host/0``,
``postgresql://app:s3cret@db/app``, ``?password=s3cret``), and so do the
exceptions that quote them: redis-py, SQLAlchemy, a handler's own. Any text
that leaves the package (a CLI error, a log record, a dashboard page or JSON
answer) goes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import re

__all__ = ["LOGGERS", "MASK", "RedactingFilter", "redact", "redact_logs"]

#: What a secret is replaced with.
MASK = "***"

# Where a URL starts, and where the part that may hold user-info ends: at a
# space or quote, or where the next URL starts. Every pattern is bounded or
# stops at a fixed character, so the time taken grows with the text, not
# with its square (exception texts can be large and are written by anyone
# who can raise or write to Redis).
_SCHEME = re.compile(r"(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]{0,30}://")
_URL_END = re.compile(r"[\s'\"<>`]|://")

# Query parameters and libpq-style "key=value" words whose value is a secret.
_SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|auth|credentials?|signature"
)
_SECRET_PARAMETER = re.compile(
    rf"(?P<key>(?<![\w-])[\w-]{{0,40}}?(?:{_SECRET_WORDS})[\w-]{{0,40}}"
    r"[ \t]{0,5}=[ \t]{0,5})"
    r"(?P<value>'[^'\n]{0,256}'|\"[^\"\n]{0,256}\"|[^\s&;,'\"<>)\]}]+)",
    re.IGNORECASE,
)


def _masked_userinfo(userinfo: str) -> str | None:
    """What to print instead of ``userinfo``; None if it is not user-info."""
    user, colon, rest = userinfo.partition(":")
    if not colon and "/" in userinfo:
        return None  # a path with an "@" in it ("https://host/users/@ada")
    if "/" in rest and rest.partition("/")[0].isdigit() and "/" not in user:
        return None  # "host:8080/path/@x": a port, not a password
    if not colon or "/" in user or "@" in user:
        # A lone token ("https://TOKEN@host"), or a part that is not a name.
        return MASK
    return f"{user}:{MASK}"


def _mask_userinfo(text: str) -> str:
    # The user-info runs from "scheme://" to the last "@" before the end of
    # the URL: a password with an unencoded "/", "#", "?" or "@" (a URL that
    # parses wrongly, and so ends up in an error message) is covered too.
    parts = []
    done = 0
    for scheme in _SCHEME.finditer(text):
        start = scheme.end()
        if start <= done:
            continue
        stop = _URL_END.search(text, start)
        end = stop.start() if stop else len(text)
        at = text.rfind("@", start, end)
        if at == -1:
            continue
        masked = _masked_userinfo(text[start:at])
        if masked is not None:
            parts += [text[done:start], masked]
            done = at
    parts.append(text[done:])
    return "".join(parts)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL and secret parameter masked.

    ``redis://:s3cret@host/0`` becomes ``redis://:***@host/0``,
    ``postgresql://app:s3cret@db/x`` becomes ``postgresql://app:***@db/x``,
    ``…?password=s3cret`` and ``password=s3cret`` become ``password=***``. The
    user name, host, port and path stay, to say which server is meant.

    :param text: any message; text without credentials comes back unchanged.
    """
    if "@" in text:
        text = _mask_userinfo(text)
    if "=" in text:
        text = _SECRET_PARAMETER.sub(lambda m: f"{m['key']}{MASK}", text)
    return text


class RedactingFilter(logging.Filter):
    """A log filter that passes every record through :func:`redact`.

    The message is formatted here, with its arguments, and so is the
    traceback (``exc_text``), which handlers then print as they are: a URL in
    an exception's text is masked too. Attach it to a logger (it then sees
    that logger's own records) or to a handler (all records it prints).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the format: logging reports that
            # when the record is printed; a filter must not raise instead.
            message = None
        if message is not None:
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: The loggers whose records may quote a URL or an exception: ours, and each
#: one RQ 2.12 and 3.x log through (a logger's filters only see the records
#: made on that very logger, not those of its children).
LOGGERS = (
    "flask_messaging",
    "rq.worker",
    "rq.job",
    "rq.queue",
    "rq.registry",
    "rq.scheduler",
    "rq.worker_pool",
    "rq.cron",
    "rq.webhook",
    "rq.scripts",
    "rq.utils",
)


def redact_logs() -> None:
    """Give each logger of :data:`LOGGERS` a :class:`RedactingFilter`, once.

    Called by :meth:`~flask_messaging.Messaging.init_app`: every process that
    sets up an app (web, worker, relay, CLI) redacts what it logs.
    """
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
