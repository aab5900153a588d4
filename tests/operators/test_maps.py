"""The building blocks: relaxed, affine and proximal-gradient maps."""

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.operators import Affine, ProximalGradient, Relaxed, lasso, soft_threshold
from fixpoint.testing import affine_contractions

seeds = st.integers(0, 2**31 - 1)


@given(problem=affine_contractions(gamma=st.floats(0.0, 0.95)), alpha=st.floats(0.05, 1.0))
def test_relaxed_map_keeps_fixed_points_and_has_the_averaged_lipschitz_bound(problem, alpha):
    relaxed = Relaxed(problem.f, alpha)
    z_star = problem.reference()
    torch.testing.assert_close(relaxed(z_star, *problem.args), z_star)
    a = problem.jacobian(z_star)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    exact = torch.linalg.matrix_norm((1 - alpha) * eye + alpha * a, 2)
    assert exact <= 1 - alpha + alpha * problem.gamma + 1e-12


def test_relaxation_makes_a_rotation_converge():
    """A rotation is nonexpansive but not contractive: Picard cycles, the relaxed map converges."""
    t = torch.tensor(2.0, dtype=torch.float64)
    rot = torch.stack([torch.stack([t.cos(), -t.sin()]), torch.stack([t.sin(), t.cos()])])
    f = Affine(rot, torch.tensor([1.0, 0.0], dtype=torch.float64))
    z0 = torch.zeros(2, dtype=torch.float64)
    tol = dict(atol=1e-10, rtol=0, max_iter=300)
    assert fp.solve(f, z0, solver=fp.Picard(**tol)).status == "max_iter"
    sol = fp.solve(Relaxed(f, 0.5), z0, solver=fp.Picard(**tol))
    assert sol.status == "converged"
    torch.testing.assert_close(sol.value, f.fixed_point(), atol=1e-9, rtol=0)


def test_relaxed_works_on_pytrees_and_registers_module_parameters():
    inner = torch.nn.Linear(2, 2)
    relaxed = Relaxed(lambda z: {"x": inner(z["x"])}, 0.3)
    z = {"x": torch.ones(2)}
    torch.testing.assert_close(relaxed(z)["x"], 0.7 * z["x"] + 0.3 * inner(z["x"]))
    assert len(list(Relaxed(inner, 0.5).parameters())) == 2
    with pytest.raises(ValueError, match="alpha"):
        Relaxed(inner, 0.0)
    with pytest.raises(TypeError, match="callable"):
        Relaxed(3, 0.5)


@given(problem=affine_contractions(gamma=st.floats(0.0, 0.95)))
def test_affine_closed_form_and_norm(problem):
    a = problem.jacobian(problem.z0)
    f = Affine(a, problem.args[0])
    torch.testing.assert_close(f.fixed_point(), problem.reference())
    torch.testing.assert_close(f.lipschitz(), torch.tensor(problem.gamma, dtype=a.dtype))
    torch.testing.assert_close(f(problem.z0), problem.f(problem.z0, *problem.args))


def test_affine_batched_bias_through_args_and_learnable():
    a = 0.5 * torch.eye(3, dtype=torch.float64)
    f = Affine(a, torch.zeros(3, dtype=torch.float64), learnable=True)
    assert {n for n, _ in f.named_parameters()} == {"weight", "bias"}
    b = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    sol = fp.solve(
        f,
        torch.zeros(2, 3, dtype=torch.float64),
        b,
        batched=True,
        solver=fp.Anderson(atol=1e-12, rtol=0),
    )
    torch.testing.assert_close(sol.value, f.fixed_point(b))
    torch.testing.assert_close(f.fixed_point(b), 2 * b)
    with pytest.raises(ValueError, match="square"):
        Affine(torch.zeros(2, 3), torch.zeros(2))


def test_soft_threshold_is_the_prox_of_the_l1_norm():
    """prox_t(x) = argmin_u ½(u − x)² + t|u|, checked by brute force on a grid."""
    grid = torch.linspace(-5, 5, 100001, dtype=torch.float64)
    for x in (-3.0, -0.4, 0.0, 0.7, 2.5):
        for t in (0.0, 0.5, 1.0):
            brute = grid[torch.argmin(0.5 * (grid - x) ** 2 + t * grid.abs())]
            got = soft_threshold(torch.tensor(x, dtype=torch.float64), t)
            assert abs(float(got - brute)) <= 1e-4


def well_conditioned(gen, m, n):
    q, _ = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))
    return q * (0.5 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64))


@given(seed=seeds, n=st.integers(1, 8), extra=st.integers(0, 6), lam=st.floats(0.0, 2.0))
def test_lasso_fixed_point_satisfies_the_kkt_conditions(seed, n, extra, lam):
    gen = torch.Generator().manual_seed(seed)
    design = well_conditioned(gen, n + extra, n)
    y = torch.randn(n + extra, generator=gen, dtype=torch.float64)
    sol = fp.solve(
        lasso(design),
        torch.zeros(n, dtype=torch.float64),
        y,
        lam,
        solver=fp.Picard(atol=1e-13, rtol=0, max_iter=2000),
    )
    assert sol.status == "converged"
    z = sol.value
    corr = design.T @ (y - design @ z)  # ∈ λ ∂‖z‖₁ at the minimiser
    active = z.abs() > 1e-9
    torch.testing.assert_close(corr[active], lam * torch.sign(z[active]), atol=1e-8, rtol=0)
    assert (corr[~active].abs() <= lam + 1e-8).all()


def test_projected_gradient_matches_scipy_nnls():
    gen = torch.Generator().manual_seed(3)
    design = well_conditioned(gen, 12, 6)
    y = torch.randn(12, generator=gen, dtype=torch.float64)
    step = 1.0 / torch.linalg.matrix_norm(design, 2).item() ** 2
    nnls = ProximalGradient(
        grad=lambda z: design.T @ (design @ z - y), prox=lambda v, tau: v.clamp_min(0.0), step=step
    )
    sol = fp.solve(
        nnls,
        torch.zeros(6, dtype=torch.float64),
        solver=fp.Anderson(atol=1e-12, rtol=0, max_iter=500),
    )
    expected, _ = scipy.optimize.nnls(design.numpy(), y.numpy())
    np.testing.assert_allclose(sol.value.numpy(), expected, atol=1e-9)


def test_batched_lasso_with_per_sample_lambda():
    gen = torch.Generator().manual_seed(0)
    design = well_conditioned(gen, 8, 5)
    y = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.1, 10.0], dtype=torch.float64)
    sol = fp.solve(
        lasso(design),
        torch.zeros(3, 5, dtype=torch.float64),
        y,
        lam,
        batched=True,
        solver=fp.Picard(atol=1e-12, rtol=0, max_iter=3000),
    )
    least_squares = torch.linalg.lstsq(design, y.T).solution.T
    torch.testing.assert_close(sol.value[0], least_squares[0], atol=1e-9, rtol=0)
    assert torch.equal(sol.value[2], torch.zeros(5, dtype=torch.float64))  # λ ≥ ‖Aᵀy‖∞
    with pytest.raises(ValueError, match="step"):
        ProximalGradient(lambda z: z, lambda v, t: v, step=0.0)
