"""The pure parts of the Argo backend: settings resolution, manifest checks and redaction."""

from __future__ import annotations

import json
import re

import pytest

from torchperf.backends.argo import (
    COMPILE_NEEDS,
    UNSET_IMAGE,
    manifests,
    resolve_settings,
    variant_title,
)
from torchperf.settings import ConfigError, VariantSettings


@pytest.fixture
def environ(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    values = {f"METAFLOW_{key}": "x" for key in COMPILE_NEEDS}
    return {
        **values,
        "METAFLOW_KUBERNETES_NAMESPACE": "ns",
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://bucket/prefix",
        "METAFLOW_DEFAULT_METADATA": "service",
        "METAFLOW_SERVICE_URL": "http://metadata.example",
        "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL": "http://webhook.example",
        "METAFLOW_HOME": str(tmp_path / "none"),
        "KUBECONFIG": str(kubeconfig),
    }


def resolve(environ, **options):
    """The settings, with a metadata service that always answers."""
    return resolve_settings(
        environ,
        **{"namespace": None, "image": "img", "guaranteed_qos": True, **options},
        probe=lambda url, headers: None,
    )


@pytest.mark.parametrize("key", sorted(COMPILE_NEEDS))
def test_each_missing_compile_setting_is_named_in_one_line_also_in_a_dry_run(environ, key):
    del environ[f"METAFLOW_{key}"]
    for dry_run in (False, True):
        with pytest.raises(ConfigError, match=f"METAFLOW_{key} is not set") as error:
            resolve(environ, dry_run=dry_run)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("METAFLOW_KUBERNETES_NAMESPACE", "METAFLOW_KUBERNETES_NAMESPACE is not set"),
        ("METAFLOW_SERVICE_URL", "METAFLOW_SERVICE_URL is not set"),
        ("METAFLOW_DEFAULT_METADATA", "METAFLOW_DEFAULT_METADATA=local"),
        ("METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL", "INTERNAL_WEBHOOK_URL is not set"),
        ("METAFLOW_DATASTORE_SYSROOT_S3", "METAFLOW_DEFAULT_DATASTORE=local"),
    ],
)
def test_each_missing_deploy_setting_fails_a_deploy_and_is_listed_by_a_dry_run(environ, key, named):
    del environ[key]
    with pytest.raises(ConfigError, match=named):
        resolve(environ)
    if key != "METAFLOW_DATASTORE_SYSROOT_S3":  # compiling needs the datastore too
        assert any(re.search(named, need) for need in resolve(environ, dry_run=True).still_needed)


def test_plain_webhook_url_serves_the_pods_too_and_live_analytics_off_needs_none(environ):
    del environ["METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL"]
    resolve({**environ, "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": "http://webhook.example"})
    resolve(environ, live_analytics=False)


def test_configured_datastore_is_used_and_its_root_required(environ):
    assert resolve(environ).env["METAFLOW_DEFAULT_DATASTORE"] == "s3"
    gs = {**environ, "METAFLOW_DEFAULT_DATASTORE": "gs"}
    with pytest.raises(ConfigError, match="METAFLOW_DATASTORE_SYSROOT_GS is not set"):
        resolve(gs)
    gs["METAFLOW_DATASTORE_SYSROOT_GS"] = "gs://bucket/prefix"
    assert resolve(gs).datastore == "gs"


def test_the_metadata_service_is_probed_for_a_deploy_not_a_dry_run(environ):
    probed = []

    def probe(url, headers):
        probed.append(url)
        raise ConfigError(f"METAFLOW_SERVICE_URL={url} is unreachable (refused)")

    options = {"namespace": None, "image": "img", "guaranteed_qos": True, "probe": probe}
    with pytest.raises(ConfigError, match="unreachable"):
        resolve_settings(environ, **options)
    assert probed == ["http://metadata.example"]
    resolve_settings(environ, dry_run=True, **options)
    assert probed == ["http://metadata.example"]


