"""Run the sweep on Argo Workflows through Metaflow's Deployer.

Fan-out: torchperf's Hydra launcher hands the sweep the whole batch, so ``start`` deploys the
analytics flow and submits every pending variant to a pool of ``max_parallel`` threads; each
``run_variant`` then only waits for its own variant's future (one not planned, from a sweeper
that chooses values as it goes, is submitted when it comes).

The preflight compiles every manifest in a compile server (compile_server.py: Metaflow imported
once, a forked child per flow compile, as many at once as there are cores); Metaflow's Deployer
creates, with this backend's settings in ``env=``, its ``python FLOW.py ... create`` run in a
forked child of the same server (fork_launcher.py stands in for ``python``), and what it
created is read back and compared with what the preflight validated before anything is
triggered. Both start the flows by their links in ``.deploy/``, so that the code package holds
what the pods need (the two flows and ``torchperf/``; Metaflow adds itself and the card
extension) instead of a walk over the project root. Trigger, status, terminate and delete are
single Kubernetes API calls made here, the requests Metaflow itself sends, so that no variant
waits for a Python start-up to begin or end.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from torchperf import manifests
from torchperf.backends.base import ROOT, Outcome, SweepSpec, start_path
from torchperf.backends.compile_server import CompileFailed, CompileServer
from torchperf.errors import one_line
from torchperf.manifests import TAG_LABEL, WorkflowLook
from torchperf.plan import Variant, analytics_branch
from torchperf.settings import ConfigError, VariantSettings

# Links to what the pods import: the two flows and torchperf/. Metaflow packages the directory
# of the flow file it is started by (following links), and the project root holds .venv and
# the .metaflow datastore: tens of thousands of files walked for every compile.
PACKAGE_DIR = ROOT / ".deploy"
GROUP, VERSION = "argoproj.io", "v1alpha1"
RUNNING = ("Pending", "Running")
# The datastores pods can read the code package and artifacts from, with their root setting.
DATASTORE_ROOTS = {
    "s3": "DATASTORE_SYSROOT_S3",
    "gs": "DATASTORE_SYSROOT_GS",
    "azure": "DATASTORE_SYSROOT_AZURE",
}
# What compiling the analytics flow's Sensor needs (a dry run too); each says what it is for.
COMPILE_NEEDS = {
    "ARGO_EVENTS_EVENT": "the Argo Events event the analytics Sensor listens on",
    "ARGO_EVENTS_EVENT_SOURCE": "the Argo Events event source of the analytics Sensor",
    "ARGO_EVENTS_SERVICE_ACCOUNT": "the service account of the analytics Sensor",
}
# Shown in a dry run's manifests where no image is set: a deploy refuses it.
UNSET_IMAGE = "torchperf-image-not-set"


def package_path(flow: str) -> Path:
    """The path to start ``flow`` by for Argo: its link in PACKAGE_DIR, with torchperf/ linked
    beside it (see base.start_path)."""
    return start_path(PACKAGE_DIR, flow, "torchperf")


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


def datastore(config: Mapping[str, str]) -> str:
    """The datastore pods share with this machine: Metaflow's default if it is one pods can
    reach (s3, gs, azure), else S3 where its root is set; its root must be set."""
    chosen = config.get("DEFAULT_DATASTORE", "local")
    if chosen not in DATASTORE_ROOTS and config.get(DATASTORE_ROOTS["s3"]):
        chosen = "s3"
    if chosen not in DATASTORE_ROOTS:
        raise ConfigError(
            f"METAFLOW_DEFAULT_DATASTORE={chosen}: pods cannot read it; "
            f"set it to one of {', '.join(DATASTORE_ROOTS)} and its METAFLOW_DATASTORE_SYSROOT_*"
        )
    if not config.get(DATASTORE_ROOTS[chosen]):
        raise ConfigError(
            f"METAFLOW_{DATASTORE_ROOTS[chosen]} is not set "
            f"(where the pods read the code package and write results)"
        )
    return chosen


def probe_service(url: str, headers: str | None, timeout: float = 5.0) -> None:
    """The metadata service answers at ``url`` (any HTTP status but an auth refusal or a server
    error counts as reachable); ConfigError naming the setting otherwise."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url.rstrip("/") + "/ping", headers=json.loads(headers) if headers else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise ConfigError(
                f"METAFLOW_SERVICE_URL={url} refused us ({error.code}): "
                "check METAFLOW_SERVICE_HEADERS"
            ) from None
        if error.code < 500:
            return
        why = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        why = str(getattr(error, "reason", error))
    raise ConfigError(f"METAFLOW_SERVICE_URL={url} is unreachable ({why})")


