"""Run every variant on this machine through Metaflow's Runner, one measurement at a time.

Only a measurement needs the cores to itself; start-ups (a Metaflow runtime, torch's import),
card renders and analytics runs may overlap one another. One variant's life is one coroutine,
``_VariantLife.live``, on this backend's event loop:

1. planned: the sweep hands the backend its pending variants in Hydra's job order;
2. started: ``Runner.async_run`` once the variant before it has measured (the first one as the
   sweep opens), so that its start-up overlaps the end of the one before;
3. its turn: the variant before has measured. Its timeout counts from here;
4. measured: its step says it is ready, the sweep says go once the run before has ended and the
   analytics run that follows it has drawn its card, and the step says when it has measured
   (the files of torchperf/turns.py);
5. aggregated: an analytics run for it starts at once; it waits for the variant's run to end;
6. recorded: the run ends and its outcome goes to the sweep.

The sweep's thread drives the loop while it waits for a variant (``run_variant``); the runs
themselves go on in their own processes in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from torchperf.backends.base import ROOT, Outcome, SweepSpec, flow_path
from torchperf.card_renders import alive, children, running_children
from torchperf.errors import failure_reason, one_line
from torchperf.history import details_of
from torchperf.plan import Variant, analytics_branch
from torchperf.result import Result
from torchperf.settings import (
    ConfigError,
    VariantSettings,
    available_memory_bytes,
    usable_cores,
    validate_variant,
)
from torchperf.turns import POLL_SECONDS, Turns

FLOWS = ROOT
TURNS_DIR = ".turns"
# Stopped runs get SIGTERM, then SIGKILL after this long (Metaflow's own grace on Ctrl-C).
KILL_GRACE_SECONDS = 2.0


async def _runner(flow: str, **kwargs):
    """A Metaflow Runner for ``flow`` that leaves Ctrl-C to the sweep.

    Built in a running loop, its subprocess manager makes SIGINT kill its own processes; Ctrl-C
    must stop the whole sweep (which then stops every run), so the handler before goes back. A
    Ctrl-C while it was built (it loads the flow: a second or so) went to its handler: it is
    raised here instead of being lost.
    """
    from metaflow import Runner

    previous = signal.getsignal(signal.SIGINT)
    runner = Runner(str(flow_path(flow)), show_output=False, pylint=False, **kwargs)
    loop = asyncio.get_running_loop()
    heard: list[bool] = []
    # The loop hands a signal that came meanwhile to whatever handler it holds when it reads it.
    loop.add_signal_handler(signal.SIGINT, heard.append, True)
    await asyncio.sleep(0.01)
    loop.remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, previous)
    if heard:
        runner.cleanup()
        raise KeyboardInterrupt
    return runner


def _settle(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _descendants(pid: int) -> set[int]:
    """The processes under ``pid``: a run's steps and what they started (card renders)."""
    found, todo = set(), [pid]
    while todo:
        below = children(todo.pop())
        found.update(below)
        todo.extend(below)
    return found


def _living(pids: set[int]) -> set[int]:
    return {pid for pid in pids if alive(pid)}


