"""The relaxed (averaged) map z ↦ (1 − α) z + α f(z)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.utils._pytree as pytree
from torch import nn

from fixpoint._validation import real

__all__ = ["Relaxed"]


class Relaxed(nn.Module):
    r"""The averaged map :math:`T(z) = (1 - \alpha) z + \alpha f(z, \dots)`.

    :math:`T` has the fixed points of ``f``. If ``f`` is :math:`\gamma`-Lipschitz, :math:`T` is
    :math:`(1 - \alpha + \alpha\gamma)`-Lipschitz, and for a nonexpansive ``f`` (γ = 1) it is
    α-averaged, so plain Picard iteration on :math:`T` converges (Krasnosel'skii–Mann). If ``f``
    is an ``nn.Module`` its parameters become parameters of this module.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``; ``z`` may be a tensor or a pytree of tensors.
    alpha
        Relaxation :math:`\alpha \in (0, 1]`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> T = fp.operators.Relaxed(lambda z: -z + 2.0, alpha=0.5)   # f is not a contraction
    >>> T(torch.tensor(0.0))                                      # but T(z) = 1 for every z
    tensor(1.)
    """

    def __init__(self, f: Callable[..., Any], alpha: float = 0.5) -> None:
        super().__init__()
        if not callable(f):
            raise TypeError(f"Relaxed: f must be callable, got {type(f).__name__}")
        self.f = f
        self.alpha = real("Relaxed", "alpha", alpha, low=0, low_open=True, high=1)

    def forward(self, z: Any, *args: Any) -> Any:
        fz = self.f(z, *args)
        return pytree.tree_map(lambda a, b: a.lerp(b, self.alpha), z, fz)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
