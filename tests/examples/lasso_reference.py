"""Independent answers for the bilevel lasso example (``examples.bilevel_lasso``).

- :func:`closed_form`: the lasso solution on a sign pattern, its λ-derivative and the
  hypergradient by dense linear algebra only, the pattern certified by the optimality (KKT)
  conditions, with the segment of the path around λ on which it stays optimal;
- :func:`finite_difference`: central differences of V, each inner problem solved tightly;
- :func:`grid_search`: the best λ of a grid, as a baseline for the example's gradient descent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from examples.bilevel_lasso import Problem, solve_lasso, validation_loss


class NotGeneric(ValueError):
    """The sign pattern does not certify a lasso solution with a strict margin at this λ."""


@dataclass(frozen=True)
class ClosedForm:
    """z*(λ) = (A_SᵀA_S)⁻¹(A_Sᵀy − λs) on the support (0 elsewhere), dz = dz*/dλ =
    −(A_SᵀA_S)⁻¹s on the support, the hypergradient dV/dλ = (A_val z* − y_val)ᵀ A_val dz, and the
    segment (λ_lo, λ_hi) between the kinks of the path on either side of λ, where the sign
    pattern stays optimal (z* affine and V quadratic in λ)."""

    z: Tensor
    dz: Tensor
    hypergradient: float
    segment: tuple[float, float]


def closed_form(
    a_train: Tensor, y_train: Tensor, a_val: Tensor, y_val: Tensor, lam: float, signs: Tensor
) -> ClosedForm:
    """The closed-form lasso hypergradient for the sign pattern ``signs`` (values in {−1, 0, 1}).

    The pattern is a guess (e.g. ``torch.sign`` of a numerical solution); it is certified by the
    optimality conditions: sign(z*_S) = s, and |A_jᵀ(y − A z*)| < λ for j off the support. A
    design with full column rank makes the lasso strictly convex, so a certified z* is the unique
    minimiser. Raises :class:`NotGeneric` if the conditions fail or hold only with equality.
    """
    support = signs != 0
    s = signs[support].to(a_train.dtype)
    a_s = a_train[:, support]
    gram = a_s.T @ a_s
    z_s = torch.linalg.solve(gram, a_s.T @ y_train - lam * s)
    dz_s = -torch.linalg.solve(gram, s)
    z = torch.zeros(a_train.shape[1], dtype=a_train.dtype)
    dz = torch.zeros_like(z)
    z[support], dz[support] = z_s, dz_s

    # Along λ' = λ + δ: z_S(λ') = z_S + δ dz_S must keep its signs, and the correlations
    # c(λ') = Aᵀ(y − A z(λ')) = c + δ e with e = −Aᵀ A dz must stay in (−λ', λ') off the support.
    c = a_train.T @ (y_train - a_train @ z)
    e = -(a_train.T @ (a_train @ dz))
    if not bool((torch.sign(z_s) == s).all()) or bool((c[~support].abs() >= lam).any()):
        raise NotGeneric(f"the sign pattern is not optimal with a strict margin at λ = {lam:.6g}")
    lo, hi = -lam, math.inf  # λ' > 0
    bounds = [(s * z_s, s * dz_s)]  # s·z_S + δ s·dz_S > 0
    off = ~support
    bounds += [(lam - c[off], 1 - e[off]), (lam + c[off], 1 + e[off])]  # λ' ∓ c_j(λ') > 0
    for value, slope in bounds:
        # value + δ·slope > 0, value > 0: a lower bound on δ where slope > 0, an upper one
        # where slope < 0.
        ratio = -value / slope
        if bool((slope > 0).any()):
            lo = max(lo, ratio[slope > 0].max().item())
        if bool((slope < 0).any()):
            hi = min(hi, ratio[slope < 0].min().item())
    hypergradient = ((a_val @ z - y_val) @ (a_val @ dz)).item()
    return ClosedForm(z, dz, hypergradient, (lam + lo, lam + hi))


def closed_form_of(problem: Problem, lam: float, z: Tensor) -> ClosedForm:
    """:func:`closed_form` of ``problem`` on the sign pattern of ``z``."""
    return closed_form(
        problem.a_train, problem.y_train, problem.a_val, problem.y_val, lam, torch.sign(z)
    )


@dataclass(frozen=True)
class FiniteDifference:
    """Central difference (V(λ + h) − V(λ − h)) / 2h and whether the support is the same at
    λ − h, λ and λ + h (if not, the stencil straddles a kink and the difference is unreliable)."""

    value: float
    step: float
    same_support: bool


def finite_difference(problem: Problem, lam: float, rel_step: float = 1e-4) -> FiniteDifference:
    """dV/dλ by central differences of V with h = ``rel_step``·λ, each V from a tight solve.

    V is quadratic in λ between kinks, so h is limited by the distance to the nearest kink, not
    by truncation error.
    """
    step = rel_step * lam
    z = solve_lasso(problem, lam)
    plus = solve_lasso(problem, lam + step, z)
    minus = solve_lasso(problem, lam - step, z)
    value = (validation_loss(problem, plus) - validation_loss(problem, minus)).item() / (2 * step)
    signs = torch.sign(z)
    same = bool(torch.equal(torch.sign(plus), signs) and torch.equal(torch.sign(minus), signs))
    return FiniteDifference(value, step, same)


def grid_search(problem: Problem, lams: Tensor) -> tuple[float, float]:
    """The best (λ, V(λ)) on a grid, solved from the largest λ down with warm starts."""
    z = None
    best = (math.nan, math.inf)
    for lam in sorted(lams.tolist(), reverse=True):
        z = solve_lasso(problem, lam, z)
        loss = validation_loss(problem, z).item()
        if loss < best[1]:
            best = (lam, loss)
    return best
