"""The datastore check against real endpoints on loopback: moto's S3 server, a closed port and a
server that accepts connections and never answers."""

import socket
import time

import pytest

from torchperf.backends.datastore_check import check_datastore
from torchperf.errors import ConfigError

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings(endpoint: str, root: str = "s3://torchperf/metaflow") -> dict:
    return {"DATASTORE_SYSROOT_S3": root, "S3_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="module")
def s3_url():
    """moto's S3 server on loopback with the bucket ``torchperf``."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="torchperf")
    yield url
    server.stop()


@pytest.fixture
def silent_url():
    """An endpoint that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_reachable_bucket_passes(s3_url):
    check_datastore("s3", settings(s3_url), CREDENTIALS, timeout=10)


def test_a_missing_bucket_is_named(s3_url):
    with pytest.raises(ConfigError) as error:
        check_datastore("s3", settings(s3_url, "s3://nobucket/x"), CREDENTIALS, timeout=10)
    assert str(error.value) == (
        "METAFLOW_DATASTORE_SYSROOT_S3=s3://nobucket/x: the bucket 'nobucket' does not exist"
    )


def test_a_closed_port_names_the_endpoint_setting_at_once():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"^METAFLOW_S3_ENDPOINT_URL={url}: the S3 datastore is"):
        check_datastore("s3", settings(url), CREDENTIALS, timeout=5)
    assert time.monotonic() - started < 5
    # one line
    with pytest.raises(ConfigError) as error:
        check_datastore("s3", settings(url), CREDENTIALS, timeout=5)
    assert "\n" not in str(error.value)


def test_an_endpoint_that_never_answers_is_given_up_within_the_timeout(silent_url):
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"^METAFLOW_S3_ENDPOINT_URL={silent_url}: the S3"):
        check_datastore("s3", settings(silent_url), CREDENTIALS, timeout=1)
    assert time.monotonic() - started < 3


def test_no_credentials_are_named(s3_url, monkeypatch, tmp_path):
    # GIVEN no AWS credentials anywhere boto3 looks (environment, files, instance metadata)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials for the S3 datastore"):
        check_datastore("s3", settings(s3_url), {"AWS_DEFAULT_REGION": "us-east-1"}, timeout=10)


@pytest.mark.parametrize("root", ["", "torchperf/metaflow", "s3://"])
def test_a_root_that_is_no_s3_url_is_named(root):
    with pytest.raises(ConfigError, match="^METAFLOW_DATASTORE_SYSROOT_S3=.* must be s3://"):
        check_datastore("s3", {"DATASTORE_SYSROOT_S3": root}, CREDENTIALS)


def test_other_datastores_are_not_checked_here():
    check_datastore("gs", {}, {})
    check_datastore("azure", {}, {})
