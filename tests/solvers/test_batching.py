"""batched=True: every row is its own problem, with its own stopping, statistics and status."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp
from fixpoint.testing import contractions
from tests.solvers.test_convergence import GLOBALISED, SOLVERS, make_solver


@pytest.mark.parametrize("name", SOLVERS)
@given(problem=contractions(gamma=st.floats(0.0, 0.9), batch=st.integers(1, 5)))
def test_batched_solve_equals_separate_solves(name, problem):
    solver = make_solver(name, 1e-10)
    batched = fp.solve(problem.f, problem.z0, *problem.args, solver=solver, batched=True)
    assert batched.residual.shape == batched.converged.shape == (problem.z0.shape[0],)
    assert batched.iterations.shape == batched.fevals.shape == (problem.z0.shape[0],)
    assert batched.trace.shape == (int(batched.iterations.max()) + 1, problem.z0.shape[0])
    assert len(batched.status) == problem.z0.shape[0]
    for b in range(problem.z0.shape[0]):
        alone = fp.solve(problem.f, problem.z0[b], *(a[b] for a in problem.args), solver=solver)
        assert batched.status[b] == alone.status == "converged"
        # Same trajectory up to rounding of batched matrix products.
        assert abs(int(batched.iterations[b]) - int(alone.iterations)) <= 1
        torch.testing.assert_close(batched.value[b], alone.value, atol=1e-9, rtol=0)
    torch.testing.assert_close(batched.value, problem.reference(), atol=1e-8, rtol=0)


def mixed_difficulty(gammas: torch.Tensor):
    """f(z)_b = γ_b · tanh(z_b) + 1 row by row: harder rows (γ near 1) take more steps."""

    def f(z):
        return gammas[:, None] * torch.tanh(z) + 1.0

    return f


@pytest.mark.parametrize("name", SOLVERS)
def test_converged_samples_are_not_degraded(name):
    gammas = torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    f = mixed_difficulty(gammas)
    z0 = torch.zeros(4, 3, dtype=torch.float64)
    solver = make_solver(name, 1e-12)
    sol = fp.solve(f, z0, solver=solver, batched=True)
    assert all(s == "converged" for s in sol.status)
    iters = sol.iterations.tolist()
    assert iters[0] < iters[-1]  # rows stop at different steps
    # A row that stopped early is exactly the iterate at which it stopped.
    first = fp.solve(lambda z: gammas[0] * torch.tanh(z) + 1.0, z0[0], solver=solver)
    assert int(first.iterations) == iters[0]
    if name in GLOBALISED:
        # A backtracking trial of another row evaluates the whole batch, this row too.
        assert int(first.fevals) <= int(sol.fevals[0])
    else:
        assert int(first.fevals) == int(sol.fevals[0])
    torch.testing.assert_close(sol.value[0], first.value, atol=0, rtol=0)
    # Its trace stays at its final residual after it stopped.
    assert (sol.trace[iters[0] :, 0] == sol.trace[iters[0], 0]).all()


def test_a_row_that_starts_converged_is_untouched():
    f = mixed_difficulty(torch.tensor([0.5, 0.9], dtype=torch.float64))
    exact = fp.solve(
        lambda z: 0.5 * torch.tanh(z) + 1.0,
        torch.zeros(2, dtype=torch.float64),
        solver=fp.Anderson(atol=1e-14, rtol=0),
    ).value
    z0 = torch.stack([exact, torch.zeros(2, dtype=torch.float64)])
    sol = fp.solve(f, z0, solver=fp.Anderson(atol=1e-10, rtol=0), batched=True)
    assert sol.iterations.tolist()[0] == 0 and int(sol.fevals[0]) == 1
    assert torch.equal(sol.value[0], exact)
    assert int(sol.iterations[1]) > 0 and sol.status == ("converged", "converged")


@pytest.mark.parametrize("name", SOLVERS)
def test_failing_row_does_not_spoil_the_others(name):
    """Row 0's map produces NaN; rows 1 and 2 still converge to their own answers."""

    def f(z):
        out = 0.5 * torch.tanh(z) + 1.0
        return torch.cat([torch.log(z[:1] - 10.0), out[1:]])

    z0 = torch.zeros(3, 2, dtype=torch.float64)
    sol = fp.solve(f, z0, solver=make_solver(name, 1e-10), batched=True)
    assert sol.status[0] == "nonfinite" and sol.status[1:] == ("converged", "converged")
    assert torch.isfinite(sol.value).all()
    assert sol.converged.tolist() == [False, True, True]
    alone = fp.solve(lambda z: 0.5 * torch.tanh(z) + 1.0, z0[1], solver=make_solver(name, 1e-10))
    torch.testing.assert_close(sol.value[1], alone.value, atol=1e-12, rtol=0)


def test_batched_fevals_count_the_calls():
    calls = 0

    def f(z):
        nonlocal calls
        calls += 1
        return mixed_difficulty(torch.tensor([0.2, 0.95], dtype=torch.float64))(z)

    sol = fp.solve(
        f,
        torch.zeros(2, 3, dtype=torch.float64),
        solver=fp.Broyden(atol=1e-10, rtol=0, line_search=True),
        batched=True,
    )
    assert int(sol.fevals.max()) == calls
    assert int(sol.fevals[0]) <= int(sol.fevals[1])


