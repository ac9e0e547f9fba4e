"""The versioned result schema: written by the flow, read by everyone, old runs included."""

from __future__ import annotations

import pickle

import pytest

from torchperf.result import SCHEMA_VERSION, Environment, Result, ResultSchemaError

# What TorchPerfFlow stored as `result` before the schema had a version (torchtest.py from
# e92b438 to b88dcc9: bench's figure, the cores, the cgroup's limits, the fingerprint, the
# warnings merged into one dict), from a tiny run on 2 cores.
UNVERSIONED = {
    "gflops": 41.93,
    "gflops_q1": 40.87,
    "gflops_q3": 42.51,
    "iqr_ratio": 0.0391,
    "noisy": False,
    "gflops_ci": [40.95, 42.2],
    "gflops_ci_level": 0.961,
    "gflops_sig_figs": 2,
    "cpu_utilization": 0.994,
    "run_queue_share": 0.002,
    "shared": False,
    "warnings": ["frequency governor is powersave, not performance: the clock may vary"],
    "gflops_samples": [40.1, 40.87, 41.2, 41.93, 42.0, 42.51, 43.3],
    "squarings_per_second": 79.97,
    "calls_per_sample": 8,
    "threads": 1,
    "tensor_dim": 64,
    "device": "cpu",
    "torch_version": "2.13.0+cpu",
    "measure_seconds": 0.2004,
    "warmup_seconds": 0.0413,
    "warmup_settled": True,
    "measured_from": 1796212345.12,
    "measured_until": 1796212345.41,
    "affinity": [0],
    "cpu_quota": None,
    "usable_cpus": 1,
    "throttled_periods": None,
    "throttled_seconds": None,
    "throttled": False,
    "env": {
        "cpu_model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        "cpu_capability": "AVX512",
        "cpu_mhz": 2699.998,
        "torch_version": "2.13.0+cpu",
        "blas": "mkl",
        "parallel_backend": "OpenMP",
        "threads": 1,
        "cores": [0],
        "cpu_quota": None,
        "governor": "powersave",
        "load_1min": 0.31,
        "host": "devbox",
        "node_ip": None,
        "pod": None,
        "image": None,
        "python": "3.11.7",
    },
}
# The first shape (torchtest.py at 9fc5b0e): bench's figure and the pinned cores, nothing else.
FIRST = {
    "gflops": 101.4,
    "gflops_q1": 99.8,
    "gflops_q3": 102.9,
    "iqr_ratio": 0.0306,
    "noisy": False,
    "gflops_samples": [98.7, 99.8, 101.4, 102.9, 103.5],
    "squarings_per_second": 193.4,
    "calls_per_sample": 19,
    "threads": 2,
    "tensor_dim": 64,
    "device": "cpu",
    "torch_version": "2.9.1",
    "measure_seconds": 0.51,
    "warmup_seconds": 0.12,
    "warmup_settled": True,
    "affinity": [0, 1],
}


def test_a_result_survives_the_artifact_round_trip():
    result = Result.from_dict(UNVERSIONED)
    stored = pickle.loads(pickle.dumps(result.to_dict()))  # as Metaflow stores the artifact
    assert stored["schema_version"] == SCHEMA_VERSION
    assert Result.from_dict(stored) == result


def test_the_artifact_keeps_every_key_old_readers_use():
    stored = Result.from_dict(UNVERSIONED).to_dict()
    assert set(stored) - {"schema_version"} == set(UNVERSIONED)
    assert stored["gflops_ci"] == UNVERSIONED["gflops_ci"]  # a list, as before
    assert stored["env"].items() >= UNVERSIONED["env"].items()


def test_a_run_recorded_before_the_schema_is_read():
    result = Result.from_dict(UNVERSIONED)
    assert result.gflops == 41.93 and result.gflops_samples[-1] == 43.3
    assert result.interval == (40.95, 42.2, 0.961)
    assert result.env.cpu_model.startswith("Intel(R) Xeon(R)")
    assert result.env.node is None and result.env.qos_class is None  # not recorded then
    assert result.warnings[0].startswith("frequency governor")


def test_the_first_shape_reads_with_what_it_lacks_as_none():
    result = Result.from_dict(FIRST)
    assert result.gflops == 101.4 and result.affinity == (0, 1)
    assert result.interval is None and result.env == Environment()
    assert result.warnings == () and result.cpu_quota is None and result.shared is None


def test_a_newer_version_is_refused_in_one_line():
    newer = {**Result.from_dict(UNVERSIONED).to_dict(), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ResultSchemaError, match="newer than this torchperf reads") as error:
        Result.from_dict(newer)
    assert "\n" not in str(error.value) and str(SCHEMA_VERSION + 1) in str(error.value)


def test_a_result_without_its_figure_is_refused():
    broken = {key: value for key, value in UNVERSIONED.items() if key != "gflops"}
    with pytest.raises(ResultSchemaError, match="lacks gflops"):
        Result.from_dict(broken)


def test_the_pod_fields_are_read_and_unknown_fingerprint_fields_kept():
    env = {
        **UNVERSIONED["env"],
        "node": "node-a",
        "qos_class": "Guaranteed",
        "image_digest": "sha256:abc",
        "numa_nodes": 2,  # a field this schema does not name
    }
    result = Result.from_dict({**UNVERSIONED, "env": env})
    assert (result.env.node, result.env.qos_class) == ("node-a", "Guaranteed")
    assert result.env.image_digest == "sha256:abc"
    assert result.env.get("numa_nodes") == 2
    assert result.to_dict()["env"].items() >= env.items()


def test_the_flow_records_the_measurement_its_limits_and_fingerprint():
    timed = {key: UNVERSIONED[key] for key in FIRST if key != "affinity"}
    timed |= {"warnings": ["shared cores: x"], "cpu_utilization": 0.5, "shared": True}
    limits = {"cpu_quota": 1.5, "usable_cpus": 1.5, "throttled": False, "warnings": ["q"]}
    result = Result.measured(
        timed,
        affinity=[3],
        limits=limits,
        env={"cpu_model": "M", "qos_class": "Burstable"},
        warnings=["shared cores: x", "q"],
    )
    assert result.affinity == (3,) and result.cpu_quota == 1.5 and result.shared
    assert result.warnings == ("shared cores: x", "q")
    assert result.env.qos_class == "Burstable"


def test_compare_ends_with_one_line_on_a_run_of_a_newer_schema(monkeypatch, capsys):
    from torchperf import runs
    from torchperf.__main__ import main

    class NewerRun:
        pathspec, successful, created_at = "TorchPerfFlow/9", True, 0

        class data:  # noqa: N801 - as metaflow.Run.data reads
            config = {"cpu": 1, "tensor_dim": 64, "device": "cpu"}
            result = {**UNVERSIONED, "schema_version": SCHEMA_VERSION + 1}

    monkeypatch.setattr(runs, "sweep_runs", lambda tag, flow: [NewerRun()])
    with pytest.raises(SystemExit) as exited:
        main(["compare", "sweep_a", "sweep_b"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer than this torchperf reads" in err
