"""ArgoBackend against real parts: Metaflow's Deployer, moto's S3 server, a metadata service and
a loopback Kubernetes API.

Nothing runs in a pod here (tests/kube_api.py moves workflow phases on the clock), so these tests
cover compiling, validating, creating, triggering, waiting, terminating and teardown; the pods'
side (events from inside, results read back) is shown on the simulated cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from kube_api import KINDS, KubeAPI
from terminal import Terminal

from cluster.metadata import start_metadata_service
from cluster.s3 import start_moto
from torchperf.backends.argo import ArgoBackend
from torchperf.backends.argo.manifests import TITLE
from torchperf.backends.base import SweepSpec
from torchperf.plan import Variant, branch_name, event_name
from torchperf.settings import ConfigError, VariantSettings

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-never-written"
IMAGE = "registry.example/torchperf:test"
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


@pytest.fixture(scope="module")
def service_url(tmp_path_factory):
    """A real Metaflow metadata service on loopback."""
    server, url = start_metadata_service(tmp_path_factory.mktemp("metadata"))
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
def environ(s3_endpoint, service_url, api, tmp_path):
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
        "METAFLOW_DEFAULT_METADATA": "service",
        "METAFLOW_SERVICE_URL": service_url,
        "METAFLOW_KUBERNETES_NAMESPACE": "default",
        "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
        # What pods publish to; the sweep itself never does.
        "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": f"{api.url}/webhook",
        "KUBECONFIG": str(kubeconfig),
    }


def make_sweep(tmp_path, tag, grid, *, dry_run=False, timeout=30.0) -> SweepSpec:
    planned = []
    for cpu, tensor_dim in grid:
        settings = VariantSettings(cpu=cpu, tensor_dim=tensor_dim, measure_seconds=0.2, tag=tag)
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
    backend = ArgoBackend(environ=environ, guaranteed_qos=True, image=IMAGE)
    outcomes, analytics = run_sweep(backend, sweep)
    # THEN nothing reached the cluster, every manifest is on disk, checked and secret-free
    assert api.requests == []
    assert {o.status for o in outcomes.values()} == {"skipped"} and analytics is None
    folder = sweep.sweep_dir / "manifests"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "analytics.workflowtemplate.json",
        "c1_n64.workflowtemplate.json",
        "c3_n128.workflowtemplate.json",
    ]
    template = json.loads((folder / "c3_n128.workflowtemplate.json").read_text())
    start = next(t for t in template["spec"]["templates"] if t["name"] == "start")
    assert float(start["container"]["resources"]["requests"]["cpu"]) == 3
    assert float(start["container"]["resources"]["limits"]["cpu"]) == 3
    assert start["container"]["image"] == IMAGE
    title = template["metadata"]["annotations"]["workflows.argoproj.io/title"]
    assert "cpu=3" in title and "tensor_dim=128" in title and "drytag" in title
    analytics_template = json.loads((folder / "analytics.workflowtemplate.json").read_text())
    annotations = analytics_template["metadata"]["annotations"]
    assert "analytics" in annotations[TITLE]
    # ... and the analytics flow starts on the sweep's event only (its Sensor is made from this)
    assert json.loads(annotations["metaflow/triggers"]) == [
        {"name": "torchperf_drytag", "type": "event"}
    ]
    for path in folder.iterdir():
        assert SECRET not in path.read_text(), path.name


def test_variants_whose_branches_hash_alike_still_get_their_own_templates(environ, api, tmp_path):
    # GIVEN two variants of one sweep whose @project flow names, as a branch that began with the
    # tag made them, share the 5-character hash Metaflow appends to a shortened template name
    # (found by trying variants against base32(sha1(name))[:5], Metaflow's hash: 6yofs)
    tag = "sweep_20261202_090000_abcdef"
    sweep = make_sweep(tmp_path, tag, [(1, 939), (1, 3340)], dry_run=True)
    # WHEN the dry run compiles them with Metaflow
    run_sweep(ArgoBackend(environ=environ, image=IMAGE), sweep)
    # THEN their templates are named apart: the variant leads the shortened name
    folder = sweep.sweep_dir / "manifests"
    names = {
        json.loads((folder / f"{v}.workflowtemplate.json").read_text())["metadata"]["name"]
        for v in ("c1_n939", "c1_n3340")
    }
    assert len(names) == 2, names
    assert any("c1n939" in name for name in names)


def test_pods_get_the_internal_urls_and_cuda_variants_a_gpu_and_their_image(environ, api, tmp_path):
    # GIVEN in-cluster addresses for the metadata service and a cpu and a cuda variant
    environ["METAFLOW_SERVICE_INTERNAL_URL"] = "http://metadata.internal:8080"
    tag = "gputag"
    cuda = VariantSettings(cpu=1, tensor_dim=64, measure_seconds=0.2, device="cuda", tag=tag)
    sweep = make_sweep(tmp_path, tag, [(1, 64)], dry_run=True)
    sweep.planned.append((Variant(1, 64, branch_name(tag, 1, 64, "cuda"), "cuda"), cuda))
    # WHEN the dry run compiles them
    run_sweep(ArgoBackend(environ=environ, image=IMAGE, cuda_image="cuda:img"), sweep)
    folder = sweep.sweep_dir / "manifests"

    def start(name):
        template = json.loads((folder / f"{name}.workflowtemplate.json").read_text())
        return next(t for t in template["spec"]["templates"] if t["name"] == "start")["container"]

    # THEN pods talk to the in-cluster service and webhook, never to this machine's addresses
    cpu_start = start("c1_n64")
    env = {e["name"]: e.get("value") for e in cpu_start["env"]}
    assert env["METAFLOW_SERVICE_URL"] == "http://metadata.internal:8080"
    assert env["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"] == f"{api.url}/webhook"
    # ... and only the cuda variant asks for a GPU and runs in the cuda image
    assert "nvidia.com/gpu" not in json.dumps(cpu_start["resources"])
    assert cpu_start["image"] == IMAGE
    gpu_start = start("c1_n64_cuda")
    assert gpu_start["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    assert gpu_start["image"] == "cuda:img"


def test_dry_run_needs_only_what_compiling_needs_and_lists_the_rest(environ, api, tmp_path, capsys):
    # GIVEN no kubeconfig, no webhook, no metadata service and no image
    for key in ("KUBECONFIG", "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL", "METAFLOW_SERVICE_URL"):
        del environ[key]
    environ["METAFLOW_DEFAULT_METADATA"] = "local"
    environ["HOME"] = str(tmp_path / "home")  # no ~/.kube/config either
    sweep = make_sweep(tmp_path, "drybare", [(1, 64)], dry_run=True)
    # WHEN the dry run compiles
    outcomes, _ = run_sweep(ArgoBackend(environ=environ), sweep)
    # THEN it compiled without the cluster and names each setting a deploy still needs
    assert outcomes["c1_n64"].status == "skipped" and api.requests == []
    assert (sweep.sweep_dir / "manifests" / "c1_n64.workflowtemplate.json").exists()
    needs = [
        line.removeprefix("dry run: a deploy also needs: ")
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("dry run: a deploy also needs: ")
    ]
    settings = ("kubeconfig", "METAFLOW_DEFAULT_METADATA=local", "INTERNAL_WEBHOOK_URL", "image")
    assert len(needs) == len(settings), needs
    for setting, need in zip(settings, needs, strict=True):
        assert setting in need, (setting, need)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": None}, "ARGO_EVENTS_INTERNAL_WEBHOOK_URL"),
        ({"METAFLOW_DEFAULT_METADATA": "local"}, "METAFLOW_DEFAULT_METADATA=local"),
        ({"METAFLOW_SERVICE_URL": "http://127.0.0.1:9"}, "METAFLOW_SERVICE_URL=.* unreachable"),
        ({"METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DATASTORE_SYSROOT_S3": None},
         "METAFLOW_DEFAULT_DATASTORE=local"),
        ({"image": None}, "backend.image is not set"),
    ],
    ids=["webhook", "local-metadata", "unreachable-service", "local-datastore", "no-image"],
)  # fmt: skip
def test_bad_cluster_setting_fails_preflight_before_anything_is_created(
    environ, api, tmp_path, change, named
):
    image = change.pop("image", IMAGE) if "image" in change else IMAGE
    for key, value in change.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    sweep = make_sweep(tmp_path, "badtag", [(1, 64)])
    with pytest.raises(ConfigError, match=named) as error:
        ArgoBackend(environ=environ, image=image).preflight(sweep)
    assert "\n" not in str(error.value)
    assert api.requests == []


def test_bad_variant_fails_preflight_before_anything_is_created(environ, api, tmp_path):
    # tensor_dim 20000 needs 4.5 GiB but the variant asks for 1 GiB: the flow's parser refuses.
    sweep = make_sweep(tmp_path, "badvar", [(1, 64)])
    variant, _ = sweep.planned[0]
    sweep.planned[0] = (variant, VariantSettings(cpu=1, tensor_dim=20000, memory_mb=1024))
    with pytest.raises(ConfigError, match="c1_n64"):
        ArgoBackend(environ=environ, image=IMAGE).preflight(sweep)
    assert api.requests == []


def test_sweep_lifecycle_with_a_failure_and_a_timeout_leaves_nothing_behind(environ, api, tmp_path):
    # GIVEN three variants: one succeeds, one fails, one hangs past the timeout
    sweep = make_sweep(tmp_path, "lifetag", [(1, 64), (2, 64), (1, 128)], timeout=3.0)
    api.fail.add("c2_n64_")
    api.hang.add("c1_n128_")
    backend = ArgoBackend(
        environ=environ, image=IMAGE, poll_seconds=0.2, max_parallel=3, workflow_ttl_seconds=600
    )
    started = time.monotonic()
    outcomes, analytics = run_sweep(backend, sweep)
    elapsed = time.monotonic() - started
    # THEN each ended as it should, in parallel rather than one after another
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    assert outcomes["c1_n64"].run.startswith("TorchPerfFlow/argo-torchperf-c1-n64-lifetag-")
    assert outcomes["c2_n64"].status == "failed"
    assert outcomes["c1_n128"].status == "timeout"
    assert elapsed < 40
    # ... no step ran here, so no figure came back, and the outcome says why
    assert outcomes["c1_n64"].gflops is None and "unreadable" in outcomes["c1_n64"].message
    # ... the sweep published nothing itself: events come from the variants' pods
    assert api.events == []
    # ... every workflow is labelled, titled and cleaned up after its TTL, the Sensor's too
    workflows = api.ever("workflows")
    assert len(workflows) == 4
    for workflow in workflows:
        meta, spec = workflow["metadata"], workflow["spec"]
        assert meta["labels"]["torchperf/tag"] == "lifetag"
        assert "lifetag" in meta["annotations"][TITLE]
        assert spec["ttlStrategy"] == {"secondsAfterCompletion": 600}
        assert spec["podGC"] == {"strategy": "OnPodSuccess"}
        # ... and Argo stops it at the variant timeout even if the sweep is gone by then
        assert spec["activeDeadlineSeconds"] == 3
    variants = sorted(wf["metadata"]["labels"]["torchperf/variant"] for wf in workflows)
    assert variants == ["analytics", "c1_n128", "c1_n64", "c2_n64"]
    assert analytics and analytics.startswith("SweepAnalyticsFlow/argo-torchperf-analytics-")
    # ... the hung variant was terminated, and no template or sensor is left
    assert api.running() == []
    assert api.names("workflowtemplates") == [] and api.names("sensors") == []
    assert ("PATCH", "workflows") in {(m, p.split("/")[-2]) for m, p in api.requests}


def test_a_sensor_the_events_controller_has_taken_over_still_starts_the_sweep(
    environ, api, tmp_path
):
    # GIVEN an API whose Argo Events controller adds a finalizer and a status to every new
    # Sensor (the real one does within milliseconds of its creation)
    sweep = make_sweep(tmp_path, "finaltag", [(1, 64)])
    # WHEN the sweep deploys its analytics flow and runs a variant
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    outcomes, analytics = run_sweep(backend, sweep)
    # THEN the Sensor it read back was the controller's, and the sweep ran as if untouched
    assert any(m == "GET" and "/sensors/" in p for m, p in api.requests)
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    assert analytics is not None
    assert api.names("sensors") == [] and api.names("workflowtemplates") == []


def test_sensor_started_workflows_take_the_sweeps_labels_from_their_template(
    environ, api, tmp_path
):
    # GIVEN a deployed sweep whose variant hangs, so that the Sensor is still there
    sweep = make_sweep(tmp_path, "sensortag", [(1, 64)], timeout=2.0)
    api.hang.add("c1_n64_sensortag")
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    backend.preflight(sweep)
    variant, settings = sweep.planned[0]
    try:
        backend.run_variant(sweep, variant, settings)
        # WHEN an event for the sweep arrives, as a pod would publish it
        api.handle("POST", "/webhook", {"name": "torchperf_sensortag", "payload": {
            "name": "torchperf_sensortag", "run": "TorchPerfFlow/argo-x"}})  # fmt: skip
        # THEN the workflow the Sensor started carries the sweep's label and title
        started = [
            wf
            for wf in api.workflows()
            if wf["metadata"]["labels"].get("torchperf/variant") == "analytics"
        ]
        assert len(started) == 1
        assert started[0]["metadata"]["labels"]["torchperf/tag"] == "sensortag"
        assert "analytics" in started[0]["metadata"]["annotations"][TITLE]
    finally:
        backend.finish(sweep, interrupted=True)
    assert api.running() == [] and api.names("sensors") == []


def test_transient_api_errors_are_retried_for_as_long_as_the_patience(environ, api, tmp_path):
    from torchperf.backends.argo import GONE, Argo, resolve_settings

    settings = resolve_settings(environ, namespace=None, image=IMAGE, guaranteed_qos=True)
    argo = Argo(settings, backoff_seconds=0.01, patience_seconds=1.0)
    # GIVEN an API server answering 503 to the next three calls, WHEN we list and read
    api.flaky = 3
    assert argo.running("anytag") == []
    assert argo.phase("no-such-workflow") == ("Failed", GONE)
    # THEN the calls went through after the blips; an outage past the patience still raises
    assert api.flaky == 0
    api.outage(30)
    started = time.monotonic()
    with pytest.raises(Exception, match="503"):
        argo.running("anytag")
    assert time.monotonic() - started < 5


def test_keep_deployments_keeps_templates_and_sensor_labelled_with_the_tag(environ, api, tmp_path):
    sweep = make_sweep(tmp_path, "keeptag", [(1, 64)])
    outcomes, _ = run_sweep(
        ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2, keep_deployments=True), sweep
    )
    assert outcomes["c1_n64"].status == "succeeded"
    assert len(api.names("workflowtemplates")) == 2 and len(api.names("sensors")) == 1
    # ... each carries the sweep's label: what a clean-up after a SIGKILL selects by
    for (_, plural, name), manifest in api.objects.items():
        if plural in ("workflowtemplates", "sensors"):
            assert manifest["metadata"]["labels"]["torchperf/tag"] == "keeptag", name


DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_argo_backend import make_sweep
    from torchperf.backends.argo import ArgoBackend
    from pathlib import Path

    # What sweep_deployer.py does: SIGTERM and SIGHUP end the sweep the way Ctrl-C does.
    from torchperf import signals
    signals.end_like_ctrl_c()
    sweep = make_sweep(Path({tmp!r}), {tag!r}, [(1, 64), (2, 64), (1, 128)], timeout=120)
    backend = ArgoBackend(environ=json.loads({environ!r}), poll_seconds=0.2, image="img")
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


def driver_script(tmp_path, environ, tag="sigtag") -> str:
    return DRIVER.format(
        root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path), environ=json.dumps(environ),
        tag=tag,
    )  # fmt: skip


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_mid_sweep_terminates_workflows_and_deletes_everything(
    environ, api, tmp_path, signum
):
    # GIVEN a sweep whose variants all hang, driven the way sweep_deployer.py drives it
    api.hang.add("sigtag")
    script = driver_script(tmp_path, environ)
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


def test_start_puts_the_pending_variants_in_flight_and_not_the_resumed_ones(environ, api, tmp_path):
    # GIVEN a resumed sweep whose first variant succeeded before: only the second is pending
    sweep = make_sweep(tmp_path, "resumetag", [(1, 64), (2, 64)])
    sweep.pending = sweep.planned[1:]
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    backend.preflight(sweep)
    # WHEN the launcher's batch starts, before any job asks for its variant
    backend.start(sweep)
    # the analytics flow is deployed at once (the variants follow in the pool's threads)
    assert len(api.names("workflowtemplates")) >= 1
    variant, settings = sweep.pending[0]
    outcome = backend.run_variant(sweep, variant, settings)
    backend.finish(sweep, interrupted=False)
    # THEN the pending variant ran, the resumed one did not run again
    ran = {wf["metadata"]["labels"].get("torchperf/variant") for wf in api.ever("workflows")}
    assert outcome.status == "succeeded"
    assert "c2_n64" in ran and "c1_n64" not in ran


def test_deploying_from_the_pool_s_threads_prints_no_signal_handler_warnings(
    environ, api, tmp_path, capfd
):
    # GIVEN two variants that the backend deploys from its pool's threads
    sweep = make_sweep(tmp_path, "quiettag", [(1, 64), (2, 64)])
    # WHEN the sweep runs them
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN both were deployed and ran, and the user's terminal got no line per variant from
    # Metaflow's Deployer about SIGINT handlers (it prints one when made off the main thread)
    assert {o.status for o in outcomes.values()} == {"succeeded"}
    assert "Unable to set signal handlers" not in capfd.readouterr().err


def test_what_admission_adds_is_tolerated_and_a_changed_request_fails_before_it_runs(
    environ, api, tmp_path
):
    # GIVEN a mutating admission webhook that adds a label and a field hera does not know to
    # every template, and lowers one variant's CPU request
    def admission(plural, manifest):
        if plural != "workflowtemplates":
            return
        manifest["metadata"].setdefault("labels", {})["policy.example/checked"] = "true"
        manifest["spec"]["policyExampleAudit"] = {"by": "admission"}
        if "c2n64" in manifest["metadata"]["name"]:
            start = next(t for t in manifest["spec"]["templates"] if t["name"] == "start")
            start["container"]["resources"]["requests"]["cpu"] = "1"

    api.admission.append(admission)
    sweep = make_sweep(tmp_path, "admtag", [(1, 64), (2, 64)])
    # WHEN the sweep deploys both
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN the one whose request changed failed before any workflow started from it, saying
    # what changed; the other ran
    assert outcomes["c2_n64"].status == "failed", outcomes
    assert "as deployed" in outcomes["c2_n64"].message
    assert "cpu request is 1" in outcomes["c2_n64"].message
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    ran = {wf["metadata"]["labels"].get("torchperf/variant") for wf in api.ever("workflows")}
    assert "c2_n64" not in ran and "c1_n64" in ran
    # ... what the API held is written beside the summary, and nothing is left on the cluster
    held = json.loads((sweep.sweep_dir / "manifests" / "c2_n64.workflowtemplate.json").read_text())
    assert held["metadata"]["labels"]["policy.example/checked"] == "true"
    assert api.names("workflowtemplates") == []


def test_a_create_that_fails_shows_metaflow_s_lines_and_is_failed_not_cancelled(
    environ, api, tmp_path, capfd, monkeypatch
):
    # GIVEN an API that refuses one variant's template, and a sweep started from another folder
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the Deployer's temporary folders go
    environ["TMPDIR"] = str(scratch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    api.forbid.add("c2n64failtag")
    sweep = make_sweep(tmp_path, "failtag", [(1, 64), (2, 64)])
    # WHEN the sweep deploys both
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN the refused one failed (it was not cancelled) with the API's reason, the other ran
    assert outcomes["c2_n64"].status == "failed", outcomes
    assert "forbidden" in outcomes["c2_n64"].message
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    # ... the user saw Metaflow's own lines about it, not "Error deploying"
    err = capfd.readouterr().err
    assert "c2_n64: Metaflow's create failed:" in err
    assert "Argo Workflows error" in err and "Error deploying" not in err
    # ... the sweep is still where it was started, and the Deployer left no temporary folder
    assert Path.cwd() == elsewhere
    assert list(scratch.iterdir()) == []


def test_code_package_holds_the_flows_torchperf_and_metaflow_not_the_project_root(
    environ, tmp_path
):
    import gzip
    import io
    import tarfile

    import boto3

    from torchperf.backends.argo.deploy import Create, DeployPool
    from torchperf.backends.base import snapshot_flows

    # GIVEN the variant flow compiled with Metaflow's create(only_json=True) from the copy of
    # the code a sweep takes at its start, as a dry run and a deploy do
    code = snapshot_flows(tmp_path / "code", ["torchtest.py", "sweep_analytics.py"])
    config = VariantSettings(cpu=1, tensor_dim=64, tag="pkgtag").as_config()
    request = Create(
        str(code / "torchtest.py"), "pkgtag_c1", config,
        {**environ, "METAFLOW_DEFAULT_DATASTORE": "s3"}, str(ROOT), only_json=True,
    )  # fmt: skip
    pool = DeployPool(1)
    try:
        template = pool.submit(request).result().template
    finally:
        pool.close()
    # WHEN we open the code package its pods download
    start = next(t for t in template["spec"]["templates"] if t["name"] == "start")
    url = next(e["value"] for e in start["container"]["env"] if e["name"] == "METAFLOW_CODE_URL")
    bucket, key = url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client(
        "s3", endpoint_url=environ["METAFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key=SECRET,
    )  # fmt: skip
    blob = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with contextlib.suppress(OSError):
        blob = gzip.decompress(blob)  # Metaflow's datastore may compress what it saves
    with tarfile.open(fileobj=io.BytesIO(blob)) as package:
        names = package.getnames()
        package.extractall(tmp_path / "pod", filter="data")
    # THEN the user code is the two flows and torchperf/, nothing else from the project root
    # (tests/, benchmarks/, cluster/ stay out however they grow)
    user = {name.split("/")[0] for name in names if not name.startswith(".mf_")}
    assert {"torchtest.py", "sweep_analytics.py", "torchperf"} <= user <= {
        "torchtest.py", "sweep_analytics.py", "torchperf", "metaflow_extensions",
    }  # fmt: skip
    assert "torchperf/bench.py" in names and "torchperf/backends/argo/backend.py" in names
    # ... beside Metaflow itself and the card extension the pods load
    assert any(name.startswith(".mf_code/metaflow/") for name in names)
    assert any(name.startswith(".mf_code/metaflow_extensions/torchperf/") for name in names)
    # ... and a Python without this checkout, in the package's folder as a pod runs the flow,
    # imports the packaged torchperf (no site-packages: not the editable install here)
    found = subprocess.run(
        [sys.executable, "-S", "-c", "import torchperf.settings; print(torchperf.__file__)"],
        env={"PYTHONPATH": str(tmp_path / "pod" / ".mf_code")}, cwd=tmp_path / "pod",
        capture_output=True, text=True,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(tmp_path / "pod" / "torchperf" / "__init__.py")


def wait_for(condition, seconds: float = 60.0):
    """Wait until ``condition()`` is true (its value), or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def test_a_workflow_deleted_outside_the_sweep_ends_failed_and_says_so(environ, api, tmp_path):
    # GIVEN a variant whose workflow runs until someone deletes it with kubectl
    api.hang.add("c1_n64_gonetag")
    sweep = make_sweep(tmp_path, "gonetag", [(1, 64)], timeout=60)
    sweep.pending = sweep.planned
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    backend.preflight(sweep)
    try:
        backend.start(sweep)
        (workflow,) = wait_for(api.running)
        # WHEN it is deleted
        api.handle("DELETE", f"/apis/argoproj.io/v1alpha1/namespaces/default/workflows/{workflow}",
                   None)  # fmt: skip
        outcome = backend.run_variant(sweep, *sweep.planned[0])
    finally:
        backend.finish(sweep, interrupted=False)
    # THEN the variant failed at once, saying why, instead of waiting for its timeout
    assert outcome.status == "failed", outcome
    assert "deleted outside the sweep" in outcome.message


