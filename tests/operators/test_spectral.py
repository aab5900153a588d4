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


def test_nonnormal_jacobian_radius_differs_from_norm():
    jac = torch.tensor([[0.3, 5.0], [0.0, 0.3]], dtype=torch.float64)
    est = fp.operators.spectral_radius(
        lambda z: jac @ z, torch.ones(2, dtype=torch.float64), iters=400
    )
    assert abs(est - 0.3) < 0.01
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
