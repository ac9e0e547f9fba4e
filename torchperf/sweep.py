"""One batch of a sweep in this process: its identity, its plan, its backend, its summary and
its display.

torchperf's Hydra launcher opens one for each batch the sweeper hands it (the whole grid from the
basic sweeper), runs every job's variant through it and closes it; the batches of one multirun
share the tag and the summary. Nothing here knows how a variant runs: the backend does.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from torchperf.backends import make_backend
from torchperf.backends.base import Backend, Outcome, SweepSpec
from torchperf.errors import one_line
from torchperf.history import Done, runs_tagged, succeeded_variants
from torchperf.plan import (
    SWEPT_KEYS,
    Variant,
    branch_name,
    check_tag,
    event_name,
    new_sweep_tag,
)
from torchperf.progress import SweepProgress
from torchperf.settings import ConfigError, VariantSettings, validate_variant
from torchperf.signals import interruptible
from torchperf.summary import SweepSummary

# The exit status of the last sweep closed in this process: the entry point's own (Hydra's
# multirun returns nothing to it).
_last_exit_status = 0


class FailedTrial(Exception):
    """A job's variant that failed, raised for sweepers that count failed trials by the job's
    exception (hydra-optuna-sweeper); its message says why."""


class StartFailed(Exception):
    """The backend could not begin (an API that refused, a Sensor that never came up): one
    line for the user, after what it had started was stopped."""


def last_exit_status() -> int:
    """The exit status of the last sweep closed in this process."""
    return _last_exit_status


def variant_of(values: Mapping, tag: str) -> tuple[Variant, VariantSettings]:
    """The variant and its settings from a job's config values; ConfigError when invalid."""
    settings = validate_variant(
        {key: values[key] for key in SWEPT_KEYS if key in values}
        | {"tag": tag, "event": event_name(tag)}
    )
    branch = branch_name(tag, settings.cpu, settings.tensor_dim, settings.device)
    return Variant(settings.cpu, settings.tensor_dim, branch, settings.device), settings


# Statuses whose runs the sweep marks with the reason (torchperf.analytics.mark_ended).
ENDED_WITHOUT_RESULT = ("failed", "timeout", "cancelled")
# Overrides a resumed sweep must not repeat: its own tag, and the folders of this run.
NOT_RESUMED = ("tag=", "+tag=", "++tag=", "new_tag=", "hydra.sweep.dir=", "hydra.run.dir=")


def resume_command(tag: str, overrides: list[str], multirun: bool = True) -> str:
    """The command that resumes sweep ``tag`` with the user's other overrides, quoted for a
    POSIX shell; it runs only what did not succeed."""
    kept = [shlex.quote(o) for o in overrides if not o.startswith(NOT_RESUMED)]
    return " ".join(
        ["python sweep_deployer.py", *(["-m"] if multirun else []), f"tag={tag}", *kept]
    )


def plan_variants(
    base: Mapping, jobs: list[dict], tag: str
) -> list[tuple[Variant, VariantSettings]]:
    """Every job's variant, checked, before anything runs."""
    planned, seen = [], set()
    for job in jobs:
        if "backend" in job and job["backend"] != base.get("backend", {}).get("name"):
            raise ConfigError("backend cannot be swept: run one sweep per backend")
        variant, settings = variant_of({**base, **job}, tag)
        if variant.branch in seen:
            raise ConfigError(f"{variant.branch} appears twice in the grid: vary cpu or tensor_dim")
        seen.add(variant.branch)
        planned.append((variant, settings))
    return planned


