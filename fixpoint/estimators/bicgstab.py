"""BiCGStab on the implicit linear system (I − Jᵀ) w = g."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fixpoint.estimators._iterative import check_options, solve_adjoint
from fixpoint.estimators.base import Estimate, Estimator, MatVec
from fixpoint.linalg import bicgstab

__all__ = ["BiCGStab"]


@dataclass(frozen=True)
class BiCGStab(Estimator):
    r"""Solve :math:`(I - J^\top) w = g` by BiCGStab: the exact gradient, vjps only.

    Each iteration costs two ``vjp`` s and a handful of vectors of memory, whatever the number
    of iterations (GMRES keeps its whole Krylov basis until a restart). Convergence is not
    monotone and can stall where :class:`GMRES` cannot, but it needs no restart length; a
    breakdown of its recurrences restarts it from the current :math:`w`. The converged flag is
    decided on the true residual (one more product), never on the recurrence alone.

    A row stops when :math:`\|g - (I - J^\top) w\|_2 \le` ``atol + rtol·‖g‖₂``; see
    :class:`GMRES` for ``w0`` and ``warn``.

    Parameters
    ----------
    atol, rtol
        Tolerances on the residual of the implicit system, ≥ 0.
    max_iter
        Maximum iterations (two products with :math:`J^\top` each), ≥ 1.
    w0
        The start: ``"g"`` (default) or ``"zero"``.
    warn
        Warn when a row did not converge.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5, 2.0], [0.0, 0.5]], dtype=torch.float64)
    >>> g = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    >>> fp.BiCGStab(atol=1e-12, rtol=0)(g, vjp=lambda v: v @ J, jvp=None).w.round(decimals=10)
    tensor([[ 2., 10.]], dtype=torch.float64)
    """

    solves: ClassVar[bool] = True
    exact: ClassVar[bool] = True

    atol: float = 1e-8
    rtol: float = 1e-5
    max_iter: int = 100
    w0: str = "g"
    warn: bool = True

    def __post_init__(self) -> None:
        check_options(self)

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Estimate:
        return solve_adjoint(self, g, vjp, bicgstab)
