"""The sweep's Argo event: what a successful variant announces to SweepAnalyticsFlow's Sensor.

TorchPerfFlow's ``end`` step publishes it from inside its workflow with Metaflow's ``ArgoEvent``.
In a pod, Metaflow sets the webhook URL to the cluster's internal one
(``METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL``), so the machine the sweep started from never needs
to reach Argo Events. The event arrives while the run is still in its end step, before Metaflow
marks it successful: the analytics run waits for runs in their end step (torchperf/analytics.py).
A publish that fails is one line in the step's log, never a failed variant: the next analytics run
(at the latest the sweep's final one) includes the variant all the same. Outside Argo nothing is
published; the local backend starts analytics runs itself.
"""

from __future__ import annotations

import os
import sys

from torchperf.errors import one_line


def payload(tag: str, run: str | None, variant: str | None) -> dict:
    """What the analytics run may read from its trigger; nothing secret goes in here."""
    return {"tag": tag, "run": run or "", "variant": variant or ""}


def announce(event: str | None, body: dict) -> str | None:
    """Publish ``event`` from inside an Argo workflow (a no-op elsewhere); its id, or None."""
    # Metaflow sets this in every step of a deployed workflow.
    if not event or not os.environ.get("ARGO_WORKFLOW_TEMPLATE"):
        return None
    from metaflow.integrations import ArgoEvent

    try:
        return ArgoEvent(event).safe_publish(payload=body, ignore_errors=False)
    except Exception as error:  # noqa: BLE001 - a lost event must not fail a measured variant
        why = one_line(error)
        print(f"warning: event {event} not published ({why})", file=sys.stderr)
        return None
