"""moto's S3 server on loopback, in a process group of its own (a Ctrl-C meant for the sweep
must not take the datastore away while the sweep is still tearing down)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .ports import free_port


def start_moto(bucket: str, key: str, secret: str) -> tuple[subprocess.Popen, str]:
    """Start ``moto_server`` on 127.0.0.1 with ``bucket`` created; the process and its URL."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
    )  # fmt: skip
    for _ in range(200):
        try:
            s3.create_bucket(Bucket=bucket)
            return server, url
        except Exception:  # noqa: BLE001 - not listening yet
            if server.poll() is not None:
                break
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("moto_server did not start")
