"""Sync ``publish`` against blinker's ``Signal.send``, with the same receivers.

blinker is what a Flask app reaches for first (Flask's own signals use it), so
in-process dispatch has to beat it clearly to be worth a broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blinker import Signal
from flask import Flask

from flask_messaging import Message, Messaging
from flask_messaging.state import get_state

from ._support import Row, rate


@dataclass(frozen=True)
class Ping(Message, name="bench.ping"):
    n: int


def _receiver() -> Callable[[object], None]:
    # One argument fits both: blinker calls receiver(sender), ours handler(event).
    def receiver(event: object) -> None:
        pass

    return receiver


def run(repeat: int, count: int = 200_000) -> list[Row]:
    return [_row(repeat, count, subscribers) for subscribers in (1, 5)]


def _row(repeat: int, count: int, subscribers: int) -> Row:
    receivers = [_receiver() for _ in range(subscribers)]
    signal = Signal()
    for receiver in receivers:
        signal.connect(receiver)  # weak, as usual: ``receivers`` keeps them alive
    app = Flask("bench")
    app.config.update(
        SECRET_KEY="bench",
        MESSAGING_REDIS_URL="memory://",
        MESSAGING_EMBEDDED_WORKER=False,
    )
    Messaging(app)
    broker = get_state(app).broker
    for receiver in receivers:
        broker.subscribe(Ping, receiver)
    message = Ping(1)
    send, publish = signal.send, broker.publish

    def blinker_side() -> None:
        for _ in range(count):
            send(message)

    def ours_side() -> None:
        for _ in range(count):
            publish(message)

    anchor, ours = [], []
    with app.app_context():
        publish(message)  # build the route once, as the first publish does
        # Alternate, so that both sides see the same machine noise.
        for _ in range(repeat):
            anchor.append(rate(count, blinker_side))
            ours.append(rate(count, ours_side))
    plural = "s" if subscribers > 1 else ""
    return Row(
        f"sync publish, {subscribers} subscriber{plural} (broker.publish)",
        "msgs/s",
        "blinker Signal.send",
        anchor,
        ours,
        target=5.0,
    )
