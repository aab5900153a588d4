"""Forward mode: jvp, jacfwd and torch.autograd.forward_ad give dz = Mᵀ (∂f/∂θ) dθ, the transpose
of the estimator's reverse map, so jacfwd equals jacrev for every estimator."""

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacfwd, jacrev, jvp, vmap

import fixpoint as fp
from tests.torch_func.helpers import (
    CG_TIGHT,
    ESTIMATORS,
    GMRES_TIGHT,
    TIGHT,
    Params,
    dense_jacobian_x,
    params,
)


def solution_map(p, estimator, batched=False):
    def z_of(w, x):
        return fp.fixed_point(
            p.map, p.z0(x), w, x, solver=TIGHT, estimator=estimator, batched=batched
        )

    return z_of


@settings(max_examples=15)
@given(params(), st.sampled_from(ESTIMATORS))
def test_jacfwd_equals_jacrev_and_the_dense_map(p, estimator):
    z_of = solution_map(p, estimator)
    forward = jacfwd(z_of, argnums=(0, 1))(p.w, p.x)
    reverse = jacrev(z_of, argnums=(0, 1))(p.w, p.x)
    for a, b in zip(forward, reverse, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(forward[1], dense_jacobian_x(p, estimator), atol=1e-9, rtol=1e-7)


@settings(max_examples=10)
@given(params(n=st.integers(1, 4), batch=2), st.sampled_from(ESTIMATORS))
def test_jacfwd_equals_jacrev_for_batched_problems(p, estimator):
    """Samples are independent: the Jacobian is block diagonal, the same in both modes."""
    z_of = solution_map(p, estimator, batched=True)
    forward = jacfwd(lambda x: z_of(p.w, x))(p.x)
    reverse = jacrev(lambda x: z_of(p.w, x))(p.x)
    torch.testing.assert_close(forward, reverse, atol=1e-10, rtol=1e-8)
    assert forward[0, :, 1].abs().max() == 0 and forward[1, :, 0].abs().max() == 0


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_eager_forward_ad_and_jvp_agree(estimator):
    p = Params(4, 0.7, seed=2)
    tangent = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z_of = solution_map(p, estimator)
    _, from_jvp = jvp(lambda x: z_of(p.w, x), (p.x,), (tangent,))
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(p.x, tangent)
        from_dual = forward_ad.unpack_dual(z_of(p.w, dual)).tangent
    expected = dense_jacobian_x(p, estimator) @ tangent
    torch.testing.assert_close(from_jvp, expected, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(from_dual, expected, atol=1e-9, rtol=1e-7)


def test_eager_forward_ad_reaches_closed_over_tensors():
    """Eager forward mode carries tangents of closed-over tensors too (first order)."""
    p = Params(3, 0.5, seed=4)
    tangent = torch.ones(3, 3, dtype=torch.float64)
    with forward_ad.dual_level():
        w = forward_ad.make_dual(p.w, tangent)
        z = fp.fixed_point(
            lambda z, x: p.map(z, w, x), p.z0(), p.x, solver=TIGHT, estimator=GMRES_TIGHT
        )
        got = forward_ad.unpack_dual(z).tangent
    expected = jvp(lambda w: solution_map(p, GMRES_TIGHT)(w, p.x), (p.w,), (tangent,))[1]
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


def test_vmap_of_jvp_equals_jacfwd():
    p = Params(3, 0.6, seed=5)
    z_of = solution_map(p, CG_TIGHT)
    eye = torch.eye(3, dtype=torch.float64)
    columns = vmap(lambda v: jvp(lambda x: z_of(p.w, x), (p.x,), (v,))[1])(eye)
    torch.testing.assert_close(columns.T, jacfwd(lambda x: z_of(p.w, x))(p.x))


@pytest.mark.parametrize("estimator", [GMRES_TIGHT, fp.JFB()], ids=repr)
def test_forward_over_forward_is_refused(estimator):
    """PyTorch drops the outer tangent of a custom jvp rule: an error, never a wrong zero."""
    p = Params(3, 0.6, seed=6)
    z_of = solution_map(p, estimator)
    with pytest.raises(RuntimeError, match="forward-mode over forward-mode"):
        jacfwd(jacfwd(lambda x: z_of(p.w, x).sum()))(p.x)
    v = torch.ones(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="hessian"):
        jvp(lambda x: jvp(lambda y: z_of(p.w, y), (x,), (v,))[1], (p.x,), (v,))


class TwoTerms(fp.Estimator):
    """A user's polynomial estimator: w = g + Jᵀg, so M = I + Jᵀ."""

    def __call__(self, g, vjp, jvp):
        return g + vjp(g)


def test_a_users_estimator_gets_forward_mode_and_vmap_for_free():
    """Linear in g and built from the two products: jacfwd = jacrev = (I + J) ∂f/∂x, with no
    forward-mode code of its own."""
    p = Params(4, 0.6, seed=12)
    z = p.solve()
    jz = jacrev(p.map, argnums=0)(z, p.w, p.x)
    dense = (torch.eye(4, dtype=torch.float64) + jz) @ jacrev(p.map, argnums=2)(z, p.w, p.x)
    z_of = solution_map(p, TwoTerms())
    forward = jacfwd(lambda x: z_of(p.w, x))(p.x)
    torch.testing.assert_close(forward, jacrev(lambda x: z_of(p.w, x))(p.x), atol=1e-12, rtol=0)
    torch.testing.assert_close(forward, dense, atol=1e-10, rtol=1e-8)
