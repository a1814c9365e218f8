"""A message class's payload codec: what the wire carries, as msgspec decides it.

The codec is asked, not second-guessed: a class can be sent when msgspec builds
a decoder for it and its type information (:mod:`msgspec.inspect`) names no type
that needs hooks we do not give. A value can be sent when it decodes back equal
to itself: anything that would change on the way is refused before it leaves.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import marshal
import math
import operator
import typing
from typing import Any

import msgspec
from msgspec import inspect as mi

from .errors import MessageDecodeError, MessageEncodeError

__all__ = ["MAX_DEPTH", "PayloadCodec"]

#: How deeply a payload may nest lists, tuples, sets, dicts and dataclasses,
#: the message itself being level 1. Far below the interpreter's recursion
#: limit, so that neither the codec nor a worker with a deeper stack ever
#: meets a ``RecursionError``.
MAX_DEPTH = 64

# msgspec writes these as JSON strings or numbers: the only dict keys it carries.
_KEY_TYPES = (
    mi.AnyType,
    mi.StrType,
    mi.IntType,
    mi.FloatType,
    mi.EnumType,
    mi.LiteralType,
    mi.DateTimeType,
    mi.DateType,
    mi.TimeType,
    mi.TimeDeltaType,
    mi.UUIDType,
    mi.DecimalType,
    mi.BytesType,
    mi.ByteArrayType,
)
_SEQUENCE_TYPES = (mi.ListType, mi.VarTupleType, mi.FrozenSetType, mi.SetType)
_OBJECT_TYPES = (mi.DataclassType, mi.StructType, mi.NamedTupleType)
# The Python values that a union member of each kind decodes to.
_UNION_MEMBER_VALUES: dict[type, type | tuple[type, ...]] = {
    mi.ListType: list,
    mi.VarTupleType: tuple,
    mi.TupleType: tuple,
    mi.FrozenSetType: frozenset,
    mi.SetType: set,
    mi.DictType: dict,
    mi.TypedDictType: dict,
}
_JSON_SCALARS = frozenset({str, int, bool, type(None)})
_JSON_VALUES = (
    "fields typed Any, object, or a bare dict or list carry JSON values only: str,"
    " int, finite float, bool, None, and lists and dicts with str keys of these"
)
# Declared types whose positions accept a value that is ``==`` to what arrives
# yet of another type or kind: an IntEnum member of another class, a naive
# datetime with fold=1, a bytearray, an OrderedDict, a float in a Decimal field.
_TYPE_CHECKED = (
    mi.EnumType,
    mi.BytesType,
    mi.ByteArrayType,
    mi.MemoryViewType,
    mi.DictType,
    mi.DecimalType,
    mi.DateTimeType,
    mi.TimeType,
)
# Where an exact builtin value may still arrive changed: a plain int becoming
# an enum member, a float a Decimal, a bytearray bytes.
_NOT_BY_MARSHAL = (
    mi.EnumType,
    mi.LiteralType,
    mi.DecimalType,
    mi.BytesType,
    mi.ByteArrayType,
    mi.MemoryViewType,
)
_encoder = msgspec.json.Encoder()


class _Refused(Exception):
    """A value that cannot travel: why, and where (filled in on the way out).

    The walk builds no path while it succeeds; each level it leaves through
    this exception adds its own step, so only a refusal pays for the path.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps: list[str] = []

    def at(self, step: str) -> _Refused:
        self.steps.append(step)
        return self

    @property
    def path(self) -> str:
        return "".join(reversed(self.steps))


