"""The sweep plan: identity (tag, branches, event) and the list of variants, as pure functions."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from torchperf.errors import ConfigError, one_line

# Metaflow accepts only these in a @project branch name.
BRANCH_PATTERN = re.compile(r"^[a-z0-9_]+$")
TAG_PATTERN = re.compile(r"^[a-z0-9_]{1,40}$")
# The keys a sweep may vary; everything else is shared by all variants.
SWEPT_KEYS = ("cpu", "tensor_dim", "measure_seconds", "memory_mb", "device")


def new_sweep_tag(now: datetime | None = None) -> str:
    """A tag unique to one sweep, even for two sweeps started in the same second."""
    now = now or datetime.now(timezone.utc)
    return f"sweep_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


def check_tag(tag: str) -> str:
    """A tag must be usable inside branch and event names."""
    if not TAG_PATTERN.match(tag):
        raise ConfigError(f"tag={tag!r} must be 1-40 lowercase letters, digits or underscores")
    return tag


def variant_id(cpu: int, tensor_dim: int, device: str = "cpu") -> str:
    """Short, readable and unambiguous even once Argo drops the underscores: c2_n1024 -> c2n1024."""
    return f"c{cpu}_n{tensor_dim}" + ("" if device == "cpu" else f"_{device}")


def branch_name(tag: str, cpu: int, tensor_dim: int, device: str = "cpu") -> str:
    """The @project branch of one variant: its own namespace in Metaflow and in Argo."""
    branch = f"{tag}_{variant_id(cpu, tensor_dim, device)}"
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


def check_overrides(
    arguments: Iterable[str],
    known_keys: Iterable[str],
    groups: Mapping[str, Iterable[str]],
    group_keys: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Reject an override of an unknown key or an unknown group option, in one line.

    ``group_keys`` are the settings inside a group's node (``backend.max_parallel``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    known = set(known_keys)
    group_keys = group_keys or {}
    parser = OverridesParser.create()
    for argument in arguments:
        try:
            (override,) = parser.parse_overrides([argument])
        except OverrideParseException as error:
            why = one_line(error, first=True)
            raise ConfigError(f"cannot read override {argument!r}: {why}") from None
        key = override.key_or_group
        root = key.split(".")[0].split("/")[0]
        if root == "hydra":
            continue
        if key in groups:
            options = set(groups[key])
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
            for value in values:
                if value not in options:
                    raise ConfigError(
                        f"{key}={value} is unknown; choose one of: {', '.join(sorted(options))}"
                    )
            continue
        if root in group_keys and "." in key:
            inner = set(group_keys[root])
            if key.split(".")[1] not in inner:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(inner))}")
            continue
        if root not in known:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
