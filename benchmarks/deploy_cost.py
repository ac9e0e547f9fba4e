"""What deploying a variant to Argo costs the sweep machine, against the floor Metaflow's public
API allows: CPU seconds per variant of this backend's whole Argo sweep, over those of Metaflow's
own ``Deployer(...).argo_workflows().create()`` run the same way (worker processes, as many).

    python benchmarks/deploy_cost.py                     # 20 variants, 3 alternated rounds
    python benchmarks/deploy_cost.py --variants 45 --rounds 1

Each side runs in a process of its own (this script with ``--side``), and its CPU is read with
``resource.getrusage(RUSAGE_CHILDREN)`` around it: the side, its create workers and every create
they ran. The loopback Kubernetes API (tests/kube_api.py, each workflow done 0.5 s after it
starts), moto's S3 and the metadata service run in this process and count for neither side.

- ours: ``ArgoBackend`` preflight, every variant created, checked as the API holds it,
  triggered and waited for, the analytics flow created and run, teardown.
- Metaflow: ``Deployer(...).create()`` of every variant in a ``DeployPool`` of as many workers.

Prints each round's CPU per variant and the ratio, and the median ratio.
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


def grid(count: int) -> list[tuple[int, int]]:
    """cpu in range(1,16) x tensor_dim in 1000,1250,1500, as conf/sweep/upstream.yaml."""
    return [(cpu, dim) for cpu in range(1, 16) for dim in (1000, 1250, 1500)][:count]


def side_ours(tag: str, count: int, scratch: Path) -> None:
    from torchperf.backends.argo import ArgoBackend
    from torchperf.backends.base import Status, SweepSpec
    from torchperf.plan import Variant, branch_name, event_name
    from torchperf.settings import VariantSettings

    planned = [
        (Variant(c, n, branch_name(tag, c, n)), VariantSettings(cpu=c, tensor_dim=n, tag=tag))
        for c, n in grid(count)
    ]
    sweep = SweepSpec(tag, event_name(tag), scratch / tag, planned, variant_timeout_seconds=600)
    backend = ArgoBackend(
        poll_seconds=1.0, max_parallel=count, deploy_workers=WORKERS, image="torchperf:bench"
    )
    backend.preflight(sweep)
    outcomes = [backend.run_variant(sweep, v, s) for v, s in planned]
    backend.finish(sweep, interrupted=False)
    assert all(o.status == Status.SUCCEEDED for o in outcomes), outcomes


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
            for c, n in grid(count)
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
    parser.add_argument("--variants", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=("ours", "metaflow"))
    parser.add_argument("--tag")
    parser.add_argument("--scratch", type=Path)
    args = parser.parse_args()
    if args.side:
        run = side_ours if args.side == "ours" else side_metaflow
        return run(args.tag, args.variants, args.scratch)

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
    ratios = []
    print(f"deploy cost, {args.variants} variants, {WORKERS} create workers, "
          f"{os.cpu_count()} cores here (CPU-s per variant):")  # fmt: skip
    try:
        for round_ in range(args.rounds):
            # Alternate which side goes first: the machine is shared and its load drifts.
            order = ("ours", "metaflow") if round_ % 2 == 0 else ("metaflow", "ours")
            cpu = {}
            for side in order:
                tag = f"cost{round_}{side[:2]}"
                spent, wall = measured(side, tag, args.variants, scratch, env)
                cpu[side] = spent / args.variants
                print(f"  round {round_ + 1} {side:>8}: {cpu[side]:.3f} CPU-s ({wall:.1f} s wall)")
            ratios.append(cpu["ours"] / cpu["metaflow"])
            print(f"  round {round_ + 1}    ratio: {ratios[-1]:.2f}x")
    finally:
        api.__exit__()
        s3.terminate()
        service.terminate()
    print(f"median ratio ours / Metaflow's create: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