def test_missing_image_fails_a_deploy_and_a_dry_run_shows_a_placeholder(environ):
    with pytest.raises(ConfigError, match="backend.image is not set"):
        resolve(environ, image=None)
    settings = resolve(environ, image=None, dry_run=True)
    assert settings.env["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] == UNSET_IMAGE


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


def look(tag="sweep_20261202_090000_abcdef", variant="c16_n16384_cuda", attempt="a1b2c3"):
    return manifests.workflow_look(
        tag, variant, "t", "d", attempt=attempt, ttl_seconds=60, pod_gc="OnPodSuccess",
        deadline_seconds=1799.5,
    )  # fmt: skip


def test_workflow_look_keeps_the_variant_readable_and_within_name_limits():
    assert look().name.startswith("torchperf-c16-n16384-cuda-sweep-20261202")
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", look().name)
    assert len(look().name) <= manifests.MAX_WORKFLOW_NAME
    assert len(look(tag="t" * 40).name) <= manifests.MAX_WORKFLOW_NAME
    assert look().labels == {
        "torchperf/tag": "sweep_20261202_090000_abcdef", "torchperf/variant": "c16_n16384_cuda",
        "torchperf/attempt": "a1b2c3",
    }  # fmt: skip
    assert look().spec["activeDeadlineSeconds"] == 1800  # whole seconds, never shorter


def test_workflow_names_are_the_same_when_asked_again_and_differ_per_attempt_and_variant():
    assert look().name == look().name  # a retried create names the same Workflow
    assert look(attempt="d4e5f6").name != look().name  # a resumed sweep runs it anew
    # ... and names stay apart where the readable part is cut short (40-character tags)
    names = {look(tag="t" * 40, variant=f"c{c}_n{n}").name for c in range(1, 33) for n in
             range(1, 17)}  # fmt: skip
    assert len(names) == 32 * 16


def template(cpu="2.0", limit=None, branch="test.c2_n64_t", tags='["t"]', title=None, gpus=None):
    limits = ({"cpu": limit} if limit else {}) | ({"nvidia.com/gpu": gpus} if gpus else {})
    resources = {"requests": {"cpu": cpu}, "limits": limits}
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


def problems(document, qos=False, device="cpu"):
    settings = VariantSettings(cpu=2, tensor_dim=64, device=device)
    return manifests.variant_problems(document, settings, "c2_n64_t", "t", guaranteed_qos=qos)


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
        (template(gpus="1"), False, "asks for 1 GPUs for device=cpu"),
    ],
)
def test_variant_invariants_catch_each_deviation(document, qos, words):
    assert words in problems(document, qos)[0]


def test_a_cuda_variant_must_ask_for_one_gpu():
    assert problems(template(gpus="1"), device="cuda") == []
    assert "not 1 for device=cuda" in problems(template(), device="cuda")[0]


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


def analytics_template(triggers='[{"name": "torchperf_t", "type": "event"}]'):
    return {
        "metadata": {
            "name": "a",
            "annotations": {
                "metaflow/branch_name": "test.t_analytics",
                "metaflow/triggers": triggers,
                "metaflow/sensor_name": "torchperf-test-tanalytics-sweepanalyticsflow",
            },
        }
    }


def test_the_analytics_template_must_start_on_the_sweeps_event_only():
    assert manifests.trigger_problems(analytics_template(), "torchperf_t", "t_analytics") == []
    two = '[{"name": "torchperf_t", "type": "event"}, {"name": "other", "type": "event"}]'
    assert (
        "not ['torchperf_t']"
        in manifests.trigger_problems(analytics_template(two), "torchperf_t", "t_analytics")[0]
    )
    assert manifests.trigger_problems(analytics_template("[]"), "torchperf_t", "t_analytics")


def test_the_sensor_is_found_by_the_templates_annotations():
    name = "torchperf-test-tanalytics-sweepanalyticsflow"
    assert manifests.sensor_of(analytics_template(), "ns") == ("ns", name)
    elsewhere = analytics_template()
    elsewhere["metadata"]["annotations"]["metaflow/sensor_namespace"] = "argo-events"
    assert manifests.sensor_of(elsewhere, "ns") == ("argo-events", name)


def held_sensor():
    """A Sensor as the API holds it once the Argo Events controller has taken it over."""
    fields = [{"name": "name", "path": "body.payload.name"}]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {
            "name": "s", "namespace": "ns", "uid": "u", "resourceVersion": "7", "generation": 1,
            "creationTimestamp": "2026-12-02T10:00:00Z", "finalizers": ["sensor-controller"],
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "spec": {
            "dependencies": [{"name": "d", "eventSourceName": "src", "eventName": "e",
                              "filters": {"exprs": [{"expr": "name == 'x'", "fields": fields}]}}],
            "triggers": [],
        },
        "status": {"conditions": [{"type": "Deployed", "status": "True"}]},
    }  # fmt: skip


def test_what_the_api_holds_passes_with_the_servers_and_controllers_additions():
    # finalizers, managed fields and a status come from the server and the controller
    manifests.validate_sensor(held_sensor(), held=True)
    # ... and so may a field newer than hera's models (admission, CRD defaulting)
    newer = held_sensor()
    newer["spec"]["dependencies"][0]["newerField"] = True
    manifests.validate_sensor(newer, held=True)
    with pytest.raises(ConfigError, match="newerField"):
        manifests.validate_sensor(newer)  # what we compile ourselves is checked strictly


def test_what_the_api_holds_must_still_have_the_right_types():
    wrong = held_sensor()
    wrong["spec"]["dependencies"] = "not a list"
    with pytest.raises(ConfigError, match="dependencies"):
        manifests.validate_sensor(wrong, held=True)
