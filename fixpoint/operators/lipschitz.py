"""Power-iteration estimate of the Lipschitz constant ‖∂f/∂z‖₂ of a map at a point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._transforms import jvp, vjp
from fixpoint._tree import FlatFunction, Layout
from fixpoint._validation import count

__all__ = ["lipschitz", "random_unit_rows"]


def random_unit_rows(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random rows of unit norm, shaped like ``like`` (drawn on the CPU, so seeds agree
    across devices)."""
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu")
    v = v.to(like.device)
    return v / row_norm(v)[:, None]


def lipschitz(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = 20,
    batched: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Estimate the spectral norm :math:`\|J\|_2` of :math:`J = \partial f/\partial z` at ``z``.

    Runs power iteration on :math:`J^\top J` with matrix-free products (``torch.func.jvp`` and
    ``torch.func.vjp``) and returns :math:`\|J v\|_2` for the final unit vector :math:`v`. That
    is always a lower bound on :math:`\|J\|_2` and converges to it as ``iters`` grows (at the
    rate :math:`(\sigma_2/\sigma_1)^{2k}`). A value below 1 at the points that matter is evidence,
    not proof, that ``f`` is a contraction there.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``.
    z
        The point: a tensor or a pytree of tensors.
    *args
        Extra inputs of ``f``, passed through unchanged.
    iters
        Power iterations (each costs one jvp and one vjp), ≥ 1.
    batched
        Estimate per sample (the leading dimension is the batch); the samples must be
        independent, as in :func:`fixpoint.solve` with ``batched=True``.
    generator
        Random generator for the starting vector.

    Returns
    -------
    Tensor
        Shape ``()``, or ``(B,)`` when batched.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> A = torch.diag(torch.tensor([0.9, -0.5, 0.1]))
    >>> est = fp.operators.lipschitz(lambda z: A @ z, torch.ones(3), iters=50)
    >>> round(est.item(), 4)
    0.9
    """
    iters = count("lipschitz", "iters", iters, 1)
    layout = Layout.of(z, batched, name="z")
    z_flat = layout.flatten(z).detach()
    fn = FlatFunction(f, layout, args)
    with torch.no_grad():
        _, pullback = vjp(fn, z_flat)
        v = random_unit_rows(z_flat, generator)
        for _ in range(iters):
            u = jvp(fn, (z_flat,), (v,))[1]
            w = pullback(u)[0]
            w_norm = row_norm(w)
            # A zero Jacobian (w = 0) keeps v: the estimate is then exactly 0.
            v = torch.where(w_norm[:, None] > 0, w / w_norm.clamp_min(1e-300)[:, None], v)
        estimate = row_norm(jvp(fn, (z_flat,), (v,))[1])
    return estimate if batched else estimate[0]
