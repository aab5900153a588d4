"""Jacobian-free backpropagation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fixpoint.estimators.base import Estimator, MatVec

__all__ = ["JFB"]


@dataclass(frozen=True)
class JFB(Estimator):
    r"""Jacobian-free backpropagation (Fung et al., AAAI 2022): :math:`w = g`.

    It replaces :math:`(I - J^\top)^{-1}` by the identity (the zeroth term of the Neumann series),
    so the backward pass costs one pull-back through :math:`\partial f/\partial\theta` and no
    products with :math:`J`. If ``f`` is γ-contractive in ``z`` and
    :math:`M = \partial f/\partial\theta` satisfies :math:`\kappa(M^\top M) \le 1/\gamma`, the
    JFB direction :math:`-g^\top M` is a descent direction for the loss.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> g = torch.randn(2, 5)
    >>> torch.equal(fp.JFB()(g, vjp=None, jvp=None), g)
    True
    """

    uses_vjp: ClassVar[bool] = False

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor:
        return g
