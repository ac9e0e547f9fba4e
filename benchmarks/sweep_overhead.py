"""Orchestration overhead of a local sweep: (wall time - time spent measuring) / variants.

    METAFLOW_USER=me .venv/bin/python benchmarks/sweep_overhead.py [--cpu 1,2] [--tensor-dim 256]

Runs ``sweep_deployer.py -m`` in a subprocess on a private datastore and sweep dir (live analytics
on, as by default), then reads every variant's timed seconds from its run and prints the
overhead per variant, with each run's timeline (start and end of its steps relative to the
sweep's start) so that the time can be traced. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work)}
    env.setdefault("METAFLOW_USER", "torchperf")
    command = [
        sys.executable,
        str(ROOT / "sweep_deployer.py"),
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
    measured = 0.0
    print(f"{'variant':>14} {'measured s':>10}  timeline (s since sweep start: step start-end)")
    for entry in summary["variants"]:
        run = Run(entry["run"])
        measured += run.data.result["measure_seconds"]
        steps = " ".join(
            f"{step.id}:{step.task.created_at.timestamp() - started:.1f}-"
            f"{step.task.finished_at.timestamp() - started:.1f}"
            for step in reversed(list(run))
        )
        label = f"c{entry['cpu']} n{entry['tensor_dim']}"
        print(f"{label:>14} {run.data.result['measure_seconds']:>10.2f}  {steps}")
    variants = len(summary["variants"])
    print(
        f"{variants} variants, wall {wall:.1f} s, measuring {measured:.1f} s, "
        f"overhead {(wall - measured) / variants:.2f} s per variant (goal <= 3 s)"
    )


if __name__ == "__main__":
    main()
