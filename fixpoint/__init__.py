"""fixpoint: fixed-point solvers and gradient estimators for PyTorch.

>>> import torch, fixpoint as fp
>>> sol = fp.solve(lambda z: 0.5 * torch.tanh(z) + 1.0, torch.zeros(3))
>>> bool(sol.converged)
True
"""

from fixpoint import nn, operators
from fixpoint.diagnostics import EstimatorComparison, compare_estimators, format_comparison
from fixpoint.estimators import (
    CG,
    GMRES,
    JFB,
    BiCGStab,
    ConvergenceWarning,
    Estimate,
    Estimator,
    Exact,
    Implicit,
    Neumann,
    Phantom,
)
from fixpoint.fixed_point import fixed_point
from fixpoint.linalg import MatVec
from fixpoint.matvecs import MatvecCount, count_matvecs
from fixpoint.regularization import jacobian_penalty
from fixpoint.solution import BackwardInfo, ConvergenceError, Solution, Status
from fixpoint.solve import solve
from fixpoint.solvers import Anderson, Broyden, NewtonKrylov, Picard, Solver
from fixpoint.solvers.base import FlatMap

__version__ = "0.1.0"

__all__ = [
    "CG",
    "GMRES",
    "JFB",
    "Anderson",
    "BackwardInfo",
    "BiCGStab",
    "Broyden",
    "ConvergenceError",
    "ConvergenceWarning",
    "Estimate",
    "Estimator",
    "EstimatorComparison",
    "Exact",
    "FlatMap",
    "Implicit",
    "MatVec",
    "MatvecCount",
    "Neumann",
    "NewtonKrylov",
    "Phantom",
    "Picard",
    "Solution",
    "Solver",
    "Status",
    "compare_estimators",
    "count_matvecs",
    "fixed_point",
    "format_comparison",
    "jacobian_penalty",
    "nn",
    "operators",
    "solve",
    "testing",
]


def __getattr__(name: str) -> object:
    # fp.testing is imported on first use: it is not needed to solve or train.
    if name == "testing":
        import importlib

        return importlib.import_module("fixpoint.testing")
    raise AttributeError(f"module 'fixpoint' has no attribute {name!r}")
