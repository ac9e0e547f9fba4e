"""A real Kubernetes control plane with Argo Workflows and Argo Events, on this machine.

    with Cluster() as cluster:
        subprocess.run([... "sweep_deployer.py", "-m", "backend=argo", ...], env=cluster.environ())

Runs the binaries cluster/build.sh built from source: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, one node (cluster/go/kube/node: virtual-kubelet with
pods run as processes, the only simulated part), then installs Argo Workflows and Argo Events
from their own manifests (their controllers run as pods on the node, from the images mapped to
the binaries) and what docs/argo.md asks an administrator to set up: the sweeps' namespace, the
pods' and the Sensor's service accounts, a JetStream EventBus, the webhook EventSource, and the
sweep's Role read from docs/argo.md itself. The sweep reaches the API as that ServiceAccount,
never as an administrator. Metaflow's datastore is moto's S3 and its metadata service
metaflow-local-service, both on loopback.

Everything it started is stopped by ``close`` (also after an error or Ctrl-C): the node first,
which stops every pod's processes, then the control plane; its folder is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import yaml

from .image import CACHE as IMAGE_CACHE
from .image import REQUIREMENTS
from .image import build as build_image
from .metadata import start_metadata_service
from .pki import kubeconfig, make_pki
from .ports import free_port
from .s3 import start_moto

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(os.environ.get("TORCHPERF_CLUSTER_BIN", "/var/tmp/torchperf-cluster/bin"))
STATE = Path(os.environ.get("TORCHPERF_CLUSTER_STATE", "/var/tmp/torchperf-cluster"))
NAMESPACE = "torchperf"
IMAGE = "torchperf:local"  # the sweep's backend.image on this cluster
# The same image without torch: every measuring step fails in its pod (the failure tests').
BROKEN_IMAGE = "torchperf-notorch:local"
SERVICE_IP = "10.96.0.1"
BUCKET, S3_KEY, S3_SECRET, S3_SECRET_NAME = (
    "torchperf",
    "cluster-key",
    "cluster-secret",
    "torchperf-s3",
)
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "node",
    "workflow-controller",
    "argoexec",
    "argo-events",
    "nats-server",
)
ARGO_VERSION = "v4.0.5"
EVENTS_VERSION = "v1.9.11"


class ClusterError(RuntimeError):
    pass


def missing_binaries(bin_dir: Path = BIN) -> list[str]:
    return [name for name in BINARIES if not (bin_dir / name).is_file()]


def docs_role(docs: Path = ROOT / "docs" / "argo.md") -> list[dict]:
    """The sweep's RBAC as docs/argo.md documents it: its ```yaml block that holds a Role."""
    for block in re.findall(r"```yaml\n(.*?)```", docs.read_text(), flags=re.S):
        objects = [o for o in yaml.safe_load_all(textwrap.dedent(block)) if o]
        if any(o.get("kind") == "Role" for o in objects):
            return objects
    raise ClusterError(f"{docs} holds no YAML block with the sweep's Role")


def _select(path: Path, keep) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as stream:
        return [o for o in yaml.load_all(stream, Loader=loader) if o and keep(o)]


def argo_objects(source: Path) -> list[dict]:
    """Argo Workflows as its quick-start installs it (its CRDs with full schemas, the controller's
    service account, roles, config and Deployment), without the demo's MinIO, httpbin, database
    and Argo Server."""
    wanted = {
        "ServiceAccount": {"argo"},
        "Role": {"argo-role"},
        "ClusterRole": {
            "argo-cluster-role",
            "argo-aggregate-to-admin",
            "argo-aggregate-to-edit",
            "argo-aggregate-to-view",
            "argo-clusterworkflowtemplate-role",
        },
        "RoleBinding": {"argo-binding"},
        "ClusterRoleBinding": {"argo-binding", "argo-clusterworkflowtemplate-role-binding"},
        "ConfigMap": {"workflow-controller-configmap"},
        "PriorityClass": {"workflow-controller"},
        "Deployment": {"workflow-controller"},
    }
    objects = _select(
        source / "manifests" / "quick-start-minimal.yaml",
        lambda o: (
            o["kind"] == "CustomResourceDefinition"
            or o["metadata"]["name"] in wanted.get(o["kind"], ())
        ),
    )
    for o in objects:
        if o["kind"] not in (
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "PriorityClass",
        ):
            o["metadata"]["namespace"] = "argo"
        for subject in o.get("subjects", []):
            subject["namespace"] = "argo"
        if o["kind"] == "ConfigMap":
            # Empty, as Argo's release install ships it: the quick-start's points at its demo
            # MinIO and an artifact driver plugin that is not installed.
            o["data"] = {}
        if o["kind"] == "Deployment":
            container = o["spec"]["template"]["spec"]["containers"][0]
            container["image"] = f"quay.io/argoproj/workflow-controller:{ARGO_VERSION}"
            container["args"] = [
                "--executor-image",
                f"quay.io/argoproj/argoexec:{ARGO_VERSION}",
            ]
    return objects


