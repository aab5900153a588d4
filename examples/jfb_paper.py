"""The JFB paper's three networks and training recipes, as its public repository defines them.

Source: Typal-Research/jacobian_free_backprop (``Networks.py``, ``train_*.py``, ``utils.py``),
rebuilt here from fixpoint parts: the latent fixed point is an ``fp.nn.DEQ`` whose forward solver
is ``fp.Picard`` stopping on the paper's norm (the largest per-pixel channel norm of the update)
and whose estimator is ``fp.JFB`` ("FPN" runs) or ``fp.CG`` (the "Jacobian-based" runs).

Each network is ``S(u*)`` with ``u* = R(u*, Q(d))``:

==========  ==========  ==============================================  ============  =====
data set    parameters  latent map ``R(u, v)``                          latent        γ
==========  ==========  ==============================================  ============  =====
MNIST           54,352  x = u + v; 2 × x ← BN(x + σ(C₂σ(C₁x))); γx        32×9×9        0.5
SVHN           163,744  x = u + v; 1 × x ← BN(x + σ(C₂σ(C₁x))); γx        64×8×8        0.9
CIFAR-10       843,430  x = v + γu; 5 × x ← BN(σ(x + C₂σ(C₁x)))           35×10×10      0.5
==========  ==========  ==============================================  ============  =====

σ is LeakyReLU(0.1) and BN a batch norm without affine parameters; the Jacobian-based runs use
the same maps without the batch norms. The paper keeps ``R`` γ-Lipschitz by a heuristic: it
compares ``‖R(w, v') − R(u, v')‖`` with ``γ‖w − u‖`` on random perturbations and, when the bound
fails, rescales the latent convolutions by the missing factor (:func:`normalize_lipschitz_`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import fixpoint as fp

__all__ = [
    "PAPER_RECIPES",
    "PaperFPN",
    "Recipe",
    "channel_norm",
    "cifar10_network",
    "mnist_network",
    "normalize_lipschitz_",
    "paper_network",
    "svhn_network",
]

VARIANTS = ("fpn", "jacobian")


# ---------------------------------------------------------------------------------------------
# The paper's stopping rule
# ---------------------------------------------------------------------------------------------


def channel_norm(per_sample: bool):
    """The paper's stopping norm: the largest channel norm of an image update ``(B, C, H, W)``.

    ``per_sample=False`` takes the largest over the whole batch (one number: the paper stops the
    batch when every sample and pixel is below ``eps``); ``True`` gives one number per sample.
    """

    def norm(r: Tensor) -> Tensor:
        pixels = torch.linalg.vector_norm(r, dim=-3)
        return pixels.amax(dim=(-2, -1)) if per_sample else pixels.amax()

    return norm


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int = 3, **options: Any) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=kernel, **options)


def _latent_block(channels: int, activation_after: bool) -> nn.Sequential:
    """``C₂ σ(C₁ x)`` (MNIST/SVHN add a final σ): the convolutions are items 0 and 3."""
    layers = [
        _conv(channels, channels, padding=1),
        nn.LeakyReLU(0.1),
        nn.Dropout2d(0.0),
        _conv(channels, channels, padding=1),
    ]
    if activation_after:
        layers += [nn.LeakyReLU(0.1), nn.Dropout2d(0.0)]
    return nn.Sequential(*layers)


class ResidualLatent(nn.Module):
    """MNIST's and SVHN's ``R(u, v)``: ``x = u + v``; ``x ← BN(x + σ(block(x)))``; ``γx``.

    The blocks end with σ, so ``σ(block(x))`` applies it twice, as the paper does.
    """

    def __init__(self, channels: int, blocks: int, gamma: float, variant: str) -> None:
        super().__init__()
        self.gamma, self.variant = gamma, variant
        self.blocks = nn.ModuleList(_latent_block(channels, True) for _ in range(blocks))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(blocks))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        x = u + v
        for block, norm in zip(self.blocks, self.norms, strict=True):
            x = x + self.act(block(x))
            if self.variant == "fpn":
                x = norm(x)
        return self.gamma * x


class CifarLatent(nn.Module):
    """CIFAR-10's ``R(u, v)``: ``x = v + γu``; ``x ← BN(σ(x + block(x)))``."""

    def __init__(self, channels: int, blocks: int, gamma: float, variant: str) -> None:
        super().__init__()
        self.gamma, self.variant = gamma, variant
        self.blocks = nn.ModuleList(_latent_block(channels, False) for _ in range(blocks))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(blocks))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        x = v + self.gamma * u
        for block, norm in zip(self.blocks, self.norms, strict=True):
            x = self.act(x + block(x))
            if self.variant == "fpn":
                x = norm(x)
        return x


