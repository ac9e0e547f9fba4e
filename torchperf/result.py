"""The one schema of a measured figure: what TorchPerfFlow stores as ``result``, read by everyone.

The flow writes ``Result.to_dict()`` (plain types, so that reading it needs neither torch nor
torchperf); every reader goes through ``Result.from_dict``, which reads this version and the
unversioned dicts that runs recorded before the schema had a version (fields added over time are
None there), and refuses a newer version in one line rather than misreading it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields

from torchperf.errors import ConfigError

# Bump when a field changes meaning or a required one is added; readers refuse newer versions.
SCHEMA_VERSION = 1
VERSION_KEY = "schema_version"


class ResultSchemaError(ConfigError):
    """A result this torchperf cannot read: newer than it knows, or missing what it needs. A
    ConfigError: the commands that read runs (compare, resume) end with its one line."""


@dataclass(frozen=True)
class Environment:
    """Where the figure was measured (torchperf/fingerprint.py); every field may be None."""

    cpu_model: str | None = None
    cpu_capability: str | None = None  # the ISA level torch dispatches to: AVX2, AVX512, ...
    cpu_mhz: float | None = None
    torch_version: str | None = None
    blas: str | None = None
    parallel_backend: str | None = None
    threads: int | None = None
    cores: tuple[int, ...] | None = None  # the cores the process could use
    cpu_quota: float | None = None
    governor: str | None = None
    load_1min: float | None = None
    host: str | None = None
    node_ip: str | None = None
    pod: str | None = None
    image: str | None = None
    python: str | None = None
    node: str | None = None  # in a pod: its Kubernetes node
    qos_class: str | None = None  # in a pod: Guaranteed, Burstable or BestEffort
    image_digest: str | None = None  # the image's content digest (its tag may move)
    pod_unreadable: str | None = None  # why the pod's node, QoS and digest could not be read
    # Fields a newer fingerprint records that this schema does not name: kept, not lost.
    other: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Environment:
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"other"}
        values = {key: data.pop(key) for key in list(data) if key in known}
        if values.get("cores") is not None:
            values["cores"] = tuple(values["cores"])
        return cls(**values, other=data)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        if data["cores"] is not None:
            data["cores"] = list(data["cores"])
        return {**data, **self.other}

    def get(self, key: str, default=None):
        """A field by name (other fields included), as readers of the old dict did."""
        if key in self.other:
            return self.other[key]
        return getattr(self, key, default) if key != "other" else default


@dataclass(frozen=True)
class Result:
    """One variant's measurement: the median of its timed samples, their spread and interval,
    how the cores were shared or throttled, and its environment.

    Fields after ``warmup_settled`` were added over time: runs recorded before them read None
    (or empty), never a made-up value."""

    gflops: float  # the median of gflops_samples
    gflops_samples: tuple[float, ...]
    gflops_q1: float
    gflops_q3: float
    iqr_ratio: float
    noisy: bool
    squarings_per_second: float
    calls_per_sample: int
    threads: int
    tensor_dim: int
    device: str  # "cpu", or the CUDA device's name
    torch_version: str
    measure_seconds: float  # time spent in timed samples
    warmup_seconds: float
    warmup_settled: bool
    # The median's interval [low, high] at gflops_ci_level, and the digits it supports.
    gflops_ci: tuple[float, float] | None = None
    gflops_ci_level: float | None = None
    gflops_sig_figs: int | None = None
    # Sharing: CPU time / (threads x wall) and run-queue wait over the timed samples.
    cpu_utilization: float | None = None
    run_queue_share: float | None = None
    shared: bool | None = None
    measured_from: float | None = None  # epoch seconds: warm-up began
    measured_until: float | None = None
    affinity: tuple[int, ...] | None = None  # the cores measured on
    # The cgroup: CFS quota, the CPUs really usable, throttling while measuring.
    cpu_quota: float | None = None
    usable_cpus: float | None = None
    throttled_periods: int | None = None
    throttled_seconds: float | None = None
    throttled: bool | None = None
    warnings: tuple[str, ...] = ()  # sharing, throttling, governor: the figure still counts
    env: Environment = field(default_factory=Environment)

    def to_dict(self) -> dict:
        """The artifact: plain types, with the schema's version."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "env"}
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return {VERSION_KEY: SCHEMA_VERSION, **data, "env": self.env.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Result:
        """Read an artifact of this version or an unversioned one; ResultSchemaError for a newer
        version or one that lacks a required field."""
        if not isinstance(data, Mapping):
            raise ResultSchemaError(f"a result is a mapping, not {type(data).__name__}")
        version = data.get(VERSION_KEY)
        if version is not None and (not isinstance(version, int) or version > SCHEMA_VERSION):
            raise ResultSchemaError(
                f"result schema version {version!r} is newer than this torchperf reads "
                f"({SCHEMA_VERSION}): upgrade torchperf to read this run"
            )
        # Unversioned results (before the schema) hold the same names; later fields may lack.
        required = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ResultSchemaError(f"result lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"env"}
        values = {key: data[key] for key in known if key in data and data[key] is not None}
        for key in ("gflops_samples", "gflops_ci", "affinity", "warnings"):
            if key in values:
                values[key] = tuple(values[key])
        values["torch_version"] = str(values["torch_version"])  # an old run kept torch's type
        return cls(**values, env=Environment.from_dict(data.get("env")))

    @classmethod
    def measured(
        cls,
        timed: Mapping,
        *,
        affinity: Sequence[int],
        limits: Mapping,
        env: Mapping,
        warnings: Sequence[str],
    ) -> Result:
        """What the flow records: ``Benchmark.time()``'s figure, the cores, the cgroup's
        ``limits_report``, the fingerprint and every warning."""
        merged = {**timed, **limits, "affinity": list(affinity), "warnings": list(warnings)}
        merged.pop(VERSION_KEY, None)
        return cls.from_dict({**merged, "env": dict(env)})

    @property
    def interval(self) -> tuple[float, float, float | None] | None:
        """(low, high, level) of the median, None for runs recorded before it."""
        if not self.gflops_ci:
            return None
        return (*self.gflops_ci, self.gflops_ci_level)
