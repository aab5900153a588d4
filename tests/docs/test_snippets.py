"""The custom solver and estimator of the Extending page are real, working extensions.

They live in ``docs/snippets/`` and are included verbatim into ``docs/extending.md``; here they
are imported as modules and held to the same properties as the library's own methods.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fixpoint as fp
from tests.docs.blocks import DOCS


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"docs_snippets_{name}", DOCS / "snippets" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


HeavyBall = _load("custom_solver").HeavyBall
AdaptiveNeumann = _load("custom_estimator").AdaptiveNeumann

TIGHT = dict(atol=1e-10, rtol=0.0)


def test_snippets_are_short():
    for name in ("custom_solver", "custom_estimator"):
        lines = (DOCS / "snippets" / f"{name}.py").read_text().splitlines()
        assert len(lines) <= 40, f"{name}.py has {len(lines)} lines; the page promises ~40"


def test_snippets_are_included_in_the_extending_page():
    page = (DOCS / "extending.md").read_text()
    for name in ("custom_solver", "custom_estimator"):
        assert f'--8<-- "docs/snippets/{name}.py"' in page


# --- the solver ------------------------------------------------------------------------------


def test_heavy_ball_is_a_solver_with_validated_options():
    assert isinstance(HeavyBall(), fp.Solver)
    with pytest.raises(ValueError, match="momentum"):
        HeavyBall(momentum=1.0)
    with pytest.raises(ValueError, match="alpha"):
        HeavyBall(alpha=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        HeavyBall(max_iter=0)
    with pytest.raises(TypeError):
        HeavyBall(memory=3)  # an unknown option is an error, not ignored


@settings(max_examples=25, deadline=None)
@given(
    problem=fp.testing.affine_contractions(n=st.integers(1, 8), gamma=st.floats(0.1, 0.8)),
    momentum=st.floats(0.0, 0.1),
)
def test_heavy_ball_finds_the_fixed_point_of_contractions(problem, momentum):
    # A small momentum β is safe for every spectrum in the disc of radius γ ≤ 0.8. (As γ → 0 a
    # Picard step is nearly exact and any momentum overshoots it by orders of magnitude, which
    # the loop's divergence check reports: hence γ ≥ 0.1.)
    solver = HeavyBall(momentum=momentum, max_iter=2000, **TIGHT)
    sol = fp.solve(problem.f, problem.z0, *problem.args, solver=solver)
    assert sol.status == "converged"
    assert torch.allclose(sol.value, problem.reference(), atol=1e-8)


def test_heavy_ball_beats_picard_on_the_h_equation():
    problem = fp.testing.h_equation(0.99, n=64)
    picard = fp.solve(problem.f, problem.z0, solver=fp.Picard(max_iter=1000, **TIGHT))
    heavy = fp.solve(problem.f, problem.z0, solver=HeavyBall(momentum=0.3, max_iter=1000, **TIGHT))
    assert heavy.status == "converged" and picard.status == "converged"
    assert int(heavy.fevals) < int(picard.fevals)
    assert abs(heavy.value.mean().item() - fp.testing.h_equation_mean(0.99)) < 1e-8


def test_heavy_ball_batched_with_skipping_matches_the_full_batch():
    torch.manual_seed(0)
    scale = torch.linspace(0.1, 0.9, 12, dtype=torch.float64)[:, None]
    x = torch.randn(12, 5, dtype=torch.float64)

    def f(z, x, scale):
        return scale * torch.tanh(z) + x  # a different contraction per sample, real spectrum

    z0 = torch.zeros(12, 5, dtype=torch.float64)
    solver = HeavyBall(momentum=0.2, **TIGHT)
    full = fp.solve(f, z0, x, scale, solver=solver, batched=True)
    skipped = fp.solve(
        f, z0, x, scale, solver=solver, batched=True, skip_converged=True, in_dims=(0, 0)
    )
    assert all(s == "converged" for s in full.status)
    assert torch.equal(full.iterations, skipped.iterations)
    torch.testing.assert_close(full.value, skipped.value)


def test_heavy_ball_serves_fixed_point_and_the_adjoint_solve():
    torch.manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def f(z, theta):
        return 0.5 * torch.tanh(z) + theta  # diagonal Jacobian with entries in [0, 0.5]

    def gradient(solver, estimator):
        theta.grad = None
        z0 = torch.zeros(6, dtype=torch.float64)
        z = fp.fixed_point(f, z0, theta, solver=solver, estimator=estimator)
        z.square().sum().backward()
        return theta.grad.clone()

    exact = gradient(fp.Anderson(**TIGHT), fp.Exact())
    ours = gradient(HeavyBall(**TIGHT), fp.Implicit(HeavyBall(**TIGHT)))
    torch.testing.assert_close(ours, exact, rtol=1e-7, atol=1e-9)


# --- the estimator ---------------------------------------------------------------------------


def test_adaptive_neumann_is_an_estimator_with_diagnostics():
    assert isinstance(AdaptiveNeumann(), fp.Estimator)
    with pytest.raises(TypeError):
        AdaptiveNeumann(k=5)  # an unknown option is an error


@settings(max_examples=25, deadline=None)
@given(
    fp.testing.contractions(
        n=st.integers(1, 8), gamma=st.floats(0.0, 0.7), batch=st.none() | st.integers(1, 4)
    )
)
def test_adaptive_neumann_matches_a_dense_solve(problem):
    z_star = fp.solve(
        problem.f, problem.z0, *problem.args, batched=problem.batched, solver=fp.Anderson(**TIGHT)
    ).value
    jacobian = problem.jacobian(z_star)
    if not problem.batched:
        jacobian, z_flat = jacobian[None], z_star[None]
    else:
        z_flat = z_star
    g = torch.randn(z_flat.shape, dtype=z_flat.dtype)
    eye = torch.eye(z_flat.shape[1], dtype=z_flat.dtype)

    def vjp(v):
        return (v[:, None, :] @ jacobian)[:, 0]

    result = AdaptiveNeumann(rtol=1e-6)(g, vjp, None)
    assert bool(result.converged.all())
    # The residual it reports is the true residual of (I − Jᵀ) w = g ...
    system = eye - jacobian.mT
    true_residual = torch.linalg.vector_norm(g - (system @ result.w[..., None])[..., 0], dim=1)
    torch.testing.assert_close(result.residual, true_residual, rtol=1e-6, atol=1e-15)
    assert bool((result.residual <= 1e-6 * torch.linalg.vector_norm(g, dim=1)).all())
    # ... so the error obeys ‖w − w*‖ ≤ residual / (1 − γ).
    exact = torch.linalg.solve(system, g[..., None])[..., 0]
    error = torch.linalg.vector_norm(result.w - exact, dim=1)
    assert bool((error <= result.residual / (1 - problem.gamma) + 1e-12).all())


def test_adaptive_neumann_stops_at_its_tolerance_like_a_truncated_neumann():
    J = torch.tensor([[0.5, 0.0], [0.0, 0.25]], dtype=torch.float64)
    g = torch.ones(3, 2, dtype=torch.float64)
    calls = []

    def vjp(v):
        calls.append(v.shape[0])
        return v @ J

    # The terms (Jᵀ)ⁱg fall below 0.1·‖g‖ ≈ 0.141 at i = 3: w sums the terms 0, 1 and 2.
    result = AdaptiveNeumann(rtol=0.1)(g, vjp, None)
    torch.testing.assert_close(result.w, fp.Neumann(k=2)(g, lambda v: v @ J, None))
    assert result.iterations == len(calls) == 3 and bool(result.converged.all())


def test_adaptive_neumann_warns_and_reports_when_it_stops_early():
    g = torch.ones(2, 3)
    with pytest.warns(fp.ConvergenceWarning, match="2 samples"):
        result = AdaptiveNeumann(rtol=1e-8, max_iter=3)(g, lambda v: 0.9 * v, None)
    assert not bool(result.converged.any())
    # Three vjps: w sums the terms 0, 1 and 2; the residual is the first term left out, 0.9³g.
    torch.testing.assert_close(result.w, (1 + 0.9 + 0.81) * g)
    torch.testing.assert_close(result.residual, torch.full((2,), 0.729 * 3**0.5))
    assert result.iterations == 3


def test_adaptive_neumann_in_a_backward_pass():
    torch.manual_seed(0)
    W = 0.6 * torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)

    def f(z, x):
        return torch.tanh(z @ W.T + x)

    def gradient(estimator):
        x.grad = None
        z, sol = fp.fixed_point(
            f,
            torch.zeros(4, 8, dtype=torch.float64),
            x,
            batched=True,
            solver=fp.Anderson(atol=1e-12, rtol=0),
            estimator=estimator,
            return_solution=True,
        )
        with fp.count_matvecs() as count:
            z.square().sum().backward()
        return x.grad.clone(), sol.backward, count

    exact, _, _ = gradient(fp.Exact())
    with warnings.catch_warnings():
        warnings.simplefilter("error", fp.ConvergenceWarning)
        ours, info, count = gradient(AdaptiveNeumann(rtol=1e-10))
    torch.testing.assert_close(ours, exact, rtol=1e-8, atol=1e-10)
    assert bool(info.converged.all()) and info.residual.max() < 1e-8
    assert info.vjp == count.vjp == 4 * info.iterations


def test_adaptive_neumann_under_torch_func():
    """solves = True: its data-dependent loop batches under vmap and is differentiated as the
    inverse it computes, so jacfwd = jacrev = the dense implicit Jacobian."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    w = 0.6 * w / torch.linalg.matrix_norm(w, 2)

    def f(z, x):
        return torch.tanh(z @ w.T + x)

    def z_of(x):
        return fp.fixed_point(
            f,
            torch.zeros(4, dtype=torch.float64),
            x,
            solver=fp.Anderson(**TIGHT),
            estimator=AdaptiveNeumann(rtol=1e-13, max_iter=500),
        )

    x = torch.randn(4, generator=gen, dtype=torch.float64)
    z = z_of(x).detach()
    jz = torch.func.jacrev(f)(z, x)
    jx = torch.func.jacrev(f, argnums=1)(z, x)
    dense = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - jz, jx)
    forward, reverse = torch.func.jacfwd(z_of)(x), torch.func.jacrev(z_of)(x)
    torch.testing.assert_close(forward, dense, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(reverse, dense, atol=1e-10, rtol=1e-8)
    xs = torch.stack([x, -x, 2 * x])
    grads = torch.func.vmap(torch.func.grad(lambda x: z_of(x).sum()))(xs)
    for i in range(3):
        torch.testing.assert_close(grads[i], torch.func.grad(lambda x: z_of(x).sum())(xs[i]))
