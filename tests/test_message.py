from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from flask_messaging import Message
from flask_messaging.message import message_type_by_name, validate_message_class
from flask_messaging.payload import MAX_DEPTH


@dataclass(frozen=True)
class Renamed(Message, name="tests.renamed", version=3):
    value: int


def test_default_name_is_module_and_qualname() -> None:
    @dataclass(frozen=True)
    class Local(Message):
        value: int

    assert Local.__message_name__ == f"{__name__}.{Local.__qualname__}"
    assert Local.__message_version__ == 1


def test_explicit_name_and_version_are_registered() -> None:
    assert Renamed.__message_name__ == "tests.renamed"
    assert Renamed.__message_version__ == 3
    assert message_type_by_name("tests.renamed") is Renamed


def test_subclass_gets_its_own_name() -> None:
    @dataclass(frozen=True)
    class Child(Renamed):
        extra: str = ""

    assert Child.__message_name__.endswith("Child")
    assert Child.__message_version__ == 1


def test_slots_dataclass_keeps_its_name() -> None:
    @dataclass(frozen=True, slots=True)
    class Slotted(Message, name="tests.slotted", version=2):
        value: int

    assert Slotted.__message_name__ == "tests.slotted"
    assert Slotted.__message_version__ == 2
    assert message_type_by_name("tests.slotted") is Slotted
    validate_message_class(Slotted)


def test_two_classes_cannot_claim_one_name() -> None:
    with pytest.raises(TypeError, match="claimed by both"):

        @dataclass(frozen=True)
        class Impostor(Message, name="tests.renamed"):
            value: int


@pytest.mark.parametrize("name", ["", "has space", "<script>", 3])
def test_invalid_names_are_refused(name: Any) -> None:
    with pytest.raises(TypeError, match="message name"):

        class Bad(Message, name=name):
            pass


@pytest.mark.parametrize("version", [0, -1, "2", True])
def test_invalid_versions_are_refused(version: Any) -> None:
    with pytest.raises(TypeError, match="version"):

        class Bad(Message, version=version):
            pass


def test_non_frozen_dataclass_is_refused_naming_the_class() -> None:
    @dataclass
    class Mutable(Message):
        value: int

    with pytest.raises(TypeError, match=r"Mutable is a mutable dataclass.*frozen=True"):
        validate_message_class(Mutable)


def test_non_dataclass_is_refused() -> None:
    class Plain(Message):
        pass

    with pytest.raises(TypeError, match="Plain is not a dataclass"):
        validate_message_class(Plain)


def test_non_message_is_refused() -> None:
    @dataclass(frozen=True)
    class Stranger:
        value: int

    with pytest.raises(TypeError, match="not a Message subclass"):
        validate_message_class(Stranger)


class Colour(enum.Enum):
    RED = "red"


class Ratio(enum.Enum):
    HALF = 0.5


class Mixed(enum.Enum):
    ONE = 1
    TWO = "two"


@dataclass(frozen=True)
class Inner:
    n: int


@dataclass(frozen=True)
class Everything(Message):
    s: str
    i: int
    f: float
    b: bool
    none: None
    dt: datetime.datetime
    d: datetime.date
    u: uuid.UUID
    dec: decimal.Decimal
    colour: Colour
    items: list[int]
    pair: tuple[int, str]
    many: tuple[int, ...]
    frozen: frozenset[str]
    mapping: dict[str, list[Inner]]
    bare: dict  # type: ignore[type-arg]
    inner: Inner
    optional: str | None = None


def test_every_documented_field_type_is_accepted() -> None:
    validate_message_class(Everything)


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        (set[int], "'set' is mutable"),
        (object.__class__, "cannot be carried"),
        (dict[tuple[int, int], str], "dict keys of type tuple"),
        (dict[bool, str], "dict keys of type bool"),
        (dict[str | None, str], "dict keys of type none"),
        (list[complex], "cannot be carried"),
        (str | decimal.Decimal, "more than one str-like type"),
        (Ratio | None, "all str or all int values"),
        (Mixed, "all str or all int values"),
    ],
)
def test_unsupported_field_types_are_refused_naming_the_field(
    annotation: Any, match: str
) -> None:
    Bad = dataclasses.make_dataclass(
        "Bad", [("field_x", annotation)], bases=(Message,), frozen=True
    )
    with pytest.raises(TypeError, match=match) as info:
        validate_message_class(Bad)
    assert "Bad.field_x" in str(info.value)


@dataclass(frozen=True)
class Holder:
    thing: complex


def test_nested_dataclass_fields_are_checked() -> None:
    @dataclass(frozen=True)
    class Outer(Message, name="tests.outer"):
        holder: Holder

    with pytest.raises(TypeError, match=r"Outer\.holder\.thing"):
        validate_message_class(Outer)


def test_unresolvable_annotation_is_a_clear_error() -> None:
    @dataclass(frozen=True)
    class Dangling(Message, name="tests.dangling"):
        thing: NotImported  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="cannot resolve the field annotations"):
        validate_message_class(Dangling)


@dataclass(frozen=True)
class Halves(Message, name="tests.halves"):
    ratio: Ratio


def test_enum_with_float_values_is_refused_naming_the_field() -> None:
    # msgspec carries Enums of str or int values only: its own refusal, as ours.
    with pytest.raises(TypeError, match=r"Halves\.ratio: Enums must contain"):
        validate_message_class(Halves)


@dataclass(frozen=True)
class Deep(Message, name="tests.deep"):
    inner: Holder


def test_refusal_names_the_innermost_field() -> None:
    with pytest.raises(TypeError, match=r"Deep\.inner\.thing: field type"):
        validate_message_class(Deep)


def test_class_defined_in_a_function_is_refused_without_a_name() -> None:
    @dataclass(frozen=True)
    class Local(Message):
        value: int

    with pytest.raises(TypeError, match=r"defined inside a function.*name=") as info:
        validate_message_class(Local)
    assert "<locals>.Local" in str(info.value)


def test_class_defined_in_a_function_with_a_name_is_accepted() -> None:
    @dataclass(frozen=True)
    class Local(Message, name="tests.local_named"):
        value: int

    validate_message_class(Local)


def test_declared_types_nesting_over_the_limit_are_refused() -> None:
    annotation: Any = int
    for _ in range(MAX_DEPTH):
        annotation = list[annotation]
    Nested = dataclasses.make_dataclass(
        "Nested", [("levels", annotation)], bases=(Message,), frozen=True
    )
    with pytest.raises(TypeError, match=f"nest {MAX_DEPTH + 1} levels deep"):
        validate_message_class(Nested)


@pytest.mark.parametrize(
    "annotation",
    [
        dict[int, str],
        dict[float, str],
        dict[uuid.UUID, int],
        dict[Colour, int],
        dict[datetime.date, int],
        dict[decimal.Decimal, int],
        Literal["a", 1],
        datetime.time,
        datetime.timedelta,
        bytes,
        Any,
        object,
        dict,
        list,
        tuple[int, Any],
        frozenset[int],
    ],
)
def test_types_the_codec_carries_are_accepted(annotation: Any) -> None:
    Fine = dataclasses.make_dataclass(
        "Fine", [("field_x", annotation)], bases=(Message,), frozen=True
    )
    validate_message_class(Fine)
