"""fp.fixed_point: gradients reach args and closed-over parameters, safely and repeatedly."""

import gc
import warnings

import pytest
import torch

import fixpoint as fp
from fixpoint.fixed_point import EagerPath
from fixpoint.linearization import Linearization
from tests.methods import estimators, is_exact

TIGHT = fp.Anderson(atol=1e-12, rtol=0.0, max_iter=300)
ESTIMATORS = estimators(1e-12)  # every library estimator (tests/methods.py)


class Layer(torch.nn.Module):
    def __init__(self, n=5, gamma=0.7):
        super().__init__()
        self.linear = torch.nn.Linear(n, n).double()
        with torch.no_grad():
            self.linear.weight.mul_(gamma / torch.linalg.matrix_norm(self.linear.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.linear(z) + x)


def dense_parameter_gradient(layer, x, c):
    """d⟨c, z*⟩/dW by the implicit function theorem with dense Jacobians (no fixpoint)."""
    z = fp.solve(layer, torch.zeros_like(x), x, solver=TIGHT).value
    params = dict(layer.named_parameters())

    def f_of(p, zz):
        return torch.func.functional_call(layer, p, (zz, x))

    jac_z = torch.func.jacrev(lambda zz: f_of(params, zz))(z)
    w = torch.linalg.solve(torch.eye(z.numel(), dtype=z.dtype) - jac_z.T, c)
    _, pull = torch.func.vjp(lambda p: f_of(p, z), params)
    return pull(w)[0]


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if is_exact(e)], ids=repr)
def test_gradients_reach_closed_over_module_parameters(estimator):
    torch.manual_seed(0)
    layer = Layer()
    x = torch.randn(5, dtype=torch.float64)
    c = torch.randn(5, dtype=torch.float64)
    z = fp.fixed_point(
        lambda z, x: layer(z, x),
        torch.zeros(5, dtype=torch.float64),
        x,
        solver=TIGHT,
        estimator=estimator,
    )
    (c * z).sum().backward()
    expected = dense_parameter_gradient(layer, x, c)
    tol = 1e-10 if not isinstance(estimator, (fp.Implicit, fp.Phantom)) else 1e-5
    for name, p in layer.named_parameters():
        if isinstance(estimator, fp.Phantom):  # truncated: close, not equal
            cos = torch.nn.functional.cosine_similarity(
                p.grad.view(-1), expected[name].view(-1), dim=0
            )
            assert cos > 0.99
        else:
            torch.testing.assert_close(p.grad, expected[name], atol=tol, rtol=tol)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_value_is_the_solution_and_grads_reach_args(estimator):
    layer = Layer()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z, sol = fp.fixed_point(
        layer,
        torch.zeros(3, 5, dtype=torch.float64),
        x,
        solver=TIGHT,
        estimator=estimator,
        batched=True,
        return_solution=True,
    )
    assert torch.equal(z, sol.value) and z.requires_grad
    z.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())
    assert sol.backward.calls == 1 and sol.backward.estimator == estimator.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_pytree_state_gradients_equal_per_sample_gradients(dtype):
    def f(z, x):
        a, b = z["a"], z["b"]
        return {"a": 0.4 * torch.tanh(b.sum(-1, keepdim=True) + x), "b": 0.3 * torch.cos(a) * b}

    x = torch.randn(4, 1, dtype=dtype, requires_grad=True)
    z0 = {"a": torch.zeros(4, 1, dtype=dtype), "b": torch.ones(4, 3, dtype=dtype)}
    solver = fp.Anderson(atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=0)
    z = fp.fixed_point(f, z0, x, solver=solver, estimator=fp.Exact(), batched=True)
    assert z["a"].dtype == dtype
    (z["a"].sum() + z["b"].square().sum()).backward()
    for i in range(4):
        xi = x.detach()[i : i + 1].clone().requires_grad_()
        zi = fp.fixed_point(
            f,
            {k: v[i : i + 1] for k, v in z0.items()},
            xi,
            solver=solver,
            estimator=fp.Exact(),
            batched=True,
        )
        (zi["a"].sum() + zi["b"].square().sum()).backward()
        torch.testing.assert_close(x.grad[i : i + 1], xi.grad)


def test_no_graph_without_grad_and_no_extra_evaluation():
    calls = 0

    def f(z, x):
        nonlocal calls
        calls += 1
        return 0.5 * z + x

    x = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        z, sol = fp.fixed_point(f, torch.zeros(3), x, return_solution=True)
    assert not z.requires_grad and calls == int(sol.fevals)
    calls = 0
    z, sol = fp.fixed_point(f, torch.zeros(3), x, return_solution=True)
    assert z.requires_grad and calls == int(sol.fevals) + 1  # one application with the graph
    constant = fp.fixed_point(f, torch.zeros(3), torch.ones(3))
    assert not constant.requires_grad


