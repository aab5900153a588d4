"""Conjugate gradients on the implicit linear system (I − Jᵀ) w = g."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fixpoint._validation import flag
from fixpoint.estimators._iterative import check_options, report
from fixpoint.estimators.base import Estimate, Estimator, MatVec
from fixpoint.linalg import cg, cgls

__all__ = ["CG"]


@dataclass(frozen=True)
class CG(Estimator):
    r"""Solve :math:`(I - J^\top) w = g` by conjugate gradients: the "Jacobian-based" backward.

    By default it runs CG on the normal equations
    :math:`(I - J)(I - J^\top) w = (I - J) g` (CGLS), which needs no symmetry of :math:`J` and
    costs one ``jvp`` and one ``vjp`` per iteration. With ``symmetric=True`` (only valid when
    :math:`J` is symmetric and :math:`I - J` positive definite, e.g. gradient maps of convex
    functions) it runs plain CG on :math:`(I - J^\top) w = g`: one ``vjp`` per iteration.

    A row stops when :math:`\|g - (I - J^\top) w\|_2 \le` ``atol + rtol·‖g‖₂``. If some row
    does not get there in ``max_iter`` iterations, a :class:`ConvergenceWarning` is issued (unless
    ``warn=False``) and the returned :class:`Estimate` says which.

    It starts from JFB's :math:`w_0 = g` (``w0="g"``, the default: one more product, and the
    answer where JFB is already within tolerance) or from zero (``w0="zero"``); either way a
    nonzero ``g`` never comes back as :math:`w = 0` because the start met a loose tolerance.

    Parameters
    ----------
    atol, rtol
        Tolerances on the residual of the implicit system, ≥ 0.
    max_iter
        Maximum iterations, ≥ 1.
    symmetric
        Use plain CG (see above).
    w0
        The start: ``"g"`` (JFB's estimate, default) or ``"zero"``.
    warn
        Warn when a row did not converge.

    Examples
    --------
    With :math:`J = \tfrac12 I` the exact answer is :math:`w = 2g`:

    >>> import torch, fixpoint as fp
    >>> half = lambda v: 0.5 * v
    >>> fp.CG()(torch.ones(1, 2, dtype=torch.float64), vjp=half, jvp=half).w
    tensor([[2., 2.]], dtype=torch.float64)
    """

    solves: ClassVar[bool] = True
    exact: ClassVar[bool] = True
    uses_jvp: ClassVar[bool] = True

    atol: float = 1e-8
    rtol: float = 1e-5
    max_iter: int = 100
    symmetric: bool = False
    w0: str = "g"
    warn: bool = True

    def __post_init__(self) -> None:
        check_options(self, symmetric=flag("CG", "symmetric", self.symmetric))

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Estimate:
        def system(v: Tensor) -> Tensor:  # (I − Jᵀ) v
            return v - vjp(v)

        def adjoint(v: Tensor) -> Tensor:  # (I − J) v
            return v - jvp(v)

        atol, rtol, max_iter = self.atol, self.rtol, self.max_iter
        x0 = g if self.w0 == "g" else None
        if self.symmetric:
            result = cg(system, g, x0=x0, atol=atol, rtol=rtol, max_iter=max_iter)
        else:
            result = cgls(system, adjoint, g, x0=x0, atol=atol, rtol=rtol, max_iter=max_iter)
        return report(self, result)
