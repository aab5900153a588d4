"""Reproduce Table 2 and Figures 5–6 of the JFB paper with fixpoint.

Trains the paper's implicit networks (``jfb_networks.py``) with several backward methods,
interleaved epoch by epoch so that machine noise falls on all of them alike, and compares them:
time per training epoch (median after the warm-up epoch, with its range; ratios to JFB taken
within each round), Jacobian mat-vec products (counted with
``fp.count_matvecs``), test accuracy and forward iterations per batch. As in the paper, the
Jacobian-based method solves ``(I − J)ᵀ w = g`` by conjugate gradients on the normal equations
and a batch whose CG solve does not converge is skipped (not used for an update) and counted.

    python examples/jfb_table2.py                               # digits, the four methods
    python examples/jfb_table2.py --methods jfb jacobian --epochs 5
    python examples/jfb_table2.py --dataset mnist --data-dir ~/data --download --device cuda

Data sets: ``digits`` (scikit-learn's 8×8 digits, shipped with it, the default), ``mnist``,
``svhn`` and ``cifar10`` (read with torchvision from ``--data-dir``; downloaded only with
``--download``). Methods: ``jfb``, ``jacobian`` (CG on the normal equations), ``neumann-K``,
``phantom-K``, ``implicit`` (adjoint fixed point by Anderson), ``exact`` (dense; tiny latents).

Writes ``table2.csv``, ``table2.json``, ``figure5.png`` (JFB vs Jacobian-based: test accuracy
against epoch and wall time) and ``figure6.png`` (JFB vs Neumann-k) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jfb_networks import FPN, NETWORKS, parameter_count
from jfb_paper import (
    INPUT_SHAPES,
    NORMALIZATION,
    PAPER_RECIPES,
    augment_cifar10,
    normalize_lipschitz_,
    paper_cg,
    paper_network,
)

import fixpoint as fp

PAPER_SPEEDUP = {"mnist": 1.6, "svhn": 2.5, "cifar10": 3.6}
"""Jacobian-based / JFB time per epoch reported in the paper's Table 2."""

DOWNLOAD_ONLY = ("mnist", "svhn", "cifar10")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Images (``N×C×H×W`` float) and labels (``N`` int64) of a train and a test split."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


class DatasetNotFound(FileNotFoundError):
    """A download-only data set is not in the data directory."""


def _expected_files(name: str, root: Path) -> list[Path]:
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        return [raw / "train-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte"]
    if name == "svhn":
        return [root / "train_32x32.mat", root / "test_32x32.mat"]
    return [
        root / "cifar-10-batches-py" / "data_batch_1",
        root / "cifar-10-batches-py" / "test_batch",
    ]


def _require_files(name: str, root: Path) -> None:
    missing = [
        p
        for p in _expected_files(name, root)
        if not p.exists() and not p.with_name(p.name + ".gz").exists()
    ]
    if missing:
        raise DatasetNotFound(
            f"{name} is not in {root} (missing {', '.join(str(p) for p in missing)}). "
            f"Pass --download to fetch it with torchvision (needs internet), or put the "
            f"torchvision-format files there and pass --data-dir {root}. The embedded data set "
            f"needs nothing: --dataset digits."
        )


def _import_torchvision() -> Any:
    try:
        import torchvision
    except Exception as error:  # a broken install raises more than ImportError
        raise ImportError(
            f"--dataset mnist/svhn/cifar10 needs torchvision built for torch {torch.__version__} "
            f"(pip install torchvision matching your torch); importing it failed: {error}"
        ) from error
    return torchvision