def test_a_create_whose_answer_was_lost_starts_the_variant_once(environ, api, tmp_path):
    # GIVEN an API that stores the next Workflow but whose answer is lost (a 504, a dropped
    # connection), so that the client tries the create again
    api.lost_replies = 1
    sweep = make_sweep(tmp_path, "oncetag", [(1, 64)])
    # WHEN the sweep runs
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN the variant ran once, in the Workflow the first create made
    assert api.lost_replies == 0
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    started = [
        wf
        for wf in api.ever("workflows")
        if wf["metadata"]["labels"]["torchperf/variant"] != "analytics"
    ]
    assert len(started) == 1
    assert outcomes["c1_n64"].run == f"TorchPerfFlow/argo-{started[0]['metadata']['name']}"


def test_a_template_that_cannot_be_deleted_leaves_a_success_a_success(
    environ, api, tmp_path, capfd
):
    # GIVEN an API that refuses to delete one variant's template
    api.undeletable.add("c1n64deltag")
    sweep = make_sweep(tmp_path, "deltag", [(1, 64)])
    # WHEN the variant runs and the sweep ends
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN it succeeded all the same, and the user is told what was left behind
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    err = capfd.readouterr().err
    assert "teardown left 1 thing(s) undone" in err and "c1n64deltag" in err
    assert "torchperf/tag=deltag" in err


