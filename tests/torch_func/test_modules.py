"""fp.nn.DEQ under torch.func: functional_call, per-sample gradients and vmapped ensembles."""

import copy

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import fixpoint as fp
from tests.methods import estimators

SOLVER = fp.Anderson(atol=1e-12, rtol=0.0, max_iter=300)
ESTIMATORS = estimators(1e-12)  # every library estimator (tests/methods.py)


class Layer(torch.nn.Module):
    def __init__(self, n=5, gamma=0.6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(n, n).double()
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float64))
        with torch.no_grad():
            self.linear.weight.mul_(gamma / torch.linalg.matrix_norm(self.linear.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.linear(z) * self.scale + x)


def members(estimator, count=3):
    return [fp.nn.DEQ(Layer(seed=i), solver=SOLVER, estimator=estimator) for i in range(count)]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_an_ensemble_over_stacked_parameters_matches_each_member(estimator):
    deqs = members(estimator)
    params, buffers = stack_module_state(deqs)
    base = copy.deepcopy(deqs[0]).to("meta")
    x = torch.randn(4, 5, dtype=torch.float64)

    def member(p, b, x):
        return functional_call(base, (p, b), (x,))

    out = vmap(member, in_dims=(0, 0, None))(params, buffers, x)
    for i, deq in enumerate(deqs):
        torch.testing.assert_close(out[i], deq(x), atol=1e-10, rtol=0)

    # Gradients of every member at once, against each member's own backward().
    def member_loss(p, b, x):
        return member(p, b, x).square().sum()

    grads = vmap(grad(member_loss), in_dims=(0, 0, None))(params, buffers, x)
    for i, deq in enumerate(deqs):
        deq.zero_grad()
        deq(x).square().sum().backward()
        for name, parameter in deq.named_parameters():
            torch.testing.assert_close(grads[name][i], parameter.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=repr)
def test_per_sample_gradients_equal_one_backward_per_sample(estimator):
    (deq,) = members(estimator, count=1)
    params = {k: v.detach() for k, v in deq.named_parameters()}
    x = torch.randn(6, 5, dtype=torch.float64)

    def sample_loss(p, xi):
        return functional_call(deq, p, (xi[None],)).square().sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(params, x)
    for i in range(6):
        deq.zero_grad()
        deq(x[i : i + 1]).square().sum().backward()
        for name, parameter in deq.named_parameters():
            torch.testing.assert_close(per_sample[name][i], parameter.grad, atol=1e-10, rtol=1e-8)


def test_deq_under_vmap_keeps_no_per_sample_statistics():
    (deq,) = members(fp.JFB(), count=1)
    vmap(deq)(torch.randn(3, 2, 5, dtype=torch.float64))
    assert deq.last_solution is None
    deq(torch.randn(2, 5, dtype=torch.float64))
    assert deq.last_solution is not None


def test_deq_with_a_parametrization_in_eval_mode_under_functional_call():
    layer = Layer()
    torch.nn.utils.parametrizations.spectral_norm(layer.linear)
    deq = fp.nn.DEQ(layer, solver=SOLVER, estimator=fp.CG(atol=1e-12, rtol=0)).eval()
    params = {k: v.detach() for k, v in deq.named_parameters()}
    x = torch.randn(2, 5, dtype=torch.float64)
    g = grad(lambda p: functional_call(deq, p, (x,)).sum())(params)
    deq.zero_grad()
    deq(x).sum().backward()
    for name, parameter in deq.named_parameters():
        torch.testing.assert_close(g[name], parameter.grad, atol=1e-10, rtol=1e-8)


def test_deq_spectral_radius_is_refused_under_transforms():
    deq = fp.nn.DEQ(Layer(), solver=SOLVER, spectral_radius_iters=5)
    with pytest.raises(RuntimeError, match="spectral_radius_iters"):
        vmap(deq)(torch.randn(3, 2, 5, dtype=torch.float64))
