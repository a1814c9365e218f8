from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from flask_messaging import Message, MessageDecodeError, MessageEncodeError
from flask_messaging import envelope as codec
from flask_messaging.envelope import Envelope, current_envelope
from flask_messaging.message import payload_codec
from flask_messaging.payload import MAX_DEPTH

from .test_message import Colour, Everything, Inner

ONE_DAY = datetime.timedelta(hours=23, minutes=59)
#: RFC 3339 offsets have minutes only: the seconds would be lost on the way.
OFFSET_WITH_SECONDS = datetime.timezone(datetime.timedelta(hours=5, seconds=17))


@dataclass(frozen=True)
class Amount(Message, name="tests.amount"):
    value: float
    label: str = ""


@dataclass(frozen=True)
class Loose(Message, name="tests.loose"):
    """The spec's own shape: ``SendNotification.data: dict``."""

    data: dict  # type: ignore[type-arg]
    anything: Any = None
    maybe: float | None = None
    values: dict[str, Any] | None = None


def everything() -> Everything:
    return Everything(
        s="text",
        i=7,
        f=1.5,
        b=True,
        none=None,
        dt=datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        d=datetime.date(2026, 1, 2),
        u=uuid.uuid4(),
        dec=decimal.Decimal("10.10"),
        colour=Colour.RED,
        items=[1, 2],
        pair=(1, "a"),
        many=(1, 2, 3),
        frozen=frozenset({"x", "y"}),
        mapping={"k": [Inner(1)]},
        bare={"nested": {"list": [1, "two", None]}},
        inner=Inner(2),
        optional="yes",
    )


def test_round_trip_of_every_field_type_is_exact() -> None:
    message = everything()
    envelope, decoded = codec.round_trip(message)
    assert decoded == message
    assert decoded is not message
    assert type(decoded.dec) is decimal.Decimal and decoded.dec == message.dec
    assert decoded.dt.tzinfo is not None


def test_envelope_carries_metadata() -> None:
    message_id, data = codec.encode(Amount(3.0))
    raw = json.loads(data)
    assert set(raw) == {
        "id",
        "type",
        "version",
        "occurred_at",
        "correlation_id",
        "payload",
    }
    assert raw["id"] == message_id
    assert raw["type"] == "tests.amount"
    assert raw["version"] == 1
    assert raw["payload"] == {"value": 3.0, "label": ""}
    assert raw["correlation_id"] == message_id  # the first of its chain
    occurred = datetime.datetime.fromisoformat(raw["occurred_at"])
    assert abs(occurred - datetime.datetime.now(datetime.UTC)).total_seconds() < 5


def test_ids_are_unique() -> None:
    ids = {codec.encode(Amount(1.0)).id for _ in range(1000)}
    assert len(ids) == 1000


def test_message_encoded_while_handling_another_records_its_cause() -> None:
    first = codec.decode_envelope(codec.encode(Amount(1.0)).data)
    with codec.handling(first):
        assert current_envelope() is first
        second = codec.decode_envelope(codec.encode(Amount(2.0)).data)
        with codec.handling(second):
            third = codec.decode_envelope(codec.encode(Amount(3.0)).data)
    assert current_envelope() is None
    assert second.causation_id == first.id
    assert second.correlation_id == first.id
    assert third.causation_id == second.id
    assert third.correlation_id == first.id


def test_wrong_value_type_is_refused_at_encode_time() -> None:
    with pytest.raises(MessageEncodeError, match=r"tests.amount: invalid field value"):
        codec.encode(Amount("not a number"))  # type: ignore[arg-type]


def test_nan_is_refused_at_encode_time() -> None:
    with pytest.raises(MessageEncodeError, match="invalid field value"):
        codec.encode(Amount(float("nan")))


def test_unencodable_value_is_refused() -> None:
    with pytest.raises(MessageEncodeError, match="cannot be encoded"):
        codec.encode(Loose({"x": object()}))


def test_oversized_message_is_refused() -> None:
    with pytest.raises(MessageEncodeError, match="MESSAGING_MAX_MESSAGE_BYTES"):
        codec.encode(Amount(1.0, label="x" * 2000), max_bytes=1000)


