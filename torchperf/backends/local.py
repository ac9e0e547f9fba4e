"""Run every variant on this machine through Metaflow's Runner, one measurement at a time.

Only a measurement needs the cores to itself; starting processes, importing torch, rendering
cards and the analytics flow may overlap one another. A file lock (``cores_lock``) serializes
what must not overlap: TorchPerfFlow's measuring step holds it while it warms up and measures,
and the sweep holds it while SweepAnalyticsFlow draws its card. As soon as a variant has
measured, the sweep starts the analytics run for the previous success and the next planned
variant, so that both overlap this variant's card render and end step, and the next
measurement waits only for what is left of them. What is left of the analytics run once its
card is drawn (its end step, the runtime's exit) does not delay the next measurement either:
it is stopped while that measurement runs and continued after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path

from torchperf.backends.base import Outcome, SweepSpec
from torchperf.plan import Variant, analytics_branch
from torchperf.quiet import (
    children,
    command_has,
    continue_processes,
    lock_holders,
    lock_waiters,
    stop_tree,
)
from torchperf.settings import (
    ConfigError,
    VariantSettings,
    available_memory_bytes,
    usable_cores,
    validate_variant,
)

FLOWS = Path(__file__).resolve().parents[2]
LOCK_NAME = ".cores.lock"
# How often the sweep looks whether a measurement still holds the lock (a file read).
POLL_SECONDS = 0.05


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def _runner(flow: str, **kwargs):
    """A Metaflow Runner, and a function that kills the processes it starts.

    The Runner takes over SIGINT to kill its own processes; Ctrl-C must stop the whole sweep,
    so the previous handler goes back at once and the kill is kept for our own use.
    """
    from metaflow import Runner

    previous = signal.getsignal(signal.SIGINT)
    with Runner(str(FLOWS / flow), show_output=False, pylint=False, **kwargs) as runner:
        kill = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
        yield runner, (lambda: kill(signal.SIGINT, None))


class _BackgroundRun:
    """A Metaflow run going on in a thread, stopped at its timeout (if any).

    Built in the main thread (see ``_runner``); ``on_end`` runs in the thread once the run has
    ended, ``result`` waits for it and reads it before the Runner's files are cleaned up.
    """

    def __init__(self, flow: str, tag: str, timeout=None, on_end=None, **runner_kwargs):
        self._stack = contextlib.ExitStack()
        runner, self._kill = self._stack.enter_context(_runner(flow, **runner_kwargs))
        self.timeout = timeout
        self.timed_out = threading.Event()
        self._timer = threading.Timer(timeout or 0, self._time_out)
        # A pending timeout must never keep the sweep's process alive at exit.
        self._timer.daemon = True
        self.executing = self.error = None
        self._on_end = on_end
        self._thread = threading.Thread(target=self._run, args=(runner, tag), daemon=True)
        if timeout:
            self._timer.start()
        self._thread.start()

    def _run(self, runner, tag: str) -> None:
        try:
            self.executing = runner.run(tags=[tag])
        except Exception as error:  # noqa: BLE001 - reported as the run's failure
            self.error = error
        finally:
            if self._on_end:
                self._on_end()

    def _time_out(self) -> None:
        self.timed_out.set()
        self._kill()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Kill the run's processes (it then reads failed)."""
        self._timer.cancel()
        self._kill()

    def result(self, read):
        """Wait for the run to end and return ``read(self)``."""
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)  # short joins keep Ctrl-C responsive
        self._timer.cancel()
        try:
            return read(self)
        finally:
            self._stack.close()


def _variant_outcome(launch: _BackgroundRun) -> Outcome:
    """How a TorchPerfFlow run ended."""
    if launch.error is not None:
        return Outcome("failed", message=_last_line(str(launch.error)))
    run = launch.executing.run
    if launch.timed_out.is_set():
        return Outcome("timeout", run.pathspec, message=f"stopped after {launch.timeout:g} s")
    if launch.executing.status != "successful":
        return Outcome("failed", run.pathspec, message=_last_line(launch.executing.stderr))
    result = run.data.result
    return Outcome(
        "succeeded", run.pathspec, result["gflops"], measure_seconds=result["measure_seconds"]
    )


