"""VariationalDropout: one mask per sample, the same in every evaluation of f until reset."""

import copy

import pytest
import torch
from torch.func import functional_call, grad, vmap

import fixpoint as fp
from fixpoint.dropout import VariationalDropout, reset_dropout

DTYPE = torch.float64
TIGHT = fp.Anderson(atol=1e-12, rtol=0.0, max_iter=200)


class Cell(torch.nn.Module):
    """z ↦ tanh(D(W z) + x), ‖W‖₂ = 0.4: with p ≤ 0.5 the dropout scaling keeps it a 0.8-
    contraction."""

    def __init__(self, n=6, p=0.3, **kwargs):
        super().__init__()
        self.linear = torch.nn.Linear(n, n, dtype=DTYPE)
        with torch.no_grad():
            weight = self.linear.weight
            weight.mul_(0.4 / torch.linalg.matrix_norm(weight, 2))
        self.drop = VariationalDropout(p, **kwargs)

    def forward(self, z, x):
        return torch.tanh(self.drop(self.linear(z)) + x)


class MaskedCell(torch.nn.Module):
    """The same map with an explicit, fixed mask multiplied in: no dropout module at all."""

    def __init__(self, cell, mask):
        super().__init__()
        self.linear = copy.deepcopy(cell.linear)
        self.mask = mask

    def forward(self, z, x):
        return torch.tanh(self.linear(z) * self.mask + x)


class Recorder:
    """Checks, at each call of the dropout layer, that it applied the mask of its first call.

    The mask is read off the first call's input and output (``out / in``), independently of the
    layer's own attribute; every later call must then give ``in * that mask`` (to rounding: a
    different mask would be off by at least ``|in|``), whether it runs in the solver, at z* for
    the graph, or under torch.func in the backward pass.
    """

    def __init__(self, layer):
        self.applied = None
        self.calls = 0
        self.mismatches = 0
        layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        (h,) = inputs
        self.calls += 1
        if self.applied is None:
            h, out = h.detach(), output.detach()
            assert (h != 0).all()
            self.applied = out / h
            return
        if not torch.allclose(output, h * self.applied, rtol=1e-12, atol=0.0):
            self.mismatches += 1


def batch(n=5, width=6, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, dtype=DTYPE, generator=gen).requires_grad_(requires_grad)


ESTIMATORS = [
    fp.JFB(),
    fp.Neumann(k=3),
    fp.Phantom(k=3),
    fp.CG(),
    fp.GMRES(),
    fp.Implicit(),
    fp.Exact(),
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_one_mask_across_the_solve_and_the_backward(estimator):
    torch.manual_seed(0)
    cell = Cell()
    deq = fp.nn.DEQ(cell, estimator=estimator)
    record = Recorder(cell.drop)
    x = batch(requires_grad=True)
    deq(x).square().sum().backward()
    assert deq.last_solution.converged.all()
    assert record.calls > 3 and record.mismatches == 0
    # The mask is a real one: some entries dropped, the others scaled.
    assert set(record.applied.unique().tolist()) == {0.0, 1 / 0.7}


@pytest.mark.parametrize(
    "solver",
    [fp.Picard(max_iter=200), fp.Anderson(), fp.Broyden(), fp.NewtonKrylov()],
    ids=lambda s: type(s).__name__,
)
def test_one_mask_with_every_solver(solver):
    torch.manual_seed(1)
    cell = Cell()
    deq = fp.nn.DEQ(cell, solver=solver, estimator=fp.CG())
    record = Recorder(cell.drop)
    deq(batch(requires_grad=True)).sum().backward()
    assert deq.last_solution.converged.all()
    assert record.calls > 3 and record.mismatches == 0


def test_the_layer_solves_the_masked_map():
    """z* is the fixed point of the map with the mask multiplied in explicitly."""
    torch.manual_seed(2)
    cell = Cell()
    deq = fp.nn.DEQ(cell, solver=TIGHT)
    record = Recorder(cell.drop)
    x = batch()
    z = deq(x)
    masked = MaskedCell(cell, record.applied)
    torch.testing.assert_close(masked(z, x), z, atol=1e-10, rtol=0)


@pytest.mark.parametrize("estimator", [fp.JFB(), fp.CG(atol=1e-12, rtol=0.0), fp.Exact()], ids=repr)
def test_gradients_equal_those_of_an_explicitly_masked_network(estimator):
    torch.manual_seed(3)
    cell = Cell()
    deq = fp.nn.DEQ(cell, solver=TIGHT, estimator=estimator)
    record = Recorder(cell.drop)
    x = batch(requires_grad=True)
    target = batch(seed=1)
    torch.nn.functional.mse_loss(deq(x), target).backward()

    masked = MaskedCell(cell, record.applied)
    reference = fp.nn.DEQ(masked, solver=TIGHT, estimator=estimator)
    x_ref = x.detach().clone().requires_grad_()
    torch.nn.functional.mse_loss(reference(x_ref), target).backward()

    for name, param in cell.linear.named_parameters():
        torch.testing.assert_close(param.grad, getattr(masked.linear, name).grad, atol=1e-9, rtol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-9, rtol=0)
    assert record.mismatches == 0


def test_reset_draws_a_new_mask_and_only_then():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6, dtype=DTYPE), fp.nn.DEQ(Cell()))
    drop = model[1].f.drop
    x = batch()
    model(x)
    first = drop.mask.clone()
    model(x)  # no reset: the same mask
    assert torch.equal(drop.mask, first)
    assert reset_dropout(model) == 1
    assert drop.mask is None
    model(x)
    assert not torch.equal(drop.mask, first)