def test_non_frozen_message_is_refused_at_encode_time() -> None:
    @dataclass
    class Mutable(Message, name="tests.envelope_mutable"):
        value: int

    with pytest.raises(TypeError, match="frozen=True"):
        codec.encode(Mutable(1))


def test_unknown_type_is_a_clear_decode_error() -> None:
    envelope = Envelope(
        id="x",
        type="nobody.knows",
        version=1,
        occurred_at=datetime.datetime.now(datetime.UTC),
        payload=msgspec.Raw(b"{}"),
    )
    with pytest.raises(MessageDecodeError, match="Unknown message type 'nobody.knows'"):
        codec.decode(envelope)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"id": 1}', b"\x80\x04\x95pickle"],
)
def test_malformed_envelope_is_a_clear_decode_error(data: bytes) -> None:
    with pytest.raises(MessageDecodeError, match="Malformed message envelope"):
        codec.decode_envelope(data)


def test_payload_is_validated_on_decode() -> None:
    data = codec.encode(Amount(1.0)).data.replace(b'"value":1.0', b'"value":"1"')
    with pytest.raises(MessageDecodeError, match=r"Expected `float`, got `str`"):
        codec.decode(codec.decode_envelope(data))


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "match"),
    [
        # Non-str keys of a bare dict would arrive as strings.
        ({1: "x", 2.5: "y"}, r"field data: the key 1 would arrive as a str of 1 char"),
        ({"ok": {2.5: "y"}}, r"field data\['ok'\]: the key 2.5 would arrive as"),
        ({"k": float("nan")}, r"field data\['k'\]: nan would arrive as None"),
        ({"k": (1, 2)}, r"data\['k'\]: a tuple of 2 items would arrive as a list"),
        ({"k": decimal.Decimal("1.5")}, r"Decimal\('1.5'\) would arrive as a str of 3"),
        ({"k": Colour.RED}, r"<Colour.RED: 'red'> would arrive as a str"),
        ({"k": frozenset({1})}, r"a frozenset of 1 items would arrive as a list"),
        ({"k": Inner(1)}, r"an? Inner instance would arrive as a dict of 1 items"),
        (
            {"k": datetime.date(2026, 1, 2)},
            r"date\(2026, 1, 2\) would arrive as a str of 10",
        ),
    ],
)
def test_bare_dict_values_that_would_change_are_refused(value: Any, match: str) -> None:
    with pytest.raises(MessageEncodeError, match=f"tests.loose: .*{match}"):
        codec.encode(Loose(value))


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["maybe", "anything", "values"])
def test_nan_and_infinity_are_refused_in_every_loose_position(
    number: float, field: str
) -> None:
    value: Any = {"v": number} if field == "values" else number
    with pytest.raises(MessageEncodeError, match=f"field {field}.*would arrive"):
        codec.encode(Loose({}, **{field: value}))


def test_str_enum_in_an_any_field_is_refused_for_arriving_as_str() -> None:
    # Equal to its value, so only the type tells them apart.
    with pytest.raises(MessageEncodeError, match="field anything: <Level.HIGH"):
        codec.encode(Loose({}, anything=Level.HIGH))


@dataclass(frozen=True)
class Typed(Message, name="tests.typed"):
    ratio: float = 0.0
    amount: decimal.Decimal = decimal.Decimal(0)
    numbers: list[int] = dataclasses.field(default_factory=list)
    pair: tuple[int, ...] = ()
    at: datetime.datetime | None = None
    count: int = 0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"numbers": (1, 2)}, r"field numbers would arrive changed: a tuple of 2"),
        ({"pair": [1, 2]}, r"field pair would arrive changed: a list of 2 items"),
        ({"ratio": 2**53 + 1}, r"field ratio would arrive changed: 9007199254740993"),
        (
            {"at": datetime.datetime(2026, 1, 1, tzinfo=OFFSET_WITH_SECONDS)},
            r"field at would arrive changed",
        ),
    ],
)
def test_typed_values_that_would_change_are_refused(
    fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(MessageEncodeError, match=match):
        codec.encode(Typed(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"ratio": 3},  # an int a float carries exactly
        {"amount": 5},
        {"amount": decimal.Decimal("NaN")},  # unequal to itself, carried exactly
        {"amount": decimal.Decimal("-sNaN")},
        {"amount": decimal.Decimal("-0.000")},
        {"count": 2**200},
        {"count": -(2**200)},
        {"at": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(-ONE_DAY))},
        {"at": datetime.datetime(2026, 1, 1)},  # naive stays naive
    ],
)
def test_plain_values_keep_working(fields: dict[str, Any]) -> None:
    message = Typed(**fields)
    _, decoded = codec.round_trip(message)
    for name, value in fields.items():
        received = getattr(decoded, name)
        assert str(received) == str(value) or received == value


