"""Run the sweep on Argo Workflows through Metaflow's Deployer.

Fan-out: torchperf's Hydra launcher hands the sweep the whole batch, so ``start`` deploys the
analytics flow and submits every pending variant to a pool of ``max_parallel`` threads; each
``run_variant`` then only waits for its own variant's future (one not planned, from a sweeper
that chooses values as it goes, is submitted when it comes).

A variant's life: Metaflow's public ``Deployer(...).argo_workflows().create(...)`` creates its
WorkflowTemplate (in a worker process: deploy.py); what the API then holds is checked
against our invariants and hera's models; a Workflow is started from it, watched, and the
template deleted once it has ended. Trigger, status, terminate and delete are single
Kubernetes API calls made here, the requests Metaflow itself sends, so that no variant waits
for a Python start-up to begin or end. A dry run compiles every template with
``create(only_json=True)`` and checks it the same way, with nothing sent to Kubernetes.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from torchperf.backends.argo import manifests
from torchperf.backends.argo.api import (
    PATIENCE_SECONDS,
    REQUEST_SECONDS,
    TEARDOWN_SECONDS,
    Argo,
    Phase,
    WorkflowState,
)
from torchperf.backends.argo.clean import of_sweep
from torchperf.backends.argo.deploy import (
    CREATE_GRACE_SECONDS,
    Create,
    Created,
    DeployFailed,
    DeployPool,
)
from torchperf.backends.argo.manifests import TAG_LABEL, WorkflowLook, sensor_not_deployed
from torchperf.backends.argo.settings import ArgoSettings, metaflow_settings, resolve_settings
from torchperf.backends.base import ROOT, Outcome, Status, SweepSpec, snapshot_flows
from torchperf.backends.datastore_check import check_datastore
from torchperf.errors import one_line
from torchperf.plan import Variant, analytics_branch
from torchperf.settings import ConfigError, VariantSettings, parse_variant_config

# How long a live-analytics sweep waits for Argo Events to deploy its new Sensor.
SENSOR_WAIT_SECONDS = 120.0
# The final analytics run's priority: Argo's lock queue lets it go before live ones waiting.
FINAL_ANALYTICS_PRIORITY = 1
# The reasons a Workflow waits that the user must hear of (Argo's node messages): the cluster
# cannot place its pod, or cannot pull its image.
WAITING_TROUBLE = ("Unschedulable", "ErrImagePull", "ImagePullBackOff", "InvalidImageName")
# How long teardown waits for the deleted Sensor's pod to end (its grace period, 30 s by default,
# is what a pod that ignores SIGTERM takes).
SENSOR_GONE_SECONDS = 45.0
# Preflight's API calls give up sooner than the sweep's: a wrong address is one line in seconds.
PREFLIGHT_PATIENCE_SECONDS = 20.0


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


class ArgoBackend:
    """The Backend protocol on Argo Workflows (see torchperf/backends/base.py)."""

    def __init__(
        self,
        name: str = "argo",
        max_parallel: int = 64,
        deploy_workers: int | None = None,
        keep_deployments: bool = False,
        guaranteed_qos: bool = True,
        run_as_user: int | None = 1000,
        image: str | None = None,
        cuda_image: str | None = None,
        namespace: str | None = None,
        poll_seconds: float = 5.0,
        workflow_ttl_seconds: int = 86400,
        pod_gc: str = "OnPodSuccess",
        flow_file: str = "torchtest.py",
        analytics_file: str = "sweep_analytics.py",
        api_request_seconds: float = REQUEST_SECONDS,
        api_patience_seconds: float = PATIENCE_SECONDS,
        sensor_wait_seconds: float = SENSOR_WAIT_SECONDS,
        analytics_parallelism: int = 1,
        environ: Mapping[str, str] | None = None,
    ):
        self.max_parallel = max_parallel
        self.deploy_workers = deploy_workers or os.cpu_count() or 2
        self.keep_deployments = keep_deployments
        self.guaranteed_qos = guaranteed_qos
        self.run_as_user = run_as_user
        self.image = image
        self.cuda_image = cuda_image
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.workflow_ttl_seconds = workflow_ttl_seconds
        self.pod_gc = pod_gc
        self.api_request_seconds = api_request_seconds
        self.api_patience_seconds = api_patience_seconds
        self.sensor_wait_seconds = sensor_wait_seconds
        self.analytics_parallelism = analytics_parallelism
        self._flow_names = (flow_file, analytics_file)  # relative to the project root
        # The flows as the sweep's creates start them: in the sweep's copy of the code (preflight).
        self.flow_file = self.analytics_file = ""
        self.environ = dict(os.environ if environ is None else environ)
        # Who triggered the workflows, as Metaflow records it.
        self._user = self.environ.get("METAFLOW_USER") or self.environ.get("USER") or "torchperf"
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._futures: dict[str, Future] = {}
        self._templates: set[str] = set()  # every WorkflowTemplate this sweep may have created
        self._sensor: tuple[str, str] | None = None  # (namespace, name) of the analytics Sensor
        self._ending_sensor: tuple[str, str] | None = None  # deleted, its pod maybe still up
        self._analytics: str | None = None  # the analytics flow's WorkflowTemplate
        self._config_map: str | None = None  # the analytics semaphore's limit, where made
        self._pool: ThreadPoolExecutor | None = None  # one thread per variant in flight
        self._deploys: DeployPool | None = None  # the processes Metaflow's creates run in
        self._settings: ArgoSettings | None = None
        self._argo: Argo | None = None
        self._torn_down = False
        self._sweep_tag: str | None = None  # known from preflight on: the label to select by
        self._manifests: Path | None = None  # where what was compiled or deployed is written
        # This command's attempt at the sweep: its Workflows' names and a label (a resumed
        # sweep runs a variant again under a new name).
        self._attempt = secrets.token_hex(3)
        self._leftovers: list[str] = []  # what teardown could not do, one line each
        self._signalled = False  # a signal came during a teardown step: raised once it is done

    # -- creates -----------------------------------------------------------------------------
    def _env(self, image: str | None = None) -> dict:
        env = {**self.environ, **self._settings.env}
        if image:
            env["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] = image
        return env

    def _image(self, settings: VariantSettings) -> str | None:
        """A CUDA variant may run in an image of its own; every other step in ``image``."""
        return self.cuda_image if settings.device == "cuda" and self.cuda_image else None

    def _variant_config(self, sweep: SweepSpec, settings: VariantSettings) -> dict:
        # A file lock only serializes work on one machine; pods have their own CPUs.
        return dataclasses.replace(
            settings, tag=sweep.tag, event=sweep.event, turn=None
        ).as_config()

    def _submit(self, flow_file, branch, config, title, sweep, image=None, only_json=False):
        """Metaflow's create of one flow, in a worker process: a future of ``Created``."""
        title, description = title
        options = {
            "tags": [sweep.tag],
            "workflow_title": title,
            "workflow_description": description,
        }
        request = Create(
            flow_file, branch, config, self._env(image), str(ROOT), options, only_json
        )  # fmt: skip
        return self._deploys.submit(request)

    def _variant_create(
        self, sweep: SweepSpec, variant: Variant, settings: VariantSettings, only_json=False
    ) -> Future:
        return self._submit(
            self.flow_file, variant.branch, self._variant_config(sweep, settings),
            variant_title(settings, sweep.tag), sweep, self._image(settings), only_json,
        )  # fmt: skip

    def _analytics_create(self, sweep: SweepSpec, only_json=False) -> Future:
        return self._submit(
            self.analytics_file, analytics_branch(sweep.tag), sweep.analytics_config(),
            analytics_title(sweep.tag), sweep, only_json=only_json,
        )  # fmt: skip

    def _analytics_look(self, sweep: SweepSpec) -> WorkflowLook:
        # The analytics pods draw the card: no figure to protect, so no Guaranteed sizing.
        patch = manifests.pod_spec_patch(guaranteed_qos=False, run_as_user=self.run_as_user)
        return self._look(sweep, "analytics", analytics_title(sweep.tag), patch)

    def _variant_look(self, sweep: SweepSpec, variant: Variant, settings) -> WorkflowLook:
        patch = manifests.pod_spec_patch(
            guaranteed_qos=self.guaranteed_qos, run_as_user=self.run_as_user
        )
        return self._look(sweep, variant.id, variant_title(settings, sweep.tag), patch)

    def _look(self, sweep: SweepSpec, variant: str, title: tuple[str, str], patch) -> WorkflowLook:
        return manifests.workflow_look(
            sweep.tag, variant, *title, attempt=self._attempt,
            ttl_seconds=self.workflow_ttl_seconds, pod_gc=self.pod_gc,
            deadline_seconds=sweep.variant_timeout_seconds, pod_spec_patch=patch,
        )  # fmt: skip

    def _close_deploys(self) -> None:
        """Stop the create workers, once the creates still running have ended (or a grace)."""
        deploys, self._deploys = self._deploys, None
        if deploys is None:
            return
        # Interrupted: Ctrl-C stopped the creates already; otherwise they may finish.
        late = deploys.close(TEARDOWN_SECONDS if self._cancelled.is_set() else CREATE_GRACE_SECONDS)
        if late:
            print(
                f"warning: {len(late)} create(s) had not ended when the sweep stopped: look for "
                f"WorkflowTemplates of branch test.{self._sweep_tag}_* left behind",
                file=sys.stderr,
            )

    # -- checks ------------------------------------------------------------------------------
    def _template_problem(
        self, sweep: SweepSpec, variant: Variant, settings: VariantSettings, template, held: bool
    ) -> str | None:
        """What is wrong with one variant's template, compiled or as the API holds it."""
        if not template:
            return "nothing was deployed under that name"
        try:
            manifests.validate_workflow_template(template, held=held)
        except ConfigError as error:
            return str(error)
        problems = manifests.variant_problems(
            template, settings, variant.branch, sweep.tag, guaranteed_qos=self.guaranteed_qos
        )
        return problems[0] if problems else None

    def _analytics_problem(self, sweep: SweepSpec, template, held: bool) -> str | None:
        """What is wrong with the analytics template: it must start on the sweep's event only."""
        try:
            manifests.validate_workflow_template(template, held=held)
        except ConfigError as error:
            return str(error)
        problems = manifests.trigger_problems(template, sweep.event, analytics_branch(sweep.tag))
        return problems[0] if problems else None

    def _sensor_problem(self, sweep: SweepSpec) -> str | None:
        """What is wrong with the Sensor the API holds (labelled with the sweep's tag here)."""
        namespace, name = self._sensor
        try:
            held = self._argo.label("sensors", name, {TAG_LABEL: sweep.tag}, namespace)
        except self._argo.rest.ApiException as error:
            if error.status != 404:
                raise
            return f"its Sensor {namespace}/{name} is not there"
        manifests.write_manifest(self._manifests / "analytics.sensor.json", held)
        try:
            manifests.validate_sensor(held, held=True)
        except ConfigError as error:
            return str(error)
        problems = manifests.sensor_problems(held, sweep.event, analytics_branch(sweep.tag))
        return problems[0] if problems else None

    # -- preflight ---------------------------------------------------------------------------
    def preflight(self, sweep: SweepSpec) -> None:
        """Settings and every planned variant's config; a dry run also compiles, checks and
        writes every template, with nothing sent to Kubernetes."""
        if self.run_as_user is not None and (
            type(self.run_as_user) is not int or self.run_as_user < 1
        ):
            raise ConfigError(
                f"backend.run_as_user={self.run_as_user} must be a user id above 0 (0 is root), "
                "or null to run as the image says"
            )
        if self.analytics_parallelism < 1:
            raise ConfigError(
                f"backend.analytics_parallelism={self.analytics_parallelism} must be at least 1"
            )
        self._settings = resolve_settings(
            self.environ, namespace=self.namespace, image=self.image,
            guaranteed_qos=self.guaranteed_qos, dry_run=sweep.dry_run,
            live_analytics=sweep.live_analytics,
        )  # fmt: skip
        # Before anything else: every compile and create uploads to it, and sits in retries for
        # minutes, saying nothing, when it is unreachable.
        check_datastore(self._settings.datastore, metaflow_settings(self.environ), self.environ)
        self._sweep_tag = sweep.tag
        self._manifests = Path(sweep.sweep_dir) / "manifests"
        # One code for the whole sweep, copied now: an edit made while it deploys reaches none
        # of its variants (Metaflow packages each create from the flow's folder as it runs).
        code = snapshot_flows(Path(sweep.sweep_dir) / "code", self._flow_names)
        self.flow_file, self.analytics_file = (str(code / name) for name in self._flow_names)
        manifests.import_models()
        for variant, settings in sweep.planned:
            try:  # the flow's own parser, as its create would run it
                parse_variant_config(json.dumps(self._variant_config(sweep, settings)))
            except ConfigError as error:
                raise ConfigError(f"variant {variant.id}: {error}") from None
        if sweep.live_analytics and not sweep.dry_run:
            self._check_events()
        self._deploys = DeployPool(self.deploy_workers)
        if not sweep.dry_run:
            self._deploys.warm()  # the workers import Metaflow while the sweep opens
            return
        try:
            self._dry_run(sweep)
        except KeyboardInterrupt:
            self.cancel()  # the compiles under way stop now, not after their grace
            raise
        finally:
            self._close_deploys()
        for why in self._settings.still_needed:
            print(f"dry run: a deploy also needs: {why}", file=sys.stderr)

    def _check_events(self) -> None:
        """The EventSource and the EventBus the analytics Sensor will name are there: without
        them no event ever reaches it, and no live analytics run starts."""
        settings = self._settings
        argo = Argo(
            settings,
            request_seconds=self.api_request_seconds,
            patience_seconds=min(self.api_patience_seconds, PREFLIGHT_PATIENCE_SECONDS),
        )
        namespace = settings.sensor_namespace
        for plural, kind, name, setting in (
            ("eventsources", "EventSource", settings.event_source, "ARGO_EVENTS_EVENT_SOURCE"),
            ("eventbus", "EventBus", settings.event_bus, "ARGO_EVENTS_EVENT_BUS"),
        ):
            try:
                found = argo.get(plural, name, namespace)
            except argo.rest.ApiException as error:
                raise ConfigError(
                    f"the sweep may not read {plural} in namespace {namespace} "
                    f"(HTTP {error.status} {error.reason}): its Role needs get on {plural}"
                ) from None
            except Exception as error:  # noqa: BLE001 - transport errors and timeouts alike
                raise ConfigError(
                    f"the Kubernetes API did not answer ({one_line(error)}): check the kubeconfig"
                ) from None
            if found is None:
                raise ConfigError(
                    f"METAFLOW_{setting}={name}: there is no {kind} {name} in namespace "
                    f"{namespace}, so the analytics Sensor would hear no event"
                )

    def _dry_run(self, sweep: SweepSpec) -> None:
        analytics = self._analytics_create(sweep, only_json=True)
        compiled = [
            (v, s, self._variant_create(sweep, v, s, only_json=True)) for v, s in sweep.planned
        ]
        names: dict[str, str] = {}  # template name -> variant
        for variant, settings, future in compiled:
            template = _compiled(future, f"variant {variant.id}").template
            why = self._template_problem(sweep, variant, settings, template, held=False)
            name = template["metadata"]["name"]
            if name in names:  # one would replace the other on the cluster
                why = f"its WorkflowTemplate name {name} is {names[name]}'s too"
            if why:
                raise ConfigError(f"variant {variant.id}: {why}")
            names[name] = variant.id
            manifests.write_manifest(
                self._manifests / f"{variant.id}.workflowtemplate.json", template
            )
        template = _compiled(analytics, "SweepAnalyticsFlow").template
        why = self._analytics_problem(sweep, template, held=False)
        if why:
            raise ConfigError(f"SweepAnalyticsFlow: {why}")
        manifests.write_manifest(self._manifests / "analytics.workflowtemplate.json", template)

    # -- running -----------------------------------------------------------------------------
    def _start(self, sweep: SweepSpec) -> None:
        """Deploy the analytics flow, check it, then put every pending variant in flight."""
        self._argo = Argo(
            self._settings,
            request_seconds=self.api_request_seconds,
            patience_seconds=self.api_patience_seconds,
        )
        atexit.register(self._last_resort)
        try:
            created = self._analytics_create(sweep).result()
        except DeployFailed as error:
            _report_create_failure("SweepAnalyticsFlow", error)
            raise RuntimeError(f"SweepAnalyticsFlow was not deployed: {one_line(error)}") from None
        self._analytics = created.name
        self._templates.add(created.name)
        # Before any event: the Sensor's Workflows take their labels, TTL and lock from the
        # template. At most analytics_parallelism of them run at once; the others wait.
        lock, config_map = manifests.analytics_lock(sweep.tag, self.analytics_parallelism)
        if config_map:
            self._config_map = config_map["name"]
            self._argo.put_config_map(config_map["name"], config_map["data"],
                                      {TAG_LABEL: sweep.tag})  # fmt: skip
        held = self._argo.dress_template(created.name, self._analytics_look(sweep), lock)
        manifests.write_manifest(self._manifests / "analytics.workflowtemplate.json", held)
        self._sensor = manifests.sensor_of(held, self._settings.sensor_namespace)
        why = self._analytics_problem(sweep, held, held=True) or self._sensor_problem(sweep)
        if why:
            raise RuntimeError(f"SweepAnalyticsFlow as deployed: {why}")
        if sweep.live_analytics:
            self._await_sensor()
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="argo-variant")
        # What already succeeded under a resumed tag is not pending: it does not run again.
        # (A spec without a pending list, as the backend's own tests build, runs every one.)
        for variant, settings in sweep.pending or sweep.planned:
            self._futures[variant.id] = self._pool.submit(self._run, sweep, variant, settings)

    def _await_sensor(self) -> None:
        """Wait until Argo Events calls the new Sensor deployed (its EventBus ready, its Deployment
        made) and its Deployment has a pod available: its JetStream consumer hears only events
        published after it subscribed, so no variant starts before."""
        namespace, name = self._sensor
        deadline = time.monotonic() + self.sensor_wait_seconds
        while not self._cancelled.is_set():
            sensor = self._argo.get("sensors", name, namespace)
            why = "it was deleted" if sensor is None else sensor_not_deployed(sensor)
            if why is None and not self._argo.sensor_available(namespace, name):
                why = "its pod is not available yet"
            if why is None:
                return
            if sensor is None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the analytics Sensor {namespace}/{name} is not deployed after "
                    f"{self.sensor_wait_seconds:g} s: {why}"
                )
            self._cancelled.wait(min(self.poll_seconds, 1.0))

    def start(self, sweep: SweepSpec) -> None:
        """The batch is known: deploy and put every pending variant in flight at once."""
        if sweep.pending and not sweep.dry_run:
            with self._lock:
                self._start(sweep)

    def run_variant(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        if sweep.dry_run:
            return Outcome(Status.SKIPPED, message="dry run: manifests written, nothing deployed")
        with self._lock:
            if self._pool is None and not self._cancelled.is_set():
                self._start(sweep)
            future = self._futures.get(variant.id)
            if future is None and self._pool is not None and not self._cancelled.is_set():
                future = self._futures[variant.id] = self._pool.submit(
                    self._run, sweep, variant, settings
                )
        if future is None or future.cancelled():
            return _interrupted()
        try:
            return future.result()
        except CancelledError:
            return _interrupted()

    def _run(self, sweep: SweepSpec, variant: Variant, settings: VariantSettings) -> Outcome:
        """One variant's life: created, checked, started, watched; its template deleted."""
        if self._cancelled.is_set():
            return _interrupted()
        try:
            created = self._variant_create(sweep, variant, settings).result()
        except (CancelledError, BrokenProcessPool):
            return _interrupted()
        except DeployFailed as error:
            if self._cancelled.is_set():
                return _interrupted()
            _report_create_failure(variant.id, error)
            return Outcome(
                Status.FAILED, message=f"{variant.id} was not deployed: {one_line(error)}"
            )
        self._templates.add(created.name)
        try:
            return self._check_and_run(sweep, variant, settings, created)
        except Exception as error:
            if self._cancelled.is_set():
                return _interrupted()
            return Outcome(Status.FAILED, message=f"{variant.id}: {one_line(error)}")
        finally:
            if not self.keep_deployments:
                self._tidy(f"delete WorkflowTemplate {created.name}", self._delete, created.name)

    def _check_and_run(
        self, sweep: SweepSpec, variant: Variant, settings: VariantSettings, created: Created
    ) -> Outcome:
        if self._cancelled.is_set():
            return _interrupted()
        held = self._argo.label("workflowtemplates", created.name, {TAG_LABEL: sweep.tag})
        manifests.write_manifest(self._manifests / f"{variant.id}.workflowtemplate.json", held)
        why = self._template_problem(sweep, variant, settings, held, held=True)
        if why:
            return Outcome(Status.FAILED, message=f"{variant.id} as deployed: {why}")
        look = self._variant_look(sweep, variant, settings)
        workflow = self._argo.trigger(created.name, self._user, look)
        # Metaflow names an Argo run after its workflow.
        return self._wait(sweep, variant, workflow, f"{created.flow_name}/argo-{workflow}")

    def _delete(self, template: str) -> None:
        self._argo.delete("workflowtemplates", template)
        self._templates.discard(template)

    def _tidy(self, what: str, step, *args, **kwargs) -> bool:
        """Run one teardown step; a failure is kept for the report, never raised: it changes
        no variant's outcome (teardown tries a template again)."""
        try:
            step(*args, **kwargs)
            return True
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the rest of teardown is hurried, not skipped
            self._signalled = True
            self._cancelled.set()
            self._argo.hurry()
            self._leftovers.append(f"{what}: interrupted")
            return False
        except Exception as error:  # noqa: BLE001 - reported once, at the end of teardown
            self._leftovers.append(f"{what}: {one_line(error)}")
            return False

    def _wait(self, sweep: SweepSpec, variant: Variant, workflow: str, run: str) -> Outcome:
        """Watch one Workflow to its end, timing apart what it spent waiting with nothing
        running (the variant timeout counts it), and saying why it waits where that needs the
        user (a pod the cluster cannot schedule, an image it cannot pull)."""
        timeout = sweep.variant_timeout_seconds
        deadline = time.monotonic() + timeout
        pending, waiting, started, told = 0.0, True, False, set()
        last = time.monotonic()
        while True:
            state = self._argo.state(workflow)
            now = time.monotonic()
            if waiting:  # the time since the last read counts as it was then
                pending += now - last
            last, waiting = now, state.waiting
            started = started or state.started
            if not state.phase.running:
                break
            if state.waiting and state.why.startswith(WAITING_TROUBLE) and state.why not in told:
                told.add(state.why)
                print(f"{variant.id} is not running yet: {state.why}", file=sys.stderr)
            if self._cancelled.is_set():
                self._tidy(f"terminate Workflow {workflow}", self._argo.terminate, workflow)
                return Outcome(
                    Status.CANCELLED, run=run, message="the sweep was interrupted",
                    pending_seconds=round(pending, 1),
                )  # fmt: skip
            if now > deadline:
                self._tidy(f"terminate Workflow {workflow}", self._argo.terminate, workflow)
                return Outcome(
                    Status.TIMEOUT, run=run, message=_timeout_message(state, started, timeout),
                    pending_seconds=round(pending, 1),
                )  # fmt: skip
            self._cancelled.wait(self.poll_seconds)
        if state.phase is not Phase.SUCCEEDED:
            return Outcome(
                Status.FAILED, run=run,
                message=f"{state.phase}: {state.message or state.failure}"[:300],
                pending_seconds=round(pending, 1),
            )  # fmt: skip
        # The variant's end step has published its event from inside the cluster already.
        gflops, why = _gflops(run)
        return Outcome(
            Status.SUCCEEDED, run=run, gflops=gflops, message=why,
            pending_seconds=round(pending, 1),
        )  # fmt: skip

    def cancel(self) -> None:
        """Stop everything now: queued variants never start, creates in flight stop, no event
        starts another analytics run (the Sensor goes first), running workflows are
        terminated."""
        self._cancelled.set()
        if self._argo is not None:
            self._argo.hurry()  # whatever the API does, the calls still to make end in seconds
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._deploys is not None:
            self._deploys.cancel()
        self._stop_running()

    def _stop_running(self) -> None:
        if self._argo is None:
            return
        if self._sensor and not self.keep_deployments:
            namespace, name = self._sensor
            # In the foreground: it stays until its pod has ended, which teardown waits for last.
            if self._tidy(f"delete Sensor {namespace}/{name}", self._argo.delete, "sensors",
                          name, namespace, foreground=True):  # fmt: skip
                self._ending_sensor, self._sensor = self._sensor, None
        running: list[str] = []
        if self._tidy(f"list Workflows {TAG_LABEL}={self._sweep_tag}", _into, running,
                      self._argo.running, self._sweep_tag):  # fmt: skip
            for workflow in running:
                self._tidy(f"terminate Workflow {workflow}", self._argo.terminate, workflow)

    def _delete_workflows(self) -> None:
        """Delete the sweep's Workflows (their pods go with them)."""
        workflows: list = []
        if self._tidy(f"list Workflows {TAG_LABEL}={self._sweep_tag}", _into, workflows,
                      self._argo.workflows, self._sweep_tag):  # fmt: skip
            for workflow, _ in workflows:
                self._tidy(f"delete Workflow {workflow}", self._argo.delete, "workflows", workflow)

    def _await_gone(self, plural: str, name: str, namespace: str) -> None:
        """Wait until the API no longer holds the object (bounded; the API's own bound, which
        an interrupted sweep's hurry shortens, ends it too)."""
        deadline = time.monotonic() + SENSOR_GONE_SECONDS
        while self._argo.get(plural, name, namespace) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still there after {SENSOR_GONE_SECONDS:g} s")
            time.sleep(0.5)

    # -- the end -----------------------------------------------------------------------------
    def finish(self, sweep: SweepSpec, interrupted: bool) -> str | None:
        """The final analytics run (unless interrupted), then teardown; its run pathspec."""
        if sweep.dry_run or self._argo is None:
            self._close_deploys()
            return None
        run = None
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=interrupted)
            if not interrupted and not self._cancelled.is_set():
                look = self._analytics_look(sweep)
                look = dataclasses.replace(
                    look, spec={**look.spec, "priority": FINAL_ANALYTICS_PRIORITY}
                )
                # Named like no other: a resumed sweep's attempts differ.
                workflow = self._argo.trigger(self._analytics, self._user, look)
                run = f"SweepAnalyticsFlow/argo-{workflow}"
                deadline = time.monotonic() + sweep.variant_timeout_seconds
                while (phase := self._argo.phase(workflow))[0].running:
                    if time.monotonic() > deadline or self._cancelled.wait(self.poll_seconds):
                        break
                if phase[0] is not Phase.SUCCEEDED:
                    print(f"warning: final analytics run {run} ended {phase[0]}: {phase[1]}",
                          file=sys.stderr)  # fmt: skip
        finally:
            self._teardown()
        return run

    def _teardown(self) -> None:
        """Stop the Sensor and what still runs, let creates in flight end, then delete every
        template, unless kept; say what could not be done."""
        if self._torn_down or self._argo is None:
            self._close_deploys()
            return
        self._torn_down = True
        self._leftovers.clear()  # what failed before is tried again here
        try:
            self._stop_running()
        finally:
            self._close_deploys()  # a create that ends now adds its template to the list
            if not self.keep_deployments:
                if self._cancelled.is_set():  # a create stopped after it made its template
                    self._tidy(f"list WorkflowTemplates of {self._sweep_tag}",
                               self._find_templates)  # fmt: skip
                for template in sorted(self._templates):
                    self._tidy(f"delete WorkflowTemplate {template}", self._delete, template)
                # Results live in the datastore and the metadata service; the Workflows (and,
                # through their owner references, their pods) go with the sweep.
                self._delete_workflows()
                if self._config_map and self._tidy(
                    f"delete ConfigMap {self._config_map}",
                    self._argo.delete_config_map,
                    self._config_map,
                ):
                    self._config_map = None
                # The deleted Sensor's pod may start one more analytics Workflow while it ends:
                # once it has ended (the Sensor gone with it), what it started goes too.
                if self._ending_sensor:
                    namespace, name = self._ending_sensor
                    if self._tidy(f"wait for Sensor {namespace}/{name} and its pod to end",
                                  self._await_gone, "sensors", name, namespace):  # fmt: skip
                        self._ending_sensor = None
                        self._delete_workflows()
            self._report_leftovers()
        if self._signalled:
            raise KeyboardInterrupt

    def _find_templates(self) -> None:
        """Add the templates the sweep's creates made but never returned (a create stopped
        between its template and its end): known by the tag and branch Metaflow wrote on them."""
        for template in self._argo.list("workflowtemplates", self._settings.namespace):
            if of_sweep(template, self._sweep_tag):
                self._templates.add(template["metadata"]["name"])

    def _report_leftovers(self) -> None:
        if not self._leftovers:
            return
        print(
            f"warning: teardown left {len(self._leftovers)} thing(s) undone on the cluster "
            f"(all labelled {TAG_LABEL}={self._sweep_tag}); first: {self._leftovers[0]}",
            file=sys.stderr,
        )

    def _last_resort(self) -> None:
        """At exit, if finish was never reached: the same teardown, in seconds."""
        if not self._torn_down and self._argo is not None:
            self._argo.hurry()
            self._teardown()


