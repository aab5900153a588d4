"""Limited-memory "good" Broyden method on the residual ``g(z) = f(z) − z``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fixpoint._validation import count, flag, store
from fixpoint.solvers.base import FlatMap, Solver, row_norm

__all__ = ["Broyden", "BroydenState", "apply_inverse", "apply_inverse_transpose", "broyden_update"]


def apply_inverse(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
    r"""Apply :math:`H = -I + \sum_i u_i v_i^\top` to ``x``.

    Parameters
    ----------
    u, v
        The rank-one factors, ``(B, m, n)`` each.
    x
        The vectors, ``(B, n)``.

    Examples
    --------
    >>> import torch
    >>> from fixpoint.solvers.broyden import apply_inverse
    >>> u, v = torch.ones(1, 1, 2), torch.tensor([[[1.0, 0.0]]])
    >>> apply_inverse(u, v, torch.tensor([[3.0, 5.0]]))      # −x + u (vᵀx)
    tensor([[ 0., -2.]])
    """
    coefficients = torch.bmm(x[:, None], v.mT)  # (B, 1, m): v_iᵀx
    return torch.baddbmm(x[:, None], coefficients, u, beta=-1)[:, 0]


def apply_inverse_transpose(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
    r"""Apply :math:`H^\top = -I + \sum_i v_i u_i^\top` to ``x`` (shapes as :func:`apply_inverse`).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.solvers.broyden import apply_inverse_transpose
    >>> u, v = torch.ones(1, 1, 2), torch.tensor([[[1.0, 0.0]]])
    >>> apply_inverse_transpose(u, v, torch.tensor([[3.0, 5.0]]))   # −x + v (uᵀx)
    tensor([[ 5., -5.]])
    """
    coefficients = torch.bmm(x[:, None], u.mT)
    return torch.baddbmm(x[:, None], coefficients, v, beta=-1)[:, 0]


def broyden_update(u: Tensor, v: Tensor, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""The rank-one term of the good Broyden update of the inverse Jacobian :math:`H`.

    .. math:: H_+ = H + \frac{(s - H y)\, s^\top H}{s^\top H y},

    for the step :math:`s = z_+ - z` and residual change :math:`y = g_+ - g`, so that the secant
    condition :math:`H_+ y = s` holds. Returns ``(u_new, v_new)`` with
    :math:`H_+ = H + u_{new} v_{new}^\top`. Where :math:`|s^\top H y|` is tiny relative to
    :math:`\|s\|\|Hy\|` (or anything is not finite) the term is zero: that sample skips the update.

    Parameters
    ----------
    u, v
        The current factors of :math:`H`, ``(B, m, n)``.
    s, y
        Step and residual change, ``(B, n)``.

    Examples
    --------
    >>> import torch
    >>> from fixpoint.solvers.broyden import apply_inverse, broyden_update
    >>> u = v = torch.zeros(1, 0, 2)
    >>> s, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[-0.5, 0.0]])
    >>> u1, v1 = broyden_update(u, v, s, y)
    >>> apply_inverse(u1[:, None], v1[:, None], y)                 # the secant condition H₊y = s
    tensor([[1., 0.]])
    """
    hy = apply_inverse(u, v, y)
    denom = (s * hy).sum(1)
    eps = torch.finfo(s.dtype).eps ** 0.5
    ok = (denom.abs() > eps * row_norm(s) * row_norm(hy)) & torch.isfinite(denom)
    safe = torch.where(ok, denom, 1.0)
    u_new = (s - hy) / safe[:, None]
    v_new = apply_inverse_transpose(u, v, s)
    keep = (
        ok[:, None]
        & torch.isfinite(u_new).all(1, keepdim=True)
        & torch.isfinite(v_new).all(1, keepdim=True)
    )
    return torch.where(keep, u_new, 0.0), torch.where(keep, v_new, 0.0)


@dataclass
class BroydenState:
    """The low-rank factors of the inverse Jacobian (circular, ``(B, memory, n)``)."""

    u: Tensor
    v: Tensor
    z_prev: Tensor
    g_prev: Tensor
    count: int = 0