@dataclasses.dataclass(frozen=True)
class ArgoSettings:
    namespace: str  # where templates and workflows live
    sensor_namespace: str  # where the analytics Sensor lives
    kubeconfig: Path | None  # None: in-cluster credentials
    datastore: str  # s3, gs or azure: the code package and the results travel through it
    env: dict  # what the Deployer's subprocesses get on top of this process's environment
    still_needed: list[str] = dataclasses.field(default_factory=list)  # dry run: for a deploy


def resolve_settings(
    environ: Mapping[str, str],
    *,
    namespace: str | None,
    image: str | None,
    guaranteed_qos: bool,
    dry_run: bool = False,
    live_analytics: bool = True,
    probe=probe_service,
) -> ArgoSettings:
    """Check the settings a deploy needs, or in a dry run only what compiling needs (listing the
    rest in ``still_needed``); raise ConfigError naming the first missing one."""
    config = metaflow_settings(environ)
    if namespace:
        config["KUBERNETES_NAMESPACE"] = namespace
    for key, why in COMPILE_NEEDS.items():
        if not config.get(key):
            raise ConfigError(f"METAFLOW_{key} is not set ({why}): add it to Metaflow's config")
    store = datastore(config)
    problems: list[str] = []  # fatal for a deploy; a dry run lists them

    def need(check):
        try:
            return check()
        except ConfigError as error:
            problems.append(str(error))
            return None

    def require(key: str, why: str) -> str:
        if not config.get(key):
            raise ConfigError(f"METAFLOW_{key} is not set ({why}): add it to Metaflow's config")
        return config[key]

    def metadata_service() -> None:
        provider = config.get("DEFAULT_METADATA", "local")
        if provider != "service":
            raise ConfigError(
                f"METAFLOW_DEFAULT_METADATA={provider}: the pods' results stay invisible without "
                "a metadata service; set it to service, with METAFLOW_SERVICE_URL"
            )
        url = require("SERVICE_URL", "the metadata service the pods and this machine share")
        if not dry_run:
            probe(url, config.get("SERVICE_HEADERS"))

    need(lambda: require("KUBERNETES_NAMESPACE", "the namespace of the sweep's workflows"))
    kubeconfig = need(lambda: kubeconfig_path(environ))
    need(metadata_service)
    if live_analytics and not config.get("ARGO_EVENTS_WEBHOOK_URL"):
        # Metaflow gives pods the internal URL, which defaults to the plain one.
        need(
            lambda: require(
                "ARGO_EVENTS_INTERNAL_WEBHOOK_URL",
                "the in-cluster webhook a successful variant's pod publishes its event to",
            )
        )
    if not image:
        problems.append(
            "backend.image is not set: build image/Dockerfile (make image IMAGE=...), push it "
            "and pass backend.image=... or set TORCHPERF_IMAGE"
        )
    if problems and not dry_run:
        raise ConfigError(problems[0])
    env = {
        "METAFLOW_KUBERNETES_NAMESPACE": config.get("KUBERNETES_NAMESPACE") or "default",
        "METAFLOW_DEFAULT_DATASTORE": store,
        "METAFLOW_KUBERNETES_CONTAINER_IMAGE": image or UNSET_IMAGE,
        # Guaranteed QoS makes the CPU limit equal the request: "N CPUs" is N, not N-or-more.
        "METAFLOW_KUBERNETES_QOS": "guaranteed" if guaranteed_qos else "burstable",
    }
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    return ArgoSettings(
        namespace=env["METAFLOW_KUBERNETES_NAMESPACE"],
        sensor_namespace=config.get("ARGO_EVENTS_SENSOR_NAMESPACE")
        or env["METAFLOW_KUBERNETES_NAMESPACE"],
        kubeconfig=kubeconfig,
        datastore=store,
        env=env,
        still_needed=problems,
    )


# -- the Kubernetes side ---------------------------------------------------------------------


