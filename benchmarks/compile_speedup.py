"""Speed-up of ``torch.compile`` on the conv operator inside fixpoint's solver and backward.

A compiled operator is an ordinary callable to fixpoint: the forward solve calls it under
``torch.no_grad`` and the backward differentiates one call of it. Compilation time is excluded
(warm-up) and reported separately.

    python -m benchmarks.compile_speedup [--quick]
"""

from __future__ import annotations

import time

import torch

import fixpoint as fp
from benchmarks.common import ConvOperator, Ratio, interleaved_times, section_main


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    torch.manual_seed(0)
    f = ConvOperator(32, gamma=0.9)
    x = torch.randn(64, 32, 16, 16, requires_grad=True)
    z0 = torch.zeros(64, 32, 16, 16)
    start = time.perf_counter()
    try:
        compiled = torch.compile(f)
        with torch.no_grad():
            compiled(z0, x)
        compiled(z0, x).sum().backward()
    except Exception as error:  # no C++ toolchain, unsupported platform, ...
        return [], f"torch.compile is not available here ({type(error).__name__}: {error})"
    compile_seconds = time.perf_counter() - start
    solver = fp.Anderson(m=5, atol=0.0, rtol=0.0, max_iter=20, divergence=float("inf"))

    def step(op) -> None:
        z = fp.fixed_point(op, z0, x, solver=solver, estimator=fp.Neumann(k=5), batched=True)
        z.square().mean().backward()

    eager_t, compiled_t = interleaved_times(
        [lambda: step(f), lambda: step(compiled)], repeat=3 if quick else 10
    )
    text = (
        f"forward (20 Anderson iterations) + Neumann-5 backward, batch 64, 32×16×16: "
        f"eager {1e3 * eager_t:.1f} ms, compiled {1e3 * compiled_t:.1f} ms "
        f"(compilation {compile_seconds:.1f} s, excluded)"
    )
    return [
        Ratio(
            "torch.compile",
            "eager / compiled training step (conv operator)",
            eager_t / compiled_t,
            None,
            detail=f"{1e3 * eager_t:.1f} vs {1e3 * compiled_t:.1f} ms",
        )
    ], text


def main() -> None:
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
