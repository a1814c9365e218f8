"""The RQ versions flask-messaging is tested with, and the warning outside them."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from flask_messaging._rq import compat

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_rq_is_one_we_test_with() -> None:
    assert compat.untested_rq() is None, compat.untested_rq()


def test_the_tested_range_is_the_one_pyproject_requires() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [
        d for d in project["dependencies"] if d.split(">")[0].split("<")[0] == "rq"
    ]
    assert requirement == "rq" + compat.TESTED_RQ_RANGE
    (low, high) = compat.TESTED_RQ
    assert compat.TESTED_RQ_RANGE == (
        f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    )


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        ("2.11.9", False),
        ("2.12.0", True),
        ("2.12", True),
        ("3.0.0", True),
        ("3.9.12", True),
        ("3.1.0rc1", True),
        ("4.0.0", False),
        ("4.0.0b1", False),
        ("1.16.2", False),
        ("unknown", False),
    ],
)
def test_versions_outside_the_tested_range_are_named(
    version: str, tested: bool
) -> None:
    reason = compat.untested_rq(version)
    assert (reason is None) == tested
    if reason is not None:
        assert "rq>=2.12,<4" in reason
        assert version in reason


def test_an_untested_rq_is_warned_about_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    compat.warn_if_untested_rq.cache_clear()
    with caplog.at_level(logging.WARNING, logger="flask_messaging"):
        assert compat.warn_if_untested_rq("4.2.0") is True
        assert compat.warn_if_untested_rq("4.2.0") is True
        assert compat.warn_if_untested_rq("3.0.0") is False
    (record,) = caplog.records
    assert "The installed RQ is version 4.2.0" in record.getMessage()
    assert "tests/test_rq_contract.py" in record.getMessage()


def test_the_installed_rq_is_checked_when_the_extension_is_set_up(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    compat.warn_if_untested_rq.cache_clear()
    with caplog.at_level(logging.WARNING, logger="flask_messaging"):
        make_app()
        make_app()
    assert compat.warn_if_untested_rq.cache_info().misses == 1
    # The installed RQ is tested: nothing to warn of.
    assert not [r for r in caplog.records if "tested with rq" in r.getMessage()]
