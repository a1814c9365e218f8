"""The :class:`Message` base class and the checks that keep messages portable."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from .payload import PayloadCodec

__all__ = [
    "Message",
    "message_type_by_name",
    "payload_codec",
    "validate_message_class",
]

#: Names and keys end up in job ids, descriptions and dashboards: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
# A default name is the module and qualified name, which may hold "<locals>".
_DEFAULT_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:<>-]*$")

_types_by_name: dict[str, type[Message]] = {}


class Message:
    """Base class of every message: subclass it as a frozen dataclass.

    .. code-block:: python

        @dataclass(frozen=True)
        class UserRegistered(Message, name="users.registered", version=2):
            user_id: str
            email: str

    :param name: the stable name carried on the wire; defaults to the module and
        qualified name of the class. Give one explicitly to move or rename the
        class without breaking jobs already queued; a class defined inside a
        function needs one to be sent at all.
    :param version: the schema version carried on the wire.

    ``Message`` itself and intermediate classes that are not dataclasses may be
    subscribed to: their subscribers receive every subclass.
    """

    __message_name__: ClassVar[str]
    __message_version__: ClassVar[int]
    #: Whether the name was given with ``name=`` (else module and qualname).
    __message_named__: ClassVar[bool]

    def __init_subclass__(
        cls, *, name: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        # dataclass(slots=True) re-creates the class (keeping our attributes,
        # not the keywords, and setting __qualname__ only afterwards): it
        # replaces the first creation under the same name.
        recreated = "__message_name__" in own
        named = name is not None or own.get("__message_named__", False)
        if name is None:
            name = own.get("__message_name__") or f"{cls.__module__}.{cls.__qualname__}"
        if version is None:
            version = own.get("__message_version__", 1)
        pattern = NAME_PATTERN if named else _DEFAULT_NAME_PATTERN
        if not isinstance(name, str) or not pattern.match(name):
            raise TypeError(
                f"{cls.__qualname__}: message name {name!r} is not valid; use letters,"
                " digits and '_', '.', ':', '-' (for example 'users.registered')."
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TypeError(
                f"{cls.__qualname__}: message version must be a positive integer,"
                f" not {version!r}."
            )
        cls.__message_name__ = name
        cls.__message_named__ = named
        cls.__message_version__ = version
        _register_name(cls, name, replaces=recreated)


def _register_name(cls: type[Message], name: str, replaces: bool) -> None:
    known = _types_by_name.get(name)
    if (
        not replaces
        and known is not None
        and known is not cls
        and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__)
    ):
        raise TypeError(
            f"Message name {name!r} is claimed by both {_dotted(known)} and"
            f" {_dotted(cls)}; give one of them another name=."
        )
    # A class defined again under the same dotted path (a reload, a test
    # defining its messages locally) replaces the earlier one.
    _types_by_name[name] = cls


def message_type_by_name(name: str) -> type[Message] | None:
    """Return the message class imported in this process under ``name``."""
    return _types_by_name.get(name)


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------
# Which classes may travel: checked once per class, then cached with the codec.

_codecs: dict[type, PayloadCodec] = {}


def validate_message_class(cls: type) -> None:
    """Raise :class:`TypeError` unless instances of ``cls`` can be sent.

    A sendable message is a frozen dataclass subclass of :class:`Message` with
    a stable name whose fields all have types the codec carries: msgspec
    decides (see :class:`~flask_messaging.payload.PayloadCodec`). The answer,
    and the codec built to reach it, are cached per class.
    """
    if cls not in _codecs:
        _codecs[cls] = _build_codec(cls)


def payload_codec(cls: type) -> PayloadCodec:
    """The codec of a message class, checking the class the first time.

    :raises TypeError: as :func:`validate_message_class`.
    """
    codec = _codecs.get(cls)
    if codec is None:
        codec = _codecs[cls] = _build_codec(cls)
    return codec


def _build_codec(cls: type) -> PayloadCodec:
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise TypeError(
            f"{cls!r} is not a Message subclass; declare it as"
            " '@dataclass(frozen=True) class X(Message): ...'."
        )
    if not dataclasses.is_dataclass(cls):
        raise TypeError(
            f"{_dotted(cls)} is not a dataclass; decorate it with"
            " '@dataclass(frozen=True)' to publish it."
        )
    params = cls.__dataclass_params__
    if not params.frozen:
        raise TypeError(
            f"{_dotted(cls)} is a mutable dataclass; messages are immutable:"
            " declare it with '@dataclass(frozen=True)'."
        )
    if not cls.__message_named__ and "<locals>" in cls.__message_name__:
        # A worker finds the class by this name among those it imported; a
        # class made inside a function is not among them.
        raise TypeError(
            f"{_dotted(cls)} is defined inside a function, so its default name"
            f" {cls.__message_name__!r} means nothing to a worker: define it at"
            " module level, or give it a stable name:"
            f" 'class {cls.__name__}(Message, name=\"...\")'."
        )
    if not cls.__message_named__ and cls.__message_name__.startswith("__main__."):
        # A script run as ``python app.py`` is "__main__" only in its own
        # process; a worker imports it under its module name and never finds
        # this class.
        raise TypeError(
            f"{_dotted(cls)} is defined in the script being run, so its default"
            f" name {cls.__message_name__!r} means nothing to a worker, which"
            " imports that file under its module name: move the class into an"
            " importable module, or give it a stable name:"
            f" 'class {cls.__name__}(Message, name=\"...\")'."
        )
    return PayloadCodec(cls, _dotted(cls), cls.__message_name__)
