"""Bad input raises an error that names the problem."""

import pytest
import torch

import fixpoint as fp


def test_non_callable_f():
    with pytest.raises(TypeError, match="callable"):
        fp.solve(3.0, torch.zeros(2))


def test_solver_class_instead_of_instance():
    with pytest.raises(TypeError, match=r"Anderson\(\)"):
        fp.solve(torch.cos, torch.zeros(2), solver=fp.Anderson)
    with pytest.raises(TypeError, match="solver"):
        fp.solve(torch.cos, torch.zeros(2), solver="anderson")


@pytest.mark.parametrize("cls", [fp.Picard, fp.Anderson, fp.Broyden])
def test_unknown_option_is_a_type_error(cls):
    with pytest.raises(TypeError, match="tolerance"):
        cls(tolerance=1e-3)


@pytest.mark.parametrize("cls", [fp.Picard, fp.Anderson, fp.Broyden])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_iter", 0),
        ("max_iter", 2.5),
        ("atol", -1e-3),
        ("rtol", -1.0),
        ("atol", float("nan")),
        ("divergence", 0.5),
    ],
)
def test_invalid_common_option(cls, option, value):
    with pytest.raises(ValueError, match=option):
        cls(**{option: value})


@pytest.mark.parametrize(
    ("cls", "option", "value"),
    [
        (fp.Picard, "damping", 0.0),
        (fp.Picard, "damping", 1.5),
        (fp.Anderson, "m", -1),
        (fp.Anderson, "beta", 0.0),
        (fp.Anderson, "lam", -1.0),
        (fp.Broyden, "memory", 0),
        (fp.Broyden, "max_backtracks", 0),
    ],
)
def test_invalid_solver_option(cls, option, value):
    with pytest.raises(ValueError, match=option):
        cls(**{option: value})


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
        fp.solve(lambda z: torch.zeros(3), torch.zeros(2))


def test_dtype_mismatch():
    with pytest.raises(TypeError, match=r"dtype torch\.float64"):
        fp.solve(lambda z: z.double(), torch.zeros(2))


def test_structure_mismatch():
    with pytest.raises(TypeError, match="structure"):
        fp.solve(lambda z: (z["a"], z["b"]), {"a": torch.zeros(2), "b": torch.zeros(2)})


def test_bad_start():
    with pytest.raises(TypeError, match="floating point"):
        fp.solve(lambda z: z, torch.arange(3))
    with pytest.raises(TypeError, match="pytree"):
        fp.solve(lambda z: z, [1.0, 2.0])
    with pytest.raises(ValueError, match="batch"):
        fp.solve(lambda z: z, torch.zeros(()), batched=True)
