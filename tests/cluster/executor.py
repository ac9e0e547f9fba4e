"""The workflow controller of the simulated cluster: run one Workflow's templates for real.

``WorkflowRun`` walks the entrypoint as Argo's controller does: a ``dag`` template runs its tasks
in dependency order (``depends`` or ``dependencies``; ``failFast`` stops new tasks after a
failure), a ``steps`` template runs its groups in order (``when`` evaluated), a ``container``
template becomes a pod (tests/cluster/pods.py). Arguments become the called template's input
parameters; a container's output parameters are read from the files its ``valueFrom.path``
names once it has exited (missing file: the node errors, unless a default is given). Then the
``onExit`` handler runs with ``workflow.status`` and ``workflow.failures``. Node and workflow
phases are written to the Workflow's ``status`` as they change; ``shutdown`` kills what runs.

Not simulated: retries (``retryStrategy``), ``withItems``/``withParam`` fan-out, artifacts,
sidecars and init containers, scheduling (a pod starts at once, on this machine).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .pods import Pod, cpu_limit
from .templating import (
    TemplateError,
    depends_on,
    depends_satisfied,
    expand_k8s,
    field_path,
    substitute,
    substitute_all,
    when_holds,
)

FINISHED = ("Succeeded", "Failed", "Error", "Skipped", "Omitted")
FAILED = ("Failed", "Error")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Stopped(Exception):
    """The workflow was shut down while this node waited or ran."""


class WorkflowRun:
    """One Workflow being executed; ``start()`` runs it in a thread."""

    def __init__(self, cluster, workflow: dict, spec: dict):
        self.cluster = cluster  # the ClusterAPI: lock, pod folders, image, cgroups
        self.workflow = workflow  # the stored object; status is written in place
        self.spec = spec  # the template's spec merged with the workflow's
        self.templates = {t["name"]: t for t in spec.get("templates", [])}
        self.name = workflow["metadata"]["name"]
        self.namespace = workflow["metadata"]["namespace"]
        self.pods: list[Pod] = []
        self.shutdown: str | None = None
        self._running: set[Pod] = set()
        self._lock = threading.Lock()
        self.failures: list[dict] = []
        self.thread = threading.Thread(target=self._main, name=f"wf-{self.name}", daemon=True)
        self.done = threading.Event()

    # -- scope ---------------------------------------------------------------------------------
    def _workflow_scope(self) -> dict[str, str]:
        meta = self.workflow["metadata"]
        scope = {
            "workflow.name": self.name,
            "workflow.namespace": self.namespace,
            "workflow.uid": meta["uid"],
            "workflow.creationTimestamp": meta["creationTimestamp"],
            "workflow.serviceAccountName": self.spec.get("serviceAccountName") or "default",
            "workflow.mainEntrypoint": self.spec.get("entrypoint", ""),
        }
        for param in self.spec.get("arguments", {}).get("parameters", []):
            scope[f"workflow.parameters.{param['name']}"] = str(param.get("value", ""))
        for field in ("labels", "annotations"):
            for key, value in (meta.get(field) or {}).items():
                scope[f"workflow.{field}.{key}"] = value
        return scope

    # -- status --------------------------------------------------------------------------------
    def _node(self, display: str, template: str, kind: str, parent: str | None) -> dict:
        node_id = f"{self.name}-{zlib.crc32(f'{parent}/{display}'.encode()):010d}"
        node = {
            "id": node_id,
            "name": f"{self.name}.{display}" if parent else self.name,
            "displayName": display,
            "type": kind,
            "templateName": template,
            "phase": "Running",
            "startedAt": now_iso(),
            "finishedAt": None,
        }
        with self.cluster.lock:
            self.workflow["status"].setdefault("nodes", {})[node_id] = node
        return node

    def _finish_node(self, node: dict, phase: str, message: str = "", outputs=None) -> None:
        with self.cluster.lock:
            node.update(phase=phase, finishedAt=now_iso())
            if message:
                node["message"] = message
            if outputs:
                node["outputs"] = {
                    "parameters": [{"name": k, "value": v} for k, v in outputs.items()]
                }
        if phase in FAILED and message:
            self.failures.append(
                {
                    "displayName": node["displayName"],
                    "message": message,
                    "templateName": node["templateName"],
                    "phase": phase,
                    "podName": node.get("podName", ""),
                    "finishedAt": node["finishedAt"],
                }
            )

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        status = self.workflow["status"]
        with self.cluster.lock:
            status.update(phase="Running", startedAt=now_iso())
        scope = self._workflow_scope()
        phase, message = "Succeeded", ""
        try:
            entry = self.spec.get("entrypoint")
            phase, _ = self._run(entry, {}, scope, display=self.name, parent=None)
            if phase in FAILED:
                failed = [f for f in self.failures if f["phase"] in FAILED]
                message = f"child '{failed[0]['displayName']}' failed" if failed else phase
        except TemplateError as error:
            phase, message = "Error", str(error)
        if self.shutdown:
            phase, message = "Failed", f"Stopped with strategy '{self.shutdown}'"
        on_exit = self.spec.get("onExit")
        if on_exit and self.shutdown != "Terminate":
            exit_scope = {
                **scope,
                "workflow.status": phase,
                # Metaflow's capture_error reads this env value with json.loads twice.
                "workflow.failures": json.dumps(json.dumps(self.failures)),
            }
            # An exit handler's failure does not change the workflow's phase.
            with contextlib.suppress(TemplateError, Stopped):
                self._run(on_exit, {}, exit_scope, display="onExit", parent=self.name)
        with self.cluster.lock:
            status.update(phase=phase, finishedAt=now_iso())
            if message:
                status["message"] = message
            labels = self.workflow["metadata"].setdefault("labels", {})
            labels["workflows.argoproj.io/phase"] = phase
            labels["workflows.argoproj.io/completed"] = "true"
        self.done.set()
        self.cluster.workflow_finished(self)

    def stop(self, strategy: str) -> None:
        """``spec.shutdown``: kill every running pod, start no new node."""
        self.shutdown = strategy
        with self._lock:
            running = list(self._running)
        for pod in running:
            pod.kill()

    def _run(self, name: str, inputs: dict, scope: dict, *, display: str, parent):
        """Run template ``name`` with input parameters; (phase, output parameters)."""
        if self.shutdown:
            raise Stopped()
        template = self.templates.get(name)
        if template is None:
            raise TemplateError(f"template {name} not found")
        declared = {p["name"]: p for p in (template.get("inputs") or {}).get("parameters") or []}
        values = {}
        for pname, param in declared.items():
            if pname in inputs:
                values[pname] = inputs[pname]
            elif "value" in param and param["value"] is not None:
                values[pname] = param["value"]
            elif "default" in param:
                values[pname] = param["default"]
            else:
                raise TemplateError(f"inputs.parameters.{pname} was not supplied")
        local = {**scope, **{f"inputs.parameters.{k}": v for k, v in values.items()}}
        if "dag" in template:
            return self._dag(template, local, display, parent)
        if "steps" in template:
            return self._steps(template, local, display, parent)
        if "container" in template:
            return self._container(template, local, display, parent)
        raise TemplateError(f"template {name}: only container, dag and steps are simulated")

    def _arguments(self, task: dict, scope: dict) -> dict:
        params = (task.get("arguments") or {}).get("parameters") or []
        return {p["name"]: substitute(str(p.get("value", "")), scope) for p in params}

    def _dag(self, template: dict, scope: dict, display: str, parent):
        node = self._node(display, template["name"], "DAG", parent)
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        fail_fast = template["dag"].get("failFast", True)
        phases: dict[str, str] = {}
        outputs: dict[str, dict] = {}
        futures = {}
        done = threading.Condition()

        def needs(task):
            if task.get("depends") is not None:
                return depends_on(task["depends"])
            return set(task.get("dependencies") or [])

        def satisfied(task):
            if task.get("depends") is not None:
                return depends_satisfied(task["depends"], phases)
            return all(phases[d] in ("Succeeded", "Skipped") for d in needs(task))

        def run_task(task, task_scope):
            try:
                result = self._run(
                    task["template"], self._arguments(task, task_scope), task_scope,
                    display=task["name"], parent=node["id"],
                )  # fmt: skip
            except Stopped:
                result = ("Failed", {})
            except TemplateError as error:
                self._finish_node(self._node(task["name"], task["template"], "Pod", node["id"]),
                                  "Error", str(error))  # fmt: skip
                result = ("Error", {})
            with done:
                phases[task["name"]], outputs[task["name"]] = result
                done.notify_all()

        with ThreadPoolExecutor(max(1, len(tasks))) as pool:
            while True:
                with done:
                    failed = any(p in FAILED for p in phases.values())
                    for name, task in tasks.items():
                        if name in phases or name in futures:
                            continue
                        if not all(dep in phases for dep in needs(task)):
                            continue
                        if self.shutdown or (failed and fail_fast) or not satisfied(task):
                            phases[name] = "Omitted"
                            continue
                        task_scope = dict(scope)
                        for other, params in outputs.items():
                            task_scope[f"tasks.{other}.status"] = phases[other]
                            for key, value in params.items():
                                task_scope[f"tasks.{other}.outputs.parameters.{key}"] = value
                        futures[name] = pool.submit(run_task, task, task_scope)
                    if len(phases) == len(tasks):
                        break
                    waiting = [n for n in futures if n not in phases]
                    if not waiting:
                        for name in tasks:  # unreachable dependencies: never started
                            phases.setdefault(name, "Omitted")
                        break
                    done.wait(0.5)
        phase = "Failed" if any(p in FAILED for p in phases.values()) else "Succeeded"
        if self.shutdown:
            phase = "Failed"
        self._finish_node(node, phase)
        return phase, {}

    def _steps(self, template: dict, scope: dict, display: str, parent):
        node = self._node(display, template["name"], "Steps", parent)
        phase = "Succeeded"
        local = dict(scope)
        for group in template["steps"]:
            results = {}
            for step in group:  # parallel steps of a group run one after another here
                if step.get("when") and not when_holds(substitute(step["when"], local)):
                    results[step["name"]] = ("Skipped", {})
                    continue
                results[step["name"]] = self._run(
                    step["template"], self._arguments(step, local), local,
                    display=step["name"], parent=node["id"],
                )  # fmt: skip
            for name, (step_phase, params) in results.items():
                local[f"steps.{name}.status"] = step_phase
                for key, value in params.items():
                    local[f"steps.{name}.outputs.parameters.{key}"] = value
                if step_phase in FAILED:
                    phase = "Failed"
            if phase in FAILED:
                break
        self._finish_node(node, phase)
        return phase, {}

    def _pod_document(self, template: dict, pod_name: str) -> dict:
        """The pod as the downward API sees it (metadata from podMetadata and the template)."""
        meta = template.get("metadata") or {}
        pod_meta = self.spec.get("podMetadata") or {}
        labels = {**(pod_meta.get("labels") or {}), **(meta.get("labels") or {})}
        labels["workflows.argoproj.io/workflow"] = self.name
        annotations = {**(pod_meta.get("annotations") or {}), **(meta.get("annotations") or {})}
        return {
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "uid": secrets.token_hex(16),
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {
                "nodeName": "simulated-node",
                "serviceAccountName": template.get("serviceAccountName")
                or self.spec.get("serviceAccountName")
                or "default",
            },
            "status": {"hostIP": "127.0.0.1", "podIP": "127.0.0.1"},
        }

    def _container(self, template: dict, scope: dict, display: str, parent):
        node = self._node(display, template["name"], "Pod", parent)
        pod_name = f"{self.name}-{template['name']}-{zlib.crc32(node['id'].encode())}"[:253]
        pod_name = pod_name.replace(".", "-").lower()
        node["podName"] = pod_name
        local = {**scope, "pod.name": pod_name}
        try:
            container = substitute_all(template["container"], local)
        except TemplateError as error:
            self._finish_node(node, "Error", str(error))
            return "Error", {}
        document = self._pod_document(template, pod_name)
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            kind = "secrets" if source.get("secretRef") else "configmaps"
            values = self.cluster.core_objects.get((self.namespace, kind, ref.get("name")))
            if values is None:
                self._finish_node(node, "Error", f'{kind[:-1]} "{ref.get("name")}" not found')
                return "Error", {}
            env.update({(source.get("prefix") or "") + k: v for k, v in values.items()})
        for item in container.get("env") or []:
            source = item.get("valueFrom") or {}
            if source.get("fieldRef"):
                env[item["name"]] = field_path(source["fieldRef"]["fieldPath"], document)
            elif source.get("secretKeyRef") or source.get("configMapKeyRef"):
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
                kind = "secrets" if source.get("secretKeyRef") else "configmaps"
                values = self.cluster.core_objects.get((self.namespace, kind, ref["name"])) or {}
                if ref["key"] not in values:
                    self._finish_node(node, "Error", f"couldn't find key {ref['key']} in "
                                      f"{kind[:-1]} {ref['name']}")  # fmt: skip
                    return "Error", {}
                env[item["name"]] = values[ref["key"]]
            else:
                env[item["name"]] = expand_k8s(str(item.get("value") or ""), env)
        argv = [expand_k8s(a, env) for a in (container.get("command") or [])]
        argv += [expand_k8s(a, env) for a in (container.get("args") or [])]
        if not argv:
            self._finish_node(node, "Error", "a container without command: image entrypoints "
                              "are not simulated")  # fmt: skip
            return "Error", {}
        folder = self.cluster.pod_folder(pod_name)
        pod_env = {
            "PATH": f"{self.cluster.image}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": pod_name,
            "HOME": str(folder / "home"),
            "LANG": "C.UTF-8",
            **env,
        }
        try:
            pod = Pod(
                pod_name, folder, argv, pod_env,
                volume_mounts=container.get("volumeMounts"),
                cores=cpu_limit(container),
                cgroup_parent=self.cluster.cgroup_parent,
                use_cgroup=self.cluster.use_cgroups,
            )  # fmt: skip
        except ValueError as error:
            self._finish_node(node, "Error", str(error))
            return "Error", {}
        pod.workflow, pod.template, pod.display = self.name, template["name"], display
        with self._lock:
            if self.shutdown:
                self._finish_node(node, "Failed", "workflow shutdown")
                return "Failed", {}
            pod.start()
            self._running.add(pod)
        self.pods.append(pod)
        self.cluster.pod_started(pod)
        deadline = template.get("activeDeadlineSeconds")
        code = self._wait(pod, float(deadline) if deadline else None)
        with self._lock:
            self._running.discard(pod)
        self.cluster.pod_finished(pod)
        if self.shutdown:
            self._finish_node(node, "Failed", f"Stopped with strategy '{self.shutdown}'")
            return "Failed", {}
        if code == "deadline":
            self._finish_node(node, "Failed", "Pod was active on the node longer than the "
                              "specified deadline")  # fmt: skip
            return "Failed", {}
        if code != 0:
            self._finish_node(node, "Failed", f"Error (exit code {code})")
            return "Failed", {}
        outputs = {}
        for param in (template.get("outputs") or {}).get("parameters") or []:
            path = (param.get("valueFrom") or {}).get("path")
            if not path:
                continue
            host = pod.host_path(path)
            if host is not None and host.is_file():
                outputs[param["name"]] = host.read_text().strip()
            elif (param.get("valueFrom") or {}).get("default") is not None:
                outputs[param["name"]] = param["valueFrom"]["default"]
            else:
                self._finish_node(node, "Error", f"open {path}: no such file or directory")
                return "Error", {}
        self._finish_node(node, "Succeeded", outputs=outputs)
        return "Succeeded", outputs

    def _wait(self, pod: Pod, deadline_seconds: float | None):
        limit = time.monotonic() + deadline_seconds if deadline_seconds else None
        while pod.poll() is None:
            if limit and time.monotonic() > limit:
                pod.kill()
                pod.wait()
                return "deadline"
            time.sleep(0.05)
        return pod.wait()


def merged_spec(template: dict | None, workflow: dict) -> dict:
    """A Workflow's effective spec: its WorkflowTemplate's, overridden by its own fields."""
    base = json.loads(json.dumps((template or {}).get("spec") or {}))
    own = {k: v for k, v in workflow.get("spec", {}).items() if k != "workflowTemplateRef"}
    params = {p["name"]: p for p in (base.get("arguments") or {}).get("parameters") or []}
    for p in (own.get("arguments") or {}).get("parameters") or []:
        params[p["name"]] = {**params.get(p["name"], {}), **p}
    base.update({k: v for k, v in own.items() if k != "arguments"})
    base["arguments"] = {"parameters": list(params.values())}
    return base


def ttl_seconds(spec: dict, phase: str) -> float | None:
    """When a finished Workflow goes away (ttlStrategy), or None to keep it."""
    strategy = spec.get("ttlStrategy") or {}
    specific = strategy.get(
        "secondsAfterSuccess" if phase == "Succeeded" else "secondsAfterFailure"
    )
    value = specific if specific is not None else strategy.get("secondsAfterCompletion")
    return None if value is None else float(value)


def pod_gc_applies(spec: dict, phase: str) -> str | None:
    """The podGC strategy that deletes this workflow's pods once it ended, if any."""
    strategy = (spec.get("podGC") or {}).get("strategy")
    if strategy in ("OnPodCompletion", "OnWorkflowCompletion"):
        return strategy
    if strategy in ("OnPodSuccess", "OnWorkflowSuccess") and phase == "Succeeded":
        return strategy
    return None


def remove_folder(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
