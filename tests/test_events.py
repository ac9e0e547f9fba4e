"""The success event a variant's end step publishes: only inside Argo, never failing the step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kube_api import KubeAPI

from torchperf import analytics
from torchperf.analytics import Collected
from torchperf.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ANNOUNCE = (
    "import sys; from torchperf import events; "
    "print(events.announce(sys.argv[1], events.payload('t', 'TorchPerfFlow/argo-x', 'c1_n64')))"
)


def announce(event: str, **env) -> subprocess.CompletedProcess:
    """events.announce in a fresh process: Metaflow reads the webhook URL at import."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARGO_WORKFLOW")}
    return subprocess.run(
        [sys.executable, "-c", ANNOUNCE, event],
        env={**environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_outside_argo_nothing_is_published():
    with KubeAPI() as api:
        done = announce("torchperf_t", METAFLOW_ARGO_EVENTS_WEBHOOK_URL=f"{api.url}/webhook")
    assert done.returncode == 0 and done.stdout.strip() == "None"
    assert api.events == []


def test_inside_argo_the_event_goes_to_the_pods_webhook_with_the_run():
    with KubeAPI() as api:
        done = announce(
            "torchperf_t",
            ARGO_WORKFLOW_TEMPLATE="torchperf-x",
            METAFLOW_ARGO_EVENTS_WEBHOOK_URL=f"{api.url}/webhook",
        )
    assert done.returncode == 0, done.stderr
    (event,) = api.events
    assert event["name"] == "torchperf_t"
    assert event["payload"]["run"] == "TorchPerfFlow/argo-x"
    assert event["payload"]["variant"] == "c1_n64"
    assert event["payload"]["id"] == done.stdout.strip()


def announce_refused(times: int) -> tuple[KubeAPI, subprocess.CompletedProcess]:
    """An announce inside Argo to an EventSource that answers the first ``times`` POSTs 503."""
    with KubeAPI() as api:
        api.webhook_failures = times
        done = announce(
            "torchperf_t",
            ARGO_WORKFLOW_TEMPLATE="torchperf-x",
            METAFLOW_ARGO_EVENTS_WEBHOOK_URL=f"{api.url}/webhook",
        )
    return api, done


def test_a_publish_the_event_source_refuses_for_a_moment_is_tried_again():
    # GIVEN an EventSource whose bus is not ready for the first two POSTs (503)
    api, done = announce_refused(2)
    # THEN the third try reaches the Sensor, and the step says nothing of a failure
    assert done.returncode == 0, done.stderr
    assert [e["payload"]["id"] for e in api.events] == [done.stdout.strip()]
    assert api.webhook_failures == 0
    assert "warning" not in done.stderr


def test_a_publish_refused_every_time_is_one_warning_after_its_tries():
    api, done = announce_refused(10)
    assert done.returncode == 0 and done.stdout.strip() == "None"
    assert api.events == [] and api.webhook_failures == 10 - 3
    assert [line for line in done.stderr.splitlines() if line.startswith("warning:")]


def test_a_failed_publish_is_one_warning_not_a_failure():
    # Port 9 on loopback: nothing listens there, so every try is refused.
    done = announce(
        "torchperf_t",
        ARGO_WORKFLOW_TEMPLATE="torchperf-x",
        METAFLOW_ARGO_EVENTS_WEBHOOK_URL="http://127.0.0.1:9/webhook",
        METAFLOW_SERVICE_RETRY_COUNT="1",
    )
    assert done.returncode == 0 and done.stdout.strip() == "None"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "torchperf_t not published" in warnings[0]


def test_announced_runs_come_from_the_event_payloads_metaflow_hands_the_pod():
    environ = {
        "METAFLOW_ARGO_EVENT_PAYLOAD_event_torchperf_t": json.dumps({"run": "TorchPerfFlow/a"}),
        "METAFLOW_ARGO_EVENT_PAYLOAD_event_other": "null",  # Argo's None: not triggered by it
        "METAFLOW_ARGO_EVENT_PAYLOAD_event_broken": "{not json",
        "UNRELATED": json.dumps({"run": "TorchPerfFlow/b"}),
    }
    assert analytics.announced_runs(environ) == ["TorchPerfFlow/a"]


@pytest.mark.parametrize(
    ("seen", "visible"),
    [
        (Collected(rows={"TorchPerfFlow/a": {}}), True),
        (Collected(rows={}, running=["TorchPerfFlow/a"]), True),
        (Collected(rows={}, ended=[{"run": "TorchPerfFlow/a"}]), True),
        (Collected(rows={"TorchPerfFlow/other": {}}), False),
    ],
    ids=["done", "running", "failed", "invisible"],
)
def test_an_announced_run_that_cannot_be_seen_fails_loudly(seen, visible):
    if visible:
        analytics.check_visible(["TorchPerfFlow/a"], seen)
    else:
        with pytest.raises(ConfigError, match="metadata service"):
            analytics.check_visible(["TorchPerfFlow/a"], seen)
