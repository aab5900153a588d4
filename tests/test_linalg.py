"""Batched CG and CGLS against dense solves."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from fixpoint.linalg import cg, cgls

seeds = st.integers(0, 2**31 - 1)


@given(seed=seeds, n=st.integers(1, 15), batch=st.integers(1, 4))
def test_cg_solves_spd_systems(seed, n, batch):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    a = m @ m.mT + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    res = cg(lambda v: (a @ v[..., None])[..., 0], b, atol=1e-12, rtol=0, max_iter=10 * n)
    expected = torch.linalg.solve(a, b[..., None])[..., 0]
    assert res.converged.all() and res.iterations <= 10 * n
    torch.testing.assert_close(res.x, expected, atol=1e-8, rtol=1e-8)
    true_residual = torch.linalg.vector_norm(b - (a @ res.x[..., None])[..., 0], dim=1)
    torch.testing.assert_close(res.residual, true_residual, atol=1e-12, rtol=1e-6)


@given(seed=seeds, n=st.integers(1, 12), batch=st.integers(1, 4))
def test_cgls_solves_nonsymmetric_systems(seed, n, batch):
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    a = torch.eye(n, dtype=torch.float64) - 0.8 * q  # I − J with ‖J‖ = 0.8: well conditioned
    a = a.expand(batch, n, n)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    calls = {"mv": 0, "rmv": 0}

    def mv(v):
        calls["mv"] += 1
        return (a @ v[..., None])[..., 0]

    def rmv(v):
        calls["rmv"] += 1
        return (a.mT @ v[..., None])[..., 0]

    res = cgls(mv, rmv, b, atol=1e-12, rtol=0, max_iter=20 * n)
    expected = torch.linalg.solve(a, b[..., None])[..., 0]
    assert res.converged.all()
    torch.testing.assert_close(res.x, expected, atol=1e-9, rtol=1e-9)
    assert calls["mv"] == calls["rmv"] == res.iterations


def test_rows_stop_independently_and_zero_rhs():
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).expand(2, 3, 3)
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    res = cg(lambda v: (a @ v[..., None])[..., 0], b, atol=1e-12, rtol=0, max_iter=10)
    assert torch.equal(res.x[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(res.x[1], torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64))
    assert res.converged.all()
