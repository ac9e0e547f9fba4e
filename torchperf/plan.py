"""The sweep plan: identity (tag, branches, event) and the list of variants, as pure functions."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from torchperf.errors import ConfigError

# Metaflow accepts only these in a @project branch name.
BRANCH_PATTERN = re.compile(r"^[a-z0-9_]+$")
# A tag is also a Kubernetes label value (torchperf/tag on Argo objects): it must begin and end
# with a letter or digit.
TAG_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9_]{0,38}[a-z0-9])?$")
# The keys a sweep may vary; everything else is shared by all variants.
SWEPT_KEYS = ("cpu", "tensor_dim", "measure_seconds", "memory_mb", "device")


def new_sweep_tag(now: datetime | None = None) -> str:
    """A tag unique to one sweep, even for two sweeps started in the same second."""
    now = now or datetime.now(timezone.utc)
    return f"sweep_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


def check_tag(tag: str) -> str:
    """A tag must be usable inside branch and event names, and as a Kubernetes label value."""
    if not TAG_PATTERN.match(tag):
        raise ConfigError(
            f"tag={tag!r} must be 1-40 lowercase letters, digits or underscores, beginning and "
            "ending with a letter or digit"
        )
    return tag


def variant_id(cpu: int, tensor_dim: int, device: str = "cpu") -> str:
    """Short, readable and unambiguous even once Argo drops the underscores: c2_n1024 -> c2n1024."""
    return f"c{cpu}_n{tensor_dim}" + ("" if device == "cpu" else f"_{device}")


def branch_name(tag: str, cpu: int, tensor_dim: int, device: str = "cpu") -> str:
    """The @project branch of one variant: its own namespace in Metaflow and in Argo.

    The variant comes first: Metaflow names an Argo WorkflowTemplate after the start of the
    branch plus a 25-bit hash once the name passes 45 characters, so a branch that began with
    the tag would leave 500 variants of one sweep to the hash alone (about 0.4 % collide).
    """
    branch = f"{variant_id(cpu, tensor_dim, device)}_{tag}"
    assert BRANCH_PATTERN.match(branch), branch
    return branch


def analytics_branch(tag: str) -> str:
    """The @project branch of the sweep's SweepAnalyticsFlow."""
    return f"{tag}_analytics"


def event_name(tag: str) -> str:
    """The Argo event a successful variant publishes and the sweep's analytics flow waits for."""
    return f"torchperf_{tag}"


@dataclass(frozen=True)
class Variant:
    """One point of the grid, with the branch it runs in."""

    cpu: int
    tensor_dim: int
    branch: str
    device: str = "cpu"

    @property
    def id(self) -> str:
        return variant_id(self.cpu, self.tensor_dim, self.device)

    @property
    def label(self) -> str:
        """How people read it: cpu=2 n=512, with the device when it is not the CPU."""
        return f"cpu={self.cpu} {series_label(self.tensor_dim, self.device)}"


def series_label(tensor_dim: int, device: str = "cpu") -> str:
    """One line of a chart, one column of a table: n=512, or n=512 cuda."""
    return f"n={tensor_dim}" + ("" if device == "cpu" else f" {device}")


def grid(params: Mapping[str, Iterable]) -> list[dict]:
    """The cartesian product of swept values, in Hydra's basic-sweeper order."""
    keys = list(params)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*params.values())]
