"""Second and third derivatives through fixed points.

For exact estimators they are the true derivatives (checked against finite differences of the
gradient, and a dense implicit-function-theorem Hessian). For inexact ones they are defined as
the derivatives of the estimator's own rule: dz*/dθ = Mᵀ ∂f/∂θ at every order (checked against a
dense construction of that definition).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, hessian, jacfwd, jacrev, jvp

import fixpoint as fp
from tests.torch_func.helpers import (
    CG_TIGHT,
    ESTIMATORS,
    EXACT,
    INEXACT,
    TIGHT,
    Params,
    dense_rule_hessian_x,
    finite_difference_jacobian,
    loss,
    params,
)


def loss_of_x(p, estimator):
    def value(x):
        z = fp.fixed_point(p.map, p.z0(), p.w, x, solver=TIGHT, estimator=estimator)
        return loss(z, p.c)

    return value


@settings(max_examples=10)
@given(params(n=st.integers(1, 4)), st.sampled_from(EXACT))
def test_exact_hessians_match_finite_differences_of_the_gradient(p, estimator):
    value = loss_of_x(p, estimator)
    fd = finite_difference_jacobian(grad(value), p.x)
    for name, second in [
        ("hessian", hessian(value)),
        ("grad(grad)", jacrev(grad(value))),
        ("jacrev(jacfwd)", jacrev(jacfwd(value))),
    ]:
        torch.testing.assert_close(second(p.x), fd, atol=1e-6, rtol=1e-6, msg=name)


@settings(max_examples=10)
@given(params(n=st.integers(1, 4)), st.sampled_from(ESTIMATORS))
def test_hessians_are_the_derivative_of_the_estimators_rule(p, estimator):
    expected = dense_rule_hessian_x(p, estimator)
    torch.testing.assert_close(
        hessian(loss_of_x(p, estimator))(p.x), expected, atol=1e-9, rtol=1e-7
    )


@pytest.mark.parametrize("estimator", [*EXACT, *INEXACT], ids=repr)
def test_double_backward_equals_hessian(estimator):
    """Plain autograd, backward(create_graph=True), through args: the same second derivative."""
    p = Params(4, 0.7, seed=7)
    x = p.x.clone().requires_grad_()
    z = fp.fixed_point(p.map, p.z0(), p.w, x, solver=TIGHT, estimator=estimator)
    (gx,) = torch.autograd.grad(loss(z, p.c), x, create_graph=True)
    rows = torch.stack([torch.autograd.grad(gx[i], x, retain_graph=True)[0] for i in range(4)])
    torch.testing.assert_close(rows, dense_rule_hessian_x(p, estimator))
    if estimator in EXACT:
        fd = finite_difference_jacobian(grad(loss_of_x(p, estimator)), p.x)
        torch.testing.assert_close(rows, fd, atol=1e-6, rtol=1e-6)


def test_hessian_vector_product_forward_over_reverse():
    """The bilevel workhorse: jvp of grad, without forming the Hessian."""
    p = Params(5, 0.8, seed=8)
    value = loss_of_x(p, CG_TIGHT)
    v = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, hvp = jvp(grad(value), (p.x,), (v,))
    torch.testing.assert_close(hvp, dense_rule_hessian_x(p, CG_TIGHT) @ v, atol=1e-9, rtol=1e-7)


THIRD_ORDER = {
    "jacrev(jacrev(jacrev))": lambda v: jacrev(jacrev(jacrev(v))),
    "jacfwd(jacrev(jacrev))": lambda v: jacfwd(jacrev(jacrev(v))),
    "jacrev(jacfwd(jacrev))": lambda v: jacrev(jacfwd(jacrev(v))),
    "jacrev(jacrev(jacfwd))": lambda v: jacrev(jacrev(jacfwd(v))),
}


@pytest.mark.parametrize("estimator", [fp.Exact(), CG_TIGHT], ids=repr)
@pytest.mark.parametrize("order", THIRD_ORDER)
def test_third_derivatives_match_finite_differences(estimator, order):
    """Every composition with at most one forward mode; Exact's dense solve avoids
    torch.linalg.solve, whose nested forward rule drops a term (pytorch/pytorch#196695)."""
    p = Params(2, 0.6, seed=9)
    value = loss_of_x(p, estimator)
    fd = finite_difference_jacobian(jacrev(jacrev(value)), p.x, eps=1e-5)
    torch.testing.assert_close(THIRD_ORDER[order](value)(p.x), fd, atol=1e-6, rtol=1e-6)


def test_second_derivatives_with_respect_to_the_map_and_the_injection():
    """Mixed second derivatives (W, x) of the exact gradient, against finite differences."""
    p = Params(3, 0.7, seed=10)

    def value(w, x):
        z = fp.fixed_point(p.map, p.z0(), w, x, solver=TIGHT, estimator=fp.CG(atol=1e-13, rtol=0))
        return loss(z, p.c)

    mixed = jacrev(grad(value, argnums=1), argnums=0)(p.w, p.x)
    fd = finite_difference_jacobian(lambda w: grad(value, argnums=1)(w, p.x), p.w)
    torch.testing.assert_close(mixed, fd, atol=1e-6, rtol=1e-6)


def test_higher_order_with_a_closure_is_refused_not_wrong():
    p = Params(3, 0.7, seed=11)
    w = p.w.clone().requires_grad_()
    x = p.x.clone().requires_grad_()
    z = fp.fixed_point(lambda z, x: p.map(z, w, x), p.z0(), x, solver=TIGHT, estimator=fp.Exact())
    with pytest.raises(RuntimeError, match="closes over tensors that require grad"):
        torch.autograd.grad(loss(z, p.c), x, create_graph=True)
    # First order with the closure is fine, and exact.
    z = fp.fixed_point(lambda z, x: p.map(z, w, x), p.z0(), x, solver=TIGHT, estimator=fp.Exact())
    gw, gx = torch.autograd.grad(loss(z, p.c), (w, x))

    def value(w, x):
        return loss(fp.fixed_point(p.map, p.z0(), w, x, solver=TIGHT, estimator=fp.Exact()), p.c)

    ew, ex = grad(value, argnums=(0, 1))(p.w, p.x)
    torch.testing.assert_close(gw, ew, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(gx, ex, atol=1e-10, rtol=1e-8)
