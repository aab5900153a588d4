"""GMRES on the implicit linear system (I − Jᵀ) w = g."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fixpoint._validation import count
from fixpoint.estimators._iterative import check_options, solve_adjoint
from fixpoint.estimators.base import Estimate, Estimator, MatVec
from fixpoint.linalg import gmres

__all__ = ["GMRES"]


@dataclass(frozen=True)
class GMRES(Estimator):
    r"""Solve :math:`(I - J^\top) w = g` by restarted GMRES: the exact gradient, vjps only.

    Each iteration costs one ``vjp`` and takes the :math:`w` of least residual
    :math:`\|g - (I - J^\top) w\|_2` in the Krylov space built so far, so it needs no symmetry of
    :math:`J` and, unlike :class:`CG` (conjugate gradients on the normal equations: one ``jvp``
    and one ``vjp`` per iteration, and the condition number squared), it works with the
    system itself. Where :math:`J` is far from normal (:math:`\rho(J) < 1` but
    :math:`\|J\| > 1`) it needs far fewer products than CG or the Neumann series. After every
    ``restart`` iterations (and when every row has stopped) it recomputes the true residual
    with one product and restarts from there; memory is ``restart + 1`` vectors per sample.

    A row stops when :math:`\|g - (I - J^\top) w\|_2 \le` ``atol + rtol·‖g‖₂``; a row that does
    not get there in ``max_iter`` iterations gets a :class:`ConvergenceWarning` (unless
    ``warn=False``) and the :class:`Estimate` says which. It starts from JFB's :math:`w_0 = g`
    (``w0="g"``, default: one product for its residual) or from zero (``w0="zero"``); a nonzero
    ``g`` never comes back as :math:`w = 0` because a zero start met the tolerance.

    Parameters
    ----------
    atol, rtol
        Tolerances on the residual of the implicit system, ≥ 0.
    max_iter
        Maximum iterations (products with :math:`J^\top`, not counting the residuals), ≥ 1.
    restart
        Iterations per cycle, ≥ 1.
    w0
        The start: ``"g"`` (default) or ``"zero"``.
    warn
        Warn when a row did not converge.

    Examples
    --------
    A non-symmetric :math:`J`; the answer is :math:`(I - J^\top)^{-1} g`:

    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5, 2.0], [0.0, 0.5]], dtype=torch.float64)
    >>> g = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    >>> est = fp.GMRES(atol=1e-12, rtol=0)(g, vjp=lambda v: v @ J, jvp=None)
    >>> est.w.round(decimals=10), est.iterations
    (tensor([[ 2., 10.]], dtype=torch.float64), 2)
    """

    solves: ClassVar[bool] = True
    exact: ClassVar[bool] = True

    atol: float = 1e-8
    rtol: float = 1e-5
    max_iter: int = 100
    restart: int = 20
    w0: str = "g"
    warn: bool = True

    def __post_init__(self) -> None:
        check_options(self, restart=count("GMRES", "restart", self.restart, 1))

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Estimate:
        return solve_adjoint(self, g, vjp, gmres, restart=self.restart)
