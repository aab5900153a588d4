"""jacobian_penalty: a Hutchinson estimate of ‖∂f/∂z‖²_F / n, checked against dense Jacobians."""

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

import fixpoint as fp
from fixpoint.regularization import jacobian_penalty

F64 = torch.float64


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Cell(nn.Module):
    """z ↦ tanh(W z + x): a nonlinear map whose Jacobian depends on z, x and W."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n, generator=seeded(seed), dtype=F64) / n**0.5)

    def forward(self, z, x):
        return torch.tanh(z @ self.weight.T + x)


def dense(f, z, *args):
    """The Jacobian of ``f`` at one unbatched ``z`` by torch.func.jacrev, as an n × n matrix."""
    n = z.numel()
    return jacrev(lambda v: f(v.reshape(z.shape), *args).reshape(-1))(z.reshape(-1)).reshape(n, n)


def moments(jac: torch.Tensor) -> tuple[float, float]:
    """Mean ‖J‖²_F / n and standard deviation √(2 ‖J Jᵀ‖²_F) / n of one draw ‖εᵀJ‖² / n."""
    n = jac.shape[0]
    mean = jac.square().sum() / n
    std = (2 * (jac @ jac.T).square().sum()).sqrt() / n
    return mean.item(), std.item()


def test_one_draw_is_the_dense_vector_jacobian_product():
    """With the generator's first draw ε, the value is ‖εᵀJ‖²/n for jacrev's J."""
    n = 6
    cell = Cell(n)
    z, x = torch.randn(2, n, generator=seeded(1), dtype=F64)
    penalty = jacobian_penalty(cell, z, x, generator=seeded(7))
    eps = torch.randn(1, n, generator=seeded(7), dtype=F64)
    expected = (eps @ dense(cell, z, x)).square().sum() / n
    assert penalty.shape == () and penalty.dtype == F64
    torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=0)


def test_mean_over_many_draws_is_the_frobenius_norm():
    """Many samples (rows at one point) average to ‖J‖²_F / n within the Hutchinson error."""
    n, rows = 5, 20_000
    cell = Cell(n)
    z, x = torch.randn(2, n, generator=seeded(1), dtype=F64)
    mean, std = moments(dense(cell, z, x))
    draws = jacobian_penalty(
        cell, z.expand(rows, n), x.expand(rows, n), batched=True, generator=seeded(3)
    )
    assert abs(draws.mean().item() - mean) <= 4 * std / rows**0.5
    # the spread of one draw is the Gaussian Hutchinson one, √(2‖JJᵀ‖²_F)/n, within 5 %
    assert abs(draws.std().item() / std - 1) < 0.05


def test_samples_average_the_draws_and_converge():
    n = 4
    cell = Cell(n)
    z, x = torch.randn(2, n, generator=seeded(2), dtype=F64)
    gen = seeded(5)
    singles = torch.stack([jacobian_penalty(cell, z, x, generator=gen) for _ in range(8)])
    averaged = jacobian_penalty(cell, z, x, samples=8, generator=seeded(5))
    torch.testing.assert_close(averaged, singles.mean(), rtol=1e-12, atol=0)

    mean, std = moments(dense(cell, z, x))
    for samples in (1, 30, 3000):
        estimate = jacobian_penalty(cell, z, x, samples=samples, generator=seeded(samples))
        assert abs(estimate.item() - mean) <= 4 * std / samples**0.5
    assert abs(estimate.item() - mean) < 0.05 * mean  # 3000 draws: a few percent


def test_exact_frobenius_norm_for_a_linear_map():
    """A linear map with known singular values: J = A, ‖A‖²_F / n in closed form."""
    gen = seeded(4)
    n = 8
    q1 = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))[0]
    q2 = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))[0]
    sigma = torch.linspace(0.1, 0.9, n, dtype=F64)
    a = (q1 * sigma) @ q2.T
    exact = sigma.square().sum().item() / n
    estimate = jacobian_penalty(lambda z: a @ z, torch.zeros(n, dtype=F64), samples=4000)
    relative_std = math.sqrt(2 * sigma.pow(4).sum().item()) / (n * exact)
    assert abs(estimate.item() / exact - 1) <= 4 * relative_std / 4000**0.5


def test_batched_rows_are_per_sample_and_independent():
    n, batch = 4, 5
    cell = Cell(n)
    scales = torch.linspace(0.2, 1.5, batch, dtype=F64)

    def f(z, x):
        return scales[:, None] * cell(z, x)

    z, x = torch.randn(2, batch, n, generator=seeded(1), dtype=F64)
    penalty = jacobian_penalty(f, z, x, batched=True, generator=seeded(9))
    assert penalty.shape == (batch,)
    eps = torch.randn(batch, n, generator=seeded(9), dtype=F64)
    for b in range(batch):
        jac = scales[b] * dense(cell, z[b], x[b])
        torch.testing.assert_close(
            penalty[b], (eps[b] @ jac).square().sum() / n, rtol=1e-12, atol=0
        )

    # Changing the other rows leaves a row's value (same draw) as it was.
    z2, x2 = z.clone(), x.clone()
    z2[1:] = 10 * torch.randn(batch - 1, n, dtype=F64)
    x2[1:] = -x2[1:]
    again = jacobian_penalty(f, z2, x2, batched=True, generator=seeded(9))
    torch.testing.assert_close(again[0], penalty[0], rtol=1e-14, atol=0)
    assert not torch.allclose(again[1:], penalty[1:])


def test_gradients_match_finite_differences():
    """With the draws fixed (a re-seeded generator), the penalty is a smooth function of the
    parameters and of the extra inputs: gradcheck compares autograd with finite differences."""
    n = 4
    z = torch.randn(3, n, generator=seeded(1), dtype=F64)
    weight = torch.randn(n, n, generator=seeded(2), dtype=F64, requires_grad=True)
    x = torch.randn(3, n, generator=seeded(3), dtype=F64, requires_grad=True)

    def penalty(weight, x):
        def f(z, x):
            return torch.tanh(z @ weight.T + x)

        return jacobian_penalty(f, z, x, batched=True, samples=2, generator=seeded(4))

    assert torch.autograd.gradcheck(penalty, (weight, x))
    assert torch.autograd.gradgradcheck(penalty, (weight, x))


def test_expected_gradient_is_the_gradient_of_the_dense_penalty():
    """Averaged over many draws, the gradient is that of ‖J‖²_F / n with J from jacrev."""
    n, rows = 4, 20_000
    cell = Cell(n)
    z, x = torch.randn(2, n, generator=seeded(1), dtype=F64)
    (target,) = torch.autograd.grad(dense(cell, z, x).square().sum() / n, cell.weight)
    draws = jacobian_penalty(
        cell, z.expand(rows, n), x.expand(rows, n), batched=True, generator=seeded(6)
    )
    (estimate,) = torch.autograd.grad(draws.mean(), cell.weight)
    scale = target.abs().max()
    assert (estimate - target).abs().max() < 0.05 * scale


def test_gradients_reach_module_parameters_and_the_injection_but_not_z():
    n = 6
    injection = nn.Linear(3, n).double()
    cell = Cell(n)
    data = torch.randn(4, 3, dtype=F64)
    x = injection(data)
    z = torch.randn(4, n, dtype=F64, requires_grad=True)
    before = z.detach().clone()
    penalty = jacobian_penalty(cell, z, x, batched=True)
    assert penalty.requires_grad
    weight_grad, injection_grad, z_grad = torch.autograd.grad(
        penalty.mean(), [cell.weight, injection.weight, z], allow_unused=True
    )
    assert weight_grad.abs().sum() > 0 and injection_grad.abs().sum() > 0
    assert z_grad is None  # z is taken as given
    assert torch.equal(z.detach(), before) and z.grad is None


def test_at_a_deq_equilibrium():
    """At fp.nn.DEQ's z* with its injection, the penalty trains the cell and the injection."""
    torch.manual_seed(0)
    injection = nn.Linear(3, 5)
    cell = Cell(5).float()
    deq = fp.nn.DEQ(lambda z, x: 0.5 * cell(z, x))
    x = injection(torch.randn(8, 3))
    z = deq(x)
    penalty = jacobian_penalty(deq.f, deq.last_solution.value, x, batched=True)
    assert penalty.shape == (8,) and penalty.dtype == torch.float32
    (z.square().mean() + penalty.mean()).backward()
    assert cell.weight.grad is not None and injection.weight.grad is not None
    assert bool((penalty >= 0).all()) and bool(penalty.isfinite().all())


