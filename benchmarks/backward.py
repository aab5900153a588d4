"""Backward time of each gradient estimator, in units of one vjp of f, on a conv DEQ layer.

    python benchmarks/backward.py [--batch 64] [--channels 32] [--size 16] [--repeat 10]

"One vjp of f" is a backward pass through one evaluation of f with respect to all its inputs
(z, the injection x and the weights), given the graph of that evaluation. JFB's backward is
exactly one such pass with respect to x and the weights (its physical limit is 1.0).
"""

from __future__ import annotations

import argparse

import torch

import fixpoint as fp
from benchmarks.common import ConvOperator, median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    f = ConvOperator(args.channels)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape, requires_grad=True)
    z0 = torch.zeros(shape)
    solver = fp.Anderson(m=5, atol=1e-5, rtol=1e-4, max_iter=50)
    z_star = fp.solve(f, z0, x, solver=solver, batched=True).value
    g = torch.randn(shape)

    z_in = z_star.clone().requires_grad_()
    fz = f(z_in, x)
    inputs = [z_in, x, *f.parameters()]
    t_vjp = median_time(lambda: torch.autograd.grad(fz, inputs, g, retain_graph=True), args.repeat)
    t_forward = median_time(lambda: f(z_star, x), args.repeat)

    estimators = [
        fp.JFB(),
        fp.Neumann(k=1),
        fp.Neumann(k=5),
        fp.Neumann(k=10),
        fp.Phantom(k=5, damping=0.5),
        fp.CG(atol=1e-6, rtol=1e-4, max_iter=50),
        fp.Implicit(fp.Anderson(m=5, atol=1e-6, rtol=1e-4, max_iter=50)),
    ]
    print(
        f"conv DEQ layer: batch {args.batch}, {args.channels} channels, "
        f"{args.size}×{args.size}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"one vjp of f: {1e3 * t_vjp:.2f} ms   one evaluation of f: {1e3 * t_forward:.2f} ms")
    print(
        f"{'estimator':<58} {'backward ms':>11} {'/ vjp':>7} {'vjp/sample':>10} {'jvp/sample':>10}"
    )
    for estimator in estimators:
        state = {}

        def backward(estimator=estimator, state=state):
            z = fp.fixed_point(f, z_star, x, solver=solver, estimator=estimator, batched=True)
            # Only the backward is timed: the forward (a converged start) runs outside.
            state["z"] = z

        def timed_backward(state=state):
            with fp.count_matvecs() as count:
                state["z"].backward(g)
            state["count"] = count

        times = []
        for _ in range(args.repeat + 2):
            backward()
            times.append(median_time(timed_backward, repeat=1, warmup=0))
        seconds = sorted(times[2:])[len(times[2:]) // 2]
        count = state["count"]
        print(
            f"{estimator!r:<58} {1e3 * seconds:>11.2f} {seconds / t_vjp:>7.2f} "
            f"{count.vjp / args.batch:>10.1f} {count.jvp / args.batch:>10.1f}"
        )


if __name__ == "__main__":
    main()
