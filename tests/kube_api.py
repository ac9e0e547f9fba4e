"""A Kubernetes API on loopback that answers the argoproj.io calls Metaflow's Deployer makes.

It stores WorkflowTemplates, Sensors, CronWorkflows and Workflows in memory, moves each Workflow
Pending -> Running -> Succeeded (or Failed) on the clock, honours ``spec.shutdown`` and plays the
Argo Events part: an event POSTed to ``/webhook`` that matches a Sensor's filter starts a
Workflow from that Sensor's trigger. What it does not do is run pods: no step ever executes.

    with KubeAPI(run_seconds=0.5) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        api.fail.add("c2_n64_")    # workflows whose branch (or template name) has this end Failed
        api.hang.add("c4_n64_")    # ... these stay Running until terminated
        api.unschedulable["c8_n64_"] = "0/1 nodes are available: 1 Insufficient cpu."
                                   # ... these never get their pod scheduled, saying so
        api.forbid.add("c8n64")    # creating an object whose name has this answers 403
        api.undeletable.add("c8n64")  # ... deleting it answers 403
        api.admission.append(lambda plural, obj: ...)  # a mutating webhook
        api.outage(10)             # every call answers 503 for 10 s
        api.stall()                # no call is answered until api.resume()
        api.lost_replies = 1       # the next Workflow create is stored, but answered 504

Like the real control plane, it adds a finalizer and a status to every Sensor as it is created
(the Argo Events controller's doing), and server-managed metadata to every object. A Sensor's
``Deployed`` condition turns True ``sensor_deploy_seconds`` after its creation when the EventBus
it names is there (False, ``EventBusNotFound``, when not; ``math.inf``: never). The real
controller writes it in the reconcile that adds the finalizer, once its EventBus is ready. An
EventBus ``default`` and an EventSource ``argo-events-webhook`` are there from the start (what
an administrator installs; ``event_source=None``: neither).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PATH = re.compile(
    r"^/apis?/(?:argoproj\.io/v1alpha1|(?P<core>v1))/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?$"
)
KINDS = {
    "workflows": "Workflow",
    "workflowtemplates": "WorkflowTemplate",
    "cronworkflows": "CronWorkflow",
    "sensors": "Sensor",
    "eventsources": "EventSource",
    "eventbus": "EventBus",
    "configmaps": "ConfigMap",  # the core API's (/api/v1): an analytics semaphore's limit
}
FINISHED = ("Succeeded", "Failed", "Error")
GROUP = "argoproj.io"


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _merge(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386), which the kubernetes client sends for custom objects."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


def _lookup(document, dotted: str):
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


EXPR = re.compile(r"^\s*(\w+)\s*==\s*'([^']*)'\s*$")


def _matches(dependency: dict, context: dict) -> bool:
    """The two filter shapes Metaflow's Sensors use: data filters and ``name == 'x'`` exprs."""
    filters = dependency.get("filters") or {}
    for data in filters.get("data") or []:
        if _lookup(context, data["path"]) not in data.get("value", []):
            return False
    for expr in filters.get("exprs") or []:
        fields = {f["name"]: _lookup(context, f["path"]) for f in expr.get("fields", [])}
        match = EXPR.match(expr["expr"])
        if not match or fields.get(match[1]) != match[2]:
            return False
    return True


