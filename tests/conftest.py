"""Shared fixtures: a private Metaflow datastore for the session and composed Hydra configs.

Metaflow reads its settings from the environment when it is first imported, so the datastore is
chosen in ``pytest_configure``, before any test module imports metaflow.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tiny variants: fast everywhere, still real TorchPerfFlow runs.
TINY = {"tensor_dim": 64, "measure_seconds": 0.2}


def pytest_configure(config):
    datastore = tempfile.mkdtemp(prefix="torchperf-tests-")
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = datastore
    # Cards ignore the sysroot and are written under the first .metaflow found upward from the
    # working directory, so flows run from here keep cards and data in the same place.
    os.makedirs(os.path.join(datastore, ".metaflow"), exist_ok=True)
    os.chdir(datastore)
    os.environ["METAFLOW_DEFAULT_DATASTORE"] = "local"
    os.environ["METAFLOW_DEFAULT_METADATA"] = "local"
    os.environ.setdefault("METAFLOW_USER", "torchperf-tests")
    sys.path.insert(0, str(ROOT))
    # Before any test uses Metaflow's Runner or Deployer: their typeguard brings Metaflow's
    # vendored typing_extensions, which breaks generic classes defined after it by the current
    # typing_extensions (hera's, torch's). See manifests.import_models.
    import torch  # noqa: F401

    from torchperf.backends.argo.manifests import import_models

    import_models()


@pytest.fixture(scope="session")
def datastore_root() -> Path:
    """The folder that holds this test session's ``.metaflow``."""
    return Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"])


@pytest.fixture(scope="session")
def tiny_sweep():
    """Three real TorchPerfFlow runs tagged as one sweep, run once per test session.

    Returns ``{"tag": str, "runs": {(cpu, tensor_dim): metaflow.Run}}``.
    """
    from metaflow import Runner

    from torchperf.plan import branch_name, new_sweep_tag
    from torchperf.settings import VariantSettings

    tag = new_sweep_tag()
    cores = min(2, len(os.sched_getaffinity(0)))
    grid = [(1, 32), (1, 64), (cores, 32)]
    runs = {}
    for cpu, tensor_dim in dict.fromkeys(grid):
        config = VariantSettings(cpu=cpu, tensor_dim=tensor_dim, measure_seconds=0.2, tag=tag)
        with Runner(
            str(ROOT / "torchtest.py"),
            branch=branch_name(tag, cpu, tensor_dim),
            config_value=[("config", config.as_config())],
        ).run(tags=[tag]) as running:
            assert running.status == "successful", running.stderr
            runs[(cpu, tensor_dim)] = running.run
    return {"tag": tag, "runs": runs}


@pytest.fixture
def compose_config():
    """Compose the project's config as Hydra would, with overrides; GlobalHydra cleared after."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from torchperf.hydra_app import register

    register()

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            return compose("config", overrides=list(overrides), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def deployer_sweep(hydra_sweep_runner, monkeypatch, tmp_path):
    """``sweep_deployer``'s multirun in this process, as Hydra tests its launchers, on the
    backend given: ``deployer_sweep(backend, *overrides)`` is the runner (a context manager),
    its sweep dir ``tmp_path / "sweep"``."""
    from torchperf import sweep as sweep_module
    from torchperf.hydra_app import register

    register()

    def _sweep(backend, *overrides: str):
        monkeypatch.setattr(sweep_module, "make_backend", lambda name, options: backend)
        return hydra_sweep_runner(
            calling_file=str(ROOT / "sweep_deployer.py"),
            calling_module=None,
            task_function=None,
            config_path="conf",
            config_name="config",
            overrides=list(overrides),
            temp_dir=tmp_path / "sweep",
        )

    return _sweep


def wait_for(condition, seconds: float = 60.0, what: str = "condition not met in time"):
    """Wait until ``condition()`` is true and return its value; fail with ``what`` after
    ``seconds``. The poll interval is only how often to look, not a guess at a duration."""
    import time

    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def card_text(html: str) -> str:
    """The components of a Metaflow card page, decoded (the page embeds them as base64 JSON)."""
    import base64
    import re

    blobs = re.findall(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
    return "\n".join(base64.b64decode(blob).decode() for blob in blobs)