def test_reset_dropout_reaches_every_layer():
    layers = torch.nn.ModuleList(
        [VariationalDropout(0.5), torch.nn.Sequential(VariationalDropout())]
    )
    for layer in (layers[0], layers[1][0]):
        layer(torch.ones(2, 3))
    assert reset_dropout(layers) == 2
    assert layers[0].mask is None and layers[1][0].mask is None
    assert reset_dropout(torch.nn.Linear(2, 2)) == 0
    with pytest.raises(TypeError, match=r"nn\.Module"):
        reset_dropout(lambda z: z)


def test_reset_with_an_example_draws_now():
    drop = VariationalDropout(0.5, shared_dims=-1)
    like = torch.empty(3, 4, dtype=torch.float32)
    drop.reset(like)
    assert drop.mask.shape == (3, 1) and drop.mask.dtype == torch.float32
    mask = drop.mask
    drop(torch.ones(3, 4))
    assert drop.mask is mask


def test_eval_mode_is_the_identity_and_draws_nothing():
    torch.manual_seed(5)
    cell = Cell()
    deq = fp.nn.DEQ(cell).eval()
    x = batch()
    h = torch.randn(4, 6)
    assert cell.drop(h) is h
    z = deq(x)
    assert cell.drop.mask is None
    plain = MaskedCell(cell, torch.ones(()))
    torch.testing.assert_close(plain(z, x), z, atol=1e-5, rtol=0)


def test_p_zero_is_the_identity_and_p_one_drops_everything():
    h = torch.randn(4, 6)
    assert VariationalDropout(0.0)(h) is h
    assert torch.equal(VariationalDropout(1.0)(h), torch.zeros_like(h))


def test_inverted_scaling_is_exact():
    torch.manual_seed(6)
    for p in (0.1, 0.3, 0.5, 0.9):
        drop = VariationalDropout(p)
        h = torch.randn(64, 32)
        out = drop(h)
        kept = out != 0
        assert 0 < kept.sum() < h.numel()
        scale = torch.tensor(1.0 / (1.0 - p), dtype=h.dtype)
        assert torch.equal(out[kept], h[kept] * scale)
        assert set(drop.mask.unique().tolist()) == {0.0, scale.item()}


