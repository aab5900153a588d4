"""Anderson acceleration (type II), in the difference form of Walker & Ni (2011)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fixpoint.solvers.base import FlatMap, Solver

__all__ = ["Anderson", "AndersonState", "mixing_coefficients"]


def mixing_coefficients(gram: Tensor, rhs: Tensor, lam: float) -> Tensor:
    r"""Solve the regularised Anderson least-squares problem for each sample.

    .. math:: \gamma = \arg\min_\gamma \|g - \Delta G\,\gamma\|_2^2
              + \lambda\,\bar d\,\|\gamma\|_2^2,
       \qquad \bar d = \operatorname{mean}\operatorname{diag}(\Delta G^\top \Delta G),

    from the Gram matrix ``gram`` = ΔGᵀΔG, shape ``(B, m, m)``, and ``rhs`` = ΔGᵀg, shape
    ``(B, m)``. The regularisation is relative to the scale of ΔG, so it does not swamp the
    problem as the residuals shrink. Where the system is singular or the solution is not finite,
    the coefficients of that sample are zero (the step becomes a damped Picard step).
    """
    m = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    system = gram + (lam * scale)[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(system)
    gamma = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    ok = (info == 0) & torch.isfinite(gamma).all(-1)
    return torch.where(ok[:, None], gamma, 0.0)


@dataclass
class AndersonState:
    """History of differences ``ΔZ``, ``ΔG`` (circular, ``(B, m, n)``) and their Gram matrix."""

    dz: Tensor
    dg: Tensor
    gram: Tensor
    z_prev: Tensor
    g_prev: Tensor
    count: int = 0


@dataclass(frozen=True)
class Anderson(Solver):
    r"""Anderson acceleration (type II) with history ``m``, mixing ``beta`` and regularisation.

    With residuals :math:`g_k = f(z_k) - z_k` and the last ``m`` differences
    :math:`\Delta Z = [z_{i+1} - z_i]`, :math:`\Delta G = [g_{i+1} - g_i]`:

    .. math:: z_{k+1} = z_k + \beta g_k - (\Delta Z + \beta \Delta G)\,\gamma_k,

    where :math:`\gamma_k` solves the regularised least-squares problem of
    :func:`mixing_coefficients`. With ``m = 0`` this is Picard with damping ``beta``.

    Parameters
    ----------
    m
        History size (number of stored differences), ≥ 0.
    beta
        Mixing parameter, ``0 < beta ≤ 2``: 1 mixes in the full ``f(z)``, below 1 damps, above 1
        over-relaxes.
    lam
        Tikhonov regularisation, relative to the mean squared norm of the ΔG columns.
    atol, rtol, max_iter, divergence
        See :class:`~fixpoint.Solver`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> A = torch.tensor([[0.5, 0.4], [-0.3, 0.6]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> sol = fp.solve(lambda z: A @ z + b, torch.zeros(2, dtype=torch.float64),
    ...                solver=fp.Anderson(m=3, atol=1e-12, rtol=0))
    >>> torch.allclose(sol.value, torch.linalg.solve(torch.eye(2, dtype=A.dtype) - A, b))
    True
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 0:
            raise ValueError(f"Anderson: m must be an integer ≥ 0, got {self.m!r}")
        if not (0 < self.beta <= 2):
            raise ValueError(f"Anderson: beta must be in (0, 2], got {self.beta!r}")
        if not self.lam >= 0:
            raise ValueError(f"Anderson: lam must be ≥ 0, got {self.lam!r}")

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> AndersonState:
        batch, n = z.shape
        work = torch.promote_types(z.dtype, torch.float32)
        return AndersonState(
            dz=z.new_zeros(batch, self.m, n),
            dg=z.new_zeros(batch, self.m, n),
            gram=z.new_zeros(batch, self.m, self.m, dtype=work),
            z_prev=z,
            g_prev=fz - z,
        )

    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, state: AndersonState
    ) -> tuple[Tensor, Tensor, AndersonState]:
        g = fz - z
        z_next = z + self.beta * g if self.beta != 1 else fz
        if state.count > 0 and self.m > 0:
            j = (state.count - 1) % self.m
            filled = min(state.count, self.m)
            state.dz[:, j] = z - state.z_prev
            state.dg[:, j] = g - state.g_prev
            dg, dz = state.dg[:, :filled], state.dz[:, :filled]
            row = torch.bmm(dg, state.dg[:, j, :, None])[..., 0].to(state.gram.dtype)
            state.gram[:, j, :filled] = row
            state.gram[:, :filled, j] = row
            rhs = torch.bmm(dg, g[..., None])[..., 0].to(state.gram.dtype)
            gamma = mixing_coefficients(state.gram[:, :filled, :filled], rhs, self.lam)
            gamma = gamma.to(z.dtype)[:, None, :]
            z_next = z_next - torch.bmm(gamma, dz)[:, 0] - self.beta * torch.bmm(gamma, dg)[:, 0]
        state.z_prev, state.g_prev = z, g
        state.count += 1
        return z_next, fn(z_next), state
