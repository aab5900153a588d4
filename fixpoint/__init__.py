"""fixpoint: fixed-point solvers and gradient estimators for PyTorch.

>>> import torch, fixpoint as fp
>>> sol = fp.solve(lambda z: 0.5 * torch.tanh(z) + 1.0, torch.zeros(3))
>>> bool(sol.converged)
True
"""

from fixpoint import operators, testing
from fixpoint.solution import Solution, Status
from fixpoint.solve import solve
from fixpoint.solvers import Anderson, Broyden, Picard, Solver

__version__ = "0.1.0"

__all__ = [
    "Anderson",
    "Broyden",
    "Picard",
    "Solution",
    "Solver",
    "Status",
    "operators",
    "solve",
    "testing",
]
