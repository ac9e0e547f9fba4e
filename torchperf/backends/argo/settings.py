"""What an Argo sweep needs from Metaflow's configuration and this machine, checked up front."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from torchperf.settings import ConfigError

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
class ClusterAccess:
    """Where a sweep's objects live and how this machine reaches them: what ``clean`` needs."""

    namespace: str  # where templates, workflows and ConfigMaps live
    sensor_namespace: str  # where the analytics Sensor lives
    kubeconfig: Path | None  # None: in-cluster credentials


def cluster_access(environ: Mapping[str, str], namespace: str | None = None) -> ClusterAccess:
    """The namespaces and kubeconfig Metaflow's configuration names (``namespace`` first);
    ConfigError when no kubeconfig is found."""
    config = metaflow_settings(environ)
    namespace = namespace or config.get("KUBERNETES_NAMESPACE") or "default"
    return ClusterAccess(
        namespace=namespace,
        sensor_namespace=config.get("ARGO_EVENTS_SENSOR_NAMESPACE") or namespace,
        kubeconfig=kubeconfig_path(environ),
    )


@dataclasses.dataclass(frozen=True)
class ArgoSettings:
    namespace: str  # where templates and workflows live
    sensor_namespace: str  # where the analytics Sensor lives
    kubeconfig: Path | None  # None: in-cluster credentials
    datastore: str  # s3, gs or azure: the code package and the results travel through it
    env: dict  # what the Deployer's subprocesses get on top of this process's environment
    event_source: str = ""  # the Argo Events EventSource the analytics Sensor listens to
    event_bus: str = "default"  # the EventBus the Sensor subscribes through (Metaflow's default)
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
        event_source=config["ARGO_EVENTS_EVENT_SOURCE"],
        event_bus=config.get("ARGO_EVENTS_EVENT_BUS") or "default",
        still_needed=problems,
    )
