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
import re
import subprocess
import sys
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_messaging import Message, MessageEncodeError, Messaging
from flask_messaging.broker import NullBroker, TestBroker
from flask_messaging.payload import MAX_DEPTH
from flask_messaging.state import get_state
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
    "OrderedDict as a bare dict": lambda: SendNotification(OrderedDict(k=1)),
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


def encode_error(app: Flask, message: Message) -> str:
    """The one ``MessageEncodeError`` every way to publish ``message`` raises.

    ``NullBroker``, ``TestBroker`` and the app's broker with an async
    subscriber must each refuse it, alike; the test doubles must record
    nothing.
    """
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
    assert null.published == [] and test.published == []  # nothing recorded
    return errors[0]


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
    error = encode_error(app, make_message())
    assert error.startswith("tests.fidelity.send_notification: field ")
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


class Rank(enum.IntEnum):
    FIRST = 1
    THIRD = 3


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
# A day around each DST transition of zones with 1-hour and 30-minute shifts,
# on both hemispheres: ambiguous (fold) and skipped (gap) local times included.
DST_DAYS = [
    ("Europe/Paris", datetime.datetime(2026, 3, 29)),
    ("Europe/Paris", datetime.datetime(2026, 10, 25)),
    ("America/New_York", datetime.datetime(2026, 11, 1)),
    ("Australia/Lord_Howe", datetime.datetime(2026, 4, 5)),
]
zoned_datetimes = st.builds(
    lambda zone_day, minutes, fold: (
        zone_day[1] + datetime.timedelta(minutes=minutes)
    ).replace(tzinfo=ZoneInfo(zone_day[0]), fold=fold),
    st.sampled_from(DST_DAYS),
    st.integers(0, 24 * 60 - 1),
    st.integers(0, 1),
)
datetimes = st.one_of(
    st.builds(
        lambda at, fold: at.replace(fold=fold),
        st.datetimes(timezones=offsets),
        st.sampled_from([0, 0, 0, 1]),  # fold=1 is lost on a naive value
    ),
    zoned_datetimes,
)
times = st.one_of(
    st.times(timezones=offsets),
    st.times(timezones=st.just(ZoneInfo("Europe/Paris"))),  # no offset: refused
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
    at=datetimes,
    day=st.dates(),
    clock=times,
    span=st.timedeltas(),
    ident=st.uuids(),
    amount=st.one_of(st.decimals(), st.integers(), st.just(0.5)),
    colour=st.sampled_from(Colour),
    size=st.one_of(st.sampled_from(Size), st.sampled_from(Rank)),
    raw=st.one_of(st.binary(max_size=8), st.binary(max_size=2).map(bytearray)),
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
    weights=st.one_of(
        st.dictionaries(st.text(max_size=3), floats, max_size=3),
        st.dictionaries(st.text(max_size=3), floats, max_size=2).map(OrderedDict),
    ),
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
    """Of the same type and equal, all the way down, by what the wire carries.

    The two conversions that change nothing: an int in a float or Decimal
    field, an IntEnum or StrEnum member in an int or str field. A datetime or
    time is its wall time and UTC offset (a zone arrives as its offset at that
    instant), with ``fold`` kept when there is no offset. NaN equals itself.
    """
    if type(sent) is not type(received):
        widened = type(sent) is int and type(received) in (float, decimal.Decimal)
        unwrapped = isinstance(sent, enum.Enum) and type(received) in (int, str)
        return (widened or unwrapped) and bool(sent == received)
    if isinstance(sent, (datetime.datetime, datetime.time)):
        assert isinstance(received, (datetime.datetime, datetime.time))
        offset = sent.utcoffset()
        return (
            (sent.tzinfo is None) == (received.tzinfo is None)
            and offset == received.utcoffset()
            and (offset is not None or sent.fold == received.fold)
            and sent.replace(tzinfo=None, fold=0)  # type: ignore[operator]
            == received.replace(tzinfo=None, fold=0)
        )
    if isinstance(sent, decimal.Decimal) and isinstance(received, decimal.Decimal):
        return str(sent) == str(received) if sent.is_nan() else sent == received
    if isinstance(sent, float) and sent != sent:
        return received != received
    if dataclasses.is_dataclass(sent):
        return all(
            (exactly_json if f.name in LOOSE_FIELDS else arrived_exactly)(
                getattr(sent, f.name), getattr(received, f.name)
            )
            for f in dataclasses.fields(sent)
        )
    if isinstance(sent, (list, tuple)):
        return len(sent) == len(received) and all(  # type: ignore[arg-type]
            map(arrived_exactly, sent, received)  # type: ignore[call-overload]
        )
    if isinstance(sent, frozenset) and isinstance(received, frozenset):
        return len(sent) == len(received) and all(
            any(arrived_exactly(a, b) for b in received) for a in sent
        )
    if isinstance(sent, dict) and isinstance(received, dict):
        return len(sent) == len(received) and all(
            arrived_exactly(k, k2) and arrived_exactly(v, v2)
            for (k, v), (k2, v2) in zip(sent.items(), received.items(), strict=True)
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


# --------------------------------------------------------------------------
# Exactly, type included: what ``==`` cannot see, and refusals that name the field.


class Markup(str):
    """A str subclass, as markupsafe's."""


class Token(bytes):
    pass


class NoOffset(datetime.tzinfo):
    """A tzinfo that gives no offset: the value would arrive naive."""

    def utcoffset(self, dt: datetime.datetime | None) -> None:
        return None

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "none"

    def dst(self, dt: datetime.datetime | None) -> None:
        return None


class Plus2(datetime.tzinfo):
    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(hours=2)

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "+2"

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(0)


@dataclass(frozen=True)
class Stamp:
    at: datetime.datetime


@dataclass(frozen=True)
class Typed(Message, name="tests.fidelity.typed"):
    text: str = ""
    raw: bytes = b""
    amount: decimal.Decimal = decimal.Decimal(0)
    size: Size = Size.S
    at: datetime.datetime | None = None
    clock: datetime.time | None = None
    stamps: list[Stamp] = dataclasses.field(default_factory=list)
    by_time: dict[datetime.datetime, str] = dataclasses.field(default_factory=dict)
    by_name: dict[str, int] = dataclasses.field(default_factory=dict)
    by_ratio: dict[float, str] = dataclasses.field(default_factory=dict)
    moments: frozenset[datetime.datetime] = frozenset()


PARIS = ZoneInfo("Europe/Paris")
FALL_BACK = datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS)  # happens twice
SPRING_GAP = datetime.datetime(2026, 3, 29, 2, 30, tzinfo=PARIS)  # never happens

DST_VALUES: dict[str, Callable[[], Typed]] = {
    "ambiguous hour, first": lambda: Typed(at=FALL_BACK),
    "ambiguous hour, second": lambda: Typed(at=FALL_BACK.replace(fold=1)),
    "skipped hour": lambda: Typed(at=SPRING_GAP),
    "skipped hour, fold=1": lambda: Typed(at=SPRING_GAP.replace(fold=1)),
    "nested in a list": lambda: Typed(stamps=[Stamp(FALL_BACK.replace(fold=1))]),
    "as a dict key": lambda: Typed(by_time={SPRING_GAP: "x", FALL_BACK: "y"}),
    "custom tzinfo": lambda: Typed(at=datetime.datetime(2026, 1, 1, tzinfo=Plus2())),
    "NaN float key": lambda: Typed(by_ratio={float("nan"): "x"}),
    "in a frozenset": lambda: Typed(moments=frozenset({FALL_BACK.replace(fold=1)})),
}


@pytest.mark.parametrize("make_message", DST_VALUES.values(), ids=DST_VALUES)
def test_a_zoned_time_arrives_as_its_offset_at_that_instant(
    app: Flask, make_message: Callable[[], Typed]
) -> None:
    message = make_message()
    received: list[Typed] = []
    broker = TestBroker.from_app(app)
    broker.subscribe_async(Typed, received.append, name="tests.fidelity.on_typed")
    broker.publish(message)
    broker.process_messages()
    assert len(received) == 1 and arrived_exactly(message, received[0])
    pairs = [
        (s.at, g.at) for s, g in zip(message.stamps, received[0].stamps, strict=True)
    ]
    pairs += list(zip(message.by_time, received[0].by_time, strict=True))
    if message.at is not None:
        pairs.append((message.at, received[0].at))
    for sent, got in pairs:
        assert got.tzinfo == datetime.timezone(sent.utcoffset())  # type: ignore[union-attr,arg-type]


REFUSED_TYPED: dict[str, tuple[Callable[[], Typed], str]] = {
    "Markup in a str field": (
        lambda: Typed(text=Markup("<b>sk_live_SECRET</b>")),
        r"field text: cannot encode a Markup of 21 characters .*str\(value\)",
    ),
    "lone surrogate": (
        lambda: Typed(text="sk_live_\ud800"),
        r"field text: cannot encode a str of 9 characters .*lone surrogate",
    ),
    "lone surrogate dict key": (
        lambda: Typed(by_name={"ok": 1, "\ud800": 2}),
        r"field by_name \(key 1\): cannot encode .*surrogate",
    ),
    "bytes subclass": (
        lambda: Typed(raw=Token(b"sk_live_SECRET")),
        r"field raw: cannot encode a Token of 14 bytes .*bytes\(value\)",
    ),
    "IntEnum member of another class": (
        lambda: Typed(size=Rank.THIRD),  # type: ignore[arg-type]
        r"field size would arrive changed: <Rank.THIRD: 3> would arrive as <Size.L",
    ),
    "time with a ZoneInfo": (
        lambda: Typed(clock=datetime.time(9, tzinfo=PARIS)),
        r"field clock would arrive changed: datetime.time\(9, 0, tzinfo=zoneinfo",
    ),
    "tzinfo without an offset": (
        lambda: Typed(at=datetime.datetime(2026, 1, 1, tzinfo=NoOffset())),
        r"field at would arrive changed",
    ),
    "fold=1 on a naive datetime": (
        lambda: Typed(at=datetime.datetime(2026, 10, 25, 2, 30, fold=1)),
        r"field at would arrive changed: datetime.datetime\(.*fold=1\)",
    ),
    "fold=1 on a naive datetime in a frozenset": (
        lambda: Typed(moments=frozenset({datetime.datetime(2026, 1, 1, fold=1)})),
        r"field moments would arrive changed",
    ),
    "fold=1 on a naive time": (
        lambda: Typed(clock=datetime.time(2, 30, fold=1)),
        r"field clock would arrive changed",
    ),
    "fold=1 nested in a list": (
        lambda: Typed(stamps=[Stamp(datetime.datetime(2026, 10, 25, 2, fold=1))]),
        r"field stamps\[0\]\.at would arrive changed",
    ),
    "bytearray in a bytes field": (
        lambda: Typed(raw=bytearray(b"sk_live_SECRET")),  # type: ignore[arg-type]
        r"field raw would arrive changed: a bytearray of 14 bytes would arrive as a"
        r" bytes of 14 bytes",
    ),
    "memoryview in a bytes field": (
        lambda: Typed(raw=memoryview(b"abc")),  # type: ignore[arg-type]
        r"field raw would arrive changed: a memoryview of 3 bytes",
    ),
    "OrderedDict": (
        lambda: Typed(by_name=OrderedDict(a=1)),
        r"field by_name would arrive changed: an? OrderedDict of 1 items",
    ),
    "defaultdict": (
        lambda: Typed(by_name=defaultdict(int, a=1)),
        r"field by_name would arrive changed: an? defaultdict of 1 items",
    ),
    "float in a Decimal field": (
        lambda: Typed(amount=0.5),  # type: ignore[arg-type]
        r"field amount would arrive changed: 0.5 would arrive as Decimal\('0.5'\)",
    ),
}


@pytest.mark.parametrize(
    ("make_message", "error"), REFUSED_TYPED.values(), ids=REFUSED_TYPED
)
def test_a_value_that_would_change_or_not_encode_is_refused_naming_its_field(
    app: Flask, make_message: Callable[[], Typed], error: str
) -> None:
    refused = encode_error(app, make_message())
    assert refused.startswith("tests.fidelity.typed: field "), refused
    assert "SECRET" not in refused  # values in errors end up in logs
    assert re.search(error, refused), refused


def test_int_and_enum_values_of_the_declared_builtin_arrive_equal(app: Flask) -> None:
    message = Typed(text=Level.LOW, amount=5, by_name={"a": Rank.FIRST})  # type: ignore[arg-type]
    assert NullBroker().publish(message) is None


@dataclass(frozen=True, eq=False)
class AlwaysEqual(Message, name="tests.fidelity.always_equal"):
    raw: bytes
    size: Size

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


def test_a_class_equality_hides_no_change(app: Flask) -> None:
    with pytest.raises(MessageEncodeError, match="field size would arrive changed"):
        NullBroker().publish(AlwaysEqual(b"x", Rank.THIRD))  # type: ignore[arg-type]


def test_a_name_given_is_checked_as_given() -> None:
    with pytest.raises(TypeError, match=r"message name 'a<locals>b' is not valid"):

        class Odd(Message, name="a<locals>b"):
            pass


SCRIPT = """
from dataclasses import dataclass
from flask_messaging import Message
from flask_messaging.broker import NullBroker

@dataclass(frozen=True)
class OrderPlaced(Message):
    order_id: int

@dataclass(frozen=True)
class Named(Message, name="shop.named"):
    order_id: int

NullBroker().publish(Named(1))
try:
    NullBroker().publish(OrderPlaced(1))
except TypeError as exc:
    print(exc)
"""


def test_a_class_of_a_script_run_as_main_is_refused(tmp_path: Any) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    assert run.stdout.startswith(
        "__main__.OrderPlaced is defined in the script being run, so its default"
        " name '__main__.OrderPlaced' means nothing to a worker"
    ), run
    assert "give it a stable name" in run.stdout, run.stdout
