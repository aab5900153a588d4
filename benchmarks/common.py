"""Shared pieces of the benchmark scripts: a DEQ-style conv operator and a timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import fixpoint as fp


class ConvOperator(nn.Module):
    """z ↦ relu(norm(conv₂(relu(conv₁(z))) + x)): a DEQ-style residual block on images.

    Both convolutions are rescaled at construction so that the map is a ``gamma``-contraction in
    ``z`` (the product of the convolutions' spectral norms, estimated by power iteration).
    """

    def __init__(self, channels: int = 32, gamma: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
                probe = torch.randn(1, channels, 16, 16, generator=gen)
                norm = fp.operators.lipschitz(conv, probe, iters=50, generator=gen).item()
                conv.weight.mul_(gamma**0.5 / norm)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(z))) + x)


def median_time(fn: Callable[[], object], repeat: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
