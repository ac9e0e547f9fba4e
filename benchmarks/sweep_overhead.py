"""Orchestration overhead of a local sweep: (wall time - time spent measuring) / variants.

    METAFLOW_USER=me .venv/bin/python benchmarks/sweep_overhead.py [--cpu 1,2] [--tensor-dim 256]
        [--project OTHER_CHECKOUT]

Runs ``sweep_deployer.py -m`` in a subprocess on a private datastore and sweep dir (live analytics
on, as by default), then reads every variant's timed seconds from its run and prints the
overhead per variant, with each run's timeline (when it held the cores, and the start and end
of its steps, relative to the sweep's start) so that the time can be traced. Run it on an
otherwise idle machine; to compare two versions, alternate ``--project`` in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default="1,2")
    parser.add_argument("--tensor-dim", default="256,512")
    parser.add_argument("--measure-seconds", default="1.0")
    parser.add_argument("--live-analytics", default="true")
    parser.add_argument(
        "--project",
        type=Path,
        default=ROOT,
        help="the checkout whose sweep_deployer.py runs (another version, to compare side by side)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work)}
    env.setdefault("METAFLOW_USER", "torchperf")
    command = [
        sys.executable,
        str(args.project / "sweep_deployer.py"),
        "-m",
        f"cpu={args.cpu}",
        f"tensor_dim={args.tensor_dim}",
        f"measure_seconds={args.measure_seconds}",
        f"live_analytics={args.live_analytics}",
        f"hydra.sweep.dir={work / 'sweep'}",
    ]
    started = time.time()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.time() - started

    os.environ.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(work))
    from metaflow import Run, namespace

    namespace(None)
    summary = json.loads((work / "sweep" / "summary.json").read_text())
    measured = warmup = 0.0
    windows = []
    print(
        f"{'variant':>14} {'timed s':>7} {'warm-up s':>9}  "
        "timeline (s since sweep start: m = cores taken, then each step's start-end)"
    )
    for entry in summary["variants"]:
        run = Run(entry["run"])
        result = run.data.result
        measured += result["measure_seconds"]
        warmup += result["warmup_seconds"]
        # Runs of versions before the window was recorded count from their start step.
        windows.append(
            (
                result.get("measured_from", run["start"].task.created_at.timestamp()) - started,
                result.get("measured_until", run["start"].task.finished_at.timestamp()) - started,
            )
        )
        steps = " ".join(
            f"{step.id}:{step.task.created_at.timestamp() - started:.1f}-"
            f"{step.task.finished_at.timestamp() - started:.1f}"
            for step in reversed(list(run))
        )
        label = f"c{entry['cpu']} n{entry['tensor_dim']}"
        print(
            f"{label:>14} {result['measure_seconds']:>7.2f} {result['warmup_seconds']:>9.2f}  "
            f"m:{windows[-1][0]:.1f}-{windows[-1][1]:.1f} {steps}"
        )
    variants = len(summary["variants"])
    windows.sort()
    gaps = [after[0] - before[1] for before, after in zip(windows, windows[1:], strict=False)]
    print(
        f"{variants} variants, wall {wall:.1f} s, timed {measured:.1f} s, warm-up {warmup:.1f} s\n"
        f"overhead (wall - timed) / variants: {(wall - measured) / variants:.2f} s per variant "
        "(goal <= 3 s)\n"
        f"  cores idle between two measurements: median {statistics.median(gaps):.2f} s; "
        f"before the first {windows[0][0]:.1f} s, after the last {wall - windows[-1][1]:.1f} s"
    )


if __name__ == "__main__":
    main()
