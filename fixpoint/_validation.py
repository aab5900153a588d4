"""Checks of options, one helper per kind, with errors that name the owner, the option and the
value.

Numbers are any :class:`numbers.Real` (NumPy scalars included) and counts any
:class:`numbers.Integral`; ``True``/``False`` are neither. Flags are booleans (NumPy's too). The
checked value comes back as a plain ``float``, ``int`` or ``bool``, so that a frozen dataclass
stores (and prints) plain numbers: :func:`store` writes it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy

__all__ = ["choice", "count", "flag", "optional_callable", "real", "store"]


def real(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a float within the bounds, or a ``ValueError`` that says which.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``; ``finite=False`` also
    accepts ``math.inf`` (never NaN).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ValueError(
            f"{owner}: {name} must be a {'finite ' if finite else ''}number, got {value!r}"
        )
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        raise ValueError(
            f"{owner}: {name} must be {_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    return number


def count(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum``, or a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a bool, or a ``ValueError`` (a string such as ``"no"`` is not a flag)."""
    if isinstance(value, (bool, numpy.bool_)):
        return bool(value)
    raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")


def choice(owner: str, name: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``, or a ``ValueError`` that lists them."""
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in options)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r}")
    return value


def optional_callable(owner: str, name: str, value: Any) -> Any:
    """``value`` if it is ``None`` or callable, or a ``ValueError``."""
    if value is not None and not callable(value):
        raise ValueError(f"{owner}: {name} must be callable or None, got {value!r}")
    return value


def store(instance: Any, **values: Any) -> None:
    """Write checked values into a frozen dataclass (from its ``__post_init__``)."""
    for name, value in values.items():
        object.__setattr__(instance, name, value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '≥'} {low:g}"
    if low is None:
        return f"{'<' if high_open else '≤'} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
