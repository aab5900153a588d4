"""Backward cost of each gradient estimator in units of Jacobian products of f (conv DEQ layer).

"One vjp of f" is a backward pass through one evaluation of f (batch 64, 32 channels, 16×16) with
respect to all its inputs (z, the injection x and the weights), given the graph of that
evaluation. Targets: JFB ≤ 1.1 vjp (its physical limit is 1.0: it is exactly one such pass),
Neumann-k ≤ 1.1·(k + 1) vjps, CG ≤ 1.1·(jvp + vjp) per iteration, the products timed as CG
makes them inside its loop (timed alone, on a warm allocator, they are faster; that ratio is
reported too).

    python -m benchmarks.backward [--quick] [--batch 64] [--channels 32] [--size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

import fixpoint as fp
from benchmarks.common import ConvOperator, Ratio, format_ratios, median_time
from fixpoint.linearization import Linearization

T = TypeVar("T")


def in_loop_product_time(run_backward: Callable[[], T]) -> tuple[float, T]:
    """Mean time of one jvp plus one vjp as CG makes them, timed inside its loop, and the result.

    Products timed alone run on warm caches and a warm allocator; inside CG, with more vectors
    alive, the same products are slower (fresh buffers fault their pages in, the loop's vectors
    evict theirs). Timing them where they run, and averaging over every product the loop made
    (the time it actually spent on them), separates CG's own work from that effect.
    """
    spent = {"jvp": [], "vjp": []}
    originals = Linearization.jvp, Linearization.vjp

    def timed(kind, method):
        def wrapper(self, v):
            start = time.perf_counter()
            out = method(self, v)
            spent[kind].append(time.perf_counter() - start)
            return out

        return wrapper

    Linearization.jvp, Linearization.vjp = timed("jvp", originals[0]), timed("vjp", originals[1])
    try:
        result = run_backward()
    finally:
        Linearization.jvp, Linearization.vjp = originals
    return statistics.fmean(spent["jvp"]) + statistics.fmean(spent["vjp"]), result


def run(
    quick: bool = False, batch: int = 64, channels: int = 32, size: int = 16
) -> tuple[list[Ratio], str]:
    repeat = 5 if quick else 15
    torch.manual_seed(0)
    f = ConvOperator(channels, gamma=0.9, size=size)
    shape = (batch, channels, size, size)
    x = torch.randn(shape, requires_grad=True)
    solver = fp.Anderson(m=5, atol=1e-5, rtol=0.0, max_iter=100)
    z_star = fp.solve(f, torch.zeros(shape), x, solver=solver, batched=True).value
    g = torch.randn(shape)

    z_in = z_star.clone().requires_grad_()
    fz = f(z_in, x)
    inputs = [z_in, x, *f.parameters()]
    t_vjp = median_time(lambda: torch.autograd.grad(fz, inputs, g, retain_graph=True), repeat * 2)
    flat_fz, flat_z = fz.reshape(batch, -1), z_in
    lin = Linearization(
        lambda v: f(v.view(shape), x.detach()).reshape(batch, -1),
        z_star.reshape(batch, -1),
        graph=(flat_fz, flat_z),
    )
    gv = g.reshape(batch, -1)
    t_vjp_z = median_time(lambda: torch.autograd.grad(fz, z_in, g, retain_graph=True), repeat * 2)
    lin.jvp(gv)  # settle the jvp mode
    t_jvp = median_time(lambda: lin.jvp(gv), repeat * 2)

    def backward_time(estimator: fp.Estimator) -> tuple[float, fp.MatvecCount, fp.BackwardInfo]:
        samples = []
        for _ in range(repeat + 2):
            f.zero_grad()
            x.grad = None
            z, sol = fp.fixed_point(
                f,
                z_star,
                x,
                solver=fp.Picard(max_iter=1, atol=1e9),
                estimator=estimator,
                batched=True,
                return_solution=True,
            )
            with fp.count_matvecs() as count:
                samples.append(median_time(lambda z=z: z.backward(g), repeat=1, warmup=0))
        return statistics.median(samples[2:]), count, sol.backward

    lines = [
        f"conv DEQ layer: batch {batch}, {channels} channels, {size}×{size}; "
        f"{torch.get_num_threads()} threads",
        f"one vjp of f (all inputs): {1e3 * t_vjp:.2f} ms; vjp w.r.t. z: "
        f"{1e3 * t_vjp_z:.2f} ms; jvp: {1e3 * t_jvp:.2f} ms",
        f"{'estimator':<40} {'backward ms':>11} {'/ vjp':>7} {'vjp/sample':>10} {'jvp/sample':>10}",
    ]
    ratios: list[Ratio] = []
    t_jfb, count, _ = backward_time(fp.JFB())
    lines.append(f"{'JFB()':<40} {1e3 * t_jfb:>11.2f} {t_jfb / t_vjp:>7.2f} {0:>10} {0:>10}")
    ratios.append(
        Ratio(
            "backward",
            "JFB backward / one vjp of f",
            t_jfb / t_vjp,
            1.1,
            detail=f"{1e3 * t_jfb:.2f} vs {1e3 * t_vjp:.2f} ms",
        )
    )
    for k in (1, 5, 10):
        t, count, _ = backward_time(fp.Neumann(k=k))
        lines.append(
            f"{f'Neumann(k={k})':<40} {1e3 * t:>11.2f} {t / t_vjp:>7.2f} "
            f"{count.vjp / batch:>10.0f} {count.jvp / batch:>10.0f}"
        )
        ratios.append(
            Ratio(
                "backward",
                f"Neumann-{k} backward / ((k+1) vjps)",
                t / ((k + 1) * t_vjp),
                1.1,
                detail=f"{1e3 * t:.2f} vs {k + 1}×{1e3 * t_vjp:.2f} ms",
            )
        )
    cg = fp.CG(atol=0.0, rtol=1e-6, max_iter=40, warn=False)
    # The products are timed in the same runs as the whole backward, so both see one state.
    products, (t_cg, count, info) = in_loop_product_time(lambda: backward_time(cg))
    iters = info.iterations
    per_iteration = (t_cg - t_jfb) / iters
    lines.append(
        f"{'CG(rtol=1e-6)':<40} {1e3 * t_cg:>11.2f} {t_cg / t_vjp:>7.2f} "
        f"{count.vjp / batch:>10.0f} {count.jvp / batch:>10.0f}"
    )
    ratios.append(
        Ratio(
            "backward",
            "CG time per iteration / (jvp + vjp) timed inside CG",
            per_iteration / products,
            1.1,
            detail=f"{1e3 * per_iteration:.2f} vs {1e3 * products:.2f} ms, {iters} iterations",
        )
    )
    ratios.append(
        Ratio(
            "backward",
            "CG time per iteration / (jvp + vjp) timed alone",
            per_iteration / (t_jvp + t_vjp_z),
            None,
            detail=f"{1e3 * per_iteration:.2f} vs {1e3 * (t_jvp + t_vjp_z):.2f} ms",
        )
    )
    for estimator in (
        fp.Phantom(k=5, damping=0.5),
        fp.Implicit(fp.Anderson(m=5, atol=0.0, rtol=1e-6, max_iter=40), warn=False),
    ):
        t, count, _ = backward_time(estimator)
        name = repr(estimator) if len(repr(estimator)) <= 40 else "Implicit(Anderson(rtol=1e-6))"
        lines.append(
            f"{name:<40} {1e3 * t:>11.2f} {t / t_vjp:>7.2f} "
            f"{count.vjp / batch:>10.0f} {count.jvp / batch:>10.0f}"
        )
    return ratios, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    ratios, text = run(args.quick, args.batch, args.channels, args.size)
    print(text)
    print()
    print(format_ratios(ratios))


if __name__ == "__main__":
    main()
