"""Message encode + decode round trip against a pickle round trip."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from flask_messaging import Message
from flask_messaging import envelope as codec

from ._support import Row, rate


@dataclass(frozen=True)
class OrderPlaced(Message, name="bench.order_placed"):
    order_id: str
    customer_id: str
    total_amount: float
    currency: str
    express: bool


def run(repeat: int, count: int = 50_000) -> list[Row]:
    message = OrderPlaced("o-1", "c-1", 99.5, "EUR", True)
    dumps, loads = pickle.dumps, pickle.loads

    def pickled() -> None:
        for _ in range(count):
            loads(dumps(message))

    encode, decode_envelope, decode = codec.encode, codec.decode_envelope, codec.decode

    def ours_full() -> None:
        for _ in range(count):
            decode(decode_envelope(encode(message).data))

    anchor = [rate(count, pickled) for _ in range(repeat)]
    ours = [rate(count, ours_full) for _ in range(repeat)]
    return [
        Row(
            "encode + decode round trip (envelope, validated)",
            "msgs/s",
            "pickle round trip",
            anchor,
            ours,
            target=1.0,
        ),
    ]
