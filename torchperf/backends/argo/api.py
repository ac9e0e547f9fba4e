"""The few Argo API calls the sweep makes itself, bounded and retried."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from enum import Enum

from torchperf.backends.argo.manifests import TAG_LABEL, WorkflowLook
from torchperf.backends.argo.settings import ArgoSettings, ClusterAccess

GROUP, VERSION = "argoproj.io", "v1alpha1"


class Phase(str, Enum):
    """A Workflow's phase, read once from Argo's string (as hera's WorkflowStatus does)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_argo(cls, phase: str | None) -> Phase:
        """Argo's phase: none yet is Pending; Error counts as Failed, as Metaflow reports it."""
        if phase == "Error":
            return cls.FAILED
        return cls(phase or "Pending")

    @property
    def running(self) -> bool:
        return self in (Phase.PENDING, Phase.RUNNING)


@dataclass(frozen=True)
class WorkflowState:
    """What one read of a Workflow says of it."""

    phase: Phase
    message: str  # the Workflow's own message ("" when none)
    # Nothing of it runs: the Workflow is Pending (a lock, the controller's queue), or its
    # pods are (waiting to be scheduled, pulling an image) and none runs.
    waiting: bool = False
    why: str = ""  # why it waits, as Argo says: "Unschedulable: 0/3 nodes are available: ..."
    started: bool = False  # one of its pods has left Pending
    # The first of its pods to fail, as Argo says it: "start: Error (exit code 1)". A Workflow
    # that fails in a step has no message of its own; this names the step and how it ended.
    failure: str = ""

    @classmethod
    def from_workflow(cls, workflow: dict) -> WorkflowState:
        status = workflow.get("status") or {}
        phase = Phase.from_argo(status.get("phase"))
        message = status.get("message") or ""
        if phase is Phase.PENDING:
            return cls(phase, message, waiting=True, why=message)
        # Argo copies a Pending pod's reason into its node's message (getPendingReason).
        pods = [n for n in (status.get("nodes") or {}).values() if n.get("type") == "Pod"]
        pending = [n for n in pods if n.get("phase") == "Pending"]
        running = any(n.get("phase") == "Running" for n in pods)
        why = next((n["message"] for n in pending if n.get("message")), "")
        failed = sorted(
            (n for n in pods if n.get("phase") in ("Failed", "Error")),
            key=lambda n: n.get("startedAt") or "",  # RFC 3339 in UTC: sorts as text
        )
        failure = next(
            (f"{n.get('displayName') or n.get('name')}: {n.get('message') or n['phase']}"
             for n in failed),
            "",
        )  # fmt: skip
        return cls(
            phase,
            message,
            waiting=phase.running and bool(pending) and not running,
            why=why,
            started=any(n.get("phase") != "Pending" for n in pods),
            failure=failure,
        )


# API answers worth another try: the server was busy or briefly away, nothing was changed.
TRANSIENT_STATUSES = (408, 429, 500, 502, 503, 504)
# How long one request may take (seconds): a half-open connection (a VPN change, a laptop that
# slept) fails within it instead of hanging, and Ctrl-C waits for no request longer.
REQUEST_SECONDS = 8.0
# How long a call keeps trying through transient errors: an API server restart or a control
# plane blip of a minute or two changes no variant's status.
PATIENCE_SECONDS = 180.0
MAX_BACKOFF_SECONDS = 5.0  # the API's return is noticed within this
# Once a sweep is interrupted, every call still to make ends within this (Ctrl-C answered).
TEARDOWN_SECONDS = 5.0
GONE = "the Workflow was deleted outside the sweep"


class Argo:
    """The few Argo API calls made directly: trigger, read a phase, label, terminate, delete.

    Every request is bounded (``request_seconds``) and every call retried through transient
    errors for up to ``patience_seconds``; ``hurry`` bounds whatever is still to come when the
    sweep ends. A 404 on terminate or delete means already gone.
    """

    def __init__(
        self,
        settings: ArgoSettings | ClusterAccess,
        *,
        request_seconds: float = REQUEST_SECONDS,
        patience_seconds: float = PATIENCE_SECONDS,
        backoff_seconds: float = 0.5,
    ):
        from kubernetes import client, config

        configuration = client.Configuration()
        if settings.kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(str(settings.kubeconfig), client_configuration=configuration)
        # urllib3 would retry a timed-out read three times on its own: the retries here are
        # the only ones, so that a request's bound is its bound.
        configuration.retries = False
        api_client = client.ApiClient(configuration)
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)  # ConfigMaps: an analytics semaphore's limit
        self.apps = client.AppsV1Api(api_client)  # the Sensor's Deployment: is its pod up
        self.rest = client.rest
        self.namespace = settings.namespace
        self.request_seconds = request_seconds
        self.patience_seconds = patience_seconds
        self.backoff_seconds = backoff_seconds
        self._ending = threading.Event()  # set by hurry: retries wake up and meet the deadline
        self._deadline = math.inf  # monotonic time no call may outlast, once the sweep ends

    def sensor_available(self, namespace: str, name: str) -> bool:
        """Whether the Sensor's Deployment (Argo Events labels it ``sensor-name``) has a pod
        available: its JetStream consumer subscribes as that pod starts."""
        listing = self._call(
            "list_namespaced_deployment", namespace, label_selector=f"sensor-name={name}",
            _on=self.apps,
        )  # fmt: skip
        return any((d.status.available_replicas or 0) > 0 for d in listing.items)

    def hurry(self, seconds: float = TEARDOWN_SECONDS) -> None:
        """The sweep is ending: no call, running or to come, lasts past ``seconds`` from now."""
        self._deadline = min(self._deadline, time.monotonic() + seconds)
        self._ending.set()

    def _call(self, method: str, *args, _on=None, **kwargs):
        """``method`` of the custom objects API (of ``_on``, another API, where given), bounded
        and retried."""
        from urllib3.exceptions import HTTPError as TransportError

        limit = time.monotonic() + self.patience_seconds
        delay, last = self.backoff_seconds, None
        while True:
            left = min(limit, self._deadline) - time.monotonic()
            if left <= 0:
                raise last or TimeoutError("the sweep is ending: no time left for the API")
            timeout = min(self.request_seconds, left)
            try:
                return getattr(_on or self.api, method)(
                    *args, _request_timeout=(min(timeout, 5.0), timeout), **kwargs
                )
            except self.rest.ApiException as error:
                if error.status not in TRANSIENT_STATUSES:
                    raise
                last = error
            except TransportError as error:
                last = error
            left = min(limit, self._deadline) - time.monotonic()
            if left <= 0:
                raise last
            if self._ending.is_set():  # short tries until the deadline
                time.sleep(min(delay, left, 0.2))
            else:  # hurry wakes this at once
                self._ending.wait(min(delay, left))
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict | None:
        """One object as the API holds it; None when it is not there."""
        try:
            return self._call(
                "get_namespaced_custom_object",
                GROUP, VERSION, namespace or self.namespace, plural, name,
            )  # fmt: skip
        except self.rest.ApiException as error:
            if error.status == 404:
                return None
            raise

    def label(self, plural: str, name: str, labels: dict, namespace: str | None = None) -> dict:
        """Add ``labels`` to one object; the object as the API then holds it."""
        return self._call(
            "patch_namespaced_custom_object",
            GROUP, VERSION, namespace or self.namespace, plural, name,
            {"metadata": {"labels": labels}},
        )  # fmt: skip

    def phase(self, name: str) -> tuple[Phase, str]:
        """(phase, message); a Workflow that is no longer there has Failed."""
        state = self.state(name)
        return state.phase, state.message

    def state(self, name: str) -> WorkflowState:
        """What the Workflow says of itself now; one that is no longer there has Failed."""
        workflow = self.get("workflows", name)
        if workflow is None:
            return WorkflowState(Phase.FAILED, GONE)
        return WorkflowState.from_workflow(workflow)

    def trigger(self, template: str, user: str, look: WorkflowLook) -> str:
        """Start a Workflow from ``template``, as `argo-workflows trigger` does; its name.

        The same request Metaflow's trigger sends, without the Python start-up that the
        Deployer's trigger costs per variant, plus what makes it readable and tidy in the UI.
        It is named by ``look``: a create retried after its answer was lost finds the Workflow
        the first one made (409) and takes it, if its labels say it is this attempt's.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workflow",
            "metadata": {
                "name": look.name,
                "labels": look.labels,
                "annotations": {
                    **look.annotations,
                    "metaflow/triggered_by_user": json.dumps({"type": "user", "name": user}),
                },
            },
            "spec": {
                "workflowTemplateRef": {"name": template},
                "arguments": {"parameters": []},
                **look.spec,
            },
        }
        try:
            self._call(
                "create_namespaced_custom_object", GROUP, VERSION, self.namespace, "workflows", body
            )
        except self.rest.ApiException as error:
            if error.status != 409:
                raise
            found = (self.get("workflows", look.name) or {}).get("metadata", {})
            if not look.labels.items() <= (found.get("labels") or {}).items():
                raise RuntimeError(
                    f"a Workflow {look.name} exists that is not this sweep's"
                ) from None
        return look.name

    def dress_template(
        self, template: str, look: WorkflowLook, synchronization: dict | None = None
    ) -> dict:
        """Give every Workflow started from ``template`` (by a Sensor too) the look's labels,
        annotations, TTL and pod GC (Argo copies ``workflowMetadata`` onto each Workflow) and
        ``synchronization`` (Argo's lock, taken before the Workflow runs), and the template the
        sweep's label; the template as the API then holds it."""
        patch = {
            "metadata": {"labels": {TAG_LABEL: look.labels[TAG_LABEL]}},
            "spec": {
                "workflowMetadata": {"labels": look.labels, "annotations": look.annotations},
                **look.spec,
                **({"synchronization": synchronization} if synchronization else {}),
            },
        }
        return self._call(
            "patch_namespaced_custom_object",
            GROUP, VERSION, self.namespace, "workflowtemplates", template, patch,
        )  # fmt: skip

    def put_config_map(self, name: str, data: dict, labels: dict) -> None:
        """Create a ConfigMap, or give the one already there this data and these labels."""
        body = {"metadata": {"name": name, "labels": labels}, "data": data}
        try:
            self._call("create_namespaced_config_map", self.namespace, body, _on=self.core)
        except self.rest.ApiException as error:
            if error.status != 409:
                raise
            self._call("patch_namespaced_config_map", name, self.namespace, body, _on=self.core)

    def delete_config_map(self, name: str, namespace: str | None = None) -> bool:
        """Delete one ConfigMap; False when it was already gone."""
        try:
            self._call(
                "delete_namespaced_config_map", name, namespace or self.namespace, _on=self.core
            )
            return True
        except self.rest.ApiException as error:
            if error.status == 404:
                return False
            raise

    def terminate(self, name: str) -> None:
        body = {"spec": {"shutdown": "Terminate"}}
        try:
            self._call(
                "patch_namespaced_custom_object",
                GROUP, VERSION, self.namespace, "workflows", name, body,
            )  # fmt: skip
        except self.rest.ApiException as error:
            if error.status != 404:
                raise

    def running(self, tag: str) -> list[str]:
        """The sweep's Workflows still running, found by its label (Sensor-started included)."""
        return [name for name, phase in self.workflows(tag) if phase.running]

    def workflows(self, tag: str) -> list[tuple[str, Phase]]:
        """The sweep's Workflows and their phases, found by its label."""
        listing = self._call(
            "list_namespaced_custom_object",
            GROUP, VERSION, self.namespace, "workflows", label_selector=f"{TAG_LABEL}={tag}",
        )  # fmt: skip
        return [
            (wf["metadata"]["name"], Phase.from_argo((wf.get("status") or {}).get("phase")))
            for wf in listing.get("items", [])
        ]

    def list(self, plural: str, namespace: str, selector: str | None = None) -> list[dict]:
        """The objects of ``plural`` in ``namespace`` (those whose labels match ``selector``);
        ``configmaps`` are the core API's."""
        if plural == "configmaps":
            listing = self._call(
                "list_namespaced_config_map", namespace, label_selector=selector, _on=self.core
            )
            return [self.core.api_client.sanitize_for_serialization(i) for i in listing.items]
        listing = self._call(
            "list_namespaced_custom_object",
            GROUP, VERSION, namespace, plural, label_selector=selector,
        )  # fmt: skip
        return listing.get("items", [])

    def delete(
        self, plural: str, name: str, namespace: str | None = None, *, foreground: bool = False
    ) -> bool:
        """Delete one object; False when it was already gone. ``foreground``: the object stays
        (marked deleted) until what it owns is gone, pods included (Kubernetes' foreground
        cascading deletion), so that its absence says its pods have ended."""
        options = {"propagation_policy": "Foreground"} if foreground else {}
        try:
            self._call(
                "delete_namespaced_custom_object",
                GROUP, VERSION, namespace or self.namespace, plural, name, **options,
            )  # fmt: skip
            return True
        except self.rest.ApiException as error:
            if error.status == 404:
                return False
            raise
