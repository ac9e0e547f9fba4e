"""How a figure, a warning and the environment read wherever they are shown: the terminal, the
benchmark card, the analytics card, the report and `compare`.

One formatter per kind of text, so that a figure reads the same in every place it appears.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torchperf import stats


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def figure(median: float, interval: Sequence | None = None, unit: str = "GFLOP/s") -> str:
    """'205 GFLOP/s (95 % CI 201–209)': the median to the digits its interval supports.

    ``interval`` is (low, high) or (low, high, level), as results and summaries hold it; a
    missing or NaN bound gives the median to one decimal, a missing level gives "CI" without a
    coverage (older runs did not record it).
    """
    low, high, level = (*interval, None, None, None)[:3] if interval else (None, None, None)
    if not (_known(low) and _known(high)):
        return f"{median:.1f} {unit}".strip()
    return stats.describe(median, low, high, level if _known(level) else None, unit=unit)


def warning_name(warning: str) -> str:
    """A warning's first clause ("shared cores", "throttled"): what a table cell has room for."""
    return warning.split(":")[0].strip()


# The fingerprint's fields as people read them; a field not listed reads as its key.
ENV_LABELS = {
    "cpu_model": "cpu model",
    "cpu_capability": "cpu capability (ISA torch uses)",
    "cpu_mhz": "cpu MHz",
    "torch_version": "torch",
    "blas": "BLAS",
    "parallel_backend": "parallel backend",
    "threads": "threads",
    "cores": "pinned cores (ids)",  # a list of core ids, not a count
    "cpu_quota": "cpu quota (cgroup)",
    "governor": "frequency governor",
    "load_1min": "load average (1 min) before measuring",
    "host": "host",
    "node_ip": "node IP",
    "pod": "pod",
    "image": "container image",
    "python": "python",
}
# What a missing value means, where it means something other than "not readable".
ENV_MISSING = {
    "image": "none (not run from an image)",
    "cpu_quota": "none",
    "node_ip": "none (not in a pod)",
    "pod": "none (not in a pod)",
}


def env_value(key: str, value) -> str:
    """One fingerprint value as text; None says what its absence means."""
    if not _known(value):
        return ENV_MISSING.get(key, "unknown")
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def env_rows(env: Mapping) -> list[list[str]]:
    """The fingerprint as [label, value] rows."""
    return [[ENV_LABELS.get(key, key), env_value(key, value)] for key, value in env.items()]
