"""Speed-up of ``skip_converged=True`` on a batch of mixed difficulty.

The operator ``z ↦ s·tanh(conv(z)) + x`` (convolution of operator norm 1) gets a per-sample
contraction factor ``s``: a quarter of the samples contract at 0.95, the rest at 0.3, so most
samples converge in a few steps while the batch keeps iterating for the hard ones. With
``skip_converged`` the stopped samples leave the solve (iterate, solver state and evaluations of
f). No peer library has this option (torchdeq, jaxopt and optimistix evaluate the whole batch
until all converge).

    python -m benchmarks.skipping [--quick]
"""

from __future__ import annotations

import torch

import fixpoint as fp
from benchmarks.common import Ratio, interleaved_times, section_main


class ScaledTanhConv(torch.nn.Module):
    """``z ↦ s·tanh(conv(z)) + x``, ``‖conv‖ = 1``: contracts at rate ≈ ``s`` per sample."""

    def __init__(self, channels: int = 32, size: int = 16) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.div_(fp.operators.operator_norm(self.conv, (channels, size, size)))

    def forward(self, z: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s[:, None, None, None] * torch.tanh(self.conv(z)) + x


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    torch.manual_seed(0)
    batch = 64
    f = ScaledTanhConv()
    x = 0.1 * torch.randn(batch, 32, 16, 16)
    scale = torch.full((batch,), 0.3)
    scale[: batch // 4] = 0.95
    z0 = torch.zeros_like(x)
    solver = fp.Anderson(m=5, atol=1e-5, rtol=0.0, max_iter=200)

    def solve(skip: bool) -> fp.Solution:
        with torch.no_grad():
            return fp.solve(
                f, z0, x, scale, solver=solver, batched=True, skip_converged=skip, in_dims=(0, 0)
            )

    full, skipped = solve(False), solve(True)
    torch.testing.assert_close(skipped.value, full.value, atol=1e-5, rtol=0)
    t_full, t_skip = interleaved_times(
        [lambda: solve(False), lambda: solve(True)], repeat=3 if quick else 10
    )
    evaluations_full = int(full.fevals.max()) * batch
    evaluations_skip = int(skipped.fevals.sum())
    text = (
        f"batch {batch}: {batch // 4} samples contracting at 0.95, the rest at 0.3; "
        f"iterations per sample {int(full.iterations.min())}–{int(full.iterations.max())}\n"
        f"sample evaluations of f: {evaluations_full} without skipping, {evaluations_skip} "
        f"with; time {1e3 * t_full:.1f} ms vs {1e3 * t_skip:.1f} ms"
    )
    ratios = [
        Ratio(
            "skip converged",
            "speed-up of skip_converged on mixed batch",
            t_full / t_skip,
            1.0,
            better="higher",
            detail=f"{1e3 * t_full:.1f} vs {1e3 * t_skip:.1f} ms; sample evaluations "
            f"{evaluations_full} vs {evaluations_skip}",
        )
    ]
    return ratios, text


def main() -> None:
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
