"""The forward path that :func:`fixpoint.solve` and :func:`fixpoint.fixed_point` share.

A call ``f(z, *args)`` is split into what torch.func may transform (the tensors of ``args``:
the *leaves*) and the rest; ``z`` is flattened to ``(rows, n)``. The solve itself is the
:class:`~fixpoint._primitives.SolveOp` primitive, so it runs the same under every transform.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from fixpoint._checks import require_instance
from fixpoint._precision import Precision
from fixpoint._primitives import solve
from fixpoint._problem import FlatProblem
from fixpoint._transforms import transforms_active
from fixpoint._tree import Layout, autocast_output
from fixpoint._validation import count, flag
from fixpoint.solution import BackwardInfo, ConvergenceError, Solution
from fixpoint.solvers.base import Solver

__all__ = ["Forward", "check_inputs"]


def check_inputs(
    f: Any, solver: Any, batched: bool, skip_converged: bool, owner: str = "fp.solve"
) -> None:
    """Raise ``TypeError``/``ValueError`` for a non-callable ``f``, a non-solver ``solver`` or
    ``skip_converged`` without ``batched``."""
    flag(owner, "batched", batched)
    flag(owner, "skip_converged", skip_converged)
    if skip_converged and not batched:
        raise ValueError("skip_converged=True needs batched=True: it skips samples of a batch")
    if not callable(f):
        raise TypeError(f"f must be callable as f(z, *args), got {type(f).__name__}")
    require_instance(solver, Solver, "solver", "fp.Anderson()")


@dataclass(eq=False)
class Forward:
    """One call's layout, leaves and flat map, and the solve that uses them."""

    f: Callable[..., Any]
    args: tuple[Any, ...]
    layout: Layout
    leaves: tuple[Tensor, ...]
    has_aux: bool
    fn: Callable[..., Tensor]
    precision: Precision

    @classmethod
    def prepare(
        cls, f: Callable[..., Any], z0: Any, args: tuple[Any, ...], batched: bool, has_aux: bool
    ) -> Forward:
        layout = Layout.of(z0, batched)
        flat_args, spec = pytree.tree_flatten(args)
        where = [i for i, a in enumerate(flat_args) if isinstance(a, Tensor)]
        leaves = tuple(flat_args[i] for i in where)
        precision = Precision.capture(layout.device)

        def fn(z: Tensor, *tensors: Tensor) -> Tensor:
            if all(map(operator.is_, tensors, leaves)):
                call_args = args  # the caller's own tensors: no need to rebuild the pytree
            else:
                filled = list(flat_args)
                for i, t in zip(where, tensors, strict=True):
                    filled[i] = t
                call_args = pytree.tree_unflatten(filled, spec)
            if precision.enabled:
                with precision.caller():
                    out = f(layout.unflatten(z), *call_args)
            else:
                out = f(layout.unflatten(z), *call_args)
            if has_aux:
                out = _state_of(out)
            out = autocast_output(out, layout)
            layout.check(out, rows=z.shape[0])
            return layout.flatten(out)

        return cls(f, args, layout, leaves, has_aux, fn, precision)

    def problem(
        self,
        solver: Solver,
        *,
        skip_converged: bool = False,
        in_dims: tuple[Any, ...] | None = None,
        **options: Any,
    ) -> FlatProblem:
        per_sample = per_sample_leaves(self.args, in_dims, self.layout.batch)
        if skip_converged and per_sample is None:
            if self.leaves:
                raise ValueError(
                    "skip_converged=True needs in_dims: say which arguments of f have the batch "
                    "as their leading dimension (they are sliced with the samples still "
                    "iterating) and which are shared, one entry per argument after z, e.g. "
                    f"in_dims={(0,) + (None,) * (len(self.args) - 1)}"
                )
            per_sample = ()
        return FlatProblem(
            self.fn,
            solver,
            self.precision,
            single=self.layout.batch is None,
            skip_converged=skip_converged,
            per_sample=per_sample or (),
            norm=None if solver.norm is None else self._flat_norm(solver.norm),
            **options,
        )

    def _flat_norm(self, norm: Callable[[Any], Tensor]) -> Callable[[Tensor], Tensor]:
        """The solver's ``norm`` (on the state's structure) as a map of flat rows."""
        layout = self.layout

        def flat(x: Tensor) -> Tensor:
            out = norm(layout.unflatten(x))
            expected = () if layout.batch is None else (x.shape[0],)
            if not isinstance(out, Tensor) or out.shape != expected:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"the solver's norm must return one value per sample, shape {expected}; "
                    f"got {got}"
                )
            return out.reshape(x.shape[0])

        return flat

    def solve(self, problem: FlatProblem, z0: Any) -> tuple[Tensor, ...]:
        """Run :class:`SolveOp`: ``(z*, residual, converged, iterations, fevals, trace, codes)``.

        With no transform and no forward-mode tangent about, its outputs need no autograd
        node: the solve runs directly.
        """
        try:
            return solve(problem, self.layout.flatten(z0), self.leaves)
        except ConvergenceError as error:
            if not transforms_active() and hasattr(error, "outs"):
                error.solution = self.solution(error.outs)
                del error.outs
            raise

    def aux(self, z: Any, args: tuple[Any, ...] | None = None) -> Any:
        """``f``'s auxiliary output at ``z`` (with ``args``, default the call's arguments)."""
        out = self.f(z, *(self.args if args is None else args))
        return out[1]

    def solution(
        self,
        outs: tuple[Tensor, ...],
        aux: Any = None,
        backward: BackwardInfo | None = None,
        iterates: Sequence[Tensor] = (),
    ) -> Solution:
        """The caller-facing :class:`Solution` of :meth:`solve`'s outputs."""
        value, residual, converged, iterations, fevals, trace, codes = outs
        if self.layout.batch is None:
            residual, converged, iterations, fevals, codes = (
                t[0] for t in (residual, converged, iterations, fevals, codes)
            )
            trace = trace[:, 0]
        return Solution(
            value=self.layout.unflatten(value),
            residual=residual,
            converged=converged,
            iterations=iterations,
            fevals=fevals,
            trace=trace,
            status_code=codes,
            aux=aux,
            backward=backward,
            iterates=tuple(self.layout.unflatten(t) for t in iterates) or None,
        )


