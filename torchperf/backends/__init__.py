"""Where variants run: each backend is the one seam between the sweep and the outside world."""

from __future__ import annotations

import importlib

from torchperf.backends.base import Backend, Outcome, SweepSpec
from torchperf.settings import ConfigError

BACKENDS = {
    "local": "torchperf.backends.local:LocalBackend",
    "argo": "torchperf.backends.argo:ArgoBackend",
}


def make_backend(name: str, options: dict) -> Backend:
    """The backend called ``name``, built from its config node."""
    if name not in BACKENDS:
        raise ConfigError(f"backend={name!r} is unknown; known: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["BACKENDS", "Backend", "Outcome", "SweepSpec", "make_backend"]
