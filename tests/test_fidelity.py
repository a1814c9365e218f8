"""A message arrives exactly as it was sent, or it is refused where it is published.

The same checks run at ``subscribe_async``, at publish, in ``NullBroker`` and in
``TestBroker``; a property test drives generated values through a real worker,
the inline path and ``TestBroker``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_messaging import Message, MessageEncodeError, Messaging
from flask_messaging.broker import NullBroker, TestBroker
from flask_messaging.extension import get_state
from flask_messaging.payload import MAX_DEPTH
from flask_messaging.worker import make_worker

messaging = Messaging()

# --------------------------------------------------------------------------
# The inputs that used to leave and then fail in every worker, or arrive changed.


def local_message_class() -> type[Message]:
    @dataclass(frozen=True)
    class Local(Message):
        value: int

    return Local


class Ratio(enum.Enum):
    HALF = 0.5


@dataclass(frozen=True)
class Halves(Message, name="tests.fidelity.halves"):
    ratio: Ratio


@dataclass(frozen=True)
class SendNotification(Message, name="tests.fidelity.send_notification"):
    data: dict  # type: ignore[type-arg]
    maybe: float | None = None
    anything: Any = None


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


REFUSED_CLASSES: dict[str, Callable[[], type[Message]]] = {
    "class defined in a function": local_message_class,
    "Enum of float values": lambda: Halves,
}
REFUSED_VALUES: dict[str, Callable[[], Message]] = {
    "int and float keys in a bare dict": lambda: SendNotification({1: "x", 2.5: "y"}),
    "NaN in an optional float": lambda: SendNotification({}, maybe=float("nan")),
    "infinity in an Any field": lambda: SendNotification({}, anything=float("inf")),
    "NaN as a dict value": lambda: SendNotification({"k": float("nan")}),
    "975 levels of lists": lambda: SendNotification({}, anything=nested_lists(975)),
    "1,000 levels of lists": lambda: SendNotification({}, anything=nested_lists(1000)),
}


def on_anything(event: Message) -> None:
    pass


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    app = make_app(messaging)
    with app.app_context():
        yield app


def publish_with_async_subscriber(app: Flask, message: Message) -> None:
    broker = get_state(app).broker
    broker.subscribe_async(type(message), on_anything, name="tests.fidelity.any")
    broker.publish(message)


def instance_of(cls: type[Message]) -> Message:
    fields = {f.name: Ratio.HALF for f in dataclasses.fields(cls)}
    return cls(**fields) if cls is Halves else cls(1)  # type: ignore[call-arg]


@pytest.mark.parametrize("make_class", REFUSED_CLASSES.values(), ids=REFUSED_CLASSES)
def test_a_class_no_worker_could_decode_is_refused_everywhere_alike(
    app: Flask, make_class: Callable[[], type[Message]]
) -> None:
    cls = make_class()
    message = instance_of(cls)
    errors = []
    with pytest.raises(TypeError) as info:
        get_state(app).broker.subscribe_async(cls, on_anything, name="tests.f.sub")
    errors.append(str(info.value))
    for publish in (
        NullBroker().publish,
        TestBroker().publish,
        lambda m: publish_with_async_subscriber(app, m),
        get_state(app).broker.publish,  # no subscriber at all
    ):
        with pytest.raises(TypeError) as info:
            publish(message)
        errors.append(str(info.value))
    assert len(set(errors)) == 1, errors  # one check, one answer
    assert cls.__qualname__ in errors[0]
    assert get_state(app).redis.keys("rq:job:*") == []


@pytest.mark.parametrize("make_message", REFUSED_VALUES.values(), ids=REFUSED_VALUES)
def test_a_value_that_would_change_is_refused_everywhere_alike(
    app: Flask, make_message: Callable[[], Message]
) -> None:
    message = make_message()
    null, test = NullBroker(), TestBroker()
    errors = []
    for publish in (
        null.publish,
        test.publish,
        lambda m: publish_with_async_subscriber(app, m),
    ):
        with pytest.raises(MessageEncodeError) as info:
            publish(message)
        errors.append(str(info.value))
    assert len(set(errors)) == 1, errors
    assert errors[0].startswith("tests.fidelity.send_notification: field ")
    assert null.published == [] and test.published == []  # nothing recorded
    assert get_state(app).redis.keys("rq:job:*") == []


# --------------------------------------------------------------------------
# Generated values, through every path: refused with our error, or received equal.


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    L = 3


class Level(enum.StrEnum):
    LOW = "low"


@dataclass(frozen=True)
class Point:
    x: float
    label: str = ""
    extra: Any = None


@dataclass(frozen=True)
class Scalars(Message, name="tests.fidelity.scalars"):
    text: str
    count: int
    ratio: float
    flag: bool
    nothing: None
    at: datetime.datetime
    day: datetime.date
    clock: datetime.time
    span: datetime.timedelta
    ident: uuid.UUID
    amount: decimal.Decimal
    colour: Colour
    size: Size
    raw: bytes


@dataclass(frozen=True)
class Shapes(Message, name="tests.fidelity.shapes"):
    numbers: list[int]
    names: tuple[str, ...]
    pair: tuple[int, str]
    tags: frozenset[str]
    weights: dict[str, float]
    by_id: dict[int, str]
    choice: int | str
    literal: Literal["a", "b", 3]
    maybe: float | None
    point: Point
    points: list[Point]
    maybe_point: Point | None


@dataclass(frozen=True)
class Loose(Message, name="tests.fidelity.loose"):
    anything: Any
    data: dict  # type: ignore[type-arg]
    items: list  # type: ignore[type-arg]
    mapping: dict[str, Any]


RECEIVED: list[Message] = []


@messaging.subscribe_async(name="tests.fidelity.on_scalars")
def on_scalars(event: Scalars) -> None:
    RECEIVED.append(event)


@messaging.subscribe_async(name="tests.fidelity.on_shapes")
def on_shapes(event: Shapes) -> None:
    RECEIVED.append(event)


@messaging.subscribe_async(name="tests.fidelity.on_loose")
def on_loose(event: Loose) -> None:
    RECEIVED.append(event)


offsets = st.one_of(
    st.none(),
    st.timedeltas(
        min_value=-datetime.timedelta(hours=23, minutes=59),
        max_value=datetime.timedelta(hours=23, minutes=59),
    ).map(datetime.timezone),
    st.integers(-1439, 1439).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
    ),
)
floats = st.one_of(st.floats(), st.integers(-(2**60), 2**60))
big_ints = st.one_of(st.integers(), st.integers(-(2**200), 2**200))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), big_ints, st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner)
    ),
    max_leaves=8,
)
# Values that JSON carries only as something else.
foreign_values = st.one_of(
    st.tuples(st.integers()),
    st.decimals(places=2, allow_nan=False),
    st.sampled_from([*Colour, *Size, *Level]),
    st.dates(),
    st.uuids(),
    st.frozensets(st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.text(max_size=2), min_size=1, max_size=2),
    st.builds(Point, st.floats(allow_nan=False, allow_infinity=False)),
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3).map(nested_lists),
)
any_values = st.one_of(json_values, foreign_values)
points = st.builds(
    Point,
    x=floats,
    label=st.text(max_size=3),
    extra=st.one_of(st.none(), any_values),
)

scalars = st.builds(
    Scalars,
    text=st.one_of(st.text(), st.sampled_from(list(Level))),
    count=big_ints,
    ratio=floats,
    flag=st.booleans(),
    nothing=st.none(),
    at=st.datetimes(timezones=offsets),
    day=st.dates(),
    clock=st.times(timezones=offsets),
    span=st.timedeltas(),
    ident=st.uuids(),
    amount=st.one_of(st.decimals(), st.integers()),
    colour=st.sampled_from(Colour),
    size=st.sampled_from(Size),
    raw=st.binary(max_size=8),
)
shapes = st.builds(
    Shapes,
    numbers=st.one_of(st.lists(big_ints, max_size=3), st.tuples(st.integers())),
    names=st.one_of(
        st.lists(st.text(max_size=3), max_size=3).map(tuple),
        st.lists(st.text(max_size=3), max_size=2),
    ),
    pair=st.tuples(st.integers(), st.text(max_size=3)),
    tags=st.one_of(st.frozensets(st.text(max_size=3), max_size=3)),
    weights=st.dictionaries(st.text(max_size=3), floats, max_size=3),
    by_id=st.dictionaries(big_ints, st.text(max_size=3), max_size=3),
    choice=st.one_of(st.integers(), st.text(max_size=3), st.booleans()),
    literal=st.sampled_from(["a", "b", 3]),
    maybe=st.one_of(st.none(), floats),
    point=points,
    points=st.lists(points, max_size=2),
    maybe_point=st.one_of(st.none(), points),
)
loose = st.builds(
    Loose,
    anything=any_values,
    data=st.dictionaries(
        st.one_of(st.text(max_size=3), big_ints), any_values, max_size=3
    ),
    items=st.lists(any_values, max_size=3),
    mapping=st.dictionaries(st.text(max_size=3), any_values, max_size=3),
)
messages = st.one_of(scalars, shapes, loose)


#: Fields typed ``Any`` or a bare container: JSON values, exactly, all the way down.
LOOSE_FIELDS = {"anything", "data", "items", "mapping", "extra"}


def arrived_exactly(sent: object, received: object) -> bool:
    """Equal, with a Decimal NaN equal to itself (it is carried exactly)."""
    if isinstance(sent, decimal.Decimal) and isinstance(received, decimal.Decimal):
        return str(sent) == str(received) if sent.is_nan() else sent == received
    if dataclasses.is_dataclass(sent) and type(sent) is type(received):
        return all(
            (exactly_json if f.name in LOOSE_FIELDS else arrived_exactly)(
                getattr(sent, f.name), getattr(received, f.name)
            )
            for f in dataclasses.fields(sent)
        )
    if isinstance(sent, (list, tuple)) and type(sent) is type(received):
        return len(sent) == len(received) and all(  # type: ignore[arg-type]
            map(arrived_exactly, sent, received)  # type: ignore[call-overload]
        )
    return bool(sent == received)


def exactly_json(sent: object, received: object) -> bool:
    """Equal and of the same types all the way down: what ``Any`` promises."""
    if type(sent) is not type(received):
        return False
    if isinstance(sent, dict) and isinstance(received, dict):
        return list(sent) == list(received) and all(
            exactly_json(sent[k], received[k]) for k in sent
        )
    if isinstance(sent, list) and isinstance(received, list):
        return len(sent) == len(received) and all(
            exactly_json(a, b) for a, b in zip(sent, received, strict=True)
        )
    return bool(sent == received)


def check(message: Message, deliver: Callable[[Message], list[Message]]) -> str:
    """Refused at publish with our error, or received equal to what was sent."""
    try:
        received = deliver(message)
    except MessageEncodeError as exc:
        assert str(exc).startswith(f"{type(message).__message_name__}: "), exc
        return "refused"
    assert len(received) == 1
    assert type(received[0]) is type(message)
    assert arrived_exactly(message, received[0]), (message, received[0])
    return "received"


def run_property(examples: int, deliver: Callable[[Message], list[Message]]) -> None:
    """Check generated messages, and that both outcomes were seen for each class."""
    outcomes: set[tuple[str, str]] = set()

    @property_settings(examples)
    @given(message=messages)
    def each(message: Message) -> None:
        outcomes.add((type(message).__name__, check(message, deliver)))

    each()
    assert outcomes == {
        (cls, outcome)
        for cls in ("Scalars", "Shapes", "Loose")
        for outcome in ("refused", "received")
    }


def property_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
        ],
    )


@pytest.fixture
def inline_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(messaging, MESSAGING_ASYNC=False)


def test_generated_messages_through_test_broker(app: Flask) -> None:
    broker = TestBroker.from_app(app)

    def deliver(message: Message) -> list[Message]:
        RECEIVED.clear()
        broker.publish(message)
        broker.process_messages()
        return list(RECEIVED)

    run_property(1000, deliver)


def test_generated_messages_through_the_inline_path(inline_app: Flask) -> None:
    def deliver(message: Message) -> list[Message]:
        RECEIVED.clear()
        with inline_app.app_context():
            get_state(inline_app).broker.publish(message)
        return list(RECEIVED)

    run_property(1000, deliver)


def test_generated_messages_through_a_real_worker(
    app: Flask, real_redis_url: str
) -> None:
    assert get_state(app).settings.redis_url == real_redis_url

    def deliver(message: Message) -> list[Message]:
        RECEIVED.clear()
        get_state(app).broker.publish(message)
        make_worker(app).work(burst=True, logging_level="WARNING")
        return list(RECEIVED)

    run_property(300, deliver)
