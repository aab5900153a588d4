"""Power iteration gives a lower bound on ‖∂f/∂z‖₂ that converges to it."""

import itertools

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import affine_contractions, tanh_contractions


def exact_norm(problem, z):
    return torch.linalg.matrix_norm(problem.jacobian(z), ord=2)


def singular_gap(problem, z):
    s = torch.linalg.svdvals(problem.jacobian(z))
    return s[..., 1] / s[..., 0] if s.shape[-1] > 1 else torch.zeros_like(s[..., 0])


@given(
    problem=affine_contractions(n=st.integers(1, 10), gamma=st.floats(0.05, 0.99)),
    iters=st.integers(1, 30),
)
def test_estimate_never_exceeds_the_spectral_norm(problem, iters):
    est = fp.operators.lipschitz(problem.f, problem.z0, *problem.args, iters=iters)
    assert est <= problem.gamma * (1 + 1e-12)
    assert est > 0


@given(problem=affine_contractions(n=st.integers(1, 10), gamma=st.floats(0.05, 0.99)))
def test_estimate_converges_on_affine_maps(problem):
    assume(float(singular_gap(problem, problem.z0)) < 0.95)
    est = fp.operators.lipschitz(problem.f, problem.z0, *problem.args, iters=300)
    assert abs(est - problem.gamma) <= 1e-6 * problem.gamma


@given(problem=affine_contractions(n=st.integers(2, 10), gamma=0.9), seed=st.integers(0, 1000))
def test_estimate_is_monotone_in_the_number_of_iterations(problem, seed):
    """Rayleigh quotients of power iteration on the PSD matrix JᵀJ never decrease."""
    estimates = [
        fp.operators.lipschitz(
            problem.f,
            problem.z0,
            *problem.args,
            iters=k,
            generator=torch.Generator().manual_seed(seed),
        )
        for k in (1, 2, 4, 8, 16)
    ]
    for a, b in itertools.pairwise(estimates):
        assert b >= a * (1 - 1e-12)


@given(problem=tanh_contractions(batch=st.integers(1, 4), gamma=st.floats(0.1, 0.95)))
def test_batched_estimate_is_per_sample(problem):
    z = problem.z0
    est = fp.operators.lipschitz(problem.f, z, *problem.args, iters=200, batched=True)
    exact = exact_norm(problem, z)
    assert est.shape == (z.shape[0],)
    assert (est <= exact * (1 + 1e-10) + 1e-14).all()
    assert (exact <= problem.gamma * (1 + 1e-12)).all()
    converged = singular_gap(problem, z) < 0.9
    torch.testing.assert_close(est[converged], exact[converged], rtol=1e-6, atol=1e-12)


def test_pytree_state_and_zero_jacobian():
    def f(z):
        return {"a": 0.5 * z["a"], "b": 0.25 * z["b"] + 0.1 * z["a"].sum()}

    z = {"a": torch.ones(3, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    dense = torch.func.jacrev(lambda v: torch.cat(list(f({"a": v[:3], "b": v[3:]}).values())))(
        torch.ones(5).double()
    )
    est = fp.operators.lipschitz(f, z, iters=100)
    torch.testing.assert_close(est, torch.linalg.matrix_norm(dense, 2))
    assert fp.operators.lipschitz(lambda z: torch.ones_like(z), torch.ones(3)) == 0


def test_bad_iters():
    with pytest.raises(ValueError, match="iters"):
        fp.operators.lipschitz(torch.cos, torch.ones(2), iters=0)
