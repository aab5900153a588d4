"""Shared pieces of the benchmarks: a DEQ-style conv operator, timers and the ratio record."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fixpoint as fp


class ConvOperator(nn.Module):
    """``z ↦ relu(s·conv₂(relu(conv₁(z))) + x)``: a DEQ-style residual block on images.

    The convolutions are rescaled at construction so that ``conv₂∘relu∘conv₁`` has Lipschitz
    constant at most ``gamma`` (operator norms by power iteration); an optional per-sample scale
    ``s`` (shape ``(B,)``) makes samples of one batch contract at different rates.
    """

    def __init__(
        self, channels: int = 32, gamma: float = 0.8, size: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
                norm = fp.operators.operator_norm(
                    conv, (channels, size, size), iters=100, generator=gen
                )
                conv.weight.mul_(gamma**0.5 / norm)

    def forward(self, z: Tensor, x: Tensor, scale: Tensor | None = None) -> Tensor:
        h = self.conv2(torch.relu(self.conv1(z)))
        if scale is not None:
            h = scale[:, None, None, None] * h
        return torch.relu(h + x)


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


def interleaved_times(
    fns: Sequence[Callable[[], object]], repeat: int = 10, warmup: int = 1
) -> list[float]:
    """Median times of several functions measured in alternation (so drift hits all alike)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


@dataclass
class Ratio:
    """One measured ratio and the target it is checked against.

    ``better`` is ``"lower"`` when the ratio must be at most ``target``, ``"higher"`` when at
    least; ``target=None`` means it is reported, not checked.
    """

    section: str
    name: str
    value: float
    target: float | None = None
    better: str = "lower"
    detail: str = ""

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "report"
        return f"{'≤' if self.better == 'lower' else '≥'} {self.target:g}"


def format_ratios(ratios: Sequence[Ratio]) -> str:
    """One plain-text table of all ratios."""
    header = ("section", "ratio", "value", "target", "ok", "numbers")
    rows = [
        (
            r.section,
            r.name,
            f"{r.value:.4g}",
            r.target_text,
            {True: "yes", False: "NO", None: "-"}[r.ok],
            r.detail,
        )
        for r in ratios
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def section_main(run: Callable[[bool], tuple[Sequence[Ratio], str]], doc: str | None) -> None:
    """Command line of a benchmark section: ``--quick``, then its text and its ratios."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    args = parser.parse_args()
    ratios, text = run(args.quick)
    print(text)
    print()
    print(format_ratios(ratios))
