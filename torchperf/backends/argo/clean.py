"""``python -m torchperf clean TAG``: remove what a sweep left on the cluster.

A sweep killed outright (SIGKILL, a machine that died) or run with ``keep_deployments`` leaves
its objects behind, the Sensor's pod still running. Every object a sweep makes carries the label
``torchperf/tag=TAG``; a template whose create was cut short before the sweep labelled it is
known by the tag and branch Metaflow wrote on it, and its Sensor by the name the template gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping

from torchperf.backends.argo.api import Argo
from torchperf.backends.argo.manifests import TAG_LABEL
from torchperf.backends.argo.settings import ClusterAccess, cluster_access
from torchperf.errors import one_line
from torchperf.plan import check_tag

# An interactive command: an API away for this long is reported, not waited out.
PATIENCE_SECONDS = 30.0


@dataclasses.dataclass
class Cleaned:
    removed: list[str] = dataclasses.field(default_factory=list)  # "Sensor ns/name", ...
    failed: list[str] = dataclasses.field(default_factory=list)  # "Sensor ns/name: why", ...


def of_sweep(template: Mapping, tag: str) -> bool:
    """Whether a WorkflowTemplate is sweep ``tag``'s: by its label, or, where the sweep never
    labelled it, by the tag and the branch Metaflow's create wrote on it."""
    metadata = template.get("metadata", {})
    if (metadata.get("labels") or {}).get(TAG_LABEL) == tag:
        return True
    annotations = metadata.get("annotations") or {}
    try:
        tags = json.loads(annotations.get("metaflow/tags") or "[]")
    except ValueError:
        return False
    return tag in tags and tag in annotations.get("metaflow/branch_name", "")


def clean(tag: str, argo: Argo, access: ClusterAccess) -> Cleaned:
    """Delete sweep ``tag``'s Sensors first (no analytics run starts), then its Workflows (their
    pods go with them; analytics runs started just before are found now), its
    WorkflowTemplates and its ConfigMaps, in the namespace and the Sensor namespace."""
    selector = f"{TAG_LABEL}={tag}"
    namespaces = list(dict.fromkeys([access.namespace, access.sensor_namespace]))
    done = Cleaned()

    def delete(kind: str, plural: str, namespace: str, name: str) -> None:
        try:
            if plural == "configmaps":
                gone = argo.delete_config_map(name, namespace)
            else:
                gone = argo.delete(plural, name, namespace)
        except Exception as error:  # noqa: BLE001 - reported, the others are still deleted
            done.failed.append(f"{kind} {namespace}/{name}: {one_line(error)}")
            return
        if gone:
            done.removed.append(f"{kind} {namespace}/{name}")

    templates = [
        (namespace, template)
        for namespace in namespaces
        for template in argo.list("workflowtemplates", namespace)
        if of_sweep(template, tag)
    ]
    sensors = {
        (namespace, sensor["metadata"]["name"])
        for namespace in namespaces
        for sensor in argo.list("sensors", namespace, selector)
    }
    for _, template in templates:
        annotations = template["metadata"].get("annotations") or {}
        if annotations.get("metaflow/sensor_name"):
            namespace = annotations.get("metaflow/sensor_namespace") or access.sensor_namespace
            sensors.add((namespace, annotations["metaflow/sensor_name"]))
    for namespace, name in sorted(sensors):
        delete("Sensor", "sensors", namespace, name)
    for namespace in namespaces:
        for workflow in argo.list("workflows", namespace, selector):
            delete("Workflow", "workflows", namespace, workflow["metadata"]["name"])
    for namespace, template in templates:
        delete("WorkflowTemplate", "workflowtemplates", namespace, template["metadata"]["name"])
    for namespace in namespaces:
        for config_map in argo.list("configmaps", namespace, selector):
            delete("ConfigMap", "configmaps", namespace, config_map["metadata"]["name"])
    return done


def run(tag: str, namespace: str | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command: what was removed, one line each; its exit status (1 when something could
    not be removed or listed). Bad input raises ConfigError."""
    check_tag(tag)
    access = cluster_access(os.environ if environ is None else environ, namespace)
    argo = Argo(access, patience_seconds=PATIENCE_SECONDS)
    where = " and ".join(dict.fromkeys([access.namespace, access.sensor_namespace]))
    try:
        done = clean(tag, argo, access)
    except Exception as error:  # noqa: BLE001 - a listing the API refused or never answered
        print(f"error: could not list what sweep {tag} left in {where}: {one_line(error)}",
              file=sys.stderr)  # fmt: skip
        return 1
    for line in done.removed:
        print(f"deleted {line}")
    for line in done.failed:
        print(f"error: could not delete {line}", file=sys.stderr)
    if not done.removed and not done.failed:
        print(f"nothing of sweep {tag} is left in namespace {where} ({TAG_LABEL}={tag})")
    return 1 if done.failed else 0