def test_an_api_outage_longer_than_a_blip_changes_no_variant_s_status(environ, api, tmp_path):
    # GIVEN a variant in flight
    sweep = make_sweep(tmp_path, "outagetag", [(1, 64)])
    sweep.pending = sweep.planned
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    backend.preflight(sweep)
    try:
        backend.start(sweep)
        wait_for(api.workflows)
        # WHEN the API answers 503 for ten seconds (a control-plane restart) while it runs
        api.outage(10)
        outcome = backend.run_variant(sweep, *sweep.planned[0])
    finally:
        backend.finish(sweep, interrupted=False)
    # THEN the variant is seen through to its end as if nothing had happened
    assert outcome.status == "succeeded", outcome
    assert time.monotonic() >= api.outage_until


def test_every_call_to_an_api_that_never_answers_ends_within_its_bound(environ, api):
    from torchperf.backends.argo import Argo, resolve_settings

    settings = resolve_settings(environ, namespace=None, image=IMAGE, guaranteed_qos=True)
    argo = Argo(settings, request_seconds=0.5, patience_seconds=2.0)
    # GIVEN an API that takes connections and never answers (a half-open connection)
    api.stall()
    try:
        started = time.monotonic()
        # WHEN we read a phase, THEN it fails within the patience, not never
        with pytest.raises(Exception, match="(?i)time"):
            argo.phase("any")
        assert time.monotonic() - started < 5
    finally:
        api.resume()