def _signal(pids, signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


async def _stop(executing) -> None:
    """SIGTERM a run's process and every process under it, SIGKILL what is left after the grace;
    return once its process has ended.

    Signals go straight to the processes: Metaflow's kill helpers start ``kill``, which prints
    "kill: (PID): No such process" into the terminal for a process that has just ended, and
    ``ExecutingRun.wait(timeout)`` prints a line of its own (torchperf/private_api.py).
    """
    process = executing.command_obj.process  # the one private name: see torchperf/private_api.py
    if process.returncode is not None:
        return
    tree = _descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    _signal(tree, signal.SIGTERM)
    if await _ended(process, tree, KILL_GRACE_SECONDS):
        return
    if process.returncode is None:
        tree |= _descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    _signal(_living(tree), signal.SIGKILL)
    # SIGKILL cannot be refused: what is left is the kernel's time to end them.
    await _ended(process, tree, KILL_GRACE_SECONDS)


async def _stop_children(marker: bytes) -> None:
    """Stop the runs among this process's children whose command line holds ``marker``, with
    no handle from Metaflow (a run whose start-up waits, on a metadata service say, has none
    yet): SIGTERM to each and every process under it, SIGKILL after the grace."""
    tree = set(running_children(marker))
    for pid in list(tree):
        tree |= _descendants(pid)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _signal(_living(tree), signum)
        deadline = asyncio.get_running_loop().time() + KILL_GRACE_SECONDS
        while _living(tree) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if not _living(tree):
            return


async def _ended(process, tree: set[int], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``process`` and every process of ``tree`` to end; whether
    they all did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while process.returncode is None or _living(tree):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class _AnalyticsRun:
    """SweepAnalyticsFlow in the background; ``drawn`` resolves once its card is."""

    def __init__(self, backend: LocalBackend, sweep: SweepSpec, wait_for: list[str], number: int):
        loop = backend.loop
        self.drawn = loop.create_future()
        marker = backend.turns.drawn_marker(f"analytics_{number}")
        config = {**sweep.analytics_config(wait_for), "card_drawn": marker}
        self.task = loop.create_task(self.live(sweep.tag, config, Path(marker)))

    async def live(self, tag: str, config: dict, marker: Path) -> dict:
        """The run's pathspec when it succeeded, else its error output."""
        runner = await _runner(
            "sweep_analytics.py", branch=analytics_branch(tag), config_value=[("config", config)]
        )
        try:
            executing = await runner.async_run(tags=[tag])
            while executing.returncode is None and not marker.exists():
                await asyncio.sleep(POLL_SECONDS)
            _settle(self.drawn, True)
            await executing.wait()
            if executing.status != "successful":
                return {"run": None, "stderr": executing.stderr}
            return {"run": executing.run.pathspec, "stderr": ""}
        except Exception as error:  # noqa: BLE001 - reported as the run's failure
            # A run that failed before it began: Metaflow's error holds its output.
            return {"run": None, "stderr": str(error)}
        finally:
            _settle(self.drawn, False)
            runner.cleanup()


class _VariantLife:
    """One variant's life on this machine, from its start to its outcome (see the module doc)."""

    def __init__(
        self,
        backend: LocalBackend,
        sweep: SweepSpec,
        variant: Variant,
        settings: VariantSettings,
        before: _VariantLife | None,
    ):
        self.backend, self.sweep, self.variant, self.settings = backend, sweep, variant, settings
        self.before = before  # the variant measured just before this one, if any
        loop = backend.loop
        self.measured = loop.create_future()  # True once measured; False if it ended without
        self.cores_free = loop.create_future()  # its run has ended, its analytics card is drawn
        self.executing = None  # Metaflow's handle on its run, once the run has begun
        self.runner = None
        self.task = loop.create_task(self.live())

    def begun(self) -> bool:
        """Whether its run has begun (Metaflow gave its handle), or could not begin."""
        return self.task.done() or self.executing is not None

    async def live(self) -> Outcome:
        branch, timeout = self.variant.branch, self.sweep.variant_timeout_seconds
        if self.backend.cancelled:
            return Outcome("cancelled", message="not started")
        turns = self.backend.turns
        turns.forget(branch)
        config = {**self.settings.as_config(), "turn": turns.turn(branch)}
        try:
            self.runner = await _runner(
                "torchtest.py", branch=branch, config_value=[("config", config)]
            )
        except BaseException:  # Ctrl-C: the variant after it must not wait for its turn
            _settle(self.measured, False)
            raise
        analytics = None
        try:
            try:
                executing = await self.runner.async_run(tags=[self.sweep.tag])
            except Exception as error:  # noqa: BLE001 - the run failed before it began
                if self.backend.cancelled:  # stopped while it began (cancel)
                    return Outcome("cancelled", message="interrupted")
                # Metaflow's error holds the process's output.
                return Outcome("failed", message=failure_reason(str(error)))
            self.executing = executing
            if self.backend.cancelled:  # the sweep was stopped while the run began
                await _stop(executing)
                return Outcome("cancelled", executing.run.pathspec, message="interrupted")
            if self.before:
                await self.before.measured  # its turn comes: the clock starts
            try:
                analytics = await asyncio.wait_for(self._turn(), timeout)
            except asyncio.TimeoutError:
                await _stop(executing)
                return Outcome(
                    "timeout", executing.run.pathspec, message=f"stopped after {timeout:g} s"
                )
            if self.backend.cancelled:
                return Outcome("cancelled", executing.run.pathspec, message="interrupted")
            if executing.status != "successful":
                # A step's traceback is in the run's stdout; Metaflow's summary in stderr.
                why = failure_reason(f"{executing.stdout}\n{executing.stderr}")
                return Outcome("failed", executing.run.pathspec, message=why)
            result = Result.from_dict(executing.run.data.result)
            details = details_of(result)  # read here once: the sweep need not load the run again
            return Outcome(
                "succeeded",
                executing.run.pathspec,
                result.gflops,
                measure_seconds=result.measure_seconds,
                gflops_ci=details.get("gflops_ci"),
                warnings=details["warnings"],
            )
        finally:
            _settle(self.measured, False)
            self.backend.loop.create_task(self._free_cores(analytics))
            if self.runner:
                self.runner.cleanup()

    async def _turn(self) -> _AnalyticsRun | None:
        """Measure when the cores are free, hand them on, wait for the run's end; the analytics
        run that will show it, if one was started."""
        turns, branch = self.backend.turns, self.variant.branch
        measured = await self._measure(turns, branch)
        _settle(self.measured, measured)
        analytics = self.backend.after_measured(self, measured)
        await self.executing.wait()
        return analytics

    async def _measure(self, turns: Turns, branch: str) -> bool:
        while not turns.ready(branch):
            if self.executing.returncode is not None:
                return False
            await asyncio.sleep(POLL_SECONDS)
        if self.before:
            await self.before.cores_free
        turns.go(branch)
        while not turns.measured(branch):
            if self.executing.returncode is not None:
                return turns.measured(branch)
            await asyncio.sleep(POLL_SECONDS)
        return True

    async def _free_cores(self, analytics: _AnalyticsRun | None) -> None:
        if analytics is not None:
            await analytics.drawn
        _settle(self.cores_free, True)


class LocalBackend:
    """Variants run one after another on this machine; an analytics run follows each measurement."""

    def __init__(self, name: str = "local"):
        self.loop: asyncio.AbstractEventLoop | None = None  # from start() to finish()
        self.turns: Turns | None = None
        self._sweep: SweepSpec | None = None
        self._lives: dict[str, _VariantLife] = {}  # started, and not yet handed to the sweep
        self._last: _VariantLife | None = None  # the newest life: the next one measures after it
        self._analytics: list[_AnalyticsRun] = []
        # Variants that ended with no analytics run started for them (they failed before
        # measuring, or live analytics are off): the final analytics run is due for them.
        self._uncovered = 0
        self._last_analytics: dict = {}  # the outcome of the newest analytics run that ended
        self.cancelled = False  # stopped: runs still beginning stop once begun, none starts

    # -- the Backend interface -------------------------------------------------------------
    def preflight(self, sweep: SweepSpec) -> None:
        cores, memory = len(usable_cores()), available_memory_bytes()
        for _, settings in sweep.planned:
            validate_variant(settings.as_config(), max_cpu=cores, memory_bytes=memory)
        for flow in ("torchtest.py", "sweep_analytics.py"):
            if not (FLOWS / flow).exists():
                raise ConfigError(f"{flow} is missing from {FLOWS}")

    def start(self, sweep: SweepSpec) -> None:
        """Start the first pending variant at once: its start-up overlaps Hydra's checking and
        composing of the jobs before the first one."""
        self._open(sweep)
        if sweep.pending:
            life = self._begin(*sweep.pending[0])
            self._drive_until(life.begun)

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        self._open(sweep)
        life = self._lives.get(variant.branch) or self._begin(variant, settings)
        try:
            outcome = self.loop.run_until_complete(life.task)
        except Exception as error:  # noqa: BLE001 - a failed run, never a failed sweep
            outcome = Outcome("failed", message=one_line(error))
        self._lives.pop(variant.branch, None)
        if not life.measured.result() or not sweep.live_analytics:
            self._uncovered += 1
        return outcome

    def cancel(self) -> None:
        """Stop every variant run (one still beginning stops once begun) and start none; analytics
        runs go on to their end (finish waits for them)."""
        self.cancelled = True
        if self.loop is None:
            return
        lives = self._lives.values()
        runs = [_stop(life.executing) for life in lives if life.executing]
        # A run still beginning has no handle yet; its start-up may wait for minutes.
        runs += [
            _stop_children(life.variant.branch.encode() + b"\0")
            for life in lives
            if life.executing is None and life.runner is not None and not life.task.done()
        ]
        if self.loop.is_running():  # the loop's own thread waits for these in finish()
            for run in runs:
                self.loop.call_soon_threadsafe(self.loop.create_task, run)
        else:
            self._drain([self.loop.create_task(run) for run in runs])

    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        try:
            return self._finish(sweep, interrupted)
        except KeyboardInterrupt:
            # A signal while finish waits for runs (the final analytics run): they stop too,
            # every run of the sweep carrying its tag on its command line.
            self.cancelled = True
            if not self.loop.is_closed():
                self._drain([self.loop.create_task(_stop_children(sweep.tag.encode()))])
                # A run's start-up waits in a thread that learns of its process's end only
                # through this loop: left waiting, it would hold the process's exit.
                left = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
                if left:
                    self.loop.run_until_complete(asyncio.wait(left, timeout=KILL_GRACE_SECONDS))
            raise

    def _finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        self._open(sweep)  # the final analytics run needs it even when nothing else ran
        # Variants started ahead whose Hydra job never came (Ctrl-C, an exception) are stopped.
        self.cancel()
        pending = [life.task for life in self._lives.values()]
        self._lives.clear()
        # Not cancelled: a life still beginning its run must live on to stop it.
        self._drain(pending)
        result = self._wait_for_analytics()
        if interrupted or sweep.dry_run or (self._uncovered == 0 and _saw_all(result)):
            return self._close(result)
        self._analytics.append(_AnalyticsRun(self, sweep, [], len(self._analytics)))
        result = self._wait_for_analytics()
        if not result.get("run"):
            # The variants' results are safe in Metaflow; say why the aggregate is missing.
            why = one_line(result.get("stderr", ""))
            print(f"warning: SweepAnalyticsFlow failed: {why}", file=sys.stderr)
        return self._close(result)

    # -- scheduling --------------------------------------------------------------------------
    def _open(self, sweep: SweepSpec) -> None:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self._sweep, self.turns = sweep, Turns(sweep.sweep_dir / TURNS_DIR)

    def _begin(self, variant: Variant, settings: VariantSettings) -> _VariantLife:
        life = _VariantLife(self, self._sweep, variant, settings, self._last)
        self._lives[variant.branch] = self._last = life
        return life

    def after_measured(self, life: _VariantLife, measured: bool) -> _AnalyticsRun | None:
        """The cores are free until the next measurement: an analytics run for the variant that
        just measured, and the start of the next planned one, both overlap its end."""
        sweep, analytics = self._sweep, None
        if measured and sweep.live_analytics:
            analytics = _AnalyticsRun(self, sweep, [life.variant.branch], len(self._analytics))
            self._analytics.append(analytics)
        branches = [variant.branch for variant, _ in sweep.pending]
        if life.variant.branch in branches:
            following = branches.index(life.variant.branch) + 1
            if following < len(branches) and sweep.pending[following][0].branch not in self._lives:
                self._begin(*sweep.pending[following])
        return analytics

    def _drive_until(self, condition) -> None:
        async def until():
            while not condition():
                await asyncio.sleep(0.001)

        self.loop.run_until_complete(until())

    def _drain(self, tasks) -> None:
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def _wait_for_analytics(self) -> dict:
        """Wait for every analytics run; the outcome of the newest (empty when none ran)."""
        runs, self._analytics = self._analytics, []
        self._drain([run.task for run in runs])
        # A run whose task raised (its Runner could not be built) has no outcome to offer.
        ended = [run.task for run in runs if not run.task.cancelled()]
        done = [task.result() for task in ended if task.exception() is None]
        self._last_analytics = done[-1] if done else self._last_analytics
        return self._last_analytics

    def _close(self, result: dict) -> str | None:
        # Settle what is left (the cores_free tasks of the last lives), then close the loop.
        self._drain([task for task in asyncio.all_tasks(self.loop) if not task.done()])
        self.loop.close()
        return result.get("run")


def _saw_all(result: dict) -> bool:
    """Whether the analytics run succeeded and left no variant run for later."""
    if not result.get("run"):
        return False
    from metaflow import Run, namespace

    namespace(None)
    return not Run(result["run"]).data.running
