"""keep_iterates: the iterates after chosen steps, and nothing in between."""

import pytest
import torch

import fixpoint as fp

DT = torch.float64


def picard_iterates(f, z0, steps):
    z, out = z0, {0: z0}
    for k in range(1, max(steps) + 1):
        z = f(z)
        out[k] = z
    return out


def test_the_kept_iterates_are_the_solver_iterates_at_those_steps():
    f = lambda z: 0.7 * torch.tanh(z) + 0.3  # noqa: E731
    z0 = torch.zeros(4, dtype=DT)
    sol = fp.solve(f, z0, solver=fp.Picard(atol=1e-12, rtol=0), keep_iterates=(5, 0, 2))
    reference = picard_iterates(f, z0, (5, 2))
    assert len(sol.iterates) == 3
    for got, k in zip(sol.iterates, (5, 0, 2), strict=True):
        torch.testing.assert_close(got, reference[k], atol=1e-15, rtol=0)


@pytest.mark.parametrize("skip", [False, True])
def test_a_sample_that_stopped_earlier_gives_its_last_iterate(skip):
    gamma = torch.tensor([0.1, 0.9], dtype=DT)
    sol = fp.solve(
        lambda z, g: g[:, None] * z + 1.0,
        torch.zeros(2, 3, dtype=DT),
        gamma,
        solver=fp.Picard(atol=1e-10, rtol=0),
        batched=True,
        skip_converged=skip,
        in_dims=(0,) if skip else None,
        keep_iterates=(3, 40),
    )
    early, late = sol.iterates
    assert int(sol.iterations[0]) < 40 < int(sol.iterations[1])
    # Row 0 stopped before step 40: its entry is the iterate it stopped at.
    z = torch.zeros(3, dtype=DT)
    for _ in range(int(sol.iterations[0])):
        z = 0.1 * z + 1.0
    torch.testing.assert_close(late[0], z, atol=1e-15, rtol=0)
    z = torch.zeros(3, dtype=DT)
    for _ in range(40):
        z = 0.9 * z + 1.0
    torch.testing.assert_close(late[1], z, atol=1e-12, rtol=0)
    torch.testing.assert_close(early[1], torch.full((3,), 1 + 0.9 + 0.81, dtype=DT))


def test_structure_fixed_point_and_the_default():
    z0 = {"a": torch.zeros(2, dtype=DT)}
    f = lambda z, t: {"a": t * z["a"] + 1.0}  # noqa: E731
    theta = torch.tensor(0.5, dtype=DT, requires_grad=True)
    _, sol = fp.fixed_point(f, z0, theta, return_solution=True, keep_iterates=(1,))
    assert set(sol.iterates[0]) == {"a"}
    torch.testing.assert_close(sol.iterates[0]["a"], torch.ones(2, dtype=DT))
    assert not sol.iterates[0]["a"].requires_grad  # constants
    assert fp.solve(lambda z: 0.5 * z, torch.ones(2)).iterates is None


def test_bad_steps_and_transforms_are_refused():
    with pytest.raises(ValueError, match="keep_iterates"):
        fp.solve(lambda z: 0.5 * z, torch.ones(2), keep_iterates=(-1,))
    with pytest.raises(ValueError, match=r"not supported under torch\.func"):
        torch.func.vmap(
            lambda x: (
                fp.solve(lambda z, x: 0.5 * z + x, torch.zeros(()), x, keep_iterates=(1,)).value
            )
        )(torch.ones(3))