def normalize_lipschitz_(latent: nn.Module, u: Tensor, v: Tensor) -> float:
    """The paper's rescaling: make ``R`` look γ-Lipschitz in ``u`` on a random perturbation.

    With ``w = u + ε``, ``v' = v + ε'`` (standard normal noise), it compares the mean channel
    norm of ``R(w, v') − R(u, v')`` with γ times that of ``w − u``; if the first is larger, it
    multiplies the weights and biases of both convolutions of every block by
    ``(γ‖w − u‖ / ‖R(w, v') − R(u, v')‖)^(1/blocks)``. Returns the factor (1 when nothing
    changed). A heuristic (the bound is checked in one direction, and batch norm is not
    rescaled), kept as the paper has it.
    """
    with torch.no_grad():
        noise_u, noise_v = torch.randn_like(u), torch.randn_like(u)
        w = u + noise_u
        r_diff = torch.linalg.vector_norm(
            latent(w, v + noise_v) - latent(u, v + noise_v), dim=1
        ).mean()
        u_diff = torch.linalg.vector_norm(w - u, dim=1).mean()
        if r_diff <= latent.gamma * u_diff:
            return 1.0
        factor = float((latent.gamma * u_diff / r_diff) ** (1.0 / len(latent.blocks)))
        for block in latent.blocks:
            for conv in (block[0], block[3]):
                conv.weight.mul_(factor)
                conv.bias.mul_(factor)
        return factor


class _Shortcut(nn.Module):
    """ResNet "option A" shortcut: subsample by 2 and pad the new channels with zeros."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """The SVHN injection's residual block (with dropout 0.1), as in the paper."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout2d(0.1)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = _Shortcut(cout // 4) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.act(self.bn1(self.conv1(x))))
        out = self.drop(self.bn2(self.conv2(out)))
        return self.act(out + self.shortcut(x))


class CifarInjection(nn.Module):
    """Pad 4 (value 0.449), 7×7 convolution, then 2×16 residual layers with average pooling."""

    def __init__(self, channels: int = 35, layers: int = 16) -> None:
        super().__init__()
        self.layers = layers
        self.pad = nn.ConstantPad2d(4, 0.449)
        self.first = _conv(3, channels, 7, padding=3, padding_mode="replicate")
        self.convs = nn.ModuleList(
            nn.Sequential(
                _conv(channels, channels, padding=1),
                nn.LeakyReLU(0.1),
                nn.Dropout2d(0.15),
                _conv(channels, channels, padding=1),
            )
            for _ in range(2 * layers)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm2d(channels, affine=False) for _ in range(2 * layers)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.AvgPool2d(2)

    def forward(self, d: Tensor) -> Tensor:
        u = self.act(self.first(self.pad(d)))
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            u = norm(self.act(u + conv(u)))
            if (i + 1) % self.layers == 0:
                u = self.pool(u)
        return u


class _Readout(nn.Module):
    """``fc(flatten(dropout(σ(conv(u)))))`` with a bias-free last layer."""

    def __init__(self, conv: nn.Conv2d, dropout: nn.Module, features: int) -> None:
        super().__init__()
        self.conv, self.drop = conv, dropout
        self.fc = nn.Linear(features, 10, bias=False)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, u: Tensor) -> Tensor:
        return self.fc(self.drop(self.act(self.conv(u))).flatten(1))


# ---------------------------------------------------------------------------------------------
# The networks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One run of the paper: a ``train_*.py`` script's settings."""

    seed: int
    eps: float  # stopping tolerance of the forward solve (and of CG), absolute
    max_depth: int  # forward iterations (and CG iterations) at most
    epochs: int
    lr: float
    weight_decay: float
    step: int  # StepLR step size, in epochs
    decay: float  # StepLR factor
    batch_size: int = 100
    test_batch_size: int = 400
    augment: bool = False


PAPER_RECIPES: dict[str, dict[str, Recipe]] = {
    "mnist": {
        "fpn": Recipe(53, 0.1, 50, 100, 2e-4, 1e-6, 100, 1.0),
        "jacobian": Recipe(1003, 0.1, 50, 100, 2e-4, 1e-6, 100, 1.0),
    },
    "svhn": {
        "fpn": Recipe(988, 1e-4, 200, 100, 1e-4, 2e-4, 200, 1.0),
        "jacobian": Recipe(1000, 1e-4, 200, 100, 1e-4, 2e-4, 200, 1.0),
    },
    "cifar10": {
        "fpn": Recipe(1000, 0.1, 50, 1000, 1e-3, 1e-3, 200, 0.5, augment=True),
        "jacobian": Recipe(1111, 1e-4, 500, 1000, 1e-3, 1e-3, 200, 0.5, augment=True),
    },
}
"""The settings of the repository's ``train_<data>.py`` (FPN) and ``train_<data>_Jacobian_Based.py``
scripts. The Jacobian-based runs solve with CG to the same ``eps`` (absolute) in at most
``max_depth`` iterations, and skip the update of a batch whose CG solve did not converge."""


