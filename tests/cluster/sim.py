"""The whole simulated cluster in one context manager, and the settings a sweep needs for it.

    with SimulatedCluster() as cluster:
        subprocess.run([...sweep_deployer.py, "-m", "backend=argo", ...], env=cluster.environ())

Starts moto's S3 server (the datastore bucket created), the metadata service, the Kubernetes
API that executes workflows, and the events webhook; builds (or reuses) the pods' Python from
image/requirements.txt; stores the S3 credentials as a Kubernetes secret the pods get through
``METAFLOW_KUBERNETES_SECRETS`` (the compiled templates' ``envFrom``), as a real installation
would hand them out. ``close`` stops all of it, killing what still runs, also after an error.

Pods' folders live under /var/tmp (never /tmp: each pod mounts its own tmpfs over /tmp).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from .api import ClusterAPI
from .image import CACHE, REQUIREMENTS, build
from .metadata import start_metadata_service
from .network import EventsWebhook
from .s3 import start_moto

BUCKET = "torchperf-sim"
NAMESPACE = "default"
S3_KEY, S3_SECRET = "sim-access-key", "sim-secret-key"
S3_SECRET_NAME = "torchperf-sim-s3"


class SimulatedCluster:
    def __init__(
        self,
        folder: Path | None = None,
        *,
        requirements: Path = REQUIREMENTS,
        use_cgroups: bool = True,
        keep: bool = False,
    ):
        self.folder = Path(folder or CACHE / f"cluster-{secrets.token_hex(4)}")
        self.requirements = Path(requirements)
        self.use_cgroups = use_cgroups
        self.keep = keep
        self._stack = contextlib.ExitStack()
        self.api: ClusterAPI | None = None
        self.webhook: EventsWebhook | None = None

    def __enter__(self) -> SimulatedCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.image = build(self.requirements)
        moto, self.s3_url = start_moto(BUCKET, S3_KEY, S3_SECRET)
        self._stack.callback(_stop, moto)
        service, self.service_url = start_metadata_service(
            self.folder / "metadata", log=self.folder / "metadata.log"
        )
        self._stack.callback(_stop, service)
        self.api = self._stack.enter_context(
            ClusterAPI(self.folder, self.image, use_cgroups=self.use_cgroups)
        )
        self.api.core_objects[(NAMESPACE, "secrets", S3_SECRET_NAME)] = {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.webhook = self._stack.enter_context(EventsWebhook(self.api))
        self.kubeconfig = self.api.write_kubeconfig(self.folder / "kubeconfig", NAMESPACE)
        (self.folder / "metaflow-home").mkdir(exist_ok=True)

    def close(self) -> None:
        self._stack.close()
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def environ(self) -> dict[str, str]:
        """The Metaflow settings of a user whose Metaflow is configured for this cluster.

        No METAFLOW_ARGO_EVENTS_WEBHOOK_URL: the webhook is a cluster service, only the internal
        URL exists, and only pods can use it.
        """
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "METAFLOW_HOME": str(self.folder / "metaflow-home"),  # no user config file
            "METAFLOW_KUBERNETES_NAMESPACE": NAMESPACE,
            "METAFLOW_KUBERNETES_SECRETS": S3_SECRET_NAME,
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
            "METAFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "METAFLOW_DEFAULT_METADATA": "service",
            "METAFLOW_SERVICE_URL": self.service_url,
            "METAFLOW_SERVICE_INTERNAL_URL": self.service_url,
            "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
            "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
            "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
            "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": self.webhook.internal_url,
        }

    def report(self) -> dict:
        """What ran: every pod's cost, the events, the workflows' fate, what is left."""
        api = self.api
        with api.lock:
            pods = [
                {
                    "name": pod.name,
                    "workflow": getattr(pod, "workflow", None),
                    "step": getattr(pod, "display", None),
                    "exit_code": pod.process.returncode if pod.process else None,
                    "wall_seconds": pod.wall_seconds,
                    "cpu_seconds": pod.cpu_seconds,
                    "cpu_limit": pod.cores,
                    "cgroup": pod.cgroup is not None,
                    "cgroup_problem": pod.cgroup_problem,
                    "throttled": (pod.cgroup_stat or {}).get("nr_throttled"),
                    "throttled_seconds": (pod.cgroup_stat or {}).get("throttled_time", 0) / 1e9,
                }
                for pod in api.pods
            ]
            return {
                "pods": pods,
                "events": list(api.events),
                "triggered": [list(t) for t in api.triggered],
                "refused_webhook_callers": len(self.webhook.refused),
                "workflows": {
                    name: {
                        "phase": run.workflow["status"].get("phase"),
                        "message": run.workflow["status"].get("message"),
                        "labels": run.workflow["metadata"].get("labels"),
                        "annotations": run.workflow["metadata"].get("annotations"),
                        "template": (run.workflow["spec"].get("workflowTemplateRef") or {}).get(
                            "name"
                        ),
                        "ttl": run.spec.get("ttlStrategy"),
                        "podGC": run.spec.get("podGC"),
                    }
                    for name, run in api.runs.items()
                },
                "expired": list(api.expired),
                "left": {p: api.names(p) for p in ("workflowtemplates", "sensors", "workflows")},
                "cgroup_parent": api.cgroup_parent,
                "cluster_folder": str(self.folder),
                "running_pods": [pod.name for pod in api.running_pods],
            }

    def write_report(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.report(), indent=1, default=str))


def _stop(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except Exception:  # noqa: BLE001 - last resort
            process.kill()
    with contextlib.suppress(Exception):
        os.waitpid(process.pid, os.WNOHANG)
