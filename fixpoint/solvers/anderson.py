"""Anderson acceleration (type II), in the difference form of Walker & Ni (2011)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fixpoint._validation import count, real, store
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

    Parameters
    ----------
    gram
        :math:`\Delta G^\top \Delta G`, shape ``(B, m, m)``.
    rhs
        :math:`\Delta G^\top g`, shape ``(B, m)``.
    lam
        Relative Tikhonov regularisation :math:`\lambda \ge 0`.

    Examples
    --------
    >>> import torch
    >>> from fixpoint.solvers.anderson import mixing_coefficients
    >>> gram = torch.tensor([[[4.0, 0.0], [0.0, 1.0]]])
    >>> mixing_coefficients(gram, torch.tensor([[2.0, 3.0]]), lam=0.0)
    tensor([[0.5000, 3.0000]])
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
    """History of differences ``ΔF``, ``ΔG`` (circular, ``(B, m, n)``) and the Gram matrix of ΔG.

    ``ΔZ = ΔF − ΔG`` is not stored: with ``beta = 1`` the update needs ΔF alone.
    """

    df: Tensor
    dg: Tensor
    gram: Tensor
    f_prev: Tensor
    g_prev: Tensor
    count: int = 0


@dataclass(frozen=True)
class Anderson(Solver[AndersonState]):
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
        store(
            self,
            m=count("Anderson", "m", self.m, 0),
            beta=real("Anderson", "beta", self.beta, low=0, low_open=True, high=2),
            lam=real("Anderson", "lam", self.lam, low=0),
        )

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> AndersonState:
        batch, n = z.shape
        work = torch.promote_types(z.dtype, torch.float32)  # history and algebra in ≥ float32
        return AndersonState(
            df=z.new_zeros(batch, self.m, n, dtype=work),
            dg=z.new_zeros(batch, self.m, n, dtype=work),
            gram=z.new_zeros(batch, self.m, self.m, dtype=work),
            f_prev=fz.to(work),
            g_prev=(fz - z).to(work),
        )

    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: AndersonState
    ) -> tuple[Tensor, Tensor, AndersonState]:
        dtype, work = z.dtype, state.gram.dtype
        z, fz, g = z.to(work), fz.to(work), g.to(work)
        z_next = fz if self.beta == 1 else z + self.beta * g
        if state.count > 0 and self.m > 0:
            j = (state.count - 1) % self.m
            filled = min(state.count, self.m)
            torch.sub(g, state.g_prev, out=state.dg[:, j])
            torch.sub(fz, state.f_prev, out=state.df[:, j])
            dg, df = state.dg[:, :filled], state.df[:, :filled]
            # One pass over the history gives the new Gram row and the right-hand side ΔGᵀg.
            both = torch.bmm(torch.stack([state.dg[:, j], g], dim=1), dg.mT)
            state.gram[:, j, :filled] = both[:, 0]
            state.gram[:, :filled, j] = both[:, 0]
            gamma = mixing_coefficients(state.gram[:, :filled, :filled], both[:, 1], self.lam)
            gamma = gamma[:, None, :]
            # z + βg − (ΔZ + βΔG)γ with ΔZ = ΔF − ΔG.
            z_next = torch.baddbmm(z_next[:, None], gamma, df, alpha=-1)[:, 0]
            if self.beta != 1:
                z_next = torch.baddbmm(z_next[:, None], gamma, dg, alpha=1 - self.beta)[:, 0]
        state.f_prev, state.g_prev = fz, g
        state.count += 1
        z_next = z_next.to(dtype)
        return z_next, fn(z_next), state
