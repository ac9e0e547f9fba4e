"""sweep_deployer.py's command line: Hydra's own flags answer as Hydra does (in a subprocess);
bad input gets one line, exit status 2 and no folder left behind (in this process, through the
entry point's own run_command and @hydra.main function)."""

import logging
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from torchperf import hydra_app
from torchperf.settings import ConfigError


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
    # A primary config of one's own beside the project's groups (-cd adds a folder to Hydra's
    # search path; the groups still come from conf/).
    text = (ROOT / "config.yaml").read_text()
    (tmp_path / "other.yaml").write_text(text.replace("\ncpu: 1 ", "\ncpu: 2 "))
    by_dir = deployer("-cd", str(tmp_path), "-cn", "other", "--cfg", "job")
    assert by_dir.returncode == 0, by_dir.stderr
    assert "cpu: 2" in by_dir.stdout
    # the one-line check reads the selected primary config: its keys are known
    bad = deployer("-cd", str(tmp_path), "-cn", "other", "--cfg", "job", "nokey=1")
    assert bad.returncode == 2 and "error: unknown setting 'nokey'" in bad.stderr
    by_path = deployer("-cp", str(ROOT / "conf"), "-cn", "config", "--cfg", "job", cwd=tmp_path)
    assert by_path.returncode == 0 and "cpu: 1" in by_path.stdout, by_path.stderr


def test_unknown_keys_still_get_one_line_alongside_flags():
    done = deployer("--cfg", "job", "cpux=1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("error:")
    ]
    assert "cpux" in done.stderr


def test_flags_that_cannot_go_together_get_one_line():
    done = deployer("-m", "--cfg", "job")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --cfg and -m cannot go together: --cfg and --info show one run's config "
        "(drop -m), -m runs the sweep"
    ]


def test_an_override_hydra_cannot_read_gets_one_line():
    done = deployer("tag=bad tag!")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot read 'tag=bad tag!'") and "override_grammar" in line


def test_help_names_the_usual_commands():
    done = deployer("--help")
    assert done.returncode == 0, done.stderr
    for command in ("sweep_deployer.py -m", "tag=", "new_tag=true", "dry_run=true", "compare"):
        assert command in done.stdout, command
    assert "tensor_dim: 1024" in done.stdout  # and the settings, as Hydra shows them


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["-m", "--info"], "error: --info and -m cannot go together"),
        (["--cfg", "job", "--info"], "error: --cfg and --info cannot go together"),
        (["--resolve"], "error: --resolve goes with --cfg or --help"),
    ],
)
def test_flag_check(arguments, expected):
    with pytest.raises(ConfigError, match=expected.removeprefix("error: ")):
        hydra_app.check_flags(arguments)


def test_flag_check_passes_one_command_and_any_overrides():
    hydra_app.check_flags(["-m", "cpu=1,2", "hydra.sweep.dir=x"])
    hydra_app.check_flags(["--cfg", "job", "--resolve", "-cn", "config"])


@pytest.fixture
def command(monkeypatch, tmp_path, capsys):
    """``command(*arguments)``: sweep_deployer.py's run in this process, from an empty folder;
    (exit status, stderr's lines, what the command left in the folder)."""
    from hydra.core.global_hydra import GlobalHydra

    import sweep_deployer

    hydra_app.register()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # run_command sets it; restored after

    def _run(*arguments):
        monkeypatch.setattr(sys, "argv", ["sweep_deployer.py", *arguments])
        GlobalHydra.instance().clear()
        capsys.readouterr()
        try:
            status = hydra_app.run_command(sweep_deployer.main, list(arguments))
        except SystemExit as exited:  # a single run's refusal exits from inside Hydra's job
            status = exited.code
        finally:
            GlobalHydra.instance().clear()
            # Hydra pointed logging at this test's streams and the job's log file: close
            # those, put back what was there.
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
        lines = capsys.readouterr().err.strip().splitlines()
        left = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
        return status, lines, left

    yield _run


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["cpux=1"], "unknown setting 'cpux'; known: backend, baseline, cpu,"),
        (["-m", "cpux=1,2"], "unknown setting 'cpux'"),
        (["+colour=red"], "unknown setting 'colour'"),
        (["-m", "backend=argo", "backend.paralel=3"], "unknown setting 'backend.paralel'"),
        (["backend=gcp"], "backend=gcp is unknown; choose one of: argo, local"),
        (["-m", "backend=local,gcp"], "backend=gcp is unknown; choose one of: argo, local"),
        (["cpu=two"], "cpu=two must be a whole number"),
        (["-m", "cpu=1,x"], "cpu=x must be a whole number"),
        (["-m", "measure_seconds=soon"], "measure_seconds=soon must be a number"),
        (["dry_run=no"], "dry_run=no must be true or false"),
        (["-m", "dry_run=yes"], "dry_run=yes must be true or false"),
        (["-m", "dry_run=true,1"], "dry_run=1 must be true or false"),
        (["live_analytics=maybe"], "live_analytics=maybe must be true or false"),
        (["-m", "live_analytics=off"], "live_analytics=off must be true or false"),
        (["variant_timeout_seconds=0"], "variant_timeout_seconds=0 must be above 0"),
        (["-m", "variant_timeout_seconds=-5"], "variant_timeout_seconds=-5 must be above 0"),
        (["-m", "tag=sweep_no_such_sweep"], "tag=sweep_no_such_sweep names no earlier sweep"),
        (["new_tag=true"], "new_tag=true needs tag="),
        (["-m", "tag=Bad"], "tag='Bad' must be 1-40 lowercase letters"),
        (["-m", "cpu=1,999"], "cpu=999 exceeds the"),
        (["cpu=999"], "cpu=999 exceeds the"),
        (["-m", "tensor_dim=2048", "memory_mb=10"], "needs 48.0 MiB"),
        (["cpu=1,2"], "Ambiguous value for argument 'cpu=1,2'"),
    ],
)
def test_bad_input_gets_one_line_exit_2_and_leaves_no_folder(command, arguments, message):
    status, lines, left = command(*arguments)
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    assert left == []  # neither multirun/<date>/<time>/ nor outputs/