class PayloadCodec:
    """Encodes and decodes the payload of one message class, exactly or not at all.

    :param cls: a dataclass.
    :param where: how errors about the class name it (its dotted path).
    :param name: how errors about values name it (its message name).
    :raises TypeError: msgspec cannot carry a field's type (naming the field),
        a dict field's keys are not strings or numbers on the wire, a field is
        a mutable ``set``, or the declared types nest deeper than
        :data:`MAX_DEPTH`.
    """

    def __init__(self, cls: type, where: str, name: str) -> None:
        self.name = name
        try:
            self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)
            info = mi.type_info(cls)
        except NameError as exc:  # a forward reference that is missing
            raise TypeError(
                f"{where}: cannot resolve the field annotations ({exc}); import every"
                " type a message field names at module level."
            ) from exc
        except TypeError as exc:
            raise TypeError(_refusal(cls, where, exc)) from exc
        info = typing.cast(mi.DataclassType, info)
        #: Fields whose values may need a look: those that may hold any JSON
        #: value, or nest without a bound.
        self._walked: list[tuple[str, mi.Type]] = []
        #: Of those, the ones that hold nothing but JSON values (``Any``, a
        #: bare ``dict`` or ``list``, ``dict[str, Any]``, ...).
        self._json_only: list[str] = []
        deepest = 0
        for field in info.fields:
            depth = _check_type(field.type, f"{where}.{field.name}", set())
            if depth is None:
                self._walked.append((field.name, field.type))
                if _json_only(field.type):
                    self._json_only.append(field.name)
            else:
                deepest = max(deepest, depth)
        self._walk_always = len(self._json_only) < len(self._walked)
        names = [field.name for field in info.fields]
        #: The field values as a tuple: compared instead of the class's ``==``,
        #: which a class may override to hide a difference.
        self._values = operator.attrgetter(*names) if names else None
        self._names = names
        #: Fields that ``==`` alone cannot vouch for (see ``_TYPE_CHECKED``).
        # JSON-only fields are held to exact builtin types by the walk.
        #: Fields that ``==`` alone cannot vouch for (see ``_TYPE_CHECKED``),
        #: each with whether :mod:`marshal` may vouch for it instead.
        self._type_checked = [
            (field.name, not _needs_types(field.type, set(), _NOT_BY_MARSHAL))
            for field in info.fields
            if field.name not in self._json_only
            and _needs_types(field.type, set(), _TYPE_CHECKED)
        ]
        if 1 + deepest > MAX_DEPTH:
            raise TypeError(
                f"{where}: its field types nest {1 + deepest} levels deep, over the"
                f" limit of {MAX_DEPTH}; flatten them."
            )

    def encode(self, message: object) -> bytes:
        """Return the payload of ``message``, checked to decode back equal.

        :raises MessageEncodeError: a value the codec cannot write, one that would
            decode differently (named by its field path), or nesting over
            :data:`MAX_DEPTH`; nothing is sent.
        """
        try:
            payload = _encoder.encode(message)
            # What a worker would receive: a message whose values do not match
            # its annotations, or would change on the way, is refused here,
            # where the caller can still react.
            received = self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise MessageEncodeError(
                f"{self.name}: invalid field value: {exc}."
            ) from exc
        except RecursionError:
            self._walk(message)  # names the field, when it is one we bound
            raise MessageEncodeError(
                f"{self.name}: a value nests deeper than {MAX_DEPTH} levels; flatten"
                " it or send a reference to the data."
            ) from None
        except (TypeError, ValueError, OverflowError) as exc:
            self._walk(message)
            self._locate(message, exc)
            raise MessageEncodeError(
                f"{self.name}: cannot encode the message: {exc}."
            ) from exc
        try:
            same = self._same(received, message)
        except Exception:  # a signalling Decimal NaN refuses ``==``
            same = False
        if self._walked and (
            not same or self._walk_always or not self._plain_json(message, payload)
        ):
            self._walk(message)
        if not same:
            self._refuse_difference(_difference(message, received, ""))
        else:
            for name, by_marshal in self._type_checked:
                sent = getattr(message, name)
                if by_marshal:
                    # Exact builtins only (marshal refuses subclasses, enums,
                    # datetimes): nothing ``==`` could have missed.
                    try:
                        marshal.dumps(sent, 2)
                        continue
                    except ValueError:
                        pass
                self._refuse_difference(
                    _difference(sent, getattr(received, name), name)
                )
        return payload

    def _same(self, received: object, message: object) -> bool:
        if self._values is None:
            return all(
                getattr(received, name) == getattr(message, name)
                for name in self._names
            )
        return bool(self._values(received) == self._values(message))

    def _refuse_difference(self, difference: tuple[str, object, object] | None) -> None:
        if difference is None:
            return
        path, sent, arriving = difference
        raise MessageEncodeError(
            f"{self.name}: field {_short(path)} would arrive changed:"
            f" {describe(sent)} would arrive as {describe(arriving)}. Send a value"
            " of the field's declared type that JSON carries exactly (for example"
            " bytes(value), dict(value), Decimal(str(value)), a member of the"
            " declared Enum class, an aware datetime)."
        )

    def _locate(self, message: object, exc: Exception) -> None:
        """Raise a refusal naming the field whose value the encoder refused."""
        found = _unencodable(message, "")
        if found is None:
            return
        path, value, reason = found
        hint = (
            f" convert it to the plain type, for example {_plain(value)}(value)"
            if _plain(value)
            else " send a value of the field's declared type"
        )
        if isinstance(reason, UnicodeError):
            hint = " remove the lone surrogate characters (not valid UTF-8)"
        raise MessageEncodeError(
            f"{self.name}: field {_short(path)}: cannot encode {describe(value)}"
            f" ({reason});{hint}."
        ) from exc

    def _plain_json(self, message: object, payload: bytes) -> bool:
        """Whether the JSON-only fields are surely exact and shallow, in C.

        ``==`` already held, so only a subclass (a ``StrEnum`` member, an
        ``OrderedDict``) could still differ in type: :mod:`marshal` writes
        builtin types and refuses their subclasses. Nesting is at most the
        number of opening brackets; a payload with more is walked instead.
        """
        if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH:
            return False
        try:
            for name in self._json_only:
                marshal.dumps(getattr(message, name), 2)  # 2: no references, faster
        except ValueError:
            return False
        return True

    def _walk(self, message: object) -> None:
        """Raise a refusal naming the value of a walked field that cannot travel."""
        for name, tp in self._walked:
            try:
                _walk(tp, getattr(message, name), 2)
            except _Refused as refused:
                refused.at(name)
                raise MessageEncodeError(
                    f"{self.name}: field {_short(refused.path)}: {refused.reason}."
                ) from None

    def decode(self, payload: bytes) -> Any:
        """Return the message a payload carries, validated against the class.

        :raises MessageDecodeError: the payload is malformed, nests too deeply
            for the decoder, or a value does not match its annotation.
        """
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise MessageDecodeError(
                f"{self.name}: invalid field value: {exc}."
            ) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            raise MessageDecodeError(f"{self.name}: malformed payload: {exc}.") from exc


