"""How a variant ended, as a type: statuses are enum members that read as their strings."""

import json
from dataclasses import asdict

import pytest

from torchperf.backends.argo.api import Phase
from torchperf.backends.base import STATUSES, Outcome, Status


def test_an_outcome_made_with_a_string_holds_the_member_and_reads_as_the_string():
    outcome = Outcome("timeout", message="still Running after 3 s")
    assert outcome.status is Status.TIMEOUT
    assert outcome.status == "timeout" and f"{outcome.status}" == "timeout"
    assert json.loads(json.dumps(asdict(outcome)))["status"] == "timeout"
    assert STATUSES == ("succeeded", "failed", "timeout", "cancelled", "skipped")


def test_a_misspelt_status_fails_where_the_outcome_is_made():
    with pytest.raises(ValueError, match="succeded"):
        Outcome("succeded")


@pytest.mark.parametrize(
    ("argo", "phase", "running"),
    [(None, Phase.PENDING, True), ("", Phase.PENDING, True), ("Running", Phase.RUNNING, True),
     ("Succeeded", Phase.SUCCEEDED, False), ("Failed", Phase.FAILED, False),
     ("Error", Phase.FAILED, False)],
)  # fmt: skip
def test_argo_phases_are_read_once_into_an_enum(argo, phase, running):
    assert Phase.from_argo(argo) is phase
    assert Phase.from_argo(argo).running is running
