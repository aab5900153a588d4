r"""Bilevel optimisation: tune the lasso's regularisation weight by differentiating through ISTA.

The inner problem is the lasso on a training set,

    z*(λ) = argmin_z ½‖A z − y‖² + λ‖z‖₁,

whose minimisers are the fixed points of the ISTA (proximal-gradient) map
``T(z, y, λ) = S_τλ(z − τAᵀ(Az − y))`` with ``S`` the soft threshold and τ = 1/‖A‖₂²
(``fp.operators.lasso``). The outer problem is the validation loss

    V(λ) = ½‖A_val z*(λ) − y_val‖².

``fp.fixed_point`` returns z*(λ) with a gradient: at z* = T(z*, λ) the implicit function theorem
gives dz*/dλ = (I − J)⁻¹ ∂T/∂λ, J = ∂T/∂z, so dV/dλ = wᵀ ∂T/∂λ with w = (I − Jᵀ)⁻¹ ∂V/∂z*,
and the estimator (``fp.Implicit``, ``fp.Exact``, ``fp.JFB``, ``fp.Neumann``) decides how w is
computed. The training design has more rows than columns (full column rank), so T is a
contraction with factor 1 − τσ_min(A)² and no elastic-net term is needed.

The hypergradient dV/dλ is checked three ways at a few λ:

1. the library: ``fp.fixed_point`` with ``fp.Implicit`` (tight Anderson on the adjoint equation)
   and ``fp.Exact``;
2. central finite differences of V, each V computed with a tightly solved ``fp.solve``;
3. the closed form. On the support S of z* (z*_S ≠ 0, signs s), the optimality conditions read
   A_Sᵀ(A_S z*_S − y) + λs = 0, so z*_S = (A_SᵀA_S)⁻¹(A_Sᵀy − λs) and, while S and s do not
   change, dz*_S/dλ = −(A_SᵀA_S)⁻¹ s and dz*/dλ = 0 off S. Hence
   dV/dλ = (A_val z* − y_val)ᵀ A_val dz*/dλ. This uses only dense linear algebra, and the
   optimality (KKT) conditions certify the solution: |A_jᵀ(y − A z*)| < λ off S and
   sign(z*_S) = s.

The soft threshold is not differentiable where |v_j| equals the threshold τλ, i.e. where a
coefficient is about to enter or leave the support. For generic λ this does not happen: z*(λ) is
piecewise affine in λ, V is piecewise quadratic, and the checks below report the segment of
the path around λ (the interval between the nearest kinks, on which the support stays fixed).
Inside it central differences are exact up to rounding.

The JFB (w = g = ∂V/∂z*) and Neumann-k estimates of the hypergradient are compared with the
exact one. For ISTA, J = D(I − τAᵀA) with D the 0/1 diagonal of the support and ∂T/∂λ = −τs on
the support, so with P = I − τA_SᵀA_S

    exact: −τ sᵀ (I − P)⁻¹ g_S = −sᵀ (A_SᵀA_S)⁻¹ g_S,   Neumann-k: −τ sᵀ Σ_{i≤k} Pⁱ g_S,
    JFB:   −τ sᵀ g_S.

Neumann-k converges like ‖P‖ᵏ. JFB is about τc times the exact value when A_SᵀA_S ≈ cI, and
in general need not even have the right sign.

Then λ is tuned by gradient descent on log λ (so that λ stays positive; the step is
lr·λ·dV/dλ), warm-starting each inner solve from the last solution, and the result is compared
with a grid search over λ. V is not convex in λ, so descent finds a local minimum.

    python examples/bilevel_lasso.py                     # default problem, 40 descent steps
    python examples/bilevel_lasso.py --quick             # a smaller problem, about a second
    python examples/bilevel_lasso.py --steps 80 --seed 3 --estimator neumann-20
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import fixpoint as fp

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional: without it the loop prints plain lines
    tqdm = None

DTYPE = torch.float64

QUICK_SIZES = {"n": 20, "m_train": 60, "m_val": 60, "nonzeros": 4}
"""Problem sizes of ``--quick`` (keyword arguments of :func:`make_problem`)."""

TIGHT = fp.Anderson(m=5, atol=1e-13, rtol=0.0, max_iter=2000)
"""Forward solver for the checks (ISTA's residual reaches ~1e-15 in float64)."""


# ---------------------------------------------------------------------------------------------
# The problem
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A sparse regression problem with a training and a validation split.

    Attributes
    ----------
    a_train, y_train
        Training design ``(m, n)`` and targets ``(m,)``.
    a_val, y_val
        Validation design ``(m_val, n)`` and targets ``(m_val,)``.
    z_true
        The sparse ground truth ``(n,)``.
    ista
        The ISTA map ``T(z, y, λ)`` of the training lasso (``fp.operators.lasso(a_train)``).
    """

    a_train: Tensor
    y_train: Tensor
    a_val: Tensor
    y_val: Tensor
    z_true: Tensor
    ista: fp.operators.ProximalGradient

    @property
    def n(self) -> int:
        return self.a_train.shape[1]

    @property
    def lam_max(self) -> float:
        """The smallest λ for which z*(λ) = 0: ‖A_trainᵀ y_train‖_∞."""
        return (self.a_train.T @ self.y_train).abs().max().item()


def make_problem(
    seed: int = 0,
    *,
    n: int = 50,
    m_train: int = 200,
    m_val: int = 200,
    nonzeros: int = 5,
    noise: float = 0.3,
) -> Problem:
    """Draw a seeded sparse regression problem.

    Designs have i.i.d. N(0, 1/m) entries (columns of about unit norm), the ground truth has
    ``nonzeros`` entries of magnitude in [1, 2] with random signs, and targets carry Gaussian
    noise of standard deviation ``noise``.

    Parameters
    ----------
    seed
        Seed of the generator that draws everything.
    n, m_train, m_val
        Number of features and of training and validation samples (``m_train > n`` keeps the
        ISTA map a contraction).
    nonzeros
        Size of the ground truth's support.
    noise
        Standard deviation of the noise on the targets.

    Returns
    -------
    Problem
    """
    if m_train <= n:
        raise ValueError(f"m_train must exceed n for a contractive ISTA map, got {m_train} ≤ {n}")
    gen = torch.Generator().manual_seed(seed)
    a_train = torch.randn(m_train, n, generator=gen, dtype=DTYPE) / math.sqrt(m_train)
    a_val = torch.randn(m_val, n, generator=gen, dtype=DTYPE) / math.sqrt(m_val)
    z_true = torch.zeros(n, dtype=DTYPE)
    support = torch.randperm(n, generator=gen)[:nonzeros]
    signs = torch.randint(0, 2, (nonzeros,), generator=gen).to(DTYPE) * 2 - 1
    z_true[support] = signs * (1 + torch.rand(nonzeros, generator=gen, dtype=DTYPE))
    y_train = a_train @ z_true + noise * torch.randn(m_train, generator=gen, dtype=DTYPE)
    y_val = a_val @ z_true + noise * torch.randn(m_val, generator=gen, dtype=DTYPE)
    return Problem(a_train, y_train, a_val, y_val, z_true, fp.operators.lasso(a_train))


def validation_loss(problem: Problem, z: Tensor) -> Tensor:
    """V = ½‖A_val z − y_val‖²."""
    return 0.5 * (problem.a_val @ z - problem.y_val).square().sum()


# ---------------------------------------------------------------------------------------------
# Solving and differentiating with the library
# ---------------------------------------------------------------------------------------------


def solve_lasso(
    problem: Problem, lam: float, z0: Tensor | None = None, solver: fp.Solver = TIGHT
) -> Tensor:
    """The lasso solution z*(λ) by ``fp.solve`` on the ISTA map (no gradient).

    Raises
    ------
    RuntimeError
        If the solver does not converge.
    """
    z0 = torch.zeros(problem.n, dtype=DTYPE) if z0 is None else z0
    sol = fp.solve(problem.ista, z0, problem.y_train, lam, solver=solver)
    if not bool(sol.converged):
        raise RuntimeError(f"ISTA at λ = {lam:.6g} did not converge: {sol}")
    return sol.value


def loss_and_solution(
    problem: Problem,
    lam: Tensor,
    estimator: fp.Estimator,
    z0: Tensor | None = None,
    solver: fp.Solver = TIGHT,
) -> tuple[Tensor, Tensor]:
    """V(λ) and z*(λ), differentiable with respect to ``lam`` through ``fp.fixed_point``."""
    z0 = torch.zeros(problem.n, dtype=DTYPE) if z0 is None else z0
    z, sol = fp.fixed_point(
        problem.ista,
        z0,
        problem.y_train,
        lam,
        solver=solver,
        estimator=estimator,
        return_solution=True,
    )
    if not bool(sol.converged):
        raise RuntimeError(f"ISTA at λ = {lam.item():.6g} did not converge: {sol}")
    return validation_loss(problem, z), z


def library_hypergradient(
    problem: Problem, lam: float, estimator: fp.Estimator, solver: fp.Solver = TIGHT
) -> float:
    """dV/dλ by ``fp.fixed_point`` with ``estimator``."""
    lam_t = torch.tensor(lam, dtype=DTYPE, requires_grad=True)
    loss, _ = loss_and_solution(problem, lam_t, estimator, solver=solver)
    (grad,) = torch.autograd.grad(loss, lam_t)
    return grad.item()


@dataclass(frozen=True)
class FiniteDifference:
    """Central difference (V(λ + h) − V(λ − h)) / 2h and whether the support is the same at
    λ − h, λ and λ + h (if not, the stencil straddles a kink and the difference is unreliable)."""

    value: float
    step: float
    same_support: bool


def finite_difference_hypergradient(
    problem: Problem, lam: float, rel_step: float = 1e-4, solver: fp.Solver = TIGHT
) -> FiniteDifference:
    """dV/dλ by central differences of V, each inner problem solved tightly by ``fp.solve``.

    Parameters
    ----------
    problem
        The problem.
    lam
        Where to differentiate.
    rel_step
        h = ``rel_step``·λ. V is quadratic in λ between kinks, so h is limited by the distance to
        the nearest kink, not by truncation error.
    solver
        Forward solver of the three inner problems.
    """
    step = rel_step * lam
    z = solve_lasso(problem, lam, solver=solver)
    plus = solve_lasso(problem, lam + step, z, solver)
    minus = solve_lasso(problem, lam - step, z, solver)
    value = (validation_loss(problem, plus) - validation_loss(problem, minus)).item() / (2 * step)
    signs = torch.sign(z)
    same = bool(torch.equal(torch.sign(plus), signs) and torch.equal(torch.sign(minus), signs))
    return FiniteDifference(value, step, same)


# ---------------------------------------------------------------------------------------------
# The closed form (dense linear algebra only: no fixpoint)
# ---------------------------------------------------------------------------------------------


class NotGeneric(ValueError):
    """The sign pattern does not certify a lasso solution with a strict margin at this λ."""


@dataclass(frozen=True)
class ClosedForm:
    """The lasso solution on a given sign pattern, its λ-derivative and the hypergradient.

    Attributes
    ----------
    z
        z*(λ): (A_SᵀA_S)⁻¹(A_Sᵀy − λs) on the support, 0 elsewhere.
    dz
        dz*/dλ: −(A_SᵀA_S)⁻¹s on the support, 0 elsewhere.
    hypergradient
        dV/dλ = (A_val z* − y_val)ᵀ A_val dz*/dλ.
    segment
        (λ_lo, λ_hi): the kinks of the path on either side of λ. The sign pattern stays optimal
        between them, so z* is affine and V quadratic in λ there.
    """

    z: Tensor
    dz: Tensor
    hypergradient: float
    segment: tuple[float, float]


def closed_form(
    a_train: Tensor, y_train: Tensor, a_val: Tensor, y_val: Tensor, lam: float, signs: Tensor
) -> ClosedForm:
    """The closed-form lasso hypergradient for the sign pattern ``signs`` (values in {−1, 0, 1}).

    The pattern is a guess (e.g. ``torch.sign`` of a numerical solution); it is certified by
    the optimality conditions: sign(z*_S) = s, and |A_jᵀ(y − A z*)| < λ for j off the support.
    A design with full column rank makes the lasso strictly convex, so a certified z* is the
    unique minimiser.

    Raises
    ------
    NotGeneric
        If the conditions fail or hold only with equality (λ at a kink of the path).
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


# ---------------------------------------------------------------------------------------------
# The example
# ---------------------------------------------------------------------------------------------


def make_estimator(name: str) -> fp.Estimator:
    """``implicit``, ``exact``, ``cg``, ``jfb`` or ``neumann-K``."""
    if name == "implicit":
        return fp.Implicit(fp.Anderson(atol=1e-13, rtol=0.0, max_iter=500))
    if name == "exact":
        return fp.Exact()
    if name == "cg":
        return fp.CG(atol=1e-13, rtol=0.0, max_iter=500)
    if name == "jfb":
        return fp.JFB()
    if name.startswith("neumann-") and name[8:].isdigit():
        return fp.Neumann(k=int(name[8:]))
    raise ValueError(f"unknown estimator {name!r}: use implicit, exact, cg, jfb or neumann-K")


def check_hypergradients(
    problem: Problem, lam: float, estimators: dict[str, fp.Estimator]
) -> dict[str, Any]:
    """Compare the library's dV/dλ with finite differences and the closed form at ``lam``.

    Returns
    -------
    dict
        ``lam``, ``nonzeros``, ``segment``, ``closed_form``, ``finite_difference``,
        ``fd_same_support``, and per estimator name its ``hypergradient``, ``relative_error``
        (against the closed form), and the ``cosine`` and ``w_relative_error`` of its adjoint
        vector w against the exact one (``fp.compare_estimators``).
    """
    z = solve_lasso(problem, lam)
    exact = closed_form(
        problem.a_train, problem.y_train, problem.a_val, problem.y_val, lam, torch.sign(z)
    )
    fd = finite_difference_hypergradient(problem, lam)
    g = problem.a_val.T @ (problem.a_val @ z - problem.y_val)  # ∂V/∂z*
    rows = fp.compare_estimators(
        problem.ista, z, problem.y_train, lam, estimators=list(estimators.values()), g=g
    )
    reference = exact.hypergradient
    result: dict[str, Any] = {
        "lam": lam,
        "nonzeros": int((z != 0).sum()),
        "segment": exact.segment,
        "closed_form": reference,
        "finite_difference": fd.value,
        "fd_relative_error": abs(fd.value - reference) / abs(reference),
        "fd_same_support": fd.same_support,
        "estimators": {},
    }
    for (name, estimator), row in zip(estimators.items(), rows, strict=True):
        value = library_hypergradient(problem, lam, estimator)
        result["estimators"][name] = {
            "hypergradient": value,
            "relative_error": abs(value - reference) / abs(reference),
            "cosine": row.cosine.item(),
            "w_relative_error": row.relative_error.item(),
            "vjp": row.vjp,
        }
    return result


def print_check(check: dict[str, Any]) -> None:
    """Print one :func:`check_hypergradients` result as a table."""
    lo, hi = check["segment"]
    print(
        f"\nλ = {check['lam']:.4f}: {check['nonzeros']} non-zeros, support fixed for "
        f"λ in ({lo:.4f}, {hi:.4f})"
    )
    print(f"  {'method':<16} {'dV/dλ':>18} {'rel. error':>11} {'cos(w, w*)':>11} {'vjp':>5}")
    print(f"  {'closed form':<16} {check['closed_form']:>18.12f}")
    note = "" if check["fd_same_support"] else "  (stencil crosses a kink)"
    print(
        f"  {'finite diff.':<16} {check['finite_difference']:>18.12f} "
        f"{check['fd_relative_error']:>11.2e}{note}"
    )
    for name, row in check["estimators"].items():
        print(
            f"  {name:<16} {row['hypergradient']:>18.12f} {row['relative_error']:>11.2e} "
            f"{row['cosine']:>11.6f} {row['vjp']:>5}"
        )


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


def tune(
    problem: Problem,
    lam0: float,
    steps: int,
    lr: float,
    estimator: fp.Estimator,
    progress: bool,
) -> list[dict[str, float]]:
    """Gradient descent on log λ; every inner solve starts from the previous solution.

    Returns
    -------
    list of dict
        Per step, before the update: ``step``, ``lam``, ``loss``, ``nonzeros``, ``grad``
        (dV/d log λ).
    """
    log_lam = torch.tensor(math.log(lam0), dtype=DTYPE, requires_grad=True)
    optimiser = torch.optim.SGD([log_lam], lr=lr)
    solver = fp.Anderson(atol=1e-10, rtol=0.0, max_iter=1000)
    z = torch.zeros(problem.n, dtype=DTYPE)
    use_bar = progress and tqdm is not None
    iterator = (
        tqdm(range(steps), desc="descent on log λ", leave=False, disable=None)
        if use_bar
        else range(steps)
    )
    write = tqdm.write if use_bar else print
    write(f"{'step':>5} {'λ':>10} {'V(λ)':>12} {'non-zeros':>10} {'dV/dlogλ':>12}")
    history = []
    for step in iterator:
        optimiser.zero_grad()
        loss, z_new = loss_and_solution(problem, log_lam.exp(), estimator, z, solver)
        loss.backward()
        z = z_new.detach()
        row = {
            "step": step,
            "lam": log_lam.exp().item(),
            "loss": loss.item(),
            "nonzeros": int((z != 0).sum()),
            "grad": log_lam.grad.item(),
        }
        history.append(row)
        write(
            f"{step:>5} {row['lam']:>10.5f} {row['loss']:>12.6f} {row['nonzeros']:>10} "
            f"{row['grad']:>12.4e}"
        )
        optimiser.step()
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the numbers it prints.

    Returns
    -------
    dict
        ``config``; ``checks`` (one :func:`check_hypergradients` dict per λ); ``trajectory``
        (:func:`tune`); ``initial_loss``, ``final_loss``, ``final_lam``, ``final_nonzeros``;
        ``grid_lam``, ``grid_loss`` (best λ of a grid search); ``true_loss`` (V of the ground
        truth); ``seconds``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="descent steps (default 40; --quick: 15)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic problem")
    parser.add_argument("--quick", action="store_true", help="smaller problem and fewer steps")
    parser.add_argument(
        "--lr", type=float, default=0.1, help="step size of gradient descent on log λ"
    )
    parser.add_argument(
        "--estimator",
        default="implicit",
        help="estimator of the outer loop: implicit, exact, cg, jfb or neumann-K",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (15 if args.quick else 40)
    if steps < 1:
        parser.error(f"--steps must be ≥ 1, got {steps}")
    try:
        estimator = make_estimator(args.estimator)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()

    sizes = QUICK_SIZES if args.quick else {}
    problem = make_problem(args.seed, **sizes)
    lam_max = problem.lam_max
    print(
        f"lasso: {problem.a_train.shape[0]} training and {problem.a_val.shape[0]} validation "
        f"samples, {problem.n} features, {int((problem.z_true != 0).sum())} non-zero in the "
        f"truth; λ_max = {lam_max:.4f}, ISTA step τ = {problem.ista.step:.4f}"
    )

    estimators = {
        "Implicit": make_estimator("implicit"),
        "Exact": fp.Exact(),
        "CG": make_estimator("cg"),
        "Neumann(k=20)": fp.Neumann(k=20),
        "Neumann(k=5)": fp.Neumann(k=5),
        "JFB": fp.JFB(),
    }
    fractions = (0.3,) if args.quick else (0.05, 0.2, 0.5)
    checks = []
    for fraction in fractions:
        check = check_hypergradients(problem, fraction * lam_max, estimators)
        print_check(check)
        checks.append(check)

    print(f"\nGradient descent on log λ (step {args.lr}, {args.estimator}) from λ = λ_max / 2:")
    history = tune(problem, lam_max / 2, steps, args.lr, estimator, not args.no_progress)
    final_lam = history[-1]["lam"]
    grid = torch.logspace(math.log10(lam_max) - 3, math.log10(lam_max), 25 if args.quick else 100)
    grid_lam, grid_loss = grid_search(problem, grid)
    true_loss = validation_loss(problem, problem.z_true).item()
    best = min(history, key=lambda row: row["loss"])
    seconds = time.perf_counter() - start
    print(
        f"\nV: {history[0]['loss']:.6f} at λ = {history[0]['lam']:.5f} → {history[-1]['loss']:.6f}"
        f" at λ = {final_lam:.5f} ({history[-1]['nonzeros']} non-zeros; best step: "
        f"{best['loss']:.6f})\ngrid search over {len(grid)} λ: V = {grid_loss:.6f} at "
        f"λ = {grid_lam:.5f}; ground truth: V = {true_loss:.6f}\n{seconds:.1f} s"
    )
    return {
        "config": {
            "steps": steps,
            "seed": args.seed,
            "quick": args.quick,
            "lr": args.lr,
            "estimator": args.estimator,
        },
        "checks": checks,
        "trajectory": history,
        "initial_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "final_lam": final_lam,
        "final_nonzeros": history[-1]["nonzeros"],
        "grid_lam": grid_lam,
        "grid_loss": grid_loss,
        "true_loss": true_loss,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
