"""What deploying a variant to Argo costs the sweep machine, against the floor Metaflow's public
API allows: CPU seconds per variant of this backend's whole Argo sweep, over those of Metaflow's
own ``Deployer(...).argo_workflows().create()`` run the same way (worker processes, as many).

    python benchmarks/deploy_cost.py                     # 10 and 30 variants, 3 rounds
    python benchmarks/deploy_cost.py --small 10 --large 45 --rounds 1

Each side runs in a process of its own (this script with ``--side``), and its CPU is read with
``resource.getrusage(RUSAGE_CHILDREN)`` around it: the side, its create workers and every create
they ran. The loopback Kubernetes API (tests/kube_api.py, each workflow done 0.5 s after it
starts), moto's S3 and the metadata service run in this process and count for neither side.

- ours: ``ArgoBackend`` preflight, every variant created, checked as the API holds it,
  triggered and waited for, the analytics flow created and run, teardown.
- Metaflow: ``Deployer(...).create()`` of every variant in a ``DeployPool`` of as many workers.

Each side runs a small and a large sweep; the difference over the difference in variants is the
cost of one more variant, apart from what a sweep pays once (ours: hera's models, the analytics
flow's create, its Sensor; both: the workers' start). Prints, per round, both sides' CPU per
variant of the large sweep, their cost per added variant, and the ratios; then the medians.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
WORKERS = 2

from argo_fanout import run_ours, upstream_grid  # noqa: E402 - benchmarks/ is this script's folder


def side_ours(tag: str, count: int, scratch: Path) -> None:
    run_ours(tag, upstream_grid(count), scratch, deploy_workers=WORKERS)


def side_metaflow(tag: str, count: int, scratch: Path) -> None:
    from torchperf.backends.argo.deploy import Create, DeployPool
    from torchperf.backends.base import flow_path
    from torchperf.plan import branch_name
    from torchperf.settings import VariantSettings

    pool = DeployPool(WORKERS)
    try:
        futures = [
            pool.submit(
                Create(
                    str(flow_path("torchtest.py")),
                    branch_name(tag, c, n),
                    VariantSettings(cpu=c, tensor_dim=n, tag=tag).as_config(),
                    dict(os.environ),
                    str(ROOT),
                    {"tags": [tag]},
                )  # fmt: skip
            )
            for c, n in upstream_grid(count)
        ]
        for future in futures:
            future.result()
    finally:
        pool.close()


def measured(side: str, tag: str, count: int, scratch: Path, env: dict) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one side, in a process of its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, "--side", side, "--tag", tag, "--variants", str(count),
         "--scratch", str(scratch)],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="variants in the small sweep")
    parser.add_argument("--large", type=int, default=30, help="variants in the large sweep")
    parser.add_argument("--variants", type=int, help=argparse.SUPPRESS)  # one side's own
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=("ours", "metaflow"))
    parser.add_argument("--tag")
    parser.add_argument("--scratch", type=Path)
    args = parser.parse_args()
    if args.side:
        run = side_ours if args.side == "ours" else side_metaflow
        return run(args.tag, args.variants, args.scratch)
    if not 0 < args.small < args.large <= 45:
        raise SystemExit("--small and --large: 0 < small < large <= 45 (the upstream grid)")

    from _loopback import argo_settings
    from kube_api import KubeAPI

    from cluster.metadata import start_metadata_service
    from cluster.s3 import start_moto

    scratch = Path(tempfile.mkdtemp(prefix="deploy-cost-"))
    s3, s3_url = start_moto("torchperf", "bench", "bench")
    service, service_url = start_metadata_service(scratch / "metadata")
    api = KubeAPI(pending_seconds=0.2, run_seconds=0.5).__enter__()
    env = {
        **os.environ,
        **argo_settings(scratch, s3_url, service_url, api),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(scratch),
    }
    whole, marginal = [], []
    sizes = (args.small, args.large)
    print(f"deploy cost, {sizes[0]} and {sizes[1]} variants, {WORKERS} create workers, "
          f"{os.cpu_count()} cores here (CPU-s per variant):")  # fmt: skip
    try:
        for round_ in range(args.rounds):
            # Alternate which side goes first: the machine is shared and its load drifts.
            order = ("ours", "metaflow") if round_ % 2 == 0 else ("metaflow", "ours")
            cpu: dict = {}
            for size in sizes:
                for side in order:
                    tag = f"cost{round_}{side[:2]}{size}"
                    cpu[side, size], _ = measured(side, tag, size, scratch, env)
            line = []
            for side in ("ours", "metaflow"):
                per = cpu[side, sizes[1]] / sizes[1]
                added = (cpu[side, sizes[1]] - cpu[side, sizes[0]]) / (sizes[1] - sizes[0])
                line.append((per, added))
                print(f"  round {round_ + 1} {side:>8}: {per:.3f} per variant of {sizes[1]}, "
                      f"{added:.3f} per added variant")  # fmt: skip
            whole.append(line[0][0] / line[1][0])
            marginal.append(line[0][1] / line[1][1])
            print(f"  round {round_ + 1}   ratios: {whole[-1]:.2f}x per variant, "
                  f"{marginal[-1]:.2f}x per added variant")  # fmt: skip
    finally:
        api.__exit__()
        s3.terminate()
        service.terminate()
    print(
        f"median ratios ours / Metaflow's create: {statistics.median(whole):.2f}x per "
        f"variant of {sizes[1]}, {statistics.median(marginal):.2f}x per added variant"
    )


if __name__ == "__main__":
    main()
