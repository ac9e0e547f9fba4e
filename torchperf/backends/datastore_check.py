"""Is the S3 datastore there? Asked once, before a sweep compiles or deploys anything, within a
bounded time, and answered in one line that names the setting to fix.

Metaflow's create uploads the code package to the datastore, a dry run's compile too; with S3
unreachable it sits in botocore's connection and credential retries for minutes, saying nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from torchperf.errors import ConfigError, one_line

DEFAULT_TIMEOUT = 5.0  # seconds for the whole check: credentials, connection and answer
ROOT_SETTING = "METAFLOW_DATASTORE_SYSROOT_S3"
ENDPOINT_SETTING = "METAFLOW_S3_ENDPOINT_URL"


def check_datastore(
    datastore: str,
    config: Mapping[str, str],
    environ: Mapping[str, str],
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """ConfigError unless the S3 bucket of Metaflow's S3 root answers within ``timeout``.

    ``datastore`` is the one the sweep uses (s3, gs, azure: only s3 is checked); ``config`` is
    Metaflow's settings without the METAFLOW_ prefix (DATASTORE_SYSROOT_S3, S3_ENDPOINT_URL);
    ``environ`` gives the AWS credentials, profile and region, where set (else boto3's own
    chain). Any answer from S3 but "no such bucket" counts as reachable.
    """
    if datastore != "s3":
        return
    root = config.get("DATASTORE_SYSROOT_S3") or ""
    if not root.startswith("s3://") or not root[5:].split("/")[0]:
        raise ConfigError(f"{ROOT_SETTING}={root or '(not set)'} must be s3://<bucket>/<prefix>")
    bucket = root[5:].split("/")[0]
    endpoint = config.get("S3_ENDPOINT_URL") or None
    where = f"{ENDPOINT_SETTING}={endpoint}" if endpoint else f"{ROOT_SETTING}={root}"
    error = _within(timeout, lambda: _head_bucket(bucket, endpoint, environ, timeout))
    if error is TimeoutError:
        raise ConfigError(f"{where}: the S3 datastore did not answer within {timeout:g} s")
    why = None if error is None else _why(error, bucket, root, where)
    if why:
        raise ConfigError(why)


def _within(timeout: float, work: Callable[[], None]) -> BaseException | type | None:
    """What ``work`` raised (None if nothing), or TimeoutError when it ran past ``timeout``.

    A daemon thread: credential lookups and DNS ignore botocore's own timeouts, and an abandoned
    check must not keep the process alive. Waiting on it is interruptible (Ctrl-C)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - handed to the caller
            outcome.append(error)

    thread = threading.Thread(target=run, name="datastore-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError


def _head_bucket(
    bucket: str, endpoint: str | None, environ: Mapping[str, str], timeout: float
) -> None:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=environ.get("AWS_SESSION_TOKEN"),
        region_name=environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION"),
        profile_name=environ.get("AWS_PROFILE"),
    )
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    client.head_bucket(Bucket=bucket)


def _why(error: BaseException, bucket: str, root: str, where: str) -> str | None:
    """The line for what the check raised; None where S3 answered all the same."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(error, (NoCredentialsError, PartialCredentialsError, ProfileNotFound)):
        return (
            f"{ROOT_SETTING}={root}: no AWS credentials for the S3 datastore ({one_line(error)}; "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"{ROOT_SETTING}={root}: the bucket {bucket!r} does not exist"
        return None  # S3 answered (403 and the like): reachable, the rest is Metaflow's to say
    return f"{where}: the S3 datastore is unreachable ({one_line(error)})"