def _analytics_outcome(launch: _BackgroundRun) -> dict:
    """The analytics run's pathspec when it succeeded, else its error output."""
    if launch.error is not None:
        return {"run": None, "stderr": str(launch.error)}
    if launch.executing.status != "successful":
        return {"run": None, "stderr": launch.executing.stderr}
    return {"run": launch.executing.run.pathspec, "stderr": ""}


class _AnalyticsRun(_BackgroundRun):
    """SweepAnalyticsFlow in the background, holding the cores lock until its card is drawn.

    Its ``start`` step reads the runs and renders the card; once that task has ended,
    ``hand_over`` stops the rest of the run (its end step and the runtime) and lets a waiting
    measurement have the cores; ``resume`` continues the rest once the measurement is done.
    """

    FLOW = "sweep_analytics.py"

    def __init__(self, lock: Path, tag: str, **runner_kwargs):
        self._lock = open(lock, "a")  # noqa: SIM115 - closed by _release
        # Taken before the next variant starts, so that its measurement waits for the card.
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._lock_path = lock
        self._stopped: list[int] = []
        self._card_task_seen = False
        self._guard = threading.Lock()
        super().__init__(self.FLOW, tag, on_end=self._release, **runner_kwargs)

    def _release(self) -> None:
        with self._guard:
            if not self._lock.closed:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()

    def _runtime(self) -> int | None:
        marker = self.FLOW.encode() + b"\0"
        return next((pid for pid in children() if command_has(pid, marker)), None)

    def card_drawn(self) -> bool:
        """Whether the run's ``start`` task (the work and the card) has ended."""
        runtime = self._runtime()
        if runtime is None:
            return False
        tasks = children(runtime)
        if any(command_has(pid, b"\0step\0end\0") for pid in tasks):
            return True
        running = any(command_has(pid, b"\0step\0start\0") for pid in tasks)
        self._card_task_seen = self._card_task_seen or running
        return self._card_task_seen and not running

    def hand_over(self) -> None:
        """Give the cores to a measurement waiting for them, once the card is drawn."""
        with self._guard:
            if self._lock.closed or self._stopped:
                return
            waiting = (lock_waiters(self._lock_path) or set()) - {os.getpid()}
            if not waiting or not self.card_drawn():
                return
            runtime = self._runtime()
            if runtime is not None:
                self._stopped = stop_tree(runtime)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def resume(self) -> None:
        """Continue what ``hand_over`` stopped."""
        with self._guard:
            continue_processes(self._stopped)
            self._stopped = []

    def stop(self) -> None:
        self.resume()
        super().stop()

    def result(self, read):
        self.resume()  # a stopped run would never end
        return super().result(read)


def _launch_variant(
    sweep: SweepSpec, variant: Variant, settings: VariantSettings, lock: Path
) -> _BackgroundRun:
    config = {**settings.as_config(), "cores_lock": str(lock)}
    return _BackgroundRun(
        "torchtest.py",
        sweep.tag,
        timeout=sweep.variant_timeout_seconds,
        branch=variant.branch,
        config_value=[("config", config)],
    )


def wait_until_measured(launch: _BackgroundRun, lock: Path, on_poll=None) -> None:
    """Return once the run's measuring step has taken and released ``lock``, or the run ended.

    ``on_poll`` is called at every look. Where /proc/locks cannot tell, this waits for the run
    to end.
    """
    seen = False
    while launch.running:
        if on_poll:
            on_poll()
        holders = lock_holders(lock)
        if holders is None:
            return
        others = holders - {os.getpid()}
        if others:
            seen = True
        elif seen:
            return
        time.sleep(POLL_SECONDS)


