"""What the examples share: gradient estimators and forward solvers by name, and the data sets.

Estimator names (``--methods`` of ``jfb_table2``, ``--method`` of ``ddp_train``, ``--estimator``
of ``bilevel_lasso``):

==============  ===============================================================================
``jfb``         ``fp.JFB()``: w = g, no products with the Jacobian
``jacobian``    ``fp.CG``: the "Jacobian-based" backward, CG on the normal equations (alias ``cg``)
``neumann-K``   ``fp.Neumann(k=K)``: the first K + 1 terms of the Neumann series
``phantom-K``   ``fp.Phantom(k=K, damping=0.5)``
``implicit``    ``fp.Implicit``: the adjoint fixed point, by Anderson acceleration
``exact``       ``fp.Exact()``: the dense Jacobian (tiny states only)
==============  ===============================================================================

Data sets: ``digits`` (scikit-learn's 8×8 digits, shipped with it), ``mnist``, ``svhn`` and
``cifar10`` (read with torchvision, imported only for these, from a data directory; downloaded
only when asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import fixpoint as fp

ESTIMATORS = "jfb, jacobian (or cg), neumann-K, phantom-K, implicit or exact"
DOWNLOAD_ONLY = ("mnist", "svhn", "cifar10")


def make_estimator(
    name: str, *, atol: float = 0.0, rtol: float = 1e-2, max_iter: int = 50, warn: bool = True
) -> fp.Estimator:
    """The estimator behind a name (``jfb``, ``jacobian``, ``neumann-5``, ...; see above).

    ``atol``, ``rtol`` and ``max_iter`` are the tolerances and the iteration limit of the linear
    solve of ``jacobian`` and ``implicit``; ``warn`` says whether an unconverged one warns.
    """
    if name == "jfb":
        return fp.JFB()
    if name in ("jacobian", "cg"):
        # From w = 0: with a relative tolerance, JFB's w = g as a start saves no step here and
        # costs a vjp. (The paper recipe's CG starts from w = g: jfb_paper.paper_cg.)
        return fp.CG(atol=atol, rtol=rtol, max_iter=max_iter, w0="zero", warn=warn)
    if name == "implicit":
        return fp.Implicit(fp.Anderson(m=5, atol=atol, rtol=rtol, max_iter=max_iter), warn=warn)
    if name == "exact":
        return fp.Exact()
    kind, _, k = name.partition("-")
    if kind == "neumann" and k.isdigit():
        return fp.Neumann(k=int(k))
    if kind == "phantom" and k.isdigit():
        return fp.Phantom(k=int(k), damping=0.5)
    raise ValueError(f"unknown estimator {name!r}: use {ESTIMATORS}")


def make_solver(name: str, tol: float, max_iter: int) -> fp.Solver:
    """A forward solver (``anderson``, ``picard`` or ``broyden``), relative tolerance ``tol``."""
    solvers = {"anderson": fp.Anderson, "picard": fp.Picard, "broyden": fp.Broyden}
    if name not in solvers:
        raise ValueError(f"unknown solver {name!r}: use {', '.join(solvers)}")
    return solvers[name](atol=1e-6, rtol=tol, max_iter=max_iter)


# ---------------------------------------------------------------------------------------------
# Data sets
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

    ``digits`` is split 80/20 by a seeded shuffle; the others use their official splits. Images
    are standardised with the training set's per-channel mean and deviation, or with
    ``normalization`` (means, deviations) when given (the paper's constants).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        train, test = order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]
        data = Dataset(name, x[train], y[train], x[test], y[test])
    elif name in DOWNLOAD_ONLY:
        data = _load_torchvision(name, Path(data_dir).expanduser(), download)
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


def _load_torchvision(name: str, root: Path, download: bool) -> Dataset:
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
    return Dataset(name, train_x, train_y, test_x, test_y)


def _require_files(name: str, root: Path) -> None:
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        expected = [raw / "train-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte"]
    elif name == "svhn":
        expected = [root / "train_32x32.mat", root / "test_32x32.mat"]
    else:
        batches = root / "cifar-10-batches-py"
        expected = [batches / "data_batch_1", batches / "test_batch"]
    missing = [p for p in expected if not p.exists() and not p.with_name(p.name + ".gz").exists()]
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
