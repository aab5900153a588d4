"""The bilevel lasso example: its hypergradients against independent answers, and its tuning run.

The independent answers (a certified closed form, finite differences, a grid search) are in
``lasso_reference.py``; the tests check them too.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import examples.bilevel_lasso as bl
import fixpoint as fp
from examples.common import make_estimator
from tests.examples import lasso_reference as ref
from tests.examples.lasso_reference import closed_form_of

SMALL = {"n": 12, "m_train": 40, "m_val": 30, "nonzeros": 3}
"""A problem small enough for many Hypothesis examples."""

seeds = st.integers(0, 2**16)
fractions = st.floats(0.02, 0.9)
"""λ as a fraction of λ_max (above λ_max the solution is 0 and V is flat)."""


def residual_gradient(problem: bl.Problem, z: torch.Tensor) -> torch.Tensor:
    """g = ∂V/∂z = A_valᵀ(A_val z − y_val)."""
    return problem.a_val.T @ (problem.a_val @ z - problem.y_val)


# ---------------------------------------------------------------------------------------------
# The library's hypergradient
# ---------------------------------------------------------------------------------------------


@given(seed=seeds, fraction=fractions)
def test_library_hypergradient_equals_closed_form_and_finite_differences(seed, fraction):
    problem = bl.make_problem(seed, **SMALL)
    lam = fraction * problem.lam_max
    z = bl.solve_lasso(problem, lam)
    # The closed form certifies the sign pattern by the optimality conditions (it raises at a
    # kink of the path, which a random λ hits with probability 0).
    exact = closed_form_of(problem, lam, z)
    torch.testing.assert_close(z, exact.z, rtol=0, atol=1e-10)

    assert bl.closed_form_hypergradient(problem, lam, z) == pytest.approx(
        exact.hypergradient, rel=1e-9, abs=1e-12
    )
    for name in ("exact", "implicit"):
        value = bl.hypergradient(problem, lam, make_estimator(name, **bl.EXACT))
        assert math.isclose(value, exact.hypergradient, rel_tol=1e-8, abs_tol=1e-12), name

    # V is quadratic in λ between kinks, so a central difference whose stencil stays inside
    # the interval is exact up to the solves' error: take the widest such step (up to λ / 10).
    lo, hi = exact.segment
    step = min(0.5 * (lam - lo), 0.5 * (hi - lam), 0.1 * lam)
    fd = ref.finite_difference(problem, lam, rel_step=step / lam)
    assert fd.same_support
    assert math.isclose(fd.value, exact.hypergradient, rel_tol=1e-6, abs_tol=1e-9)


@given(seed=seeds, fraction=fractions, k=st.integers(0, 30))
def test_jfb_and_neumann_hypergradients_are_partial_neumann_sums(seed, fraction, k):
    # On the support, Jᵀ acts as P = I − τA_SᵀA_S and ∂T/∂λ = −τs, so Neumann-k gives
    # −τ sᵀ Σ_{i≤k} Pⁱ g_S (JFB: k = 0).
    problem = bl.make_problem(seed, **SMALL)
    lam = fraction * problem.lam_max
    z = bl.solve_lasso(problem, lam)
    support = z != 0
    s, tau = torch.sign(z[support]), problem.ista.step
    a_s = problem.a_train[:, support]
    p = torch.eye(a_s.shape[1], dtype=bl.DTYPE) - tau * a_s.T @ a_s
    term = residual_gradient(problem, z)[support]
    total = term.clone()
    for _ in range(k):
        term = p @ term
        total = total + term
    expected = (-tau * s @ total).item()
    estimator = fp.JFB() if k == 0 else fp.Neumann(k=k)
    value = bl.hypergradient(problem, lam, estimator)
    assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# The closed form, without the library
# ---------------------------------------------------------------------------------------------


@given(seed=seeds, fraction=st.floats(0.05, 0.95))
def test_closed_form_is_soft_thresholding_for_an_orthonormal_design(seed, fraction):
    # With QᵀQ = I the lasso decouples: z*(λ) = S_λ(Qᵀy), dz*/dλ = −sign(z*), and the support
    # changes exactly when λ crosses some |Qᵀy|_j.
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(30, 10, generator=gen, dtype=torch.float64))[0]
    y = torch.randn(30, generator=gen, dtype=torch.float64)
    a_val = torch.randn(20, 10, generator=gen, dtype=torch.float64)
    y_val = torch.randn(20, generator=gen, dtype=torch.float64)
    b = q.T @ y
    lam = fraction * b.abs().max().item()
    z = torch.sign(b) * (b.abs() - lam).clamp_min(0)

    result = ref.closed_form(q, y, a_val, y_val, lam, torch.sign(z))
    torch.testing.assert_close(result.z, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.dz, -torch.sign(z), rtol=0, atol=1e-12)
    expected = -((a_val @ z - y_val) @ (a_val @ torch.sign(z))).item()
    assert math.isclose(result.hypergradient, expected, rel_tol=1e-10, abs_tol=1e-12)
    on = z != 0
    assert result.segment[0] == pytest.approx(b[~on].abs().max().item() if (~on).any() else 0.0)
    assert result.segment[1] == pytest.approx(b[on].abs().min().item())


def test_closed_form_follows_the_lars_homotopy_path():
    # scikit-learn's LARS-lasso computes the piecewise-affine path z*(λ) exactly, with an
    # unrelated algorithm: between consecutive knots z* is affine, its slope is dz*/dλ and the
    # knots bound the interval of a fixed support.
    linear_model = pytest.importorskip("sklearn.linear_model")
    problem = bl.make_problem(3, **SMALL)
    a, y = problem.a_train.numpy(), problem.y_train.numpy()
    alphas, _, coefs = linear_model.lars_path(a, y, method="lasso")
    knots = alphas * a.shape[0]  # sklearn scales the squared loss by 1 / (2 m)
    checked = 0
    for i in range(len(knots) - 1):
        upper, lower = knots[i], knots[i + 1]
        if upper - lower < 1e-6 * upper:
            continue
        lam = float(0.6 * upper + 0.4 * lower)
        z_path = 0.6 * coefs[:, i] + 0.4 * coefs[:, i + 1]
        slope = (coefs[:, i] - coefs[:, i + 1]) / (upper - lower)
        result = closed_form_of(problem, lam, torch.from_numpy(z_path))
        np.testing.assert_allclose(result.z.numpy(), z_path, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.dz.numpy(), slope, rtol=0, atol=1e-7)
        np.testing.assert_allclose(result.segment, (lower, upper), rtol=1e-7)
        checked += 1
    assert checked >= 5


def test_closed_form_rejects_a_sign_pattern_that_is_not_optimal():
    problem = bl.make_problem(0, **SMALL)
    lam = 0.3 * problem.lam_max
    signs = torch.sign(bl.solve_lasso(problem, lam))
    wrong = signs.clone()
    wrong[int(torch.nonzero(signs == 0)[0])] = 1.0  # one more coefficient on the support
    with pytest.raises(ref.NotGeneric):
        closed_form_of(problem, lam, wrong)


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_quick_run_decreases_the_validation_loss(seed, capsys):
    result = bl.main(["--quick", "--no-progress", "--seed", str(seed)])
    trajectory = result["trajectory"]
    assert len(trajectory) == result["config"]["steps"] == 15
    assert result["final_loss"] < result["initial_loss"]

    # The reported numbers are V at the reported λ, recomputed independently of the run.
    problem = bl.make_problem(seed, **bl.QUICK_SIZES)
    for row in (trajectory[0], trajectory[-1]):
        z = bl.solve_lasso(problem, row["lam"])
        assert row["loss"] == pytest.approx(bl.validation_loss(problem, z).item(), rel=1e-8)
        assert row["nonzeros"] == int((z != 0).sum())

    # The comparison: the printed closed form is the certified one, the exact estimators agree.
    (comparison,) = result["comparisons"]
    lam = comparison["lam"]
    certified = closed_form_of(problem, lam, bl.solve_lasso(problem, lam))
    assert comparison["closed_form"] == pytest.approx(certified.hypergradient, rel=1e-9)
    fd = ref.finite_difference(problem, lam)
    assert fd.same_support and fd.value == pytest.approx(certified.hypergradient, rel=1e-6)
    estimators = comparison["estimators"]
    assert list(estimators) == list(bl.COMPARED)
    for name in ("exact", "implicit", "cg"):
        assert estimators[name]["relative_error"] < 1e-8
    assert estimators["jfb"]["vjp"] == 0 and estimators["neumann-5"]["vjp"] == 5
    assert "closed form" in capsys.readouterr().out


def test_default_descent_beats_a_grid_search():
    # The docs' claim for the default run (seed 0, 40 steps from λ_max / 2): gradient descent
    # reaches a lower validation loss than the best of 100 λ on a log grid.
    problem = bl.make_problem(0)
    estimator = make_estimator("implicit", **bl.EXACT)
    history = bl.tune(problem, problem.lam_max / 2, 40, 0.1, estimator, progress=False)
    grid = torch.logspace(math.log10(problem.lam_max) - 3, math.log10(problem.lam_max), 100)
    _, grid_loss = ref.grid_search(problem, grid)
    assert min(row["loss"] for row in history) < grid_loss


def test_unknown_estimator_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        bl.main(["--quick", "--estimator", "neumann"])
    assert "unknown estimator 'neumann'" in capsys.readouterr().err
