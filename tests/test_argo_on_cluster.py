"""The same sweep against a real cluster with Argo Workflows and Argo Events.

Skipped unless TORCHPERF_ON_CLUSTER=1 and Metaflow's own configuration (config file or
METAFLOW_* environment, kubeconfig) points at that cluster; nothing here has run on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.on_cluster,
    pytest.mark.skipif(
        os.environ.get("TORCHPERF_ON_CLUSTER") != "1",
        reason="set TORCHPERF_ON_CLUSTER=1 with a kubeconfig and Metaflow config for a cluster",
    ),
]


def test_smoke_sweep_runs_on_argo_and_leaves_nothing_behind(tmp_path):
    # A subprocess: this test session imported metaflow with a local datastore (conftest.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_DATASTORE_SYSROOT_L")}
    env.pop("METAFLOW_DEFAULT_DATASTORE", None)
    env.pop("METAFLOW_DEFAULT_METADATA", None)
    done = subprocess.run(
        [sys.executable, "sweep_deployer.py", "-m", "backend=argo", "sweep=smoke",
         f"hydra.sweep.dir={tmp_path}", "variant_timeout_seconds=900"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["variants"] and all(v["status"] == "succeeded" for v in summary["variants"])
    from kubernetes import client, config

    config.load_kube_config()
    namespace = env.get("METAFLOW_KUBERNETES_NAMESPACE", "default")
    listing = client.CustomObjectsApi().list_namespaced_custom_object(
        "argoproj.io", "v1alpha1", namespace, "workflowtemplates"
    )
    tag = summary["tag"]
    left = [
        t["metadata"]["name"]
        for t in listing["items"]
        if tag in t["metadata"].get("annotations", {}).get("metaflow/tags", "")
    ]
    assert left == []
