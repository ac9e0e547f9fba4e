"""summary.json: what happened to every variant of a sweep, written as the sweep goes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from torchperf.backends.base import STATUSES, Outcome
from torchperf.plan import Variant

FILENAME = "summary.json"


class SweepSummary:
    """The sweep's record; every change is written at once (atomically) to ``folder``."""

    def __init__(self, folder: Path, tag: str, backend: str, planned: int | None):
        self.path = Path(folder) / FILENAME
        self._lock = threading.Lock()
        self._data = {
            "tag": tag,
            "backend": backend,
            "planned": planned,
            "variants": [],
            "analytics_run": None,
        }
        self._write()

    def record(self, variant: Variant, outcome: Outcome) -> None:
        """Add (or replace) the entry of one variant."""
        if outcome.status not in STATUSES:
            raise ValueError(f"unknown status {outcome.status!r}")
        entry = {
            "cpu": variant.cpu,
            "tensor_dim": variant.tensor_dim,
            "device": variant.device,
            "branch": variant.branch,
            "status": outcome.status,
            "run": outcome.run,
            "gflops": outcome.gflops,
        }
        if outcome.gflops_ci:
            entry["gflops_ci"] = outcome.gflops_ci  # [low, high, level]
        if outcome.warnings is not None:
            entry["warnings"] = outcome.warnings  # shared cores, throttling, governor
        if outcome.pending_seconds is not None:
            entry["pending_seconds"] = outcome.pending_seconds  # waited, nothing running
        if outcome.message:
            entry["message"] = outcome.message
        with self._lock:
            variants = self._data["variants"]
            variants[:] = [v for v in variants if v["branch"] != variant.branch]
            variants.append(entry)
            self._write()

    def set_analytics_run(self, pathspec: str | None) -> None:
        with self._lock:
            self._data["analytics_run"] = pathspec
            self._write()

    @property
    def variants(self) -> list[dict]:
        with self._lock:
            return [dict(v) for v in self._data["variants"]]

    def counts(self) -> dict[str, int]:
        """How many variants ended in each status."""
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.variants:
            counts[entry["status"]] += 1
        return counts

    def all_good(self) -> bool:
        """Whether every variant succeeded (or had succeeded before: skipped)."""
        return all(v["status"] in ("succeeded", "skipped") for v in self.variants)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self._data, indent=2) + "\n")
        os.replace(partial, self.path)
