"""Metaflow's metadata service on loopback: the ``metaflow-local-service`` package's FastAPI app.

It implements the service API Metaflow's ``ServiceMetadataProvider`` speaks (flows, runs, steps,
tasks, artifacts, metadata, heartbeats, tag mutation) and keeps it under ``<root>/.metaflow``.
Run under uvicorn in its own process (metadata_server.py: without the package's daemon, whose
state file is global, and with the ids clients choose kept, as Metaflow's own service keeps them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .ports import free_port

SERVER = Path(__file__).with_name("metadata_server.py")


def start_metadata_service(root: Path, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the service for ``root``; (process, URL) once ``/ping`` answers."""
    Path(root).mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env["METAFLOW_USER"] = "metadata-service"
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [sys.executable, str(SERVER), str(root), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,  # outlives a Ctrl-C meant for the sweep until it is stopped
        )
    finally:
        if log:
            out.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the metadata service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the metadata service did not answer /ping within 30 s")
