"""Batched CG, CGLS, GMRES and BiCGStab against dense solves, numpy and scipy."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import gmres as scipy_gmres

from fixpoint.linalg import bicgstab, cg, cgls, gmres

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


# --- GMRES and BiCGStab --------------------------------------------------------------------------

SOLVERS = ["gmres", "bicgstab"]


def krylov(name, matvec, b, **kwargs):
    """Calls ``gmres`` (full, no restart unless one is given) or ``bicgstab`` by name."""
    if name == "gmres":
        kwargs.setdefault("restart", kwargs["max_iter"])
        return gmres(matvec, b, **kwargs)
    return bicgstab(matvec, b, **kwargs)


class Counted:
    """``v ↦ A v`` for a ``(B, n, n)`` or ``(n, n)`` matrix, counting its (batched) calls."""

    def __init__(self, a):
        self.a, self.calls = a, 0

    def __call__(self, v):
        self.calls += 1
        if self.a.dim() == 2:  # one matrix for every row (a broadcast bmm is slow on CPU)
            return v @ self.a.mT
        return (self.a @ v[..., None])[..., 0]


def residual_norms(a, x, b):
    """Independent ‖b − A x‖₂ for each row."""
    return np.linalg.norm(
        b.double().numpy() - (a.double() @ x.double()[..., None])[..., 0].numpy(), axis=-1
    )


def dense_solve(a, b):
    return torch.linalg.solve(a, b[..., None])[..., 0]


def inverse_norm(a):
    """‖A⁻¹‖₂ for each matrix: ‖x − x*‖ ≤ ‖A⁻¹‖₂ ‖b − A x‖."""
    return torch.linalg.matrix_norm(torch.linalg.inv(a), ord=2)


def contraction_complement(n, batch, gen, scale=0.8):
    """I − scale·Q with Q random orthogonal, one per row: non-symmetric, symmetric part ⪰ 0.2 I."""
    q = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=torch.float64))[0]
    return torch.eye(n, dtype=torch.float64) - scale * q


def nonnormal(n, dtype=torch.float64):
    """I − J with J = 0.5 I + 0.9·(upper shift): ρ(J) = 0.5 < 1 but ‖J‖₂ > 1."""
    j = 0.5 * torch.eye(n, dtype=dtype) + 0.9 * torch.diag(torch.ones(n - 1, dtype=dtype), 1)
    return torch.eye(n, dtype=dtype) - j


def graded(n):
    """diag(1 … 50) plus 0.5 on the superdiagonal: non-normal, slow enough that tolerances
    1e-3, 1e-7 and 1e-10 stop at clearly different iterations."""
    d = torch.diag(torch.linspace(1.0, 50.0, n, dtype=torch.float64))
    return d + 0.5 * torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)


def assert_solved_to_tolerance(res, a, b, tol):
    """Converged, true residual within tol, reported residual the true one, and the error
    within the bound ‖A⁻¹‖₂·tol that the residual implies."""
    true = residual_norms(a, res.x, b)
    assert res.converged.all()
    assert (true <= tol.numpy() * (1 + 1e-9)).all(), (true, tol)
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-6, atol=1e-14)
    error = torch.linalg.vector_norm(res.x - dense_solve(a, b), dim=-1)
    bound = inverse_norm(a) * tol
    assert (error <= bound * (1 + 1e-6) + 1e-13).all(), (error, bound)


@pytest.mark.parametrize("name", SOLVERS)
@given(seed=seeds, n=st.integers(1, 12), batch=st.integers(1, 4))
def test_krylov_solves_random_nonsymmetric_systems_to_the_tolerance_asked(name, seed, n, batch):
    gen = torch.Generator().manual_seed(seed)
    a = contraction_complement(n, batch, gen)  # a different matrix on each row
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-10, 1e-4, 1e-7, 1e-12], dtype=torch.float64)[:batch]
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=20 * n)
    assert_solved_to_tolerance(res, a, b, rtol * torch.linalg.vector_norm(b, dim=1))


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("n", [5, 12, 16])
def test_krylov_solves_a_nonnormal_system_with_a_contraction_of_norm_above_one(name, n):
    a = nonnormal(n)
    j = torch.eye(n, dtype=torch.float64) - a
    assert torch.linalg.eigvals(j).abs().max() < 1 < torch.linalg.matrix_norm(j, ord=2)
    gen = torch.Generator().manual_seed(n)
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-8, 1e-3, 1e-11], dtype=torch.float64)
    atol = torch.tensor([0.0, 0.0, 1e-9], dtype=torch.float64)
    res = krylov(name, Counted(a), b, atol=atol, rtol=rtol, max_iter=40 * n)
    assert_solved_to_tolerance(res, a, b, atol + rtol * torch.linalg.vector_norm(b, dim=1))


@pytest.mark.parametrize("name", SOLVERS)
def test_rows_stop_on_their_own_tolerance_and_are_then_left_alone(name):
    n = 30
    a = graded(n)
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-7, 1e-3, 1e-10], dtype=torch.float64)
    tol = rtol * torch.linalg.vector_norm(b, dim=1)
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=200)
    alone = [
        krylov(name, Counted(a), b[i : i + 1], atol=0.0, rtol=float(rtol[i]), max_iter=200)
        for i in range(3)
    ]
    counts = [r.iterations for r in alone]
    assert counts[1] < counts[0] < counts[2]  # looser tolerance, fewer iterations
    assert res.iterations == max(counts)  # the batch runs until its slowest row stops
    true = residual_norms(a, res.x, b)
    assert res.converged.tolist() == (true <= tol.numpy()).tolist() == [True] * 3
    # The loose row really stopped early: its residual is far above the others' tolerances ...
    assert true[1] > 1e3 * tol[0] and true[0] > 1e2 * tol[2]
    # ... and the iterations the other rows still made did not touch it.
    for i in range(3):
        torch.testing.assert_close(res.x[i], alone[i].x[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", SOLVERS)
@given(
    seed=seeds,
    n=st.integers(2, 14),
    max_iter=st.integers(1, 14),
    restart=st.integers(1, 14),
    loose=st.sampled_from([1e-1, 1e-2, 1e-3]),
)
def test_converged_is_the_true_residual_test_also_when_iterations_run_out(
    name, seed, n, max_iter, restart, loose
):
    gen = torch.Generator().manual_seed(seed)
    a = torch.stack([nonnormal(n), graded(n), contraction_complement(n, 1, gen)[0]])
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-9, loose, 1e-6], dtype=torch.float64)
    tol = rtol * torch.linalg.vector_norm(b, dim=1)
    kwargs = {"restart": restart} if name == "gmres" else {}
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=max_iter, **kwargs)
    true = residual_norms(a, res.x, b)
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-6, atol=1e-14)
    assert res.converged.tolist() == (true <= tol.numpy()).tolist()
    assert res.iterations <= max_iter


@pytest.mark.parametrize("name", SOLVERS)
def test_zero_right_hand_sides_give_zero_without_work_or_nan(name):
    n = 6
    a = nonnormal(n)
    gen = torch.Generator().manual_seed(0)
    b = torch.zeros(3, n, dtype=torch.float64)
    b[1] = torch.randn(n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-8, 1e-10, 1e-3], dtype=torch.float64)
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=50)
    assert torch.isfinite(res.x).all() and torch.isfinite(res.residual).all()
    assert torch.equal(res.x[0], torch.zeros(n, dtype=torch.float64))
    assert torch.equal(res.x[2], torch.zeros(n, dtype=torch.float64))
    assert res.converged.all() and res.residual[0] == res.residual[2] == 0
    torch.testing.assert_close(res.x[1], dense_solve(a, b[1]), rtol=1e-7, atol=1e-9)

    matvec = Counted(a)
    zeros = torch.zeros(2, n, dtype=torch.float64)
    zero = krylov(name, matvec, zeros, atol=0.0, rtol=1e-6, max_iter=50)
    assert torch.equal(zero.x, zeros) and zero.converged.all()
    assert zero.iterations == 0 and matvec.calls == 0


@pytest.mark.parametrize("name", SOLVERS)
def test_a_nonzero_rhs_within_atol_still_gets_a_step_from_zero(name):
    a = torch.diag(torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64))
    a = a + 0.1 * torch.diag(torch.ones(3, dtype=torch.float64), 1)
    b = torch.tensor([[1e-3, -2e-3, 1e-3, 3e-3]], dtype=torch.float64)
    res = krylov(name, Counted(a), b, atol=1.0, rtol=0.0, max_iter=10)
    assert res.iterations == 1 and res.converged.all()  # one step, then atol is met
    assert residual_norms(a, res.x, b)[0] < 0.5 * float(torch.linalg.vector_norm(b))


@given(seed=seeds, n=st.integers(8, 20), restart=st.integers(1, 5))
def test_restarted_gmres_converges_when_the_symmetric_part_is_definite(seed, n, restart):
    # Symmetric part of I − 0.5 Q is ⪰ 0.5 I: GMRES(m) converges for every m ≥ 1 (Elman).
    gen = torch.Generator().manual_seed(seed)
    a = contraction_complement(n, 2, gen, scale=0.5)
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-9, 1e-5], dtype=torch.float64)
    matvec = Counted(a)
    res = gmres(matvec, b, atol=0.0, rtol=rtol, max_iter=400, restart=restart)
    assert_solved_to_tolerance(res, a, b, rtol * torch.linalg.vector_norm(b, dim=1))
    # Each cycle is at most `restart` products and ends with one for the true residual.
    cycles = matvec.calls - res.iterations
    assert -(-res.iterations // restart) <= cycles <= res.iterations


def cyclic_shift(n):
    """P e_i = e_{i+1 mod n}: from b = e₁, GMRES makes no progress until step n."""
    return torch.roll(torch.eye(n, dtype=torch.float64), 1, dims=0)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_full_gmres_needs_exactly_n_products_on_the_cyclic_shift(n):
    a = cyclic_shift(n)
    b = torch.zeros(1, n, dtype=torch.float64)
    b[0, 0] = 1.0
    matvec = Counted(a)
    res = gmres(matvec, b, atol=0.0, rtol=1e-10, max_iter=3 * n, restart=3 * n)
    assert res.converged.all() and res.iterations == n
    assert matvec.calls == n + 1  # one product per iteration, one for the true residual
    torch.testing.assert_close(res.x, dense_solve(a, b), rtol=0, atol=1e-14)


def test_restarted_gmres_stagnates_honestly_on_the_cyclic_shift():
    n = 8
    a = cyclic_shift(n).expand(2, n, n)
    b = torch.zeros(2, n, dtype=torch.float64)
    b[0, 0] = 1.0
    b[1] = 1.0  # an eigenvector (P 1 = 1): solved in one step, by any restart length
    res = gmres(Counted(a), b, atol=0.0, rtol=1e-10, max_iter=40, restart=n - 1)
    # On row 0 every cycle's Krylov space is span{e₁ … e₇}, whose image is orthogonal to e₁.
    assert res.converged.tolist() == [False, True]
    assert res.iterations == 40
    torch.testing.assert_close(res.x[1], b[1], rtol=0, atol=1e-14)
    torch.testing.assert_close(res.x[0], torch.zeros(n, dtype=torch.float64), rtol=0, atol=1e-15)
    true = residual_norms(a, res.x, b)
    assert true[0] > 1e-10 and res.residual[0] == pytest.approx(true[0], rel=1e-12)


def test_gmres_out_of_iterations_says_so_row_by_row():
    n = 30
    a = graded(n)
    gen = torch.Generator().manual_seed(7)
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-10, 0.5], dtype=torch.float64)
    tol = rtol * torch.linalg.vector_norm(b, dim=1)
    res = gmres(Counted(a), b, atol=0.0, rtol=rtol, max_iter=3, restart=2)
    true = residual_norms(a, res.x, b)
    assert res.iterations == 3
    assert res.converged.tolist() == [False, True]
    assert true[0] > tol[0] and true[1] <= tol[1]
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-10)


@pytest.mark.parametrize("name", SOLVERS)
def test_starting_at_the_solution_costs_one_product_and_no_iteration(name):
    n = 10
    gen = torch.Generator().manual_seed(1)
    a = contraction_complement(n, 2, gen)
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    x0 = dense_solve(a, b)
    kept = x0.clone()
    matvec = Counted(a)
    res = krylov(name, matvec, b, atol=0.0, rtol=1e-10, max_iter=50, x0=x0)
    assert res.iterations == 0 and matvec.calls == 1 and res.converged.all()
    assert torch.equal(res.x, kept) and torch.equal(x0, kept)


@pytest.mark.parametrize("name", SOLVERS)
@given(seed=seeds, n=st.integers(1, 12), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_a_start_elsewhere_reaches_the_same_solution(name, seed, n, scale):
    gen = torch.Generator().manual_seed(seed)
    a = contraction_complement(n, 2, gen)
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    exact = dense_solve(a, b)
    x0 = torch.stack([exact[0], scale * torch.randn(n, generator=gen, dtype=torch.float64)])
    kept = x0.clone()
    rtol = torch.tensor([1e-6, 1e-10], dtype=torch.float64)
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=20 * n, x0=x0)
    assert torch.equal(x0, kept)  # the start is not written to
    assert torch.equal(res.x[0], exact[0])  # a row that starts converged is never touched
    assert_solved_to_tolerance(res, a, b, rtol * torch.linalg.vector_norm(b, dim=1))


def minimal_residual_in_krylov_space(a, b, x0, k):
    """Independent answer: argmin ‖b − A x‖ over x ∈ x0 + K_k(A, r0), by least squares over
    an orthonormal basis (QR of the normalised power basis r0, A r0, …, A^{k−1} r0)."""
    r0 = b - a @ x0
    columns = [r0 / np.linalg.norm(r0)]
    for _ in range(k - 1):
        v = a @ columns[-1]
        columns.append(v / np.linalg.norm(v))
    q = np.linalg.qr(np.stack(columns, axis=1))[0]
    y = np.linalg.lstsq(a @ q, r0, rcond=None)[0]
    return x0 + q @ y


@given(
    seed=seeds,
    n=st.integers(3, 12),
    k=st.integers(1, 6),
    cycles=st.integers(1, 3),
    start=st.booleans(),
)
def test_gmres_cycles_are_minimal_residual_krylov_steps(seed, n, k, cycles, start):
    """k products from x0 give the minimal-residual iterate of x0 + K_k(A, r0) (numpy least
    squares); `cycles` restarts of length k match scipy's GMRES(k) with `cycles` outer steps."""
    k = min(k, n - 1)
    gen = torch.Generator().manual_seed(seed)
    a = (
        torch.eye(n, dtype=torch.float64)
        + 0.5 * torch.randn(2, n, n, generator=gen, dtype=torch.float64) / n**0.5
    )
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    zero = torch.zeros(2, n, dtype=torch.float64)
    x0 = torch.randn(2, n, generator=gen, dtype=torch.float64) if start else zero
    res = gmres(
        Counted(a), b, atol=0.0, rtol=0.0, max_iter=k * cycles, restart=k, x0=x0 if start else None
    )
    assert res.iterations == k * cycles
    for i in range(2):
        an, bn, xn = a[i].numpy(), b[i].numpy(), x0[i].numpy()
        expected, _ = scipy_gmres(an, bn, x0=xn, rtol=1e-15, atol=0.0, restart=k, maxiter=cycles)
        scale = np.linalg.norm(expected) + 1.0
        np.testing.assert_allclose(res.x[i].numpy(), expected, rtol=0, atol=1e-9 * scale)
        if cycles == 1:
            expected = minimal_residual_in_krylov_space(an, bn, xn, k)
            np.testing.assert_allclose(res.x[i].numpy(), expected, rtol=0, atol=1e-9 * scale)


