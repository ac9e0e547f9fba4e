"""The Argo sweep end to end on the simulated cluster: ``tests/cluster/run_sim.py``, as
``make argo-sim`` runs it, with every step of both flows run in its "pod".

Three sweeps per session, each through run_sim.py in a subprocess (tiny sizes):
- 2x2 (cpu 1,2 x tensor_dim 32,64) with live analytics: every variant measured in its pod and
  read back through the metadata service, one analytics run per event plus the final one, the
  card showing all four, nothing left in the API (TTL 2 s);
- one variant on an image without torch: its measuring step fails in its pod;
- one variant with a long measurement, interrupted (SIGINT) while its pod measures.
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
from cluster.pods import CGROUP_CPU, pods_unsupported
from conftest import card_text

ROOT = Path(__file__).resolve().parents[1]
RUN_SIM = ROOT / "tests" / "cluster" / "run_sim.py"
TINY = ["measure_seconds=0.2", "backend.poll_seconds=1", "backend.workflow_ttl_seconds=2"]

pytestmark = [
    pytest.mark.sim,
    pytest.mark.e2e,
    pytest.mark.skipif(bool(pods_unsupported()), reason=str(pods_unsupported())),
]


def run_sim(tmp: Path, *overrides: str, requirements: Path | None = None, **popen):
    command = [sys.executable, str(RUN_SIM), "--report", str(tmp / "report.json")]
    if requirements:
        command += ["--requirements", str(requirements)]
    command += [*overrides, f"hydra.sweep.dir={tmp / 'sweep'}"]
    env = {**os.environ, "METAFLOW_USER": "sim-tests"}
    for key in ("METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_DEFAULT_DATASTORE",
                "METAFLOW_DEFAULT_METADATA"):  # fmt: skip
        env.pop(key, None)  # the session's local settings; the cluster brings its own
    return command, env


def finished_sweep(tmp: Path, *overrides: str, requirements: Path | None = None) -> dict:
    command, env = run_sim(tmp, *overrides, requirements=requirements)
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return {
        "done": done,
        "seconds": time.monotonic() - started,
        "report": json.loads((tmp / "report.json").read_text()),
        "summary": json.loads((tmp / "sweep" / "summary.json").read_text()),
        "dir": tmp / "sweep",
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim-2x2")
    return finished_sweep(tmp, "cpu=1,2", "tensor_dim=32,64", *TINY)


def workflows_of(report: dict, flow: str) -> dict[str, dict]:
    return {
        name: wf
        for name, wf in report["workflows"].items()
        if (wf["annotations"] or {}).get("metaflow/flow_name") == flow
    }


def test_every_variant_is_measured_in_its_own_pod(sweep):
    done, summary, report = sweep["done"], sweep["summary"], sweep["report"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = {(v["cpu"], v["tensor_dim"]): v for v in summary["variants"]}
    assert set(variants) == {(1, 32), (1, 64), (2, 32), (2, 64)}
    assert {v["status"] for v in variants.values()} == {"succeeded"}
    assert all(v["gflops"] > 0 for v in variants.values())  # read back from the pods' runs
    measuring = {p["workflow"]: p for p in report["pods"] if p["step"] == "start"}
    for (cpu, _), variant in variants.items():
        workflow = variant["run"].split("/", 1)[1].removeprefix("argo-")
        pod = measuring[workflow]
        assert pod["exit_code"] == 0 and pod["cpu_limit"] == cpu
        assert pod["cgroup"] or pod["cgroup_problem"]


def test_one_analytics_run_per_event_and_a_final_one(sweep):
    report, summary = sweep["report"], sweep["summary"]
    events = [e for e in report["events"] if e["payload"]["name"].endswith(summary["tag"])]
    assert len(events) == 4
    assert sorted(e["payload"]["variant"] for e in events) == ["c1_n32", "c1_n64", "c2_n32",
                                                               "c2_n64"]  # fmt: skip
    analytics = workflows_of(report, "SweepAnalyticsFlow")
    triggered = {workflow for _, workflow in report["triggered"]}
    assert len(triggered) == 4 and triggered < set(analytics)
    assert len(analytics) == 5
    assert {wf["phase"] for wf in analytics.values()} == {"Succeeded"}
    final = summary["analytics_run"].split("/", 1)[1].removeprefix("argo-")
    assert final in analytics and final not in triggered


def test_final_card_shows_all_four_variants(sweep):
    text = card_text((sweep["dir"] / "report.html").read_text())
    assert "4 of 4 variants done (0 failed)" in text
    for name in ("speedup.png", "efficiency.png"):
        assert (sweep["dir"] / name).stat().st_size > 0


def test_workflows_carry_the_sweep_labels_and_a_title(sweep):
    tag = sweep["summary"]["tag"]
    variants = workflows_of(sweep["report"], "TorchPerfFlow")
    assert len(variants) == 4
    seen = set()
    for wf in variants.values():
        assert wf["labels"]["torchperf/tag"] == tag
        seen.add(wf["labels"]["torchperf/variant"])
        title = wf["annotations"]["workflows.argoproj.io/title"]
        assert "cpu=" in title and "tensor_dim=" in title
        assert wf["ttl"] and wf["podGC"]
    assert seen == {"c1_n32", "c1_n64", "c2_n32", "c2_n64"}


def test_nothing_is_left_behind(sweep):
    report = sweep["report"]
    assert report["left"] == {"workflowtemplates": [], "sensors": [], "workflows": []}
    assert report["running_pods"] == []
    assert {e["name"] for e in report["expired"]} == set(report["workflows"])
    assert not (CGROUP_CPU / report["cgroup_parent"]).exists()
    assert not Path(report["cluster_folder"]).exists()


def test_events_came_from_pods_only(sweep):
    # The sweep process was given no webhook URL and no route: every event came from a pod
    # (the webhook refuses any other caller), none was refused.
    assert sweep["report"]["refused_webhook_callers"] == 0
    assert "METAFLOW_ARGO_EVENTS_WEBHOOK_URL" not in sweep["done"].stdout


def test_a_step_failing_in_its_pod_fails_the_variant(tmp_path):
    # GIVEN an image whose requirements lack torch
    requirements = tmp_path / "requirements.txt"
    lines = (ROOT / "image" / "requirements.txt").read_text().splitlines()
    requirements.write_text("\n".join(line for line in lines if not line.startswith("torch")))
    result = finished_sweep(
        tmp_path, "cpu=1", "tensor_dim=32", "live_analytics=false", *TINY,
        requirements=requirements,
    )  # fmt: skip
    # THEN the measuring step fails in its pod, the variant is failed, nothing is left
    assert result["done"].returncode == 1, result["done"].stderr[-3000:]
    (variant,) = result["summary"]["variants"]
    assert variant["status"] == "failed"
    report = result["report"]
    (workflow,) = workflows_of(report, "TorchPerfFlow").values()
    assert workflow["phase"] == "Failed" and "start" in workflow["message"]
    steps = [(p["step"], p["exit_code"]) for p in report["pods"] if p["workflow"] in
             workflows_of(report, "TorchPerfFlow")]  # fmt: skip
    assert steps[0] == ("start", 1) and "end" not in dict(steps)
    assert report["left"] == {"workflowtemplates": [], "sensors": [], "workflows": []}


def test_ctrl_c_stops_the_pods_and_leaves_nothing(tmp_path):
    command, env = run_sim(tmp_path, "cpu=1", "tensor_dim=32", "measure_seconds=60",
                           "backend.poll_seconds=1")  # fmt: skip
    sim = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first = sim.stdout.readline()
    assert "pods under" in first, first
    pods = Path(first.rsplit("pods under ", 1)[1].strip()) / "pods"
    # WHEN the variant's measuring pod is running its step, the user presses Ctrl-C
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        logs = list(pods.glob("*start*/pod.log")) if pods.exists() else []
        if logs and "Task is starting." in logs[0].read_text():
            break
        time.sleep(0.2)
    time.sleep(5)
    sim.send_signal(signal.SIGINT)
    output, _ = sim.communicate(timeout=180)
    assert sim.returncode == 130, output[-3000:]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["cancelled"]
    report = json.loads((tmp_path / "report.json").read_text())
    (workflow,) = workflows_of(report, "TorchPerfFlow").values()
    assert workflow["phase"] == "Failed" and "Stopped" in workflow["message"]
    assert report["running_pods"] == []
    assert report["left"]["workflowtemplates"] == [] and report["left"]["sensors"] == []
    assert not (CGROUP_CPU / report["cgroup_parent"]).exists()
