"""Truncated Neumann series of (I − Jᵀ)⁻¹."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fixpoint._validation import count, store
from fixpoint.estimators.base import Estimator, MatVec, warn_if_series_grows

__all__ = ["Neumann"]


@dataclass(frozen=True)
class Neumann(Estimator):
    r"""The first ``k + 1`` terms of the Neumann series: :math:`w = \sum_{i=0}^{k} (J^\top)^i g`.

    Costs ``k`` vector–Jacobian products per sample. For a γ-contraction the error obeys
    :math:`\|w - w^*\| \le \gamma^{k+1} \|g\| / (1 - \gamma)`. ``k = 0`` is :class:`JFB`.

    Parameters
    ----------
    k
        Number of products with :math:`J^\top`, ≥ 0.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5]])
    >>> fp.Neumann(k=2)(torch.ones(1, 1), vjp=lambda v: v @ J, jvp=None)   # 1 + 0.5 + 0.25
    tensor([[1.7500]])
    """

    k: int = 5

    def __post_init__(self) -> None:
        store(self, k=count("Neumann", "k", self.k, 0))

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor:
        w, term = g, g
        for _ in range(self.k):
            term = vjp(term)
            w = w + term
        warn_if_series_grows(repr(self), g, term, self.k)
        return w