def test_pytree_states():
    """A state (a, b) is the flat vector [a, b]: the same value as the flattened map."""
    gen = seeded(3)
    a = torch.randn(5, 2, generator=gen, dtype=F64)
    b = torch.randn(5, 3, generator=gen, dtype=F64)
    m = torch.randn(5, 5, generator=gen, dtype=F64) / 3

    def tree(state):
        flat = torch.cat(state, dim=1) @ m.T
        return torch.tanh(flat[:, :2]), flat[:, 2:] ** 2

    def flat(v):
        return torch.cat(tree((v[:, :2], v[:, 2:])), dim=1)

    from_tree = jacobian_penalty(tree, (a, b), batched=True, samples=3, generator=seeded(1))
    expected = jacobian_penalty(
        flat, torch.cat([a, b], 1), batched=True, samples=3, generator=seeded(1)
    )
    torch.testing.assert_close(from_tree, expected, rtol=1e-12, atol=0)
    with pytest.raises(TypeError, match="structure"):
        jacobian_penalty(lambda s: s[0], (a, b), batched=True)


def test_the_generator_makes_it_reproducible(device):
    cell = Cell(5).to(device)
    z, x = torch.randn(2, 3, 5, dtype=F64, device=device)
    first = jacobian_penalty(cell, z, x, batched=True, generator=seeded(11))
    second = jacobian_penalty(cell, z, x, batched=True, generator=seeded(11))
    other = jacobian_penalty(cell, z, x, batched=True, generator=seeded(12))
    assert first.device == z.device
    assert torch.equal(first, second) and not torch.equal(first, other)
    torch.manual_seed(0)
    global_first = jacobian_penalty(cell, z, x, batched=True)
    torch.manual_seed(0)
    assert torch.equal(global_first, jacobian_penalty(cell, z, x, batched=True))
    if device.type != "cpu":  # the draws are made on the generator's device: the same numbers
        cpu = jacobian_penalty(cell.cpu(), z.cpu(), x.cpu(), batched=True, generator=seeded(11))
        torch.testing.assert_close(first.cpu(), cpu)


