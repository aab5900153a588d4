"""What is transformed must come through args: a closure is refused, never silently dropped."""

import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

import fixpoint as fp
from tests.torch_func.helpers import TIGHT, Params


@pytest.mark.parametrize(
    "transform",
    [
        lambda fn, x: grad(lambda t: fn(t).sum())(x),
        lambda fn, x: jacrev(fn)(x),
        lambda fn, x: jvp(fn, (x,), (torch.ones_like(x),)),
        lambda fn, x: vmap(grad(lambda t: fn(t).sum()))(x.expand(2, -1)),
        lambda fn, x: grad(lambda t: vmap(lambda _: fn(t))(torch.ones(2)).sum())(x),
    ],
    ids=["grad", "jacrev", "jvp", "vmap(grad)", "grad(vmap)"],
)
def test_a_closure_over_a_differentiated_tensor_is_refused(transform):
    p = Params(3, 0.6, seed=0)

    def z_of(x):  # x reaches f as a closure, not through args
        return fp.fixed_point(lambda z: p.map(z, p.w, x), p.z0(), solver=TIGHT)

    with pytest.raises(RuntimeError, match="through args"):
        transform(z_of, p.x)


def test_closures_over_parameters_under_vmap():
    """Under vmap alone, a closure that requires grad would be missed by a later backward."""
    p = Params(3, 0.6, seed=1)
    w = p.w.clone().requires_grad_()
    xs = torch.stack([p.x, -p.x])

    def z_of(x):
        return fp.fixed_point(lambda z, x: p.map(z, w, x), p.z0(), x, solver=TIGHT)

    with pytest.raises(RuntimeError, match="require grad"):
        vmap(z_of)(xs)
    with torch.no_grad():  # values only: nothing to miss
        torch.testing.assert_close(vmap(z_of)(xs), torch.stack([p.solve(p.w, x) for x in xs]))
    # Through args, the backward reaches w.
    zs = vmap(lambda x: fp.fixed_point(p.map, p.z0(), w, x, solver=TIGHT), in_dims=0)(xs)
    zs.sum().backward()
    expected = torch.autograd.grad(
        sum(fp.fixed_point(p.map, p.z0(), w, x, solver=TIGHT).sum() for x in xs), w
    )[0]
    torch.testing.assert_close(w.grad, expected, atol=1e-10, rtol=1e-8)


def test_constant_closures_are_fine():
    p = Params(3, 0.6, seed=2)
    x = p.x.clone()  # a constant for the transform

    def z_of(w):
        return fp.fixed_point(lambda z, w: p.map(z, w, x), p.z0(), w, solver=TIGHT)

    jac = jacrev(z_of)(p.w)
    assert jac.shape == (3, 3, 3) and torch.isfinite(jac).all()


def test_solve_gives_constants_under_transforms():
    """fp.solve is not differentiable: its value is a constant for grad and jvp."""
    p = Params(3, 0.6, seed=3)

    def value(x):
        return fp.solve(p.map, p.z0(), p.w, x, solver=TIGHT).value

    assert (grad(lambda x: value(x).sum())(p.x) == 0).all()
    out, tangent = jvp(value, (p.x,), (torch.ones_like(p.x),))
    torch.testing.assert_close(out, p.solve())
    assert (tangent == 0).all()
