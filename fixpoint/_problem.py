"""A fixed-point problem as the primitives see it: a map of flat ``(rows, n)`` matrices.

Everything that torch.func may transform (the start, every tensor of ``args``) is a separate
tensor input of the primitives, a *leaf*; the map takes them explicitly, ``fn(z, *leaves)``. Under
``vmap`` the primitives turn the vmapped dimension into more rows (:meth:`FlatProblem.batch`),
so a vmapped solve is one batched solve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fixpoint._precision import Precision
from fixpoint.estimators.base import Estimator
from fixpoint.solution import BackwardInfo
from fixpoint.solvers.base import Solver

__all__ = ["FlatProblem", "rows_first"]


@dataclass(frozen=True, eq=False)
class FlatProblem:
    """``z = fn(z, *leaves)`` on ``(rows, n)`` matrices whose rows are independent problems.

    Attributes
    ----------
    fn
        The map; called with the primitives' ``leaves`` (tensors) after ``z``.
    precision
        The caller's autocast state (``fn`` applies it itself; estimators run without it).
    single
        The caller's problem is one sample (not ``batched``).
    solver, estimator
        The forward solver and the gradient estimator (``None`` for :func:`fixpoint.solve`).
    info
        Filled with what the estimator did each time it runs.
    skip_converged
        Evaluate ``fn`` on the rows still iterating only (see :func:`fixpoint.solve`); then
        ``per_sample`` says which leaves have the rows as their leading dimension.
    warn
        Warn (:class:`~fixpoint.ConvergenceWarning`) when a row of the solve does not converge.
    throw
        Raise :class:`~fixpoint.ConvergenceError` instead when a row does not converge.
    keep, kept
        Steps whose iterates the solve keeps (see :meth:`fixpoint.Solver.iterate`), and where
        the direct solve puts them (flat rows).
    vmapped
        ``fn`` evaluates the caller's map under :func:`torch.func.vmap` (rows are then
        ``size × rows`` of the caller's problem).
    eager
        The first-order fast path of an eager call (see :mod:`fixpoint.fixed_point`), or
        ``None``.
    norm
        The solver's stopping norm on flat rows (``(rows, n) -> (rows,)``), or ``None`` for the
        2-norm of each row.
    """

    fn: Callable[..., Tensor]
    solver: Solver
    precision: Precision
    single: bool
    estimator: Estimator | None = None
    info: BackwardInfo | None = None
    skip_converged: bool = False
    per_sample: tuple[bool, ...] = ()
    warn: bool = False
    throw: bool = False
    keep: tuple[int, ...] = ()
    kept: list[Tensor] = field(default_factory=list)
    vmapped: bool = False
    eager: Any = None
    norm: Callable[[Tensor], Tensor] | None = None

    def at(self, leaves: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
        """``z ↦ fn(z, *leaves)``."""
        return lambda z: self.fn(z, *leaves)

    def rows_at(
        self, leaves: Sequence[Tensor], batch: int
    ) -> Callable[[Tensor, Tensor], Tensor] | None:
        """``(z, index) ↦ fn(z_full)[index]`` for the compacting loop, or ``None``.

        The per-sample leaves are sliced with the rows, the others are passed whole. Under
        ``vmap`` the loop does not compact (the results are the same).
        """
        if not self.skip_converged or self.vmapped:
            return None

        def rows(z: Tensor, index: Tensor) -> Tensor:
            sliced = [
                leaf.index_select(0, index) if per_sample else leaf
                for leaf, per_sample in zip(leaves, self.per_sample, strict=True)
            ]
            try:
                return self.fn(z, *sliced)
            except (RuntimeError, ValueError) as error:
                raise RuntimeError(
                    f"skip_converged: f failed on the {z.shape[0]} of {batch} samples still "
                    f"iterating ({error}); f must treat the samples independently, and in_dims "
                    "must mark exactly the per-sample arguments"
                ) from error

        return rows

    def batch(self, leaf_dims: tuple[int | None, ...], size: int, randomness: str) -> FlatProblem:
        """This problem for ``size`` vmapped copies, stacked as ``size × rows`` rows.

        ``leaf_dims`` says where each leaf has its vmapped dimension (``None``: shared). The
        new map evaluates this one under :func:`torch.func.vmap`, so nested vmaps nest here too.
        """
        batched = _vmap(self.fn, (0, *leaf_dims), size, randomness)

        def fn(z: Tensor, *leaves: Tensor) -> Tensor:
            out = batched(z.reshape(size, z.shape[0] // size, z.shape[1]), *leaves)
            return out.reshape(z.shape)

        norm = None
        if self.norm is not None:
            per_copy = _vmap(self.norm, (0,), size, randomness)

            def norm(x: Tensor) -> Tensor:
                return per_copy(x.reshape(size, x.shape[0] // size, x.shape[1])).reshape(-1)

        return dataclasses.replace(self, fn=fn, vmapped=True, eager=None, norm=norm)


def _vmap(
    fn: Callable[..., Tensor], in_dims: tuple[int | None, ...], size: int, randomness: str
) -> Callable[..., Tensor]:
    """``torch.func.vmap(fn, in_dims)`` for flat tensor arguments and one tensor output.

    The map is called at every solver step, so the general machinery's per-call cost (pytree
    handling and checks, about as much as a small ``f`` itself) is worth skipping: this is
    that machinery's own core, one level of batching around one call.
    """
    try:
        from torch._C._functorch import _add_batch_dim, _remove_batch_dim
        from torch._functorch.vmap import vmap_increment_nesting
    except ImportError:  # pragma: no cover - other torch releases
        return torch.func.vmap(fn, in_dims=in_dims, randomness=randomness)

    def call(*inputs: Tensor) -> Tensor:
        with vmap_increment_nesting(size, randomness) as level:
            wrapped = [
                x if d is None else _add_batch_dim(x, d, level)
                for x, d in zip(inputs, in_dims, strict=True)
            ]
            return _remove_batch_dim(fn(*wrapped), level, size, 0)

    return call


def rows_first(x: Tensor, dim: int | None, size: int) -> Tensor:
    """A ``(rows, ...)`` tensor's vmapped dimension ``dim`` merged in front of its rows.

    Returns ``(size · rows, ...)``, the copies one after the other; a tensor that is not
    vmapped (``dim=None``) is repeated.
    """
    x = x.unsqueeze(0).expand(size, *x.shape) if dim is None else x.movedim(dim, 0)
    return x.reshape(size * x.shape[1], *x.shape[2:]).contiguous()


def split_rows(x: Tensor, size: int, dim: int = 0) -> Tensor:
    """Undo :func:`rows_first` along ``dim``: ``(…, size · rows, …) -> (…, size, rows, …)``."""
    return x.unflatten(dim, (size, x.shape[dim] // size))
