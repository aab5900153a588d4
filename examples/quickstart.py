"""Quick start: solve fixed-point problems with each forward solver and compare them.

Run with ``python -m examples.quickstart`` from the repository root.
"""

import time

import torch

import fixpoint as fp


def main() -> None:
    # 1. A scalar equation: z = cos(z).
    sol = fp.solve(
        torch.cos, torch.zeros((), dtype=torch.float64), solver=fp.Anderson(atol=1e-12, rtol=0)
    )
    print(f"z = cos(z):  z* = {sol.value.item():.10f}   {sol}")

    # 2. The Chandrasekhar H-equation, a classic hard fixed-point problem.
    print("\nChandrasekhar H-equation, N = 512, tolerance 1e-10:")
    print(f"{'c':>6} {'solver':>9} {'iters':>6} {'fevals':>7} {'|mean(H) - exact|':>18} {'ms':>8}")
    for c in (0.5, 0.9, 0.99):
        problem = fp.testing.h_equation(c, n=512)
        for solver in (
            fp.Picard(max_iter=2000, atol=1e-10, rtol=0),
            fp.Anderson(atol=1e-10, rtol=0),
            fp.Broyden(atol=1e-10, rtol=0),
        ):
            start = time.perf_counter()
            sol = fp.solve(problem.f, problem.z0, solver=solver)
            ms = 1e3 * (time.perf_counter() - start)
            err = abs(sol.value.mean().item() - fp.testing.h_equation_mean(c))
            print(
                f"{c:>6} {type(solver).__name__:>9} {int(sol.iterations):>6} "
                f"{int(sol.fevals):>7} {err:>18.2e} {ms:>8.1f}"
            )

    # 3. A batch of independent problems: per-sample statistics.
    gamma = torch.tensor([0.1, 0.5, 0.9, 0.99])[:, None]
    sol = fp.solve(lambda z: gamma * torch.tanh(z) + 1.0, torch.zeros(4, 8), batched=True)
    print(f"\nbatched: iterations per sample {sol.iterations.tolist()}, status {sol.status}")

    # 4. Lasso by ISTA, a proximal-gradient fixed point.
    torch.manual_seed(0)
    design, y = torch.randn(40, 20, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    sol = fp.solve(
        fp.operators.lasso(design),
        torch.zeros(20, dtype=torch.float64),
        y,
        2.0,
        solver=fp.Anderson(atol=1e-10, rtol=0, max_iter=500),
    )
    print(f"lasso: {int((sol.value != 0).sum())} of 20 coefficients non-zero, {sol}")


if __name__ == "__main__":
    main()