def test_the_expectation_is_the_input():
    torch.manual_seed(7)
    p, samples = 0.3, 40_000
    drop = VariationalDropout(p)
    # One mask per row: the rows are independent draws for the same input row.
    h = torch.linspace(-1.0, 2.0, 5, dtype=DTYPE).expand(samples, 5)
    out = drop(h)
    # Standard error of each mean: |h| √(p / ((1 − p) N)) ≈ 0.0033 |h|; allow five of them.
    torch.testing.assert_close(
        out.mean(0), h[0], atol=5 * 2.0 * (p / (1 - p) / samples) ** 0.5, rtol=0
    )
    assert abs((drop.mask != 0).double().mean().item() - (1 - p)) < 0.01


def test_per_channel_masks_are_shared_over_the_spatial_dims():
    torch.manual_seed(8)
    images = torch.randn(8, 16, 5, 7)
    for dims in [(-2, -1), (2, 3), (3, -2)]:
        drop = VariationalDropout(0.5, shared_dims=dims)
        out = drop(images)
        assert drop.mask.shape == (8, 16, 1, 1)
        ratio = out / images
        # Each (sample, channel) map is dropped or kept as a whole ...
        assert torch.equal(ratio, ratio[:, :, :1, :1].expand_as(ratio))
        # ... and the samples have different masks.
        assert not all(torch.equal(drop.mask[0], drop.mask[i]) for i in range(1, 8))
        # A later call with another image size reuses the channel mask.
        smaller = torch.randn(8, 16, 3, 3)
        torch.testing.assert_close(drop(smaller) / smaller, ratio[:, :, :3, :3])


def test_a_convolutional_deq_with_channel_dropout():
    torch.manual_seed(9)

    class ConvCell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, dtype=DTYPE)
            with torch.no_grad():
                self.conv.weight.mul_(0.05)
            self.drop = VariationalDropout(0.25, shared_dims=(-2, -1))

        def forward(self, z, x):
            return torch.tanh(self.drop(self.conv(z)) + x)

    cell = ConvCell()
    record = Recorder(cell.drop)
    deq = fp.nn.DEQ(cell, estimator=fp.CG())
    deq(torch.randn(3, 4, 5, 5, dtype=DTYPE, requires_grad=True)).sum().backward()
    assert deq.last_solution.converged.all()
    assert record.mismatches == 0 and cell.drop.mask.shape == (3, 4, 1, 1)


def test_a_new_batch_size_without_reset_raises():
    drop = VariationalDropout(0.5)
    drop(torch.ones(4, 3))
    with pytest.raises(RuntimeError, match=r"drawn for inputs of shape \(4, 3\).*reset_dropout"):
        drop(torch.ones(3, 3))
    with pytest.raises(RuntimeError, match="drawn for inputs"):
        drop(torch.ones(1, 3))  # no silent broadcasting either
    with pytest.raises(RuntimeError, match="drawn for inputs"):
        drop(torch.ones(4, 3, 1))

    torch.manual_seed(10)
    deq = fp.nn.DEQ(Cell())
    deq(batch(n=5))
    with pytest.raises(RuntimeError, match="reset_dropout"):
        deq(batch(n=4))
    reset_dropout(deq)
    deq(batch(n=4))


def test_skip_converged_is_refused():
    torch.manual_seed(11)
    deq = fp.nn.DEQ(Cell(), skip_converged=True)
    # Samples of very different scales converge at different iterations: the solve compacts.
    x = batch(n=40) * torch.logspace(-8, 0, 40, dtype=DTYPE)[:, None]
    with pytest.raises(RuntimeError, match="skip_converged=True"):
        deq(x)


