"""What the user sees in the terminal while a sweep runs, and the table at its end.

On a terminal: one live line that fits its width (count, elapsed time and ETA first, always
shown; the tail is cut to fit). Elsewhere (``make sweep > log``): one plain line per event.
Both print the sweep's tag first, and the exact command that resumes an interrupted sweep last.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn
from rich.table import Column, Table
from rich.text import Text

from torchperf import display
from torchperf.backends.base import Outcome
from torchperf.plan import Variant, series_label

STATUS_STYLE = {
    "succeeded": "green",
    "skipped": "cyan",
    "failed": "red",
    "timeout": "red",
    "cancelled": "yellow",
}
# How the counts read, in the order shown; "done" counts succeeded and skipped variants.
COUNTED = (
    ("done", "done"),
    ("failed", "failed"),
    ("timeout", "timed out"),
    ("cancelled", "cancelled"),
)
BAR_WIDTH = 10
# The final table has room for run ids from this many columns on.
RUN_COLUMN_WIDTH = 110


def clock(seconds: float) -> str:
    """0:07, 12:03, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(
    paced: float, since: float, ran: int, ended: int, planned: int | None
) -> float | None:
    """Time left at the pace so far: ``paced`` seconds (from the start to the last variant's
    end) per variant that ran, times the variants left, less the ``since`` seconds that passed
    since that end, so that it counts down between ends (0 once overdue). None before the first
    variant has run, or without a plan. Skipped variants take no time: they count as ended,
    not in the pace."""
    if planned is None or ran == 0:
        return None
    return max(paced / ran * max(planned - ended, 0) - since, 0.0)


class _Line(ProgressColumn):
    """The whole status line, cut to the console's width from its tail."""

    def __init__(self, progress: SweepProgress):
        super().__init__(table_column=Column(no_wrap=True, overflow="crop"))
        self._progress = progress

    def render(self, task) -> Text:
        width = max(self._progress.console.width - BAR_WIDTH - 1, 10)
        head, tail = self._progress.line_parts()
        room = width - len(head) - len(" · ")
        if tail and room > 1:
            # Cut the tail at a whole character, never leaving "… " after a space.
            head += " · " + (tail if len(tail) <= room else tail[: room - 1].rstrip() + "…")
        return Text(head[:width])


class SweepProgress:
    """The sweep's display: counts by status, elapsed time, ETA, what runs and the last figure."""

    def __init__(self, tag: str, planned: int | None, console: Console | None = None):
        self.console = console or Console()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys([name for name, _ in COUNTED] + ["ran"], 0)
        self._last = ""
        self._running: list[str] = []
        self._planned = planned
        self._started = time.monotonic()
        self._last_end = self._started  # when the last variant that ran ended
        of = f"{planned} variant(s)" if planned else "variants chosen as it goes"
        # Printed, not part of the live line: it stays in the scrollback and in a piped log.
        self.console.print(f"torchperf sweep [bold]{tag}[/]: {of}", highlight=False)
        self._progress = None
        if self.console.is_terminal:
            # Few refreshes: the display shares the cores with the measurement.
            self._progress = Progress(
                BarColumn(bar_width=BAR_WIDTH),
                _Line(self),
                console=self.console,
                refresh_per_second=1,
                transient=True,
            )
            self._task = self._progress.add_task("", total=planned)
            self._progress.start()

    def line_parts(self) -> tuple[str, str]:
        """(what is always shown: count, elapsed, ETA and counts; what may be cut)."""
        with self._lock:
            counts = dict(self._counts)
            running, last = list(self._running), self._last
        ended = sum(counts[name] for name, _ in COUNTED)
        now = time.monotonic()
        elapsed, paced = now - self._started, self._last_end - self._started
        eta = eta_seconds(paced, now - self._last_end, counts["ran"], ended, self._planned)
        of = f"/{self._planned}" if self._planned else " so far"  # an optimizer chooses as it goes
        head = f"{ended}{of} · {clock(elapsed)} · ETA {'-' if eta is None else clock(eta)}"
        head += " · " + counts_text(counts)
        tail = []
        if running:
            more = f" (+{len(running) - 1})" if len(running) > 1 else ""
            tail.append(f"running {running[0]}{more}")
        if last:
            tail.append(f"last {last}")
        return head, " · ".join(tail)

    def started(self, variant: Variant) -> None:
        with self._lock:
            self._running.append(variant.label)
        self._show(f"started {variant.label}")

    def ended(self, variant: Variant, outcome: Outcome) -> None:
        with self._lock:
            label = variant.label
            if label in self._running:
                self._running.remove(label)
            status = outcome.status
            self._counts[counted_as(status)] += 1
            if status != "skipped":
                self._counts["ran"] += 1
                self._last_end = time.monotonic()
            self._last = f"{label}: {outcome_text(outcome)}"
            if self._progress:
                self._progress.advance(self._task)
        self._show(self._last)

    def _show(self, event: str) -> None:
        """An event at once: the live line redrawn, or one plain line (with the counts)."""
        if self._progress:
            self._progress.refresh()
            return
        head, _ = self.line_parts()
        self.console.print(f"[{head}] {event}", highlight=False, markup=False, soft_wrap=True)

    def close(
        self,
        variants: list[dict],
        summary: Path | None = None,
        reports: Sequence[Path] = (),
        resume: str | None = None,
    ) -> None:
        """Stop the live line; print one row per variant, the files written and, after an
        interruption, last, the command that resumes the sweep."""
        if self._progress:
            self._progress.stop()
        self.console.print(final_table(variants, runs=self.console.width >= RUN_COLUMN_WIDTH))
        elapsed = clock(time.monotonic() - self._started)
        self.console.print(f"{ended_text(variants)} in {elapsed}", highlight=False, markup=False)
        for label, path in [("summary:", summary), *(("report: ", p) for p in reports)]:
            if path:
                self.console.print(f"{label} {path}", highlight=False, markup=False, soft_wrap=True)
        if resume:
            self.console.print("interrupted; to run what did not succeed:", highlight=False)
            for line in continued(resume, self.console.width):
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def continued(command: str, width: int, indent: str = "  ") -> list[str]:
    """A shell command cut between its words into lines of at most ``width`` (a word longer
    than that stays whole), each but the last ending in " \\": it pastes as one command."""
    lines, line = [], indent
    for word in command.split(" "):
        if line.strip() and len(line) + 1 + len(word) + 2 > width:
            lines.append(line + " \\")
            line = indent + "  "
        line += ("" if not line.strip() else " ") + word
    return [*lines, line]


