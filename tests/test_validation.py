"""Every option of every class is checked by one set of rules, with an error that names it."""

import math
import re

import numpy as np
import pytest
import torch

import fixpoint as fp

# (class, option, a valid value, a value out of range)
NUMBERS = [
    (fp.Picard, "atol", 1e-3, -1.0),
    (fp.Picard, "rtol", 0.2, math.inf),
    (fp.Picard, "divergence", math.inf, 1.0),
    (fp.Picard, "damping", 0.2, 1.2),
    (fp.Anderson, "beta", 1.5, 2.5),
    (fp.Anderson, "lam", 0.0, -1e-9),
    (fp.CG, "atol", 0.0, -1.0),
    (fp.CG, "rtol", 1e-7, math.nan),
    (fp.Phantom, "damping", 0.2, 0.0),
]
COUNTS = [
    (fp.Picard, "max_iter", 7, 0),
    (fp.Anderson, "m", 0, -1),
    (fp.Broyden, "memory", 3, 0),
    (fp.Broyden, "max_backtracks", 2, 0),
    (fp.Neumann, "k", 0, -1),
    (fp.Phantom, "k", 1, 0),
    (fp.CG, "max_iter", 3, 0),
]
FLAGS = [
    (fp.Broyden, "line_search"),
    (fp.CG, "symmetric"),
    (fp.CG, "warn"),
    (fp.Implicit, "warn"),
]


def name(case):
    return f"{case[0].__name__}.{case[1]}"


@pytest.mark.parametrize("case", NUMBERS, ids=name)
def test_numbers(case):
    cls, option, valid, out_of_range = case
    made = cls(**{option: np.float64(valid)})  # NumPy scalars are numbers
    assert getattr(made, option) == valid and type(getattr(made, option)) is float
    for bad in (out_of_range, True, "1e-3", None, torch.tensor(valid)):
        with pytest.raises(
            ValueError, match=rf"{cls.__name__}: {option}.*got {re.escape(repr(bad))}"
        ):
            cls(**{option: bad})


@pytest.mark.parametrize("case", COUNTS, ids=name)
def test_counts(case):
    cls, option, valid, too_small = case
    made = cls(**{option: np.int64(valid)})
    assert getattr(made, option) == valid and type(getattr(made, option)) is int
    for bad in (too_small, True, valid + 0.5, "3"):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {option} must be an integer"):
            cls(**{option: bad})


@pytest.mark.parametrize("case", FLAGS, ids=name)
def test_flags(case):
    cls, option = case
    assert getattr(cls(**{option: np.bool_(False)}), option) is False
    for bad in ("no", 0, 1.0, None):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {option} must be True or False"):
            cls(**{option: bad})


def test_entry_points_and_modules():
    with pytest.raises(ValueError, match="batched must be True or False"):
        fp.solve(torch.cos, torch.zeros(2), batched="yes")
    with pytest.raises(ValueError, match="DEQ: spectral_radius_iters"):
        fp.nn.DEQ(torch.nn.Identity(), spectral_radius_iters=True)
    with pytest.raises(ValueError, match="Relaxed: alpha"):
        fp.operators.Relaxed(torch.cos, alpha="half")
    with pytest.raises(ValueError, match="spectral_radius: iters"):
        fp.operators.spectral_radius(torch.cos, torch.zeros(2), iters=np.float64(3))
    assert fp.operators.Relaxed(torch.cos, alpha=np.float32(0.25)).alpha == 0.25
