"""The settings of one variant, their defaults and their validation.

Every check raises ``ConfigError`` with one line that names the key and the value, so
that entry points can print it and exit before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torchperf.errors import ConfigError  # noqa: F401 - re-exported: where bad input is named

# Three n x n fp32 tensors are alive at once: the input, the output and the allocator's slack.
TENSORS_ALIVE = 3
BYTES_PER_FP32 = 4
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class VariantSettings:
    """What TorchPerfFlow needs to measure one variant."""

    cpu: int = 1  # torch threads, and the CPU request of the measuring step
    tensor_dim: int = 1024  # n: each call squares one n x n fp32 matrix
    measure_seconds: float = 2.0  # timed measuring after warm-up
    memory_mb: int = 4096  # memory request of the measuring step
    device: str = "cpu"  # cpu, or cuda to measure a GPU
    tag: str | None = None  # the sweep this variant belongs to, if any
    event: str | None = None  # Argo event published when the run succeeds, if any
    turn: str | None = None  # a local sweep's hand-over of the cores (torchperf/turns.py)

    def as_config(self) -> dict:
        """The flow's ``config`` value: a plain dict, as Metaflow's Config expects."""
        return asdict(self)


DEFAULT_VARIANT = VariantSettings().as_config()


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        whole_float = isinstance(value, float) and value.is_integer()
        if whole_float or (isinstance(value, str) and value.strip().isdigit()):
            value = int(value)
        else:
            raise ConfigError(f"{key}={value!r} must be a whole number")
    if value < 1:
        raise ConfigError(f"{key}={value} must be at least 1")
    return value


def matrix_bytes(tensor_dim: int) -> int:
    """Memory the benchmark holds for one matrix size."""
    return TENSORS_ALIVE * BYTES_PER_FP32 * tensor_dim * tensor_dim


def size_text(size: int) -> str:
    """Bytes in the largest unit that keeps a figure of at least 1: 48.0 MiB, 1.5 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def available_memory_bytes() -> int:
    """Memory this process may still use: the node's available memory (Linux), or a
    conservative guess elsewhere, bounded by the cgroup's limit (a pod's, for one)."""
    from torchperf.cgroups import memory_limit_bytes

    node = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    node = int(line.split()[1]) * 1024
    except OSError:
        pass
    if node is None:
        node = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    limit = memory_limit_bytes()
    return node if limit is None else min(node, limit)


def usable_cores() -> list[int]:
    """The core ids this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def validate_variant(
    raw: Mapping,
    *,
    max_cpu: int | None = None,
    memory_bytes: int | None = None,
) -> VariantSettings:
    """Check one variant's settings and return them typed.

    ``max_cpu`` bounds ``cpu`` where the variant runs on this machine; ``memory_bytes`` is the
    memory the matrices must fit in (this machine's available memory, or the memory request).
    """
    known = set(DEFAULT_VARIANT)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    values = {**DEFAULT_VARIANT, **raw}
    cpu = _positive_int("cpu", values["cpu"])
    tensor_dim = _positive_int("tensor_dim", values["tensor_dim"])
    memory_mb = _positive_int("memory_mb", values["memory_mb"])
    try:
        measure_seconds = float(values["measure_seconds"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"measure_seconds={values['measure_seconds']!r} must be a number of seconds"
        ) from None
    if not measure_seconds > 0:
        raise ConfigError(f"measure_seconds={values['measure_seconds']} must be above 0")
    device = values["device"]
    if device not in DEVICES:
        raise ConfigError(f"device={device!r} must be one of {', '.join(DEVICES)}")
    if max_cpu is not None and cpu > max_cpu:
        raise ConfigError(f"cpu={cpu} exceeds the {max_cpu} cores usable here")
    need = matrix_bytes(tensor_dim)
    budget = memory_mb * 2**20 if memory_bytes is None else min(memory_bytes, memory_mb * 2**20)
    if need > budget:
        raise ConfigError(
            f"tensor_dim={tensor_dim} needs {size_text(need)} for its matrices "
            f"but only {size_text(budget)} is available"
        )
    return VariantSettings(
        cpu=cpu,
        tensor_dim=tensor_dim,
        measure_seconds=measure_seconds,
        memory_mb=memory_mb,
        device=device,
        tag=values["tag"],
        event=values["event"],
        turn=values["turn"],
    )


def parse_variant_config(text: str) -> dict:
    """Metaflow Config parser: a partial JSON object, completed with defaults and checked."""
    import json

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a JSON object, not {type(raw).__name__}")
    return validate_variant(raw).as_config()
