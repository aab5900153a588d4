"""Jacobian regularisation (Bai, Koltun & Kolter, ICML 2021) of the digits FPN, trained with JFB.

Trains the digits implicit network of the Table 2 demo (``jfb_networks.digits_fpn``: injection,
``fp.nn.DEQ`` latent layer, readout) twice from the same initialisation and batch order, once
with the plain cross-entropy loss and once with ``loss + λ · mean(jacobian_penalty)``, the
Hutchinson estimate of ``‖∂R/∂u‖²_F / n`` at each batch's equilibrium ``u*`` (one vjp with
``create_graph``). Per epoch it reports the forward solver's iterations per batch, the spectral
radius of ``∂R/∂u`` at the equilibria of 256 test images (mean over them), test accuracy and time.

The Table 2 demo keeps the latent map γ-contractive by projecting its convolutions onto the unit
operator-norm ball after every step, so that ``ρ ≤ γ`` whatever the loss; here, as in the paper,
the map is left unconstrained (``--project`` restores the projection) at γ = 0.9, and the penalty
is what keeps the equilibrium well-conditioned. Run it from the repository root:

    python -m examples.jacobian_penalty                      # 12 epochs, λ = 2: 35 s on 2 cores
    python -m examples.jacobian_penalty --epochs 30 --penalty 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fixpoint as fp
from examples.common import Dataset, load_dataset, make_solver
from examples.jfb_networks import FPN, digits_fpn, evaluate


@dataclass
class Epoch:
    epoch: int
    iterations: float  # forward iterations per batch (the slowest sample's, the batch's cost)
    radius: float  # mean spectral radius of ∂R/∂u at the probe images' equilibria
    accuracy: float
    seconds: float
    penalty: float  # mean Jacobian penalty over the epoch's batches (measured in both runs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.jacobian_penalty",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--penalty", type=float, default=2.0, help="weight λ of the penalty")
    parser.add_argument("--gamma", type=float, default=0.9, help="γ of the latent map")
    parser.add_argument("--project", action="store_true", help="keep R γ-contractive (Table 2)")
    parser.add_argument("--tol", type=float, default=1e-3, help="forward relative tolerance")
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--probe", type=int, default=256, help="test images for ρ")
    parser.add_argument("--max-train", type=int, default=None, help="use the first N examples")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def spectral_radius(model: FPN, images: Tensor) -> float:
    """Mean over ``images`` of ρ(∂R/∂u) at their equilibria (eval mode, 20 Arnoldi steps)."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        q = model.injection(images)
        u = model.deq(q)
    radius = fp.operators.spectral_radius(
        model.latent, u, q, iters=20, batched=True, generator=torch.Generator().manual_seed(0)
    )
    model.train()
    return radius.mean().item()


def train(weight: float, data: Dataset, args: argparse.Namespace) -> tuple[float, list[Epoch]]:
    """Train one network with penalty weight ``weight``; ρ at the start, and each epoch."""
    torch.manual_seed(args.seed)
    model = digits_fpn(args.gamma, solver=make_solver("anderson", args.tol, args.max_iter))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order_gen = torch.Generator().manual_seed(args.seed)
    probe = data.test_x[: args.probe]
    start, epochs = spectral_radius(model, probe), []
    for number in range(1, args.epochs + 1):
        order = torch.randperm(len(data.train_y), generator=order_gen)
        iterations, penalties, seconds = [], [], 0.0
        for index in order.split(args.batch_size):
            tick = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fp.ConvergenceWarning)
                q = model.injection(data.train_x[index])  # the injection, kept for the penalty
                u = model.deq(q)
            loss = nn.functional.cross_entropy(model.readout(u), data.train_y[index])
            # The penalty at the (detached) equilibrium u* with the injection q (the DEQ option
            # jacobian_penalty=1 would leave the same in model.deq.last_jacobian_penalty).
            solution = model.deq.last_solution
            if weight > 0:
                penalty = fp.jacobian_penalty(model.latent, solution.value, q, batched=True)
                loss = loss + weight * penalty.mean()
            else:  # measured only: no graph, and not timed
                aside = time.perf_counter()
                with torch.no_grad():
                    penalty = fp.jacobian_penalty(model.latent, solution.value, q, batched=True)
                tick += time.perf_counter() - aside
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if args.project:
                model.project_()
            seconds += time.perf_counter() - tick
            iterations.append(float(solution.iterations.max()))
            penalties.append(penalty.mean().item())
        accuracy = evaluate(model, data.test_x, data.test_y, torch.device("cpu"))
        epoch = Epoch(
            number,
            sum(iterations) / len(iterations),
            spectral_radius(model, probe),
            accuracy,
            seconds,
            sum(penalties) / len(penalties),
        )
        epochs.append(epoch)
        print(
            f"λ = {weight:g}  epoch {number:>2}: {epoch.iterations:5.2f} iterations/batch, "
            f"ρ = {epoch.radius:.3f}, penalty {epoch.penalty:.3f}, "
            f"accuracy {epoch.accuracy:5.2f} %, {epoch.seconds:.1f} s"
        )
    return start, epochs


def format_table(results: dict[float, tuple[float, list[Epoch]]]) -> str:
    """Start/end spectral radius, iterations in the first/last epoch, accuracy, time."""
    header = (
        "| λ | ρ start | ρ end | iterations/batch, first epoch | last epoch "
        "| penalty, last epoch | test accuracy | s/epoch (median) |"
    )
    lines = [header, "|" + "---:|" * 8]
    for weight, (start, epochs) in results.items():
        first, last = epochs[0], epochs[-1]
        seconds = statistics.median([e.seconds for e in epochs])
        lines.append(
            f"| {weight:g} | {start:.3f} | {last.radius:.3f} | {first.iterations:.2f} "
            f"| {last.iterations:.2f} | {last.penalty:.3f} | {last.accuracy:.2f} % "
            f"| {seconds:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[float, tuple[float, list[Epoch]]]:
    args = parse_args(argv)
    data = load_dataset("digits", max_train=args.max_train, seed=args.seed)
    print(
        f"digits: {len(data.train_y)} training, {len(data.test_y)} test images; γ = {args.gamma}, "
        f"{'projected' if args.project else 'unconstrained'} latent map, JFB, "
        f"{torch.get_num_threads()} threads"
    )
    results = {weight: train(weight, data, args) for weight in (0.0, args.penalty)}
    print()
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
