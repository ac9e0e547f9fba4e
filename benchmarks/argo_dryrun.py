"""What a variant costs the sweep machine to compile for Argo: a dry run's CPU seconds per variant
over one ``python -c "import metaflow"``, both measured here in the same run.

    python benchmarks/argo_dryrun.py                       # the upstream grid: 45 variants
    python benchmarks/argo_dryrun.py --large 500           # ... and the wall time of 500
    python benchmarks/argo_dryrun.py --project /tmp/before # another checkout, same measurement

The dry run is the whole command, ``sweep_deployer.py -m sweep=upstream backend=argo
dry_run=true`` (Hydra, the plan, every manifest compiled, validated and written), against moto's
S3 server on loopback; its CPU is the children's (resource.getrusage) around it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(CPU seconds of the command and everything it waited for, wall seconds)."""
    cpu, started = children_cpu(), time.monotonic()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{done.stderr[-3000:]}")
    return children_cpu() - cpu, wall


def dry_run(project: Path, grid: list[str], env: dict, scratch: Path) -> tuple[float, float, int]:
    sweep_dir = Path(tempfile.mkdtemp(prefix="dryrun-", dir=scratch))
    command = [
        sys.executable, str(project / "sweep_deployer.py"), "-m", "backend=argo",
        "dry_run=true", *grid, f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    cpu, wall = timed(command, {**env, "PYTHONPATH": str(project)}, project)
    manifests = len(list((sweep_dir / "manifests").glob("c*.workflowtemplate.json")))
    return cpu, wall, manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--repeats", type=int, default=3, help="dry runs of the 45 (median)")
    parser.add_argument("--large", type=int, default=0, help="also time a dry run of N variants")
    args = parser.parse_args()

    from _loopback import argo_settings
    from cluster.s3 import start_moto

    scratch = Path(tempfile.mkdtemp(prefix="argo-dryrun-"))
    s3, s3_url = start_moto("torchperf", "bench", "bench")
    env = {**os.environ, **argo_settings(scratch, s3_url)}
    try:
        imports = [
            timed([sys.executable, "-c", "import metaflow"], env, scratch)[0] for _ in range(5)
        ]
        runs = [
            dry_run(args.project, ["sweep=upstream"], env, scratch) for _ in range(args.repeats)
        ]
        large = None
        if args.large:
            dims = (1000, 1250, 1500, 1750, 2000)
            cpus = -(-args.large // len(dims))
            grid = [f"cpu=range(1,{cpus + 1})", f"tensor_dim={','.join(map(str, dims))}"]
            large = dry_run(args.project, grid, env, scratch)
    finally:
        s3.terminate()
    per_import = statistics.median(imports)
    assert all(count == 45 for _, _, count in runs), runs
    per_variant = statistics.median(cpu for cpu, _, _ in runs) / 45
    print(
        f"argo dry run of {args.project} ({os.cpu_count()} cores here):\n"
        f"  import metaflow: {per_import:.3f} CPU-s (median of 5)\n"
        f"  45 variants: {', '.join(f'{c:.1f} CPU-s / {w:.1f} s' for c, w, _ in runs)}\n"
        f"  per variant: {per_variant:.3f} CPU-s = {per_variant / per_import:.2f}x import metaflow"
    )
    if large:
        cpu, wall, count = large
        print(
            f"  {count} variants: {wall:.1f} s wall, {cpu:.1f} CPU-s "
            f"({cpu / count:.3f} per variant)"
        )


if __name__ == "__main__":
    main()
