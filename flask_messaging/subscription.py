"""Subscriptions and the registry that routes a message type to them."""

from __future__ import annotations

import hashlib
import inspect
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# RQ's public retry policy, part of the subscribe API: the one name of RQ's
# imported outside flask_messaging._rq (tests/test_layers.py).
from rq import Retry

from .coroutines import is_coroutine_function
from .message import NAME_PATTERN, Message, validate_message_class

__all__ = [
    "Handler",
    "Retry",
    "Predicate",
    "Route",
    "Subscription",
    "SubscriptionRegistry",
    "describe_subscription",
]

#: A handler: a function of the message; an ``async def`` one (or one that
#: returns an awaitable) is awaited.
Handler = Callable[[Any], object]
Predicate = Callable[[Any], object]


@dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """One handler subscribed to one message type (and its subclasses)."""

    message_type: type[Message]
    handler: Handler
    #: Stable name of the handler: what a job names, looked up by the worker.
    key: str
    #: ``None`` for a sync subscriber; the RQ queue name of an async one.
    queue_name: str | None = None
    predicate: Predicate | None = None
    #: Retries of a failed async job: a count, an :class:`rq.Retry`, or
    #: ``None`` for the app's ``MESSAGING_RETRY``.
    retry: int | Retry | None = None
    #: Seconds an async job may run; ``None`` for ``MESSAGING_JOB_TIMEOUT``.
    timeout: int | None = None
    #: Whether the handler is an ``async def`` (or wraps one): decided once,
    #: at subscribe time (:func:`~flask_messaging.coroutines.is_coroutine_function`).
    is_coroutine: bool = False

    @property
    def is_async(self) -> bool:
        return self.queue_name is not None

    @property
    def key_digest(self) -> str:
        """A short digest of :attr:`key`, usable inside an RQ job id."""
        return _digest(self.key)

    def matches(self, message: object) -> bool:
        return self.predicate is None or bool(self.predicate(message))


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Route:
    """The subscriptions a message type is delivered to, in subscription order."""

    sync: tuple[Subscription, ...]
    async_: tuple[Subscription, ...]


_NO_ROUTE = Route((), ())


class SubscriptionRegistry:
    """Subscriptions in order, with a per-type route cache.

    Subscribing to a class also subscribes to its subclasses; the walk along
    the MRO happens once per message type, not once per publish.
    """

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._routes: dict[type, Route] = {}
        self._async_by_key: dict[str, list[Subscription]] = {}

    def __iter__(self) -> typing.Iterator[Subscription]:
        return iter(list(self._subscriptions))

    def __len__(self) -> int:
        return len(self._subscriptions)

    def add(self, subscription: Subscription) -> None:
        for known in self._subscriptions:
            if (
                known.handler is subscription.handler
                and known.message_type is subscription.message_type
                and known.is_async == subscription.is_async
            ):
                kind = "async" if subscription.is_async else "sync"
                raise ValueError(
                    f"{subscription.key} is already subscribed ({kind}) to"
                    f" {subscription.message_type.__message_name__}; subscribing it"
                    " again would deliver every message to it twice."
                )
        if subscription.is_async:
            same_key = self._async_by_key.get(subscription.key, [])
            for known in same_key:
                if known.handler is not subscription.handler:
                    raise ValueError(
                        f"Two different async handlers share the key"
                        f" {subscription.key!r}; give one of them another name=."
                    )
            self._async_by_key[subscription.key] = [*same_key, subscription]
        self._subscriptions.append(subscription)
        self._routes.clear()

    def route(self, message_type: type) -> Route:
        """The subscriptions of ``message_type``, cached per type.

        :raises TypeError: ``message_type`` cannot be sent (see
            :func:`~flask_messaging.message.validate_message_class`).
        """
        route = self._routes.get(message_type)
        if route is None:
            route = self._routes[message_type] = self._build_route(message_type)
        return route

    def _build_route(self, message_type: type) -> Route:
        # A cached route is proof that the class was checked: publishing need
        # not ask again.
        validate_message_class(message_type)
        matching = [
            s for s in self._subscriptions if issubclass(message_type, s.message_type)
        ]
        if not matching:
            return _NO_ROUTE
        return Route(
            sync=tuple(s for s in matching if not s.is_async),
            async_=tuple(s for s in matching if s.is_async),
        )

    def async_subscription(
        self, key: str, message_type: type[Message]
    ) -> Subscription | None:
        """Return the async subscription of handler ``key`` for ``message_type``."""
        for subscription in self._async_by_key.get(key, ()):
            if issubclass(message_type, subscription.message_type):
                return subscription
        return None

    def copy(self) -> SubscriptionRegistry:
        clone = SubscriptionRegistry()
        for subscription in self._subscriptions:
            clone.add(subscription)
        return clone


