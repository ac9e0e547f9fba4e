"""The Argo sweep on the real control plane (cluster/): kube-apiserver, kube-controller-manager,
kube-scheduler, Argo's workflow controller and executor, Argo Events' controller, EventSource,
EventBus (nats-server) and Sensor, all built from source; only the node runs pods as processes.

One cluster per module (about a minute to start); each sweep runs ``sweep_deployer.py -m
backend=argo`` in a subprocess as the sweep's ServiceAccount, bound to exactly the RBAC that
docs/argo.md documents. Assertions read what the API, the metadata service and the sweep dir hold
afterwards, as Argo's own e2e tests do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster.controlplane import BROKEN_IMAGE, IMAGE, NAMESPACE, Cluster, missing_binaries
from cluster.run import leftovers
from conftest import card_text

ROOT = Path(__file__).resolve().parents[1]
TINY = ["measure_seconds=0.2", "backend.poll_seconds=1"]

pytestmark = [
    pytest.mark.real_cluster,
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the node needs root (namespaces, cgroups)"),
    pytest.mark.skipif(
        bool(missing_binaries()), reason=f"not built: {missing_binaries()} (cluster/build.sh)"
    ),
]


@pytest.fixture(scope="module")
def cluster():
    with Cluster(keep=bool(os.environ.get("TORCHPERF_KEEP_CLUSTER"))) as running:
        yield running


def sweep_command(tmp: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "sweep_deployer.py"),
        "-m",
        "backend=argo",
        *([] if any(o.startswith("backend.image=") for o in overrides) else [f"backend.image={IMAGE}"]),
        *overrides,
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]


def sweep_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    return {**env, "METAFLOW_USER": "real-cluster-tests", **cluster.environ()}


def run_sweep(cluster: Cluster, tmp: Path, *overrides: str, timeout: float = 900) -> dict:
    done = subprocess.run(
        sweep_command(tmp, *overrides),
        env=sweep_env(cluster),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    summary_file = tmp / "sweep" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return {"done": done, "summary": summary, "dir": tmp / "sweep"}


def output(result: dict) -> str:
    return result["done"].stdout[-4000:] + result["done"].stderr[-4000:]


def runs_of(cluster: Cluster, flow: str, tag: str) -> list:
    """The flow's runs with the sweep's tag, through the metadata service, as a user reads them."""
    code = (
        "import json, sys; from metaflow import Flow, namespace; namespace(None);"
        f"runs = list(Flow({flow!r}).runs({tag!r}));"
        "print(json.dumps([[r.pathspec, r.successful] for r in runs]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=sweep_env(cluster),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def sweep_2x2(cluster, tmp_path_factory):
    return run_sweep(
        cluster, tmp_path_factory.mktemp("real-2x2"), "cpu=1,2", "tensor_dim=32,64", *TINY
    )


def test_every_variant_is_measured_in_a_pod_and_read_back(sweep_2x2):
    assert sweep_2x2["done"].returncode == 0, output(sweep_2x2)
    variants = {(v["cpu"], v["tensor_dim"]): v for v in sweep_2x2["summary"]["variants"]}
    assert set(variants) == {(1, 32), (1, 64), (2, 32), (2, 64)}
    assert {v["status"] for v in variants.values()} == {"succeeded"}, output(sweep_2x2)
    assert all(v["gflops"] > 0 for v in variants.values())


def test_one_analytics_run_per_event_and_a_final_one(cluster, sweep_2x2):
    tag = sweep_2x2["summary"]["tag"]
    analytics = runs_of(cluster, "SweepAnalyticsFlow", tag)
    assert len(analytics) == 5, analytics  # 4 started by the Sensor, 1 by the sweep
    assert all(successful for _, successful in analytics)
    final = sweep_2x2["summary"]["analytics_run"]
    assert final in {pathspec for pathspec, _ in analytics}


def test_final_card_shows_all_four_variants(sweep_2x2):
    text = card_text((sweep_2x2["dir"] / "report.html").read_text())
    assert "4 of 4 variants done" in text


def test_nothing_of_the_sweep_is_left_in_the_cluster(cluster, sweep_2x2):
    assert sweep_2x2["done"].returncode == 0, output(sweep_2x2)
    assert {k: v for k, v in leftovers(cluster).items() if v} == {}


def test_a_failing_step_is_reported_and_leaves_nothing(cluster, tmp_path):
    # An image without torch: the measuring step fails in its pod, as on a cluster whose
    # image was built wrong.
    result = run_sweep(
        cluster, tmp_path, "cpu=1", "tensor_dim=32", *TINY, f"backend.image={BROKEN_IMAGE}"
    )
    assert result["done"].returncode != 0
    [variant] = result["summary"]["variants"]
    assert variant["status"] == "failed", output(result)
    assert variant["message"], output(result)
    assert {k: v for k, v in leftovers(cluster).items() if v} == {}


def test_ctrl_c_while_a_pod_measures_cancels_and_leaves_nothing(cluster, tmp_path):
    process = subprocess.Popen(
        sweep_command(tmp_path, "cpu=1", "tensor_dim=64", "measure_seconds=120", *TINY[1:]),
        env=sweep_env(cluster),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    core = cluster.client("CoreV1Api")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(NAMESPACE, label_selector="workflows.argoproj.io/workflow")
        if any(
            p.status.phase == "Running" and p.metadata.labels.get("torchperf/variant")
            for p in pods.items
        ):
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("no measuring pod started within 300 s")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert time.monotonic() - interrupted < 60, out[-3000:]
    assert process.returncode != 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["cancelled"], out[-3000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(leftovers(cluster).values()):
        time.sleep(1)
    assert {k: v for k, v in leftovers(cluster).items() if v} == {}
