"""Chandrasekhar H-equation: fixpoint's solvers against scipy.optimize, side by side.

Every method stops when ‖G(x) − x‖₂ ≤ 1e-8·‖G(x0) − x0‖₂ + 1e-8 (x0 = 1), except
``scipy.optimize.fixed_point``, which has only a relative-step test (``xtol = 1e-8``). History 5
for both Anderson methods (scipy's ``M``, fixpoint's ``m``). The error column is
``|mean(x) − 2/(1 + √(1 − c))|``; the equation has a second, non-physical solution with mean
``2/(1 − √(1 − c))``, and a method that lands there is flagged ``(2nd root)``. ``conv`` is the
method's own converged flag. ``fp.NewtonKrylov`` (default options: Eisenstat–Walker forcing,
GMRES inner solves of at most 30 products, line search) counts every evaluation of ``f`` in
``fevals``, the Jacobian–vector products of its inner GMRES included (each is one forward-mode
evaluation of ``f``); scipy's ``newton_krylov`` fevals count its finite-difference products too.

    python -m benchmarks.h_equation [--n 512 2048] [--c 0.5 0.9 0.99 0.9999] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

import fixpoint as fp
from benchmarks.common import Ratio, format_ratios, interleaved_times, median_time

C_VALUES = (0.5, 0.9, 0.99, 0.9999)


@dataclass
class Result:
    method: str
    x: np.ndarray
    iterations: int
    fevals: int
    converged: bool
    seconds: float = math.nan


def _stopping_tolerance(problem: fp.testing.Problem) -> float:
    r0 = torch.linalg.vector_norm(problem.f(problem.z0) - problem.z0).item()
    return 1e-8 * r0 + 1e-8


def _numpy_map(problem: fp.testing.Problem) -> tuple[Callable[[np.ndarray], np.ndarray], list]:
    calls = [0]

    def g(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return problem.f(torch.from_numpy(x)).numpy()

    return g, calls


def run_fixpoint(problem, solver, name: str) -> Result:
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    return Result(
        name, sol.value.numpy(), int(sol.iterations), int(sol.fevals), sol.status == "converged"
    )


def run_scipy_root(problem, method: str, atol: float) -> Result:
    g, calls = _numpy_map(problem)
    jac_options = {"M": 5} if method == "anderson" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scipy.optimize.root(
            lambda x: g(x) - x,
            problem.z0.numpy().copy(),
            method=method,
            options=dict(
                fatol=atol, tol_norm=np.linalg.norm, maxiter=1000, jac_options=jac_options
            ),
        )
    return Result(f"scipy {method}", res.x, int(res.nit), calls[0], bool(res.success))


def run_scipy_fixed_point(problem) -> Result:
    g, calls = _numpy_map(problem)
    try:
        x = scipy.optimize.fixed_point(g, problem.z0.numpy().copy(), xtol=1e-8, maxiter=1000)
        ok = True
    except RuntimeError:
        x, ok = np.full(problem.z0.shape, np.nan), False
    return Result("scipy fixed_point", x, calls[0] // 2, calls[0], ok)


def methods(problem, atol: float) -> dict[str, Callable[[], Result]]:
    tol = dict(atol=atol, rtol=0.0, max_iter=1000)
    return {
        "fp.Anderson(m=5)": lambda: run_fixpoint(
            problem, fp.Anderson(m=5, **tol), "fp.Anderson(m=5)"
        ),
        "fp.Broyden": lambda: run_fixpoint(problem, fp.Broyden(**tol), "fp.Broyden"),
        "fp.NewtonKrylov": lambda: run_fixpoint(problem, fp.NewtonKrylov(**tol), "fp.NewtonKrylov"),
        "fp.Picard": lambda: run_fixpoint(
            problem, fp.Picard(**{**tol, "max_iter": 20000}), "fp.Picard"
        ),
        "scipy anderson(M=5)": lambda: run_scipy_root(problem, "anderson", atol),
        "scipy broyden1": lambda: run_scipy_root(problem, "broyden1", atol),
        "scipy newton_krylov": lambda: run_scipy_root(problem, "krylov", atol),
        "scipy fixed_point": lambda: run_scipy_fixed_point(problem),
    }


def describe_error(x: np.ndarray, c: float) -> str:
    exact = fp.testing.h_equation_mean(c)
    other = 2.0 / (1.0 - math.sqrt(1.0 - c))
    mean = float(np.mean(x))
    if abs(mean - other) < abs(mean - exact):
        return f"{abs(mean - exact):.1e} (2nd root)"
    return f"{abs(mean - exact):.1e}"


def run(
    quick: bool = False, sizes=(512, 2048), cs=C_VALUES, repeat: int | None = None
) -> tuple[list[Ratio], str]:
    repeat = repeat or (3 if quick else 7)
    lines = [
        f"{'N':>5} {'c':>7} {'method':>20} {'iters':>6} {'fevals':>7} {'ms':>9} "
        f"{'error':>18} {'conv':>4}"
    ]
    ratios: list[Ratio] = []
    for n in sizes:
        for c in cs:
            problem = fp.testing.h_equation(c, n=n)
            runs = methods(problem, _stopping_tolerance(problem))
            names = list(runs)
            results = {name: runs[name]() for name in names}
            times = interleaved_times([runs[name] for name in names], repeat=repeat, warmup=0)
            for name, seconds in zip(names, times, strict=True):
                results[name].seconds = seconds
                r = results[name]
                lines.append(
                    f"{n:>5} {c:>7} {name:>20} {r.iterations:>6} {r.fevals:>7} "
                    f"{1e3 * seconds:>9.2f} {describe_error(r.x, c):>18} "
                    f"{'yes' if r.converged else 'NO':>4}"
                )
            ours, peer = results["fp.Anderson(m=5)"], results["scipy anderson(M=5)"]
            with torch.no_grad():
                t_f = median_time(lambda p=problem: p.f(p.z0), repeat=20)
            ratios.append(
                Ratio(
                    "H-equation",
                    f"iters fp.Anderson / scipy anderson N={n} c={c}",
                    ours.iterations / peer.iterations,
                    1.0,
                    detail=f"{ours.iterations} vs {peer.iterations}",
                )
            )
            if n == max(sizes):
                ratios.append(
                    Ratio(
                        "H-equation",
                        f"time scipy anderson / fp.Anderson N={n} c={c}",
                        peer.seconds / ours.seconds,
                        10.0,
                        better="higher",
                        detail=f"{1e3 * peer.seconds:.1f} vs {1e3 * ours.seconds:.1f} ms; f "
                        f"evals {peer.fevals} vs {ours.fevals} at {1e3 * t_f:.2f} ms each: at "
                        f"most {peer.seconds / (ours.fevals * t_f):.1f}× with no solver overhead",
                    )
                )
    return ratios, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--c", type=float, nargs="+", default=list(C_VALUES))
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    ratios, table = run(sizes=args.n, cs=args.c, repeat=args.repeat)
    print(table)

    print()
    print(format_ratios(ratios))


if __name__ == "__main__":
    main()
