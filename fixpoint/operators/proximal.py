"""Proximal-gradient (forward–backward) maps, whose fixed points are minimisers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fixpoint._validation import real

__all__ = ["ProximalGradient", "lasso", "soft_threshold"]


def soft_threshold(x: Tensor, threshold: Tensor | float) -> Tensor:
    r"""The proximal map of :math:`t\|\cdot\|_1`: :math:`\operatorname{sign}(x)\max(|x| - t, 0)`.

    Parameters
    ----------
    x
        Input tensor.
    threshold
        :math:`t \ge 0`: a number or a tensor broadcastable to ``x``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> fp.operators.soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
    tensor([-1.,  0.,  2.])
    """
    return torch.sign(x) * torch.relu(x.abs() - threshold)


class ProximalGradient(nn.Module):
    r"""The forward–backward map :math:`T(z) = \operatorname{prox}_{\tau g}(z - \tau\nabla h(z))`.

    Fixed points of :math:`T` are exactly the minimisers of :math:`h + g` for a convex, L-smooth
    :math:`h`, a convex :math:`g` and :math:`0 < \tau < 2/L`. :math:`T` is then averaged
    (Picard converges); it is a contraction with factor
    :math:`\max(|1 - \tau\mu|, |1 - \tau L|)` when :math:`h` is also μ-strongly convex.

    Parameters
    ----------
    grad
        :math:`\nabla h`, called as ``grad(z, *args)``.
    prox
        The proximal map of :math:`\tau g`, called as ``prox(v, step, *args)``.
    step
        The step size :math:`\tau > 0`.

    Examples
    --------
    Projected gradient for :math:`\min_{z \ge 0} \tfrac12\|z - c\|^2`:

    >>> import torch, fixpoint as fp
    >>> T = fp.operators.ProximalGradient(grad=lambda z, c: z - c,
    ...                                   prox=lambda v, step, c: v.clamp_min(0), step=0.5)
    >>> fp.solve(T, torch.zeros(3), torch.tensor([1.0, -2.0, 3.0])).value.round(decimals=4)
    tensor([1., 0., 3.])
    """

    def __init__(
        self, grad: Callable[..., Tensor], prox: Callable[..., Tensor], step: float
    ) -> None:
        super().__init__()
        if not callable(grad) or not callable(prox):
            raise TypeError("ProximalGradient: grad and prox must be callable")
        step = real("ProximalGradient", "step", step, low=0, low_open=True)
        self.grad = grad
        self.prox = prox
        self.step = float(step)

    def forward(self, z: Tensor, *args: Any) -> Tensor:
        return self.prox(z - self.step * self.grad(z, *args), self.step, *args)

    def extra_repr(self) -> str:
        return f"step={self.step}"


def lasso(design: Tensor, step: float | None = None) -> ProximalGradient:
    r"""ISTA for the lasso :math:`\min_z \tfrac12\|A z - y\|_2^2 + \lambda\|z\|_1`.

    Returns the map :math:`T(z, y, \lambda) = S_{\tau\lambda}(z - \tau A^\top(Az - y))`, with
    ``y`` of shape ``(m,)`` or ``(B, m)`` and ``z`` of shape ``(n,)`` or ``(B, n)``. ``y`` and
    ``λ`` are arguments, so :func:`fixpoint.fixed_point` can differentiate the solution with
    respect to them (e.g. to tune λ).

    Parameters
    ----------
    design
        The matrix :math:`A`, shape ``(m, n)``.
    step
        :math:`\tau`; defaults to :math:`1/\|A\|_2^2`. The map contracts with factor
        :math:`1 - \tau\sigma_{\min}(A)^2` when :math:`A` has full column rank.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> A = torch.eye(3, dtype=torch.float64)
    >>> y = torch.tensor([3.0, -0.5, 1.0], dtype=torch.float64)
    >>> z = fp.solve(fp.operators.lasso(A), torch.zeros(3, dtype=torch.float64), y, 1.0).value
    >>> torch.allclose(z, torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    True
    """
    if step is None:
        step = 1.0 / torch.linalg.matrix_norm(design, ord=2).item() ** 2

    def grad(z: Tensor, y: Tensor, lam: Tensor | float) -> Tensor:
        return (z @ design.mT - y) @ design

    def prox(v: Tensor, tau: float, y: Tensor, lam: Tensor | float) -> Tensor:
        lam = torch.as_tensor(lam, dtype=v.dtype, device=v.device)
        if lam.dim() == 1 and v.dim() == 2:
            lam = lam[:, None]
        return soft_threshold(v, tau * lam)

    return ProximalGradient(grad, prox, step)
