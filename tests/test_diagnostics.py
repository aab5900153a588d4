"""compare_estimators reports how far each estimate is from the implicit gradient."""

import torch

import fixpoint as fp


def test_comparison_against_the_exact_gradient():
    gen = torch.Generator().manual_seed(0)
    n, gamma = 10, 0.7
    w = gamma * torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    x = torch.randn(3, n, generator=gen, dtype=torch.float64)

    def f(z, x):
        return torch.tanh(z @ w.T + x)

    z = fp.solve(
        f, torch.zeros_like(x), x, batched=True, solver=fp.Anderson(atol=1e-13, rtol=0)
    ).value
    g = torch.randn(3, n, generator=gen, dtype=torch.float64)
    estimators = [fp.JFB(), fp.Neumann(k=2), fp.Neumann(k=8), fp.Exact(), fp.CG(atol=1e-13, rtol=0)]
    rows = fp.compare_estimators(f, z, x, estimators=estimators, g=g, batched=True)
    # Independent dense answer for the Neumann rows.
    jac = torch.func.vmap(torch.func.jacrev(f))(z, x)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - jac.mT, g[..., None])[..., 0]
    gnorm = torch.linalg.vector_norm(g, dim=1)
    enorm = torch.linalg.vector_norm(exact, dim=1)
    for row, k in zip(rows[:3], (0, 2, 8), strict=True):
        assert row.cosine.shape == row.relative_error.shape == (3,)
        assert (row.relative_error * enorm <= gamma ** (k + 1) / (1 - gamma) * gnorm + 1e-9).all()
        assert row.vjp == 3 * k and row.jvp == 0
    assert (rows[0].relative_error > rows[2].relative_error).all()
    assert (rows[3].relative_error < 1e-10).all() and (rows[3].cosine > 1 - 1e-12).all()
    assert (rows[4].relative_error < 1e-9).all() and rows[4].vjp == rows[4].jvp + 3 > 3
    table = fp.format_comparison(rows)
    assert "Neumann(k=8)" in table and len(table.splitlines()) == 6


def test_unbatched_default_gradient():
    f = fp.operators.Affine(
        0.5 * torch.eye(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    )
    rows = fp.compare_estimators(
        f, f.fixed_point(), estimators=[fp.JFB()], generator=torch.Generator().manual_seed(0)
    )
    # J = ½I: w* = 2g, so JFB's w = g has cosine 1 and relative error ½.
    torch.testing.assert_close(rows[0].cosine, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(rows[0].relative_error, torch.tensor(0.5, dtype=torch.float64))
