"""Batched Krylov solvers on flat ``(B, n)`` matrices, one independent system per row.

Written once, used wherever a linear system appears (the :class:`~fixpoint.CG`,
:class:`~fixpoint.GMRES` and :class:`~fixpoint.BiCGStab` estimators, the inner solves of
:class:`~fixpoint.NewtonKrylov`, diagnostics). Each row stops on its own; stopped rows are no
longer changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fixpoint._norms import row_norm

__all__ = ["KrylovResult", "MatVec", "bicgstab", "cg", "cgls", "gmres"]

MatVec = Callable[[Tensor], Tensor]
"""A product ``(B, n) -> (B, n)``, row by row: with a matrix here, with the per-sample
Jacobian in the estimators (``vjp``: Jᵀv, ``jvp``: Jv)."""


@dataclass(frozen=True)
class KrylovResult:
    """Solution ``x`` (``(B, n)``) of a batched linear solve and per-row statistics.

    ``residual`` is ``‖b − A x‖₂`` of the original system for each row, ``converged`` whether it
    reached ``atol + rtol·‖b‖₂``, and ``iterations`` the number of loop steps (products with the
    operator) taken for the whole batch.
    """

    x: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vecdot(a, b, dim=1)


def _squared_norm(a: Tensor) -> Tensor:
    # One reduction pass; several times faster on CPU than vecdot(a, a).
    return row_norm(a).square()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den ≠ 0`` (of either sign), else 0."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, 1.0), 0.0)


def _start(
    matvec: MatVec, b: Tensor, x0: Tensor | None, atol: float | Tensor, rtol: float | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Start, residual, active rows and tolerance of a Krylov solve from ``x0`` (or zero).

    From zero, a row with ``b ≠ 0`` is active even when ``‖b‖`` already meets the tolerance:
    returning the zero start there would be a silent zero gradient, not a solution.
    """
    tol = atol + rtol * row_norm(b)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
        active = (row_norm(r) > tol) | (b != 0).any(1)
    else:
        x = x0.clone()
        r = b - matvec(x)
        active = row_norm(r) > tol
    return x, r, active, tol


class _Best:
    """Each row's iterate with the lowest residual so far: what a Krylov solver returns, so
    that round-off on a nearly singular system never hands back an iterate worse than one it
    had (a converged row stops changing, so its last iterate is its best)."""

    def __init__(self, x: Tensor, residual: Tensor) -> None:
        self.x, self.residual = x.clone(), residual

    def update(self, x: Tensor, residual: Tensor) -> None:
        better = residual < self.residual
        self.x = torch.where(better[:, None], x, self.x)
        self.residual = torch.where(better, residual, self.residual)


def cg(
    matvec: MatVec,
    b: Tensor,
    *,
    atol: float,
    rtol: float,
    max_iter: int,
    x0: Tensor | None = None,
) -> KrylovResult:
    r"""Conjugate gradients for :math:`A x = b` with a symmetric positive definite :math:`A`.

    One product with :math:`A` per iteration (one more for the residual of a given ``x0``); a
    row stops when :math:`\|b - Ax\|_2 \le` ``atol + rtol·‖b‖₂``. From the default start
    :math:`x_0 = 0` a row with :math:`b \ne 0` always takes a first step, so the answer is never
    the zero start itself. Each row returns its iterate of lowest (recurrence) residual: on a
    matrix that is not positive definite, or nearly singular, the last iterate can be far worse.

    Parameters
    ----------
    matvec
        :math:`v \mapsto Av` on ``(B, n)`` rows.
    b
        Right-hand sides, ``(B, n)``.
    atol, rtol
        Tolerances on the residual.
    max_iter
        Maximum iterations.
    x0
        Initial guess (default zero).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.linalg import cg
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> res = cg(lambda v: v @ A, torch.tensor([[1.0, 2.0]], dtype=torch.float64),
    ...          atol=1e-12, rtol=0, max_iter=10)
    >>> res.x, res.iterations
    (tensor([[0.0909, 0.6364]], dtype=torch.float64), 2)
    """
    x, r, active, tol = _start(matvec, b, x0, atol, rtol)
    p = r.clone()
    rr = _squared_norm(r)
    best = _Best(x, row_norm(r))
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        ap = matvec(p)
        iterations += 1
        # Stopped rows get α = 0, so x and r keep their values; their p is never used again.
        alpha = torch.where(active, _safe_div(rr, _dot(p, ap)), 0.0)[:, None]
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        rr_new = _squared_norm(r)
        best.update(x, rr_new.sqrt())
        active = active & (rr_new.sqrt() > tol)
        p.mul_(_safe_div(rr_new, rr)[:, None]).add_(r)
        rr = rr_new
    return KrylovResult(best.x, best.residual, best.residual <= tol, iterations)


