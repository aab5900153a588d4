"""torch.func: grad and vjp through fp.fixed_point equal loss.backward(); vmap is refused."""

import pytest
import torch
from torch.func import functional_call, grad, vjp, vmap

import fixpoint as fp

TIGHT = fp.Anderson(atol=1e-12, rtol=0.0)
ESTIMATORS = [
    fp.JFB(),
    fp.Neumann(k=3),
    fp.CG(atol=1e-12, rtol=0.0),
    fp.Implicit(),
    fp.Phantom(k=3, damping=0.7),
    fp.Exact(),
]


def make_layer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6).double()
    with torch.no_grad():
        layer.weight.mul_(0.7 / torch.linalg.matrix_norm(layer.weight, 2))
    return layer


def f(z, x, params, layer):
    return torch.tanh(functional_call(layer, params, (z,)) + x)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
@pytest.mark.parametrize("batched", [False, True])
def test_grad_and_vjp_equal_backward(estimator, batched):
    layer = make_layer()
    x = torch.randn(3, 6, dtype=torch.float64) if batched else torch.randn(6, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, x):
        z = fp.fixed_point(
            lambda z, x, p: f(z, x, p, layer),
            torch.zeros_like(x),
            x,
            p,
            solver=TIGHT,
            estimator=estimator,
            batched=batched,
        )
        return z.square().sum()

    g_params, g_x = grad(loss, argnums=(0, 1))(params, x)
    ref_params = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref_x = x.clone().requires_grad_()
    loss(ref_params, ref_x).backward()
    for name in params:
        torch.testing.assert_close(g_params[name], ref_params[name].grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g_x, ref_x.grad, atol=1e-12, rtol=1e-10)
    value, pullback = vjp(lambda p: loss(p, x), params)
    (from_vjp,) = pullback(torch.ones_like(value))
    for name in params:
        torch.testing.assert_close(from_vjp[name], ref_params[name].grad, atol=1e-12, rtol=1e-10)


def test_vmap_is_refused_with_the_alternative():
    layer = make_layer()
    params = dict(layer.named_parameters())
    xs = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="batched=True"):
        vmap(lambda x: fp.fixed_point(lambda z, x: f(z, x, params, layer), torch.zeros_like(x), x))(
            xs
        )
    with pytest.raises(RuntimeError, match="vmap"):
        vmap(lambda x: fp.solve(lambda z, x: f(z, x, params, layer), torch.zeros_like(x), x).value)(
            xs
        )
