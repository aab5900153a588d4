"""The JFB paper's theorem: under its assumptions the JFB direction is a descent direction."""

import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import affine_contractions, tanh_contractions
from tests.estimators.helpers import library_gradient

seeds = st.integers(0, 2**31 - 1)


def matrix_with_singular_values(n, low, high, gen):
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    s[0], s[-1] = low, high
    return (q1 * s) @ q2.T


@given(
    base=tanh_contractions(gamma=st.floats(0.05, 0.95))
    | affine_contractions(gamma=st.floats(0.05, 0.95)),
    seed=seeds,
    scale=st.floats(0.1, 10.0),
)
def test_jfb_is_a_descent_direction(base, seed, scale):
    """f(z, θ) = T(z) + Uθ with T γ-contractive and κ(UᵀU) ≤ 1/γ: ⟨∇_JFB, ∇L⟩ > 0 for any loss."""
    gamma = base.gamma
    n = base.z0.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    # Singular values of U in [s, s·γ^{-1/2}] give κ(UᵀU) = (σ_max/σ_min)² ≤ 1/γ.
    u = matrix_with_singular_values(n, scale, scale * gamma**-0.5, gen)
    assert torch.linalg.cond(u.T @ u) <= 1 / gamma * (1 + 1e-9)
    x = base.args[0]

    def f(z, theta):
        return base.f(z, x) + theta @ u.T

    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    problem = fp.testing.Problem(
        f=f,
        z0=base.z0,
        args=(theta,),
        gamma=gamma,
        jacobian_fn=lambda z, t: base.jacobian(z, x),
        name="descent",
    )
    target = torch.randn(n, generator=gen, dtype=torch.float64)
    # A nonlinear loss: L = ½‖z* − target‖², so the incoming gradient is z* − target.
    c = problem.reference() - target
    jfb = library_gradient(problem, c, fp.JFB())
    true = library_gradient(problem, c, fp.Exact())
    assert (jfb * true).sum() > 0


@given(n=st.integers(1, 12), gamma=st.floats(0.0, 0.99), seed=seeds)
def test_key_inequality(n, gamma, seed):
    """⟨u, (I − J)⁻¹u⟩ ≥ (1 − γ)/(1 + γ)² ‖u‖² for every J with ‖J‖₂ ≤ γ."""
    gen = torch.Generator().manual_seed(seed)
    jac = matrix_with_singular_values(n, 0.0, 1.0, gen) * gamma
    u = torch.randn(n, generator=gen, dtype=torch.float64)
    inner = u @ torch.linalg.solve(torch.eye(n, dtype=torch.float64) - jac, u)
    assert inner >= (1 - gamma) / (1 + gamma) ** 2 * (u @ u) * (1 - 1e-12)
