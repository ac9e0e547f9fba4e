"""Run the sweep on Argo Workflows through Metaflow's Deployer.

Fan-out lives here, not in Hydra's launcher: the first ``run_variant`` deploys the analytics
flow and submits every planned variant to a pool of ``max_parallel`` threads; each later
``run_variant`` only waits for its own variant's future. Hydra's basic launcher may then call
``run_variant`` one job at a time while up to ``max_parallel`` variants are in flight. (The joblib
launcher cannot do this: its process workers would each own a backend, and its threading backend
shares Hydra's global job config between threads.)

Metaflow's Deployer compiles and creates (one subprocess each, with this backend's settings in
``env=``); trigger, status, terminate and delete are single Kubernetes API calls made here, the
requests Metaflow itself sends, so that no variant waits for a Python start-up to begin or end.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from torchperf import events, manifests
from torchperf.backends.base import Outcome, SweepSpec
from torchperf.plan import Variant, analytics_branch
from torchperf.settings import ConfigError, VariantSettings

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "argoproj.io", "v1alpha1"
RUNNING = ("Pending", "Running")
# Metaflow settings a deploy cannot do without; each names what it is for when missing.
REQUIRED = {
    "KUBERNETES_NAMESPACE": "the namespace that holds the sweep's templates and workflows",
    "DATASTORE_SYSROOT_S3": "the S3 datastore the pods read the code package from",
    "ARGO_EVENTS_EVENT": "the Argo Events event the analytics Sensor listens on",
    "ARGO_EVENTS_EVENT_SOURCE": "the Argo Events event source of the analytics Sensor",
    "ARGO_EVENTS_SERVICE_ACCOUNT": "the service account of the analytics Sensor",
    "ARGO_EVENTS_WEBHOOK_URL": "where the sweep publishes the event of a successful variant",
}


# -- settings -------------------------------------------------------------------------------


def metaflow_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Metaflow's configuration as Metaflow resolves it: the profile's file, then METAFLOW_* env."""
    home = environ.get("METAFLOW_HOME", "~/.metaflowconfig")
    profile = environ.get("METAFLOW_PROFILE")
    path = Path(home, f"config_{profile}.json" if profile else "config.json").expanduser()
    values = json.loads(path.read_text()) if path.exists() else {}
    settings = {k.removeprefix("METAFLOW_"): str(v) for k, v in values.items() if v is not None}
    settings.update(
        {k.removeprefix("METAFLOW_"): v for k, v in environ.items() if k[:9] == "METAFLOW_"}
    )
    return settings


