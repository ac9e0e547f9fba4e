"""The hand-over of the cores, both ends, with real processes standing in for the steps."""

import os
import subprocess
import sys
import time

import pytest

from torchperf.turns import SweepGone, Turns, measuring

# A measuring step: waits for its turn, "measures", says so.
STEP = """
import sys, time
from torchperf.turns import measuring
with measuring(sys.argv[1]):
    print(time.time(), flush=True)
"""

# An analytics run's last step, whose parent stands in for the Metaflow runtime.
DRAWN = """
import os, subprocess, sys
from torchperf.turns import card_drawn
card_drawn(sys.argv[1])
print(os.sched_getscheduler(0), os.sched_getscheduler(os.getppid()), flush=True)
"""


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_step_measures_only_after_the_sweep_says_go(tmp_path):
    turns = Turns(tmp_path)
    step = subprocess.Popen(
        [sys.executable, "-c", STEP, turns.turn("v1")], stdout=subprocess.PIPE, text=True
    )
    try:
        # GIVEN the step is ready and waits
        assert wait_for(lambda: turns.ready("v1"))
        time.sleep(0.2)
        assert step.poll() is None and not turns.measured("v1")
        # WHEN the sweep says go, THEN it measures after that, and says when it is done
        said_go = time.time()
        turns.go("v1")
        measured_at = float(step.communicate(timeout=10)[0])
        assert measured_at >= said_go
        assert turns.measured("v1")
    finally:
        step.kill()


def test_a_step_stops_waiting_once_its_sweep_is_gone(tmp_path):
    # GIVEN a sweep process that wrote the turns folder, then died
    sweep = subprocess.Popen(
        [sys.executable, "-c", "import sys; from torchperf.turns import Turns; Turns(sys.argv[1])"]
        + [str(tmp_path)]
    )
    sweep.wait(timeout=10)
    # THEN a step waiting for its turn gives up with a reason instead of waiting for good
    with pytest.raises(SweepGone, match=f"process {sweep.pid}"), measuring(str(tmp_path / "v1")):
        pytest.fail("measured without a turn")
    assert not (tmp_path / "v1.measured").exists()


def test_no_turn_measures_at_once(tmp_path):
    with measuring(None):
        pass
    assert not list(tmp_path.iterdir())


def test_a_failed_measurement_still_hands_the_cores_on(tmp_path):
    turns = Turns(tmp_path)
    turns.go("v1")
    with pytest.raises(RuntimeError, match="out of memory"), measuring(turns.turn("v1")):
        raise RuntimeError("out of memory")
    assert turns.measured("v1")


def test_a_drawn_card_says_so_and_its_run_yields_the_cores(tmp_path):
    turns = Turns(tmp_path)
    marker = turns.drawn_marker("analytics_0")
    # The parent plays the Metaflow runtime: the task's parent goes to idle priority too.
    runtime = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run({[sys.executable, '-c', DRAWN, marker]!r})",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    own, parent = map(int, runtime.stdout.split())
    assert os.path.exists(marker)
    assert own == parent == os.SCHED_IDLE


def test_a_new_drawn_marker_starts_undrawn(tmp_path):
    turns = Turns(tmp_path)
    marker = turns.drawn_marker("analytics_0")
    open(marker, "w").close()
    assert not os.path.exists(turns.drawn_marker("analytics_0"))


def test_forgetting_a_branch_lets_it_run_again(tmp_path):
    turns = Turns(tmp_path)
    for what in ("ready", "go", "measured"):
        (tmp_path / f"v1.{what}").touch()
    turns.forget("v1")
    assert not turns.ready("v1") and not turns.measured("v1")
    assert not (tmp_path / "v1.go").exists()
