"""The Argo Workflows backend, one module per concern along a variant's life:

- settings.py: what a sweep needs from Metaflow's configuration, checked before anything runs;
- deploy.py: Metaflow's Deployer create, in worker processes;
- manifests.py: what a compiled or deployed manifest must hold (hera's models, our invariants);
- api.py: the Kubernetes calls the sweep makes itself (trigger, watch, terminate, delete);
- backend.py: ArgoBackend, which strings them together for the sweep.
"""

from torchperf.backends.argo.api import GONE, Argo
from torchperf.backends.argo.backend import ArgoBackend, analytics_title, variant_title
from torchperf.backends.argo.settings import (
    COMPILE_NEEDS,
    UNSET_IMAGE,
    ArgoSettings,
    resolve_settings,
)

__all__ = [
    "COMPILE_NEEDS",
    "GONE",
    "UNSET_IMAGE",
    "Argo",
    "ArgoBackend",
    "ArgoSettings",
    "analytics_title",
    "resolve_settings",
    "variant_title",
]