def test_memory_is_released_after_many_steps():
    """Hundreds of training steps leave no pullbacks, linearizations or graphs alive."""
    layer = Layer()
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if type(o) in (EagerPath, Linearization)}
    for step in range(300):
        x = torch.randn(8, 5, dtype=torch.float64)
        est = ESTIMATORS[step % len(ESTIMATORS)]
        z = fp.fixed_point(layer, torch.zeros_like(x), x, estimator=est, batched=True)
        loss = z.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        del z, loss
    gc.collect()
    alive = [
        o for o in gc.get_objects() if type(o) in (EagerPath, Linearization) and id(o) not in before
    ]
    assert alive == []
    # Nothing was hooked onto the parameters either.
    assert all(not p._backward_hooks for p in layer.parameters())


def test_backward_twice_with_retain_graph():
    layer = Layer()
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    z, sol = fp.fixed_point(
        layer,
        torch.zeros(5, dtype=torch.float64),
        x,
        estimator=fp.Neumann(k=2),
        return_solution=True,
    )
    z.sum().backward(retain_graph=True)
    first = x.grad.clone()
    z.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    assert sol.backward.calls == 2


def test_cg_reports_and_warns_when_it_does_not_converge():
    layer = Layer(gamma=0.95)
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    z, sol = fp.fixed_point(
        layer,
        torch.zeros_like(x),
        x,
        estimator=fp.CG(max_iter=1, atol=0, rtol=1e-12),
        batched=True,
        return_solution=True,
    )
    with pytest.warns(fp.ConvergenceWarning, match="CG did not reach"):
        z.sum().backward()
    assert sol.backward.converged.shape == (2,) and not sol.backward.converged.any()
    assert sol.backward.iterations == 1 and (sol.backward.residual > 0).all()
    z, sol = fp.fixed_point(
        layer,
        torch.zeros_like(x),
        x,
        estimator=fp.CG(atol=1e-12, rtol=0),
        batched=True,
        return_solution=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z.sum().backward()
    assert sol.backward.converged.all() and (sol.backward.residual <= 1e-12).all()


def test_bad_estimators_and_higher_order_gradients():
    x = torch.ones(2, requires_grad=True)

    def f(z, x):
        return 0.5 * z + x

    with pytest.raises(TypeError, match=r"JFB\(\)"):
        fp.fixed_point(f, torch.zeros(2), x, estimator=fp.JFB)
    with pytest.raises(TypeError, match="Estimator"):
        fp.fixed_point(f, torch.zeros(2), x, estimator="jfb")

    class Wrong(fp.Estimator):
        def __call__(self, g, vjp, jvp):
            return g[:, :1]

    z = fp.fixed_point(f, torch.zeros(2), x, estimator=Wrong())
    with pytest.raises(TypeError, match="must match g"):
        z.sum().backward()
    # Higher order needs what f differentiates in args; a closure is refused, not ignored.
    closed = torch.ones(2, requires_grad=True)
    z = fp.fixed_point(lambda z, x: 0.5 * z * closed + x, torch.zeros(2), x)
    with pytest.raises(RuntimeError, match="closes over tensors that require grad"):
        torch.autograd.grad(z.sum(), x, create_graph=True)
    # JFB passes g through unchanged, so second derivatives work.
    z = fp.fixed_point(lambda z, x: 0.5 * z + x**2, torch.zeros(2), x, estimator=fp.JFB())
    (gx,) = torch.autograd.grad(z.sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    torch.testing.assert_close(ggx, torch.full((2,), 2.0))


class NoForwardNoDouble(torch.autograd.Function):
    """sin with a first-order backward only: no jvp rule, no double backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x)


def test_estimator_needing_jvp_on_f_without_it_gets_a_clear_error():
    x = torch.ones(3, requires_grad=True)

    def f(z, x):
        return 0.5 * NoForwardNoDouble.apply(z) + x

    z = fp.fixed_point(f, torch.zeros(3), x, estimator=fp.Neumann(k=3))
    z.sum().backward()  # vjp-only estimators work
    z = fp.fixed_point(f, torch.zeros(3), x, estimator=fp.CG())
    with pytest.raises(RuntimeError, match=r"needs Jacobian-vector products.*fp\.Neumann"):
        z.sum().backward()


class NoForward(torch.autograd.Function):
    """sin without a jvp rule but with a differentiable backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x)


def test_jvp_falls_back_to_double_backward():
    x = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)

    def f_custom(z, x):
        return 0.5 * NoForward.apply(z) + x

    def f_plain(z, x):
        return 0.5 * torch.sin(z) + x

    grads = []
    for f in (f_custom, f_plain):
        x.grad = None
        z = fp.fixed_point(
            f,
            torch.zeros(2, dtype=torch.float64),
            x,
            solver=TIGHT,
            estimator=fp.CG(atol=1e-12, rtol=0),
        )
        z.sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_unconverged_forward_solve_warns():
    x = torch.ones(2, requires_grad=True)
    with pytest.warns(fp.ConvergenceWarning, match="did not converge for 1 of 1 samples"):
        z = fp.fixed_point(
            lambda z, x: 0.99 * z + x,
            torch.zeros(2),
            x,
            solver=fp.Picard(max_iter=5),
            estimator=fp.JFB(),
        )
    assert z.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp.fixed_point(lambda z, x: 0.5 * z + x, torch.zeros(2), x)