class PaperFPN(nn.Module):
    """``S(u*)`` with ``u* = R(u*, Q(d))`` found and differentiated by ``fp.nn.DEQ``.

    ``variant="fpn"``: the latent map with batch norms, which couple the samples, so the batch
    is one fixed-point problem (``batched=False``) stopped on the largest per-pixel channel norm
    over the whole batch, as the paper stops it. ``variant="jacobian"``: no batch norms, so the
    samples are independent problems (``batched=True``), each stopped on its own.

    The paper's Lipschitz rescaling (``lipschitz="paper"``) runs in training mode before each
    solve of the Jacobian-based runs (at ``u = 0``, as the paper does) and, for the FPN runs,
    after each optimiser step at the fixed point just found (:meth:`after_step`; the paper
    rescales between the solve and its gradient step, which ``fp.nn.DEQ`` does not split, so
    the gradient is taken one rescaling earlier). ``lipschitz=None`` turns it off.
    """

    def __init__(
        self,
        injection: nn.Module,
        latent: nn.Module,
        readout: nn.Module,
        *,
        variant: str,
        eps: float,
        max_depth: int,
        estimator: fp.Estimator,
        lipschitz: str | None = "paper",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if lipschitz not in ("paper", None):
            raise ValueError(f"lipschitz must be 'paper' or None, got {lipschitz!r}")
        self.injection, self.latent, self.readout = injection, latent, readout
        self.variant, self.lipschitz = variant, lipschitz
        batched = variant == "jacobian"
        solver = fp.Picard(
            atol=eps,
            rtol=0.0,
            max_iter=max_depth,
            divergence=math.inf,
            norm=channel_norm(per_sample=batched),
        )
        self.deq = fp.nn.DEQ(latent, solver=solver, estimator=estimator, batched=batched)
        self._last: tuple[Tensor, Tensor] | None = None

    @property
    def gamma(self) -> float:
        return self.latent.gamma

    def forward(self, d: Tensor) -> Tensor:
        q = self.injection(d)
        if self.training and self.lipschitz == "paper" and self.variant == "jacobian":
            normalize_lipschitz_(self.latent, torch.zeros_like(q), q.detach())
        z = self.deq(q)
        self._last = (z.detach(), q.detach()) if self.training else None
        return self.readout(z)

    def after_step(self) -> None:
        """The FPN runs' rescaling at the last fixed point (call after ``optimizer.step()``)."""
        if self._last is not None and self.lipschitz == "paper" and self.variant == "fpn":
            normalize_lipschitz_(self.latent, *self._last)

    def project_(self) -> None:
        """Alias of :meth:`after_step`, the name the training script calls after each step."""
        self.after_step()


def mnist_network(
    variant: str = "fpn",
    estimator: fp.Estimator | None = None,
    gamma: float = 0.5,
    **options: Any,
) -> PaperFPN:
    """``MNIST_FPN(lat_layers=2, num_channels=32, contraction_factor=0.5)``: 54,352 parameters."""
    injection = nn.Sequential(
        _conv(1, 16, padding=1),
        nn.BatchNorm2d(16),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(3),
        _conv(16, 32, padding=1),
        nn.BatchNorm2d(32),
        nn.LeakyReLU(0.1),
    )
    latent = ResidualLatent(32, blocks=2, gamma=gamma, variant=variant)
    readout = _Readout(_conv(32, 16), nn.Dropout2d(0.2), 16 * 7 * 7)
    return _assemble("mnist", variant, injection, latent, readout, estimator, options)


class _SvhnInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv(3, 16, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.LeakyReLU(0.1)
        self.stages = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)
        )
        # Declared by the paper's network but never used in its forward pass: kept so that the
        # parameter count is the paper's 163,744.
        self.unused = nn.ModuleList([nn.BatchNorm2d(64), nn.BatchNorm2d(64)])

    def forward(self, d: Tensor) -> Tensor:
        return self.stages(self.act(self.bn(self.conv(d))))


