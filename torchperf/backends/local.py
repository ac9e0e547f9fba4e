"""Run every variant on this machine through Metaflow's Runner, one measurement at a time.

Only a measurement needs the cores to itself; starting processes, importing torch, rendering
cards and the analytics flow may overlap one another. A file lock (``cores_lock``) serializes
what must not overlap: TorchPerfFlow's measuring step holds it while it warms up and measures,
and the sweep takes it as soon as a measurement is over. Then it starts the analytics run for
this variant (which waits for the variant's run to end) and the next planned variant, so that
both overlap this variant's card render and end step; it lets the next measurement have the
cores once this variant has ended and the analytics run has drawn its card. What is left of
the analytics run then (its end step, the runtime's exit) is stopped while that measurement
runs and continued after it.
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
from torchperf.errors import one_line
from torchperf.plan import Variant, analytics_branch
from torchperf.quiet import (
    command_has,
    continue_processes,
    lock_holders,
    lock_waiters,
    running_children,
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
# Links to the two flows, which the local runs are started by. Every `run` walks the directory
# of the file it was started by, for a code package that a local run never uses; the project
# root holds .venv and the growing .metaflow datastore (0.3 s of CPU per run, more with each
# sweep), this directory only the links. Python resolves the link for imports.
LAUNCH_DIR = FLOWS / ".flows"
LOCK_NAME = ".cores.lock"
# How often the sweep looks whether a measurement still holds the lock (a file read).
POLL_SECONDS = 0.05


def launch_path(flow: str) -> Path:
    """The path to start ``flow`` by: its link in LAUNCH_DIR, or the file itself where the
    checkout has no working link (symlinks turned off)."""
    link = LAUNCH_DIR / flow
    return link if link.resolve() == FLOWS / flow else FLOWS / flow


@contextlib.contextmanager
def _runner(flow: str, **kwargs):
    """A Metaflow Runner, and a function that kills the processes it starts.

    The Runner takes over SIGINT to kill its own processes; Ctrl-C must stop the whole sweep,
    so the previous handler goes back at once and the kill is kept for our own use.
    """
    from metaflow import Runner

    previous = signal.getsignal(signal.SIGINT)
    with Runner(str(launch_path(flow)), show_output=False, pylint=False, **kwargs) as runner:
        kill = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
        yield runner, (lambda: kill(signal.SIGINT, None))


class _BackgroundRun:
    """A Metaflow run going on in a thread, stopped at its timeout (if any).

    Built in the main thread (see ``_runner``); ``result`` waits for the run to end and reads
    it before the Runner's files are cleaned up.
    """

    def __init__(self, flow: str, tag: str, timeout=None, **runner_kwargs):
        self._stack = contextlib.ExitStack()
        runner, self._kill = self._stack.enter_context(_runner(flow, **runner_kwargs))
        self.timeout = timeout
        self.timed_out = threading.Event()
        self._timer = threading.Timer(timeout or 0, self._time_out)
        # A pending timeout must never keep the sweep's process alive at exit.
        self._timer.daemon = True
        self.executing = self.error = None
        self._thread = threading.Thread(target=self._run, args=(runner, tag), daemon=True)
        if timeout:
            self._timer.start()
        self._thread.start()

    def _run(self, runner, tag: str) -> None:
        try:
            self.executing = runner.run(tags=[tag])
        except Exception as error:  # noqa: BLE001 - reported as the run's failure
            self.error = error

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
        return Outcome("failed", message=one_line(str(launch.error)))
    run = launch.executing.run
    if launch.timed_out.is_set():
        return Outcome("timeout", run.pathspec, message=f"stopped after {launch.timeout:g} s")
    if launch.executing.status != "successful":
        return Outcome("failed", run.pathspec, message=one_line(launch.executing.stderr))
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


class _CoresHold:
    """The sweep's own hold on the cores lock, between two measurements.

    Taken as soon as a measurement is over, so that the next one waits until the variant that
    measured has ended and the analytics run has drawn its card.
    """

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def take(self) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a")  # noqa: SIM115 - closed by release
            fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def wanted(self) -> bool:
        """Whether another process waits for the lock (a measurement, ready to start).

        Where /proc/locks cannot tell, assume one does: holding on would only block it.
        """
        waiters = lock_waiters(self.path)
        return waiters is None or bool(waiters - {os.getpid()})


class _AnalyticsRun(_BackgroundRun):
    """SweepAnalyticsFlow in the background, whose rest can wait once its card is drawn.

    Its ``start`` step reads the runs and renders the card; its ``end`` step and the runtime's
    exit are all that is left then: ``pause`` stops them (SIGSTOP) while a measurement runs,
    ``resume`` continues them.
    """

    FLOW = "sweep_analytics.py"

    def __init__(self, tag: str, wait_for: list[str], **runner_kwargs):
        self._paused: list[int] = []
        self._card_task_seen = False
        # How to tell this run's runtime among our children: two analytics runs may overlap
        # (the end of one, the start of the next), but they wait for different variants.
        self._markers = [self.FLOW.encode() + b"\0", *(f'"{b}"'.encode() for b in wait_for)]
        super().__init__(self.FLOW, tag, **runner_kwargs)

    def _runtime(self) -> int | None:
        flow, *waited = self._markers
        for pid in running_children(flow):
            if all(command_has(pid, marker) for marker in waited):
                return pid
        return None

    def card_drawn(self) -> bool:
        """Whether the run has ended, or its ``start`` task (the work and the card) has."""
        runtime = self._runtime()
        if runtime is None:
            return not self.running
        if running_children(b"\0step\0end\0", runtime):
            return True
        running = bool(running_children(b"\0step\0start\0", runtime))
        self._card_task_seen = self._card_task_seen or running
        return self._card_task_seen and not running

    def pause(self) -> None:
        runtime = self._runtime()
        if runtime is not None and not self._paused:
            self._paused = stop_tree(runtime)

    def resume(self) -> None:
        continue_processes(self._paused)
        self._paused = []

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


def wait_until_measured(launch: _BackgroundRun, lock: Path, on_poll=None) -> bool:
    """Wait until the run's measuring step has taken and released ``lock`` (True), or the run
    has ended without being seen to (False; always so where /proc/locks cannot tell).

    ``on_poll`` is called at every look.
    """
    seen = False
    while launch.running:
        if on_poll:
            on_poll()
        holders = lock_holders(lock)
        if holders is not None:
            if holders - {os.getpid()}:
                seen = True
            elif seen:
                return True
        time.sleep(POLL_SECONDS)
    return False


class LocalBackend:
    """Variants run one after another on this machine; an analytics run follows each measurement."""

    def __init__(self, name: str = "local"):
        self._launched: dict[str, _BackgroundRun] = {}
        self._hold: _CoresHold | None = None
        # Alive analytics runs, oldest first: the newest may start while the one before ends.
        self._analytics: list[_AnalyticsRun] = []
        self._analytics_result: dict = {}
        # Variants that ended without an analytics run waiting for them (those that failed
        # before measuring): the final analytics run is due for them.
        self._unseen = 0

    # -- the Backend interface -------------------------------------------------------------
    def preflight(self, sweep: SweepSpec) -> None:
        cores, memory = len(usable_cores()), available_memory_bytes()
        for _, settings in sweep.planned:
            validate_variant(settings.as_config(), max_cpu=cores, memory_bytes=memory)
        for flow in ("torchtest.py", "sweep_analytics.py"):
            if not (FLOWS / flow).exists():
                raise ConfigError(f"{flow} is missing from {FLOWS}")

    def start(self, sweep: SweepSpec) -> None:
        """Launch the first pending variant at once: its start-up (a Metaflow runtime, torch's
        import) overlaps Hydra's checking and composing of the jobs before the first one."""
        if sweep.pending:
            variant, settings = sweep.pending[0]
            lock = self._lock_path(sweep)
            self._launched[variant.branch] = _launch_variant(sweep, variant, settings, lock)

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        lock = self._lock_path(sweep)
        launch = self._launched.pop(variant.branch, None) or _launch_variant(
            sweep, variant, settings, lock
        )
        self._launched[variant.branch] = launch
        hold = self._hold = self._hold or _CoresHold(lock)
        try:
            measured = wait_until_measured(launch, lock, on_poll=self._hand_over_cores)
            # An analytics run started now waits for this variant: its card will show it.
            covered = measured and sweep.live_analytics
            hold.take()
            for analytics in self._analytics:
                analytics.resume()
            # The cores are free until the next measurement: use the time. The analytics run
            # goes first: the next measurement waits for its card.
            if covered:
                self._start_analytics(sweep, wait_for=[variant.branch])
            self._start_next(sweep, variant, lock)
            outcome = launch.result(_variant_outcome)
        except BaseException:
            launch.stop()  # and finish() collects it
            raise
        self._launched.pop(variant.branch, None)
        if covered:
            return outcome
        self._unseen += 1
        if outcome.status == "succeeded" and sweep.live_analytics:
            # Its measurement went unseen (too short for the polls, or no /proc/locks): the
            # analytics run comes after the variant's end instead.
            self._start_analytics(sweep, wait_for=[variant.branch])
        return outcome

    def cancel(self) -> None:
        for launch in list(self._launched.values()):
            launch.stop()
        for analytics in self._analytics:
            analytics.resume()
        if self._hold is not None:
            self._hold.release()

    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        # Variants started ahead whose Hydra job never came (Ctrl-C, an exception) are stopped.
        for branch, launch in list(self._launched.items()):
            launch.stop()
            launch.result(_variant_outcome)
            del self._launched[branch]
        if self._hold is not None:
            self._hold.release()
        self._wait_for_analytics()
        if interrupted or sweep.dry_run or (self._unseen == 0 and self._analytics_saw_all()):
            return self._analytics_result.get("run")
        self._start_analytics(sweep)
        self._wait_for_analytics()
        if not self._analytics_result.get("run"):
            # The variants' results are safe in Metaflow; say why the aggregate is missing.
            why = one_line(self._analytics_result.get("stderr", ""))
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

    def _start_analytics(self, sweep: SweepSpec, wait_for: list[str] = ()) -> None:
        """Run SweepAnalyticsFlow in the background, waiting for the runs on ``wait_for``.

        The run before may still be ending: it is not waited for (the new run starts from the
        aggregate of the latest run whose card is drawn). Runs alive together must differ in
        ``wait_for``, which tells their processes apart; only the final run has none.
        """
        for ended in [run for run in self._analytics if not run.running]:
            self._analytics_result = ended.result(_analytics_outcome)
            self._analytics.remove(ended)
        self._unseen = 0
        config = sweep.analytics_config(wait_for)
        self._analytics.append(
            _AnalyticsRun(
                sweep.tag,
                list(wait_for),
                branch=analytics_branch(sweep.tag),
                config_value=[("config", config)],
            )
        )

    def _hand_over_cores(self) -> None:
        """Let a waiting measurement have the cores once the analytics card is drawn.

        Called while the next variant starts up; the variant before it has ended by then.
        What is left of the analytics runs (end steps) is paused until the measurement is over.
        """
        hold = self._hold
        if hold is None or not hold.held or not hold.wanted():
            return
        if not all(analytics.card_drawn() for analytics in self._analytics):
            return
        for analytics in self._analytics:
            analytics.pause()
        hold.release()

    def _analytics_saw_all(self) -> bool:
        """Whether the last analytics run succeeded and left no variant run for later."""
        if not self._analytics_result.get("run"):
            return False
        from metaflow import Run, namespace

        namespace(None)
        return not Run(self._analytics_result["run"]).data.running

    def _wait_for_analytics(self) -> None:
        while self._analytics:
            self._analytics_result = self._analytics.pop(0).result(_analytics_outcome)
