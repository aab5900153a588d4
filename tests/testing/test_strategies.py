"""The Hypothesis strategies draw what they promise."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from fixpoint.testing import affine_contractions, contractions, dtypes, tanh_contractions


@given(
    problem=affine_contractions(
        gamma=st.floats(0.0, 0.99), batch=st.none() | st.integers(1, 4), dtype=dtypes
    )
)
def test_affine_maps_have_exactly_the_drawn_norm(problem):
    a = problem.jacobian(problem.z0).double()
    norms = torch.linalg.matrix_norm(a, 2)
    torch.testing.assert_close(
        norms,
        torch.full_like(norms, problem.gamma),
        atol=1e-6 if problem.dtype == torch.float32 else 1e-12,
        rtol=0,
    )
    z = problem.reference()
    assert z.dtype == problem.dtype and z.shape == problem.z0.shape
    torch.testing.assert_close(
        problem.f(z, *problem.args),
        z,
        atol=1e-4 if problem.dtype == torch.float32 else 1e-10,
        rtol=0,
    )


@given(problem=tanh_contractions(batch=st.none() | st.integers(1, 3)))
def test_tanh_maps_are_gamma_lipschitz_with_the_right_jacobian(problem):
    z = problem.z0
    jac = problem.jacobian(z)
    f = lambda v: problem.f(v, *problem.args)  # noqa: E731
    if problem.batched:
        autodiff = torch.func.vmap(torch.func.jacrev(lambda v, x: problem.f(v, x)))(
            z, *problem.args
        )
    else:
        autodiff = torch.func.jacrev(f)(z)
    torch.testing.assert_close(jac, autodiff)
    assert (torch.linalg.matrix_norm(jac, 2) <= problem.gamma * (1 + 1e-12)).all()
    # Lipschitz along a random secant too.
    w = z + torch.randn_like(z)
    assert torch.linalg.vector_norm(f(w) - f(z)) <= problem.gamma * torch.linalg.vector_norm(
        w - z
    ) * (1 + 1e-12)
    z_star = problem.reference()
    torch.testing.assert_close(f(z_star), z_star, atol=1e-12, rtol=0)


@given(problem=contractions(n=3, gamma=0.5))
def test_fixed_options_are_respected(problem):
    assert problem.z0.shape == (3,) and problem.gamma == 0.5 and not problem.batched
