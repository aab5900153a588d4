"""The training protocol of the Table 2 example (``jfb_table2``).

Each backward method gets its own network, optimiser, batch order and random state
(:class:`Trainer`); :func:`train` runs them interleaved, one epoch of each in turn with the order
rotating every round, so that a burst of load on the machine falls on all of them alike and
interleaving changes none of their results. :func:`speedups` takes each method's time per epoch
over JFB's within each round. As in the paper, the update of a batch whose Jacobian-based (CG)
solve did not converge is skipped and counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import fixpoint as fp
from examples.common import Dataset, make_estimator, make_solver
from examples.jfb_networks import NETWORKS, evaluate, parameter_count
from examples.jfb_paper import PAPER_RECIPES, augment_cifar10, paper_cg, paper_network


@dataclass
class Epoch:
    epoch: int
    seconds: float
    wall: float
    train_loss: float
    test_accuracy: float
    matvecs: int
    forward_iterations: float
    skipped: int


@dataclass
class Run:
    method: str
    estimator: str
    parameters: int
    epochs: list[Epoch] = field(default_factory=list)

    def timed_epochs(self) -> list[Epoch]:
        """The epochs whose time counts: all but the first (warm-up), when there are several."""
        return self.epochs[1:] if len(self.epochs) > 1 else self.epochs

    def summary(self) -> dict[str, Any]:
        e = self.epochs
        seconds = [x.seconds for x in self.timed_epochs()]
        return {
            "method": self.method,
            "time_per_epoch_s": statistics.median(seconds),
            "time_per_epoch_min_s": min(seconds),
            "time_per_epoch_max_s": max(seconds),
            "matvecs_per_epoch": sum(x.matvecs for x in e) / len(e),
            "matvecs_total": sum(x.matvecs for x in e),
            "test_accuracy": e[-1].test_accuracy,
            "best_test_accuracy": max(x.test_accuracy for x in e),
            "forward_iterations_per_batch": sum(x.forward_iterations for x in e) / len(e),
            "skipped_batches": sum(x.skipped for x in e),
        }


@dataclass
class Step:
    """One training batch: its time, loss and the work the solves did."""

    seconds: float
    loss: float
    forward_iterations: float
    backward_iterations: int | None
    matvecs: int
    skipped: bool
    unconverged: bool


class Trainer:
    """One method's network, optimiser and random state, trained one epoch at a time.

    Every method starts from its recipe's seed and sees the same batch order. Each keeps its own
    random state between epochs, so interleaving the methods changes nothing in any of them.

    ``recipe="quick"`` is the embedded-data demo (the clipped FPNs of ``jfb_networks``, Adam at
    ``--lr``, batches of ``--batch-size``). ``recipe="paper"`` is the JFB repository's run for
    the data set (``jfb_paper``): its network and variant (batch norm in the FPN runs, none in
    the Jacobian-based ones), Picard stopping on the largest per-pixel channel norm at ``eps``,
    CG to ``eps`` for the Jacobian-based method, its seed, optimiser, schedule, batch size and,
    for CIFAR-10, augmentation.
    """

    def __init__(
        self, method: str, data: Dataset, args: argparse.Namespace, gamma: float | None = None
    ) -> None:
        self.method, self.data, self.args = method, data, args
        self.device = torch.device(args.device)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.augment: Any = None
        tolerances = {"rtol": args.cg_tol, "max_iter": args.cg_max_iter, "warn": False}
        if args.recipe == "paper":
            variant = "jacobian" if method == "jacobian" else "fpn"
            recipe = PAPER_RECIPES[data.name][variant]
            seed = recipe.seed
            torch.manual_seed(seed)
            if method == "jacobian":
                estimator = paper_cg(recipe)
            else:
                estimator = make_estimator(method, **tolerances)
            options = {} if gamma is None else {"gamma": gamma}
            self.model = paper_network(data.name, variant, estimator=estimator, **options)
            self.opt = torch.optim.Adam(
                self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
            )
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                self.opt, step_size=recipe.step, gamma=recipe.decay
            )
            self.batch_size = recipe.batch_size
            if recipe.augment:
                self.augment = augment_cifar10
        else:
            seed = args.seed
            torch.manual_seed(seed)
            estimator = make_estimator(method, **tolerances)
            solver = make_solver(args.solver, args.tol, args.max_iter)
            options = {} if args.gamma is None else {"gamma": args.gamma}
            self.model = NETWORKS[data.name](solver=solver, estimator=estimator, **options)
            self.model.deq.eval_solver = make_solver(args.solver, args.tol, args.max_iter)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
            self.batch_size = args.batch_size
        self.model.to(self.device)
        self.loss_fn = nn.CrossEntropyLoss()
        self.run = Run(method, estimator.name, parameter_count(self.model))
        self.order_gen = torch.Generator().manual_seed(seed)
        self.augment_gen = torch.Generator().manual_seed(seed + 1)
        self.rng = torch.get_rng_state()
        self.wall = 0.0

    def step(self, d: Tensor, y: Tensor) -> Step:
        """One batch: forward, backward and (unless its CG solve failed) an optimiser step."""
        model = self.model
        start = time.perf_counter()
        with fp.count_matvecs() as count, warnings.catch_warnings():
            # An unconverged forward solve is counted (the paper's loop stops at max_depth
            # silently), not warned about at every batch.
            warnings.simplefilter("ignore", fp.ConvergenceWarning)
            loss = self.loss_fn(model(d), y)
            self.opt.zero_grad()
            loss.backward()
            sol = model.deq.last_solution
            converged = sol.backward.converged
            skipped = converged is not None and not bool(converged.all())
            if not skipped:  # as in the paper: no update from an unconverged CG solve
                self.opt.step()
                model.project_()
        seconds = time.perf_counter() - start
        return Step(
            seconds,
            loss.item(),
            float(sol.iterations.max()),
            sol.backward.iterations,
            count.total,
            skipped,
            not bool(sol.converged.all()),
        )

    def epoch(self, number: int) -> Epoch:
        data, model, device = self.data, self.model, self.device
        torch.set_rng_state(self.rng)
        model.train()
        order = torch.randperm(len(data.train_y), generator=self.order_gen)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        steps = []
        for index in batches:
            d = data.train_x[index]
            if self.augment is not None:
                d = self.augment(d, self.augment_gen)
            steps.append(self.step(d.to(device), data.train_y[index].to(device)))
        if self.scheduler is not None:
            self.scheduler.step()
        seconds = sum(s.seconds for s in steps)
        self.rng = torch.get_rng_state()
        self.wall += seconds
        accuracy = evaluate(model, data.test_x, data.test_y, device)
        result = Epoch(
            number,
            seconds,
            self.wall,
            sum(s.loss for s in steps) / len(steps),
            accuracy,
            sum(s.matvecs for s in steps),
            sum(s.forward_iterations for s in steps) / len(steps),
            sum(s.skipped for s in steps),
        )
        self.run.epochs.append(result)
        return result


def train(
    methods: list[str], data: Dataset, args: argparse.Namespace, progress: bool = True
) -> list[Run]:
    """Train every method, interleaved epoch by epoch, the order rotating from one to the next.

    A burst of load on the machine then lands on every method alike, instead of on whichever
    happened to be training, and each method sits in every position of a round equally often.
    """
    trainers = [Trainer(m, data, args) for m in methods]
    steps = tqdm(
        total=args.epochs * len(trainers), disable=not progress, leave=True, dynamic_ncols=True
    )
    for number in range(1, args.epochs + 1):
        shift = (number - 1) % len(trainers)
        for trainer in trainers[shift:] + trainers[:shift]:
            epoch = trainer.epoch(number)
            steps.set_description(f"epoch {number}/{args.epochs} {trainer.method:>11}")
            steps.set_postfix(acc=f"{epoch.test_accuracy:.2f}%", s=f"{epoch.seconds:.2f}")
            steps.update()
    steps.close()
    return [t.run for t in trainers]


def speedups(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Each method's time per epoch over JFB's, taken within each round of epochs.

    The ratio of two epochs trained back to back shares their machine noise; the median over
    rounds (the warm-up round excluded) is reported with its range.
    """
    by_method = {r.method: r for r in runs}
    if "jfb" not in by_method:
        return {}
    jfb = {e.epoch: e.seconds for e in by_method["jfb"].timed_epochs()}
    result = {}
    for method, run in by_method.items():
        if method == "jfb":
            continue
        ratios = [e.seconds / jfb[e.epoch] for e in run.timed_epochs() if e.epoch in jfb]
        result[method] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "rounds": len(ratios),
        }
    return result
