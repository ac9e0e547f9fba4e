"""The root settings of config.yaml as a typed schema in Hydra's ConfigStore.

config.yaml lists ``torchperf_schema`` first among its defaults, so the composed config is
typed: in struct mode Hydra itself refuses an override of an unknown key (``cpux=1``) or a value
of the wrong type (``cpu=two``, ``live_analytics=maybe``). The values and their comments stay
in config.yaml; the schema holds only the types.
"""

# No `from __future__ import annotations`: BOOLEANS reads the field types as types.
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import MISSING

SCHEMA_NAME = "torchperf_schema"


@dataclass
class SweepSettings:
    cpu: int = MISSING
    tensor_dim: int = MISSING
    measure_seconds: float = MISSING
    memory_mb: int = MISSING
    device: str = MISSING
    tag: str | None = MISSING
    new_tag: bool = MISSING
    dry_run: bool = MISSING
    variant_timeout_seconds: float = MISSING
    live_analytics: bool = MISSING
    baseline: str | None = MISSING
    # A node of its own (conf/backend/), whose keys depend on the backend: struct mode refuses
    # an unknown key inside it all the same.
    backend: Any = MISSING


SETTINGS = tuple(field.name for field in fields(SweepSettings))
BOOLEANS = tuple(field.name for field in fields(SweepSettings) if field.type is bool)


def register() -> None:
    """Store the schema where config.yaml's defaults find it; before Hydra composes anything."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=SweepSettings, provider="torchperf")
