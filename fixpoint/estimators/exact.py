"""The exact implicit-function-theorem gradient by a dense solve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fixpoint.estimators.base import Estimate, Estimator, MatVec

__all__ = ["Exact"]


@dataclass(frozen=True)
class Exact(Estimator):
    r"""Build :math:`J` densely (``n`` vjps per sample) and solve :math:`(I - J^\top) w = g`.

    Exact up to rounding, whatever the spectrum of :math:`J` (as long as :math:`I - J` is
    invertible). For small problems and for tests: it costs ``n`` products per sample and
    ``O(n³)`` work.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5, 0.25], [0.0, 0.5]], dtype=torch.float64)
    >>> est = fp.Exact()(torch.ones(1, 2, dtype=torch.float64), vjp=lambda v: v @ J, jvp=None)
    >>> torch.allclose(est.w[0], torch.linalg.solve(torch.eye(2, dtype=J.dtype) - J.T,
    ...                                            torch.ones(2, dtype=J.dtype)))
    True
    """

    exact: ClassVar[bool] = True

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Estimate:
        batch, n = g.shape
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        # Row i of J is Jᵀ e_i.
        jac = torch.stack([vjp(eye[i].expand(batch, n)) for i in range(n)], dim=1)
        system = eye - jac.mT
        # Not torch.linalg.solve: its forward-mode rule, differentiated again, drops a term
        # (pytorch/pytorch#196695), and this solve is differentiated to every order.
        lu, pivots = torch.linalg.lu_factor(system)
        w = torch.linalg.lu_solve(lu, pivots, g[..., None])[..., 0]
        residual = torch.linalg.vector_norm(g - (system @ w[..., None])[..., 0], dim=1)
        return Estimate(w, torch.isfinite(w).all(1), residual, n)
