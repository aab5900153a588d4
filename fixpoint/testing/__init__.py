"""Testing helpers: problems with known answers and Hypothesis strategies of contractions.

The strategies need Hypothesis (``pip install fixpoint[dev]``); they are imported on first use.
"""

from typing import Any

from fixpoint.testing.nonlin import scipy_nonlin_problems
from fixpoint.testing.problems import Problem, h_equation, h_equation_mean

_STRATEGIES = ("affine_contractions", "contractions", "dtypes", "tanh_contractions")

__all__ = ["Problem", "h_equation", "h_equation_mean", "scipy_nonlin_problems", *_STRATEGIES]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from fixpoint.testing import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module 'fixpoint.testing' has no attribute {name!r}")
