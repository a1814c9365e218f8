"""The checker finds what it must: lost, unexpected, leaked, duplicated."""

from __future__ import annotations

import pytest

from .history import History, check

pytestmark = pytest.mark.reliability


def test_a_clean_run() -> None:
    report = check({"a", "b"}, {"a": 1, "b": 1})
    assert (report.lost, report.unexpected, report.duplicated) == (set(), set(), {})
    assert (report.committed, report.handled, report.runs) == (2, 2, 2)


def test_lost_unexpected_leaked_and_duplicated() -> None:
    report = check(
        committed={"a", "b", "c"},
        handled={"a": 1, "b": 3, "x": 1, "r": 2, "zero": 0},
        rolled_back={"r"},
    )
    assert report.lost == {"c"}
    assert report.unexpected == {"x", "r"}
    assert report.leaked == {"r"}
    assert report.duplicated == {"b": 3, "r": 2}
    assert report.runs == 7
    assert str(report).startswith(
        "committed=3 handled=4 runs=7 lost=1 unexpected=2 leaked=1 duplicated=2"
    )


def test_the_redis_history_round_trip(history: History) -> None:
    history.committed("a", "b")
    history.rolled_back("r")
    assert history.handled("h", "a") == 1
    assert history.handled("h", "a") == 2
    history.handled("h", "r")
    history.note("pid", "42")
    assert history.notes("pid") == ["42"]
    report = history.check("h")
    assert report.lost == {"b"}
    assert report.leaked == {"r"}
    assert report.duplicated == {"a": 2}
    assert history.check("h", committed={"a", "r"}).lost == set()