def test_a_rejected_sweep_keeps_the_folders_of_other_sweeps(command, tmp_path):
    earlier = tmp_path / "multirun" / "2026-01-01" / "00-00-00-000000"
    earlier.mkdir(parents=True)
    (earlier / "multirun.yaml").write_text("{}")
    status, _, left = command("-m", "cpu=1,999", "hydra.sweep.dir=multirun/2026-01-01/later")
    assert status == 2
    assert left == ["multirun", "multirun/2026-01-01", *[f"multirun/2026-01-01/{earlier.name}"],
                    f"multirun/2026-01-01/{earlier.name}/multirun.yaml"]  # fmt: skip


def test_a_given_tag_resumes_the_sweep_that_carries_it(command, tiny_sweep):
    tag = tiny_sweep["tag"]
    status, lines, _ = command("-m", f"tag={tag}", "dry_run=true", "cpu=1", "tensor_dim=32")
    assert status == 0, lines
    status, lines, _ = command("-m", f"tag={tag}", "new_tag=true", "cpu=1", "tensor_dim=32")
    assert status == 2
    assert lines == [
        f"error: tag={tag} already names a sweep (3 runs): drop new_tag=true to resume it"
    ]


def test_new_tag_names_a_new_sweep_on_purpose(command, tmp_path):
    status, lines, left = command(
        "-m", "tag=sweep_new_on_purpose", "new_tag=true", "dry_run=true", "cpu=1", "tensor_dim=32"
    )
    assert status == 0, lines
    assert any(path.endswith("summary.json") for path in left)


@pytest.mark.filterwarnings("ignore:The ``declarative_base\\(\\)`` function is now available")
def test_a_study_whose_trials_all_failed_ends_in_one_line(command, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper")
    from tests.test_sweep import FakeBackend
    from torchperf import sweep

    backend = FakeBackend(fail={(cpu, 32) for cpu in range(1, 65)})
    monkeypatch.setattr(sweep, "make_backend", lambda name, options: backend)
    status, lines, _ = command("-m", "sweep=optuna", "hydra.sweeper.n_trials=2", "tensor_dim=32")
    assert status == 1
    assert lines[-1] == "error: no trial succeeded: the study has no best value"
    assert len([call for call in backend.calls if call[0] == "run"]) == 2  # both were tried


def test_a_backend_that_cannot_start_ends_in_one_line(command, monkeypatch):
    from tests.test_sweep import FakeBackend
    from torchperf import sweep

    class Refused(FakeBackend):
        def start(self, spec):
            raise RuntimeError("Traceback ...\nForbidden: the sweep may not create sensors")

    monkeypatch.setattr(sweep, "make_backend", lambda name, options: Refused())
    status, lines, _ = command("-m", "cpu=1", "tensor_dim=32")
    assert status == 1
    assert lines[-1] == (
        "error: the sweep could not start: Forbidden: the sweep may not create sensors"
    )
    assert not any(line.startswith("Traceback") for line in lines)
