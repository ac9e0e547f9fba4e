"""Cost of one SweepAnalyticsFlow trigger with 10 vs 100 variants already aggregated.

    METAFLOW_USER=dev .venv/bin/python benchmarks/analytics_scaling.py [--repeats 3]

What it does, in a private temporary datastore (nothing outside it is touched):
1. Writes a stand-in flow, also named TorchPerfFlow, that stores the same ``config`` and
   ``result`` artifacts as torchtest.py with made-up figures and no torch, so that 110 real
   Metaflow runs cost ~1 s each instead of a measurement each. Each run carries its sweep's tag
   and runs in its variant's @project branch, exactly as the sweep's runs do.
2. Runs 10 variants under one tag and 100 under another (two at a time: setup, not timed),
   then one SweepAnalyticsFlow run per tag, which aggregates everything (printed, not the goal).
3. ``--repeats`` times, alternating the tags: adds one new variant, then times one
   SweepAnalyticsFlow run end to end (Runner wall time, processes included). The figure is
   the ratio of the medians, 100 over 10; the goal is <= 1.2. The flow's own ``stats``
   artifact shows why: runs listed (grows with the sweep) against runs whose artifacts it
   loaded (one per trigger).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.2

STAND_IN = textwrap.dedent(
    '''
    """Stand-in for torchtest.py: the same artifacts, made-up figures, no torch."""
    from metaflow import Config, FlowSpec, project, step


    @project(name="torchperf")
    class TorchPerfFlow(FlowSpec):
        config = Config("config", default_value={"cpu": 1, "tensor_dim": 64})

        @step
        def start(self):
            cpu, n = self.config.cpu, self.config.tensor_dim
            gflops = 100.0 * cpu**0.9 * (1 + n / 10000)
            self.result = {
                "gflops": gflops,
                "gflops_samples": [gflops] * 5,
                "iqr_ratio": 0.01,
                "noisy": False,
                "threads": cpu,
                "tensor_dim": n,
                "device": "cpu",
                # The rest of what torchperf/result.py requires of a result.
                "gflops_q1": gflops,
                "gflops_q3": gflops,
                "squarings_per_second": 1.0,
                "calls_per_sample": 1,
                "torch_version": "2.13.0",
                "measure_seconds": 1.0,
                "warmup_seconds": 0.1,
                "warmup_settled": True,
            }
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        TorchPerfFlow()
    '''
)


def variants(count: int) -> list[tuple[int, int]]:
    """``count`` distinct (cpu, tensor_dim) pairs: 10 cpus per tensor_dim."""
    return [(1 + i % 10, 64 * (1 + i // 10)) for i in range(count)]


def stand_in_run(flow: Path, workdir: Path, tag: str, cpu: int, tensor_dim: int) -> None:
    """One stand-in run through the CLI, as Runner would start it (and safe in a thread)."""
    from torchperf.plan import branch_name

    config = {"cpu": cpu, "tensor_dim": tensor_dim, "tag": tag}
    command = [sys.executable, str(flow), "--quiet", "--branch", branch_name(tag, cpu, tensor_dim)]
    command += ["--config-value", "config", json.dumps(config), "run", "--tag", tag]
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)


def analytics_run(workdir: Path, tag: str):
    """One SweepAnalyticsFlow run; returns (wall seconds, its stats artifact)."""
    from metaflow import Runner

    from torchperf.plan import analytics_branch

    started = time.perf_counter()
    with Runner(
        str(ROOT / "sweep_analytics.py"),
        branch=analytics_branch(tag),
        config_value=[("config", {"tag": tag, "wait_seconds": 0})],
        cwd=str(workdir),
        show_output=False,
    ).run(tags=[tag]) as running:
        assert running.status == "successful", running.stderr
        seconds = time.perf_counter() - started
        return seconds, running.run.data.stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed triggers per sweep size")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="torchperf-analytics-bench-"))
    # Set before metaflow is imported: it reads its settings once, at import.
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(workdir)
    os.environ["METAFLOW_DEFAULT_DATASTORE"] = "local"
    os.environ["METAFLOW_DEFAULT_METADATA"] = "local"
    os.environ.setdefault("METAFLOW_USER", "torchperf-bench")
    sys.path.insert(0, str(ROOT))
    flow = workdir / "standin_torchtest.py"
    flow.write_text(STAND_IN, encoding="utf-8")
    print(f"datastore: {workdir}")

    sizes = {10: "bench_ten", 100: "bench_hundred"}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [
            pool.submit(stand_in_run, flow, workdir, tag, cpu, n)
            for size, tag in sizes.items()
            for cpu, n in variants(size)
        ]
        for job in jobs:
            job.result()
    print(f"setup: {sum(sizes)} stand-in runs in {time.perf_counter() - started:.0f} s")

    for size, tag in sizes.items():
        seconds, stats = analytics_run(workdir, tag)
        print(
            f"{size:>3} variants, first aggregation: {seconds:.2f} s "
            f"(listed {stats['listed']}, loaded {stats['loaded']})"
        )
    # Interleaved, so that a drift in the machine's load touches both sizes alike.
    timed = {size: [] for size in sizes}
    for repeat in range(args.repeats):
        for size, tag in sizes.items():
            cpu, n = variants(size + repeat + 1)[-1]
            stand_in_run(flow, workdir, tag, cpu, n)
            seconds, stats = analytics_run(workdir, tag)
            timed[size].append(seconds)
            print(
                f"{size:>3} variants + 1: {seconds:.2f} s wall; in the flow: listed "
                f"{stats['listed']} runs in {1000 * stats['list']:.1f} ms, loaded "
                f"{stats['loaded']}, collect {1000 * stats['total']:.1f} ms"
            )
    small, large = (statistics.median(timed[size]) for size in sizes)
    ratio = large / small
    verdict = "meets" if ratio <= GOAL_RATIO else "misses"
    print(
        f"median trigger: {small:.2f} s at 10, {large:.2f} s at 100; "
        f"ratio {ratio:.2f} ({verdict} the goal <= {GOAL_RATIO})"
    )
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