def counted_as(status: str) -> str:
    """The count a status goes to: succeeded and skipped (succeeded before) are both done."""
    return "done" if status in ("succeeded", "skipped") else status


def counts_text(counts: dict[str, int]) -> str:
    """'2 done, 1 failed, 1 timed out, 2 cancelled': done always, the others where they occur."""
    return ", ".join(
        f"{counts[name]} {text}" for name, text in COUNTED if counts[name] or name == "done"
    )


def ended_text(variants: list[dict]) -> str:
    """'6 variant(s): 2 done, 1 failed, ...' from the summary's entries."""
    counts = dict.fromkeys((name for name, _ in COUNTED), 0)
    for entry in variants:
        counts[counted_as(entry["status"])] += 1
    return f"{len(variants)} variant(s): {counts_text(counts)}"


def outcome_text(outcome: Outcome) -> str:
    """How a variant ended, in a few words: its figure, or its status and why."""
    if outcome.status in ("succeeded", "skipped") and outcome.gflops is not None:
        figure = display.figure(outcome.gflops, outcome.gflops_ci)
        return figure if outcome.status == "succeeded" else f"{figure} (before)"
    return outcome.status + (f": {outcome.message}" if outcome.message else "")


def final_table(variants: list[dict], runs: bool = True) -> Table:
    """One row per variant: its figure with its interval, or why it has none; with its run id
    where ``runs`` (a narrow terminal leaves them to summary.json)."""
    table = Table(title="torchperf sweep", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cpu", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("GFLOP/s (CI)", justify="right", no_wrap=True)
    # The reason or the warnings wrap within the width that is left; the run id comes whole.
    table.add_column("note", overflow="fold", ratio=1)
    if runs:
        table.add_column("run", no_wrap=True)
    for entry in sorted(variants, key=lambda v: (v["tensor_dim"], v["cpu"])):
        status = entry["status"]
        figure = entry["gflops"]
        warnings = "; ".join(display.warning_name(w) for w in entry.get("warnings") or [])
        # Text, not markup: a message may hold brackets.
        note = (
            Text(warnings, style="yellow")
            if warnings and status in ("succeeded", "skipped")
            else Text(entry.get("message") or "")
        )
        table.add_row(
            str(entry["cpu"]),
            series_label(entry["tensor_dim"], entry.get("device") or "cpu").removeprefix("n="),
            Text(status, style=STATUS_STYLE.get(status, "")),
            "" if figure is None else display.figure(figure, entry.get("gflops_ci"), unit=""),
            note,
            *([(entry.get("run") or "").split("/")[-1]] if runs else []),
        )
    return table