def cgls(
    matvec: MatVec,
    rmatvec: MatVec,
    b: Tensor,
    *,
    atol: float,
    rtol: float,
    max_iter: int,
    x0: Tensor | None = None,
) -> KrylovResult:
    r"""CGLS: conjugate gradients on the normal equations :math:`A^\top A x = A^\top b`.

    Works for any square or rectangular :math:`A` given :math:`v \mapsto Av` (``matvec``) and
    :math:`v \mapsto A^\top v` (``rmatvec``). It tracks the residual :math:`r = b - Ax` of the
    original system and stops each row when :math:`\|r\|_2 \le` ``atol + rtol·‖b‖₂``; a
    least-squares solution that cannot meet it stops when :math:`A^\top r` vanishes. Starting
    from :math:`x_0 = 0`, ``k`` iterations cost exactly ``k`` products of each kind (a given
    ``x0`` costs one more product with :math:`A`, for its residual; a batch whose every
    :math:`b` is zero costs one product with :math:`A^\top`, for the width of :math:`x = 0`),
    and a row with :math:`b \ne 0` always takes a first step. Each row returns its iterate of lowest
    (recurrence) residual, which round-off on a nearly singular system can make differ from
    the last.

    Parameters
    ----------
    matvec, rmatvec
        :math:`v \mapsto Av` and :math:`v \mapsto A^\top v` on ``(B, n)`` rows.
    b
        Right-hand sides, ``(B, n)``.
    atol, rtol
        Tolerances on the residual of :math:`Ax = b`.
    max_iter
        Maximum iterations.
    x0
        Initial guess (default zero).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.linalg import cgls
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)   # not symmetric
    >>> res = cgls(lambda v: v @ A.T, lambda v: v @ A, torch.tensor([[5.0, 2.0]],
    ...            dtype=torch.float64), atol=1e-12, rtol=0, max_iter=10)
    >>> res.x.round(decimals=10)
    tensor([[1., 2.]], dtype=torch.float64)
    """
    start, r, active, tol = _start(matvec, b, x0, atol, rtol)
    # From zero, x has the width of Aᵀr, known at the first product (A may be rectangular).
    x = None if x0 is None else start
    best = None if x is None else _Best(x, row_norm(r))
    p = ss = None
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        s = rmatvec(r)
        if x is None or best is None:
            x = torch.zeros_like(s)
            best = _Best(x, row_norm(r))
        ss_new = _squared_norm(s)
        if p is None or ss is None:  # the first step (both are set together)
            p = s.clone()
        else:
            p.mul_(_safe_div(ss_new, ss)[:, None]).add_(s)
        ss = ss_new
        q = matvec(p)
        iterations += 1
        # Stopped rows get α = 0, so x and r keep their values; their p is never used again.
        alpha = torch.where(active, _safe_div(ss, _squared_norm(q)), 0.0)[:, None]
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, q, value=-1)
        residual = row_norm(r)
        best.update(x, residual)
        active = active & (residual > tol) & (ss > 0)
    if best is None:  # every b is zero: x = 0, of Aᵀb's width
        best = _Best(torch.zeros_like(rmatvec(b)), row_norm(r))
    return KrylovResult(best.x, best.residual, best.residual <= tol, iterations)