@given(seed=seeds, n=st.integers(1, 15), batch=st.integers(1, 3))
def test_full_gmres_terminates_within_n_products(seed, n, batch):
    gen = torch.Generator().manual_seed(seed)
    a = contraction_complement(n, batch, gen)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    matvec = Counted(a)
    res = gmres(matvec, b, atol=0.0, rtol=1e-10, max_iter=3 * n, restart=3 * n)
    assert res.converged.all() and res.iterations <= n
    assert matvec.calls == res.iterations + 1  # one per iteration, one true residual


@given(seed=seeds, n=st.integers(1, 15), batch=st.integers(1, 3))
def test_bicgstab_makes_two_products_per_iteration(seed, n, batch):
    gen = torch.Generator().manual_seed(seed)
    a = contraction_complement(n, batch, gen)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    matvec = Counted(a)
    res = bicgstab(matvec, b, atol=0.0, rtol=1e-10, max_iter=20 * n)
    assert res.converged.all() and res.iterations >= 1
    # Two per iteration, plus one true residual per run (each run is at least one iteration).
    assert 2 * res.iterations + 1 <= matvec.calls <= 3 * res.iterations


def test_gmres_without_true_residual_reports_the_recurrence_residual():
    """Without the closing product, residual is the Givens estimate: in exact arithmetic
    the true residual, so it must agree with ‖b − A x‖ while that is far above round-off,
    also on rows that stopped before the end of the cycle."""
    n = 30
    a = graded(n)
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    rtol = torch.tensor([1e-5, 1e-3, 1e-7], dtype=torch.float64)
    tol = rtol * torch.linalg.vector_norm(b, dim=1)
    matvec = Counted(a)
    res = gmres(matvec, b, atol=0.0, rtol=rtol, max_iter=100, restart=100, true_residual=False)
    assert matvec.calls == res.iterations  # no product beyond the Arnoldi ones
    true = residual_norms(a, res.x, b)
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-6)
    assert res.converged.tolist() == (true <= tol.numpy()).tolist() == [True] * 3


