"""The implicit networks ("fixed point networks", FPNs) of the JFB paper, built on fixpoint.

An FPN classifies an input ``d`` in three steps:

1. an injection ``q = Q(d)`` (an ordinary network) maps the input into the latent space;
2. the latent state is the fixed point ``u* = R(u*, q)`` of a map that is γ-contractive in ``u``,
   found by ``fp.nn.DEQ`` with any forward solver and differentiated with any estimator;
3. a readout ``S(u*)`` gives the class scores.

The latent map here is ``R(u, q) = B_L ∘ … ∘ B_1(γ·u + q)`` with residual blocks
``B(x) = (x + C₂ σ(C₁ x)) / 2``. With LeakyReLU σ (1-Lipschitz) and convolutions whose operator
norm is at most 1, each block is 1-Lipschitz, so ``R`` is γ-Lipschitz in ``u``. Training keeps it
so by projecting the latent convolutions onto the unit operator-norm ball after every optimiser
step (``FPN.project_()``, which calls ``fp.operators.clip_operator_norm_``).

Sizes follow the paper: MNIST 54K parameters, latent 32×9×9, γ = 0.5; SVHN 164K, latent 64×8×8,
γ = 0.9; CIFAR-10 0.84M, latent 35×10×10, γ = 0.5. ``digits_fpn`` is a small variant of the same
design for scikit-learn's 8×8 digits. Exact parameter counts (``python -m examples.jfb_networks``):

==========  ==========  ===========  ===========
network     parameters  paper        latent
==========  ==========  ===========  ===========
MNIST           54,362  54K          32×9×9
SVHN           164,714  164K         64×8×8
CIFAR-10       843,440  0.84M        35×10×10
digits          15,082  (embedded)   16×8×8
==========  ==========  ===========  ===========
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

import fixpoint as fp

__all__ = [
    "FPN",
    "LatentMap",
    "LipschitzBlock",
    "cifar10_fpn",
    "digits_fpn",
    "evaluate",
    "mnist_fpn",
    "parameter_count",
    "svhn_fpn",
]


def _conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1)


class LipschitzBlock(nn.Module):
    """``x ↦ (x + C₂ σ(C₁ x)) / 2``: 1-Lipschitz while ``‖C₁‖, ‖C₂‖ ≤ 1`` (operator norms)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels)
        self.conv2 = _conv3x3(channels)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (x + self.conv2(self.act(self.conv1(x))))


class LatentMap(nn.Module):
    """``R(u, q) = B_L ∘ … ∘ B_1(γ·u + q)``: γ-contractive in ``u`` after :meth:`project_`."""

    def __init__(self, channels: int, size: tuple[int, int], blocks: int, gamma: float) -> None:
        super().__init__()
        if not 0 < gamma < 1:
            raise ValueError(f"LatentMap: gamma must be in (0, 1), got {gamma!r}")
        self.shape = (channels, *size)
        self.gamma = gamma
        self.blocks = nn.ModuleList(LipschitzBlock(channels) for _ in range(blocks))

    def forward(self, u: Tensor, q: Tensor) -> Tensor:
        x = self.gamma * u + q
        for block in self.blocks:
            x = block(x)
        return x

    def project_(self, iters: int = 3) -> None:
        """Clip every convolution to operator norm ≤ 1 on latent-sized inputs."""
        for block in self.blocks:
            for conv in (block.conv1, block.conv2):
                fp.operators.clip_operator_norm_(conv, self.shape, 1.0, iters=iters)


class FPN(nn.Module):
    """Injection ``Q``, implicit latent layer ``u* = R(u*, Q(d))`` and readout ``S``.

    Parameters
    ----------
    injection, readout
        ``Q`` and ``S``.
    latent
        The γ-contractive latent map ``R``.
    solver, estimator
        Forward solver and gradient estimator of the implicit layer (``fp.nn.DEQ``).
    """

    def __init__(
        self,
        injection: nn.Module,
        latent: LatentMap,
        readout: nn.Module,
        *,
        solver: fp.Solver | None = None,
        estimator: fp.Estimator | None = None,
    ) -> None:
        super().__init__()
        self.injection = injection
        self.latent = latent
        self.readout = readout
        self.deq = fp.nn.DEQ(
            latent,
            solver=solver or fp.Anderson(m=5, atol=1e-4, rtol=1e-3, max_iter=50),
            estimator=estimator or fp.JFB(),
        )
        latent.project_(iters=50)

    @property
    def gamma(self) -> float:
        return self.latent.gamma

    def forward(self, d: Tensor) -> Tensor:
        return self.readout(self.deq(self.injection(d)))

    def project_(self, iters: int = 3) -> None:
        """Restore the contraction of the latent map (call after each optimiser step)."""
        self.latent.project_(iters)


