"""Peak resident memory of a forward solve against its number of iterations.

For each solver, a solve of ``n = 10⁶`` unknowns (float32, 4 MB a state) runs exactly 60 and
exactly 600 iterations, each in a fresh process with the default allocator (what users run):
record the resident set size, reset the kernel's peak counter (``/proc/self/clear_refs``), solve,
read the peak (``VmHWM``). Once the solver's own history is full (Anderson's ``m``, Broyden's
``memory``), nothing a solve keeps may grow with the iterations, so the two peaks must agree up
to the allocator's noise; the difference is reported in states. That noise is a few states from
process to process for Picard and Anderson and up to about ten for Broyden, whose history holds
40 states (each peak is the median of three processes; Broyden's peaks at 60, 600 and 2000
iterations were 181–195, 213–219 and 206–229 MiB); before the trace stopped pinning memory,
Picard grew by 446 states from 60 to 600 iterations. The map is ``z ↦ −0.9999 z + x`` (an
oscillating contraction, far from converged after 600 steps), as one problem of 10⁶ unknowns and
as a batch of ten problems of 10⁵.

    python -m benchmarks.solver_memory [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Ratio, section_main
from benchmarks.memory import _status

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("Picard", "Anderson", "Broyden")
CASES = ("single", "batched")
N = 10**6


def child(solver: str, case: str, iterations: int) -> dict[str, object]:
    """One measured solve (run inside a fresh process)."""
    import torch

    import fixpoint as fp

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    batched = case == "batched"
    x = torch.randn(10, N // 10, generator=gen) if batched else torch.randn(N, generator=gen)

    def f(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -0.9999 * z + x

    options = dict(atol=0.0, rtol=0.0, max_iter=iterations, divergence=float("inf"))
    method = getattr(fp, solver)(**options)
    warmup = getattr(fp, solver)(**{**options, "max_iter": 3})
    fp.solve(f, torch.zeros_like(x), x, solver=warmup, batched=batched)
    before = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    sol = fp.solve(f, torch.zeros_like(x), x, solver=method, batched=batched)
    peak = _status()["VmHWM"]
    return {
        "peak_bytes": peak - before,
        "iterations": int(sol.iterations.max()),
        "status": sorted({str(s) for s in ([sol.status] if not batched else sol.status)}),
    }


def measure(solver: str, case: str, iterations: int) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.solver_memory",
            "--child",
            solver,
            case,
            str(iterations),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    if not Path("/proc/self/clear_refs").exists():
        return [], "no /proc/self/clear_refs (not Linux): solver memory section skipped"
    state = 4 * N
    counts = (60, 600)
    repeat = 1 if quick else 3
    lines = ["peak memory increase of one solve, n = 10⁶ float32 (4 MB a state), MiB"]
    lines.append(f"{'solver':<10}{'map':<13}" + "".join(f"{f'{c} iters':>12}" for c in counts))
    ratios = []
    for case in CASES if not quick else CASES[:1]:
        for solver in SOLVERS:
            peaks = []
            for c in counts:
                runs = [measure(solver, case, c) for _ in range(repeat)]
                for result in runs:
                    if result["iterations"] != c:
                        raise RuntimeError(f"{solver} {case}: {result} did not run {c} iterations")
                peaks.append(statistics.median(int(r["peak_bytes"]) for r in runs))
            lines.append(f"{solver:<10}{case:<13}" + "".join(f"{p / 2**20:>12.1f}" for p in peaks))
            growth = (peaks[1] - peaks[0]) / state
            ratios.append(
                Ratio(
                    "solver memory",
                    f"{solver} ({case}) peak growth 60 → 600 iterations, in states",
                    growth,
                    16.0,
                    detail=f"{peaks[1] / 2**20:.0f} vs {peaks[0] / 2**20:.0f} MiB",
                )
            )
    return ratios, "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # one measurement, in the fresh process measure() starts
        solver, case, iterations = sys.argv[2:5]
        print(json.dumps(child(solver, case, int(iterations))))
        return
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
