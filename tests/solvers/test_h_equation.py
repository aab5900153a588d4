"""The Chandrasekhar H-equation: Anderson and Broyden solve it where Picard is slow."""

import numpy as np
import pytest
import scipy.optimize
import torch

import fixpoint as fp
from fixpoint.testing import h_equation, h_equation_mean

TOL = dict(atol=1e-10, rtol=0.0)


@pytest.mark.parametrize("c", [0.5, 0.9, 0.99])
@pytest.mark.parametrize(
    "solver",
    [
        fp.Anderson(**TOL),
        fp.Broyden(**TOL),
        fp.Broyden(line_search=False, **TOL),
        fp.NewtonKrylov(**TOL),
    ],
    ids=repr,
)
def test_solution_has_the_known_mean(c, solver):
    problem = h_equation(c, n=512)
    sol = fp.solve(problem.f, problem.z0, solver=solver)
    assert sol.status == "converged"
    assert abs(sol.value.mean().item() - h_equation_mean(c)) < 1e-9
    assert int(sol.iterations) <= 25


def test_anderson_and_broyden_beat_picard_at_c_099():
    """With a budget of 30 steps, Picard is still far away; Anderson and Broyden are done."""
    problem = h_equation(0.99, n=512)
    budget = dict(max_iter=30, **TOL)
    picard = fp.solve(problem.f, problem.z0, solver=fp.Picard(**budget))
    assert picard.status == "max_iter" and picard.residual > 1e-6
    for solver in (fp.Anderson(**budget), fp.Broyden(**budget)):
        sol = fp.solve(problem.f, problem.z0, solver=solver)
        assert sol.status == "converged"
        assert int(sol.iterations) * 2 < 30


def test_agrees_with_scipy_newton_krylov():
    problem = h_equation(0.9, n=256)
    ours = fp.solve(problem.f, problem.z0, solver=fp.Anderson(**TOL)).value.numpy()

    def residual(x):
        return problem.f(torch.from_numpy(x)).numpy() - x

    theirs = scipy.optimize.newton_krylov(residual, np.ones(256), f_tol=1e-12)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_dense_jacobian_of_the_problem_is_right():
    problem = h_equation(0.7, n=16)
    h = torch.rand(16, dtype=torch.float64) + 1.0
    torch.testing.assert_close(problem.jacobian(h), torch.func.jacrev(problem.f)(h))
