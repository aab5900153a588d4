"""What the iterative estimators share: their options and the solve of (I − Jᵀ) w = g."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from fixpoint._validation import choice, count, flag, real, store
from fixpoint.estimators.base import Estimate, MatVec, warn_inexact
from fixpoint.linalg import KrylovResult

__all__ = ["check_options", "solve_adjoint"]


class _Options(Protocol):
    """The options an iterative estimator (a frozen dataclass) has."""

    @property
    def atol(self) -> float: ...
    @property
    def rtol(self) -> float: ...
    @property
    def max_iter(self) -> int: ...
    @property
    def w0(self) -> str: ...
    @property
    def warn(self) -> bool: ...


def check_options(estimator: Any, **extra: Any) -> None:
    """Check and store ``atol``, ``rtol``, ``max_iter``, ``w0``, ``warn`` (and ``extra``)."""
    owner = type(estimator).__name__
    store(
        estimator,
        atol=real(owner, "atol", estimator.atol, low=0),
        rtol=real(owner, "rtol", estimator.rtol, low=0),
        max_iter=count(owner, "max_iter", estimator.max_iter, 1),
        w0=choice(owner, "w0", estimator.w0, ("g", "zero")),
        warn=flag(owner, "warn", estimator.warn),
        **extra,
    )


def solve_adjoint(
    estimator: _Options, g: Tensor, vjp: MatVec, method: Any, **options: Any
) -> Estimate:
    """``w`` with ``(I − Jᵀ) w = g`` by ``method`` (a solver of :mod:`fixpoint.linalg`).

    Starts from ``g`` (``w0="g"``) or zero, warns for the rows that missed the tolerance.
    """

    def system(v: Tensor) -> Tensor:  # (I − Jᵀ) v
        return v - vjp(v)

    result: KrylovResult = method(
        system,
        g,
        x0=g if estimator.w0 == "g" else None,
        atol=estimator.atol,
        rtol=estimator.rtol,
        max_iter=estimator.max_iter,
        **options,
    )
    return report(estimator, result)


def report(estimator: Any, result: KrylovResult) -> Estimate:
    """``result`` as an :class:`Estimate`, warning (if the estimator does) for missed rows."""
    if estimator.warn:
        warn_inexact(
            result.converged,
            f"{type(estimator).__name__} did not reach its tolerance in {estimator.max_iter} "
            f"iterations (largest residual {result.residual.max().item():.3g})",
        )
    return Estimate(result.x, result.converged, result.residual, result.iterations)
