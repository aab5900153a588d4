"""Newton–Krylov: Newton's convergence on hard maps, per-sample batching, honest failures."""

import itertools
import math

import pytest
import torch

import fixpoint as fp
from fixpoint.testing import h_equation, h_equation_mean


def counting(f):
    def wrapped(*args):
        wrapped.calls += 1
        return f(*args)

    wrapped.calls = 0
    return wrapped


def test_h_equation_near_the_singular_limit_in_a_handful_of_steps():
    """c = 0.9999: the physical root (mean 2/(1 + √(1 − c))), not the second one, in ≤ 12 steps."""
    problem = h_equation(0.9999, n=512)
    sol = fp.solve(problem.f, problem.z0, solver=fp.NewtonKrylov(atol=1e-10, rtol=0))
    assert sol.status == "converged"
    assert int(sol.iterations) <= 12
    assert abs(sol.value.mean().item() - h_equation_mean(0.9999)) < 1e-8
    # Independent check: Newton with the dense Jacobian from the same start.
    torch.testing.assert_close(sol.value, problem.reference(), atol=1e-8, rtol=0)


def test_exact_newton_steps_converge_quadratically():
    """With a forcing term of 1e-12 each step is a Newton step: r₊ ≤ C r² once close."""
    problem = h_equation(0.9, n=64)
    solver = fp.NewtonKrylov(atol=1e-14, rtol=0, eta=1e-12, inner_max_iter=64)
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    trace = sol.trace[: int(sol.iterations) + 1].tolist()
    assert sol.status == "converged" and len(trace) <= 7
    ratios = [b / a**2 for a, b in itertools.pairwise(trace) if 1e-6 < a < 1e-2]
    assert ratios and max(ratios) < 10.0  # a linear rate r₊ ≈ q r would give ratios ≫ 10


def test_fevals_count_every_evaluation_including_the_jacobian_products():
    problem = h_equation(0.99, n=128)
    f = counting(problem.f)
    sol = fp.solve(f, problem.z0, solver=fp.NewtonKrylov(atol=1e-10, rtol=0))
    assert sol.status == "converged"
    # One more call than fevals: the final check of the returned value.
    assert int(sol.fevals) in (f.calls, f.calls - 1)
    assert int(sol.fevals) > 2 * int(sol.iterations)  # products were counted, not only steps


def batch_of_h_equations(cs, n):
    mu = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    base = mu[:, None] / (mu[:, None] + mu[None, :]) / (2 * n)
    kernels = torch.tensor(cs, dtype=torch.float64)[:, None, None] * base

    def f(h, kernels):
        return 1.0 / (1.0 - (kernels @ h[..., None])[..., 0])

    return f, kernels


def test_batched_samples_stop_on_their_own_and_match_solving_alone():
    cs = [0.5, 0.9999, 0.9]
    f, kernels = batch_of_h_equations(cs, 100)
    solver = fp.NewtonKrylov(atol=1e-10, rtol=0)
    sol = fp.solve(f, torch.ones(3, 100, dtype=torch.float64), kernels, solver=solver, batched=True)
    assert all(s == "converged" for s in sol.status)
    iterations = sol.iterations.tolist()
    assert iterations[0] < iterations[1]  # the easy sample stopped first
    for i, c in enumerate(cs):
        assert abs(sol.value[i].mean().item() - h_equation_mean(c)) < 1e-8
        alone = fp.solve(
            f,
            torch.ones(1, 100, dtype=torch.float64),
            kernels[i : i + 1],
            solver=solver,
            batched=True,
        )
        assert int(alone.iterations[0]) == iterations[i]
        torch.testing.assert_close(alone.value[0], sol.value[i], atol=1e-12, rtol=0)


def test_under_vmap_it_is_the_batched_solve():
    cs = [0.3, 0.95, 0.8]
    f, kernels = batch_of_h_equations(cs, 40)
    solver = fp.NewtonKrylov(atol=1e-11, rtol=0)
    z0 = torch.ones(3, 40, dtype=torch.float64)
    batched = fp.solve(f, z0, kernels, solver=solver, batched=True).value
    vmapped = torch.func.vmap(lambda k: fp.solve(f, z0[0], k, solver=solver).value)(kernels)
    torch.testing.assert_close(vmapped, batched, atol=1e-12, rtol=0)