def check_new_tag(tag: str | None, new_tag: bool) -> None:
    """A given tag resumes the sweep whose runs carry it; with ``new_tag`` it names a new one.
    A tag that does not say what it means is refused (a mistyped resume would run everything
    again)."""
    if tag is None:
        if new_tag:
            raise ConfigError("new_tag=true needs tag=<the new sweep's tag>")
        return
    check_tag(str(tag))
    # Metaflow's client sits out Ctrl-C on a metadata service that does not answer.
    runs = interruptible(lambda: runs_tagged(str(tag)))
    if runs and new_tag:
        raise ConfigError(
            f"tag={tag} already names a sweep ({runs} runs): drop new_tag=true to resume it"
        )
    if not runs and not new_tag:
        raise ConfigError(
            f"tag={tag} names no earlier sweep (no run carries it): check it, "
            "or add new_tag=true to start a sweep with this tag"
        )


class Sweep:
    """A sweep's state in this process; see the module docstring."""

    def __init__(
        self,
        spec: SweepSpec,
        backend: Backend,
        backend_name: str,
        done: dict[str, Done] | None = None,
        display: bool = True,
        summary: SweepSummary | None = None,
        resume: str | None = None,
    ):
        self.spec = spec
        self.resume = resume  # the command that resumes this sweep, shown after an interruption
        self.backend = backend
        self.done = done or {}
        self.summary = summary or SweepSummary(
            spec.sweep_dir, spec.tag, backend_name, len(spec.planned) or None
        )
        self.progress = SweepProgress(spec.tag, len(spec.planned) or None) if display else None
        self.interrupted = False
        self._closed = False

    @classmethod
    def open(
        cls,
        config,
        jobs: list[dict] | None,
        sweep_dir: Path,
        backend: Backend | None = None,
        display: bool = True,
        tag: str | None = None,
        summary: SweepSummary | None = None,
    ) -> Sweep:
        """Check everything and prepare the backend; ConfigError before anything runs.

        ``jobs`` is the list of each job's overrides when known up front (the basic sweeper),
        None when a sweeper chooses values as it goes (Optuna, Ax, Nevergrad). ``backend``
        replaces the one the config names (tests). ``tag`` and ``summary`` continue the sweep
        of an earlier batch of the same multirun.
        """
        if not tag:  # the multirun's first batch: later ones continue its sweep
            check_new_tag(config.tag, config.get("new_tag", False))
        # A given tag resumes that sweep, as do a multirun's later batches.
        resumed = bool(tag) or bool(config.tag and not config.get("new_tag", False))
        tag = tag or (str(config.tag) if config.tag else new_sweep_tag())
        timeout = config.variant_timeout_seconds
        if not timeout > 0:
            raise ConfigError(f"variant_timeout_seconds={timeout:g} must be above 0")
        baseline = config.get("baseline")
        if baseline:
            from torchperf.compare import load_sweep

            # ConfigError for an unknown tag, at once
            interruptible(lambda: load_sweep(check_tag(str(baseline))))
        base = {key: config[key] for key in SWEPT_KEYS} | {"backend": dict(config.backend)}
        planned = plan_variants(base, jobs or [], tag)
        # A given tag resumes that sweep: what already succeeded is not run again.
        done = interruptible(lambda: succeeded_variants(tag)) if resumed else {}
        spec = SweepSpec(
            tag=tag,
            event=event_name(tag),
            sweep_dir=Path(sweep_dir),
            planned=planned,
            pending=[] if config.dry_run else [p for p in planned if p[0].branch not in done],
            dry_run=bool(config.dry_run),
            live_analytics=bool(config.live_analytics),
            variant_timeout_seconds=float(timeout),
            baseline=str(baseline) if baseline else None,
        )
        options = dict(config.backend)
        name = options.get("name", "local")
        backend = backend or make_backend(name, options)
        backend.preflight(spec)
        hydra = config.get("hydra") or {}
        overrides = list(hydra.get("overrides", {}).get("task") or [])
        mode = hydra.get("mode")  # RUN without -m
        resume = resume_command(tag, overrides, multirun=getattr(mode, "name", mode) != "RUN")
        opened = cls(spec, backend, name, done, display, summary, resume)
        try:
            backend.start(spec)  # from here on, close() stops whatever it started
        except Exception as error:
            opened.close(interrupted=True)
            raise StartFailed(one_line(error)) from error
        except BaseException:
            opened.close(interrupted=True)
            raise
        return opened

    def run_job(self, values: Mapping, raising: bool = False) -> float:
        """Run one Hydra job's variant; its GFLOP/s. A variant that failed gives NaN (a failed
        trial), or raises FailedTrial with ``raising``."""
        try:
            variant, settings = variant_of(values, self.spec.tag)
        except ConfigError as error:
            # Only sweepers that choose values as they go get here: planned jobs were checked.
            print(f"error: {error}", file=sys.stderr)
            if raising:
                raise FailedTrial(str(error)) from None
            return math.nan
        if self.progress:
            self.progress.started(variant)
        try:
            outcome = self._run(variant, settings)
        except BaseException:
            self._end(variant, Outcome("cancelled", message="interrupted"))
            raise
        self._end(variant, outcome)
        good = outcome.status in ("succeeded", "skipped") and outcome.gflops is not None
        if good:
            return outcome.gflops
        if raising:
            raise FailedTrial(f"{variant.label} {outcome.status}: {outcome.message}")
        return math.nan

    def _run(self, variant: Variant, settings: VariantSettings) -> Outcome:
        earlier = self.done.get(variant.branch)
        if earlier:
            return Outcome("skipped", earlier.run, earlier.gflops, message="succeeded before")
        if self.spec.dry_run:
            return Outcome("skipped", message="dry run")
        return self.backend.run_variant(self.spec, variant, settings)

    def _end(self, variant: Variant, outcome: Outcome) -> None:
        if outcome.status in ("succeeded", "skipped") and outcome.run and outcome.warnings is None:
            from torchperf.history import result_details

            details = interruptible(lambda: result_details(outcome.run))
            outcome.gflops_ci = details.get("gflops_ci")
            outcome.warnings = details.get("warnings")
        self.summary.record(variant, outcome)
        if outcome.status in ENDED_WITHOUT_RESULT and outcome.run:
            self._mark(variant, outcome)
        if self.progress:
            self.progress.ended(variant, outcome)

    @staticmethod
    def _mark(variant: Variant, outcome: Outcome) -> None:
        """Tell the analytics card why the run ended without a result: Metaflow cannot."""
        from torchperf.analytics import ended_tag, mark_ended

        v = variant
        try:
            mark_ended(
                outcome.run,
                ended_tag(v.cpu, v.tensor_dim, v.device, outcome.status, outcome.message),
            )
        except Exception as error:  # noqa: BLE001 - the summary holds the reason all the same
            print(f"warning: {outcome.run} not marked {outcome.status}: {error}", file=sys.stderr)

    def close(self, interrupted: bool = False) -> int:
        """Finish once: final analytics, teardown, summary; the process's exit status."""
        global _last_exit_status
        if self._closed:
            return self.exit_status()
        self._closed = True
        self.interrupted = interrupted
        if interrupted:
            self.backend.cancel()
            ended = {v["branch"] for v in self.summary.variants}
            for variant, _ in self.spec.planned:
                if variant.branch not in ended:
                    self.summary.record(variant, Outcome("cancelled", message="not started"))
        written: list[Path] = []
        try:
            analytics = self.backend.finish(self.spec, interrupted)
            self.summary.set_analytics_run(analytics)
            written = self._write_report(analytics) if analytics else []
        finally:
            if self.progress:
                resume = self.resume if interrupted else None
                self.progress.close(self.summary.variants, self.summary.path, written, resume)
            _last_exit_status = self.exit_status()
        return _last_exit_status

    def _write_report(self, analytics: str) -> list[Path]:
        """The final card as one HTML file and the charts as PNG, beside summary.json."""
        from torchperf.report import write_report

        try:
            return write_report(analytics, self.spec.sweep_dir)
        except Exception as error:  # noqa: BLE001 - the results are safe in Metaflow already
            print(f"warning: no report written: {error}", file=sys.stderr)
            return []

    def exit_status(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.summary.all_good() else 1
