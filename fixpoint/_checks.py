"""Argument checks shared by the entry points, with errors that name the fix."""

from __future__ import annotations

from typing import Any


def require_instance(value: Any, base: type, name: str, example: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of ``base``.

    A class passed where an instance is expected (``solver=fp.Anderson``) gets the fix spelled
    out; anything else names what was expected, with ``example``.
    """
    if isinstance(value, type) and issubclass(value, base):
        raise TypeError(
            f"{name} must be an instance: write {name}={value.__name__}(), "
            f"not {name}={value.__name__}"
        )
    if not isinstance(value, base):
        raise TypeError(
            f"{name} must be an instance of fixpoint.{base.__name__} (e.g. "
            f"{example}), got {type(value).__name__}"
        )
