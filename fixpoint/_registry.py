"""The library's own solvers and estimators, as they define themselves.

Each concrete :class:`~fixpoint.Solver` and :class:`~fixpoint.Estimator` subclass defined in
``fixpoint`` registers here when its class is created, so that messages which name the methods
fitting a situation ("use an estimator that needs only vjps: ...") and the test suite's common
registry follow the package, not a list written by hand.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["library_methods", "register", "suggest"]

_METHODS: dict[str, list[type]] = {}


def register(kind: str, cls: type) -> None:
    """Record ``cls`` under ``kind`` if fixpoint defines it and it is concrete."""
    if cls.__module__.startswith("fixpoint.") and not inspect.isabstract(cls):
        _METHODS.setdefault(kind, []).append(cls)


def library_methods(kind: str) -> tuple[type, ...]:
    """The library's concrete classes of ``kind`` (``"solver"``, ``"estimator"``), in the order
    they were defined."""
    return tuple(_METHODS.get(kind, ()))


def suggest(kind: str, **flags: Any) -> str:
    """``"fp.A(), fp.B() or fp.C()"``: the library's methods of ``kind`` whose class attributes
    have the given values (e.g. ``uses_jvp=False``)."""
    names = [
        f"fp.{cls.__name__}()"
        for cls in library_methods(kind)
        if all(getattr(cls, key) == value for key, value in flags.items())
    ]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
