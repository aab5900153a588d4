"""vmap through fp.solve and fp.fixed_point equals a loop of unbatched calls, sample by sample.

Under vmap the vmapped dimension becomes rows of one batched solve: each sample keeps its own
stopping test, so its iterations, residual and status are those of its own unbatched solve.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

import fixpoint as fp
from tests.methods import solvers
from tests.torch_func.helpers import TIGHT, params

SOLVERS = [*solvers(1e-10, max_iter=400), fp.Anderson(m=3, atol=1e-10, rtol=1e-7, max_iter=200)]


def stats(sol):
    return (sol.value, sol.residual, sol.converged, sol.iterations, sol.fevals, sol.status_code)


def assert_same_solutions(got, expected, solver):
    value, residual, converged, iterations, fevals, codes = got
    torch.testing.assert_close(value, expected[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(residual, expected[1], atol=1e-9, rtol=1e-6)
    assert torch.equal(converged, expected[2])
    assert torch.equal(iterations, expected[3])
    if solver.needs_active:
        # A batched evaluation for another sample's line search or inner solve (the work of
        # a solver that tracks its running rows) counts for every sample still running.
        assert (fevals >= expected[4]).all()
    else:
        assert torch.equal(fevals, expected[4])
    assert torch.equal(codes, expected[5])


def stack(rows):
    return tuple(torch.stack(column) for column in zip(*rows, strict=True))


@given(params(), st.integers(1, 4), st.sampled_from(SOLVERS), st.integers(0, 2**31 - 1))
def test_vmap_of_solve_equals_a_loop(p, size, solver, seed):
    xs = p.x + torch.randn(
        size, p.n, generator=torch.Generator().manual_seed(seed), dtype=p.x.dtype
    )

    def one(x):
        return stats(fp.solve(p.map, p.z0(), p.w, x, solver=solver))

    assert_same_solutions(vmap(one, in_dims=0)(xs), stack([one(x) for x in xs]), solver)


@settings(max_examples=20)
@given(params(), st.sampled_from(SOLVERS))
def test_nested_vmap_with_shared_arguments_equals_a_double_loop(p, solver):
    gen = torch.Generator().manual_seed(0)
    xs = p.x + torch.randn(3, p.n, generator=gen, dtype=p.x.dtype)
    ws = torch.stack([p.w, 0.5 * p.w])  # ‖W‖₂ ≤ 1: every map stays γ-contractive

    def one(w, x):
        return stats(fp.solve(p.map, p.z0(), w, x, solver=solver))

    # Outer vmap over W (x shared), inner over x (W shared).
    got = vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, None))(ws, xs)
    expected = stack([stack([one(w, x) for x in xs]) for w in ws])
    assert_same_solutions(got, expected, solver)


@settings(max_examples=20)
@given(params(batch=3), st.sampled_from(SOLVERS), st.booleans())
def test_vmap_over_batched_solves(p, solver, skip):
    """A batched problem under vmap: rows are (vmapped sample, batch row); compaction is off."""
    xs = torch.stack([p.x, -p.x])

    def one(x):
        return stats(
            fp.solve(
                p.map,
                p.z0(x),
                p.w,
                x,
                solver=solver,
                batched=True,
                skip_converged=skip,
                in_dims=(None, 0),
            )
        )

    got = vmap(one)(xs)
    assert got[0].shape == (2, 3, p.n) and got[3].shape == (2, 3)
    assert_same_solutions(got, stack([one(x) for x in xs]), solver)


def test_trace_and_status_under_vmap():
    """Traces are per sample, padded with the last residual; status is read from status_code."""
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scales = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)  # different speeds

    def f(z, x, s):
        return s * torch.tanh(z) + x

    solver = fp.Picard(atol=1e-10, rtol=0.0)

    def one(x, s):
        sol = fp.solve(f, torch.zeros(4, dtype=torch.float64), x, s, solver=solver)
        with pytest.raises(RuntimeError, match="status_code"):
            sol.status  # noqa: B018 - reading it is the test
        assert "vmap" in repr(sol)
        return sol.trace, sol.iterations, sol.status_code

    traces, iterations, codes = vmap(one)(xs, scales)
    assert traces.shape == (3, int(iterations.max()) + 1)
    for i in range(3):
        ref = fp.solve(f, torch.zeros(4, dtype=torch.float64), xs[i], scales[i], solver=solver)
        k = int(ref.iterations)
        torch.testing.assert_close(traces[i, : k + 1], ref.trace, atol=1e-12, rtol=0)
        assert (traces[i, k:] == traces[i, k]).all()
        assert fp.Status.from_code(int(codes[i])) == ref.status == "converged"


@settings(max_examples=20)
@given(params(), st.sampled_from([*SOLVERS, TIGHT]))
def test_vmap_of_fixed_point_values_equal_a_loop(p, solver):
    xs = torch.stack([p.x, 0.5 * p.x, -p.x])

    def one(x):
        return fp.fixed_point(p.map, p.z0(), p.w, x, solver=solver, estimator=fp.CG())

    torch.testing.assert_close(vmap(one)(xs), torch.stack([one(x) for x in xs]), atol=1e-9, rtol=0)


def test_pytree_arguments_and_states_under_vmap():
    gen = torch.Generator().manual_seed(1)
    theta = {
        "a": torch.randn(5, 3, generator=gen, dtype=torch.float64),
        "b": torch.randn(5, 2, generator=gen, dtype=torch.float64),
    }

    def f(z, theta, scale):
        u, v = z
        return (0.5 * torch.tanh(v.sum()) + theta["a"], scale * torch.cos(u).mean() + theta["b"])

    z0 = (torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))

    def one(theta):
        return fp.solve(f, z0, theta, 0.3, solver=TIGHT).value

    u, v = vmap(one)(theta)
    for i in range(5):
        ref = one({k: t[i] for k, t in theta.items()})
        torch.testing.assert_close(u[i], ref[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(v[i], ref[1], atol=1e-12, rtol=0)


def test_randomness_follows_vmap():
    """A map that draws random numbers: vmap's randomness option reaches the solve."""

    def one(x):
        noise = torch.rand(()) * 0  # a draw that does not change the map
        return fp.solve(lambda z, x: 0.5 * z + x + noise, torch.zeros(()), x).value

    xs = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(vmap(one, randomness="different")(xs), 2 * xs)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda x: fp.solve(lambda z, x: 0.5 * z + x + 0 * torch.rand(()), x, x).value)(xs)


def test_a_closed_over_vmapped_tensor_is_refused():
    xs = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="through args"):
        vmap(lambda x: fp.solve(lambda z: 0.5 * torch.tanh(z) + x, torch.zeros(4)).value)(xs)
    with pytest.raises(RuntimeError, match="through args"):
        vmap(lambda x: fp.fixed_point(lambda z: 0.5 * torch.tanh(z) + x, torch.zeros(4)))(xs)
