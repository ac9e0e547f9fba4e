"""A real Metaflow metadata service on loopback: metaflow-local-service's FastAPI app."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from s3_server import free_port

SERVE = (
    "import sys, uvicorn; from metaflow_local_service.server import create_app; "
    "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), "
    "log_level='warning')"
)


def start_metadata_service(root: Path) -> tuple[subprocess.Popen, str]:
    """Serve Metaflow's metadata API from ``root/.metaflow``; the process and its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1):
                return server, url
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.05)
    server.terminate()
    raise RuntimeError("the metadata service did not start")