def _to_tensor(images: Any, labels: Any, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x[:, None]
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.float().div(255.0), torch.as_tensor(labels).long()


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Dataset:
    """Load a data set as tensors; download-only sets raise :class:`DatasetNotFound` if absent.

    ``digits`` is split 80/20 (stratified by a seeded shuffle); the others use their official
    splits. Images are standardised with the training set's per-channel mean and deviation, or
    with ``normalization`` (means, deviations) when given (the paper's constants).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        split = int(0.8 * len(y))
        train, test = order[:split], order[split:]
        data = Dataset(name, x[train], y[train], x[test], y[test])
    elif name in DOWNLOAD_ONLY:
        root = Path(data_dir).expanduser()
        if not download:
            _require_files(name, root)
        tv = _import_torchvision()
        if name == "mnist":
            sets = [tv.datasets.MNIST(root, train=t, download=download) for t in (True, False)]
            arrays = [(s.data, s.targets, False) for s in sets]
        elif name == "svhn":
            sets = [tv.datasets.SVHN(root, split=s, download=download) for s in ("train", "test")]
            arrays = [(s.data, s.labels, False) for s in sets]
        else:
            sets = [tv.datasets.CIFAR10(root, train=t, download=download) for t in (True, False)]
            arrays = [(s.data, s.targets, True) for s in sets]
        (train_x, train_y), (test_x, test_y) = (_to_tensor(*a) for a in arrays)
        data = Dataset(name, train_x, train_y, test_x, test_y)
    else:
        raise ValueError(f"unknown data set {name!r}: choose digits, mnist, svhn or cifar10")
    if max_train is not None:
        data.train_x, data.train_y = data.train_x[:max_train], data.train_y[:max_train]
    if max_test is not None:
        data.test_x, data.test_y = data.test_x[:max_test], data.test_y[:max_test]
    if normalization is None:
        mean = data.train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = data.train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    else:
        mean, std = (torch.tensor(v)[None, :, None, None] for v in normalization)
    data.train_x = (data.train_x - mean) / std
    data.test_x = (data.test_x - mean) / std
    return data


# ---------------------------------------------------------------------------------------------
# Methods and solvers
# ---------------------------------------------------------------------------------------------


def make_estimator(method: str, cg_tol: float = 1e-2, cg_max_iter: int = 50) -> fp.Estimator:
    """The estimator behind a method name (``jfb``, ``jacobian``, ``neumann-5``, ...)."""
    if method == "jfb":
        return fp.JFB()
    if method == "jacobian":
        # From zero, as the quick recipe has always run it (the paper recipe starts from JFB's
        # w = g): with a relative tolerance the warm start saves no step here and costs a vjp.
        return fp.CG(atol=0.0, rtol=cg_tol, max_iter=cg_max_iter, w0="zero", warn=False)
    if method == "implicit":
        return fp.Implicit(
            fp.Anderson(m=5, atol=0.0, rtol=cg_tol, max_iter=cg_max_iter), warn=False
        )
    if method == "exact":
        return fp.Exact()
    for prefix, build in (
        ("neumann-", lambda k: fp.Neumann(k=k)),
        ("phantom-", lambda k: fp.Phantom(k=k, damping=0.5)),
    ):
        if method.startswith(prefix) and method[len(prefix) :].isdigit():
            return build(int(method[len(prefix) :]))
    raise ValueError(
        f"unknown method {method!r}: use jfb, jacobian, neumann-K, phantom-K, implicit or exact"
    )


def make_solver(name: str, tol: float, max_iter: int) -> fp.Solver:
    """A forward solver by name, with relative tolerance ``tol``."""
    solvers = {"anderson": fp.Anderson, "picard": fp.Picard, "broyden": fp.Broyden}
    if name not in solvers:
        raise ValueError(f"unknown solver {name!r}: use {', '.join(solvers)}")
    return solvers[name](atol=1e-6, rtol=tol, max_iter=max_iter)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


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


def evaluate(model: FPN, x: Tensor, y: Tensor, device: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        for start in range(0, len(y), batch):
            logits = model(x[start : start + batch].to(device))
            correct += int((logits.argmax(1).cpu() == y[start : start + batch]).sum())
    return 100.0 * correct / len(y)


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

    ``recipe="quick"`` is the embedded-data demo (the clipped FPNs of ``jfb_networks.py``, Adam
    at ``--lr``, batches of ``--batch-size``). ``recipe="paper"`` is the JFB repository's run for
    the data set (``jfb_paper.py``): its network and variant (batch norm in the FPN runs, none in
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
        if args.recipe == "paper":
            variant = "jacobian" if method == "jacobian" else "fpn"
            recipe = PAPER_RECIPES[data.name][variant]
            seed = recipe.seed
            torch.manual_seed(seed)
            if method == "jacobian":
                estimator = paper_cg(recipe)
            else:
                estimator = make_estimator(method, args.cg_tol, args.cg_max_iter)
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
            estimator = make_estimator(method, args.cg_tol, args.cg_max_iter)
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


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

COLUMNS = [
    ("method", "method", "{}"),
    ("time_per_epoch_s", "time/epoch (s)", "{:.2f}"),
    ("time_per_epoch_min_s", "min", "{:.2f}"),
    ("time_per_epoch_max_s", "max", "{:.2f}"),
    ("matvecs_per_epoch", "J mat-vecs/epoch", "{:.3g}"),
    ("test_accuracy", "test acc (%)", "{:.2f}"),
    ("forward_iterations_per_batch", "fwd iters/batch", "{:.1f}"),
    ("skipped_batches", "skipped", "{}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [[fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [
        max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(COLUMNS)
    ]
    lines = ["  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def speedup_lines(ratios: dict[str, dict[str, float]], dataset: str) -> list[str]:
    lines = [
        f"{method} / jfb time per epoch: {r['median']:.2f}× (median of {r['rounds']} "
        f"interleaved rounds, range {r['min']:.2f}–{r['max']:.2f})"
        for method, r in ratios.items()
    ]
    paper = ", ".join(f"{k} {v}×" for k, v in PAPER_SPEEDUP.items())
    if lines:
        lines.append(f"paper (Jacobian-based / JFB, Table 2): {paper}; this run: {dataset}")
    return lines


def plot_figures(runs: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = {r.method: r for r in runs}
    figures = {
        "figure5.png": ("JFB vs Jacobian-based backprop", ["jfb", "jacobian"]),
        "figure6.png": (
            "JFB vs Neumann series",
            [
                "jfb",
                *sorted(
                    (m for m in by_method if m.startswith("neumann-")),
                    key=lambda m: int(m.split("-")[1]),
                ),
            ],
        ),
    }
    written = []
    for filename, (title, methods) in figures.items():
        chosen = [by_method[m] for m in methods if m in by_method]
        if not chosen:
            continue
        fig, (ax_epoch, ax_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for run in chosen:
            acc = [e.test_accuracy for e in run.epochs]
            ax_epoch.plot([e.epoch for e in run.epochs], acc, marker="o", label=run.method)
            ax_time.plot([e.wall for e in run.epochs], acc, marker="o", label=run.method)
        ax_epoch.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
        ax_time.set(xlabel="training time (s)", title="against wall-clock time")
        for ax in (ax_epoch, ax_time):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_results(
    runs: list[Run], ratios: dict[str, dict[str, float]], args: argparse.Namespace, out: Path
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in runs]
    csv_path = out / "table2.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path = out / "table2.json"
    payload = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "table": rows,
        "speedups": ratios,
        "runs": [{**asdict(r), "summary": r.summary()} for r in runs],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    paths = {"csv": csv_path, "json": json_path}
    for path in plot_figures(runs, out):
        paths[path.stem] = path
    return paths


# ---------------------------------------------------------------------------------------------
# Timing at the paper's sizes
# ---------------------------------------------------------------------------------------------

TIMED = ("jfb", "jacobian")


def time_network(name: str, args: argparse.Namespace, gamma: float | None = None) -> dict[str, Any]:
    """JFB against Jacobian-based on one paper network, with the paper's recipes, on random data.

    Time per training batch does not depend on the pixels, so a batch of standard normal
    images of the data set's shape (and random labels) stands in for the data this machine cannot
    download. The two methods take turns, batch by batch (the order rotating each round), each on
    its own network, optimiser and random state; the first round is warm-up. The ratio is taken
    within each round; its median and range are reported.

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    runs = train(args.methods, data, args, progress=not args.no_progress)
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
