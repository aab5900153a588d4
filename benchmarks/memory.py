"""Peak memory of one training step against the number of forward iterations.

Each measurement runs in a fresh process: build the conv operator, record the resident set size,
reset the kernel's peak counter (``/proc/self/clear_refs``), run one forward + backward step with
exactly N forward iterations, and read the peak (``VmHWM``). The number reported is the peak
*increase* over the resident size before the step; glibc's mmap threshold is fixed at 64 KiB so
freed tensors leave the resident set at once. fixpoint's estimators keep one graph of ``f``
whatever N is; backpropagating through the unrolled iterations keeps N of them.

    python -m benchmarks.memory [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Ratio, section_main

ESTIMATORS = ("jfb", "neumann-5", "cg", "unrolled")
ROOT = Path(__file__).resolve().parents[1]


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values


def child(estimator: str, iterations: int, batch: int) -> dict[str, float]:
    """One measured training step (run inside a fresh process)."""
    import torch

    import fixpoint as fp
    from benchmarks.common import ConvOperator

    torch.manual_seed(0)
    torch.set_num_threads(1)
    f = ConvOperator(32, gamma=0.9)
    x = torch.randn(batch, 32, 16, 16)
    target = torch.randn_like(x)
    # Warm up the allocator and kernels with a tiny step, then measure.
    f(torch.zeros(1, 32, 16, 16), x[:1]).sum().backward()
    f.zero_grad()
    before = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    if estimator == "unrolled":
        z = torch.zeros_like(x)
        for _ in range(iterations):
            z = f(z, x)
    else:
        solver = fp.Anderson(m=5, atol=0.0, rtol=0.0, max_iter=iterations, divergence=float("inf"))
        chosen = {
            "jfb": fp.JFB(),
            "neumann-5": fp.Neumann(k=5),
            "cg": fp.CG(atol=0.0, rtol=1e-4, max_iter=20, warn=False),
        }[estimator]
        z = fp.fixed_point(f, torch.zeros_like(x), x, solver=solver, estimator=chosen, batched=True)
    loss = (z - target).square().mean()
    loss.backward()
    peak = _status()["VmHWM"]
    return {"estimator": estimator, "iterations": iterations, "peak_bytes": peak - before}


def measure(estimator: str, iterations: int, batch: int) -> float:
    # A fixed mmap threshold makes glibc return every freed tensor to the kernel at once, so the
    # resident size follows the live tensors instead of the allocator's fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            estimator,
            str(iterations),
            str(batch),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    if not Path("/proc/self/clear_refs").exists():
        return [], "no /proc/self/clear_refs (not Linux): memory section skipped"
    batch = 16 if quick else 32
    counts = (10, 200)
    lines = [
        f"peak memory increase of one training step (conv operator, batch {batch}, 32×16×16), MiB"
    ]
    lines.append(f"{'method':<12}" + "".join(f"{f'{n} iters':>12}" for n in counts))
    ratios = []
    for estimator in ESTIMATORS:
        peaks = [measure(estimator, n, batch) for n in counts]
        lines.append(f"{estimator:<12}" + "".join(f"{p / 2**20:>12.1f}" for p in peaks))
        ratio = peaks[1] / peaks[0]
        if estimator == "unrolled":
            ratios.append(
                Ratio(
                    "memory",
                    "unrolled backprop peak 200 / 10 iterations",
                    ratio,
                    None,
                    detail=f"{peaks[1] / 2**20:.0f} vs {peaks[0] / 2**20:.0f} MiB (grows linearly)",
                )
            )
        else:
            ratios.append(
                Ratio(
                    "memory",
                    f"{estimator} peak 200 / 10 iterations",
                    ratio,
                    1.05,
                    detail=f"{peaks[1] / 2**20:.1f} vs {peaks[0] / 2**20:.1f} MiB",
                )
            )
    return ratios, "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # one measurement, in the fresh process measure() starts
        estimator, iterations, batch = sys.argv[2:5]
        print(json.dumps(child(estimator, int(iterations), int(batch))))
        return
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
