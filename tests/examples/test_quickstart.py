"""examples/quickstart.py runs and its solves converge to the known answers."""

import runpy


def test_quickstart_runs(capsys):
    runpy.run_module("examples.quickstart", run_name="__main__")
    out = capsys.readouterr().out
    assert "z* = 0.7390851332" in out  # the Dottie number
    assert "not converged" not in out and "max_iter" not in out
    assert out.count("Anderson") == 3 and "lasso:" in out