def gmres(
    matvec: MatVec,
    b: Tensor,
    *,
    atol: float | Tensor,
    rtol: float | Tensor,
    max_iter: int,
    restart: int = 20,
    x0: Tensor | None = None,
    true_residual: bool = True,
) -> KrylovResult:
    r"""Restarted GMRES for :math:`A x = b` with any (non-symmetric) square :math:`A`.

    Each cycle builds an orthonormal basis of the Krylov space
    :math:`\mathcal K_k(A, r_0) = \mathrm{span}\{r_0, A r_0, \dots, A^{k-1} r_0\}` (Arnoldi, with
    classical Gram–Schmidt applied twice) and takes the :math:`x` in :math:`x_0 + \mathcal K_k`
    with the least residual :math:`\|b - Ax\|_2`; Givens rotations give that residual after every
    product, so each row stops at the first ``k`` that meets ``atol + rtol·‖b‖₂``. A cycle ends
    after ``restart`` products or when every row has stopped; the true residual
    :math:`b - Ax` is then computed (one product), which starts the next cycle and decides
    convergence, so a row is never reported converged on the recurrence alone.

    Costs: one product with :math:`A` per iteration, one per cycle for the true residual (and one
    for the residual of a given ``x0``); memory for ``restart + 1`` basis vectors per row.

    Parameters
    ----------
    matvec
        :math:`v \mapsto Av` on ``(B, n)`` rows.
    b
        Right-hand sides, ``(B, n)``.
    atol, rtol
        Tolerances on the residual (numbers, or ``(B,)`` tensors: one per row).
    max_iter
        Maximum iterations (Arnoldi products), over all cycles.
    restart
        Iterations per cycle (the Krylov dimension before a restart).
    x0
        Initial guess (default zero).
    true_residual
        ``False`` skips the product for the true residual after the last cycle: ``residual``
        and ``converged`` then rest on the recurrence (inner solves that need no proof).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.linalg import gmres
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)   # not symmetric
    >>> res = gmres(lambda v: v @ A.T, torch.tensor([[5.0, 2.0]], dtype=torch.float64),
    ...             atol=1e-12, rtol=0, max_iter=10)
    >>> res.x.round(decimals=10), res.iterations
    (tensor([[1., 2.]], dtype=torch.float64), 2)
    """
    x, r, active, tol = _start(matvec, b, x0, atol, rtol)
    residual = row_norm(r)
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        steps = min(restart, max_iter - iterations)
        x, used, estimate = _gmres_cycle(matvec, x, r, active, tol, steps)
        iterations += used
        if not true_residual and (
            iterations >= max_iter or not bool((active & (estimate > tol)).any())
        ):
            residual = torch.where(active, estimate, residual)
            break
        r = b - matvec(x)
        residual = row_norm(r)
        active = active & (residual > tol)
    return KrylovResult(x, residual, residual <= tol, iterations)