def test_forward_solver_of_a_differentiable_fixed_point():
    """fp.fixed_point with a Newton–Krylov forward solve: jacrev and jacfwd agree with IFT."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a *= 1.2 / torch.linalg.matrix_norm(a, 2)  # not a contraction in the 2-norm at z = 0

    def f(z, x):
        return torch.tanh(z @ a.T + x)

    x = torch.randn(6, generator=gen, dtype=torch.float64)
    z0 = torch.zeros(6, dtype=torch.float64)
    solve = lambda x: fp.fixed_point(  # noqa: E731
        f, z0, x, solver=fp.NewtonKrylov(atol=1e-12, rtol=0), estimator=fp.GMRES(atol=1e-13, rtol=0)
    )
    z = solve(x)
    torch.testing.assert_close(f(z, x), z, atol=1e-11, rtol=0)
    s = 1 - f(z, x) ** 2  # ∂z*/∂x = (I − D A)⁻¹ D, D = diag(1 − tanh²)
    expected = torch.linalg.solve(torch.eye(6, dtype=torch.float64) - s[:, None] * a, torch.diag(s))
    torch.testing.assert_close(torch.func.jacrev(solve)(x), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.func.jacfwd(solve)(x), expected, atol=1e-9, rtol=0)


def test_float32_state_stays_float32():
    problem = h_equation(0.99, n=64, dtype=torch.float32)
    sol = fp.solve(problem.f, problem.z0, solver=fp.NewtonKrylov(atol=1e-4, rtol=0))
    assert sol.status == "converged" and sol.value.dtype == torch.float32
    assert abs(sol.value.double().mean().item() - h_equation_mean(0.99)) < 1e-4


class NoForwardMode(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y**2)


def test_a_map_without_jacobian_vector_products_is_refused_clearly():
    f = lambda z: 0.5 * NoForwardMode.apply(z) + 1.0  # noqa: E731
    with pytest.raises(RuntimeError, match=r"fp\.NewtonKrylov needs Jacobian-vector products"):
        fp.solve(f, torch.zeros(3, dtype=torch.float64), solver=fp.NewtonKrylov())
    # The solvers it points to work on the same map.
    assert (
        fp.solve(f, torch.zeros(3, dtype=torch.float64), solver=fp.Broyden()).status == "converged"
    )


def test_implicit_refuses_newton_krylov_and_points_to_gmres():
    with pytest.raises(TypeError, match=r"fp\.GMRES"):
        fp.Implicit(fp.NewtonKrylov())


def test_line_search_rescues_a_step_that_overshoots():
    """arctan's Newton iteration from |x| > 1.39 diverges; the line search makes it converge."""
    f = lambda z: z + torch.atan(z)  # noqa: E731  root of atan at 0
    z0 = torch.full((1,), 3.0, dtype=torch.float64)
    plain = fp.solve(f, z0, solver=fp.NewtonKrylov(atol=1e-10, rtol=0, line_search=False))
    assert plain.status != "converged"
    searched = fp.solve(f, z0, solver=fp.NewtonKrylov(atol=1e-10, rtol=0))
    assert searched.status == "converged" and abs(searched.value.item()) < 1e-10


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(eta=1.0), "eta"),
        (dict(eta=0.0), "eta"),
        (dict(eta_max=1.5), "eta_max"),
        (dict(inner_max_iter=0), "inner_max_iter"),
        (dict(nonmonotone=0), "nonmonotone"),
        (dict(max_backtracks=0), "max_backtracks"),
        (dict(line_search="yes"), "line_search"),
    ],
)
def test_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        fp.NewtonKrylov(**options)


def test_rtol_scale_initial():
    """relative_to="initial": the stop is atol + rtol·‖g(z₀)‖, whatever ‖z‖ is."""
    problem = h_equation(0.9, n=64)
    r0 = torch.linalg.vector_norm(problem.f(problem.z0) - problem.z0).item()
    solver = fp.NewtonKrylov(atol=0.0, rtol=1e-6, relative_to="initial")
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    assert sol.status == "converged" and sol.residual <= 1e-6 * r0
    assert sol.trace[int(sol.iterations) - 1] > 1e-6 * r0  # it stopped at the first step below
    assert not math.isnan(sol.residual)
