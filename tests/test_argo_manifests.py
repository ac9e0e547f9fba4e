"""The pure parts of the Argo backend: settings resolution, manifest checks and redaction."""

from __future__ import annotations

import json

import pytest

from torchperf import manifests
from torchperf.backends.argo import REQUIRED, resolve_settings, variant_title
from torchperf.settings import ConfigError, VariantSettings


@pytest.fixture
def environ(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    values = {f"METAFLOW_{key}": "x" for key in REQUIRED}
    return {**values, "METAFLOW_HOME": str(tmp_path / "none"), "KUBECONFIG": str(kubeconfig)}


def resolve(environ, **options):
    return resolve_settings(
        environ, **{"namespace": None, "image": "img", "guaranteed_qos": True, **options}
    )


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_each_missing_metaflow_setting_is_named_in_one_line(environ, key):
    del environ[f"METAFLOW_{key}"]
    with pytest.raises(ConfigError, match=f"METAFLOW_{key} is not set") as error:
        resolve(environ)
    assert "\n" not in str(error.value)


def test_missing_kubeconfig_is_named(environ, tmp_path):
    environ["KUBECONFIG"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="kubeconfig .*nowhere not found"):
        resolve(environ)


def test_settings_come_from_metaflow_config_file_and_env_wins(environ, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config_team.json").write_text(
        json.dumps(
            {
                "METAFLOW_KUBERNETES_NAMESPACE": "from-file",
                "METAFLOW_DATASTORE_SYSROOT_S3": "s3://b",
            }
        )
    )
    del environ["METAFLOW_KUBERNETES_NAMESPACE"]
    del environ["METAFLOW_DATASTORE_SYSROOT_S3"]
    environ.update(METAFLOW_HOME=str(home), METAFLOW_PROFILE="team")
    assert resolve(environ).namespace == "from-file"
    assert resolve({**environ, "METAFLOW_KUBERNETES_NAMESPACE": "env"}).namespace == "env"
    assert resolve(environ, namespace="override").env["METAFLOW_KUBERNETES_NAMESPACE"] == "override"


def test_guaranteed_qos_and_image_travel_as_metaflow_settings(environ):
    assert resolve(environ).env["METAFLOW_KUBERNETES_QOS"] == "guaranteed"
    assert resolve(environ, guaranteed_qos=False).env["METAFLOW_KUBERNETES_QOS"] == "burstable"
    assert resolve(environ).env["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] == "img"


def template(cpu="2.0", limit=None, branch="test.t_c2_n64", tags='["t"]', title=None):
    resources = {"requests": {"cpu": cpu}, "limits": {"cpu": limit} if limit else {}}
    return {
        "metadata": {
            "name": "x",
            "annotations": {
                "metaflow/branch_name": branch,
                "metaflow/tags": tags,
                "workflows.argoproj.io/title": title
                or variant_title(VariantSettings(cpu=2, tensor_dim=64), "t")[0],
            },
        },
        "spec": {"templates": [{"name": "start", "container": {"resources": resources}}]},
    }


def problems(document, qos=False):
    settings = VariantSettings(cpu=2, tensor_dim=64)
    return manifests.variant_problems(document, settings, "t_c2_n64", "t", guaranteed_qos=qos)


def test_a_good_variant_template_has_no_problem():
    assert problems(template()) == []
    assert problems(template(limit="2"), qos=True) == []


@pytest.mark.parametrize(
    ("document", "qos", "words"),
    [
        (template(cpu="1"), False, "cpu request is 1"),
        (template(), True, "cpu limit is None"),
        (template(branch="test.other"), False, "branch is test.other"),
        (template(tags='["other"]'), False, "lack t"),
        (template(title="torchperf"), False, "title"),
    ],
)
def test_variant_invariants_catch_each_deviation(document, qos, words):
    assert words in problems(document, qos)[0]


def sensor(expr="name == 'torchperf_t'", branch="test.t_analytics"):
    fields = [{"name": "name", "path": "body.payload.name"}]
    return {
        "metadata": {"annotations": {"metaflow/branch_name": branch}},
        "spec": {
            "dependencies": [
                {"name": "d", "filters": {"exprs": [{"expr": expr, "fields": fields}]}}
            ]
        },
    }


def test_sensor_must_filter_on_the_sweeps_event():
    assert manifests.sensor_problems(sensor(), "torchperf_t", "t_analytics") == []
    wrong = manifests.sensor_problems(sensor("name == 'other'"), "torchperf_t", "t_analytics")
    assert "does not filter name == 'torchperf_t'" in wrong[0]
    assert manifests.sensor_problems(None, "torchperf_t", "t_analytics")


def test_hera_rejects_an_unknown_field():
    document = {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
                "metadata": {"name": "x"}, "spec": {"entrypoint": "a", "bogus": 1}}  # fmt: skip
    with pytest.raises(ConfigError, match="spec.bogus"):
        manifests.validate_workflow_template(document)


def test_redaction_hides_credentials_and_keeps_the_rest():
    document = {
        "metadata": {"annotations": {"metaflow/production_token": "tok", "metaflow/owner": "me"}},
        "env": [
            {"name": "METAFLOW_SERVICE_HEADERS", "value": '{"x-api-key": "k"}'},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "s"},
            {"name": "METAFLOW_CODE_URL", "value": "s3://b/code"},
            {"name": "NOTHING", "value": None},
        ],
    }
    text = json.dumps(manifests.redact(manifests.strip_nulls(document)))
    assert '"tok"' not in text and '"k"' not in text and '"s"' not in text
    assert "s3://b/code" in text and '"me"' in text
