"""``fp.solve``: find a fixed point of any map, with no autograd graph."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from fixpoint._checks import require_instance
from fixpoint._transforms import refuse_vmap
from fixpoint._tree import FlatMap, Layout
from fixpoint.solution import Solution
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver

__all__ = ["check_inputs", "solve"]


def check_inputs(f: Any, solver: Any, batched: bool = False, skip_converged: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` for a non-callable ``f``, a non-solver ``solver`` or
    ``skip_converged`` without ``batched``."""
    if skip_converged and not batched:
        raise ValueError("skip_converged=True needs batched=True: it skips samples of a batch")
    if not callable(f):
        raise TypeError(f"f must be callable as f(z, *args), got {type(f).__name__}")
    require_instance(solver, Solver, "solver", "fp.Anderson()")


def solve(
    f: Callable[..., Any],
    z0: Any,
    *args: Any,
    solver: Solver = Anderson(),
    batched: bool = False,
    skip_converged: bool = False,
) -> Solution:
    r"""Find ``z`` with ``z = f(z, *args)``; no gradient flows through the result.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``. It must return the structure, shapes and dtype of
        ``z``.
    z0
        Starting point: a floating-point tensor or a pytree (tuple/list/dict) of them.
    *args
        Extra inputs of ``f``, passed through unchanged.
    solver
        A forward solver: :class:`~fixpoint.Picard`, :class:`~fixpoint.Anderson` (default) or
        :class:`~fixpoint.Broyden`, or your own :class:`~fixpoint.Solver`.
    batched
        When ``True`` the leading dimension of every tensor of ``z0`` is a batch of independent
        problems: stopping, residuals, iterations and status are per sample, and a sample that
        has converged is no longer changed.
    skip_converged
        With ``batched=True``: once a quarter of the samples still in the solve have stopped,
        drop them from the iterate, the solver's state and the evaluations of ``f``, so a batch
        of mixed difficulty stops paying for its easy samples. Valid when the samples are
        independent (no batch statistics in ``f``); tensors in ``args`` whose leading dimension
        is the batch size are sliced with the samples, other arguments are passed whole. Results
        and statistics are those of the full-batch solve.

    Returns
    -------
    Solution
        ``value`` with the structure of ``z0``, and statistics of shape ``()`` (or ``(B,)``).

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(torch.cos, torch.zeros(()), solver=fp.Anderson(atol=1e-10, rtol=0))
    >>> round(sol.value.item(), 6), sol.status
    (0.739085, Status.CONVERGED)
    """
    check_inputs(f, solver, batched, skip_converged)
    refuse_vmap("fp.solve")
    layout = Layout.of(z0, batched)
    fn = FlatMap(f, layout, args)
    with torch.no_grad():
        flat = solver.iterate(
            fn, layout.flatten(z0).detach(), rows=fn.rows if skip_converged else None
        )
    return unflatten_solution(flat, layout)


def unflatten_solution(flat: Solution, layout: Layout) -> Solution:
    """Give a flat solution (from :meth:`Solver.iterate`) the structure of the caller's state."""
    if layout.batch is not None:
        return dataclasses.replace(flat, value=layout.unflatten(flat.value))
    return Solution(
        value=layout.unflatten(flat.value),
        residual=flat.residual[0],
        converged=flat.converged[0],
        iterations=flat.iterations[0],
        fevals=flat.fevals[0],
        trace=flat.trace[:, 0],
        status=flat.status[0],
    )
