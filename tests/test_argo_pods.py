"""What a measuring pod records of itself, and the one code a sweep deploys.

The pod's QoS class, node and image digest as the real API server sets them are checked on the
real control plane (tests/test_argo_real.py); here, against a loopback server that answers as
the API does, what the reading does when the API answers, refuses or hangs.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from torchperf import fingerprint
from torchperf.backends.base import snapshot_flows

POD = {
    "spec": {"nodeName": "node-a"},
    "status": {
        "qosClass": "Burstable",
        "containerStatuses": [
            {"name": "wait", "imageID": "quay.io/argoproj/argoexec@sha256:aaa"},
            {"name": "main", "imageID": "registry.example/torchperf@sha256:bbb"},
        ],
    },
}


@pytest.fixture
def pod_api(tmp_path):
    """A loopback API that answers GET of one pod as ``answer`` says; the requests it saw."""
    state = {"answer": (200, POD), "seen": [], "hang": threading.Event()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state["seen"].append((self.path, self.headers.get("Authorization")))
            if state["hang"].is_set():
                time.sleep(30)  # a half-open connection: no answer
                return
            status, body = state["answer"]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("the-token\n")
    environ = {
        "METAFLOW_KUBERNETES_POD_NAME": "wf-start-1",
        "METAFLOW_KUBERNETES_POD_NAMESPACE": "sweeps",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
    }
    yield state, environ, account
    server.shutdown()
    server.server_close()


def read(environ, account):
    return fingerprint.pod_facts(environ, account=account, scheme="http")


def test_a_pod_records_its_node_qos_class_and_its_main_container_s_image_digest(pod_api):
    state, environ, account = pod_api
    facts = read(environ, account)
    assert facts == {
        "node": POD["spec"]["nodeName"],
        "qos_class": POD["status"]["qosClass"],
        "image_digest": POD["status"]["containerStatuses"][1]["imageID"],
        "pod_unreadable": None,
    }
    # ... read as its own service account, at its own name and namespace
    assert state["seen"] == [("/api/v1/namespaces/sweeps/pods/wf-start-1", "Bearer the-token")]
    # ... and a pod that is not Guaranteed says so among the figure's warnings
    said = fingerprint.warnings(facts)
    assert any("Burstable" in line and "not Guaranteed" in line for line in said)


def test_a_pod_refused_by_rbac_still_measures_and_names_the_missing_permission(pod_api):
    state, environ, account = pod_api
    state["answer"] = (403, {"kind": "Status", "reason": "Forbidden"})
    facts = read(environ, account)
    assert (facts["node"], facts["qos_class"], facts["image_digest"]) == (None, None, None)
    assert "403" in facts["pod_unreadable"] and "get on pods" in facts["pod_unreadable"]
    assert any("unknown" in line for line in fingerprint.warnings(facts))


def test_an_api_that_never_answers_costs_the_pod_its_bound_and_no_more(pod_api, monkeypatch):
    state, environ, account = pod_api
    state["hang"].set()
    monkeypatch.setattr(fingerprint, "POD_READ_SECONDS", 0.5)
    began = time.monotonic()
    facts = read(environ, account)
    assert time.monotonic() - began < 5
    assert facts["node"] is None and "timed out" in facts["pod_unreadable"].lower()


def test_outside_a_pod_nothing_is_read_or_recorded(pod_api):
    state, environ, account = pod_api
    assert read({}, account) == {}
    assert state["seen"] == []


def test_an_image_digest_known_on_one_side_only_is_no_difference_but_two_are():
    a = {"image": "torchperf:2.13", "image_digest": "torchperf@sha256:1"}
    assert fingerprint.differences(a, {"image": "torchperf:2.13"}) == []
    changed = fingerprint.differences(a, {**a, "image_digest": "torchperf@sha256:2"})
    assert changed == ["image_digest: torchperf@sha256:1 -> torchperf@sha256:2"]


def test_an_edit_after_the_snapshot_reaches_none_of_the_sweeps_code(tmp_path):
    # GIVEN a project with a flow and the package its pods import
    root = tmp_path / "project"
    (root / "torchperf" / "__pycache__").mkdir(parents=True)
    (root / "metaflow_extensions").mkdir()
    (root / "torchtest.py").write_text("VERSION = 1\n")
    (root / "torchperf" / "bench.py").write_text("SAMPLES = 1\n")
    (root / "torchperf" / "__pycache__" / "bench.cpython-311.pyc").write_bytes(b"\0")
    # WHEN the sweep takes its snapshot, and then both files are edited
    code = snapshot_flows(tmp_path / "sweep" / "code", ["torchtest.py"], root=root)
    (root / "torchtest.py").write_text("VERSION = 2\n")
    (root / "torchperf" / "bench.py").write_text("SAMPLES = 2\n")
    # THEN the sweep's code is what it was when the sweep began, with no compiled leftovers
    assert (code / "torchtest.py").read_text() == "VERSION = 1\n"
    assert (code / "torchperf" / "bench.py").read_text() == "SAMPLES = 1\n"
    assert not (code / "torchperf" / "__pycache__").exists()
    assert not (code / "torchtest.py").is_symlink()