@pytest.mark.parametrize("name", SOLVERS)
def test_skip_converged_evaluates_only_running_samples(name):
    """Same answers as the full-batch solve; f sees only the running rows; fevals are exact."""
    gammas = torch.tensor([0.1, 0.5, 0.9, 0.99, 0.3], dtype=torch.float64)
    shift = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    seen = []

    def f(z, gamma, shift, scale):
        seen.append(z.shape[0])
        assert gamma.shape[0] == shift.shape[0] == z.shape[0]  # batched args are sliced
        return gamma[:, None] * torch.tanh(z) + shift + scale  # scale is shared, not sliced

    scale = torch.tensor(1.0, dtype=torch.float64)
    z0 = torch.zeros(5, 3, dtype=torch.float64)
    solver = make_solver(name, 1e-12)
    full = fp.solve(f, z0, gammas, shift, scale, solver=solver, batched=True)
    calls_full = len(seen)
    seen.clear()
    skip = fp.solve(
        f,
        z0,
        gammas,
        shift,
        scale,
        solver=solver,
        batched=True,
        skip_converged=True,
        in_dims=(0, 0, None),
    )
    assert skip.status == full.status and all(s == "converged" for s in skip.status)
    torch.testing.assert_close(skip.value, full.value, atol=1e-14, rtol=0)
    assert torch.equal(skip.iterations, full.iterations)
    assert torch.equal(skip.fevals, full.fevals)
    torch.testing.assert_close(skip.trace, full.trace, atol=1e-14, rtol=0)
    # Stopped rows leave the working set once a quarter of it has stopped: f sees fewer rows,
    # at least the evaluations each sample needed, and the batch shrinks; one last evaluation
    # on the whole batch confirms the converged samples.
    *solve_calls, check = seen
    assert check == 5
    assert int(skip.fevals.sum()) <= sum(solve_calls) < 5 * calls_full
    assert min(solve_calls) < 5 and solve_calls == sorted(solve_calls, reverse=True)


def test_skip_converged_needs_batched():
    with pytest.raises(ValueError, match="batched=True"):
        fp.solve(torch.cos, torch.zeros(3), skip_converged=True)


def test_skip_converged_is_told_which_arguments_are_per_sample():
    """A shared argument whose leading dimension equals the batch is not sliced: nothing is
    guessed from shapes (the old guess returned wrong values marked converged)."""
    batch = 4
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(batch, batch, generator=gen, dtype=torch.float64)  # shared, (B, B)
    w = 0.5 * w / torch.linalg.matrix_norm(w, 2)
    x = (
        torch.randn(batch, batch, generator=gen, dtype=torch.float64)
        * torch.tensor([0.01, 1.0, 5.0, 20.0], dtype=torch.float64)[:, None]
    )

    def f(z, w, x):
        return torch.tanh(z @ w.T) + x

    z0 = torch.zeros(batch, batch, dtype=torch.float64)
    solver = fp.Picard(atol=1e-12, rtol=0, max_iter=200)
    full = fp.solve(f, z0, w, x, solver=solver, batched=True)
    with pytest.raises(ValueError, match="needs in_dims"):
        fp.solve(f, z0, w, x, solver=solver, batched=True, skip_converged=True)
    skip = fp.solve(
        f, z0, w, x, solver=solver, batched=True, skip_converged=True, in_dims=(None, 0)
    )
    torch.testing.assert_close(skip.value, full.value, atol=1e-12, rtol=0)
    assert skip.status == full.status
    # Marking W per-sample slices it with the samples: a named error, not a wrong solution.
    with pytest.raises(RuntimeError, match="in_dims must mark exactly the per-sample"):
        fp.solve(f, z0, w, x, solver=solver, batched=True, skip_converged=True, in_dims=(0, 0))
    # Pytree entries, and the named errors for wrong ones.
    args = {"w": w, "x": x}
    skip = fp.solve(
        lambda z, a: f(z, a["w"], a["x"]),
        z0,
        args,
        solver=solver,
        batched=True,
        skip_converged=True,
        in_dims=({"w": None, "x": 0},),
    )
    torch.testing.assert_close(skip.value, full.value, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="one entry per argument"):
        fp.solve(f, z0, w, x, batched=True, skip_converged=True, in_dims=(None,))
    with pytest.raises(ValueError, match="0 or None"):
        fp.solve(f, z0, w, x, batched=True, skip_converged=True, in_dims=(None, 1))
    with pytest.raises(ValueError, match="does not start with the batch size"):
        fp.solve(f, z0, w[:3], x, batched=True, skip_converged=True, in_dims=(0, 0))


def test_skip_converged_refuses_a_map_that_couples_the_samples():
    """A batch statistic in f: the samples are not independent, and the final check says so
    (the slow samples converged to a fixed point of the map on the working set only)."""

    def f(z, x, rate):
        return rate * torch.tanh(z) + x - x.mean(0)

    rate = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)[:, None]
    x = torch.linspace(-1, 2, 8, dtype=torch.float64)[:, None] * torch.ones(8, 3)
    z0 = torch.zeros(8, 3, dtype=torch.float64)
    solver = fp.Picard(atol=1e-10, rtol=0, max_iter=500, divergence=math.inf)
    assert all(
        s == "converged" for s in fp.solve(f, z0, x, rate, solver=solver, batched=True).status
    )
    with pytest.raises(RuntimeError, match="independently"):
        fp.solve(f, z0, x, rate, solver=solver, batched=True, skip_converged=True, in_dims=(0, 0))
