"""A cheap estimate of the spectral radius of ∂f/∂z, to watch the contraction assumption."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp

from fixpoint._tree import FlatMap, Layout
from fixpoint._validation import count
from fixpoint.operators.lipschitz import random_unit_rows
from fixpoint.solvers.base import row_norm

__all__ = ["spectral_radius"]


def spectral_radius(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = 10,
    batched: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Estimate :math:`\rho(J)`, the spectral radius of :math:`J = \partial f/\partial z` at ``z``.

    Runs ``iters`` steps of the power method :math:`v \leftarrow J^\top v` (vector–Jacobian
    products only; :math:`\rho(J^\top) = \rho(J)`) and returns the geometric mean growth
    :math:`(\|(J^\top)^k v_0\| / \|v_0\|)^{1/k}` over the second half of the steps. It tends to
    :math:`\rho(J)` as ``iters`` grows (Gelfand's formula) and is exact for a normal
    :math:`J` whose dominant eigenvalue is simple.

    Fixed-point iteration, Neumann series, JFB's descent guarantee and the adjoint solve all rely
    on :math:`\rho(J) < 1` (in practice, on :math:`\|J\| < 1`); a value near or above 1 during
    training says the implicit layer is losing its contraction. Unlike
    :func:`~fixpoint.operators.lipschitz` this is not a bound on :math:`\|J\|_2`.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``.
    z
        The point, typically a fixed point.
    *args
        Extra inputs of ``f``, passed through unchanged.
    iters
        Power steps (vjps), ≥ 2.
    batched
        One estimate per sample.
    generator
        Random generator for the start vector.

    Returns
    -------
    Tensor
        Shape ``()``, or ``(B,)`` when batched.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5, 10.0], [0.0, 0.5]])      # ‖J‖₂ ≈ 10, but ρ(J) = 0.5
    >>> rho = fp.operators.spectral_radius(lambda z: J @ z, torch.ones(2), iters=200)
    >>> round(rho.item(), 1)
    0.5
    """
    iters = count("spectral_radius", "iters", iters, 2)
    layout = Layout.of(z, batched, name="z")
    z_flat = layout.flatten(z).detach()
    with torch.no_grad():
        _, pullback = vjp(FlatMap(f, layout, args), z_flat)
        v = random_unit_rows(z_flat, generator)
        log_growth = torch.zeros(z_flat.shape[0], dtype=row_norm(v).dtype, device=z_flat.device)
        counted = 0
        for step in range(iters):
            w = pullback(v)[0]
            norm = row_norm(w)
            if step >= iters // 2:
                log_growth = log_growth + torch.log(norm)
                counted += 1
            v = torch.where(norm[:, None] > 0, w / norm.clamp_min(1e-300)[:, None], v)
        estimate = torch.exp(log_growth / counted)
    return estimate if batched else estimate[0]
