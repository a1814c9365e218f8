"""A forked child stops when its parent dies, by the kernel's signal or by looking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT
from .reliability.harness import alive, wait_until

#: Forks a child that ties itself to the parent, prints its pid, and has the
#: parent die at once, as kill -9 would leave it (no clean-up of any kind).
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from flask_messaging import parent_death

    if sys.argv[1] == "poll":
        parent_death._kernel_signals_death = lambda: False
    parent = os.getpid()
    if os.fork() == 0:
        def stopped(*_):
            open(sys.argv[2], "w").close()
            os._exit(0)
        signal.signal(signal.SIGTERM, stopped)
        parent_death.stop_with_parent(parent if sys.argv[3] == "real" else parent + 1)
        print(os.getpid(), flush=True)
        time.sleep(120)
        os._exit(3)
    time.sleep(float(sys.argv[4]))
    os._exit(0)
    """
)


def run(tmp_path: Path, how: str, parent: str, parent_lives: float) -> tuple[int, Path]:
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how, str(stopped), parent, str(parent_lives)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    with process:
        assert process.stdout is not None
        line = process.stdout.readline()
        process.wait(60)
    return (int(line) if line.strip() else 0), stopped


@pytest.mark.parametrize("how", ["prctl", "poll"])
def test_a_child_gets_sigterm_when_its_parent_dies(tmp_path: Path, how: str) -> None:
    if how == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    pid, stopped = run(tmp_path, how, "real", parent_lives=0.5)
    assert pid
    wait_until(lambda: not alive(pid), "the orphaned child to stop")
    assert stopped.exists()  # by SIGTERM, not its own exit after 120 s


@pytest.mark.parametrize("how", ["prctl", "poll"])
def test_a_parent_gone_before_the_call_is_noticed_at_once(
    tmp_path: Path, how: str
) -> None:
    # A pid other than the actual parent stands for a parent that died
    # between the fork and the call: the child has another parent already.
    pid, stopped = run(tmp_path, how, "gone", parent_lives=2)
    assert pid == 0  # stopped before it could print
    assert stopped.exists()
