"""fp.nn.DEQ's training aids: closures f(z), the Jacobian penalty option, fixed-point
correction terms and warm starts, each against an independent computation."""

import pytest
import torch
from torch import nn

import fixpoint as fp

DT = torch.float64


class Layer(nn.Module):
    """z ↦ 0.6·tanh(W z) + x with ‖W‖₂ = 1: a 0.6-contraction."""

    def __init__(self, n=6, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n, n, generator=gen, dtype=DT)
        self.weight = nn.Parameter(w / torch.linalg.matrix_norm(w, 2))

    def forward(self, z, x):
        return 0.6 * torch.tanh(z @ self.weight.T) + x


def test_a_closure_of_z_alone_gives_the_same_layer():
    layer = Layer()
    x = torch.randn(4, 6, dtype=DT, requires_grad=True)
    tight = fp.Anderson(atol=1e-12, rtol=0)
    two = fp.nn.DEQ(layer, solver=tight, estimator=fp.Exact())
    z_two = two(x)
    (g_two,) = torch.autograd.grad(z_two.square().sum(), layer.weight)
    one = fp.nn.DEQ(lambda z: layer(z, x), solver=tight, estimator=fp.Exact())
    z_one = one(torch.zeros(4, 6, dtype=DT))  # called with the start
    (g_one,) = torch.autograd.grad(z_one.square().sum(), layer.weight)
    torch.testing.assert_close(z_one, z_two, atol=1e-10, rtol=0)
    torch.testing.assert_close(g_one, g_two, atol=1e-9, rtol=1e-7)


def test_a_closure_module_has_its_parameters_registered_and_trained():
    class Closure(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Layer()
            self.x = torch.randn(3, 6, dtype=DT)

        def forward(self, z):
            return self.layer(z, self.x)

    deq = fp.nn.DEQ(Closure())
    assert sum(p.numel() for p in deq.parameters()) == 36
    deq(torch.zeros(3, 6, dtype=DT)).sum().backward()
    assert deq.f.layer.weight.grad is not None


def test_the_jacobian_penalty_option_is_the_function_at_z_star():
    layer = Layer()
    x = torch.randn(5, 6, dtype=DT, requires_grad=True)
    deq = fp.nn.DEQ(layer, solver=fp.Anderson(atol=1e-12, rtol=0), jacobian_penalty=3)
    torch.manual_seed(7)
    z = deq(x)
    penalty = deq.last_jacobian_penalty
    torch.manual_seed(7)
    expected = fp.jacobian_penalty(layer, z.detach(), x, batched=True, samples=3)
    torch.testing.assert_close(penalty, expected)
    assert penalty.shape == (5,) and penalty.requires_grad
    (grad,) = torch.autograd.grad(penalty.mean(), layer.weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    deq.eval()
    deq.last_jacobian_penalty = None
    deq(x)
    assert deq.last_jacobian_penalty is None  # training mode only


def test_correction_terms_are_one_application_of_f_at_the_kept_iterates():
    """With Picard from zero, z_k = f^k(0); the terms are f(z_k, x) with ∂/∂x = I."""
    layer = Layer()
    x = torch.randn(2, 6, dtype=DT, requires_grad=True)
    deq = fp.nn.DEQ(layer, solver=fp.Picard(atol=1e-12, rtol=0), correction_steps=(1, 4))
    deq(x)
    z = torch.zeros(2, 6, dtype=DT)
    iterates = []
    with torch.no_grad():
        for _ in range(1, 5):
            z = layer(z, x)
            iterates.append(z)
    first, fourth = deq.last_corrections
    torch.testing.assert_close(first, layer(iterates[0], x), atol=1e-14, rtol=0)
    torch.testing.assert_close(fourth, layer(iterates[3], x), atol=1e-14, rtol=0)
    (gx,) = torch.autograd.grad(fourth.sum(), x)  # one application: ∂f/∂x = I, no z-chain
    torch.testing.assert_close(gx, torch.ones_like(x))


def test_warm_starts_on_a_sequence_of_related_inputs_save_iterations():
    """Each input of the sequence drifts by 0.005: from the previous solution every step after
    the first needs fewer iterations than from zero, for the same answer."""
    layer = Layer()
    deq = fp.nn.DEQ(layer, solver=fp.Anderson(atol=1e-8, rtol=0)).eval()
    base = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    previous = None
    with torch.no_grad():
        for t in range(6):
            x = base + 0.005 * t
            z_cold = deq(x)
            cold = deq.last_solution.iterations.sum()
            z_warm = deq(x, z0=previous)
            warm = deq.last_solution.iterations.sum()
            torch.testing.assert_close(z_warm, z_cold, atol=1e-7, rtol=0)
            assert warm == cold if t == 0 else warm < 0.85 * cold
            previous = z_warm


def test_options_are_checked_and_refused_under_transforms():
    with pytest.raises(ValueError, match="jacobian_penalty"):
        fp.nn.DEQ(Layer(), jacobian_penalty=-1)
    with pytest.raises(ValueError, match="correction_steps"):
        fp.nn.DEQ(Layer(), correction_steps=(0,))
    deq = fp.nn.DEQ(Layer(), jacobian_penalty=1)
    params = dict(deq.named_parameters())
    x = torch.randn(2, 6, dtype=DT)
    with pytest.raises(RuntimeError, match=r"not supported under torch\.func"):
        torch.func.grad(lambda p: torch.func.functional_call(deq, p, (x,)).sum())(params)
