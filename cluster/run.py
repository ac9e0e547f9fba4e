"""Start the real control plane, and run an Argo sweep against it or keep it up for a look.

    python -m cluster.run                       # make cluster: start, print the settings, wait
    python -m cluster.run sweep [OVERRIDES...]  # make argo-real ARGS="cpu=1,2 tensor_dim=64,128"

``sweep`` runs ``sweep_deployer.py -m backend=argo backend.image=torchperf:local OVERRIDES`` with
the cluster's settings (the sweep's ServiceAccount, S3, the metadata service, the Argo Events
names) and prints what the sweep left in the namespace afterwards. Both print the control
plane's start-up time, memory and idle CPU. Everything started is stopped on exit, failure,
Ctrl-C, SIGTERM and SIGHUP (the signal reaches the sweep first, as a user's Ctrl-C would). The
exit status is the sweep's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .controlplane import IMAGE, NAMESPACE, ROOT, Cluster, ClusterError


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _tree(pid: int) -> list[int]:
    """pid and its descendants (the node's pods included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def footprint(cluster: Cluster, idle_seconds: float = 10.0) -> str:
    """The control plane's memory and CPU while idle, with Argo and Argo Events installed."""
    pids = [pid for p in cluster.processes for pid in _tree(p.popen.pid)]
    before = _cpu_seconds(pids)
    time.sleep(idle_seconds)
    used = _cpu_seconds(pids) - before
    started = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.started_seconds.items())
    return (
        f"cluster up: {started}; {len(pids)} processes, {_rss_mib(pids):.0f} MiB resident, "
        f"idle CPU {used / idle_seconds * 100:.1f}% of one core"
    )


def leftovers(cluster: Cluster) -> dict[str, list[str]]:
    """What is in the sweeps' namespace besides what an administrator set up."""
    custom = cluster.client("CustomObjectsApi")
    left = {}
    for plural in ("workflowtemplates", "sensors", "workflows", "cronworkflows"):
        items = custom.list_namespaced_custom_object(
            "argoproj.io", "v1alpha1", NAMESPACE, plural, _request_timeout=10
        )["items"]
        left[plural] = [i["metadata"]["name"] for i in items]
    pods = cluster.client("CoreV1Api").list_namespaced_pod(NAMESPACE, _request_timeout=10).items
    left["pods"] = [
        p.metadata.name
        for p in pods
        if not p.metadata.name.startswith(("eventbus-", "argo-events-webhook-eventsource-"))
    ]
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("up", "sweep"), default="up")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's folder (logs)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)  # also where a background start left it ignored
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        with Cluster(keep=args.keep) as cluster:
            print(footprint(cluster), flush=True)
            if args.command == "up":
                print(f"logs: {cluster.logs}\nsettings for a sweep:")
                for key, value in cluster.environ().items():
                    print(f"  export {key}={value}")
                print("Ctrl-C stops the cluster.", flush=True)
                signal.pause()
                return 0
            return run_sweep(cluster, args.overrides)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_sweep(cluster: Cluster, overrides: list[str]) -> int:
    command = [
        sys.executable,
        str(ROOT / "sweep_deployer.py"),
        "-m",
        "backend=argo",
        f"backend.image={IMAGE}",
        *overrides,
    ]
    sweep = subprocess.Popen(command, env={**os.environ, **cluster.environ()}, cwd=ROOT)
    try:
        code = sweep.wait()
    except KeyboardInterrupt:
        sweep.send_signal(signal.SIGINT)
        code = sweep.wait()
    left = {k: v for k, v in leftovers(cluster).items() if v}
    print("left in the namespace:", left or "nothing", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
