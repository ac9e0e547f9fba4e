"""The list of private library APIs names, for each, a test that exists."""

import ast

import pytest

from tests.conftest import ROOT
from torchperf.private_api import PRIVATE_APIS


def functions_in(path):
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("entry", PRIVATE_APIS, ids=lambda entry: entry.api)
def test_each_private_api_names_a_test_that_exists(entry):
    path, _, name = entry.guarded_by.partition("::")
    assert (ROOT / path).is_file(), entry.guarded_by
    assert name.split("[")[0] in functions_in(path), entry.guarded_by
    assert entry.used_in and entry.why
