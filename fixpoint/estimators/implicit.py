"""The adjoint fixed point w = Jᵀw + g, solved with any forward solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fixpoint._checks import require_instance
from fixpoint._registry import suggest
from fixpoint._validation import flag, store
from fixpoint.estimators.base import Estimate, Estimator, MatVec, warn_inexact
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver

__all__ = ["Implicit"]


@dataclass(frozen=True)
class Implicit(Estimator):
    r"""Solve the adjoint equation :math:`w = J^\top w + g` as a fixed-point problem.

    The map :math:`w \mapsto J^\top w + g` contracts exactly when :math:`\rho(J) < 1`, with the
    same factor as ``f`` at :math:`z^*`, so the forward solvers that found :math:`z^*` find
    :math:`w` too. Each evaluation costs one ``vjp``; the solve starts from :math:`w_0 = g`
    (the JFB estimate). With ``Picard`` and ``max_iter = k`` it is :class:`Neumann` with ``k``.

    Parameters
    ----------
    solver
        A :class:`~fixpoint.Solver` that needs evaluations of its map only (Picard, Anderson,
        Broyden; not :class:`~fixpoint.NewtonKrylov`: use :class:`~fixpoint.GMRES`); its
        tolerances apply to ``‖Jᵀw + g − w‖₂``.
    warn
        Warn (:class:`ConvergenceWarning`) when some sample did not converge.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> est = fp.Implicit()(torch.ones(1, 2, dtype=torch.float64), vjp=lambda v: 0.5 * v,
    ...                     jvp=None)
    >>> est.w.round(decimals=6), bool(est.converged.all())
    (tensor([[2., 2.]], dtype=torch.float64), True)
    """

    solves: ClassVar[bool] = True
    exact: ClassVar[bool] = True

    solver: Solver = Anderson(atol=1e-8, rtol=1e-6, max_iter=100)
    warn: bool = True

    def __post_init__(self) -> None:
        require_instance(self.solver, Solver, "solver", "fp.Anderson()")
        if self.solver.differentiates_map:
            raise TypeError(
                f"fp.Implicit({type(self.solver).__name__}(...)): this solver differentiates "
                "the map it solves, and the adjoint map w ↦ Jᵀw + g is linear: Newton's "
                "method on it is one linear solve. Use the Krylov estimator that does that "
                "solve directly, fp.GMRES(atol, rtol), or fp.Implicit with "
                f"{suggest('solver', differentiates_map=False)}"
            )
        store(self, warn=flag("Implicit", "warn", self.warn))

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Estimate:
        sol = self.solver.iterate(lambda w: vjp(w) + g, g)
        if self.warn:
            warn_inexact(
                sol.converged,
                f"Implicit({type(self.solver).__name__}) did not solve "
                f"the adjoint equation (statuses {sorted(set(map(str, sol.status)))})",
            )
        return Estimate(sol.value, sol.converged, sol.residual, int(sol.iterations.max()))
