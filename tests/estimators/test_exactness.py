"""Exact, CG and Implicit(Anderson) give the implicit-function-theorem gradient."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import contractions
from tests.estimators.helpers import TIGHT, dense_ift_gradient, library_gradient
from tests.methods import ESTIMATOR_CLASSES, SOLVER_CLASSES, estimator, is_exact, solver

# Every exact library estimator (tests/methods.py), and Implicit with each library solver
# that can serve it.
EXACT_ESTIMATORS = {
    type(e).__name__: e
    for e in (estimator(cls, 1e-13) for cls in ESTIMATOR_CLASSES if is_exact(cls))
} | {
    f"Implicit-{cls.__name__}": fp.Implicit(solver(cls, 1e-13))
    for cls in SOLVER_CLASSES
    if not cls.differentiates_map
}


@pytest.mark.parametrize("name", list(EXACT_ESTIMATORS))
@given(
    problem=contractions(gamma=st.floats(0.0, 0.9), batch=st.none() | st.integers(1, 3)),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradient_matches_dense_ift(name, problem, seed):
    c = torch.randn(
        problem.z0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    got = library_gradient(problem, c, EXACT_ESTIMATORS[name])
    expected = dense_ift_gradient(problem, c)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["Exact", "CG", "Implicit"])
@settings(max_examples=15)
@given(
    problem=contractions(n=st.integers(1, 5), gamma=st.floats(0.0, 0.8)),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradient_matches_finite_differences_of_the_solution(name, problem, seed):
    """Central differences of θ ↦ ⟨c, z*(θ)⟩, with z* solved by Newton (no library solver)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(problem.z0.shape, generator=gen, dtype=torch.float64)
    got = library_gradient(problem, c, EXACT_ESTIMATORS[name])
    theta = problem.args[0]
    eps = 1e-6
    fd = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta).view(-1)
        e[i] = eps
        e = e.view_as(theta)
        up = (c * problem.reference(theta + e)).sum()
        down = (c * problem.reference(theta - e)).sum()
        fd.view(-1)[i] = (up - down) / (2 * eps)
    torch.testing.assert_close(got, fd, atol=1e-7, rtol=1e-6)


def test_gradcheck_passes_for_exact():
    gen = torch.Generator().manual_seed(0)
    w = 0.6 * torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]
    u = torch.randn(4, 3, generator=gen, dtype=torch.float64)

    def solution(x, scale):
        return fp.fixed_point(
            lambda z, x, s: s * torch.tanh(z @ w.T + u @ x),
            torch.zeros(4, dtype=torch.float64),
            x,
            scale,
            solver=TIGHT,
            estimator=fp.Exact(),
        )

    x = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solution, (x, scale), eps=1e-6, atol=1e-7)


def test_gradcheck_passes_for_exact_batched_pytree():
    def f(z, x):
        a, b = z
        return (0.5 * torch.tanh(b[:, :2] + x), 0.3 * torch.sin(a).repeat(1, 2) + 0.1 * b)

    def solution(x):
        z0 = (torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))
        a, b = fp.fixed_point(f, z0, x, solver=TIGHT, estimator=fp.Exact(), batched=True)
        return a, b

    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solution, (x,), eps=1e-6, atol=1e-7)


def test_cg_never_returns_a_silent_zero():
    """A loose absolute tolerance that g already meets (the JFB paper's MNIST eps = 0.1): from
    zero, CG still takes a step; from w0 = g it answers g (JFB), never w = 0."""
    jt = torch.tensor([[0.3, 0.1], [0.0, 0.4]], dtype=torch.float64)
    g = torch.tensor([[0.03, -0.04]], dtype=torch.float64)  # ‖g‖ = 0.05 < atol

    def vjp(v):
        return v @ jt.T

    def jvp(v):
        return v @ jt

    exact = torch.linalg.solve(torch.eye(2, dtype=torch.float64) - jt, g[0])
    from_zero = fp.CG(atol=0.1, rtol=0.0, w0="zero")(g, vjp, jvp)
    assert from_zero.iterations == 1 and (from_zero.w != 0).any()
    assert torch.linalg.vector_norm(from_zero.w[0] - exact) < torch.linalg.vector_norm(exact)
    from_g = fp.CG(atol=0.1, rtol=0.0)(g, vjp, jvp)
    assert from_g.iterations == 0 and torch.equal(from_g.w, g)
    tight = fp.CG(atol=1e-12, rtol=0.0)(g, vjp, jvp)
    torch.testing.assert_close(tight.w[0], exact)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    assert fp.CG(w0="zero")(zero, vjp, jvp).iterations == 0  # g = 0: w = 0 is right
