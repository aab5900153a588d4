"""The stopping rule: relative to ‖z‖ (default) or to the initial residual (Kelley's rule)."""

import pytest
import torch

import fixpoint as fp


@pytest.mark.parametrize(("relative_to", "stop"), [("state", 9), ("initial", 10)])
def test_each_rule_stops_at_the_exact_iteration(relative_to, stop):
    """z ↦ z/2 + 1 from 0 (one unknown): residual 2⁻ᵏ, ‖z_k‖ = 2(1 − 2⁻ᵏ).

    "initial": 2⁻ᵏ ≤ 10⁻³·1 first at k = 10; "state": 2⁻ᵏ ≤ 10⁻³·2(1 − 2⁻ᵏ) first at k = 9.
    """
    solver = fp.Picard(atol=0.0, rtol=1e-3, relative_to=relative_to)
    sol = fp.solve(lambda z: 0.5 * z + 1.0, torch.zeros((), dtype=torch.float64), solver=solver)
    assert sol.status == "converged" and int(sol.iterations) == stop


def test_small_solutions_are_solved_to_the_relative_accuracy_asked():
    """PageRank over 1000 pages: ‖z*‖ ≈ 0.03, so the default atol = 1e-6 stops at a relative
    error of about 4e-5; relative to the initial residual, rtol = 1e-6 gets below 1e-6."""
    n, damping = 1000, 0.85
    gen = torch.Generator().manual_seed(0)
    links = (torch.rand(n, n, generator=gen, dtype=torch.float64) < 0.01).double()
    transition = links / links.sum(0).clamp_min(1)

    def pagerank(z):
        return damping * (transition @ z) + (1 - damping) / n

    eye = torch.eye(n, dtype=torch.float64)
    rhs = torch.full((n,), (1 - damping) / n, dtype=torch.float64)
    exact = torch.linalg.solve(eye - damping * transition, rhs)
    z0 = torch.full((n,), 1.0 / n, dtype=torch.float64)

    def error(solver):
        sol = fp.solve(pagerank, z0, solver=solver)
        assert sol.status == "converged"
        return ((sol.value - exact).norm() / exact.norm()).item()

    assert error(fp.Anderson()) > 1e-5  # the defaults' absolute floor
    assert error(fp.Anderson(atol=0.0, rtol=1e-6, relative_to="initial")) < 1e-6


@pytest.mark.parametrize("skip", [False, True])
def test_initial_residuals_are_per_sample_and_survive_compaction(skip):
    rates = torch.tensor([0.2, 0.5, 0.9, 0.3], dtype=torch.float64)[:, None]
    shift = torch.tensor([1.0, 1e-3, 10.0, 1e3], dtype=torch.float64)[:, None] * torch.ones(4, 2)

    def f(z, rate, shift):
        return rate * z + shift

    solver = fp.Picard(atol=0.0, rtol=1e-6, relative_to="initial", max_iter=500)
    options = dict(skip_converged=True, in_dims=(0, 0)) if skip else {}
    sol = fp.solve(
        f,
        torch.zeros(4, 2, dtype=torch.float64),
        rates,
        shift,
        solver=solver,
        batched=True,
        **options,
    )
    # The residual falls by rate per step, whatever the sample's scale: k ≥ log(1e-6)/log(rate).
    expected = torch.ceil(torch.log(torch.tensor(1e-6)) / torch.log(rates[:, 0])).long()
    assert torch.equal(sol.iterations, expected)
    assert (sol.residual <= 1e-6 * sol.trace[0] * (1 + 1e-9)).all()


def test_relative_to_is_checked():
    with pytest.raises(ValueError, match="relative_to must be one of 'state', 'initial'"):
        fp.Anderson(relative_to="start")