def kubeconfig_path(environ: Mapping[str, str]) -> Path | None:
    """The kubeconfig the kubernetes client would load, or None inside a cluster."""
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    first = (environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
    path = Path(first or "~/.kube/config").expanduser()
    if not path.is_file():
        raise ConfigError(f"kubeconfig {path} not found: set KUBECONFIG or create ~/.kube/config")
    return path


@dataclasses.dataclass(frozen=True)
class ArgoSettings:
    namespace: str  # where templates and workflows live
    sensor_namespace: str  # where the analytics Sensor lives
    kubeconfig: Path | None  # None: in-cluster credentials
    webhook_url: str  # Argo Events webhook the sweep publishes to
    env: dict  # what the Deployer's subprocesses get on top of this process's environment


def resolve_settings(
    environ: Mapping[str, str], *, namespace: str | None, image: str, guaranteed_qos: bool
) -> ArgoSettings:
    """Check the Metaflow settings a deploy needs; raise ConfigError naming the first missing."""
    config = metaflow_settings(environ)
    if namespace:
        config["KUBERNETES_NAMESPACE"] = namespace
    for key, why in REQUIRED.items():
        if not config.get(key):
            raise ConfigError(f"METAFLOW_{key} is not set ({why}): add it to Metaflow's config")
    kubeconfig = kubeconfig_path(environ)
    env = {
        "METAFLOW_KUBERNETES_NAMESPACE": config["KUBERNETES_NAMESPACE"],
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_KUBERNETES_CONTAINER_IMAGE": image,
        # Guaranteed QoS makes the CPU limit equal the request: "N CPUs" is N, not N-or-more.
        "METAFLOW_KUBERNETES_QOS": "guaranteed" if guaranteed_qos else "burstable",
    }
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    return ArgoSettings(
        namespace=config["KUBERNETES_NAMESPACE"],
        sensor_namespace=config.get("ARGO_EVENTS_SENSOR_NAMESPACE")
        or config["KUBERNETES_NAMESPACE"],
        kubeconfig=kubeconfig,
        webhook_url=config["ARGO_EVENTS_WEBHOOK_URL"],
        env=env,
    )


# -- the Kubernetes side ---------------------------------------------------------------------


class Argo:
    """The few Argo API calls made directly: read a phase, terminate, delete (404 is fine)."""

    def __init__(self, settings: ArgoSettings):
        from kubernetes import client, config

        if settings.kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
        else:
            api_client = config.new_client_from_config(config_file=str(settings.kubeconfig))
        self.api = client.CustomObjectsApi(api_client)
        self.rest = client.rest
        self.namespace = settings.namespace

    def workflow(self, name: str) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workflows", name
            )
        except self.rest.ApiException as error:
            if error.status == 404:
                return None
            raise

    def phase(self, name: str) -> tuple[str, str]:
        """(phase, message); Error counts as Failed, as Metaflow reports it."""
        status = (self.workflow(name) or {}).get("status") or {}
        phase = status.get("phase") or "Pending"
        return ("Failed" if phase == "Error" else phase), status.get("message") or ""

    def trigger(self, template: str, user: str) -> str:
        """Start a Workflow from ``template``, as `argo-workflows trigger` does; its name.

        The same request Metaflow's trigger sends, without the Python start-up that the
        Deployer's trigger costs per variant.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workflow",
            "metadata": {
                "generateName": f"{template}-",
                "annotations": {
                    "metaflow/triggered_by_user": json.dumps({"type": "user", "name": user})
                },
            },
            "spec": {"workflowTemplateRef": {"name": template}, "arguments": {"parameters": []}},
        }
        created = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workflows", body
        )
        return created["metadata"]["name"]

    def terminate(self, name: str) -> None:
        body = {"spec": {"shutdown": "Terminate"}}
        try:
            self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workflows", name, body
            )
        except self.rest.ApiException as error:
            if error.status != 404:
                raise

    def running_from(self, templates: set[str]) -> list[str]:
        """Workflows still running from any of these templates (sensor-started ones included)."""
        listing = self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workflows"
        )
        return [
            wf["metadata"]["name"]
            for wf in listing.get("items", [])
            if (wf.get("spec", {}).get("workflowTemplateRef") or {}).get("name") in templates
            and (wf.get("status") or {}).get("phase", "Pending") in RUNNING
        ]

    def delete(self, plural: str, name: str, namespace: str | None = None) -> bool:
        """Delete one object; False when it was already gone."""
        try:
            self.api.delete_namespaced_custom_object(
                GROUP, VERSION, namespace or self.namespace, plural, name
            )
            return True
        except self.rest.ApiException as error:
            if error.status == 404:
                return False
            raise


# -- compiling -------------------------------------------------------------------------------


def variant_title(settings: VariantSettings, tag: str) -> tuple[str, str]:
    """What the Argo UI shows for one variant's workflow."""
    title = f"torchperf cpu={settings.cpu} tensor_dim={settings.tensor_dim} ({tag})"
    description = (
        f"TorchPerfFlow: GFLOP/s squaring a {settings.tensor_dim} x {settings.tensor_dim} fp32 "
        f"matrix on {settings.cpu} CPU(s), {settings.measure_seconds:g} s measured. "
        f"Sweep tag {tag}."
    )
    return title, description


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


