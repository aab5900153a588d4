"""count_matvecs reproduces the '# of J mat-vecs' column: per sample, per kind."""

import pytest
import torch

import fixpoint as fp

B, N = 4, 6


def setup(estimator, batched=True):
    torch.manual_seed(0)
    w = 0.8 * torch.linalg.qr(torch.randn(N, N, dtype=torch.float64))[0]
    x = torch.randn(B, N, dtype=torch.float64, requires_grad=True)
    z0 = torch.zeros(B, N, dtype=torch.float64)
    if not batched:
        x, z0 = x[0].detach().requires_grad_(), z0[0]
    z, sol = fp.fixed_point(
        lambda z, x: torch.tanh(z @ w.T + x),
        z0,
        x,
        estimator=estimator,
        batched=batched,
        return_solution=True,
    )
    with fp.count_matvecs() as count:
        z.sum().backward()
    return count, sol


def test_jfb_makes_no_products():
    count, sol = setup(fp.JFB())
    assert (count.vjp, count.jvp) == (0, 0) and sol.backward.vjp == 0


@pytest.mark.parametrize("k", [0, 1, 5, 10])
def test_neumann_makes_k_vjps_per_sample(k):
    count, _ = setup(fp.Neumann(k=k))
    assert (count.vjp, count.jvp) == (k * B, 0)
    count, _ = setup(fp.Neumann(k=k), batched=False)
    assert (count.vjp, count.jvp) == (k, 0)


def test_phantom_makes_k_minus_one_vjps():
    count, _ = setup(fp.Phantom(k=5))
    assert (count.vjp, count.jvp) == (4 * B, 0)


def test_cg_count_equals_its_iterations():
    """k iterations of CGLS: k products of each kind from zero, one vjp more from w0 = g."""
    count, sol = setup(fp.CG(atol=1e-12, rtol=0, w0="zero"))
    iters = sol.backward.iterations
    assert iters > 1
    assert (count.vjp, count.jvp) == (iters * B, iters * B)
    count, sol = setup(fp.CG(atol=1e-12, rtol=0))
    iters = sol.backward.iterations
    assert (count.vjp, count.jvp) == ((iters + 1) * B, iters * B)
    count, sol = setup(fp.CG(atol=1e-12, rtol=0, symmetric=True, max_iter=7, warn=False))
    assert (count.vjp, count.jvp) == ((sol.backward.iterations + 1) * B, 0)


def test_implicit_counts_one_vjp_per_evaluation():
    solver = fp.Picard(atol=0, rtol=0, max_iter=9)
    count, _ = setup(fp.Implicit(solver, warn=False))
    assert (count.vjp, count.jvp) == (10 * B, 0)  # f(w0) and one per step


def test_exact_makes_n_vjps():
    count, _ = setup(fp.Exact())
    assert (count.vjp, count.jvp) == (N * B, 0)


def test_nested_counters_and_nothing_outside():
    outside_before = fp.MatvecCount()
    with fp.count_matvecs() as outer:
        count, _ = setup(fp.Neumann(k=2))
        with fp.count_matvecs() as inner:
            count2, _ = setup(fp.Neumann(k=3))
    assert count.vjp == 2 * B and count2.vjp == 3 * B and inner.vjp == 3 * B
    assert outer.vjp == 5 * B and outer.total == 5 * B
    assert outside_before.total == 0
