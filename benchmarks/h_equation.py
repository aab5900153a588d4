"""Chandrasekhar H-equation: iterations of each fixpoint solver, and fp.Anderson against SciPy.

Stopping rule for every method: ‖G(x) − x‖₂ ≤ 1e-8·‖G(x0) − x0‖₂ + 1e-8, x0 = 1, history 5.

    python benchmarks/h_equation.py [--n 512 2048] [--c 0.5 0.9 0.99] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.optimize
import torch

import fixpoint as fp


def tolerance(problem: fp.testing.Problem) -> float:
    r0 = torch.linalg.vector_norm(problem.f(problem.z0) - problem.z0).item()
    return 1e-8 * r0 + 1e-8


def run_fixpoint(problem, solver):
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    return sol.value.numpy(), int(sol.iterations), int(sol.fevals), sol.status == "converged"


def run_scipy_anderson(problem, atol):
    calls = 0

    def residual(x):
        nonlocal calls
        calls += 1
        return problem.f(torch.from_numpy(x)).numpy() - x

    res = scipy.optimize.root(
        residual,
        problem.z0.numpy().copy(),
        method="anderson",
        options=dict(fatol=atol, tol_norm=np.linalg.norm, maxiter=1000, jac_options=dict(M=5)),
    )
    return res.x, int(res.nit), calls, bool(res.success)


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--c", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    header = (
        f"{'N':>5} {'c':>6} {'method':>20} {'iters':>6} {'fevals':>7} {'error':>9} "
        f"{'ms':>9} {'scipy/ours':>10}"
    )
    print(header)
    print("-" * len(header))
    for n in args.n:
        for c in args.c:
            problem = fp.testing.h_equation(c, n=n)
            atol = tolerance(problem)
            exact = fp.testing.h_equation_mean(c)
            runs = {
                "fp.Picard": lambda p=problem, a=atol: run_fixpoint(
                    p, fp.Picard(atol=a, rtol=0, max_iter=5000)
                ),
                "fp.Anderson(m=5)": lambda p=problem, a=atol: run_fixpoint(
                    p, fp.Anderson(m=5, atol=a, rtol=0, max_iter=1000)
                ),
                "fp.Broyden": lambda p=problem, a=atol: run_fixpoint(
                    p, fp.Broyden(atol=a, rtol=0, max_iter=1000)
                ),
                "scipy anderson(M=5)": lambda p=problem, a=atol: run_scipy_anderson(p, a),
            }
            results = {name: timed(fn, args.repeat) for name, fn in runs.items()}
            ours = results["fp.Anderson(m=5)"][0]
            for name, (seconds, (x, iters, fevals, ok)) in results.items():
                ratio = f"{seconds / ours:10.1f}" if name.startswith("scipy") else ""
                flag = "" if ok else " (not converged)"
                print(
                    f"{n:>5} {c:>6} {name:>20} {iters:>6} {fevals:>7} "
                    f"{abs(x.mean() - exact):>9.1e} {1e3 * seconds:>9.2f} {ratio}{flag}"
                )


if __name__ == "__main__":
    main()
