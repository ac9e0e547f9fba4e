"""Fidelity of TorchPerfFlow's number: its GFLOP/s over torch.utils.benchmark's, back to back.

    METAFLOW_USER=me .venv/bin/python benchmarks/fidelity.py [--tensor-dim 1024] [--pairs 3]

For cpu=1 and cpu=all usable cores, each pair is one real TorchPerfFlow run (measure_seconds=2,
a private datastore) followed by ``Timer("torch.mm(a, a)").blocked_autorange()`` in a fresh
process with the same thread count. Prints the flow's median and IQR/median, the reference
median and their ratio per pair, and the median ratio. Run it on an otherwise idle machine:
two benchmarks at once on the same cores ruin both numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = """
import json, sys, torch
from torch.utils.benchmark import Timer
n, threads, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(threads)
a = torch.rand(n, n)
timer = Timer("torch.mm(a, a)", globals={"a": a, "torch": torch}, num_threads=threads)
median = timer.blocked_autorange(min_run_time=seconds).median
print(json.dumps(2 * n**3 / median / 1e9))
"""


def flow_gflops(cpu: int, tensor_dim: int, measure_seconds: float) -> dict:
    from metaflow import Runner

    config = {"cpu": cpu, "tensor_dim": tensor_dim, "measure_seconds": measure_seconds}
    runner = Runner(
        str(ROOT / "torchtest.py"), show_output=False, config_value=[("config", config)]
    )
    with runner.run() as running:
        if running.status != "successful":
            sys.exit(f"TorchPerfFlow failed:\n{running.stderr}")
        return running.run.data.result


def reference_gflops(cpu: int, tensor_dim: int, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(tensor_dim), str(cpu), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensor-dim", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--measure-seconds", type=float, default=2.0)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"n={args.tensor_dim}, measure_seconds={args.measure_seconds}, {cores} usable cores")
    header = ("cpu", "pair", "flow GFLOP/s", "IQR/med", "Timer GFLOP/s", "ratio")
    print("{:>3} {:>4} {:>12} {:>8} {:>13} {:>6}".format(*header))
    for cpu in sorted({1, cores}):
        ratios, spreads = [], []
        for pair in range(args.pairs):
            result = flow_gflops(cpu, args.tensor_dim, args.measure_seconds)
            reference = reference_gflops(cpu, args.tensor_dim, args.measure_seconds)
            ratios.append(result["gflops"] / reference)
            spreads.append(result["iqr_ratio"])
            print(
                f"{cpu:>3} {pair:>4} {result['gflops']:>12.1f} {100 * result['iqr_ratio']:>7.2f}% "
                f"{reference:>13.1f} {ratios[-1]:>6.3f}"
            )
        print(
            f"cpu={cpu}: median fidelity {statistics.median(ratios):.3f} (goal >= 0.97), "
            f"median IQR/median {100 * statistics.median(spreads):.2f} % (goal <= 2 % at cpu=1)"
        )


if __name__ == "__main__":
    # A private datastore: the benchmark's runs do not mix with the user's.
    os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", tempfile.mkdtemp(prefix="fidelity-"))
    os.environ.setdefault("METAFLOW_USER", os.environ.get("USER", "torchperf"))
    main()
