"""The simulated cluster's Kubernetes API: argoproj.io objects over HTTP on loopback, executed.

Answers what Metaflow's Deployer, the kubernetes client and torchperf's Argo backend call under
``/apis/argoproj.io/v1alpha1/namespaces/<ns>/<plural>[/<name>]`` for workflowtemplates,
workflows, cronworkflows and sensors: list (with ``labelSelector``), get, create (409 when the
name exists, ``generateName`` honoured), replace, merge-patch and delete. A created Workflow is
executed by tests/cluster/executor.py from its WorkflowTemplate (``workflowTemplateRef``),
its metadata kept as given plus the template's ``workflowMetadata`` and the labels Argo's
controller adds (``workflows.argoproj.io/workflow-template``, ``.../phase``,
``.../completed``). Patching ``spec.shutdown`` kills what runs. A finished Workflow with a
``ttlStrategy`` is deleted when its TTL has passed (recorded in ``expired``); ``podGC`` removes
its pods' folders (recorded in ``collected``). Every request is in ``requests``.

Argo Events is tests/cluster/network.py; a matching event calls ``trigger_from_event``.
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

from .executor import (
    FINISHED,
    WorkflowRun,
    merged_spec,
    now_iso,
    remove_folder,
    ttl_seconds,
)
from .pods import Pod, remove_cgroup
from .templating import TemplateError, lookup, set_path

PATH = re.compile(
    r"^/apis/argoproj\.io/v1alpha1/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
KINDS = {
    "workflows": "Workflow",
    "workflowtemplates": "WorkflowTemplate",
    "cronworkflows": "CronWorkflow",
    "sensors": "Sensor",
}


def merge_patch(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386), what the kubernetes client sends for custom objects."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value
    return target


SELECTOR = re.compile(
    r"\s*(?P<not>!)?(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)


def parse_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """A label selector as (key, operator, values); operators =, !=, in, notin, exists, !exists."""
    terms = []
    for part in re.split(r",(?![^(]*\))", text or ""):
        if not part.strip():
            continue
        match = SELECTOR.fullmatch(part)
        if not match:
            raise ValueError(f"unable to parse requirement: {part!r}")
        key = match["key"]
        if match["op"]:
            terms.append((key, "!=" if match["op"] == "!=" else "=", {match["value"]}))
        elif match["set"]:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            terms.append((key, match["set"], values))
        else:
            terms.append((key, "!exists" if match["not"] else "exists", set()))
    return terms


def selector_matches(terms, labels: dict) -> bool:
    for key, op, values in terms:
        present, value = key in labels, labels.get(key)
        ok = {
            "=": present and value in values,
            "in": present and value in values,
            "!=": not present or value not in values,
            "notin": not present or value not in values,
            "exists": present,
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


def sensor_matches(dependency: dict, context: dict) -> bool:
    """Argo Events filters Metaflow's Sensors use: data filters and ``name == 'x'`` exprs."""
    filters = dependency.get("filters") or {}
    for data in filters.get("data") or []:
        if str(lookup(context, data["path"])) not in [str(v) for v in data.get("value") or []]:
            return False
    for expr in filters.get("exprs") or []:
        fields = {f["name"]: lookup(context, f["path"]) for f in expr.get("fields") or []}
        match = re.fullmatch(r"\s*(\w+)\s*==\s*'([^']*)'\s*", expr["expr"])
        if not match:
            raise TemplateError(f"unsupported event filter {expr['expr']!r}")
        if fields.get(match[1]) != match[2]:
            return False
    return True


def _status(code: int, message: str) -> dict:
    reason = {404: "NotFound", 409: "AlreadyExists", 422: "Invalid"}.get(code, "BadRequest")
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


