"""vmap(fp.solve) against the same problems solved as one batch (batched=True).

Under ``torch.func.vmap`` the fixed-point primitive turns the vmapped dimension into rows of one
batched solve, so vmapping a single-problem function should cost about what the batched call
costs: the difference is the price of evaluating ``f`` under vmap at each step. Both runs solve
256 problems ``z = tanh(W z + x_i)`` (‖W‖₂ = 0.8) with the same solver; the values and the
per-sample iteration counts are checked to be equal first. Rounds alternate the two calls; the
ratio is taken within each round and the median over rounds is reported with its range.

    python -m benchmarks.vmapping [--quick]
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.func import vmap

import fixpoint as fp
from benchmarks.common import Ratio, section_main

PROBLEMS = 256


def _case(n: int, rounds: int) -> tuple[Ratio, str]:
    gen = torch.Generator().manual_seed(n)
    w = torch.randn(n, n, generator=gen)
    w = 0.8 * w / torch.linalg.matrix_norm(w, 2)
    xs = torch.randn(PROBLEMS, n, generator=gen)
    solver = fp.Anderson(m=5, atol=1e-6, rtol=0.0, max_iter=100)

    def f(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w.T + x)

    def batched() -> fp.Solution:
        return fp.solve(f, torch.zeros(PROBLEMS, n), xs, w, solver=solver, batched=True)

    def one(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sol = fp.solve(f, torch.zeros(n), x, w, solver=solver)
        return sol.value, sol.iterations

    def vmapped() -> tuple[torch.Tensor, torch.Tensor]:
        return vmap(one)(xs)

    reference = batched()
    value, iterations = vmapped()
    torch.testing.assert_close(value, reference.value, atol=1e-6, rtol=0)
    assert torch.equal(iterations, reference.iterations)
    for _ in range(2):
        batched(), vmapped()
    ratios, times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        batched()
        t_batched = time.perf_counter() - start
        start = time.perf_counter()
        vmapped()
        t_vmapped = time.perf_counter() - start
        ratios.append(t_vmapped / t_batched)
        times.append((t_batched, t_vmapped))
    median = statistics.median(ratios)
    t_b = statistics.median(t for t, _ in times)
    t_v = statistics.median(t for _, t in times)
    steps = int(reference.iterations.max())
    detail = (
        f"n={n}, {steps} steps; {1e3 * t_v:.1f} vs {1e3 * t_b:.1f} ms; "
        f"ratio range {min(ratios):.3g}–{max(ratios):.3g} over {rounds} rounds"
    )
    text = (
        f"n={n}: {PROBLEMS} problems, iterations {int(reference.iterations.min())}–{steps}; "
        f"batched {1e3 * t_b:.1f} ms, vmapped {1e3 * t_v:.1f} ms; per-round ratio median "
        f"{median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return Ratio(
        "torch.func", "vmap(fp.solve) / fp.solve(batched=True)", median, 1.3, detail=detail
    ), text


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    rounds = 7 if quick else 21
    cases = [_case(n, rounds) for n in (64, 256)]
    return [r for r, _ in cases], "\n".join(t for _, t in cases)


def main() -> None:
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
