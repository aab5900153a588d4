"""Neumann-k and Phantom: truncation bounds and the identities between estimators."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import contractions
from tests.estimators.helpers import library_gradient


def dense_products(jac):
    """vjp/jvp on (1, n) rows from a dense (n, n) Jacobian: rows are v ↦ (Jᵀv)ᵀ = vᵀJ."""
    return (lambda v: v @ jac), (lambda v: v @ jac.mT)


@given(
    problem=contractions(gamma=st.floats(0.05, 0.95)),
    k=st.integers(0, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_neumann_error_within_truncation_bound_and_shrinking(problem, k, seed):
    z = problem.reference()
    jac = problem.jacobian(z)
    g = torch.randn(
        1, z.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    vjp, jvp = dense_products(jac)
    exact = torch.linalg.solve(torch.eye(jac.shape[0], dtype=torch.float64) - jac.mT, g[0])
    gamma = problem.gamma
    error = torch.linalg.vector_norm(fp.Neumann(k=k)(g, vjp, jvp)[0] - exact)
    bound = gamma ** (k + 1) / (1 - gamma) * torch.linalg.vector_norm(g)
    assert error <= bound * (1 + 1e-9) + 1e-13
    # The error is (Jᵀ)^{k+1} w*, so one more term shrinks it by at least the factor γ.
    next_error = torch.linalg.vector_norm(fp.Neumann(k=k + 1)(g, vjp, jvp)[0] - exact)
    assert next_error <= gamma * error * (1 + 1e-9) + 1e-13


@given(problem=contractions(gamma=st.floats(0.0, 0.9), batch=st.none() | st.integers(1, 3)))
def test_neumann_zero_is_jfb(problem):
    c = torch.ones_like(problem.z0)
    jfb = library_gradient(problem, c, fp.JFB())
    neumann = library_gradient(problem, c, fp.Neumann(k=0))
    assert torch.equal(jfb, neumann)


@given(
    problem=contractions(gamma=st.floats(0.0, 0.9), batch=st.none() | st.integers(1, 3)),
    k=st.integers(1, 8),
)
def test_phantom_with_damping_one_is_neumann_k_minus_one(problem, k):
    c = torch.ones_like(problem.z0)
    phantom = library_gradient(problem, c, fp.Phantom(k=k, damping=1.0))
    neumann = library_gradient(problem, c, fp.Neumann(k=k - 1))
    torch.testing.assert_close(phantom, neumann, atol=1e-14, rtol=1e-12)


@given(problem=contractions(gamma=st.floats(0.0, 0.8)), damping=st.floats(0.2, 1.0))
def test_phantom_tends_to_the_exact_gradient(problem, damping):
    c = torch.ones_like(problem.z0)
    exact = library_gradient(problem, c, fp.Exact())
    errors = [
        torch.linalg.vector_norm(library_gradient(problem, c, fp.Phantom(k, damping)) - exact)
        for k in (5, 40, 400)
    ]
    assert errors[2] <= 1e-8 * (1 + torch.linalg.vector_norm(exact))
    assert errors[2] <= errors[0]


def test_implicit_picard_is_neumann():
    problem_f = lambda z, b: 0.5 * torch.tanh(z) + b  # noqa: E731
    b = torch.tensor([0.3, -1.0], dtype=torch.float64)
    g = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    z = fp.solve(
        problem_f, torch.zeros(2, dtype=torch.float64), b, solver=fp.Anderson(atol=1e-13, rtol=0)
    ).value
    jac = torch.func.jacrev(lambda v: problem_f(v, b))(z)
    vjp, jvp = dense_products(jac)
    for k in (1, 3, 6):
        implicit = fp.Implicit(fp.Picard(max_iter=k, atol=0, rtol=0), warn=False)(g, vjp, jvp)
        torch.testing.assert_close(implicit.w, fp.Neumann(k=k)(g, vjp, jvp))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (fp.Neumann, {"k": -1}),
        (fp.Neumann, {"k": 1.5}),
        (fp.Phantom, {"k": 0}),
        (fp.Phantom, {"damping": 0.0}),
        (fp.CG, {"max_iter": 0}),
        (fp.CG, {"rtol": -1.0}),
    ],
)
def test_invalid_estimator_options(cls, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_unknown_estimator_option_and_bad_solver():
    with pytest.raises(TypeError, match="kk"):
        fp.Neumann(kk=3)
    with pytest.raises(TypeError, match="Solver"):
        fp.Implicit(solver="anderson")
