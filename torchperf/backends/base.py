"""The interface every backend implements, and the records it exchanges with the sweep."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from torchperf.plan import Variant
from torchperf.settings import VariantSettings


class Status(str, Enum):
    """How a variant ended. Each member equals its string, which summary.json and the card keep
    (``Status.FAILED == "failed"``); an Outcome made with the string holds the member."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(status.value for status in Status)
ROOT = Path(__file__).resolve().parents[2]


# The one folder of links, and why. Every `run` and every Argo create walks the whole folder of
# the file the flow is started by (for a code package, which local runs build too) and packages
# the .py files it finds there, following links: that is the mechanism Metaflow 2.19 offers for
# what a package holds (beside the suffixes it keeps), with no setting to narrow the walk. The
# flows sit in the project root beside .venv, the .metaflow datastore, tests/ and cluster/:
# tens of thousands of files walked per run, and tests/ and cluster/ in every package. So the
# flows are started by their links in FLOW_LINKS, which holds them and a link to torchperf/
# (what the pods import) and nothing else; Python resolves the flow's link for imports. (A
# module's METAFLOW_PACKAGE_POLICY = "include" would package torchperf/ without a link, but
# Metaflow then takes its file list from the distribution's metadata, which an editable install
# leaves stale: a module added since is missing in the pods.)
FLOW_LINKS = ROOT / ".flows"
PACKAGED = ("torchperf",)  # linked beside the flows: the code the pods import
# The card type the analytics flow draws with. Metaflow loads and packages the extensions it
# finds on sys.path: a flow started by its link has the project root there (Python resolves the
# link), a flow started from a copy has the copy's folder, so a copy takes them along.
EXTENSIONS = "metaflow_extensions"


def flow_path(flow: str, links: Path = FLOW_LINKS) -> Path:
    """The path to start ``flow`` by: its link in ``links`` when it, and the links beside it,
    lead back into the project root; else the file itself (a checkout with symlinks turned off,
    whose packages then hold the whole root)."""
    if all((links / name).resolve() == ROOT / name for name in (flow, *PACKAGED)):
        return links / flow
    return ROOT / flow


def snapshot_flows(folder: Path, flows: Iterable[str], root: Path = ROOT) -> Path:
    """Copies of ``flows`` and of what the pods import (PACKAGED), as they are in ``root`` now, in
    ``folder``: the one code a sweep deploys. Every create packages the flow's folder when it
    runs, so a flow or torchperf/ edited while a sweep deploys would reach only the variants
    created after the edit (or fail them half-way); the copies do not change. The folder holds
    what the links in FLOW_LINKS hold, so each package holds the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*flows, *PACKAGED, EXTENSIONS):
        source, target = root / name, folder / name
        if source.is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    return folder


@dataclass
class SweepSpec:
    """What a backend knows of the sweep it serves."""

    tag: str  # the sweep's tag, on every run it starts
    event: str  # the event that makes the sweep's analytics run
    sweep_dir: Path  # Hydra's sweep dir: summary, manifests and report land here
    planned: list[tuple[Variant, VariantSettings]] = field(default_factory=list)  # known up front
    # The planned variants that will run, in Hydra's job order (resumed ones and dry runs left out).
    pending: list[tuple[Variant, VariantSettings]] = field(default_factory=list)
    dry_run: bool = False  # compile and check everything, run nothing
    live_analytics: bool = True  # analytics after every successful variant, not only at the end
    variant_timeout_seconds: float = 1800.0  # a variant running longer is stopped: timeout
    baseline: str | None = None  # an earlier sweep's tag the analytics card compares against

    def analytics_config(self, wait_for: list[str] = ()) -> dict:
        """SweepAnalyticsFlow's config for this sweep; ``wait_for`` names the variants (branches)
        whose runs it waits for (local runs that are still ending)."""
        config = {"tag": self.tag, "event": self.event, "planned": len(self.planned) or None}
        config |= {"baseline": self.baseline} if self.baseline else {}
        return config | ({"wait_for": list(wait_for)} if wait_for else {})


@dataclass
class Outcome:
    """How one variant ended."""

    status: Status  # a Status, or its string
    run: str | None = None  # Metaflow pathspec, e.g. "TorchPerfFlow/1795717425234887"
    gflops: float | None = None  # the measured median, when it succeeded
    message: str | None = None  # why it did not succeed, one line
    measure_seconds: float | None = None  # time spent in timed samples, when it succeeded
    # Time it waited with nothing running (a cluster's queue, pods not yet scheduled, images
    # pulled), within its timeout; None where a backend does not wait so (local runs).
    pending_seconds: float | None = None
    # The median's interval [low, high, level] and the result's warnings; None: not read yet
    # (the sweep reads them from the run).
    gflops_ci: list[float] | None = None
    warnings: list[str] | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a misspelt status fails here, where it is made


class Backend(Protocol):
    """Runs variants and the sweep's analytics somewhere.

    The sweep calls ``preflight`` once before anything runs, then ``start`` once,
    ``run_variant`` once per variant (from several threads at once when the launcher runs jobs
    in parallel), ``cancel`` from the main thread on Ctrl-C, SIGTERM or SIGHUP, and ``finish``
    exactly once at the end, whatever happened.
    """

    def preflight(self, sweep: SweepSpec) -> None:
        """Check every planned variant and the settings; raise ConfigError before any run."""

    def start(self, sweep: SweepSpec) -> None:
        """Begin what may begin before the first job (Hydra checks every job first)."""

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        """Run one variant to its end and say how it ended (never raise for a failed run)."""

    def cancel(self) -> None:
        """Stop what runs now: running variants end as cancelled."""

    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        """Final analytics (unless interrupted) and teardown; the analytics run's pathspec."""
