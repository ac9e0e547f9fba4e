"""device=cuda on a GPU machine: torchperf's figure (wall clock around synchronized squarings)
against CUDA events' own timing of the same squarings, alternated in one run.

    python benchmarks/cuda_fidelity.py                     # n = 1024, 4096, 8192; 3 pairs each
    python benchmarks/cuda_fidelity.py --sizes 2048 --pairs 5 --seconds 1

Needs torch with CUDA and nothing else of the project's environment (no Metaflow, no Hydra):
it imports torchperf.bench alone. Prints, per size, each pair's GFLOP/s and their ratio
(torchperf / events); a ratio near 1 says the figure counts the GPU's work and not the host's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchperf.bench import flops_per_squaring, measure  # noqa: E402


def events_gflops(tensor_dim: int, seconds: float) -> float:
    """The median GFLOP/s of samples timed by CUDA events, after a warm-up, each ~0.1 s."""
    import torch

    generator = torch.Generator().manual_seed(0)
    matrix = torch.rand(tensor_dim, tensor_dim, generator=generator).cuda()
    product = torch.empty_like(matrix)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(calls: int) -> float:
        start.record()
        for _ in range(calls):
            torch.mm(matrix, matrix, out=product)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    calls = 1
    for _ in range(8):  # warm-up, and the calls that make a ~0.1-s sample
        calls = max(1, int(calls * 0.1 / max(timed(calls), 1e-6)))
    samples, spent = [], 0.0
    while spent < seconds:
        took = timed(calls)
        spent += took
        samples.append(flops_per_squaring(tensor_dim) * calls / took / 1e9)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,8192")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp32 (TF32 "
          f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        ratios = []
        for pair in range(args.pairs):
            ours = measure(size, threads=1, measure_seconds=args.seconds, device="cuda")["gflops"]
            theirs = events_gflops(size, args.seconds)
            ratios.append(ours / theirs)
            print(f"  n={size:5d} pair {pair + 1}: torchperf {ours:9.1f}  "
                  f"events {theirs:9.1f}  ratio {ratios[-1]:.3f}")  # fmt: skip
        print(f"  n={size:5d} median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
