"""Failures end the solve with the status that says why, and return the best finite iterate."""

import math

import pytest
import torch

import fixpoint as fp
from tests.solvers.test_convergence import GLOBALISED, SOLVERS, make_solver


@pytest.mark.parametrize("name", SOLVERS)
def test_nan_ends_with_nonfinite_and_best_iterate(name):
    # log(z) has no real fixed point; from z0 = 2 the iterates leave the domain.
    sol = fp.solve(
        torch.log, torch.full((3,), 2.0, dtype=torch.float64), solver=make_solver(name, 1e-8)
    )
    if name in GLOBALISED:
        # The line search keeps the iterates where f is finite: they settle at z = 1, the
        # least residual ‖log z − z‖ = √3, and the solve says it ran out of steps.
        assert sol.status == fp.Status.MAX_ITER and not bool(sol.converged)
        torch.testing.assert_close(sol.value, torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)
        torch.testing.assert_close(sol.residual.item(), math.sqrt(3.0), atol=1e-6, rtol=0)
    else:
        assert sol.status == fp.Status.NONFINITE and not bool(sol.converged)
    assert torch.isfinite(sol.value).all() and torch.isfinite(sol.residual)
    torch.testing.assert_close(
        sol.residual, torch.linalg.vector_norm(torch.log(sol.value) - sol.value)
    )
    assert sol.residual == sol.trace[torch.isfinite(sol.trace)].min()


def test_nonfinite_at_the_start():
    z0 = torch.ones(2)
    sol = fp.solve(lambda z: z * math.nan, z0)
    assert sol.status == "nonfinite" and int(sol.iterations) == 0 and int(sol.fevals) == 1
    assert torch.equal(sol.value, z0) and sol.residual == math.inf


@pytest.mark.parametrize("name", ["picard", "anderson"])
def test_growing_residual_ends_with_diverged(name):
    # z ↦ 2z + 1 expands; its fixed point -1 repels Picard. Anderson finds it at once (linear).
    sol = fp.solve(
        lambda z: 2.0 * z + torch.sin(z) + 1.0,
        torch.zeros(2, dtype=torch.float64),
        solver=fp.Picard(max_iter=1000) if name == "picard" else fp.Anderson(m=0, max_iter=1000),
    )
    assert sol.status == fp.Status.DIVERGED
    assert int(sol.iterations) < 100
    # The best iterate is the start: the residual only grew.
    assert torch.equal(sol.value, torch.zeros(2, dtype=torch.float64))
    assert sol.residual == sol.trace[0]
    assert sol.trace[-1] > 1e4 * sol.trace[0]


def test_divergence_check_can_be_disabled():
    sol = fp.solve(
        lambda z: 1.5 * z + 1.0,
        torch.zeros(1, dtype=torch.float64),
        solver=fp.Picard(max_iter=30, divergence=math.inf),
    )
    assert sol.status == "max_iter" and int(sol.iterations) == 30


def test_max_iter_returns_the_best_iterate():
    sol = fp.solve(lambda z: torch.cos(z), torch.zeros(()), solver=fp.Picard(max_iter=4))
    assert sol.status == fp.Status.MAX_ITER and int(sol.iterations) == 4
    assert sol.residual == sol.trace.min()
    assert "max_iter" in fp.Status.MAX_ITER.explanation


def test_anderson_survives_a_singular_least_squares_problem():
    # A scalar state with m = 5 and no regularisation: the 5×5 Gram matrix has rank 1.
    sol = fp.solve(
        torch.cos,
        torch.zeros(1, dtype=torch.float64),
        solver=fp.Anderson(m=5, lam=0.0, atol=1e-12, rtol=0),
    )
    assert sol.status == "converged" and torch.isfinite(sol.value).all()
    torch.testing.assert_close(sol.value, torch.cos(sol.value), atol=1e-12, rtol=0)


def test_broyden_survives_a_zero_denominator():
    # An identical repeated step (f constant on a plateau) gives y = 0, so sᵀHy = 0.
    f = lambda z: torch.where(z.abs() < 5.0, torch.full_like(z, 1.0), z)  # noqa: E731
    sol = fp.solve(f, torch.zeros(4, dtype=torch.float64), solver=fp.Broyden(atol=1e-12, rtol=0))
    assert sol.status == "converged"
    torch.testing.assert_close(sol.value, torch.ones(4, dtype=torch.float64))
