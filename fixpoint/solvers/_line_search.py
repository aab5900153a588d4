"""Safeguarded backtracking along a search direction, row by row (Broyden, Newton–Krylov)."""

from __future__ import annotations

import torch
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint.solvers.base import FlatMap

__all__ = ["backtrack", "step_along"]

SUFFICIENT = 1e-4
"""The sufficient decrease: a step λ passes when ‖g(z + λd)‖ ≤ (1 − 10⁻⁴ λ) · reference."""


def backtrack(
    fn: FlatMap,
    z: Tensor,
    direction: Tensor,
    r0: Tensor,
    reference: Tensor,
    trial: tuple[Tensor, Tensor, Tensor],
    *,
    active: Tensor,
    max_backtracks: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Shorten the step :math:`z + \lambda d` of each row until its residual decreases enough.

    A row accepts :math:`\lambda` when :math:`\|g(z + \lambda d)\|_2 \le (1 - 10^{-4}\lambda)
    \cdot` ``reference`` (``reference = r0 = ‖g(z)‖``: Armijo's monotone rule; a larger
    reference, such as the largest of the last few residuals, makes it non-monotone). Otherwise
    the next :math:`\lambda` minimises the quadratic model of :math:`\|g(z + \lambda d)\|^2`
    through its value at 0 and at the current :math:`\lambda`, with slope
    :math:`-2\|g(z)\|^2` at 0 (a Newton direction's), kept within :math:`[0.1, 0.5]` times the
    current :math:`\lambda`; a non-finite residual divides :math:`\lambda` by 10. Each round is
    one evaluation of ``fn`` for all rows, and stops once every ``active`` row has accepted.

    ``trial`` is ``(z + d, f(z + d), ‖g(z + d)‖)``, already evaluated. Returns the iterate with
    the lowest residual seen for each row (the accepted one, or the best trial when none was
    accepted in ``max_backtracks`` rounds), its ``f``, its residual, and whether it was accepted.
    """
    z_best, fz_best, r_best = trial
    passed = r_best <= (1 - SUFFICIENT) * reference
    accepted = passed | ~active | ~torch.isfinite(r0)
    if bool(accepted.all()):  # the full step passes: the rule on well-behaved maps
        return z_best, fz_best, r_best, passed
    r_best = torch.where(torch.isfinite(r_best), r_best, torch.inf)
    lam = torch.ones_like(r0)
    r_now = r_best
    phi0 = r0.square()
    for _ in range(max_backtracks):
        if bool(accepted.all()):
            break
        curvature = (r_now.square() - phi0 + 2 * phi0 * lam) / lam.square()
        usable = torch.isfinite(r_now) & (curvature > 0)
        model = phi0 / torch.where(usable, curvature, 1.0)
        shorter = torch.where(usable, model.clamp(0.1 * lam, 0.5 * lam), 0.1 * lam)
        lam = torch.where(accepted, lam, shorter)
        z_try = (z + lam[:, None] * direction).to(z_best.dtype)
        fz_try = fn(z_try)
        r_try = row_norm(fz_try - z_try)
        better = ~accepted & (r_try < r_best)
        z_best = torch.where(better[:, None], z_try, z_best)
        fz_best = torch.where(better[:, None], fz_try, fz_best)
        r_best = torch.where(better, r_try, r_best)
        newly = ~accepted & (r_try <= (1 - SUFFICIENT * lam) * reference)
        passed = passed | newly
        accepted = accepted | newly
        r_now = torch.where(accepted, r_now, r_try)
    return z_best, fz_best, r_best, passed


def step_along(
    fn: FlatMap,
    z: Tensor,
    direction: Tensor,
    r: Tensor,
    recent: Tensor,
    *,
    dtype: torch.dtype,
    active: Tensor,
    line_search: bool,
    max_backtracks: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The step ``z + λd`` of a globalised solver, with the non-monotone rule of :func:`backtrack`.

    ``r`` is ``‖g(z)‖`` and ``recent`` the last residual norms of each row (``(B, w)``); the
    reference is the largest of them and ``r``. Returns the next iterate (in ``dtype``), its
    ``f``, ``recent`` with the new residual appended (the oldest dropped) and whether each row's
    step passed the test (all ``True`` without a line search, where the full step is taken).
    """
    z_next = (z + direction).to(dtype)
    fz_next = fn(z_next)
    if not line_search:
        return z_next, fz_next, recent, torch.ones_like(active)
    trial = (z_next, fz_next, row_norm(fz_next - z_next))
    reference = torch.maximum(recent.amax(1), r)
    z_next, fz_next, r_next, passed = backtrack(
        fn, z, direction, r, reference, trial, active=active, max_backtracks=max_backtracks
    )
    recent = torch.cat([recent[:, 1:], r_next[:, None]], dim=1)
    return z_next, fz_next, recent, passed