@dataclasses.dataclass
class Planned:
    """One variant as compiled in preflight."""

    variant: Variant
    settings: VariantSettings
    template: dict


class ArgoBackend:
    """The Backend protocol on Argo Workflows (see torchperf/backends/base.py)."""

    def __init__(
        self,
        name: str = "argo",
        max_parallel: int = 64,
        deploy_workers: int | None = None,
        keep_deployments: bool = False,
        guaranteed_qos: bool = True,
        image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        namespace: str | None = None,
        poll_seconds: float = 5.0,
        flow_file: str = "torchtest.py",
        analytics_file: str = "sweep_analytics.py",
        environ: Mapping[str, str] | None = None,
    ):
        self.max_parallel = max_parallel
        self.deploy_workers = deploy_workers or os.cpu_count() or 2
        self.keep_deployments = keep_deployments
        self.guaranteed_qos = guaranteed_qos
        self.image = image
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.flow_file = str(ROOT / flow_file)
        self.analytics_file = str(ROOT / analytics_file)
        self.environ = dict(os.environ if environ is None else environ)
        # Who triggered the workflows, as Metaflow records it.
        self._user = self.environ.get("METAFLOW_USER") or self.environ.get("USER") or "torchperf"
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._deploy_slots = threading.Semaphore(self.deploy_workers)
        self._planned: dict[str, Planned] = {}
        self._futures: dict[str, Future] = {}
        self._templates: set[str] = set()  # every WorkflowTemplate this sweep may have created
        self._sensor: tuple[str, str] | None = None  # (namespace, name) of the analytics Sensor
        self._analytics = None  # the analytics flow's DeployedFlow
        self._pool: ThreadPoolExecutor | None = None
        self._settings: ArgoSettings | None = None
        self._argo: Argo | None = None
        self._torn_down = False

    # -- preflight ---------------------------------------------------------------------------
    def _env(self) -> dict:
        return {**self.environ, **self._settings.env}

    def _deployer(self, flow_file: str, branch: str, config: dict):
        from metaflow import Deployer

        # Metaflow's SubprocessManager, built in the main thread, swaps in a SIGINT handler that
        # only kills its own children: Ctrl-C would no longer reach the sweep. Keep ours.
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGINT) if main else None
        try:
            return Deployer(
                flow_file,
                show_output=False,
                env=self._env(),
                cwd=str(ROOT),
                branch=branch,
                config_value=[("config", config)],
            ).argo_workflows()
        finally:
            if main:
                signal.signal(signal.SIGINT, handler)

    def _variant_config(self, sweep: SweepSpec, settings: VariantSettings) -> dict:
        # A file lock only serializes work on one machine; pods have their own CPUs.
        return dataclasses.replace(
            settings, tag=sweep.tag, event=sweep.event, cores_lock=None
        ).as_config()

    def _create_kwargs(self, sweep: SweepSpec, settings: VariantSettings) -> dict:
        title, description = variant_title(settings, sweep.tag)
        return {"tags": [sweep.tag], "workflow_title": title, "workflow_description": description}

    def _compile_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings):
        with self._deploy_slots:
            deployer = self._deployer(
                self.flow_file, variant.branch, self._variant_config(sweep, settings)
            )
            try:
                created = deployer.create(only_json=True, **self._create_kwargs(sweep, settings))
            except Exception as error:
                why = _one_line(error)
                raise ConfigError(f"variant {variant.id} does not compile: {why}") from None
        template = created.workflow_template
        manifests.validate_workflow_template(template)
        problems = manifests.variant_problems(
            template, settings, variant.branch, sweep.tag, guaranteed_qos=self.guaranteed_qos
        )
        if problems:
            raise ConfigError(f"variant {variant.id}: {problems[0]}")
        return Planned(variant, settings, template)

    def _analytics_config(self, sweep: SweepSpec) -> dict:
        return {"tag": sweep.tag, "event": sweep.event, "planned": len(sweep.planned) or None}

    def _compile_analytics(self, sweep: SweepSpec) -> dict:
        branch = analytics_branch(sweep.tag)
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch, "analytics.json")
            command = [
                sys.executable, "-m", "torchperf.backends.argo_compile", str(out),
                self.analytics_file, "--quiet", "--datastore", "s3", "--branch", branch,
                "--config-value", "config", json.dumps(self._analytics_config(sweep)),
                "argo-workflows", "create", "--only-json", "--tag", sweep.tag,
            ]  # fmt: skip
            done = subprocess.run(
                command, env=self._env(), cwd=ROOT, capture_output=True, text=True
            )
            if done.returncode or not out.exists():
                why = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
                raise ConfigError(f"SweepAnalyticsFlow does not compile: {why}")
            compiled = json.loads(out.read_text())
        manifests.validate_workflow_template(compiled["workflow_template"])
        manifests.validate_sensor(compiled["sensor"])
        problems = manifests.sensor_problems(compiled["sensor"], sweep.event, branch)
        if problems:
            raise ConfigError(f"SweepAnalyticsFlow: {problems[0]}")
        return compiled

    def preflight(self, sweep: SweepSpec) -> None:
        """Settings, then every manifest compiled, validated, checked and written; no cluster."""
        self._settings = resolve_settings(
            self.environ, namespace=self.namespace, image=self.image,
            guaranteed_qos=self.guaranteed_qos,
        )  # fmt: skip
        out = Path(sweep.sweep_dir) / "manifests"
        with ThreadPoolExecutor(self.deploy_workers) as pool:
            analytics = pool.submit(self._compile_analytics, sweep)
            compiled = [pool.submit(self._compile_variant, sweep, v, s) for v, s in sweep.planned]
            planned = [future.result() for future in compiled]
            analytics = analytics.result()
        for item in planned:
            self._planned[item.variant.id] = item
            self._templates.add(item.template["metadata"]["name"])
            manifests.write_manifest(
                out / f"{item.variant.id}.workflowtemplate.json", item.template
            )
        self._templates.add(analytics["workflow_template"]["metadata"]["name"])
        sensor = analytics["sensor"]["metadata"]
        self._sensor = (sensor.get("namespace") or self._settings.sensor_namespace, sensor["name"])
        manifests.write_manifest(
            out / "analytics.workflowtemplate.json", analytics["workflow_template"]
        )
        manifests.write_manifest(out / "analytics.sensor.json", analytics["sensor"])

    # -- running -----------------------------------------------------------------------------
    def _start(self, sweep: SweepSpec) -> None:
        """Deploy the analytics flow, then put every planned variant in flight."""
        self._argo = Argo(self._settings)
        atexit.register(self._teardown)  # a last resort if finish is never reached
        with self._deploy_slots:
            self._analytics = self._deployer(
                self.analytics_file, analytics_branch(sweep.tag), self._analytics_config(sweep)
            ).create(tags=[sweep.tag])
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="argo-variant")
        for item in self._planned.values():
            self._futures[item.variant.id] = self._pool.submit(
                self._run, sweep, item.variant, item.settings
            )

    def start(self, sweep: SweepSpec) -> None:
        """Nothing ahead of the jobs: the first one deploys and puts every variant in flight."""

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        if sweep.dry_run:
            return Outcome("skipped", message="dry run: manifests written, nothing deployed")
        with self._lock:
            if self._pool is None and not self._cancelled.is_set():
                self._start(sweep)
            future = self._futures.get(variant.id)
            if future is None and self._pool is not None and not self._cancelled.is_set():
                future = self._futures[variant.id] = self._pool.submit(
                    self._run, sweep, variant, settings
                )
        if future is None or future.cancelled():
            return Outcome("cancelled", message="the sweep was interrupted")
        try:
            return future.result()
        except Exception as error:  # cancelled futures raise CancelledError
            return Outcome("cancelled", message=_one_line(error) or "the sweep was interrupted")

    def _run(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        try:
            return self._deploy_and_wait(sweep, variant, settings)
        except Exception as error:
            if self._cancelled.is_set():
                return Outcome("cancelled", message="the sweep was interrupted")
            return Outcome("failed", message=f"{variant.id}: {_one_line(error)}")

    def _deploy_and_wait(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings):
        if self._cancelled.is_set():
            return Outcome("cancelled", message="the sweep was interrupted")
        with self._deploy_slots:
            deployed = self._deployer(
                self.flow_file, variant.branch, self._variant_config(sweep, settings)
            ).create(**self._create_kwargs(sweep, settings))
            self._templates.add(deployed.name)
        try:
            if self._cancelled.is_set():
                return Outcome("cancelled", message="the sweep was interrupted")
            workflow = self._argo.trigger(deployed.name, self._user)
            # Metaflow names an Argo run after its workflow.
            return self._wait(sweep, variant, workflow, f"{deployed.flow_name}/argo-{workflow}")
        finally:
            if not self.keep_deployments:
                self._argo.delete("workflowtemplates", deployed.name)

    def _wait(self, sweep: SweepSpec, variant: Variant, workflow: str, run: str) -> Outcome:
        deadline = time.monotonic() + sweep.variant_timeout_seconds
        while True:
            phase, message = self._argo.phase(workflow)
            if phase not in RUNNING:
                break
            if self._cancelled.is_set():
                self._argo.terminate(workflow)
                return Outcome("cancelled", run=run, message="the sweep was interrupted")
            if time.monotonic() > deadline:
                self._argo.terminate(workflow)
                return Outcome(
                    "timeout",
                    run=run,
                    message=f"still {phase} after {sweep.variant_timeout_seconds:g} s",
                )
            self._cancelled.wait(self.poll_seconds)
        if phase != "Succeeded":
            return Outcome("failed", run=run, message=f"{phase}: {message}"[:300])
        if sweep.live_analytics:
            events.publish(
                sweep.event, self._settings.webhook_url, events.payload(sweep.tag, run, variant.id)
            )
        return Outcome("succeeded", run=run, gflops=_gflops(run))

    def cancel(self) -> None:
        """Stop everything now: queued variants never start, running workflows are terminated."""
        self._cancelled.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._argo is not None:
            for workflow in self._argo.running_from(self._templates):
                self._argo.terminate(workflow)

    # -- the end -----------------------------------------------------------------------------
    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        """The final analytics run (unless interrupted), then teardown; its run pathspec."""
        if sweep.dry_run or self._argo is None:
            return None
        run = None
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=interrupted)
            if not interrupted and not self._cancelled.is_set():
                triggered = self._analytics.trigger()
                run = triggered.pathspec
                workflow = run.split("/", 1)[1].removeprefix("argo-")
                deadline = time.monotonic() + sweep.variant_timeout_seconds
                while self._argo.phase(workflow)[0] in RUNNING and time.monotonic() < deadline:
                    if self._cancelled.wait(self.poll_seconds):
                        break
        finally:
            self._teardown()
        return run

    def _teardown(self) -> None:
        """Terminate what still runs and delete every template and the Sensor, unless kept."""
        if self._torn_down or self._argo is None:
            return
        self._torn_down = True
        for workflow in self._argo.running_from(self._templates):
            self._argo.terminate(workflow)
        if self.keep_deployments:
            return
        if self._sensor:
            self._argo.delete("sensors", self._sensor[1], self._sensor[0])
        for template in sorted(self._templates):
            self._argo.delete("workflowtemplates", template)


def _gflops(run: str) -> float | None:
    """The measured figure, where this process can read the run (a metadata service)."""
    try:
        from metaflow import Run

        return float(Run(run, _namespace_check=False).data.result["gflops"])
    except Exception:
        return None
