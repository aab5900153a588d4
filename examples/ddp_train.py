"""Train the Table 2 implicit network with DistributedDataParallel (CPU gloo or CUDA nccl).

    torchrun --nproc_per_node=2 -m examples.ddp_train --method jfb --epochs 5

Every process trains on its share of each global batch; DDP averages the gradients, so all
processes hold the same weights. fixpoint's backward is an ordinary autograd Function (no tensor
hooks), so every estimator works under DDP unchanged. The contraction projection after each
step is deterministic and identical on every rank. BatchNorm in the injection keeps per-process
statistics on CPU (SyncBatchNorm needs CUDA; it is used there).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from examples.common import load_dataset, make_estimator
from examples.jfb_networks import digits_fpn, evaluate


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m examples.ddp_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", default="jfb", help="jfb, jacobian, neumann-K, ...")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by {world} processes")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    data = load_dataset("digits", seed=args.seed)
    model = digits_fpn(estimator=make_estimator(args.method, warn=False)).to(device)
    if cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    order_gen = torch.Generator().manual_seed(args.seed)  # the same batch order on every rank
    share = args.batch_size // world
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(data.train_y), generator=order_gen)
        start = time.perf_counter()
        total = 0.0
        steps = 0
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[i + rank * share : i + (rank + 1) * share]
            d, y = data.train_x[index].to(device), data.train_y[index].to(device)
            loss = nn.functional.cross_entropy(ddp(d), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.project_()
            total += loss.item()
            steps += 1
        seconds = time.perf_counter() - start
        if rank == 0:
            accuracy = evaluate(model, data.test_x, data.test_y, device)
            print(
                f"epoch {epoch}: loss {total / steps:.4f}, test accuracy {accuracy:.2f}%, "
                f"{seconds:.2f} s on {world} processes",
                flush=True,
            )
    dist.destroy_process_group()
    return {"test_accuracy": accuracy}


if __name__ == "__main__":
    main()
