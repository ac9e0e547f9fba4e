"""The sweep's Argo event: what a successful variant announces to SweepAnalyticsFlow's Sensor.

TorchPerfFlow's ``end`` step publishes it from inside its workflow with Metaflow's ``ArgoEvent``.
In a pod, Metaflow sets the webhook URL to the cluster's internal one
(``METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL``), so the machine the sweep started from never needs
to reach Argo Events. The event arrives while the run is still in its end step, before Metaflow
marks it successful: the analytics run waits for runs in their end step (torchperf/analytics.py).
A publish the EventSource answers with a 5xx or 429 is tried again (Metaflow retries only lost
connections); one that still fails is one line in the step's log, never a failed variant: the
next analytics run (at the latest the sweep's final one) includes the variant all the same.
Outside Argo nothing is published; the local backend starts analytics runs itself.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error

from torchperf.errors import one_line

# Metaflow retries a publish whose connection fails, but not one the EventSource answers with an
# error: a 5xx or 429 (its EventBus briefly unavailable) is tried this many times in all.
PUBLISH_TRIES = 3
PUBLISH_BACKOFF_SECONDS = 1.0


def _retryable(error: BaseException) -> bool:
    """Whether the publish failed on an HTTP answer worth another try (Metaflow wraps it)."""
    cause = error.__cause__ or error.__context__
    code = getattr(cause, "code", None) if isinstance(cause, urllib.error.HTTPError) else None
    return code is not None and (code >= 500 or code == 429)


def payload(tag: str, run: str | None, variant: str | None) -> dict:
    """What the analytics run may read from its trigger; nothing secret goes in here."""
    return {"tag": tag, "run": run or "", "variant": variant or ""}


def announce(event: str | None, body: dict) -> str | None:
    """Publish ``event`` from inside an Argo workflow (a no-op elsewhere); its id, or None."""
    # Metaflow sets this in every step of a deployed workflow.
    if not event or not os.environ.get("ARGO_WORKFLOW_TEMPLATE"):
        return None
    from metaflow.integrations import ArgoEvent

    for attempt in range(1, PUBLISH_TRIES + 1):
        try:
            return ArgoEvent(event).safe_publish(payload=body, ignore_errors=False)
        except Exception as error:  # noqa: BLE001 - a lost event must not fail a measured variant
            if attempt < PUBLISH_TRIES and _retryable(error):
                time.sleep(PUBLISH_BACKOFF_SECONDS * attempt)
                continue
            why = one_line(error)
            print(f"warning: event {event} not published ({why})", file=sys.stderr)
            return None
