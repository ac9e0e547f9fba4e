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
from conftest import card_text

from cluster.controlplane import BROKEN_IMAGE, IMAGE, NAMESPACE, Cluster, missing_binaries
from cluster.run import leftovers

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
        *(
            []
            if any(o.startswith("backend.image=") for o in overrides)
            else [f"backend.image={IMAGE}"]
        ),
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


def nothing_left(cluster: Cluster, seconds: float = 90) -> dict:
    """What of the sweep is still in the namespace once the cluster has carried out the deletes
    the sweep made (a deleted Sensor's pod ends after its grace period)."""
    deadline = time.monotonic() + seconds
    while True:
        left = {kind: names for kind, names in leftovers(cluster).items() if names}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


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


def test_each_variant_ran_in_a_guaranteed_pod_not_as_root_and_says_where(cluster, sweep_2x2):
    assert sweep_2x2["done"].returncode == 0, output(sweep_2x2)
    code = (
        "import json; from metaflow import Flow, namespace; namespace(None);"
        f"tag = {sweep_2x2['summary']['tag']!r};"
        "print(json.dumps([r.data.result['env'] for r in Flow('TorchPerfFlow').runs(tag)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=sweep_env(cluster), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    envs = json.loads(done.stdout)
    nodes = [n.metadata.name for n in cluster.client("CoreV1Api").list_node().items]
    images = json.loads((cluster.folder / "images.json").read_text())["images"]
    digest = next(i["digest"] for i in images if IMAGE.startswith(i["match"]))
    assert len(envs) == 4
    for env in envs:
        # The API server sets a pod's QoS class from every container's resources (Argo's too).
        assert env["qos_class"] == "Guaranteed", env
        assert env["uid"] not in (0, None), env
        assert env["node"] in nodes, env
        assert env["image_digest"] == digest, env
        assert env["pod_unreadable"] is None, env


def test_one_analytics_run_per_event_and_a_final_one(cluster, sweep_2x2):
    tag = sweep_2x2["summary"]["tag"]
    analytics = runs_of(cluster, "SweepAnalyticsFlow", tag)
    # Events reached the Sensor through the EventSource and the EventBus: it started analytics
    # runs (one at a time: backend.analytics_parallelism); the final one, started by the sweep,
    # goes first in that queue, and live runs still queued at the end go with the sweep.
    final = sweep_2x2["summary"]["analytics_run"]
    assert len([p for p, _ in analytics if p != final]) >= 1, analytics
    assert [final] == [
        pathspec for pathspec, successful in analytics if pathspec == final and successful
    ]


def test_final_card_shows_all_four_variants(sweep_2x2):
    text = card_text((sweep_2x2["dir"] / "report.html").read_text())
    assert "4 of 4 variants done" in text


def test_nothing_of_the_sweep_is_left_in_the_cluster(cluster, sweep_2x2):
    assert sweep_2x2["done"].returncode == 0, output(sweep_2x2)
    assert nothing_left(cluster) == {}


def test_a_failing_step_is_reported_and_leaves_nothing(cluster, tmp_path):
    # An image without torch: the measuring step fails in its pod, as on a cluster whose
    # image was built wrong.
    result = run_sweep(
        cluster, tmp_path, "cpu=1", "tensor_dim=32", *TINY, f"backend.image={BROKEN_IMAGE}"
    )
    assert result["done"].returncode != 0
    [variant] = result["summary"]["variants"]
    assert variant["status"] == "failed", output(result)
    # ... saying which step failed and how, as Argo tells it (the Workflow has no message)
    assert "start" in variant["message"] and "exit code" in variant["message"], output(result)
    assert nothing_left(cluster) == {}


def start_sweep(cluster: Cluster, tmp: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_command(tmp, *overrides),
        env=sweep_env(cluster),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def measuring_pod(cluster: Cluster, process: subprocess.Popen, variant: str, timeout=300):
    """The running pod of the variant's measuring step (its Workflow's name starts with it)."""
    core = cluster.client("CoreV1Api")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(NAMESPACE).items:
            name = pod.metadata.name
            main = [c for c in pod.status.container_statuses or [] if c.name == "main"]
            mine = name.startswith(f"torchperf-{variant}-") and "-start-" in name
            if mine and main and main[0].state.running:
                return pod
        if process.poll() is not None:
            pytest.fail(process.stdout.read()[-3000:])
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no measuring pod of {variant} ran within {timeout} s")


def test_ctrl_c_while_a_pod_measures_cancels_and_leaves_nothing(cluster, tmp_path):
    process = start_sweep(cluster, tmp_path, "cpu=1", "tensor_dim=64", "measure_seconds=120",
                          *TINY[1:])  # fmt: skip
    measuring_pod(cluster, process, "c1-n64")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert time.monotonic() - interrupted < 60, out[-3000:]
    assert process.returncode != 0
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["cancelled"], out[-3000:]
    assert nothing_left(cluster) == {}


def test_a_pod_deleted_while_it_measures_fails_its_variant(cluster, tmp_path):
    # GIVEN a variant measuring for a minute WHEN its pod is deleted (as an eviction does)
    process = start_sweep(cluster, tmp_path, "cpu=1", "tensor_dim=64", "measure_seconds=60",
                          *TINY[1:])  # fmt: skip
    pod = measuring_pod(cluster, process, "c1-n64")
    cluster.client("CoreV1Api").delete_namespaced_pod(pod.metadata.name, NAMESPACE)
    # THEN the sweep ends, reporting the variant failed with a reason, and leaves nothing
    out, _ = process.communicate(timeout=300)
    assert process.returncode != 0, out[-3000:]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    [variant] = summary["variants"]
    assert variant["status"] == "failed" and variant["message"], out[-3000:]
    assert nothing_left(cluster) == {}


def test_the_argo_controller_restarted_mid_sweep_the_sweep_completes(cluster, tmp_path):
    process = start_sweep(cluster, tmp_path, "cpu=1", "tensor_dim=32,64", "measure_seconds=5",
                          *TINY[1:])  # fmt: skip
    measuring_pod(cluster, process, "c1-n32")
    core = cluster.client("CoreV1Api")
    [controller] = core.list_namespaced_pod("argo", label_selector="app=workflow-controller").items
    core.delete_namespaced_pod(controller.metadata.name, "argo")  # its Deployment starts another
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert {v["status"] for v in summary["variants"]} == {"succeeded"}, out[-3000:]
    restarted = core.list_namespaced_pod("argo", label_selector="app=workflow-controller").items
    assert [p.metadata.name for p in restarted] != [controller.metadata.name]
    assert nothing_left(cluster) == {}