@pytest.mark.parametrize("trouble", ["outage", "stall"])
def test_ctrl_c_is_answered_within_seconds_whatever_the_api_does(environ, api, tmp_path, trouble):
    # GIVEN a sweep whose variants all run, driven the way sweep_deployer.py drives it
    api.hang.add("sigtag")
    script = driver_script(tmp_path, environ)
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(api.running()) == 3)
        # WHEN the API goes away (503s) or stops answering, and then the user presses Ctrl-C
        api.outage(3600) if trouble == "outage" else api.stall()
        signalled = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        api.resume()
        driver.kill()
    # THEN the sweep is back within seconds and says what it could not clean up
    assert driver.returncode == 130, (out, err)
    assert took < 10, took
    assert "teardown left" in err and "torchperf/tag=sigtag" in err


def test_the_backend_needs_no_linux_only_process_call(environ, api, tmp_path):
    # GIVEN every Python process of the sweep without os.pidfd_open, as on macOS (Linux >= 5.3
    # only); sitecustomize runs in each of them, the Deployer's workers and creates included
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\ndel os.pidfd_open\n")
    script = textwrap.dedent(
        f"""
        import os, sys, json
        assert not hasattr(os, "pidfd_open")
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from pathlib import Path
        from test_argo_backend import make_sweep, run_sweep
        from torchperf.backends.argo import ArgoBackend
        sweep = make_sweep(Path({str(tmp_path)!r}), "mactag", [(1, 64)], dry_run=True)
        backend = ArgoBackend(environ={{**os.environ}}, image="img")
        outcomes, _ = run_sweep(backend, sweep)
        print(json.dumps({{v: o.status for v, o in outcomes.items()}}))
        """
    )
    env = {**environ, "PYTHONPATH": str(site)}
    # WHEN a dry run compiles a variant
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    # THEN it compiled and checked it all the same
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"c1_n64": "skipped"}
    assert (tmp_path / "sweep" / "manifests" / "c1_n64.workflowtemplate.json").exists()


