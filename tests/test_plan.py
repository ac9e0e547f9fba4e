"""Sweep identity and the grid, as pure functions."""

import re
from datetime import datetime, timezone

import pytest

from torchperf.hydra_app import cpu_grid
from torchperf.plan import (
    BRANCH_PATTERN,
    analytics_branch,
    branch_name,
    check_tag,
    event_name,
    new_sweep_tag,
)
from torchperf.settings import ConfigError


def test_two_sweeps_started_in_the_same_second_get_different_tags():
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
    tags = {new_sweep_tag(now) for _ in range(50)}
    assert len(tags) == 50
    assert all(check_tag(tag) == tag for tag in tags)


@pytest.mark.parametrize("tag", ["Sweep", "a-b", "", "x" * 41, "sweep 1", "_a", "a_", "_"])
def test_rejects_tags_unusable_in_branch_names_or_as_label_values(tag):
    with pytest.raises(ConfigError, match="tag=") as error:
        check_tag(tag)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tag", ["a", "a_b", "x" * 40, "sweep_1"])
def test_accepts_tags_that_are_label_values(tag):
    assert check_tag(tag) == tag


def test_branches_are_valid_metaflow_branch_names():
    tag = new_sweep_tag()
    for branch in [
        branch_name(tag, 15, 1500),
        branch_name(tag, 1, 64, "cuda"),
        analytics_branch(tag),
    ]:
        assert BRANCH_PATTERN.match(branch), branch


def test_branches_stay_unique_once_argo_drops_underscores():
    # Argo template names lose underscores: c1_n1100 and c11_n100 must still differ.
    tag = new_sweep_tag()
    branches = [branch_name(tag, c, n) for c in range(1, 33) for n in (1, 10, 100, 110, 1000, 1100)]
    squashed = {b.replace("_", "") for b in branches}
    assert len(squashed) == len(branches)
    assert analytics_branch(tag).replace("_", "") not in squashed


def test_event_names_the_tag():
    tag = new_sweep_tag()
    assert tag in event_name(tag) and re.match(r"^[a-z0-9_]+$", event_name(tag))


@pytest.mark.parametrize(("cores", "grid"), [(1, "1"), (2, "1,2"), (6, "1,2,4,6"), (8, "1,2,4,8")])
def test_default_cpu_grid_fits_the_machine(cores, grid):
    assert cpu_grid(cores) == grid


def test_labels_name_the_device_only_when_it_is_not_the_cpu():
    from torchperf.plan import Variant

    assert Variant(2, 512, "b").label == "cpu=2 n=512"
    assert Variant(2, 512, "b", "cuda").label == "cpu=2 n=512 cuda"
