"""Krylov gradient estimators: Jacobian products, time and gradient error of GMRES, BiCGStab, CG.

Each estimator solves the adjoint system ``(I − Jᵀ) w = g`` of a fixed point to the same
tolerance, ``‖g − (I − Jᵀ) w‖₂ ≤ rtol·‖g‖₂`` per sample (``rtol = 1e-6``, ``atol = 0``,
``max_iter = 500``, the default start ``w0 = g``, GMRES's default ``restart = 20``). Products
are Jacobian products per sample (``fp.count_matvecs``: vjps + jvps; CG makes one of each per
iteration, GMRES one vjp, BiCGStab two, each plus the residual products of its start and
end). Times are of ``backward()`` alone (the forward is rebuilt, untimed, before each), in
interleaved rounds (GMRES, BiCGStab, CG, ..., GMRES, ...): median [min–max] over the rounds,
and time ratios taken within a round. Errors are ``‖∇ − ∇_ref‖ / ‖∇_ref‖`` over all gradients.

(a) One implicit layer: ``benchmarks.common.ConvOperator`` (γ = 0.8, batch 64, 32 channels,
16×16), in float64 by default so that the gradient error measures the estimator and not the
arithmetic (``--dtype float32``: the same products per sample; the error then has float32's
floor, and forward-mode jvps, which CG needs, cost relatively less than in float64). Its fixed
point by ``fp.Anderson(m=5)`` to ``rtol = 1e-10`` (float32: ``1e-6``), the loss ``Σ z*·g``
with ``g`` random, gradients with respect to the injection and both convolutions' weights.
Reference: the same layer in float64, GMRES at ``rtol = 1e-12`` (restart 60), checked
against BiCGStab at ``rtol = 1e-12``.

(b) A non-normal linear layer: ``f(z, x) = J z + x``, ``J = −0.5·I + 0.9·S`` (``S`` the upper
shift, n = 200, batch 16, float64): ``ρ(J) = 0.5`` but ``‖J‖₂ ≈ 1.4``, so the powers of ``J``
grow by about 1.4× per step for hundreds of steps before they decay, and the Neumann series
(``fp.Neumann(k)``, shown too) is useless at any affordable ``k``. (With ``+0.5·I`` instead,
``I − J = 0.5·I − 0.9·S`` has an inverse with entries ``2·1.8^j``: condition number ~1e51,
no meaningful gradient.) The gradient with respect to ``x`` is ``w`` itself; the reference is
the dense solve ``(I − Jᵀ) w = g``.

Target: CG's products / GMRES's products ≥ 1 on both problems (same tolerance). ``--quick``:
batch 16 for the conv layer, fewer rounds, no cross-check of the reference.

    python -m benchmarks.krylov [--quick] [--batch 64] [--channels 32] [--size 16]
                                [--dtype float64|float32]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import fixpoint as fp
from benchmarks.common import ConvOperator, Ratio, format_ratios

RTOL = 1e-6
MAX_ITER = 500


def estimators() -> dict[str, fp.Estimator]:
    tol = dict(atol=0.0, rtol=RTOL, max_iter=MAX_ITER, warn=False)
    return {
        "GMRES": fp.GMRES(**tol),
        "BiCGStab": fp.BiCGStab(**tol),
        "CG": fp.CG(**tol),
    }


@dataclass
class Run:
    """One estimator on one problem: products per sample, convergence, error and times."""

    vjp: float = 0.0
    jvp: float = 0.0
    iterations: int = 0
    converged: bool | None = None
    error: float = float("nan")
    seconds: list[float] = field(default_factory=list)

    @property
    def products(self) -> float:
        return self.vjp + self.jvp


def spread(values: Sequence[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """``median [min–max]`` of ``values`` times ``scale``."""
    v = [scale * x for x in values]
    return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}–{max(v):{fmt}}]"


def interleaved_rounds(
    setups: Sequence[Callable[[], Callable[[], object]]], repeat: int, warmup: int = 1
) -> list[list[float]]:
    """Per-round times of several timed calls, in alternation; each ``setup()`` (untimed)
    returns the call to time. ``result[i][r]`` is call ``i`` in round ``r``."""
    samples: list[list[float]] = [[] for _ in setups]
    for r in range(warmup + repeat):
        for i, setup in enumerate(setups):
            fn = setup()
            start = time.perf_counter()
            fn()
            if r >= warmup:
                samples[i].append(time.perf_counter() - start)
    return samples


def relative_error(grads: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    a = torch.cat([g.reshape(-1) for g in grads])
    b = torch.cat([g.reshape(-1) for g in reference])
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def measure(
    names: Sequence[str],
    estimator_of: dict[str, fp.Estimator],
    backward: Callable[[fp.Estimator], tuple[Callable[[], list[Tensor]], fp.Solution]],
    reference: Sequence[Tensor],
    batch: int,
    repeat: int,
) -> dict[str, Run]:
    """Products, convergence and error of each estimator (one run), then interleaved times.

    ``backward(estimator)`` builds the forward and returns ``(step, solution)``: ``step()`` runs
    the backward and returns the gradients."""
    runs: dict[str, Run] = {}
    for name in names:
        step, sol = backward(estimator_of[name])
        with fp.count_matvecs() as count:
            grads = step()
        info = sol.backward
        runs[name] = Run(
            vjp=count.vjp / batch,
            jvp=count.jvp / batch,
            iterations=0
            if info.iterations is None
            else int(torch.as_tensor(info.iterations).max()),
            converged=None if info.converged is None else bool(info.converged.all()),
            error=relative_error(grads, reference),
        )
    times = interleaved_rounds(  # the run above was the warm-up
        [lambda name=name: backward(estimator_of[name])[0] for name in names], repeat, warmup=0
    )
    for name, seconds in zip(names, times, strict=True):
        runs[name].seconds = seconds
    return runs


def table(runs: dict[str, Run]) -> list[str]:
    lines = [
        f"{'estimator':<14} {'vjp/sample':>10} {'jvp/sample':>10} {'products':>8} "
        f"{'iters':>5} {'conv':>4} {'grad rel. error':>15}  backward ms median [min–max]"
    ]
    for name, r in runs.items():
        conv = {True: "yes", False: "NO", None: "–"}[r.converged]
        lines.append(
            f"{name:<14} {r.vjp:>10.1f} {r.jvp:>10.1f} {r.products:>8.1f} {r.iterations:>5} "
            f"{conv:>4} {r.error:>15.2e}  {spread(r.seconds, 1e3)}"
        )
    return lines


def krylov_ratios(section: str, runs: dict[str, Run]) -> list[Ratio]:
    gm, cg, bi = runs["GMRES"], runs["CG"], runs["BiCGStab"]
    per_round = [c / g for c, g in zip(cg.seconds, gm.seconds, strict=True)]
    per_round_bi = [b / g for b, g in zip(bi.seconds, gm.seconds, strict=True)]
    return [
        Ratio(
            "krylov",
            f"{section}: products CG / GMRES (rtol {RTOL:g})",
            cg.products / gm.products,
            1.0,
            better="higher",
            detail=f"{cg.products:.1f} vs {gm.products:.1f} per sample; errors "
            f"{cg.error:.1e} vs {gm.error:.1e}",
        ),
        Ratio(
            "krylov",
            f"{section}: time CG / GMRES",
            statistics.median(per_round),
            None,
            better="higher",
            detail=f"per round {spread(per_round)}; {spread(cg.seconds, 1e3)} vs "
            f"{spread(gm.seconds, 1e3)} ms",
        ),
        Ratio(
            "krylov",
            f"{section}: products BiCGStab / GMRES",
            bi.products / gm.products,
            None,
            detail=f"{bi.products:.1f} vs {gm.products:.1f}; time per round {spread(per_round_bi)}",
        ),
    ]


def conv_problem(batch: int, channels: int, size: int, dtype: torch.dtype):
    """The layer in ``dtype``, its fixed point, and ``backward(estimator) -> (step, sol)``."""
    torch.manual_seed(0)  # the same weights, injection and g in every dtype
    f = ConvOperator(channels, gamma=0.8, size=size)
    shape = (batch, channels, size, size)
    x = torch.randn(shape)
    g = torch.randn(shape)
    f, x, g = f.to(dtype), x.to(dtype).requires_grad_(), g.to(dtype)
    params = [x, *f.parameters()]
    forward = fp.solve(
        f,
        torch.zeros(shape, dtype=dtype),
        x,
        solver=fp.Anderson(m=5, atol=0.0, rtol=1e-10 if dtype == torch.float64 else 1e-6),
        batched=True,
    )
    z_star = forward.value

    def backward(estimator: fp.Estimator):
        for p in params:
            p.grad = None
        z, sol = fp.fixed_point(
            f,
            z_star,
            x,
            solver=fp.Picard(max_iter=1, atol=1e9),  # z_star is the fixed point already
            estimator=estimator,
            batched=True,
            return_solution=True,
        )

        def step() -> list[Tensor]:
            z.backward(g)
            return [p.grad.to(torch.float64) for p in params]

        return step, sol

    return forward, backward


def conv_layer(
    quick: bool, batch: int, channels: int, size: int, dtype: torch.dtype
) -> tuple[list[Ratio], list[str]]:
    repeat = 2 if quick else 5
    forward, backward = conv_problem(batch, channels, size, dtype)
    backward64 = (
        backward
        if dtype == torch.float64
        else conv_problem(batch, channels, size, torch.float64)[1]
    )
    tight = dict(atol=0.0, rtol=1e-12, max_iter=MAX_ITER, warn=False)
    reference = backward64(fp.GMRES(restart=60, **tight))[0]()
    check = math.nan if quick else relative_error(backward64(fp.BiCGStab(**tight))[0](), reference)
    runs = measure(list(estimators()), estimators(), backward, reference, batch, repeat)
    tol = "1e-10" if dtype == torch.float64 else "1e-6"
    lines = [
        f"(a) conv layer: batch {batch}, {channels} channels, {size}×{size}, {dtype}; forward "
        f"fp.Anderson(m=5) {int(forward.iterations.max())} iterations to rtol {tol} "
        f"({'all converged' if bool(forward.converged.all()) else 'NOT all converged'}); "
        f"reference: float64, fixed point to rtol 1e-10, GMRES rtol 1e-12 ("
        + ("not cross-checked in quick mode" if quick else f"vs BiCGStab rtol 1e-12: {check:.1e}")
        + f"); {repeat} rounds, {torch.get_num_threads()} threads",
        *table(runs),
    ]
    return krylov_ratios("conv layer", runs), lines


def nonnormal_layer(quick: bool, n: int = 200, batch: int = 16) -> tuple[list[Ratio], list[str]]:
    repeat = 5 if quick else 15
    dtype = torch.float64
    gen = torch.Generator().manual_seed(0)
    jac = -0.5 * torch.eye(n, dtype=dtype) + 0.9 * torch.diag(torch.ones(n - 1, dtype=dtype), 1)
    eye = torch.eye(n, dtype=dtype)
    x = torch.randn(batch, n, dtype=dtype, generator=gen, requires_grad=True)
    g = torch.randn(batch, n, dtype=dtype, generator=gen)

    def f(z: Tensor, x: Tensor) -> Tensor:
        return z @ jac.mT + x

    with torch.no_grad():
        z_star = torch.linalg.solve(eye - jac, x.mT).mT  # (I − J) z = x, row by row
        reference = torch.linalg.solve(eye - jac.mT, g.mT).mT  # (I − Jᵀ) w = g; ∂L/∂x = w

    def backward(estimator: fp.Estimator):
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

        def step() -> list[Tensor]:
            z.backward(g)
            return [x.grad.clone()]

        return step, sol

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 16×200 products: threads only add synchronisation
    every = {**estimators(), "Neumann(k=10)": fp.Neumann(k=10), "Neumann(k=100)": fp.Neumann(k=100)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Neumann series grows, and says so
        try:
            runs = measure(list(every), every, backward, [reference], batch, repeat)
        finally:
            torch.set_num_threads(threads)
    norm = torch.linalg.matrix_norm(jac, ord=2).item()
    radius = torch.linalg.eigvals(jac).abs().max().item()
    cond = torch.linalg.cond(eye - jac).item()
    lines = [
        f"(b) non-normal linear layer f(z) = J z + x, J = −0.5·I + 0.9·S, n = {n}, batch "
        f"{batch}, float64: ρ(J) = {radius:.2f}, ‖J‖₂ = {norm:.3f}, cond(I − J) = {cond:.2f}; "
        f"reference dense solve; {repeat} rounds, 1 thread",
        *table(runs),
    ]
    return krylov_ratios("non-normal J", runs), lines


def run(
    quick: bool = False,
    batch: int | None = None,
    channels: int = 32,
    size: int = 16,
    dtype: torch.dtype = torch.float64,
) -> tuple[list[Ratio], str]:
    batch = batch or (16 if quick else 64)
    ratios_a, lines_a = conv_layer(quick, batch, channels, size, dtype)
    ratios_b, lines_b = nonnormal_layer(quick)
    return ratios_a + ratios_b, "\n".join([*lines_a, "", *lines_b])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--batch", type=int, help="conv layer batch (default 64; 16 with --quick)")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()
    ratios, text = run(args.quick, args.batch, args.channels, args.size, getattr(torch, args.dtype))
    print(text)
    print()
    print(format_ratios(ratios))


if __name__ == "__main__":
    main()
