"""Flat (B, n) views of tensors and pytrees round-trip, and mismatches name the problem."""

import pytest
import torch

from fixpoint._tree import Layout

STATES = [
    torch.randn(5),
    torch.randn(()),
    torch.randn(2, 3, 4),
    (torch.randn(3), torch.randn(2, 2)),
    {"a": torch.randn(4), "b": [torch.randn(1), torch.randn(2, 1)]},
]


@pytest.mark.parametrize("state", STATES)
def test_unbatched_round_trip(state):
    layout = Layout.of(state, batched=False)
    flat = layout.flatten(state)
    assert flat.shape == (1, layout.size)
    back = layout.unflatten(flat)
    torch.utils._pytree.tree_map(lambda a, b: torch.testing.assert_close(a, b), state, back)
    layout.check(back)


@pytest.mark.parametrize(
    "state",
    [
        s
        for s in STATES
        if all(leaf.dim() > 0 and leaf.shape[0] == 2 for leaf in torch.utils._pytree.tree_leaves(s))
    ]
    + [{"x": torch.randn(2, 3), "y": (torch.randn(2),)}],
)
def test_batched_round_trip_keeps_rows(state):
    layout = Layout.of(state, batched=True)
    flat = layout.flatten(state)
    assert flat.shape[0] == 2
    # Row b holds only sample b's entries.
    for b in range(2):
        row = torch.cat([leaf[b].reshape(-1) for leaf in torch.utils._pytree.tree_leaves(state)])
        torch.testing.assert_close(flat[b], row)
    back = layout.unflatten(flat)
    torch.utils._pytree.tree_map(lambda a, b: torch.testing.assert_close(a, b), state, back)


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="floating point"):
        Layout.of(torch.arange(3), batched=False)
    with pytest.raises(TypeError, match="leaf 1 is a str"):
        Layout.of((torch.zeros(2), "x"), batched=False)
    with pytest.raises(TypeError, match="one dtype"):
        Layout.of((torch.zeros(2), torch.zeros(2, dtype=torch.float64)), batched=False)
    with pytest.raises(ValueError, match="batch size"):
        Layout.of((torch.zeros(2, 3), torch.zeros(3, 3)), batched=True)
    with pytest.raises(ValueError, match="scalar"):
        Layout.of(torch.zeros(()), batched=True)
    with pytest.raises(ValueError, match="no tensors"):
        Layout.of((), batched=False)
    layout = Layout.of({"a": torch.zeros(2)}, batched=False)
    with pytest.raises(TypeError, match="structure"):
        layout.check({"b": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        layout.check({"a": torch.zeros(3)})
    with pytest.raises(TypeError, match="dtype"):
        layout.check({"a": torch.zeros(2, dtype=torch.float64)})
