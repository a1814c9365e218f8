"""The :class:`Message` base class and the checks that keep messages portable."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import re
import types
import typing
import uuid
from typing import Any, ClassVar

__all__ = ["Message", "message_type_by_name", "validate_message_class"]

#: Names and keys end up in job ids, descriptions and dashboards: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:<>-]*$")

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
        class without breaking jobs already queued.
    :param version: the schema version carried on the wire.

    ``Message`` itself and intermediate classes that are not dataclasses may be
    subscribed to: their subscribers receive every subclass.
    """

    __message_name__: ClassVar[str]
    __message_version__: ClassVar[int]

    def __init_subclass__(
        cls, *, name: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        # dataclass(slots=True) re-creates the class (keeping our attributes,
        # not the keywords, and setting __qualname__ only afterwards): it
        # replaces the first creation under the same name.
        recreated = "__message_name__" in own
        if name is None:
            name = own.get("__message_name__") or f"{cls.__module__}.{cls.__qualname__}"
        if version is None:
            version = own.get("__message_version__", 1)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
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
# Which classes may travel: checked once per class, then cached.

_SCALARS: frozenset[Any] = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
        decimal.Decimal,
        Any,
        object,
    }
)
_SEQUENCES: frozenset[Any] = frozenset({list, tuple, frozenset})
_validated: dict[type, None] = {}


def validate_message_class(cls: type) -> None:
    """Raise :class:`TypeError` unless instances of ``cls`` can be sent.

    A sendable message is a frozen dataclass subclass of :class:`Message` whose
    fields all have types the codec carries. The answer is cached per class.
    """
    if cls in _validated:
        return
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
    _check_fields(cls, path=_dotted(cls), seen=set())
    _validated[cls] = None


def _check_fields(cls: type, path: str, seen: set[type]) -> None:
    if cls in seen:  # a recursive structure: already being checked
        return
    seen.add(cls)
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # NameError for a forward reference that is missing
        raise TypeError(
            f"{path}: cannot resolve the field annotations ({exc}); import every"
            " type a message field names at module level."
        ) from exc
    for field in dataclasses.fields(cls):
        _check_type(hints.get(field.name, Any), f"{path}.{field.name}", seen)


def _check_type(tp: Any, where: str, seen: set[type]) -> None:
    if tp in _SCALARS:
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        _check_type(args[0], where, seen)
        return
    if origin in (typing.Union, types.UnionType, typing.Optional):
        for arg in args:
            _check_type(arg, where, seen)
        return
    if origin is typing.Literal:
        return
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        _check_fields(tp, where, seen)
        return
    if tp in (dict,) or origin is dict:
        if (
            args
            and args[0] is not str
            and not (
                isinstance(args[0], type) and issubclass(args[0], (str, enum.Enum))
            )
        ):
            raise TypeError(
                f"{where}: dict keys must be str (JSON object keys), not {args[0]!r}."
            )
        if args:
            _check_type(args[1], where, seen)
        return
    if tp in _SEQUENCES or origin in _SEQUENCES:
        for arg in args:
            if arg is not Ellipsis:
                _check_type(arg, where, seen)
        return
    if tp is set or origin is set:
        raise TypeError(
            f"{where}: 'set' is mutable and unordered; use 'frozenset' or 'tuple'."
        )
    raise TypeError(
        f"{where}: field type {tp!r} cannot be carried in a message; use str, int,"
        " float, bool, None, datetime, date, UUID, Decimal, an Enum, list, tuple,"
        " frozenset, dict with str keys, or a nested dataclass of these."
    )
