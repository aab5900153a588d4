r"""Bilevel optimisation: tune the lasso's regularisation weight by differentiating through ISTA.

The inner problem is the lasso on a training set, z*(λ) = argmin_z ½‖A z − y‖² + λ‖z‖₁, whose
minimisers are the fixed points of the ISTA map ``T(z, y, λ) = S_τλ(z − τAᵀ(Az − y))``
(``fp.operators.lasso``; S is the soft threshold, τ = 1/‖A‖₂²). The outer problem is the
validation loss V(λ) = ½‖A_val z*(λ) − y_val‖². ``fp.fixed_point`` returns z*(λ) with a
gradient, dV/dλ = wᵀ ∂T/∂λ with w = (I − Jᵀ)⁻¹ ∂V/∂z*, J = ∂T/∂z, and the estimator decides
how w is computed.

The script compares each estimator's dV/dλ at a few λ with the closed form (on the support S of
z*, with signs s: dz*_S/dλ = −(A_SᵀA_S)⁻¹ s), then tunes λ by gradient descent on log λ,
warm-starting each inner solve from the last solution. The docs page *Bilevel lasso* explains
the numbers; tests/examples/test_bilevel.py checks them against finite differences and the
lasso's exact path. From the repository root:

    python -m examples.bilevel_lasso                     # default problem, 40 descent steps
    python -m examples.bilevel_lasso --quick             # a smaller problem, about a second
    python -m examples.bilevel_lasso --steps 80 --seed 3 --estimator neumann-20
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
from tqdm.auto import tqdm

import fixpoint as fp
from examples.common import ESTIMATORS, make_estimator

DTYPE = torch.float64
QUICK_SIZES = {"n": 20, "m_train": 60, "m_val": 60, "nonzeros": 4}
"""Problem sizes of ``--quick`` (keyword arguments of :func:`make_problem`)."""
TIGHT = fp.Anderson(m=5, atol=1e-13, rtol=0.0, max_iter=2000)
"""Forward solver of the comparisons (ISTA's residual reaches ~1e-15 in float64)."""
EXACT = {"atol": 1e-13, "rtol": 0.0, "max_iter": 500}
"""Tolerances of the estimators' linear solves (``implicit``, ``cg``)."""
COMPARED = ("implicit", "exact", "cg", "neumann-20", "neumann-5", "jfb")


@dataclass(frozen=True)
class Problem:
    """Training design ``(m, n)`` and targets, validation design and targets, the sparse ground
    truth ``(n,)`` and the ISTA map ``T(z, y, λ)`` of the training lasso."""

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
    """A seeded sparse regression problem: designs with i.i.d. N(0, 1/m) entries, a ground truth
    with ``nonzeros`` entries of magnitude in [1, 2] and random signs, Gaussian noise of
    deviation ``noise`` on the targets. ``m_train > n`` keeps the ISTA map a contraction."""
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


def solve_lasso(
    problem: Problem, lam: float, z0: Tensor | None = None, solver: fp.Solver = TIGHT
) -> Tensor:
    """The lasso solution z*(λ) by ``fp.solve`` on the ISTA map (no gradient)."""
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
    args = (problem.ista, z0, problem.y_train, lam)
    z, sol = fp.fixed_point(*args, solver=solver, estimator=estimator, return_solution=True)
    if not bool(sol.converged):
        raise RuntimeError(f"ISTA at λ = {lam.item():.6g} did not converge: {sol}")
    return validation_loss(problem, z), z


def hypergradient(problem: Problem, lam: float, estimator: fp.Estimator) -> float:
    """dV/dλ by ``fp.fixed_point`` with ``estimator``."""
    lam_t = torch.tensor(lam, dtype=DTYPE, requires_grad=True)
    loss, _ = loss_and_solution(problem, lam_t, estimator)
    (grad,) = torch.autograd.grad(loss, lam_t)
    return grad.item()


def closed_form_hypergradient(problem: Problem, lam: float, z: Tensor) -> float:
    """dV/dλ = (A_val z* − y_val)ᵀ A_val dz*/dλ, dz*_S/dλ = −(A_SᵀA_S)⁻¹ s on the support of z*."""
    support = z != 0
    a_s = problem.a_train[:, support]
    dz = torch.zeros_like(z)
    dz[support] = -torch.linalg.solve(a_s.T @ a_s, torch.sign(z[support]))
    return ((problem.a_val @ z - problem.y_val) @ (problem.a_val @ dz)).item()


def compare_estimators(problem: Problem, lam: float) -> dict[str, Any]:
    """Each estimator's dV/dλ at ``lam``, its error against the closed form, and the cosine of
    its adjoint vector w with the exact one (``fp.compare_estimators``); printed as a table."""
    z = solve_lasso(problem, lam)
    reference = closed_form_hypergradient(problem, lam, z)
    estimators = {name: make_estimator(name, **EXACT) for name in COMPARED}
    g = problem.a_val.T @ (problem.a_val @ z - problem.y_val)  # ∂V/∂z*
    rows = fp.compare_estimators(
        problem.ista, z, problem.y_train, lam, estimators=list(estimators.values()), g=g
    )
    print(f"\nλ = {lam:.4f}: {int((z != 0).sum())} non-zeros")
    print(f"  {'method':<16} {'dV/dλ':>18} {'rel. error':>11} {'cos(w, w*)':>11} {'vjp':>5}")
    print(f"  {'closed form':<16} {reference:>18.12f}")
    result: dict[str, Any] = {"lam": lam, "closed_form": reference, "estimators": {}}
    for (name, estimator), row in zip(estimators.items(), rows, strict=True):
        value = hypergradient(problem, lam, estimator)
        error = abs(value - reference) / abs(reference)
        cosine = row.cosine.item()
        print(f"  {name:<16} {value:>18.12f} {error:>11.2e} {cosine:>11.6f} {row.vjp:>5}")
        result["estimators"][name] = {
            "hypergradient": value,
            "relative_error": error,
            "cosine": cosine,
            "vjp": row.vjp,
        }
    return result


def tune(
    problem: Problem, lam0: float, steps: int, lr: float, estimator: fp.Estimator, progress: bool
) -> list[dict[str, float]]:
    """Gradient descent on log λ; every inner solve starts from the previous solution.

    Returns, per step and before its update: ``step``, ``lam``, ``loss``, ``nonzeros`` and
    ``grad`` (dV/d log λ).
    """
    log_lam = torch.tensor(math.log(lam0), dtype=DTYPE, requires_grad=True)
    optimiser = torch.optim.SGD([log_lam], lr=lr)
    solver = fp.Anderson(atol=1e-10, rtol=0.0, max_iter=1000)
    z = torch.zeros(problem.n, dtype=DTYPE)
    print(f"{'step':>5} {'λ':>10} {'V(λ)':>12} {'non-zeros':>10} {'dV/dlogλ':>12}")
    history = []
    bar = tqdm(
        range(steps), desc="descent on log λ", leave=False, disable=None if progress else True
    )
    for step in bar:
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
        tqdm.write(
            f"{step:>5} {row['lam']:>10.5f} {row['loss']:>12.6f} {row['nonzeros']:>10} "
            f"{row['grad']:>12.4e}"
        )
        optimiser.step()
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the numbers it prints: ``config``, ``comparisons`` (one
    :func:`compare_estimators` dict per λ), ``trajectory`` (:func:`tune`), ``initial_loss``,
    ``final_loss``, ``final_lam``, ``final_nonzeros``, ``true_loss`` and ``seconds``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.bilevel_lasso", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="descent steps (default 40; --quick: 15)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic problem")
    parser.add_argument("--quick", action="store_true", help="smaller problem and fewer steps")
    parser.add_argument(
        "--lr", type=float, default=0.1, help="step size of gradient descent on log λ"
    )
    parser.add_argument(
        "--estimator", default="implicit", help=f"estimator of the outer loop: {ESTIMATORS}"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (15 if args.quick else 40)
    if steps < 1:
        parser.error(f"--steps must be ≥ 1, got {steps}")
    try:
        estimator = make_estimator(args.estimator, **EXACT)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()

    problem = make_problem(args.seed, **(QUICK_SIZES if args.quick else {}))
    lam_max = problem.lam_max
    print(
        f"lasso: {problem.a_train.shape[0]} training and {problem.a_val.shape[0]} validation "
        f"samples, {problem.n} features, {int((problem.z_true != 0).sum())} non-zero in the "
        f"truth; λ_max = {lam_max:.4f}, ISTA step τ = {problem.ista.step:.4f}"
    )
    fractions = (0.3,) if args.quick else (0.05, 0.2, 0.5)
    comparisons = [compare_estimators(problem, fraction * lam_max) for fraction in fractions]

    print(f"\nGradient descent on log λ (step {args.lr}, {args.estimator}) from λ = λ_max / 2:")
    history = tune(problem, lam_max / 2, steps, args.lr, estimator, not args.no_progress)
    first, last = history[0], history[-1]
    best = min(history, key=lambda row: row["loss"])
    true_loss = validation_loss(problem, problem.z_true).item()
    seconds = time.perf_counter() - start
    print(
        f"\nV: {first['loss']:.6f} at λ = {first['lam']:.5f} → {last['loss']:.6f} at "
        f"λ = {last['lam']:.5f} ({last['nonzeros']} non-zeros; best step: {best['loss']:.6f})"
        f"\nground truth: V = {true_loss:.6f}\n{seconds:.1f} s"
    )
    return {
        "config": {**vars(args), "steps": steps},
        "comparisons": comparisons,
        "trajectory": history,
        "initial_loss": first["loss"],
        "final_loss": last["loss"],
        "final_lam": last["lam"],
        "final_nonzeros": last["nonzeros"],
        "true_loss": true_loss,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
