"""fixpoint against torchdeq 0.1.0 on a DEQ-style conv operator (batch 64, 32 channels, 16×16).

Forward: time to tolerance and iterations of Anderson and Broyden, same history (torchdeq's
``m`` stores points, fixpoint's ``m`` stores differences between points: m = 6 and 5 both keep six
points), same regularisation value ``lam = 1e-4`` (absolute in torchdeq, relative to the scale of
the residual differences in fixpoint), same stopping rule (every sample's ‖f(z) − z‖₂ below
``tol``). Backward: time and accuracy (cosine similarity of the weight gradient to a float64
reference solved to 1e-10) of torchdeq's implicit (IFT), phantom and one-step gradients against
fp.Implicit, fp.Phantom and fp.JFB, all started from the same fixed point.

Needs ``pip install torchdeq==0.1.0`` (the ``bench`` extra); without it this section is skipped.

    python -m benchmarks.peers_deq [--quick]
"""

from __future__ import annotations

import copy

import torch

import fixpoint as fp
from benchmarks.common import (
    ConvOperator,
    Ratio,
    interleaved_times,
    median_time,
    section_main,
)

BATCH, CHANNELS, SIZE = 64, 32, 16


def _problem(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    f = ConvOperator(CHANNELS, gamma=0.9, size=SIZE, seed=seed).to(dtype)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, dtype=dtype)
    return f, x


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0)
    )


def _weight_grad(f: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in f.parameters()])


