"""How both backends start the flows: by their links in .flows/, beside a link to torchperf/ and
nothing else (Metaflow walks and packages the folder a flow is started from; base.FLOW_LINKS)."""

import pytest
from metaflow.metaflow_git import get_repository_info

from torchperf.backends.base import FLOW_LINKS, PACKAGED, ROOT, flow_path

FLOW_FILES = ("torchtest.py", "sweep_analytics.py")


@pytest.mark.parametrize("flow", FLOW_FILES)
def test_each_flow_is_started_by_its_link(flow):
    path = flow_path(flow)
    assert path.parent == FLOW_LINKS
    assert path.resolve() == ROOT / flow


def test_the_directory_metaflow_walks_holds_only_the_links():
    # Metaflow walks the whole directory of the file a run is started by.
    assert sorted(entry.name for entry in FLOW_LINKS.iterdir()) == sorted(FLOW_FILES + PACKAGED)
    assert all((FLOW_LINKS / name).resolve() == ROOT / name for name in PACKAGED)


def test_runs_started_by_the_links_record_the_same_git_commit():
    # Metaflow records the repository, branch and commit of the directory the run started in.
    assert get_repository_info(FLOW_LINKS) == get_repository_info(ROOT)


def test_a_checkout_without_the_links_starts_the_flows_themselves(tmp_path):
    (tmp_path / "torchtest.py").write_text("# symlinks turned off: the link is a text file\n")
    assert flow_path("torchtest.py", links=tmp_path) == ROOT / "torchtest.py"
    assert flow_path("sweep_analytics.py", links=tmp_path) == ROOT / "sweep_analytics.py"


def test_a_flow_link_without_torchperf_beside_it_is_not_used(tmp_path):
    # Its code package would lack what the pods import.
    (tmp_path / "torchtest.py").symlink_to(ROOT / "torchtest.py")
    assert flow_path("torchtest.py", links=tmp_path) == ROOT / "torchtest.py"
    (tmp_path / "torchperf").symlink_to(ROOT / "torchperf")
    assert flow_path("torchtest.py", links=tmp_path) == tmp_path / "torchtest.py"
