"""Hydra's own flags on sweep_deployer.py, in a subprocess: nothing runs, each answers as Hydra
does, and the one-line check of unknown keys still comes first."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def deployer(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "sweep_deployer.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "METAFLOW_USER": "torchperf-tests"},
    )


@pytest.mark.parametrize("part", ["job", "hydra", "all"])
def test_cfg_prints_the_config_without_running(part):
    done = deployer("--cfg", part, "cpu=1")
    assert done.returncode == 0, done.stderr
    if part in ("job", "all"):
        assert "tensor_dim: 1024" in done.stdout
    if part in ("hydra", "all"):
        assert "TorchperfLauncher" in done.stdout
    assert "summary:" not in done.stderr


def test_cfg_with_resolve_resolves_interpolations():
    # (Hydra itself refuses --cfg together with -m.)
    plain = deployer("--cfg", "hydra")
    resolved = deployer("--cfg", "hydra", "--resolve")
    assert plain.returncode == 0 and resolved.returncode == 0, resolved.stderr
    assert "${now:" in plain.stdout and "${now:" not in resolved.stdout


@pytest.mark.parametrize("flag", [["--info"], ["--info", "defaults"], ["--help"], ["--hydra-help"]])
def test_info_and_help_answer(flag):
    done = deployer(*flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "error:" not in done.stderr


def test_info_lists_the_launcher_plugin():
    done = deployer("--info", "plugins")
    assert done.returncode == 0, done.stderr
    assert "TorchperfLauncher" in done.stdout


def test_config_name_path_and_dir_select_another_primary_config(tmp_path):
    # A primary config of one's own (config.yaml sets hydra.searchpath, so it cannot be included).
    text = (ROOT / "config.yaml").read_text()
    (tmp_path / "other.yaml").write_text(text.replace("\ncpu: 1 ", "\ncpu: 2 "))
    by_dir = deployer("-cd", str(tmp_path), "-cn", "other", "--cfg", "job")
    assert by_dir.returncode == 0, by_dir.stderr
    assert "cpu: 2" in by_dir.stdout
    # the one-line check reads the selected primary config: its keys are known
    bad = deployer("-cd", str(tmp_path), "-cn", "other", "--cfg", "job", "nokey=1")
    assert bad.returncode == 2 and "error: unknown setting 'nokey'" in bad.stderr
    by_path = deployer("-cp", str(ROOT), "-cn", "config", "--cfg", "job", cwd=tmp_path)
    assert by_path.returncode == 0 and "cpu: 1" in by_path.stdout, by_path.stderr


def test_unknown_keys_still_get_one_line_alongside_flags():
    done = deployer("--cfg", "job", "cpux=1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("error:")
    ]
    assert "cpux" in done.stderr