def _gmres_cycle(
    matvec: MatVec, x: Tensor, r: Tensor, active: Tensor, tol: Tensor, steps: int
) -> tuple[Tensor, int, Tensor]:
    """One GMRES cycle of at most ``steps`` products from ``x`` (residual ``r``).

    Returns the new ``x``, the number of products made and each row's residual estimate. Rows
    not ``active`` keep ``x``.
    """
    batch, n = r.shape
    beta = row_norm(r)
    basis = r.new_zeros(batch, steps + 1, n)
    basis[:, 0] = r / torch.where(beta > 0, beta, 1.0)[:, None]
    # The Hessenberg matrix reduced to triangular form, column by column, by Givens rotations;
    # `rotations` is their product so far, applied to a new column in one batched product.
    tri = r.new_zeros(batch, steps, steps)
    rotations = torch.eye(steps + 1, dtype=r.dtype, device=r.device).repeat(batch, 1, 1)
    rhs = r.new_zeros(batch, steps + 1)
    rhs[:, 0] = beta
    # Columns each row uses: it stops extending once its residual estimate meets tol.
    used = torch.zeros(batch, dtype=torch.int64, device=r.device)
    # |rhs[used]|, kept from the step where the row stops: later rotations (from columns the
    # row no longer uses) overwrite rhs[used] in place.
    estimate = beta.clone()
    running = active.clone()
    k = 0
    for j in range(steps):
        w = matvec(basis[:, j])
        k = j + 1
        v = basis[:, :k]
        h = torch.zeros(batch, k, 1, dtype=r.dtype, device=r.device)
        for _ in range(2):  # classical Gram–Schmidt, twice: orthogonal to working precision
            c = torch.bmm(v, w[:, :, None])
            w = w - torch.bmm(v.mT, c)[:, :, 0]
            h = h + c
        norm = row_norm(w)
        basis[:, k] = w / torch.where(norm > 0, norm, 1.0)[:, None]
        column = torch.cat([h, norm[:, None, None]], dim=1)  # (B, j + 2, 1)
        if j > 0:  # the earlier rotations act on rows 0 … j; row j + 1 is new
            column = torch.bmm(rotations[:, : j + 2, : j + 2], column)
        column = column[:, :, 0]
        a, c2 = column[:, j], column[:, j + 1]
        radius = torch.hypot(a, c2)
        safe = torch.where(radius > 0, radius, 1.0)
        cos = torch.where(radius > 0, a / safe, 1.0)
        sin = torch.where(radius > 0, c2 / safe, 0.0)
        upper, lower = rotations[:, j].clone(), rotations[:, j + 1].clone()
        rotations[:, j] = cos[:, None] * upper + sin[:, None] * lower
        rotations[:, j + 1] = cos[:, None] * lower - sin[:, None] * upper
        tri[:, :j, j] = column[:, :j]
        tri[:, j, j] = radius
        rhs[:, j + 1] = -sin * rhs[:, j]
        rhs[:, j] = cos * rhs[:, j]
        # A zero radius (A singular on the Krylov space) leaves the column out and stops the row.
        extend = running & (radius > 0)
        used = used + extend
        estimate = torch.where(extend, rhs[:, j + 1].abs(), estimate)
        running = extend & (estimate > tol)
        if not bool(running.any()):
            break
    # Each row solves on its own first `used` columns: the others get an identity block.
    mine = torch.arange(k, device=r.device)[None, :] < used[:, None]  # (B, k)
    eye = torch.eye(k, dtype=r.dtype, device=r.device)
    square = mine[:, :, None] & mine[:, None, :]
    tri_k = torch.where(square, tri[:, :k, :k], eye)
    y = torch.linalg.solve_triangular(
        tri_k, torch.where(mine, rhs[:, :k], 0.0)[:, :, None], upper=True
    )[:, :, 0]
    y = torch.where(mine & torch.isfinite(y), y, 0.0)
    return x + torch.bmm(y[:, None], basis[:, :k])[:, 0], k, estimate