@dataclass(frozen=True)
class Broyden(Solver):
    r"""Limited-memory good Broyden method for the root of :math:`g(z) = f(z) - z`.

    Keeps :math:`H \approx (\partial g/\partial z)^{-1}` as :math:`-I` plus at most ``memory``
    rank-one terms (the oldest is overwritten when full) and steps :math:`z_+ = z - \alpha H g(z)`.
    The first step, with :math:`H = -I`, is a Picard step.

    Parameters
    ----------
    memory
        Number of rank-one updates kept, ≥ 1.
    line_search
        Backtrack :math:`\alpha = 1, 1/2, 1/4, \dots` until
        :math:`\|g(z_+)\| \le (1 - 10^{-4}\alpha)\|g(z)\|` (each trial costs one evaluation of
        ``f``); without it :math:`\alpha = 1`.
    max_backtracks
        Most halvings per step; if none is accepted, the trial with the lowest residual is taken.
    atol, rtol, max_iter, divergence
        See :class:`~fixpoint.Solver`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(lambda z: torch.cos(z) / 2 + 0.1 * z, torch.zeros(4, dtype=torch.float64),
    ...                solver=fp.Broyden(atol=1e-12, rtol=0))
    >>> bool(sol.converged), int(sol.iterations) < 10
    (True, True)
    """

    memory: int = 20
    line_search: bool = False
    max_backtracks: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        store(
            self,
            memory=count("Broyden", "memory", self.memory, 1),
            line_search=flag("Broyden", "line_search", self.line_search),
            max_backtracks=count("Broyden", "max_backtracks", self.max_backtracks, 1),
        )

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> BroydenState:
        batch, n = z.shape
        work = torch.promote_types(z.dtype, torch.float32)  # low-rank factors in ≥ float32
        return BroydenState(
            u=z.new_zeros(batch, self.memory, n, dtype=work),
            v=z.new_zeros(batch, self.memory, n, dtype=work),
            z_prev=z.to(work),
            g_prev=(fz - z).to(work),
        )

    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: BroydenState
    ) -> tuple[Tensor, Tensor, BroydenState]:
        dtype = z.dtype
        z, g = z.to(state.u.dtype), g.to(state.u.dtype)
        if state.count > 0:
            terms = min(state.count - 1, self.memory)  # rank-one terms of the current H
            j = (state.count - 1) % self.memory
            u_new, v_new = broyden_update(
                state.u[:, :terms], state.v[:, :terms], z - state.z_prev, g - state.g_prev
            )
            state.u[:, j], state.v[:, j] = u_new, v_new
        state.z_prev, state.g_prev = z, g
        state.count += 1
        terms = min(state.count - 1, self.memory)
        direction = -apply_inverse(state.u[:, :terms], state.v[:, :terms], g)
        z_next = (z + direction).to(dtype)
        fz_next = fn(z_next)
        if self.line_search:
            z_next, fz_next = self._backtrack(fn, z, g, direction, z_next, fz_next)
        return z_next, fz_next, state

    def _backtrack(
        self, fn: FlatMap, z: Tensor, g: Tensor, direction: Tensor, z_next: Tensor, fz_next: Tensor
    ) -> tuple[Tensor, Tensor]:
        r0 = row_norm(g)
        r_best = row_norm(fz_next - z_next)
        r_best = torch.where(torch.isfinite(r_best), r_best, torch.inf)
        alpha = torch.ones_like(r0)
        # Samples that have stopped (converged or not finite) need no backtracking.
        done = ~torch.isfinite(r0) | (r0 <= self.atol + self.rtol * row_norm(z))
        accepted = done | (r_best <= (1 - 1e-4) * r0)
        for _ in range(self.max_backtracks):
            if bool(accepted.all()):
                break
            alpha = torch.where(accepted, alpha, alpha / 2)
            z_try = (z + alpha[:, None] * direction).to(z_next.dtype)
            fz_try = fn(z_try)
            r_try = row_norm(fz_try - z_try)
            better = ~accepted & (r_try < r_best)
            z_next = torch.where(better[:, None], z_try, z_next)
            fz_next = torch.where(better[:, None], fz_try, fz_next)
            r_best = torch.where(better, r_try, r_best)
            accepted = accepted | (r_try <= (1 - 1e-4 * alpha) * r0)
        return z_next, fz_next
