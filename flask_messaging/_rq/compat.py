"""The RQ versions flask-messaging is tested with, and a warning outside them.

This package overrides methods of RQ's workers, queues, jobs and scheduler,
reads attributes RQ keeps private, and writes jobs as RQ writes them
(``tests/test_rq_contract.py`` checks each of these assumptions). RQ does
not promise to keep any of them: in a version outside the tested range a
renamed method would make an override silently stop being called, and a
guarantee (no job lost by a dying worker, a job's fault failing only that
job) would be lost without an error.
"""

from __future__ import annotations

import functools
import logging
import re

from rq.version import VERSION as RQ_VERSION

__all__ = [
    "RQ_VERSION",
    "TESTED_RQ",
    "TESTED_RQ_RANGE",
    "untested_rq",
    "warn_if_untested_rq",
]

logger = logging.getLogger("flask_messaging")

#: The RQ releases tested: from the first, up to (not including) the second.
TESTED_RQ = ((2, 12), (4,))

#: :data:`TESTED_RQ` as the requirement in ``pyproject.toml`` spells it.
TESTED_RQ_RANGE = ">=2.12,<4"

_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def untested_rq(version: str = RQ_VERSION) -> str | None:
    """Why RQ ``version`` is not one flask-messaging is tested with, or None.

    Only the release numbers count: ``3.1.0rc1`` is in the range, ``4.0.0b1``
    is not.
    """
    found = _RELEASE.match(version)
    if found is None:
        return (
            f"The installed RQ's version, {version!r}, cannot be read;"
            f" flask-messaging is tested with rq{TESTED_RQ_RANGE}"
        )
    release = tuple(int(part) for part in found.group().split("."))
    lowest, above = TESTED_RQ
    if lowest <= release < above:
        return None
    return (
        f"The installed RQ is version {version}; flask-messaging is tested"
        f" with rq{TESTED_RQ_RANGE}"
    )


@functools.cache
def warn_if_untested_rq(version: str = RQ_VERSION) -> bool:
    """Log a warning, once per process, if RQ ``version`` is not tested.

    :return: whether it is outside the tested range.
    """
    reason = untested_rq(version)
    if reason is None:
        return False
    logger.warning(
        "%s. flask-messaging changes parts of RQ's workers and writes jobs as"
        " RQ does: another version may have changed one of them, and a"
        " guarantee may be lost without an error. Install a tested version,"
        " or run tests/test_rq_contract.py (in flask-messaging's source"
        " distribution) against this one.",
        reason,
    )
    return True
