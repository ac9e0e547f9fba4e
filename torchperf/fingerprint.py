"""Where a figure was measured: CPU, torch build, cores, quota, governor, load, host, image, and
in a pod its node, QoS class and image digest.

Every field is best-effort: None where this machine does not say. Collecting costs a few file
reads and two calls into torch (which the measuring step has imported already).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import ssl
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from torchperf import cgroups

CPU_ROOT = Path("/sys/devices/system/cpu")
# What every pod is given to reach the Kubernetes API as its service account.
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
POD_READ_SECONDS = 5.0  # a pod whose API does not answer still measures; it records less
# On Argo the pods' image is built with its own name (image/Dockerfile, `make image IMAGE=`).
IMAGE_VARIABLE = "TORCHPERF_IMAGE"
# Fields that make two figures incomparable when they differ (compare warns about each).
IDENTITY = (
    "cpu_model", "cpu_capability", "torch_version", "blas", "parallel_backend", "image",
    "image_digest",
)  # fmt: skip
# Recorded only since a later release, or only in pods: unknown on one side is no difference.
OPTIONAL_IDENTITY = ("image_digest",)


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_model(cpuinfo: str | None) -> str | None:
    """The first "model name" of /proc/cpuinfo (x86), else its "Hardware"/"CPU part" line."""
    for key in ("model name", "Hardware", "Processor", "CPU part"):
        found = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo or "", re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or None


def cpu_mhz(cpuinfo: str | None) -> float | None:
    """The first "cpu MHz" of /proc/cpuinfo: the clock when it was read."""
    found = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", cpuinfo or "", re.MULTILINE)
    return float(found.group(1)) if found else None


def build_setting(config: str, name: str) -> str | None:
    """One ``NAME=value`` of ``torch.__config__.show()`` (BLAS_INFO=mkl, USE_OPENMP=ON)."""
    found = re.search(rf"\b{name}=([^,\s]+)", config or "")
    return found.group(1) if found else None


def parallel_backend(info: str) -> str | None:
    """ "ATen parallel backend: OpenMP" of ``torch.__config__.parallel_info()``."""
    found = re.search(r"ATen parallel backend:\s*(.+)", info or "")
    return found.group(1).strip() if found else None


def governor(cores: list[int], root: Path = CPU_ROOT) -> str | None:
    """The frequency governor of the cores ("performance"), "a/b" where they differ, or None
    where cpufreq is not readable (virtual machines, most containers)."""
    found = []
    for core in cores:
        text = _read(root / f"cpu{core}" / "cpufreq" / "scaling_governor")
        if text is not None:
            found.append(text.strip())
    return "/".join(sorted(set(found))) or None


def pod_facts(
    environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT, scheme: str = "https"
) -> dict:
    """In a pod, what only the Kubernetes API says of it: its node, its QoS class and the digest
    of the image it runs (a tag can move; the digest cannot). Read as its service account, the
    way Kubernetes tells pods to (KUBERNETES_SERVICE_HOST, the mounted token and CA); the pod's
    name and namespace come from Metaflow's environment. Outside a pod: {}. Where the read fails,
    "pod_unreadable" says why and the facts are None."""
    name = environ.get("METAFLOW_KUBERNETES_POD_NAME")
    namespace = environ.get("METAFLOW_KUBERNETES_POD_NAMESPACE")
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not (name and namespace and host):
        return {}
    facts = {"node": None, "qos_class": None, "image_digest": None, "pod_unreadable": None}
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(
        f"{scheme}://{host}:{port}/api/v1/namespaces/{namespace}/pods/{name}"
    )
    try:
        token = (account / "token").read_text().strip()
        request.add_header("Authorization", f"Bearer {token}")
        context = (
            ssl.create_default_context(cafile=str(account / "ca.crt"))
            if scheme == "https"
            else None
        )
        with urllib.request.urlopen(request, timeout=POD_READ_SECONDS, context=context) as answer:
            pod = json.load(answer)
    except (OSError, ValueError) as error:  # HTTPError, URLError, timeouts, no token, bad JSON
        status = getattr(error, "code", None)
        why = f"HTTP {status}" if status else f"{type(error).__name__}: {error}"
        if status == 403:
            why += ": the pods' service account needs get on pods (docs/argo.md)"
        facts["pod_unreadable"] = why
        return facts
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    main = next((c for c in statuses if c.get("name") == "main"), statuses[0] if statuses else {})
    facts.update(
        node=(pod.get("spec") or {}).get("nodeName"),
        qos_class=(pod.get("status") or {}).get("qosClass"),
        image_digest=main.get("imageID") or None,
    )
    return facts


def collect(threads: int, environ: Mapping[str, str] | None = None) -> dict:
    """The environment of a measurement, read before it starts (after pinning: the cores
    are this process's affinity)."""
    import torch

    environ = os.environ if environ is None else environ
    cpuinfo = _read("/proc/cpuinfo")
    affinity = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    config = torch.__config__.show()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(cpuinfo),
        "cpu_capability": capability,  # the ISA level torch dispatches to: AVX2, AVX512, ...
        "cpu_mhz": cpu_mhz(cpuinfo),
        "torch_version": str(torch.__version__),
        "blas": build_setting(config, "BLAS_INFO"),
        "parallel_backend": parallel_backend(torch.__config__.parallel_info()),
        "threads": threads,
        "cores": affinity,  # the cores this process may use
        "cpu_quota": cgroups.cpu_quota(),  # CPUs the cgroup's CFS quota allows; None: none
        "governor": governor(affinity),
        "load_1min": load,  # the machine's load average just before measuring
        "host": socket.gethostname(),
        "node_ip": environ.get("METAFLOW_KUBERNETES_NODE_IP"),  # in a pod: its node
        "pod": environ.get("METAFLOW_KUBERNETES_POD_NAME"),
        "image": environ.get(IMAGE_VARIABLE) or None,
        "python": platform.python_version(),
        "uid": os.getuid() if hasattr(os, "getuid") else None,  # 0: measured as root
        **pod_facts(environ),  # in a pod: node, qos_class, image_digest
    }


def warnings(env: Mapping) -> list[str]:
    """Hygiene of the environment: a frequency governor other than performance lets the clock
    move while measuring (nothing where it cannot be read); a pod that is not Guaranteed may
    share its cores; a pod that could not read itself records no node or QoS class."""
    found, said = env.get("governor"), []
    if found and found != "performance":
        said.append(f"frequency governor is {found}, not performance: the clock may vary")
    if env.get("pod_unreadable"):
        said.append(f"the pod's node and QoS class are unknown ({env['pod_unreadable']})")
    qos = env.get("qos_class")
    if qos and qos != "Guaranteed":
        said.append(f"the pod's QoS class is {qos}, not Guaranteed: its cores may be shared")
    return said


def differences(a: Mapping | None, b: Mapping | None) -> list[str]:
    """The IDENTITY fields two fingerprints disagree on, as "torch_version: 2.12.0 -> 2.13.0"."""
    a, b = a or {}, b or {}
    return [
        f"{key}: {a.get(key)} -> {b.get(key)}"
        for key in IDENTITY
        if a.get(key) != b.get(key)
        and not (key in OPTIONAL_IDENTITY and None in (a.get(key), b.get(key)))
    ]