def events_objects(source: Path) -> list[dict]:
    """Argo Events as its install.yaml installs it (namespace argo-events)."""
    return _select(source / "manifests" / "install.yaml", lambda o: True)


def images(bin_dir: Path, image_env: Path, broken_env: Path) -> dict:
    """What each image stands for on the node (cluster/go/kube/node: Image)."""

    def built(repository: str, program: str, version: str) -> dict:
        """An image whose program cluster/build.sh built (it runs as the image's entrypoint)."""
        return {
            "match": repository,
            "path": [str(bin_dir)],
            "entrypoint": [program],
            "digest": f"{program}:{version}",
        }

    return {
        "images": [
            built("quay.io/argoproj/workflow-controller", "workflow-controller", ARGO_VERSION),
            built("quay.io/argoproj/argoexec", "argoexec", ARGO_VERSION),
            built("quay.io/argoproj/argo-events", "argo-events", EVENTS_VERSION),
            {
                "match": "nats",
                "path": [str(bin_dir)],
                "entrypoint": ["/nats-server"],
                "files": {"/nats-server": str(bin_dir / "nats-server")},
                "digest": "nats-server",
            },
            # The EventBus pod's config reloader and metrics exporter are not built here; the
            # bus works without them (its config never changes; nobody scrapes its metrics).
            {"match": "natsio/nats-server-config-reloader", "replace": ["sleep", "infinity"]},
            {"match": "natsio/prometheus-nats-exporter", "replace": ["sleep", "infinity"]},
            # The project's image (image/Dockerfile): Python with image/requirements.txt.
            {
                "match": IMAGE.split(":")[0],
                "path": [str(image_env / "bin")],
                "workdir": "/workspace",
                # HOME: the image user's home (image/Dockerfile), here the container's own /tmp.
                "env": {"PYTHONUNBUFFERED": "1", "TORCHPERF_IMAGE": IMAGE, "HOME": "/tmp"},
                # The interpreter the environment was made from, for the image's non-root user.
                "reachable": [sys.base_prefix],
                "digest": f"{IMAGE}@sha256:{image_env.name.removeprefix('image-')}",
            },
            {
                "match": BROKEN_IMAGE.split(":")[0],
                "path": [str(broken_env / "bin")],
                "workdir": "/workspace",
                "env": {"PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
                "reachable": [sys.base_prefix],
            },
        ]
    }


class Process:
    """One control-plane process, its output in a log file, in its own process group."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ClusterError(
                f"{self.name} exited with {self.popen.returncode}: " + " | ".join(tail)
            )

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


class Cluster:
    """The control plane, the node, Argo, Argo Events, S3 and the metadata service."""

    def __init__(self, bin_dir: Path = BIN, state: Path = STATE, keep: bool = False):
        missing = missing_binaries(bin_dir)
        if missing:
            raise ClusterError(
                f"not built: {', '.join(missing)} in {bin_dir} (run cluster/build.sh)"
            )
        self.bin = bin_dir
        self.folder = state / f"run-{secrets.token_hex(4)}"
        self.keep = keep
        self.processes: list[Process] = []
        self.started_seconds: dict[str, float] = {}
        self.api = self.sweep_kubeconfig = self.admin_kubeconfig = None
        self.cgroup_parent = f"torchperf-{self.folder.name}"

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        begin = time.monotonic()
        self.folder.mkdir(parents=True)
        self.logs = self.folder / "logs"
        self.logs.mkdir()
        self.pki = make_pki(self.folder / "pki", SERVICE_IP)
        self._start_control_plane()
        self.started_seconds["control plane"] = time.monotonic() - begin
        self._start_datastores()
        self._start_node()
        self.started_seconds["node"] = time.monotonic() - begin
        self._install()
        self.started_seconds["argo ready"] = time.monotonic() - begin

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=15 if process.name == "node" else 10)
        self.processes.clear()
        _kill_cgroup_tree(self.cgroup_parent)  # pods the node could not stop, if any
        for name in ("moto", "metadata"):
            process = getattr(self, name, None)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the control plane ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> Process:
        process = Process(name, argv, self.logs, env)
        self.processes.append(process)
        return process

    def _start_control_plane(self) -> None:
        pki = self.pki
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.api_port = api_port
        self.api = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name",
                "etcd",
                "--data-dir",
                str(self.folder / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"etcd=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki}/apiserver.crt",
                f"--tls-private-key-file={pki}/apiserver.key",
                f"--client-ca-file={pki}/ca.crt",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki}/sa.pub",
                f"--service-account-signing-key-file={pki}/sa.key",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
                f"--kubelet-certificate-authority={pki}/ca.crt",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                # Its address is loopback, which Endpoints refuse: pods reach it by
                # KUBERNETES_SERVICE_HOST (the node sets it), not through the Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        admin = kubeconfig(
            self.api, pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key", user="admin"
        )
        self.admin_kubeconfig = self.folder / "admin.kubeconfig"
        self.admin_kubeconfig.write_text(admin)
        self._wait("kube-apiserver /readyz", self._apiserver_ready, timeout=120)
        common = [
            f"--kubeconfig={self.admin_kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                *common,
                f"--service-account-private-key-file={pki}/sa.key",
                f"--root-ca-file={pki}/ca.crt",
                f"--cluster-signing-cert-file={pki}/ca.crt",
                f"--cluster-signing-key-file={pki}/ca.key",
                "--use-service-account-credentials=true",
                "--controllers=*,-nodeipam",
            ],
        )
        self._spawn("kube-scheduler", [str(self.bin / "kube-scheduler"), *common])

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        try:
            with urllib.request.urlopen(f"{self.api}/readyz", context=context, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                process.check()
            if ready():
                return
            time.sleep(0.25)
        raise ClusterError(f"{what} not ready within {timeout:.0f} s (logs: {self.logs})")

    def _start_node(self) -> None:
        self.image_env = build_image(cache=IMAGE_CACHE)
        no_torch = self.folder / "requirements-notorch.txt"
        no_torch.write_text(
            "".join(
                line
                for line in REQUIREMENTS.read_text().splitlines(keepends=True)
                if not line.startswith("torch")
            )
        )
        broken_env = build_image(no_torch, cache=IMAGE_CACHE)
        images_file = self.folder / "images.json"
        images_file.write_text(json.dumps(images(self.bin, self.image_env, broken_env), indent=1))
        node_root = self.folder / "node"
        node_root.mkdir(mode=0o755)
        self.folder.chmod(0o755)
        self._spawn(
            "node",
            [
                str(self.bin / "node"),
                "--kubeconfig",
                str(self.admin_kubeconfig),
                "--name",
                "node-0",
                "--root",
                str(node_root),
                "--images",
                str(images_file),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--tls-cert",
                str(self.pki / "kubelet.crt"),
                "--tls-key",
                str(self.pki / "kubelet.key"),
                "--client-ca",
                str(self.pki / "ca.crt"),
                "--apiserver",
                f"127.0.0.1:{self.api_port}",
                "--cgroup-parent",
                self.cgroup_parent,
                "--memory-mib",
                str(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20),
                # Twice this machine's cores: a cpu=2 variant must fit beside the cluster's own pods
                # (the Sensor, an analytics run) on a 2-core machine. Figures measured while pods
                # share the cores are not meaningful here; the flow flags shared cores.
                "--cpu",
                str(2 * (os.cpu_count() or 1)),
                # What pods reach on this machine, at 127.0.0.1 in their own network namespaces.
                "--host-ports",
                ",".join(
                    str(port)
                    for port in (self.api_port, _port(self.s3_url), _port(self.service_url))
                ),
            ],
        )
        core = self.client("CoreV1Api")

        def node_ready() -> bool:
            try:
                node = core.read_node("node-0", _request_timeout=5)
            except Exception:  # noqa: BLE001 - not registered yet
                return False
            return any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )

        self._wait("the node", node_ready, timeout=60)

    def _start_datastores(self) -> None:
        self.moto, self.s3_url = start_moto(BUCKET, S3_KEY, S3_SECRET)
        self.metadata, self.service_url = start_metadata_service(
            self.folder / "metadata", log=self.logs / "metadata.log"
        )

    # -- installing Argo -----------------------------------------------------------------------

    def client(self, api: str, kubeconfig_path: Path | None = None):
        from kubernetes import client, config

        api_client = config.new_client_from_config(str(kubeconfig_path or self.admin_kubeconfig))
        return getattr(client, api)(api_client)

    def apply(self, objects: list[dict]) -> None:
        """Create each object (CRDs first, then namespaces, then the rest), as kubectl create."""
        from kubernetes import config, dynamic
        from kubernetes.dynamic.exceptions import ConflictError

        dyn = dynamic.DynamicClient(config.new_client_from_config(str(self.admin_kubeconfig)))
        order = {"CustomResourceDefinition": 0, "Namespace": 1}
        for obj in sorted(objects, key=lambda o: order.get(o["kind"], 2)):
            for attempt in range(60):
                try:
                    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                    resource.create(body=obj, namespace=obj["metadata"].get("namespace"))
                    break
                except ConflictError:
                    break
                except Exception as error:  # noqa: BLE001 - a CRD not served yet
                    if attempt == 59:
                        raise ClusterError(
                            f"cannot create {obj['kind']} {obj['metadata']['name']}: {error}"
                        ) from None
                    dyn.resources.invalidate_cache() if hasattr(
                        dyn.resources, "invalidate_cache"
                    ) else None
                    dyn = dynamic.DynamicClient(
                        config.new_client_from_config(str(self.admin_kubeconfig))
                    )
                    time.sleep(0.5)

    def _install(self) -> None:
        argo_source = HERE / "go" / "argo" / "src"
        events_source = _module_dir("github.com/argoproj/argo-events", EVENTS_VERSION)
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                for n in ("argo", "argo-events")
            ]
        )
        self.apply(argo_objects(argo_source))
        self.apply(events_objects(events_source))
        local = [
            o for o in yaml.safe_load_all((HERE / "manifests" / "torchperf.yaml").read_text()) if o
        ]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": S3_SECRET_NAME, "namespace": NAMESPACE},
            "stringData": {
                "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        }
        role = docs_role()
        for o in role:
            o["metadata"]["namespace"] = NAMESPACE
            for subject in o.get("subjects", []):
                subject["namespace"] = NAMESPACE
        self.apply(local + [secret] + role)
        self._wait(
            "Argo's and Argo Events' controllers, the EventBus and the EventSource",
            self._argo_ready,
            timeout=180,
        )
        self.sweep_kubeconfig = self.folder / "sweep.kubeconfig"
        self.sweep_kubeconfig.write_text(
            kubeconfig(
                self.api,
                self.pki / "ca.crt",
                token=self._sweep_token(),
                namespace=NAMESPACE,
                user="torchperf-sweep",
            )
        )

    def _argo_ready(self) -> bool:
        core = self.client("CoreV1Api")
        pods = core.list_pod_for_all_namespaces(_request_timeout=5).items
        running = {
            p.metadata.labels.get("app") or p.metadata.labels.get("controller")
            for p in pods
            if p.status.phase == "Running"
        }
        custom = self.client("CustomObjectsApi")
        try:
            source = custom.get_namespaced_custom_object(
                "argoproj.io",
                "v1alpha1",
                NAMESPACE,
                "eventsources",
                "argo-events-webhook",
                _request_timeout=5,
            )
        except Exception:  # noqa: BLE001
            return False
        deployed = any(
            c.get("type") == "Deployed" and c.get("status") == "True"
            for c in (source.get("status") or {}).get("conditions", [])
        )
        names = {p.metadata.name for p in pods if p.status.phase == "Running"}
        return (
            {"workflow-controller", "controller-manager"} <= running
            and deployed
            and any(n.startswith("eventbus-default-js-") for n in names)
            and any(n.startswith("argo-events-webhook-eventsource-") for n in names)
        )

    def _sweep_token(self) -> str:
        from kubernetes import client

        core = self.client("CoreV1Api")
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600)
        )
        return core.create_namespaced_service_account_token(
            "torchperf-sweep", NAMESPACE, request
        ).status.token

    # -- for the sweep -------------------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """The settings a sweep on this cluster runs with (a user's Metaflow config would hold
        them): the ServiceAccount's kubeconfig, the S3 datastore, the metadata service, the
        Argo Events names. No METAFLOW_ARGO_EVENTS_WEBHOOK_URL: the webhook is a cluster
        Service, which only pods reach (by its DNS name)."""
        return {
            "KUBECONFIG": str(self.sweep_kubeconfig),
            "METAFLOW_HOME": str(self.folder / "metaflow-home"),  # no user config file
            "METAFLOW_KUBERNETES_NAMESPACE": NAMESPACE,
            "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "torchperf-pods",
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
            "METAFLOW_ARGO_EVENTS_EVENT_BUS": "default",
            "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
            "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": (
                f"http://argo-events-webhook-eventsource-svc.{NAMESPACE}:12000/metaflow-event"
            ),
        }


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _kill_cgroup_tree(parent: str) -> None:
    """SIGKILL every process left in the node's cgroups, and remove them."""
    for hierarchy in ("cpu", "cpuacct"):
        top = Path("/sys/fs/cgroup") / hierarchy / parent
        if not top.is_dir():
            continue
        groups = sorted(top.rglob("cgroup.procs"), key=lambda p: -len(p.parts))
        for procs in groups:
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for group in sorted((g.parent for g in groups), key=lambda p: -len(p.parts)):
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _module_dir(module: str, version: str) -> Path:
    done = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return Path(json.loads(done.stdout)["Dir"])
