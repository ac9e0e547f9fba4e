"""What one Argo variant costs the sweep machine, step by step: a compile (the preflight's) and a
Deployer ``create`` in the compile server, with all its warm-ups and with each left out in turn,
and a ``create`` as Metaflow's Deployer runs it as it comes (a fresh Python); all in CPU seconds,
over one ``python -c "import metaflow"`` measured here in the same run.

    python benchmarks/argo_compile_cost.py            # 8 compiles and 8 creates per line
    python benchmarks/argo_compile_cost.py --count 16

A server's CPU is counted whole (its own and its children's, reaped when it exits); one that ran
nothing is measured too and taken off, so the figures are per command. Against moto's S3 server,
a metadata service and the loopback Kubernetes API (tests/kube_api.py).
"""

from __future__ import annotations

import argparse
import json
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

# Each line: the warm-ups the server keeps (the others are left out).
SERVER_SETUPS = {
    "all warm-ups": "pass",
    "without the CLI's plugin modules": "s.PRELOADED_TOO = s.KUBERNETES_MODELS = ()",
    "without the S3 client": "s.WARM_UPS.remove(s._first_s3_client_from_the_server)",
    "without the package start": "s.WARM_UPS.remove(s._PackagePrefix.install)",
    "none of them": "s.PRELOADED_TOO = s.KUBERNETES_MODELS = (); s.WARM_UPS.clear()",
}


def cpu() -> float:
    """This process's CPU and its reaped children's."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def variant(index: int) -> tuple[str, dict]:
    config = {"cpu": 1 + index % 4, "tensor_dim": 1000 + index, "tag": "costtag"}
    return f"costtag_c{1 + index % 4}_n{1000 + index}", config


def server_cpu(setup: str, env: dict, scratch: Path, compiles: int, creates: int) -> float:
    """CPU of a server with ``setup`` that runs ``compiles`` compiles and ``creates`` creates."""
    from torchperf.backends.argo import _launching_manager, package_path
    from torchperf.backends.compile_server import CompileServer

    class Server(CompileServer):
        SERVER = (
            "-c",
            f"import sys; from torchperf.backends import compile_server as s; {setup}; "
            "s.main(sys.argv[1:])",
        )

    flow = str(package_path("torchtest.py"))
    before = cpu()
    server = Server(env, ROOT, scratch)
    try:
        for index in range(compiles):
            branch, config = variant(index)
            server.compile(flow, [
                "--quiet", "--no-pylint", "--datastore", "s3", "--branch", branch,
                "--config-value", "config", json.dumps(config),
                "argo-workflows", "create", "--only-json", "--tag=costtag",
            ])  # fmt: skip
        for index in range(creates):
            deployer = new_deployer(flow, 100 + index, env)
            deployer.spm = _launching_manager()(server.launcher)
            deployer.create(tags=["costtag"])
    finally:
        server.close()
    return cpu() - before


def new_deployer(flow: str, index: int, env: dict):
    from metaflow import Deployer

    branch, config = variant(index)
    return Deployer(
        flow, show_output=False, env=env, cwd=str(ROOT), branch=branch,
        config_value=[("config", config)],
    ).argo_workflows()  # fmt: skip


def fresh_creates(env: dict, count: int) -> float:
    """CPU per create as Metaflow's Deployer runs it: `python FLOW.py ... create` anew."""
    from torchperf.backends.argo import package_path

    flow = str(package_path("torchtest.py"))
    before = cpu()
    for index in range(count):
        new_deployer(flow, 200 + index, env).create(tags=["costtag"])
    return (cpu() - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="compiles and creates per line")
    args = parser.parse_args()

    from _loopback import argo_settings
    from cluster.metadata import start_metadata_service
    from cluster.s3 import start_moto
    from kube_api import KubeAPI

    scratch = Path(tempfile.mkdtemp(prefix="argo-compile-cost-"))
    s3, s3_url = start_moto("torchperf", "bench", "bench")
    service, service_url = start_metadata_service(scratch / "metadata")
    api = KubeAPI().__enter__()
    # This process reads Metaflow's settings at `import metaflow`: set them all first.
    os.environ.update(
        argo_settings(scratch, s3_url, service_url, api),
        METAFLOW_KUBERNETES_CONTAINER_IMAGE="torchperf:bench",
    )
    env = dict(os.environ)
    count = args.count
    from torchperf.backends.argo import package_path

    new_deployer(str(package_path("torchtest.py")), 0, env)  # this process's imports, once
    try:
        imports = []
        for _ in range(5):
            before = cpu()
            subprocess.run([sys.executable, "-c", "import metaflow"], env=env, check=True)
            imports.append(cpu() - before)
        per_import = statistics.median(imports)
        rows = []
        for name, setup in SERVER_SETUPS.items():
            started = time.monotonic()
            idle = server_cpu(setup, env, scratch, 0, 0)
            compile_cost = (server_cpu(setup, env, scratch, count, 0) - idle) / count
            create_cost = (server_cpu(setup, env, scratch, 0, count) - idle) / count
            rows.append((name, idle, compile_cost, create_cost, time.monotonic() - started))
        fresh = fresh_creates(env, count)
    finally:
        api.__exit__()
        s3.terminate()
        service.terminate()
    print(
        f"argo compile and create cost, {count} of each per line, {os.cpu_count()} cores here\n"
        f"  import metaflow: {per_import:.3f} CPU-s (median of 5)\n"
        f"  {'compile server':34} {'start':>7} {'compile':>15} {'create':>15}"
    )
    for name, idle, compile_cost, create_cost, _ in rows:
        print(
            f"  {name:34} {idle:7.2f} {compile_cost:7.3f} ({compile_cost / per_import:4.2f}x)"
            f" {create_cost:7.3f} ({create_cost / per_import:4.2f}x)"
        )
    print(f"  create in a fresh Python (Metaflow's Deployer as it comes): {fresh:.3f} CPU-s "
          f"({fresh / per_import:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
