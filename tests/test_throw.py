"""throw=True: a solve that does not converge raises fp.ConvergenceError with its Solution."""

import warnings

import pytest
import torch

import fixpoint as fp

DT = torch.float64


def mixed(z, gamma):
    """Row i is z ↦ γᵢ z + 1: converges for γ < 1, diverges for γ > 1."""
    return gamma[:, None] * z + 1.0


def test_solve_raises_with_the_solution_of_the_failed_samples():
    gamma = torch.tensor([0.5, 1.5, 0.2], dtype=DT)
    with pytest.raises(fp.ConvergenceError, match=r"1 of 3 samples \(diverged") as info:
        fp.solve(
            mixed, torch.zeros(3, 2, dtype=DT), gamma, solver=fp.Picard(), batched=True, throw=True
        )
    error = info.value
    assert isinstance(error, RuntimeError)
    sol = error.solution
    assert sol.status == (fp.Status.CONVERGED, fp.Status.DIVERGED, fp.Status.CONVERGED)
    assert sol.value.shape == (3, 2)
    # It is the solution the default call returns.
    quiet = fp.solve(mixed, torch.zeros(3, 2, dtype=DT), gamma, solver=fp.Picard(), batched=True)
    torch.testing.assert_close(sol.value, quiet.value)
    assert torch.equal(sol.iterations, quiet.iterations)


def test_the_solution_has_the_structure_of_z0():
    z0 = {"a": torch.zeros(2, dtype=DT), "b": torch.zeros((), dtype=DT)}
    f = lambda z: {"a": 2 * z["a"] + 1, "b": 0.5 * z["b"]}  # noqa: E731
    with pytest.raises(fp.ConvergenceError, match="did not converge") as info:
        fp.solve(f, z0, solver=fp.Picard(max_iter=5), throw=True)
    sol = info.value.solution
    assert set(sol.value) == {"a", "b"} and sol.value["a"].shape == (2,)
    assert sol.status == "max_iter" and sol.residual.shape == ()


def test_no_error_and_no_warning_when_it_converges():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = fp.solve(lambda z: 0.5 * z + 1, torch.zeros(2, dtype=DT), throw=True)
        z = fp.fixed_point(
            lambda z, t: t * z + 1,
            torch.zeros(2, dtype=DT),
            torch.tensor(0.3, dtype=DT, requires_grad=True),
            throw=True,
        )
    assert sol.status == "converged"
    torch.testing.assert_close(z, torch.full((2,), 1 / 0.7, dtype=DT), rtol=1e-4, atol=0)


def test_fixed_point_raises_instead_of_warning():
    theta = torch.tensor(2.0, dtype=DT, requires_grad=True)
    f = lambda z, t: t * z + 1  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning would be an error here: none is emitted
        with pytest.raises(fp.ConvergenceError, match=r"fp.fixed_point: .*\(diverged"):
            fp.fixed_point(f, torch.zeros(2, dtype=DT), theta, solver=fp.Picard(), throw=True)
    with pytest.warns(fp.ConvergenceWarning):  # the default is unchanged
        fp.fixed_point(f, torch.zeros(2, dtype=DT), theta, solver=fp.Picard())


def test_deq_raises():
    deq = fp.nn.DEQ(lambda z, x: 1.5 * z + x, solver=fp.Picard(max_iter=30), throw=True)
    with pytest.raises(fp.ConvergenceError) as info:
        deq(torch.ones(4, 3))
    assert info.value.solution.value.shape == (4, 3)
    with pytest.raises(ValueError, match="throw"):
        fp.nn.DEQ(lambda z, x: z, throw="yes")


def test_with_skip_converged_the_statuses_are_those_of_the_full_solve():
    gamma = torch.tensor([0.1, 0.3, 0.2, 1.5, 0.4], dtype=DT)
    with pytest.raises(fp.ConvergenceError) as info:
        fp.solve(
            mixed,
            torch.zeros(5, 2, dtype=DT),
            gamma,
            solver=fp.Picard(),
            batched=True,
            skip_converged=True,
            in_dims=(0,),
            throw=True,
        )
    assert [s.value for s in info.value.solution.status] == ["converged"] * 3 + [
        "diverged",
        "converged",
    ]


def test_under_vmap_the_solution_is_the_batched_solve():
    """vmap makes one batched solve; the error carries it with the vmapped samples as rows."""
    gammas = torch.tensor([0.5, 2.0, 0.25], dtype=DT)

    def one(gamma):
        return fp.solve(
            lambda z, g: g * z + 1, torch.zeros(2, dtype=DT), gamma, solver=fp.Picard(), throw=True
        ).value

    with pytest.raises(fp.ConvergenceError, match="1 of 3 samples") as info:
        torch.func.vmap(one)(gammas)
    sol = info.value.solution
    assert sol.value.shape == (3, 2)
    assert [s.value for s in sol.status] == ["converged", "diverged", "converged"]


@pytest.mark.parametrize("call", ["solve", "fixed_point"])
def test_throw_must_be_a_bool(call):
    fn = getattr(fp, call)
    with pytest.raises(ValueError, match="throw must be True or False"):
        fn(lambda z: 0.5 * z, torch.zeros(2), throw=1)
