"""Reproduce Table 2 and Figures 5–6 of the JFB paper with fixpoint.

Trains the paper's implicit networks (``jfb_networks``, or ``jfb_paper`` with ``--recipe paper``)
with several backward methods, interleaved epoch by epoch so that machine noise falls on all of
them alike (``jfb_training``), and compares them: time per training epoch (median after the
warm-up epoch, with its range; ratios to JFB taken within each round), Jacobian mat-vec products
(counted with ``fp.count_matvecs``), test accuracy and forward iterations per batch. As in the
paper, the Jacobian-based method solves ``(I − J)ᵀ w = g`` by conjugate gradients on the normal
equations and a batch whose CG solve does not converge is skipped (not used for an update) and
counted. Run it from the repository root:

    python -m examples.jfb_table2                               # digits, the four methods
    python -m examples.jfb_table2 --methods jfb jacobian --epochs 5
    python -m examples.jfb_table2 --dataset mnist --data-dir ~/data --download --device cuda

Data sets: ``digits`` (scikit-learn's 8×8 digits, shipped with it, the default), ``mnist``,
``svhn`` and ``cifar10`` (read with torchvision from ``--data-dir``; downloaded only with
``--download``). Methods: ``jfb``, ``jacobian`` (CG on the normal equations), ``neumann-K``,
``phantom-K``, ``implicit`` (adjoint fixed point by Anderson), ``exact`` (dense; tiny latents).

Writes ``table2.csv``, ``table2.json``, ``figure5.png`` (JFB vs Jacobian-based: test accuracy
against epoch and wall time) and ``figure6.png`` (JFB vs Neumann-k) to ``--out``. ``--timing``
times JFB against Jacobian-based at the paper's sizes instead (``jfb_timing``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from examples.common import load_dataset, make_estimator
from examples.jfb_networks import NETWORKS
from examples.jfb_paper import NORMALIZATION, PAPER_RECIPES
from examples.jfb_report import format_table, speedup_lines, write_results
from examples.jfb_timing import time_paper_networks
from examples.jfb_training import speedups, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.jfb_table2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="digits", choices=sorted(NETWORKS))
    parser.add_argument(
        "--recipe",
        default="quick",
        choices=["quick", "paper"],
        help="quick: the embedded-data demo; paper: the JFB repository's network and training "
        "run for the data set (mnist, svhn or cifar10)",
    )
    parser.add_argument(
        "--timing",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="time the paper's networks and recipes (JFB against Jacobian-based) on random "
        "inputs of the right shapes, ROUNDS interleaved batches after a warm-up one; --dataset "
        "picks one network (default: all three)",
    )
    parser.add_argument(
        "--timing-gammas",
        type=float,
        nargs="*",
        default=[],
        help="with --timing: also time the MNIST network at these contraction factors",
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download mnist/svhn/cifar10 with torchvision if missing",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["jfb", "jacobian", "neumann-5", "neumann-10"]
    )
    parser.add_argument("--solver", default="anderson", choices=["anderson", "picard", "broyden"])
    parser.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="contraction factor of the latent map (default: the network's)",
    )
    parser.add_argument("--tol", type=float, default=1e-3, help="forward relative tolerance")
    parser.add_argument("--max-iter", type=int, default=50, help="forward solver iterations")
    parser.add_argument(
        "--cg-tol",
        type=float,
        default=1e-2,
        help="relative tolerance of the Jacobian-based CG (and implicit) solves",
    )
    parser.add_argument("--cg-max-iter", type=int, default=50)
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: 10 (quick), the recipe's (paper)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-train", type=int, default=None, help="use the first N examples")
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--out", default="results")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    for method in args.methods:
        try:
            make_estimator(method)
        except ValueError as error:
            parser.error(str(error))
    if args.recipe == "paper" and args.timing is None and args.dataset not in PAPER_RECIPES:
        parser.error(f"--recipe paper needs --dataset {', '.join(PAPER_RECIPES)}")
    if args.timing is not None:
        args.recipe = "paper"
    if args.epochs is None:
        recipes = PAPER_RECIPES.get(args.dataset, {})
        args.epochs = recipes["fpn"].epochs if args.recipe == "paper" and recipes else 10
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.timing is not None:
        return time_paper_networks(args)

    # The data: the paper recipe normalises with the repository's constants.
    normalization = NORMALIZATION.get(args.dataset) if args.recipe == "paper" else None
    data = load_dataset(
        args.dataset,
        args.data_dir,
        args.download,
        args.max_train,
        args.max_test,
        args.seed,
        normalization=normalization,
    )
    print(
        f"{args.dataset}: {len(data.train_y)} training and {len(data.test_y)} test images, "
        f"{args.recipe} recipe on {args.device}, "
        f"{torch.get_num_threads()} threads"
    )

    # Train every method, interleaved epoch by epoch.
    runs = train(args.methods, data, args, progress=not args.no_progress)

    # Table 2, the time ratios to JFB, and the files.
    rows = [r.summary() for r in runs]
    ratios = speedups(runs)
    print()
    print(format_table(rows))
    print("time per epoch: median over the epochs after the first (warm-up), with its range")
    for line in speedup_lines(ratios, args.dataset):
        print(line)
    paths = write_results(runs, ratios, args, Path(args.out))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return {"rows": rows, "speedups": ratios, "paths": paths, "runs": runs}


if __name__ == "__main__":
    main()
