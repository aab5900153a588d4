"""DistributedDataParallel: two CPU processes (gloo) train in lockstep with every estimator.

Checks that the DDP-averaged gradient equals the single-process gradient on the concatenated
batch, and that the parameters stay identical across ranks over a few optimiser steps.
"""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fixpoint as fp
from tests.methods import estimators

ESTIMATORS = {type(e).__name__: e for e in estimators(1e-12)}  # tests/methods.py
WORLD = 2


class Block(nn.Module):
    def __init__(self, n=6):
        super().__init__()
        self.linear = nn.Linear(n, n)
        with torch.no_grad():
            self.linear.weight.mul_(0.6 / torch.linalg.matrix_norm(self.linear.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.linear(z)) + x


def build(estimator):
    torch.manual_seed(1)
    solver = fp.Anderson(atol=1e-12, rtol=0.0)
    return nn.Sequential(
        nn.Linear(3, 6), fp.nn.DEQ(Block(), solver=solver, estimator=estimator), nn.Linear(6, 1)
    ).double()


def worker(rank, path, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(8, 1, generator=gen, dtype=torch.float64)
    share = slice(rank * 4, (rank + 1) * 4)
    results = {}
    for name, estimator in ESTIMATORS.items():
        model = build(estimator)
        reference = copy.deepcopy(model)
        nn.functional.mse_loss(reference(data), target).backward()
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        grad_error = None
        for step in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(ddp(data[share]), target[share]).backward()
            if step == 0:
                grad_error = max(
                    (p.grad - q.grad).abs().max().item()
                    for p, q in zip(model.parameters(), reference.parameters(), strict=True)
                )
            opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        results[name] = {
            "grad_error": grad_error,
            "rank_difference": (gathered[0] - gathered[1]).abs().max().item(),
            "moved": (flat - torch.cat([p.detach().flatten() for p in reference.parameters()]))
            .abs()
            .max()
            .item(),
        }
    if rank == 0:
        torch.save(results, path)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    path = tmp_path_factory.mktemp("ddp") / "results.pt"
    mp.spawn(worker, args=(str(path), free_port()), nprocs=WORLD, join=True)
    return torch.load(path)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_ddp_gradient_equals_single_process_gradient(ddp_results, name):
    assert ddp_results[name]["grad_error"] < 1e-10


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_parameters_stay_identical_across_ranks(ddp_results, name):
    result = ddp_results[name]
    assert result["rank_difference"] == 0.0
    assert result["moved"] > 1e-4  # training really changed the weights
