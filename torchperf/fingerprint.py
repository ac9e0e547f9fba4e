"""Where a figure was measured: CPU, torch build, cores, quota, governor, load, host, image.

Every field is best-effort: None where this machine does not say. Collecting costs a few file
reads and two calls into torch (which the measuring step has imported already).
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Mapping
from pathlib import Path

from torchperf import cgroups

CPU_ROOT = Path("/sys/devices/system/cpu")
# On Argo the pods' image is built with its own name (image/Dockerfile, `make image IMAGE=`).
IMAGE_VARIABLE = "TORCHPERF_IMAGE"
# Fields that make two figures incomparable when they differ (compare warns about each).
IDENTITY = ("cpu_model", "cpu_capability", "torch_version", "blas", "parallel_backend", "image")


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
    }


def warnings(env: Mapping) -> list[str]:
    """Hygiene of the environment: a frequency governor other than performance lets the clock
    move while measuring. Nothing where the governor cannot be read."""
    found = env.get("governor")
    if found and found != "performance":
        return [f"frequency governor is {found}, not performance: the clock may vary"]
    return []


def differences(a: Mapping | None, b: Mapping | None) -> list[str]:
    """The IDENTITY fields two fingerprints disagree on, as "torch_version: 2.12.0 -> 2.13.0"."""
    a, b = a or {}, b or {}
    return [f"{key}: {a.get(key)} -> {b.get(key)}" for key in IDENTITY if a.get(key) != b.get(key)]