def test_nesting_at_the_limit_is_carried() -> None:
    # The message is level 1, its field's outer list level 2.
    message = Loose({}, anything=nested_lists(MAX_DEPTH - 1))
    _, decoded = codec.round_trip(message)
    assert decoded == message


@pytest.mark.parametrize("levels", [MAX_DEPTH, 975, 1000, 5000])
def test_nesting_over_the_limit_is_refused_with_our_error(levels: int) -> None:
    with pytest.raises(MessageEncodeError, match=f"deeper than {MAX_DEPTH} levels"):
        codec.encode(Loose({}, anything=nested_lists(levels)))


def test_nesting_in_a_bare_dict_counts_too() -> None:
    value: dict[str, Any] = {}
    for _ in range(MAX_DEPTH):
        value = {"k": value}
    with pytest.raises(MessageEncodeError, match=f"deeper than {MAX_DEPTH} levels"):
        codec.encode(Loose(value))


@dataclass(frozen=True)
class Tree(Message, name="tests.tree"):
    children: tuple[Tree, ...] = ()


def test_a_type_that_contains_itself_is_limited_by_its_values() -> None:
    shallow = Tree((Tree((Tree(),)),))
    assert codec.round_trip(shallow)[1] == shallow
    deep = Tree()
    for _ in range(500):
        deep = Tree((deep,))
    with pytest.raises(MessageEncodeError, match=f"deeper than {MAX_DEPTH} levels"):
        codec.encode(deep)


def test_too_deep_data_from_elsewhere_is_a_decode_error() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    data = codec.encode(Loose({})).data.replace(b'"data":{}', b'"data":{"k":%s}' % deep)
    with pytest.raises(MessageDecodeError, match="Malformed message envelope"):
        codec.decode_envelope(data)
    with pytest.raises(MessageDecodeError, match="tests.loose: malformed payload"):
        payload_codec(Loose).decode(b'{"data":{"k":%s}}' % deep)


def test_ids_keep_increasing_within_one_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "_time_ns", lambda: 1_800_000_000_000_000_000)
    ids = [codec.new_message_id() for _ in range(10_000)]  # past the 12-bit counter
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and i[12] == "7" and i[16] in "89ab" for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both sides in the same millisecond: only fresh random bits keep them apart.
    monkeypatch.setattr(codec, "_time_ns", lambda: 1_800_000_000_000_000_000)
    codec.new_message_id()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:
        try:
            os.write(
                write, " ".join(codec.new_message_id() for _ in range(50)).encode()
            )
        finally:
            os._exit(0)
    os.close(write)
    parent = {codec.new_message_id() for _ in range(50)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 50
    assert not parent & child


@pytest.mark.parametrize("levels", [900, 5000])
def test_deep_value_in_a_field_of_bounded_type_is_refused_with_our_error(
    levels: int,
) -> None:
    with pytest.raises(MessageEncodeError, match="tests.typed: "):
        codec.encode(Typed(numbers=nested_lists(levels)))


WIDE = {f"k{i}": {"tags": ["a", "b"], "n": i} for i in range(100)}  # 201 brackets


@pytest.mark.parametrize("wide", [False, True], ids=["small", "over 64 brackets"])
def test_any_fields_are_checked_for_exact_types_small_or_large(wide: bool) -> None:
    base = dict(WIDE) if wide else {}
    for odd in (collections.OrderedDict(a=1), {"k": Colour.RED}, ["x", Level.HIGH]):
        with pytest.raises(MessageEncodeError, match=r"field data\['odd'\]"):
            codec.encode(Loose({**base, "odd": odd}))
    message = Loose({**base, "fine": [1, 2.5, "x", None, True, {"n": []}]})
    assert codec.round_trip(message)[1] == message


class Level(enum.StrEnum):
    HIGH = "high"