# API answers worth another try: the server was busy or briefly away, nothing was changed.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


class Argo:
    """The few Argo API calls made directly: trigger, read a phase, label, terminate, delete.

    Every call is retried on a transient error (a busy or restarting API server), so that a
    blip does not fail a variant; a 404 on terminate or delete means already gone.
    """

    def __init__(self, settings: ArgoSettings, attempts: int = 5, backoff_seconds: float = 0.5):
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
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds

    def _call(self, method: str, *args, **kwargs):
        from urllib3.exceptions import HTTPError as TransportError

        for attempt in range(self.attempts):
            try:
                return getattr(self.api, method)(*args, **kwargs)
            except self.rest.ApiException as error:
                if error.status not in TRANSIENT_STATUSES or attempt == self.attempts - 1:
                    raise
            except TransportError:
                if attempt == self.attempts - 1:
                    raise
            time.sleep(self.backoff_seconds * 2**attempt)

    def _get(self, plural: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self._call(
                "get_namespaced_custom_object",
                GROUP, VERSION, namespace or self.namespace, plural, name,
            )  # fmt: skip
        except self.rest.ApiException as error:
            if error.status == 404:
                return None
            raise

    def template(self, name: str) -> dict | None:
        """The WorkflowTemplate as the API holds it (None: there is none)."""
        return self._get("workflowtemplates", name)

    def sensor(self, namespace: str, name: str) -> dict | None:
        """The Sensor as the API holds it (None: there is none), in its own namespace."""
        return self._get("sensors", name, namespace)

    def phase(self, name: str) -> tuple[str, str]:
        """(phase, message); Error counts as Failed, as Metaflow reports it."""
        status = (self._get("workflows", name) or {}).get("status") or {}
        phase = status.get("phase") or "Pending"
        return ("Failed" if phase == "Error" else phase), status.get("message") or ""

    def trigger(self, template: str, user: str, look: WorkflowLook) -> str:
        """Start a Workflow from ``template``, as `argo-workflows trigger` does; its name.

        The same request Metaflow's trigger sends, without the Python start-up that the
        Deployer's trigger costs per variant, plus what makes it readable and tidy in the UI.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workflow",
            "metadata": {
                "generateName": look.generate_name,
                "labels": look.labels,
                "annotations": {
                    **look.annotations,
                    "metaflow/triggered_by_user": json.dumps({"type": "user", "name": user}),
                },
            },
            "spec": {
                "workflowTemplateRef": {"name": template},
                "arguments": {"parameters": []},
                **look.spec,
            },
        }
        created = self._call(
            "create_namespaced_custom_object", GROUP, VERSION, self.namespace, "workflows", body
        )
        return created["metadata"]["name"]

    def dress_template(self, template: str, look: WorkflowLook) -> None:
        """Give every Workflow started from ``template`` (by a Sensor too) the look's labels,
        annotations, TTL and pod GC: Argo copies ``workflowMetadata`` onto each Workflow."""
        patch = {
            "spec": {
                "workflowMetadata": {"labels": look.labels, "annotations": look.annotations},
                **look.spec,
            }
        }
        self._call(
            "patch_namespaced_custom_object",
            GROUP, VERSION, self.namespace, "workflowtemplates", template, patch,
        )  # fmt: skip

    def terminate(self, name: str) -> None:
        body = {"spec": {"shutdown": "Terminate"}}
        try:
            self._call(
                "patch_namespaced_custom_object",
                GROUP, VERSION, self.namespace, "workflows", name, body,
            )  # fmt: skip
        except self.rest.ApiException as error:
            if error.status != 404:
                raise

    def running(self, tag: str) -> list[str]:
        """The sweep's Workflows still running, found by its label (Sensor-started included)."""
        listing = self._call(
            "list_namespaced_custom_object",
            GROUP, VERSION, self.namespace, "workflows", label_selector=f"{TAG_LABEL}={tag}",
        )  # fmt: skip
        return [
            wf["metadata"]["name"]
            for wf in listing.get("items", [])
            if (wf.get("status") or {}).get("phase", "Pending") in RUNNING
        ]

    def delete(self, plural: str, name: str, namespace: str | None = None) -> bool:
        """Delete one object; False when it was already gone."""
        try:
            self._call(
                "delete_namespaced_custom_object",
                GROUP, VERSION, namespace or self.namespace, plural, name,
            )  # fmt: skip
            return True
        except self.rest.ApiException as error:
            if error.status == 404:
                return False
            raise


# -- compiling -------------------------------------------------------------------------------


def variant_title(settings: VariantSettings, tag: str) -> tuple[str, str]:
    """What the Argo UI shows for one variant's workflow."""
    device = "" if settings.device == "cpu" else f" device={settings.device}"
    title = f"torchperf cpu={settings.cpu} tensor_dim={settings.tensor_dim}{device} ({tag})"
    description = (
        f"TorchPerfFlow: GFLOP/s squaring a {settings.tensor_dim} x {settings.tensor_dim} fp32 "
        f"matrix on {settings.cpu} CPU(s){device.replace('=', ' ')}, "
        f"{settings.measure_seconds:g} s measured. Sweep tag {tag}."
    )
    return title, description


def analytics_title(tag: str) -> tuple[str, str]:
    """What the Argo UI shows for the sweep's analytics workflows."""
    return (
        f"torchperf analytics ({tag})",
        f"SweepAnalyticsFlow: the live aggregate of sweep {tag}, after every successful variant.",
    )


@functools.cache
def _launching_manager():
    """Metaflow's SubprocessManager, with ``python`` commands started by another command line:
    the class, made on first use (Metaflow is imported only where the backend needs it)."""
    from metaflow.runner.subprocess_manager import SubprocessManager

    class LaunchingSubprocessManager(SubprocessManager):
        def __init__(self, launcher: list[str]):
            # Not SubprocessManager's own: it takes SIGINT from the sweep (or warns, off the
            # main thread); Ctrl-C reaches the launcher and the server's child by itself.
            self.commands = {}
            self.launcher = launcher

        def run_command(self, command, env=None, cwd=None, show_output=False):
            if command and command[0] == sys.executable:
                command = [*self.launcher, *command[1:]]
            return super().run_command(command, env=env, cwd=cwd, show_output=show_output)

    return LaunchingSubprocessManager


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
        image: str | None = None,
        cuda_image: str | None = None,
        namespace: str | None = None,
        poll_seconds: float = 5.0,
        workflow_ttl_seconds: int = 86400,
        pod_gc: str = "OnPodSuccess",
        flow_file: str = "torchtest.py",
        analytics_file: str = "sweep_analytics.py",
        environ: Mapping[str, str] | None = None,
    ):
        self.max_parallel = max_parallel
        self.deploy_workers = deploy_workers or os.cpu_count() or 2
        self.keep_deployments = keep_deployments
        self.guaranteed_qos = guaranteed_qos
        self.image = image
        self.cuda_image = cuda_image
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.workflow_ttl_seconds = workflow_ttl_seconds
        self.pod_gc = pod_gc
        self.flow_file = str(package_path(flow_file))
        self.analytics_file = str(package_path(analytics_file))
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
        self._analytics: str | None = None  # the analytics flow's WorkflowTemplate
        self._pool: ThreadPoolExecutor | None = None
        self._settings: ArgoSettings | None = None
        self._argo: Argo | None = None
        self._torn_down = False
        self._sweep_tag: str | None = None  # known from preflight on: the label to select by
        # One per image, from preflight to teardown: the preflight's compiles and (through
        # fork_launcher.py) the Deployer's creates run in its forked children.
        self._compilers: dict[str | None, CompileServer] = {}
        self._compilers_lock = threading.Lock()
        self._scratch: Path | None = None
        self._validated_sensor: dict | None = None
        self._analytics_template: dict | None = None

    # -- preflight ---------------------------------------------------------------------------
    def _env(self, image: str | None = None) -> dict:
        env = {**self.environ, **self._settings.env}
        if image:
            env["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] = image
        return env

    def _image(self, settings: VariantSettings) -> str | None:
        """A CUDA variant may run in an image of its own; every other step in ``image``."""
        return self.cuda_image if settings.device == "cuda" and self.cuda_image else None

    def _deployer(self, flow_file: str, branch: str, config: dict, image: str | None = None):
        from metaflow import Deployer

        # Metaflow's SubprocessManager, built in the main thread, swaps in a SIGINT handler that
        # only kills its own children: Ctrl-C would no longer reach the sweep. Keep ours.
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGINT) if main else None
        try:
            deployer = Deployer(
                flow_file,
                show_output=False,
                env=self._env(image),
                cwd=str(ROOT),
                branch=branch,
                config_value=[("config", config)],
            ).argo_workflows()
            # Its `python FLOW.py ... create` runs in a child of the compile server instead of a
            # fresh Python: Metaflow's imports are not paid again for every variant.
            deployer.spm = _launching_manager()(self._compiler(image).launcher)
            return deployer
        finally:
            if main:
                signal.signal(signal.SIGINT, handler)

    def _variant_config(self, sweep: SweepSpec, settings: VariantSettings) -> dict:
        # A file lock only serializes work on one machine; pods have their own CPUs.
        return dataclasses.replace(
            settings, tag=sweep.tag, event=sweep.event, turn=None
        ).as_config()

    def _create_kwargs(self, sweep: SweepSpec, settings: VariantSettings) -> dict:
        title, description = variant_title(settings, sweep.tag)
        return {"tags": [sweep.tag], "workflow_title": title, "workflow_description": description}

    def _analytics_kwargs(self, sweep: SweepSpec) -> dict:
        title, description = analytics_title(sweep.tag)
        return {"workflow_title": title, "workflow_description": description}

    def _analytics_look(self, sweep: SweepSpec) -> WorkflowLook:
        return self._look(sweep, "analytics", analytics_title(sweep.tag))

    def _look(self, sweep: SweepSpec, variant: str, title: tuple[str, str]) -> WorkflowLook:
        return manifests.workflow_look(
            sweep.tag, variant, *title, ttl_seconds=self.workflow_ttl_seconds, pod_gc=self.pod_gc
        )

    def _compiler(self, image: str | None) -> CompileServer:
        with self._compilers_lock:
            if image not in self._compilers:
                self._compilers[image] = CompileServer(self._env(image), ROOT, self._scratch)
            return self._compilers[image]

    def _close_compilers(self) -> None:
        with self._compilers_lock:
            servers, self._compilers = list(self._compilers.values()), {}
        for server in servers:
            server.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _compile(self, flow_file: str, branch: str, config: dict, create: dict, image=None):
        """What ``Deployer(flow_file, branch=, config_value=).create(only_json=True, **create)``
        compiles, in a child of the compile server: both manifests."""
        options = [
            "--quiet", "--no-pylint", "--datastore", self._settings.datastore, "--branch", branch,
            "--config-value", "config", json.dumps(config),
            "argo-workflows", "create", "--only-json",
            *(f"--tag={tag}" for tag in create.get("tags", ())),
            *(f"--{key.replace('_', '-')}={value}"
              for key, value in create.items() if key != "tags"),
        ]  # fmt: skip
        with self._deploy_slots:
            return self._compiler(image).compile(flow_file, options)

    def _compile_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings):
        try:
            compiled = self._compile(
                self.flow_file,
                variant.branch,
                self._variant_config(sweep, settings),
                self._create_kwargs(sweep, settings),
                self._image(settings),
            )
        except CompileFailed as error:
            why = one_line(error)
            raise ConfigError(f"variant {variant.id} does not compile: {why}") from None
        template = compiled["workflow_template"]
        manifests.validate_workflow_template(template)
        problems = manifests.variant_problems(
            template, settings, variant.branch, sweep.tag, guaranteed_qos=self.guaranteed_qos
        )
        if problems:
            raise ConfigError(f"variant {variant.id}: {problems[0]}")
        return Planned(variant, settings, template)

    def _compile_analytics(self, sweep: SweepSpec) -> dict:
        branch = analytics_branch(sweep.tag)
        try:
            compiled = self._compile(
                self.analytics_file,
                branch,
                sweep.analytics_config(),
                {"tags": [sweep.tag], **self._analytics_kwargs(sweep)},
            )
        except CompileFailed as error:
            raise ConfigError(f"SweepAnalyticsFlow does not compile: {one_line(error)}") from None
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
            guaranteed_qos=self.guaranteed_qos, dry_run=sweep.dry_run,
            live_analytics=sweep.live_analytics,
        )  # fmt: skip
        self._sweep_tag = sweep.tag
        out = Path(sweep.sweep_dir) / "manifests"
        self._scratch = Path(tempfile.mkdtemp(prefix="torchperf-compile-"))
        try:
            self._compiler(None)  # starts while hera's models import here (a second each)
            manifests.import_models()
            with ThreadPoolExecutor(self.deploy_workers) as pool:
                analytics = pool.submit(self._compile_analytics, sweep)
                compiled = [
                    pool.submit(self._compile_variant, sweep, v, s) for v, s in sweep.planned
                ]
                planned = [future.result() for future in compiled]
                analytics = analytics.result()
        except BaseException:
            self._close_compilers()
            raise
        if sweep.dry_run:
            self._close_compilers()
        self._analytics_template = analytics["workflow_template"]
        self._validated_sensor = analytics["sensor"]
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
        for why in self._settings.still_needed:
            print(f"dry run: a deploy also needs: {why}", file=sys.stderr)

    # -- running -----------------------------------------------------------------------------
    def _start(self, sweep: SweepSpec) -> None:
        """Deploy the analytics flow, then put every planned variant in flight."""
        self._argo = Argo(self._settings)
        atexit.register(self._teardown)  # a last resort if finish is never reached
        with self._deploy_slots:
            deployed = self._deployer(
                self.analytics_file, analytics_branch(sweep.tag), sweep.analytics_config()
            ).create(tags=[sweep.tag], **self._analytics_kwargs(sweep))
        self._analytics = deployed.name
        self._templates.add(deployed.name)
        why = manifests.deployed_difference(
            self._analytics_template, self._argo.template(deployed.name)
        ) or manifests.deployed_difference(self._validated_sensor, self._argo.sensor(*self._sensor))
        if why:
            raise RuntimeError(f"SweepAnalyticsFlow as deployed is not what was validated: {why}")
        # Before any event: the Sensor's Workflows take their labels and TTL from the template.
        self._argo.dress_template(deployed.name, self._analytics_look(sweep))
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="argo-variant")
        # What already succeeded under a resumed tag is not pending: it does not run again.
        # (A spec without a pending list, as the backend's own tests build, runs every one.)
        pending = {variant.id for variant, _ in sweep.pending} or set(self._planned)
        for item in self._planned.values():
            if item.variant.id not in pending:
                continue
            self._futures[item.variant.id] = self._pool.submit(
                self._run,
                sweep,
                item.variant,
                item.settings,
                self._variant_deployer(sweep, item.variant, item.settings),
            )

    def start(self, sweep: SweepSpec) -> None:
        """The batch is known: deploy and put every pending variant in flight at once."""
        if sweep.pending and not sweep.dry_run:
            with self._lock:
                self._start(sweep)

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        if sweep.dry_run:
            return Outcome("skipped", message="dry run: manifests written, nothing deployed")
        with self._lock:
            if self._pool is None and not self._cancelled.is_set():
                self._start(sweep)
            future = self._futures.get(variant.id)
            if future is None and self._pool is not None and not self._cancelled.is_set():
                deployer = self._variant_deployer(sweep, variant, settings)
                future = self._futures[variant.id] = self._pool.submit(
                    self._run, sweep, variant, settings, deployer
                )
        if future is None or future.cancelled():
            return Outcome("cancelled", message="the sweep was interrupted")
        try:
            return future.result()
        except Exception as error:  # cancelled futures raise CancelledError
            return Outcome("cancelled", message=one_line(error) or "the sweep was interrupted")

    def _variant_deployer(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings):
        """The variant's Deployer, made where the variant is put in flight (the main thread):
        made in a pool thread, Metaflow's Deployer warns that it cannot take SIGINT there."""
        return self._deployer(
            self.flow_file,
            variant.branch,
            self._variant_config(sweep, settings),
            self._image(settings),
        )

    def _run(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings, deployer):
        try:
            return self._deploy_and_wait(sweep, variant, settings, deployer)
        except Exception as error:
            if self._cancelled.is_set():
                return Outcome("cancelled", message="the sweep was interrupted")
            return Outcome("failed", message=f"{variant.id}: {one_line(error)}")

    def _deploy_and_wait(
        self, sweep: SweepSpec, variant: Variant, settings: VariantSettings, deployer
    ):
        if self._cancelled.is_set():
            return Outcome("cancelled", message="the sweep was interrupted")
        with self._deploy_slots:
            deployed = deployer.create(**self._create_kwargs(sweep, settings))
            self._templates.add(deployed.name)
        try:
            if self._cancelled.is_set():
                return Outcome("cancelled", message="the sweep was interrupted")
            why = self._deployed_problem(sweep, variant, settings, deployed.name)
            if why:
                return Outcome("failed", message=f"{variant.id} as deployed: {why}")
            look = self._look(sweep, variant.id, variant_title(settings, sweep.tag))
            workflow = self._argo.trigger(deployed.name, self._user, look)
            # Metaflow names an Argo run after its workflow.
            return self._wait(sweep, variant, workflow, f"{deployed.flow_name}/argo-{workflow}")
        finally:
            if not self.keep_deployments:
                self._argo.delete("workflowtemplates", deployed.name)

    def _deployed_problem(self, sweep, variant: Variant, settings: VariantSettings, name: str):
        """What is wrong with the template the API received, before anything runs from it: any
        difference from the one the preflight validated, or (for a variant the preflight never
        saw, from a sweeper that chooses as it goes) any check it fails."""
        deployed = self._argo.template(name)
        planned = self._planned.get(variant.id)
        if planned is not None:
            why = manifests.deployed_difference(planned.template, deployed)
            return why and f"differs from the validated template at {why}"
        if deployed is None:
            return "nothing was deployed under that name"
        try:
            manifests.validate_workflow_template(deployed)
        except ConfigError as error:
            return str(error)
        problems = manifests.variant_problems(
            deployed, settings, variant.branch, sweep.tag, guaranteed_qos=self.guaranteed_qos
        )
        return problems[0] if problems else None

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
        # The variant's end step has published its event from inside the cluster already.
        gflops, why = _gflops(run)
        return Outcome("succeeded", run=run, gflops=gflops, message=why)

    def cancel(self) -> None:
        """Stop everything now: queued variants never start, no event starts another analytics
        run (the Sensor goes first), running workflows are terminated."""
        self._cancelled.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._stop_running()

    def _stop_running(self) -> None:
        if self._argo is None:
            return
        if self._sensor and not self.keep_deployments and self._sweep_tag:
            self._argo.delete("sensors", self._sensor[1], self._sensor[0])
        for workflow in self._argo.running(self._sweep_tag):
            self._argo.terminate(workflow)

    # -- the end -----------------------------------------------------------------------------
    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        """The final analytics run (unless interrupted), then teardown; its run pathspec."""
        if sweep.dry_run or self._argo is None:
            self._close_compilers()
            return None
        run = None
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=interrupted)
            if not interrupted and not self._cancelled.is_set():
                workflow = self._argo.trigger(
                    self._analytics, self._user, self._analytics_look(sweep)
                )
                run = f"SweepAnalyticsFlow/argo-{workflow}"
                deadline = time.monotonic() + sweep.variant_timeout_seconds
                while (phase := self._argo.phase(workflow))[0] in RUNNING:
                    if time.monotonic() > deadline or self._cancelled.wait(self.poll_seconds):
                        break
                if phase[0] != "Succeeded":
                    print(f"warning: final analytics run {run} ended {phase[0]}: {phase[1]}",
                          file=sys.stderr)  # fmt: skip
        finally:
            self._teardown()
        return run

    def _teardown(self) -> None:
        """Terminate what still runs and delete every template and the Sensor, unless kept."""
        if self._torn_down or self._argo is None:
            self._close_compilers()
            return
        self._torn_down = True
        try:
            self._stop_running()
            if self.keep_deployments:
                return
            for template in sorted(self._templates):
                self._argo.delete("workflowtemplates", template)
        finally:
            self._close_compilers()


def _gflops(run: str) -> tuple[float | None, str | None]:
    """The figure the variant's pod measured, read back through the metadata service; or None
    and why not (the result stays safe in Metaflow)."""
    try:
        from metaflow import Run

        return float(Run(run, _namespace_check=False).data.result["gflops"]), None
    except Exception as error:  # noqa: BLE001 - a figure we cannot read is not a failed variant
        return None, f"succeeded, but its result is unreadable here: {one_line(error)}"