def sensor_reads(api) -> int:
    return sum(1 for method, path in api.requests if method == "GET" and "/sensors/" in path)


def test_no_variant_starts_before_argo_events_calls_the_sensor_deployed(environ, api, tmp_path):
    # GIVEN an Argo Events controller that has not deployed the sweep's new Sensor yet
    api.sensor_deploy_seconds = math.inf
    sweep = make_sweep(tmp_path, "readytag", [(1, 64)])
    sweep.pending = sweep.planned
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2)
    backend.preflight(sweep)
    starting = threading.Thread(target=backend.start, args=(sweep,))
    starting.start()
    try:
        # WHEN the sweep has read the Sensor's status more than once (or a variant started)
        wait_for(lambda: sensor_reads(api) >= 3 or api.names("workflows"), 60)
        # THEN no variant has started: an event it published now would be lost
        assert api.names("workflows") == []
        # ... and once the controller calls the Sensor deployed, the variant runs
        api.sensor_deploy_seconds = 0
        starting.join(60)
        outcome = backend.run_variant(sweep, *sweep.planned[0])
    finally:
        starting.join(60)
        backend.finish(sweep, interrupted=False)
    assert outcome.status == "succeeded", outcome


def test_a_sensor_never_deployed_stops_the_sweep_in_its_bound_saying_why(environ, api, tmp_path):
    # GIVEN an EventBus that goes away after the preflight saw it
    sweep = make_sweep(tmp_path, "nobustag", [(1, 64)])
    sweep.pending = sweep.planned
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2, sensor_wait_seconds=2)
    backend.preflight(sweep)
    api.remove("default", "eventbus", "default")
    # WHEN the sweep deploys its Sensor, which Argo Events cannot deploy without it
    try:
        with pytest.raises(RuntimeError, match="not deployed after 2 s.*EventBusNotFound"):
            backend.start(sweep)
    finally:
        backend.finish(sweep, interrupted=True)
    # THEN no variant started, and nothing is left on the cluster
    assert api.names("workflows") == []
    assert api.names("sensors") == [] and api.names("workflowtemplates") == []


