"""spectral_radius estimates ρ(∂f/∂z), the quantity the contraction assumption is about."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 10), rho=st.floats(0.05, 1.5))
def test_symmetric_jacobian_with_a_gap(seed, n, rho):
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    eig = rho * torch.linspace(-0.7, 0.7, n, dtype=torch.float64)
    eig[0] = rho  # dominant, simple, gap ratio 0.7
    jac = (q * eig) @ q.T
    est = fp.operators.spectral_radius(
        lambda z: jac @ z, torch.zeros(n, dtype=torch.float64), iters=120, generator=gen
    )
    assert abs(est - rho) <= 1e-6 * rho


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 12))
def test_exact_for_any_jacobian_of_dimension_at_most_the_steps(seed, n):
    """Arnoldi spans the whole space after n steps: the Ritz values are the eigenvalues."""
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
    expected = torch.linalg.eigvals(jac).abs().max()
    est, residual = fp.operators.spectral_radius(
        lambda z: jac @ z, torch.zeros(n, dtype=torch.float64), generator=gen, return_residual=True
    )
    torch.testing.assert_close(est, expected, atol=1e-8, rtol=1e-8)
    assert residual <= 1e-8


def test_a_small_gap_at_rho_one():
    """ρ = 1 with the next eigenvalue at 0.97 (n = 200): the power method, 10 steps, read 0.87–0.92
    (a contraction, wrongly); Arnoldi gets 1 to 1e-4 in 60 steps, from below."""
    gen = torch.Generator().manual_seed(0)
    n = 200
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    eig = torch.empty(n, dtype=torch.float64).uniform_(-0.97, 0.97, generator=gen)
    eig[0] = 1.0
    jac = (q * eig) @ q.T
    for seed in range(3):
        est, residual = fp.operators.spectral_radius(
            lambda z: jac @ z,
            torch.zeros(n, dtype=torch.float64),
            iters=60,
            generator=torch.Generator().manual_seed(seed),
            return_residual=True,
        )
        assert 1 - 1e-4 <= est <= 1 + 1e-12 and residual < 1e-4


def test_nonnormal_jacobian_radius_differs_from_norm():
    jac = torch.tensor([[0.3, 5.0], [0.0, 0.3]], dtype=torch.float64)
    est = fp.operators.spectral_radius(lambda z: jac @ z, torch.ones(2, dtype=torch.float64))
    assert abs(est - 0.3) < 1e-6
    assert fp.operators.lipschitz(lambda z: jac @ z, torch.ones(2, dtype=torch.float64)) > 4


def test_batched_per_sample():
    scales = torch.tensor([0.2, 0.9, 1.3], dtype=torch.float64)

    def f(z):
        return scales[:, None] * torch.tanh(z)

    est = fp.operators.spectral_radius(
        f, torch.zeros(3, 4, dtype=torch.float64), iters=10, batched=True
    )
    torch.testing.assert_close(est, scales)
    with pytest.raises(ValueError, match="iters"):
        fp.operators.spectral_radius(f, torch.zeros(3, 4), iters=1)
