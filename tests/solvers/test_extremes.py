"""Finite problems at extreme scales, maps that change their output, and results that are the
caller's own tensors: named outcomes, never a wrong one."""

import pytest
import torch

import fixpoint as fp
from fixpoint._norms import row_norm
from tests.methods import SOLVER_CLASSES

SOLVERS = [cls(max_iter=300) for cls in SOLVER_CLASSES]
IDS = [cls.__name__ for cls in SOLVER_CLASSES]


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
@pytest.mark.parametrize(
    ("dtype", "shift", "atol"),
    [
        (torch.float32, 1e20, 1e-6),  # squares overflow float32
        (torch.float64, 1e200, 1e-6),  # and float64
        (torch.float64, 1e-290, 0.0),  # squares underflow: the residual must not read 0
        (torch.float32, 1e-30, 0.0),
    ],
)
def test_finite_problems_at_extreme_scales(solver, dtype, shift, atol):
    solver = type(solver)(**{**solver.__dict__, "atol": atol, "rtol": 1e-5})
    z0 = torch.zeros(3, dtype=dtype)
    sol = fp.solve(lambda z: 0.5 * z + shift, z0, solver=solver)
    assert sol.status == "converged" and torch.isfinite(sol.residual)
    assert int(sol.iterations) > 0  # the start (residual ≈ 1.7·shift) did not pass as converged
    torch.testing.assert_close(
        sol.value, torch.full((3,), 2 * shift, dtype=dtype), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize(
    ("rows", "dtype", "expected"),
    [
        ([[3e30, 4e30]], torch.float32, [5e30]),
        ([[3e200, 4e200]], torch.float64, [5e200]),
        ([[3e-300, 4e-300]], torch.float64, [5e-300]),
        ([[3e-30, 4e-30]], torch.float32, [5e-30]),
        ([[3e4, 4e4]], torch.float16, [5e4]),  # float16 overflows at 65504: norm in float32
        ([[0.0, 0.0], [3.0, 4.0]], torch.float32, [0.0, 5.0]),
    ],
)
def test_row_norm_neither_overflows_nor_underflows(rows, dtype, expected):
    got = row_norm(torch.tensor(rows, dtype=dtype))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=1e-6, atol=0)


def test_row_norm_keeps_non_finite_rows_non_finite_and_plain_rows_bitwise():
    x = torch.tensor([[float("nan"), 1.0], [float("inf"), 1.0], [1e30, float("inf")]])
    got = row_norm(x)
    assert torch.isnan(got[0]) and got[1] == float("inf") and got[2] == float("inf")
    plain = torch.randn(5, 7, dtype=torch.float64)
    assert torch.equal(row_norm(plain), torch.linalg.vector_norm(plain, dim=1))


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_f_is_checked_at_every_call(solver):
    calls = 0

    def changes(kind):
        def f(z):
            nonlocal calls
            calls += 1
            if calls < 3:
                return 0.5 * torch.tanh(z) + 1
            return (0.5 * z)[:2] if kind == "shape" else (0.5 * z).double()

        return f

    with pytest.raises(ValueError, match="f must return a state of z's shape"):
        fp.solve(changes("shape"), torch.zeros(3), solver=solver)
    calls = 0
    with pytest.raises(TypeError, match="f must return a state of z's dtype"):
        fp.solve(changes("dtype"), torch.zeros(3), solver=solver)


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
@pytest.mark.parametrize("batched", [False, True])
def test_the_result_is_never_the_callers_tensor(solver, batched):
    """A start that is already a fixed point comes back as a copy, not as z0 itself."""
    z0 = torch.full((2, 3) if batched else (3,), 2.0)
    sol = fp.solve(lambda z: 0.5 * z + 1.0, z0, solver=solver, batched=batched)
    assert sol.converged.all() and (sol.iterations == 0).all()
    sol.value.add_(1.0)
    assert (z0 == 2.0).all()
    z, info = fp.fixed_point(
        lambda z: 0.5 * z + 1.0, z0, solver=solver, batched=batched, return_solution=True
    )
    info.value.add_(1.0)
    z.add_(1.0)
    assert (z0 == 2.0).all()