def _timeout_message(state: WorkflowState, started: bool, timeout: float) -> str:
    """Why a variant timed out: never scheduled (and why), never started, or still running."""
    if not started and state.why.startswith("Unschedulable"):
        return f"never scheduled in {timeout:g} s: {state.why}"[:300]
    if not started:
        return f"never started in {timeout:g} s: {state.why or f'its Workflow {state.phase}'}"[:300]
    if state.waiting and state.why:
        return f"still {state.phase} after {timeout:g} s, a step waiting: {state.why}"[:300]
    return f"still {state.phase} after {timeout:g} s"


def _into(items: list, call, *args) -> None:
    items.extend(call(*args))


def _interrupted() -> Outcome:
    return Outcome(Status.CANCELLED, message="the sweep was interrupted")


def _compiled(future: Future, what: str) -> Created:
    """A dry run's compile, or ConfigError with the line Metaflow ended on."""
    try:
        return future.result()
    except DeployFailed as error:
        raise ConfigError(f"{what} does not compile: {one_line(error)}") from None


def _report_create_failure(what: str, error: DeployFailed) -> None:
    """Metaflow's own lines about a create that failed, on the user's terminal."""
    lines = "\n".join(f"    {line}" for line in str(error).splitlines())
    print(f"{what}: Metaflow's create failed:\n{lines}", file=sys.stderr)


def _gflops(run: str) -> tuple[float | None, str | None]:
    """The figure the variant's pod measured, read back through the metadata service; or None
    and why not (the result stays safe in Metaflow)."""
    try:
        from torchperf.runs import result_of

        return result_of(run).gflops, None  # a newer result schema is refused in one line
    except Exception as error:  # noqa: BLE001 - a figure we cannot read is not a failed variant
        return None, f"succeeded, but its result is unreadable here: {one_line(error)}"