class KubeAPI:
    """The server and its state; thread-safe, so the Deployer's parallel calls may hit it."""

    def __init__(
        self,
        pending_seconds: float = 0.1,
        run_seconds: float = 0.5,
        sensor_deploy_seconds: float = 0.3,
        event_source: str | None = "argo-events-webhook",
    ):
        self.pending_seconds = pending_seconds
        self.run_seconds = run_seconds
        self.sensor_deploy_seconds = sensor_deploy_seconds  # from creation to Deployed=True
        self.fail: set[str] = set()  # branch or template-name fragments: those workflows fail
        self.hang: set[str] = set()  # ... those workflows never finish on their own
        # ... those workflows' pods are never scheduled: fragment -> the scheduler's message
        self.unschedulable: dict[str, str] = {}
        self.flaky = 0  # the next this many API calls answer 503, as a restarting server would
        # Mutating admission (Kyverno, Gatekeeper): each is called with (plural, object) on every
        # create and replace, and may change the object before it is stored.
        self.admission: list = []
        self.forbid: set[str] = set()  # name fragments: creating or replacing those answers 403
        self.undeletable: set[str] = set()  # name fragments: deleting those answers 403
        self.outage_until = 0.0  # monotonic time: until then every call answers 503
        self.lost_replies = 0  # the next this many Workflow creates are stored, then answered 504
        self._answering = threading.Event()  # cleared by stall(): calls wait for an answer
        self._answering.set()
        # (method, path fragment): calls that match wait, unanswered, until the server stops;
        # ``held`` lists those that came (what a test waits on: the call was made).
        self.holding: list[tuple[str, str]] = []
        self.held: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        self.objects: dict[tuple[str, str, str], dict] = {}  # (namespace, plural, name) -> object
        self.created: list[tuple[str, dict]] = []  # (plural, object) of every create, kept after
        # its object is deleted: what a sweep made, once its teardown has removed it
        self.started: dict[str, float] = {}  # workflow name -> monotonic creation time
        self.sensor_created: dict[tuple[str, str], float] = {}  # (namespace, name) -> the same
        self.events: list[dict] = []  # bodies POSTed to /webhook
        self.webhook_failures = 0  # the next POSTs to /webhook answered 503 (a bus not ready)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        if event_source:
            self.put("default", "eventbus", "default", {"jetstream": {"version": "latest"}})
            self.put("default", "eventsources", event_source, {"webhook": {}})

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._answering.set()
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose only context points at this server (no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
            "users": [{"name": "loopback", "user": {}}],
            "contexts": [
                {
                    "name": "loopback",
                    "context": {"cluster": "loopback", "user": "loopback", "namespace": namespace},
                }
            ],
            "current-context": "loopback",
        }
        Path(path).write_text(json.dumps(config))  # JSON is YAML
        return Path(path)

    # -- what tests do to it ------------------------------------------------------------------
    def stall(self) -> None:
        """From now on no call is answered (a half-open connection), until ``resume``."""
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    def outage(self, seconds: float) -> None:
        """Every call answers 503 for ``seconds`` from now (the control plane is away)."""
        self.outage_until = time.monotonic() + seconds

    def put(self, namespace: str, plural: str, name: str, spec: dict) -> None:
        """Store an object as an administrator would have made it (an EventBus, say)."""
        body = {"apiVersion": f"{GROUP}/v1alpha1", "kind": KINDS[plural],
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        with self.lock:
            self._create(namespace, plural, body)

    def remove(self, namespace: str, plural: str, name: str) -> None:
        with self.lock:
            self.objects.pop((namespace, plural, name), None)

    # -- what tests look at ------------------------------------------------------------------
    def names(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (_, kind, name) in self.objects if kind == plural)

    def workflows(self) -> list[dict]:
        with self.lock:
            return [
                self._advance(obj) for (_, p, _), obj in self.objects.items() if p == "workflows"
            ]

    def ever(self, plural: str) -> list[dict]:
        """Every object of ``plural`` created so far, deleted ones as they were last seen."""
        with self.lock:
            return [obj for kind, obj in self.created if kind == plural]

    def running(self) -> list[str]:
        return [
            wf["metadata"]["name"]
            for wf in self.workflows()
            if wf["status"]["phase"] in ("Pending", "Running")
        ]

    # -- the API -----------------------------------------------------------------------------
    def _advance(self, workflow: dict) -> dict:
        """Move a workflow's phase along the clock, once it was created."""
        status = workflow["status"]
        if status["phase"] in FINISHED:
            return workflow
        # Match on the template name and the branch: long names are hashed, branches are not.
        template = (
            workflow["spec"].get("workflowTemplateRef", {}).get("name", "")
            + " "
            + (workflow["metadata"].get("annotations", {}).get("metaflow/branch_name", ""))
        )
        age = time.monotonic() - self.started[workflow["metadata"]["name"]]
        unschedulable = next((m for f, m in self.unschedulable.items() if f in template), None)
        pod = "Running"  # the phase of the pod of its step, as Argo's node holds it
        if workflow["spec"].get("shutdown"):
            status.update(phase="Failed", message="Stopped with strategy 'Terminate'")
            pod = "Failed"
        elif age < self.pending_seconds:
            status["phase"] = "Pending"
        elif unschedulable:
            status["phase"] = "Running"
            pod = "Pending"
        elif any(f in template for f in self.hang) or age < self.pending_seconds + self.run_seconds:
            status["phase"] = "Running"
        elif any(f in template for f in self.fail):
            status.update(phase="Failed", message="child 'start' failed")
            pod = "Failed"
        else:
            status["phase"] = "Succeeded"
            pod = "Succeeded"
        if status["phase"] in FINISHED:
            status["finishedAt"] = _now_iso()
        if status["phase"] != "Pending":
            status["nodes"] = self._nodes(workflow["metadata"]["name"], status["phase"], pod,
                                          unschedulable)  # fmt: skip
        return workflow

    @staticmethod
    def _nodes(name: str, phase: str, pod: str, unschedulable: str | None) -> dict:
        """Argo's nodes of a Metaflow workflow under way: the DAG and the pod of its step. A pod
        the scheduler cannot place is Pending, with the message Argo copies from its
        PodScheduled condition (getPendingReason in workflow/controller/operator.go)."""
        step = {"id": f"{name}-1", "name": f"{name}.start", "displayName": "start",
                "type": "Pod", "phase": pod}  # fmt: skip
        if pod == "Pending" and unschedulable:
            step["message"] = f"Unschedulable: {unschedulable}"
        dag = {"id": name, "name": name, "displayName": name, "type": "DAG", "phase": phase,
               "children": [step["id"]]}  # fmt: skip
        return {dag["id"]: dag, step["id"]: step}

    def _seen(self, ns: str, plural: str, obj: dict) -> dict:
        """An object as a reader finds it now: what the controllers have done by then."""
        if plural == "workflows":
            return self._advance(obj)
        if plural == "sensors" and "status" in obj:
            return self._reconcile_sensor(ns, obj)
        return obj

    def _reconcile_sensor(self, ns: str, sensor: dict) -> dict:
        """The Argo Events controller's Deployed condition: its Deployment exists once the
        EventBus it names is there."""
        age = time.monotonic() - self.sensor_created.get((ns, sensor["metadata"]["name"]), 0)
        deployed = next(c for c in sensor["status"]["conditions"] if c["type"] == "Deployed")
        bus = sensor.get("spec", {}).get("eventBusName") or "default"
        if age < self.sensor_deploy_seconds:
            return sensor
        if (ns, "eventbus", bus) in self.objects:
            deployed.update(status="True", reason="", message="")
        else:
            deployed.update(
                status="False", reason="EventBusNotFound", message="EventBus not found."
            )
        return sensor

    def _sensor_deployments(self, ns: str, query: str) -> dict:
        """Argo Events' Deployment of a Sensor (label ``sensor-name``), its pod available once the
        Sensor is deployed."""
        selector = parse_qs(query).get("labelSelector", [""])[0]
        name = selector.removeprefix("sensor-name=")
        sensor = self.objects.get((ns, "sensors", name))
        items = []
        if sensor is not None and "status" in sensor:
            conditions = self._reconcile_sensor(ns, sensor)["status"]["conditions"]
            if any(c["type"] == "Deployed" and c["status"] == "True" for c in conditions):
                items.append({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": f"{name}-sensor", "namespace": ns,
                                 "labels": {"sensor-name": name}},
                    "spec": {"selector": {"matchLabels": {"sensor-name": name}},
                             "template": {"metadata": {}, "spec": {"containers": []}}},
                    "status": {"replicas": 1, "availableReplicas": 1},
                })  # fmt: skip
        return {"apiVersion": "apps/v1", "kind": "DeploymentList", "items": items, "metadata": {}}

    def _admit(self, plural: str, body: dict) -> tuple[int, dict] | None:
        """A refusal (403) for a forbidden name, else None once admission has had its say."""
        name = body.get("metadata", {}).get("name", "")
        if any(fragment in name for fragment in self.forbid):
            return 403, self._status(403, f'{plural}.{GROUP} "{name}" is forbidden')
        for mutate in self.admission:
            mutate(plural, body)
        return None

    def _create(self, ns: str, plural: str, body: dict) -> tuple[int, dict]:
        meta = body.setdefault("metadata", {})
        if "name" not in meta:
            meta["name"] = meta.pop("generateName", "obj-") + secrets.token_hex(3)[:5]
        key = (ns, plural, meta["name"])
        if key in self.objects:
            return 409, self._status(409, f'{plural} "{meta["name"]}" already exists')
        refused = self._admit(plural, body)
        if refused:
            return refused
        meta.update(namespace=ns, resourceVersion="1", uid=secrets.token_hex(8), generation=1)
        meta.setdefault("creationTimestamp", _now_iso())
        # What the API server records of who set which field (kubectl shows it with -o yaml).
        meta["managedFields"] = [
            {"manager": "torchperf-test", "operation": "Update", "apiVersion": f"{GROUP}/v1alpha1",
             "time": meta["creationTimestamp"], "fieldsType": "FieldsV1", "fieldsV1": {}}
        ]  # fmt: skip
        if plural == "workflows":
            self._instantiate(ns, body)
            if self.lost_replies > 0:  # stored, but the answer never reaches the client
                self.lost_replies -= 1
                self.objects[key] = body
                self.created.append((plural, body))
                return 504, self._status(504, "the answer was lost on its way back")
        if plural == "sensors":
            # What the Argo Events controller does within milliseconds of a Sensor's creation.
            meta["finalizers"] = ["sensor-controller"]
            body["status"] = {
                "conditions": [
                    {"type": "Deployed", "status": "Unknown", "lastTransitionTime": _now_iso()},
                    {"type": "DependenciesProvided", "status": "True",
                     "lastTransitionTime": _now_iso()},
                    {"type": "TriggersProvided", "status": "True",
                     "lastTransitionTime": _now_iso()},
                ]
            }  # fmt: skip
            self.sensor_created[(ns, meta["name"])] = time.monotonic()
        self.objects[key] = body
        self.created.append((plural, body))
        return 201, body

    def _instantiate(self, ns: str, workflow: dict) -> None:
        """What the workflow controller does: copy the template's workflowMetadata, start it."""
        ref = workflow["spec"].get("workflowTemplateRef", {}).get("name")
        template = self.objects.get((ns, "workflowtemplates", ref or ""), {})
        wf_meta = template.get("spec", {}).get("workflowMetadata", {})
        for field in ("labels", "annotations"):
            merged = {**wf_meta.get(field, {}), **workflow["metadata"].get(field, {})}
            workflow["metadata"][field] = merged
        workflow["status"] = {"phase": "Pending", "startedAt": _now_iso(), "finishedAt": None}
        if ref and not template:
            workflow["status"].update(
                phase="Error", message=f"workflowtemplate {ref} not found", finishedAt=_now_iso()
            )
        self.started[workflow["metadata"]["name"]] = time.monotonic()

    def _publish(self, event: dict) -> None:
        """Argo Events: every Sensor whose data filters match starts its trigger's workflow."""
        self.events.append(event)
        for (ns, plural, _), sensor in list(self.objects.items()):
            if plural != "sensors":
                continue
            matched = any(
                _matches(dep, {"body": event}) for dep in sensor["spec"].get("dependencies", [])
            )
            for trigger in sensor["spec"].get("triggers", []) if matched else []:
                template = trigger["template"]
                action = template.get("k8s") or template.get("argoWorkflow") or {}
                resource = json.loads(json.dumps(action["source"]["resource"]))
                self._create(ns, "workflows", resource)

    @staticmethod
    def _status(code: int, message: str) -> dict:
        reasons = {403: "Forbidden", 404: "NotFound", 409: "AlreadyExists", 504: "Timeout",
                   503: "ServiceUnavailable"}  # fmt: skip
        reason = reasons.get(code, "BadRequest")
        return {"kind": "Status", "status": "Failure", "message": message, "reason": reason,
                "code": code}  # fmt: skip

    def handle(
        self, method: str, path: str, body: dict | None, query: str = ""
    ) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
            if method == "POST" and path.rstrip("/") == "/webhook":
                if self.webhook_failures > 0:
                    self.webhook_failures -= 1
                    return 503, self._status(503, "eventbus not ready")
                self._publish(body or {})
                return 200, {}
            if self.flaky > 0 or time.monotonic() < self.outage_until:
                self.flaky = max(0, self.flaky - 1)
                return 503, self._status(503, "the server is currently unable to handle it")
            deployments = re.match(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/?$", path)
            if deployments and method == "GET":
                return 200, self._sensor_deployments(deployments[1], query)
            match = PATH.match(path)
            if (
                not match
                or match["plural"] not in KINDS
                or bool(match["core"]) != (match["plural"] == "configmaps")
            ):
                return 404, self._status(404, f"no route for {method} {path}")
            ns, plural, name = match["ns"], match["plural"], match["name"]
            key = (ns, plural, name)
            if name is None and method == "GET":
                selector = parse_qs(query).get("labelSelector", [""])[0]
                wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
                items = [
                    self._seen(n, p, o)
                    for (n, p, _), o in self.objects.items()
                    if n == ns
                    and p == plural
                    and wanted.items() <= o["metadata"].get("labels", {}).items()
                ]
                return 200, {"kind": KINDS[plural] + "List", "items": items, "metadata": {}}
            if name is None and method == "POST":
                return self._create(ns, plural, body or {})
            if key not in self.objects:
                return 404, self._status(404, f'{plural} "{name}" not found')
            obj = self.objects[key]
            if method == "GET":
                return 200, self._seen(ns, plural, obj)
            if method == "PUT":
                refused = self._admit(plural, body)
                if refused:
                    return refused
                body["metadata"]["resourceVersion"] = str(
                    int(obj["metadata"].get("resourceVersion", "1")) + 1
                )
                self.objects[key] = body
                return 200, body
            if method == "PATCH":
                return 200, self._seen(ns, plural, _merge(obj, body or {}))
            if method == "DELETE":
                if any(fragment in name for fragment in self.undeletable):
                    return 403, self._status(403, f'{plural}.{GROUP} "{name}" is forbidden')
                del self.objects[key]
                return 200, {"kind": "Status", "status": "Success", "code": 200}
            return 405, self._status(405, f"{method} not allowed")

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlsplit(self.path)
                if any(self.command == m and f in url.path for m, f in api.holding):
                    api.held.append((self.command, url.path))
                    api._stopping.wait()
                    return
                api._answering.wait()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                code, payload = api.handle(self.command, url.path, body, url.query)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (a stalled call timed out)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler
