"""TorchPerfFlow's live card: progress and the running figure while it measures."""

from __future__ import annotations

import os

from torchperf import stats
from torchperf.bench import NOISY_IQR_RATIO, Progress
from torchperf.settings import VariantSettings

PHASE_TEXT = {"warmup": "warming up", "measuring": "measuring", "done": "done"}


class BenchmarkCard:
    """Components of one benchmark card, updated between timed samples."""

    def __init__(self, card, settings: VariantSettings, render_cores: list[int] | None = None):
        """``render_cores``: where the card's render processes may run, so that they need not
        share (and cool) the measuring cores; None leaves them on the measuring cores."""
        from metaflow.cards import Markdown, ProgressBar

        self._card = card
        self._render_cores = render_cores
        self._status = Markdown("**warming up**")
        self._bar = ProgressBar(max=100, label="measured", value=0, unit="%")
        card.append(
            Markdown(
                f"# TorchPerfFlow\n`cpu={settings.cpu}` · `tensor_dim={settings.tensor_dim}` · "
                f"`measure_seconds={settings.measure_seconds}` · `device={settings.device}`"
                + (f" · sweep `{settings.tag}`" if settings.tag else "")
            )
        )
        card.append(self._status)
        card.append(self._bar)
        # No render yet: each costs a process on the cores; the first comes with the first figure.

    def update(self, progress: Progress) -> None:
        """Show the phase, the share of the budget measured and the running median.

        Called between timed samples; the render runs in a child process, which the benchmark
        waits for (``card_renders_running``) before the next sample. The final figure needs no
        refresh: the card is rendered once more when the task ends.
        """
        if progress.phase == "done":
            return
        figure = (
            "" if progress.gflops is None else f" · running median {progress.gflops:.1f} GFLOP/s"
        )
        self._status.update(
            f"**{PHASE_TEXT[progress.phase]}** · {progress.samples} samples{figure}"
        )
        share = min(1.0, progress.measured_seconds / progress.budget_seconds)
        self._bar.update(round(100 * share))
        pinned = os.sched_getaffinity(0) if self._render_cores else None
        if pinned:
            # The render process inherits this process's cores at its start.
            os.sched_setaffinity(0, self._render_cores)
        try:
            self._card.refresh(force=True)
        finally:
            if pinned:
                os.sched_setaffinity(0, pinned)

    def finish(self, result: dict) -> None:
        """Replace the running figure with the result; the final render happens at task end."""
        from metaflow.cards import Markdown, Table

        self._status.update(
            f"**{figure(result)}** median"
            + (
                f" · **noisy**: samples spread more than {100 * NOISY_IQR_RATIO:g} %"
                if result["noisy"]
                else ""
            )
            + "".join(f" · **warning**: {warning}" for warning in result.get("warnings", []))
        )
        self._bar.update(100)
        rows = [
            ["GFLOP/s (median)", f"{result['gflops']:.2f}"],
            ["confidence interval of the median", figure(result)],
            [
                "CPU time / (threads × wall)",
                f"{100 * result['cpu_utilization']:.0f} %"
                + (" (shared cores)" if result.get("shared") else ""),
            ],
            ["IQR / median", f"{100 * result['iqr_ratio']:.2f} %"],
            ["squarings per second", f"{result['squarings_per_second']:.2f}"],
            ["timed samples", str(len(result["gflops_samples"]))],
            ["measured seconds", f"{result['measure_seconds']:.2f}"],
            ["warm-up seconds", f"{result['warmup_seconds']:.2f}"],
            ["threads", str(result["threads"])],
            ["cores", ", ".join(map(str, result["affinity"]))],
            [
                "CPU quota (cgroup)",
                "none" if result.get("cpu_quota") is None else f"{result['cpu_quota']:g} CPUs",
            ],
            [
                "throttled while measuring",
                "not measured"
                if result.get("throttled_periods") is None
                else f"{result['throttled_periods']} periods, {result['throttled_seconds']:.3f} s",
            ],
            ["device", result["device"]],
            ["torch", result["torch_version"]],
        ]
        self._card.append(Table(rows, headers=["", "value"]))
        self._card.append(Markdown("## Environment"))
        self._card.append(Table(environment_rows(result.get("env") or {}), headers=["", "value"]))


def figure(result: dict) -> str:
    """The median with its confidence interval, to the digits it supports."""
    low, high = result["gflops_ci"]
    return stats.describe(result["gflops"], low, high, result["gflops_ci_level"])


def environment_rows(env: dict) -> list[list[str]]:
    """The fingerprint as card rows; an unreadable field shows as "unknown"."""

    def shown(value) -> str:
        if value is None:
            return "unknown"
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    return [[key.replace("_", " "), shown(value)] for key, value in env.items()]