def _readout(
    channels: int,
    hidden: int,
    spatial: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 0,
    dropout: float = 0.2,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel, stride=stride, padding=padding),
        nn.LeakyReLU(0.1),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(hidden * spatial * spatial, 10),
    )


def _conv_bn(cin: int, cout: int, stride: int = 1, affine: bool = True) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.BatchNorm2d(cout, affine=affine),
        nn.LeakyReLU(0.1),
    ]


def mnist_fpn(gamma: float = 0.5, **kwargs: object) -> FPN:
    """The MNIST FPN: 1×28×28 → latent 32×9×9 (γ = 0.5) → 10 classes; 54,362 parameters."""
    injection = nn.Sequential(*_conv_bn(1, 16), nn.MaxPool2d(3), *_conv_bn(16, 32))
    return FPN(
        injection, LatentMap(32, (9, 9), blocks=2, gamma=gamma), _readout(32, 16, 7), **kwargs
    )


def svhn_fpn(gamma: float = 0.9, **kwargs: object) -> FPN:
    """The SVHN FPN: 3×32×32 → latent 64×8×8 (γ = 0.9) → 10 classes; 164,714 parameters."""
    injection = nn.Sequential(
        *_conv_bn(3, 16),
        *_conv_bn(16, 32, stride=2),
        *_conv_bn(32, 64, stride=2),
        *_conv_bn(64, 64),
    )
    return FPN(
        injection, LatentMap(64, (8, 8), blocks=1, gamma=gamma), _readout(64, 32, 6), **kwargs
    )


class _ResidualStage(nn.Module):
    """``x ↦ LeakyReLU(BN(x + C₂ σ(C₁ x)))`` repeated; an ordinary (unconstrained) ResNet stage."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(_conv3x3(channels), nn.LeakyReLU(0.1), _conv3x3(channels))
            for _ in range(blocks)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(blocks))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(self.act(x + conv(x)))
        return x


def cifar10_fpn(gamma: float = 0.5, **kwargs: object) -> FPN:
    """The CIFAR-10 FPN: 3×32×32 → latent 35×10×10 (γ = 0.5) → 10 classes; 843,440 parameters."""
    channels = 35
    injection = nn.Sequential(
        nn.ZeroPad2d(4),  # 40×40, so two poolings give the paper's 10×10 latent
        nn.Conv2d(3, channels, 7, padding=3),
        nn.LeakyReLU(0.1),
        _ResidualStage(channels, 16),
        nn.AvgPool2d(2),
        _ResidualStage(channels, 16),
        nn.AvgPool2d(2),
    )
    readout = _readout(channels, channels, 5, stride=2, padding=1, dropout=0.1)
    return FPN(injection, LatentMap(channels, (10, 10), blocks=5, gamma=gamma), readout, **kwargs)


def digits_fpn(gamma: float = 0.5, **kwargs: object) -> FPN:
    """A small FPN of the same design for scikit-learn's 8×8 digits; 15,082 parameters."""
    injection = nn.Sequential(*_conv_bn(1, 16))
    readout = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    return FPN(injection, LatentMap(16, (8, 8), blocks=1, gamma=gamma), readout, **kwargs)


NETWORKS: dict[str, Callable[..., FPN]] = {
    "mnist": mnist_fpn,
    "svhn": svhn_fpn,
    "cifar10": cifar10_fpn,
    "digits": digits_fpn,
}


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch: int = 500
) -> float:
    """Test accuracy in percent, in evaluation mode, in batches of ``batch``."""
    model.eval()
    correct = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        for start in range(0, len(y), batch):
            logits = model(x[start : start + batch].to(device))
            correct += int((logits.argmax(1).cpu() == y[start : start + batch]).sum())
    return 100.0 * correct / len(y)


if __name__ == "__main__":
    for name, factory in NETWORKS.items():
        net = factory()
        print(
            f"{name:>8}: {parameter_count(net):>9,} parameters, latent "
            f"{'×'.join(map(str, net.latent.shape))}, gamma = {net.gamma}"
        )
