"""One registry of the library's solvers and estimators for the tests that concern them all.

The classes come from the package itself (:mod:`fixpoint._registry`: every concrete
``fp.Solver`` and ``fp.Estimator`` that fixpoint defines), so a new method is covered by the
convergence, batching, failure, precision, torch.func, thread and DDP suites the moment it is
added to the package. ``OPTIONS`` only makes a method more interesting to test (asymmetric
values, a short restart); a method needs no entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import fixpoint as fp
from fixpoint._registry import library_methods

SOLVER_CLASSES: tuple[type[fp.Solver], ...] = library_methods("solver")
ESTIMATOR_CLASSES: tuple[type[fp.Estimator], ...] = library_methods("estimator")

# Non-default options under which a method is tested (asymmetric values where they matter).
OPTIONS: dict[str, dict[str, Any]] = {
    "Anderson": dict(m=3),
    "Picard": dict(damping=0.8),
    "Neumann": dict(k=3),
    "Phantom": dict(k=4, damping=0.7),
    "GMRES": dict(restart=4),
}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def solver(cls: type[fp.Solver], tol: float, max_iter: int = 1000, **options: Any) -> fp.Solver:
    """``cls`` with absolute tolerance ``tol`` (``rtol = 0``), its test options and ``options``."""
    return cls(
        atol=tol, rtol=0.0, max_iter=max_iter, **{**OPTIONS.get(cls.__name__, {}), **options}
    )


def solvers(tol: float, max_iter: int = 1000, **options: Any) -> list[fp.Solver]:
    """One of each library solver (see :func:`solver`)."""
    return [solver(cls, tol, max_iter, **options) for cls in SOLVER_CLASSES]


def is_exact(estimator: fp.Estimator | type[fp.Estimator]) -> bool:
    """Whether the estimator gives the implicit-function-theorem gradient (to its tolerance)."""
    return bool(getattr(estimator, "exact", False)) or bool(estimator.solves)


def estimator(cls: type[fp.Estimator], tol: float = 1e-12, **options: Any) -> fp.Estimator:
    """``cls`` with its test options; an iterative one solves to ``tol`` (a forward solver
    inside, such as Implicit's, too)."""
    kwargs = {**OPTIONS.get(cls.__name__, {}), **options}
    names = _fields(cls)
    if {"atol", "rtol"} <= names:
        kwargs = {"atol": tol, "rtol": 0.0, **kwargs}
    if "max_iter" in names:
        kwargs.setdefault("max_iter", 500)
    if "solver" in names:
        kwargs.setdefault("solver", fp.Anderson(atol=tol, rtol=0.0, max_iter=500))
    return cls(**kwargs)


def estimators(tol: float = 1e-12, **options: Any) -> list[fp.Estimator]:
    """One of each library estimator (see :func:`estimator`)."""
    return [estimator(cls, tol, **options) for cls in ESTIMATOR_CLASSES]


def name(method: Any) -> str:
    """A test id: the class name."""
    return type(method).__name__