def test_bicgstab_breakdown_is_reported_and_does_not_stop_other_rows():
    # r·(S r) = 0 exactly for a skew-symmetric S and integer data: r̂ᵀv = 0 on the first step.
    s = torch.tensor(
        [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, -2.0, 0.0]],
        dtype=torch.float64,
    )
    d = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    a = torch.stack([s, d])
    b = torch.tensor([[1.0, 2.0, -1.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert float(b[0] @ s @ b[0]) == 0.0
    res = bicgstab(Counted(a), b, atol=0.0, rtol=1e-10, max_iter=20)
    true = residual_norms(a, res.x, b)
    assert torch.isfinite(res.x).all()
    assert res.converged.tolist() == [False, True]
    assert true[0] > 1e-10 * float(torch.linalg.vector_norm(b[0]))
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(res.x[1], dense_solve(d, b[1]), rtol=1e-9, atol=1e-12)
    # GMRES has no such breakdown: it solves the same skew system.
    gm = gmres(Counted(a), b, atol=0.0, rtol=1e-10, max_iter=8, restart=8)
    assert gm.converged.all()


@given(seed=seeds, half=st.integers(1, 5))
def test_bicgstab_on_skew_symmetric_systems_never_claims_a_false_convergence(seed, half):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(2 * half, 2 * half, generator=gen, dtype=torch.float64)
    s = m - m.T  # r·(S r) = 0 in exact arithmetic: the recurrence (near-)breaks down
    b = torch.randn(1, 2 * half, generator=gen, dtype=torch.float64)
    tol = 1e-8 * float(torch.linalg.vector_norm(b))
    res = bicgstab(Counted(s), b, atol=0.0, rtol=1e-8, max_iter=30)
    true = residual_norms(s, res.x, b)
    assert bool(res.converged[0]) == bool(true[0] <= tol)
    np.testing.assert_allclose(res.residual.numpy(), true, rtol=1e-6)


def test_bicgstab_near_breakdown_does_not_make_the_answer_worse_than_zero():
    """bᵀSb = −3.5e-18, round-off, not 0: dividing by it once gave x ≈ 1e16."""
    s = 0.7 * torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    res = bicgstab(Counted(s), b, atol=0.0, rtol=1e-8, max_iter=20)
    true = residual_norms(s, res.x, b)[0]
    assert true <= float(torch.linalg.vector_norm(b))
    assert not bool(res.converged[0]) and torch.isfinite(res.x).all()
    np.testing.assert_allclose(res.residual.numpy()[0], true, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 12))
def test_bicgstab_never_ends_worse_than_its_start(seed, n):
    """On random skew systems (breakdown-prone) the answer's true residual is at most ‖b‖."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, n, generator=gen, dtype=torch.float64)
    s = g - g.T
    b = torch.randn(3, n, generator=gen, dtype=torch.float64)
    res = bicgstab(Counted(s), b, atol=0.0, rtol=1e-10, max_iter=40)
    true = torch.from_numpy(residual_norms(s, res.x, b))
    assert (true <= torch.linalg.vector_norm(b, dim=1) * (1 + 1e-12)).all()
    tol = 1e-10 * torch.linalg.vector_norm(b, dim=1)
    assert (true[res.converged] <= tol[res.converged] * (1 + 1e-6)).all()
    assert (true[~res.converged] > tol[~res.converged] * (1 - 1e-6)).all()


@pytest.mark.parametrize("name", SOLVERS)
def test_float32_in_float32_out(name):
    n = 12
    gen = torch.Generator().manual_seed(5)
    a64 = contraction_complement(n, 2, gen)
    b64 = torch.randn(2, n, generator=gen, dtype=torch.float64)
    a, b = a64.float(), b64.float()
    rtol = torch.tensor([1e-5, 1e-3])
    res = krylov(name, Counted(a), b, atol=0.0, rtol=rtol, max_iter=20 * n)
    assert res.x.dtype == res.residual.dtype == torch.float32
    assert res.converged.all() and torch.isfinite(res.x).all()
    tol = (rtol.double() * torch.linalg.vector_norm(b64, dim=1)).numpy()
    assert (residual_norms(a64, res.x, b64) <= 1.5 * tol).all()
    error = torch.linalg.vector_norm(res.x.double() - dense_solve(a64, b64), dim=1)
    assert (error <= 1.5 * inverse_norm(a64) * torch.from_numpy(tol)).all()


@pytest.mark.parametrize("name", ["cg", "cgls", "bicgstab", "gmres"])
def test_a_numerically_singular_system_never_ends_worse_than_the_start(name):
    """I − J with J = 0.5 I + 0.9·shift (n = 200): cond ≈ 1e16. Before the solvers kept each
    row's best iterate, CG on it returned ‖x‖ ≈ 1e32; now the answer is no worse than x₀ = 0."""
    n = 200
    j = 0.5 * torch.eye(n, dtype=torch.float64) + 0.9 * torch.diag(
        torch.ones(n - 1, dtype=torch.float64), 1
    )
    a = torch.eye(n, dtype=torch.float64) - j
    b = torch.randn(4, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matvec, rmatvec = (lambda v: v @ a.T), (lambda v: v @ a)
    options = dict(atol=0.0, rtol=1e-6, max_iter=500)
    if name == "cg":  # the normal equations, as a symmetric system
        res = cg(lambda v: rmatvec(matvec(v)), rmatvec(b), **options)
        start = torch.linalg.vector_norm(rmatvec(b), dim=1)
        true = torch.linalg.vector_norm(rmatvec(b) - rmatvec(matvec(res.x)), dim=1)
    else:
        solve = {
            "cgls": lambda: cgls(matvec, rmatvec, b, **options),
            "bicgstab": lambda: bicgstab(matvec, b, **options),
            "gmres": lambda: gmres(matvec, b, **options),
        }[name]
        res = solve()
        start = torch.linalg.vector_norm(b, dim=1)
        true = torch.linalg.vector_norm(b - matvec(res.x), dim=1)
    assert torch.isfinite(res.x).all()
    assert (true <= start * (1 + 1e-9)).all()
    # A row reported converged meets its tolerance; here the others do not claim it.
    tol = 1e-6 * start
    assert (true[res.converged] <= 1.01 * tol[res.converged]).all()
    assert (true[~res.converged] > tol[~res.converged]).all()