def test_under_vmap_with_random_draws():
    cell = Cell(3)
    z, x = torch.randn(2, 4, 3, dtype=F64)
    torch.manual_seed(0)
    per_sample = torch.func.vmap(lambda z, x: jacobian_penalty(cell, z, x), randomness="different")(
        z, x
    )
    assert per_sample.shape == (4,) and bool((per_sample > 0).all())
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(lambda z, x: jacobian_penalty(cell, z, x))(z, x)


def test_float32_and_no_grad():
    cell = Cell(4).float()
    z, x = torch.randn(2, 3, 4)
    penalty = jacobian_penalty(cell, z, x, batched=True)
    assert penalty.dtype == torch.float32 and penalty.shape == (3,)
    with torch.no_grad():
        quiet = jacobian_penalty(cell, z, x, batched=True, generator=seeded(0))
    assert not quiet.requires_grad
    torch.testing.assert_close(
        quiet, jacobian_penalty(cell, z, x, batched=True, generator=seeded(0))
    )


@pytest.mark.parametrize("samples", [0, -1, 1.5, True, "2", None])
def test_samples_must_be_a_positive_integer(samples):
    with pytest.raises(ValueError, match="jacobian_penalty: samples must be an integer ≥ 1"):
        jacobian_penalty(torch.tanh, torch.zeros(3), samples=samples)


def test_other_arguments_are_checked():
    with pytest.raises(ValueError, match="batched must be True or False"):
        jacobian_penalty(torch.tanh, torch.zeros(3), batched="yes")
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        jacobian_penalty(torch.tanh, torch.zeros(3), generator=0)
    with pytest.raises(TypeError, match="floating point"):
        jacobian_penalty(torch.tanh, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="leading batch dimension"):
        jacobian_penalty(torch.tanh, torch.tensor(1.0), batched=True)
    with pytest.raises(ValueError, match="shape"):
        jacobian_penalty(lambda z: z[:2], torch.zeros(3))
