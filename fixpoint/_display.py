"""Short labels for options objects, for tables and summaries."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["compact"]


def compact(value: Any) -> str:
    """``Name(option=value, ...)`` with only the options that differ from their defaults.

    >>> import fixpoint as fp
    >>> compact(fp.Implicit(fp.Anderson(atol=1e-12, rtol=0.0)))
    'Implicit(solver=Anderson(atol=1e-12, rtol=0))'
    """
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return f"{value:g}" if isinstance(value, float) else repr(value)
    changed = []
    for field in dataclasses.fields(value):
        if not field.repr:
            continue
        current = getattr(value, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or current != default:
            changed.append(f"{field.name}={compact(current)}")
    return f"{type(value).__name__}({', '.join(changed)})"
