"""scipy's nonlinear test problems, posed as fixed points, for every solver.

scipy requires its Broyden and Newton–Krylov methods to solve all seven; so do we, at a far
tighter tolerance. Every other solver must at least be honest: a status ``converged`` only where
the returned point solves the system, and the reported residual that of the returned point.
"""

import numpy as np
import pytest
import torch

import fixpoint as fp

PROBLEMS = fp.testing.scipy_nonlin_problems()
TOL = 1e-9

SOLVERS = {
    "picard": fp.Picard(atol=TOL, rtol=0, max_iter=200),
    "anderson": fp.Anderson(atol=TOL, rtol=0, max_iter=200),
    "broyden": fp.Broyden(atol=TOL, rtol=0, max_iter=200),
    "broyden-plain": fp.Broyden(atol=TOL, rtol=0, max_iter=200, line_search=False),
    "newton-krylov": fp.NewtonKrylov(atol=TOL, rtol=0, max_iter=200),
}
# What each solver must solve, beyond honesty (the rest of the table is in the benchmark
# benchmarks/nonlin_problems.py). A plain fixed-point iteration solves only the maps that
# contract; Anderson's only failure is Powell's badly scaled system.
MUST_SOLVE = {
    "broyden": set(PROBLEMS),
    "newton-krylov": set(PROBLEMS),
    "anderson": set(PROBLEMS) - {"F4_powell"},
    "picard": {"F2_lucky", "F6"},
}


def test_the_problems_are_scipys():
    """Each residual f(z) − z is the F of scipy's own test module, at the start and nearby."""
    scipy_tests = pytest.importorskip("scipy.optimize.tests.test_nonlin")
    rng = np.random.default_rng(0)
    for name, problem in PROBLEMS.items():
        reference = getattr(scipy_tests, name)
        assert list(problem.z0.numpy()) == [float(v) for v in reference.xin]
        for x in (
            problem.z0.numpy(),
            problem.z0.numpy() + 0.1 * rng.standard_normal(problem.z0.shape),
        ):
            ours = (problem.f(torch.from_numpy(x)) - torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(
                ours, np.asarray(reference(x), dtype=float), rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_is_honest_and_the_globalised_ones_solve_everything(solver, name):
    problem = PROBLEMS[name]
    sol = fp.solve(problem.f, problem.z0, solver=SOLVERS[solver])
    residual = torch.linalg.vector_norm(problem.f(sol.value) - sol.value)
    if torch.isfinite(residual):
        torch.testing.assert_close(sol.residual, residual)  # the residual of what is returned
    if sol.status == "converged":
        assert residual <= TOL
    else:
        assert not residual <= TOL  # a solve that failed did not stop at a solution
    if name in MUST_SOLVE.get(solver, ()):
        assert sol.status == "converged", (solver, name, sol)


def test_powell_root():
    """Powell's system has one root near (1.098e-5, 9.106): the globalised solvers find it."""
    problem = PROBLEMS["F4_powell"]
    scipy_root = pytest.importorskip("scipy.optimize").root(
        lambda x: (problem.f(torch.from_numpy(x)) - torch.from_numpy(x)).numpy(),
        problem.z0.numpy(),
        method="hybr",
        tol=1e-14,
    )
    assert scipy_root.success
    for solver in ("broyden", "newton-krylov"):
        sol = fp.solve(problem.f, problem.z0, solver=SOLVERS[solver])
        np.testing.assert_allclose(sol.value.numpy(), scipy_root.x, rtol=1e-6)
