"""Broyden's method when its memory fills up, and with and without its line search."""

import math

import pytest
import torch

import fixpoint as fp


def rotation_about_a_centre(n: int = 14):
    """z ↦ c + R (z − c), R block-diagonal rotations by 0.4 … 2.6 rad: not a contraction."""
    angles = torch.linspace(0.4, 2.6, n // 2, dtype=torch.float64)
    r = torch.zeros(n, n, dtype=torch.float64)
    for i, a in enumerate(angles.tolist()):
        r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
            [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
        )
    centre = torch.arange(n, dtype=torch.float64) / n
    return (lambda z: centre + (z - centre) @ r.T), centre


@pytest.mark.parametrize("line_search", [True, False])
def test_full_memory_finds_a_linear_fixed_point_within_2n_steps(line_search):
    """Gay's theorem: on a linear map Broyden's method ends in at most 2n steps."""
    f, centre = rotation_about_a_centre()
    solver = fp.Broyden(memory=28, atol=1e-10, rtol=0, line_search=line_search)
    sol = fp.solve(f, torch.zeros(14, dtype=torch.float64), solver=solver)
    assert sol.status == "converged" and int(sol.iterations) <= 28
    torch.testing.assert_close(sol.value, centre, atol=1e-9, rtol=0)


@pytest.mark.parametrize("line_search", [True, False])
def test_limited_memory_that_drops_pairs_still_converges(line_search):
    """With the default memory of 20 < 2n pairs are dropped: slower, but it converges."""
    f, centre = rotation_about_a_centre()
    solver = fp.Broyden(atol=1e-10, rtol=0, max_iter=200, line_search=line_search)
    sol = fp.solve(f, torch.zeros(14, dtype=torch.float64), solver=solver)
    assert sol.status == "converged" and int(sol.iterations) <= 60
    torch.testing.assert_close(sol.value, centre, atol=1e-9, rtol=0)


@pytest.mark.parametrize("memory", [1, 3, 5])
def test_a_tiny_memory_makes_progress_and_never_blows_up(memory):
    f, _ = rotation_about_a_centre()
    solver = fp.Broyden(memory=memory, atol=1e-10, rtol=0, max_iter=150)
    sol = fp.solve(f, torch.zeros(14, dtype=torch.float64), solver=solver)
    assert sol.status in ("max_iter", "converged")
    start = torch.linalg.vector_norm(f(torch.zeros(14, dtype=torch.float64)))
    assert sol.residual < 0.1 * start


def test_the_line_search_costs_nothing_where_full_steps_are_accepted():
    """On a contraction the first trial passes every step: one evaluation per step."""
    problem = fp.testing.h_equation(0.9, n=128)
    sol = fp.solve(problem.f, problem.z0, solver=fp.Broyden(atol=1e-10, rtol=0))
    assert sol.status == "converged" and int(sol.fevals) == int(sol.iterations) + 1


def test_the_line_search_globalises_powell_where_full_steps_fail():
    problem = fp.testing.scipy_nonlin_problems()["F4_powell"]
    plain = fp.solve(problem.f, problem.z0, solver=fp.Broyden(line_search=False, atol=1e-9, rtol=0))
    assert plain.status != "converged"
    searched = fp.solve(problem.f, problem.z0, solver=fp.Broyden(atol=1e-9, rtol=0))
    assert searched.status == "converged"
    assert int(searched.fevals) > int(searched.iterations) + 1  # it did backtrack


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(memory=0), "memory"),
        (dict(nonmonotone=0), "nonmonotone"),
        (dict(max_backtracks=0), "max_backtracks"),
        (dict(line_search=1), "line_search"),
    ],
)
def test_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        fp.Broyden(**options)
