from __future__ import annotations

import datetime
import decimal
import json
import uuid
from dataclasses import dataclass

import msgspec
import pytest

from flask_messaging import Message, MessageDecodeError, MessageEncodeError
from flask_messaging import envelope as codec
from flask_messaging.envelope import Envelope, current_envelope

from .test_message import Colour, Everything, Inner


@dataclass(frozen=True)
class Amount(Message, name="tests.amount"):
    value: float
    label: str = ""


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
    @dataclass(frozen=True)
    class Loose(Message):
        data: dict  # type: ignore[type-arg]

    with pytest.raises(MessageEncodeError, match="cannot encode"):
        codec.encode(Loose({"x": object()}))


def test_oversized_message_is_refused() -> None:
    with pytest.raises(MessageEncodeError, match="MESSAGING_MAX_MESSAGE_BYTES"):
        codec.encode(Amount(1.0, label="x" * 2000), max_bytes=1000)


def test_non_frozen_message_is_refused_at_encode_time() -> None:
    @dataclass
    class Mutable(Message):
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
