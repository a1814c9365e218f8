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

# The user-info of a URL: everything between "scheme://" and the last "@"
# before the host. A password with an unencoded "/", "#" or "@" (a URL that
# parses wrongly, and so ends up in an error message) is still covered: the
# match runs to the last "@" of the whole word.
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s'\"<>`]*)@"
)

# Query parameters and libpq-style "key=value" words whose value is a secret.
_SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|auth|credentials?|signature"
)
_SECRET_PARAMETER = re.compile(
    rf"(?P<key>\b[\w-]*(?:{_SECRET_WORDS})[\w-]*\s*=\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;,'\"<>)\]}]+)",
    re.IGNORECASE,
)


def _userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if not colon and "/" in userinfo:
        return match[0]  # a path with an "@" in it, no user-info
    if not colon or "/" in user or "@" in user:
        # A lone token ("https://TOKEN@host") or a part that is not a user
        # name: all of it is hidden.
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{user}:{MASK}@"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL and secret parameter masked.

    ``redis://:s3cret@host/0`` becomes ``redis://:***@host/0``,
    ``postgresql://app:s3cret@db/x`` becomes ``postgresql://app:***@db/x``,
    ``…?password=s3cret`` and ``password=s3cret`` become ``password=***``. The
    user name, host, port and path stay, to say which server is meant.

    :param text: any message; text without credentials comes back unchanged.
    """
    if "=" not in text and "@" not in text:
        return text
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['key']}{MASK}", text)


class RedactingFilter(logging.Filter):
    """A log filter that passes every record through :func:`redact`.

    The message is formatted here, with its arguments, and so is the
    traceback (``exc_text``), which handlers then print as they are: a URL in
    an exception's text is masked too. Attach it to a logger (it then sees
    that logger's own records) or to a handler (all records it prints).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
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
