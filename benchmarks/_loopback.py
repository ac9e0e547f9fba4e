"""The Metaflow settings the Argo benchmarks share: an S3 datastore, Argo Events names and,
where they use them, a metadata service and a Kubernetes API, all on loopback."""

from __future__ import annotations

import os
from pathlib import Path


def argo_settings(scratch: Path, s3_url: str, service_url: str | None = None, api=None) -> dict:
    """METAFLOW_* (and AWS_*, KUBECONFIG) for a sweep against the loopback parts given."""
    settings = {
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"),
        "METAFLOW_HOME": str(scratch / "mfhome"),  # no user config file
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_S3_ENDPOINT_URL": s3_url,
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://torchperf/metaflow",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "METAFLOW_KUBERNETES_NAMESPACE": "default",
        "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
    }
    if service_url:
        settings |= {"METAFLOW_DEFAULT_METADATA": "service", "METAFLOW_SERVICE_URL": service_url}
    if api is not None:
        settings |= {
            "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": f"{api.url}/webhook",
            "KUBECONFIG": str(api.write_kubeconfig(scratch / "kubeconfig")),
        }
    return settings
