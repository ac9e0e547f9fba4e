"""The sweep's Argo event: what a successful variant announces to SweepAnalyticsFlow's Sensor.

The sweep process publishes it after it has seen the variant's Workflow reach ``Succeeded``. By
then Argo has finished every step, so Metaflow has marked the run successful: the analytics run
the event starts cannot see the variant half-done. (A step-level ``ArgoEvent.safe_publish`` in
``end`` would race that mark; an ``@exit_hook`` container would not get the webhook URL, which
Metaflow does not pass to hook pods.)
"""

from __future__ import annotations


def payload(tag: str, run: str | None, variant: str | None) -> dict:
    """What the analytics run may read from its trigger; nothing secret goes in here."""
    return {"tag": tag, "run": run or "", "variant": variant or ""}


def publish(event: str, webhook_url: str, body: dict) -> str:
    """POST the event to Argo Events' webhook through Metaflow's own publisher; its id."""
    from metaflow.integrations import ArgoEvent

    return ArgoEvent(event, url=webhook_url).publish(payload=body, ignore_errors=False)
