"""Argo fan-out: our sweep vs the upstream example's deploy -> wait -> delete, two at a time.

Both drive Metaflow's real Deployer against the same loopback Kubernetes API (tests/kube_api.py)
and moto's S3 server; every workflow "runs" for a fixed time there, since no pod exists.

    python benchmarks/argo_fanout.py                   # the upstream grid: 45 variants, 20 s each
    python benchmarks/argo_fanout.py --variants 6 --duration 3   # a quick look

Prints both wall times and the ratio. Ours includes its preflight (every template compiled and
validated before the first is created); the baseline has none.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def upstream_grid(count: int) -> list[tuple[int, int]]:
    """cpu in range(1,16) x tensor_dim in 1000,1250,1500, as conf/sweep/upstream.yaml."""
    grid = [(cpu, dim) for cpu in range(1, 16) for dim in (1000, 1250, 1500)]
    return grid[:count]


def run_ours(tag: str, grid, scratch: Path, deploy_workers: int | None = None) -> float:
    from torchperf.backends.argo import ArgoBackend
    from torchperf.backends.base import SweepSpec
    from torchperf.plan import Variant, branch_name, event_name
    from torchperf.settings import VariantSettings

    planned = [
        (Variant(c, n, branch_name(tag, c, n)), VariantSettings(cpu=c, tensor_dim=n, tag=tag))
        for c, n in grid
    ]
    sweep = SweepSpec(tag, event_name(tag), scratch / tag, planned, variant_timeout_seconds=600)
    backend = ArgoBackend(
        poll_seconds=1.0, max_parallel=len(grid), deploy_workers=deploy_workers,
        image="torchperf:bench",
    )  # fmt: skip
    started = time.monotonic()
    backend.preflight(sweep)
    outcomes = [backend.run_variant(sweep, v, s) for v, s in planned]
    backend.finish(sweep, interrupted=False)
    elapsed = time.monotonic() - started
    assert all(o.status == "succeeded" for o in outcomes), outcomes
    return elapsed


def run_baseline(tag: str, grid, in_flight: int = 2) -> float:
    """The upstream example's loop: create, trigger, wait, delete; ``in_flight`` at a time."""
    from metaflow import Deployer

    from torchperf.plan import branch_name

    work: queue.Queue = queue.Queue()
    for item in grid:
        work.put(item)

    def worker():
        while True:
            try:
                cpu, dim = work.get_nowait()
            except queue.Empty:
                return
            deployed = (
                Deployer(
                    str(ROOT / "torchtest.py"),
                    show_output=False,
                    branch=branch_name(tag, cpu, dim),
                    config_value=[("config", {"cpu": cpu, "tensor_dim": dim, "tag": tag})],
                )
                .argo_workflows()
                .create(tags=[tag])
            )
            deployed.trigger().wait_for_completion(check_interval=1)
            deployed.delete()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=45, help="how many of the 45 to run")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds a workflow runs")
    args = parser.parse_args()

    from kube_api import KubeAPI

    scratch = Path(tempfile.mkdtemp(prefix="argo-fanout-"))
    from _loopback import argo_settings

    from cluster.metadata import start_metadata_service
    from cluster.s3 import start_moto

    s3, s3_url = start_moto("torchperf", "bench", "bench")
    service, service_url = start_metadata_service(scratch / "metadata")
    api = KubeAPI(pending_seconds=1.0, run_seconds=args.duration).__enter__()
    # This process reads Metaflow's settings at `import metaflow`: set them all first.
    os.environ.update(
        argo_settings(scratch, s3_url, service_url, api),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(scratch),
    )
    grid = upstream_grid(args.variants)
    try:
        ours = run_ours("fanout_ours", grid, scratch)
        assert api.names("workflowtemplates") == [], api.names("workflowtemplates")
        baseline = run_baseline("fanout_base", grid)
    finally:
        api.__exit__()
        s3.terminate()
        service.terminate()
    print(
        f"argo fan-out, {len(grid)} variants, {args.duration:g} s per workflow, "
        f"{os.cpu_count()} cores here:\n"
        f"  ours (preflight + up to {len(grid)} in flight): {ours:7.1f} s\n"
        f"  baseline (deploy -> wait -> delete, 2 in flight): {baseline:7.1f} s\n"
        f"  speed-up: {baseline / ours:.1f}x"
    )


if __name__ == "__main__":
    main()
