"""Problems with explicit parameters and independent answers for the torch.func tests.

Every reference here is computed without fixpoint: dense Jacobians from torch.func on ``f``
itself, a dense solve, and finite differences.
"""

import torch
from hypothesis import strategies as st

import fixpoint as fp
from tests.methods import ESTIMATOR_CLASSES, estimator, is_exact

TIGHT = fp.Anderson(atol=1e-13, rtol=0.0, max_iter=500)
# Every library estimator (tests/methods.py): the exact ones solve to 1e-13.
EXACT = [estimator(cls, 1e-13) for cls in ESTIMATOR_CLASSES if is_exact(cls)]
INEXACT = [estimator(cls) for cls in ESTIMATOR_CLASSES if not is_exact(cls)]
ESTIMATORS = EXACT + INEXACT
# The Krylov estimators some tests single out.
CG_TIGHT = fp.CG(atol=1e-13, rtol=0.0, max_iter=500)
GMRES_TIGHT = fp.GMRES(atol=1e-13, rtol=0.0, max_iter=500, restart=7)


def f(z, w, x, gamma):
    """γ·tanh(W z + x): γ-Lipschitz in z while ‖W‖₂ ≤ 1."""
    return gamma * torch.tanh(z @ w.mT + x)


class Params:
    """A drawn problem: θ = (W, x) with ‖W‖₂ = 1 and contraction factor γ."""

    def __init__(self, n, gamma, seed, batch=None):
        gen = torch.Generator().manual_seed(seed)
        q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        s = torch.rand(n, generator=gen, dtype=torch.float64)
        s[0] = 1.0
        self.w = (q1 * s) @ q2.T
        lead = () if batch is None else (batch,)
        self.x = torch.randn(*lead, n, generator=gen, dtype=torch.float64)
        self.c = torch.randn(*lead, n, generator=gen, dtype=torch.float64)
        self.n, self.gamma, self.batch = n, gamma, batch
        self.name = f"Params(n={n}, gamma={gamma:.3g}, seed={seed}, batch={batch})"

    def __repr__(self):
        return self.name

    def map(self, z, w, x):
        return f(z, w, x, self.gamma)

    def z0(self, x=None):
        return torch.zeros_like(self.x if x is None else x)

    def solve(self, w=None, x=None):
        """z* by plain iteration to machine precision (float64), without fixpoint."""
        w = self.w if w is None else w
        x = self.x if x is None else x
        z = torch.zeros_like(x)
        for _ in range(2000):
            z_next = self.map(z, w, x)
            if (z_next - z).abs().max() <= 1e-15:
                return z_next
            z = z_next
        return z


@st.composite
def params(draw, n=st.integers(1, 5), gamma=st.floats(0.1, 0.85), batch=None):
    n_ = draw(n) if isinstance(n, st.SearchStrategy) else n
    gamma_ = draw(gamma) if isinstance(gamma, st.SearchStrategy) else gamma
    batch_ = draw(batch) if isinstance(batch, st.SearchStrategy) else batch
    return Params(n_, gamma_, draw(st.integers(0, 2**31 - 1)), batch_)


def dense_linear_map(estimator, jac):
    """The estimator's M (w = M g) as a dense matrix of the Jacobian J (unbatched).

    For an exact estimator, (I − Jᵀ)⁻¹. For the others, the estimator's own rule applied to
    the columns of the identity with dense products (differentiable in J): these tests check
    that every derivative of a fixed point follows the rule; tests/test_options.py checks each
    rule against its formula.
    """
    n = jac.shape[-1]
    eye = torch.eye(n, dtype=jac.dtype)
    if is_exact(estimator):
        return torch.linalg.inv(eye - jac.mT)
    out = estimator(eye, vjp=lambda v: v @ jac, jvp=lambda v: v @ jac.mT)
    return getattr(out, "w", out).mT  # row i is M e_i


def dense_jacobian_x(p, estimator, w=None, x=None):
    """dz*/dx by the estimator's rule, dense: Mᵀ ∂f/∂x at z* (unbatched)."""
    w = p.w if w is None else w
    x = p.x if x is None else x
    z = p.solve(w, x)
    jac_z = torch.func.jacrev(p.map, argnums=0)(z, w, x)
    jac_x = torch.func.jacrev(p.map, argnums=2)(z, w, x)
    return dense_linear_map(estimator, jac_z).mT @ jac_x


def loss(z, c):
    """A loss with a non-trivial Hessian in z."""
    return (c * z).sum() + 0.5 * (z**2).sum() + (z**3).sum() / 3


def dense_rule_hessian_x(p, estimator):
    """d²L(z*)/dx² by the estimator's rule at every order (unbatched), dense.

    The gradient is G(z, x) = (∂f/∂x)ᵀ M(J) ∇L(z) at z = z*; its derivative takes z* along
    with the same rule, dz*/dx = M(J)ᵀ ∂f/∂x. For an exact estimator M = (I − Jᵀ)⁻¹ and this is
    the true Hessian.
    """

    def gradient(z, x):
        jac_z = torch.func.jacrev(p.map, argnums=0)(z, p.w, x)
        jac_x = torch.func.jacrev(p.map, argnums=2)(z, p.w, x)
        dl = torch.func.grad(loss)(z, p.c)
        return jac_x.mT @ (dense_linear_map(estimator, jac_z) @ dl)

    z = p.solve()
    d_dz, d_dx = torch.func.jacrev(gradient, argnums=(0, 1))(z, p.x)
    return d_dx + d_dz @ dense_jacobian_x(p, estimator)


def finite_difference_jacobian(fn, x, eps=1e-6):
    """Central differences of ``fn`` (tensor to tensor) at ``x``: shape out.shape + x.shape."""
    x = x.detach()
    columns = []
    for i in range(x.numel()):
        e = torch.zeros_like(x).reshape(-1)
        e[i] = eps
        e = e.reshape(x.shape)
        columns.append((fn(x + e) - fn(x - e)) / (2 * eps))
    out = torch.stack(columns, dim=-1)
    return out.reshape(*out.shape[:-1], *x.shape)
