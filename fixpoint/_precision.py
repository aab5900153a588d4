"""The caller's autocast state: ``f`` runs under it, the library's own arithmetic without it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AUTOCAST_DEVICES", "Precision", "autocast_enabled"]

AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")
"""Device types whose autocast state the library reads."""


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type."""
    return device.type in AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type)


@dataclass(frozen=True)
class Precision:
    """The caller's autocast state, to evaluate ``f`` under it and everything else without it.

    Under ``torch.autocast`` the map ``f`` runs in the low precision the caller asked for, while
    residuals, the solvers' linear algebra and the estimators' inner products run in the state's
    own dtype (float32 or wider): autocast would otherwise put ``bmm`` and friends in bfloat16.
    """

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> Precision:
        kind = device.type
        if kind not in AUTOCAST_DEVICES:
            return cls(kind, False, torch.float32)
        return cls(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))

    def caller(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast as the caller had it (no change when it was off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def solver(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast off, for the solver's and estimators' own arithmetic."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)
