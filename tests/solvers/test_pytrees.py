"""States may be pytrees (tuples, lists, dicts) of tensors of any shape."""

import pytest
import torch

import fixpoint as fp
from tests.solvers.test_convergence import SOLVERS, make_solver


def coupled(z):
    """A contraction on a dict state: x ∈ R^{2×3}, pair = (y ∈ R^4, s ∈ R)."""
    x, (y, s) = z["x"], z["pair"]
    return {
        "x": 0.3 * torch.tanh(x) + 0.1 * y[:3].sum() + 1.0,
        "pair": (0.2 * torch.cos(y) + 0.1 * s, 0.4 * torch.sin(x.mean()) - 0.5),
    }


def coupled_flat(v):
    x, y, s = v[:6].reshape(2, 3), v[6:10], v[10]
    out = coupled({"x": x, "pair": (y, s)})
    return torch.cat([out["x"].reshape(-1), out["pair"][0], out["pair"][1].reshape(1)])


@pytest.mark.parametrize("name", SOLVERS)
def test_pytree_state_matches_flat_state(name):
    dt = torch.float64
    z0 = {
        "x": torch.zeros(2, 3, dtype=dt),
        "pair": (torch.zeros(4, dtype=dt), torch.zeros((), dtype=dt)),
    }
    tree = fp.solve(coupled, z0, solver=make_solver(name, 1e-12))
    flat = fp.solve(coupled_flat, torch.zeros(11, dtype=dt), solver=make_solver(name, 1e-12))
    assert tree.status == "converged"
    assert isinstance(tree.value, dict) and isinstance(tree.value["pair"], tuple)
    assert tree.value["x"].shape == (2, 3) and tree.value["pair"][1].shape == ()
    got = torch.cat(
        [tree.value["x"].reshape(-1), tree.value["pair"][0], tree.value["pair"][1].reshape(1)]
    )
    torch.testing.assert_close(got, flat.value, atol=1e-11, rtol=0)
    assert int(tree.iterations) == int(flat.iterations)


def test_batched_pytree_of_images():
    """A list state with conv-shaped leaves, batched: each sample solved independently."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.mul_(0.2 / conv.weight.abs().sum())  # ‖·‖₁ bound makes it a contraction

    def f(z, x):
        img, vec = z
        return [torch.tanh(conv(img) + x), 0.5 * vec + img.mean(dim=(1, 2, 3))[:, None]]

    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    z0 = [torch.zeros(3, 2, 5, 5, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)]
    with torch.no_grad():
        sol = fp.solve(f, z0, x, solver=fp.Anderson(atol=1e-10, rtol=0), batched=True)
        assert all(s == "converged" for s in sol.status)
        for b in range(3):
            alone = fp.solve(
                f,
                [z0[0][b : b + 1], z0[1][b : b + 1]],
                x[b : b + 1],
                solver=fp.Anderson(atol=1e-10, rtol=0),
                batched=True,
            )
            torch.testing.assert_close(sol.value[0][b], alone.value[0][0], atol=1e-9, rtol=0)
            torch.testing.assert_close(sol.value[1][b], alone.value[1][0], atol=1e-9, rtol=0)
