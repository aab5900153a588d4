"""A map that expands at its fixed point: the truncated series say so; contractions stay quiet."""

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fixpoint as fp

TRUNCATED = [fp.Neumann(k=5), fp.Phantom(k=5, damping=0.5), fp.Neumann(k=1)]


@pytest.mark.parametrize("estimator", TRUNCATED, ids=repr)
def test_an_expanding_map_warns(estimator):
    x = torch.ones(2, 3, requires_grad=True)
    scale = torch.tensor([[0.5], [1.5]])  # the first sample contracts, the second expands
    z = fp.fixed_point(
        lambda z, x: scale * z + x, torch.zeros(2, 3), x, estimator=estimator, batched=True
    )
    with pytest.warns(fp.ConvergenceWarning, match=r"did not shrink .* for 1 of 2 samples"):
        z.sum().backward()


@given(fp.testing.contractions(gamma=st.floats(0.0, 0.95), batch=3))
def test_contractions_do_not_warn(problem):
    args = [a.clone().requires_grad_() for a in problem.args]
    for estimator in TRUNCATED:
        z = fp.fixed_point(
            problem.f,
            problem.z0,
            *args,
            estimator=estimator,
            batched=True,
            solver=fp.Anderson(atol=1e-10, rtol=0),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", fp.ConvergenceWarning)
            z.sum().backward()


def test_jfb_cannot_tell_and_transforms_skip_the_check():
    x = torch.ones(3, requires_grad=True)
    z = fp.fixed_point(lambda z, x: 1.5 * z + x, torch.zeros(3), x, estimator=fp.JFB())
    with warnings.catch_warnings():
        warnings.simplefilter("error", fp.ConvergenceWarning)
        z.sum().backward()  # no products with J: nothing to see
        # Under vmap a warning cannot depend on the data: no error either.
        torch.func.vmap(
            torch.func.grad(
                lambda x: fp.fixed_point(
                    lambda z, x: 1.5 * z + x, torch.zeros(()), x, estimator=fp.Neumann(k=3)
                )
            )
        )(torch.ones(3))
