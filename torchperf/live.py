"""TorchPerfFlow's live card, and the measurement with the card shown between its phases."""

from __future__ import annotations

import os
import time

from torchperf import bench, display
from torchperf.bench import NOISY_IQR_RATIO
from torchperf.card_renders import card_renders_running
from torchperf.settings import VariantSettings


def measure(card: BenchmarkCard, settings: VariantSettings) -> dict:
    """Warm up, show "measuring" on the card, time: the card renders between the phases, never
    during one, and timing starts once its render has ended (on cores kept warm meanwhile)."""
    benchmark = bench.Benchmark(
        settings.tensor_dim, settings.cpu, settings.measure_seconds, device=settings.device
    )
    benchmark.warm_up()
    card.measuring(settings.measure_seconds)
    benchmark.keep_warm_while(card_renders_running)
    return benchmark.time()


class BenchmarkCard:
    """Components of one benchmark card: shown once measuring starts, and at the task's end."""

    def __init__(self, card, settings: VariantSettings, render_cores: list[int] | None = None):
        """``render_cores``: where the card's render processes may run, so that they need not
        share (and cool) the measuring cores; None leaves them on the measuring cores."""
        from metaflow.cards import Markdown

        self._card = card
        self._render_cores = render_cores
        self._status = Markdown("**warming up**")
        card.append(
            Markdown(
                f"# TorchPerfFlow\n`cpu={settings.cpu}` · `tensor_dim={settings.tensor_dim}` · "
                f"`measure_seconds={settings.measure_seconds}` · `device={settings.device}`"
                + (f" · sweep `{settings.tag}`" if settings.tag else "")
            )
        )
        card.append(self._status)
        # No render yet: each costs a process on the cores; one comes when measuring starts.

    def measuring(self, seconds: float) -> None:
        """Say that timing starts and when it ends, and render the card once.

        The render runs in a child process, which the benchmark waits for
        (``card_renders_running``) before its first timed sample. The final figure needs no
        refresh: the card is rendered once more when the task ends.
        """
        until = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
        self._status.update(
            f"**measuring** for {seconds:g} s of timed samples (until about {until})"
        )
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
        rows = [
            ["GFLOP/s (median)", f"{result['gflops']:.2f}"],
            ["median with its confidence interval", figure(result)],
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
            [
                "allowed cores (ids; not pinned in a pod)"
                if bench.running_on_kubernetes()
                else "pinned cores (ids)",
                ", ".join(map(str, result["affinity"])),
            ],
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
    return display.figure(result["gflops"], (*result["gflops_ci"], result["gflops_ci_level"]))


def environment_rows(env: dict) -> list[list[str]]:
    """The fingerprint as card rows."""
    return display.env_rows(env)
