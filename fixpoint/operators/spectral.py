"""An estimate of the spectral radius of ∂f/∂z, to watch the contraction assumption."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._transforms import vjp
from fixpoint._tree import FlatFunction, Layout
from fixpoint._validation import count, flag
from fixpoint.operators.lipschitz import random_unit_rows

__all__ = ["spectral_radius"]


@overload
def spectral_radius(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = ...,
    batched: bool = ...,
    generator: torch.Generator | None = ...,
    return_residual: Literal[False] = ...,
) -> Tensor: ...


@overload
def spectral_radius(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = ...,
    batched: bool = ...,
    generator: torch.Generator | None = ...,
    return_residual: Literal[True],
) -> tuple[Tensor, Tensor]: ...


@overload
def spectral_radius(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = ...,
    batched: bool = ...,
    generator: torch.Generator | None = ...,
    return_residual: bool,
) -> Tensor | tuple[Tensor, Tensor]: ...


def spectral_radius(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    iters: int = 30,
    batched: bool = False,
    generator: torch.Generator | None = None,
    return_residual: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Estimate :math:`\rho(J)`, the spectral radius of :math:`J = \partial f/\partial z` at ``z``.

    Runs ``iters`` steps of the Arnoldi process on :math:`J^\top` (vector–Jacobian products
    only; :math:`\rho(J^\top) = \rho(J)`) from a random start and returns the largest modulus of
    the Ritz values, the eigenvalues of the small Hessenberg matrix :math:`H_k` that
    :math:`J^\top` becomes on the Krylov space. Unlike the power method, whose error shrinks like
    :math:`|\lambda_2/\lambda_1|^k` and is still 7–17 % after 10 steps on a map whose
    :math:`\rho` is 1 with a small gap, Arnoldi uses the whole Krylov space: after ``k`` steps it
    is exact for any :math:`J` of dimension ``n ≤ k`` (``iters`` above ``n`` is capped at ``n``),
    and for a symmetric :math:`J` its estimate is the Lanczos one, which converges at the rate of
    a Chebyshev polynomial in the relative gap.

    How far to trust it: for a normal :math:`J` (symmetric, for instance) every Ritz value lies in
    the convex hull of the eigenvalues, so the estimate approaches :math:`\rho` from below and
    can make a map look more contractive than it is until it has converged: on a symmetric
    :math:`J` of dimension 200 with :math:`\rho = 1` and the next eigenvalue at 0.97 it reads
    0.94–0.96 after 10 steps, 0.96–1.0 after 20 and 1.0000 after 40 (the power method: 0.87–0.92
    after 10). No matrix-free method can bound :math:`\rho` from above; to settle a verdict near
    1, run it again with twice the steps and check the estimate holds. ``return_residual=True``
    also gives the *Ritz residual* :math:`|h_{k+1,k}|\,|y_k|` of the dominant Ritz value: some
    eigenvalue of a normal :math:`J` lies that close to the estimate (not necessarily the largest
    one), and a residual far above the precision wanted says more steps are needed.

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
        Arnoldi steps (vjps), ≥ 2 (default 30).
    batched
        One estimate per sample.
    generator
        Random generator for the start vector.
    return_residual
        Also return the Ritz residual of the dominant Ritz value (see above).

    Returns
    -------
    Tensor, or (Tensor, Tensor)
        Shape ``()``, or ``(B,)`` when batched; with ``return_residual``, the residual too.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> J = torch.tensor([[0.5, 10.0], [0.0, 0.5]], dtype=torch.float64)  # ‖J‖₂ ≈ 10, ρ(J) = 0.5
    >>> rho = fp.operators.spectral_radius(lambda z: J @ z, torch.ones(2, dtype=torch.float64))
    >>> round(rho.item(), 4)
    0.5
    """
    iters = count("spectral_radius", "iters", iters, 2)
    return_residual = flag("spectral_radius", "return_residual", return_residual)
    layout = Layout.of(z, batched, name="z")
    z_flat = layout.flatten(z).detach()
    with torch.no_grad():
        _, pullback = vjp(FlatFunction(f, layout, args), z_flat)
        rho, residual = _arnoldi(
            lambda v: pullback(v)[0], random_unit_rows(z_flat, generator), iters
        )
    if not batched:
        rho, residual = rho[0], residual[0]
    return (rho, residual) if return_residual else rho


def _arnoldi(matvec: Callable[[Tensor], Tensor], v0: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Dominant Ritz value modulus and Ritz residual of ``matvec`` from unit rows ``v0``.

    Batched (one Krylov space per row), classical Gram–Schmidt applied twice. A row whose
    Krylov space closes early (an invariant subspace: the new vector vanishes) continues with
    zero vectors, which leaves its Ritz values exact.
    """
    batch, n = v0.shape
    steps = min(steps, n)
    work = torch.promote_types(v0.dtype, torch.float32)
    basis = v0.new_zeros(batch, steps + 1, n, dtype=work)
    hessenberg = v0.new_zeros(batch, steps + 1, steps, dtype=work)
    basis[:, 0] = v0.to(work)
    for j in range(steps):
        w = matvec(basis[:, j].to(v0.dtype)).to(work)
        known = basis[:, : j + 1]
        for _ in range(2):  # the second pass restores the orthogonality the first loses
            h = torch.bmm(known, w[:, :, None])[:, :, 0]
            w = w - torch.bmm(h[:, None, :], known)[:, 0]
            hessenberg[:, : j + 1, j] += h
        beta = row_norm(w)
        hessenberg[:, j + 1, j] = beta
        scale = torch.finfo(work).eps * hessenberg[:, : j + 2, j].abs().amax(1)
        alive = beta > scale
        basis[:, j + 1] = torch.where(alive[:, None], w / torch.where(alive, beta, 1.0)[:, None], 0)
    eigenvalues, vectors = torch.linalg.eig(hessenberg[:, :steps, :steps])
    modulus = eigenvalues.abs()
    top = modulus.argmax(1)
    rho = modulus.gather(1, top[:, None])[:, 0]
    last = vectors[:, steps - 1, :].abs().gather(1, top[:, None])[:, 0]
    residual = hessenberg[:, steps, steps - 1] * last
    return rho.to(v0.dtype), residual.to(v0.dtype)
