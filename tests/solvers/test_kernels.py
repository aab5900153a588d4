"""The pure numerical kernels of Anderson and Broyden, against dense linear algebra."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixpoint.solvers.anderson import mixing_coefficients
from fixpoint.solvers.broyden import apply_inverse, apply_inverse_transpose, broyden_update

seeds = st.integers(0, 2**31 - 1)


@given(
    seed=seeds,
    m=st.integers(1, 6),
    n=st.integers(1, 20),
    lam=st.sampled_from([0.0, 1e-6, 1e-2, 1.0]),
)
def test_mixing_coefficients_solve_the_regularised_least_squares_problem(seed, m, n, lam):
    gen = torch.Generator().manual_seed(seed)
    dg = torch.randn(3, n, m, generator=gen, dtype=torch.float64)
    g = torch.randn(3, n, generator=gen, dtype=torch.float64)
    gram = dg.mT @ dg
    gamma = mixing_coefficients(gram, (dg.mT @ g[..., None])[..., 0], lam)
    assert torch.isfinite(gamma).all()
    for b in range(3):
        scale = float(np.mean(np.diag(gram[b].numpy())))
        if m > n and lam == 0.0:
            continue  # rank-deficient: covered by the singular test below
        # Independent answer: numpy least squares on the stacked system [ΔG; √(λ d̄) I].
        a = np.vstack([dg[b].numpy(), np.sqrt(lam * scale) * np.eye(m)])
        rhs = np.concatenate([g[b].numpy(), np.zeros(m)])
        expected = np.linalg.lstsq(a, rhs, rcond=None)[0]
        np.testing.assert_allclose(gamma[b].numpy(), expected, rtol=1e-6, atol=1e-8)


def test_mixing_coefficients_fall_back_to_zero_when_singular():
    gram = torch.zeros(2, 3, 3, dtype=torch.float64)
    gram[1] = torch.ones(3, 3, dtype=torch.float64)  # rank one
    rhs = torch.ones(2, 3, dtype=torch.float64)
    gamma = mixing_coefficients(gram, rhs, lam=0.0)
    assert torch.equal(gamma, torch.zeros_like(gamma))
    nan_gram = torch.full((1, 2, 2), float("nan"))
    assert torch.equal(mixing_coefficients(nan_gram, torch.ones(1, 2), 1e-4), torch.zeros(1, 2))


def dense_inverse(u, v):
    n = u.shape[-1]
    return -torch.eye(n, dtype=u.dtype) + u.mT @ v


@given(seed=seeds, m=st.integers(1, 5), n=st.integers(1, 10))
def test_low_rank_inverse_matches_dense(seed, m, n):
    gen = torch.Generator().manual_seed(seed)
    u, v = (torch.randn(2, m, n, generator=gen, dtype=torch.float64) for _ in range(2))
    x = torch.randn(2, n, generator=gen, dtype=torch.float64)
    h = dense_inverse(u, v)
    torch.testing.assert_close(apply_inverse(u, v, x), (h @ x[..., None])[..., 0])
    torch.testing.assert_close(apply_inverse_transpose(u, v, x), (h.mT @ x[..., None])[..., 0])


@given(seed=seeds, m=st.integers(1, 5), n=st.integers(2, 10))
def test_broyden_update_satisfies_the_secant_condition(seed, m, n):
    """After the update H₊y = s (the secant condition); H is unchanged where sᵀHw = 0."""
    gen = torch.Generator().manual_seed(seed)
    u, v = (0.3 * torch.randn(1, m, n, generator=gen, dtype=torch.float64) for _ in range(2))
    s, y = (torch.randn(1, n, generator=gen, dtype=torch.float64) for _ in range(2))
    u_new, v_new = broyden_update(u, v, s, y)
    h = dense_inverse(u[0], v[0])
    h_new = h + torch.outer(u_new[0], v_new[0])
    s, y = s[0], y[0]
    if abs(s @ h @ y) > 1e-6 * float(s.norm() * (h @ y).norm()):
        torch.testing.assert_close(h_new @ y, s)
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        direction = h.mT @ s
        w = w - direction * (direction @ w) / (direction @ direction)
        torch.testing.assert_close(h_new @ w, h @ w)
    else:
        assert torch.equal(u_new, torch.zeros_like(u_new))


def test_broyden_update_skips_tiny_denominators():
    u = torch.zeros(2, 1, 3, dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)  # sᵀHy = 0, -1
    u_new, v_new = broyden_update(u, u, s, y)
    assert torch.equal(u_new[0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(v_new[0], torch.zeros(3, dtype=torch.float64))
    assert u_new[1].abs().sum() > 0