def _refusal(tp: Any, where: str, exc: Exception) -> str:
    """msgspec's refusal of a class, naming the innermost field it is about."""
    path, reason = _find_refusal(tp, where, set()) or (where, exc)
    return f"{path}: {reason}"


def _find_refusal(tp: Any, where: str, seen: set[int]) -> tuple[str, Exception] | None:
    try:
        msgspec.json.Decoder(tp)
        return None
    except TypeError as exc:
        refusal = exc
    except NameError:
        return None
    if id(tp) in seen:
        return None
    seen.add(id(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        for field in dataclasses.fields(tp):
            found = _find_refusal(hints[field.name], f"{where}.{field.name}", seen)
            if found:
                return found
    elif typing.get_origin(tp) is not typing.Literal:
        for arg in typing.get_args(tp):
            found = _find_refusal(arg, where, seen) if arg is not Ellipsis else None
            if found:
                return found
    return where, refusal


def _check_type(tp: mi.Type, where: str, open_: set[int]) -> int | None:
    """Refuse what msgspec accepts but cannot carry; return the nesting depth.

    The depth is ``None`` when values decide it: ``Any``, or a type that
    contains itself.
    """
    if isinstance(tp, mi.CustomType):
        if tp.cls is object:  # msgspec decodes ``object`` as ``Any``
            return None
        raise TypeError(
            f"{where}: field type {tp.cls!r} cannot be carried in a message: msgspec"
            " has no JSON form for it. Use str, int, float, bool, None, datetime,"
            " date, time, timedelta, UUID, Decimal, bytes, an Enum or Literal, list,"
            " tuple, frozenset, dict, or a nested dataclass of these."
        )
    if isinstance(tp, mi.AnyType):
        return None
    if isinstance(tp, mi.SetType):
        raise TypeError(
            f"{where}: 'set' is mutable and unordered; use 'frozenset' or 'tuple'."
        )
    if isinstance(tp, mi.UnionType):
        return _deepest([_check_type(t, where, open_) for t in tp.types], 0)
    if isinstance(tp, _SEQUENCE_TYPES):
        return _deepest([_check_type(tp.item_type, where, open_)], 1)
    if isinstance(tp, mi.TupleType):
        return _deepest([_check_type(t, where, open_) for t in tp.item_types], 1)
    if isinstance(tp, mi.DictType):
        for key in (
            tp.key_type.types
            if isinstance(tp.key_type, mi.UnionType)
            else (tp.key_type,)
        ):
            if not isinstance(key, _KEY_TYPES):
                raise TypeError(
                    f"{where}: dict keys of type {_type_name(key)} cannot be carried:"
                    " JSON object keys are strings, so msgspec carries keys of"
                    " str-like or number-like types only (str, int, float, an Enum,"
                    " datetime, date, UUID, Decimal, ...)."
                )
        return _deepest([_check_type(tp.value_type, where, open_)], 1)
    if isinstance(tp, (*_OBJECT_TYPES, mi.TypedDictType)):
        if id(tp) in open_:  # contains itself: as deep as its values go
            return None
        open_.add(id(tp))
        try:
            return _deepest(
                [
                    _check_type(field.type, f"{where}.{field.name}", open_)
                    for field in tp.fields
                ],
                1,
            )
        finally:
            open_.discard(id(tp))
    return 0


def _json_only(tp: mi.Type) -> bool:
    """Whether every value in ``tp`` decodes as plain JSON (never converted)."""
    if isinstance(tp, mi.AnyType) or (
        isinstance(tp, mi.CustomType) and tp.cls is object
    ):
        return True
    if isinstance(tp, mi.ListType):
        return _json_only(tp.item_type)
    if isinstance(tp, mi.DictType):
        # A ``str`` subclass key would be converted: marshal refuses it, and
        # the walk then decides.
        keys = tp.key_type
        return isinstance(keys, (mi.AnyType, mi.StrType)) and _json_only(tp.value_type)
    return False


def _deepest(depths: list[int | None], own: int) -> int | None:
    if any(depth is None for depth in depths):
        return None
    return own + max((d for d in depths if d is not None), default=0)


def _type_name(tp: mi.Type) -> str:
    return type(tp).__name__.removesuffix("Type").lower()


def _walk(tp: mi.Type, value: object, depth: int) -> None:
    """Look at a value the codec could not bound: depth, and JSON-only positions."""
    if isinstance(tp, (mi.AnyType, mi.CustomType)):
        _walk_json(value, depth)
    elif isinstance(tp, mi.UnionType):
        member = _union_member(tp, value)
        if member is not None:
            _walk(member, value, depth)
    elif isinstance(tp, _SEQUENCE_TYPES):
        if isinstance(value, (list, tuple, set, frozenset)):
            _check_depth(depth)
            for index, item in enumerate(value):
                try:
                    _walk(tp.item_type, item, depth + 1)
                except _Refused as refused:
                    raise refused.at(f"[{index}]") from None
    elif isinstance(tp, mi.TupleType):
        if isinstance(value, tuple):
            _check_depth(depth)
            pairs = zip(tp.item_types, value, strict=False)
            for index, (item_type, item) in enumerate(pairs):
                try:
                    _walk(item_type, item, depth + 1)
                except _Refused as refused:
                    raise refused.at(f"[{index}]") from None
    elif isinstance(tp, mi.DictType):
        if isinstance(value, dict):
            if type(value) is not dict:
                raise _Refused(
                    f"{describe(value)} would arrive as a dict; send dict(value)"
                )
            _check_depth(depth)
            loose_keys = isinstance(tp.key_type, mi.AnyType)
            for key, item in value.items():
                if loose_keys and type(key) is not str:
                    raise _Refused(_key_reason(key))
                try:
                    _walk(tp.value_type, item, depth + 1)
                except _Refused as refused:
                    raise refused.at(f"[{_key_step(key)}]") from None
    elif isinstance(tp, _OBJECT_TYPES):
        if isinstance(value, tp.cls):
            _check_depth(depth)
            for field in tp.fields:
                try:
                    _walk(field.type, getattr(value, field.name, None), depth + 1)
                except _Refused as refused:
                    raise refused.at(f".{field.name}") from None
    elif isinstance(tp, mi.TypedDictType):
        if isinstance(value, dict):
            _check_depth(depth)
            for field in tp.fields:
                try:
                    _walk(field.type, value.get(field.name), depth + 1)
                except _Refused as refused:
                    raise refused.at(f"[{field.name!r}]") from None


def _walk_json(value: Any, depth: int) -> None:
    kind = type(value)
    if kind in _JSON_SCALARS:
        return
    if kind is float:
        if not math.isfinite(value):
            raise _Refused(
                f"{value!r} would arrive as None (JSON has no NaN or infinity);"
                f" {_JSON_VALUES}"
            )
        return
    if kind is list:
        if depth > MAX_DEPTH:
            _check_depth(depth)
        for index, item in enumerate(value):
            try:
                _walk_json(item, depth + 1)
            except _Refused as refused:
                raise refused.at(f"[{index}]") from None
        return
    if kind is dict:
        if depth > MAX_DEPTH:
            _check_depth(depth)
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(_key_reason(key))
            try:
                _walk_json(item, depth + 1)
            except _Refused as refused:
                raise refused.at(f"[{_key_step(key)}]") from None
        return
    raise _Refused(_value_reason(value))


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Refused(
            f"the value nests deeper than {MAX_DEPTH} levels (lists, tuples, sets,"
            " dicts and dataclasses, the message being the first); flatten it or"
            " send a reference to the data"
        )


def _value_reason(value: object) -> str:
    """Why ``value`` cannot stand in a position typed ``Any``."""
    try:
        arriving = msgspec.json.decode(_encoder.encode(value))
    except Exception as exc:
        return f"{describe(value)} cannot be encoded ({exc}); {_JSON_VALUES}"
    return f"{describe(value)} would arrive as {describe(arriving)}; {_JSON_VALUES}"


def _key_reason(key: object) -> str:
    """Why ``key`` cannot be a key in a position typed ``Any``."""
    try:
        arriving = next(iter(msgspec.json.decode(_encoder.encode({key: None}))))
    except Exception as exc:
        return f"the key {describe(key)} cannot be encoded ({exc}); {_JSON_VALUES}"
    return (
        f"the key {describe(key)} would arrive as {describe(arriving)}; {_JSON_VALUES}"
    )


def _short(path: str) -> str:
    return path if len(path) <= 80 else f"{path[:60]}...{path[-16:]}"


def _union_member(tp: mi.UnionType, value: object) -> mi.Type | None:
    fallback = None
    for member in tp.types:
        python_type = _UNION_MEMBER_VALUES.get(type(member))
        if python_type is not None and isinstance(value, python_type):
            return member
        if isinstance(member, _OBJECT_TYPES) and isinstance(value, member.cls):
            return member
        if isinstance(member, (mi.AnyType, mi.CustomType)):
            fallback = member
    return fallback


def _needs_types(
    tp: mi.Type, open_: set[int], kinds: tuple[type[mi.Type], ...]
) -> bool:
    """Whether ``tp`` holds a position of one of ``kinds``, or a custom ``==``."""
    if isinstance(tp, kinds):
        return True
    if isinstance(tp, mi.UnionType):
        return any(_needs_types(t, open_, kinds) for t in tp.types)
    if isinstance(tp, _SEQUENCE_TYPES):
        return _needs_types(tp.item_type, open_, kinds)
    if isinstance(tp, mi.TupleType):
        return any(_needs_types(t, open_, kinds) for t in tp.item_types)
    if isinstance(tp, mi.DictType):
        return _needs_types(tp.key_type, open_, kinds) or _needs_types(
            tp.value_type, open_, kinds
        )
    if isinstance(tp, (*_OBJECT_TYPES, mi.TypedDictType)):
        if id(tp) in open_:
            return False
        open_.add(id(tp))
        # A nested class may define its own ``==``: compare it field by field.
        return "__eq__" in getattr(tp, "cls", dict).__dict__ or any(
            _needs_types(field.type, open_, kinds) for field in tp.fields
        )
    return False


def _unencodable(value: object, path: str) -> tuple[str, object, Exception] | None:
    """The innermost value under ``value`` that the encoder refuses, if any."""
    try:
        _encoder.encode(value)
        return None
    except (TypeError, ValueError, OverflowError) as exc:
        reason = exc
    except RecursionError:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found = _unencodable(
                getattr(value, field.name, None),
                f"{path}.{field.name}" if path else field.name,
            )
            if found:
                return found
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            found = _unencodable(item, f"{path}[{index}]")
            if found:
                return found
    elif isinstance(value, dict):
        for index, (key, item) in enumerate(value.items()):
            found = _unencodable(key, f"{path} (key {index})")
            if found:
                return found
            found = _unencodable(item, f"{path}[{_key_step(key)}]")
            if found:
                return found
    return path, value, reason


def _plain(value: object) -> str:
    """The builtin a subclass value converts to (``str`` for Markup), if any."""
    for base in (str, bytes, int, float):
        if isinstance(value, base) and type(value) is not base:
            return base.__name__
    return ""


def describe(value: object) -> str:
    """A short description of ``value`` for an error, without its text.

    Refusals end up in logs, so strings and bytes (where secrets live) are
    described by type and size only, and containers by type and length;
    other values (numbers, enum members, datetimes, UUIDs), whose repr tells
    why they cannot travel, are shown up to 60 characters.
    """
    kind = type(value)
    if isinstance(value, enum.Enum):
        return f"{value!r:.60}"
    if isinstance(value, str):
        return f"{_a(kind)} of {len(value)} characters"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{_a(kind)} of {len(value)} bytes"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"{_a(kind)} of {len(value)} items"
    if dataclasses.is_dataclass(value):
        return f"{_a(kind)} instance"
    return f"{value!r:.60}"


def _a(kind: type) -> str:
    article = "an" if kind.__name__[:1] in "AEIOUaeiou" else "a"
    return f"{article} {kind.__name__}"


def _key_step(key: object) -> str:
    """A dict key as a path step: short, and without the content of strings."""
    if isinstance(key, str):
        return f"{key!r:.40}"
    return describe(key)


def _same_moment(sent: Any, received: Any) -> bool:
    """Whether a datetime or time arrives as what the wire carries of it.

    The wire carries the wall time and the UTC offset at that instant, not the
    zone: a ZoneInfo (or any tzinfo) arrives as that fixed offset, so an
    ambiguous or skipped local time is compared by offset and wall time, not
    by PEP 495's inter-zone ``==`` (always unequal for such times). A tzinfo
    that gives no offset, and ``fold=1`` on a naive value, would be lost.
    """
    if sent.tzinfo is received.tzinfo and sent.tzinfo is not None:
        # The decoded zone is always a fixed offset (UTC most often): when
        # the sent one is that very object, fold means nothing and ``==``
        # compares wall times.
        return bool(sent == received)
    if (sent.tzinfo is None) != (received.tzinfo is None):
        return False
    offset = sent.utcoffset()
    if offset != received.utcoffset():
        return False
    if offset is None and sent.fold != received.fold:
        return False
    return bool(
        sent.replace(tzinfo=None, fold=0) == received.replace(tzinfo=None, fold=0)
    )


def _difference(
    sent: object, received: object, path: str
) -> tuple[str, object, object] | None:
    """The first place where ``received`` differs from ``sent``, if any.

    Types must match exactly (an IntEnum member of another class, a float in a
    Decimal field, an OrderedDict are changes even when ``==`` holds), dict
    keys are compared pair by pair, datetimes and times by
    :func:`_same_moment`, and the values carried exactly yet unequal to
    themselves (a float or Decimal NaN) are forgiven.
    """
    kind = type(sent)
    if kind is not type(received):
        # An int is exact in a float or Decimal field (the numeric tower), and
        # an IntEnum or StrEnum member in an int or str field is its value.
        if (kind is int and type(received) in (float, decimal.Decimal)) or (
            isinstance(sent, enum.Enum) and type(received) in (int, str)
        ):
            return None if sent == received else (path, sent, received)
        return path, sent, received
    if kind is datetime.datetime or kind is datetime.time:
        return None if _same_moment(sent, received) else (path, sent, received)
    if dataclasses.is_dataclass(sent):
        for field in dataclasses.fields(sent):
            found = _difference(
                getattr(sent, field.name),
                getattr(received, field.name),
                f"{path}.{field.name}" if path else field.name,
            )
            if found:
                return found
        return None
    if kind is decimal.Decimal:
        sent_d, got_d = (
            typing.cast(decimal.Decimal, sent),
            typing.cast(decimal.Decimal, received),
        )
        if sent_d.is_nan() or got_d.is_nan():
            same = str(sent_d) == str(got_d)
        else:
            same = sent_d == got_d
        return None if same else (path, sent, received)
    if kind is float and math.isnan(typing.cast(float, sent)):
        return (
            None if math.isnan(typing.cast(float, received)) else (path, sent, received)
        )
    if isinstance(sent, (list, tuple)) and isinstance(received, (list, tuple)):
        if len(sent) != len(received):
            return path, sent, received
        for index, (a, b) in enumerate(zip(sent, received, strict=True)):
            found = _difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(sent, dict) and isinstance(received, dict):
        if len(sent) != len(received):
            return path, sent, received
        pairs = zip(sent.items(), received.items(), strict=True)
        for index, ((key, value), (got_key, got_value)) in enumerate(pairs):
            found = _difference(key, got_key, f"{path} (key {index})")
            if found:
                return found
            found = _difference(value, got_value, f"{path}[{_key_step(key)}]")
            if found:
                return found
        return None
    if isinstance(sent, frozenset) and isinstance(received, frozenset):
        same = {_wire_form(v) for v in sent} == {_wire_form(v) for v in received}
        return None if same else (path, sent, received)
    try:
        same = bool(sent == received)
    except Exception:
        same = False
    return None if same else (path, sent, received)


def _wire_form(value: object) -> object:
    """A set member as the wire carries it: a datetime or time by wall and offset."""
    if type(value) is datetime.datetime or type(value) is datetime.time:
        moment = typing.cast(datetime.datetime, value)
        offset = moment.utcoffset()
        fold = moment.fold if offset is None else 0
        return (
            moment.replace(tzinfo=None, fold=0),
            offset,
            moment.tzinfo is None,
            fold,
        )
    return value