def reference_gradient(f: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """d⟨g, z*⟩/dW in float64, forward and adjoint solved to 1e-10 relative."""
    f64 = copy.deepcopy(f).double()
    f64.zero_grad()
    x64 = x.double()
    tight = fp.Anderson(m=10, atol=0.0, rtol=1e-11, max_iter=500)
    z = fp.fixed_point(
        f64,
        torch.zeros_like(x64),
        x64,
        solver=tight,
        batched=True,
        estimator=fp.Implicit(fp.Anderson(m=10, atol=0.0, rtol=1e-10, max_iter=500)),
    )
    (z * g.double()).sum().backward()
    return _weight_grad(f64)


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    try:
        from torchdeq.grad import backward_factory
        from torchdeq.solver.anderson import anderson_solver
        from torchdeq.solver.broyden import broyden_solver
    except ImportError:
        return [], "torchdeq is not installed (pip install torchdeq==0.1.0): section skipped"
    repeat = 3 if quick else 10
    f, x = _problem()
    tol, max_iter = 1e-3, 100
    lines, ratios = [], []

    def counted(fn):
        calls = [0]

        def g(z):
            calls[0] += 1
            return fn(z)

        return g, calls

    # ---- forward --------------------------------------------------------------------------
    z0 = torch.zeros_like(x)
    ours = {
        "Anderson": fp.Anderson(m=5, lam=1e-4, atol=tol, rtol=0.0, max_iter=max_iter),
        "Broyden": fp.Broyden(memory=30, atol=tol, rtol=0.0, max_iter=max_iter),
    }
    theirs = {
        "Anderson": lambda fn: anderson_solver(
            fn, z0, max_iter=max_iter, tol=tol, stop_mode="abs", m=6, lam=1e-4, tau=1.0
        ),
        "Broyden": lambda fn: broyden_solver(
            fn, z0, max_iter=max_iter, tol=tol, stop_mode="abs", LBFGS_thres=30, ls=False
        ),
    }
    lines.append(
        f"{'forward':<10} {'library':<10} {'ms':>8} {'iters':>6} {'f evals':>8} "
        f"{'max residual':>13}"
    )
    with torch.no_grad():
        t_f = median_time(lambda: f(z0, x), repeat=repeat * 2)
        for name in ours:
            fp_fn, fp_calls = counted(lambda z: f(z, x))
            td_fn, td_calls = counted(lambda z: f(z, x))

            def run_ours(fn=fp_fn, solver=ours[name]):
                return fp.solve(lambda z: fn(z), z0, solver=solver, batched=True)

            def run_theirs(fn=td_fn, solver=theirs[name]):
                return solver(fn)

            sol = run_ours()
            fp_evals = fp_calls[0]
            td_z, _, td_info = run_theirs()
            td_evals = td_calls[0]
            t_ours, t_theirs = interleaved_times([run_ours, run_theirs], repeat=repeat)
            td_res = torch.linalg.vector_norm((f(td_z, x) - td_z).flatten(1), dim=1).max()
            td_iters = int(td_info["nstep"].max())
            lines.append(
                f"{name:<10} {'fixpoint':<10} {1e3 * t_ours:>8.1f} "
                f"{int(sol.iterations.max()):>6} {fp_evals:>8} "
                f"{sol.residual.max().item():>13.2e}"
            )
            lines.append(
                f"{name:<10} {'torchdeq':<10} {1e3 * t_theirs:>8.1f} {td_iters:>6} "
                f"{td_evals:>8} {td_res.item():>13.2e}"
            )
            ratios.append(
                Ratio(
                    "vs torchdeq",
                    f"{name} time to tol fixpoint / torchdeq",
                    t_ours / t_theirs,
                    1.0,
                    detail=f"{1e3 * t_ours:.1f} vs {1e3 * t_theirs:.1f} ms",
                )
            )
            ratios.append(
                Ratio(
                    "vs torchdeq",
                    f"{name} f evals fixpoint / torchdeq",
                    fp_evals / td_evals,
                    1.0,
                    detail=f"{fp_evals} vs {td_evals}",
                )
            )
            if name == "Anderson":
                fixed = fp.Anderson(m=5, atol=0.0, rtol=0.0, max_iter=30, divergence=float("inf"))
                t_solve = median_time(
                    lambda s=fixed: fp.solve(f, z0, x, solver=s, batched=True),
                    repeat=repeat,
                    warmup=1,
                )
                per_iter = t_solve / 31  # 31 evaluations of f: f(z0) and one per step
                ratios.append(
                    Ratio(
                        "overhead",
                        "Anderson time per iteration / one f evaluation",
                        per_iter / t_f,
                        1.2,
                        detail=f"{1e3 * per_iter:.2f} vs {1e3 * t_f:.2f} ms",
                    )
                )
    z_star = fp.solve(
        f, z0, x, batched=True, solver=fp.Anderson(m=5, atol=1e-4, rtol=0.0, max_iter=200)
    ).value

    # ---- backward -------------------------------------------------------------------------
    g = torch.randn_like(x)
    reference = reference_gradient(f, x, g)
    b_kwargs = dict(tol=1e-4, max_iter=50, stop_mode="abs", m=6, lam=1e-4)
    pairs = {
        "IFT": (
            fp.Implicit(fp.Anderson(m=5, atol=1e-4, rtol=0.0, max_iter=50), warn=False),
            backward_factory(grad_type="ift", b_solver=anderson_solver, b_solver_kwargs=b_kwargs),
        ),
        "phantom-5": (fp.Phantom(k=5, damping=0.5), backward_factory(grad_type=5, tau=0.5)),
        "one-step/JFB": (fp.JFB(), backward_factory(grad_type=1, tau=1.0)),
    }

    def damped(z, tau=1.0):
        return tau * f(z, x) + (1 - tau) * z

    lines.append("")
    lines.append(f"{'backward':<14} {'library':<10} {'ms':>8} {'cosine to exact':>16}")
    for name, (estimator, factory) in pairs.items():
        state = {}

        def prepare_ours(estimator=estimator, state=state):
            f.zero_grad()
            state["out"] = fp.fixed_point(
                f,
                z_star,
                x,
                estimator=estimator,
                batched=True,
                solver=fp.Picard(max_iter=1, atol=1e9),
            )

        def prepare_theirs(factory=factory, state=state):
            f.zero_grad()
            state["out"] = factory(None, damped, z_star.clone())[-1]

        def backward(state=state):
            (state["out"] * g).sum().backward()

        timings = {}
        cosines = {}
        for library, prepare in (("fixpoint", prepare_ours), ("torchdeq", prepare_theirs)):
            samples = []
            for _ in range(repeat + 1):
                prepare()
                samples.append(median_time(backward, repeat=1, warmup=0))
            timings[library] = sorted(samples[1:])[len(samples[1:]) // 2]
            cosines[library] = _cosine(_weight_grad(f), reference)
            lines.append(
                f"{name:<14} {library:<10} {1e3 * timings[library]:>8.1f} {cosines[library]:>16.6f}"
            )
        # Reported, not a target: the backward target against torchdeq is accuracy.
        ratios.append(
            Ratio(
                "vs torchdeq",
                f"{name} backward time fixpoint / torchdeq",
                timings["fixpoint"] / timings["torchdeq"],
                None,
                detail=f"{1e3 * timings['fixpoint']:.1f} vs {1e3 * timings['torchdeq']:.1f} ms",
            )
        )
        ratios.append(
            Ratio(
                "vs torchdeq",
                f"{name} gradient cosine fixpoint − torchdeq",
                cosines["fixpoint"] - cosines["torchdeq"],
                -1e-4,
                better="higher",
                detail=f"{cosines['fixpoint']:.6f} vs {cosines['torchdeq']:.6f}",
            )
        )
    return ratios, "\n".join(lines)


def main() -> None:
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