def test_a_sweep_without_live_analytics_neither_needs_nor_waits_for_events(environ, api, tmp_path):
    # GIVEN no EventSource at all, and a Sensor Argo Events would never deploy
    api.remove("default", "eventsources", "argo-events-webhook")
    api.sensor_deploy_seconds = math.inf
    sweep = make_sweep(tmp_path, "quietev", [(1, 64)])
    sweep.live_analytics = False
    # WHEN a sweep runs that wants analytics only at its end
    outcomes, analytics = run_sweep(
        ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2, sensor_wait_seconds=1), sweep
    )
    # THEN it ran as before
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    assert analytics is not None


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("eventsources", "argo-events-webhook"),
         "METAFLOW_ARGO_EVENTS_EVENT_SOURCE=argo-events-webhook: there is no EventSource"),
        (("eventbus", "default"), "METAFLOW_ARGO_EVENTS_EVENT_BUS=default: there is no EventBus"),
    ],
    ids=["event-source", "event-bus"],
)  # fmt: skip
def test_preflight_refuses_an_event_source_or_bus_that_is_not_there(
    environ, api, tmp_path, missing, named
):
    # GIVEN a cluster without the EventSource (or the EventBus) the Sensor would name
    api.remove("default", *missing)
    sweep = make_sweep(tmp_path, "noevtag", [(1, 64)])
    # WHEN the sweep's preflight runs, THEN it stops with one line naming the setting
    with pytest.raises(ConfigError, match=named) as error:
        ArgoBackend(environ=environ, image=IMAGE).preflight(sweep)
    assert "\n" not in str(error.value) and "namespace default" in str(error.value)
    # ... having only read: nothing was created
    assert {method for method, _ in api.requests} == {"GET"}


def test_preflight_looks_for_the_event_bus_metaflow_is_told_of(environ, api, tmp_path):
    # GIVEN a cluster whose EventBus has another name, and Metaflow told that name
    api.remove("default", "eventbus", "default")
    api.put("default", "eventbus", "jetstream", {"jetstream": {"version": "latest"}})
    environ["METAFLOW_ARGO_EVENTS_EVENT_BUS"] = "jetstream"
    sweep = make_sweep(tmp_path, "bustag", [(1, 64)])
    backend = ArgoBackend(environ=environ, image=IMAGE)
    # WHEN the preflight runs, THEN it finds it
    try:
        backend.preflight(sweep)
    finally:
        backend.finish(sweep, interrupted=True)
    assert any(path.endswith("/eventbus/jetstream") for _, path in api.requests)


def test_ctrl_c_while_the_sweep_waits_for_its_sensor_is_answered_in_seconds(environ, api, tmp_path):
    # GIVEN a sweep waiting for a Sensor that Argo Events never deploys
    api.sensor_deploy_seconds = math.inf
    driver = subprocess.Popen(
        [sys.executable, "-c", driver_script(tmp_path, environ, tag="waittag")], env=environ,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: sensor_reads(api) >= 2, 120)
        # WHEN the user presses Ctrl-C
        signalled = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        driver.kill()
    # THEN it is back within seconds, no variant ran and nothing is left
    assert driver.returncode == 130, (out, err)
    assert took < 10, took
    assert api.names("workflows") == []
    assert api.names("sensors") == [] and api.names("workflowtemplates") == []


