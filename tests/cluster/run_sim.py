"""Run an Argo sweep on the simulated cluster: ``make argo-sim ARGS="cpu=1,2 tensor_dim=32,64"``.

    python tests/cluster/run_sim.py [--report PATH] [--keep] [sweep_deployer overrides...]

Starts moto's S3, the metadata service, the Kubernetes API that executes workflows and the
pod-only events webhook (tests/cluster/sim.py), then runs
``sweep_deployer.py -m backend=argo backend.image=torchperf-sim:local <overrides>`` with the
Metaflow settings of that cluster in its environment. The sweep dir ends up as a real sweep
leaves it. At the end it prints what every pod cost and (``--report``) writes the cluster's
record as JSON: pods, events, triggered workflows, what is left in the API. Everything it
started is stopped when the sweep ends, fails or is interrupted (Ctrl-C or SIGTERM is passed on
to the sweep first, as a user's Ctrl-C would reach it). The exit status is the sweep's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from cluster.image import REQUIREMENTS  # noqa: E402
from cluster.sim import SimulatedCluster  # noqa: E402

IMAGE = "torchperf-sim:local"  # any name: the simulated cluster pulls no image


def sweep_command(overrides: list[str]) -> list[str]:
    return [
        sys.executable, str(ROOT / "sweep_deployer.py"), "-m",
        "backend=argo", f"backend.image={IMAGE}", *overrides,
    ]  # fmt: skip


def pod_table(report: dict) -> str:
    lines = [f"{'pod':<62} {'exit':>4} {'wall s':>7} {'cpu s':>6} {'limit':>5} {'thr s':>6}"]
    for pod in report["pods"]:
        cpu = "" if pod["cpu_seconds"] is None else f"{pod['cpu_seconds']:.1f}"
        lines.append(
            f"{pod['name'][-62:]:<62} {pod['exit_code']!s:>4} {pod['wall_seconds'] or 0:>7.1f} "
            f"{cpu:>6} {pod['cpu_limit'] or '':>5} {pod['throttled_seconds']:>6.1f}"
        )
    total_cpu = sum(p["cpu_seconds"] or 0 for p in report["pods"])
    lines.append(f"{len(report['pods'])} pods, {total_cpu:.1f} CPU seconds in pods")
    return "\n".join(lines)


def run(
    overrides: list[str], *, report_path: Path | None, keep: bool, requirements: Path = REQUIREMENTS
) -> int:
    child = None

    def forward(signum, _frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SimulatedCluster(keep=keep, requirements=requirements) as cluster:
            print(
                f"simulated cluster: API {cluster.api.url}, pods under {cluster.folder}", flush=True
            )
            env = {**os.environ, **cluster.environ()}
            env.setdefault("METAFLOW_USER", "torchperf")
            env.pop("METAFLOW_ARGO_EVENTS_WEBHOOK_URL", None)  # no route from here
            # Its own process group: a Ctrl-C reaches it once, forwarded from here.
            child = subprocess.Popen(
                sweep_command(overrides), cwd=ROOT, env=env, start_new_session=True
            )
            code = child.wait()
            cluster.api.wait_idle(timeout=30)
            cluster.api.wait_expired(max_ttl=10, timeout=15)  # short TTLs: let them pass
            report = cluster.report()
            print(pod_table(report))
            left = {kind: names for kind, names in report["left"].items() if names}
            print(f"left in the API: {left or 'nothing'}")
            if report_path:
                cluster.write_report(report_path)
            return code
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--report", type=Path, help="write the cluster's record here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the pods' folders")
    parser.add_argument(
        "--requirements", type=Path, default=REQUIREMENTS,
        help="the pods' image requirements (default: image/requirements.txt)",
    )  # fmt: skip
    options, overrides = parser.parse_known_args(argv)
    return run(
        overrides, report_path=options.report, keep=options.keep,
        requirements=options.requirements,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
