"""Reverse mode under torch.func: grad, vjp and jacrev equal loss.backward(); vmap(grad) equals a
loop of grads, for every estimator (the iterative ones batch their own backward solves)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, jacrev, vjp, vmap

import fixpoint as fp
from tests.torch_func.helpers import (
    CG_TIGHT,
    ESTIMATORS,
    TIGHT,
    Params,
    dense_jacobian_x,
    loss,
    params,
)


def make_layer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6).double()
    with torch.no_grad():
        layer.weight.mul_(0.7 / torch.linalg.matrix_norm(layer.weight, 2))
    return layer


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
@pytest.mark.parametrize("batched", [False, True])
def test_grad_and_vjp_equal_backward(estimator, batched):
    layer = make_layer()
    x = torch.randn(3, 6, dtype=torch.float64) if batched else torch.randn(6, dtype=torch.float64)
    params_ = {k: v.detach() for k, v in layer.named_parameters()}

    def f(z, x, p):
        return torch.tanh(functional_call(layer, p, (z,)) + x)

    def loss_of(p, x):
        z = fp.fixed_point(
            f, torch.zeros_like(x), x, p, solver=TIGHT, estimator=estimator, batched=batched
        )
        return z.square().sum()

    g_params, g_x = grad(loss_of, argnums=(0, 1))(params_, x)
    ref_params = {k: v.clone().requires_grad_() for k, v in params_.items()}
    ref_x = x.clone().requires_grad_()
    loss_of(ref_params, ref_x).backward()
    for name in params_:
        torch.testing.assert_close(g_params[name], ref_params[name].grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g_x, ref_x.grad, atol=1e-12, rtol=1e-10)
    value, pullback = vjp(lambda p: loss_of(p, x), params_)
    (from_vjp,) = pullback(torch.ones_like(value))
    for name in params_:
        torch.testing.assert_close(from_vjp[name], ref_params[name].grad, atol=1e-12, rtol=1e-10)


@settings(max_examples=15)
@given(params(), st.sampled_from(ESTIMATORS))
def test_jacrev_is_the_estimators_dense_map(p, estimator):
    """jacrev of z*(x): Mᵀ ∂f/∂x for the estimator's M, (I − J)⁻¹ ∂f/∂x for the exact ones."""
    jac = jacrev(lambda x: fp.fixed_point(p.map, p.z0(), p.w, x, solver=TIGHT, estimator=estimator))
    torch.testing.assert_close(jac(p.x), dense_jacobian_x(p, estimator), atol=1e-9, rtol=1e-7)


@settings(max_examples=15)
@given(params(), st.sampled_from(ESTIMATORS), st.integers(1, 3))
def test_vmap_of_grad_equals_a_loop_of_grads(p, estimator, size):
    gen = torch.Generator().manual_seed(size)
    xs = p.x + 0.5 * torch.randn(size, p.n, generator=gen, dtype=p.x.dtype)

    def loss_of(w, x):
        z = fp.fixed_point(p.map, p.z0(), w, x, solver=TIGHT, estimator=estimator)
        return loss(z, p.c)

    per_sample = vmap(grad(loss_of, argnums=(0, 1)), in_dims=(None, 0))(p.w, xs)
    for i, x in enumerate(xs):
        gw, gx = grad(loss_of, argnums=(0, 1))(p.w, x)
        torch.testing.assert_close(per_sample[0][i], gw, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(per_sample[1][i], gx, atol=1e-10, rtol=1e-8)


def test_jacrev_batches_the_backward_solves():
    """jacrev runs one batched adjoint solve for all n cotangents, its products counted per
    sample: CG's k iterations on 5 cotangents are 5k jvps and 5(k + 1) vjps."""
    p = Params(5, 0.6, seed=1)
    infos = []

    def z_of(x):
        z, sol = fp.fixed_point(
            p.map, p.z0(), p.w, x, solver=TIGHT, estimator=CG_TIGHT, return_solution=True
        )
        infos.append(sol.backward)
        return z

    with fp.count_matvecs() as count:
        jac = jacrev(z_of)(p.x)
    torch.testing.assert_close(jac, dense_jacobian_x(p, CG_TIGHT), atol=1e-9, rtol=1e-7)
    (info,) = infos
    assert info.calls == 1 and info.converged.shape == (5,) and info.converged.all()
    # One vjp more than iterations: the residual of CG's start w0 = g.
    assert count.jvp == 5 * info.iterations > 0 and count.vjp == count.jvp + 5
