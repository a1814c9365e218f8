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

__all__ = [
    "LOGGERS",
    "MASK",
    "RedactingFilter",
    "is_secret_name",
    "one_line",
    "redact",
    "redact_data",
    "redact_logs",
    "redact_url",
]

#: What a secret is replaced with.
MASK = "***"

# Where a URL starts. Its user-info runs to the last "@" before the end of
# the line or the next URL: a password may hold any character (a space, a
# quote, "<", "/" after digits), so where a URL "looks" finished says nothing.
# Every search is bounded or stops at a fixed character, so the time taken
# grows with the text, not with its square (exception texts can be large and
# are written by anyone who can raise or write to Redis).
_SCHEME = re.compile(r"(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]{0,30}://")
_URL_END = re.compile(r"[\r\n]|://")

# Query parameters, libpq-style "key=value" words and data keys whose value
# is a secret.
_SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|auth|credentials?|signature|dsn"
)
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
_SECRET_PARAMETER = re.compile(
    rf"(?P<key>(?<![\w-])[\w-]{{0,40}}?(?:{_SECRET_WORDS})[\w-]{{0,40}}"
    r"[ \t]{0,5}=[ \t]{0,5})"
    r"(?P<value>'[^'\n]{0,256}'|\"[^\"\n]{0,256}\"|[^\s&;,'\"<>)\]}]+)",
    re.IGNORECASE,
)
# A host name before ":<port>/": "localhost", a dotted name, "[::1]".
_HOST_LIKE = re.compile(r"localhost|\[[0-9a-fA-F:.]*\]|[\w-]+(?:\.[\w-]+)+")


def is_secret_name(name: str) -> bool:
    """Whether a parameter or data key called ``name`` holds a secret."""
    return _SECRET_NAME.search(name[:200]) is not None


def _masked_userinfo(userinfo: str) -> str | None:
    """What to print instead of ``userinfo``; None if it is not user-info."""
    user, colon, rest = userinfo.partition(":")
    if not colon and "/" in userinfo:
        return None  # a path with an "@" in it ("https://host/users/@ada")
    port, slash, _ = rest.partition("/")
    if slash and port.isdigit() and _HOST_LIKE.fullmatch(user):
        return None  # "host.example:8080/path/@x": a port, not a password
    if not colon or "/" in user or "@" in user:
        # A lone token ("https://TOKEN@host"), or a part that is not a name.
        return MASK
    return f"{user}:{MASK}"


def _masked_query(query: str) -> str:
    """``query`` ("a=1&password=x") with the values of secret names masked.

    A value runs to the next "&": redis-py reads ``?password=ab;cd,e)`` whole.
    """
    items = []
    for item in query.split("&"):
        key, equals, _ = item.partition("=")
        items.append(f"{key}={MASK}" if equals and is_secret_name(key) else item)
    return "&".join(items)


def _masked_url(url: str, userinfo_known: bool) -> str:
    """``url`` (from after its "scheme://") with user-info and query masked."""
    at = url.rfind("@")
    head, rest = "", url
    if at != -1:
        userinfo = url[:at]
        masked = _masked_userinfo(userinfo)
        if masked is None and userinfo_known:
            masked = MASK
        if masked is not None:
            head, rest = masked, url[at:]
    path, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        rest = f"{path}?{_masked_query(query)}{hash_}{fragment}"
    return head + rest


def _mask_urls(text: str) -> str:
    parts = []
    done = 0
    for scheme in _SCHEME.finditer(text):
        start = scheme.end()
        if start <= done:
            continue
        stop = _URL_END.search(text, start)
        end = stop.start() if stop else len(text)
        url = text[start:end]
        if "@" not in url and "?" not in url:
            continue
        parts += [text[done:start], _masked_url(url, userinfo_known=False)]
        done = end
    parts.append(text[done:])
    return "".join(parts)


def redact_url(url: str) -> str:
    """``url``, a URL from the settings, with its credentials masked.

    Parsed as one URL, as redis-py and SQLAlchemy parse it: everything between
    ``scheme://`` and the last ``@`` is user-info (the user name is kept, the
    password masked, whatever characters it holds), and the value of each
    secret query parameter (``password``, ``token``…) up to the next ``&``.
    A value that is not a URL is passed through :func:`redact`.

    :param url: a Redis or database URL, e.g. ``MESSAGING_REDIS_URL``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact(url)
    return f"{scheme}://{_masked_url(rest, userinfo_known=True)}"


def redact(text: str) -> str:
    """``text`` with the credentials of every URL and secret parameter masked.

    ``redis://:s3cret@host/0`` becomes ``redis://:***@host/0``,
    ``postgresql://app:s3cret@db/x`` becomes ``postgresql://app:***@db/x``,
    ``…?password=s3cret`` and ``password=s3cret`` become ``password=***``. The
    user name, host, port and path stay, to say which server is meant.

    :param text: any message; text without credentials comes back unchanged.
    """
    if "@" in text or "?" in text:
        text = _mask_urls(text)
    if "=" in text:
        text = _SECRET_PARAMETER.sub(lambda m: f"{m['key']}{MASK}", text)
    return text


def redact_data(value: object) -> object:
    """``value`` (JSON-like data: a job's meta or result) with secrets masked.

    The structure is walked: the value of every key that names a secret
    (``password``, ``api_token``, ``dsn``…) becomes :data:`MASK`, whatever it
    holds, and every other string goes through :func:`redact`. Other values
    come back as they are; tuples and sets come back as lists.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            key: MASK
            if isinstance(key, str) and is_secret_name(key)
            else redact_data(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_data(item) for item in value]
    return value


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


def one_line(text: str | None, *, last: bool = False, limit: int = 300) -> str:
    """One line of ``text``, redacted and cut to ``limit`` characters.

    The first line, or with ``last`` the last (a traceback's exception and its
    message); "" for no text.
    """
    lines = (text or "").strip().splitlines()
    if not lines:
        return ""
    return redact(lines[-1 if last else 0])[:limit]