def svhn_network(
    variant: str = "fpn",
    estimator: fp.Estimator | None = None,
    gamma: float = 0.9,
    **options: Any,
) -> PaperFPN:
    """``SVHN_FPN(lat_layers=1, num_channels=64, contraction_factor=0.9)``: 163,744 parameters."""
    latent = ResidualLatent(64, blocks=1, gamma=gamma, variant=variant)
    readout = _Readout(_conv(64, 16), nn.Dropout2d(0.2), 16 * 6 * 6)
    return _assemble("svhn", variant, _SvhnInjection(), latent, readout, estimator, options)


def cifar10_network(
    variant: str = "fpn",
    estimator: fp.Estimator | None = None,
    gamma: float = 0.5,
    **options: Any,
) -> PaperFPN:
    """``CIFAR10_FPN(data_layers=16, num_channels=35, contraction_factor=0.5, lat_layers=5)``:
    843,430 parameters."""
    latent = CifarLatent(35, blocks=5, gamma=gamma, variant=variant)
    readout = _Readout(_conv(35, 35, stride=2, padding=1), nn.Dropout(0.1), 35 * 5 * 5)
    return _assemble("cifar10", variant, CifarInjection(), latent, readout, estimator, options)


def _assemble(
    name: str,
    variant: str,
    injection: nn.Module,
    latent: nn.Module,
    readout: nn.Module,
    estimator: fp.Estimator | None,
    options: dict[str, Any],
) -> PaperFPN:
    recipe = PAPER_RECIPES[name][variant]
    settings = {"eps": recipe.eps, "max_depth": recipe.max_depth, **options}
    if estimator is None:
        estimator = fp.JFB() if variant == "fpn" else paper_cg(recipe)
    return PaperFPN(injection, latent, readout, variant=variant, estimator=estimator, **settings)


def paper_cg(recipe: Recipe) -> fp.CG:
    """The Jacobian-based backward: CG to ``eps`` (absolute) in at most ``max_depth`` steps,
    from a non-zero start (JFB's ``w = g``); unconverged batches are skipped by the trainer."""
    return fp.CG(atol=recipe.eps, rtol=0.0, max_iter=recipe.max_depth, w0="g", warn=False)


NETWORKS = {"mnist": mnist_network, "svhn": svhn_network, "cifar10": cifar10_network}
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""The per-channel means and deviations the repository's data loaders normalise with."""
INPUT_SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32), "cifar10": (3, 32, 32)}
PAPER_PARAMETERS = {"mnist": 54_352, "svhn": 163_744, "cifar10": 843_430}


def paper_network(name: str, variant: str = "fpn", **options: Any) -> PaperFPN:
    """One of the three networks by data set name (``mnist``, ``svhn``, ``cifar10``)."""
    if name not in NETWORKS:
        raise ValueError(f"no paper network for {name!r}: use {', '.join(NETWORKS)}")
    return NETWORKS[name](variant, **options)


def augment_cifar10(images: Tensor, generator: torch.Generator) -> Tensor:
    """The repository's CIFAR-10 training augmentation, on a normalised batch ``(B, 3, 32, 32)``.

    In its order: random horizontal flip; (normalisation, already done); random 32×32 crop of
    the image padded by 2 with the value 0.449; random erasing with probability 0.95 of a
    rectangle of 10–25 % of the area and aspect ratio 0.2–5 (log-uniform), filled with the
    normalisation means, as torchvision's ``RandomErasing`` draws it (up to ten tries).
    """
    batch, _, height, width = images.shape
    out = images.clone()
    flip = torch.rand(batch, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    padded = nn.functional.pad(out, (2, 2, 2, 2), value=0.449)
    tops = torch.randint(0, 5, (batch,), generator=generator)
    lefts = torch.randint(0, 5, (batch,), generator=generator)
    for i in range(batch):
        top, left = int(tops[i]), int(lefts[i])
        out[i] = padded[i, :, top : top + height, left : left + width]
    fill = torch.tensor(NORMALIZATION["cifar10"][0], dtype=images.dtype)[:, None, None]
    area = height * width
    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= 0.95:
            continue
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.1, 0.25, generator=generator))
            log_ratio = torch.empty(()).uniform_(math.log(0.2), math.log(5.0), generator=generator)
            aspect = math.exp(float(log_ratio))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                out[i, :, top : top + h, left : left + w] = fill
                break
    return out


if __name__ == "__main__":
    for name in NETWORKS:
        net = paper_network(name)
        count = sum(p.numel() for p in net.parameters())
        print(f"{name:>8}: {count:>9,} parameters (the repository's: {PAPER_PARAMETERS[name]:,})")