class LocalBackend:
    """Variants run one after another on this machine; analytics follow every success."""

    def __init__(self, name: str = "local"):
        self._launched: dict[str, _BackgroundRun] = {}
        self._analytics: _AnalyticsRun | None = None
        self._analytics_result: dict = {}
        # Variants that ended after the last analytics run started, and whether one of them
        # succeeded: the next analytics run is due.
        self._unseen = 0
        self._due = False

    # -- the Backend interface -------------------------------------------------------------
    def preflight(self, sweep: SweepSpec) -> None:
        cores, memory = len(usable_cores()), available_memory_bytes()
        for _, settings in sweep.planned:
            validate_variant(settings.as_config(), max_cpu=cores, memory_bytes=memory)
        for flow in ("torchtest.py", "sweep_analytics.py"):
            if not (FLOWS / flow).exists():
                raise ConfigError(f"{flow} is missing from {FLOWS}")

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        lock = self._lock_path(sweep)
        launch = self._launched.pop(variant.branch, None) or _launch_variant(
            sweep, variant, settings, lock
        )
        self._launched[variant.branch] = launch
        try:
            wait_until_measured(launch, lock, on_poll=self._hand_over_cores)
            if self._analytics is not None:
                self._analytics.resume()
            # The cores are free until the next measurement: use the time.
            if self._due and sweep.live_analytics:
                self._start_analytics(sweep)
            self._start_next(sweep, variant, lock)
            outcome = launch.result(_variant_outcome)
        except BaseException:
            launch.stop()  # and finish() collects it
            raise
        self._launched.pop(variant.branch, None)
        self._unseen += 1
        self._due = self._due or outcome.status == "succeeded"
        return outcome

    def cancel(self) -> None:
        for launch in list(self._launched.values()):
            launch.stop()
        if self._analytics is not None:
            self._analytics.resume()

    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        # Variants started ahead whose Hydra job never came (Ctrl-C, an exception) are stopped.
        for branch, launch in list(self._launched.items()):
            launch.stop()
            launch.result(_variant_outcome)
            del self._launched[branch]
        self._wait_for_analytics()
        if interrupted or sweep.dry_run or (self._unseen == 0 and self._analytics_result):
            return self._analytics_result.get("run")
        self._start_analytics(sweep)
        self._wait_for_analytics()
        if not self._analytics_result.get("run"):
            # The variants' results are safe in Metaflow; say why the aggregate is missing.
            why = _last_line(self._analytics_result.get("stderr", ""))
            print(f"warning: SweepAnalyticsFlow failed: {why}", file=sys.stderr)
        return self._analytics_result.get("run")

    # -- scheduling --------------------------------------------------------------------------
    def _start_next(self, sweep: SweepSpec, variant: Variant, lock: Path) -> None:
        """Start the variant planned after ``variant``: its start-up overlaps this one's end."""
        branches = [planned.branch for planned, _ in sweep.pending]
        if variant.branch not in branches:
            return
        following = branches.index(variant.branch) + 1
        if following < len(branches):
            next_variant, next_settings = sweep.pending[following]
            if next_variant.branch not in self._launched:
                self._launched[next_variant.branch] = _launch_variant(
                    sweep, next_variant, next_settings, lock
                )

    @staticmethod
    def _lock_path(sweep: SweepSpec) -> Path:
        sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = sweep.sweep_dir / LOCK_NAME
        # It must exist before any run: watching it needs its inode.
        path.touch()
        return path

    def _start_analytics(self, sweep: SweepSpec) -> None:
        """Run SweepAnalyticsFlow in the background; it holds the cores until its card is drawn."""
        self._wait_for_analytics()
        self._unseen, self._due = 0, False
        config = {"tag": sweep.tag, "event": sweep.event, "planned": len(sweep.planned) or None}
        self._analytics = _AnalyticsRun(
            self._lock_path(sweep),
            sweep.tag,
            branch=analytics_branch(sweep.tag),
            config_value=[("config", config)],
        )

    def _hand_over_cores(self) -> None:
        if self._analytics is not None:
            self._analytics.hand_over()

    def _wait_for_analytics(self) -> None:
        if self._analytics is not None:
            self._analytics_result = self._analytics.result(_analytics_outcome)
            self._analytics = None
