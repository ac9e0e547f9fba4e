"""The hand-over of the cores between a local sweep and its runs, both ends in one place.

A local sweep measures one variant at a time, while start-ups, card renders and analytics runs
overlap one another. The sweep and the runs say so to each other with small files in the sweep's
turns folder, one set per variant:

    step   BRANCH.ready     the measuring step has imported torch and waits for the cores
    sweep  BRANCH.go        the cores are free: measure now
    step   BRANCH.measured  the timed samples are over
    flow   NAME.drawn       an analytics run's card is drawn: what is left of it may wait

The sweep writes its process id to ``sweep.pid``: a step waiting for ``go`` gives up once that
process is gone, so a killed sweep leaves no run waiting for good. What is left of an analytics
run once its card is drawn (its end step, its runtime's exit) runs at idle priority
(SCHED_IDLE): the kernel gives it only cycles a measurement leaves unused.

Argo runs have no turns folder: every pod has its own cores.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

PID_FILE = "sweep.pid"
# How often a waiting side looks for the other's file: a stat, negligible next to a sample.
POLL_SECONDS = 0.01


class SweepGone(RuntimeError):
    """The sweep that would hand over the cores no longer runs."""


# -- the run's side ----------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_pid(folder: Path) -> int | None:
    try:
        return int((folder / PID_FILE).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def measuring(turn: str | None, poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Wait for the sweep's ``go`` for this variant, measure in the block, say when it is over.

    ``turn`` is the variant's path prefix in the turns folder (``folder/BRANCH``); None measures
    at once. Raises SweepGone when the sweep is gone while this step waits.
    """
    if not turn:
        yield
        return
    prefix = Path(turn)
    sweep = _sweep_pid(prefix.parent)
    _touch(prefix, "ready")
    go = prefix.with_name(prefix.name + ".go")
    while not go.exists():
        if sweep is not None and not _alive(sweep):
            raise SweepGone(
                f"the sweep (process {sweep}) that would give this run its turn is gone"
            )
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        _touch(prefix, "measured")


def card_drawn(marker: str | None) -> None:
    """An analytics run's card is drawn: say so, and let the rest of the run wait for the cores.

    Called at the start of its last step; the runtime (this task's parent) and the step go to idle
    priority, so that neither competes with the next measurement.
    """
    if not marker:
        return
    for pid in (os.getppid(), 0):
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    Path(marker).touch()


def _touch(prefix: Path, what: str) -> None:
    prefix.with_name(f"{prefix.name}.{what}").touch()


# -- the sweep's side --------------------------------------------------------------------------
class Turns:
    """The sweep's end of the hand-over, for the variants and analytics runs of one sweep."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / PID_FILE).write_text(str(os.getpid()))

    def turn(self, branch: str) -> str:
        """The ``turn`` a variant's step is given (see ``measuring``)."""
        return str(self.folder / branch)

    def drawn_marker(self, name: str) -> str:
        """The marker an analytics run touches once its card is drawn (see ``card_drawn``)."""
        path = self.folder / f"{name}.drawn"
        path.unlink(missing_ok=True)
        return str(path)

    def _file(self, branch: str, what: str) -> Path:
        return self.folder / f"{branch}.{what}"

    def ready(self, branch: str) -> bool:
        return self._file(branch, "ready").exists()

    def measured(self, branch: str) -> bool:
        return self._file(branch, "measured").exists()

    def go(self, branch: str) -> None:
        self._file(branch, "go").touch()

    def forget(self, branch: str) -> None:
        """Clear a variant's files (a resumed sweep may run the same branch again)."""
        for what in ("ready", "go", "measured"):
            self._file(branch, what).unlink(missing_ok=True)
