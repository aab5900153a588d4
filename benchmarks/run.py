"""Run every benchmark and print one table of ratios, each against its target.

    python -m benchmarks.run --quick          # under 3 minutes on a 2-core CPU
    python -m benchmarks.run                  # the full set; writes benchmarks/results/

Sections: H-equation against scipy.optimize; DEQ conv operator against torchdeq (forward and
backward, skipped when torchdeq is not installed); solver overhead; backward cost of each
estimator in vjps; Jacobian products, time and gradient error of the Krylov estimators (GMRES,
BiCGStab, CG); scipy's nonlin test problems against every solver; peak memory against forward
iterations (training steps, and solves of 10⁶ unknowns); skipping converged samples;
vmap(fp.solve) against a batched solve; torch.compile; the Table 2 training ratio. Each section
is also a module you can run alone (``python -m benchmarks.h_equation`` etc.).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks import (
    backward,
    compile_speedup,
    h_equation,
    krylov,
    memory,
    nonlin_problems,
    peers_deq,
    skipping,
    solver_memory,
    training,
    vmapping,
)
from benchmarks.common import Ratio, format_ratios

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = {
    "h_equation": lambda quick: h_equation.run(quick=quick),
    "peers_deq": peers_deq.run,
    "backward": lambda quick: backward.run(quick=quick),
    "krylov": lambda quick: krylov.run(quick=quick),
    "nonlin_problems": lambda quick: nonlin_problems.run(quick=quick),
    "memory": memory.run,
    "solver_memory": solver_memory.run,
    "skipping": skipping.run,
    "vmapping": vmapping.run,
    "training": training.run,
    "compile": compile_speedup.run,  # last: inductor's worker processes start here
}


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": datetime.date.today().isoformat(),
    }


def to_markdown(
    ratios: list[Ratio], texts: dict[str, str], info: dict[str, object], quick: bool
) -> str:
    lines = [
        f"Measured on {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch "
        f"threads), torch {info['torch']}, Python {info['python']}, {info['date']}"
        f"{' (quick mode)' if quick else ''}.",
        "",
        "| section | ratio | value | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in ratios:
        met = {True: "yes", False: "**no**", None: "–"}[r.ok]
        lines.append(
            f"| {r.section} | {r.name} ({r.detail}) | {r.value:.4g} | {r.target_text} | {met} |"
        )
    for name, text in texts.items():
        lines += [
            "",
            f"### {name}",
            "",
            "<!-- not-run: benchmark output -->",
            "```text",
            text,
            "```",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results"),
        help="folder for results.json and results.md",
    )
    args = parser.parse_args(argv)
    ratios: list[Ratio] = []
    texts: dict[str, str] = {}
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        section_ratios, text = SECTIONS[name](args.quick)
        seconds = time.perf_counter() - start
        print(f"\n## {name} ({seconds:.0f} s)\n{text}", flush=True)
        ratios += section_ratios
        texts[name] = text
    print("\n" + format_ratios(ratios))
    info = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + ("-partial" if args.only else "")
    (out / f"results{suffix}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "quick": args.quick,
                "ratios": [{**r.__dict__, "ok": r.ok} for r in ratios],
                "details": texts,
            },
            indent=2,
        )
    )
    (out / f"results{suffix}.md").write_text(to_markdown(ratios, texts, info, args.quick))
    print(f"\nwrote {out / f'results{suffix}.json'} and {out / f'results{suffix}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
