"""has_aux=True: f returns (z, aux); aux at the fixed point comes back, differentiable."""

import pytest
import torch
from torch.func import grad, jacrev, vmap

import fixpoint as fp
from tests.torch_func.helpers import TIGHT, Params, finite_difference_jacobian


def with_aux(p):
    def f(z, w, x):
        out = p.map(z, w, x)
        return out, {"energy": (out * x).sum(), "residual": out - z}

    return f


def test_aux_value_is_f_at_the_returned_iterate():
    p = Params(4, 0.7, seed=1)
    z, aux, sol = fp.fixed_point(
        with_aux(p), p.z0(), p.w, p.x, solver=TIGHT, has_aux=True, return_solution=True
    )
    torch.testing.assert_close(aux["energy"], (p.map(z, p.w, p.x) * p.x).sum())
    assert aux["residual"].abs().max() < 1e-12
    assert sol.aux is aux
    solved = fp.solve(with_aux(p), p.z0(), p.w, p.x, solver=TIGHT, has_aux=True)
    torch.testing.assert_close(solved.aux["energy"], aux["energy"])
    assert not solved.aux["energy"].requires_grad


@pytest.mark.parametrize("estimator", [fp.Exact(), fp.CG(atol=1e-13, rtol=0)], ids=repr)
def test_aux_gradient_goes_through_the_fixed_point(estimator):
    """d energy(z*(x), x)/dx against finite differences: both paths, through z* and x."""
    p = Params(4, 0.7, seed=2)

    def energy(x):
        _, aux = fp.fixed_point(
            with_aux(p), p.z0(), p.w, x, solver=TIGHT, estimator=estimator, has_aux=True
        )
        return aux["energy"]

    fd = finite_difference_jacobian(energy, p.x)
    torch.testing.assert_close(grad(energy)(p.x), fd, atol=1e-7, rtol=1e-6)
    x = p.x.clone().requires_grad_()
    energy(x).backward()
    torch.testing.assert_close(x.grad, fd, atol=1e-7, rtol=1e-6)


def test_aux_under_vmap_and_jacrev():
    p = Params(3, 0.6, seed=3)
    xs = torch.stack([p.x, -p.x])

    def energy(x):
        return fp.fixed_point(with_aux(p), p.z0(), p.w, x, solver=TIGHT, has_aux=True)[1]["energy"]

    torch.testing.assert_close(vmap(energy)(xs), torch.stack([energy(x) for x in xs]))
    torch.testing.assert_close(
        jacrev(vmap(energy))(xs).sum(0), torch.stack([grad(energy)(x) for x in xs])
    )


def test_f_must_return_a_pair_with_has_aux():
    with pytest.raises(TypeError, match=r"pair \(z, aux\)"):
        fp.solve(lambda z: 0.5 * z, torch.zeros(2), has_aux=True)
    with pytest.raises(TypeError, match="length 3"):
        fp.fixed_point(lambda z: (0.5 * z, 1, 2), torch.zeros(2), has_aux=True)