def bicgstab(
    matvec: MatVec,
    b: Tensor,
    *,
    atol: float | Tensor,
    rtol: float | Tensor,
    max_iter: int,
    x0: Tensor | None = None,
) -> KrylovResult:
    r"""BiCGStab (van der Vorst) for :math:`A x = b` with any square :math:`A`.

    Two products with :math:`A` per iteration, short recurrences (memory for six vectors per
    row, whatever the iteration count). A row stops when its recurrence residual meets
    ``atol + rtol·‖b‖₂`` (also half-way through an iteration); the true residual
    :math:`b - Ax` is then computed (one product) and decides convergence: a row whose true
    residual misses the tolerance, or whose recurrence breaks down (a zero inner product),
    restarts from its current ``x`` while iterations remain. An inner product below
    :math:`100\,\varepsilon` times the norms of its factors counts as a breakdown, and each
    row keeps its best iterate by true residual, so that round-off near a breakdown never
    makes the answer worse than the start.

    Parameters
    ----------
    matvec
        :math:`v \mapsto Av` on ``(B, n)`` rows.
    b
        Right-hand sides, ``(B, n)``.
    atol, rtol
        Tolerances on the residual (numbers, or ``(B,)`` tensors).
    max_iter
        Maximum iterations (two products each).
    x0
        Initial guess (default zero).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.linalg import bicgstab
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    >>> res = bicgstab(lambda v: v @ A.T, torch.tensor([[5.0, 2.0]], dtype=torch.float64),
    ...                atol=1e-12, rtol=0, max_iter=10)
    >>> res.x.round(decimals=10), bool(res.converged)
    (tensor([[1., 2.]], dtype=torch.float64), True)
    """
    x, r, active, tol = _start(matvec, b, x0, atol, rtol)
    residual = row_norm(r)
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        trial, used = _bicgstab_run(matvec, x, r, active, tol, max_iter - iterations)
        iterations += used
        r_trial = b - matvec(trial)
        residual_trial = row_norm(r_trial)
        # Keep each row's best iterate by its true residual: a run that loses accuracy to
        # round-off near a breakdown must not make the answer worse than where it started.
        better = active & (residual_trial < residual)
        x = torch.where(better[:, None], trial, x)
        r = torch.where(better[:, None], r_trial, r)
        residual = torch.where(better, residual_trial, residual)
        active = active & (residual > tol)
    return KrylovResult(x, residual, residual <= tol, iterations)


def _bicgstab_run(
    matvec: MatVec, x: Tensor, r: Tensor, active: Tensor, tol: Tensor, steps: int
) -> tuple[Tensor, int]:
    """BiCGStab iterations from ``x`` (residual ``r``) until every active row has stopped on its
    recurrence residual or broken down, or ``steps`` iterations. Returns ``x`` and the count."""
    x, r = x.clone(), r.clone()
    shadow = r.clone()
    shadow_norm = row_norm(shadow)
    p = torch.zeros_like(r)
    v = torch.zeros_like(r)
    one = torch.ones(r.shape[0], dtype=r.dtype, device=r.device)
    rho, alpha, omega = one, one, one
    # An inner product this small next to its factors is round-off, a breakdown: dividing by
    # it would amplify the round-off without bound.
    small = 100 * torch.finfo(r.dtype).eps
    running = active.clone()
    done = 0
    while done < steps and bool(running.any()):
        rho_new = _dot(shadow, r)
        beta = _ratio(rho_new, rho) * _ratio(alpha, omega)
        p = r + beta[:, None] * (p - omega[:, None] * v)
        v = matvec(p)
        done += 1
        sv = _dot(shadow, v)
        ok = (
            running
            & (rho_new.abs() > small * shadow_norm * row_norm(r))
            & (sv.abs() > small * shadow_norm * row_norm(v))
            & torch.isfinite(sv)
        )
        alpha = torch.where(ok, rho_new / torch.where(ok, sv, 1.0), 0.0)
        x = x + alpha[:, None] * p
        s = r - alpha[:, None] * v
        half = ok & (row_norm(s) <= tol)  # converged after the first half of the iteration
        t = matvec(s)
        tt = _squared_norm(t)
        go = ok & ~half & (tt > 0)
        omega = torch.where(go, _safe_div(_dot(t, s), tt), 0.0)
        x = x + omega[:, None] * s
        r = torch.where(ok[:, None], s - omega[:, None] * t, r)
        rho = rho_new
        # A breakdown (ρ = 0, r̂ᵀv = 0, ω = 0) stops the row here; the caller restarts it.
        running = go & (omega != 0) & (row_norm(r) > tol)
    return x, done
