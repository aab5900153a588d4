"""What a solve keeps does not grow with its iterations.

A list of per-step tensors (the old trace) pinned one small allocation between the large
temporaries of every step, and glibc then could not reuse their memory: a 10⁶-float solve's
resident memory grew by a state per step (benchmarks/solver_memory.py measures that). Here the
property is counted exactly: the tensors alive during step 250 are those alive during step 25.
"""

import gc
import warnings

import pytest
import torch

import fixpoint as fp
from tests.methods import SOLVER_CLASSES

# Small histories, so that a full memory is reached early (a method without one: defaults).
SMALL = {"Anderson": dict(m=3), "Broyden": dict(memory=4), "NewtonKrylov": dict(inner_max_iter=5)}
SOLVERS = [cls(**SMALL.get(cls.__name__, {})) for cls in SOLVER_CLASSES]


def live_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def probed(solver, counts):
    """The solver, counting live tensors as its steps 25 and 250 begin (the same phase)."""

    class Probe(type(solver)):
        def step(self, *args, **kwargs):
            counts["steps"] = counts.get("steps", 0) + 1
            if counts["steps"] in (25, 250):
                counts[counts["steps"]] = live_tensors()
            return super().step(*args, **kwargs)

    options = dict(atol=0.0, rtol=0.0, max_iter=300, divergence=float("inf"))
    return Probe(**{**solver.__dict__, **options})


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("batched", [False, True])
def test_tensors_alive_do_not_grow_with_iterations(solver, batched):
    counts = {}

    def f(z, x):
        return -0.9999 * z + x  # far from converged after 300 steps (at atol = rtol = 0)

    x = torch.randn(3, 50) if batched else torch.randn(50)
    sol = fp.solve(f, torch.zeros_like(x), x, solver=probed(solver, counts), batched=batched)
    assert int(sol.iterations.max()) == 300
    assert counts[250] == counts[25]
    assert sol.trace.shape[0] == 301  # the trace is all there, in one buffer
