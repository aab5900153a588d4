"""Operator norms of linear and convolutional layers, against dense matrices."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import fixpoint as fp


def dense_singular_values(layer, shape):
    def linear_part(x):
        out = layer(x.reshape(1, *shape))
        bias = layer(torch.zeros(1, *shape, dtype=x.dtype))
        return (out - bias).reshape(-1)

    n = int(torch.tensor(shape).prod())
    jac = torch.func.jacrev(linear_part)(torch.zeros(n, dtype=torch.float64))
    return torch.linalg.svdvals(jac.detach())


def dense_norm(layer, shape):
    return dense_singular_values(layer, shape)[0]


@given(
    seed=st.integers(0, 2**31 - 1),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    size=st.integers(3, 6),
    stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1]),
)
def test_conv_operator_norm_matches_the_dense_matrix(seed, cin, cout, size, stride, padding):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=padding).double()
    shape = (cin, size, size)
    est = fp.operators.operator_norm(conv, shape, iters=500)
    s = dense_singular_values(conv, shape)
    assert est <= s[0] * (1 + 1e-9)  # always a lower bound
    # Power iteration converges like (σ₂/σ₁)^(2k): 500 steps are enough only with a gap.
    assume(len(s) == 1 or s[1] / s[0] < 0.99)
    assert est >= s[0] * (1 - 1e-3)


@given(seed=st.integers(0, 2**31 - 1), bound=st.floats(0.1, 3.0))
def test_clip_projects_onto_the_bound_and_keeps_small_layers(seed, bound):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(5, 4).double()
    before = torch.linalg.matrix_norm(layer.weight, 2).item()
    weight = layer.weight.detach().clone()
    measured = fp.operators.clip_operator_norm_(layer, (5,), bound, iters=300)
    assert abs(measured.item() - before) <= 1e-6 * before
    after = torch.linalg.matrix_norm(layer.weight, 2).item()
    if before > bound:
        assert abs(after - bound) <= 1e-6 * bound
    else:
        assert torch.equal(layer.weight, weight)


def test_warm_start_tracks_a_changing_layer_with_few_iterations():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()
    shape = (4, 8, 8)
    fp.operators.operator_norm(conv, shape, iters=300)
    for _ in range(5):
        with torch.no_grad():
            conv.weight.add_(0.002 * torch.randn_like(conv.weight))
        est = fp.operators.operator_norm(conv, shape, iters=3)
        assert est >= dense_norm(conv, shape) * (1 - 1e-2)


def test_unsupported_layers():
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        fp.operators.operator_norm(torch.nn.ReLU(), (3,))
    with pytest.raises(ValueError, match="zero padding"):
        fp.operators.operator_norm(
            torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (1, 4, 4)
        )
    with pytest.raises(ValueError, match="bound"):
        fp.operators.clip_operator_norm_(torch.nn.Linear(2, 2), (2,), 0.0)
