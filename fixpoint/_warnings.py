"""Warnings that point at the caller's line, however deep in the library they are raised."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import torch

__all__ = ["warn_user"]

_INTERNAL = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (sys.modules["fixpoint"], torch)
    if module.__file__ is not None
)


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside fixpoint and torch."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