def make_subscription(
    message_type: type[Message],
    handler: Handler,
    *,
    queue_name: str | None = None,
    predicate: Predicate | None = None,
    retry: int | Retry | None = None,
    timeout: int | None = None,
    name: str | None = None,
) -> Subscription:
    """Check a subscription's arguments and build it, with clear errors."""
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        raise TypeError(
            f"Cannot subscribe to {message_type!r}: subscribe to a Message subclass."
        )
    if not callable(handler):
        raise TypeError(f"Handler {handler!r} is not callable.")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"Predicate {predicate!r} is not callable.")
    if queue_name is not None and (not isinstance(queue_name, str) or not queue_name):
        raise TypeError(f"queue_name must be a non-empty string, not {queue_name!r}.")
    if retry is not None and not isinstance(retry, Retry):
        if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
            raise TypeError(
                f"retry must be a count >= 0 or an rq.Retry, not {retry!r}."
            )
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise TypeError(
            f"timeout must be a positive number of seconds, not {timeout!r}."
        )
    if name is not None and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
        raise ValueError(
            f"Handler name {name!r} is not valid; use letters, digits and"
            " '_', '.', ':', '-'."
        )
    if queue_name is not None:
        key = name if name is not None else async_handler_key(handler)
        if dataclasses_is_concrete(message_type):
            # Refuse a class the codec cannot carry now, not at the first publish.
            validate_message_class(message_type)
    else:
        # Only shown to people (logs, `flask messaging subscribers`).
        key = name if name is not None else handler_key(handler)
    return Subscription(
        message_type=message_type,
        handler=handler,
        key=key,
        queue_name=queue_name,
        predicate=predicate,
        retry=retry,
        timeout=timeout,
        is_coroutine=is_coroutine_function(handler),
    )


def dataclasses_is_concrete(cls: type) -> bool:
    """True for a message class meant to be instantiated (a dataclass)."""
    return "__dataclass_fields__" in cls.__dict__


def handler_key(handler: Handler) -> str:
    """The default name of a handler: ``module:qualname``."""
    module = getattr(handler, "__module__", None) or "?"
    qualname = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}:{qualname}"


def async_handler_key(handler: Handler) -> str:
    """The stable key of an async handler, refusing handlers a worker cannot find.

    A worker finds the handler by this key in its own registry, built by the
    app factory; a lambda or a function defined inside another has no name that
    means the same thing in another process.
    """
    key = handler_key(handler)
    qualname = getattr(handler, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname or not qualname:
        raise ValueError(
            f"Cannot subscribe {key} asynchronously: a worker finds async handlers"
            " by name, and lambdas, nested functions and callable objects have no"
            " stable one. Define the handler as a module-level function, or pass"
            " name='...' to subscribe_async."
        )
    if inspect.ismethod(handler):
        raise ValueError(
            f"Cannot subscribe the bound method {key} asynchronously; subscribe a"
            " module-level function, or pass name='...'."
        )
    if key.startswith("__main__:"):
        warnings.warn(
            f"The async handler {key} is defined in a script run as __main__;"
            " a worker that imports that module by its name will not find it."
            " Pass name='...' to subscribe_async, or move the handler to a module.",
            stacklevel=4,
        )
    return key


def infer_message_type(handler: Handler) -> type[Message]:
    """Read the message type from the annotation of the handler's first parameter."""
    try:
        parameters = list(inspect.signature(handler).parameters.values())
        hints = typing.get_type_hints(handler)
    except (TypeError, ValueError, NameError) as exc:
        raise TypeError(
            f"Cannot infer the message type of {handler_key(handler)} ({exc});"
            " pass it explicitly: subscribe(MessageType)."
        ) from exc
    annotation = hints.get(parameters[0].name) if parameters else None
    if not (isinstance(annotation, type) and issubclass(annotation, Message)):
        raise TypeError(
            f"Cannot infer the message type of {handler_key(handler)}: annotate its"
            " first parameter with a Message subclass (def handler(event:"
            " UserRegistered)) or pass the type: subscribe(UserRegistered)."
        )
    return annotation


def describe_subscription(subscription: Subscription) -> dict[str, object]:
    """A subscription as ``flask messaging subscribers --json`` and the
    dashboard show it: message type, handler key, mode, queue, predicate."""
    predicate = subscription.predicate
    return {
        "message_type": subscription.message_type.__message_name__,
        "handler": subscription.key,
        "mode": "async" if subscription.is_async else "sync",
        "queue": subscription.queue_name,
        "predicate": _callable_name(predicate) if predicate is not None else None,
    }


def _callable_name(function: object) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None) or repr(function)
    return f"{module}:{qualname}" if module else qualname
