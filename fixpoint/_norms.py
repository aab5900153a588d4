"""Per-sample norms of flat ``(B, n)`` states that neither overflow nor underflow."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch._C import _functorch

__all__ = ["row_norm"]


def row_norm(x: Tensor) -> Tensor:
    """Euclidean norm of each row of ``x`` (``(B, n) -> (B,)``), in at least float32.

    Never overflows or underflows on its own: the plain sum of squares overflows once
    ``‖x‖`` passes about the square root of the dtype's largest number (``1e19`` in float32)
    and drops entries below the square root of its smallest (``1e-154`` in float64), so rows at
    risk (an infinite, NaN or tiny plain norm) are computed again with the row divided by its
    largest entry. On the CPU that second pass runs only when some row needs it; elsewhere, and
    under torch.func transforms, it always runs (no host synchronisation).
    """
    low = x.dtype in (torch.float16, torch.bfloat16)
    r = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if low else None)
    info = torch.finfo(r.dtype)
    at_risk = ~(r >= (info.tiny / info.eps) ** 0.5) | ~(r < info.max)
    if x.device.type == "cpu" and not _functorch.is_functorch_wrapped_tensor(x):
        if not bool(at_risk.any()):
            return r
    return torch.where(at_risk, _scaled_row_norm(x.float() if low else x), r)


def _scaled_row_norm(x: Tensor) -> Tensor:
    scale = torch.linalg.vector_norm(x, ord=math.inf, dim=1, keepdim=True)
    scale = torch.where((scale > 0) & torch.isfinite(scale), scale, 1.0)
    return torch.linalg.vector_norm(x / scale, dim=1) * scale[:, 0]