def test_dtype_follows_the_input():
    drop = VariationalDropout(0.5)
    drop(torch.ones(2, 3))
    out = drop(torch.ones(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert torch.equal(out, drop.mask.double())


def test_a_mask_drawn_in_inference_mode_can_be_differentiated_later():
    drop = VariationalDropout(0.5)
    with torch.inference_mode():
        drop(torch.ones(2, 3))
    h = torch.ones(2, 3, requires_grad=True)
    drop(h).sum().backward()
    assert torch.equal(h.grad, drop.mask)


def test_the_mask_is_not_state():
    drop = VariationalDropout(0.5)
    drop(torch.ones(2, 3))
    assert drop.state_dict() == {} and list(drop.buffers()) == []
    clone = copy.deepcopy(drop)
    assert torch.equal(clone.mask, drop.mask)
    assert repr(VariationalDropout(0.25, shared_dims=(2, 3))) == (
        "VariationalDropout(p=0.25, shared_dims=(2, 3))"
    )


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True])
def test_bad_probability(p):
    with pytest.raises(ValueError, match="p must be"):
        VariationalDropout(p)


@pytest.mark.parametrize("dims", ["ab", 1.5, (0, 0), (True,), [None]])
def test_bad_shared_dims(dims):
    with pytest.raises(ValueError, match="shared_dims"):
        VariationalDropout(0.5, shared_dims=dims)


def test_shared_dims_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        VariationalDropout(0.5, shared_dims=3)(torch.ones(2, 3))


def test_functional_call_and_grad_see_the_same_mask():
    """DEQ under torch.func (functional_call + grad) gives the gradients of eager backward()."""
    torch.manual_seed(12)
    cell = Cell()
    deq = fp.nn.DEQ(cell, solver=TIGHT, estimator=fp.CG(atol=1e-12, rtol=0.0))
    record = Recorder(cell.drop)
    x = batch()
    params = {name: p.detach() for name, p in deq.named_parameters()}

    def loss(params):
        return functional_call(deq, params, (x,)).square().sum()

    grads = grad(loss)(params)
    assert type(cell.drop.mask) is torch.Tensor  # an ordinary tensor, not a transform's wrapper
    loss(dict(deq.named_parameters())).backward()
    for name, param in deq.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-9, rtol=0)
    assert record.mismatches == 0


def test_under_vmap_the_copies_share_a_mask_drawn_before_or_with_same_randomness():
    torch.manual_seed(13)
    cell = Cell()
    deq = fp.nn.DEQ(cell, solver=TIGHT, estimator=fp.CG(atol=1e-12, rtol=0.0))
    params = {name: p.detach() for name, p in deq.named_parameters()}
    x = batch()

    def sample_loss(params, x):
        return functional_call(deq, params, (x[None],)).square().sum()  # a batch of one

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))
    with pytest.raises(RuntimeError, match=r"randomness='error'.*reset"):
        per_sample(params, x)

    cell.drop.reset(x[:1])  # one copy's shape: the copies share this mask
    mask = cell.drop.mask
    grads = per_sample(params, x)
    assert cell.drop.mask is mask
    # Sample 3's gradient, with backward() on its own through the same mask.
    deq.zero_grad()
    sample_loss(dict(deq.named_parameters()), x[3]).backward()
    torch.testing.assert_close(
        grads["f.linear.weight"][3], cell.linear.weight.grad, atol=1e-9, rtol=0
    )

    reset_dropout(deq)
    vmap(grad(sample_loss), in_dims=(None, 0), randomness="same")(params, x)
    assert cell.drop.mask.shape == (1, 6) and type(cell.drop.mask) is torch.Tensor

    reset_dropout(deq)
    with pytest.raises(RuntimeError, match="randomness='different'"):
        vmap(grad(sample_loss), in_dims=(None, 0), randomness="different")(params, x)


def test_training_with_a_reset_per_step():
    torch.manual_seed(14)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6, dtype=DTYPE),
        fp.nn.DEQ(Cell(p=0.2)),
        torch.nn.Linear(6, 1, dtype=DTYPE),
    )
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(64, 3, dtype=DTYPE, generator=gen)
    y = torch.sin(d.sum(1, keepdim=True))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks, losses = [], []
    for _ in range(40):
        reset_dropout(model)
        loss = torch.nn.functional.mse_loss(model(d), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        masks.append(model[1].f.drop.mask)
        losses.append(loss.item())
        assert model[1].last_solution.converged.all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(masks)
    model.eval()
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(d), y).item() < 0.5 * losses[0]
