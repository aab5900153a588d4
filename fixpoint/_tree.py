"""Flat views of states: a tensor or a pytree of tensors as one ``(B, n)`` matrix.

Solvers and estimators only ever see the flat matrix; :class:`Layout` records how to go back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from fixpoint._precision import autocast_enabled

__all__ = ["FlatFunction", "Layout", "autocast_output"]


@dataclass(frozen=True)
class Layout:
    """How a state (tensor or pytree of tensors) maps to a flat ``(B, n)`` matrix.

    ``batch`` is ``None`` for an unbatched state, which is handled as a batch of one.
    """

    spec: pytree.TreeSpec
    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device
    batch: int | None

    @property
    def is_tensor(self) -> bool:
        return self.spec.is_leaf()

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @classmethod
    def of(cls, tree: Any, batched: bool, name: str = "z0") -> Layout:
        """Read the layout of ``tree``; raise ``TypeError``/``ValueError`` naming what is wrong."""
        leaves, spec = pytree.tree_flatten(tree)
        if not leaves:
            raise ValueError(f"{name} holds no tensors")
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Tensor):
                raise TypeError(
                    f"{name} must be a tensor or a pytree (tuple/list/dict) of tensors; "
                    f"leaf {i} is a {type(leaf).__name__}"
                )
        dtype, device = leaves[0].dtype, leaves[0].device
        if not dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {dtype}")
        for i, leaf in enumerate(leaves):
            if leaf.dtype != dtype:
                raise TypeError(
                    f"all tensors of {name} must share one dtype: leaf 0 is {dtype}, "
                    f"leaf {i} is {leaf.dtype}"
                )
            if leaf.device != device:
                raise ValueError(
                    f"all tensors of {name} must be on one device: leaf 0 is on "
                    f"{device}, leaf {i} on {leaf.device}"
                )
        batch = None
        if batched:
            for i, leaf in enumerate(leaves):
                if leaf.dim() == 0:
                    raise ValueError(
                        f"batched=True needs a leading batch dimension, but leaf {i} "
                        f"of {name} is a scalar"
                    )
            batch = leaves[0].shape[0]
            for i, leaf in enumerate(leaves):
                if leaf.shape[0] != batch:
                    raise ValueError(
                        f"batched=True: every tensor of {name} must have the same "
                        f"batch size; leaf 0 has {batch}, leaf {i} has {leaf.shape[0]}"
                    )
            if batch == 0:
                raise ValueError(f"{name} has an empty batch")
            shapes = tuple(leaf.shape[1:] for leaf in leaves)
        else:
            shapes = tuple(leaf.shape for leaf in leaves)
        return cls(spec, shapes, dtype, device, batch)

    def _shape(self, rows: int | None) -> tuple[int, ...]:
        lead = () if self.batch is None else (self.batch if rows is None else rows,)
        return (*lead, *self.shapes[0])

    def flatten(self, tree: Any) -> Tensor:
        """The ``(B, n)`` matrix of ``tree`` (a view when the state is one contiguous tensor)."""
        if self.is_tensor:
            return tree.reshape(1 if self.batch is None else tree.shape[0], -1)
        leaves = pytree.tree_leaves(tree)
        rows = 1 if self.batch is None else leaves[0].shape[0]
        return torch.cat([leaf.reshape(rows, -1) for leaf in leaves], dim=1)

    def unflatten(self, flat: Tensor) -> Any:
        """The state of the matrix ``flat``, with this layout's structure and shapes."""
        lead = () if self.batch is None else (flat.shape[0],)
        if self.is_tensor:
            return flat.reshape((*lead, *self.shapes[0]))
        parts = flat.split(self.sizes, dim=1)
        leaves = [p.reshape((*lead, *s)) for p, s in zip(parts, self.shapes, strict=True)]
        return pytree.tree_unflatten(leaves, self.spec)

    def check(self, tree: Any, name: str = "f(z)", rows: int | None = None) -> None:
        """Raise an error that names the difference when ``tree`` does not match this layout.

        ``rows``: the batch size to expect when it differs from the layout's (a solve working
        on some of the samples only).
        """
        if (
            self.is_tensor
            and isinstance(tree, Tensor)
            and tree.dtype == self.dtype
            and tree.device == self.device
            and tree.shape == self._shape(rows)
        ):
            return  # the common case, in a few attribute reads: it runs at every call of f
        leaves, spec = pytree.tree_flatten(tree)
        if spec != self.spec:
            raise TypeError(
                f"{name} must have the structure of z0; z0 is {self.spec}, {name} is {spec}"
            )
        lead = () if self.batch is None else (self.batch if rows is None else rows,)
        for i, (leaf, shape) in enumerate(zip(leaves, self.shapes, strict=True)):
            where = "" if self.is_tensor else f" (leaf {i})"
            if not isinstance(leaf, Tensor):
                raise TypeError(f"{name}{where} must be a tensor, got {type(leaf).__name__}")
            if leaf.shape != (*lead, *shape):
                raise ValueError(
                    f"{name}{where} has shape {tuple(leaf.shape)} but z{where} has "
                    f"shape {(*lead, *shape)}: f must return a state of z's shape"
                )
            if leaf.dtype != self.dtype:
                raise TypeError(
                    f"{name}{where} has dtype {leaf.dtype} but z has {self.dtype}: "
                    "f must return a state of z's dtype"
                )
            if leaf.device != self.device:
                raise ValueError(f"{name}{where} is on {leaf.device} but z is on {self.device}")


class FlatFunction:
    """``f(z, *args)`` as a map of flat ``(B, n)`` matrices; checks its output at every call."""

    def __init__(self, f: Callable[..., Any], layout: Layout, args: tuple[Any, ...]) -> None:
        self.f = f
        self.layout = layout
        self.args = args

    def __call__(self, flat: Tensor) -> Tensor:
        out = autocast_output(self.f(self.layout.unflatten(flat), *self.args), self.layout)
        self.layout.check(out, rows=flat.shape[0])
        return self.layout.flatten(out)


def autocast_output(out: Any, layout: Layout) -> Any:
    """Under autocast, ``f`` may return lower precision: bring it to the state's dtype."""
    if autocast_enabled(layout.device):
        dtype = layout.dtype
        return pytree.tree_map(
            lambda t: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t, out
        )
    return out
