"""Argo manifests as plain data: strip, validate (hera), check our invariants, redact.

Pure functions over the dicts Metaflow compiles, so that the dry run, the preflight and the tests
share one definition of a good manifest.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torchperf.settings import ConfigError, VariantSettings

REDACTED = "<redacted>"
# Labels on every Workflow the sweep starts: the Argo UI filters by them, and so does the sweep.
TAG_LABEL, VARIANT_LABEL = "torchperf/tag", "torchperf/variant"
TITLE, DESCRIPTION = "workflows.argoproj.io/title", "workflows.argoproj.io/description"
GPU_RESOURCE = "nvidia.com/gpu"  # what Metaflow's @resources(gpu=1) asks Kubernetes for
# Env vars whose values may carry credentials (service headers carry API keys).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|HEADERS|AUTH|KEY", re.IGNORECASE)
# Annotations that carry a credential: the production token authorizes redeploys.
SECRET_ANNOTATIONS = ("metaflow/production_token",)


# Argo puts a Workflow's name into its pods' labels, whose values stop at 63 characters.
MAX_WORKFLOW_NAME = 63
GENERATED_SUFFIX = 5  # the random characters Kubernetes appends to a generateName


@dataclass(frozen=True)
class WorkflowLook:
    """How one of the sweep's Workflows reads in the Argo UI, and when it goes away."""

    generate_name: str  # the variant stays readable where Metaflow hashed the template's name
    labels: dict  # the sweep's tag and the variant: what the UI and the sweep select by
    annotations: dict  # title and description, shown by the Argo UI
    spec: dict  # ttlStrategy and podGC: finished Workflows and their pods are cleaned up


def kube_name(text: str) -> str:
    """``text`` as a DNS-1123 name fragment: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def workflow_look(
    tag: str,
    variant: str,
    title: str,
    description: str,
    *,
    ttl_seconds: int,
    pod_gc: str,
) -> WorkflowLook:
    """The look of the Workflows of one variant (or of the analytics, ``variant="analytics"``)."""
    prefix = f"torchperf-{kube_name(variant)}-{kube_name(tag)}"
    prefix = prefix[: MAX_WORKFLOW_NAME - GENERATED_SUFFIX - 1].rstrip("-")
    return WorkflowLook(
        generate_name=f"{prefix}-",
        labels={TAG_LABEL: tag, VARIANT_LABEL: variant},
        annotations={TITLE: title, DESCRIPTION: description},
        spec={
            "ttlStrategy": {"secondsAfterCompletion": int(ttl_seconds)},
            "podGC": {"strategy": pod_gc},
        },
    )


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


def validate_workflow_template(template: Mapping) -> None:
    """Strict check against hera's WorkflowTemplate model (no unknown field anywhere)."""
    from hera.workflows.models import WorkflowTemplate
    from pydantic import ValidationError

    try:
        WorkflowTemplate.model_validate(strip_nulls(dict(template)), extra="forbid")
    except ValidationError as error:
        name = template.get("metadata", {}).get("name")
        raise ConfigError(f"WorkflowTemplate {name}: {_first_error(error)}") from None


def validate_sensor(sensor: Mapping) -> None:
    """Strict check against hera's Sensor model.

    hera's events models omit three things Argo Events accepts: ``apiVersion``/``kind`` at the
    top, the sensor container's ``name``, and a typed trigger resource (hera keeps it as opaque
    bytes). Those are checked here by hand, and each trigger's Workflow against hera's Workflow.
    """
    from hera.events.models import Sensor
    from hera.workflows.models import Workflow
    from pydantic import ValidationError

    document = strip_nulls(copy.deepcopy(dict(sensor)))
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
                    Workflow.model_validate(source.pop("resource"), extra="forbid")
        Sensor.model_validate(document, extra="forbid")
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


# Fields the API server adds to what it stores.
SERVER_FIELDS = ("creationTimestamp", "generation", "managedFields", "resourceVersion", "uid")
# Annotations whose values a deploy sets apart from the compile that was validated: when it was
# compiled, and the production token (``create --only-json`` puts a placeholder). Each value
# also appears elsewhere (pod metadata, env values holding JSON).
DEPLOY_TIME_ANNOTATIONS = ("metaflow/deployment_timestamp", "metaflow/production_token")
# The file the start step writes the flow's parameters to has a random name per compile.
PARAMETER_FILE = re.compile(r"argo\.set_parameters ([a-z]{10}) ")


def _first_difference(a, b, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}.{key}".lstrip(".")
            found = _first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})".lstrip(".")
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if a == b else where.lstrip(".") or "the document"


def _replace_in_values(document, replace):
    """A copy with ``replace`` applied to every string value (keys left alone)."""
    if isinstance(document, dict):
        return {k: _replace_in_values(v, replace) for k, v in document.items()}
    if isinstance(document, list):
        return [_replace_in_values(v, replace) for v in document]
    return replace(document) if isinstance(document, str) else document


def deployed_difference(validated: Mapping, deployed: Mapping | None) -> str | None:
    """Where the manifest the API holds differs from the one validated (None: it does not).

    The values of DEPLOY_TIME_ANNOTATIONS and the parameter file's name count as equal wherever
    they appear, and the fields the API server adds to metadata are left out; everything else
    must be equal.
    """
    if not deployed:
        return "nothing was deployed under that name"
    deployed = strip_nulls(copy.deepcopy(dict(deployed)))
    for field in SERVER_FIELDS:
        deployed.get("metadata", {}).pop(field, None)
    validated = strip_nulls(dict(validated))
    pairs = [
        (_annotations(deployed).get(key), _annotations(validated).get(key))
        for key in DEPLOY_TIME_ANNOTATIONS
    ]
    was, now = (
        PARAMETER_FILE.search(json.dumps(validated)),
        PARAMETER_FILE.search(json.dumps(deployed)),
    )
    pairs += [(now[1], was[1])] if was and now else []
    for now, was in pairs:
        if now and was and now != was:
            deployed = _replace_in_values(deployed, lambda text, a=now, b=was: text.replace(a, b))
    return _first_difference(validated, deployed)


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
