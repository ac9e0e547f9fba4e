"""The cluster network: an Argo Events webhook event source that only pods can reach.

A real installation's webhook (``argo-events-webhook-eventsource-svc.argo:12000``) is a cluster
service: pods reach it, a laptop does not. Here it listens on loopback and decides per accepted
connection who is calling: the peer's socket is found in ``/proc/net/tcp`` by its address and
port, its owning process by the socket's inode under ``/proc/<pid>/fd``, and that process must
belong to a running pod of the cluster (its cpu cgroup, else its process tree). Any other
caller, the sweep process included, has its connection closed before a byte is read, which a
client sees as a reset connection: no route. Accepted events are POSTs of JSON bodies to the
event source's path; each one goes to ``ClusterAPI.publish`` (Sensors and their triggers).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _hex_address(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket whose local end is ``local`` and remote end ``remote``."""
    want_local, want_remote = _hex_address(*local), _hex_address(*remote)
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote:
            return int(fields[9])
    return None


def socket_owners(inode: int) -> list[int]:
    """Processes holding a socket (every pid with an fd on ``socket:[inode]``)."""
    target = f"socket:[{inode}]"
    owners = []
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    owners.append(int(pid))
                    break
            except OSError:
                continue
    return owners


class PodOnlyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, cluster):
        self.cluster = cluster
        self.refused: list[int | None] = []  # pids of callers that were not in a pod
        self.accepted_from: list[str] = []  # pods that published
        super().__init__(address, handler)

    def verify_request(self, request, client_address) -> bool:
        inode = socket_inode(client_address, self.server_address)
        owners = socket_owners(inode) if inode else []
        for pid in owners:
            pod = self.cluster.pod_of(pid)
            if pod is not None:
                self.accepted_from.append(pod.name)
                return True
        self.refused.append(owners[0] if owners else None)
        return False


class EventsWebhook:
    """The event source's webhook; ``internal_url`` is what pods are given."""

    def __init__(self, cluster, path: str = "/metaflow-event"):
        self.cluster = cluster
        self.path = path
        self._server = PodOnlyServer(("127.0.0.1", 0), self._handler(), cluster)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def refused(self) -> list:
        return self._server.refused

    @property
    def accepted_from(self) -> list[str]:
        return self._server.accepted_from

    def __enter__(self) -> EventsWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.split("?")[0] != webhook.path:
                    self.send_response(404)
                    self.end_headers()
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                webhook.cluster.publish(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler
