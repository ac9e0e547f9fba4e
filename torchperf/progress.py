"""What the user sees in the terminal while a sweep runs, and the table at its end."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchperf import stats
from torchperf.backends.base import Outcome
from torchperf.plan import Variant

STATUS_STYLE = {
    "succeeded": "green",
    "skipped": "cyan",
    "failed": "red",
    "timeout": "red",
    "cancelled": "yellow",
}


class SweepProgress:
    """A progress bar with done / failed / remaining and the last figure."""

    def __init__(self, tag: str, planned: int | None, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self._done = self._failed = 0
        self._last = ""
        self._running: list[str] = []
        self._planned = planned
        # Few refreshes: the display shares the cores with the measurement.
        self._progress = Progress(
            TextColumn(f"[bold]{tag}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            refresh_per_second=2,
            transient=True,
        )
        self._task = self._progress.add_task("", total=planned)
        self._progress.start()
        self._render()

    def started(self, variant: Variant) -> None:
        with self._lock:
            self._running.append(variant.label)
            self._render()

    def ended(self, variant: Variant, outcome: Outcome) -> None:
        with self._lock:
            label = variant.label
            if label in self._running:
                self._running.remove(label)
            if outcome.status in ("succeeded", "skipped"):
                self._done += 1
                if outcome.gflops is not None:
                    self._last = f"last {label}: {outcome.gflops:.1f} GFLOP/s"
            else:
                self._failed += 1
                self._last = f"last {label}: {outcome.status}"
            self._progress.advance(self._task)
            self._render()

    def _render(self) -> None:
        remaining = (
            ""
            if self._planned is None
            else f" · remaining {self._planned - self._done - self._failed}"
        )
        running = f" · running {', '.join(self._running)}" if self._running else ""
        counts = f"done {self._done} · failed {self._failed}{remaining}"
        self._progress.update(self._task, description=f"{counts}{running} · {self._last}")

    def close(self, variants: list[dict]) -> None:
        """Stop the bar and print one row per variant."""
        self._progress.stop()
        table = Table(title="torchperf sweep")
        for column in ("cpu", "tensor_dim", "status", "GFLOP/s", "warnings", "run"):
            table.add_column(column, justify="left" if column in ("warnings", "run") else "right")
        for entry in sorted(variants, key=lambda v: (v["tensor_dim"], v["cpu"])):
            style = STATUS_STYLE.get(entry["status"], "")
            table.add_row(
                str(entry["cpu"]),
                str(entry["tensor_dim"]),
                f"[{style}]{entry['status']}[/]",
                figure(entry),
                "[yellow]" + "; ".join(short(w) for w in entry.get("warnings") or []) + "[/]",
                entry["run"] or entry.get("message", ""),
            )
        self.console.print(table)


def figure(entry: dict) -> str:
    """The median to the digits its interval supports, with the interval where known."""
    if entry["gflops"] is None:
        return ""
    if not entry.get("gflops_ci"):
        return f"{entry['gflops']:.1f}"
    low, high, level = entry["gflops_ci"]
    return stats.describe(entry["gflops"], low, high, level or stats.CONFIDENCE, unit="")


def short(warning: str) -> str:
    """A warning's first clause ("shared cores", "throttled"): the table stays one line."""
    return warning.split(":")[0]
