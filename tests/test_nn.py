"""fp.nn.DEQ: an implicit layer that trains, evaluates, reports and serialises."""

import gc
import io

import pytest
import torch

import fixpoint as fp
from fixpoint.fixed_point import EagerPath


class Operator(torch.nn.Module):
    """z ↦ ½ tanh(W z) + x with a spectrally normalised W: a ½-contraction."""

    def __init__(self, n=8):
        super().__init__()
        self.linear = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(n, n))

    def forward(self, z, x):
        return 0.5 * torch.tanh(self.linear(z)) + x


class Net(torch.nn.Module):
    def __init__(self, estimator=fp.JFB(), **kwargs):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 8)
        self.deq = fp.nn.DEQ(Operator(), estimator=estimator, **kwargs)
        self.readout = torch.nn.Linear(8, 1)

    def forward(self, d):
        return self.readout(self.deq(self.encoder(d)))


def data(seed=0, n=64):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    return d, torch.sin(d.sum(1, keepdim=True))


@pytest.mark.parametrize("estimator", [fp.JFB(), fp.Neumann(k=3), fp.CG(), fp.Implicit()], ids=repr)
def test_training_reduces_the_loss(estimator):
    torch.manual_seed(0)
    net = Net(estimator)
    d, y = data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(d), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert net.deq.last_solution.converged.all()


def test_gradient_equals_fixed_point_gradient():
    torch.manual_seed(0)
    net = Net(fp.Exact())
    d, _ = data(n=5)
    net(d).sum().backward()
    expected = [p.grad.clone() for p in net.deq.parameters()]
    net.zero_grad()
    x = net.encoder(d)
    z = fp.fixed_point(net.deq.f, torch.zeros_like(x), x, estimator=fp.Exact(), batched=True)
    net.readout(z).sum().backward()
    for p, e in zip(net.deq.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_train_and_eval_modes_use_their_solvers():
    torch.manual_seed(0)
    net = Net(eval_solver=fp.Anderson(atol=1e-6, rtol=0, max_iter=200))
    net.deq.solver = fp.Picard(max_iter=3)
    d, _ = data(n=4)
    with pytest.warns(fp.ConvergenceWarning, match="4 of 4 samples"):
        out = net(d)
    assert out.requires_grad
    assert net.deq.last_solution.status == ("max_iter",) * 4
    net.eval()
    with torch.no_grad():
        out = net(d)
    assert not out.requires_grad
    assert all(s == "converged" for s in net.deq.last_solution.status)
    assert (net.deq.last_solution.residual <= 1e-6).all()


def test_state_dict_round_trips():
    torch.manual_seed(0)
    net = Net()
    d, _ = data(n=6)
    net.eval()
    with torch.no_grad():
        expected = net(d)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = Net()
    other.load_state_dict(torch.load(buffer))
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(d), expected)
    assert set(net.state_dict()) == set(other.state_dict())
    assert any(k.startswith("deq.f.linear") for k in net.state_dict())


def test_backward_info_and_spectral_radius_monitor():
    torch.manual_seed(0)
    net = Net(fp.CG(), spectral_radius_iters=20)
    d, _ = data(n=5)
    net(d).sum().backward()
    info = net.deq.last_solution.backward
    assert (
        info.calls == 1 and info.converged.all() and info.vjp == info.jvp + 5 > 5
    )  # five samples; w0 = g costs one vjp each
    rho = net.deq.last_spectral_radius
    assert rho.shape == (5,) and (rho <= 0.5 + 1e-3).all() and (rho > 0).all()


def test_custom_initial_state_and_pytree_injection():
    class PairOperator(torch.nn.Module):
        def forward(self, z, x):
            return {"u": 0.5 * torch.tanh(z["v"]) + x["a"], "v": 0.3 * z["u"] + x["b"]}

    x = {"a": torch.randn(4, 2, requires_grad=True), "b": torch.randn(4, 2)}
    deq = fp.nn.DEQ(
        PairOperator(),
        estimator=fp.Neumann(k=2),
        z_init=lambda x: {"u": torch.ones_like(x["a"]), "v": torch.ones_like(x["b"])},
    )
    z = deq(x)
    assert set(z) == {"u", "v"}
    (z["u"].sum() + z["v"].sum()).backward()
    assert x["a"].grad is not None
    assert "Neumann" in repr(deq)


def test_memory_flat_over_many_steps():
    torch.manual_seed(0)
    net = Net(fp.Neumann(k=2))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    d, y = data()
    gc.collect()
    before = {id(o) for o in gc.get_objects() if type(o) is EagerPath}
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(net(d), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    del loss
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is EagerPath and id(o) not in before]
    # last_solution keeps statistics only, not the graph of the last step.
    assert alive == []


def test_bad_construction():
    with pytest.raises(TypeError, match="callable"):
        fp.nn.DEQ(3)
    with pytest.raises(TypeError, match=r"fixpoint\.Solver"):
        fp.nn.DEQ(Operator(), solver="anderson")
    with pytest.raises(TypeError, match="eval_solver"):
        fp.nn.DEQ(Operator(), eval_solver=fp.Picard)
    with pytest.raises(TypeError, match=r"write estimator=JFB\(\)"):
        fp.nn.DEQ(Operator(), estimator=fp.JFB)


def test_skip_converged_gives_the_same_layer():
    torch.manual_seed(0)
    op = Operator()
    x = torch.randn(6, 8) * torch.linspace(0.01, 3, 6)[:, None]
    a = fp.nn.DEQ(op, estimator=fp.Neumann(k=2))
    b = fp.nn.DEQ(op, estimator=fp.Neumann(k=2), skip_converged=True)
    za, zb = a(x), b(x)
    torch.testing.assert_close(za, zb)
    assert int(b.last_solution.fevals.sum()) <= int(a.last_solution.fevals.sum())
    zb.sum().backward()
    assert all(p.grad is not None for p in op.parameters())


def test_parametrized_weights_are_evaluated_once_per_forward():
    """spectral_norm's power iteration advances once per DEQ forward, not once per f call, and
    gradients still reach the raw weight behind the parametrization."""
    torch.manual_seed(0)
    op = Operator()
    deq = fp.nn.DEQ(op, estimator=fp.Neumann(k=2))
    param = op.linear.parametrizations.weight
    u_before = param[0]._u.clone()
    calls = 0
    original = op.forward

    def counting(z, x):
        nonlocal calls
        calls += 1
        return original(z, x)

    op.forward = counting
    z = deq(torch.randn(5, 8))
    assert calls > 3
    # One power-iteration step, exactly as one plain forward of the layer makes.
    reference = Operator()
    reference.load_state_dict({k: v for k, v in op.state_dict().items()})
    reference.linear.parametrizations.weight[0]._u.copy_(u_before)
    reference.linear(torch.zeros(1, 8))
    torch.testing.assert_close(param[0]._u, reference.linear.parametrizations.weight[0]._u)
    z.sum().backward()
    assert param.original.grad is not None and param.original.grad.abs().sum() > 0