class ClusterAPI:
    """The API server and controller state; thread-safe."""

    def __init__(self, folder: Path, image: Path, *, use_cgroups: bool = True):
        self.folder = Path(folder)
        self.image = Path(image)  # the pods' Python environment (tests/cluster/image.py)
        self.use_cgroups = use_cgroups
        self.cgroup_parent = f"torchperf-sim-{secrets.token_hex(4)}"
        self.objects: dict[tuple[str, str, str], dict] = {}
        # Secrets and config maps pods read (envFrom, valueFrom), set by whoever runs the cluster:
        # (namespace, "secrets" | "configmaps", name) -> {key: value}. Not served over HTTP.
        self.core_objects: dict[tuple[str, str, str], dict[str, str]] = {}
        self.runs: dict[str, WorkflowRun] = {}  # workflow name -> its execution
        self.pods: list[Pod] = []  # every pod started, in order (kept for tests and figures)
        self.running_pods: set[Pod] = set()
        self.requests: list[tuple[str, str]] = []
        self.events: list[dict] = []  # accepted events (network.py)
        self.triggered: list[tuple[str, str]] = []  # (sensor, workflow) started by an event
        self.expired: list[dict] = []  # workflows deleted by their TTL
        self.collected: list[str] = []  # pods whose folders podGC removed
        self.lock = threading.RLock()
        self._timers: list[threading.Timer] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ClusterAPI:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server, kill every pod still running, remove the cgroups."""
        self._server.shutdown()
        self._server.server_close()
        for timer in self._timers:
            timer.cancel()
        for run in list(self.runs.values()):
            if not run.done.is_set():
                run.stop("Terminate")
        for run in list(self.runs.values()):
            run.done.wait(15)
        for pod in list(self.running_pods):
            pod.kill(grace_seconds=0.5)
            remove_cgroup(pod.cgroup)
            remove_cgroup(pod.cpuacct)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose only context points at this server (no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "simulated", "cluster": {"server": self.url}}],
            "users": [{"name": "simulated", "user": {}}],
            "contexts": [
                {
                    "name": "simulated",
                    "context": {
                        "cluster": "simulated",
                        "user": "simulated",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "simulated",
        }
        Path(path).write_text(json.dumps(config))  # JSON is YAML
        return Path(path)

    # -- what tests look at ------------------------------------------------------------------
    def names(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (_, kind, name) in self.objects if kind == plural)

    def workflows(self) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(o)) for (_, p, _), o in self.objects.items()
                    if p == "workflows"]  # fmt: skip

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once no workflow runs (pods included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(run.done.is_set() for run in list(self.runs.values())):
                return True
            time.sleep(0.1)
        return False

    def wait_expired(self, max_ttl: float, timeout: float) -> bool:
        """Wait until every finished Workflow whose TTL is at most ``max_ttl`` s has gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                due = [
                    name
                    for name, run in self.runs.items()
                    if run.done.is_set()
                    and (run.namespace, "workflows", name) in self.objects
                    and (ttl_seconds(run.spec, run.workflow["status"]["phase"]) or 1e9) <= max_ttl
                ]
            if not due:
                return True
            time.sleep(0.1)
        return False

    # -- controller hooks --------------------------------------------------------------------
    def pod_folder(self, pod_name: str) -> Path:
        return self.folder / "pods" / pod_name

    def pod_started(self, pod: Pod) -> None:
        with self.lock:
            self.pods.append(pod)
            self.running_pods.add(pod)

    def pod_finished(self, pod: Pod) -> None:
        with self.lock:
            self.running_pods.discard(pod)

    def pod_of(self, pid: int) -> Pod | None:
        """The running pod a process belongs to: its cgroup, else its process tree."""
        with self.lock:
            pods = list(self.running_pods)
        for pod in pods:
            if pod.cgroup is not None and pid in pod.pids():
                return pod
        ancestors, current = set(), pid
        for _ in range(64):
            ancestors.add(current)
            try:
                stat = Path(f"/proc/{current}/stat").read_text()
            except OSError:
                break
            current = int(stat.rsplit(")", 1)[1].split()[1])
            if current <= 1:
                break
        for pod in pods:
            if pod.process is not None and pod.process.pid in ancestors:
                return pod
        return None

    def workflow_finished(self, run: WorkflowRun) -> None:
        phase = run.workflow["status"]["phase"]
        strategy = (run.spec.get("podGC") or {}).get("strategy")
        for pod in run.pods:
            succeeded = pod.process is not None and pod.process.returncode == 0
            if (
                strategy in ("OnPodCompletion", "OnWorkflowCompletion")
                or (strategy == "OnPodSuccess" and succeeded)
                or (strategy == "OnWorkflowSuccess" and phase == "Succeeded")
            ):
                remove_folder(pod.folder)
                with self.lock:
                    self.collected.append(pod.name)
        ttl = ttl_seconds(run.spec, phase)
        if ttl is not None:
            timer = threading.Timer(ttl, self._expire, (run, phase, ttl))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _expire(self, run: WorkflowRun, phase: str, ttl: float) -> None:
        with self.lock:
            key = (run.namespace, "workflows", run.name)
            if key in self.objects:
                del self.objects[key]
                self.expired.append({"name": run.name, "phase": phase, "ttl": ttl,
                                     "deleted_at": time.time()})  # fmt: skip

    # -- the API -----------------------------------------------------------------------------
    def _create(self, ns: str, plural: str, body: dict) -> tuple[int, dict]:
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = meta.pop("generateName", None) or "obj-"
            meta["name"] = prefix + secrets.token_hex(3)[:5]
        key = (ns, plural, meta["name"])
        if key in self.objects:
            return 409, _status(409, f'{plural}.argoproj.io "{meta["name"]}" already exists')
        meta.update(namespace=ns, resourceVersion="1", uid=secrets.token_hex(16))
        meta.setdefault("creationTimestamp", now_iso())
        self.objects[key] = body
        if plural == "workflows":
            self._start_workflow(ns, body)
        return 201, body

    def _start_workflow(self, ns: str, workflow: dict) -> None:
        """What the workflow controller does with a new Workflow."""
        ref = (workflow.get("spec") or {}).get("workflowTemplateRef", {}).get("name")
        template = self.objects.get((ns, "workflowtemplates", ref or ""))
        meta = workflow["metadata"]
        workflow["status"] = {"phase": "Pending", "startedAt": None, "finishedAt": None}
        if ref and template is None:
            workflow["status"].update(
                phase="Error", message=f"workflowtemplates.argoproj.io \"{ref}\" not found",
                finishedAt=now_iso(),
            )  # fmt: skip
            return
        spec = merged_spec(template, workflow)
        wf_meta = spec.get("workflowMetadata") or {}
        for field in ("labels", "annotations"):
            meta[field] = {**(wf_meta.get(field) or {}), **(meta.get(field) or {})}
        if ref:
            meta["labels"]["workflows.argoproj.io/workflow-template"] = ref
        meta["labels"]["workflows.argoproj.io/phase"] = "Pending"
        # Argo substitutes workflow variables in workflowMetadata (metaflow/run_id).
        run = WorkflowRun(self, workflow, spec)
        scope = run._workflow_scope()
        try:
            from .templating import substitute

            for field in ("labels", "annotations"):
                for key, value in meta[field].items():
                    meta[field][key] = substitute(value, scope)
        except TemplateError:
            pass
        self.runs[meta["name"]] = run
        run.start()

    def trigger_from_event(self, sensor: dict, context: dict) -> list[str]:
        """Argo Events' k8s trigger: create the trigger's resource with its parameters set."""
        started = []
        ns = sensor["metadata"]["namespace"]
        for trigger in sensor["spec"].get("triggers") or []:
            action = trigger["template"].get("k8s") or trigger["template"].get("argoWorkflow")
            if not action:
                continue
            resource = json.loads(json.dumps(action["source"]["resource"]))
            for param in action.get("parameters") or []:
                src = param["src"]
                value = lookup(context, src["dataKey"]) if src.get("dataKey") else None
                if value is None:
                    value = src.get("value")
                elif not isinstance(value, str):
                    value = json.dumps(value)
                set_path(resource, param["dest"], value)
            code, created = self._create(
                resource["metadata"].get("namespace") or ns, "workflows", resource
            )
            if code == 201:
                started.append(created["metadata"]["name"])
                self.triggered.append((sensor["metadata"]["name"], created["metadata"]["name"]))
        return started

    def publish(self, body: dict) -> list[str]:
        """An event reached the event source: every Sensor whose filters match fires."""
        context = {"body": body}
        started = []
        with self.lock:
            self.events.append(body)
            sensors = [o for (_, p, _), o in self.objects.items() if p == "sensors"]
            for sensor in sensors:
                dependencies = sensor["spec"].get("dependencies") or []
                if any(sensor_matches(dep, context) for dep in dependencies):
                    started += self.trigger_from_event(sensor, context)
        return started

    def handle(self, method: str, path: str, query: dict, body: dict | None):
        with self.lock:
            self.requests.append((method, path))
            match = PATH.match(path)
            if not match or match["plural"] not in KINDS:
                return 404, _status(404, f"the server could not find {method} {path}")
            ns, plural, name = match["ns"], match["plural"], match["name"]
            key = (ns, plural, name)
            if name is None and method == "GET":
                try:
                    terms = parse_selector((query.get("labelSelector") or [""])[0])
                except ValueError as error:
                    return 400, _status(400, str(error))
                items = [
                    o for (n, p, _), o in self.objects.items()
                    if n == ns and p == plural
                    and selector_matches(terms, o["metadata"].get("labels") or {})
                ]  # fmt: skip
                return 200, {"apiVersion": "argoproj.io/v1alpha1", "kind": KINDS[plural] + "List",
                             "items": items, "metadata": {"resourceVersion": "1"}}  # fmt: skip
            if name is None and method == "POST":
                return self._create(ns, plural, body or {})
            if key not in self.objects:
                return 404, _status(404, f'{plural}.argoproj.io "{name}" not found')
            obj = self.objects[key]
            if method == "GET":
                return 200, obj
            if method == "PUT":
                version = int(obj["metadata"].get("resourceVersion", "1")) + 1
                body["metadata"].update(resourceVersion=str(version), uid=obj["metadata"]["uid"])
                body["metadata"].setdefault("creationTimestamp", obj["metadata"].get(
                    "creationTimestamp"))  # fmt: skip
                self.objects[key] = body
                return 200, body
            if method == "PATCH":
                merge_patch(obj, body or {})
                if plural == "workflows":
                    strategy = (obj.get("spec") or {}).get("shutdown")
                    run = self.runs.get(name)
                    if strategy and run is not None and not run.done.is_set():
                        threading.Thread(target=run.stop, args=(strategy,), daemon=True).start()
                return 200, obj
            if method == "DELETE":
                del self.objects[key]
                run = self.runs.get(name) if plural == "workflows" else None
                if run is not None and not run.done.is_set():  # deleting kills its pods
                    threading.Thread(target=run.stop, args=("Terminate",), daemon=True).start()
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                             "code": 200}  # fmt: skip
            return 405, _status(405, f"{method} not allowed")

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                url = urlsplit(self.path)
                code, payload = api.handle(self.command, url.path, parse_qs(url.query), body)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args):
                pass

        return Handler


__all__ = ["ClusterAPI", "FINISHED", "parse_selector", "selector_matches", "sensor_matches"]
