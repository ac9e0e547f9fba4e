"""Argo manifests as plain data: strip, validate (hera), check our invariants, redact.

Pure functions over the dicts Metaflow compiles, so that the dry run, the preflight and the tests
share one definition of a good manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torchperf.settings import ConfigError, VariantSettings

REDACTED = "<redacted>"
# Labels on every Workflow the sweep starts: the Argo UI filters by them, and so does the sweep.
TAG_LABEL, VARIANT_LABEL = "torchperf/tag", "torchperf/variant"
ATTEMPT_LABEL = "torchperf/attempt"  # one sweep command: a Workflow it finds by name is its own
TITLE, DESCRIPTION = "workflows.argoproj.io/title", "workflows.argoproj.io/description"
GPU_RESOURCE = "nvidia.com/gpu"  # what Metaflow's @resources(gpu=1) asks Kubernetes for
# Env vars whose values may carry credentials (service headers carry API keys).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|HEADERS|AUTH|KEY", re.IGNORECASE)
# Annotations that carry a credential: the production token authorizes redeploys.
SECRET_ANNOTATIONS = ("metaflow/production_token",)


# Argo puts a Workflow's name into its pods' labels, whose values stop at 63 characters.
MAX_WORKFLOW_NAME = 63
NAME_DIGEST = 10  # hex digits of the name's hash: 40 bits, no collision among any sweep's names


@dataclass(frozen=True)
class WorkflowLook:
    """How one of the sweep's Workflows reads in the Argo UI, and when it goes away."""

    name: str  # ours, so that a create retried after a lost answer finds the first one
    labels: dict  # the sweep's tag, the variant and the attempt: what the UI and the sweep select
    annotations: dict  # title and description, shown by the Argo UI
    spec: dict  # ttlStrategy, podGC, activeDeadlineSeconds (nothing outlives its use), podSpecPatch


# What Argo's executor containers (init, wait) get when the pod is to be Guaranteed. Argo gives
# them no resources unless its controller's config does (argo-workflows v4.0.5,
# workflow/controller/workflowpod.go: newExecContainer), and one container without limits makes
# the whole pod Burstable: it then never gets exclusive cores from a static CPU manager.
EXECUTOR_RESOURCES = {"cpu": "100m", "memory": "256Mi"}


def pod_spec_patch(*, guaranteed_qos: bool, run_as_user: int | None) -> str | None:
    """Argo's ``podSpecPatch`` for the sweep's pods (applied after Argo adds its executor
    containers, merged by container name): the executor's containers sized with limits equal
    to requests, so that with Metaflow's guaranteed QoS the pod is Guaranteed; and every
    container run as ``run_as_user``, never as root. None when there is nothing to patch."""
    patch: dict = {}
    if guaranteed_qos:
        sized = {"requests": EXECUTOR_RESOURCES, "limits": EXECUTOR_RESOURCES}
        patch["initContainers"] = [{"name": "init", "resources": sized}]
        patch["containers"] = [{"name": "wait", "resources": sized}]
    if run_as_user is not None:
        patch["securityContext"] = {
            "runAsNonRoot": True, "runAsUser": run_as_user, "runAsGroup": run_as_user,
        }  # fmt: skip
    return json.dumps(patch, sort_keys=True) if patch else None


def kube_name(text: str) -> str:
    """``text`` as a DNS-1123 name fragment: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def workflow_name(tag: str, variant: str, attempt: str) -> str:
    """The name of the Workflow of ``variant`` in one attempt at sweep ``tag``: readable, within
    Kubernetes' limits, the same every time it is asked for."""
    digest = hashlib.sha256(f"{tag}/{variant}/{attempt}".encode()).hexdigest()[:NAME_DIGEST]
    prefix = f"torchperf-{kube_name(variant)}-{kube_name(tag)}"
    return f"{prefix[: MAX_WORKFLOW_NAME - NAME_DIGEST - 1].rstrip('-')}-{digest}"


def workflow_look(
    tag: str,
    variant: str,
    title: str,
    description: str,
    *,
    attempt: str,
    ttl_seconds: int,
    pod_gc: str,
    deadline_seconds: float,
    pod_spec_patch: str | None = None,
) -> WorkflowLook:
    """The look of the Workflows of one variant (or of the analytics, ``variant="analytics"``)."""
    patch = {"podSpecPatch": pod_spec_patch} if pod_spec_patch else {}
    return WorkflowLook(
        name=workflow_name(tag, variant, attempt),
        labels={TAG_LABEL: tag, VARIANT_LABEL: variant, ATTEMPT_LABEL: attempt},
        annotations={TITLE: title, DESCRIPTION: description},
        spec={
            "ttlStrategy": {"secondsAfterCompletion": int(ttl_seconds)},
            "podGC": {"strategy": pod_gc},
            # Argo stops it even when the sweep that started it is gone.
            "activeDeadlineSeconds": math.ceil(deadline_seconds),
            **patch,
        },
    )


# The key of the ConfigMap whose value bounds the sweep's analytics Workflows (above one).
LIMIT_KEY = "workflows"


def analytics_lock(tag: str, parallelism: int) -> tuple[dict, dict | None]:
    """Argo's ``synchronization`` that lets at most ``parallelism`` of sweep ``tag``'s analytics
    Workflows run at once (the others wait, Pending, in Argo's queue), and the ConfigMap a
    semaphore reads its limit from (None for a mutex, which needs none).

    On a WorkflowTemplate it holds for every Workflow started from it: Argo merges the template's
    spec into the Workflow's and takes a Workflow-level lock before running it
    (argo-workflows v4.0.5, workflow/controller/operator.go); v3.6 on names them in lists."""
    name = f"torchperf-analytics-{kube_name(tag)}"
    if parallelism == 1:
        return {"mutexes": [{"name": name}]}, None
    config_map = {"name": name, "data": {LIMIT_KEY: str(parallelism)}}
    return {"semaphores": [{"configMapKeyRef": {"name": name, "key": LIMIT_KEY}}]}, config_map


def strip_nulls(document):
    """Remove null-valued fields recursively: Metaflow emits them, hera's models predate some."""
    if isinstance(document, dict):
        return {k: strip_nulls(v) for k, v in document.items() if v is not None}
    if isinstance(document, list):
        return [strip_nulls(v) for v in document]
    return document


def _first_error(error) -> str:
    detail = error.errors()[0]
    where = ".".join(str(part) for part in detail["loc"])
    return f"{where}: {detail['msg']}"


def import_models() -> None:
    """Import hera's models before Metaflow's Runner or Deployer is used.

    The Deployer's typeguard brings Metaflow's vendored typing_extensions, which replaces
    ``typing._collect_parameters`` with a version that rejects the generic classes hera defines
    at import time (seen with typing_extensions 4.16 and Metaflow 2.19.39).
    """
    import hera.events.models  # noqa: F401
    import hera.workflows.models  # noqa: F401


def _as_held(document: Mapping, held: bool) -> dict:
    """``document`` without nulls; as the API holds it (``held``), without what the server and the
    controllers own: its status. Their other additions (finalizers, managed fields, defaulted
    fields) are left to hera's models, which ignore fields they do not know for a held object."""
    document = strip_nulls(copy.deepcopy(dict(document)))
    if held:
        document.pop("status", None)
    return document


def validate_workflow_template(template: Mapping, *, held: bool = False) -> None:
    """Check against hera's WorkflowTemplate model: strictly (no unknown field anywhere) for what
    we compiled, tolerantly for what the API holds (``held``: admission, defaulting and newer
    Kubernetes fields may add what hera does not know; types and required fields still count)."""
    from hera.workflows.models import WorkflowTemplate
    from pydantic import ValidationError

    try:
        WorkflowTemplate.model_validate(
            _as_held(template, held), extra="ignore" if held else "forbid"
        )
    except ValidationError as error:
        name = template.get("metadata", {}).get("name")
        raise ConfigError(f"WorkflowTemplate {name}: {_first_error(error)}") from None


def validate_sensor(sensor: Mapping, *, held: bool = False) -> None:
    """Check against hera's Sensor model, strictly or, for what the API holds, tolerantly (see
    validate_workflow_template).

    hera's events models omit three things Argo Events accepts: ``apiVersion``/``kind`` at the
    top, the sensor container's ``name``, and a typed trigger resource (hera keeps it as opaque
    bytes). Those are checked here by hand, and each trigger's Workflow against hera's Workflow.
    """
    from hera.events.models import Sensor
    from hera.workflows.models import Workflow
    from pydantic import ValidationError

    document = _as_held(sensor, held)
    extra = "ignore" if held else "forbid"
    name = document.get("metadata", {}).get("name")
    if (document.pop("apiVersion", None), document.pop("kind", None)) != (
        "argoproj.io/v1alpha1",
        "Sensor",
    ):
        raise ConfigError(f"Sensor {name}: apiVersion/kind must be argoproj.io/v1alpha1/Sensor")
    document.get("spec", {}).get("template", {}).get("container", {}).pop("name", None)
    try:
        for trigger in document.get("spec", {}).get("triggers", []):
            for action in ("k8s", "argoWorkflow"):
                source = trigger.get("template", {}).get(action, {}).get("source", {})
                if "resource" in source:
                    Workflow.model_validate(source.pop("resource"), extra=extra)
        Sensor.model_validate(document, extra=extra)
    except ValidationError as error:
        raise ConfigError(f"Sensor {name}: {_first_error(error)}") from None


def _annotations(manifest: Mapping) -> Mapping:
    return manifest.get("metadata", {}).get("annotations", {})


def _step(template: Mapping, step: str) -> Mapping:
    for entry in template.get("spec", {}).get("templates", []):
        if entry.get("name") == step:
            return entry.get("container", {})
    return {}


