"""Run every variant on this machine through Metaflow's Runner, one measurement at a time.

Live analytics overlap the next variant's start-up (process spawns, imports), never its
measurement: the sweep holds a file lock while SweepAnalyticsFlow runs, and TorchPerfFlow's
measuring step takes the same lock before it warms up.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import threading
from pathlib import Path

from torchperf.backends.base import Outcome, SweepSpec
from torchperf.plan import Variant, analytics_branch
from torchperf.settings import (
    ConfigError,
    VariantSettings,
    available_memory_bytes,
    usable_cores,
    validate_variant,
)

FLOWS = Path(__file__).resolve().parents[2]
LOCK_NAME = ".cores.lock"


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


class LocalBackend:
    """Variants run one after another on this machine; analytics follow every success."""

    def __init__(self, name: str = "local"):
        self._analytics: threading.Thread | None = None
        self._analytics_result: dict = {}
        self._kill_current = None
        # Variants that ended after the last analytics run started: the final run is needed
        # only when the live ones have not seen everything.
        self._unseen = 0

    # -- the Backend interface -------------------------------------------------------------
    def preflight(self, sweep: SweepSpec) -> None:
        cores, memory = len(usable_cores()), available_memory_bytes()
        for _, settings in sweep.planned:
            validate_variant(settings.as_config(), max_cpu=cores, memory_bytes=memory)
        for flow in ("torchtest.py", "sweep_analytics.py"):
            if not (FLOWS / flow).exists():
                raise ConfigError(f"{flow} is missing from {FLOWS}")

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        self._unseen += 1
        config = {**settings.as_config(), "cores_lock": str(self._lock_path(sweep))}
        timed_out = threading.Event()
        with _runner("torchtest.py", branch=variant.branch, config_value=[("config", config)]) as (
            runner,
            kill,
        ):
            self._kill_current = kill
            timer = threading.Timer(
                sweep.variant_timeout_seconds, lambda: (timed_out.set(), kill())
            )
            timer.start()
            try:
                executing = runner.run(tags=[sweep.tag])
            except BaseException:
                kill()
                raise
            finally:
                timer.cancel()
                self._kill_current = None
            run = executing.run
            if timed_out.is_set():
                return Outcome(
                    "timeout",
                    run.pathspec,
                    message=f"stopped after {sweep.variant_timeout_seconds:g} s",
                )
            if executing.status != "successful":
                return Outcome("failed", run.pathspec, message=_last_line(executing.stderr))
            result = run.data.result
        outcome = Outcome(
            "succeeded", run.pathspec, result["gflops"], measure_seconds=result["measure_seconds"]
        )
        if sweep.live_analytics:
            self._start_analytics(sweep)
        return outcome

    def cancel(self) -> None:
        if self._kill_current:
            self._kill_current()

    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        self._wait_for_analytics()
        if interrupted or sweep.dry_run:
            return self._analytics_result.get("run")
        if self._unseen == 0 and self._analytics_result.get("run"):
            return self._analytics_result["run"]
        self._start_analytics(sweep)
        self._wait_for_analytics()
        return self._analytics_result.get("run")

    # -- analytics ---------------------------------------------------------------------------
    @staticmethod
    def _lock_path(sweep: SweepSpec) -> Path:
        sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
        return sweep.sweep_dir / LOCK_NAME

    def _start_analytics(self, sweep: SweepSpec) -> None:
        """Run SweepAnalyticsFlow in the background, holding the cores lock while it runs."""
        self._wait_for_analytics()
        self._unseen = 0
        lock = open(self._lock_path(sweep), "a")  # noqa: SIM115 - released by the thread
        # Taken here, before the next variant starts, so that its measurement waits for us.
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = {"tag": sweep.tag, "event": sweep.event, "planned": len(sweep.planned) or None}
        context = _runner(
            "sweep_analytics.py",
            branch=analytics_branch(sweep.tag),
            config_value=[("config", config)],
        )
        runner, _ = context.__enter__()

        def analyse() -> None:
            try:
                executing = runner.run(tags=[sweep.tag])
                self._analytics_result = {
                    "run": executing.run.pathspec if executing.status == "successful" else None,
                    "stderr": executing.stderr if executing.status != "successful" else "",
                }
            except Exception as error:  # noqa: BLE001 - reported at the end, never fatal
                self._analytics_result = {"run": None, "stderr": str(error)}
            finally:
                context.__exit__(None, None, None)
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()

        self._analytics = threading.Thread(target=analyse, name="analytics", daemon=True)
        self._analytics.start()

    def _wait_for_analytics(self) -> None:
        if self._analytics is not None:
            self._analytics.join()
            self._analytics = None

    @property
    def analytics_error(self) -> str:
        """The last analytics run's error output, empty when it succeeded."""
        return self._analytics_result.get("stderr", "")
