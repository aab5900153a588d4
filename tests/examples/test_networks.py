"""The JFB paper's networks: their sizes, and a latent map that stays γ-contractive."""

import pytest
import torch

import fixpoint as fp
from examples.jfb_networks import NETWORKS, parameter_count

PAPER = {"mnist": (54_000, 54_362), "svhn": (164_000, 164_714), "cifar10": (840_000, 843_440)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_counts_match_the_paper(name):
    paper, stated = PAPER[name]
    count = parameter_count(NETWORKS[name]())
    assert count == stated  # the count stated in the example's docstring
    assert abs(count - paper) <= 0.01 * paper


@pytest.mark.parametrize(
    ("name", "shape", "gamma"),
    [
        ("mnist", (32, 9, 9), 0.5),
        ("svhn", (64, 8, 8), 0.9),
        ("cifar10", (35, 10, 10), 0.5),
        ("digits", (16, 8, 8), 0.5),
    ],
)
def test_latent_map_is_gamma_contractive_after_projection(name, shape, gamma):
    torch.manual_seed(0)
    net = NETWORKS[name]()
    assert net.latent.shape == shape and net.gamma == gamma
    # Break the constraint on purpose, then project back.
    with torch.no_grad():
        for p in net.latent.parameters():
            p.mul_(5.0)
    net.project_(iters=30)
    u, v, q = (torch.randn(3, *shape) for _ in range(3))
    lip = fp.operators.lipschitz(net.latent, u, q, iters=30, batched=True)
    assert (lip <= gamma * (1 + 1e-3)).all()
    secant = torch.linalg.vector_norm((net.latent(u, q) - net.latent(v, q)).flatten(1), dim=1)
    assert (secant <= gamma * torch.linalg.vector_norm((u - v).flatten(1), dim=1)).all()
    # The projection is needed: before it, the scaled map expands.
    with torch.no_grad():
        for p in net.latent.parameters():
            p.mul_(5.0)
    assert (fp.operators.lipschitz(net.latent, u, q, iters=30, batched=True) > gamma).all()


def test_forward_and_backward_through_the_mnist_network():
    torch.manual_seed(0)
    net = NETWORKS["mnist"](estimator=fp.Neumann(k=2))
    logits = net(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.latent.parameters())
    assert net.deq.last_solution.converged.all()
