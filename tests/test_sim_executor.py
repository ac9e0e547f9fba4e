"""The simulated cluster's controller on tiny hand-written templates: every pod really runs.

Each test creates a WorkflowTemplate and a Workflow through the kubernetes client, as the
Deployer and the Argo backend do, and looks at the phases, the nodes and what the pods wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from cluster.api import ClusterAPI, parse_selector, selector_matches
from cluster.image import CACHE, build, contents
from cluster.network import EventsWebhook
from cluster.pods import CGROUP_CPU, pods_unsupported
from cluster.templating import TemplateError, depends_satisfied, expand_k8s, substitute

UNSUPPORTED = pods_unsupported()
pytestmark = [pytest.mark.sim, pytest.mark.skipif(bool(UNSUPPORTED), reason=str(UNSUPPORTED))]
GROUP, VERSION, NS = "argoproj.io", "v1alpha1", "default"


@pytest.fixture(scope="module")
def image():
    return build()


@pytest.fixture
def cluster(image):
    folder = CACHE / f"unit-{os.getpid()}-{time.monotonic_ns()}"
    with ClusterAPI(folder, image) as api:
        yield api
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def custom(cluster, tmp_path):
    from kubernetes import config
    from kubernetes.client import CustomObjectsApi

    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))


def container(name: str, script: str, **extra) -> dict:
    return {"name": name, "container": {"image": "x", "command": ["bash", "-c", script],
            **extra.pop("container", {})}, **extra}  # fmt: skip


def submit(custom, templates: list[dict], *, entrypoint: str, spec=None, metadata=None) -> str:
    template = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkflowTemplate",
        "metadata": {"name": f"t{time.monotonic_ns()}"},
        "spec": {"entrypoint": entrypoint, "templates": templates, **(spec or {})},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "workflowtemplates", template)
    workflow = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {"generateName": "wf-", **(metadata or {})},
        "spec": {"workflowTemplateRef": {"name": template["metadata"]["name"]}},
    }
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, "workflows", workflow)
    return created["metadata"]["name"]


def wait(custom, name: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wf = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "workflows", name)
        if wf["status"]["phase"] not in ("Pending", "Running"):
            return wf
        time.sleep(0.1)
    raise AssertionError(f"{name} still running after {timeout} s")


def nodes(workflow: dict) -> dict[str, dict]:
    return {n["displayName"]: n for n in workflow["status"]["nodes"].values()}


def test_templating_substitutes_and_refuses_unknown_variables():
    scope = {"workflow.name": "wf-1", "inputs.parameters.x": "7"}
    assert substitute("run {{workflow.name}}/{{ inputs.parameters.x }}", scope) == "run wf-1/7"
    with pytest.raises(TemplateError, match="failed to resolve"):
        substitute("{{workflow.nope}}", scope)
    assert expand_k8s("$(A)-$(B)-$$(A)-$(pwd)", {"A": "1", "B": "2"}) == "1-2-$(A)-$(pwd)"
    assert depends_satisfied("a.Succeeded && (b.Failed || !c)", {"a": "Succeeded",
                             "b": "Succeeded", "c": "Failed"})  # fmt: skip
    assert not depends_satisfied("a", {"a": "Failed"})


def test_label_selectors_as_kubernetes_reads_them():
    terms = parse_selector("torchperf/tag=t1,torchperf/variant in (c1_n32,c2_n32),!gone")
    assert selector_matches(terms, {"torchperf/tag": "t1", "torchperf/variant": "c1_n32"})
    assert not selector_matches(terms, {"torchperf/tag": "t2", "torchperf/variant": "c1_n32"})
    assert not selector_matches(terms, {"torchperf/tag": "t1", "torchperf/variant": "c1_n32",
                                        "gone": "x"})  # fmt: skip


def test_dag_runs_in_dependency_order_and_passes_outputs_and_parameters(custom, cluster):
    # GIVEN a diamond a -> (b, c) -> d where b's output reaches d as an input parameter
    stamp = "date +%s%N >> /mnt/out/order; "
    templates = [
        {"name": "main", "dag": {"tasks": [
            {"name": "a", "template": "step", "arguments": {"parameters": [
                {"name": "who", "value": "a-{{workflow.parameters.greeting}}"}]}},
            {"name": "b", "template": "emit", "depends": "a"},
            {"name": "c", "template": "step", "depends": "a.Succeeded",
             "arguments": {"parameters": [{"name": "who", "value": "c"}]}},
            {"name": "d", "template": "step", "depends": "b && c",
             "arguments": {"parameters": [
                 {"name": "who", "value": "{{tasks.b.outputs.parameters.word}}"}]}},
        ]}},  # fmt: skip
        container("step", stamp + "echo {{inputs.parameters.who}} > /mnt/out/who; "
                  "echo $WF $POD > /mnt/out/ids",
                  inputs={"parameters": [{"name": "who"}]},
                  outputs={"parameters": [{"name": "who", "valueFrom": {"path": "/mnt/out/who"}}]},
                  container={"volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}],
                             "env": [{"name": "WF", "value": "{{workflow.name}}"},
                                     {"name": "POD", "valueFrom": {"fieldRef": {
                                         "fieldPath": "metadata.name"}}}]}),
        container("emit", "sleep 0.3; echo hello-from-b > /mnt/out/word",
                  outputs={"parameters": [{"name": "word",
                                           "valueFrom": {"path": "/mnt/out/word"}}]},
                  container={"volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}]}),
    ]  # fmt: skip
    spec = {"arguments": {"parameters": [{"name": "greeting", "value": "hi"}]}}
    name = submit(custom, templates, entrypoint="main", spec=spec)
    # WHEN it runs THEN it succeeds, each task's input was substituted, outputs were passed on
    workflow = wait(custom, name)
    assert workflow["status"]["phase"] == "Succeeded"
    by_name = nodes(workflow)
    words = {t: by_name[t]["outputs"]["parameters"][0]["value"] for t in ("a", "c", "d")}
    assert words == {"a": "a-hi", "c": "c", "d": "hello-from-b"}
    pods = {pod.display: pod for pod in cluster.pods}
    assert set(pods) == {"a", "b", "c", "d"}
    order = {t: int(pods[t].host_path("/mnt/out/order").read_text()) for t in ("a", "c", "d")}
    assert order["a"] < order["c"] < order["d"]
    assert pods["d"].started > pods["b"].ended  # d waited for b's output
    wf_name, pod_name = pods["a"].host_path("/mnt/out/ids").read_text().split()
    assert wf_name == name and pod_name == pods["a"].name


def test_failing_step_fails_the_workflow_and_skips_what_depends_on_it(custom, cluster):
    templates = [
        {"name": "main", "dag": {"tasks": [
            {"name": "boom", "template": "fail"},
            {"name": "after", "template": "ok", "depends": "boom"}]}},
        container("fail", "echo failing; exit 3"),
        container("ok", "true"),
    ]  # fmt: skip
    workflow = wait(custom, submit(custom, templates, entrypoint="main"))
    assert workflow["status"]["phase"] == "Failed"
    assert "boom" in workflow["status"]["message"]
    assert nodes(workflow)["boom"]["message"] == "Error (exit code 3)"
    assert [pod.display for pod in cluster.pods] == ["boom"]


def test_exit_handler_sees_the_failure(custom, cluster):
    templates = [
        {"name": "main", "dag": {"tasks": [{"name": "boom", "template": "fail"}]}},
        container("fail", "exit 1"),
        {"name": "exit", "steps": [[{"name": "report", "template": "hook",
                                     "when": "{{workflow.status}} != Succeeded"}]]},
        container("hook", "echo \"$FAILURES\" > /mnt/out/failures",
                  container={"env": [{"name": "FAILURES", "value": "{{workflow.failures}}"}],
                             "volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}]}),
    ]  # fmt: skip
    wait(custom, submit(custom, templates, entrypoint="main", spec={"onExit": "exit"}))
    hook = next(pod for pod in cluster.pods if pod.display == "report")
    failures = json.loads(json.loads(hook.host_path("/mnt/out/failures").read_text()))
    assert failures[0]["displayName"] == "boom" and failures[0]["phase"] == "Failed"


def test_shutdown_kills_the_running_pod_and_its_children(custom, cluster):
    templates = [container("main", "sleep 300 & sleep 300; wait")]
    name = submit(custom, templates, entrypoint="main")
    deadline = time.monotonic() + 20
    while not cluster.running_pods and time.monotonic() < deadline:
        time.sleep(0.05)
    (pod,) = cluster.running_pods
    time.sleep(0.3)
    pids = pod.pids()
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "workflows", name,
                                          {"spec": {"shutdown": "Terminate"}})  # fmt: skip
    workflow = wait(custom, name, timeout=20)
    assert workflow["status"]["phase"] == "Failed"
    assert workflow["status"]["message"] == "Stopped with strategy 'Terminate'"
    assert len(pids) >= 2 and not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not (CGROUP_CPU / "cgroup.procs").exists(), reason="no cgroup v1 cpu")
def test_pod_runs_under_a_cfs_quota_of_its_cpu_limit(custom, cluster):
    # GIVEN a pod limited to half a core that spins for 1 s of wall time
    spin = "python -c 'import time\nt=time.time()\nwhile time.time()-t<1: pass'"
    script = "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us " \
             "> /mnt/out/quota; " + spin  # fmt: skip
    limits = {"volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}],
              "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "500m"}}}  # fmt: skip
    workflow = wait(custom, submit(custom, [container("main", script, container=limits)],
                                   entrypoint="main"))  # fmt: skip
    assert workflow["status"]["phase"] == "Succeeded"
    (pod,) = cluster.pods
    # THEN the pod read its own quota, was throttled, used about half of the wall time
    quota, period = map(int, pod.host_path("/mnt/out/quota").read_text().split())
    assert quota / period == pytest.approx(0.5)
    assert pod.cgroup_stat["nr_throttled"] > 0
    assert pod.cpu_seconds < 0.8 * pod.wall_seconds
    assert not pod.cgroup.exists()  # removed afterwards


def test_metadata_is_kept_ttl_deletes_finished_workflows_and_pod_gc_removes_pods(custom, cluster):
    labels = {"torchperf/tag": "t1", "torchperf/variant": "c1_n32"}
    title = {"workflows.argoproj.io/title": "cpu=1 tensor_dim=32"}
    spec = {"ttlStrategy": {"secondsAfterCompletion": 1}, "podGC": {"strategy": "OnPodSuccess"}}
    name = submit(custom, [container("main", "true")], entrypoint="main", spec=spec,
                  metadata={"labels": labels, "annotations": title})  # fmt: skip
    wait(custom, name)
    listed = custom.list_namespaced_custom_object(
        GROUP, VERSION, NS, "workflows", label_selector="torchperf/tag=t1"
    )["items"]
    assert [wf["metadata"]["name"] for wf in listed] == [name]
    assert (
        listed[0]["metadata"]["annotations"]["workflows.argoproj.io/title"]
        == title["workflows.argoproj.io/title"]
    )
    assert cluster.collected == [cluster.pods[0].name] and not cluster.pods[0].folder.exists()
    deadline = time.monotonic() + 10
    while name in cluster.names("workflows") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.names("workflows") == []
    assert cluster.expired[0]["name"] == name and cluster.expired[0]["ttl"] == 1


def test_pods_python_has_the_image_packages_and_nothing_else(custom, cluster, image):
    assert {"torch", "pandas", "matplotlib", "boto3", "requests"} <= set(contents(image))
    script = (
        "python -c 'import pandas, boto3, requests' && "
        "! python -c 'import hydra' 2>/dev/null && ! python -c 'import metaflow' 2>/dev/null"
    )
    workflow = wait(custom, submit(custom, [container("main", script)], entrypoint="main"))
    assert workflow["status"]["phase"] == "Succeeded", cluster.pods[0].folder


def test_webhook_takes_events_from_pods_only_and_sensors_start_their_trigger(custom, cluster):
    # GIVEN a Metaflow-shaped Sensor on event "go" whose trigger passes body.payload on
    target = [
        container(
            "main",
            "echo '{{workflow.parameters.go}}' > /mnt/out/payload",
            container={"volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}]},
        )
    ]
    template = {
        "metadata": {"name": "analytics"},
        "spec": {
            "entrypoint": "main",
            "templates": target,
            "arguments": {"parameters": [{"name": "go", "value": "null"}]},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "workflowtemplates", template)
    resource = {
        "metadata": {"generateName": "analytics-"},
        "spec": {
            "workflowTemplateRef": {"name": "analytics"},
            "arguments": {"parameters": [{"name": "go", "value": "null"}]},
        },
    }
    sensor = {
        "metadata": {"name": "s"},
        "spec": {
            "dependencies": [
                {
                    "name": "go",
                    "filters": {
                        "exprs": [
                            {
                                "expr": "name == 'go'",
                                "fields": [{"name": "name", "path": "body.payload.name"}],
                            }
                        ]
                    },
                }
            ],
            "triggers": [
                {
                    "template": {
                        "k8s": {
                            "source": {"resource": resource},
                            "parameters": [
                                {
                                    "src": {
                                        "dependencyName": "go",
                                        "dataKey": "body.payload",
                                        "value": "null",
                                    },
                                    "dest": "spec.arguments.parameters.#(name=go).value",
                                }
                            ],
                        }
                    }
                }
            ],
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "sensors", sensor)
    with EventsWebhook(cluster) as webhook:
        # WHEN this process posts an event THEN its connection is dropped, nothing starts
        import urllib.request

        body = json.dumps({"payload": {"name": "go", "run": "F/1"}}).encode()
        with pytest.raises(OSError):
            urllib.request.urlopen(urllib.request.Request(webhook.internal_url, data=body))
        assert cluster.events == [] and len(webhook.refused) == 1
        # WHEN a pod posts it THEN the Sensor starts its workflow with the payload as parameter
        post = (
            "python -c 'import os, urllib.request; urllib.request.urlopen(urllib.request."
            'Request(os.environ["URL"], data=os.environ["BODY"].encode()))\''
        )
        env = {
            "env": [
                {"name": "URL", "value": webhook.internal_url},
                {"name": "BODY", "value": body.decode()},
            ]
        }
        publisher = submit(custom, [container("main", post, container=env)], entrypoint="main")
        assert wait(custom, publisher)["status"]["phase"] == "Succeeded"
    (started,) = [name for _, name in cluster.triggered]
    assert wait(custom, started)["status"]["phase"] == "Succeeded"
    pod = next(pod for pod in cluster.pods if pod.workflow == started)
    assert json.loads(pod.host_path("/mnt/out/payload").read_text()) == {"name": "go", "run": "F/1"}
