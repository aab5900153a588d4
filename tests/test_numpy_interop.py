"""fp.solve with NumPy functions and arrays, checked against scipy on the same NumPy functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

import fixpoint as fp

TIGHT = {"atol": 1e-12, "rtol": 0.0}


def scipy_example(x, c1, c2):
    """The example of scipy.optimize.fixed_point's docstring."""
    return np.sqrt(c1 / (x + c2))


C1, C2 = np.array([10.0, 12.0]), np.array([3.0, 5.0])


def h_equation_numpy(c: float, n: int):
    """Chandrasekhar's H-equation in NumPy (the map of fp.testing.h_equation)."""
    mu = (np.arange(1, n + 1) - 0.5) / n
    kernel = (c / (2 * n)) * mu[:, None] / (mu[:, None] + mu[None, :])

    def f(h):
        return 1.0 / (1.0 - h @ kernel.T)

    return f


@pytest.mark.parametrize("solver", [fp.Anderson(**TIGHT), fp.Picard(max_iter=500, **TIGHT)])
def test_matches_scipy_fixed_point(solver):
    x0 = np.array([1.2, 1.3])
    expected = scipy.optimize.fixed_point(scipy_example, x0, args=(C1, C2), xtol=1e-13)
    sol = fp.solve(scipy_example, x0, C1, C2, solver=solver)
    assert isinstance(sol.value, np.ndarray)
    assert sol.value.dtype == np.float64 and sol.value.shape == (2,)
    assert sol.status == "converged"
    np.testing.assert_allclose(sol.value, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver", [fp.Anderson(**TIGHT), fp.Broyden(**TIGHT)])
def test_h_equation_in_numpy(solver):
    c, n = 0.9, 100
    f = h_equation_numpy(c, n)
    sol = fp.solve(f, np.ones(n), solver=solver)
    assert sol.status == "converged"
    assert abs(sol.value.mean() - fp.testing.h_equation_mean(c)) < 1e-10
    # scipy's Steffensen iteration on the same NumPy function, and fixpoint's torch problem.
    expected = scipy.optimize.fixed_point(f, np.ones(n), xtol=1e-13, maxiter=2000)
    np.testing.assert_allclose(sol.value, expected, rtol=0, atol=1e-9)
    problem = fp.testing.h_equation(c, n=n)
    reference = fp.solve(problem.f, problem.z0, solver=solver).value
    np.testing.assert_allclose(sol.value, reference.numpy(), rtol=0, atol=1e-10)


def test_matches_scipy_root_on_a_nonlinear_system():
    # scipy's nonlin test problem F, solved as a root of F by scipy and as the fixed point of
    # z + F(z) by fixpoint (fp.testing.scipy_nonlin_problems poses it the same way).
    d = np.array([3.0, 2.0, 1.5, 1.0, 0.5])

    def F(x):
        return -d * x - 0.01 * (x @ x) * x

    x0 = np.ones(5)
    root = scipy.optimize.root(F, x0, method="broyden1", options={"fatol": 1e-10}).x
    sol = fp.solve(lambda z: z + F(z), x0, solver=fp.Broyden(**TIGHT))
    assert sol.status == "converged"
    np.testing.assert_allclose(sol.value, root, rtol=0, atol=1e-8)
    assert np.abs(F(sol.value)).max() < 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_and_shape_are_kept_and_f_sees_numpy(dtype):
    seen = []

    def f(z):
        seen.append((type(z), z.dtype, z.shape))
        return 0.5 * np.cos(z)

    z0 = np.zeros((2, 3), dtype=dtype)
    sol = fp.solve(f, z0, solver=fp.Anderson(atol=1e-5, rtol=0))
    assert sol.converged
    assert isinstance(sol.value, np.ndarray)
    assert sol.value.dtype == dtype and sol.value.shape == (2, 3)
    assert set(seen) == {(np.ndarray, np.dtype(dtype), (2, 3))}


def test_float32_state_stays_float32_when_f_promotes():
    # A float64 matrix makes f's output float64; the state stays in z0's float32.
    a = np.array([[0.5, 0.1], [0.2, 0.3]])
    dtypes = []

    def f(z):
        dtypes.append(z.dtype)
        return a @ z + 1.0

    sol = fp.solve(f, np.zeros(2, dtype=np.float32))
    assert sol.value.dtype == np.float32 and set(dtypes) == {np.dtype(np.float32)}
    np.testing.assert_allclose(sol.value, np.linalg.solve(np.eye(2) - a, np.ones(2)), rtol=1e-5)


def test_statistics_stay_tensors_and_read_as_python_numbers():
    sol = fp.solve(np.cos, np.zeros(3), solver=fp.Anderson(**TIGHT))
    for stat in (sol.residual, sol.converged, sol.iterations, sol.fevals, sol.trace):
        assert isinstance(stat, torch.Tensor)
    assert bool(sol.converged) and float(sol.residual) <= 1e-12 and int(sol.iterations) > 0
    assert sol.status == fp.Status.CONVERGED
    assert np.asarray(sol.trace).shape == (int(sol.iterations) + 1,)


def test_scalars_like_scipy():
    expected = scipy.optimize.fixed_point(np.cos, 0.5, xtol=1e-13)
    sol = fp.solve(np.cos, np.float64(0.5), solver=fp.Anderson(**TIGHT))
    assert isinstance(sol.value, np.float64)
    assert abs(sol.value - expected) < 1e-10
    zero_d = fp.solve(np.cos, np.array(0.5), solver=fp.Anderson(**TIGHT)).value
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == ()


def test_f_may_return_lists_and_numbers():
    sol = fp.solve(lambda z: [np.cos(z[0]), 0.5 * z[1] + 1], np.zeros(2))
    np.testing.assert_allclose(sol.value, [0.7390851, 2.0], atol=1e-5)
    assert sol.value.dtype == np.float64


@pytest.mark.parametrize("skip_converged", [False, True])
def test_batched(skip_converged):
    scale = np.linspace(0.1, 0.95, 8)[:, None]  # per-sample contraction: mixed difficulty
    shift = np.ones(3)  # shared

    def f(z, scale, shift):
        assert isinstance(scale, np.ndarray) and isinstance(shift, np.ndarray)
        return scale * np.tanh(z) + shift

    z0 = np.zeros((8, 3))
    options = {"skip_converged": True, "in_dims": (0, None)} if skip_converged else {}
    sol = fp.solve(
        f, z0, scale, shift, batched=True, solver=fp.Picard(**TIGHT, max_iter=1000), **options
    )
    assert sol.value.shape == (8, 3) and sol.converged.shape == (8,)
    assert bool(sol.converged.all())
    for i in range(8):
        single = fp.solve(f, z0[i], scale[i], shift, solver=fp.Picard(**TIGHT, max_iter=1000))
        np.testing.assert_allclose(sol.value[i], single.value, rtol=0, atol=1e-10)
        assert int(sol.iterations[i]) == int(single.iterations)


def test_numpy_args_are_passed_as_given():
    x = np.arange(3.0)
    seen = []

    def f(z, x, label):
        seen.append(x)
        assert label == "keep me"
        return 0.5 * z + x

    fp.solve(f, np.zeros(3), x, "keep me")
    assert seen and all(s is x for s in seen)


def test_z0_is_not_mutated_even_by_an_f_that_writes_into_its_input():
    z0 = np.zeros(4)

    def f(z):
        z *= 0.5  # in place, into the copy f was given
        z += 1.0
        return z

    sol = fp.solve(f, z0, solver=fp.Picard(**TIGHT, max_iter=200))
    np.testing.assert_array_equal(z0, np.zeros(4))
    np.testing.assert_allclose(sol.value, 2.0, atol=1e-10)
    assert not np.shares_memory(sol.value, z0)


@pytest.mark.parametrize(
    "z0",
    [
        np.broadcast_to(np.zeros(1), (4,)),  # read-only, stride 0
        np.zeros(8)[::-2],  # negative stride
        np.zeros(4, dtype=">f8"),  # big-endian
        np.asfortranarray(np.zeros((2, 2))),
    ],
    ids=["read-only", "negative-stride", "big-endian", "fortran"],
)
def test_unusual_arrays(z0):
    sol = fp.solve(lambda z: 0.5 * z + 1.0, z0, solver=fp.Anderson(**TIGHT))
    assert sol.value.shape == z0.shape and sol.value.dtype == np.float64
    np.testing.assert_allclose(sol.value, 2.0, atol=1e-10)


def test_pytrees_of_arrays_has_aux_and_kept_iterates():
    z0 = {"a": np.zeros(2), "b": np.ones(3, dtype=np.float64)}

    def f(z):
        return {"a": np.cos(z["a"]), "b": 0.5 * z["b"]}, float(z["a"].sum())

    sol = fp.solve(f, z0, has_aux=True, keep_iterates=(0, 1))
    assert set(sol.value) == {"a", "b"}
    assert all(isinstance(v, np.ndarray) for v in sol.value.values())
    np.testing.assert_allclose(sol.value["a"], 0.7390851, atol=1e-5)
    assert isinstance(sol.aux, float) and abs(sol.aux - sol.value["a"].sum()) < 1e-12
    assert sol.iterates is not None and len(sol.iterates) == 2
    np.testing.assert_array_equal(sol.iterates[0]["b"], np.ones(3))
    assert isinstance(sol.iterates[1]["a"], np.ndarray)


def test_throw_carries_a_numpy_solution():
    with pytest.raises(fp.ConvergenceError) as info:
        fp.solve(lambda z: 2 * z + 1, np.zeros(2), solver=fp.Picard(), throw=True)
    assert isinstance(info.value.solution.value, np.ndarray)
    assert info.value.solution.status == "diverged"


def test_newton_krylov_is_refused_with_the_solvers_that_work():
    with pytest.raises(TypeError, match="NumPy") as info:
        fp.solve(np.cos, np.zeros(3), solver=fp.NewtonKrylov())
    for name in ("fp.Anderson()", "fp.Broyden()", "fp.Picard()"):
        assert name in str(info.value)


def test_numpy_under_torch_func_transforms_is_an_error():
    def g(x):
        fp.solve(np.cos, np.zeros(2))
        return x

    with pytest.raises(RuntimeError, match=r"torch\.func"):
        torch.func.vmap(g)(torch.zeros(3))


@pytest.mark.parametrize(
    ("z0", "match"),
    [
        (np.zeros(3, dtype=np.int64), "float16, float32 or float64"),
        ((np.zeros(2), torch.zeros(2)), "mixes NumPy arrays with Tensor"),
    ],
)
def test_bad_starts(z0, match):
    with pytest.raises(TypeError, match=match):
        fp.solve(lambda z: z, z0)


def test_complex_output_is_an_error():
    with pytest.raises(TypeError, match="real numbers"):
        fp.solve(lambda z: np.cos(z) + 0j, np.zeros(2))


def test_a_tensor_start_with_an_f_that_returns_numpy_is_refused():
    """A tensor solve calls f unwrapped: a NumPy output is an error, not converted."""
    a = np.array([[0.5, 0.1], [0.2, 0.3]])
    with pytest.raises((TypeError, ValueError)):
        fp.solve(lambda z: a @ np.asarray(z) + 1.0, torch.zeros(2, dtype=torch.float64))
