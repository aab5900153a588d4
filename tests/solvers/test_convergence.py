"""Every solver finds the fixed point of drawn contractions, and its statistics tell the truth."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import contractions
from tests.conftest import tol_for
from tests.methods import SOLVER_CLASSES, solver

# Every library solver (tests/methods.py), and variants worth their own run.
VARIANTS = {"Broyden-plain": (fp.Broyden, dict(line_search=False))}
CLASSES = {cls.__name__: (cls, {}) for cls in SOLVER_CLASSES} | VARIANTS
SOLVERS = list(CLASSES)


def make_solver(name: str, tol: float) -> fp.Solver:
    cls, options = CLASSES[name]
    return solver(cls, tol, **options)


# Solvers whose line search evaluates f at trial points (of any row of a batch).
GLOBALISED = {name for name in SOLVERS if getattr(make_solver(name, 1e-6), "line_search", False)}


class Counting:
    """Wraps f and counts its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, *a):
        self.calls += 1
        return self.f(*a)


@pytest.mark.parametrize("name", SOLVERS)
@given(problem=contractions(gamma=st.floats(0.0, 0.9), dtype=fp.testing.dtypes))
def test_reaches_tolerance_and_matches_reference(name, problem):
    tol = tol_for(problem.dtype)
    f = Counting(problem.f)
    sol = fp.solve(f, problem.z0, *problem.args, solver=make_solver(name, tol))
    assert sol.status == fp.Status.CONVERGED and bool(sol.converged)
    assert sol.value.dtype == problem.dtype and sol.value.shape == problem.z0.shape
    # The reported residual is the residual of the returned value.
    residual = torch.linalg.vector_norm(problem.f(sol.value, *problem.args) - sol.value)
    torch.testing.assert_close(sol.residual, residual)
    assert residual <= tol
    # A posteriori bound for a γ-contraction: ‖z − z*‖ ≤ ‖f(z) − z‖ / (1 − γ).
    z_star = problem.reference().double()
    error = torch.linalg.vector_norm(sol.value.double() - z_star)
    eps = torch.finfo(problem.dtype).eps
    rounding = 16 * eps * (1 + torch.linalg.vector_norm(z_star)) * z_star.numel()
    assert error <= (residual.double() + rounding) / (1 - problem.gamma)
    # Statistics are consistent with what the solver did.
    assert int(sol.fevals) == f.calls
    assert sol.trace.shape == (int(sol.iterations) + 1,)
    assert sol.trace[-1] <= tol
    torch.testing.assert_close(
        sol.trace[0], torch.linalg.vector_norm(problem.f(problem.z0, *problem.args) - problem.z0)
    )


@given(problem=contractions(gamma=st.floats(0.0, 0.9)))
def test_picard_obeys_banach_bound(problem):
    """‖z_k − z*‖ ≤ γ^k ‖z_0 − z*‖ and ‖f(z_k) − z_k‖ ≤ γ^k ‖f(z_0) − z_0‖ for every k."""
    gamma = problem.gamma
    z_star = problem.reference()
    e0 = torch.linalg.vector_norm(problem.z0 - z_star)
    for k in (1, 2, 3, 5, 8, 13):
        sol = fp.solve(
            problem.f, problem.z0, *problem.args, solver=fp.Picard(atol=0, rtol=0, max_iter=k)
        )
        if sol.status == fp.Status.CONVERGED:  # hit the fixed point exactly (γ = 0)
            assert torch.linalg.vector_norm(sol.value - z_star) <= 1e-12
            break
        assert int(sol.iterations) == k
        assert torch.linalg.vector_norm(sol.value - z_star) <= gamma**k * e0 + 1e-12
        above_rounding = sol.trace[:-1] > 1e-10
        ratios = sol.trace[1:][above_rounding] / sol.trace[:-1][above_rounding]
        assert (ratios <= gamma + 1e-6).all()


@pytest.mark.parametrize("name", SOLVERS)
def test_solution_of_linear_system_matches_dense_solve(name):
    gen = torch.Generator().manual_seed(0)
    n = 50
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a *= 0.8 / torch.linalg.matrix_norm(a, 2)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    f = fp.operators.Affine(a, b)
    sol = fp.solve(f, torch.zeros(n, dtype=torch.float64), solver=make_solver(name, 1e-12))
    torch.testing.assert_close(sol.value, f.fixed_point(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", SOLVERS)
def test_converged_start_takes_no_step(name):
    f = fp.operators.Affine(0.5 * torch.eye(3), torch.ones(3))
    sol = fp.solve(f, f.fixed_point(), solver=make_solver(name, 1e-6))
    assert int(sol.iterations) == 0 and int(sol.fevals) == 1
    assert sol.status == "converged"


def test_relative_tolerance_is_relative_to_the_state_norm():
    """‖f(z) − z‖ ≤ atol + rtol‖z‖: scaling the problem by 2²⁰ does not change the iterations."""
    a = torch.tensor([[0.6, 0.2], [-0.1, 0.5]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    runs = []
    for scale in (1.0, 2.0**20):
        sol = fp.solve(
            fp.operators.Affine(a, scale * b),
            torch.zeros(2, dtype=torch.float64),
            solver=fp.Picard(atol=0, rtol=1e-8, max_iter=500),
        )
        z = sol.value
        assert sol.residual <= 1e-8 * torch.linalg.vector_norm(z)
        runs.append(int(sol.iterations))
    assert runs[0] == runs[1]


def test_anderson_m0_is_damped_picard():
    problem = fp.testing.h_equation(0.5, n=32)
    for beta in (1.0, 0.5):
        anderson = fp.solve(
            problem.f,
            problem.z0,
            solver=fp.Anderson(m=0, beta=beta, atol=1e-12, rtol=0, max_iter=300),
        )
        picard = fp.solve(
            problem.f, problem.z0, solver=fp.Picard(damping=beta, atol=1e-12, rtol=0, max_iter=300)
        )
        assert int(anderson.iterations) == int(picard.iterations)
        torch.testing.assert_close(anderson.value, picard.value)


def test_no_autograd_graph_is_kept():
    w = torch.nn.Parameter(0.5 * torch.eye(3))
    z0 = torch.zeros(3, requires_grad=True)
    sol = fp.solve(lambda z: z @ w + 1.0, z0)
    assert not sol.value.requires_grad and sol.value.grad_fn is None


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype_follow_the_input(name, dtype, device):
    f = fp.operators.Affine(
        0.5 * torch.eye(4, dtype=dtype, device=device), torch.ones(4, dtype=dtype, device=device)
    )
    sol = fp.solve(
        f, torch.zeros(4, dtype=dtype, device=device), solver=make_solver(name, tol_for(dtype))
    )
    assert sol.value.dtype == dtype and sol.value.device.type == device.type
    assert sol.residual.device.type == device.type and sol.converged.device.type == device.type
    torch.testing.assert_close(sol.value, torch.full_like(sol.value, 2.0))