def per_sample_leaves(
    args: tuple[Any, ...], in_dims: tuple[Any, ...] | None, batch: int | None
) -> tuple[bool, ...] | None:
    """For each tensor of ``args`` (in leaf order), whether ``in_dims`` marks it per-sample.

    ``in_dims`` has one entry per argument: ``0`` (the argument's tensors have the batch as
    their leading dimension), ``None`` (shared), or a pytree of those matching the argument.
    """
    if in_dims is None:
        return None
    if not isinstance(in_dims, tuple) or len(in_dims) != len(args):
        raise ValueError(
            "in_dims must be a tuple with one entry per argument of f after z "
            f"({len(args)} here), each 0 (per-sample) or None (shared); got {in_dims!r}"
        )
    flags = []
    for position, (arg, dims) in enumerate(zip(args, in_dims, strict=True)):
        leaves, spec = pytree.tree_flatten(arg)
        per_leaf = pytree._broadcast_to_and_flatten(dims, spec)
        if per_leaf is None:
            raise ValueError(
                f"in_dims[{position}] = {dims!r} does not match argument {position}: give 0, "
                "None, or a pytree of them with the argument's structure"
            )
        for leaf, dim in zip(leaves, per_leaf, strict=True):
            if dim not in (0, None) or isinstance(dim, bool):
                raise ValueError(f"in_dims entries must be 0 or None, got {dim!r}")
            if not isinstance(leaf, Tensor):
                continue
            if dim == 0 and (leaf.dim() == 0 or leaf.shape[0] != batch):
                raise ValueError(
                    f"in_dims marks a tensor of argument {position} as per-sample, but its "
                    f"shape {tuple(leaf.shape)} does not start with the batch size {batch}"
                )
            flags.append(dim == 0)
    return tuple(flags)


def _state_of(out: Any) -> Any:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "has_aux=True: f must return a pair (z, aux), got "
            f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}"
        )
    return out[0]


def detach_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return pytree.tree_map(lambda a: a.detach() if isinstance(a, Tensor) else a, args)


def no_grad_aux(forward: Forward, value: Any) -> Any:
    """The auxiliary output at the solution, as a constant (for :func:`fixpoint.solve`)."""
    with torch.no_grad():
        return forward.aux(value, detach_args(forward.args))


def keep_steps(owner: str, steps: Sequence[int]) -> tuple[int, ...]:
    """``keep_iterates`` checked: whole numbers ≥ 0, and no torch.func transform about."""
    checked = tuple(count(owner, "keep_iterates", k, 0) for k in steps)
    if checked and transforms_active():
        raise ValueError(f"{owner}: keep_iterates is not supported under torch.func transforms")
    return checked
