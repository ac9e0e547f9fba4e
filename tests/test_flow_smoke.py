def test_tiny_sweep_runs(tiny_sweep):
    assert len(tiny_sweep["runs"]) >= 2
