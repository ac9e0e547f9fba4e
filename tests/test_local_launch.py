"""How the local backend starts the flows: by their links in .flows/, which hold nothing else."""

import pytest
from metaflow.metaflow_git import get_repository_info

from torchperf.backends import local
from torchperf.backends.local import FLOWS, LAUNCH_DIR, launch_path

FLOW_FILES = ("torchtest.py", "sweep_analytics.py")


@pytest.mark.parametrize("flow", FLOW_FILES)
def test_each_flow_is_started_by_its_link(flow):
    path = launch_path(flow)
    assert path.parent == LAUNCH_DIR
    assert path.resolve() == FLOWS / flow


def test_the_directory_metaflow_walks_for_a_local_run_holds_only_the_links():
    # Metaflow walks the whole directory of the file a run is started by.
    assert sorted(entry.name for entry in LAUNCH_DIR.iterdir()) == sorted(FLOW_FILES)


def test_runs_started_by_the_links_record_the_same_git_commit():
    # Metaflow records the repository, branch and commit of the directory the run started in.
    assert get_repository_info(LAUNCH_DIR) == get_repository_info(FLOWS)


def test_a_checkout_without_the_links_starts_the_flows_themselves(tmp_path, monkeypatch):
    (tmp_path / "torchtest.py").write_text("# symlinks turned off: the link is a text file\n")
    monkeypatch.setattr(local, "LAUNCH_DIR", tmp_path)
    assert launch_path("torchtest.py") == FLOWS / "torchtest.py"
    assert launch_path("sweep_analytics.py") == FLOWS / "sweep_analytics.py"
