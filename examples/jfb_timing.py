"""``jfb_table2 --timing``: JFB against Jacobian-based at the paper's sizes, on random inputs.

Time per training batch does not depend on the pixels, so a batch of standard normal images of
each data set's shape (and random labels) stands in for the data sets a build machine cannot
download. See the docs page *JFB paper, Table 2*, section "Timing at the paper's sizes".
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from examples.common import Dataset
from examples.jfb_paper import INPUT_SHAPES, PAPER_RECIPES, normalize_lipschitz_
from examples.jfb_report import PAPER_SPEEDUP
from examples.jfb_training import Step, Trainer

TIMED = ("jfb", "jacobian")


def time_network(name: str, args: argparse.Namespace, gamma: float | None = None) -> dict[str, Any]:
    """JFB against Jacobian-based on one paper network, with the paper's recipes, on random data.

    The two methods take turns, batch by batch (the order rotating each round), each on its own
    network, optimiser and random state; the first round is warm-up. The ratio is taken within
    each round; its median and range are reported.

    A fresh network breaks the paper's Lipschitz bound by far, and the paper's rescaling needs a
    number of training steps to bring it there (the SVHN Jacobian-based map, with γ = 0.9, does
    not even converge in 200 steps until then). So the networks are first calibrated: the
    paper's rescaling is applied at the batch until it changes nothing, which is where a run
    stands after its first training steps.
    """
    recipe = PAPER_RECIPES[name]["fpn"]
    gen = torch.Generator().manual_seed(args.seed)
    d = torch.randn(recipe.batch_size, *INPUT_SHAPES[name], generator=gen)
    y = torch.randint(0, 10, (recipe.batch_size,), generator=gen)
    data = Dataset(name, d, y, d[:1], y[:1])
    trainers = [Trainer(m, data, args, gamma) for m in TIMED]
    device = torch.device(args.device)
    for trainer in trainers:
        model = trainer.model
        with torch.no_grad():
            q = model.injection(d.to(device))
        for _ in range(100):
            if normalize_lipschitz_(model.latent, torch.zeros_like(q), q) == 1.0:
                break
    steps: dict[str, list[Step]] = {m: [] for m in TIMED}
    for number in range(args.timing + 1):
        shift = number % len(trainers)
        for trainer in trainers[shift:] + trainers[:shift]:
            torch.set_rng_state(trainer.rng)
            trainer.model.train()
            steps[trainer.method].append(trainer.step(d.to(device), y.to(device)))
            trainer.rng = torch.get_rng_state()
    timed = {m: s[1:] for m, s in steps.items()}
    ratios = [
        jac.seconds / jfb.seconds for jfb, jac in zip(timed["jfb"], timed["jacobian"], strict=True)
    ]
    result: dict[str, Any] = {
        "network": name,
        "gamma": trainers[0].model.gamma,
        "rounds": len(ratios),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "paper": PAPER_SPEEDUP[name],
    }
    for method, records in timed.items():
        result[method] = {
            "seconds_per_batch": statistics.median(r.seconds for r in records),
            "forward_iterations": statistics.mean(r.forward_iterations for r in records),
            "backward_iterations": statistics.mean(r.backward_iterations or 0 for r in records),
            "matvecs_per_batch": statistics.mean(r.matvecs for r in records),
            "skipped": sum(r.skipped for r in records),
            "unconverged_forward": sum(r.unconverged for r in records),
        }
    return result


def format_timing(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'network':<9}{'γ':>5}{'JFB s/batch':>13}{'Jac. s/batch':>14}{'Jac./JFB':>10}"
        f"{'range':>13}{'paper':>7}{'fwd it JFB':>12}{'fwd it Jac':>12}{'CG it':>7}"
        f"{'J prod/batch':>14}{'skipped':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        jfb, jac = r["jfb"], r["jacobian"]
        spread = f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}"
        lines.append(
            f"{r['network']:<9}{r['gamma']:>5.2f}{jfb['seconds_per_batch']:>13.3f}"
            f"{jac['seconds_per_batch']:>14.3f}{r['ratio']:>9.2f}×{spread:>13}"
            f"{r['paper']:>6.1f}×{jfb['forward_iterations']:>12.1f}"
            f"{jac['forward_iterations']:>12.1f}{jac['backward_iterations']:>7.1f}"
            f"{jac['matvecs_per_batch']:>14.0f}{jac['skipped']:>9d}"
        )
    return "\n".join(lines)


def time_paper_networks(args: argparse.Namespace) -> dict[str, Any]:
    """``--timing``: the paper-size timing table (and the γ sweep), printed and written."""
    names = [args.dataset] if args.dataset in PAPER_RECIPES else list(PAPER_RECIPES)
    print(
        f"timing JFB against Jacobian-based on the paper's networks and recipes, "
        f"{args.timing} rounds after a warm-up, {torch.get_num_threads()} threads on "
        f"{args.device}: RANDOM INPUTS of the data sets' shapes (timing only, no accuracy)"
    )
    results = [time_network(name, args) for name in names]
    print(format_timing(results))
    sweep = [time_network("mnist", args, gamma=g) for g in args.timing_gammas]
    if sweep:
        print("\nthe MNIST network at other contraction factors (more forward iterations):")
        print(format_timing(sweep))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "timing.json"
    payload = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "note": "random inputs of the data sets' shapes: time per batch only",
        "networks": results,
        "gamma_sweep": sweep,
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path}")
    return {"networks": results, "gamma_sweep": sweep, "path": path}
