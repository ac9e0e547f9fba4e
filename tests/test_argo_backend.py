"""ArgoBackend against real parts: Metaflow's Deployer, moto's S3 server, a loopback Kubernetes API.

Nothing runs in a pod here (tests/kube_api.py moves workflow phases on the clock), so these tests
cover compiling, validating, creating, triggering, waiting, terminating, events and teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kube_api import KubeAPI
from s3_server import start_moto

from torchperf.backends.argo import ArgoBackend
from torchperf.backends.base import SweepSpec
from torchperf.plan import branch_name, event_name
from torchperf.settings import ConfigError, VariantSettings

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-never-written"
pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback, with the datastore bucket created."""
    server, url = start_moto("torchperf", "test", SECRET)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def api():
    with KubeAPI(pending_seconds=0.1, run_seconds=0.6) as server:
        yield server


@pytest.fixture
def environ(s3_endpoint, api, tmp_path):
    """Metaflow settings for the Deployer's subprocesses, as a user's config would give them."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return {
        **os.environ,
        "METAFLOW_HOME": str(tmp_path / "mfhome"),  # no user config file, production tokens here
        "METAFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://torchperf/metaflow",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "METAFLOW_SERVICE_HEADERS": json.dumps({"x-api-key": SECRET}),
        "METAFLOW_KUBERNETES_NAMESPACE": "default",
        "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": f"{api.url}/webhook",
        "KUBECONFIG": str(kubeconfig),
    }


def make_sweep(tmp_path, tag, grid, *, dry_run=False, timeout=30.0) -> SweepSpec:
    planned = []
    for cpu, tensor_dim in grid:
        settings = VariantSettings(cpu=cpu, tensor_dim=tensor_dim, measure_seconds=0.2, tag=tag)
        from torchperf.plan import Variant

        planned.append((Variant(cpu, tensor_dim, branch_name(tag, cpu, tensor_dim)), settings))
    return SweepSpec(
        tag=tag,
        event=event_name(tag),
        sweep_dir=tmp_path / "sweep",
        planned=planned,
        dry_run=dry_run,
        variant_timeout_seconds=timeout,
    )


def run_sweep(backend: ArgoBackend, sweep: SweepSpec) -> tuple[dict, str | None]:
    """What the sweep session does: preflight, each variant in turn, finish."""
    backend.preflight(sweep)
    outcomes = {v.id: backend.run_variant(sweep, v, s) for v, s in sweep.planned}
    return outcomes, backend.finish(sweep, interrupted=False)


def test_dry_run_writes_valid_manifests_without_touching_kubernetes(environ, api, tmp_path):
    # GIVEN two variants, WHEN the dry run compiles them
    sweep = make_sweep(tmp_path, "drytag", [(1, 64), (3, 128)], dry_run=True)
    backend = ArgoBackend(environ=environ, guaranteed_qos=True)
    outcomes, analytics = run_sweep(backend, sweep)
    # THEN nothing reached the cluster, every manifest is on disk, checked and secret-free
    assert api.requests == []
    assert {o.status for o in outcomes.values()} == {"skipped"} and analytics is None
    folder = sweep.sweep_dir / "manifests"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "analytics.sensor.json",
        "analytics.workflowtemplate.json",
        "c1_n64.workflowtemplate.json",
        "c3_n128.workflowtemplate.json",
    ]
    template = json.loads((folder / "c3_n128.workflowtemplate.json").read_text())
    start = next(t for t in template["spec"]["templates"] if t["name"] == "start")
    assert float(start["container"]["resources"]["requests"]["cpu"]) == 3
    assert float(start["container"]["resources"]["limits"]["cpu"]) == 3
    assert start["container"]["image"] == backend.image
    title = template["metadata"]["annotations"]["workflows.argoproj.io/title"]
    assert "cpu=3" in title and "tensor_dim=128" in title and "drytag" in title
    sensor = json.loads((folder / "analytics.sensor.json").read_text())
    assert "name == 'torchperf_drytag'" in json.dumps(sensor["spec"]["dependencies"])
    for path in folder.iterdir():
        assert SECRET not in path.read_text(), path.name


def test_missing_setting_fails_preflight_before_anything_is_created(environ, api, tmp_path):
    del environ["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"]
    sweep = make_sweep(tmp_path, "badtag", [(1, 64)])
    with pytest.raises(ConfigError, match="METAFLOW_ARGO_EVENTS_WEBHOOK_URL"):
        ArgoBackend(environ=environ).preflight(sweep)
    assert api.requests == []


def test_bad_variant_fails_preflight_before_anything_is_created(environ, api, tmp_path):
    # tensor_dim 20000 needs 4.5 GiB but the variant asks for 1 GiB: the flow's parser refuses.
    sweep = make_sweep(tmp_path, "badvar", [(1, 64)])
    variant, _ = sweep.planned[0]
    sweep.planned[0] = (variant, VariantSettings(cpu=1, tensor_dim=20000, memory_mb=1024))
    with pytest.raises(ConfigError, match="c1_n64"):
        ArgoBackend(environ=environ).preflight(sweep)
    assert api.requests == []


def test_sweep_lifecycle_with_a_failure_and_a_timeout_leaves_nothing_behind(environ, api, tmp_path):
    # GIVEN three variants: one succeeds, one fails, one hangs past the timeout
    sweep = make_sweep(tmp_path, "lifetag", [(1, 64), (2, 64), (1, 128)], timeout=3.0)
    api.fail.add("_c2_n64")
    api.hang.add("_c1_n128")
    backend = ArgoBackend(environ=environ, poll_seconds=0.2, max_parallel=3)
    started = time.monotonic()
    outcomes, analytics = run_sweep(backend, sweep)
    elapsed = time.monotonic() - started
    # THEN each ended as it should, in parallel rather than one after another
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    assert outcomes["c1_n64"].run.startswith("TorchPerfFlow/argo-")
    assert outcomes["c2_n64"].status == "failed"
    assert outcomes["c1_n128"].status == "timeout"
    assert elapsed < 40
    # ... the success (only) published the sweep's event, and the Sensor started the analytics
    assert [e["name"] for e in api.events] == ["torchperf_lifetag"]
    assert api.events[0]["payload"]["run"] == outcomes["c1_n64"].run
    analytics_runs = [
        wf for wf in api.workflows() if "SweepAnalyticsFlow" in json.dumps(wf["metadata"])
    ]
    assert len(analytics_runs) == 2  # one from the event, one final trigger
    assert analytics and analytics.startswith("SweepAnalyticsFlow/argo-")
    # ... the hung variant was terminated, and no template or sensor is left
    assert api.running() == []
    assert api.names("workflowtemplates") == [] and api.names("sensors") == []
    assert ("PATCH", "workflows") in {(m, p.split("/")[-2]) for m, p in api.requests}


def test_keep_deployments_keeps_templates_and_sensor(environ, api, tmp_path):
    sweep = make_sweep(tmp_path, "keeptag", [(1, 64)])
    outcomes, _ = run_sweep(
        ArgoBackend(environ=environ, poll_seconds=0.2, keep_deployments=True), sweep
    )
    assert outcomes["c1_n64"].status == "succeeded"
    assert len(api.names("workflowtemplates")) == 2 and len(api.names("sensors")) == 1


DRIVER = textwrap.dedent(
    """
    import json, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_argo_backend import make_sweep
    from torchperf.backends.argo import ArgoBackend
    from pathlib import Path

    # What sweep_deployer.py does: SIGTERM ends the sweep the way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sweep = make_sweep(Path({tmp!r}), "sigtag", [(1, 64), (2, 64), (1, 128)], timeout=120)
    backend = ArgoBackend(environ=json.loads({environ!r}), poll_seconds=0.2)
    backend.preflight(sweep)
    print("preflight done", flush=True)
    try:
        for variant, settings in sweep.planned:
            backend.run_variant(sweep, variant, settings)
    except KeyboardInterrupt:
        backend.cancel()
        backend.finish(sweep, interrupted=True)
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_sweep_terminates_workflows_and_deletes_everything(
    environ, api, tmp_path, signum
):
    # GIVEN a sweep whose variants all hang, driven the way sweep_deployer.py drives it
    api.hang.add("sigtag")
    script = DRIVER.format(
        root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path), environ=json.dumps(environ)
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env=environ, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(api.running()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(api.running()) == 3, api.requests
        # WHEN the signal arrives while they run
        driver.send_signal(signum)
        out, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    # THEN the sweep stops cleanly and leaves nothing on the cluster
    assert driver.returncode == 130, out
    assert api.running() == []
    assert api.names("workflowtemplates") == [] and api.names("sensors") == []
