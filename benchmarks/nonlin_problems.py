"""scipy's ``nonlin`` test problems: every fixpoint solver against scipy's quasi-Newton solvers.

Each problem of ``fp.testing.scipy_nonlin_problems()`` (scipy's ``F``, ``F2``, ``F2_lucky``,
``F3``, ``F4_powell``, ``F5``, ``F6``, posed as the fixed point of ``f(z) = z + F(z)``) is
solved by ``fp.Picard``, ``fp.Anderson``, ``fp.Broyden()`` (line search, the default),
``fp.Broyden(line_search=False)`` and ``fp.NewtonKrylov()`` through ``fp.solve``, and by
scipy's ``broyden1``, ``anderson`` and ``newton_krylov`` (``scipy.optimize.nonlin``, default
options) on the numpy ``F(x) = f(x) − x``, all in float64 from scipy's start ``xin``.

The stop is the same everywhere: ``‖F(x)‖₂ ≤ 1e-8`` within 200 iterations. fixpoint's solvers
get ``atol=1e-8, rtol=0, max_iter=200`` (their norm is the 2-norm). scipy's ``f_tol`` is on the
max-norm by default, so scipy gets ``f_tol=1e-8`` with ``tol_norm=np.linalg.norm`` (its
``f_rtol``, ``x_tol`` and ``x_rtol`` are off by default) and ``maxiter=200``; a
``NoConvergence`` it raises is caught, and its last point is checked like any other.

A cell is ``status iterations/fevals``: ``ok`` for a claimed convergence, else fixpoint's status
(``max_iter``, ``diverged``, ``nonfinite``) or scipy's ``NoConv`` (``NoConvergence``) or the
exception's name. fevals are evaluations of ``F`` (for ``fp.NewtonKrylov`` and scipy's
``newton_krylov`` these include the Jacobian–vector products, forward-mode AD evaluations of
``f`` in fixpoint and finite differences in scipy). A cell marked ``FALSE`` claims
convergence at a point with ``max|F| > 1e-6``: that must never happen for fixpoint (its ratio
row checks it). Warnings are suppressed.

    python -m benchmarks.nonlin_problems
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

import fixpoint as fp
from benchmarks.common import Ratio, section_main

TOL = 1e-8
MAX_ITER = 200
CHECK = 1e-6  # a claimed convergence with max|F| above this is false


@dataclass
class Cell:
    status: str  # "ok" when the method claims convergence
    iterations: int
    fevals: int
    max_residual: float  # max|F| at the returned point (nan when there is none)

    @property
    def claimed(self) -> bool:
        return self.status == "ok"

    @property
    def false_claim(self) -> bool:
        return self.claimed and not self.max_residual <= CHECK

    @property
    def solved(self) -> bool:
        return self.claimed and not self.false_claim

    def __str__(self) -> str:
        text = f"{self.status} {self.iterations}/{self.fevals}"
        return text + (f" FALSE (max|F| {self.max_residual:.1e})" if self.false_claim else "")


def _max_residual(problem: fp.testing.Problem, x) -> float:
    z = torch.as_tensor(np.asarray(x), dtype=problem.z0.dtype)
    with torch.no_grad():
        return float((problem.f(z) - z).abs().max())


def run_fixpoint(problem: fp.testing.Problem, solver: fp.Solver) -> Cell:
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    status = "ok" if sol.status == "converged" else sol.status.value
    return Cell(status, int(sol.iterations), int(sol.fevals), _max_residual(problem, sol.value))


def run_scipy(problem: fp.testing.Problem, method: Callable) -> Cell:
    calls, iterations = [0], [0]

    def F(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        z = torch.from_numpy(np.asarray(x, dtype=np.float64))
        with torch.no_grad():
            return (problem.f(z) - z).numpy()

    def callback(x, fx) -> None:
        iterations[0] += 1

    try:
        x = method(
            F,
            problem.z0.numpy().copy(),
            f_tol=TOL,
            tol_norm=np.linalg.norm,
            maxiter=MAX_ITER,
            callback=callback,
        )
        status = "ok"
    except scipy.optimize.NoConvergence as error:
        x, status = error.args[0], "NoConv"
    except Exception as error:  # a failing method is a result, not a crash
        x, status = None, type(error).__name__
    residual = float("nan") if x is None else _max_residual(problem, x)
    return Cell(status, iterations[0], calls[0], residual)


def methods() -> dict[str, Callable[[fp.testing.Problem], Cell]]:
    tol = dict(atol=TOL, rtol=0.0, max_iter=MAX_ITER)
    return {
        "fp.Picard": lambda p: run_fixpoint(p, fp.Picard(**tol)),
        "fp.Anderson": lambda p: run_fixpoint(p, fp.Anderson(**tol)),
        "fp.Broyden": lambda p: run_fixpoint(p, fp.Broyden(**tol)),
        "fp.Broyden(ls=False)": lambda p: run_fixpoint(p, fp.Broyden(line_search=False, **tol)),
        "fp.NewtonKrylov": lambda p: run_fixpoint(p, fp.NewtonKrylov(**tol)),
        "scipy broyden1": lambda p: run_scipy(p, scipy.optimize.broyden1),
        "scipy anderson": lambda p: run_scipy(p, scipy.optimize.anderson),
        "scipy newton_krylov": lambda p: run_scipy(p, scipy.optimize.newton_krylov),
    }


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    del quick  # one pass is a few seconds
    problems = fp.testing.scipy_nonlin_problems()
    runs = methods()
    cells: dict[str, dict[str, Cell]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, problem in problems.items():
            cells[name] = {method: runs[method](problem) for method in runs}
    header = ["problem", *runs]
    lines = [
        f"status iterations/fevals, stop ‖F‖₂ ≤ {TOL:g} in {MAX_ITER} iterations; "
        f"FALSE: claims convergence with max|F| > {CHECK:g}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for name, row in cells.items():
        lines.append("| " + " | ".join([name, *(str(row[m]) for m in runs)]) + " |")
    solved = {m: sum(cells[p][m].solved for p in cells) for m in runs}
    lines.append("| solved | " + " | ".join(f"{solved[m]}/{len(cells)}" for m in runs) + " |")

    ratios: list[Ratio] = []
    false_fixpoint = [
        f"{m} on {p}"
        for p in cells
        for m in runs
        if m.startswith("fp.") and cells[p][m].false_claim
    ]
    ratios.append(
        Ratio(
            "nonlin problems",
            "fixpoint cells claiming convergence at a non-solution",
            len(false_fixpoint),
            0.0,
            detail=", ".join(false_fixpoint) or "none",
        )
    )
    for method in runs:
        ratios.append(
            Ratio(
                "nonlin problems",
                f"problems solved by {method}",
                solved[method],
                None,
                better="higher",
                detail=f"of {len(cells)}",
            )
        )
    return ratios, "\n".join(lines)


if __name__ == "__main__":
    section_main(run, __doc__)
