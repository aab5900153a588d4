"""Picard iteration with Krasnosel'skii–Mann damping."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fixpoint._validation import real, store
from fixpoint.solvers.base import FlatMap, Solver

__all__ = ["Picard"]


@dataclass(frozen=True)
class Picard(Solver[None]):
    r"""Damped fixed-point iteration :math:`z_{k+1} = (1-\alpha) z_k + \alpha f(z_k)`.

    For a γ-contraction with ``damping = 1`` the error obeys the Banach bound
    :math:`\|z_k - z^*\| \le \gamma^k \|z_0 - z^*\|`. With ``0 < damping < 1`` (Krasnosel'skii–Mann)
    the iteration also converges for maps that are only nonexpansive.

    Parameters
    ----------
    damping
        The step :math:`\alpha \in (0, 1]`.
    atol, rtol, max_iter, divergence
        See :class:`~fixpoint.Solver`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(lambda z: 0.5 * z + 1.0, torch.zeros(3), solver=fp.Picard(max_iter=200))
    >>> sol.value
    tensor([2.0000, 2.0000, 2.0000])
    """

    damping: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        store(self, damping=real("Picard", "damping", self.damping, low=0, low_open=True, high=1))

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> None:
        return None

    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: None
    ) -> tuple[Tensor, Tensor, None]:
        z_next = fz if self.damping == 1 else z + self.damping * g
        return z_next, fn(z_next), None