def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def variant_problems(
    template: Mapping,
    settings: VariantSettings,
    branch: str,
    tag: str,
    *,
    guaranteed_qos: bool,
) -> list[str]:
    """What is wrong with one variant's compiled template, as one line each (empty when good)."""
    problems = []
    annotations = _annotations(template)
    resources = _step(template, "start").get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {}) or {}
    if "cpu" not in requests or _cpus(requests["cpu"]) != settings.cpu:
        problems.append(f"start's cpu request is {requests.get('cpu')}, not cpu={settings.cpu}")
    if guaranteed_qos and ("cpu" not in limits or _cpus(limits["cpu"]) != settings.cpu):
        problems.append(f"start's cpu limit is {limits.get('cpu')}, not cpu={settings.cpu}")
    gpus = (limits or {}).get(GPU_RESOURCE)
    if settings.device == "cuda" and str(gpus) != "1":
        problems.append(f"start asks for {gpus} GPUs, not 1 for device=cuda")
    if settings.device != "cuda" and gpus is not None:
        problems.append(f"start asks for {gpus} GPUs for device={settings.device}")
    if annotations.get("metaflow/branch_name") != f"test.{branch}":
        problems.append(f"branch is {annotations.get('metaflow/branch_name')}, not test.{branch}")
    if tag not in json.loads(annotations.get("metaflow/tags", "[]")):
        problems.append(f"tags {annotations.get('metaflow/tags')} lack {tag}")
    title = annotations.get(TITLE, "")
    if f"cpu={settings.cpu}" not in title or f"tensor_dim={settings.tensor_dim}" not in title:
        problems.append(f"title {title!r} does not name cpu and tensor_dim")
    return problems


def trigger_problems(template: Mapping, event: str, branch: str) -> list[str]:
    """What is wrong with the analytics flow's template: it must start on the sweep's event only
    (Metaflow compiles its Sensor from the triggers the template names)."""
    problems = []
    if _annotations(template).get("metaflow/branch_name") != f"test.{branch}":
        problems.append(f"branch is {_annotations(template).get('metaflow/branch_name')}, "
                        f"not test.{branch}")  # fmt: skip
    triggers = json.loads(_annotations(template).get("metaflow/triggers") or "[]")
    if [t.get("name") for t in triggers] != [event]:
        problems.append(f"it starts on events {[t.get('name') for t in triggers]}, not [{event!r}]")
    return problems


def sensor_of(template: Mapping, default_namespace: str) -> tuple[str, str]:
    """(namespace, name) of the Sensor Metaflow deployed beside a ``@trigger`` flow's template,
    as the template's annotations name it."""
    annotations = _annotations(template)
    name = annotations.get("metaflow/sensor_name")
    if not name:
        raise ConfigError(f"WorkflowTemplate {template['metadata']['name']} names no Sensor")
    return annotations.get("metaflow/sensor_namespace") or default_namespace, name


def sensor_problems(sensor: Mapping | None, event: str, branch: str) -> list[str]:
    """What is wrong with the analytics flow's Sensor: it must listen to the sweep's event only."""
    if not sensor:
        return ["the analytics flow compiled no Sensor (is @trigger missing?)"]
    problems = []
    if _annotations(sensor).get("metaflow/branch_name") != f"test.{branch}":
        problems.append(f"sensor branch is not test.{branch}")
    for dependency in sensor.get("spec", {}).get("dependencies", []):
        exprs = (dependency.get("filters") or {}).get("exprs") or []
        wanted = f"name == '{event}'"
        if not any(
            e.get("expr") == wanted
            and any(f.get("path") == "body.payload.name" for f in e.get("fields", []))
            for e in exprs
        ):
            problems.append(f"sensor dependency {dependency.get('name')} does not filter {wanted}")
    if not sensor.get("spec", {}).get("dependencies"):
        problems.append("sensor has no dependency")
    return problems


def sensor_not_deployed(sensor: Mapping) -> str | None:
    """Why Argo Events does not call the Sensor deployed yet (its ``Deployed`` condition, which
    its controller sets True once the Sensor's Deployment exists); None once it does."""
    conditions = (sensor.get("status") or {}).get("conditions") or []
    deployed = next((c for c in conditions if c.get("type") == "Deployed"), None)
    if deployed is None:
        return "no Deployed condition yet"
    if deployed.get("status") == "True":
        return None
    why = ": ".join(filter(None, (deployed.get("reason"), deployed.get("message"))))
    return f"Deployed is {deployed.get('status')}" + (f" ({why})" if why else "")


def redact(document):
    """A copy with credential-bearing env values and annotations replaced by a marker."""
    if isinstance(document, list):
        return [redact(v) for v in document]
    if not isinstance(document, dict):
        return document
    out = {}
    for key, value in document.items():
        secret_env = key == "value" and SECRET_NAME.search(str(document.get("name", "")))
        if key in SECRET_ANNOTATIONS or secret_env:
            out[key] = REDACTED
        else:
            out[key] = redact(value)
    return out


def write_manifest(path: Path, manifest: Mapping) -> Path:
    """Write a redacted, readable copy of one manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(redact(strip_nulls(dict(manifest))), indent=2, sort_keys=True))
    return path
