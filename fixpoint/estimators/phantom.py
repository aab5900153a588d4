"""Phantom gradients: the damped unrolled gradient evaluated at the fixed point."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fixpoint._validation import count, real, store
from fixpoint.estimators.base import Estimator, MatVec, warn_if_series_grows

__all__ = ["Phantom"]


@dataclass(frozen=True)
class Phantom(Estimator):
    r"""Phantom gradient (Geng et al., 2021): unroll ``k`` damped steps at :math:`z^*`.

    .. math:: w = \lambda \sum_{i=0}^{k-1} \big((1 - \lambda) I + \lambda J^\top\big)^i g,

    the gradient of ``k`` relaxed steps :math:`z \leftarrow (1-\lambda) z + \lambda f(z)` taken
    from :math:`z^*`. Costs ``k − 1`` vector–Jacobian products. With ``damping = 1`` it equals
    :class:`Neumann` with ``k − 1``; as ``k`` grows it tends to the exact :math:`w`.

    Parameters
    ----------
    k
        Number of unrolled steps, ≥ 1.
    damping
        :math:`\lambda \in (0, 1]`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> g, half = torch.ones(1, 2), lambda v: 0.5 * v
    >>> fp.Phantom(k=3, damping=1.0)(g, half, None), fp.Neumann(k=2)(g, half, None)
    (tensor([[1.7500, 1.7500]]), tensor([[1.7500, 1.7500]]))
    """

    k: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        store(
            self,
            k=count("Phantom", "k", self.k, 1),
            damping=real("Phantom", "damping", self.damping, low=0, low_open=True, high=1),
        )

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor:
        lam = self.damping
        w, term = g, g
        for _ in range(self.k - 1):
            term = (1 - lam) * term + lam * vjp(term) if lam != 1 else vjp(term)
            w = w + term
        warn_if_series_grows(repr(self), g, term, self.k - 1)
        return lam * w if lam != 1 else w