def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_command(command, env, seconds):
    """Run ``command`` in a session of its own; (returncode, stdout, stderr), or fail after
    ``seconds`` with every process it started stopped."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(map(str, command))} still ran after {seconds} s")
    return process.returncode, out, err


def test_a_dry_run_whose_s3_is_unreachable_stops_in_seconds_with_one_line(tmp_path):
    # GIVEN the Argo Events names and an S3 datastore whose endpoint refuses connections
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {
        **os.environ,
        "METAFLOW_USER": "dev",
        "METAFLOW_HOME": str(tmp_path / "mfhome"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://torchperf/metaflow",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
    }
    command = [
        sys.executable, str(ROOT / "sweep_deployer.py"), "-m", "backend=argo", "dry_run=true",
        "cpu=1", "tensor_dim=32,64", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    # WHEN the user asks for a dry run
    started = time.monotonic()
    returncode, _, err = run_command(command, env, 90)
    # THEN it stops within seconds, with one line naming the setting, and compiled nothing
    assert returncode == 2, err
    assert time.monotonic() - started < 45
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: METAFLOW_S3_ENDPOINT_URL={endpoint}"), err
    assert "unreachable" in lines[0]
    assert not (tmp_path / "sweep" / "manifests").exists()


def test_closing_the_terminal_ends_an_argo_sweep_like_sigterm(environ, api, tmp_path):
    # GIVEN a sweep started from a terminal, both of its variants running on the cluster
    api.hang.add("c1_n")
    command = [
        sys.executable, str(ROOT / "sweep_deployer.py"), "-m", "backend=argo",
        f"backend.image={IMAGE}", "backend.poll_seconds=0.2", "cpu=1", "tensor_dim=32,64",
        "measure_seconds=0.2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    terminal = Terminal(command, environ)
    try:
        wait_for(lambda: len(api.running()) == 2 or terminal.process.poll() is not None, 180)
        assert len(api.running()) == 2, terminal.text()
        # WHEN the user closes the terminal (SIGHUP, and nowhere left to print)
        terminal.close()
        returncode = terminal.process.wait(60)
    finally:
        terminal.kill()
    # THEN the sweep ended as after Ctrl-C: its workflows stopped, nothing left on the cluster,
    # every variant recorded as cancelled
    assert returncode == 130
    assert api.running() == []
    assert api.names("workflowtemplates") == [] and api.names("sensors") == []
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["cancelled", "cancelled"]


def analytics_objects(api) -> tuple[dict, dict, list[dict]]:
    """The analytics WorkflowTemplate and Sensor the sweep made, as last seen, and its Workflows."""
    (template,) = [
        t for t in api.ever("workflowtemplates")
        if t["metadata"]["annotations"]["metaflow/branch_name"].endswith("_analytics")
    ]  # fmt: skip
    (sensor,) = api.ever("sensors")
    workflows = [
        w for w in api.ever("workflows")
        if w["metadata"]["labels"]["torchperf/variant"] == "analytics"
    ]  # fmt: skip
    return template, sensor, workflows


def sensor_started_template(sensor: dict) -> str:
    """The WorkflowTemplate the Workflows a Sensor starts are started from."""
    (trigger,) = sensor["spec"]["triggers"]
    action = trigger["template"].get("argoWorkflow") or trigger["template"]["k8s"]
    return action["source"]["resource"]["spec"]["workflowTemplateRef"]["name"]


def test_one_analytics_workflow_runs_at_a_time_through_argo_s_mutex(environ, api, tmp_path):
    from hera.workflows.models import Synchronization

    # GIVEN a sweep with the default analytics parallelism (1)
    sweep = make_sweep(tmp_path, "mutextag", [(1, 64)])
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    template, sensor, workflows = analytics_objects(api)
    # THEN the analytics template holds a mutex of the sweep's own, valid as Argo's (hera's
    # model), and needs no ConfigMap
    lock = template["spec"]["synchronization"]
    Synchronization.model_validate(lock, extra="forbid")
    assert [m["name"] for m in lock["mutexes"]] == ["torchperf-analytics-mutextag"]
    assert "semaphores" not in lock and api.ever("configmaps") == []
    # ... every Workflow the Sensor starts comes from that template, so it takes that lock
    assert sensor_started_template(sensor) == template["metadata"]["name"]
    # ... and the final analytics run goes before live ones still waiting for it
    (final,) = workflows
    assert final["spec"]["priority"] > 0


def test_more_analytics_workflows_at_once_through_a_semaphore_the_sweep_makes(
    environ, api, tmp_path
):
    from hera.workflows.models import Synchronization

    # GIVEN a sweep that allows three analytics Workflows at once
    sweep = make_sweep(tmp_path, "semtag", [(1, 64)])
    backend = ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2, analytics_parallelism=3)
    outcomes, _ = run_sweep(backend, sweep)
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    template, _, _ = analytics_objects(api)
    # THEN the template's semaphore reads its limit from a ConfigMap the sweep made, labelled
    # with its tag, that says three
    lock = template["spec"]["synchronization"]
    Synchronization.model_validate(lock, extra="forbid")
    (semaphore,) = lock["semaphores"]
    (config_map,) = api.ever("configmaps")
    assert semaphore["configMapKeyRef"]["name"] == config_map["metadata"]["name"]
    assert config_map["data"][semaphore["configMapKeyRef"]["key"]] == "3"
    assert config_map["metadata"]["labels"]["torchperf/tag"] == "semtag"
    # ... and teardown removed it with the rest
    assert api.names("configmaps") == []


def test_an_analytics_parallelism_below_one_is_refused_before_anything_runs(environ, api, tmp_path):
    sweep = make_sweep(tmp_path, "zerotag", [(1, 64)])
    backend = ArgoBackend(environ=environ, image=IMAGE, analytics_parallelism=0)
    with pytest.raises(ConfigError, match="backend.analytics_parallelism=0 must be at least 1"):
        backend.preflight(sweep)
    assert api.requests == []


def test_a_variant_the_cluster_cannot_schedule_says_why_and_times_out_never_scheduled(
    environ, api, tmp_path, capfd
):
    from torchperf.summary import SweepSummary

    # GIVEN two variants, one of which asks for more CPU than any node has free
    insufficient = "0/1 nodes are available: 1 Insufficient cpu."
    api.unschedulable["c2_n64_"] = insufficient
    sweep = make_sweep(tmp_path, "schedtag", [(1, 64), (2, 64)], timeout=3.0)
    # WHEN the sweep runs them
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    stuck, ran = outcomes["c2_n64"], outcomes["c1_n64"]
    # THEN the user heard why it did not run, once, while it waited
    told = [line for line in capfd.readouterr().err.splitlines() if insufficient in line]
    assert len(told) == 1 and told[0].startswith("c2_n64 "), told
    # ... it timed out saying it was never scheduled, and why
    assert stuck.status == "timeout", stuck
    assert stuck.message.startswith("never scheduled in 3 s") and insufficient in stuck.message
    # ... all of its timeout was spent waiting; the other waited only until its pod ran
    assert stuck.pending_seconds >= 3.0
    assert ran.status == "succeeded" and 0 <= ran.pending_seconds < 2
    # ... and the summary keeps the time spent waiting apart
    summary = SweepSummary(tmp_path / "summary", "schedtag", "argo", 2)
    for variant, _ in sweep.planned:
        summary.record(variant, outcomes[variant.id])
    entries = {v["branch"]: v for v in summary.variants}
    assert [entries[v.branch]["pending_seconds"] for v, _ in sweep.planned] == [
        ran.pending_seconds, stuck.pending_seconds
    ]  # fmt: skip


def test_time_spent_pending_is_counted_apart_from_the_run(environ, api, tmp_path):
    # GIVEN a cluster that keeps every Workflow Pending for two seconds (a queue)
    api.pending_seconds = 2.0
    sweep = make_sweep(tmp_path, "queuetag", [(1, 64)])
    # WHEN a variant runs
    outcomes, _ = run_sweep(ArgoBackend(environ=environ, image=IMAGE, poll_seconds=0.2), sweep)
    # THEN its outcome holds the time it waited
    outcome = outcomes["c1_n64"]
    assert outcome.status == "succeeded", outcome
    assert 1.5 <= outcome.pending_seconds < 3.0


def clean_command(tag: str, environ: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchperf", "clean", tag], env=environ, capture_output=True,
        text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_clean_removes_everything_a_sweep_left_and_nothing_else(environ, api, tmp_path):
    # GIVEN a sweep that left its objects behind (kept here, as a SIGKILL would leave them):
    # templates, Sensor, Workflows, its analytics semaphore's ConfigMap
    sweep = make_sweep(tmp_path, "lefttag", [(1, 64)])
    backend = ArgoBackend(
        environ=environ, image=IMAGE, poll_seconds=0.2, keep_deployments=True,
        analytics_parallelism=2,
    )  # fmt: skip
    outcomes, _ = run_sweep(backend, sweep)
    assert outcomes["c1_n64"].status == "succeeded", outcomes
    # ... a template its create made before the sweep could label it, with its Sensor
    base = "/apis/argoproj.io/v1alpha1/namespaces/default"

    def post(plural, name, labels=None, annotations=None):
        metadata = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
        assert api.handle("POST", f"{base}/{plural}", {"metadata": metadata, "spec": {}})[0] == 201

    post("workflowtemplates", "cut-short", annotations={
        "metaflow/tags": json.dumps(["lefttag"]), "metaflow/branch_name": "test.c2_n64_lefttag",
        "metaflow/sensor_name": "cut-short-sensor"})  # fmt: skip
    post("sensors", "cut-short-sensor")
    # ... and what is not the sweep's: another sweep's objects, a template of another flow that
    # a user tagged alike
    others = {("workflowtemplates", "other-sweep"), ("workflows", "other-run"),
              ("workflowtemplates", "unrelated")}  # fmt: skip
    post("workflowtemplates", "other-sweep", labels={"torchperf/tag": "othertag"})
    post("workflows", "other-run", labels={"torchperf/tag": "othertag"})
    someone = {"metaflow/tags": json.dumps(["lefttag"]), "metaflow/branch_name": "test.someone"}
    post("workflowtemplates", "unrelated", annotations=someone)
    infrastructure = {("eventbus", "default"), ("eventsources", "argo-events-webhook")}
    before = {(plural, name) for (_, plural, name) in api.objects}
    left = before - others - infrastructure
    assert {plural for plural, _ in left} == {
        "workflowtemplates", "sensors", "workflows", "configmaps"
    }  # fmt: skip
    # WHEN the user cleans the sweep up
    done = clean_command("lefttag", environ)
    # THEN everything it left is gone, each named once, and nothing else
    assert done.returncode == 0, done.stderr
    after = {(plural, name) for (_, plural, name) in api.objects}
    assert after == others | infrastructure
    kinds = {kind: plural for plural, kind in KINDS.items()}
    named = [line.removeprefix("deleted ").split() for line in done.stdout.splitlines()]
    assert sorted((kinds[kind], path.split("/")[1]) for kind, path in named) == sorted(left)
    # ... and once more, there is nothing left to clean: one line
    again = clean_command("lefttag", environ)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "nothing of sweep lefttag is left in namespace default (torchperf/tag=lefttag)"
    ]


def test_clean_refuses_a_tag_that_cannot_be_a_sweep_s_in_one_line(environ, api):
    done = clean_command("Not A Tag", environ)
    assert done.returncode == 2
    assert done.stderr.startswith("error: tag='Not A Tag' must be") and done.stderr.count("\n") == 1
    assert api.requests == []
