"""The pure numerical kernels of Anderson and Broyden, against dense linear algebra."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixpoint.solvers.anderson import mixing_coefficients
from fixpoint.solvers.broyden import BroydenMemory

seeds = st.integers(0, 2**31 - 1)


@given(
    seed=seeds,
    m=st.integers(1, 6),
    n=st.integers(1, 20),
    lam=st.sampled_from([0.0, 1e-6, 1e-2, 1.0]),
)
def test_mixing_coefficients_solve_the_regularised_least_squares_problem(seed, m, n, lam):
    gen = torch.Generator().manual_seed(seed)
    dg = torch.randn(3, n, m, generator=gen, dtype=torch.float64)
    g = torch.randn(3, n, generator=gen, dtype=torch.float64)
    gram = dg.mT @ dg
    gamma = mixing_coefficients(gram, (dg.mT @ g[..., None])[..., 0], lam)
    assert torch.isfinite(gamma).all()
    for b in range(3):
        scale = float(np.mean(np.diag(gram[b].numpy())))
        if m > n and lam == 0.0:
            continue  # rank-deficient: covered by the singular test below
        # Independent answer: numpy least squares on the stacked system [ΔG; √(λ d̄) I].
        a = np.vstack([dg[b].numpy(), np.sqrt(lam * scale) * np.eye(m)])
        rhs = np.concatenate([g[b].numpy(), np.zeros(m)])
        expected = np.linalg.lstsq(a, rhs, rcond=None)[0]
        np.testing.assert_allclose(gamma[b].numpy(), expected, rtol=1e-6, atol=1e-8)


def test_mixing_coefficients_fall_back_to_zero_when_singular():
    gram = torch.zeros(2, 3, 3, dtype=torch.float64)
    gram[1] = torch.ones(3, 3, dtype=torch.float64)  # rank one
    rhs = torch.ones(2, 3, dtype=torch.float64)
    gamma = mixing_coefficients(gram, rhs, lam=0.0)
    assert torch.equal(gamma, torch.zeros_like(gamma))
    nan_gram = torch.full((1, 2, 2), float("nan"))
    assert torch.equal(mixing_coefficients(nan_gram, torch.ones(1, 2), 1e-4), torch.zeros(1, 2))


def good_broyden_dense(pairs, n):
    """Independent answer: H from −I by the dense good Broyden update, pair by pair."""
    h = -np.eye(n)
    for s, y in pairs:
        hy = h @ y
        h = h + np.outer(s - hy, s @ h) / (s @ hy)
    return h


@given(seed=seeds, m=st.integers(1, 5), extra=st.integers(0, 4), n=st.integers(2, 9))
def test_broyden_memory_is_broyden_from_minus_identity_with_the_last_pairs(seed, m, extra, n):
    """After m + extra pairs, H equals the dense updates of −I by the newest m pairs only."""
    gen = torch.Generator().manual_seed(seed)
    memory = BroydenMemory.empty(2, m, n, torch.float64)
    pairs = []
    for _ in range(m + extra):
        s = torch.randn(2, n, generator=gen, dtype=torch.float64)
        y = -s + 0.3 * torch.randn(2, n, generator=gen, dtype=torch.float64)
        took = memory.add(s, y, rows=torch.ones(2, dtype=torch.bool))
        assert took.all()
        pairs.append((s.numpy(), y.numpy()))
    h = memory.dense()
    for b in range(2):
        expected = good_broyden_dense([(s[b], y[b]) for s, y in pairs[-m:]], n)
        np.testing.assert_allclose(h[b].numpy(), expected, rtol=1e-8, atol=1e-8)
        # The secant condition for the newest pair.
        s, y = pairs[-1]
        np.testing.assert_allclose(h[b].numpy() @ y[b], s[b], rtol=1e-8, atol=1e-8)


def test_broyden_memory_matches_scipy_broyden1_with_full_memory():
    """scipy's BroydenFirst(alpha=1) keeps the same inverse from the same pairs."""
    nonlin = pytest.importorskip("scipy.optimize._nonlin")
    gen = torch.Generator().manual_seed(3)
    n, k = 6, 5
    memory = BroydenMemory.empty(1, k, n, torch.float64)
    reference = nonlin.BroydenFirst(alpha=1.0)
    x, fx = np.zeros(n), np.ones(n)
    reference.setup(x, fx, lambda v: v)
    for _ in range(k):
        s = torch.randn(1, n, generator=gen, dtype=torch.float64)
        y = -s + 0.3 * torch.randn(1, n, generator=gen, dtype=torch.float64)
        memory.add(s, y, rows=torch.ones(1, dtype=torch.bool))
        x, fx = x + s[0].numpy(), fx + y[0].numpy()
        reference.update(x.copy(), fx.copy())
    v = np.random.default_rng(0).standard_normal(n)
    np.testing.assert_allclose(
        memory.apply(torch.from_numpy(v)[None])[0].numpy(), reference.solve(v), rtol=1e-10
    )


def test_broyden_memory_skips_tiny_denominators_per_row():
    memory = BroydenMemory.empty(2, 2, 3, torch.float64)
    s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 0.0], [-0.5, 0.0, 0.0]], dtype=torch.float64)  # sᵀHy = 0, 0.5
    took = memory.add(s, y, rows=torch.ones(2, dtype=torch.bool))
    assert took.tolist() == [False, True]
    h = memory.dense()
    torch.testing.assert_close(h[0], -torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(h[1] @ y[1], s[1])


def test_broyden_memory_rows_are_independent_and_clear_restarts_one_row():
    gen = torch.Generator().manual_seed(1)
    memory = BroydenMemory.empty(3, 4, 5, torch.float64)
    only_middle = torch.tensor([False, True, False])
    for _ in range(3):
        s = torch.randn(3, 5, generator=gen, dtype=torch.float64)
        memory.add(
            s,
            -0.7 * s + 0.1 * torch.randn(3, 5, generator=gen, dtype=torch.float64),
            rows=torch.ones(3, dtype=torch.bool),
        )
    before = memory.dense()
    s = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    memory.add(s, -s, rows=only_middle)
    after = memory.dense()
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[2], before[2])
    assert not torch.allclose(after[1], before[1])
    memory.clear(only_middle)
    cleared = memory.dense()
    torch.testing.assert_close(cleared[1], -torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(cleared[0], before[0])
